//! Routed mode end to end, with real clients that ignore proxy settings, in network
//! namespaces this test creates and removes (nothing leaves the machine):
//!
//! ```text
//!  agent 10.77.0.2 ──── 10.77.0.1 gate 52.10.0.1 ──── 52.10.0.254 internet (router)
//!   (resolv.conf:              │ (the image's binary,       52.20.0.2: TLS origin on 443 and
//!    10.77.0.1 only,           │  run as the container;               8443, HTTP on 80, a
//!    no proxy variables)       │  DNS, proxy, routed                  certificate for the
//!                              │  443, 8443, 80)                      allowed names
//!                     192.168.77.1                            52.20.0.3: DoH server
//!                              │
//!                     192.168.77.2 lan (a NAS: must never see a packet)
//! ```
//!
//! The gate puts the agent's group in routed mode: its DNS answers allowed names with the
//! address the query came in on (10.77.0.1), and its routed listeners carry TLS on by the
//! ClientHello's SNI and HTTP by Host, with the proxy's checks. The agent's clients get no
//! proxy variable: Node's built-in fetch (which ignores them anyway), curl without `-x`,
//! `openssl s_client`, curl over plain HTTP, and a small client here that writes its
//! ClientHello in pieces over many TLS records. Allowed names must work with the
//! certificate verified for the real name; every refusal must leave the origin, the NAS
//! and the gate's loopback without a connection. The second test repeats netns.rs's proof
//! in routed mode, with the agent routing through the gate as it could give itself.
//!
//! Needs root, iproute2, util-linux, procps, dig, curl, ping, Node.js and openssl:
//! `#[ignore]`d for a plain `cargo test`; scripts/test.sh installs them and runs it, and when
//! it runs, a missing precondition fails it.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use portcullis::proxy::sni::build_client_hello;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::netns::{Sink, direct_probes, echoes_received, ping, print_table, text};
use crate::support::certs::mint_certificates_for;
use crate::support::container::{self, Netns, RunningGate, link, readable_by_all};
use crate::support::doh_server::{DohServer, TestZone};

const ORIGIN: Ipv4Addr = Ipv4Addr::new(52, 20, 0, 2);
const DOH: Ipv4Addr = Ipv4Addr::new(52, 20, 0, 3);
const NAS: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const GATE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const AGENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The gate's routed ports: TLS on 443 and (tls_ports) 8443, HTTP on 80.
const TLS_PORT: u16 = 443;
const TLS_PORT_2: u16 = 8443;
const HTTP_PORT: u16 = 80;
const PORTS: [u16; 3] = [TLS_PORT, TLS_PORT_2, HTTP_PORT];
/// `[proxy] client_hello_timeout_ms` of the test's gate: a stalled ClientHello is closed
/// after this long.
const HELLO_TIMEOUT_MS: u64 = 1500;
/// Every variable through which a client could be told to use a proxy.
const PROXY_VARS: [&str; 10] = [
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "ALL_PROXY",
    "https_proxy",
    "http_proxy",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "NODE_USE_ENV_PROXY",
    "grpc_proxy",
];
/// The names the origin's certificate holds.
const CERT_NAMES: [&str; 2] = ["allowed.test", "alt.test"];

fn allowlist() -> String {
    // allowed.test on 443 and 80 (not 8443); alt.test on 8443 only; nas.test and loop.test
    // are allowed, but resolve to the NAS and to loopback (no `private = true`).
    "[[allow]]\nhost = \"allowed.test\"\nports = [443, 80]\n\
     [[allow]]\nhost = \"alt.test\"\nports = [8443]\n\
     [[allow]]\nhost = \"nas.test\"\nports = [443, 80]\n\
     [[allow]]\nhost = \"loop.test\"\nports = [443]\n"
        .to_owned()
}

