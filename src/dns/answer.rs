//! Answers the gate writes itself: blocks, special-use names, and cached answers with
//! their remaining TTLs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{Name as DnsName, RData, Record, RecordType};

use super::filter::{FilterSettings, Outcome, Reply, ede};
use crate::config::BlockAnswer;
use crate::policy::dns::{DnsPolicy, DnsRefusal, NotAllowedAnswer, QtypeAnswer};
use crate::policy::rules::{ListMatch, RuleKind};
use crate::policy::special::SpecialUse;

pub(super) fn from_cache(hit: &super::cache::Hit, outcome: Outcome) -> Reply {
    let ttl = |record: &Record| {
        if hit.stale {
            hit.stale_ttl
        } else {
            record.ttl.saturating_sub(hit.age)
        }
    };
    let adjust = |records: &[Record]| {
        records
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.ttl = ttl(&r);
                r
            })
            .collect()
    };
    let mut reply = Reply::new(hit.response.rcode, outcome, outcome.as_str());
    reply.answers = adjust(&hit.response.answers);
    reply.authorities = adjust(&hit.response.authorities);
    reply.upstream = Some(hit.response.upstream.clone());
    reply.answer_id = Some(hit.response.answer_id);
    if hit.stale {
        reply.ede = Some((
            ede::STALE_ANSWER,
            "no upstream answered; serving a stale answer".into(),
        ));
    }
    reply
}

/// The SOA that makes clients cache a block (RFC 2308).
fn block_soa(owner: &DnsName, ttl: u32) -> Record {
    static NAMES: std::sync::LazyLock<(DnsName, DnsName)> = std::sync::LazyLock::new(|| {
        (
            DnsName::from_ascii("portcullis.").expect("valid literal"),
            DnsName::from_ascii("blocked.portcullis.").expect("valid literal"),
        )
    });
    let (mname, rname) = NAMES.clone();
    Record::from_rdata(
        owner.clone(),
        ttl,
        RData::SOA(SOA::new(mname, rname, 1, 3600, 600, 86400, ttl)),
    )
}

/// A block answer for `qname`. `rule` is the list rule that matched the name itself;
/// `None` for blocks found in the answer (a CNAME target, an `ips` list address).
pub(super) fn block_reply(
    settings: &FilterSettings,
    qname: &DnsName,
    qtype: RecordType,
    rule: Option<&ListMatch>,
    reason: &str,
) -> Reply {
    let ttl = settings.block_ttl;
    let owner = soa_owner(qname, rule);
    let mut reply = match settings.block_answer {
        BlockAnswer::Nxdomain => {
            let mut r = Reply::new(ResponseCode::NXDomain, Outcome::Blocked, reason);
            r.authorities.push(block_soa(&owner, ttl));
            r
        }
        BlockAnswer::Refused => Reply::new(ResponseCode::Refused, Outcome::Blocked, reason),
        BlockAnswer::ZeroIp => {
            let mut r = Reply::new(ResponseCode::NoError, Outcome::Blocked, reason);
            let zero = [
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            ];
            push_addresses(&mut r, qname, qtype, &zero, &owner, ttl);
            r
        }
        BlockAnswer::Addresses => {
            let mut r = Reply::new(ResponseCode::NoError, Outcome::Blocked, reason);
            push_addresses(&mut r, qname, qtype, &settings.block_addresses, &owner, ttl);
            r
        }
    };
    reply.ede = Some((ede::BLOCKED, reason.to_owned()));
    reply
}

/// Negative-caching TTL of the DNS policy's refusals: short, so that a name the operator
/// allows (or a cool-down that ends) is not held refused in clients' caches for long.
pub(super) const REFUSAL_TTL: u32 = 30;

/// The answer to a query the DNS policy refuses (see [`DnsRefusal`]); `text` is the
/// Extended DNS Error text, which names the group.
pub(super) fn refusal_reply(
    policy: &DnsPolicy,
    qname: &DnsName,
    refusal: DnsRefusal,
    text: String,
) -> Reply {
    let (rcode, soa, code) = refusal_answer(policy, refusal);
    let mut reply = Reply::new(rcode, Outcome::Refused, text.clone());
    if soa {
        reply.authorities.push(block_soa(qname, REFUSAL_TTL));
    }
    reply.refusal = Some(refusal);
    reply.ede = Some((code, text));
    reply
}

/// The owner of a block answer's SOA. A name rule (`evil.example`, name and
/// subdomains) blocks a whole zone: the owner is that zone, so a client caching the
/// NXDOMAIN learns the rule (RFC 8020). Every other rule (exact, keyword, regex) and a
/// block found in the answer says nothing about any other name: the owner is the query
/// name. (A keyword's text is no zone: trimming the query to its label count gave the
/// top-level domain.)
fn soa_owner(qname: &DnsName, rule: Option<&ListMatch>) -> DnsName {
    match soa_labels(rule) {
        Some(labels) => qname.trim_to(labels),
        None => qname.clone(),
    }
}

