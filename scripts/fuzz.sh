#!/usr/bin/env bash
# Builds the fuzz targets (fuzz/, libFuzzer through libfuzzer-sys, on stable Rust),
# writes their seed corpora, and runs each target for a bounded number of inputs or a
# time. Exit status 1 when any target crashed (the input is saved, see below).
#
#   scripts/fuzz.sh                   every target, 100000 inputs each (what CI runs)
#   scripts/fuzz.sh --runs N [T...]   targets T (default all), N inputs each
#   scripts/fuzz.sh --time S [T...]   S seconds each
#   scripts/fuzz.sh --list            the targets
#   scripts/fuzz.sh --build           only build (fuzz/target/<host>/debug/<target>)
#
# Corpora grow in fuzz/corpus/<target>/ (not committed); a crashing input is written to
# fuzz/artifacts/<target>/crash-<sha1>; run the target binary on that file to replay it.
# FUZZ_JOBS=N runs N targets at once (default: nproc); FUZZ_ARGS adds libFuzzer options;
# FUZZ_TARGET_DIR moves the build (default fuzz/target).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

list_targets() { sed -n 's/^name = "\([a-z_]*\)"$/\1/p' fuzz/Cargo.toml; }
mode=runs
amount=100000
build_only=0
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
  --runs) mode=runs amount=$2; shift 2 ;;
  --time) mode=time amount=$2; shift 2 ;;
  --build) build_only=1; shift ;;
  --list) list_targets; exit 0 ;;
  -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
  *) targets+=("$1"); shift ;;
  esac
done
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(list_targets)
fi

# libFuzzer's runtime is C++ (built by libfuzzer-sys with the system compiler).
if ! command -v c++ >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++ >/dev/null
  else
    echo "fuzz.sh: a C++ compiler is needed (apt-get install g++)" >&2
    exit 1
  fi
fi

# The flags `cargo fuzz build --sanitizer none` passes (sanitizers need nightly; panics,
# debug assertions and overflow checks are what these targets catch). With --target they
# apply to the targets' code only, not to build scripts and proc macros. Its own target
# directory: these flags would otherwise rebuild the main build's dependencies.
host=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$repo/fuzz/target}
unset CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
started=$(date +%s)
cargo build --manifest-path fuzz/Cargo.toml --locked --target "$host" --bins
bin_dir=$CARGO_TARGET_DIR/$host/debug
echo "fuzz: built in $(($(date +%s) - started)) s ($bin_dir)"
[ "$build_only" -eq 1 ] && exit 0

shared=$repo/../shared/data/blocklists
[ -d "$shared" ] || echo "fuzz: $shared is absent; list seeds come from tests/fixtures only"
seeds=$(mktemp -d)
logs=$(mktemp -d)
trap 'rm -rf "$seeds" "$logs"' EXIT
python3 fuzz/seeds.py "$repo" "$seeds" "$shared" | sed 's/^/fuzz: seeds for /'

if [ "$mode" = runs ]; then limit=(-runs="$amount"); else limit=(-max_total_time="$amount"); fi
run_one() {
  local target=$1 corpus=fuzz/corpus/$1 artifacts=fuzz/artifacts/$1/
  mkdir -p "$corpus" "$artifacts"
  # New inputs go to the first directory (kept), seeds are read from the second.
  # shellcheck disable=SC2086
  "$bin_dir/$target" "${limit[@]}" -seed=1 -rss_limit_mb=2048 -timeout=10 \
    -artifact_prefix="$artifacts" -print_final_stats=1 ${FUZZ_ARGS:-} \
    "$corpus" "$seeds/$target" >"$logs/$target.log" 2>&1
}
export -f run_one
export bin_dir seeds logs

failed=0
ran=0
for target in "${targets[@]}"; do
  [ -x "$bin_dir/$target" ] || { echo "fuzz: no target $target" >&2; exit 2; }
done
# Run FUZZ_JOBS targets at a time; report each as it ends.
report() {
  local target=$1 status=$2 log=$logs/$1.log runs secs
  runs=$(sed -n -e 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  secs=$(sed -n -e 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  if [ "$status" -eq 0 ]; then
    printf 'fuzz: %-18s %9s executions in %3s s, 0 crashes\n' "$target" "${runs:-?}" "${secs:-?}"
  else
    printf 'fuzz: %-18s CRASHED after %s executions (exit %s):\n' "$target" "${runs:-?}" "$status"
    grep -a -E -A30 '^(==[0-9]+==|thread .* panicked)' "$log" | head -40 | sed 's/^/    /'
    grep -a -E '^(artifact_prefix|Test unit written to)' "$log" | sed 's/^/    /'
    cp "$log" "fuzz/artifacts/$target/fuzz.log"
    echo "    whole log: fuzz/artifacts/$target/fuzz.log"
    failed=$((failed + 1))
  fi
  ran=$((ran + 1))
}
jobs=${FUZZ_JOBS:-$(nproc)}
queue=("${targets[@]}")
declare -A running=()
while [ ${#queue[@]} -gt 0 ] || [ ${#running[@]} -gt 0 ]; do
  while [ ${#queue[@]} -gt 0 ] && [ ${#running[@]} -lt "$jobs" ]; do
    run_one "${queue[0]}" &
    running[$!]=${queue[0]}
    queue=("${queue[@]:1}")
  done
  set +e
  wait -n -p done_pid "${!running[@]}"
  status=$?
  set -e
  report "${running[$done_pid]}" "$status"
  unset "running[$done_pid]"
done
if [ "$mode" = runs ]; then what="$amount inputs each"; else what="$amount s each"; fi
echo "fuzz: ${ran} targets ($what), $failed crashed, $(($(date +%s) - started)) s in all"
[ "$failed" -eq 0 ]