/// TCP listeners on fixed ports of `ip` inside a namespace that record every connection
/// they accept; stopped and joined on drop.
struct Recorder {
    heard: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    fn start(ns: &Netns, ip: Ipv4Addr, ports: &[u16]) -> Recorder {
        let (name, ports) = (ns.name.clone(), ports.to_vec());
        let heard = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, stopped) = (heard.clone(), stop.clone());
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            Netns::enter_by_name(&name);
            let listeners: Vec<_> = ports
                .iter()
                .map(|port| {
                    let l = std::net::TcpListener::bind((ip, *port))
                        .unwrap_or_else(|e| panic!("bind {ip}:{port}: {e}"));
                    l.set_nonblocking(true).unwrap();
                    (port, l)
                })
                .collect();
            tx.send(()).unwrap();
            while !stopped.load(Ordering::SeqCst) {
                let mut idle = true;
                for (port, l) in &listeners {
                    if let Ok((_, peer)) = l.accept() {
                        log.lock().unwrap().push(format!("{ip}:{port} from {peer}"));
                        idle = false;
                    }
                }
                if idle {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        Recorder {
            heard,
            stop,
            thread: Some(thread),
        }
    }

    fn heard(&self) -> Vec<String> {
        self.heard.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The internet namespace's servers: the DoH server the gate asks, and the origin (TLS on
/// 443 and 8443, HTTP on 80) that records every connection it accepts.
pub(crate) struct Internet {
    doh_url: String,
    doh_ca: String,
    doh_name: String,
    /// PEM of the CA of the origin's certificate (for the clients' trust stores).
    pub(crate) origin_ca: String,
    origin_ca_der: CertificateDer<'static>,
    /// `origin:PORT from PEER`, one per accepted connection.
    seen: Arc<Mutex<Vec<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Internet {
    fn start(ns: &Netns, dir: &std::path::Path) -> Internet {
        let zone = TestZone::new()
            .a("allowed.test", ORIGIN)
            .a("alt.test", ORIGIN)
            .a("notallowed.test", ORIGIN)
            .a("evil.test", ORIGIN)
            .a("nas.test", NAS)
            .a("loop.test", Ipv4Addr::LOCALHOST);
        let (ca_pem, chain, key) = mint_certificates_for(&CERT_NAMES);
        let origin_ca = dir.join("origin-ca.pem");
        std::fs::write(&origin_ca, ca_pem).unwrap();
        let origin_ca_der = chain[1].clone();
        let acceptor = crate::support::certs::acceptor(chain, key);
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let (tx, rx) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (name, dir, log) = (ns.name.clone(), dir.to_owned(), seen.clone());
        let thread = std::thread::spawn(move || {
            Netns::enter_by_name(&name);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for port in [TLS_PORT, TLS_PORT_2] {
                    let listener = tokio::net::TcpListener::bind((ORIGIN, port)).await.unwrap();
                    let (acceptor, log) = (acceptor.clone(), log.clone());
                    tasks.push(tokio::spawn(async move {
                        while let Ok((s, peer)) = listener.accept().await {
                            log.lock()
                                .unwrap()
                                .push(format!("origin:{port} from {peer}"));
                            let acceptor = acceptor.clone();
                            tokio::spawn(async move {
                                let Ok(mut tls) = acceptor.accept(s).await else {
                                    return;
                                };
                                let sni = tls.get_ref().1.server_name().unwrap_or("-").to_owned();
                                if read_head(&mut tls).await.is_none() {
                                    return;
                                }
                                let body = format!("hello from origin {sni} on {port}\n");
                                let _ = tls.write_all(response(&body).as_bytes()).await;
                                let _ = tls.shutdown().await;
                            });
                        }
                    }));
                }
                let listener = tokio::net::TcpListener::bind((ORIGIN, HTTP_PORT))
                    .await
                    .unwrap();
                let http_log = log.clone();
                tasks.push(tokio::spawn(async move {
                    while let Ok((mut s, peer)) = listener.accept().await {
                        http_log
                            .lock()
                            .unwrap()
                            .push(format!("origin:{HTTP_PORT} from {peer}"));
                        tokio::spawn(async move {
                            let Some(head) = read_head(&mut s).await else {
                                return;
                            };
                            let host = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("host: ")
                                        .map(str::to_owned)
                                })
                                .unwrap_or_default();
                            let body = format!("hello from origin over http, host {host}\n");
                            let _ = s.write_all(response(&body).as_bytes()).await;
                            let _ = s.shutdown().await;
                        });
                    }
                }));
                let doh = DohServer::start_on(DOH.into(), zone).await;
                let doh_ca = dir.join("doh-ca.pem");
                std::fs::copy(&doh.ca_file, &doh_ca).unwrap();
                tx.send((
                    doh.url(),
                    doh.tls_name.clone(),
                    doh_ca.display().to_string(),
                ))
                .unwrap();
                let _ = stopped.await;
                for task in tasks {
                    task.abort();
                }
                doh.stop().await;
            });
        });
        let (doh_url, doh_name, doh_ca) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("internet servers up");
        Internet {
            doh_url,
            doh_ca,
            doh_name,
            origin_ca: origin_ca.display().to_string(),
            origin_ca_der,
            seen,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub(crate) fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn response(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// Packets a namespace's kernel received: TCP segments, UDP datagrams (to open and closed
/// ports) and ICMP messages, from its /proc/net/snmp (per namespace). Counts what arrives
/// whether or not anything listens.
fn packets_received(ns: &Netns) -> u64 {
    let out = ns.command("cat").arg("/proc/net/snmp").output().unwrap();
    let snmp = String::from_utf8_lossy(&out.stdout).into_owned();
    let value = |proto: &str, column: &str| -> u64 {
        let mut lines = snmp
            .lines()
            .filter(|l| l.starts_with(&format!("{proto}: ")));
        let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
        let i = names
            .split_whitespace()
            .position(|n| n == column)
            .unwrap_or_else(|| panic!("{proto} {column}"));
        values.split_whitespace().nth(i).unwrap().parse().unwrap()
    };
    value("Tcp", "InSegs")
        + value("Udp", "InDatagrams")
        + value("Udp", "NoPorts")
        + value("Icmp", "InMsgs")
}

/// What a raw client got back from the gate.
#[derive(Debug)]
struct Probe {
    reply: Vec<u8>,
    /// The gate closed (EOF or reset) before the wait was over.
    closed: bool,
    elapsed: Duration,
}

impl Probe {
    /// A TLS alert record, first and alone.
    fn alert(&self) -> Option<u8> {
        (self.reply.len() == 7 && self.reply[0] == 0x15 && self.reply[4] == 2)
            .then(|| self.reply[6])
    }

    fn describe(&self) -> String {
        let closed = if self.closed { "closed" } else { "still open" };
        match self.alert() {
            Some(d) => format!("alert {} ({}), {closed}", d, alert_name(d)),
            None if self.reply.is_empty() => {
                format!("no bytes, {closed} after {:.1?}", self.elapsed)
            }
            None => format!(
                "{} bytes {:?}..., {closed}",
                self.reply.len(),
                String::from_utf8_lossy(&self.reply[..self.reply.len().min(24)])
            ),
        }
    }
}

fn alert_name(description: u8) -> &'static str {
    match description {
        40 => "handshake_failure",
        49 => "access_denied",
        80 => "internal_error",
        112 => "unrecognized_name",
        _ => "other",
    }
}

/// From the agent's namespace: connects to the gate's `port`, writes `pieces` (one TCP
/// segment each, `pause` apart), and reads until the gate closes or `wait` passes.
fn probe(agent: &Netns, port: u16, pieces: Vec<Vec<u8>>, pause: Duration, wait: Duration) -> Probe {
    let name = agent.name.clone();
    std::thread::spawn(move || {
        Netns::enter_by_name(&name);
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((GATE, port)), Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connect {GATE}:{port}: {e}"));
        s.set_nodelay(true).unwrap();
        let start = Instant::now();
        for (i, piece) in pieces.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(pause);
            }
            if s.write_all(piece).is_err() {
                break;
            }
        }
        let mut reply = Vec::new();
        let mut closed = false;
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            s.set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))
            .unwrap();
            match s.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => reply.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        Probe {
            reply,
            closed,
            elapsed: start.elapsed(),
        }
    })
    .join()
    .unwrap()
}

