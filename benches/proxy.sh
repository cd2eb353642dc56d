#!/usr/bin/env bash
# Egress proxy benchmarks, loopback only: Portcullis vs squid (Debian, equivalent
# allowlist: CONNECT to the one origin only) vs a direct connection, in one run:
#   bulk CONNECT throughput (one tunnel), tunnels/s with one PING/PONG each from 50
#   concurrent workers, p50/p99 set-up + exchange latency at 50 concurrent, the
#   proxy's CPU time per GiB and per 1,000 tunnels, RSS per idle tunnel.
# The driver and the origin are benches/proxy_load.rs (native, multi-threaded, each
# its own process); the proxy is benches/proxy_bench_gate.rs.
#
# Two kinds of tunnel (MODES, default "raw tls"):
#   raw: a bare ClientHello record, then plain bytes: no TLS work at either end, so the
#        proxy's share of the CPU is as large as it can be (the worst case for a proxy).
#   tls: what an agent's HTTPS request is: a real TLS 1.3 handshake (rustls, ring) with
#        the origin through the tunnel, then the command and the bytes inside TLS. The
#        origin mints its CA and certificate for bench.test at start.
# The idle-tunnel RSS is measured in raw mode only (the proxy sees the same bytes).
#
# Usage: benches/proxy.sh                 (squid: apt-get install squid; skipped if absent)
# Env:   ROUNDS (3)   BULK_MIB (4096)   DURATION (s, 5)   CONC (50)   IDLE (1000)
#        MODES ("raw tls")
#        PINS ("pinned unpinned"): pinned = the proxy on core $PROXY_CORE (0), the
#        driver and the origin on core $LOAD_CORE (1), each process started under
#        taskset (tokio sizes its runtime from the affinity); unpinned = no taskset.
#        RT=1: every process under `chrt -f 10` (SCHED_FIFO), as benches/dnsperf.sh
#        does: on a VM shared with other builds, normal scheduling measures the
#        neighbours more than the proxy (a SCHED_FIFO task gets at most 95% of a core).
#        RELAY=splice: the gate relays with splice(2) (`[proxy] relay`; default copy).
#        LOGS=1: the gate writes its JSON decision lines (to $OUT/gate.log) as in
#        production; by default it logs nothing.
#        OUT (target/bench-proxy): runs.tsv (every figure of every round), report.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3} BULK_MIB=${BULK_MIB:-4096} DURATION=${DURATION:-5} CONC=${CONC:-50} IDLE=${IDLE:-1000}
PINS=${PINS:-pinned unpinned} MODES=${MODES:-raw tls} PROXY_CORE=${PROXY_CORE:-0} LOAD_CORE=${LOAD_CORE:-1}
ORIGIN_PORT=${ORIGIN_PORT:-39080} GATE_PORT=${GATE_PORT:-39128} SQUID_PORT=${SQUID_PORT:-39129}
OUT=${OUT:-target/bench-proxy} RT=${RT:-} LOGS=${LOGS:-} RELAY=${RELAY:-copy}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# Bench targets are built under a hashed name in target/release/deps/: cargo's JSON
# messages say which file it made.
BUILT=$(cargo build --release --bench proxy_bench_gate --bench proxy_load \
  --message-format=json-render-diagnostics | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p')
LOAD_BIN=$(grep '/proxy_load-[^/]*$' <<<"$BUILT")
GATE_BIN=$(grep '/proxy_bench_gate-[^/]*$' <<<"$BUILT")
mkdir -p "$OUT"
RUNS="$OUT/runs.tsv"
: >"$RUNS"
rm -f "$OUT/gate.log" "$OUT/squid.stderr"
WORK=$(mktemp -d)
chmod 755 "$WORK" # squid drops privileges and writes its log here
PIDS=()

# Stops one process this script started: TERM, up to 5 s, then KILL.
stop_pid() {
  local p=$1
  kill "$p" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}
stop_all() {
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  PIDS=()
}
cleanup() { stop_all; rm -rf "$WORK"; }
trap cleanup EXIT

# The origin is on 127.0.0.2: the gate refuses 127.0.0.1, its own listener's address.
wait_port() {
  local host=${2:-127.0.0.1}
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/$host/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $host:$1" >&2
  return 1
}

HAVE_SQUID=""
if command -v squid >/dev/null; then
  HAVE_SQUID=1
  cat >"$WORK/squid.conf" <<CONF
http_port 127.0.0.1:$SQUID_PORT
acl origin dst 127.0.0.2/32
acl origin_port port $ORIGIN_PORT
acl CONNECT method CONNECT
http_access allow CONNECT origin origin_port
http_access deny all
cache deny all
cache_mem 8 MB
access_log none
cache_log $WORK/squid-cache.log
pid_filename $WORK/squid.pid
coredump_dir $WORK
max_filedescriptors 65536
workers 1
pinger_enable off
shutdown_lifetime 1 seconds
CONF
else
  echo "squid not installed (apt-get install squid): its column stays empty" >&2
fi

# start_all PIN MODE: starts the origin, the gate and squid, pinned or not; sets GATE,
# SQUID and TLS (the driver's --tls arguments).
start_all() {
  local pc="" lc="" rt=""
  [ -n "$RT" ] && rt="chrt -f 10"
  if [ "$1" = pinned ]; then pc="taskset -c $PROXY_CORE" lc="taskset -c $LOAD_CORE"; fi
  pc="$rt $pc" lc="$rt $lc"
  LOAD="$lc $LOAD_BIN"
  TLS=()
  if [ "$2" = tls ]; then TLS=(--tls "$WORK/ca.pem"); rm -f "$WORK/ca.pem"; fi
  $lc "$LOAD_BIN" origin "$ORIGIN_PORT" "${TLS[@]}" & PIDS+=($!)
  if [ -n "$LOGS" ]; then
    PROXY_RELAY=$RELAY PROXY_LOG=1 $pc "$GATE_BIN" "$GATE_PORT" "$ORIGIN_PORT" 2>>"$OUT/gate.log" & GATE=$!
  else
    PROXY_RELAY=$RELAY $pc "$GATE_BIN" "$GATE_PORT" "$ORIGIN_PORT" 2>/dev/null & GATE=$!
  fi
  PIDS+=($GATE)
  SQUID=""
  if [ -n "$HAVE_SQUID" ]; then
    $pc squid -N -f "$WORK/squid.conf" 2>>"$OUT/squid.stderr" & SQUID=$!; PIDS+=($SQUID)
  fi
  wait_port "$ORIGIN_PORT" 127.0.0.2; wait_port "$GATE_PORT"
  [ -n "$SQUID" ] && wait_port "$SQUID_PORT"
  sleep 1
}

# run ROUND PIN LABEL SUBCOMMAND ARGS...: one measurement, its rows into runs.tsv.
run() {
  local round=$1 pin=$2 label=$3 sub=$4; shift 4
  local via=(--label "$label" --origin "$ORIGIN_PORT")
  case $label in
    portcullis) via+=(--proxy "$GATE_PORT" --pid "$GATE") ;;
    squid) via+=(--proxy "$SQUID_PORT" --target "127.0.0.2:$ORIGIN_PORT" --pid "$SQUID") ;;
  esac
  $LOAD "$sub" "${via[@]}" "${TLS[@]}" "$@" | sed "s/^/$round\t$pin\t/" >>"$RUNS"
}

