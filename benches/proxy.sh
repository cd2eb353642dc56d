#!/usr/bin/env bash
# Egress proxy benchmarks, loopback only: Portcullis vs squid (Debian, equivalent
# allowlist: CONNECT to the one origin only) vs a direct connection, in one run, and
# (TLS mode) the gate's routed TLS listener (`[routed] tls_listen`: no CONNECT, the
# driver connects to the gate and the ClientHello's SNI routes the tunnel):
#   bulk throughput (one tunnel), tunnels/s with one PING/PONG each from 50
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
# Routed tunnels (ROUTED, the modes that have them, default "tls"; "" for none): the gate
# harness also runs a routed TLS listener (env ROUTED_TLS) on 127.0.0.1:ORIGIN_PORT (the
# port a routed connection comes in on is its destination port; the origin is on
# 127.0.0.2), in the same process and on the same proxy state as its CONNECT listener.
# Column "routed": the driver connects there and sends its ClientHello (SNI bench.test)
# or TLS handshake straight away; the gate resolves bench.test, dials the origin on the
# same port, replays the hello and relays. Same figures as the CONNECT column, and the
# gate's CPU (the same process) per GiB and per 1,000 tunnels. (The gate takes any
# loopback address on its listeners' ports for itself, so with ROUTED_TLS the harness
# resolves bench.test to 10.255.255.2 and its dialer connects to 127.0.0.2 for it, for
# the CONNECT and the routed tunnels alike: see benches/proxy_bench_gate.rs.)
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
#        GATES="old=/path/to/proxy_bench_gate-A new=/path/to/proxy_bench_gate-B": two
#        (or more) gate harness binaries side by side in one run, e.g. old vs new code,
#        labelled portcullis-old, portcullis-new..., on ports GATE_PORT, GATE_PORT+2...;
#        their routed listeners (routed-old, routed-new...) on 127.0.0.1, 127.0.0.3, ...
#        (ROUTED="" for a harness older than ROUTED_TLS);
#        only the driver (this tree's proxy_load) is built, or none if LOAD_BIN names one. Each harness must answer
#        bench.test with 127.0.0.2 and take `LISTEN_PORT ORIGIN_PORT` as this tree's
#        does. The rotating order then covers direct, every gate and squid, and
#        report.md (made by this script) gives median [min-max] per label, the last
#        gate's median relative to the first's, and the spread of the rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3} BULK_MIB=${BULK_MIB:-4096} DURATION=${DURATION:-5} CONC=${CONC:-50} IDLE=${IDLE:-1000}
PINS=${PINS:-pinned unpinned} MODES=${MODES:-raw tls} PROXY_CORE=${PROXY_CORE:-0} LOAD_CORE=${LOAD_CORE:-1}
ORIGIN_PORT=${ORIGIN_PORT:-39080} GATE_PORT=${GATE_PORT:-39128} SQUID_PORT=${SQUID_PORT:-39129}
OUT=${OUT:-target/bench-proxy} RT=${RT:-} LOGS=${LOGS:-} RELAY=${RELAY:-copy}
ROUTED=${ROUTED-tls}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# Bench targets are built under a hashed name in target/release/deps/: cargo's JSON
# messages say which file it made.
# With GATES: G_LABEL[i], G_BIN[i], G_PORT[i]; without, the one gate built here.
# R_LABEL[i], R_ADDR[i]: gate i's routed TLS listener (127.0.0.1, then .3, .4...: never
# the origin's 127.0.0.2), the same port as the origin's.
G_LABEL=() G_BIN=() G_PORT=() R_LABEL=() R_ADDR=()
if [ -n "${GATES:-}" ]; then
  if [ -n "${LOAD_BIN:-}" ]; then
    BUILT=$LOAD_BIN
  else
    BUILT=$(cargo build --release --bench proxy_load \
      --message-format=json-render-diagnostics | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p')
  fi
  port=$GATE_PORT
  for spec in $GATES; do
    name=${spec%%=*} bin=${spec#*=}
    [[ $spec == *=* && $name =~ ^[A-Za-z0-9_-]+$ && -x $bin ]] || { echo "GATES: expected NAME=EXECUTABLE, got '$spec'" >&2; exit 1; }
    [ "$port" = "$SQUID_PORT" ] && port=$((port + 1))
    G_LABEL+=("portcullis-$name") G_BIN+=("$bin") G_PORT+=("$port")
    R_LABEL+=("routed-$name") R_ADDR+=("127.0.0.$((${#R_ADDR[@]} == 0 ? 1 : ${#R_ADDR[@]} + 2)):$ORIGIN_PORT")
    port=$((port + 2))
  done
else
  BUILT=$(cargo build --release --bench proxy_bench_gate --bench proxy_load \
    --message-format=json-render-diagnostics | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p')
  G_LABEL=(portcullis) G_BIN=("$(grep '/proxy_bench_gate-[^/]*$' <<<"$BUILT")") G_PORT=("$GATE_PORT")
  R_LABEL=(routed) R_ADDR=("127.0.0.1:$ORIGIN_PORT")
fi
LOAD_BIN=${LOAD_BIN:-$(grep '/proxy_load-[^/]*$' <<<"$BUILT")}
GATE_BIN=${G_BIN[0]}
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
  ROUTING=""
  [[ " $ROUTED " == *" $2 "* ]] && ROUTING=1
  $lc "$LOAD_BIN" origin "$ORIGIN_PORT" "${TLS[@]}" & PIDS+=($!)
  G_PID=()
  local g glog routed
  for g in "${!G_BIN[@]}"; do
    glog="$OUT/gate.log"
    [ -n "${GATES:-}" ] && glog="$OUT/gate-${G_LABEL[g]#portcullis-}.log"
    routed=""
    [ -n "$ROUTING" ] && routed=${R_ADDR[g]}
    if [ -n "$LOGS" ]; then
      ROUTED_TLS=$routed PROXY_RELAY=$RELAY PROXY_LOG=1 $pc "${G_BIN[g]}" "${G_PORT[g]}" "$ORIGIN_PORT" 2>>"$glog" & G_PID[g]=$!
    else
      ROUTED_TLS=$routed PROXY_RELAY=$RELAY $pc "${G_BIN[g]}" "${G_PORT[g]}" "$ORIGIN_PORT" 2>/dev/null & G_PID[g]=$!
    fi
    PIDS+=("${G_PID[g]}")
  done
  GATE=${G_PID[0]}
  SQUID=""
  if [ -n "$HAVE_SQUID" ]; then
    $pc squid -N -f "$WORK/squid.conf" 2>>"$OUT/squid.stderr" & SQUID=$!; PIDS+=($SQUID)
  fi
  wait_port "$ORIGIN_PORT" 127.0.0.2
  for g in "${!G_PORT[@]}"; do
    wait_port "${G_PORT[g]}"
    [ -n "$ROUTING" ] && wait_port "$ORIGIN_PORT" "${R_ADDR[g]%:*}"
  done
  [ -n "$SQUID" ] && wait_port "$SQUID_PORT"
  sleep 1
}

# run ROUND PIN LABEL SUBCOMMAND ARGS...: one measurement, its rows into runs.tsv.
run() {
  local round=$1 pin=$2 label=$3 sub=$4; shift 4
  local via=(--label "$label" --origin "$ORIGIN_PORT")
  local g
  case $label in
    portcullis*)
      for g in "${!G_LABEL[@]}"; do
        [ "${G_LABEL[g]}" = "$label" ] && via+=(--proxy "${G_PORT[g]}" --pid "${G_PID[g]}")
      done ;;
    routed*)
      for g in "${!R_LABEL[@]}"; do
        [ "${R_LABEL[g]}" = "$label" ] && via+=(--routed "${R_ADDR[g]}" --pid "${G_PID[g]}")
      done ;;
    squid) via+=(--proxy "$SQUID_PORT" --target "127.0.0.2:$ORIGIN_PORT" --pid "$SQUID") ;;
  esac
  $LOAD "$sub" "${via[@]}" "${TLS[@]}" "$@" | sed "s/^/$round\t$pin\t/" >>"$RUNS"
}

