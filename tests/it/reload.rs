//! Live reload and graceful stop of the real binary: a file change (replaced by rename,
//! as editors and Kubernetes ConfigMaps do) is applied while queries keep flowing, a bad
//! one is refused with the old rules intact, and SIGTERM lets an open tunnel run until
//! the drain deadline (the readiness probe failing with `draining` meanwhile).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::config_head;
use crate::support::gate::{self, Gate, dig};
use crate::support::http::http;

const CONFIG: &str = concat!(
    config_head!(),
    r#"url = "udp://127.0.0.1:9"

# The query stream below is one client at thousands of queries a second.
[dns.rate_limit]
queries = 0

[[lists]]
name = "threats"
path = "threats.txt"
"#
);

/// Replaces `path` the way editors and ConfigMaps do: write a new file, rename it over.
fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A DNS query for `name` A with id `id`, by hand: 12-byte header, one question.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// What a stream of one-at-a-time queries saw.
#[derive(Debug, Default)]
struct Load {
    sent: u32,
    unanswered: u32,
    not_nxdomain: u32,
}

/// Queries `name` over and over until `stop`; every answer must be NXDOMAIN (rcode 3).
fn load(
    dns: SocketAddr,
    name: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Load> {
    std::thread::spawn(move || {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(dns).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut seen = Load::default();
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            let id = seen.sent as u16;
            socket.send(&query(id, name)).unwrap();
            seen.sent += 1;
            match socket.recv(&mut buf) {
                Ok(n) if n >= 12 && buf[..2] == id.to_be_bytes() => {
                    if buf[3] & 0x0f != 3 {
                        seen.not_nxdomain += 1;
                    }
                }
                _ => seen.unanswered += 1,
            }
        }
        seen
    })
}

