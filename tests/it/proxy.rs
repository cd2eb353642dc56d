//! The egress proxy, in process, against real local servers. LOOPBACK ONLY: names
//! resolve through a local DoH server; every dial goes through a recording test
//! dialer that connects only to 127.0.0.0/8 (a "public" address is answered by a
//! local stand-in) and proves that refused requests were never dialled.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use portcullis::app::Gate;
use portcullis::config::Config;
use portcullis::dns::filter::{Filter, Outcome, Reply};
use portcullis::policy::name::Name;
use portcullis::proxy::sni::build_client_hello;
use portcullis::proxy::{self, Dial, ProxyConfig, ProxyState, Resolve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::doh_server::{DohServer, TestZone};
use crate::support::gate;
use crate::support::http::{exchange, reason_of};
use crate::support::metrics::sample;
use crate::support::origins;
use crate::support::wait_until;

/// How long a test waits for the proxy to get somewhere before it fails.
const WAIT: Duration = Duration::from_secs(10);

/// The pretend DNS listener of the gate: an own address, never dialled.
const OWN_DNS: &str = "127.0.0.1:5353";

const ALLOWLIST: &str = r#"
[[allow]]
host = "api.example.com"
[[allow]]
host = "*.wild.example"
[[allow]]
host = "http.example.com"
ports = [80]
[[allow]]
host = "redirect.example.com"
ports = [80]
[[allow]]
host = "slow.example.com"
ports = [80]
[[allow]]
host = "private.test"
[[allow]]
host = "mixed.test"
[[allow]]
host = "cname.test"
[[allow]]
host = "metadata.test"
private = true
[[allow]]
host = "mapped.test"
private = true
[[allow]]
host = "nat64.test"
private = true
[[allow]]
host = "loop.test"
[[allow]]
host = "self.test"
ports = [5353]
private = true
[[allow]]
host = "cgnat.test"
[[allow]]
host = "doc.test"
[[allow]]
host = "ech.example"
[[allow]]
host = "nx.example"
[[allow]]
host = "v6.example"
[[allow]]
host = "93.184.216.50"
[[allow]]
host = "10.1.2.3"
"#;

fn zone() -> TestZone {
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    TestZone::new()
        .a("api.example.com", ip("93.184.216.34"))
        .a("www.wild.example", ip("93.184.216.35"))
        .a("deep.x.wild.example", ip("93.184.216.35"))
        .a("wild.example", ip("93.184.216.35"))
        .a("evilexample.com", ip("93.184.216.36"))
        .a("example.com.evil.net", ip("93.184.216.36"))
        .a("private.test", ip("10.0.0.1"))
        .a("mixed.test", ip("10.0.0.1"))
        .a("mixed.test", ip("93.184.216.37"))
        .cname("cname.test", "internal.corp.test")
        .a("internal.corp.test", ip("192.168.1.10"))
        .a("metadata.test", ip("169.254.169.254"))
        .aaaa("mapped.test", "::ffff:127.0.0.1".parse().unwrap())
        .aaaa("nat64.test", "64:ff9b::a00:1".parse().unwrap())
        .a("loop.test", ip("127.0.0.9"))
        .a("self.test", ip("127.0.0.1"))
        .a("cgnat.test", ip("100.64.0.1"))
        .a("doc.test", ip("192.0.2.1"))
        .a("public.test", ip("93.184.216.38"))
        .a("evil.example", ip("93.184.216.39"))
        .cname("cdn-evil.test", "evil.example")
        .a("http.example.com", ip("93.184.216.40"))
        .a("redirect.example.com", ip("93.184.216.42"))
        .a("slow.example.com", ip("93.184.216.99"))
        .a("ech.example", ip("93.184.216.41"))
        .aaaa("v6.example", "2606:4700::1111".parse().unwrap())
        .a("origin.test", ip("127.0.0.2"))
}

/// Records every dial; connects only to loopback. A non-loopback address is served by
/// a local stand-in (port 80: the plain-HTTP origin, else the echo server); the
/// address `93.184.216.99` never answers (connect timeout).
struct TestDialer {
    dials: Mutex<Vec<SocketAddr>>,
    echo: SocketAddr,
    http: SocketAddr,
}

#[async_trait::async_trait]
impl Dial for TestDialer {
    async fn dial(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        self.dials.lock().unwrap().push(addr);
        if addr.ip().is_loopback() {
            return TcpStream::connect(addr).await;
        }
        if addr.ip() == "93.184.216.99".parse::<std::net::IpAddr>().unwrap() {
            std::future::pending::<()>().await;
        }
        let stand_in = if addr.port() == 80 {
            self.http
        } else {
            self.echo
        };
        assert!(stand_in.ip().is_loopback());
        TcpStream::connect(stand_in).await
    }
}

struct Harness {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    dialer: Arc<TestDialer>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _echo: origins::Origin,
    http: origins::Origin,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn dials(&self) -> Vec<SocketAddr> {
        self.dialer.dials.lock().unwrap().clone()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("proxy stops")
                .unwrap();
        }
    }
}

const HTTP_RESPONSE: &str = "HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/latest/meta-data/\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\n\r\nmoved";

