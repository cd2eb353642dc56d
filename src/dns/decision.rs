//! The decision line and metrics count of every DNS query, whichever listener
//! answered it.

use std::net::SocketAddr;
use std::time::Instant;

use super::filter::{Outcome, Reply};
use crate::learn::{Door, Observation, Seen};
use crate::policy::dns::DnsRefusal;
use crate::telemetry::lines::{JsonLine, LineWriter, json_key};

/// One decision line's fields.
pub(crate) struct Decision<'a> {
    pub client: SocketAddr,
    /// Lower case, no trailing dot.
    pub name: &'a str,
    pub qtype: hickory_proto::rr::RecordType,
    pub outcome: Outcome,
    pub rcode: hickory_proto::op::ResponseCode,
    pub reason: &'a str,
    pub list: Option<&'a str>,
    pub rule: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub answer_id: Option<u64>,
    pub answers: usize,
    pub started: Instant,
    /// The client's group, for policy refusals and reports.
    pub group: Option<&'a str>,
    /// `report` mode: what `allowlist` mode would have refused.
    pub would_refuse: Option<DnsRefusal>,
    /// The DNS policy's refusal, if it refused.
    pub refusal: Option<DnsRefusal>,
    /// `routed` mode: the gate's address answered instead of the real ones.
    pub routed_to: Option<std::net::IpAddr>,
}

/// Counts a query in the metrics and writes its decision line (allowed queries only
/// when `log_allowed`).
pub(crate) fn log_decision(
    reply: &Reply,
    client: SocketAddr,
    query: &hickory_proto::op::Query,
    started: Instant,
    log_allowed: bool,
) {
    let mut name = query.name().to_ascii();
    name.make_ascii_lowercase();
    let name = name.strip_suffix('.').unwrap_or(&name);
    if reply.report {
        learn(reply, client, name, query.query_type());
    }
    log(
        &Decision {
            client,
            name,
            qtype: query.query_type(),
            outcome: reply.outcome,
            rcode: reply.rcode,
            reason: &reply.reason,
            list: reply.list.as_deref(),
            rule: reply.rule.as_deref(),
            upstream: reply.upstream.as_deref(),
            answer_id: reply.answer_id,
            answers: reply.answers.len(),
            started,
            group: reply.group.as_deref(),
            would_refuse: reply.would_refuse,
            refusal: reply.refusal,
            routed_to: reply.routed_to,
        },
        log_allowed,
    );
}

/// What a reporting group's query tells the learner (see [`crate::learn`]).
fn learn(reply: &Reply, client: SocketAddr, name: &str, qtype: hickory_proto::rr::RecordType) {
    let Some(group) = reply.group.as_deref() else {
        return;
    };
    let qtype_name;
    let seen = if reply.outcome == Outcome::Blocked {
        Seen::Blocked {
            list: reply.list.as_deref().unwrap_or("-"),
            rule: reply.rule.as_deref().unwrap_or("-"),
        }
    } else if let Some((addr, _)) = reply.denied_address {
        Seen::Private(Some(addr))
    } else {
        match reply.would_refuse {
            Some(DnsRefusal::Qtype) => {
                qtype_name = qtype.to_string();
                Seen::Qtype(&qtype_name)
            }
            Some(_) => Seen::WouldRefuse,
            None => return,
        }
    };
    crate::learn::observe(&Observation {
        group,
        host: name,
        port: None,
        door: Door::Dns,
        client: client.ip(),
        seen,
    });
}