/// From the agent's namespace: a real TLS client (rustls, verifying the certificate for
/// `name` against the test CA) whose ClientHello is re-framed into TLS records of 40 bytes
/// and written in four TCP segments 50 ms apart; then a GET. The response body, or why not.
fn split_hello_get(
    agent: &Netns,
    ca: &CertificateDer<'static>,
    name: &str,
) -> Result<String, String> {
    let (ns, ca, name) = (agent.name.clone(), ca.clone(), name.to_owned());
    std::thread::spawn(move || {
        Netns::enter_by_name(&ns);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let server = ServerName::try_from(name.clone()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
        let mut first = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut first).unwrap();
        }
        // The handshake bytes of the records rustls wrote, in records of 40 bytes.
        let mut handshake = Vec::new();
        let mut i = 0;
        while i + 5 <= first.len() {
            let len = u16::from_be_bytes([first[i + 3], first[i + 4]]) as usize;
            handshake.extend_from_slice(&first[i + 5..i + 5 + len]);
            i += 5 + len;
        }
        let mut records = Vec::new();
        for chunk in handshake.chunks(40) {
            records.extend_from_slice(&[0x16, 3, 1]);
            records.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            records.extend_from_slice(chunk);
        }
        let mut tcp =
            TcpStream::connect_timeout(&SocketAddr::from((GATE, TLS_PORT)), Duration::from_secs(5))
                .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).unwrap();
        let half = records.len() / 2;
        for piece in [
            &records[..3],
            &records[3..50],
            &records[50..half],
            &records[half..],
        ] {
            tcp.write_all(piece).map_err(|e| format!("write: {e}"))?;
            std::thread::sleep(Duration::from_millis(50));
        }
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let request = format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
        tls.write_all(request.as_bytes())
            .map_err(|e| format!("handshake or write: {e}"))?;
        let mut out = Vec::new();
        match tls.read_to_end(&mut out) {
            Ok(_) => Ok(String::from_utf8_lossy(&out).into_owned()),
            Err(e) if !out.is_empty() => Ok(format!("{} ({e})", String::from_utf8_lossy(&out))),
            Err(e) => Err(format!("read: {e}")),
        }
    })
    .join()
    .unwrap()
}

/// The namespaces, linked as in the picture, with the internet's servers running. Fields
/// drop in order: the servers stop before their namespaces go.
pub(crate) struct Topology {
    pub(crate) net: Internet,
    pub(crate) agent: Netns,
    pub(crate) gate: Netns,
    inet: Netns,
    lan: Netns,
    pub(crate) etc: tempfile::TempDir,
    pub(crate) cache: tempfile::TempDir,
    /// The agent's resolv.conf: the gate only.
    resolv: std::path::PathBuf,
}

