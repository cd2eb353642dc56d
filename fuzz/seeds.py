#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target (scripts/fuzz.sh calls it).

Seeds come from the repository (list fixtures, the shipped config and allowlist, the
string literals of the parsers' tests), from the shared real lists when they are there
(a few lines sampled from each file, so the corpus stays small), from fuzz/seeds/ (inputs
worth keeping, e.g. past findings), and, for the binary formats, from generators below
that build what the tests build (DNS queries as hickory encodes them, ClientHellos as
`sni::build_client_hello` does, and one real ClientHello from Python's own TLS stack).

Usage: seeds.py REPO OUT [SHARED_LISTS_DIR]
"""

import hashlib
import os
import re
import ssl
import struct
import sys
from pathlib import Path

REPO = Path(sys.argv[1])
OUT = Path(sys.argv[2])
SHARED = Path(sys.argv[3]) if len(sys.argv) > 3 else None
FORMATS = ["hosts", "domains", "adblock", "dnsmasq", "ips"]
# Lines taken from each shared list: its head (headers, comments) and an even sample.
HEAD_LINES, SAMPLE_LINES = 25, 40

seeds: dict[str, dict[str, bytes]] = {}


def add(target: str, data: bytes, name: str = "") -> None:
    key = name or hashlib.sha1(data).hexdigest()[:16]
    seeds.setdefault(target, {})["seed-" + key] = data


# --- Rust string literals (the parsers' tests) ---------------------------------------

ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "0": "\0", "\\": "\\", '"': '"', "'": "'"}
LITERAL = re.compile(r'r(#*)"(.*?)"\1|b?"((?:[^"\\]|\\.)*)"', re.S)


def unescape(body: str) -> str:
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in ESCAPES:
            out.append(ESCAPES[nxt])
            i += 2
        elif nxt == "x":
            out.append(chr(int(body[i + 2 : i + 4], 16)))
            i += 4
        elif nxt == "u":
            end = body.index("}", i)
            out.append(chr(int(body[i + 3 : end], 16)))
            i = end + 1
        elif nxt == "\n":  # line continuation
            i += 2
            while i < len(body) and body[i] in " \t\n":
                i += 1
        else:
            out.append(nxt)
            i += 2
    return "".join(out)


def literals(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    found = []
    for m in LITERAL.finditer(text):
        try:
            found.append(m.group(2) if m.group(1) is not None else unescape(m.group(3)))
        except (ValueError, IndexError):
            continue
    return found


def rust_files(*names: str) -> list[Path]:
    return [REPO / n for n in names if (REPO / n).exists()]


# --- lists ---------------------------------------------------------------------------


def sample(path: Path) -> bytes:
    lines = path.read_bytes().splitlines(keepends=True)
    head = lines[:HEAD_LINES]
    rest = lines[HEAD_LINES:]
    step = max(1, len(rest) // SAMPLE_LINES)
    return b"".join(head + rest[::step][:SAMPLE_LINES])


def list_seeds() -> None:
    for path in sorted((REPO / "tests/fixtures/lists").glob("*.txt")):
        fmt = path.name.split("-")[0]
        add(f"list_{fmt}", path.read_bytes(), path.stem)
        add("list_detect", path.read_bytes(), path.stem)
    if SHARED and SHARED.is_dir():
        for path in sorted(SHARED.glob("*.txt")):
            fmt = path.name.split("-")[0]
            if fmt in FORMATS:
                add(f"list_{fmt}", sample(path), path.stem)
                add("list_detect", sample(path), path.stem)
    # Multi-line list texts from the parser's unit tests.
    for path in sorted((REPO / "src/lists/parse").glob("*.rs")):
        for text in literals(path):
            if "\n" in text.strip():
                for fmt in FORMATS:
                    add(f"list_{fmt}", text.encode())
                add("list_detect", text.encode())


# --- DNS -----------------------------------------------------------------------------

QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16,
          "AAAA": 28, "SRV": 33, "SVCB": 64, "HTTPS": 65, "ANY": 255, "AXFR": 252}


def qname(name: str) -> bytes:
    out = b""
    for label in name.strip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def query(name, qtype="A", *, id=0xBEEF, flags=0x0100, edns=None, qclass=1,
          ancount=0, opt_version=0, opt_rdata=b"") -> bytes:
    arcount = 1 if edns is not None else 0
    msg = struct.pack(">HHHHHH", id, flags, 1, ancount, 0, arcount)
    msg += qname(name) + struct.pack(">HH", QTYPES.get(qtype, 1), qclass)
    if edns is not None:
        msg += b"\0" + struct.pack(">HHBBHH", 41, edns, 0, opt_version, 0, len(opt_rdata))
        msg += opt_rdata
    return msg


def dns_seeds() -> None:
    # The names the fuzz gate caches, blocks or answers locally (fuzz/src/dns.rs).
    names = ["cached.example", "CaChEd.Example.", "alias.example", "gone.example",
             "big.example", "v6.example", "private.example", "txt.example",
             "evil.example", "sub.evil.example", "ads.example", "track1.example",
             "malware-drop.test", "localhost", "1.0.0.127.in-addr.arpa", "ok.test",
             "a_b.example", "x" * 63 + ".example"]
    out = []
    for name in names:
        for qtype in ["A", "AAAA", "TXT"]:
            out.append(query(name, qtype))
            out.append(query(name, qtype, edns=1232))
    out += [
        query("cached.example", "A", edns=4096, flags=0x0110),  # RD + CD
        query("cached.example", "A", edns=100),  # payload below 512
        query("cached.example", "A", edns=1232, opt_version=1),  # BADVERS
        query("cached.example", "A", edns=1232, opt_rdata=b"\x00\x0a\x00\x08" + b"c" * 8),
        query("cached.example", "ANY"),
        query("cached.example", "AXFR"),
        query("cached.example", "HTTPS"),
        query("cached.example", "A", qclass=3),  # CHAOS
        query("cached.example", "A", flags=0x8100),  # a response
        query("cached.example", "A", flags=0x2100),  # opcode NOTIFY
        query("cached.example", "A", flags=0x0300),  # TC
        query("cached.example", "A", ancount=1),
        query("", "A"),
        query("cached.example", "A")[:-1],  # truncated
        query("cached.example", "A") + b"\0",  # trailing byte
        query("cached.example", "A")[:12] + b"\xc0\x0c" + b"\x00\x01\x00\x01",  # pointer loop
        bytes(12),
        b"\xbe\xef\x01",
    ]
    two = bytearray(query("cached.example"))
    two[5] = 2
    out.append(bytes(two))
    for data in out:
        add("dns_wire", data)
        add("dns_udp", data)


# --- TLS ClientHello -----------------------------------------------------------------


def client_hello(sni: str | None, ech: bool = False, pad: int = 0, record: int = 16384) -> bytes:
    """What `proxy::sni::build_client_hello` builds, records of at most `record` bytes."""
    exts = b""
    if sni is not None:
        name = sni.encode()
        entry = 3 + len(name)
        exts += struct.pack(">HHHBH", 0, entry + 2, entry, 0, len(name)) + name
    if ech:
        exts += struct.pack(">HH", 0xFE0D, 4) + bytes(4)
    if pad:
        exts += struct.pack(">HH", 21, pad) + bytes(pad)
    body = b"\x03\x03" + bytes([7]) * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += struct.pack(">H", len(exts)) + exts
    handshake = b"\x01" + struct.pack(">I", len(body))[1:] + body
    out = b""
    for i in range(0, len(handshake), record):
        chunk = handshake[i : i + record]
        out += b"\x16\x03\x01" + struct.pack(">H", len(chunk)) + chunk
    return out


def real_client_hello(server_name: str) -> bytes:
    """The first flight of Python's TLS client (OpenSSL), over memory, sent nowhere."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def tls_seeds() -> None:
    for data in [
        client_hello("api.example.com"),
        client_hello("api.example.com", pad=200),
        client_hello(None, pad=200),
        client_hello("ech.example", ech=True, pad=200),
        client_hello("split.example", pad=300, record=64),
        client_hello("a" * 200 + ".example"),
        client_hello("api.example.com")[:40],
        real_client_hello("api.example.com"),
    ]:
        add("tls_sni", data)


# --- HTTP ----------------------------------------------------------------------------


def http_seeds() -> None:
    sources = rust_files("src/proxy/http.rs", "src/proxy/forward.rs", "src/proxy/server.rs",
                         "tests/it/proxy.rs", "tests/it/admin.rs")
    for path in sources:
        for text in literals(path):
            if re.search(r"HTTP/1\.[01]\r\n", text):
                add("http_head", text.encode())
    for text in [
        "CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n",
        "CONNECT [2606:4700::1111]:443 HTTP/1.1\r\n\r\n",
        "GET http://a.example/x?y=1 HTTP/1.1\r\nHost: a.example\r\nConnection: keep-alive, X-A\r\n"
        "X-A: 1\r\nProxy-Authorization: Basic eDp5\r\n\r\n",
        "POST http://a.example/ HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5\r\nhello\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ]:
        add("http_head", text.encode())
    # http_chunked: 2 control bytes (piece size, body cap), then the body.
    bodies = [b"5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT", b"5\r\nhelloXX0\r\n\r\n",
              b"ff\r\n", b"0\r\n\r\n", b"1\r\na\r\n10\r\n" + b"b" * 16 + b"\r\n0\r\n\r\n",
              b"A;a=b;c\r\n0123456789\r\n0\r\nT: 1\r\nU: 2\r\n\r\nGET / HTTP/1.1\r\n",
              b"1\r\na\r\n0\r\nbad trailer\r\n\r\n", b"1\r\na\r\n0000000000000000\r\n\r\n"]
    for i, body in enumerate(bodies):
        add("http_chunked", bytes([i, 2]) + body)


def authority_seeds() -> None:
    for text in literals(REPO / "src/proxy/target.rs"):
        if 0 < len(text) < 200 and "\n" not in text:
            add("connect_authority", text.encode())


# --- config and allowlist ------------------------------------------------------------


def config_seeds() -> None:
    add("config", (REPO / "portcullis.toml").read_bytes(), "portcullis.toml")
    add("config", b"[dns]\nlisten = [\"127.0.0.1:5353\"]\0DNS_LISTEN=127.0.0.1:53\n", "env")
    add("allowlist", (REPO / "allowlist.toml").read_bytes(), "allowlist.toml")
    for path in rust_files("src/config/mod.rs", "src/config/allowlist.rs",
                           "src/config/proxy.rs", *sorted(
                               str(p.relative_to(REPO)) for p in (REPO / "tests").glob("*.rs"))):
        for text in literals(path):
            if "[[allow]]" in text:
                add("allowlist", text.encode())
            elif re.search(r"^\s*\[\[?[a-z.]+\]\]?\s*$", text, re.M) and len(text) < 4096:
                add("config", text.encode())


def main() -> None:
    list_seeds()
    dns_seeds()
    tls_seeds()
    http_seeds()
    authority_seeds()
    config_seeds()
    kept = REPO / "fuzz/seeds"
    for target_dir in sorted(kept.iterdir()) if kept.is_dir() else []:
        for path in sorted(target_dir.iterdir()):
            add(target_dir.name, path.read_bytes(), "kept-" + path.name)
    for target, files in sorted(seeds.items()):
        directory = OUT / target
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (directory / name).write_bytes(data)
        print(f"{target}: {len(files)} seeds, {sum(map(len, files.values()))} bytes")


if __name__ == "__main__":
    os.umask(0o022)
    main()
