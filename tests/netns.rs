//! The proof that the gate is the only way out: the compose stack's topology rebuilt in
//! network namespaces this test creates and removes (nothing leaves the machine).
//!
//! ```text
//!  agent 10.77.0.2 ──── 10.77.0.1 gate 52.10.0.1 ──── 52.10.0.254 internet (router)
//!  (no default route)        │  (the image's binary,        52.20.0.2: DoH server for the
//!                            │   run as the container)               test zone, HTTPS origin
//!                   192.168.77.1
//!                            │
//!                   192.168.77.2 lan (the operator's NAS: must never see a connection)
//! ```
//!
//! From `agent`, with curl and dig as an agent uses them, it tries what an agent (or an
//! attacker steering one) would, and prints the table of what happened.

#[path = "support/container.rs"]
mod container;
#[path = "support/doh_server.rs"]
mod doh_server;
#[path = "support/origins.rs"]
mod origins;

use std::net::{Ipv4Addr, TcpListener};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use container::{Netns, link, readable_by_all};
use doh_server::{DohServer, TestZone};

const SERVERS: Ipv4Addr = Ipv4Addr::new(52, 20, 0, 2);
const NAS: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);

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

/// The NAS: a TCP listener on the LAN that counts every connection it is offered.
fn nas(ns: &Netns) -> (u16, Arc<AtomicUsize>) {
    let name = ns.name.clone();
    let seen = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let counter = seen.clone();
    std::thread::spawn(move || {
        Netns::enter_by_name(&name);
        let listener = TcpListener::bind((NAS, 0)).unwrap();
        tx.send(listener.local_addr().unwrap().port()).unwrap();
        // Ends when the namespace (and so the interface) is removed with the test.
        for stream in listener.incoming() {
            match stream {
                Ok(_) => {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                Err(_) => return,
            }
        }
    });
    (rx.recv_timeout(Duration::from_secs(5)).unwrap(), seen)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_gate_is_the_only_way_out() {
    if let Some(why) = container::unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let agent = Netns::new("agent");
    let gate_ns = Netns::new("gate");
    let inet = Netns::new("inet");
    let lan = Netns::new("lan");
    link(
        &agent,
        "eth0",
        "10.77.0.2/24",
        &gate_ns,
        "inner",
        "10.77.0.1/24",
    );
    link(
        &gate_ns,
        "outer",
        "52.10.0.1/24",
        &inet,
        "eth0",
        "52.10.0.254/24",
    );
    link(
        &gate_ns,
        "lan0",
        "192.168.77.1/24",
        &lan,
        "eth0",
        "192.168.77.2/24",
    );
    inet.run(&["ip", "addr", "add", "52.20.0.2/32", "dev", "lo"]);
    gate_ns.run(&["ip", "route", "add", "default", "via", "52.10.0.254"]);
    // The gate is no router (a new namespace forwards nothing; say so anyway), and binds
    // 53 as non-root exactly as the container does.
    gate_ns.run(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"]);
    gate_ns.allow_port_53();

    let etc = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let net = internet(&inet, etc.path());
    let (nas_port, nas_seen) = nas(&lan);
    let https_port = net.https_port;
    std::fs::write(
        etc.path().join("allowlist.toml"),
        format!(
            "[[allow]]\nhost = \"allowed.test\"\nports = [{https_port}]\n\
             [[allow]]\nhost = \"nas.test\"\nports = [{nas_port}]\n\
             [[allow]]\nhost = \"{NAS}\"\nports = [{nas_port}]\n"
        ),
    )
    .unwrap();
    std::fs::write(
        etc.path().join("portcullis.toml"),
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
agent = ["10.77.0.0/24"]
[admin]
listen = ["127.0.0.1:9953"]
[proxy]
listen = ["10.77.0.1:3128"]
[[lists]]
name = "threats"
inline = "evil.test"
"#,
            url = net.doh_url,
            tls_name = net.doh_name,
            ca = net.doh_ca,
        ),
    )
    .unwrap();
    readable_by_all(etc.path());

    let config = etc.path().join("portcullis.toml");
    let lists_dir = cache.path().join("lists");
    let mut gate = gate_ns.start_gate(
        cache.path(),
        &[
            ("PORTCULLIS_CONFIG", config.to_str().unwrap()),
            ("PORTCULLIS_CACHE_DIR", lists_dir.to_str().unwrap()),
        ],
    );

    let proxy = "http://10.77.0.1:3128";
    let dig = |name: &str| {
        let out = agent
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
    };
    // curl as an agent runs it: HTTPS_PROXY in the environment, or no proxy at all.
    let curl = |url: &str, via_proxy: bool| {
        let mut c = agent.command("curl");
        c.args(["-sS", "--max-time", "8", "--cacert", &net.https_ca])
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
    };

    let mut table: Vec<(String, String, String, bool)> = Vec::new();
    let mut row = |what: &str, expected: &str, got: String, ok: bool| {
        table.push((what.to_owned(), expected.to_owned(), got, ok));
    };

    let (status, answers) = dig("allowed.test");
    row(
        "dig allowed.test",
        "NOERROR 52.20.0.2 (via the gate's DoH upstream)",
        format!("{status} {}", answers.join(",")),
        status == "NOERROR" && answers == ["52.20.0.2"],
    );
    let (code, codes, raw) = curl(&format!("https://allowed.test:{https_port}/"), true);
    row(
        "HTTPS_PROXY https://allowed.test",
        "CONNECT 200, origin answers",
        format!("exit {code:?}, {codes}"),
        code == Some(0) && raw.contains("hello from origin"),
    );
    let (code, codes, _) = curl(&format!("https://notallowed.test:{https_port}/"), true);
    row(
        "HTTPS_PROXY https://notallowed.test",
        "CONNECT 403",
        format!("exit {code:?}, {codes}"),
        codes.starts_with("403"),
    );
    let (status, answers) = dig("evil.test");
    row(
        "dig evil.test (threat-listed)",
        "NXDOMAIN",
        format!("{status} {}", answers.join(",")),
        status == "NXDOMAIN" && answers.is_empty(),
    );
    let (code, codes, _) = curl(&format!("https://evil.test:{https_port}/"), true);
    row(
        "HTTPS_PROXY https://evil.test",
        "CONNECT 403",
        format!("exit {code:?}, {codes}"),
        codes.starts_with("403"),
    );
    let (status, answers) = dig("nas.test");
    row(
        "dig nas.test (answer is 192.168.77.2)",
        "refused, no private address",
        format!("{status} {}", answers.join(",")),
        status != "NOERROR" && !answers.iter().any(|a| a == "192.168.77.2"),
    );
    let (code, codes, _) = curl(&format!("https://nas.test:{nas_port}/"), true);
    row(
        "HTTPS_PROXY https://nas.test (allow rule, private answer)",
        "CONNECT 403",
        format!("exit {code:?}, {codes}"),
        codes.starts_with("403"),
    );
    let (code, codes, _) = curl(&format!("https://{NAS}:{nas_port}/"), true);
    row(
        "HTTPS_PROXY https://192.168.77.2 (allow rule, private address)",
        "CONNECT 403",
        format!("exit {code:?}, {codes}"),
        codes.starts_with("403"),
    );
    let (code, codes, _) = curl(&format!("https://52.20.0.2:{https_port}/"), false);
    row(
        "direct https://52.20.0.2 (no proxy)",
        "no route (curl exit 7)",
        format!("exit {code:?}, {codes}"),
        code == Some(7),
    );
    let (code, codes, _) = curl(&format!("http://{NAS}:{nas_port}/"), false);
    row(
        "direct http://192.168.77.2 (no proxy)",
        "no route (curl exit 7)",
        format!("exit {code:?}, {codes}"),
        code == Some(7),
    );
    let (code, codes, _) = curl("http://10.77.0.1:9953/metrics", false);
    row(
        "admin http://10.77.0.1:9953 from agent",
        "unreachable (curl exit 7)",
        format!("exit {code:?}, {codes}"),
        code == Some(7),
    );
    let nas_connections = nas_seen.load(Ordering::SeqCst);
    row(
        "connections the NAS saw",
        "0",
        nas_connections.to_string(),
        nas_connections == 0,
    );
    // Inside the gate's namespace the admin port answers, and counted the refusals.
    let metrics = gate_ns
        .command("curl")
        .args(["-sS", "--max-time", "5", "http://127.0.0.1:9953/metrics"])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout).into_owned();
    let refused: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("portcullis_proxy_decisions_total{decision=\"refused\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    row(
        "admin /metrics inside the gate namespace",
        "4 proxy refusals counted",
        format!("{refused} refused"),
        refused == 4.0,
    );

    println!("\n{:<62} {:<46} {:<28} result", "tried", "expected", "got");
    for (what, expected, got, ok) in &table {
        println!(
            "{what:<62} {expected:<46} {got:<28} {}",
            if *ok { "ok" } else { "FAILED" }
        );
    }
    let failed: Vec<_> = table.iter().filter(|r| !r.3).map(|r| r.0.clone()).collect();
    assert!(
        failed.is_empty(),
        "failed: {failed:?}\ngate log:\n{}",
        gate.logs().join("\n")
    );
    drop(gate);
    drop(net);
}
