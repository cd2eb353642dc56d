//! The metric families of each area, and where each registers them. Registration order
//! is the order of the families in `/metrics`: [`super::Metrics::new`] calls these in
//! that order.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::labels::{
    DecisionLabels, DirectionLabel, FaultLabels, GroupLabel, GroupReasonLabels, GuardTripLabels,
    ListLabel, OUTCOMES, QTYPES, QueryLabels, ReasonLabel, ResultLabel, UpstreamLabel,
    VersionLabel,
};
use super::{ListGauges, UpstreamGauges};

/// Answered queries (`portcullis_dns_*`).
pub(super) struct DnsMetrics {
    /// `qtype_index * OUTCOMES.len() + outcome`: pre-created children of `dns_queries_total`.
    pub queries: Vec<Counter>,
    pub blocked: Family<ListLabel, Counter>,
    pub refusals: Family<GroupReasonLabels, Counter>,
    pub would_refuse: Family<GroupReasonLabels, Counter>,
    pub guard_trips: Family<GuardTripLabels, Counter>,
    pub guard_blocked: Family<GroupLabel, Counter>,
    pub guard_entries: Gauge,
    pub guard_evictions: Counter,
    /// The guard's eviction count at the last scrape (the counter follows it).
    pub guard_evictions_seen: std::sync::atomic::AtomicU64,
    pub rate_clients: Gauge,
}

impl DnsMetrics {
    pub fn register(r: &mut Registry) -> Self {
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
        let refusals = Family::<GroupReasonLabels, Counter>::default();
        r.register(
            "dns_refusals",
            "DNS queries the DNS policy refused, by client group and reason (not_allowed: allowlist mode; qtype; rate_limited; tunnel: the tunnel guard's block)",
            refusals.clone(),
        );
        let would_refuse = Family::<GroupReasonLabels, Counter>::default();
        r.register(
            "dns_would_refuse",
            "DNS queries forwarded in report mode that allowlist mode would refuse, by client group and reason",
            would_refuse.clone(),
        );
        let guard_trips = Family::<GuardTripLabels, Counter>::default();
        r.register(
            "dns_guard_trips",
            "Client and registered-domain pairs that crossed the tunnel guard's budget (once per cool-down), by group, action and strongest signal",
            guard_trips.clone(),
        );
        let guard_blocked = Family::<GroupLabel, Counter>::default();
        r.register(
            "dns_guard_blocked",
            "DNS queries refused by the tunnel guard during a block cool-down, by client group",
            guard_blocked.clone(),
        );
        let guard_entries = Gauge::default();
        r.register(
            "dns_guard_entries",
            "Client and registered-domain pairs the tunnel guard tracks (bounded by [dns.guard] max_entries)",
            guard_entries.clone(),
        );
        let guard_evictions = Counter::default();
        r.register(
            "dns_guard_evictions",
            "Tunnel guard pairs dropped to stay within max_entries",
            guard_evictions.clone(),
        );
        let rate_clients = Gauge::default();
        r.register(
            "dns_rate_limit_clients",
            "Clients the DNS rate limiter tracks (bounded by [dns.rate_limit] max_clients)",
            rate_clients.clone(),
        );
        DnsMetrics {
            queries,
            blocked,
            refusals,
            would_refuse,
            guard_trips,
            guard_blocked,
            guard_entries,
            guard_evictions,
            guard_evictions_seen: std::sync::atomic::AtomicU64::new(0),
            rate_clients,
        }
    }
}

fn upstream_histogram() -> Histogram {
    // 1 ms .. ~4 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 13))
}

/// Requests to upstream resolvers and their health (`portcullis_upstream_*`).
pub(super) struct UpstreamMetrics {
    pub duration: Family<UpstreamLabel, Histogram, fn() -> Histogram>,
    pub errors: Family<UpstreamLabel, Counter>,
    pub healthy: Family<UpstreamLabel, Gauge>,
}

