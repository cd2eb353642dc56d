//! The routed listeners, in process through the composition root (`Gate::start`,
//! `Listeners::bind`, the bound addresses from `Bound`). LOOPBACK ONLY: names resolve
//! through a local DoH server to public-looking addresses, and a recording dialer
//! connects each of those to a local stand-in (an HTTPS origin, an echo server, a plain
//! HTTP origin); every refusal asserts that it dialled nothing. The decision lines are
//! read from a subscriber of this test's own thread (the runtime is current-thread, so
//! every task of the gate logs into it).

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis::app::{Bound, Gate, Listeners};
use portcullis::config::Config;
use portcullis::proxy::Dial;
use portcullis::proxy::sni::{alert, alerts, build_client_hello};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::doh_server::{DohServer, TestZone};
use crate::support::origins::{self, Origin};

const ORIGIN: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);
const ECHO: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 35);
const WEB: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 36);

/// Records every dial and connects the public-looking addresses of the zone to their
/// local stand-ins; anything else is refused.
struct Recorder {
    dials: Mutex<Vec<SocketAddr>>,
    to: HashMap<IpAddr, SocketAddr>,
}

#[async_trait::async_trait]
impl Dial for Recorder {
    async fn dial(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        self.dials.lock().unwrap().push(addr);
        match self.to.get(&addr.ip()) {
            Some(stand_in) => TcpStream::connect(stand_in).await,
            None => Err(std::io::Error::other(
                "the test dialer connects nowhere else",
            )),
        }
    }
}

/// The log lines of this thread's subscriber, as written.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// The decision lines (not close lines) of `door`.
    fn decisions(&self, door: &str) -> Vec<Value> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "portcullis::decision" && v["door"] == door)
            .filter(|v| v.get("event").is_none())
            .collect()
    }
}

struct Harness {
    bound: Bound,
    /// The routed TLS port the allow rules name (`tls_ports`).
    tls_port: u16,
    dialer: Arc<Recorder>,
    logs: Logs,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    doh: Option<DohServer>,
    https: Origin,
    web: Origin,
    _echo: Origin,
    _dir: tempfile::TempDir,
    _log_guard: tracing::subscriber::DefaultGuard,
}

/// A port free on 127.0.0.1 right now (the allow rules must name it before it is bound).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Harness {
    async fn start() -> Harness {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::INFO)
            .with_writer({
                let logs = logs.clone();
                move || logs.clone()
            })
            .finish();
        let log_guard = tracing::subscriber::set_default(subscriber);
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let doh = DohServer::start(
            TestZone::new()
                .a("origin.test", ORIGIN)
                .a("echo.test", ECHO)
                .a("web.test", WEB)
                .a("private.test", ip("10.0.0.1"))
                .a("notallowed.test", ip("93.184.216.37"))
                .a("evil.test", ip("93.184.216.39")),
        )
        .await;
        let https = origins::https("127.0.0.2", "origin.test").await;
        let echo = origins::echo("127.0.0.1").await;
        let web = origins::http(
            "127.0.0.1",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nhi\n",
        )
        .await;
        let (tls_port, http_port) = (free_port(), free_port());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("allow.toml"),
            format!(
                "[[allow]]\nhost = \"origin.test\"\nports = [{tls_port}]\n\
                 [[allow]]\nhost = \"echo.test\"\nports = [{tls_port}]\n\
                 [[allow]]\nhost = \"private.test\"\nports = [{tls_port}]\n\
                 [[allow]]\nhost = \"web.test\"\nports = [{http_port}]\n"
            ),
        )
        .unwrap();
        // The first TLS listener takes a free port no rule names; `tls_ports` adds the
        // rules' port on the same address.
        let text = format!(
            "allowlist = \"allow.toml\"\n[dns]\nlisten = [\"127.0.0.1:0\"]\n\
             [proxy]\nlisten = []\nclient_hello_timeout_ms = 700\n\
             [routed]\ntls_listen = [\"127.0.0.1:0\"]\ntls_ports = [{tls_port}]\n\
             http_listen = [\"127.0.0.1:{http_port}\"]\n[admin]\nlisten = []\n{}\n\
             [[lists]]\nname = \"threats\"\ninline = \"evil.test\\n\"\n",
            doh.upstream_toml()
        );
        let config = Config::parse(&text, "test.toml", dir.path()).unwrap();
        let gate = Gate::build(config, None).await.unwrap();
        let listeners = Listeners::bind(&gate.shared().config()).await.unwrap();
        let dialer = Arc::new(Recorder {
            dials: Mutex::new(Vec::new()),
            to: HashMap::from([
                (IpAddr::V4(ORIGIN), https.addr),
                (IpAddr::V4(ECHO), echo.addr),
                (IpAddr::V4(WEB), web.addr),
            ]),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (bound, task) = gate.with_dialer(dialer.clone()).start(listeners, async {
            let _ = stop_rx.await;
        });
        Harness {
            bound,
            tls_port,
            dialer,
            logs,
            stop: Some(stop_tx),
            task: Some(task),
            doh: Some(doh),
            https,
            web,
            _echo: echo,
            _dir: dir,
            _log_guard: log_guard,
        }
    }

    fn dials(&self) -> Vec<SocketAddr> {
        self.dialer.dials.lock().unwrap().clone()
    }

    /// The routed TLS address whose port the allow rules name.
    fn tls(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.tls_port))
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task.take().unwrap())
            .await
            .expect("the gate stops")
            .unwrap()
            .unwrap();
        self.doh.take().unwrap().stop().await;
    }
}

