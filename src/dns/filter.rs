//! The filtering resolver: policy decision, cache, upstream, answer inspection.
//!
//! Transport-independent: [`Filter::resolve`] turns one question from one client
//! into a [`Reply`]; the hickory-server glue in [`super::server`] encodes it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::svcb::{IpHint, SvcParamValue};
use hickory_proto::rr::rdata::{A, AAAA, HTTPS, SOA};
use hickory_proto::rr::{DNSClass, Name as DnsName, RData, Record, RecordType};
use ipnet::IpNet;
use tokio::sync::Semaphore;

use super::cache::{Cache, CachedResponse};
use super::upstream::UpstreamPool;
use super::wire::{FastQuery, WireAnswer};
use crate::config::{BlockAnswer, Config, DnsConfig};
use crate::policy::addr::{AddrClass, classify};
use crate::policy::groups::GroupId;
use crate::policy::name::Name;
use crate::policy::rules::{ListMatch, RuleKind};
use crate::policy::special::SpecialUse;
use crate::policy::{Policy, Verdict};

/// Extended DNS Error info codes (RFC 8914) we send.
pub mod ede {
    pub const STALE_ANSWER: u16 = 3;
    pub const BLOCKED: u16 = 15;
    pub const NOT_READY: u16 = 14;
    pub const NETWORK_ERROR: u16 = 23;
}

pub use crate::telemetry::metrics::Outcome;

/// A reply ready to encode, with the decision that produced it.
#[derive(Debug)]
pub struct Reply {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    /// Extended DNS Error: info code and text (sent only to EDNS clients).
    pub ede: Option<(u16, String)>,
    pub outcome: Outcome,
    /// Why, in words, for the decision log.
    pub reason: String,
    /// The list that decided, when one did.
    pub list: Option<String>,
    pub rule: Option<String>,
    pub upstream: Option<Arc<str>>,
    /// Correlation id of an upstream answer: given when it is fetched, kept in the cache,
    /// logged by every DNS query and proxy connection that used it. So the decision line
    /// of an agent's lookup and the proxy connection that dialled its answer share it.
    pub answer_id: Option<u64>,
    /// The answer was refused because every address it handed out is denied: the first
    /// such address and its class (`Configured` for `deny_ranges`).
    pub denied_address: Option<(IpAddr, AddrClass)>,
}

impl Reply {
    pub(crate) fn new(rcode: ResponseCode, outcome: Outcome, reason: impl Into<String>) -> Reply {
        Reply {
            rcode,
            answers: Vec::new(),
            authorities: Vec::new(),
            ede: None,
            outcome,
            reason: reason.into(),
            list: None,
            rule: None,
            upstream: None,
            answer_id: None,
            denied_address: None,
        }
    }
}

/// The outcome of [`Filter::begin`]: an answer now, or a question for the upstreams.
pub enum Step {
    Done(Reply),
    Forward(Box<Pending>),
}

/// A question that needs the upstreams, with what the policy said about it.
pub struct Pending {
    name: Name,
    query: Query,
    group: GroupId,
    allow_private: bool,
    allow_host: Option<String>,
    stale: Option<super::cache::Hit>,
}

/// Settings of the filter that come from `[dns]`.
#[derive(Debug, Clone)]
pub struct FilterSettings {
    pub block_answer: BlockAnswer,
    pub block_addresses: Vec<IpAddr>,
    pub block_ttl: u32,
    pub rebinding_protection: bool,
    /// `[proxy] deny_ranges`: answers pointing there are refused like rebinding answers,
    /// whatever `rebinding_protection` and `private = true` say.
    pub deny_ranges: Vec<IpNet>,
}

impl From<&DnsConfig> for FilterSettings {
    fn from(c: &DnsConfig) -> Self {
        FilterSettings {
            block_answer: c.block_answer,
            block_addresses: c.block_addresses.clone(),
            block_ttl: c.block_ttl,
            rebinding_protection: c.rebinding_protection,
            deny_ranges: Vec::new(),
        }
    }
}

