#!/usr/bin/env bash
# Latency and memory of the gate while the full shared list set refreshes, under dnsperf.
#
#   benches/refresh.sh                 # build, run, print a Markdown table
#
# The gate (benches/refresh_gate.rs: serve() plus the list refresher, a refresh round on
# SIGUSR1) subscribes to every list of ../shared/data/blocklists as a file:// URL, so a round
# goes through the real path: read, sanity guard, cache write, one rebuild beside the running
# policy, one swap. Before each round every list file gets a new comment line, so every list
# changes and the whole set is rebuilt.
#
# Two dnsperf runs of DURATION seconds at RATE queries/s of blocked names (answered by the
# policy; nothing is forwarded: the only upstream is a dead loopback port):
#   steady:  no refresh;
#   refresh: refresh rounds back to back for the whole run.
# Reported: p50/p99/max latency (from dnsperf -v), peak RSS (VmHWM, reset between runs
# through /proc/PID/clear_refs) and RSS at the end of each run.
#
# Loopback only. The gate is pinned to core 0 and dnsperf to core 1 (needs 2 cores).
# The refresh loop of the harness itself (file appends, log polling) runs at SCHED_IDLE so that it
# does not compete with the gate and dnsperf (HARNESS_IDLE=0: normal priority, as before).
# Knobs: DURATION (20), RATE (20000), CLIENTS (10), LISTS_DIR, BIN (skip the build),
# MALLOC (extra environment for the gate; MALLOC=NO_TUNE=1 skips
# portcullis::sys::tune_allocator(), glibc's defaults then apply),
# KEEP_WORK=1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LISTS_DIR=${LISTS_DIR:-$ROOT/../shared/data/blocklists}
DURATION=${DURATION:-20}
RATE=${RATE:-20000}
CLIENTS=${CLIENTS:-10}
PORT=5357
INVOCATION="$0 $*"

for tool in dnsperf taskset ss; do
    command -v "$tool" >/dev/null || { echo "missing: $tool (apt-get install dnsperf util-linux iproute2)" >&2; exit 1; }
done
[ "$(nproc)" -ge 2 ] || { echo "needs 2 cores" >&2; exit 1; }
[ -d "$LISTS_DIR" ] || { echo "no lists at $LISTS_DIR" >&2; exit 1; }
if ss -Hlun "sport = :$PORT" | grep -q .; then echo "port $PORT/udp is busy" >&2; exit 1; fi

