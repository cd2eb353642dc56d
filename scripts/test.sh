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
# Build every test target once, then run them; test binaries run in parallel.
cargo test --locked --no-run
cargo test --locked
