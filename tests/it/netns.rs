//! The proof that the gate is the only way out: the compose stack's topology rebuilt in
//! network namespaces this test creates and removes (nothing leaves the machine).
//!
//! ```text
//!  agent 10.77.0.2 ──── 10.77.0.1 gate 52.10.0.1 ──── 52.10.0.254 internet (router)
//!        10.77.0.3           │  (the image's binary,        52.20.0.2: DoH server for the
//!                            │   run as the container)               test zone, HTTPS origin
//!                   192.168.77.1
//!                            │
//!                   192.168.77.2 lan (the operator's NAS: must never see a connection)
//! ```
//!
//! From `agent`, with curl, dig and ping as an agent uses them, it tries what an agent (or
//! an attacker steering one) would, and prints the table of what happened. The gate's
//! namespace gets the sysctls the compose file sets for its container.
//!
//! Needs root, iproute2, util-linux, procps, dig, curl and ping: `#[ignore]`d for a plain
//! `cargo test`; scripts/test.sh runs them (always under CI=true), and when they do run, a
//! missing precondition fails them. tests/it/tunnel.rs runs a real DNS tunnel (iodine and
//! iodined, the Debian package `iodine`) through the gate in the same kind of topology;
//! tests/it/routed_netns.rs runs routed mode in it, with clients that ignore proxy settings.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::support::container::{self, Netns, RunningGate, link, readable_by_all};
use crate::support::doh_server::{DohServer, TestZone};
use crate::support::metrics::metric_sum;
use crate::support::origins;

const SERVERS: Ipv4Addr = Ipv4Addr::new(52, 20, 0, 2);
const NAS: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const AGENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// A second agent address, in a group whose proxy mode is `report`.
const REPORT_AGENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);

/// What the internet namespace serves, as the gate's config needs it.
struct Internet {
    doh_url: String,
    doh_ca: String,
    doh_name: String,
    https_port: u16,
    https_ca: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
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

/// Starts the DoH server and the HTTPS origin on a thread inside `ns`; their certificate
/// authorities are copied to `dir`.
fn internet(ns: &Netns, dir: &std::path::Path) -> Internet {
    let zone = TestZone::new()
        .a("allowed.test", SERVERS)
        .a("notallowed.test", SERVERS)
        .a("evil.test", SERVERS)
        .a("nas.test", NAS);
    let (tx, rx) = mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let name = ns.name.clone();
    let dir = dir.to_owned();
    let thread = std::thread::spawn(move || {
        Netns::enter_by_name(&name);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let doh = DohServer::start_on(SERVERS.into(), zone).await;
            let origin = origins::https(&SERVERS.to_string(), "allowed.test").await;
            let doh_ca = dir.join("doh-ca.pem");
            let https_ca = dir.join("origin-ca.pem");
            std::fs::copy(&doh.ca_file, &doh_ca).unwrap();
            std::fs::copy(origin.ca_file.as_ref().unwrap(), &https_ca).unwrap();
            tx.send(Internet {
                doh_url: doh.url(),
                doh_ca: doh_ca.display().to_string(),
                doh_name: doh.tls_name.clone(),
                https_port: origin.addr.port(),
                https_ca: https_ca.display().to_string(),
                stop: None,
                thread: None,
            })
            .unwrap();
            let _ = stopped.await;
            drop(origin);
            doh.stop().await;
        });
    });
    let mut net = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("internet servers up");
    net.stop = Some(stop);
    net.thread = Some(thread);
    net
}

