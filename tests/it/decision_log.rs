//! The decision log's writer in the real binary: a log collector that reads the gate's
//! stderr slowly does not slow the answers; the lines that did not fit are dropped and
//! counted in `portcullis_log_lines_dropped_total`; every line that reaches stderr is
//! whole, and what was queued is written at shutdown. Everything on loopback.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

use crate::support::gate::{Gate, json_field};
use crate::support::http::http;
use crate::support::metrics::sample;

/// Blocked names only: nothing is forwarded (the upstream is a closed loopback port).
const CONFIG: &str = r#"
[dns]
listen = ["127.0.0.1:0"]
rate_limit.queries = 0

[upstream]
timeout_ms = 500

[[upstream.servers]]
url = "udp://127.0.0.1:9"

[log]
allowed_queries = false

[[lists]]
name = "threats"
inline = "evil.example"
"#;

const QUERIES: u16 = 20_000;
const WINDOW: u16 = 200;

fn dropped(gate: &Gate) -> f64 {
    let (status, body) = http(&gate.admin_addr(), "GET", "/metrics");
    assert_eq!(status, 200);
    sample(&body, "portcullis_log_lines_dropped_total").expect("the counter is exported")
}

#[test]
fn a_slow_log_reader_costs_lines_not_answers() {
    let mut gate = Gate::start(CONFIG);
    assert_eq!(dropped(&gate), 0.0);
    // A collector that takes 10 lines a second: the pipe and then the queue fill.
    gate.read_stderr_slowly(Duration::from_millis(100));

    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut buf = [0u8; 1500];
    for window in 0..QUERIES / WINDOW {
        let sent = Instant::now();
        for i in 0..WINDOW {
            let id = window * WINDOW + i;
            let mut m = Message::new(id, MessageType::Query, OpCode::Query);
            m.metadata.recursion_desired = true;
            m.queries.push(Query::query(
                Name::from_ascii(format!("q{id}.evil.example.")).unwrap(),
                RecordType::A,
            ));
            socket.send_to(&m.to_vec().unwrap(), gate.dns).unwrap();
        }
        for _ in 0..WINDOW {
            let (n, _) = socket.recv_from(&mut buf).unwrap_or_else(|e| {
                panic!("no answer in 5 s in window {window} (the log stalls the queries?): {e}")
            });
            let answer = Message::from_vec(&buf[..n]).unwrap();
            assert_eq!(
                answer.metadata.response_code,
                hickory_proto::op::ResponseCode::NXDomain
            );
        }
        slowest = slowest.max(sent.elapsed());
    }
    let took = started.elapsed();
    // A gate that waited for its log would be waiting for the reader: 10 lines a second.
    assert!(
        took < Duration::from_secs(60) && slowest < Duration::from_secs(5),
        "{QUERIES} blocked queries took {took:?}, the slowest window of {WINDOW} {slowest:?}"
    );

    // The queue holds about 3,000 lines and the pipe some hundreds: the rest were dropped.
    let lost = dropped(&gate);
    assert!(
        lost >= f64::from(QUERIES / 2) && lost < f64::from(QUERIES),
        "{lost} of {QUERIES} lines dropped"
    );

    // The collector catches up; at SIGTERM the queue is written out.
    gate.read_stderr_slowly(Duration::ZERO);
    gate.signal("TERM");
    let status = gate.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status:?}");
    let want = usize::from(QUERIES) - lost as usize;
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines = gate.logs();
        let decisions = lines.iter().filter(|l| l.contains("dns decision")).count();
        if decisions >= want || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Whole lines only, and each decision line is one of the queries, once.
    let mut seen = std::collections::BTreeSet::new();
    for line in &lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("a torn line ({e}): {line}"));
        if value["message"] == "dns decision" {
            assert_eq!(json_field(line, "outcome").as_deref(), Some("blocked"));
            assert_eq!(json_field(line, "door").as_deref(), Some("dns"));
            assert_eq!(json_field(line, "level").as_deref(), Some("INFO"));
            assert_eq!(
                json_field(line, "target").as_deref(),
                Some("portcullis::decision")
            );
            let name = json_field(line, "name").unwrap();
            assert!(seen.insert(name.clone()), "{name} logged twice");
        }
    }
    assert_eq!(
        seen.len(),
        want,
        "decision lines written = queries - dropped"
    );
}