impl From<&Config> for FilterSettings {
    /// `[dns]` and the `deny_ranges` both front doors apply.
    fn from(c: &Config) -> Self {
        FilterSettings {
            deny_ranges: c.proxy.deny_ranges.iter().map(IpNet::trunc).collect(),
            ..FilterSettings::from(&c.dns)
        }
    }
}

/// The DNS firewall's brain. Shared by every listener.
pub struct Filter {
    pub policy: Arc<ArcSwap<Policy>>,
    pub upstream: Arc<UpstreamPool>,
    pub cache: Cache,
    pub settings: ArcSwap<FilterSettings>,
    inflight: Arc<Semaphore>,
}

impl Filter {
    pub fn new(
        policy: Arc<ArcSwap<Policy>>,
        upstream: Arc<UpstreamPool>,
        cache: Cache,
        settings: FilterSettings,
        max_inflight: usize,
    ) -> Filter {
        Filter {
            policy,
            upstream,
            cache,
            settings: ArcSwap::from_pointee(settings),
            inflight: Arc::new(Semaphore::new(max_inflight)),
        }
    }

    /// Answers one question from one client.
    pub async fn resolve(&self, client: IpAddr, query: &Query) -> Reply {
        match self.begin(client, query) {
            Step::Done(reply) => reply,
            Step::Forward(pending) => self.finish(pending).await,
        }
    }

    /// Everything that needs no upstream, synchronously: checks, the policy
    /// decision, local answers and fresh cache hits. The UDP loop answers these
    /// without spawning a task.
    pub fn begin(&self, client: IpAddr, query: &Query) -> Step {
        if query.query_class() != DNSClass::IN {
            return Step::Done(Reply::new(
                ResponseCode::Refused,
                Outcome::Refused,
                "only class IN is served",
            ));
        }
        if matches!(
            query.query_type(),
            RecordType::AXFR | RecordType::IXFR | RecordType::ANY
        ) {
            return Step::Done(Reply::new(
                ResponseCode::Refused,
                Outcome::Refused,
                format!("query type {} is not served", query.query_type()),
            ));
        }
        let qname = query.name();
        let name = match Name::from_labels(qname.iter()) {
            Ok(name) => name,
            Err(e) => {
                let why = format!("malformed name: {e}");
                let mut reply = Reply::new(ResponseCode::Refused, Outcome::Refused, why.clone());
                reply.ede = Some((ede::BLOCKED, why));
                return Step::Done(reply);
            }
        };
        let policy = self.policy.load();
        let settings = self.settings.load();
        let group = policy.groups.of(client);
        let verdict = policy.decide(&name, group);
        let (allow_private, allow_host) = match &verdict {
            Verdict::Blocked(m) => {
                let list = policy.rules.list(m.origin.list).map(|l| l.name.clone());
                let reason = format!(
                    "{} rule {} of list {}",
                    m.kind.as_str(),
                    m.rule,
                    list.as_deref().unwrap_or("?")
                );
                let mut reply = block_reply(&settings, qname, query.query_type(), Some(m), &reason);
                reply.list = list;
                reply.rule = Some(m.rule.clone());
                return Step::Done(reply);
            }
            Verdict::Special(kind) => {
                return Step::Done(special_reply(*kind, qname, query.query_type(), &settings));
            }
            Verdict::Malformed(e) => {
                return Step::Done(Reply::new(
                    ResponseCode::Refused,
                    Outcome::Refused,
                    format!("malformed name: {e}"),
                ));
            }
            Verdict::Allowed(_) => match policy.allow_for(&name, group, None) {
                Some(allow) => (allow.private, Some(allow.rule.host.clone())),
                None => (false, None),
            },
            Verdict::Excepted(_) | Verdict::Pass => (false, None),
        };
        let pending = Pending {
            name,
            query: query.clone(),
            group,
            allow_private,
            allow_host,
            stale: None,
        };
        let cached = self.cache.get(pending.name.as_str(), query.query_type());
        crate::telemetry::metrics::cache_lookup(cached.as_ref().is_some_and(|hit| !hit.stale));
        match cached {
            Some(hit) if !hit.stale => {
                let reply = from_cache(&hit, Outcome::Cached);
                let reply = self.checked(&policy, &settings, &pending, reply);
                // Inspection left the answer as cached: encode it once for the fast path.
                let unchanged = reply.outcome == Outcome::Cached
                    && reply.answers.len() == hit.response.answers.len()
                    && reply.authorities.len() == hit.response.authorities.len();
                let current = hit
                    .response
                    .wire
                    .load()
                    .as_ref()
                    .is_some_and(|w| w.valid_for(&policy, &settings, group));
                if unchanged && !current {
                    let wire = WireAnswer::build(
                        &policy,
                        &settings,
                        group,
                        pending.name.as_str(),
                        query.query_type(),
                        &hit.response,
                        reply.rule.clone(),
                    );
                    hit.response.wire.store(wire.map(Arc::new));
                }
                Step::Done(reply)
            }
            stale => Step::Forward(Box::new(Pending { stale, ..pending })),
        }
    }

