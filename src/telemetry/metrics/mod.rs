//! Prometheus metrics (`portcullis_*`), kept in one process-wide [`Metrics`]. Every
//! counter has fixed labels; the admin listener only renders them.
//!
//! The DNS and proxy code record through the free functions here, which do nothing until
//! [`init`] has run (unit tests and the CLI subcommands never pay for metrics). Hot-path
//! counters are pre-created and indexed by small enums, so counting a query is one atomic
//! add with no allocation and no lock. Labels are bounded: query types from a fixed set,
//! list and upstream names from the configuration, proxy reasons from a fixed code set;
//! never a domain or a client address.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use hickory_proto::rr::RecordType;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::sys;

/// What happened to a query: the `outcome` label of `portcullis_dns_queries_total` and
/// of the decision log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A deny rule matched the name or a CNAME target, or an answer address was on an IP list.
    Blocked,
    /// Answered from upstream (fresh).
    Forwarded,
    /// Answered from the cache.
    Cached,
    /// Answered from the cache past its TTL because no upstream answered.
    Stale,
    /// Answered locally: special-use names.
    Local,
    /// Refused: malformed name, rebinding answer, unsupported query.
    Refused,
    /// SERVFAIL: no upstream answered, or overload.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Blocked => "blocked",
            Outcome::Forwarded => "forwarded",
            Outcome::Cached => "cached",
            Outcome::Stale => "stale",
            Outcome::Local => "local",
            Outcome::Refused => "refused",
            Outcome::Error => "error",
        }
    }
}

/// Query types with their own label value; every other type counts as `other`.
pub const QTYPES: [&str; 12] = [
    "A", "AAAA", "CNAME", "MX", "TXT", "HTTPS", "SVCB", "PTR", "SRV", "NS", "SOA", "other",
];

/// Every DNS outcome, in `Outcome as usize` order.
const OUTCOMES: [Outcome; 7] = [
    Outcome::Blocked,
    Outcome::Forwarded,
    Outcome::Cached,
    Outcome::Stale,
    Outcome::Local,
    Outcome::Refused,
    Outcome::Error,
];

