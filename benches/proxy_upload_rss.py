#!/usr/bin/env python3
"""Peak RSS of a portcullis binary while CLIENTS clients each POST a BODY-byte body in
1-byte chunks (6 bytes on the wire per byte of data) through its proxy to a local sink
origin, at once. Loopback only; the gate and the origin stop at the end.

    cargo build --bin portcullis
    CLIENTS=4 BODY=8000000 python3 benches/proxy_upload_rss.py target/debug/portcullis

Prints the gate's RSS before the uploads and its peak (VmHWM) after them. Before the
proxy streamed bodies (738f252) each upload held its whole wire text, the decoded body
and the request copy: about 6.6x the body per connection.
"""
import json, os, shutil, socket, subprocess, sys, tempfile, threading, time

binary = sys.argv[1]
CLIENTS = int(os.environ.get("CLIENTS", "10"))
BODY = int(os.environ.get("BODY", str(1 << 20)))

def sink(listener):
    def serve(c):
        head = b""
        while b"\r\n\r\n" not in head:
            head += c.recv(65536)
        head, tail = head.split(b"\r\n\r\n", 1)
        length = [int(l.split(b":")[1]) for l in head.lower().split(b"\r\n") if l.startswith(b"content-length:")]
        got, last = len(tail), tail[-16:]
        while (got < length[0]) if length else not last.endswith(b"\r\n0\r\n\r\n"):
            d = c.recv(65536)
            if not d:
                break
            got += len(d)
            last = (last + d)[-16:]
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        c.close()
    while True:
        c, _ = listener.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()

origin = socket.socket(); origin.bind(("127.0.0.1", 0)); origin.listen(128)
port = origin.getsockname()[1]
threading.Thread(target=sink, args=(origin,), daemon=True).start()

d = tempfile.mkdtemp()
open(f"{d}/allow.toml", "w").write(f'[[allow]]\nhost = "127.0.0.1"\nports = [{port}]\nprivate = true\n')
open(f"{d}/portcullis.toml", "w").write('allowlist = "allow.toml"\n[dns]\nlisten = ["127.0.0.1:0"]\n'
    '[upstream]\n[[upstream.servers]]\nurl = "udp://127.0.0.1:9"\n[[lists]]\nname = "none"\ninline = ""\n')
env = dict(os.environ, PORTCULLIS_LOG_FORMAT="json", PORTCULLIS_PROXY_LISTEN="127.0.0.1:0",
           PORTCULLIS_ADMIN_LISTEN="127.0.0.1:0", PORTCULLIS_LOG_LEVEL="warn,portcullis=info")
gate = subprocess.Popen([binary, "--config", f"{d}/portcullis.toml"], env=env,
                        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
try:
    proxy = None
    for line in gate.stderr:
        if "listening proxy" in line:
            proxy = json.loads(line)["addr"]
            break
    threading.Thread(target=lambda: [None for _ in gate.stderr], daemon=True).start()
    host, pport = proxy.rsplit(":", 1)

    def status(key):
        for l in open(f"/proc/{gate.pid}/status"):
            if l.startswith(key):
                return int(l.split()[1])

    body = b"1\r\na\r\n" * BODY + b"0\r\n\r\n"
    head = f"POST http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    results = []
    def client():
        s = socket.create_connection((host, int(pport)))
        s.sendall(head + body)
        r = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            r += d
        results.append(r.split(b"\r\n", 1)[0])
    time.sleep(0.5)
    before = status("VmRSS:")
    t0 = time.time()
    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    [t.start() for t in threads]; [t.join() for t in threads]
    took = time.time() - t0
    peak = status("VmHWM:")
finally:
    gate.terminate()
    gate.wait()
    shutil.rmtree(d)
print(f"{os.path.basename(binary)}: {CLIENTS} clients x {BODY} B in 1-byte chunks "
      f"({len(body)} B on the wire each): RSS before {before} KiB, peak {peak} KiB "
      f"(+{peak - before} KiB); answers {sorted(set(results))}; {took:.1f} s")