impl Topology {
    pub(crate) fn new() -> Topology {
        container::require();
        for tool in ["node", "openssl", "timeout"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                found,
                "this test cannot run here: `{tool}` is not installed (scripts/test.sh installs \
                 nodejs and openssl)"
            );
        }
        let agent = Netns::new("ragent");
        let gate = Netns::new("rgate");
        let inet = Netns::new("rinet");
        let lan = Netns::new("rlan");
        link(
            &agent,
            "eth0",
            "10.77.0.2/24",
            &gate,
            "inner",
            "10.77.0.1/24",
        );
        link(
            &gate,
            "outer",
            "52.10.0.1/24",
            &inet,
            "eth0",
            "52.10.0.254/24",
        );
        link(
            &gate,
            "lan0",
            "192.168.77.1/24",
            &lan,
            "eth0",
            "192.168.77.2/24",
        );
        inet.run(&["ip", "addr", "add", "52.20.0.2/32", "dev", "lo"]);
        inet.run(&["ip", "addr", "add", "52.20.0.3/32", "dev", "lo"]);
        inet.run(&["ip", "route", "add", "10.77.0.0/24", "via", "52.10.0.1"]);
        gate.run(&["ip", "route", "add", "default", "via", "52.10.0.254"]);
        let etc = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let resolv = etc.path().join("resolv.conf");
        std::fs::write(
            &resolv,
            "nameserver 10.77.0.1\noptions timeout:3 attempts:1\n",
        )
        .unwrap();
        let net = Internet::start(&inet, etc.path());
        Topology {
            net,
            agent,
            gate,
            inet,
            lan,
            etc,
            cache,
            resolv,
        }
    }

    /// Starts the gate in its namespace as the container runs it: the agent's group in
    /// routed mode (answers carry the address a query arrived on), routed listeners on the
    /// agent side; returns once every listener is bound.
    fn start_gate(&self) -> RunningGate {
        self.start_gate_with(&allowlist(), "routed", "allowlist")
    }

    /// [`Topology::start_gate`] with this allowlist and the agent group's DNS and proxy
    /// modes; the admin token is `admin-token` beside the config.
    pub(crate) fn start_gate_with(
        &self,
        allowlist: &str,
        dns_mode: &str,
        proxy_mode: &str,
    ) -> RunningGate {
        let etc = self.etc.path();
        std::fs::write(etc.join("allowlist.toml"), allowlist).unwrap();
        std::fs::write(etc.join("admin-token"), "routed-netns-admin-token\n").unwrap();
        std::fs::write(
            etc.join("portcullis.toml"),
            format!(
                r#"allowlist = "allowlist.toml"
[dns]
listen = ["10.77.0.1:53"]
mode = "allowlist"
modes = {{ agent = "{dns_mode}" }}
[upstream]
timeout_ms = 2000
[[upstream.servers]]
name = "internet-doh"
url = "{url}"
tls_name = "{tls_name}"
ca_file = "{ca}"
[groups]
agent = ["10.77.0.0/24"]
[admin]
listen = ["127.0.0.1:9953"]
token_file = "admin-token"
[proxy]
listen = ["10.77.0.1:3128"]
client_hello_timeout_ms = {HELLO_TIMEOUT_MS}
modes = {{ agent = "{proxy_mode}" }}
[routed]
tls_listen = ["10.77.0.1:{TLS_PORT}"]
tls_ports = [{TLS_PORT_2}]
http_listen = ["10.77.0.1:{HTTP_PORT}"]
[[lists]]
name = "threats"
inline = "evil.test"
"#,
                url = self.net.doh_url,
                tls_name = self.net.doh_name,
                ca = self.net.doh_ca,
            ),
        )
        .unwrap();
        readable_by_all(etc);
        let config = etc.join("portcullis.toml");
        let lists_dir = self.cache.path().join("lists");
        let mut gate = self.gate.start_gate(
            self.cache.path(),
            &[
                ("PORTCULLIS_CONFIG", config.to_str().unwrap()),
                ("PORTCULLIS_CACHE_DIR", lists_dir.to_str().unwrap()),
            ],
        );
        // DNS (UDP, TCP), proxy, admin, routed TLS on two ports, routed HTTP.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let logs = gate.logs();
            let bound = |what: &str| logs.iter().filter(|l| l.contains(what)).count();
            if bound("\"listening ") >= 7 && bound("routed/tls") >= 2 && bound("routed/http") >= 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the gate did not bind its routed listeners; log:\n{}",
                logs.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        gate
    }

    /// `dig @10.77.0.1 NAME A` from the agent: (status, answer addresses).
    pub(crate) fn dig(&self, name: &str) -> (String, Vec<String>) {
        let out = self
            .agent
            .command("dig")
            .args(["@10.77.0.1", "-p", "53", name, "A", "+tries=1", "+time=5"])
            .output()
            .unwrap();
        let raw = text(&out);
        let status = raw
            .split("status: ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .unwrap_or("no answer")
            .to_owned();
        let answers = raw
            .split(";; ANSWER SECTION:\n")
            .nth(1)
            .map(|s| {
                s.lines()
                    .take_while(|l| !l.is_empty())
                    .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        (status, answers)
    }

    /// `program` in the agent's namespace as an agent's container runs it: the gate as its
    /// only resolver (its own /etc/resolv.conf, bound in a private mount namespace), no
    /// proxy variable at all, at most 15 s.
    pub(crate) fn client(&self, program: &str) -> Command {
        let mut c = self.agent.command("unshare");
        c.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            r#"mount --bind "$1" /etc/resolv.conf && shift && exec timeout 15 "$@""#,
            "sh",
        ])
        .arg(&self.resolv)
        .arg(program);
        for var in PROXY_VARS {
            c.env_remove(var);
        }
        c
    }

    /// Node's built-in fetch of `url`: `status N` and the body, or `error CODE`.
    pub(crate) fn node_fetch(&self, url: &str) -> (bool, String) {
        const SCRIPT: &str = r#"
fetch(process.argv[1], { signal: AbortSignal.timeout(10000) })
  .then(async (r) => { console.log("status " + r.status); console.log(await r.text()); })
  .catch((e) => { console.log("error " + ((e.cause && (e.cause.code || e.cause.message)) || e.message)); process.exit(3); });
"#;
        let out = self
            .client("node")
            .args(["-e", SCRIPT, url])
            .env("NODE_EXTRA_CA_CERTS", &self.net.origin_ca)
            .output()
            .unwrap();
        (out.status.success(), text(&out).trim().to_owned())
    }

    /// curl with no proxy: (exit code, http code, all output).
    pub(crate) fn curl(&self, url: &str) -> (Option<i32>, String, String) {
        let out = self
            .client("curl")
            .args(["-sS", "--max-time", "8", "--cacert", &self.net.origin_ca])
            .args(["-o", "-", "-w", "\n%{http_code}", url])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let code = stdout.lines().last().unwrap_or("").to_owned();
        (out.status.code(), code, text(&out))
    }

    /// `openssl s_client` to `name:443`, verifying the certificate for `name`, sending a GET.
    fn s_client(&self, name: &str) -> (bool, String) {
        let mut child = self
            .client("openssl")
            .args(["s_client", "-connect", &format!("{name}:{TLS_PORT}")])
            .args(["-servername", name, "-verify_hostname", name])
            .args([
                "-CAfile",
                &self.net.origin_ca,
                "-verify_return_error",
                "-ign_eof",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let request = format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(request.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.success(), text(&out))
    }

    /// The gate's decision lines of `door` so far.
    fn decisions(gate: &mut RunningGate, door: &str) -> Vec<serde_json::Value> {
        gate.logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("door").and_then(|d| d.as_str()) == Some(door))
            .collect()
    }
}

/// A row: what was tried, what the spec says, what happened, whether it held.
type Row = (String, String, String, bool);

/// A refusal at the routed TLS listener: what is tried, the gate's port, the bytes sent,
/// the refusal codes the decision line may carry, and whether the answer is a TLS alert
/// (else a close without one).
type TlsCase<'a> = (&'a str, u16, Vec<Vec<u8>>, &'a [&'a str], bool);