impl UpstreamMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let duration: Family<UpstreamLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(upstream_histogram);
        r.register_with_unit(
            "upstream_request_duration",
            "Time of one request to one upstream resolver (answers and failures)",
            Unit::Seconds,
            duration.clone(),
        );
        let errors = Family::<UpstreamLabel, Counter>::default();
        r.register(
            "upstream_errors",
            "Failed requests to an upstream resolver (timeouts, network and protocol errors)",
            errors.clone(),
        );
        let healthy = Family::<UpstreamLabel, Gauge>::default();
        r.register(
            "upstream_healthy",
            "1 when the upstream is in rotation, 0 while it is taken out after failures",
            healthy.clone(),
        );
        UpstreamMetrics {
            duration,
            errors,
            healthy,
        }
    }

    /// Scrape time: one `upstream_healthy` child per configured upstream.
    pub fn set_health(&self, upstreams: &[UpstreamGauges]) {
        self.healthy.clear();
        for upstream in upstreams {
            self.healthy
                .get_or_create(&UpstreamLabel {
                    upstream: upstream.name.clone(),
                })
                .set(i64::from(upstream.healthy));
        }
    }
}

/// The DNS answer cache (`portcullis_cache_*`).
pub(super) struct CacheMetrics {
    pub entries: Gauge,
    pub hits: Counter,
    pub misses: Counter,
}

impl CacheMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let entries = Gauge::default();
        r.register(
            "cache_entries",
            "Answers held in the DNS cache",
            entries.clone(),
        );
        let hits = Counter::default();
        r.register(
            "cache_hits",
            "DNS cache lookups answered by a fresh entry",
            hits.clone(),
        );
        let misses = Counter::default();
        r.register(
            "cache_misses",
            "DNS cache lookups that found no fresh entry",
            misses.clone(),
        );
        CacheMetrics {
            entries,
            hits,
            misses,
        }
    }
}

/// The rule lists, set at scrape time (`portcullis_list_*`).
pub(super) struct ListMetrics {
    pub rules: Family<ListLabel, Gauge>,
    pub ready: Family<ListLabel, Gauge>,
    pub last_success: Family<ListLabel, Gauge>,
    pub failing: Family<ListLabel, Gauge>,
}

impl ListMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let rules = Family::<ListLabel, Gauge>::default();
        r.register("list_rules", "Rules loaded from each list", rules.clone());
        let ready = Family::<ListLabel, Gauge>::default();
        r.register(
            "list_ready",
            "1 when something of the list is served (read, downloaded or cached)",
            ready.clone(),
        );
        let last_success = Family::<ListLabel, Gauge>::default();
        r.register(
            "list_last_success_timestamp_seconds",
            "Unix time of the last successful download check of a url list",
            last_success.clone(),
        );
        let failing = Family::<ListLabel, Gauge>::default();
        r.register(
            "list_failing",
            "1 when the last download attempt of a url list failed or was rejected",
            failing.clone(),
        );
        ListMetrics {
            rules,
            ready,
            last_success,
            failing,
        }
    }

    /// Scrape time: the children of exactly the configured lists.
    pub fn set(&self, lists: &[ListGauges]) {
        self.rules.clear();
        self.ready.clear();
        self.last_success.clear();
        self.failing.clear();
        for list in lists {
            let label = ListLabel {
                list: list.name.clone(),
            };
            self.rules
                .get_or_create(&label)
                .set(i64::from(list.entries));
            self.ready.get_or_create(&label).set(i64::from(list.ready));
            if let Some(when) = list.last_success {
                self.last_success.get_or_create(&label).set(when as i64);
            }
            if let Some(failing) = list.failing {
                self.failing.get_or_create(&label).set(i64::from(failing));
            }
        }
    }
}

fn tunnel_histogram() -> Histogram {
    // 0.1 s .. ~1.8 h.
    Histogram::new(exponential_buckets(0.1, 3.0, 11))
}

/// What the proxy decided and relayed: decisions, tunnels, bytes.
pub(super) struct ProxyTraffic {
    pub decisions: Family<DecisionLabels, Counter>,
    pub active_tunnels: Gauge,
    pub bytes_up: Counter,
    pub bytes_down: Counter,
    pub tunnel_duration: Histogram,
}

