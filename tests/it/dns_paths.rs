//! DNS paths of the real binary that the other suites did not reach: an answer blocked
//! because its address is on an `ips` list, `keywords` set in the configuration, and the
//! IPv6 listener. A local DoH server is the only upstream; everything is on loopback.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::support::doh_server::{DohServer, TestZone};
use crate::support::gate::{Gate, dig_async as dig, dns_decision, json_field};
use crate::support::http::{connect, http, reason_of};
use crate::support::metrics::sample;

/// Public addresses, only ever written into answers: nothing here dials them.
const CLEAN: Ipv4Addr = Ipv4Addr::new(93, 184, 215, 14);
const LISTED: Ipv4Addr = Ipv4Addr::new(93, 184, 215, 66);
const IN_LISTED_NET: Ipv4Addr = Ipv4Addr::new(93, 184, 217, 9);
const LISTED_V6: Ipv6Addr = Ipv6Addr::new(0x2606, 0x4700, 0xbad, 0, 0, 0, 0, 1);
const CLEAN_V6: Ipv6Addr = Ipv6Addr::new(0x2606, 0x4700, 0x600d, 0, 0, 0, 0, 1);

fn config(doh: &DohServer, dns_listen: &str, lists: &str) -> String {
    format!(
        r#"
[dns]
listen = ["{dns_listen}"]

{upstream}
[[lists]]
name = "threats"
inline = "evil.example"

{lists}
"#,
        upstream = doh.upstream_toml(),
    )
}

/// A forwarded answer whose address is on an `ips` list is blocked: the address itself,
/// an address inside a listed network, an IPv6 one, one address among clean ones, and the
/// end of a CNAME chain. The same answer from the cache is blocked again.
#[tokio::test(flavor = "multi_thread")]
async fn an_answer_address_on_an_ips_list_is_blocked() {
    let zone = TestZone::new()
        .a("clean.example", CLEAN)
        .a("listed.example", LISTED)
        .a("in-net.example", IN_LISTED_NET)
        .a("mixed.example", CLEAN)
        .a("mixed.example", LISTED)
        .cname("alias.example", "listed.example")
        .aaaa("v6-listed.example", LISTED_V6)
        .aaaa("v6-clean.example", CLEAN_V6);
    let doh = DohServer::start(zone).await;
    let gate = Gate::start(&config(
        &doh,
        "127.0.0.1:0",
        r#"
[[lists]]
name = "bad-ips"
format = "ips"
inline = """
93.184.215.66
93.184.217.0/24
2606:4700:bad::/48
"""
"#,
    ));

    let clean = dig(gate.dns, "clean.example", "A", &[]).await;
    assert_eq!(clean.status, "NOERROR", "{}", clean.raw);
    assert_eq!(clean.addresses(), [CLEAN.to_string()]);
    let v6_clean = dig(gate.dns, "v6-clean.example", "AAAA", &[]).await;
    assert_eq!(
        v6_clean.addresses(),
        [CLEAN_V6.to_string()],
        "{}",
        v6_clean.raw
    );

    for (name, qtype, address) in [
        ("listed.example", "A", LISTED.to_string()),
        ("in-net.example", "A", IN_LISTED_NET.to_string()),
        ("mixed.example", "A", LISTED.to_string()),
        ("alias.example", "A", LISTED.to_string()),
        ("v6-listed.example", "AAAA", LISTED_V6.to_string()),
    ] {
        // The first answer comes from the upstream, the second from the cache.
        for round in ["upstream", "cache"] {
            let got = dig(gate.dns, name, qtype, &[]).await;
            assert_eq!(got.status, "NXDOMAIN", "{name} ({round}): {}", got.raw);
            assert!(got.answers.is_empty(), "{name} ({round}): {}", got.raw);
            let ede = got.ede.clone().unwrap_or_default();
            assert!(
                ede.starts_with("15 (Blocked)")
                    && ede.contains(&format!("answer address {address} is on list bad-ips")),
                "{name} ({round}): EDE {ede:?}"
            );
        }
        let line = dns_decision(&gate, name).expect("a decision line");
        assert_eq!(json_field(&line, "outcome").as_deref(), Some("blocked"));
        assert_eq!(
            json_field(&line, "list").as_deref(),
            Some("bad-ips"),
            "{line}"
        );
    }
    let (status, metrics) = http(&gate.admin_addr(), "GET", "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        sample(&metrics, r#"portcullis_dns_blocked_total{list="bad-ips"}"#),
        Some(10.0),
        "{metrics}"
    );
    doh.stop().await;
}