/// Where nothing may ever arrive: the origin (per case), the NAS and the gate's loopback.
struct Watch<'a> {
    topo: &'a Topology,
    nas: &'a Recorder,
    nas_packets: u64,
    gate_loopback: &'a Recorder,
}

impl Watch<'_> {
    /// What reached the origin during `case`, and whether anything reached the NAS or the
    /// gate's loopback at all, after a moment for a late dial to arrive.
    fn reached<T>(&self, case: impl FnOnce() -> T) -> (T, Vec<String>) {
        let before = self.topo.net.seen().len();
        let out = case();
        std::thread::sleep(Duration::from_millis(300));
        let mut reached: Vec<String> = self.topo.net.seen()[before..].to_vec();
        reached.extend(self.nas.heard());
        reached.extend(self.gate_loopback.heard());
        let packets = packets_received(&self.topo.lan);
        if packets != self.nas_packets {
            reached.push(format!(
                "the NAS received {} packets",
                packets - self.nas_packets
            ));
        }
        (out, reached)
    }
}

#[test]
#[ignore = "needs root, iproute2, util-linux, procps, dig, curl, ping, node, openssl: scripts/test.sh runs it"]
fn routed_clients_reach_allowed_names_only() {
    let topo = Topology::new();
    topo.gate.apply_compose_sysctls();
    let nas = Recorder::start(&topo.lan, NAS, &PORTS);
    let gate_loopback = Recorder::start(&topo.gate, Ipv4Addr::LOCALHOST, &PORTS);
    let mut gate = topo.start_gate();
    let watch = Watch {
        topo: &topo,
        nas: &nas,
        nas_packets: packets_received(&topo.lan),
        gate_loopback: &gate_loopback,
    };
    let mut table: Vec<Row> = Vec::new();
    let mut row = |what: &str, expected: &str, got: String, ok: bool| {
        table.push((what.to_owned(), expected.to_owned(), got, ok));
    };

    // DNS: allowed names get the gate's own address, the others nothing.
    for (name, expected) in [
        ("allowed.test", "NOERROR 10.77.0.1 (the gate)"),
        ("alt.test", "NOERROR 10.77.0.1 (the gate)"),
    ] {
        let (status, answers) = topo.dig(name);
        row(
            &format!("dig {name}"),
            expected,
            format!("{status} {}", answers.join(",")),
            status == "NOERROR" && answers == ["10.77.0.1"],
        );
    }
    for (name, what) in [
        ("notallowed.test", "dig notallowed.test (no allow rule)"),
        ("evil.test", "dig evil.test (threat-listed)"),
    ] {
        let (status, answers) = topo.dig(name);
        row(
            what,
            "NXDOMAIN",
            format!("{status} {}", answers.join(",")),
            status == "NXDOMAIN" && answers.is_empty(),
        );
    }
    let (status, answers) = topo.dig("nas.test");
    row(
        "dig nas.test (allowed, answer 192.168.77.2)",
        "never the NAS's address",
        format!("{status} {}", answers.join(",")),
        !answers.iter().any(|a| a == "192.168.77.2"),
    );

    // Real clients, no proxy variables: allowed names work, the certificate verified.
    let ((ok, out), reached) = watch.reached(|| topo.node_fetch("https://allowed.test/"));
    row(
        "node fetch https://allowed.test/",
        "200 from the origin, cert verified",
        format!("{} | origin saw {}", out.replace('\n', " "), reached.len()),
        ok && out.contains("status 200")
            && out.contains("hello from origin allowed.test on 443")
            && reached.len() == 1,
    );
    let ((code, http, raw), reached) = watch.reached(|| topo.curl("https://allowed.test/"));
    row(
        "curl https://allowed.test/ (no -x)",
        "200 from the origin, cert verified",
        format!("exit {code:?}, {http}, origin saw {}", reached.len()),
        code == Some(0)
            && http == "200"
            && raw.contains("hello from origin allowed.test on 443")
            && reached.len() == 1,
    );
    let ((code, http, raw), reached) = watch.reached(|| topo.curl("https://alt.test:8443/"));
    row(
        "curl https://alt.test:8443/ (tls_ports)",
        "200 from the origin's 8443",
        format!("exit {code:?}, {http}, origin saw {reached:?}"),
        code == Some(0)
            && raw.contains("hello from origin alt.test on 8443")
            && reached.len() == 1
            && reached[0].starts_with("origin:8443 from 52.10.0.1:"),
    );
    let ((ok, raw), reached) = watch.reached(|| topo.s_client("allowed.test"));
    let verified = raw.contains("Verify return code: 0 (ok)");
    row(
        "openssl s_client allowed.test:443",
        "verify 0 (ok), origin answers",
        format!(
            "exit ok {ok}, verified {verified}, answered {}, origin saw {}",
            raw.contains("hello from origin allowed.test"),
            reached.len()
        ),
        verified && raw.contains("hello from origin allowed.test on 443") && reached.len() == 1,
    );
    let ((code, http, raw), reached) = watch.reached(|| topo.curl("http://allowed.test/"));
    row(
        "curl http://allowed.test/ (plain HTTP, port 80)",
        "200 from the origin's 80, Host kept",
        format!("exit {code:?}, {http}, origin saw {reached:?}"),
        code == Some(0)
            && http == "200"
            && raw.contains("hello from origin over http, host allowed.test")
            && reached.len() == 1
            && reached[0].starts_with("origin:80 from 52.10.0.1:"),
    );
    let (result, reached) =
        watch.reached(|| split_hello_get(&topo.agent, &topo.net.origin_ca_der, "allowed.test"));
    row(
        "ClientHello in 40-byte records, 4 TCP segments",
        "handshake verified, origin answers",
        format!(
            "{}, origin saw {}",
            match &result {
                Ok(body) => format!(
                    "answered {}",
                    body.contains("hello from origin allowed.test on 443")
                ),
                Err(e) => e.clone(),
            },
            reached.len()
        ),
        result
            .as_ref()
            .is_ok_and(|b| b.contains("hello from origin allowed.test on 443"))
            && reached.len() == 1,
    );

    // Refusals at DNS: nothing is connected at all.
    let ((ok, out), reached) = watch.reached(|| topo.node_fetch("https://notallowed.test/"));
    row(
        "node fetch https://notallowed.test/",
        "fails at DNS (ENOTFOUND)",
        format!("{} | reached {reached:?}", out.replace('\n', " ")),
        !ok && out.contains("ENOTFOUND") && reached.is_empty(),
    );
    let ((code, _, _), reached) = watch.reached(|| topo.curl("https://notallowed.test/"));
    row(
        "curl https://notallowed.test/",
        "fails at DNS (curl exit 6)",
        format!("exit {code:?}, reached {reached:?}"),
        code == Some(6) && reached.is_empty(),
    );
    let ((code, _, _), reached) = watch.reached(|| topo.curl("https://evil.test/"));
    row(
        "curl https://evil.test/ (threat-listed)",
        "fails at DNS (curl exit 6)",
        format!("exit {code:?}, reached {reached:?}"),
        code == Some(6) && reached.is_empty(),
    );

    // Refusals at the routed TLS listener, straight to the gate's address: a TLS alert,
    // one refused decision line (door routed_tls) with the reason, nothing dialled.
    let hello = |sni: Option<&str>| vec![build_client_hello(sni, false, 200)];
    let no_wait = Duration::from_millis(0);
    let cases: Vec<TlsCase> = vec![
        ("SNI absent", TLS_PORT, hello(None), &["sni_missing"], true),
        (
            "SNI 52.20.0.2 (IP literal)",
            TLS_PORT,
            hello(Some("52.20.0.2")),
            &["ip_literal"],
            true,
        ),
        (
            "SNI 192.168.77.2 (IP literal, the NAS)",
            TLS_PORT,
            hello(Some("192.168.77.2")),
            &["ip_literal"],
            true,
        ),
        (
            "SNI 127.0.0.1 (IP literal, loopback)",
            TLS_PORT,
            hello(Some("127.0.0.1")),
            &["ip_literal"],
            true,
        ),
        (
            "SNI evil.test (threat-listed)",
            TLS_PORT,
            hello(Some("evil.test")),
            &["blocked"],
            true,
        ),
        (
            "SNI notallowed.test (no allow rule)",
            TLS_PORT,
            hello(Some("notallowed.test")),
            &["not_allowlisted"],
            true,
        ),
        (
            "SNI nas.test (allowed, resolves to the NAS)",
            TLS_PORT,
            hello(Some("nas.test")),
            &["denied_address", "blocked_answer"],
            true,
        ),
        (
            "SNI loop.test (allowed, resolves to 127.0.0.1)",
            TLS_PORT,
            hello(Some("loop.test")),
            &["denied_address", "blocked_answer"],
            true,
        ),
        (
            "SNI allowed.test on 8443 (rule: 443, 80)",
            TLS_PORT_2,
            hello(Some("allowed.test")),
            &["port_not_allowed"],
            true,
        ),
        (
            "plaintext HTTP on the TLS port",
            TLS_PORT,
            vec![b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n".to_vec()],
            &["not_tls"],
            false,
        ),
    ];
    for (what, port, pieces, codes, alert_expected) in cases {
        let before = Topology::decisions(&mut gate, "routed_tls").len();
        let (got, reached) =
            watch.reached(|| probe(&topo.agent, port, pieces, no_wait, Duration::from_secs(5)));
        let lines = Topology::decisions(&mut gate, "routed_tls");
        let new: Vec<String> = lines[before..]
            .iter()
            .map(|l| {
                format!(
                    "{} {}",
                    l["decision"].as_str().unwrap_or("?"),
                    l["reason_code"].as_str().unwrap_or("-")
                )
            })
            .collect();
        let answer_ok = if alert_expected {
            got.alert().is_some() && got.closed
        } else {
            got.closed && (got.reply.is_empty() || got.alert().is_some())
        };
        row(
            what,
            &format!(
                "{}, refused {}",
                if alert_expected {
                    "TLS alert"
                } else {
                    "closed"
                },
                codes.join("|")
            ),
            format!("{}; {new:?}; reached {reached:?}", got.describe()),
            answer_ok
                && new.len() == 1
                && codes.iter().any(|c| new[0] == format!("refused {c}"))
                && reached.is_empty(),
        );
    }

    // A ClientHello that stalls after its first 10 bytes: closed after the timeout.
    let before = Topology::decisions(&mut gate, "routed_tls").len();
    let partial = build_client_hello(Some("allowed.test"), false, 200)[..10].to_vec();
    let (stalled, reached) = watch.reached(|| {
        probe(
            &topo.agent,
            TLS_PORT,
            vec![partial],
            no_wait,
            Duration::from_secs(8),
        )
    });
    let lines = Topology::decisions(&mut gate, "routed_tls");
    let new: Vec<&str> = lines[before..]
        .iter()
        .map(|l| l["reason_code"].as_str().unwrap_or("-"))
        .collect();
    let timeout = Duration::from_millis(HELLO_TIMEOUT_MS);
    row(
        "ClientHello stalled after 10 bytes",
        &format!("closed after {timeout:?}, client_hello_timeout"),
        format!("{}; {new:?}; reached {reached:?}", stalled.describe()),
        stalled.closed
            && stalled.elapsed >= timeout.saturating_sub(Duration::from_millis(100))
            && stalled.elapsed < timeout + Duration::from_secs(3)
            && new == ["client_hello_timeout"]
            && reached.is_empty(),
    );

    // Plain HTTP by Host: refusals are answered (403 with the reason), nothing dialled.
    let http_cases: [(&str, &[&str]); 3] = [
        ("notallowed.test", &["not_allowlisted"]),
        ("evil.test", &["blocked"]),
        ("nas.test", &["denied_address", "blocked_answer"]),
    ];
    for (host, codes) in http_cases {
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let (got, reached) = watch.reached(|| {
            probe(
                &topo.agent,
                HTTP_PORT,
                vec![request.into_bytes()],
                no_wait,
                Duration::from_secs(5),
            )
        });
        let head = String::from_utf8_lossy(&got.reply).into_owned();
        let status = head.lines().next().unwrap_or("").to_owned();
        let reason = head
            .lines()
            .find_map(|l| l.strip_prefix("X-Portcullis-Reason: "))
            .unwrap_or("-")
            .to_owned();
        row(
            &format!("HTTP Host: {host} on port 80"),
            &format!("403 {}", codes.join("|")),
            format!("{status}; {reason}; reached {reached:?}"),
            status.starts_with("HTTP/1.1 403")
                && codes.iter().any(|c| reason.starts_with(&format!("{c}:")))
                && reached.is_empty(),
        );
    }
    let http_lines = Topology::decisions(&mut gate, "routed_http");
    let refused_http = http_lines
        .iter()
        .filter(|l| l["decision"] == "refused")
        .count();
    row(
        "decision lines with door routed_http",
        "3 refused",
        format!("{refused_http} refused of {}", http_lines.len()),
        refused_http == 3,
    );

    // Nothing, at any point, reached the NAS or the gate's loopback.
    let nas_heard = nas.heard();
    let nas_packets = packets_received(&topo.lan) - watch.nas_packets;
    row(
        "connections and packets the NAS saw",
        "none",
        format!("{nas_heard:?}, {nas_packets} packets"),
        nas_heard.is_empty() && nas_packets == 0,
    );
    let looped = gate_loopback.heard();
    row(
        "connections to the gate's 127.0.0.1:443/8443/80",
        "none",
        format!("{looped:?}"),
        looped.is_empty(),
    );
    let origin = topo.net.seen();
    row(
        "connections the origin saw in all",
        "6 (the allowed requests), all from the gate",
        format!("{}", origin.len()),
        origin.len() == 6 && origin.iter().all(|o| o.contains(" from 52.10.0.1:")),
    );

    print_table(&table);
    let failed: Vec<_> = table.iter().filter(|r| !r.3).map(|r| r.0.clone()).collect();
    assert!(
        failed.is_empty(),
        "failed: {failed:?}\ngate log:\n{}",
        gate.logs().join("\n")
    );
}

/// netns.rs's proof in routed mode: the agent routes through the gate (as one with
/// CAP_NET_ADMIN could make it), the gate's namespace is set up as the compose file sets
/// its container's (no forwarding). Direct TCP, UDP and ping to the internet and the NAS
/// reach nothing, a connection to the origin's real address with the allowed name fails,
/// the admin port is unreachable, routed names still work, and the NAS sees 0 packets.
#[test]
#[ignore = "needs root, iproute2, util-linux, procps, dig, curl, ping, node, openssl: scripts/test.sh runs it"]
fn routed_mode_is_still_the_only_way_out() {
    let topo = Topology::new();
    topo.agent
        .run(&["ip", "route", "add", "default", "via", "10.77.0.1"]);
    topo.lan
        .run(&["ip", "route", "add", "default", "via", "192.168.77.1"]);
    topo.gate.apply_compose_sysctls();
    let internet_side = Sink::start(&topo.inet, ORIGIN);
    let lan_side = Sink::start(&topo.lan, NAS);
    let nas = Recorder::start(&topo.lan, NAS, &PORTS);
    let mut gate = topo.start_gate();
    let nas_packets = packets_received(&topo.lan);
    let echoes = (echoes_received(&topo.inet), echoes_received(&topo.lan));
    let mut table: Vec<Row> = Vec::new();
    let mut row = |what: &str, expected: &str, got: String, ok: bool| {
        table.push((what.to_owned(), expected.to_owned(), got, ok));
    };

    let client = direct_probes(&topo.agent, AGENT, &[&internet_side, &lan_side]);
    let pinged = [ping(&topo.agent, ORIGIN), ping(&topo.agent, NAS)];
    row(
        "ping 52.20.0.2 and 192.168.77.2",
        "no answer",
        format!("{pinged:?}"),
        pinged == [false, false],
    );
    // The allowed name at its real address, not the gate's: not routed, so no way there.
    let (code, _, _) = topo.curl("https://allowed.test/");
    let before = topo.net.seen().len();
    let out = topo
        .client("curl")
        .args(["-sS", "--max-time", "5", "--cacert", &topo.net.origin_ca])
        .args([
            "--resolve",
            "allowed.test:443:52.20.0.2",
            "https://allowed.test/",
        ])
        .output()
        .unwrap();
    let direct_seen = topo.net.seen()[before..].to_vec();
    row(
        "curl https://allowed.test/ at 52.20.0.2 (--resolve)",
        "fails, the origin sees nothing",
        format!("exit {:?}, origin saw {direct_seen:?}", out.status.code()),
        !out.status.success() && direct_seen.is_empty(),
    );
    let out = topo
        .client("curl")
        .args(["-sS", "--max-time", "5", "http://192.168.77.2/"])
        .output()
        .unwrap();
    row(
        "curl http://192.168.77.2/ (the NAS, direct)",
        "fails",
        format!("exit {:?}", out.status.code()),
        !out.status.success(),
    );
    let out = topo
        .client("curl")
        .args(["-sS", "--max-time", "5", "http://10.77.0.1:9953/metrics"])
        .output()
        .unwrap();
    row(
        "admin http://10.77.0.1:9953 from the agent",
        "unreachable",
        format!("exit {:?}", out.status.code()),
        out.status.code() == Some(7),
    );
    // A name the DNS refused, sent to the gate anyway: refused by the routed listener.
    let before = topo.net.seen().len();
    let out = topo
        .client("curl")
        .args(["-sS", "--max-time", "5", "--insecure"])
        .args([
            "--resolve",
            "notallowed.test:443:10.77.0.1",
            "https://notallowed.test/",
        ])
        .output()
        .unwrap();
    let via_gate = topo.net.seen()[before..].to_vec();
    row(
        "curl https://notallowed.test/ --resolve to the gate",
        "TLS alert, origin sees nothing",
        format!("exit {:?}, origin saw {via_gate:?}", out.status.code()),
        !out.status.success() && via_gate.is_empty(),
    );
    // The way out that is meant to work still does.
    let (ok, fetched) = topo.node_fetch("https://allowed.test/");
    row(
        "node fetch https://allowed.test/ (routed)",
        "200 from the origin",
        fetched.replace('\n', " "),
        ok && fetched.contains("hello from origin allowed.test on 443"),
    );
    row(
        "curl https://allowed.test/ (routed)",
        "exit 0",
        format!("exit {code:?}"),
        code == Some(0),
    );
    let (code, _, _) = topo.curl("https://notallowed.test/");
    row(
        "curl https://notallowed.test/",
        "fails at DNS (exit 6)",
        format!("exit {code:?}"),
        code == Some(6),
    );
    for sink in [&internet_side, &lan_side] {
        let heard = sink.heard();
        row(
            &format!("direct TCP and UDP to {}", sink.tcp.ip()),
            "nothing arrives",
            format!("heard {heard:?} (client saw {} tries)", client.len()),
            heard.is_empty(),
        );
    }
    let now = (echoes_received(&topo.inet), echoes_received(&topo.lan));
    row(
        "echo requests that got past the gate",
        "none",
        format!("{} + {}", now.0 - echoes.0, now.1 - echoes.1),
        now == echoes,
    );
    let packets = packets_received(&topo.lan) - nas_packets;
    row(
        "packets and connections the NAS saw",
        "0",
        format!("{packets} packets, {:?}", nas.heard()),
        packets == 0 && nas.heard().is_empty(),
    );
    let warned = gate
        .logs()
        .iter()
        .any(|l| l.contains("\"WARN\"") && l.contains("forwards packets"));
    row(
        "the gate's forwarding warning",
        "none (ip_forward 0)",
        format!("{warned}"),
        !warned,
    );

    print_table(&table);
    let failed: Vec<_> = table.iter().filter(|r| !r.3).map(|r| r.0.clone()).collect();
    assert!(
        failed.is_empty(),
        "failed: {failed:?}\ngate log:\n{}",
        gate.logs().join("\n")
    );
}
