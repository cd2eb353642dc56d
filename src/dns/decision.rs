//! The decision line and metrics count of every DNS query, whichever listener
//! answered it.

use std::net::SocketAddr;
use std::time::Instant;

use super::filter::{Outcome, Reply};
use crate::policy::dns::DnsRefusal;

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
        duration_us = d.started.elapsed().as_micros() as u64,
        "dns decision"
    );
}