/// The DNS filter the proxy resolves through, built as `portcullis run` builds it.
async fn filter_for(doh: &DohServer, dir: &std::path::Path, allowlist: &str) -> Arc<Filter> {
    std::fs::write(dir.join("allow.toml"), allowlist).unwrap();
    let text = format!(
        r#"allowlist = "allow.toml"
[upstream]
strategy = "failover"
timeout_ms = 2000
[[upstream.servers]]
url = "{}"
tls_name = "{}"
ca_file = "{}"
[groups]
public = ["127.0.0.3/32"]
report = ["127.0.0.4/32"]
[[lists]]
name = "threats"
inline = "evil.example\n"
"#,
        doh.url(),
        doh.tls_name,
        doh.ca_file.display()
    );
    let config = Config::parse(&text, "test.toml", dir).unwrap();
    let gate = Gate::build(config, None).await.unwrap();
    gate.filter().clone()
}

async fn start(
    doh: &DohServer,
    allowlist: &str,
    proxy_toml: &str,
    resolver: Option<Arc<dyn Resolve>>,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let filter = filter_for(doh, dir.path(), allowlist).await;
    let echo = origins::echo("127.0.0.1").await;
    let http = origins::http("127.0.0.1", HTTP_RESPONSE).await;
    let dialer = Arc::new(TestDialer {
        dials: Mutex::new(Vec::new()),
        echo: echo.addr,
        http: http.addr,
    });
    let config: ProxyConfig = toml::from_str(&format!(
        "listen = [\"127.0.0.1:0\"]\nmodes = {{ public = \"public\", report = \"report\" }}\nech_hosts = [\"ech.example\"]\n{proxy_toml}"
    ))
    .unwrap();
    let listeners = proxy::bind(&config.listen).await.unwrap();
    let addr = listeners[0].local_addr().unwrap();
    let state = Arc::new(ProxyState::new(
        config,
        filter.policy.clone(),
        resolver.unwrap_or_else(|| filter.clone() as Arc<dyn Resolve>),
        dialer.clone(),
        vec![addr, OWN_DNS.parse().unwrap()],
    ));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = state.clone();
    let task = tokio::spawn(async move {
        proxy::serve(listeners, served, async {
            let _ = stop_rx.await;
        })
        .await
        .unwrap();
    });
    Harness {
        addr,
        state,
        dialer,
        stop: Some(stop_tx),
        task: Some(task),
        _echo: echo,
        http,
        _dir: dir,
    }
}

async fn connect_from(src: &str, proxy: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(src.parse().unwrap(), 0))
        .unwrap();
    socket.connect(proxy).await.unwrap()
}