fn qtype_index(qtype: RecordType) -> usize {
    match qtype {
        RecordType::A => 0,
        RecordType::AAAA => 1,
        RecordType::CNAME => 2,
        RecordType::MX => 3,
        RecordType::TXT => 4,
        RecordType::HTTPS => 5,
        RecordType::SVCB => 6,
        RecordType::PTR => 7,
        RecordType::SRV => 8,
        RecordType::NS => 9,
        RecordType::SOA => 10,
        _ => 11,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    qtype: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListLabel {
    list: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FaultLabels {
    source: &'static str,
    fault: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

fn upstream_histogram() -> Histogram {
    // 1 ms .. ~4 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 13))
}

fn tunnel_histogram() -> Histogram {
    // 0.1 s .. ~1.8 h.
    Histogram::new(exponential_buckets(0.1, 3.0, 11))
}

/// Every metric of the gate.
pub struct Metrics {
    registry: Registry,
    /// `qtype_index * OUTCOMES.len() + outcome`: pre-created children of `dns_queries_total`.
    queries: Vec<Counter>,
    blocked: Family<ListLabel, Counter>,
    upstream_duration: Family<UpstreamLabel, Histogram, fn() -> Histogram>,
    upstream_errors: Family<UpstreamLabel, Counter>,
    upstream_healthy: Family<UpstreamLabel, Gauge>,
    cache_entries: Gauge,
    cache_hits: Counter,
    cache_misses: Counter,
    list_rules: Family<ListLabel, Gauge>,
    list_ready: Family<ListLabel, Gauge>,
    list_last_success: Family<ListLabel, Gauge>,
    list_failing: Family<ListLabel, Gauge>,
    proxy_decisions: Family<DecisionLabels, Counter>,
    active_tunnels: Gauge,
    bytes_up: Counter,
    bytes_down: Counter,
    tunnel_duration: Histogram,
    reload_success: Counter,
    reload_failure: Counter,
    last_reload_ok: Gauge,
    last_reload_success: Gauge,
    proxy_connections: Gauge,
    proxy_max_connections: Gauge,
    proxy_buffered: Gauge,
    proxy_max_buffered: Gauge,
    proxy_buffer_refusals: Family<ReasonLabel, Counter>,
    errors: Family<FaultLabels, Counter>,
    process: ProcessMetrics,
    /// One scrape at a time (scrape-time gauges are cleared and refilled).
    scrape: Mutex<()>,
}

/// What the scrape-time gauges are set from: the admin server reads it from the lists,
/// the cache and the upstream pool.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub cache_entries: usize,
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

impl Metrics {
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        let r = root.sub_registry_with_prefix("portcullis");

        let dns_queries = Family::<QueryLabels, Counter>::default();
        let mut queries = Vec::with_capacity(QTYPES.len() * OUTCOMES.len());
        for qtype in QTYPES {
            for outcome in OUTCOMES {
                queries.push(
                    dns_queries
                        .get_or_create(&QueryLabels {
                            qtype,
                            outcome: outcome.as_str(),
                        })
                        .clone(),
                );
            }
        }
        r.register(
            "dns_queries",
            "DNS queries answered, by query type and outcome",
            dns_queries,
        );
        let blocked = Family::<ListLabel, Counter>::default();
        r.register(
            "dns_blocked",
            "DNS queries blocked, by the list whose rule blocked them",
            blocked.clone(),
        );
        let upstream_duration: Family<UpstreamLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(upstream_histogram);
        r.register_with_unit(
            "upstream_request_duration",
            "Time of one request to one upstream resolver (answers and failures)",
            Unit::Seconds,
            upstream_duration.clone(),
        );
        let upstream_errors = Family::<UpstreamLabel, Counter>::default();
        r.register(
            "upstream_errors",
            "Failed requests to an upstream resolver (timeouts, network and protocol errors)",
            upstream_errors.clone(),
        );
        let upstream_healthy = Family::<UpstreamLabel, Gauge>::default();
        r.register(
            "upstream_healthy",
            "1 when the upstream is in rotation, 0 while it is taken out after failures",
            upstream_healthy.clone(),
        );
        let cache_entries = Gauge::default();
        r.register(
            "cache_entries",
            "Answers held in the DNS cache",
            cache_entries.clone(),
        );
        let cache_hits = Counter::default();
        r.register(
            "cache_hits",
            "DNS cache lookups answered by a fresh entry",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        r.register(
            "cache_misses",
            "DNS cache lookups that found no fresh entry",
            cache_misses.clone(),
        );
        let list_rules = Family::<ListLabel, Gauge>::default();
        r.register(
            "list_rules",
            "Rules loaded from each list",
            list_rules.clone(),
        );
        let list_ready = Family::<ListLabel, Gauge>::default();
        r.register(
            "list_ready",
            "1 when something of the list is served (read, downloaded or cached)",
            list_ready.clone(),
        );
        let list_last_success = Family::<ListLabel, Gauge>::default();
        r.register(
            "list_last_success_timestamp_seconds",
            "Unix time of the last successful download check of a url list",
            list_last_success.clone(),
        );
        let list_failing = Family::<ListLabel, Gauge>::default();
        r.register(
            "list_failing",
            "1 when the last download attempt of a url list failed or was rejected",
            list_failing.clone(),
        );
        let proxy_decisions = Family::<DecisionLabels, Counter>::default();
        r.register(
            "proxy_decisions",
            "Egress proxy decisions, by decision and reason code",
            proxy_decisions.clone(),
        );
        let active_tunnels = Gauge::default();
        r.register(
            "proxy_active_tunnels",
            "CONNECT tunnels open now",
            active_tunnels.clone(),
        );
        let bytes = Family::<DirectionLabel, Counter>::default();
        let bytes_up = bytes
            .get_or_create(&DirectionLabel { direction: "up" })
            .clone();
        let bytes_down = bytes
            .get_or_create(&DirectionLabel { direction: "down" })
            .clone();
        r.register(
            "proxy_bytes",
            "Bytes relayed by the proxy: up = client to origin, down = origin to client",
            bytes,
        );
        let tunnel_duration = tunnel_histogram();
        r.register_with_unit(
            "proxy_tunnel_duration",
            "Life of closed proxy tunnels and forwarded exchanges",
            Unit::Seconds,
            tunnel_duration.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        let reload_success = reloads
            .get_or_create(&ResultLabel { result: "success" })
            .clone();
        let reload_failure = reloads
            .get_or_create(&ResultLabel { result: "failure" })
            .clone();
        r.register(
            "config_reloads",
            "Configuration reloads (SIGHUP or a watched file change), by result",
            reloads,
        );
        let last_reload_ok = Gauge::default();
        last_reload_ok.set(1);
        r.register(
            "config_last_reload_successful",
            "1 when the last reload was applied (or none was tried), 0 when it was refused",
            last_reload_ok.clone(),
        );
        let last_reload_success = Gauge::default();
        last_reload_success.set(unix_now());
        r.register(
            "config_last_reload_success_timestamp_seconds",
            "Unix time the running configuration was loaded (start or last applied reload)",
            last_reload_success.clone(),
        );
        let proxy_connections = Gauge::default();
        r.register(
            "proxy_connections",
            "Client connections to the proxy open now (tunnels, requests, connections waiting to send one)",
            proxy_connections.clone(),
        );
        let proxy_max_connections = Gauge::default();
        r.register(
            "proxy_max_connections",
            "The proxy's limit on client connections at once (proxy.max_connections)",
            proxy_max_connections.clone(),
        );
        let proxy_buffered = Gauge::default();
        r.register_with_unit(
            "proxy_buffered",
            "Memory reserved now for proxy request and response heads and bodies",
            Unit::Bytes,
            proxy_buffered.clone(),
        );
        let proxy_max_buffered = Gauge::default();
        r.register_with_unit(
            "proxy_max_buffered",
            "The proxy's budget for heads and bodies over all connections (proxy.max_buffered_bytes)",
            Unit::Bytes,
            proxy_max_buffered.clone(),
        );
        let proxy_buffer_refusals = Family::<ReasonLabel, Counter>::default();
        for reason in ["gate", "connection"] {
            drop(proxy_buffer_refusals.get_or_create(&ReasonLabel { reason }));
        }
        r.register(
            "proxy_buffer_refusals",
            "Proxy connections refused for memory: gate = the budget over all connections was spent, connection = one connection's cap",
            proxy_buffer_refusals.clone(),
        );
        let errors = Family::<FaultLabels, Counter>::default();
        r.register(
            "errors",
            "Failures by where they happened (dns, proxy, upstream, lists) and whose fault they were (client, upstream, internal)",
            errors.clone(),
        );
        let process = ProcessMetrics::register(&mut root);
        let r = root.sub_registry_with_prefix("portcullis");
        // A gauge fixed at 1 rather than an OpenMetrics `info`, which the Prometheus text
        // format (and `promtool check metrics`) does not know.
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        r.register("build_info", "Build information", build_info);
        Metrics {
            registry: root,
            queries,
            blocked,
            upstream_duration,
            upstream_errors,
            upstream_healthy,
            cache_entries,
            cache_hits,
            cache_misses,
            list_rules,
            list_ready,
            list_last_success,
            list_failing,
            proxy_decisions,
            active_tunnels,
            bytes_up,
            bytes_down,
            tunnel_duration,
            reload_success,
            reload_failure,
            last_reload_ok,
            last_reload_success,
            proxy_connections,
            proxy_max_connections,
            proxy_buffered,
            proxy_max_buffered,
            proxy_buffer_refusals,
            errors,
            process,
            scrape: Mutex::new(()),
        }
    }

    /// Refreshes the scrape-time gauges from `snapshot` and renders the text format.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let _one = sys::lock(&self.scrape);
        self.cache_entries.set(snapshot.cache_entries as i64);
        self.list_rules.clear();
        self.list_ready.clear();
        self.list_last_success.clear();
        self.list_failing.clear();
        for list in &snapshot.lists {
            let label = ListLabel {
                list: list.name.clone(),
            };
            self.list_rules
                .get_or_create(&label)
                .set(i64::from(list.entries));
            self.list_ready
                .get_or_create(&label)
                .set(i64::from(list.ready));
            if let Some(when) = list.last_success {
                self.list_last_success
                    .get_or_create(&label)
                    .set(when as i64);
            }
            if let Some(failing) = list.failing {
                self.list_failing
                    .get_or_create(&label)
                    .set(i64::from(failing));
            }
        }
        self.upstream_healthy.clear();
        for upstream in &snapshot.upstreams {
            self.upstream_healthy
                .get_or_create(&UpstreamLabel {
                    upstream: upstream.name.clone(),
                })
                .set(i64::from(upstream.healthy));
        }
        self.process.refresh();
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        to_prometheus_text(&out)
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The standard `process_*` metrics of Prometheus client libraries, read from `/proc` at
/// scrape time (Linux; elsewhere they stay 0).
struct ProcessMetrics {
    cpu_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    resident_bytes: Gauge,
    virtual_bytes: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time: Gauge,
}

impl ProcessMetrics {
    fn register(root: &mut Registry) -> ProcessMetrics {
        let r = root.sub_registry_with_prefix("process");
        let m = ProcessMetrics {
            cpu_seconds: Counter::default(),
            resident_bytes: Gauge::default(),
            virtual_bytes: Gauge::default(),
            open_fds: Gauge::default(),
            max_fds: Gauge::default(),
            start_time: Gauge::default(),
        };
        r.register_with_unit(
            "cpu",
            "Total user and system CPU time spent in seconds",
            Unit::Seconds,
            m.cpu_seconds.clone(),
        );
        r.register_with_unit(
            "resident_memory",
            "Resident memory size in bytes",
            Unit::Bytes,
            m.resident_bytes.clone(),
        );
        r.register_with_unit(
            "virtual_memory",
            "Virtual memory size in bytes",
            Unit::Bytes,
            m.virtual_bytes.clone(),
        );
        r.register(
            "open_fds",
            "Number of open file descriptors",
            m.open_fds.clone(),
        );
        r.register(
            "max_fds",
            "Maximum number of open file descriptors",
            m.max_fds.clone(),
        );
        r.register_with_unit(
            "start_time",
            "Start time of the process since unix epoch in seconds",
            Unit::Seconds,
            m.start_time.clone(),
        );
        m
    }

    fn refresh(&self) {
        // SAFETY: sysconf has no preconditions.
        let (tick, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
            // Fields after the command name, which may hold spaces: state is field 3.
            && let Some((_, rest)) = stat.rsplit_once(')')
        {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| {
                f.get(i - 3)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            if tick > 0 {
                let cpu = (num(14) + num(15)) as f64 / tick as f64;
                let seen = self.cpu_seconds.get();
                if cpu > seen {
                    self.cpu_seconds.inc_by(cpu - seen);
                }
                if let Some(boot) = boot_time() {
                    self.start_time.set(boot + (num(22) / tick as u64) as i64);
                }
            }
            self.virtual_bytes.set(num(23) as i64);
            self.resident_bytes.set(num(24) as i64 * page.max(0));
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(dir.count() as i64);
        }
        if let Some(limit) = sys::open_file_limit() {
            self.max_fds.set(limit.min(i64::MAX as u64) as i64);
        }
    }
}

/// Boot time (Unix seconds) from `/proc/stat`.
fn boot_time() -> Option<i64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

/// Rewrites prometheus-client's OpenMetrics output as the Prometheus text format 0.0.4,
/// which every scraper and `promtool check metrics` read: counters' HELP and TYPE lines
/// name the `_total` series, and the `# UNIT` and `# EOF` lines go.
fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 256);
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
        if let Some((prefix, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) && !name.ends_with("_total") {
                out.push_str(prefix);
                out.push_str(name);
                out.push_str("_total ");
                out.push_str(tail);
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
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
    m.queries[qtype_index(qtype) * OUTCOMES.len() + outcome as usize].inc();
    if outcome == Outcome::Blocked
        && let Some(list) = list
    {
        m.blocked
            .get_or_create(&ListLabel {
                list: list.to_owned(),
            })
            .inc();
    }
}

#[inline]
pub fn cache_lookup(hit: bool) {
    if let Some(m) = get() {
        if hit {
            m.cache_hits.inc();
        } else {
            m.cache_misses.inc();
        }
    }
}

/// One request to one upstream, answered (`ok`) or failed.
pub fn upstream_request(upstream: &str, took: Duration, ok: bool) {
    let Some(m) = get() else { return };
    let label = UpstreamLabel {
        upstream: upstream.to_owned(),
    };
    m.upstream_duration
        .get_or_create(&label)
        .observe(took.as_secs_f64());
    if !ok {
        m.upstream_errors.get_or_create(&label).inc();
    }
}

/// One proxy decision: `reason` is a bounded code, never a host or a client.
#[inline]
pub fn proxy_decision(decision: &'static str, reason: &'static str) {
    if let Some(m) = get() {
        m.proxy_decisions
            .get_or_create(&DecisionLabels { decision, reason })
            .inc();
    }
}

/// A closed tunnel or forwarded exchange.
pub fn proxy_closed(up: u64, down: u64, took: Duration) {
    if let Some(m) = get() {
        m.bytes_up.inc_by(up);
        m.bytes_down.inc_by(down);
        m.tunnel_duration.observe(took.as_secs_f64());
    }
}

/// Counts an open tunnel until dropped.
pub struct TunnelGuard(bool);

pub fn tunnel_open() -> TunnelGuard {
    match get() {
        Some(m) => {
            m.active_tunnels.inc();
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
            m.active_tunnels.dec();
        }
    }
}

pub fn config_reload(ok: bool) {
    if let Some(m) = get() {
        if ok {
            m.reload_success.inc();
            m.last_reload_success.set(unix_now());
        } else {
            m.reload_failure.inc();
        }
        m.last_reload_ok.set(i64::from(ok));
    }
}

/// A client connection to the proxy opened (`true`) or closed.
#[inline]
pub fn proxy_connection(open: bool) {
    if let Some(m) = get() {
        if open {
            m.proxy_connections.inc();
        } else {
            m.proxy_connections.dec();
        }
    }
}

/// The proxy's configured connection limit.
pub fn proxy_max_connections(max: usize) {
    if let Some(m) = get() {
        m.proxy_max_connections
            .set(max.min(i64::MAX as usize) as i64);
    }
}

/// Bytes reserved for proxy buffers grew (`delta > 0`) or shrank.
#[inline]
pub fn proxy_buffered(delta: i64) {
    if let Some(m) = get() {
        m.proxy_buffered.inc_by(delta);
    }
}

/// The proxy's configured buffer budget.
pub fn proxy_max_buffered(max: usize) {
    if let Some(m) = get() {
        m.proxy_max_buffered.set(max.min(i64::MAX as usize) as i64);
    }
}

/// A reservation refused: `reason` is `gate` or `connection`.
pub fn proxy_buffer_refusal(reason: &'static str) {
    if let Some(m) = get() {
        m.proxy_buffer_refusals
            .get_or_create(&ReasonLabel { reason })
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
    fn outcome_order_matches_the_index() {
        for (i, outcome) in OUTCOMES.iter().enumerate() {
            assert_eq!(*outcome as usize, i);
        }
    }

    #[test]
    fn a_fresh_registry_renders_every_family() {
        let m = Metrics::new();
        m.queries[qtype_index(RecordType::A) * OUTCOMES.len() + Outcome::Blocked as usize].inc();
        let text = m.render(&Snapshot {
            cache_entries: 3,
            lists: Vec::new(),
            upstreams: Vec::new(),
        });
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