if [ -z "${BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release --bench refresh_gate >&2)
    BIN=$(ls -t "$ROOT"/target/release/deps/refresh_gate-* | grep -v '\.d$' | head -1)
fi

BIN=$(realpath "$BIN")
WORK=$(mktemp -d /tmp/portcullis-refresh.XXXXXX)
GATE_PID=
cleanup() {
    if [ -n "$GATE_PID" ]; then kill -TERM "$GATE_PID" 2>/dev/null || true; wait "$GATE_PID" 2>/dev/null || true; fi
    if [ "${KEEP_WORK:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

mkdir -p "$WORK/src"
cp "$LISTS_DIR"/*.txt "$WORK/src/"
chmod u+w "$WORK"/src/*.txt
{
    cat <<EOF
[dns]
listen = ["127.0.0.1:$PORT"]
# One client sends every query: the per-client limit (1,000 a minute) would answer them.
[dns.rate_limit]
queries = 0
[proxy]
listen = ["127.0.0.1:0"]
[admin]
listen = ["127.0.0.1:0"]
[upstream]
timeout_ms = 200
[[upstream.servers]]
url = "udp://127.0.0.1:9"
[log]
format = "text"
level = "warn"
allowed_queries = false
[sources]
cache_dir = "cache"
EOF
    for f in "$WORK"/src/*.txt; do
        printf '[[lists]]\nname = "%s"\nurl = "file://%s"\n' "$(basename "$f" .txt)" "$f"
    done
} > "$WORK/portcullis.toml"

# Blocked names to ask for: the names of the hosts and domains lists.
cat "$WORK"/src/hosts-*.txt "$WORK"/src/domains-*.txt \
    | awk '!/^[#!]/ && NF { n = ($1 ~ /^[0-9.:]+$/ && NF > 1) ? $2 : $1; if (n ~ /^[a-z0-9.-]+\.[a-z]+$/) print n " A" }' \
    | awk 'NR % 7 == 0 && n++ < 50000' > "$WORK/queries.txt"

start_gate() {
    (cd "$WORK" && exec env ${MALLOC:-} taskset -c 0 "$BIN" portcullis.toml 2>>"$WORK/gate.log") &
    GATE_PID=$!
    for _ in $(seq 100); do
        ss -Hlun "sport = :$PORT" | grep -q . && return 0
        sleep 0.1
    done
    echo "gate did not start; log:" >&2; cat "$WORK/gate.log" >&2; exit 1
}
stop_gate() { kill -TERM "$GATE_PID"; wait "$GATE_PID" 2>/dev/null || true; GATE_PID=; }
rounds() { grep -c 'refresh round' "$WORK/gate.log" || true; }
refresh_round() {
    local before n
    before=$(rounds)
    for f in "$WORK"/src/*.txt; do echo "# touched $RANDOM$RANDOM" >> "$f"; done
    kill -USR1 "$GATE_PID"
    for _ in $(seq 600); do
        n=$(rounds)
        [ "$n" -gt "$before" ] && return 0
        sleep 0.05
    done
    echo "refresh round did not finish" >&2; exit 1
}
kb() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$GATE_PID/status"; }

# 1. Fill the cache, then restart: the policy comes from the cache (no network involved).
start_gate
refresh_round
stop_gate
start_gate
COLD=$(grep 'policy from cache' "$WORK/gate.log" | tail -1)
sleep 1

run() { # $1 = label
    echo 5 > "/proc/$GATE_PID/clear_refs"
    local rss0; rss0=$(kb VmRSS)
    taskset -c 1 dnsperf -s 127.0.0.1 -p "$PORT" -d "$WORK/queries.txt" -l "$DURATION" \
        -Q "$RATE" -c "$CLIENTS" -q 500 -v > "$WORK/$1.out" 2>&1 &
    local perf=$!
    if [ "$1" = refresh ]; then
        local end=$((SECONDS + DURATION - 1))
        # The harness's own work (touching the files, polling the log: a grep every 50 ms) runs
        # at idle priority, so that it does not take the benchmark cores from the gate or dnsperf.
        if [ "${HARNESS_IDLE:-1}" = 1 ]; then chrt -i -p 0 "$BASHPID" >/dev/null 2>&1 || true; fi
        while [ $SECONDS -lt $end ]; do refresh_round; done
    fi
    wait "$perf"
    local hwm rss1 lat
    hwm=$(kb VmHWM); rss1=$(kb VmRSS)
    lat=$(awk '/^> / { print $NF }' "$WORK/$1.out" | sort -g | awk '{ v[NR] = $1 } END {
        printf "%.2f %.2f %.2f %d", v[int(NR*0.5)]*1000, v[int(NR*0.99)]*1000, v[NR]*1000, NR }')
    local qps lost codes
    qps=$(awk '/Queries per second/ { print $4 }' "$WORK/$1.out")
    lost=$(awk '/Queries lost/ { print $3 }' "$WORK/$1.out")
    codes=$(awk -F: '/Response codes/ { print $2 }' "$WORK/$1.out" | xargs)
    echo "$1 $lat $qps $lost $rss0 $hwm $rss1 $codes"
}
STEADY=$(run steady)
R0=$(rounds)
REFRESH=$(run refresh)
R1=$(rounds)
LAST_ROUNDS=$(grep 'refresh round' "$WORK/gate.log" | tail -3 | sed 's/^/    /')

echo
echo "## List refresh under load ($(date -u +%F), $(nproc) cores, \`$INVOCATION\`)"
echo
echo "DURATION=$DURATION s, RATE=$RATE q/s, CLIENTS=$CLIENTS, $(wc -l < "$WORK/queries.txt") blocked names, gate on core 0, dnsperf on core 1; ${MALLOC:-tune_allocator() on}"
echo "Cold start from the warm cache: $COLD"
echo "Refresh rounds during the refresh run: $((R1 - R0)); the last ones:"
echo "$LAST_ROUNDS"
echo
echo "| run | p50 ms | p99 ms | max ms | answers | q/s | lost | RSS before MiB | peak RSS MiB | RSS after MiB | rcodes |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for row in "$STEADY" "$REFRESH"; do
    set -- $row
    label=$1 p50=$2 p99=$3 max=$4 n=$5 qps=$6 lost=$7 rss0=$8 hwm=$9 rss1=${10}
    shift 10
    printf '| %s | %s | %s | %s | %s | %s | %s | %.1f | %.1f | %.1f | %s |\n' "$label" "$p50" "$p99" "$max" "$n" "$qps" "$lost" \
        "$(echo "$rss0/1024" | bc -l)" "$(echo "$hwm/1024" | bc -l)" "$(echo "$rss1/1024" | bc -l)" "$*"
done
set -- $STEADY; S_P99=$3; S_HWM=$9
set -- $REFRESH; R_P99=$3; R_HWM=$9
echo
echo "p99 refresh/steady: $(echo "scale=2; $R_P99/$S_P99" | bc -l)x (goal < 2x); peak RSS refresh/steady: $(echo "scale=2; $R_HWM/$S_HWM" | bc -l)x (goal < 1.5x)"
# The figures only mean something if the answers were the blocked answers.
for row in "$STEADY" "$REFRESH"; do
    case "$row" in
        *REFUSED* | *SERVFAIL*) echo "ERROR: ${row%% *}: answers other than the blocked NXDOMAIN ($row): the figures measure something else" >&2; exit 1 ;;
    esac
done
