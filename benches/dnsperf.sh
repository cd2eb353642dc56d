#!/usr/bin/env bash
# DNS throughput of the gate vs unbound, measured with dnsperf.
#
#   benches/dnsperf.sh            # build, run, print a Markdown table
#
# Everything stays on loopback: the gate's only upstream is a local unbound that
# answers the test names from local-data and REFUSES everything else (it never
# recurses), so no query can leave the machine.
#
# Servers are pinned to core 0 and dnsperf to core 1 (needs 2 cores). Both
# servers stay up and the runs alternate gate / unbound, so that load from other
# processes hits both alike; with ROUNDS > 1 the best round of each cell is
# reported (raw outputs of every round are kept).
#
# On a busy machine use RT=1: servers and dnsperf then run SCHED_FIFO. Without
# it, every packet hand-off waits for the other processes' time slices and the
# figures measure the scheduler (seen here: unbound 20k q/s at 13% CPU under
# load vs 120k q/s with RT=1). RT tasks leave others only ~5% of each core
# (kernel.sched_rt_runtime_us) while a run lasts: opt-in.
#
# Knobs (environment): PORTCULLIS_BIN (skip the build), LISTS_DIR, OUT,
# DURATION (s per run, 20), ROUNDS (1), CLIENTS (10), OUTSTANDING (-q, 200),
# THREADS (-T, 1), N_CACHED (10000), N_BLOCKED (100000), SYNTHETIC_NAMES
# (750000), RT (0), DECISION_LOG=1 (after the runs, the blocked workload once more
# for each gate with the per-blocked-query log line on, twice: stderr to a file, and
# stderr to a pipe whose reader takes SLOW_READER_BPS bytes/s (262144, about 800
# lines/s), so the gate's log writer must drop lines; the report says how many lines
# reached the file and the reader; each of ROUNDS rounds runs log off / file / pipe on a
# fresh gate, and the report gives their medians), KEEP_WORK=1 (keep the temp dir).
#
# Two (or more) gate binaries in one run, e.g. old vs new code:
#   GATES="old=/path/to/a/portcullis new=/path/to/b/portcullis" benches/dnsperf.sh
# Each gate gets its own port (5354, 5357, 5358...) and config, all stay up with
# unbound on core 0, and each round runs every server once per workload in an
# order that rotates by round (gate-old, gate-new, unbound / gate-new, unbound,
# gate-old / ...), so load from other processes hits them alike. Blocked queries
# are the names that every gate answers NXDOMAIN. The report adds, per workload,
# the median and min-max of the rounds and each gate's median relative to the
# first gate's. PORTCULLIS_BIN is ignored (nothing is built) when GATES is set.
# GATE_DNS_<NAME>: TOML lines put under the [dns] of gate NAME's config (dotted keys, e.g.
#   GATE_DNS_guardoff='guard.action = "off"' or GATE_DNS_allowlist='mode = "allowlist"').
#   A gate in allowlist mode gets an allowlist of exact rules for the cached names (the
#   blocked names stay blocked: an allow rule would be needed to forward them anyway).
# Every gate runs with [dns.rate_limit] off (one client sends every query) unless its
# GATE_DNS_ lines set rate_limit.*.
# PIN=0: no core pinning for servers or dnsperf (default 1: servers on core 0, dnsperf on 1).
# LAT_QPS=N (0: off): after each throughput run, LAT_SECS (5) s more at a fixed
# N queries/s (dnsperf -Q N -v) to get p50/p99/p99.9 latencies below saturation.
# LOADGEN=batched: the throughput runs use benches/dns_load.rs (built here, or LOAD_BIN)
# instead of dnsperf: the same files, sockets (-c) and outstanding queries (-q), moved
# with sendmmsg/recvmmsg from one thread, at a fraction of dnsperf's CPU per query. Use it
# when dnsperf's CPU % in the report is near 100: dnsperf, not the server, was the limit.
# Warm-up and the fixed-rate latency runs stay dnsperf.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LISTS_DIR=${LISTS_DIR:-$ROOT/../shared/data/blocklists}
OUT=${OUT:-$ROOT/target/bench-dnsperf}
DURATION=${DURATION:-20}
[ "$DURATION" -ge 4 ] || { echo "DURATION must be at least 4 (s)" >&2; exit 1; }
ROUNDS=${ROUNDS:-1}
CLIENTS=${CLIENTS:-10}
OUTSTANDING=${OUTSTANDING:-200}
THREADS=${THREADS:-1}
N_CACHED=${N_CACHED:-10000}
N_BLOCKED=${N_BLOCKED:-100000}
SYNTHETIC_NAMES=${SYNTHETIC_NAMES:-750000}
RT=${RT:-0}
LAT_QPS=${LAT_QPS:-0}
LAT_SECS=${LAT_SECS:-5}
SLOW_READER_BPS=${SLOW_READER_BPS:-262144}
PRIO=()
[ "$RT" = 1 ] && PRIO=(chrt -f 10)
GATE_PORT=5354   # the gate (the first one with GATES)
UP_PORT=5355     # the gate's local upstream (unbound, local-data only)
UNB_PORT=5356    # unbound under test (blocklist as local-zones)
# The gates under test: G_NAME[i] (the server label), G_BIN[i], G_PORT[i].
G_NAME=(); G_BIN=(); G_PORT=()
if [ -n "${GATES:-}" ]; then
    port=$GATE_PORT
    for spec in $GATES; do
        name=${spec%%=*}; bin=${spec#*=}
        [[ $spec == *=* && $name =~ ^[A-Za-z0-9_-]+$ && -n $bin ]] || { echo "GATES: expected NAME=BINARY, got '$spec'" >&2; exit 1; }
        G_NAME+=("gate-$name"); G_BIN+=("$bin"); G_PORT+=("$port")
        port=$((port == GATE_PORT ? UNB_PORT + 1 : port + 1))
    done
    [ "${#G_NAME[@]}" -ge 1 ] || { echo "GATES is empty" >&2; exit 1; }
fi
SERVER_CPU=0
CLIENT_CPU=1
# PIN=0: nothing pinned (servers and dnsperf may run on any core), as users run the gate.
if [ "${PIN:-1}" = 0 ]; then
    SERVER_CPU="0-$(($(nproc) - 1))"
    CLIENT_CPU=$SERVER_CPU
fi
CLK_TCK=$(getconf CLK_TCK)
INVOCATION="$0${*:+ $*}"

for tool in dnsperf unbound unbound-checkconf dig taskset ss shuf; do
    command -v "$tool" >/dev/null || { echo "missing: $tool (apt-get install dnsperf unbound bind9-dnsutils)" >&2; exit 1; }
done
[ "$(nproc)" -ge 2 ] || { echo "needs 2 cores (servers on core 0, dnsperf on core 1)" >&2; exit 1; }
for port in $GATE_PORT ${G_PORT[@]:1} $UP_PORT $UNB_PORT; do
    if ss -Hlun "sport = :$port" | grep -q .; then
        echo "port $port/udp is busy; stop whatever listens there" >&2; exit 1
    fi
done
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
if awk -v l="${LOADAVG_START%% *}" 'BEGIN { exit !(l > 0.5) }'; then
    echo "WARNING: load average $LOADAVG_START: other processes compete for the two cores${PRIO[*]:+ (RT=1: running SCHED_FIFO)}" >&2
    [ "$RT" = 1 ] || echo "         queries/s will mostly measure scheduling delays; consider RT=1 (see the header)" >&2
fi

WORK=$(mktemp -d /tmp/portcullis-dnsperf.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "${KEEP_WORK:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Start "$@" in the background on the server core; its PID lands in $STARTED.
# chrt and taskset exec the program, so $! is the server itself (the /proc
# entry we read CPU time and RSS from).
start_pinned() {
    local log=$1; shift
    "${PRIO[@]}" taskset -c "$SERVER_CPU" "$@" >"$log" 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
}

stop() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# utime+stime of the whole process (all threads), in clock ticks.
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
# Busy ticks of the whole machine: everything but idle and iowait.
machine_busy_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
# Time the hypervisor ran something else while this VM's CPUs wanted to run (all CPUs).
machine_steal_ticks() { awk '$1 == "cpu" { print $9 }' /proc/stat; }
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
now() { date +%s.%N; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# Poll until $port answers $name with $want (an address or an rcode); fail if $pid dies.
wait_answer() {
    local pid=$1 port=$2 name=$3 want=$4 log=$5 i got=""
    for ((i = 0; i < 1200; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "server (pid $pid) exited before answering; log tail:" >&2
            tail -n 30 "$log" >&2
            exit 1
        fi
        got=$(dig @127.0.0.1 -p "$port" +tries=1 +time=1 +noall +answer +comments "$name" A 2>/dev/null || true)
        if grep -q -- "$want" <<<"$got"; then return 0; fi
        sleep 0.05
    done
    echo "port $port never answered $name with $want; last reply:" >&2
    echo "$got" >&2
    tail -n 30 "$log" >&2
    exit 1
}

# Distinct blockable names out of hosts / adblock / dnsmasq / plain-domain lists,
# lower-cased, trailing dot removed. A deliberately simple parser: adblock rules
# with modifiers, exceptions and wildcards are skipped; IP lists are not names.
extract_names() {
    awk '
        { sub(/\r$/, "") }
        /^[ \t]*([#!]|\[|$)/ { next }
        {
            n = ""
            if ($0 ~ /^\|\|[^\^$\/]+\^$/) n = substr($0, 3, length($0) - 3)
            else if ($0 ~ /^(server|address|local)=\/[^\/]+\//) { split($0, p, "/"); n = p[2] }
            else if ($1 ~ /^(0\.0\.0\.0|127\.0\.0\.1|::|::1)$/) n = $2
            else n = $1
            n = tolower(n); sub(/\.$/, "", n)
            if (n !~ /^[a-z0-9_-]+(\.[a-z0-9_-]+)+$/ || length(n) > 253) next
            if (n ~ /^[0-9][0-9]?[0-9]?\.[0-9][0-9]?[0-9]?\.[0-9][0-9]?[0-9]?\.[0-9][0-9]?[0-9]?$/) next
            if (n ~ /^localhost\./) next
            k = split(n, l, ".")
            for (i = 1; i <= k; i++) if (length(l[i]) > 63) next
            print n
        }' "$@" | LC_ALL=C sort -u
}

# A deterministic "random" order, so reruns query the same names.
seeded_shuf() { shuf --random-source=<(yes portcullis-dnsperf) "$@"; }

mkdir -p "$OUT"
rm -f "$OUT"/*.txt "$OUT"/*.log "$OUT"/*.md "$OUT"/*.tsv "$OUT"/*.toml
echo "results: $OUT" >&2

# ---- 1. the binary -------------------------------------------------------------
if [ -n "${GATES:-}" ]; then
    BUILT_FROM=""
    for ((g = 0; g < ${#G_NAME[@]}; g++)); do
        [ -x "${G_BIN[g]}" ] || { echo "no binary at ${G_BIN[g]}" >&2; exit 1; }
        var="GATE_DNS_${G_NAME[g]#gate-}"; var=${var//-/_}
        BUILT_FROM+="${BUILT_FROM:+; }${G_NAME[g]} = \`${G_BIN[g]}\` (port ${G_PORT[g]}${!var:+, [dns] \`${!var//$'\n'/; }\`})"
    done
    BIN=${G_BIN[0]}
elif [ -n "${PORTCULLIS_BIN:-}" ]; then
    BIN=$PORTCULLIS_BIN
    BUILT_FROM="binary $BIN"
else
    BUILT_FROM="built from $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' + uncommitted changes')"
    echo "building the release binary..." >&2
    (cd "$ROOT" && cargo build --release --quiet --bin portcullis)
    BIN=$ROOT/target/release/portcullis
fi
[ -x "$BIN" ] || { echo "no binary at $BIN" >&2; exit 1; }
LOADGEN=${LOADGEN:-dnsperf}
case $LOADGEN in
    dnsperf) ;;
    batched)
        if [ -z "${LOAD_BIN:-}" ]; then
            echo "building the batched load driver..." >&2
            (cd "$ROOT" && cargo build --release --quiet --bench dns_load)
            LOAD_BIN=$(ls -t "$ROOT"/target/release/deps/dns_load-* | grep -v '\.d$' | head -n1)
        fi
        [ -x "$LOAD_BIN" ] || { echo "no load driver at $LOAD_BIN" >&2; exit 1; } ;;
    *) echo "LOADGEN: dnsperf or batched, got '$LOADGEN'" >&2; exit 1 ;;
esac
[ -n "${GATES:-}" ] || { G_NAME=(gate); G_BIN=("$BIN"); G_PORT=("$GATE_PORT"); }

# ---- 2. lists, names and query files ------------------------------------------
LIST_FILES=()
if [ -d "$LISTS_DIR" ] && compgen -G "$LISTS_DIR/*.txt" >/dev/null; then
    LISTS_DIR=$(cd "$LISTS_DIR" && pwd)
    LIST_FILES=("$LISTS_DIR"/*.txt)
    LISTS_ORIGIN="real lists: the ${#LIST_FILES[@]} \`*.txt\` files in \`$LISTS_DIR\`"
    NAME_FILES=(); DOMAIN_FILES=(); IP_FILES=0
    for f in "${LIST_FILES[@]}"; do
        case $(basename "$f") in
            ips-*) IP_FILES=$((IP_FILES + 1)) ;;
            domains-*) NAME_FILES+=("$f"); DOMAIN_FILES+=("$f") ;;
            *) NAME_FILES+=("$f") ;;
        esac
    done
else
    LISTS_ORIGIN="SYNTHETIC list of $SYNTHETIC_NAMES names ($LISTS_DIR is absent)"
    echo "WARNING: $LISTS_DIR is absent; using a synthetic list of $SYNTHETIC_NAMES names" >&2
    mkdir -p "$WORK/lists"
    awk -v n="$SYNTHETIC_NAMES" 'BEGIN { srand(7); for (i = 0; i < n; i++)
        printf "t%x-%d.%s%d.%s\n", int(rand() * 2^31), i, (i % 3 ? "ads" : "track"), i % 9973, (i % 2 ? "com" : "net") }' \
        >"$WORK/lists/domains-synthetic.txt"
    LIST_FILES=("$WORK/lists/domains-synthetic.txt"); IP_FILES=0
    NAME_FILES=("${LIST_FILES[@]}"); DOMAIN_FILES=("${LIST_FILES[@]}")
fi

IP_NOTE=""
[ "$IP_FILES" -gt 0 ] && IP_NOTE=" (+ $IP_FILES IP lists, which unbound does not get)"
echo "extracting names..." >&2
extract_names "${NAME_FILES[@]}" >"$WORK/blocked-all.txt"
UNBOUND_NAMES=$(wc -l <"$WORK/blocked-all.txt")
# Blocked queries: a sample of the plain-domain lists (also in the unbound set).
extract_names "${DOMAIN_FILES[@]}" | seeded_shuf -n "$N_BLOCKED" | awk '{ print $1, "A" }' >"$WORK/q-blocked.txt"
# Cached names: answered by the local upstream with public-looking addresses
# (the gate strips private answers) and a long TTL, so they stay cached.
awk -v n="$N_CACHED" 'BEGIN { for (i = 1; i <= n; i++) print "c" i ".bench.example A" }' >"$WORK/q-cached.txt"

# A records for the cached names: 93.184.x.y is public space.
local_data() {
    awk -v n="$N_CACHED" 'BEGIN { for (i = 1; i <= n; i++)
        printf "    local-data: \"c%d.bench.example. 3600 IN A 93.184.%d.%d\"\n", i, int(i / 256) % 256, i % 256 }'
}
FIRST_CACHED_IP=93.184.0.1

# Common unbound settings. "." refuse + outgoing-interface on loopback: unbound
# never recurses, and even if it tried it could only send from 127.0.0.1.
unbound_conf() {
    local dir=$1 port=$2
    cat <<EOF
server:
    interface: 127.0.0.1
    port: $port
    do-ip6: no
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "$dir"
    pidfile: "$dir/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 0
    num-threads: 1
    module-config: "iterator"
    outgoing-interface: 127.0.0.1
    access-control: 127.0.0.0/8 allow
    local-zone: "." refuse
    local-zone: "bench.example." static
remote-control:
    control-enable: no
server:
EOF
    local_data
}

# ---- 3. local upstream for the gate -------------------------------------------
mkdir -p "$WORK/up" "$WORK/unb"
unbound_conf "$WORK/up" "$UP_PORT" >"$WORK/up/unbound.conf"
unbound-checkconf "$WORK/up/unbound.conf" >/dev/null
start_pinned "$WORK/up.log" unbound -d -c "$WORK/up/unbound.conf"
UP_PID=$STARTED
# It shares core 0 with the servers, but only works during the gate's warm-up.
wait_answer "$UP_PID" "$UP_PORT" c1.bench.example "$FIRST_CACHED_IP" "$WORK/up.log"

# ---- 4. the gate -------------------------------------------------------------------
gate_conf() {
    local level=$1 port=$2 name=${3:-} f extra="" var
    if [ -n "$name" ]; then
        var="GATE_DNS_${name#gate-}"; var=${var//-/_}
        extra=${!var:-}
    fi
    if grep -q 'allowlist' <<<"$extra"; then
        awk -v n="$N_CACHED" 'BEGIN { for (i = 1; i <= n; i++) printf "[[allow]]\nhost = \"c%d.bench.example\"\n\n", i }' \
            >"$OUT/allowlist-$name.toml"
        printf 'allowlist = "%s"\n' "$OUT/allowlist-$name.toml"
    fi
    cat <<EOF
# Generated by benches/dnsperf.sh. The only upstream is the local unbound.
[dns]
listen = ["127.0.0.1:$port"]
max_inflight = 4096
$(printf '%b' "$extra")
$(grep -q 'rate_limit' <<<"$extra" || echo 'rate_limit.queries = 0')

[upstream]
strategy = "failover"
timeout_ms = 2000

[[upstream.servers]]
url = "udp://127.0.0.1:$UP_PORT"

[cache]
max_entries = 200000

[log]
format = "json"
allowed_queries = false
# "policy ready" and "listening" are info lines; the per-query decision lines
# (target portcullis::decision) stay off the hot path unless DECISION_LOG=1.
level = "$level"
EOF
    # Side by side (GATES), the gates would fight over the default proxy (3128)
    # and admin (9953) listeners: they serve DNS only.
    [ -n "${GATES:-}" ] && printf '\n[proxy]\nlisten = []\n\n[admin]\nlisten = []\n'
    for f in "${LIST_FILES[@]}"; do
        printf '\n[[lists]]\nname = "%s"\npath = "%s"\nformat = "auto"\n' "$(basename "$f" .txt)" "$f"
    done
}

# The gate must never see an environment override (PORTCULLIS_UPSTREAMS...)
# that could point it at a non-local upstream, nor RUST_LOG.
GATE_ENV=(env -u RUST_LOG)
while read -r var; do GATE_ENV+=(-u "$var"); done < <(compgen -e | grep '^PORTCULLIS_' || true)

# Start gate number $3 (0: the only one without GATES) with log level $1, stderr
# to $2; sets GATE_PID and GATE_LOAD_S.
start_gate() {
    local level=$1 log=$2 g=${3:-0} t0 conf
    conf="$OUT/portcullis.toml"
    [ -n "${GATES:-}" ] && conf="$OUT/portcullis-${G_NAME[g]}.toml"
    gate_conf "$level" "${G_PORT[g]}" "${G_NAME[g]}" >"$conf"
    if grep -E '^url' "$conf" | grep -vq "udp://127.0.0.1:$UP_PORT"; then
        echo "refusing to start: non-local upstream in the generated config" >&2; exit 1
    fi
    t0=$(now)
    start_pinned "$log" "${GATE_ENV[@]}" "${G_BIN[g]}" --config "$conf"
    GATE_PID=$STARTED
    wait_answer "$GATE_PID" "${G_PORT[g]}" c1.bench.example "$FIRST_CACHED_IP" "$log"
    GATE_LOAD_S=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')
}

# Send every cached name once: fills the gate's cache (harmless for unbound).
warm() {
    "${PRIO[@]}" taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -p "$1" -d "$WORK/q-cached.txt" -n 1 -q 100 >"$OUT/warm-$2.txt" 2>&1
}

G_PID=(); G_DENY=(); G_BUILD_MS=(); G_RSS_LOAD=(); G_START_S=()
for ((g = 0; g < ${#G_NAME[@]}; g++)); do
    echo "starting ${G_NAME[g]}..." >&2
    start_gate "info,portcullis::decision=off" "$OUT/${G_NAME[g]}.log" "$g"
    grep -q '"policy ready"' "$OUT/${G_NAME[g]}.log" || { echo "no 'policy ready' line in the ${G_NAME[g]} log" >&2; tail "$OUT/${G_NAME[g]}.log" >&2; exit 1; }
    G_PID[g]=$GATE_PID
    G_DENY[g]=$(grep '"policy ready"' "$OUT/${G_NAME[g]}.log" | grep -o '"deny_names":[0-9]*' | cut -d: -f2)
    G_BUILD_MS[g]=$(grep '"policy ready"' "$OUT/${G_NAME[g]}.log" | grep -o '"build_ms":[0-9]*' | cut -d: -f2)
    G_RSS_LOAD[g]=$(status_kb "$GATE_PID" VmRSS)
    G_START_S[g]=$GATE_LOAD_S
done
GATE_PID=${G_PID[0]}

# Keep only names the gate(s) really block: list entries on the shipped allowlist
# (github.com...) would be forwarded (to the local upstream, which refuses them).
: >"$OUT/not-blocked-by-gate.txt"
for ((g = 0; g < ${#G_NAME[@]}; g++)); do
    "${PRIO[@]}" taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -p "${G_PORT[g]}" -d "$WORK/q-blocked.txt" -n 1 -q 100 -v 2>&1 |
        awk '$1 == ">" && $2 != "NXDOMAIN" { print $2, $3, $4 }' >"$WORK/not-blocked.txt"
    if [ -s "$WORK/not-blocked.txt" ]; then
        cat "$WORK/not-blocked.txt" >>"$OUT/not-blocked-by-gate.txt"
        awk '{ print $2, $3 }' "$WORK/not-blocked.txt" | grep -vxF -f - "$WORK/q-blocked.txt" >"$WORK/q-blocked.tmp" || true
        mv "$WORK/q-blocked.tmp" "$WORK/q-blocked.txt"
    fi
done
N_NOT_BLOCKED=$(wc -l <"$OUT/not-blocked-by-gate.txt")
DROPPED_NOTE=""
if [ "$N_NOT_BLOCKED" -gt 0 ]; then
    DROPPED_NOTE=" ($N_NOT_BLOCKED sampled names dropped: the gate does not answer them NXDOMAIN: $(awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1 }' "$OUT/not-blocked-by-gate.txt" | head -c 300))"
fi
N_BLOCKED_Q=$(wc -l <"$WORK/q-blocked.txt")
[ "$N_BLOCKED_Q" -gt $((N_BLOCKED / 2)) ] || { echo "the gate blocks only $N_BLOCKED_Q of the sampled names" >&2; exit 1; }
# Mix: alternate lines, half blocked, half cached.
awk -v n="$N_CACHED" 'NR == FNR { c[FNR] = $0; next } { print; print c[(FNR - 1) % n + 1] }' \
    "$WORK/q-cached.txt" <(head -n $((N_BLOCKED / 2)) "$WORK/q-blocked.txt") >"$WORK/q-mix.txt"
for ((g = 0; g < ${#G_NAME[@]}; g++)); do
    warm "${G_PORT[g]}" "${G_NAME[g]}"
done

# ---- 5. unbound with the same names ---------------------------------------------------
echo "generating the unbound config ($UNBOUND_NAMES local-zones)..." >&2
{
    unbound_conf "$WORK/unb" "$UNB_PORT"
    awk '{ printf "    local-zone: \"%s.\" always_nxdomain\n", $1 }' "$WORK/blocked-all.txt"
} >"$WORK/unb/unbound.conf"
unbound-checkconf "$WORK/unb/unbound.conf" >/dev/null
UNB_T0=$(now)
start_pinned "$OUT/unbound.log" unbound -d -c "$WORK/unb/unbound.conf"
UNB_PID=$STARTED
wait_answer "$UNB_PID" "$UNB_PORT" c1.bench.example "$FIRST_CACHED_IP" "$OUT/unbound.log"
UNB_LOAD_S=$(awk -v a="$UNB_T0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')
UNB_RSS_LOAD=$(status_kb "$UNB_PID" VmRSS)
wait_answer "$UNB_PID" "$UNB_PORT" "$(head -n1 "$WORK/q-blocked.txt" | cut -d' ' -f1)" "NXDOMAIN" "$OUT/unbound.log"
warm "$UNB_PORT" unbound

# ---- 6. the runs --------------------------------------------------------------------
DNSPERF=("${PRIO[@]}" taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -l "$DURATION" -t 2 -c "$CLIENTS" -T "$THREADS" -q "$OUTSTANDING")
# (dns_load prints dnsperf's summary lines, so measure() reads either.)
[ "$LOADGEN" = batched ] && DNSPERF=("${PRIO[@]}" taskset -c "$CLIENT_CPU" "$LOAD_BIN" -s 127.0.0.1 -l "$DURATION" -c "$CLIENTS" -q "$OUTSTANDING")
printf 'round\tworkload\tserver\tqps\tavg_ms\tmax_ms\tlost_pct\tcpu_per_100k\tqps_per_cpu_s\tserver_cpu_pct\tdnsperf_cpu_pct\tother_cpu_pct\tcompleted\trcodes\tupstream_cpu_s\tsteal_pct\n' >"$OUT/runs.tsv"

# One dnsperf run against $port. Records throughput and latency, the server's
# CPU time per 100k completed queries (and its inverse, queries per CPU-second:
# the single-core capacity), and over the steady middle of the run (dnsperf
# spins while it waits for the last answers) how busy the server and dnsperf
# were (~100% for dnsperf means the client was the limit) and the CPU
# everything else used (loopback softirq, other processes: the noise).
measure() {
    local round=$1 server=$2 pid=$3 port=$4 workload=$5 file=$6
    local raw="$OUT/dnsperf-$server-$workload-r$round.txt"
    local c0 c1 w0 w1 d0 d1 m0 m1 s0 s1 u0 u1 t0 t1 dp
    echo "  round $round: $server / $workload" >&2
    c0=$(cpu_ticks "$pid" || echo 0); u0=$(cpu_ticks "$UP_PID" || echo 0)
    "${DNSPERF[@]}" -p "$port" -d "$file" >"$raw" 2>&1 &
    dp=$!
    sleep 1
    # (|| echo 0: a server that dies mid-run must not abort the script before its log is shown)
    w0=$(cpu_ticks "$pid" || echo 0); d0=$(cpu_ticks "$dp" || echo 0); m0=$(machine_busy_ticks); s0=$(machine_steal_ticks); t0=$(now)
    sleep $((DURATION - 2))
    w1=$(cpu_ticks "$pid" || echo 0); d1=$(cpu_ticks "$dp" || echo 0); m1=$(machine_busy_ticks); s1=$(machine_steal_ticks); t1=$(now)
    wait "$dp" || true
    c1=$(cpu_ticks "$pid" 2>/dev/null || echo "$c0"); u1=$(cpu_ticks "$UP_PID" 2>/dev/null || echo "$u0")
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "!! $server died during $workload; log tail:" >&2
        tail -n 40 "$OUT/$server.log" >&2 || true
    fi
    awk -v OFS='\t' -v r="$round" -v w="$workload" -v s="$server" -v tck="$CLK_TCK" \
        -v cpu=$((c1 - c0)) -v up=$((u1 - u0)) -v wsrv=$((w1 - w0)) -v wcli=$((d1 - d0)) -v mach=$((m1 - m0)) -v steal=$((s1 - s0)) \
        -v wall="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" '
        function after(line, label,   v) { v = line; sub("^.*" label " *", "", v); return v }
        /Queries completed:/ { done = after($0, ":"); sub(/ .*/, "", done) }
        /Queries lost:/ { lost = after($0, "\\("); sub(/%.*/, "", lost) }
        /Response codes:/ { rc = after($0, ":") }
        /Queries per second:/ { qps = after($0, ":") }
        /Average Latency/ { avg = after($0, ":"); sub(/ .*/, "", avg); max = after($0, "max "); sub(/\).*/, "", max) }
        END {
            if (done == "" || done == 0) { print r, w, s, "FAILED", "", "", "", "", "", "", "", "", 0, "see " FILENAME, "", ""; exit }
            scpu = cpu / tck; pct = 100 / tck / wall
            printf "%s\t%s\t%s\t%.0f\t%.3f\t%.1f\t%s\t%.3f\t%.0f\t%.0f\t%.0f\t%.0f\t%s\t%s\t%.2f\t%.0f\n", r, w, s, qps,
                avg * 1000, max * 1000, lost, scpu / done * 100000, (scpu > 0 ? done / scpu : 0),
                wsrv * pct, wcli * pct, (mach > wsrv + wcli ? (mach - wsrv - wcli) * pct : 0), done, rc, up / tck, steal * pct
        }' "$raw" >>"$OUT/runs.tsv"
    [ "$LAT_QPS" -gt 0 ] && latency "$round" "$server" "$port" "$workload" "$file"
    return 0
}

# LAT_QPS: LAT_SECS s at a fixed rate, every answer's latency (dnsperf -v:
# "> RCODE NAME TYPE SECONDS"), percentiles into lat.tsv.
latency() {
    local round=$1 server=$2 port=$3 workload=$4 file=$5
    local raw="$WORK/lat-$server-$workload-r$round.txt"
    echo "  round $round: $server / $workload, $LAT_QPS q/s for $LAT_SECS s" >&2
    "${PRIO[@]}" taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -p "$port" -d "$file" -l "$LAT_SECS" -t 2 \
        -c "$CLIENTS" -q "$OUTSTANDING" -Q "$LAT_QPS" -v >"$raw" 2>&1 || true
    awk '$1 == ">" { print $5 * 1000 }' "$raw" | LC_ALL=C sort -g | awk -v OFS='\t' -v r="$round" -v w="$workload" -v s="$server" \
        -v lost="$(grep -c 'timed out' "$raw" || true)" '
        { v[NR] = $1 }
        function p(q,   i) { i = int(q * NR + 0.999999); if (i < 1) i = 1; if (i > NR) i = NR; return v[i] }
        END { if (NR == 0) { print r, w, s, 0, "", "", "", "", lost; exit }
              printf "%s\t%s\t%s\t%d\t%.3f\t%.3f\t%.3f\t%.3f\t%s\n", r, w, s, NR, p(0.5), p(0.99), p(0.999), v[NR], lost }' >>"$OUT/lat.tsv"
    rm -f "$raw"
}

# DECISION_LOG's slow pipe reader: reads stdin at argv[1] bytes/s on average, writes
# "LINES BYTES" to argv[2] at EOF.
SLOW_READER='
import os, sys, time
rate, out = int(sys.argv[1]), sys.argv[2]
lines = got = 0
t0 = time.monotonic()
while chunk := os.read(0, 4096):
    got += len(chunk); lines += chunk.count(b"\n")
    ahead = got / rate - (time.monotonic() - t0)
    if ahead > 0:
        time.sleep(ahead)
with open(out, "w") as f:
    f.write(f"{lines} {got}\n")
'
DLOG_NOTES=()
[ "$LAT_QPS" -gt 0 ] && printf 'round\tworkload\tserver\tanswers\tp50_ms\tp99_ms\tp999_ms\tmax_ms\ttimeouts\n' >"$OUT/lat.tsv"
# Servers in run order: S_NAME / S_PID / S_PORT (the gates, then unbound).
S_NAME=("${G_NAME[@]}" unbound); S_PID=("${G_PID[@]}" "$UNB_PID"); S_PORT=("${G_PORT[@]}" "$UNB_PORT")
NS=${#S_NAME[@]}
for ((round = 1; round <= ROUNDS; round++)); do
    for w in blocked cached mix; do
        for ((k = 0; k < NS; k++)); do
            # Without GATES always gate, unbound; with GATES the order rotates by round.
            i=$k
            [ -n "${GATES:-}" ] && i=$(((k + round - 1) % NS))
            measure "$round" "${S_NAME[i]}" "${S_PID[i]}" "${S_PORT[i]}" "$w" "$WORK/q-$w.txt"
        done
    done
done
G_RSS_END=(); G_HWM=()
for ((g = 0; g < ${#G_NAME[@]}; g++)); do
    G_RSS_END[g]=$(status_kb "${G_PID[g]}" VmRSS); G_HWM[g]=$(status_kb "${G_PID[g]}" VmHWM)
done
UNB_RSS_END=$(status_kb "$UNB_PID" VmRSS); UNB_HWM=$(status_kb "$UNB_PID" VmHWM)
stop "$UNB_PID"

for ((g = 0; g < ${#G_NAME[@]}; g++)); do stop "${G_PID[g]}"; done

# DECISION_LOG=1: per round and gate, the blocked workload three times on a freshly started
# gate: the log off (as in the rounds above), every decision line to a file, and to a pipe
# read slowly. The three alternate, so that the machine's drift hits them alike; the report
# gives each one's median and its cost against the log-off median.
decision_log_round() {
    local r=$1 g=$2 name=${G_NAME[$2]} completed r_lines r_bytes
    echo "$name, round $r: log off, then decision logging to a file and to a slow pipe..." >&2
    start_gate "info,portcullis::decision=off" "$WORK/off.log" "$g"
    measure "$r" "$name-decision-log-off" "$GATE_PID" "${G_PORT[g]}" blocked "$WORK/q-blocked.txt"
    stop "$GATE_PID"
    # The shipped default: a JSON line per blocked query. To a file: formatting +
    # queueing + batched writes.
    start_gate info "$WORK/decision-log.txt" "$g"
    measure "$r" "$name-decision-log-file" "$GATE_PID" "${G_PORT[g]}" blocked "$WORK/q-blocked.txt"
    stop "$GATE_PID"
    completed=$(awk -F'\t' -v s="$name-decision-log-file" -v r="$r" '$3 == s && $1 == r { print $13 }' "$OUT/runs.tsv")
    DLOG_NOTES+=("$name-decision-log-file, round $r: $(grep -c '"dns decision"' "$WORK/decision-log.txt" || true) decision lines in the file ($(du -m "$WORK/decision-log.txt" | cut -f1) MiB) for $completed queries the load tool counted as answered")
    rm -f "$WORK/decision-log.txt"
    # To a pipe read slowly (a log collector that cannot keep up): lines are
    # dropped (portcullis_log_lines_dropped_total), queries must not wait.
    rm -f "$WORK/log.fifo"; mkfifo "$WORK/log.fifo"
    taskset -c "$CLIENT_CPU" python3 -c "$SLOW_READER" "$SLOW_READER_BPS" "$WORK/reader.txt" <"$WORK/log.fifo" &
    READER_PID=$!
    start_gate info "$WORK/log.fifo" "$g"
    measure "$r" "$name-decision-log-pipe" "$GATE_PID" "${G_PORT[g]}" blocked "$WORK/q-blocked.txt"
    stop "$GATE_PID"
    # The reader gets EOF once the gate has exited (at stop the gate waits 2 s at most
    # for the pipe to take what its writer still holds, then drops it).
    wait "$READER_PID" || true
    completed=$(awk -F'\t' -v s="$name-decision-log-pipe" -v r="$r" '$3 == s && $1 == r { print $13 }' "$OUT/runs.tsv")
    read -r r_lines r_bytes <"$WORK/reader.txt"
    DLOG_NOTES+=("$name-decision-log-pipe, round $r: the reader took $r_bytes bytes, $r_lines lines (every line the gate wrote, not only decisions), for $completed answered queries: the rest of the decision lines were dropped")
}
if [ "${DECISION_LOG:-0}" = 1 ]; then
    for ((r = 1; r <= ROUNDS; r++)); do
        for ((g = 0; g < ${#G_NAME[@]}; g++)); do decision_log_round "$r" "$g"; done
    done
fi

# The best round (highest queries/s) of each workload x server.
awk -F'\t' 'NR > 1 && $4 != "FAILED" { k = $2 SUBSEP $3; if (!(k in best) || $4 + 0 > best[k] + 0) { best[k] = $4; line[k] = $0 }
               if (!(k in order)) { order[k] = ++n; keys[n] = k } }
            END { for (i = 1; i <= n; i++) print line[keys[i]] }' "$OUT/runs.tsv" >"$OUT/best.tsv"
UP_CPU_CACHED=$(awk -F'\t' '$3 ~ /^gate/ && $3 !~ /decision-log/ && $2 == "cached" { s += $15 } END { printf "%.2f", s }' "$OUT/runs.tsv")

# The median of a[1..n] (sorts a in place), for the report's awk programs.
AWK_MEDIAN='function med(a, n,   i, j, t) { for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j > 0 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
                                 return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }'

# ---- 7. report ------------------------------------------------------------------------
{
    echo "## DNS throughput vs unbound (dnsperf)"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -n1), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo); $(uname -sr)"
    echo "- $(dnsperf -h 2>&1 | sed -n 's/^Version /dnsperf /p' | head -n1); unbound $(unbound -V | sed -n 's/^Version //p'); portcullis $("$BIN" --version | awk '{ print $2 }') ($BUILT_FROM)"
    echo "- command: \`$INVOCATION\` (LOADGEN=$LOADGEN DURATION=$DURATION ROUNDS=$ROUNDS CLIENTS=$CLIENTS OUTSTANDING=$OUTSTANDING THREADS=$THREADS RT=$RT PIN=${PIN:-1} LAT_QPS=$LAT_QPS DECISION_LOG=${DECISION_LOG:-0}); load average at start: $LOADAVG_START"
    echo "- each run: \`${DNSPERF[*]} -p PORT -d FILE\`; servers on core $SERVER_CPU (\`${PRIO[*]:+${PRIO[*]} }taskset -c $SERVER_CPU\`; unbound \`num-threads: 1\`), dnsperf on core $CLIENT_CPU; gate and unbound runs alternate; best of $ROUNDS rounds by queries/s"
    echo "- lists: $LISTS_ORIGIN"
    echo "- workloads: **blocked** = $N_BLOCKED_Q A queries sampled from the plain-domain lists${DROPPED_NOTE}, NXDOMAIN from both servers; **cached** = $N_CACHED names \`cN.bench.example\` answered once by the gate's local upstream, then from the gate's cache (unbound answers them from \`local-data\`, its best case); **mix** = alternating blocked / cached"
    echo
    echo "| workload | server | queries/s | avg latency ms | max latency ms | lost % | server CPU s / 100k queries | queries / server CPU-s | server CPU % | dnsperf CPU % | other CPU % | response codes |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $14 }' "$OUT/best.tsv"
    echo
    echo "| server | deny names loaded | start → first answer | RSS after load | RSS after the runs | peak RSS (VmHWM) |"
    echo "|---|---:|---:|---:|---:|---:|"
    for ((g = 0; g < ${#G_NAME[@]}; g++)); do
        label=portcullis; [ -n "${GATES:-}" ] && label="portcullis (${G_NAME[g]})"
        echo "| $label | ${G_DENY[g]} names${IP_NOTE}; policy build ${G_BUILD_MS[g]} ms | ${G_START_S[g]} s | $(mib "${G_RSS_LOAD[g]}") MiB | $(mib "${G_RSS_END[g]}") MiB | $(mib "${G_HWM[g]}") MiB |"
    done
    echo "| unbound | $UNBOUND_NAMES \`local-zone always_nxdomain\` (awk-extracted) | ${UNB_LOAD_S} s | $(mib "$UNB_RSS_LOAD") MiB | $(mib "$UNB_RSS_END") MiB | $(mib "$UNB_HWM") MiB |"
    echo
    echo "- CPU %: of one core, over the steady middle of each run; *other* = everything else on the machine (loopback softirq, other processes). Under RT=1 a SCHED_FIFO task tops out at ~95% (kernel.sched_rt_runtime_us) and that throttling shows up as ~50 ms max latencies"
    echo "- the gate's local upstream used ${UP_CPU_CACHED} CPU s during the gate's cached runs (0 = every answer came from the gate's cache)"
    if [ -n "${GATES:-}" ]; then
        echo
        echo "Every round ($ROUNDS; run order rotating by round), queries/s and avg latency: median [min-max]; *vs ${G_NAME[0]}* = the median queries/s relative to ${G_NAME[0]}'s, and *spread* = (max - min) / median of the rounds:"
        echo
        echo "| workload | server | queries/s | spread | vs ${G_NAME[0]} | avg latency ms | server CPU s / 100k queries |"
        echo "|---|---|---:|---:|---:|---:|---:|"
        awk -F'\t' -v ref="${G_NAME[0]}" -v servers="${S_NAME[*]}" '
            '"$AWK_MEDIAN"'
            function stat(col, w, s, fmt,   n, i, a, m) { n = 0; for (i = 1; i <= nr; i++) if (W[i] == w && S[i] == s) a[++n] = V[i, col]
                                            if (!n) { M = 0; return "-" }; m = med(a, n); M = m; LO = a[1]; HI = a[n]; return sprintf(fmt " [" fmt "-" fmt "]", m, a[1], a[n]) }
            NR > 1 && $4 != "FAILED" && $3 !~ /decision-log/ { nr++; W[nr] = $2; S[nr] = $3; V[nr, 4] = $4; V[nr, 5] = $5; V[nr, 8] = $8 }
            END { ns = split(servers, sv, " ")
                  split("blocked cached mix", wl, " ")
                  for (x = 1; x <= 3; x++) { w = wl[x]; stat(4, w, ref, "%.0f"); base = M
                      for (y = 1; y <= ns; y++) { s = sv[y]
                          q = stat(4, w, s, "%.0f"); spread = (M > 0 ? sprintf("%.1f%%", (HI - LO) / M * 100) : "-")
                          rel = (s ~ /^gate-/ && base > 0 ? sprintf("%+.1f%%", (M / base - 1) * 100) : "")
                          l = stat(5, w, s, "%.3f"); c = stat(8, w, s, "%.3f")
                          printf "| %s | %s | %s | %s | %s | %s | %s |\n", w, s, q, spread, rel, l, c } } }' "$OUT/runs.tsv"
        echo
    fi
    if [ "$LAT_QPS" -gt 0 ]; then
        echo
        echo "Latency at a fixed $LAT_QPS queries/s ($LAT_SECS s after each throughput run, \`dnsperf -Q $LAT_QPS -v\`), ms: median [min-max] of the rounds:"
        echo
        echo "| workload | server | p50 | p99 | p99.9 | max | answers / round | timeouts |"
        echo "|---|---|---:|---:|---:|---:|---:|---:|"
        awk -F'\t' -v servers="${S_NAME[*]}" '
            '"$AWK_MEDIAN"'
            function stat(col, w, s, fmt,   n, i, a) { n = 0; for (i = 1; i <= nr; i++) if (W[i] == w && S[i] == s && V[i, col] != "") a[++n] = V[i, col]
                                            if (!n) return "-"; m = med(a, n); return sprintf(fmt " [" fmt "-" fmt "]", m, a[1], a[n]) }
            NR > 1 { nr++; W[nr] = $2; S[nr] = $3; for (c = 4; c <= 9; c++) V[nr, c] = $c }
            END { ns = split(servers, sv, " "); split("blocked cached mix", wl, " ")
                  for (x = 1; x <= 3; x++) for (y = 1; y <= ns; y++) { w = wl[x]; s = sv[y]
                      printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", w, s, stat(5, w, s, "%.3f"), stat(6, w, s, "%.3f"),
                          stat(7, w, s, "%.3f"), stat(8, w, s, "%.2f"), stat(4, w, s, "%.0f"), stat(9, w, s, "%.0f") } }' "$OUT/lat.tsv"
        echo
    fi
    if [ "${DECISION_LOG:-0}" = 1 ]; then
        echo
        echo "Decision log, blocked workload ($ROUNDS rounds of off / file / slow pipe, each on a fresh gate): q/s median [min-max], CPU µs per query median, the machine's steal (% of one core, median), and the cost against log off: of the q/s medians, and of CPU per query paired by round (the median of each round's log-on / log-off ratio, and the q/s that CPU cost means on a saturated core; steal from other VMs moves q/s far more than it moves CPU per query):"
        echo
        echo "| gate | log | queries/s | CPU µs / query | steal % | vs off, q/s | vs off, CPU paired (q/s equivalent) |"
        echo "|---|---|---:|---:|---:|---:|---:|"
        awk -F'\t' -v gates="${G_NAME[*]}" '
            '"$AWK_MEDIAN"'
            NR > 1 && $4 != "FAILED" && $3 ~ /-decision-log-/ { nr++; S[nr] = $3; R[nr] = $1; Q[nr] = $4; C[nr] = $8 * 10; ST[nr] = $16; CR[$3, $1] = $8 * 10 }
            END { ng = split(gates, gv, " "); split("off file pipe", kinds, " ")
                  for (x = 1; x <= ng; x++) for (y = 1; y <= 3; y++) { s = gv[x] "-decision-log-" kinds[y]; so = gv[x] "-decision-log-off"; n = 0; np = 0
                      for (i = 1; i <= nr; i++) if (S[i] == s) { n++; q[n] = Q[i]; c[n] = C[i]; st[n] = ST[i]
                          if (y > 1 && ((so, R[i]) in CR) && CR[so, R[i]] > 0) { np++; pr[np] = C[i] / CR[so, R[i]] } }
                      if (!n) continue
                      mq = med(q, n); lo = q[1]; hi = q[n]; mc = med(c, n); ms = med(st, n)
                      if (y == 1) off = mq
                      paired = ""
                      if (np) { m = med(pr, np); paired = sprintf("%+.1f%% (%+.1f%%)", (m - 1) * 100, (1 / m - 1) * 100) }
                      printf "| %s | %s | %.0f [%.0f-%.0f] | %.2f | %.0f | %s | %s |\n", gv[x], kinds[y], mq, lo, hi, mc, ms, (y == 1 || !off ? "" : sprintf("%+.1f%%", (mq / off - 1) * 100)), paired } }' "$OUT/runs.tsv"
        echo
    fi
    for note in "${DLOG_NOTES[@]}"; do echo "- decision log: $note"; done
    echo "- every round: \`${OUT#"$ROOT"/}/runs.tsv\`; raw dnsperf outputs, the generated gate config and logs: \`${OUT#"$ROOT"/}/\`"
} | tee "$OUT/results.md"