# ALL_LABELS: every column of any mode, for the GATES report.
ALL_LABELS=(direct "${G_LABEL[@]}")
for mode in $MODES; do
  if [[ " $ROUTED " == *" $mode "* ]]; then ALL_LABELS+=("${R_LABEL[@]}"); break; fi
done
[ -n "$HAVE_SQUID" ] && ALL_LABELS+=(squid)
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- src benches 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
  echo "squid: $(squid -v 2>/dev/null | head -1)"
  if [ -n "${GATES:-}" ]; then
    for g in "${!G_LABEL[@]}"; do echo "gate ${G_LABEL[g]}: ${G_BIN[g]} (port ${G_PORT[g]})"; done
    echo "driver and origin: $LOAD_BIN"
  fi
  echo "routed listeners (modes: ${ROUTED:-none}): ${R_ADDR[*]}"
  echo "settings: ROUNDS=$ROUNDS BULK_MIB=$BULK_MIB DURATION=$DURATION CONC=$CONC IDLE=$IDLE RT=${RT:-0} LOGS=${LOGS:-0} RELAY=$RELAY PINS=$PINS MODES=$MODES ROUTED=$ROUTED"
} | tee "$OUT/meta.txt"

for mode in $MODES; do
for pin in $PINS; do
  for round in $(seq "$ROUNDS"); do
    # Fresh processes each round: the idle-tunnel RSS is measured first, before
    # earlier rounds' tunnels have grown the heap that later ones would reuse.
    start_all "$pin" "$mode"
    LABELS=(direct "${G_LABEL[@]}")
    [ -n "$ROUTING" ] && LABELS+=("${R_LABEL[@]}")
    [ -n "$HAVE_SQUID" ] && LABELS+=(squid)
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
if [ -z "${GATES:-}" ]; then
  "$LOAD_BIN" report "$RUNS" | tee "$OUT/report.md"
  exit 0
