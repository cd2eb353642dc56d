//! `routed` mode's answers: an allowed name's A and AAAA answers carry the gate's own
//! address, so that clients that never look at HTTPS_PROXY (Node's fetch, aiohttp, the
//! JVM, gRPC) connect to the gate's routed listeners, which route by SNI and Host with
//! the proxy's checks.
//!
//! The rewrite is made here, at the DNS listeners, on the reply the filter produced: the
//! filter, its cache and the proxy's own lookups keep the real addresses (the routed
//! listeners resolve the real destination through them; a rewrite inside the filter
//! would make the gate dial itself).
//!
//! The address is the group's `routed_addresses` when set, else the local address the
//! query arrived on (IP_PKTINFO on a wildcard UDP socket; a TCP listener bound to a
//! wildcard answers the address it reaches the client from). Answers of the other family
//! (an A question on an IPv6-only gate address) are empty (NODATA): the client uses the
//! family it has. Nothing else that names the real destination is passed on: the CNAME
//! chain goes, and HTTPS, SVCB and CNAME questions get no data (their hints and targets
//! are the real ones).

use std::net::IpAddr;

use hickory_proto::op::{Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};

use super::filter::{Outcome, Reply};
use crate::policy::Policy;

/// Rewrites `reply` for `client` if its group is in `routed` mode. `local`: the address
/// the query arrived on, if known.
pub fn route(
    policy: &Policy,
    client: IpAddr,
    local: Option<IpAddr>,
    query: &Query,
    reply: &mut Reply,
) {
    let group = policy.dns.group(policy.groups.of(client));
    if !group.mode.routed()
        || !matches!(
            reply.outcome,
            Outcome::Forwarded | Outcome::Cached | Outcome::Stale
        )
        || reply.rcode != ResponseCode::NoError
    {
        return;
    }
    let qtype = query.query_type();
    match qtype {
        RecordType::A | RecordType::AAAA => {
            let resolved = reply.answers.iter().any(|r| r.record_type() == qtype);
            reply.answers.clear();
            if !resolved {
                // NODATA stays NODATA: the name has no address of this family.
                return;
            }
            reply.authorities.clear();
            let ttl = policy.dns.routed_ttl;
            let local = local.map(unmapped);
            let configured = &group.routed_addresses;
            let addresses = if configured.is_empty() {
                local.into_iter().collect::<Vec<_>>()
            } else {
                configured.clone()
            };
            for ip in addresses {
                let data = match (qtype, ip) {
                    (RecordType::A, IpAddr::V4(v4)) => RData::A(A(v4)),
                    (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(AAAA(v6)),
                    _ => continue,
                };
                reply.routed_to.get_or_insert(ip);
                reply
                    .answers
                    .push(Record::from_rdata(query.name().clone(), ttl, data));
            }
        }
        RecordType::HTTPS | RecordType::SVCB | RecordType::CNAME => {
            reply.answers.clear();
        }
        _ => {}
    }
}

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::dns::{DnsMode, DnsPolicy, GroupDns, NotAllowedAnswer, QtypeAnswer};
    use hickory_proto::rr::Name;
    use hickory_proto::rr::rdata::CNAME;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const GATE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    const REAL: Ipv4Addr = Ipv4Addr::new(93, 184, 215, 14);

    fn policy(addresses: Vec<IpAddr>) -> Policy {
        Policy {
            dns: DnsPolicy::new(
                vec![GroupDns {
                    mode: DnsMode::Routed,
                    routed_addresses: addresses,
                    ..GroupDns::default()
                }],
                NotAllowedAnswer::Nxdomain,
                QtypeAnswer::Refused,
            ),
            ..Policy::default()
        }
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn forwarded(qtype: RecordType) -> (Query, Reply) {
        let q = Query::query(name("api.example.com."), qtype);
        let mut r = Reply::new(ResponseCode::NoError, Outcome::Forwarded, "forwarded");
        r.answers.push(Record::from_rdata(
            name("api.example.com."),
            300,
            RData::CNAME(CNAME(name("edge.cdn.example."))),
        ));
        r.answers.push(Record::from_rdata(
            name("edge.cdn.example."),
            300,
            RData::A(A(REAL)),
        ));
        (q, r)
    }

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 2));

    #[test]
    fn an_allowed_answer_carries_the_address_the_query_arrived_on() {
        let (q, mut r) = forwarded(RecordType::A);
        route(&policy(vec![]), CLIENT, Some(GATE.into()), &q, &mut r);
        assert_eq!(r.answers.len(), 1, "{:?}", r.answers);
        assert_eq!(r.answers[0].name, name("api.example.com."));
        assert_eq!(r.answers[0].ttl, 30);
        assert_eq!(r.answers[0].data, RData::A(A(GATE)));
        assert_eq!(r.routed_to, Some(GATE.into()));
        // A dual-stack socket reports an IPv4 destination as ::ffff:a.b.c.d.
        let (q, mut r) = forwarded(RecordType::A);
        let mapped = IpAddr::V6(GATE.to_ipv6_mapped());
        route(&policy(vec![]), CLIENT, Some(mapped), &q, &mut r);
        assert_eq!(r.answers[0].data, RData::A(A(GATE)));
    }

    #[test]
    fn configured_addresses_win_and_the_other_family_gets_no_data() {
        let v6: Ipv6Addr = "fd00::53".parse().unwrap();
        let p = policy(vec![GATE.into(), v6.into()]);
        let (q, mut r) = forwarded(RecordType::A);
        route(
            &p,
            CLIENT,
            Some(Ipv4Addr::new(127, 0, 0, 1).into()),
            &q,
            &mut r,
        );
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers[0].data, RData::A(A(GATE)));
        // An AAAA question with only an IPv4 gate address: no data.
        let (q, mut r) = forwarded(RecordType::AAAA);
        r.answers.push(Record::from_rdata(
            name("edge.cdn.example."),
            300,
            RData::AAAA(AAAA("2001:db8::1".parse().unwrap())),
        ));
        route(&policy(vec![]), CLIENT, Some(GATE.into()), &q, &mut r);
        assert!(r.answers.is_empty());
    }

    #[test]
    fn hints_targets_and_other_groups_are_left_alone_or_removed() {
        for qtype in [RecordType::HTTPS, RecordType::SVCB, RecordType::CNAME] {
            let (q, mut r) = forwarded(qtype);
            route(&policy(vec![]), CLIENT, Some(GATE.into()), &q, &mut r);
            assert!(r.answers.is_empty(), "{qtype}");
        }
        // NXDOMAIN and blocks are not touched; nor is a group in another mode.
        let (q, mut r) = forwarded(RecordType::A);
        r.rcode = ResponseCode::NXDomain;
        route(&policy(vec![]), CLIENT, Some(GATE.into()), &q, &mut r);
        assert_eq!(r.answers.len(), 2);
        let (q, mut r) = forwarded(RecordType::A);
        route(&Policy::default(), CLIENT, Some(GATE.into()), &q, &mut r);
        assert_eq!(r.answers.len(), 2);
        // A name with no address stays without one.
        let q = Query::query(name("api.example.com."), RecordType::A);
        let mut r = Reply::new(ResponseCode::NoError, Outcome::Forwarded, "forwarded");
        route(&policy(vec![]), CLIENT, Some(GATE.into()), &q, &mut r);
        assert!(r.answers.is_empty() && r.routed_to.is_none());
    }
}