pub(crate) fn log(d: &Decision, log_allowed: bool) {
    crate::telemetry::metrics::dns_query(d.qtype, d.outcome, d.list);
    let quiet =
        matches!(d.outcome, Outcome::Forwarded | Outcome::Cached) && d.would_refuse.is_none();
    // A client over its rate limit gets one line when it starts (see `limit`), not one a query.
    if d.refusal == Some(DnsRefusal::RateLimited) {
        return;
    }
    if (quiet && !log_allowed)
        || !tracing::enabled!(target: "portcullis::decision", tracing::Level::INFO)
    {
        return;
    }
    let duration_us = d.started.elapsed().as_micros() as u64;
    if let Some(writer) = crate::telemetry::decision_lines() {
        PENDING.with_borrow_mut(|p| {
            p.add(writer, |buf| {
                format_line(buf, d, std::time::SystemTime::now(), duration_us)
            });
        });
        return;
    }
    tracing::info!(
        target: "portcullis::decision",
        door = "dns",
        client = %d.client.ip(),
        name = d.name,
        qtype = %d.qtype,
        outcome = d.outcome.as_str(),
        rcode = %d.rcode,
        reason = d.reason,
        list = d.list,
        rule = d.rule,
        upstream = d.upstream,
        answer_id = d.answer_id,
        answers = d.answers,
        group = d.group,
        refusal = d.refusal.map(DnsRefusal::as_str),
        would_refuse = d.would_refuse.map(DnsRefusal::as_str),
        routed_to = d.routed_to.map(tracing::field::display),
        duration_us,
        "dns decision"
    );
}

/// A thread's decision lines not yet handed to the writer: one line at a time, or, inside a
/// [`LineBatch`], every line of the batch (one lock on the writer's queue for them all).
struct Pending {
    lines: Vec<u8>,
    count: u64,
    batching: bool,
}

impl Pending {
    /// Appends the line `format` writes, and hands the lines over unless in a batch that
    /// still has room.
    fn add(&mut self, writer: &LineWriter, format: impl FnOnce(&mut Vec<u8>)) {
        format(&mut self.lines);
        self.count += 1;
        if !self.batching || self.lines.len() >= BATCH_BYTES {
            self.hand_over(writer);
        }
    }

    fn hand_over(&mut self, writer: &LineWriter) {
        if self.count > 0 {
            writer.push_lines(&self.lines, self.count);
        }
        self.lines.clear();
        self.count = 0;
    }
}

/// A batch's lines are handed over at this size at the latest (about 35 lines).
const BATCH_BYTES: usize = 16 * 1024;

thread_local! {
    static PENDING: std::cell::RefCell<Pending> = std::cell::RefCell::new(Pending {
        lines: Vec::with_capacity(BATCH_BYTES + 1024),
        count: 0,
        batching: false,
    });
}

/// While it lives, this thread's decision lines gather and go to the writer together when it
/// is dropped: for the UDP loop's batch of datagrams (up to 32 answered without an await).
/// Not to be held across an await, as the task may then resume on another thread.
pub(crate) struct LineBatch(());

impl LineBatch {
    pub(crate) fn begin() -> LineBatch {
        PENDING.with_borrow_mut(|p| p.batching = true);
        LineBatch(())
    }
}

impl Drop for LineBatch {
    fn drop(&mut self) {
        PENDING.with_borrow_mut(|p| {
            p.batching = false;
            if let Some(writer) = crate::telemetry::decision_lines() {
                p.hand_over(writer);
            }
        });
    }
}