fi
# GATES: the driver's report knows only direct / portcullis / squid; this one takes
# every label. Rows of runs.tsv: round, pin, metric, label, value.
awk -F'\t' -v labels="${ALL_LABELS[*]}" -v first="${G_LABEL[0]}" -v last="${G_LABEL[${#G_LABEL[@]}-1]}" '
  function med(a, n,   i, j, t) { for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j > 0 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
                                  return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
  NF == 5 && $5 ~ /^-?[0-9.]+$/ { k = $2 SUBSEP $3 SUBSEP $4; n[k]++; v[k, n[k]] = $5
                                  if (!($2 in seen)) { seen[$2] = 1; pins[++np] = $2 } }
  END {
    nl = split(labels, L, " ")
    nm = split("bulk_MBps tunnels_per_s p50_ms p99_ms errors cpu_s_per_GiB cpu_ms_per_1k idle_KiB", M, " ")
    split("bulk, one tunnel, MB/s|tunnels/s, one PING/PONG each|p50 set-up + exchange, ms|p99 set-up + exchange, ms|tunnel errors|proxy CPU s per GiB|proxy CPU ms per 1k tunnels|RSS per idle tunnel, KiB", T, "|")
    split("0 0 2 2 0 3 0 1", P, " ")
    for (ip = 1; ip <= np; ip++) { pin = pins[ip]
      printf "\n### %s\n\nmedian [min-max] of the rounds (n per cell); %s / %s = ratio of the medians; spread = (max - min) / median for %s, %s\n\n", pin, last, first, first, last
      printf "|"; for (i = 1; i <= nl; i++) printf " | %s", L[i]; printf " | %s / %s | spread %s | spread %s |\n", last, first, first, last
      printf "|---"; for (i = 1; i <= nl + 3; i++) printf "|---:"; print "|"
      for (im = 1; im <= nm; im++) { m = M[im]; any = 0; row = ""
        for (i = 1; i <= nl; i++) { k = pin SUBSEP m SUBSEP L[i]; c = n[k] + 0
          if (!c) { row = row " | -"; continue }
          any = 1; delete a; for (j = 1; j <= c; j++) a[j] = v[k, j] + 0
          md = med(a, c); MED[L[i]] = md; SPR[L[i]] = (md != 0 ? sprintf("%.0f%%", (a[c] - a[1]) / md * 100) : "-")
          f = "%." P[im] "f"; row = row sprintf(" | " f " [" f "-" f "] (n=%d)", md, a[1], a[c], c) }
        if (!any) continue
        ratio = ((first in MED) && MED[first] != 0 && (last in MED) ? sprintf("%.1f%%", MED[last] / MED[first] * 100) : "")
        printf "| %s%s | %s | %s | %s |\n", T[im], row, ratio, SPR[first], SPR[last]
        delete MED; delete SPR } } }' "$RUNS" | tee "$OUT/report.md"