impl ProxyTraffic {
    pub fn register(r: &mut Registry) -> Self {
        let decisions = Family::<DecisionLabels, Counter>::default();
        r.register(
            "proxy_decisions",
            "Egress proxy decisions, by front door, decision and reason code",
            decisions.clone(),
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
        ProxyTraffic {
            decisions,
            active_tunnels,
            bytes_up,
            bytes_down,
            tunnel_duration,
        }
    }
}

/// Configuration reloads (`portcullis_config_*`).
pub(super) struct ConfigMetrics {
    pub reload_success: Counter,
    pub reload_failure: Counter,
    pub last_reload_ok: Gauge,
    pub last_reload_success: Gauge,
}

impl ConfigMetrics {
    pub fn register(r: &mut Registry) -> Self {
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
        ConfigMetrics {
            reload_success,
            reload_failure,
            last_reload_ok,
            last_reload_success,
        }
    }
}

/// The proxy's connections and buffer memory, against their configured limits.
pub(super) struct ProxyCapacity {
    pub connections: Gauge,
    pub max_connections: Gauge,
    pub buffered: Gauge,
    pub max_buffered: Gauge,
    pub buffer_refusals: Family<ReasonLabel, Counter>,
}

impl ProxyCapacity {
    pub fn register(r: &mut Registry) -> Self {
        let connections = Gauge::default();
        r.register(
            "proxy_connections",
            "Client connections to the proxy open now (tunnels, requests, connections waiting to send one)",
            connections.clone(),
        );
        let max_connections = Gauge::default();
        r.register(
            "proxy_max_connections",
            "The proxy's limit on client connections at once (proxy.max_connections)",
            max_connections.clone(),
        );
        let buffered = Gauge::default();
        r.register_with_unit(
            "proxy_buffered",
            "Memory reserved now for proxy request and response heads and bodies",
            Unit::Bytes,
            buffered.clone(),
        );
        let max_buffered = Gauge::default();
        r.register_with_unit(
            "proxy_max_buffered",
            "The proxy's budget for heads and bodies over all connections (proxy.max_buffered_bytes)",
            Unit::Bytes,
            max_buffered.clone(),
        );
        let buffer_refusals = Family::<ReasonLabel, Counter>::default();
        for reason in ["gate", "connection"] {
            drop(buffer_refusals.get_or_create(&ReasonLabel { reason }));
        }
        r.register(
            "proxy_buffer_refusals",
            "Proxy connections refused for memory: gate = the budget over all connections was spent, connection = one connection's cap",
            buffer_refusals.clone(),
        );
        ProxyCapacity {
            connections,
            max_connections,
            buffered,
            max_buffered,
            buffer_refusals,
        }
    }
}

/// `portcullis_errors_total`: failures by source and fault.
pub(super) fn register_errors(r: &mut Registry) -> Family<FaultLabels, Counter> {
    let errors = Family::<FaultLabels, Counter>::default();
    r.register(
        "errors",
        "Failures by where they happened (dns, proxy, upstream, lists) and whose fault they were (client, upstream, internal)",
        errors.clone(),
    );
    errors
}

/// `portcullis_log_lines_dropped_total`: decision lines the log writer dropped because
/// stderr took them slower than they came (or refused them).
pub(super) fn register_log(r: &mut Registry) -> Counter {
    let dropped = Counter::default();
    r.register(
        "log_lines_dropped",
        "Decision log lines dropped, not written: the queue to stderr was full (its reader or disk slower than the queries) or the write failed",
        dropped.clone(),
    );
    dropped
}

/// Learn mode's table (`portcullis_learn_*`), set at scrape time.
pub(super) struct LearnMetrics {
    pub entries: Gauge,
    pub evictions: Counter,
    /// The learner's eviction count at the last scrape (the counter follows it).
    pub evictions_seen: std::sync::atomic::AtomicU64,
}

pub(super) fn register_learn(r: &mut Registry) -> LearnMetrics {
    let entries = Gauge::default();
    r.register(
        "learn_entries",
        "Destinations learn mode keeps (group and name pairs report mode saw; bounded by [learn] max_entries)",
        entries.clone(),
    );
    let evictions = Counter::default();
    r.register(
        "learn_evictions",
        "Learned destinations dropped, least recently seen first, to stay within [learn] max_entries",
        evictions.clone(),
    );
    LearnMetrics {
        entries,
        evictions,
        evictions_seen: std::sync::atomic::AtomicU64::new(0),
    }
}

/// `portcullis_build_info`: a gauge fixed at 1 rather than an OpenMetrics `info`, which
/// the Prometheus text format (and `promtool check metrics`) does not know.
pub(super) fn register_build_info(r: &mut Registry) {
    let build_info = Family::<VersionLabel, Gauge>::default();
    build_info
        .get_or_create(&VersionLabel {
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
    r.register("build_info", "Build information", build_info);
}

pub(super) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