/// How many of the question name's last labels own a block's SOA: the listed domain's,
/// for a rule that covers its subdomains (`None`: the whole name).
pub(super) fn soa_labels(rule: Option<&ListMatch>) -> Option<usize> {
    match rule {
        Some(m) if m.kind == RuleKind::NameAndSubdomains => {
            Some(m.rule.bytes().filter(|&b| b == b'.').count() + 1)
        }
        _ => None,
    }
}

/// A refusal's answer: its rcode, whether an SOA (the question's, for [`REFUSAL_TTL`])
/// comes with it, and its Extended DNS Error code.
pub(super) fn refusal_answer(policy: &DnsPolicy, refusal: DnsRefusal) -> (ResponseCode, bool, u16) {
    match refusal {
        DnsRefusal::NotAllowed if policy.not_allowed == NotAllowedAnswer::Nxdomain => {
            (ResponseCode::NXDomain, true, ede::BLOCKED)
        }
        DnsRefusal::NotAllowed => (ResponseCode::Refused, false, ede::BLOCKED),
        DnsRefusal::Qtype if policy.qtype_answer == QtypeAnswer::Notimp => {
            (ResponseCode::NotImp, false, ede::NOT_SUPPORTED)
        }
        DnsRefusal::Qtype => (ResponseCode::Refused, false, ede::NOT_SUPPORTED),
        DnsRefusal::RateLimited => (ResponseCode::Refused, false, ede::PROHIBITED),
        DnsRefusal::Tunnel => (ResponseCode::NXDomain, true, ede::BLOCKED),
    }
}

/// Answers an A or AAAA question with the matching addresses of `ips`; any other
/// question (or no matching address) gets no data, with an SOA for negative caching.
fn push_addresses(
    r: &mut Reply,
    qname: &DnsName,
    qtype: RecordType,
    ips: &[IpAddr],
    soa_owner: &DnsName,
    ttl: u32,
) {
    for ip in ips {
        let data = match (qtype, ip) {
            (RecordType::A, IpAddr::V4(v4)) => RData::A(A(*v4)),
            (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(AAAA(*v6)),
            _ => continue,
        };
        r.answers.push(Record::from_rdata(qname.clone(), ttl, data));
    }
    if r.answers.is_empty() {
        r.authorities.push(block_soa(soa_owner, ttl));
    }
}

pub(super) fn special_reply(
    kind: SpecialUse,
    qname: &DnsName,
    qtype: RecordType,
    settings: &FilterSettings,
) -> Reply {
    let ttl = settings.block_ttl;
    match kind {
        SpecialUse::Localhost => {
            let mut r = Reply::new(
                ResponseCode::NoError,
                Outcome::Local,
                "localhost is loopback (RFC 6761)",
            );
            let loopback = [
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ];
            push_addresses(&mut r, qname, qtype, &loopback, qname, ttl);
            r
        }
        SpecialUse::LocalOnly | SpecialUse::BareName => {
            let mut r = Reply::new(
                ResponseCode::NXDomain,
                Outcome::Local,
                format!("special-use name ({}): never forwarded", kind.as_str()),
            );
            r.authorities.push(block_soa(qname, ttl));
            r
        }
        SpecialUse::ResolverDiscovery => {
            let mut r = Reply::new(
                ResponseCode::NoError,
                Outcome::Local,
                "resolver discovery is not offered (RFC 9462)",
            );
            r.authorities.push(block_soa(qname, ttl));
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rules::Origin;

    #[test]
    fn the_soa_owner_is_the_listed_zone_only_for_name_rules() {
        let qname = DnsName::from_ascii("px.tracking-cdn.example.").unwrap();
        let rule = |kind, rule: &str| ListMatch {
            kind,
            origin: Origin { list: 0, line: 1 },
            rule: rule.to_owned(),
            important: false,
        };
        let owner = |m: Option<&ListMatch>| soa_owner(&qname, m).to_ascii();
        assert_eq!(
            owner(Some(&rule(
                RuleKind::NameAndSubdomains,
                "tracking-cdn.example"
            ))),
            "tracking-cdn.example."
        );
        for m in [
            rule(RuleKind::Keyword, "tracking"),
            rule(RuleKind::Regex, "/^px\\./"),
            rule(RuleKind::Exact, "=px.tracking-cdn.example"),
        ] {
            assert_eq!(owner(Some(&m)), "px.tracking-cdn.example.", "{m:?}");
        }
        assert_eq!(owner(None), "px.tracking-cdn.example.");
    }
}