/// A list's `keywords` block every name that contains one, in either front door: DNS
/// answers NXDOMAIN naming the keyword rule, and the proxy refuses CONNECT as `blocked`
/// before it resolves anything. The keyword names resolve to loopback upstream, so a
/// keyword that did nothing would show as REFUSED (rebinding) and `denied_address`,
/// and no dial could leave the machine.
#[tokio::test(flavor = "multi_thread")]
async fn keywords_from_the_configuration_block_in_both_front_doors() {
    let somewhere = Ipv4Addr::new(127, 0, 0, 9);
    let zone = TestZone::new()
        .a("bestcasino.example", somewhere)
        .a("www.online-betting.test", somewhere)
        .a("casual.example", CLEAN);
    let doh = DohServer::start(zone).await;
    let gate = Gate::start(&config(
        &doh,
        "127.0.0.1:0",
        r#"
[[lists]]
name = "gambling"
inline = "poker.example"
keywords = ["casino", "betting"]
"#,
    ));
    for (name, keyword) in [
        ("bestcasino.example", "casino"),
        ("www.online-betting.test", "betting"),
        ("CASINO.example", "casino"),
    ] {
        let got = dig(gate.dns, name, "A", &[]).await;
        assert_eq!(got.status, "NXDOMAIN", "{name}: {}", got.raw);
        let ede = got.ede.clone().unwrap_or_default();
        assert!(
            ede.contains(&format!("keyword rule {keyword} of list gambling")),
            "{name}: EDE {ede:?}"
        );
    }
    // The list's own entry still blocks, and a name without a keyword is forwarded.
    assert_eq!(
        dig(gate.dns, "poker.example", "A", &[]).await.status,
        "NXDOMAIN"
    );
    let casual = dig(gate.dns, "casual.example", "A", &[]).await;
    assert_eq!(casual.status, "NOERROR", "{}", casual.raw);
    assert_eq!(casual.addresses(), [CLEAN.to_string()]);

    let proxy = gate.proxy_addr();
    let before = doh.queries();
    assert!(before > 0, "the DNS questions above went to the upstream");
    let head = connect(&proxy, "bestcasino.example:443");
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(reason_of(&head).starts_with("blocked"), "{head}");
    // Refused before any lookup: the upstream saw nothing more.
    assert_eq!(doh.queries(), before);
    doh.stop().await;
}

/// A DNS listener on [::1]: served over UDP and TCP, with the same policy.
#[tokio::test(flavor = "multi_thread")]
async fn the_ipv6_listener_answers_over_udp_and_tcp() {
    let doh = DohServer::start(TestZone::new().a("clean.example", CLEAN)).await;
    let gate = Gate::start(&config(&doh, "[::1]:0", ""));
    assert!(gate.dns.is_ipv6(), "bound {}", gate.dns);
    assert_eq!(gate.dns.ip(), Ipv6Addr::LOCALHOST);
    assert_eq!(gate.bound("dns/tcp"), gate.dns.to_string());
    for transport in ["+notcp", "+tcp"] {
        let clean = dig(gate.dns, "clean.example", "A", &[transport]).await;
        assert_eq!(clean.status, "NOERROR", "{transport}: {}", clean.raw);
        assert_eq!(clean.addresses(), [CLEAN.to_string()], "{transport}");
        assert!(
            clean
                .raw
                .contains(&format!("SERVER: ::1#{}", gate.dns.port())),
            "{transport}: answered by {}",
            clean.raw
        );
        let evil = dig(gate.dns, "evil.example", "A", &[transport]).await;
        assert_eq!(evil.status, "NXDOMAIN", "{transport}: {}", evil.raw);
        let line = dns_decision(&gate, "evil.example").expect("a decision line");
        assert_eq!(
            json_field(&line, "client").as_deref(),
            Some("::1"),
            "{line}"
        );
    }
    doh.stop().await;
}

