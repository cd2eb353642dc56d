//! Answer inspection: what comes back from upstream (or the cache) is checked before any
//! client sees it. CNAME targets go against deny rules; every address the answer hands out
//! (A, AAAA, and the `ipv4hint`/`ipv6hint` of SVCB and HTTPS records) against IP lists,
//! the operator's `deny_ranges` and (rebinding protection) the special-purpose ranges.

use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RData;
use hickory_proto::rr::rdata::svcb::{IpHint, SvcParamValue};
use hickory_proto::rr::rdata::{A, AAAA, HTTPS};
use ipnet::IpNet;

use super::answer::block_reply;
use super::filter::{FilterSettings, Outcome, Pending, Reply, ede};
use crate::policy::addr::{AddrClass, classify};
use crate::policy::groups::GroupId;
use crate::policy::name::Name;
use crate::policy::{Policy, Verdict};

/// Checks `reply`, an answer to `pending`, and replaces or trims it where it fails.
///
/// For a name an operator allow rule names, no threat list blocks the answer: its CNAME
/// targets and addresses are the operator's to trust (CDN names of allowed APIs do turn
/// up on lists). `deny_ranges` and rebinding protection still apply.
pub(super) fn inspect(
    policy: &Policy,
    settings: &FilterSettings,
    pending: &Pending,
    reply: &mut Reply,
) {
    if pending.allow_host.is_none() && listed(policy, settings, pending, reply) {
        return;
    }
    remove_denied(settings, pending.allow_private, reply);
}

/// Threat lists: a CNAME target a deny rule names, or an address on an IP list, turns
/// the answer into a block. `true` if it did.
fn listed(
    policy: &Policy,
    settings: &FilterSettings,
    pending: &Pending,
    reply: &mut Reply,
) -> bool {
    let (group, qname, qtype) = (
        pending.group,
        pending.query.name(),
        pending.query.query_type(),
    );
    for record in &reply.answers {
        match &record.data {
            RData::CNAME(target) => {
                let Ok(target) = Name::from_labels(target.0.iter()) else {
                    continue;
                };
                if let Verdict::Blocked(m) = policy.decide(&target, group) {
                    let list = policy.rules.list(m.origin.list).map(|l| l.name.clone());
                    let reason = format!(
                        "CNAME target {target} blocked by {}",
                        m.described(&policy.rules)
                    );
                    *reply = block_reply(settings, qname, qtype, None, &reason);
                    reply.list = list;
                    reply.rule = Some(m.rule.clone());
                    return true;
                }
            }
            data => {
                let listed = answer_addresses(data).find_map(|ip| ip_list_hit(policy, group, ip));
                if let Some((reason, list)) = listed {
                    *reply = block_reply(settings, qname, qtype, None, &reason);
                    reply.list = Some(list);
                    return true;
                }
            }
        }
    }
    false
}

/// Removes the records that hand out a denied address; refuses the answer if no
/// address is left.
fn remove_denied(settings: &FilterSettings, allow_private: bool, reply: &mut Reply) {
    // `deny_ranges` hold whatever the allow rules and `rebinding_protection` say;
    // the fixed ranges only while rebinding protection is on and no `private = true`
    // rule opened them (as the proxy does: `Configured` is never opened).
    let fixed = settings.rebinding_protection && !allow_private;
    if !fixed && settings.deny_ranges.is_empty() {
        return;
    }
    let denied = |ip: IpAddr| -> Option<(IpAddr, Denied)> {
        if let Some(net) = settings
            .deny_ranges
            .iter()
            .find(|net| crate::policy::addr::range_holds(net, ip))
        {
            return Some((ip, Denied::Configured(*net)));
        }
        if !fixed {
            return None;
        }
        let class = classify(ip);
        class.is_denied().then_some((ip, Denied::Class(class)))
    };
    let mut removed: Option<(IpAddr, Denied)> = None;
    // A record that hands out a denied address goes whole: an HTTPS record is not
    // rewritten to drop one hint, like an A record it is either served or not.
    reply.answers.retain(
        |record| match answer_addresses(&record.data).find_map(denied) {
            Some(hit) => {
                removed.get_or_insert(hit);
                false
            }
            None => true,
        },
    );
    if let Some((ip, why)) = removed {
        let has_address = reply.answers.iter().any(|r| {
            matches!(
                r.data,
                RData::A(_) | RData::AAAA(_) | RData::SVCB(_) | RData::HTTPS(_)
            )
        });
        if !has_address {
            let denied = (ip, why.class());
            let why = format!(
                "answer pointed at {ip} ({}): {}",
                why.as_str(),
                why.describe()
            );
            let mut refused = Reply::new(ResponseCode::Refused, Outcome::Refused, why.clone());
            refused.ede = Some((ede::BLOCKED, why));
            refused.upstream = reply.upstream.take();
            refused.answer_id = reply.answer_id;
            refused.denied_address = Some(denied);
            *reply = refused;
        } else {
            reply.reason = format!("removed {} from the answer ({})", ip, why.as_str());
        }
    }
}