/// Reads until the end of a response head; returns (status, head text).
async fn read_head(stream: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte)).await {
            Ok(Ok(1)) => buf.push(byte[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

async fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    out
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// An HTTP answer with this status (nothing dialled unless `dial` says so).
    Status(u16),
    /// `200`, then the ClientHello is relayed to the origin (echoed back).
    Tunnel,
    /// `200`, then the tunnel is refused at the ClientHello: never dialled.
    TunnelRefused,
}

#[derive(Debug, Clone, Copy)]
enum Hello {
    None,
    Sni(&'static str),
    NoSni,
    Ech(&'static str),
    NotTls,
    /// The ClientHello in three TCP segments.
    Segments(&'static str),
    /// The handshake message over many small TLS records.
    Records(&'static str),
}

struct Case {
    src: &'static str,
    request: String,
    hello: Hello,
    expect: Expect,
    dial: Option<&'static str>,
}

fn connect(target: &str, hello: Hello, expect: Expect, dial: Option<&'static str>) -> Case {
    Case {
        src: "127.0.0.1",
        request: format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"),
        hello,
        expect,
        dial,
    }
}

fn refused(target: &str, status: u16) -> Case {
    connect(target, Hello::None, Expect::Status(status), None)
}

fn tunnel(target: &str, sni: &'static str, dial: &'static str) -> Case {
    connect(target, Hello::Sni(sni), Expect::Tunnel, Some(dial))
}

fn sni_refused(target: &str, hello: Hello) -> Case {
    connect(target, hello, Expect::TunnelRefused, None)
}

fn raw(request: &str, status: u16) -> Case {
    Case {
        src: "127.0.0.1",
        request: request.to_owned(),
        hello: Hello::None,
        expect: Expect::Status(status),
        dial: None,
    }
}

fn get(url: &str, status: u16) -> Case {
    raw(&format!("GET {url} HTTP/1.1\r\nHost: x\r\n\r\n"), status)
}

fn from(src: &'static str, case: Case) -> Case {
    Case { src, ..case }
}

fn hello_bytes(hello: Hello) -> Vec<u8> {
    match hello {
        Hello::None => Vec::new(),
        Hello::Sni(s) | Hello::Segments(s) => build_client_hello(Some(s), false, 200),
        Hello::NoSni => build_client_hello(None, false, 200),
        Hello::Ech(s) => build_client_hello(Some(s), true, 200),
        Hello::NotTls => b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n".to_vec(),
        Hello::Records(s) => {
            let whole = build_client_hello(Some(s), false, 200);
            let mut out = Vec::new();
            for chunk in whole[5..].chunks(40) {
                out.extend_from_slice(&[0x16, 3, 1, 0, chunk.len() as u8]);
                out.extend_from_slice(chunk);
            }
            out
        }
    }
}

async fn run_case(h: &Harness, case: &Case) -> Result<(), String> {
    let before = h.dials().len();
    let mut s = connect_from(case.src, h.addr).await;
    s.write_all(case.request.as_bytes()).await.unwrap();
    let (status, head) = read_head(&mut s).await;
    match case.expect {
        Expect::Status(want) => {
            if status != want {
                return Err(format!("status {status}, want {want}: {head:?}"));
            }
            if want == 403 && !head.contains("X-Portcullis-Reason: ") {
                return Err(format!("403 without X-Portcullis-Reason: {head:?}"));
            }
        }
        Expect::Tunnel | Expect::TunnelRefused => {
            if status != 200 {
                return Err(format!("status {status}, want 200: {head:?}"));
            }
            let bytes = hello_bytes(case.hello);
            if let Hello::Segments(_) = case.hello {
                let third = bytes.len() / 3;
                for part in [&bytes[..3], &bytes[3..third], &bytes[third..]] {
                    s.write_all(part).await.unwrap();
                    s.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            } else {
                s.write_all(&bytes).await.unwrap();
            }
            if case.expect == Expect::Tunnel {
                let mut echoed = vec![0u8; bytes.len()];
                tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut echoed))
                    .await
                    .map_err(|_| "no echo".to_string())?
                    .map_err(|e| format!("tunnel closed: {e}"))?;
                if echoed != bytes {
                    return Err("echo differs".into());
                }
            } else {
                let rest = read_to_end(&mut s).await;
                if !(rest.is_empty() || rest[0] == 0x15) {
                    return Err(format!("refused tunnel sent {rest:?}"));
                }
            }
        }
    }
    drop(s);
    let dials = h.dials()[before..].to_vec();
    let want: Vec<SocketAddr> = case.dial.iter().map(|d| d.parse().unwrap()).collect();
    if dials != want {
        return Err(format!("dialled {dials:?}, want {want:?}"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_targets_table() {
    let doh = DohServer::start(zone()).await;
    let h = start(&doh, ALLOWLIST, "", None).await;
    let own = h.addr.to_string();
    let cases = vec![
        // Encoded IPv4 literals: rejected before any lookup.
        refused("127.1:443", 400),
        refused("2130706433:443", 400),
        refused("0x7f.1:443", 400),
        refused("0x7f000001:443", 400),
        refused("0177.0.0.1:443", 400),
        refused("127.0.0.01:443", 400),
        refused("127.0.0.1.:443", 400),
        refused("１２７.０.０.１:443", 400),
        // Literals no allow rule names, and literals in denied ranges.
        refused("127.0.0.1:443", 403),
        refused("10.0.0.1:443", 403),
        refused("169.254.169.254:443", 403),
        refused("0.0.0.0:443", 403),
        refused("93.184.216.34:443", 403),
        refused("10.1.2.3:443", 403),
        // IPv6 forms embedding private IPv4.
        refused("[::1]:443", 403),
        refused("[::ffff:127.0.0.1]:443", 403),
        refused("[::ffff:7f00:1]:443", 403),
        refused("[::127.0.0.1]:443", 403),
        refused("[64:ff9b::a9fe:a9fe]:443", 403),
        refused("[2002:7f00:1::]:443", 403),
        refused("[2001:0:4136:e378:8000:63bf:3fff:fdd2]:443", 403),
        refused("[fd00:ec2::254]:443", 403),
        refused("[fe80::1%25eth0]:443", 400),
        refused("[fe80::1%eth0]:443", 400),
        // An allowed literal: no SNI expected, none sent.
        connect(
            "93.184.216.50:443",
            Hello::NoSni,
            Expect::Tunnel,
            Some("93.184.216.50:443"),
        ),
        sni_refused("93.184.216.50:443", Hello::Sni("api.example.com")),
        // Names resolving to private or mixed answers, CNAME to private.
        refused("private.test:443", 403),
        tunnel("mixed.test:443", "mixed.test", "93.184.216.37:443"),
        refused("cname.test:443", 403),
        refused("metadata.test:443", 403),
        refused("mapped.test:443", 403),
        refused("nat64.test:443", 403),
        refused("loop.test:443", 403),
        refused("cgnat.test:443", 403),
        refused("doc.test:443", 403),
        // The gate's own listeners, even with `private = true`.
        refused("self.test:5353", 403),
        refused(&own, 403),
        // Special-use names.
        refused("localhost:443", 403),
        refused("foo.localhost:443", 403),
        refused("metadata.google.internal:443", 403),
        refused("printer.local:443", 403),
        refused("intranet:443", 403),
        refused("x.onion:443", 403),
        refused("1.0.0.127.in-addr.arpa:443", 403),
        refused("resolver.arpa:443", 403),
        // Case and trailing-dot variants.
        tunnel(
            "API.EXAMPLE.COM:443",
            "api.example.com",
            "93.184.216.34:443",
        ),
        tunnel(
            "api.example.com.:443",
            "api.example.com",
            "93.184.216.34:443",
        ),
        tunnel(
            "api.example.com:443",
            "API.Example.Com.",
            "93.184.216.34:443",
        ),
        // Wildcard edges.
        refused("evilexample.com:443", 403),
        refused("example.com.evil.net:443", 403),
        refused("api.example.com.evil.net:443", 403),
        refused("wild.example:443", 403),
        tunnel(
            "www.wild.example:443",
            "www.wild.example",
            "93.184.216.35:443",
        ),
        tunnel(
            "deep.x.wild.example:443",
            "deep.x.wild.example",
            "93.184.216.35:443",
        ),
        // IDN look-alikes.
        refused("аpi.example.com:443", 403),
        refused("api.exаmple.com:443", 403),
        refused("xn--pi-7kc.example.com:443", 403),
        refused("xn--zz.example.com:443", 400),
        // URL parsing tricks.
        get("http://api.example.com@127.0.0.1/", 400),
        get("http://127.0.0.1#@api.example.com/", 400),
        get("http://http.example.com\\@evil.net/", 400),
        get("http:\\\\http.example.com/", 400),
        get("https://api.example.com/", 400),
        get("/relative", 400),
        get("http://http.example.com:80@evil.net/", 400),
        get("http://[::1]/", 403),
        get("http://0x7f.1/", 400),
        get("http://169.254.169.254/latest/meta-data/", 403),
        refused("api.example.com:443@evil.net:443", 400),
        refused("api.example.com", 400),
        refused("api.example.com:", 400),
        // Forbidden ports.
        refused("api.example.com:22", 403),
        refused("api.example.com:80", 403),
        refused("http.example.com:80", 403),
        refused("api.example.com:0", 400),
        refused("api.example.com:65536", 400),
        get("http://api.example.com/", 403),
        get("http://http.example.com:8080/", 403),
        // SNI: mismatch (domain fronting), missing, not TLS, split, ECH.
        sni_refused("api.example.com:443", Hello::Sni("evil.net")),
        sni_refused("api.example.com:443", Hello::Sni("www.wild.example")),
        sni_refused("api.example.com:443", Hello::NoSni),
        sni_refused("api.example.com:443", Hello::NotTls),
        sni_refused("api.example.com:443", Hello::Ech("api.example.com")),
        connect(
            "api.example.com:443",
            Hello::Segments("api.example.com"),
            Expect::Tunnel,
            Some("93.184.216.34:443"),
        ),
        connect(
            "api.example.com:443",
            Hello::Records("api.example.com"),
            Expect::Tunnel,
            Some("93.184.216.34:443"),
        ),
        connect(
            "ech.example:443",
            Hello::Ech("ech.example"),
            Expect::Tunnel,
            Some("93.184.216.41:443"),
        ),
        tunnel("v6.example:443", "v6.example", "[2606:4700::1111]:443"),
        // Does not resolve.
        refused("nx.example:443", 502),
        // Modes: public and report groups.
        refused("public.test:443", 403),
        from(
            "127.0.0.3",
            tunnel("public.test:443", "public.test", "93.184.216.38:443"),
        ),
        from("127.0.0.3", refused("evil.example:443", 403)),
        from("127.0.0.3", refused("cdn-evil.test:443", 403)),
        from("127.0.0.3", refused("public.test:8443", 403)),
        from("127.0.0.3", refused("private.test:443", 403)),
        from("127.0.0.3", refused("127.0.0.1:443", 403)),
        from(
            "127.0.0.4",
            tunnel("public.test:443", "public.test", "93.184.216.38:443"),
        ),
        from("127.0.0.4", refused("loop.test:443", 403)),
        // Smuggling and malformed requests.
        raw(
            "POST http://http.example.com/ HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        raw(
            "POST http://http.example.com/ HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
            400,
        ),
        raw(
            "GET http://http.example.com/ HTTP/1.1\r\nX-A: 1\r\n folded: yes\r\n\r\n",
            400,
        ),
        raw(
            "CONNECT api.example.com:443 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            400,
        ),
        raw("GET http://http.example.com/ HTTP/1.1\nHost: x\n\n", 400),
        raw("NOT HTTP AT ALL\r\n\r\n", 400),
    ];
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        if let Err(e) = run_case(&h, case).await {
            failures.push(format!(
                "{} from {}: {e}",
                case.request.lines().next().unwrap_or(""),
                case.src
            ));
        }
    }
    // Nothing outside the expected dials, and nothing ever to a denied address.
    for dial in h.dials() {
        let class = portcullis::policy::addr::classify(dial.ip());
        assert!(
            !class.is_denied(),
            "dialled {dial} ({class}) in the hostile table"
        );
    }
    h.stop().await;
    doh.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_strips_hop_by_hop_and_passes_redirects_without_following() {
    let doh = DohServer::start(zone()).await;
    let h = start(&doh, ALLOWLIST, "", None).await;
    let mut s = connect_from("127.0.0.1", h.addr).await;
    s.write_all(
        b"POST http://HTTP.example.com/path?q=1 HTTP/1.1\r\nHost: evil.net\r\nProxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nTransfer-Encoding: chunked\r\nUser-Agent: t\r\n\r\n4\r\nbody\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let response = String::from_utf8(read_to_end(&mut s).await).unwrap();
    assert!(response.starts_with("HTTP/1.1 302 Found\r\n"), "{response}");
    assert!(response.contains("Location: http://169.254.169.254/latest/meta-data/"));
    assert!(response.contains("Connection: close") && !response.contains("Keep-Alive"));
    assert!(response.ends_with("moved"));
    // One dial, to the checked address; the redirect target was never dialled.
    assert_eq!(h.dials(), vec!["93.184.216.40:80".parse().unwrap()]);
    let seen = h.http.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert!(
        req.starts_with("POST /path?q=1 HTTP/1.1\r\nHost: http.example.com\r\n"),
        "{req}"
    );
    for gone in ["Proxy-", "X-Secret", "Transfer-Encoding", "evil.net"] {
        assert!(!req.contains(gone), "{gone} forwarded: {req}");
    }
    assert!(req.contains("User-Agent: t\r\n") && req.contains("Content-Length: 4\r\n"));
    assert!(req.ends_with("\r\n\r\nbody"), "{req}");
    h.stop().await;
    doh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_timeouts() {
    let doh = DohServer::start(zone()).await;
    let h = start(
        &doh,
        ALLOWLIST,
        "max_connections_per_client = 2\nheader_timeout_ms = 300\nconnect_timeout_ms = 200\nmax_header_bytes = 2048\n",
        None,
    )
    .await;
    // Connect timeout: 504, after one dial of the checked address.
    let mut s = connect_from("127.0.0.1", h.addr).await;
    s.write_all(b"GET http://slow.example.com/ HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let (status, head) = read_head(&mut s).await;
    assert_eq!(status, 504, "{head}");
    assert_eq!(h.dials(), vec!["93.184.216.99:80".parse().unwrap()]);
    drop(s);
    // Header timeout: 408.
    let mut slow = connect_from("127.0.0.1", h.addr).await;
    slow.write_all(b"CONNECT api.example.com:443 HTTP/1.1\r\n")
        .await
        .unwrap();
    let (status, _) = read_head(&mut slow).await;
    assert_eq!(status, 408);
    drop(slow);
    // Head too large: 431.
    let mut big = connect_from("127.0.0.1", h.addr).await;
    let long = format!(
        "GET http://http.example.com/ HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(4096)
    );
    let _ = big.write_all(long.as_bytes()).await;
    let (status, _) = read_head(&mut big).await;
    assert_eq!(status, 431);
    drop(big);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Per-client cap: two idle connections held, the third gets 429; another client is fine.
    let _a = connect_from("127.0.0.1", h.addr).await;
    let _b = connect_from("127.0.0.1", h.addr).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut c = connect_from("127.0.0.1", h.addr).await;
    let (status, head) = read_head(&mut c).await;
    assert_eq!(status, 429, "{head}");
    let mut other = connect_from("127.0.0.3", h.addr).await;
    other
        .write_all(b"CONNECT 127.1:443 HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_head(&mut other).await.0, 400);
    h.stop().await;
    doh.stop().await;
}

/// First answer public, every later one private: the proxy resolves once per
/// request and dials exactly the address it checked.
struct FlipResolver {
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl Resolve for FlipResolver {
    async fn lookup(&self, _client: std::net::IpAddr, name: &Name, qtype: RecordType) -> Reply {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let mut reply = portcullis_reply(ResponseCode::NoError, Outcome::Forwarded);
        if qtype == RecordType::A {
            let ip = if n < 2 {
                Ipv4Addr::new(93, 184, 216, 34)
            } else {
                Ipv4Addr::new(169, 254, 169, 254)
            };
            let owner = hickory_proto::rr::Name::from_ascii(format!("{}.", name.as_str())).unwrap();
            reply
                .answers
                .push(Record::from_rdata(owner, 0, RData::A(A(ip))));
        }
        reply
    }
}

fn portcullis_reply(rcode: ResponseCode, outcome: Outcome) -> Reply {
    Reply::new(rcode, outcome, "test")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebinding_resolves_once_and_dials_what_was_checked() {
    let doh = DohServer::start(zone()).await;
    let flip = Arc::new(FlipResolver {
        calls: AtomicUsize::new(0),
    });
    let h = start(&doh, ALLOWLIST, "", Some(flip.clone())).await;
    let first = tunnel(
        "api.example.com:443",
        "api.example.com",
        "93.184.216.34:443",
    );
    run_case(&h, &first).await.unwrap();
    assert_eq!(
        flip.calls.load(Ordering::SeqCst),
        2,
        "one A and one AAAA lookup"
    );
    // The next resolution points at the metadata service: refused, not dialled.
    run_case(&h, &refused("api.example.com:443", 403))
        .await
        .unwrap();
    assert_eq!(h.dials(), vec!["93.184.216.34:443".parse().unwrap()]);
    h.stop().await;
    doh.stop().await;
}

fn curl(proxy: SocketAddr, url: &str, ca: &std::path::Path) -> std::process::Output {
    std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["-D", "-", url])
        .env_clear()
        .env("HTTPS_PROXY", format!("http://{proxy}"))
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("curl runs (apt-get install curl)")
}

/// The production dialer (a plain TCP connect) to a real local TLS origin whose name
/// resolves through the DoH server to 127.0.0.2: allowed only by `private = true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_the_proxy_to_a_local_tls_origin() {
    let doh = DohServer::start(zone()).await;
    let origin = origins::https("127.0.0.2", "origin.test").await;
    let port = origin.addr.port();
    let url = format!("https://origin.test:{port}/");
    let ca = origin.ca_file.clone().unwrap();
    let rule = |ports: &str, private: bool| {
        format!("[[allow]]\nhost = \"origin.test\"\nports = [{ports}]\nprivate = {private}\n")
    };
    let here = port.to_string();
    // The rule for the port asked decides, in DNS and proxy alike, wherever it stands in
    // the file (issue 11, item 5).
    for (allow, want_ok) in [
        (rule(&here, true), true),
        (rule(&here, false), false),
        (rule("443", false) + &rule(&here, true), true),
        (rule(&here, false) + &rule("443", true), false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let filter = filter_for(&doh, dir.path(), &allow).await;
        let config: ProxyConfig = toml::from_str("listen = [\"127.0.0.1:0\"]").unwrap();
        let listeners = proxy::bind(&config.listen).await.unwrap();
        let addr = listeners[0].local_addr().unwrap();
        let state = Arc::new(ProxyState::new(
            config,
            filter.policy.clone(),
            filter.clone(),
            Arc::new(proxy::TcpDialer),
            vec![addr],
        ));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(proxy::serve(listeners, state, async {
            let _ = rx.await;
        }));
        let out = tokio::task::spawn_blocking({
            let url = url.clone();
            let ca = ca.clone();
            move || curl(addr, &url, &ca)
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if want_ok {
            assert!(out.status.success(), "curl failed: {stdout} {stderr}");
            assert!(stdout.contains("hello from origin"), "{stdout}");
        } else {
            assert!(!out.status.success(), "{stdout}");
            assert!(stdout.contains(" 403"), "{stdout} {stderr}");
            assert!(
                stdout.contains("X-Portcullis-Reason: denied_address")
                    && stdout.contains("loopback"),
                "{stdout}"
            );
        }
        let _ = tx.send(());
        task.await.unwrap().unwrap();
    }
    drop(origin);
    doh.stop().await;
}

const UPLOAD: &str = "POST http://http.example.com/up HTTP/1.1\r\nHost: http.example.com\r\n";

/// `n` chunks of `size` bytes of `a`, then the last chunk (no trailers).
fn chunks(n: usize, size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        out.extend(std::iter::repeat_n(b'a', size));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// The body of the request the origin received, after its head.
fn body_of(request: &str) -> &[u8] {
    let i = request.find("\r\n\r\n").expect("a request head");
    &request.as_bytes()[i + 4..]
}

/// Item 21: the global connection cap. Connections from two clients fill it; every
/// client then gets 503 with its reason and Retry-After, the one already holding a
/// connection included, and nothing is dialled. A freed slot is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_connection_cap_answers_503_to_every_client() {
    let doh = DohServer::start(zone()).await;
    let h = start(
        &doh,
        ALLOWLIST,
        "max_connections = 2\nmax_connections_per_client = 10\n",
        None,
    )
    .await;
    let held = connect_from("127.0.0.1", h.addr).await;
    let _other = connect_from("127.0.0.3", h.addr).await;
    wait_until("two connections are open", WAIT, || {
        h.state.connections() == 2
    })
    .await;
    for src in ["127.0.0.4", "127.0.0.1"] {
        let mut s = connect_from(src, h.addr).await;
        let _ = s
            .write_all(b"GET http://http.example.com/ HTTP/1.1\r\n\r\n")
            .await;
        let (status, head) = read_head(&mut s).await;
        assert_eq!(status, 503, "from {src}: {head}");
        assert!(
            reason_of(&head).starts_with("overloaded: ") && head.contains("\r\nRetry-After: 1\r\n"),
            "{head}"
        );
    }
    drop(held);
    wait_until("the slot is freed", WAIT, || h.state.connections() == 1).await;
    let mut s = connect_from("127.0.0.4", h.addr).await;
    s.write_all(b"GET http://http.example.com/ HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let response = String::from_utf8(read_to_end(&mut s).await).unwrap();
    assert!(response.starts_with("HTTP/1.1 302 "), "{response}");
    assert_eq!(h.dials(), vec!["93.184.216.40:80".parse().unwrap()]);
    h.stop().await;
    doh.stop().await;
}

/// Item 21: the 413 body limit, both framings. A Content-Length or a chunk size over
/// the limit is refused before anything is dialled (with `Expect: 100-continue`, before
/// the `100`); a body at the limit passes; a chunked body that passes the limit while
/// it streams gets 413, and the origin saw a request that never ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_limit_answers_413() {
    let doh = DohServer::start(zone()).await;
    let h = start(
        &doh,
        ALLOWLIST,
        "max_body_bytes = 40000\nbody_buffer_bytes = 8192\n",
        None,
    )
    .await;
    for request in [
        format!("{UPLOAD}Content-Length: 40001\r\n\r\n"),
        format!("{UPLOAD}Content-Length: 40001\r\nExpect: 100-continue\r\n\r\n"),
        format!("{UPLOAD}Transfer-Encoding: chunked\r\n\r\n9c41\r\n"),
    ] {
        let mut s = connect_from("127.0.0.1", h.addr).await;
        s.write_all(request.as_bytes()).await.unwrap();
        let (status, head) = read_head(&mut s).await;
        assert_eq!(status, 413, "{request:?}: {head}");
        assert!(reason_of(&head).starts_with("body_too_large: "), "{head}");
    }
    assert!(h.dials().is_empty(), "{:?}", h.dials());

    // At the limit: passes, whole (Content-Length) and streamed (chunked, re-framed).
    let exact = [
        [
            format!("{UPLOAD}Content-Length: 40000\r\n\r\n").into_bytes(),
            vec![b'a'; 40000],
        ]
        .concat(),
        [
            format!("{UPLOAD}Transfer-Encoding: chunked\r\n\r\n").into_bytes(),
            chunks(5, 8000),
        ]
        .concat(),
    ];
    for request in &exact {
        let mut s = connect_from("127.0.0.1", h.addr).await;
        s.write_all(request).await.unwrap();
        let response = String::from_utf8(read_to_end(&mut s).await).unwrap();
        assert!(response.starts_with("HTTP/1.1 302 "), "{response}");
    }
    let seen = h.http.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[0].contains("\r\nContent-Length: 40000\r\n"),
        "{}",
        &seen[0][..200]
    );
    assert_eq!(body_of(&seen[0]), vec![b'a'; 40000]);
    assert!(seen[1].contains("\r\nTransfer-Encoding: chunked\r\n"));
    assert_eq!(
        origins::dechunk(body_of(&seen[1])).expect("complete chunked body"),
        vec![b'a'; 40000]
    );

    // Over the limit once streaming: the client gets 413, the origin an unfinished body.
    let mut s = connect_from("127.0.0.1", h.addr).await;
    let over = [
        format!("{UPLOAD}Transfer-Encoding: chunked\r\n\r\n").into_bytes(),
        chunks(5, 9000),
    ]
    .concat();
    s.write_all(&over).await.unwrap();
    let (status, head) = read_head(&mut s).await;
    assert_eq!(status, 413, "{head}");
    drop(s);
    wait_until("the origin saw the connection end", WAIT, || {
        h.http.seen.lock().unwrap().len() == 3
    })
    .await;
    let cut = h.http.seen.lock().unwrap()[2].clone();
    assert!(cut.contains("\r\nTransfer-Encoding: chunked\r\n"));
    let body = body_of(&cut);
    assert!(
        origins::dechunk(body).is_none(),
        "the origin got a complete body"
    );
    assert!(!body.ends_with(b"0\r\n\r\n"));
    assert_eq!(h.dials().len(), 3);
    h.stop().await;
    doh.stop().await;
}

/// Item 15: a body longer than the buffer reaches the origin while the client is still
/// sending it (it used to be read whole, up to `max_body_bytes`, before dialling), and
/// a body of tiny chunks (6 bytes on the wire per byte of data) passes through one
/// buffer: the connection never holds more than its cap, however long the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_to_the_origin_while_the_client_sends_them() {
    let doh = DohServer::start(zone()).await;
    let h = start(&doh, ALLOWLIST, "body_buffer_bytes = 8192\n", None).await;
    let total = 1 << 20;
    let mut s = connect_from("127.0.0.1", h.addr).await;
    s.write_all(format!("{UPLOAD}Content-Length: {total}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    s.write_all(&vec![b'a'; 100 * 1024]).await.unwrap();
    wait_until("the origin has the start of the body", WAIT, || {
        h.http.received.load(Ordering::SeqCst) >= 64 * 1024
    })
    .await;
    s.write_all(&vec![b'a'; total - 100 * 1024]).await.unwrap();
    let response = String::from_utf8(read_to_end(&mut s).await).unwrap();
    assert!(response.starts_with("HTTP/1.1 302 "), "{response}");
    let seen = h.http.seen.lock().unwrap()[0].clone();
    assert!(seen.contains(&format!("\r\nContent-Length: {total}\r\n")));
    assert_eq!(body_of(&seen).len(), total);

    let n = 200_000;
    let mut s = connect_from("127.0.0.1", h.addr).await;
    let mut request = format!("{UPLOAD}Transfer-Encoding: chunked\r\n\r\n").into_bytes();
    request.extend(chunks(n, 1));
    let (mut read, mut write) = s.split();
    let (_, response) = tokio::join!(write.write_all(&request), async {
        let mut out = Vec::new();
        let _ = read.read_to_end(&mut out).await;
        out
    });
    let response = String::from_utf8(response).unwrap();
    assert!(response.starts_with("HTTP/1.1 302 "), "{response}");
    let seen = h.http.seen.lock().unwrap()[1].clone();
    let body = origins::dechunk(body_of(&seen)).expect("complete chunked body");
    assert_eq!(body, vec![b'a'; n]);
    // Re-framed: a few large chunks, not 200,000 tiny ones.
    assert!(
        body_of(&seen).len() < n + n / 10,
        "{}",
        body_of(&seen).len()
    );
    let peak = h.state.buffered_peak_per_connection();
    assert!(
        peak > 0 && peak <= h.state.config.connection_buffer_cap() && peak < 128 * 1024,
        "one connection held {peak} bytes for bodies of {total} and {} bytes",
        request.len()
    );
    wait_until("every reservation is returned", WAIT, || {
        h.state.buffered() == 0
    })
    .await;
    h.stop().await;
    doh.stop().await;
}

/// `series` in this process's metrics.
fn scraped(series: &str) -> f64 {
    let metrics = portcullis::telemetry::metrics::init()
        .render(&portcullis::telemetry::metrics::Snapshot::default());
    sample(&metrics, series).unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

/// Item 15: the budget over all connections. Connections waiting to send a head hold
/// 4 KiB each; once they have taken the budget, the next connection gets 503
/// `buffer_budget` and the refusal is counted; when they close, it is all returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buffer_budget_over_all_connections_refuses_with_503_and_counts() {
    let refused = r#"portcullis_proxy_buffer_refusals_total{reason="gate"}"#;
    let before = scraped(refused);
    let doh = DohServer::start(zone()).await;
    let h = start(
        &doh,
        ALLOWLIST,
        "max_header_bytes = 4096\nmax_response_header_bytes = 1024\nbody_buffer_bytes = 8192\n\
         max_buffered_bytes = 28672\n",
        None,
    )
    .await;
    assert_eq!(h.state.config.connection_buffer_cap(), 28672);
    let mut waiting = Vec::new();
    for _ in 0..7 {
        waiting.push(connect_from("127.0.0.1", h.addr).await);
    }
    wait_until("seven heads are being read", WAIT, || {
        h.state.buffered() == 7 * 4096
    })
    .await;
    let mut s = connect_from("127.0.0.1", h.addr).await;
    let _ = s
        .write_all(b"GET http://http.example.com/ HTTP/1.1\r\n\r\n")
        .await;
    let (status, head) = read_head(&mut s).await;
    assert_eq!(status, 503, "{head}");
    assert!(reason_of(&head).starts_with("buffer_budget: "), "{head}");
    assert_eq!(scraped(refused) - before, 1.0);
    drop(waiting);
    wait_until("the budget is returned", WAIT, || h.state.buffered() == 0).await;
    let mut s = connect_from("127.0.0.1", h.addr).await;
    s.write_all(b"GET http://http.example.com/ HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let response = String::from_utf8(read_to_end(&mut s).await).unwrap();
    assert!(response.starts_with("HTTP/1.1 302 "), "{response}");
    assert!(h.dials().len() == 1);
    h.stop().await;
    doh.stop().await;
}

/// Item 15: chunked trailers are header fields and get the head's limits: at most
/// `max_header_bytes` and `max_headers` of them (many short lines used to pass: only
/// each line was capped), within `header_timeout_ms` of the last chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_trailers_get_the_heads_limits() {
    let doh = DohServer::start(zone()).await;
    let h = start(
        &doh,
        ALLOWLIST,
        "max_header_bytes = 2048\nmax_headers = 10\nheader_timeout_ms = 500\n",
        None,
    )
    .await;
    let many: String = (0..1000)
        .map(|i| format!("X-T{i}: {}\r\n", "v".repeat(90)))
        .collect();
    let mut s = connect_from("127.0.0.1", h.addr).await;
    let request = format!("{UPLOAD}Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n{many}\r\n");
    let _ = s.write_all(request.as_bytes()).await;
    let (status, head) = read_head(&mut s).await;
    assert_eq!(status, 431, "{head}");
    assert!(
        reason_of(&head).starts_with("trailers_too_large: "),
        "{head}"
    );
    drop(s);
    // A trailer section that never ends.
    let mut s = connect_from("127.0.0.1", h.addr).await;
    s.write_all(
        format!("{UPLOAD}Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-A: 1\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (status, head) = read_head(&mut s).await;
    assert_eq!(status, 408, "{head}");
    assert!(reason_of(&head).starts_with("body_timeout: "), "{head}");
    assert!(h.dials().is_empty(), "{:?}", h.dials());
    h.stop().await;
    doh.stop().await;
}

/// The real binary, for what only its log shows: every upstream dead, one name allowed.
const GATE: &str = r#"
allowlist = "allow.toml"
[dns]
listen = ["127.0.0.1:0"]
[upstream]
timeout_ms = 300
[[upstream.servers]]
name = "dead-udp"
url = "udp://127.0.0.1:9"
[[upstream.servers]]
name = "dead-tcp"
url = "tcp://127.0.0.1:9"
[[lists]]
name = "threats"
inline = "evil.example\n"
"#;

fn start_gate() -> (gate::Gate, String) {
    let allow = "[[allow]]\nhost = \"api.example.com\"\n[[allow]]\nhost = \"http.example.com\"\nports = [80]\n";
    let gate = gate::Gate::start_full(GATE, &[("allow.toml", allow)], &[]);
    let proxy = gate.proxy_addr();
    (gate, proxy)
}

/// The decision line (JSON) the gate logged for a refusal with `reason_code`.
fn refusal_line(gate: &gate::Gate, reason_code: &str) -> serde_json::Value {
    let needle = format!("\"reason_code\":\"{reason_code}\"");
    let line = gate
        .wait_for_log(&needle, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no {reason_code} line in\n{}", gate.logs().join("\n")));
    serde_json::from_str(&line).unwrap()
}

/// Item 18: when every upstream fails, `X-Portcullis-Reason` is one short line (the
/// code and what failed, not each upstream's error once per lookup); the decision
/// log has every upstream's error.
#[test]
fn an_upstream_failure_gets_a_short_reason_and_the_log_gets_the_details() {
    let (gate, proxy) = start_gate();
    let response = exchange(
        &proxy,
        "CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n",
    );
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 502 "), "{response}");
    // Every line of the head ends in CRLF: no CR or LF inside a value.
    assert!(!head.replace("\r\n", "").contains(['\r', '\n']), "{head:?}");
    let reason = reason_of(head);
    assert!(reason.len() <= 200, "{} characters: {reason}", reason.len());
    assert_eq!(
        reason,
        "unresolved: api.example.com does not resolve (all upstreams failed)"
    );
    let line = refusal_line(&gate, "unresolved");
    assert_eq!(line["status"], 502);
    let logged = line["reason"].as_str().unwrap();
    for detail in ["all upstreams failed", "dead-udp", "dead-tcp"] {
        assert!(logged.contains(detail), "{detail} not in {logged}");
    }
    // The body points at the log line.
    let conn_id = line["conn_id"].as_u64().unwrap();
    assert!(body.contains(&format!("conn_id {conn_id}")), "{body}");
}

/// Item 16: query values (and userinfo, and fragments) never reach the log or the
/// refusal's header: the keys do.
#[test]
fn tokens_in_a_query_string_never_reach_the_log() {
    let (gate, proxy) = start_gate();
    let response = exchange(
        &proxy,
        "GET http://not-allowed.example/v1/items?token=s3cret-q&user=alice HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(response.starts_with("HTTP/1.1 403 "), "{response}");
    let line = refusal_line(&gate, "not_allowlisted");
    assert_eq!(
        line["request"],
        "http://not-allowed.example/v1/items?token=<redacted>&user=<redacted>"
    );
    // A target refused for its form: its text is in the error message too.
    let response = exchange(
        &proxy,
        "GET http://u:pw-s3cret@http.example.com/?key=s3cret-v#s3cret-f HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
    let line = refusal_line(&gate, "bad_target");
    assert_eq!(
        line["request"],
        "http://<redacted>@http.example.com/?key=<redacted>#<redacted>"
    );
    assert!(!response.contains("s3cret"), "{response}");
    let logs = gate.logs().join("\n");
    for secret in ["s3cret", "alice"] {
        assert!(!logs.contains(secret), "{secret} logged:\n{logs}");
    }
}
