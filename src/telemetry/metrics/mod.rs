//! Prometheus metrics (`portcullis_*`), kept in one process-wide [`Metrics`]. Every
//! counter has fixed labels; the admin listener only renders them.
//!
//! The DNS and proxy code record through the free functions here, which do nothing until
//! [`init`] has run (unit tests and the CLI subcommands never pay for metrics). Hot-path
//! counters are pre-created and indexed by small enums, so counting a query is one atomic
//! add with no allocation and no lock. Labels are bounded: query types from a fixed set,
//! list and upstream names from the configuration, proxy reasons from a fixed code set;
//! never a domain or a client address.
//!
//! Each area's families and their registration live in `families`, the label sets in
//! `labels`, the `process_*` families in `process`, and the OpenMetrics-to-Prometheus
//! rewrite of the rendered text in `text`.

mod families;
mod labels;
mod process;
mod text;

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use hickory_proto::rr::RecordType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::sys;
use families::{
    CacheMetrics, ConfigMetrics, DnsMetrics, ListMetrics, ProxyCapacity, ProxyTraffic,
    UpstreamMetrics, unix_now,
};
use labels::{
    DecisionLabels, FaultLabels, GroupLabel, GroupReasonLabels, GuardTripLabels, ListLabel,
    ReasonLabel, UpstreamLabel, query_index,
};
pub use labels::{Outcome, QTYPES};
use process::ProcessMetrics;

/// Every metric of the gate.
pub struct Metrics {
    registry: Registry,
    dns: DnsMetrics,
    upstream: UpstreamMetrics,
    cache: CacheMetrics,
    lists: ListMetrics,
    proxy: ProxyTraffic,
    config: ConfigMetrics,
    capacity: ProxyCapacity,
    errors: Family<FaultLabels, Counter>,
    log_lines_dropped: Counter,
    learn: families::LearnMetrics,
    process: ProcessMetrics,
    /// One scrape at a time (scrape-time gauges are cleared and refilled).
    scrape: Mutex<()>,
}

/// What the scrape-time gauges are set from: the admin server reads it from the lists,
/// the cache and the upstream pool.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub cache_entries: usize,
    /// The tunnel guard's tracked pairs and evictions since the start.
    pub guard_entries: usize,
    pub guard_evictions: u64,
    /// Clients the rate limiter tracks.
    pub rate_clients: usize,
    /// Learn mode's entries and evictions since the start.
    pub learn_entries: usize,
    pub learn_evictions: u64,
    pub lists: Vec<ListGauges>,
    pub upstreams: Vec<UpstreamGauges>,
}

/// One list's gauges.
#[derive(Debug, Clone)]
pub struct ListGauges {
    pub name: String,
    pub entries: u32,
    pub ready: bool,
    /// Unix seconds of the last successful check (`url` lists).
    pub last_success: Option<u64>,
    /// `None` until a download was attempted; then whether the last attempt failed.
    pub failing: Option<bool>,
}

/// One upstream's gauges.
#[derive(Debug, Clone)]
pub struct UpstreamGauges {
    pub name: String,
    pub healthy: bool,
}

/// Moves `counter` up to `total`, a count kept elsewhere (`seen`: its value at the last
/// scrape), so the counter never goes down.
fn follow(counter: &Counter, seen: &std::sync::atomic::AtomicU64, total: u64) {
    let before = seen.swap(total, std::sync::atomic::Ordering::Relaxed);
    counter.inc_by(total.saturating_sub(before));
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        // Registration order is output order: keep it.
        let r = root.sub_registry_with_prefix("portcullis");
        let dns = DnsMetrics::register(r);
        let upstream = UpstreamMetrics::register(r);
        let cache = CacheMetrics::register(r);
        let lists = ListMetrics::register(r);
        let proxy = ProxyTraffic::register(r);
        let config = ConfigMetrics::register(r);
        let capacity = ProxyCapacity::register(r);
        let errors = families::register_errors(r);
        let log_lines_dropped = families::register_log(r);
        let learn = families::register_learn(r);
        let process = ProcessMetrics::register(&mut root);
        families::register_build_info(root.sub_registry_with_prefix("portcullis"));
        Metrics {
            registry: root,
            dns,
            upstream,
            cache,
            lists,
            proxy,
            config,
            capacity,
            errors,
            log_lines_dropped,
            learn,
            process,
            scrape: Mutex::new(()),
        }
    }

    /// Refreshes the scrape-time gauges from `snapshot` and renders the text format.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let _one = sys::lock(&self.scrape);
        self.cache.entries.set(snapshot.cache_entries as i64);
        self.dns.guard_entries.set(snapshot.guard_entries as i64);
        self.dns.rate_clients.set(snapshot.rate_clients as i64);
        follow(
            &self.dns.guard_evictions,
            &self.dns.guard_evictions_seen,
            snapshot.guard_evictions,
        );
        self.learn.entries.set(snapshot.learn_entries as i64);
        follow(
            &self.learn.evictions,
            &self.learn.evictions_seen,
            snapshot.learn_evictions,
        );
        self.lists.set(&snapshot.lists);
        self.upstream.set_health(&snapshot.upstreams);
        self.process.refresh();
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        text::to_prometheus_text(&out)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// Creates the process-wide metrics (idempotent) and returns them.
pub fn init() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