    /// The fast path (see [`super::wire`]): writes to `out` a fresh cached answer that is
    /// already encoded for this client's group under the policy and settings in force.
    /// `None`: nothing was written; take the full path.
    pub fn answer_cached(
        &self,
        client: IpAddr,
        query: &FastQuery,
        name: &str,
        out: &mut Vec<u8>,
    ) -> Option<(Arc<CachedResponse>, Arc<WireAnswer>)> {
        // Cheapest refusal first: most names that are not cached are blocked ones.
        let hit = self.cache.get(name, query.qtype).filter(|hit| !hit.stale)?;
        let wire = hit.response.wire.load_full()?;
        let policy = self.policy.load();
        let settings = self.settings.load();
        let group = policy.groups.of(client);
        if !wire.valid_for(&policy, &settings, group) || !wire.answer(query, hit.age, out) {
            return None;
        }
        crate::telemetry::metrics::cache_lookup(true);
        Some((hit.response, wire))
    }

    /// Asks the upstreams (or falls back to a stale answer) and inspects the answer.
    pub async fn finish(&self, pending: Box<Pending>) -> Reply {
        let reply = self.forward(&pending).await;
        let policy = self.policy.load();
        let settings = self.settings.load();
        self.checked(&policy, &settings, &pending, reply)
    }

    fn checked(
        &self,
        policy: &Policy,
        settings: &FilterSettings,
        pending: &Pending,
        mut reply: Reply,
    ) -> Reply {
        if matches!(
            reply.outcome,
            Outcome::Forwarded | Outcome::Cached | Outcome::Stale
        ) {
            self.inspect(
                policy,
                settings,
                pending.group,
                pending.allow_host.is_some(),
                pending.allow_private,
                pending.query.name(),
                pending.query.query_type(),
                &mut reply,
            );
        }
        if reply.outcome != Outcome::Blocked && pending.allow_host.is_some() {
            reply.rule.clone_from(&pending.allow_host);
        }
        reply
    }

    /// Upstream, then the stale cache entry.
    async fn forward(&self, pending: &Pending) -> Reply {
        let Ok(_permit) = self.inflight.clone().try_acquire_owned() else {
            let mut reply = Reply::new(
                ResponseCode::ServFail,
                Outcome::Error,
                "too many queries waiting on upstreams",
            );
            reply.ede = Some((ede::NOT_READY, "overloaded".into()));
            return reply;
        };
        let qtype = pending.query.query_type();
        let mut request = Message::new(0, MessageType::Query, OpCode::Query);
        request.metadata.recursion_desired = true;
        request.queries.push(pending.query.clone());
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        request.edns = Some(edns);
        match self.upstream.resolve_named(&request).await {
            Ok((mut response, upstream)) if is_usable(&response) => {
                // Clients see the clamped TTLs, from this answer and from the cache alike.
                self.cache.clamp_ttls(&mut response);
                let answer_id = crate::telemetry::next_id();
                self.cache.insert(
                    pending.name.as_str(),
                    qtype,
                    &response,
                    upstream.clone(),
                    answer_id,
                );
                let mut reply = Reply::new(
                    response.metadata.response_code,
                    Outcome::Forwarded,
                    "forwarded",
                );
                reply.answers = response.answers;
                reply.authorities = response.authorities;
                reply.upstream = Some(upstream);
                reply.answer_id = Some(answer_id);
                reply
            }
            result => {
                let why = match result {
                    Ok((r, upstream)) => {
                        format!("{upstream} answered {}", r.metadata.response_code)
                    }
                    Err(e) => e.to_string(),
                };
                if let Some(hit) = &pending.stale {
                    let mut reply = from_cache(hit, Outcome::Stale);
                    reply.reason = format!("stale answer: {why}");
                    return reply;
                }
                let mut reply = Reply::new(ResponseCode::ServFail, Outcome::Error, why.clone());
                reply.ede = Some((ede::NETWORK_ERROR, why));
                reply
            }
        }
    }