/// Why an answer address was refused.
#[derive(Clone, Copy)]
enum Denied {
    /// A fixed special-purpose range (rebinding protection).
    Class(AddrClass),
    /// One of the operator's `deny_ranges`.
    Configured(IpNet),
}

impl Denied {
    fn class(self) -> AddrClass {
        match self {
            Denied::Class(class) => class,
            Denied::Configured(_) => AddrClass::Configured,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Denied::Class(class) => class.as_str(),
            Denied::Configured(_) => AddrClass::Configured.as_str(),
        }
    }

    fn describe(self) -> String {
        match self {
            Denied::Class(class) => class.describe().to_owned(),
            Denied::Configured(net) => format!(
                "{} (proxy.deny_ranges {net})",
                AddrClass::Configured.describe()
            ),
        }
    }
}

/// The addresses a record hands out: an A or AAAA record's, or an SVCB or HTTPS
/// record's `ipv4hint` and `ipv6hint` (RFC 9460 §7.3: clients may connect to them
/// before, or instead of, an A/AAAA lookup).
fn answer_addresses(data: &RData) -> impl Iterator<Item = IpAddr> + '_ {
    let (single, svcb) = match data {
        RData::A(A(ip)) => (Some(IpAddr::V4(*ip)), None),
        RData::AAAA(AAAA(ip)) => (Some(IpAddr::V6(*ip)), None),
        RData::SVCB(svcb) | RData::HTTPS(HTTPS(svcb)) => (None, Some(svcb)),
        _ => (None, None),
    };
    let hints = svcb
        .into_iter()
        .flat_map(|svcb| svcb.svc_params.iter())
        .flat_map(|(_, value)| {
            let (v4, v6): (&[A], &[AAAA]) = match value {
                SvcParamValue::Ipv4Hint(IpHint(hints)) => (hints, &[]),
                SvcParamValue::Ipv6Hint(IpHint(hints)) => (&[], hints),
                _ => (&[], &[]),
            };
            v4.iter()
                .map(|a| IpAddr::V4(a.0))
                .chain(v6.iter().map(|aaaa| IpAddr::V6(aaaa.0)))
        });
    single.into_iter().chain(hints)
}

fn ip_list_hit(policy: &Policy, group: GroupId, ip: IpAddr) -> Option<(String, String)> {
    let origin = policy.rules.denied_ip(ip, group)?;
    let list = policy
        .rules
        .list(origin.list)
        .map_or_else(|| "?".to_owned(), |l| l.name.clone());
    Some((
        format!(
            "answer address {ip} is on list {list} (line {})",
            origin.line
        ),
        list,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Name as DnsName;
    use hickory_proto::rr::rdata::svcb::{SVCB, SvcParamKey};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn svcb(v4: &[[u8; 4]], v6: &[Ipv6Addr]) -> SVCB {
        let mut params = vec![(SvcParamKey::Port, SvcParamValue::Port(8443))];
        params.push((
            SvcParamKey::Ipv4Hint,
            SvcParamValue::Ipv4Hint(IpHint(v4.iter().map(|o| A(Ipv4Addr::from(*o))).collect())),
        ));
        params.push((
            SvcParamKey::Ipv6Hint,
            SvcParamValue::Ipv6Hint(IpHint(v6.iter().map(|ip| AAAA(*ip)).collect())),
        ));
        SVCB::new(1, DnsName::root(), params)
    }

    #[test]
    fn answer_addresses_include_svcb_and_https_hints() {
        let v6 = "2001:db8::5".parse::<Ipv6Addr>().unwrap();
        let want: Vec<IpAddr> = vec![
            Ipv4Addr::new(10, 0, 0, 1).into(),
            Ipv4Addr::new(93, 184, 215, 14).into(),
            v6.into(),
        ];
        let hints = svcb(&[[10, 0, 0, 1], [93, 184, 215, 14]], &[v6]);
        for data in [RData::SVCB(hints.clone()), RData::HTTPS(HTTPS(hints))] {
            assert_eq!(answer_addresses(&data).collect::<Vec<_>>(), want);
        }
        let a = RData::A(A::new(192, 0, 2, 1));
        assert_eq!(
            answer_addresses(&a).collect::<Vec<_>>(),
            [IpAddr::from([192, 0, 2, 1])]
        );
        let alias = RData::HTTPS(HTTPS(SVCB::new(0, DnsName::root(), vec![])));
        assert_eq!(answer_addresses(&alias).count(), 0);
    }
}
