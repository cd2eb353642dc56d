//! The filtering resolver: policy decision, cache, upstream, answer inspection.
//!
//! Transport-independent: [`Filter::resolve`] turns one question from one client
//! into a [`Reply`]; the hickory-server glue in [`super::server`] encodes it.
//! The answers the gate writes itself are built in `answer`; what comes back
//! from upstream is checked in `inspect`.

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Record, RecordType};
use ipnet::IpNet;
use tokio::sync::Semaphore;

use super::answer::{
    REFUSAL_TTL, block_reply, from_cache, refusal_answer, refusal_reply, soa_labels, special_reply,
};
use super::cache::{Cache, CachedResponse, Hit};
use super::inspect::inspect;
use super::limit::{Admit, RateLimiter};
use super::tunnel::{self, GuardSettings, TunnelGuard};
use super::upstream::UpstreamPool;
use super::wire::{FastQuery, LocalAnswer, WireAnswer};
use crate::config::{BlockAnswer, Config, DnsConfig};
use crate::policy::addr::AddrClass;
use crate::policy::dns::{DnsAction, DnsRefusal, GuardAction};
use crate::policy::groups::GroupId;
use crate::policy::name::Name;
use crate::policy::{Policy, Verdict};

/// Extended DNS Error info codes (RFC 8914) we send.
pub mod ede {
    pub const STALE_ANSWER: u16 = 3;
    pub const BLOCKED: u16 = 15;
    pub const NOT_READY: u16 = 14;
    pub const PROHIBITED: u16 = 18;
    pub const NOT_SUPPORTED: u16 = 21;
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
    /// The DNS policy refused it (mode, query type, rate limit, tunnel guard).
    pub refusal: Option<DnsRefusal>,
    /// `report` mode: what `allowlist` mode would have refused.
    pub would_refuse: Option<DnsRefusal>,
    /// The client's group, named in the decision line of policy refusals and reports.
    pub group: Option<String>,
    /// `routed` mode: the gate's address the answer carries instead of the real ones.
    pub routed_to: Option<IpAddr>,
    /// The group is in a reporting mode (`report`, `routed_report`): the learner records it.
    pub report: bool,
}

impl Reply {
    /// A reply with no records: add them, and what a decision line needs, as they come.
    pub fn new(rcode: ResponseCode, outcome: Outcome, reason: impl Into<String>) -> Reply {
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
            refusal: None,
            would_refuse: None,
            group: None,
            routed_to: None,
            report: false,
        }
    }
}

/// The outcome of [`Filter::begin`]: an answer now, or a question for the upstreams.
// `Done` is the hot path: boxing its reply would cost an allocation per answer.
#[allow(clippy::large_enum_variant)]
pub enum Step {
    Done(Reply),
    Forward(Box<Pending>),
}

/// A question that needs the upstreams, with what the policy said about it.
pub struct Pending {
    name: Name,
    pub(super) query: Query,
    pub(super) group: GroupId,
    /// A `private = true` allow rule names it: the fixed ranges are open to its answer.
    pub(super) allow_private: bool,
    /// The allow rule naming it, if one does.
    pub(super) allow_host: Option<String>,
    /// `report` mode: what `allowlist` mode would have refused.
    would_refuse: Option<DnsRefusal>,
    stale: Option<Hit>,
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
    pub guard: GuardSettings,
    /// `[dns.rate_limit] max_clients`.
    pub rate_max_clients: usize,
}