/// The process-wide metrics, when [`init`] has run.
#[inline]
pub fn get() -> Option<&'static Metrics> {
    METRICS.get()
}

/// One answered DNS query; `list` is the deciding list of a blocked one.
#[inline]
pub fn dns_query(qtype: RecordType, outcome: Outcome, list: Option<&str>) {
    let Some(m) = get() else { return };
    m.dns.queries[query_index(qtype, outcome)].inc();
    if outcome == Outcome::Blocked
        && let Some(list) = list
    {
        BLOCKED_BY_LIST.with_borrow_mut(|seen| {
            if let Some((_, counter)) = seen.iter().find(|(name, _)| &**name == list) {
                counter.inc();
                return;
            }
            // A handle shares the family's counter (the family never drops a label). Far
            // more lists than this is rare; start over rather than scan a long list.
            if seen.len() >= 64 {
                seen.clear();
            }
            let counter = m
                .dns
                .blocked
                .get_or_create(&ListLabel {
                    list: list.to_owned(),
                })
                .clone();
            counter.inc();
            seen.push((list.into(), counter));
        });
    }
}

thread_local! {
    /// Each thread's handles on `portcullis_dns_blocked_total{list}`: a blocked query
    /// counts without building a label (an allocation) and locking the family.
    static BLOCKED_BY_LIST: std::cell::RefCell<Vec<(Box<str>, Counter)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Decision log lines dropped (see `telemetry::lines`).
pub fn log_lines_dropped(lines: u64) {
    if let Some(m) = get() {
        m.log_lines_dropped.inc_by(lines);
    }
}

#[inline]
pub fn cache_lookup(hit: bool) {
    if let Some(m) = get() {
        if hit {
            m.cache.hits.inc();
        } else {
            m.cache.misses.inc();
        }
    }
}

/// One request to one upstream, answered (`ok`) or failed.
pub fn upstream_request(upstream: &str, took: Duration, ok: bool) {
    let Some(m) = get() else { return };
    let label = UpstreamLabel {
        upstream: upstream.to_owned(),
    };
    m.upstream
        .duration
        .get_or_create(&label)
        .observe(took.as_secs_f64());
    if !ok {
        m.upstream.errors.get_or_create(&label).inc();
    }
}

/// One proxy decision: `door` is the front door's fixed label (`connect`, `forward`,
/// `routed_tls`, `routed_http`, `proxy`), `reason` a bounded code, never a host or a client.
#[inline]
pub fn proxy_decision(door: &'static str, decision: &'static str, reason: &'static str) {
    if let Some(m) = get() {
        m.proxy
            .decisions
            .get_or_create(&DecisionLabels {
                door,
                decision,
                reason,
            })
            .inc();
    }
}

/// A closed tunnel or forwarded exchange.
pub fn proxy_closed(up: u64, down: u64, took: Duration) {
    if let Some(m) = get() {
        m.proxy.bytes_up.inc_by(up);
        m.proxy.bytes_down.inc_by(down);
        m.proxy.tunnel_duration.observe(took.as_secs_f64());
    }
}

/// Counts an open tunnel until dropped.
pub struct TunnelGuard(bool);

pub fn tunnel_open() -> TunnelGuard {
    match get() {
        Some(m) => {
            m.proxy.active_tunnels.inc();
            TunnelGuard(true)
        }
        None => TunnelGuard(false),
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        if self.0
            && let Some(m) = get()
        {
            m.proxy.active_tunnels.dec();
        }
    }
}

pub fn config_reload(ok: bool) {
    if let Some(m) = get() {
        if ok {
            m.config.reload_success.inc();
            m.config.last_reload_success.set(unix_now());
        } else {
            m.config.reload_failure.inc();
        }
        m.config.last_reload_ok.set(i64::from(ok));
    }
}

/// A client connection to the proxy opened (`true`) or closed.
#[inline]
pub fn proxy_connection(open: bool) {
    if let Some(m) = get() {
        if open {
            m.capacity.connections.inc();
        } else {
            m.capacity.connections.dec();
        }
    }
}

/// The proxy's configured connection limit.
pub fn proxy_max_connections(max: usize) {
    if let Some(m) = get() {
        m.capacity
            .max_connections
            .set(max.min(i64::MAX as usize) as i64);
    }
}

/// Bytes reserved for proxy buffers grew (`delta > 0`) or shrank.
#[inline]
pub fn proxy_buffered(delta: i64) {
    if let Some(m) = get() {
        m.capacity.buffered.inc_by(delta);
    }
}

/// The proxy's configured buffer budget.
pub fn proxy_max_buffered(max: usize) {
    if let Some(m) = get() {
        m.capacity
            .max_buffered
            .set(max.min(i64::MAX as usize) as i64);
    }
}

/// A reservation refused: `reason` is `gate` or `connection`.
pub fn proxy_buffer_refusal(reason: &'static str) {
    if let Some(m) = get() {
        m.capacity
            .buffer_refusals
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

/// Creates every DNS-policy series of `groups` at zero, so that the first refusal or
/// trip is an increase Prometheus sees (a series born at 1 has no `increase()`).
/// `signals`: the tunnel guard's reason values.
pub fn dns_groups(groups: &[String], signals: &[&'static str]) {
    let Some(m) = get() else { return };
    use crate::policy::dns::DnsRefusal;
    for group in groups {
        for refusal in DnsRefusal::ALL {
            drop(m.dns.refusals.get_or_create(&GroupReasonLabels {
                group: group.clone(),
                reason: refusal.as_str(),
            }));
        }
        for refusal in [DnsRefusal::NotAllowed, DnsRefusal::Qtype] {
            drop(m.dns.would_refuse.get_or_create(&GroupReasonLabels {
                group: group.clone(),
                reason: refusal.as_str(),
            }));
        }
        for action in ["log", "block"] {
            for &reason in signals {
                drop(m.dns.guard_trips.get_or_create(&GuardTripLabels {
                    group: group.clone(),
                    action,
                    reason,
                }));
            }
        }
        drop(m.dns.guard_blocked.get_or_create(&GroupLabel {
            group: group.clone(),
        }));
    }
}

/// A query the DNS policy refused.
pub fn dns_refusal(group: &str, refusal: crate::policy::dns::DnsRefusal) {
    if let Some(m) = get() {
        m.dns
            .refusals
            .get_or_create(&GroupReasonLabels {
                group: group.to_owned(),
                reason: refusal.as_str(),
            })
            .inc();
    }
}

/// A query forwarded in report mode that allowlist mode would refuse.
pub fn dns_would_refuse(group: &str, refusal: crate::policy::dns::DnsRefusal) {
    if let Some(m) = get() {
        m.dns
            .would_refuse
            .get_or_create(&GroupReasonLabels {
                group: group.to_owned(),
                reason: refusal.as_str(),
            })
            .inc();
    }
}

/// A tunnel-guard trip: `action` `log` or `block`, `reason` the strongest signal.
pub fn dns_guard_trip(group: &str, action: &'static str, reason: &'static str) {
    if let Some(m) = get() {
        m.dns
            .guard_trips
            .get_or_create(&GuardTripLabels {
                group: group.to_owned(),
                action,
                reason,
            })
            .inc();
    }
}

/// A query refused during a tunnel-guard cool-down.
pub fn dns_guard_blocked(group: &str) {
    if let Some(m) = get() {
        m.dns
            .guard_blocked
            .get_or_create(&GroupLabel {
                group: group.to_owned(),
            })
            .inc();
    }
}

/// A failure at `source` (`dns`, `proxy`, `upstream`, `lists`), counted by its fault.
pub fn error(source: &'static str, fault: crate::error::Fault) {
    if let Some(m) = get() {
        m.errors
            .get_or_create(&FaultLabels {
                source,
                fault: fault.as_str(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_registry_renders_every_family() {
        let m = Metrics::new();
        m.dns.queries[query_index(RecordType::A, Outcome::Blocked)].inc();
        let text = m.render(&Snapshot {
            cache_entries: 3,
            guard_evictions: 5,
            ..Snapshot::default()
        });
        assert!(
            text.contains("portcullis_dns_guard_evictions_total 5"),
            "{text}"
        );
        assert!(
            text.contains(r#"portcullis_dns_queries_total{qtype="A",outcome="blocked"} 1"#),
            "{text}"
        );
        assert!(text.contains("portcullis_cache_entries 3"), "{text}");
        assert!(text.contains("portcullis_build_info{version="), "{text}");
        assert!(
            text.contains("# TYPE portcullis_dns_queries_total counter"),
            "{text}"
        );
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
    }
}
