#!/usr/bin/env bash
# Egress proxy benchmarks, loopback only: Portcullis vs squid (Debian, equivalent
# allowlist: CONNECT to the one origin only) vs a direct connection.
#   bulk CONNECT throughput, tunnels/s with one small exchange each, p99 set-up
#   latency at 50 concurrent, RSS per idle tunnel (1,000 idle tunnels).
# Usage: benches/proxy.sh            (needs python3; squid via apt-get install squid)
# Env: BULK_MB (default 2048), DURATION (s, default 5), IDLE (default 1000).
set -euo pipefail
cd "$(dirname "$0")/.."
BULK_MB=${BULK_MB:-2048} DURATION=${DURATION:-5} IDLE=${IDLE:-1000}
ORIGIN_PORT=${ORIGIN_PORT:-39080} GATE_PORT=${GATE_PORT:-39128} SQUID_PORT=${SQUID_PORT:-39129}
ulimit -n 65536 || true
cargo build --release --example proxy_bench_gate >/dev/null
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

cat >"$WORK/bench.py" <<'PY'
import os, socket, struct, sys, threading, time
ORIGIN = ("127.0.0.1", int(os.environ["ORIGIN_PORT"]))
CHUNK = b"\0" * (1 << 20)

def hello(sni):
    name = sni.encode()
    ext = struct.pack("!HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name)) + name
    body = b"\3\3" + b"\7" * 32 + b"\0" + b"\0\2\x13\1" + b"\1\0" + struct.pack("!H", len(ext)) + ext
    hs = b"\1" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\3\1" + struct.pack("!H", len(hs)) + hs

def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        d = s.recv(n - len(buf))
        if not d: raise EOFError
        buf += d
    return buf

def origin():
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(ORIGIN); srv.listen(4096)
    def serve(c):
        try:
            head = recv_exact(c, 5); recv_exact(c, struct.unpack("!H", head[3:5])[0])
            cmd = b""
            while not cmd.endswith(b"\n"): cmd += recv_exact(c, 1)
            if cmd.startswith(b"BULK"):
                left = int(cmd.split()[1])
                while left > 0:
                    n = min(left, len(CHUNK)); c.sendall(CHUNK[:n]); left -= n
            elif cmd.startswith(b"PING"):
                c.sendall(b"PONG\n")
            else:
                c.recv(1)  # HOLD: until the client closes
        except Exception:
            pass
        c.close()
    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()

def open_tunnel(kind, port):
    s = socket.create_connection(("127.0.0.1", port) if kind != "direct" else ORIGIN)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if kind != "direct":
        target = "bench.test" if kind == "portcullis" else "127.0.0.1"
        s.sendall(f"CONNECT {target}:{ORIGIN[1]} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        resp = b""
        while not resp.endswith(b"\r\n\r\n"):
            d = s.recv(1)
            if not d: raise EOFError("proxy closed")
            resp += d
        if b" 200" not in resp.split(b"\r\n")[0]: raise RuntimeError(resp)
    s.sendall(hello("bench.test"))
    return s

def bulk(kind, port, mb):
    s = open_tunnel(kind, port); s.sendall(f"BULK {mb << 20}\n".encode())
    buf = bytearray(1 << 20); got = 0; t = time.perf_counter()
    while True:
        n = s.recv_into(buf)
        if not n: break
        got += n
    dt = time.perf_counter() - t
    print(f"{kind:10s} bulk: {got / dt / 1e6:8.0f} MB/s ({got >> 20} MiB in {dt:.2f}s)")

def tunnels(kind, port, seconds, conc=50):
    lat = []; stop = time.perf_counter() + seconds; lock = threading.Lock(); errors = [0]
    def worker():
        mine = []
        while time.perf_counter() < stop:
            t = time.perf_counter()
            try:
                s = open_tunnel(kind, port); s.sendall(b"PING\n"); recv_exact(s, 5); s.close()
                mine.append(time.perf_counter() - t)
            except Exception:
                errors[0] += 1
        with lock: lat.extend(mine)
    ts = [threading.Thread(target=worker) for _ in range(conc)]
    t0 = time.perf_counter(); [x.start() for x in ts]; [x.join() for x in ts]; dt = time.perf_counter() - t0
    lat.sort(); p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3 if lat else float("nan")
    print(f"{kind:10s} tunnels: {len(lat) / dt:8.0f}/s, set-up+exchange p50 {p(.5):.1f} ms p99 {p(.99):.1f} ms ({conc} concurrent, {errors[0]} errors)")

def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"): return int(line.split()[1])

def idle(kind, port, pid, count):
    before = rss(pid); socks = []
    for _ in range(count):
        s = open_tunnel(kind, port); s.sendall(b"HOLD\n"); socks.append(s)
    time.sleep(1.0); after = rss(pid)
    print(f"{kind:10s} idle: {count} tunnels, RSS {before} -> {after} KiB = {(after - before) * 1024 / count / 1024:.1f} KiB per idle tunnel")
    for s in socks: s.close()
    time.sleep(0.5)

if __name__ == "__main__":
    what = sys.argv[1]
    if what == "origin": origin()
    elif what == "bulk": bulk(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif what == "tunnels": tunnels(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    elif what == "idle": idle(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
PY
export ORIGIN_PORT
python3 "$WORK/bench.py" origin & PIDS+=($!)
./target/release/examples/proxy_bench_gate "$GATE_PORT" "$ORIGIN_PORT" 2>/dev/null & GATE=$!; PIDS+=($GATE)

SQUID=""
if command -v squid >/dev/null; then
  cat >"$WORK/squid.conf" <<CONF
http_port 127.0.0.1:$SQUID_PORT
acl origin dst 127.0.0.1/32
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
CONF
  chmod 755 "$WORK"
  squid -N -f "$WORK/squid.conf" & SQUID=$!; PIDS+=($SQUID)
fi
sleep 2
SQUID_MAIN=""
[ -n "$SQUID" ] && SQUID_MAIN=$(pgrep -P "$SQUID" -n || echo "$SQUID")
B="python3 $WORK/bench.py"

echo "== bulk CONNECT throughput (${BULK_MB} MiB, one tunnel)"
$B bulk direct 0 "$BULK_MB"
$B bulk portcullis "$GATE_PORT" "$BULK_MB"
[ -n "$SQUID" ] && $B bulk squid "$SQUID_PORT" "$BULK_MB"
echo "== tunnels/s, one small exchange each, 50 concurrent, ${DURATION}s"
$B tunnels direct 0 "$DURATION"
$B tunnels portcullis "$GATE_PORT" "$DURATION"
[ -n "$SQUID" ] && $B tunnels squid "$SQUID_PORT" "$DURATION"
echo "== RSS per idle tunnel (${IDLE} idle tunnels)"
$B idle portcullis "$GATE_PORT" "$GATE" "$IDLE"
[ -n "$SQUID" ] && $B idle squid "$SQUID_PORT" "$SQUID" "$IDLE"
exit 0