#[test]
fn a_changed_file_is_reloaded_and_a_bad_one_refused_without_dropping_a_query() {
    let threats = "0.0.0.0 evil.example\n";
    let gate = Gate::start_full(CONFIG, &[("threats.txt", threats)], &[]);
    let dir = gate.dir.path().to_owned();
    assert_eq!(dig(gate.dns, "evil.example", "A", &[]).status, "NXDOMAIN");
    assert_eq!(
        dig(gate.dns, "newly-bad.example", "A", &[]).status,
        "SERVFAIL"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let running = load(gate.dns, "evil.example", stop.clone());

    // A good change to a list file, no signal: applied.
    replace(
        &dir.join("threats.txt"),
        &format!("{threats}0.0.0.0 newly-bad.example\n"),
    );
    let line = gate
        .wait_for_log("configuration reloaded", Duration::from_secs(10))
        .expect("the file change was applied");
    assert_eq!(
        gate::json_field(&line, "trigger").as_deref(),
        Some("file change")
    );
    assert_eq!(
        dig(gate.dns, "newly-bad.example", "A", &[]).status,
        "NXDOMAIN"
    );

    // A bad config file: refused with file, line and key; the running rules keep serving.
    replace(
        &dir.join("portcullis.toml"),
        &format!("{CONFIG}\n[dns]\nbogus = 1\n"),
    );
    let line = gate
        .wait_for_log("reload refused", Duration::from_secs(10))
        .expect("the refusal is logged");
    assert!(line.contains("portcullis.toml"), "{line}");
    assert_eq!(
        dig(gate.dns, "newly-bad.example", "A", &[]).status,
        "NXDOMAIN"
    );

    // Touching without changing content reloads nothing.
    let reloads = |gate: &Gate| {
        gate.logs()
            .iter()
            .filter(|l| l.contains("configuration reloaded") || l.contains("reload refused"))
            .count()
    };
    let before = reloads(&gate);
    replace(
        &dir.join("threats.txt"),
        &format!("{threats}0.0.0.0 newly-bad.example\n"),
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(reloads(&gate), before, "{:#?}", gate.logs());

    // Fixed again: applied.
    replace(&dir.join("portcullis.toml"), CONFIG);
    replace(&dir.join("threats.txt"), threats);
    let deadline = Instant::now() + Duration::from_secs(10);
    while dig(gate.dns, "newly-bad.example", "A", &[]).status == "NXDOMAIN" {
        assert!(
            Instant::now() < deadline,
            "the fixed config was not applied"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    stop.store(true, Ordering::Relaxed);
    let seen = running.join().unwrap();
    assert!(seen.sent > 20, "{seen:?}");
    assert_eq!(
        seen.unanswered, 0,
        "queries dropped during reloads: {seen:?}"
    );
    assert_eq!(
        seen.not_nxdomain, 0,
        "a reload let a blocked name through: {seen:?}"
    );
}

/// An echo server on loopback (127.0.0.2: 127.0.0.1 is the gate's own address, which no
/// allow rule opens); stops with the test process.
fn echo_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.2:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn echo(stream: &mut TcpStream, text: &str) -> std::io::Result<String> {
    stream.write_all(text.as_bytes())?;
    let mut buf = vec![0u8; text.len()];
    stream.read_exact(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[test]
fn sigterm_lets_an_open_tunnel_run_until_the_drain_deadline() {
    let origin = echo_origin();
    let port = origin.port();
    let config = format!(
        "allowlist = \"allow.toml\"\n{CONFIG}\n[proxy]\nlisten = [\"127.0.0.1:0\"]\n\
         opaque_ports = [{port}]\ndrain_secs = 3\n[admin]\nlisten = [\"127.0.0.1:0\"]\n"
    );
    let allow = format!("[[allow]]\nhost = \"127.0.0.2\"\nports = [{port}]\nprivate = true\n");
    let mut gate = Gate::start_full(&config, &[("allow.toml", &allow), ("threats.txt", "")], &[]);
    let proxy = gate.proxy_addr();

    let mut tunnel = TcpStream::connect(&proxy).unwrap();
    tunnel
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        tunnel,
        "CONNECT 127.0.0.2:{port} HTTP/1.1\r\nHost: 127.0.0.2:{port}\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tunnel.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(echo(&mut tunnel, "before").unwrap(), "before");

    let asked = Instant::now();
    gate.signal("TERM");
    gate.wait_for_log("proxy draining", Duration::from_secs(5))
        .expect("the drain is logged");
    // The open tunnel keeps working, and nothing new is accepted.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(echo(&mut tunnel, "during").unwrap(), "during");
    assert!(
        TcpStream::connect(&proxy).is_err(),
        "still accepting after SIGTERM"
    );
    // Not ready from the start of the drain, and saying why; still alive.
    let admin = gate.admin_addr();
    let (status, body) = http(&admin, "GET", "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    assert_eq!(http(&admin, "GET", "/healthz").0, 200);
    assert!(gate.is_running());

    // At the deadline the tunnel is closed and the gate exits 0.
    let status = gate
        .wait_exit(Duration::from_secs(15))
        .expect("the gate exits after the drain deadline");
    assert!(status.success(), "{status:?}");
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "exited before the deadline: {took:?}"
    );
    assert!(
        gate.logs()
            .iter()
            .any(|l| l.contains("drain deadline reached")),
        "{:#?}",
        gate.logs()
    );
    // The gate is gone and so is the tunnel.
    assert!(echo(&mut tunnel, "after").is_err());
}

#[test]
fn a_reload_says_which_changed_settings_wait_for_a_restart() {
    let gate = Gate::start_full(CONFIG, &[("threats.txt", "0.0.0.0 evil.example\n")], &[]);
    let dir = gate.dir.path().to_owned();
    replace(
        &dir.join("portcullis.toml"),
        &CONFIG.replace("timeout_ms = 500", "timeout_ms = 700"),
    );
    let line = gate
        .wait_for_log("apply only at the next start", Duration::from_secs(10))
        .expect("the warning");
    assert_eq!(gate::json_field(&line, "keys").as_deref(), Some("upstream"));
    gate.wait_for_log("configuration reloaded", Duration::from_secs(10))
        .expect("the rest is applied");
}
