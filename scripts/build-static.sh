#!/usr/bin/env bash
# Builds the fully static portcullis binary that the container image ships
# (the Dockerfile runs this same script). glibc linked statically: the gate
# never calls the system resolver or NSS, so nothing needs a dynamic loader.
# Prints the binary's path on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
case "$(uname -m)" in
  aarch64) target=aarch64-unknown-linux-gnu ;;
esac
# No debug info in the shipped binary (the release profile keeps it for profiling).
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
  cargo build --locked --release --target "$target" --bin portcullis >&2
# Where cargo put it: CARGO_TARGET_DIR (relative to here) when set.
dir=${CARGO_TARGET_DIR:-target}
case "$dir" in /*) ;; *) dir="$PWD/$dir" ;; esac
echo "$dir/$target/release/portcullis"