/// Writes `parts` (pausing between them, so each goes in its own segment), then reads
/// everything until the gate closes.
async fn send(to: SocketAddr, parts: &[&[u8]]) -> Vec<u8> {
    let mut stream = TcpStream::connect(to).await.unwrap();
    stream.set_nodelay(true).unwrap();
    for part in parts {
        stream.write_all(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("the gate closes")
        .ok();
    out
}

#[tokio::test]
async fn the_bound_addresses_include_every_routed_listener() {
    let h = Harness::start().await;
    assert_eq!(h.bound.routed_tls.len(), 2, "{:?}", h.bound);
    assert_ne!(h.bound.routed_tls[0].port(), 0);
    assert_eq!(h.bound.routed_tls[1], h.tls());
    assert_eq!(h.bound.routed_http.len(), 1);
    assert!(h.bound.proxy.is_empty() && h.bound.admin.is_empty());
    h.stop().await;
}

/// curl, which verifies the origin's certificate for the real name, through the routed
/// TLS port: the gate relays the TLS session it never decrypts.
#[tokio::test]
async fn an_allowed_sni_is_relayed_end_to_end() {
    let h = Harness::start().await;
    let port = h.tls_port;
    let ca = h.https.ca_file.clone().unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&ca)
            .arg("--resolve")
            .arg(format!("origin.test:{port}:127.0.0.1"))
            .arg(format!("https://origin.test:{port}/"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .output()
            .expect("curl runs (apt-get install curl)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "hello from origin\n");
    // Exactly the checked address of the DNS answer, on the port the client came in on.
    assert_eq!(h.dials(), vec![SocketAddr::new(ORIGIN.into(), port)]);
    let lines = h.logs.decisions("routed_tls");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["decision"], "allowed", "{line}");
    assert_eq!(line["host"], "origin.test", "{line}");
    assert_eq!(line["port"], port, "{line}");
    assert_eq!(line["sni"], "origin.test", "{line}");
    assert_eq!(line["addr"], format!("{ORIGIN}:{port}"), "{line}");
    assert!(line["answer_ids"].as_str().is_some(), "{line}");
    let metrics = portcullis::telemetry::metrics::init().render(&Default::default());
    assert!(
        metrics.lines().any(|l| l.starts_with(
            r#"portcullis_proxy_decisions_total{door="routed_tls",decision="allowed",reason="allow_rule"}"#
        )),
        "{metrics}"
    );
    h.stop().await;
}

/// A refusal case: what, where, sent, the answer, reason_code, answer ids in the line.
type Refusal = (
    &'static str,
    SocketAddr,
    Vec<u8>,
    Vec<u8>,
    &'static str,
    bool,
);

/// Each refusal: its alert (none for a client that does not speak TLS), one decision
/// line with its code, and no dial.
#[tokio::test]
async fn every_refusal_gets_its_alert_and_dials_nothing() {
    let h = Harness::start().await;
    let other = h.bound.routed_tls[0];
    let hello = |sni: Option<&str>| build_client_hello(sni, false, 200);
    let unrecognized = alert(alerts::UNRECOGNIZED_NAME).to_vec();
    let denied = alert(alerts::ACCESS_DENIED).to_vec();
    #[rustfmt::skip]
    let cases: Vec<Refusal> = vec![
        // what, where, sent, the answer, reason_code, answer ids in the line
        ("no SNI", h.tls(), hello(None), unrecognized.clone(), "sni_missing", false),
        ("an IP-literal SNI", h.tls(), hello(Some("10.0.0.1")), unrecognized.clone(), "ip_literal", false),
        ("ECH", h.tls(), build_client_hello(Some("echo.test"), true, 0), denied.clone(), "ech_refused", true),
        ("a name not allowed", h.tls(), hello(Some("notallowed.test")), unrecognized.clone(), "not_allowlisted", false),
        ("a port no rule names", other, hello(Some("origin.test")), denied.clone(), "port_not_allowed", false),
        ("a private address", h.tls(), hello(Some("private.test")), denied.clone(), "denied_address", true),
        ("a blocked name", h.tls(), hello(Some("evil.test")), denied.clone(), "blocked", false),
        ("plaintext", h.tls(), b"GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n".to_vec(), Vec::new(), "not_tls", false),
    ];
    for (what, to, sent, want, code, with_ids) in cases {
        let before = h.logs.decisions("routed_tls").len();
        let got = send(to, &[&sent]).await;
        assert_eq!(got, want, "{what}: the answer");
        // The line is written before the alert is sent.
        let lines = h.logs.decisions("routed_tls");
        assert_eq!(
            lines.len(),
            before + 1,
            "{what}: one decision line: {lines:?}"
        );
        let line = &lines[before];
        assert_eq!(line["decision"], "refused", "{what}: {line}");
        assert_eq!(line["reason_code"], code, "{what}: {line}");
        assert_eq!(line["status"], 403, "{what}: {line}");
        assert_eq!(line["answer_ids"].is_string(), with_ids, "{what}: {line}");
        assert!(
            line["conn_id"].is_u64() && line["group"] == "default",
            "{what}: {line}"
        );
        assert!(h.dials().is_empty(), "{what}: dialled {:?}", h.dials());
    }
    h.stop().await;
}

/// The ClientHello one byte a segment, and in two TLS records: the origin gets exactly
/// the bytes the client sent (the echo server sends them back).
#[tokio::test]
async fn a_client_hello_split_across_segments_and_records_is_routed() {
    let h = Harness::start().await;
    let whole = build_client_hello(Some("echo.test"), false, 100);
    let bytes: Vec<&[u8]> = whole.chunks(1).collect();
    // The handshake message cut in two records.
    let handshake = &whole[5..];
    let (first, second) = handshake.split_at(handshake.len() / 2);
    let mut records = Vec::new();
    for part in [first, second] {
        records.extend_from_slice(&[0x16, 3, 1]);
        records.extend_from_slice(&(part.len() as u16).to_be_bytes());
        records.extend_from_slice(part);
    }
    for (what, parts, sent) in [
        ("byte by byte", bytes, whole.clone()),
        ("two records", vec![&records[..]], records.clone()),
    ] {
        let mut stream = TcpStream::connect(h.tls()).await.unwrap();
        stream.set_nodelay(true).unwrap();
        for part in parts {
            stream.write_all(part).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut echoed = vec![0u8; sent.len()];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut echoed))
            .await
            .unwrap_or_else(|_| panic!("{what}: the origin's echo"))
            .unwrap();
        assert_eq!(echoed, sent, "{what}");
    }
    let port = h.tls_port;
    assert_eq!(h.dials(), vec![SocketAddr::new(ECHO.into(), port); 2]);
    h.stop().await;
}

/// A ClientHello that never completes is closed after `client_hello_timeout_ms`.
#[tokio::test]
async fn a_stalled_client_hello_is_closed_after_the_timeout() {
    let h = Harness::start().await;
    let hello = build_client_hello(Some("echo.test"), false, 0);
    let started = Instant::now();
    let got = send(h.tls(), &[&hello[..20]]).await;
    let took = started.elapsed();
    assert!(got.is_empty(), "{got:?}");
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let lines = h.logs.decisions("routed_tls");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["reason_code"], "client_hello_timeout");
    assert!(h.dials().is_empty());
    h.stop().await;
}

/// Plain HTTP routed by `Host`, to the port it came in on; a Host no rule allows is the
/// proxy's 403 with its reason header, and is not dialled.
#[tokio::test]
async fn routed_http_goes_by_host() {
    let h = Harness::start().await;
    let http = h.bound.routed_http[0];
    let port = http.port();
    let answer = send(
        http,
        &[b"GET /v1/x?q=1 HTTP/1.1\r\nHost: web.test\r\nProxy-Authorization: secret\r\n\r\n"],
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nhi\n"), "{answer}");
    let seen = h.web.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].starts_with(&format!(
            "GET /v1/x?q=1 HTTP/1.1\r\nHost: web.test:{port}\r\n"
        )),
        "{seen:?}"
    );
    assert!(!seen[0].contains("Proxy-Authorization"), "{seen:?}");
    assert_eq!(h.dials(), vec![SocketAddr::new(WEB.into(), port)]);

    for (request, status, code) in [
        (
            "GET / HTTP/1.1\r\nHost: notallowed.test\r\n\r\n",
            403,
            "not_allowlisted",
        ),
        ("GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n", 403, "blocked"),
        (
            "GET / HTTP/1.1\r\nHost: web.test:81\r\n\r\n",
            400,
            "bad_request",
        ),
        (
            "POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
            "bad_request",
        ),
    ] {
        let answer = send(http, &[request.as_bytes()]).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{request:?}: {answer}"
        );
        assert!(
            answer.contains(&format!("X-Portcullis-Reason: {code}: ")),
            "{request:?}: {answer}"
        );
        let lines = h.logs.decisions("routed_http");
        let line = lines.last().unwrap();
        assert_eq!(line["reason_code"], code, "{line}");
    }
    assert_eq!(h.dials().len(), 1, "the refusals dialled {:?}", h.dials());
    let refused = h.logs.decisions("routed_http");
    assert_eq!(refused.len(), 5, "one line a request: {refused:?}");
    assert_eq!(refused[1]["request"], "http://notallowed.test/");
    h.stop().await;
}