/// A TCP listener and a UDP socket on `ip` inside a namespace that record the source of
/// every connection and datagram they get: the receiving side of "nothing got through".
/// Stopped and joined on drop.
pub(crate) struct Sink {
    pub(crate) tcp: SocketAddr,
    pub(crate) udp: SocketAddr,
    heard: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    pub(crate) fn start(ns: &Netns, ip: Ipv4Addr) -> Sink {
        let name = ns.name.clone();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let (log, stopped) = (heard.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            Netns::enter_by_name(&name);
            let tcp = TcpListener::bind((ip, 0)).unwrap();
            let udp = UdpSocket::bind((ip, 0)).unwrap();
            tcp.set_nonblocking(true).unwrap();
            udp.set_nonblocking(true).unwrap();
            tx.send((tcp.local_addr().unwrap(), udp.local_addr().unwrap()))
                .unwrap();
            let mut buf = [0u8; 2048];
            while !stopped.load(Ordering::SeqCst) {
                let mut idle = true;
                if let Ok((_, peer)) = tcp.accept() {
                    log.lock().unwrap().push(format!("tcp from {peer}"));
                    idle = false;
                }
                if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                    log.lock().unwrap().push(format!("udp from {peer}"));
                    idle = false;
                }
                if idle {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        });
        let (tcp, udp) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        Sink {
            tcp,
            udp,
            heard,
            stop,
            thread: Some(thread),
        }
    }

    pub(crate) fn heard(&self) -> Vec<String> {
        self.heard.lock().unwrap().clone()
    }

    fn clear(&self) {
        self.heard.lock().unwrap().clear();
    }