/// What a burst's datagram is, and what must come back for it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// A cached name: the fast path.
    Cached,
    /// A listed name: answered inline by the full path (NXDOMAIN).
    Blocked,
    /// A name the gate must ask upstream: a task of its own, answered later.
    Forwarded,
    /// A NOTIFY: answered NOTIMP with no question.
    Malformed,
    /// Five bytes: dropped.
    Garbage,
}

fn burst_kind(i: usize) -> Kind {
    [
        Kind::Cached,
        Kind::Blocked,
        Kind::Forwarded,
        Kind::Malformed,
        Kind::Garbage,
    ][i % 5]
}

fn burst_query(id: u16, kind: Kind) -> Vec<u8> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    let name = match kind {
        Kind::Cached => "clean.example.".to_owned(),
        Kind::Blocked => format!("b{id}.evil.example."),
        Kind::Forwarded | Kind::Malformed => format!("f{id}.unknown.example."),
        Kind::Garbage => return vec![1, 2, 3, 4, 5],
    };
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.queries.push(Query::query(
        Name::from_ascii(&name).unwrap(),
        RecordType::A,
    ));
    let mut bytes = m.to_vec().unwrap();
    if kind == Kind::Malformed {
        bytes[2] |= 4 << 3; // opcode NOTIFY
    }
    bytes
}

/// Sends `per_client` datagrams from each of `clients` sockets (on 127.0.0.1, .2 and .3)
/// in one go, cycling through every [`Kind`] and through the `targets` (the gate's
/// addresses), without waiting for answers: far more than one batch is queued at once.
/// Every datagram that deserves an answer gets exactly one, with its id, to the socket
/// that sent it, from the address it was sent to; garbage gets none.
async fn burst(targets: &[std::net::SocketAddr], clients: usize, per_client: usize) {
    use hickory_proto::op::{Message, ResponseCode};
    use std::collections::HashMap;
    use std::time::Duration;
    let mut sockets = Vec::new();
    for c in 0..clients {
        let ip = format!("127.0.0.{}", 1 + c % 3);
        sockets.push(tokio::net::UdpSocket::bind((ip.as_str(), 0)).await.unwrap());
    }
    // Per socket: id -> (kind, target) still expected.
    let mut expected: Vec<HashMap<u16, (Kind, std::net::SocketAddr)>> =
        vec![HashMap::new(); clients];
    for i in 0..per_client {
        for (c, socket) in sockets.iter().enumerate() {
            let id = (c * per_client + i) as u16;
            let kind = burst_kind(i + c);
            let target = targets[(i + c) % targets.len()];
            socket
                .send_to(&burst_query(id, kind), target)
                .await
                .unwrap();
            if kind != Kind::Garbage {
                expected[c].insert(id, (kind, target));
            }
        }
    }
    let mut buf = vec![0u8; 4096];
    for (c, socket) in sockets.iter().enumerate() {
        while !expected[c].is_empty() {
            let (n, from) =
                tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buf))
                    .await
                    .unwrap_or_else(|_| panic!("client {c}: no answer for {:?}", expected[c]))
                    .unwrap();
            let reply = Message::from_vec(&buf[..n]).unwrap();
            let id = reply.metadata.id;
            let (kind, target) = expected[c]
                .remove(&id)
                .unwrap_or_else(|| panic!("client {c}: unexpected or repeated answer {id}"));
            assert_eq!(
                from, target,
                "client {c}, {kind:?} {id}: answered from another address"
            );
            let rcode = reply.metadata.response_code;
            match kind {
                Kind::Cached => {
                    assert_eq!(rcode, ResponseCode::NoError, "{reply:?}");
                    assert_eq!(reply.answers.len(), 1, "{reply:?}");
                }
                Kind::Blocked => assert_eq!(rcode, ResponseCode::NXDomain, "{reply:?}"),
                Kind::Malformed => {
                    assert_eq!(rcode, ResponseCode::NotImp, "{reply:?}");
                    assert!(reply.queries.is_empty(), "{reply:?}");
                }
                Kind::Forwarded => assert_ne!(rcode, ResponseCode::Refused, "{reply:?}"),
                Kind::Garbage => unreachable!(),
            }
            if kind != Kind::Malformed {
                let name = reply.queries[0].name().to_ascii();
                let want = match kind {
                    Kind::Cached => "clean.example.".to_owned(),
                    Kind::Blocked => format!("b{id}.evil.example."),
                    _ => format!("f{id}.unknown.example."),
                };
                assert_eq!(name, want, "client {c}, answer {id}");
            }
        }
    }
    // Nothing more: garbage got no answer, nothing was answered twice.
    for (c, socket) in sockets.iter().enumerate() {
        let more =
            tokio::time::timeout(Duration::from_millis(200), socket.recv_from(&mut buf)).await;
        assert!(more.is_err(), "client {c}: an extra datagram");
    }
}

