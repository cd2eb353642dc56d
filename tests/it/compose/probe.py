"""LiteLLM's side of tests/it/compose.rs, run in the LiteLLM container with its
environment (podman exec), so with its proxy variables. One JSON line per call.

  probe.py fetch URL          urllib, as LiteLLM's clients do: the proxy variables apply
  probe.py connect HOST:PORT  a direct TCP connection, no proxy
  probe.py resolve NAME       the container's resolver (the gate's DNS)
  probe.py hold HOST:PORT SECS  a CONNECT tunnel through HTTPS_PROXY, held open
"""

import json
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def out(**kv):
    print(json.dumps(kv), flush=True)


cmd, arg = sys.argv[1], sys.argv[2]
if cmd == "fetch":
    try:
        with urllib.request.urlopen(arg, timeout=8) as r:
            out(status=r.status, body=r.read().decode(errors="replace"))
    except urllib.error.HTTPError as e:
        out(status=e.code, body=e.read().decode(errors="replace"))
    except Exception as e:
        out(error=str(getattr(e, "reason", e)))
elif cmd == "connect":
    host, port = arg.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        out(result="connected")
    except Exception as e:
        out(result=type(e).__name__, error=str(e))
elif cmd == "resolve":
    try:
        out(addresses=sorted({a[4][0] for a in socket.getaddrinfo(arg, 443)}))
    except Exception as e:
        out(error=str(e))
elif cmd == "hold":
    proxy = urllib.parse.urlsplit(os.environ["HTTPS_PROXY"])
    s = socket.create_connection((proxy.hostname, proxy.port), timeout=5)
    s.sendall(f"CONNECT {arg} HTTP/1.1\r\nHost: {arg}\r\n\r\n".encode())
    out(reply=s.recv(4096).decode(errors="replace").split("\r\n")[0])
    s.settimeout(float(sys.argv[3]))
    try:
        out(closed_after_bytes=len(s.recv(4096)))
    except socket.timeout:
        out(still_open=True)