/// openssl's own ClientHello: the allowed name's certificate verifies through the routed
/// port; a name no rule allows gets the `unrecognized_name` alert.
#[tokio::test]
async fn openssl_s_client_through_the_routed_port() {
    let h = Harness::start().await;
    let (to, ca) = (h.tls(), h.https.ca_file.clone().unwrap());
    let s_client = move |name: &'static str| {
        let ca = ca.clone();
        tokio::task::spawn_blocking(move || {
            let mut child = std::process::Command::new("openssl")
                .args(["s_client", "-connect", &to.to_string(), "-servername", name])
                .args(["-verify_return_error", "-CAfile"])
                .arg(&ca)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("openssl runs (apt-get install openssl)");
            let mut stdin = child.stdin.take().unwrap();
            let _ = stdin.write_all(b"GET / HTTP/1.0\r\n\r\n");
            // End of input: s_client closes once the exchange is done.
            drop(stdin);
            let out = child.wait_with_output().unwrap();
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    let allowed = s_client("origin.test").await.unwrap();
    assert!(allowed.contains("Verify return code: 0 (ok)"), "{allowed}");
    let refused = s_client("notallowed.test").await.unwrap();
    assert!(refused.contains("unrecognized name"), "{refused}");
    assert_eq!(h.dials(), vec![SocketAddr::new(ORIGIN.into(), h.tls_port)]);
    h.stop().await;
}