fn burst_zone() -> TestZone {
    TestZone::new().a("clean.example", CLEAN)
}

/// A burst of queries, far more than one receive batch (32), from several clients at
/// once, mixing the fast path, inline answers, questions for the upstream, malformed
/// datagrams and garbage: each answered once, with its id, to its own client.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_larger_than_a_batch_is_answered_in_full_each_to_its_client() {
    let doh = DohServer::start(burst_zone()).await;
    let gate = Gate::start(&config(
        &doh,
        "127.0.0.1:0",
        "[dns.rate_limit]\nqueries = 0",
    ));
    // Cache the name the fast path answers.
    let warm = dig(gate.dns, "clean.example", "A", &[]).await;
    assert_eq!(warm.addresses(), [CLEAN.to_string()], "{}", warm.raw);
    burst(&[gate.dns], 6, 40).await;
}

/// On a socket bound to the wildcard, each answer of a burst (fast path, inline, upstream
/// and malformed alike) leaves from the address its query was sent to (IP_PKTINFO).
#[tokio::test(flavor = "multi_thread")]
async fn a_wildcard_socket_answers_each_datagram_of_a_batch_from_its_destination() {
    let doh = DohServer::start(burst_zone()).await;
    let gate = Gate::start(&config(&doh, "0.0.0.0:0", "[dns.rate_limit]\nqueries = 0"));
    let port = gate.dns.port();
    let targets: Vec<std::net::SocketAddr> = ["127.0.0.1", "127.0.0.5", "127.0.0.7"]
        .iter()
        .map(|ip| format!("{ip}:{port}").parse().unwrap())
        .collect();
    let warm = dig(targets[0], "clean.example", "A", &[]).await;
    assert_eq!(warm.addresses(), [CLEAN.to_string()], "{}", warm.raw);
    burst(&targets, 4, 30).await;
}

/// The rate limit comes first in a batch too: of a burst from one client, the first
/// `queries` datagrams are served, the queries after them REFUSED, garbage over the
/// limit dropped.
#[tokio::test(flavor = "multi_thread")]
async fn the_rate_limit_holds_inside_a_batch() {
    use hickory_proto::op::{Message, ResponseCode};
    use std::time::Duration;
    let doh = DohServer::start(burst_zone()).await;
    let gate = Gate::start(&config(
        &doh,
        "127.0.0.1:0",
        "[dns.rate_limit]\nqueries = 10\nper_secs = 3600",
    ));
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for id in 0..60u16 {
        let kind = if id % 3 == 2 {
            Kind::Garbage
        } else {
            Kind::Blocked
        };
        socket
            .send_to(&burst_query(id, kind), gate.dns)
            .await
            .unwrap();
    }
    let (mut blocked, mut refused) = (0, 0);
    let mut buf = vec![0u8; 4096];
    while let Ok(got) =
        tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf)).await
    {
        let (n, _) = got.unwrap();
        let reply = Message::from_vec(&buf[..n]).unwrap();
        assert_ne!(reply.metadata.id % 3, 2, "garbage answered: {reply:?}");
        match reply.metadata.response_code {
            ResponseCode::NXDomain => blocked += 1,
            ResponseCode::Refused => refused += 1,
            other => panic!("{other:?}: {reply:?}"),
        }
    }
    // Every datagram takes a token, garbage too: of the first 10 (ids 0-9) 7 are queries,
    // answered; the other 33 queries are refused.
    assert_eq!((blocked, refused), (7, 33));
}