    /// Checks an answer on its way back: CNAME targets against deny rules, and every
    /// address it hands out (A, AAAA, and the `ipv4hint`/`ipv6hint` of SVCB and HTTPS
    /// records) against IP lists, the operator's `deny_ranges` and (rebinding protection)
    /// the special-purpose ranges.
    ///
    /// For a name an operator allow rule names (`allowed`), no threat list blocks the
    /// answer: its CNAME targets and addresses are the operator's to trust (CDN names of
    /// allowed APIs do turn up on lists). `deny_ranges` and rebinding protection still apply.
    #[allow(clippy::too_many_arguments)]
    fn inspect(
        &self,
        policy: &Policy,
        settings: &FilterSettings,
        group: GroupId,
        allowed: bool,
        allow_private: bool,
        qname: &DnsName,
        qtype: RecordType,
        reply: &mut Reply,
    ) {
        let threat_lists = if allowed { &[][..] } else { &reply.answers[..] };
        for record in threat_lists {
            match &record.data {
                RData::CNAME(target) => {
                    let Ok(target) = Name::from_labels(target.0.iter()) else {
                        continue;
                    };
                    if let Verdict::Blocked(m) = policy.decide(&target, group) {
                        let list = policy.rules.list(m.origin.list).map(|l| l.name.clone());
                        let reason = format!(
                            "CNAME target {target} blocked by {} rule {} of list {}",
                            m.kind.as_str(),
                            m.rule,
                            list.as_deref().unwrap_or("?")
                        );
                        *reply = block_reply(settings, qname, qtype, None, &reason);
                        reply.list = list;
                        reply.rule = Some(m.rule.clone());
                        return;
                    }
                }
                data => {
                    let listed =
                        answer_addresses(data).find_map(|ip| ip_list_hit(policy, group, ip));
                    if let Some((reason, list)) = listed {
                        *reply = block_reply(settings, qname, qtype, None, &reason);
                        reply.list = Some(list);
                        return;
                    }
                }
            }
        }
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

/// A response worth passing on: anything but SERVFAIL/REFUSED/NOTIMP.
fn is_usable(response: &Message) -> bool {
    matches!(
        response.metadata.response_code,
        ResponseCode::NoError | ResponseCode::NXDomain
    )
}

fn from_cache(hit: &super::cache::Hit, outcome: Outcome) -> Reply {
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
fn block_reply(
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

/// The owner of a block answer's SOA. A name rule (`evil.example`, name and
/// subdomains) blocks a whole zone: the owner is that zone, so a client caching the
/// NXDOMAIN learns the rule (RFC 8020). Every other rule (exact, keyword, regex) and a
/// block found in the answer says nothing about any other name: the owner is the query
/// name. (A keyword's text is no zone: trimming the query to its label count gave the
/// top-level domain.)
fn soa_owner(qname: &DnsName, rule: Option<&ListMatch>) -> DnsName {
    match rule {
        Some(m) if m.kind == RuleKind::NameAndSubdomains => {
            let labels = m.rule.bytes().filter(|&b| b == b'.').count() + 1;
            qname.trim_to(labels)
        }
        _ => qname.clone(),
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

fn special_reply(
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
    use hickory_proto::rr::rdata::svcb::{SVCB, SvcParamKey};

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
