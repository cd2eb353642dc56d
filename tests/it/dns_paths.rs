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
