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

use super::answer::{block_reply, from_cache, special_reply};
use super::cache::{Cache, CachedResponse, Hit};
use super::inspect::inspect;
use super::upstream::UpstreamPool;
use super::wire::{FastQuery, WireAnswer};
use crate::config::{BlockAnswer, Config, DnsConfig};
use crate::policy::addr::AddrClass;
use crate::policy::groups::GroupId;
use crate::policy::name::Name;
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
    pub(super) query: Query,
    pub(super) group: GroupId,
    /// A `private = true` allow rule names it: the fixed ranges are open to its answer.
    pub(super) allow_private: bool,
    /// The allow rule naming it, if one does.
    pub(super) allow_host: Option<String>,
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
        let (allow_private, allow_host) = match decided(&policy, &settings, &name, query, group) {
            Decided::Upstream {
                allow_private,
                allow_host,
            } => (allow_private, allow_host),
            Decided::Local(reply) => return Step::Done(reply),
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
            Some(hit) if !hit.stale => Step::Done(self.fresh(&policy, &settings, &pending, &hit)),
            stale => Step::Forward(Box::new(Pending { stale, ..pending })),
        }
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
        if unchanged && !current {
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
            inspect(policy, settings, pending, &mut reply);
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
}

/// A response worth passing on: anything but SERVFAIL/REFUSED/NOTIMP.
fn is_usable(response: &Message) -> bool {
    matches!(
        response.metadata.response_code,
        ResponseCode::NoError | ResponseCode::NXDomain
    )
}

/// What the policy says about a name, before any upstream.
enum Decided {
    /// Answered here: a block, a special-use name, a malformed name.
    Local(Reply),
    /// Ask the upstreams, with what an allow rule naming it says (see [`Pending`]).
    Upstream {
        allow_private: bool,
        allow_host: Option<String>,
    },
}

fn decided(
    policy: &Policy,
    settings: &FilterSettings,
    name: &Name,
    query: &Query,
    group: GroupId,
) -> Decided {
    let qname = query.name();
    match policy.decide(name, group) {
        Verdict::Blocked(m) => {
            let list = policy.rules.list(m.origin.list).map(|l| l.name.clone());
            let reason = m.described(&policy.rules).to_string();
            let mut reply = block_reply(settings, qname, query.query_type(), Some(&m), &reason);
            reply.list = list;
            reply.rule = Some(m.rule.clone());
            Decided::Local(reply)
        }
        Verdict::Special(kind) => {
            Decided::Local(special_reply(kind, qname, query.query_type(), settings))
        }
        Verdict::Malformed(e) => Decided::Local(Reply::new(
            ResponseCode::Refused,
            Outcome::Refused,
            format!("malformed name: {e}"),
        )),
        Verdict::Allowed(_) => match policy.allow_for(name, group, None) {
            Some(allow) => Decided::Upstream {
                allow_private: allow.private,
                allow_host: Some(allow.rule.host.clone()),
            },
            None => Decided::Upstream {
                allow_private: false,
                allow_host: None,
            },
        },
        Verdict::Excepted(_) | Verdict::Pass => Decided::Upstream {
            allow_private: false,
            allow_host: None,
        },
    }
}