/// The decision line as tracing's JSON formatter writes the `tracing::info!` above
/// (`timestamp`, `level`, `message`, the fields in that order without the empty ones,
/// `target`), by hand, at the end of `buf`: the serving path's share of a logged query is
/// this and a copy into the writer's queue.
fn format_line(buf: &mut Vec<u8>, d: &Decision, now: std::time::SystemTime, duration_us: u64) {
    let mut line = JsonLine::begin(buf, now);
    line.raw(r#","level":"INFO","message":"dns decision","door":"dns""#);
    line.ip(json_key!(str "client"), d.client.ip());
    line.str(json_key!(str "name"), d.name);
    // Their `Display` is these texts; taken directly, off the formatting machinery.
    line.plain(json_key!(str "qtype"), d.qtype.into());
    line.plain(json_key!(str "outcome"), d.outcome.as_str());
    line.plain(json_key!(str "rcode"), d.rcode.to_str());
    line.str(json_key!(str "reason"), d.reason);
    line.opt_str(json_key!(str "list"), d.list);
    line.opt_str(json_key!(str "rule"), d.rule);
    line.opt_str(json_key!(str "upstream"), d.upstream);
    if let Some(id) = d.answer_id {
        line.u64(json_key!(num "answer_id"), id);
    }
    line.u64(json_key!(num "answers"), d.answers as u64);
    line.opt_str(json_key!(str "group"), d.group);
    line.opt_plain(json_key!(str "refusal"), d.refusal.map(DnsRefusal::as_str));
    line.opt_plain(
        json_key!(str "would_refuse"),
        d.would_refuse.map(DnsRefusal::as_str),
    );
    if let Some(to) = d.routed_to {
        line.ip(json_key!(str "routed_to"), to);
    }
    line.u64(json_key!(num "duration_us"), duration_us);
    line.end(r#","target":"portcullis::decision""#);
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::RecordType;
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, SystemTime};

    fn blocked(name: &str) -> Decision<'_> {
        Decision {
            client: "127.0.0.1:5300".parse().unwrap(),
            name,
            qtype: RecordType::A,
            outcome: Outcome::Blocked,
            rcode: ResponseCode::NXDomain,
            reason: "name_and_subdomains rule evil.example of list threats",
            list: Some("threats"),
            rule: Some("evil.example"),
            upstream: None,
            answer_id: None,
            answers: 0,
            started: Instant::now(),
            group: None,
            would_refuse: None,
            refusal: None,
            routed_to: None,
        }
    }

    fn every_field(name: &str) -> Decision<'_> {
        Decision {
            client: "[2001:db8::7]:5300".parse().unwrap(),
            qtype: RecordType::Unknown(65_280),
            outcome: Outcome::Forwarded,
            rcode: ResponseCode::Unknown(3_841),
            reason: "forwarded",
            upstream: Some("udp://127.0.0.1:53"),
            answer_id: Some(u64::MAX),
            answers: 3,
            group: Some("agent \"one\""),
            would_refuse: Some(DnsRefusal::NotAllowed),
            refusal: Some(DnsRefusal::Qtype),
            routed_to: Some("10.0.0.1".parse().unwrap()),
            ..blocked(name)
        }
    }

    fn ours(d: &Decision) -> String {
        let mut buf = Vec::new();
        let now = SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_178_510_291_298);
        format_line(&mut buf, d, now, 5183);
        String::from_utf8(buf).unwrap()
    }

    /// A sink that keeps what is written, shared by its clones.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What tracing-subscriber's JSON formatter, set up as `telemetry::init` sets it up,
    /// writes for the same decision (the path without the line writer).
    fn tracings(d: &Decision) -> String {
        let out = Shared::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || log(d, true));
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    /// `line` with its timestamp and duration set to those `ours` uses.
    fn pinned(line: &str) -> String {
        let mut v = line.to_owned();
        let t = v.find("\"timestamp\":\"").unwrap() + 13;
        let end = t + v[t..].find('"').unwrap();
        v.replace_range(t..end, "2026-12-02T02:28:30.291298Z");
        let d = v.find("\"duration_us\":").unwrap() + 14;
        let end = d + v[d..].find(|c: char| !c.is_ascii_digit()).unwrap();
        v.replace_range(d..end, "5183");
        v
    }

    #[test]
    fn a_blocked_line_is_exactly_todays_line() {
        assert_eq!(
            ours(&blocked("a.evil.example")),
            "{\"timestamp\":\"2026-12-02T02:28:30.291298Z\",\"level\":\"INFO\",\"message\":\"dns decision\",\
             \"door\":\"dns\",\"client\":\"127.0.0.1\",\"name\":\"a.evil.example\",\"qtype\":\"A\",\
             \"outcome\":\"blocked\",\"rcode\":\"Non-Existent Domain\",\
             \"reason\":\"name_and_subdomains rule evil.example of list threats\",\
             \"list\":\"threats\",\"rule\":\"evil.example\",\"answers\":0,\"duration_us\":5183,\
             \"target\":\"portcullis::decision\"}\n"
        );
    }

    #[test]
    fn lines_match_tracings_json_byte_for_byte() {
        // Names as the decision line gets them: hickory's `to_ascii` escapes (`\"`, `\\`,
        // `\000`), which the malformed-name path logs as they came, and any other
        // character a `&str` can hold, controls included.
        let names = [
            "a.evil.example",
            r#"we\"ir\\d.evil.example"#,
            r"nul\000.tab\009.example",
            "raw\"quote\\back\u{0}\u{1}\u{8}\u{c}\n\r\t\u{1f}\u{7f}.example",
            "bücher.例.example",
        ];
        for name in names {
            for d in [blocked(name), every_field(name)] {
                let (ours, theirs) = (ours(&d), tracings(&d));
                assert_eq!(ours, pinned(&theirs), "{name:?}");
                let v: serde_json::Value = serde_json::from_str(&ours).unwrap();
                assert_eq!(v["name"], name, "{ours}");
            }
        }
        let all = ours(&every_field("x.example"));
        let v: serde_json::Value = serde_json::from_str(&all).unwrap();
        for (field, want) in [
            ("client", "2001:db8::7"),
            ("group", "agent \"one\""),
            ("refusal", "qtype"),
            ("would_refuse", "not_allowed"),
            ("routed_to", "10.0.0.1"),
            ("upstream", "udp://127.0.0.1:53"),
            ("target", "portcullis::decision"),
        ] {
            assert_eq!(v[field], want, "{field} in {all}");
        }
        assert_eq!(v["answer_id"], u64::MAX, "{all}");
    }

    #[test]
    fn a_batch_hands_its_lines_over_together_and_a_line_alone_at_once() {
        let sink = Shared::default();
        let writer = LineWriter::start(sink.clone(), 1 << 20).unwrap();
        let line =
            |n: usize| move |buf: &mut Vec<u8>| buf.extend_from_slice(format!("{n}\n").as_bytes());
        let mut p = Pending {
            lines: Vec::new(),
            count: 0,
            batching: false,
        };
        p.add(&writer, line(1));
        assert_eq!(
            (p.count, p.lines.len()),
            (0, 0),
            "alone: handed over at once"
        );
        p.batching = true;
        p.add(&writer, line(2));
        p.add(&writer, line(3));
        assert_eq!(
            (p.count, &p.lines[..]),
            (2, &b"2\n3\n"[..]),
            "in a batch: kept"
        );
        p.hand_over(&writer);
        // A batch that outgrows BATCH_BYTES goes at once.
        let big = "x".repeat(BATCH_BYTES);
        p.add(&writer, |buf| {
            buf.extend_from_slice(format!("{big}\n").as_bytes())
        });
        assert_eq!(p.count, 0);
        assert!(writer.close(Duration::from_secs(5)));
        assert_eq!(
            *sink.0.lock().unwrap(),
            format!("1\n2\n3\n{big}\n").into_bytes()
        );
        assert_eq!(writer.dropped(), 0);
    }

    #[test]
    fn rate_limited_and_quiet_queries_write_no_line() {
        let mut d = blocked("a.example");
        d.refusal = Some(DnsRefusal::RateLimited);
        assert_eq!(tracings(&d), "");
        let mut d = every_field("a.example");
        d.would_refuse = None;
        d.outcome = Outcome::Cached;
        assert_ne!(tracings(&d), "");
        let captured = {
            let out = Arc::new(Mutex::new(0usize));
            let count = out.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || {
                    *count.lock().unwrap() += 1;
                    std::io::sink()
                })
                .finish();
            tracing::subscriber::with_default(subscriber, || log(&d, false));
            *out.lock().unwrap()
        };
        assert_eq!(captured, 0, "an allowed query with log_allowed off");
    }
}