LABELS=(direct portcullis)
[ -n "$HAVE_SQUID" ] && LABELS+=(squid)
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- src benches 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
  echo "squid: $(squid -v 2>/dev/null | head -1)"
  echo "settings: ROUNDS=$ROUNDS BULK_MIB=$BULK_MIB DURATION=$DURATION CONC=$CONC IDLE=$IDLE RT=${RT:-0} LOGS=${LOGS:-0} RELAY=$RELAY PINS=$PINS MODES=$MODES"
} | tee "$OUT/meta.txt"

for mode in $MODES; do
for pin in $PINS; do
  for round in $(seq "$ROUNDS"); do
    # Fresh processes each round: the idle-tunnel RSS is measured first, before
    # earlier rounds' tunnels have grown the heap that later ones would reuse.
    start_all "$pin" "$mode"
    if [ "$mode" = tls ]; then
      for _ in $(seq 50); do [ -s "$WORK/ca.pem" ] && break; sleep 0.1; done
      [ -s "$WORK/ca.pem" ] || { echo "the TLS origin wrote no $WORK/ca.pem" >&2; exit 1; }
    fi
    key="$pin, $mode"
    echo "== $key, round $round/$ROUNDS; load: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/meta.txt"
    # Rotate the order each round so no column always runs first.
    order=("${LABELS[@]:$(( (round - 1) % ${#LABELS[@]} ))}" "${LABELS[@]:0:$(( (round - 1) % ${#LABELS[@]} ))}")
    if [ "$mode" = raw ]; then
      for l in "${order[@]}"; do
        if [ "$l" != direct ]; then run "$round" "$key" "$l" idle --count "$IDLE"; fi
      done
    fi
    for l in "${order[@]}"; do run "$round" "$key" "$l" bulk --mib "$BULK_MIB"; done
    for l in "${order[@]}"; do run "$round" "$key" "$l" tunnels --secs "$DURATION" --conc "$CONC"; done
    stop_all
  done
done
done
echo "== load at the end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/meta.txt"
"$LOAD_BIN" report "$RUNS" | tee "$OUT/report.md"