impl From<&DnsConfig> for FilterSettings {
    fn from(c: &DnsConfig) -> Self {
        FilterSettings {
            block_answer: c.block_answer,
            block_addresses: c.block_addresses.clone(),
            block_ttl: c.block_ttl,
            rebinding_protection: c.rebinding_protection,
            deny_ranges: Vec::new(),
            guard: GuardSettings::from(&c.guard),
            rate_max_clients: c.rate_limit.max_clients,
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
    guard: TunnelGuard,
    limiter: RateLimiter,
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
            guard: TunnelGuard::new(),
            limiter: RateLimiter::new(),
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
        let qtype = query.query_type();
        let (guard, would_refuse) = match policy.dns.decide(&verdict, group, u16::from(qtype)) {
            DnsAction::Refuse(refusal) => {
                return Step::Done(refused(&policy, group, query, refusal, None));
            }
            DnsAction::Local => {
                let mut reply = local(&policy, &settings, query, verdict);
                if policy.dns.group(group).mode.reports() {
                    reply.report = true;
                    reply.group = Some(policy.groups.name(group).to_owned());
                }
                return Step::Done(reply);
            }
            DnsAction::Forward {
                guard,
                would_refuse,
            } => (guard, would_refuse),
        };
        let (allow_private, allow_host) = match verdict {
            Verdict::Allowed(_) => policy
                .allow_for(&name, group, None)
                .map_or((false, None), |a| (a.private, Some(a.rule.host.clone()))),
            _ => (false, None),
        };
        let cached = self.cache.get(name.as_str(), qtype);
        let fresh_hit = cached.as_ref().is_some_and(|hit| !hit.stale);
        if guard != GuardAction::Off
            && let Some(reply) = self.guarded(
                &policy, &settings, client, group, guard, &name, query, !fresh_hit,
            )
        {
            return Step::Done(reply);
        }
        let pending = Pending {
            name,
            query: query.clone(),
            group,
            allow_private,
            allow_host,
            would_refuse,
            stale: None,
        };
        crate::telemetry::metrics::cache_lookup(fresh_hit);
        match cached {
            Some(hit) if !hit.stale => Step::Done(self.fresh(&policy, &settings, &pending, &hit)),
            stale => Step::Forward(Box::new(Pending { stale, ..pending })),
        }
    }

    /// The tunnel guard's say on a name about to be answered: `Some` refusal when the
    /// client's pair with the name's registered domain is blocked. A trip is logged and
    /// counted here.
    #[allow(clippy::too_many_arguments)]
    fn guarded(
        &self,
        policy: &Policy,
        settings: &FilterSettings,
        client: IpAddr,
        group: GroupId,
        action: GuardAction,
        name: &Name,
        query: &Query,
        upstream: bool,
    ) -> Option<Reply> {
        let (domain, prefix) = policy.suffixes.split(name.as_str());
        let verdict = self.guard.observe(
            &settings.guard,
            action,
            client,
            name.as_str(),
            domain,
            prefix,
            upstream,
        );
        let group_name = policy.groups.name(group);
        let bytes = match verdict {
            tunnel::Verdict::Pass => return None,
            tunnel::Verdict::Tripped {
                signal,
                bytes,
                blocked,
            } => {
                crate::telemetry::metrics::dns_guard_trip(
                    group_name,
                    action.as_str(),
                    signal.as_str(),
                );
                tracing::warn!(
                    target: "portcullis::decision",
                    door = "dns",
                    event = "tunnel_guard",
                    client = %client,
                    group = group_name,
                    domain,
                    name = name.as_str(),
                    action = action.as_str(),
                    reason = signal.as_str(),
                    bytes_in_window = bytes,
                    budget_bytes = settings.guard.budget_bytes,
                    window_secs = settings.guard.window_secs,
                    cooldown_secs = settings.guard.cooldown_secs,
                    "possible DNS tunnel"
                );
                if policy.dns.group(group).mode.reports() {
                    // Nothing under this registered domain is ever suggested as a rule.
                    crate::learn::observe(&crate::learn::Observation {
                        group: group_name,
                        host: domain,
                        port: None,
                        door: crate::learn::Door::Dns,
                        client,
                        seen: crate::learn::Seen::Suspicious(signal.as_str()),
                    });
                }
                if !blocked {
                    return None;
                }
                bytes
            }
            tunnel::Verdict::Blocked { bytes } => bytes,
        };
        crate::telemetry::metrics::dns_guard_blocked(group_name);
        let text = format!(
            "possible DNS tunnel to {domain}: {bytes} bytes of new labels in {} s; blocked for group {group_name} for {} s",
            settings.guard.window_secs, settings.guard.cooldown_secs
        );
        Some(refused(
            policy,
            group,
            query,
            DnsRefusal::Tunnel,
            Some(text),
        ))
    }

    /// The rate limit, before anything else: takes a token of `client`'s bucket; `true`
    /// when it is over the limit (answer it with [`Filter::rate_refusal`]).
    pub fn limited(&self, client: IpAddr) -> bool {
        let policy = self.policy.load();
        let group = policy.groups.of(client);
        let Some(rate) = policy.dns.group(group).rate else {
            return false;
        };
        let max_clients = self.settings.load().rate_max_clients;
        match self.limiter.admit(client, rate, max_clients) {
            Admit::Yes => false,
            Admit::No { first } => {
                if first {
                    tracing::warn!(
                        target: "portcullis::decision",
                        door = "dns",
                        event = "rate_limit",
                        client = %client,
                        group = policy.groups.name(group),
                        queries = rate.queries,
                        per_secs = rate.per_secs,
                        "client over its rate limit: refusing its queries until it slows down"
                    );
                }
                true
            }
        }
    }

    /// The answer to a query of a client over its rate limit: REFUSED, counted.
    pub fn rate_refusal(&self, client: IpAddr, query: &Query) -> Reply {
        let policy = self.policy.load();
        let group = policy.groups.of(client);
        refused(&policy, group, query, DnsRefusal::RateLimited, None)
    }

    /// Creates the DNS-policy metric series of the groups of `policy` at zero.
    pub fn register_groups(policy: &Policy) {
        let signals: Vec<&'static str> = tunnel::Signal::ALL.iter().map(|s| s.as_str()).collect();
        crate::telemetry::metrics::dns_groups(policy.groups.names(), &signals);
    }

    /// `routed` mode: rewrites `reply` to carry the gate's own address when `client`'s
    /// group is routed (see [`super::routed`]). `local`: the address the query came to.
    pub fn route(&self, client: IpAddr, local: Option<IpAddr>, query: &Query, reply: &mut Reply) {
        super::routed::route(&self.policy.load(), client, local, query, reply);
    }

    /// Tracked tunnel-guard pairs, guard evictions, rate-limited clients tracked.
    pub fn guard_usage(&self) -> (usize, u64, usize) {
        let (entries, evictions) = self.guard.usage();
        (entries, evictions, self.limiter.clients())
    }

    /// A fresh cache hit, inspected; encoded for the fast path when inspection left it
    /// as cached and no encoding for this policy, settings and group exists yet.
    fn fresh(
        &self,
        policy: &Arc<Policy>,
        settings: &Arc<FilterSettings>,
        pending: &Pending,
        hit: &Hit,
    ) -> Reply {
        let reply = from_cache(hit, Outcome::Cached);
        let reply = self.checked(policy, settings, pending, reply);
        let unchanged = reply.outcome == Outcome::Cached
            && reply.answers.len() == hit.response.answers.len()
            && reply.authorities.len() == hit.response.authorities.len();
        let current = hit
            .response
            .wire
            .load()
            .as_ref()
            .is_some_and(|w| w.valid_for(policy, settings, pending.group));
        // Report lines are written, and routed answers rewritten, on the full path only.
        let full_path_only =
            pending.would_refuse.is_some() || policy.dns.group(pending.group).mode.routed();
        if unchanged && !current && !full_path_only {
            let wire = WireAnswer::build(
                policy,
                settings,
                pending.group,
                pending.name.as_str(),
                pending.query.query_type(),
                &hit.response,
                reply.rule.clone(),
            );
            hit.response.wire.store(wire.map(Arc::new));
        }
        reply
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
    ) -> Result<(Arc<CachedResponse>, Arc<WireAnswer>), FastMiss> {
        // Cheapest refusal first: most names that are not cached are blocked ones.
        let hit = self
            .cache
            .get(name, query.qtype)
            .filter(|hit| !hit.stale)
            .ok_or(FastMiss::NotCached)?;
        let wire = hit.response.wire.load_full().ok_or(FastMiss::Declined)?;
        let policy = self.policy.load();
        let settings = self.settings.load();
        let group = policy.groups.of(client);
        if !wire.valid_for(&policy, &settings, group) || !wire.answer(query, hit.age, out) {
            return Err(FastMiss::Declined);
        }
        crate::telemetry::metrics::cache_lookup(true);
        Ok((hit.response, wire))
    }

    /// The fast path for a name with no fresh cache entry that the policy answers here:
    /// a listed name, when blocks are NXDOMAIN or REFUSED, and the DNS policy's refusals
    /// by mode and query type. The answer is written to `out` from the request's bytes
    /// ([`wire::write_local`](super::wire::write_local)) without decoding it or building
    /// records, and `log` gets the decision while the policy is borrowed (`text`: a
    /// reused buffer for its reason). `None`: nothing was written; the full path decides
    /// again (a name to forward, a special-use name, a reporting group, another block
    /// answer, an answer too big for the client).
    pub fn answer_local<R>(
        &self,
        client: IpAddr,
        query: &FastQuery,
        name: &str,
        out: &mut Vec<u8>,
        text: &mut String,
        log: impl FnOnce(&LocalDecision<'_>) -> R,
    ) -> Option<R> {
        use std::fmt::Write;
        let policy = self.policy.load();
        let group = policy.groups.of(client);
        // A reporting group's answers are heard by the learner on the full path, and its
        // mode refuses nothing: decide there, once.
        if policy.dns.group(group).mode.reports() {
            return None;
        }
        let parsed = Name::parse(name).ok()?;
        let verdict = policy.decide(&parsed, group);
        let qtype = query.qtype;
        text.clear();
        let decision = match policy.dns.decide(&verdict, group, u16::from(qtype)) {
            DnsAction::Refuse(refusal) => {
                let group_name = policy.groups.name(group);
                refusal_text(text, &policy, group, qtype, refusal);
                let (rcode, soa, code) = refusal_answer(&policy.dns, refusal);
                let answer = LocalAnswer {
                    rcode,
                    soa: soa.then_some((None, REFUSAL_TTL)),
                    ede: (code, text),
                };
                if !super::wire::write_local(query, &answer, out) {
                    return None;
                }
                crate::telemetry::metrics::dns_refusal(group_name, refusal);
                LocalDecision {
                    rcode,
                    outcome: Outcome::Refused,
                    reason: text,
                    list: None,
                    rule: None,
                    group: Some(group_name),
                    refusal: Some(refusal),
                }
            }
            DnsAction::Local => {
                let Verdict::Blocked(m) = &verdict else {
                    return None;
                };
                let settings = self.settings.load();
                let (rcode, soa) = match settings.block_answer {
                    BlockAnswer::Nxdomain => (
                        ResponseCode::NXDomain,
                        Some((soa_labels(Some(m)), settings.block_ttl)),
                    ),
                    BlockAnswer::Refused => (ResponseCode::Refused, None),
                    BlockAnswer::ZeroIp | BlockAnswer::Addresses => return None,
                };
                let _ = write!(text, "{}", m.described(&policy.rules));
                let answer = LocalAnswer {
                    rcode,
                    soa,
                    ede: (ede::BLOCKED, text),
                };
                if !super::wire::write_local(query, &answer, out) {
                    return None;
                }
                LocalDecision {
                    rcode,
                    outcome: Outcome::Blocked,
                    reason: text,
                    list: policy.rules.list(m.origin.list).map(|l| l.name.as_str()),
                    rule: Some(&m.rule),
                    group: None,
                    refusal: None,
                }
            }
            DnsAction::Forward { .. } => return None,
        };
        Some(log(&decision))
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
            inspect(policy, settings, pending, &mut reply);
        }
        if reply.outcome != Outcome::Blocked && pending.allow_host.is_some() {
            reply.rule.clone_from(&pending.allow_host);
        }
        if let Some(would) = pending.would_refuse {
            reply.would_refuse = Some(would);
            reply.report = true;
            reply.group = Some(policy.groups.name(pending.group).to_owned());
            crate::telemetry::metrics::dns_would_refuse(policy.groups.name(pending.group), would);
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
}

/// A response worth passing on: anything but SERVFAIL/REFUSED/NOTIMP.
fn is_usable(response: &Message) -> bool {
    matches!(
        response.metadata.response_code,
        ResponseCode::NoError | ResponseCode::NXDomain
    )
}

/// The answer the name's verdict gives here: a block, a special-use name, a malformed name.
fn local(policy: &Policy, settings: &FilterSettings, query: &Query, verdict: Verdict<'_>) -> Reply {
    let qname = query.name();
    match verdict {
        Verdict::Blocked(m) => {
            let list = policy.rules.list(m.origin.list).map(|l| l.name.clone());
            let reason = m.described(&policy.rules).to_string();
            let mut reply = block_reply(settings, qname, query.query_type(), Some(&m), &reason);
            reply.list = list;
            reply.rule = Some(m.rule.clone());
            reply
        }
        Verdict::Special(kind) => special_reply(kind, qname, query.query_type(), settings),
        Verdict::Malformed(e) => Reply::new(
            ResponseCode::Refused,
            Outcome::Refused,
            format!("malformed name: {e}"),
        ),
        // The DNS policy forwards these (`DnsAction::Forward`); never asked here.
        Verdict::Allowed(_) | Verdict::Excepted(_) | Verdict::Pass => Reply::new(
            ResponseCode::ServFail,
            Outcome::Error,
            "internal: a forwarded verdict answered locally",
        ),
    }
}

/// A refusal of the DNS policy, counted, with its EDE text (`text`, or the refusal's own).
fn refused(
    policy: &Policy,
    group: GroupId,
    query: &Query,
    refusal: DnsRefusal,
    text: Option<String>,
) -> Reply {
    let group_name = policy.groups.name(group);
    let text = text.unwrap_or_else(|| {
        let mut text = String::new();
        refusal_text(&mut text, policy, group, query.query_type(), refusal);
        text
    });
    crate::telemetry::metrics::dns_refusal(group_name, refusal);
    let mut reply = refusal_reply(&policy.dns, query.name(), refusal, text);
    reply.group = Some(group_name.to_owned());
    reply
}

/// The Extended DNS Error text of a refusal of the DNS policy, which names the group.
fn refusal_text(
    out: &mut String,
    policy: &Policy,
    group: GroupId,
    qtype: RecordType,
    refusal: DnsRefusal,
) {
    use std::fmt::Write;
    let group_name = policy.groups.name(group);
    let _ = match refusal {
        DnsRefusal::NotAllowed => write!(out, "not on the allowlist of group {group_name}"),
        DnsRefusal::Qtype => write!(
            out,
            "query type {qtype} is not served to group {group_name}"
        ),
        DnsRefusal::RateLimited => match policy.dns.group(group).rate {
            Some(rate) => write!(
                out,
                "rate limit of group {group_name}: {} queries per {} s per client",
                rate.queries, rate.per_secs
            ),
            None => write!(out, "rate limit of group {group_name}"),
        },
        DnsRefusal::Tunnel => write!(out, "possible DNS tunnel: blocked for group {group_name}"),
    };
}

/// What the fast path logs of an answer [`Filter::answer_local`] wrote.
pub struct LocalDecision<'a> {
    pub rcode: ResponseCode,
    pub outcome: Outcome,
    pub reason: &'a str,
    pub list: Option<&'a str>,
    pub rule: Option<&'a str>,
    pub group: Option<&'a str>,
    pub refusal: Option<DnsRefusal>,
}

/// Why [`Filter::answer_cached`] wrote nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastMiss {
    /// No fresh answer is cached for the name: [`Filter::answer_local`] may answer it.
    NotCached,
    /// One is, but not encoded for this client's group, policy and settings, or too big:
    /// the full path answers (and encodes it).
    Declined,
}