    /// Waits up to `limit` for the sink to hear anything.
    pub(crate) fn wait_heard(&self, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        while self.heard().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.heard()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// ICMP echo requests the namespace's kernel has received (`Icmp: InEchos` of its
/// /proc/net/snmp, which is per namespace).
pub(crate) fn echoes_received(ns: &Netns) -> u64 {
    let out = ns.command("cat").arg("/proc/net/snmp").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut icmp = text.lines().filter(|l| l.starts_with("Icmp: "));
    let (names, values) = (icmp.next().unwrap(), icmp.next().unwrap());
    let column = names
        .split_whitespace()
        .position(|n| n == "InEchos")
        .expect("InEchos column");
    values
        .split_whitespace()
        .nth(column)
        .unwrap()
        .parse()
        .unwrap()
}

/// Opens a TCP connection to and sends UDP datagrams to each sink from inside `ns`
/// (source `from`), without any proxy: what the client saw, for the failure message.
pub(crate) fn direct_probes(ns: &Netns, from: Ipv4Addr, sinks: &[&Sink]) -> Vec<String> {
    let name = ns.name.clone();
    let targets: Vec<(SocketAddr, SocketAddr)> = sinks.iter().map(|s| (s.tcp, s.udp)).collect();
    std::thread::spawn(move || {
        Netns::enter_by_name(&name);
        let mut seen = Vec::new();
        for (tcp, udp) in targets {
            let socket = std::net::TcpStream::connect_timeout(&tcp, Duration::from_secs(2));
            seen.push(format!("tcp {tcp}: {:?}", socket.map(|_| "connected")));
            let sender = UdpSocket::bind((from, 0)).unwrap();
            for _ in 0..3 {
                let sent = sender.send_to(b"direct", udp);
                seen.push(format!("udp {udp}: {sent:?}"));
            }
        }
        seen
    })
    .join()
    .unwrap()
}

pub(crate) fn ping(ns: &Netns, to: Ipv4Addr) -> bool {
    ns.command("ping")
        .args(["-c", "1", "-W", "2", &to.to_string()])
        .output()
        .unwrap()
        .status
        .success()
}

pub(crate) fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The four namespaces, linked as in the picture, with the internet's servers running.
/// Fields drop in order: the servers stop before their namespaces go.
struct Topology {
    net: Internet,
    agent: Netns,
    gate: Netns,
    inet: Netns,
    lan: Netns,
    etc: tempfile::TempDir,
    cache: tempfile::TempDir,
}

impl Topology {
    fn new() -> Topology {
        container::require();
        let agent = Netns::new("agent");
        let gate = Netns::new("gate");
        let inet = Netns::new("inet");
        let lan = Netns::new("lan");
        link(
            &agent,
            "eth0",
            "10.77.0.2/24",
            &gate,
            "inner",
            "10.77.0.1/24",
        );
        agent.run(&["ip", "addr", "add", "10.77.0.3/24", "dev", "eth0"]);
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
        gate.run(&["ip", "route", "add", "default", "via", "52.10.0.254"]);
        let etc = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let net = internet(&inet, etc.path());
        Topology {
            net,
            agent,
            gate,
            inet,
            lan,
            etc,
            cache,
        }
    }

    /// Writes the gate's configuration (`allowlist` beside it) and starts the gate in its
    /// namespace as the container runs it.
    fn start_gate(&self, allowlist: &str, proxy_extra: &str) -> RunningGate {
        let etc = self.etc.path();
        std::fs::write(etc.join("allowlist.toml"), allowlist).unwrap();
        std::fs::write(
            etc.join("portcullis.toml"),
            format!(
                r#"allowlist = "allowlist.toml"
[dns]
listen = ["10.77.0.1:53"]
[upstream]
timeout_ms = 2000
[[upstream.servers]]
name = "internet-doh"
url = "{url}"
tls_name = "{tls_name}"
ca_file = "{ca}"
[groups]
agent = ["10.77.0.2/32"]
sandbox = ["10.77.0.3/32"]
[admin]
listen = ["127.0.0.1:9953"]
[proxy]
listen = ["10.77.0.1:3128"]
{proxy_extra}
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
        self.gate.start_gate(
            self.cache.path(),
            &[
                ("PORTCULLIS_CONFIG", config.to_str().unwrap()),
                ("PORTCULLIS_CACHE_DIR", lists_dir.to_str().unwrap()),
            ],
        )
    }

    /// `dig @10.77.0.1 NAME A` from the agent: (status, answer addresses).
    fn dig(&self, name: &str) -> (String, Vec<String>) {
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
        let answers: Vec<String> = raw
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

    /// curl from the agent as an agent runs it: HTTPS_PROXY in the environment, or no
    /// proxy at all; from `source`. (exit code, "connect-code http-code", all output).
    fn curl(&self, url: &str, via_proxy: bool, source: Ipv4Addr) -> (Option<i32>, String, String) {
        self.curl_with(url, via_proxy, source, &[])
    }

    /// `curl` with more arguments.
    fn curl_with(
        &self,
        url: &str,
        via_proxy: bool,
        source: Ipv4Addr,
        extra: &[&str],
    ) -> (Option<i32>, String, String) {
        let proxy = "http://10.77.0.1:3128";
        let mut c = self.agent.command("curl");
        c.args(["-sS", "--max-time", "8", "--cacert", &self.net.https_ca])
            .args(["--interface", &source.to_string()])
            .args(extra)
            .args(["-o", "-", "-w", "\n%{http_connect} %{http_code}"]);
        if via_proxy {
            c.env("HTTPS_PROXY", proxy).env("HTTP_PROXY", proxy);
        } else {
            c.env_remove("HTTPS_PROXY")
                .env_remove("HTTP_PROXY")
                .arg("--noproxy")
                .arg("*");
        }
        c.env_remove("https_proxy")
            .env_remove("http_proxy")
            .env_remove("ALL_PROXY");
        let out = c.arg(url).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let codes = stdout.lines().last().unwrap_or("").to_owned();
        (out.status.code(), codes, text(&out))
    }

    /// The gate's /metrics, read inside its namespace (the admin port is loopback only).
    fn metrics(&self) -> String {
        let out = self
            .gate
            .command("curl")
            .args(["-sS", "--max-time", "5", "http://127.0.0.1:9953/metrics"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The JSON log lines of the gate that have `field` equal to `value`.
fn log_lines_with(gate: &mut RunningGate, field: &str, value: &str) -> Vec<serde_json::Value> {
    gate.logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get(field).and_then(|f| f.as_str()) == Some(value))
        .collect()
}

pub(crate) fn print_table(table: &[(String, String, String, bool)]) {
    println!("\n{:<62} {:<46} {:<28} result", "tried", "expected", "got");
    for (what, expected, got, ok) in table {
        println!(
            "{what:<62} {expected:<46} {got:<28} {}",
            if *ok { "ok" } else { "FAILED" }
        );
    }
}

#[test]
#[ignore = "needs root, iproute2, util-linux, procps, dig, curl, ping: scripts/test.sh runs it"]
fn the_gate_is_the_only_way_out() {
    let topo = Topology::new();
    // The gate binds 53 as non-root exactly as the container does.
    topo.gate.apply_compose_sysctls();
    let nas = Sink::start(&topo.lan, NAS);
    let nas_port = nas.tcp.port();
    let https_port = topo.net.https_port;
    let mut gate = topo.start_gate(
        &format!(
            "[[allow]]\nhost = \"allowed.test\"\nports = [{https_port}]\n\
             [[allow]]\nhost = \"nas.test\"\nports = [{nas_port}]\n\
             [[allow]]\nhost = \"{NAS}\"\nports = [{nas_port}]\n"
        ),
        // The sandbox group is in report mode; the origin's port counts as a public one.
        &format!("modes = {{ sandbox = \"report\" }}\npublic_connect_ports = [{https_port}]\n"),
    );

    let mut table: Vec<(String, String, String, bool)> = Vec::new();
    let mut row = |what: &str, expected: &str, got: String, ok: bool| {
        table.push((what.to_owned(), expected.to_owned(), got, ok));
    };

    let (status, answers) = topo.dig("allowed.test");
    row(
        "dig allowed.test",
        "NOERROR 52.20.0.2 (via the gate's DoH upstream)",
        format!("{status} {}", answers.join(",")),
        status == "NOERROR" && answers == ["52.20.0.2"],
    );
    let (code, codes, raw) = topo.curl(&format!("https://allowed.test:{https_port}/"), true, AGENT);
    row(
        "HTTPS_PROXY https://allowed.test",
        "CONNECT 200, origin answers",
        format!("exit {code:?}, {codes}"),
        code == Some(0) && raw.contains("hello from origin"),
    );
    let (code, codes, _) = topo.curl(
        &format!("https://notallowed.test:{https_port}/"),
        true,
        AGENT,
    );
    row(
        "HTTPS_PROXY https://notallowed.test",
        "CONNECT 403",
        format!("exit {code:?}, {codes}"),
        codes.starts_with("403"),
    );
    let (status, answers) = topo.dig("evil.test");
    row(
        "dig evil.test (threat-listed)",
        "NXDOMAIN",
        format!("{status} {}", answers.join(",")),
        status == "NXDOMAIN" && answers.is_empty(),
    );
    let (code, codes, _) = topo.curl(&format!("https://evil.test:{https_port}/"), true, AGENT);
    row(
        "HTTPS_PROXY https://evil.test",
        "CONNECT 403",
        format!("exit {code:?}, {codes}"),
        codes.starts_with("403"),
    );
    let (status, answers) = topo.dig("nas.test");
    row(
        "dig nas.test (answer is 192.168.77.2)",
        "refused, no private address",
        format!("{status} {}", answers.join(",")),
        status != "NOERROR" && !answers.iter().any(|a| a == "192.168.77.2"),
    );
    let (code, codes, _) = topo.curl(&format!("https://nas.test:{nas_port}/"), true, AGENT);
    row(
        "HTTPS_PROXY https://nas.test (allow rule, private answer)",
        "CONNECT 403",
        format!("exit {code:?}, {codes}"),
        codes.starts_with("403"),
    );
    let (code, codes, _) = topo.curl(&format!("https://{NAS}:{nas_port}/"), true, AGENT);
    row(
        "HTTPS_PROXY https://192.168.77.2 (allow rule, private address)",
        "CONNECT 403",
        format!("exit {code:?}, {codes}"),
        codes.starts_with("403"),
    );
    // Report mode: what allowlist mode would refuse goes through, and is logged and counted.
    // (The origin's certificate names allowed.test only: no verification here.)
    let (code, codes, raw) = topo.curl_with(
        &format!("https://notallowed.test:{https_port}/"),
        true,
        REPORT_AGENT,
        &["--insecure"],
    );
    row(
        "report group: HTTPS_PROXY https://notallowed.test",
        "CONNECT 200, origin answers",
        format!("exit {code:?}, {codes}"),
        code == Some(0) && raw.contains("hello from origin"),
    );
    let (code, codes, _) = topo.curl(
        &format!("https://evil.test:{https_port}/"),
        true,
        REPORT_AGENT,
    );
    row(
        "report group: HTTPS_PROXY https://evil.test",
        "CONNECT 403 (lists still block)",
        format!("exit {code:?}, {codes}"),
        codes.starts_with("403"),
    );
    // With no default route in the agent's namespace, direct connections have no way out.
    let (code, codes, _) = topo.curl(&format!("https://52.20.0.2:{https_port}/"), false, AGENT);
    row(
        "direct https://52.20.0.2 (no proxy)",
        "no route (curl exit 7)",
        format!("exit {code:?}, {codes}"),
        code == Some(7),
    );
    let (code, codes, _) = topo.curl(&format!("http://{NAS}:{nas_port}/"), false, AGENT);
    row(
        "direct http://192.168.77.2 (no proxy)",
        "no route (curl exit 7)",
        format!("exit {code:?}, {codes}"),
        code == Some(7),
    );
    let (code, codes, _) = topo.curl("http://10.77.0.1:9953/metrics", false, AGENT);
    row(
        "admin http://10.77.0.1:9953 from agent",
        "unreachable (curl exit 7)",
        format!("exit {code:?}, {codes}"),
        code == Some(7),
    );
    let nas_heard = nas.heard();
    row(
        "connections the NAS saw",
        "none",
        format!("{nas_heard:?}"),
        nas_heard.is_empty(),
    );
    // Inside the gate's namespace the admin port answers, and counted the refusals.
    let metrics = topo.metrics();
    let refused = metric_sum(
        &metrics,
        "portcullis_proxy_decisions_total",
        &["decision=\"refused\""],
    );
    row(
        "admin /metrics inside the gate namespace",
        "5 proxy refusals counted",
        format!("{refused} refused"),
        refused == 5.0,
    );
    let reported = metric_sum(
        &metrics,
        "portcullis_proxy_decisions_total",
        &["decision=\"allowed_report\""],
    );
    row(
        "admin /metrics: report-mode passes",
        "1 allowed_report",
        format!("{reported} allowed_report"),
        reported == 1.0,
    );
    let lines = log_lines_with(&mut gate, "decision", "allowed_report");
    let would_refuse: Vec<&str> = lines
        .iter()
        .filter(|l| l.get("host").and_then(|h| h.as_str()) == Some("notallowed.test"))
        .filter(|l| l.get("client").and_then(|c| c.as_str()) == Some("10.77.0.3"))
        .filter_map(|l| l.get("would_refuse")?.as_str())
        .collect();
    row(
        "the report-mode decision line",
        "one, with would_refuse: not_allowlisted",
        format!("{would_refuse:?}"),
        lines.len() == 1
            && would_refuse.len() == 1
            && would_refuse[0].contains("is not on the allowlist of group"),
    );

    print_table(&table);
    let failed: Vec<_> = table.iter().filter(|r| !r.3).map(|r| r.0.clone()).collect();
    assert!(
        failed.is_empty(),
        "failed: {failed:?}\ngate log:\n{}",
        gate.logs().join("\n")
    );
}

/// The agent's namespace gets a default route via the gate, as an agent with
/// CAP_NET_ADMIN could give itself, and the internet and LAN sides route their answers
/// back. Whether anything then gets past the gate is the kernel's forwarding setting in
/// the gate's namespace, which the gate (no capabilities) cannot change:
///
/// 1. As a namespace inherits it from a host that routes (Docker's, a Kubernetes node's;
///    IPv4 settings are copied from the host, IPv6 ones start at their defaults):
///    `net.ipv4.ip_forward = 1`. Direct TCP, UDP and ping from the agent reach listeners
///    on the internet and LAN side (the probes can see a leak), and the gate says so at
///    start with a warning.
/// 2. With the sysctls the compose file sets for the gate's container: nothing the agent
///    sends directly reaches either side (checked where it would arrive, not from the
///    client's errors), no warning, and DNS and the proxy still work.
#[test]
#[ignore = "needs root, iproute2, util-linux, procps, dig, curl, ping: scripts/test.sh runs it"]
fn nothing_routed_through_the_gate_gets_past_it() {
    let topo = Topology::new();
    topo.agent
        .run(&["ip", "route", "add", "default", "via", "10.77.0.1"]);
    topo.inet
        .run(&["ip", "route", "add", "10.77.0.0/24", "via", "52.10.0.1"]);
    topo.lan
        .run(&["ip", "route", "add", "default", "via", "192.168.77.1"]);
    let internet_side = Sink::start(&topo.inet, SERVERS);
    let lan_side = Sink::start(&topo.lan, NAS);
    let sinks = [&internet_side, &lan_side];
    let https_port = topo.net.https_port;
    let allowlist = format!("[[allow]]\nhost = \"allowed.test\"\nports = [{https_port}]\n");
    let forwarding_warning = |gate: &mut RunningGate| -> Vec<String> {
        gate.logs()
            .iter()
            .filter(|l| l.contains("\"WARN\"") && l.contains("forwards packets"))
            .cloned()
            .collect()
    };

    // 1. A gate namespace that forwards.
    topo.gate.apply_compose_sysctls();
    topo.gate
        .run(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    let mut gate = topo.start_gate(&allowlist, "");
    let warned = forwarding_warning(&mut gate);
    assert!(
        warned.len() == 1 && warned[0].contains("net.ipv4.ip_forward"),
        "the gate must warn that its namespace forwards: {warned:?}\n{}",
        gate.logs().join("\n")
    );
    let echoes = (echoes_received(&topo.inet), echoes_received(&topo.lan));
    let client = direct_probes(&topo.agent, AGENT, &sinks);
    assert!(ping(&topo.agent, SERVERS) && ping(&topo.agent, NAS));
    for sink in sinks {
        let heard = sink.wait_heard(Duration::from_secs(5));
        assert!(
            heard
                .iter()
                .any(|h| h.starts_with(&format!("tcp from {AGENT}:")))
                && heard
                    .iter()
                    .any(|h| h.starts_with(&format!("udp from {AGENT}:"))),
            "with forwarding on, the probes must reach {}: heard {heard:?}, client {client:?}",
            sink.tcp.ip()
        );
    }
    assert!(echoes_received(&topo.inet) > echoes.0 && echoes_received(&topo.lan) > echoes.1);
    drop(gate);

    // 2. The gate's namespace as the compose file sets it up.
    topo.gate.apply_compose_sysctls();
    let forward = topo
        .gate
        .command("sysctl")
        .args(["-n", "net.ipv4.ip_forward"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&forward.stdout).trim(),
        "0",
        "deploy/compose/docker-compose.yml must set net.ipv4.ip_forward: 0 for the gate"
    );
    for sink in sinks {
        sink.clear();
    }
    let mut gate = topo.start_gate(&allowlist, "");
    assert_eq!(forwarding_warning(&mut gate), Vec::<String>::new());
    let echoes = (echoes_received(&topo.inet), echoes_received(&topo.lan));
    let client = direct_probes(&topo.agent, AGENT, &sinks);
    let pinged = [ping(&topo.agent, SERVERS), ping(&topo.agent, NAS)];
    let (direct_code, _, _) = topo.curl(&format!("https://52.20.0.2:{https_port}/"), false, AGENT);
    // The way out that is meant to work still does (and takes a moment, in which any
    // forwarded probe would have arrived).
    let (status, answers) = topo.dig("allowed.test");
    assert_eq!(
        (status.as_str(), answers),
        ("NOERROR", vec!["52.20.0.2".to_owned()])
    );
    let (code, _, raw) = topo.curl(&format!("https://allowed.test:{https_port}/"), true, AGENT);
    assert!(
        code == Some(0) && raw.contains("hello from origin"),
        "the proxy: {raw}"
    );
    let (code, codes, _) = topo.curl(
        &format!("https://notallowed.test:{https_port}/"),
        true,
        AGENT,
    );
    assert!(codes.starts_with("403"), "exit {code:?}, {codes}");
    assert_eq!(pinged, [false, false], "ping got an answer");
    assert_ne!(direct_code, Some(0), "direct https to the origin worked");
    for sink in sinks {
        assert_eq!(
            sink.heard(),
            Vec::<String>::new(),
            "reached {} directly (client saw {client:?})",
            sink.tcp.ip()
        );
    }
    assert_eq!(
        (echoes_received(&topo.inet), echoes_received(&topo.lan)),
        echoes,
        "an echo request got past the gate"
    );
    drop(gate);
}
