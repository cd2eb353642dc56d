//! The upstream resolver pool: where allowed queries go to be answered.
//!
//! Each upstream keeps one lazily opened connection (DoH over HTTP/2, DoT, TCP; plain UDP keeps
//! an exchange plus a TCP connection for truncated answers). Any error or timeout on a connection
//! drops it, so the next query reconnects: hickory itself keeps using broken DoH connections
//! (hickory-dns#3837). A *reused* connection that fails with something other than a timeout gets
//! one fresh connection before the query counts as failed, because peers close idle connections
//! and DNS queries are idempotent (the same fix hickory-dns#3711 makes in hickory's resolver).
//!
//! Health: after `failure_threshold` consecutive failures an upstream leaves rotation; a
//! background task probes it (`. NS`) after a jittered, doubling back-off and only a successful
//! probe (or a successful real query while nothing was healthy) brings it back.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hickory_net::NetError;
use hickory_net::h2::HttpsClientStream;
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::tls::tls_client_connect;
use hickory_net::udp::UdpClientStream;
use hickory_net::xfer::{DnsExchange, DnsHandle, DnsMultiplexer, DnsRequestSender};
use hickory_proto::op::{DnsRequest, DnsRequestOptions, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

pub use crate::config::upstream::{Strategy, UpstreamSpec};
use crate::error::{Fault, HasFault};

/// When an upstream leaves rotation and how soon it is probed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive failures that take an upstream out of rotation.
    pub failure_threshold: u32,
    /// Back-off before the first probe; doubles after each failed probe.
    pub backoff_initial: Duration,
    /// Ceiling for the back-off.
    pub backoff_max: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// A snapshot of one upstream's health, for the health endpoint and metrics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UpstreamHealth {
    pub name: String,
    /// In rotation (not backed off).
    pub healthy: bool,
    pub consecutive_failures: u32,
    /// The most recent failure, kept after recovery for diagnosis.
    pub last_error: Option<String>,
}

/// Why a query could not be answered, or why the pool could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("invalid upstream {url:?}: {reason}")]
    BadSpec { url: String, reason: String },
    #[error("no upstream resolvers configured")]
    NoUpstreams,
    #[error("a query must carry exactly one question, this one has {0}")]
    BadQuery(usize),
    #[error("upstream {upstream}: no answer within {after:?}")]
    Timeout { upstream: String, after: Duration },
    #[error("upstream {upstream}: {reason}")]
    Transport { upstream: String, reason: String },
    #[error("upstream {upstream} sent an unusable response: {reason}")]
    BadResponse { upstream: String, reason: String },
    #[error("all upstreams failed: {}", join_errors(.errors))]
    AllFailed { errors: Vec<UpstreamError> },
}

fn join_errors(errors: &[UpstreamError]) -> String {
    let parts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    parts.join("; ")
}

impl UpstreamError {
    /// True if the failure (or every failure, for `AllFailed`) was a timeout.
    pub fn is_timeout(&self) -> bool {
        match self {
            UpstreamError::Timeout { .. } => true,
            UpstreamError::AllFailed { errors } => {
                !errors.is_empty() && errors.iter().all(UpstreamError::is_timeout)
            }
            _ => false,
        }
    }
}

impl HasFault for UpstreamError {
    fn fault(&self) -> Fault {
        match self {
            // Configuration is ours to get right.
            UpstreamError::BadSpec { .. } | UpstreamError::NoUpstreams => Fault::Internal,
            UpstreamError::BadQuery(_) => Fault::Client,
            UpstreamError::Timeout { .. }
            | UpstreamError::Transport { .. }
            | UpstreamError::BadResponse { .. }
            | UpstreamError::AllFailed { .. } => Fault::Upstream,
        }
    }
}

type Provider = TokioRuntimeProvider;

/// Cap on concurrent queries over one multiplexed TCP/DoT connection. hickory's multiplexer
/// answers `Busy` beyond its own limit (set to twice this), which we would read as a failure.
const STREAM_INFLIGHT: usize = 32;

/// Hard ceiling on a per-upstream timeout, so a typo cannot park queries for hours.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// Ids for connections and probe tasks; never 0.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The upstream resolver pool. Cheap to share behind an `Arc`.
pub struct UpstreamPool {
    upstreams: Vec<Arc<Upstream>>,
    strategy: Strategy,
}

impl fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.upstreams.iter().map(|u| u.name.as_str()).collect();
        f.debug_struct("UpstreamPool")
            .field("strategy", &self.strategy)
            .field("upstreams", &names)
            .finish()
    }
}

impl UpstreamPool {
    /// Validates every spec and loads CA files. No network I/O: connections open on first use.
    pub fn new(
        specs: &[UpstreamSpec],
        strategy: Strategy,
        default_timeout: Duration,
    ) -> Result<Self, UpstreamError> {
        if specs.is_empty() {
            return Err(UpstreamError::NoUpstreams);
        }
        let upstreams = specs
            .iter()
            .map(|spec| Upstream::from_spec(spec, default_timeout).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            upstreams,
            strategy,
        })
    }

    /// Replaces the default health policy (tests use short back-offs).
    pub fn with_health_policy(self, policy: HealthPolicy) -> Self {
        let policy = HealthPolicy {
            failure_threshold: policy.failure_threshold.max(1),
            backoff_initial: policy.backoff_initial.max(Duration::from_millis(1)),
            backoff_max: policy.backoff_max.max(policy.backoff_initial),
        };
        for upstream in &self.upstreams {
            upstream.health().policy = policy;
        }
        self
    }

    /// Sends one query (one question, any id) and returns the upstream's response with the
    /// query's id. A SERVFAIL/REFUSED answer is returned only if no upstream did better.
    pub async fn resolve(&self, query: &Message) -> Result<Message, UpstreamError> {
        self.resolve_named(query).await.map(|(message, _)| message)
    }

    /// Like [`resolve`](Self::resolve), also naming the upstream whose answer was used.
    pub async fn resolve_named(
        &self,
        query: &Message,
    ) -> Result<(Message, Arc<str>), UpstreamError> {
        if query.queries.len() != 1 {
            return Err(UpstreamError::BadQuery(query.queries.len()));
        }
        let candidates = self.candidates();
        match self.strategy {
            Strategy::Parallel => race(query, candidates).await,
            Strategy::Failover => failover(query, candidates).await,
        }
    }

    pub fn health(&self) -> Vec<UpstreamHealth> {
        self.upstreams
            .iter()
            .map(|u| {
                let h = u.health();
                UpstreamHealth {
                    name: u.name.clone(),
                    healthy: h.down.is_none(),
                    consecutive_failures: h.consecutive_failures,
                    last_error: h.last_error.clone(),
                }
            })
            .collect()
    }

    pub fn any_healthy(&self) -> bool {
        self.upstreams.iter().any(|u| u.is_healthy())
    }

    /// Healthy upstreams (failover: configured order; parallel: fastest first). When none is
    /// healthy, all of them: failing open to *trying* beats failing instantly.
    fn candidates(&self) -> Vec<Arc<Upstream>> {
        let healthy: Vec<_> = self
            .upstreams
            .iter()
            .filter(|u| u.is_healthy())
            .cloned()
            .collect();
        let mut list = if healthy.is_empty() {
            self.upstreams.clone()
        } else {
            healthy
        };
        if self.strategy == Strategy::Parallel {
            // Stable sort: unmeasured upstreams (None) come first so each gets measured.
            list.sort_by_key(|u| u.health().srtt);
        }
        list
    }
}

/// What one upstream made of a query.
enum Outcome {
    /// An answer to return, and who gave it.
    Good((Message, Arc<str>)),
    /// SERVFAIL and friends: returned only if nothing better arrives.
    Poor((Message, Arc<str>)),
    Failed(UpstreamError),
}

impl Outcome {
    fn from_result(result: Result<Message, UpstreamError>, upstream: &str) -> Self {
        match result {
            Ok(msg) if is_poor(msg.metadata.response_code) => Outcome::Poor((msg, upstream.into())),
            Ok(msg) => Outcome::Good((msg, upstream.into())),
            Err(err) => Outcome::Failed(err),
        }
    }
}

fn is_poor(code: ResponseCode) -> bool {
    matches!(
        code,
        ResponseCode::ServFail
            | ResponseCode::Refused
            | ResponseCode::NotImp
            | ResponseCode::FormErr
    )
}

/// The best fallback once no upstream gave a good answer.
fn settle(
    poor: Option<(Message, Arc<str>)>,
    mut errors: Vec<UpstreamError>,
) -> Result<(Message, Arc<str>), UpstreamError> {
    if let Some(msg) = poor {
        return Ok(msg);
    }
    match errors.len() {
        0 => Err(UpstreamError::NoUpstreams),
        1 => Err(errors.remove(0)),
        _ => Err(UpstreamError::AllFailed { errors }),
    }
}

async fn failover(
    query: &Message,
    candidates: Vec<Arc<Upstream>>,
) -> Result<(Message, Arc<str>), UpstreamError> {
    let mut poor = None;
    let mut errors = Vec::new();
    for upstream in candidates {
        match Outcome::from_result(upstream.attempt(query).await, &upstream.name) {
            Outcome::Good(msg) => return Ok(msg),
            Outcome::Poor(msg) => {
                poor.get_or_insert(msg);
            }
            Outcome::Failed(err) => errors.push(err),
        }
    }
    settle(poor, errors)
}

/// Races the candidates two at a time. Attempts run as their own tasks, so a loser keeps going
/// after the winner returns and its outcome still feeds health: otherwise an upstream that
/// silently drops everything would never be charged while its partner answers first.
async fn race(
    query: &Message,
    candidates: Vec<Arc<Upstream>>,
) -> Result<(Message, Arc<str>), UpstreamError> {
    let query = Arc::new(query.clone());
    let mut poor = None;
    let mut errors = Vec::new();
    for wave in candidates.chunks(2) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(wave.len());
        for upstream in wave {
            let (upstream, query, tx) = (upstream.clone(), query.clone(), tx.clone());
            tokio::spawn(async move {
                let result = upstream.attempt(&query).await;
                // The receiver is gone once another upstream won: nothing to do.
                let _ = tx.send(Outcome::from_result(result, &upstream.name)).await;
            });
        }
        drop(tx);
        while let Some(outcome) = rx.recv().await {
            match outcome {
                Outcome::Good(msg) => return Ok(msg),
                Outcome::Poor(msg) => {
                    poor.get_or_insert(msg);
                }
                Outcome::Failed(err) => errors.push(err),
            }
        }
    }
    settle(poor, errors)
}

/// How to reach an upstream.
#[derive(Clone)]
enum Transport {
    Udp,
    Tcp,
    Tls {
        server_name: ServerName<'static>,
        config: Arc<ClientConfig>,
    },
    Https {
        server_name: Arc<str>,
        path: Arc<str>,
        config: Arc<ClientConfig>,
    },
}

impl Transport {
    fn is_multiplexed_stream(&self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls { .. })
    }

    async fn connect(&self, addr: SocketAddr, timeout: Duration) -> Result<Conn, NetError> {
        let provider = Provider::new();
        let (exchange, driver) = match self {
            Transport::Udp => spawn_driver(
                UdpClientStream::builder(addr, provider)
                    .with_timeout(Some(timeout))
                    .build(),
            ),
            Transport::Tcp => {
                let (stream, handle) = TcpClientStream::new(addr, None, Some(timeout), provider);
                spawn_driver(
                    DnsMultiplexer::new(stream.await?, handle)
                        .with_timeout(timeout)
                        .with_max_active_requests(STREAM_INFLIGHT * 2),
                )
            }
            Transport::Tls {
                server_name,
                config,
            } => {
                let (stream, handle) =
                    tls_client_connect(addr, server_name.clone(), config.clone(), provider);
                spawn_driver(
                    DnsMultiplexer::new(stream.await?, handle)
                        .with_timeout(timeout)
                        .with_max_active_requests(STREAM_INFLIGHT * 2),
                )
            }
            Transport::Https {
                server_name,
                path,
                config,
            } => {
                let mut builder = HttpsClientStream::builder(config.clone(), provider);
                builder.request_timeout(timeout);
                spawn_driver(
                    builder
                        .build(addr, server_name.clone(), path.clone())
                        .await?,
                )
            }
        };
        Ok(Conn {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            exchange,
            driver,
        })
    }
}

/// Spawns the connection's I/O driver ourselves (rather than via hickory's provider) so we can
/// see when it has died and stop handing the connection out.
fn spawn_driver<S: DnsRequestSender>(stream: S) -> (DnsExchange<Provider>, JoinHandle<()>) {
    let (exchange, driver) = DnsExchange::<Provider>::from_stream(stream);
    (exchange, tokio::spawn(driver))
}

/// An open connection. Dropping it does not abort the driver: queries still in flight on it may
/// finish, after which the driver sees no senders left and shuts the connection down.
struct Conn {
    id: u64,
    exchange: DnsExchange<Provider>,
    driver: JoinHandle<()>,
}

/// A lazily (re)opened connection to one upstream over one transport.
struct Slot {
    transport: Transport,
    current: Mutex<Option<Conn>>,
    /// Serialises connecting so a burst of queries opens one connection, not one each.
    connecting: tokio::sync::Mutex<()>,
    inflight: Option<Semaphore>,
}

impl Slot {
    fn new(transport: Transport) -> Self {
        let inflight = transport
            .is_multiplexed_stream()
            .then(|| Semaphore::new(STREAM_INFLIGHT));
        Self {
            transport,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            inflight,
        }
    }

    /// The live connection, if any. A connection whose driver has exited is forgotten.
    fn live(&self) -> Option<(DnsExchange<Provider>, u64)> {
        let mut current = lock(&self.current);
        match current.as_ref() {
            Some(conn) if !conn.driver.is_finished() => Some((conn.exchange.clone(), conn.id)),
            Some(_) => {
                *current = None;
                None
            }
            None => None,
        }
    }

    /// Returns a connection and whether this call opened it.
    async fn get(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<(DnsExchange<Provider>, u64, bool), NetError> {
        if let Some((exchange, id)) = self.live() {
            return Ok((exchange, id, false));
        }
        let _connecting = self.connecting.lock().await;
        if let Some((exchange, id)) = self.live() {
            return Ok((exchange, id, false));
        }
        let conn = self.transport.connect(addr, timeout).await?;
        let out = (conn.exchange.clone(), conn.id, true);
        *lock(&self.current) = Some(conn);
        Ok(out)
    }

    /// Forgets connection `id` (not a newer one another query already opened).
    fn discard(&self, id: u64) {
        let mut current = lock(&self.current);
        if current.as_ref().is_some_and(|conn| conn.id == id) {
            *current = None;
        }
    }
}

/// Mutable health state of one upstream.
struct Health {
    policy: HealthPolicy,
    consecutive_failures: u32,
    last_error: Option<String>,
    /// `Some` while out of rotation.
    down: Option<Down>,
    /// Id of the running probe task, 0 if none (at most one per upstream).
    prober: u64,
    /// Smoothed round-trip time; failures count as a full timeout. Ranks parallel candidates.
    srtt: Option<Duration>,
}

impl Health {
    fn release_prober(&mut self, id: u64) {
        if self.prober == id {
            self.prober = 0;
        }
    }
}

#[derive(Clone, Copy)]
struct Down {
    backoff: Duration,
}

struct Upstream {
    name: String,
    addr: SocketAddr,
    timeout: Duration,
    primary: Slot,
    /// Plain UDP only: where truncated answers are re-asked.
    tcp_fallback: Option<Slot>,
    health: Mutex<Health>,
}

impl Upstream {
    fn from_spec(spec: &UpstreamSpec, default_timeout: Duration) -> Result<Self, UpstreamError> {
        let bad = |reason: String| UpstreamError::BadSpec {
            url: spec.url.clone(),
            reason,
        };
        let url = parse_url(&spec.url).map_err(bad)?;
        let timeout = match spec.timeout_ms {
            Some(ms) => Duration::from_millis(ms),
            None => default_timeout,
        };
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            return Err(bad(format!(
                "timeout must be between 1 ms and {}s",
                MAX_TIMEOUT.as_secs()
            )));
        }
        let tls = matches!(url.scheme, Scheme::Https | Scheme::Tls);
        if !tls && (spec.tls_name.is_some() || spec.ca_file.is_some()) {
            return Err(bad(
                "tls_name and ca_file only apply to https:// and tls://".into(),
            ));
        }
        let transport = match url.scheme {
            Scheme::Udp => Transport::Udp,
            Scheme::Tcp => Transport::Tcp,
            Scheme::Tls | Scheme::Https => {
                // Without tls_name the certificate must name the IP itself (an IP SAN, as
                // public DoH resolvers' certificates carry).
                let ip_name = url.addr.ip().to_string();
                let tls_name = spec.tls_name.as_deref().unwrap_or(&ip_name);
                let server_name = ServerName::try_from(tls_name.to_string())
                    .map_err(|e| bad(format!("tls_name {tls_name:?}: {e}")))?;
                let alpn: &[u8] = if url.scheme == Scheme::Https {
                    b"h2"
                } else {
                    b"dot"
                };
                let config = tls_config(spec.ca_file.as_deref(), alpn).map_err(bad)?;
                if url.scheme == Scheme::Https {
                    Transport::Https {
                        server_name: Arc::from(tls_name),
                        path: Arc::from(url.path.as_str()),
                        config,
                    }
                } else {
                    Transport::Tls {
                        server_name,
                        config,
                    }
                }
            }
        };
        let tcp_fallback = matches!(transport, Transport::Udp).then(|| Slot::new(Transport::Tcp));
        Ok(Self {
            name: spec.name.clone().unwrap_or_else(|| spec.url.clone()),
            addr: url.addr,
            timeout,
            primary: Slot::new(transport),
            tcp_fallback,
            health: Mutex::new(Health {
                policy: HealthPolicy::default(),
                consecutive_failures: 0,
                last_error: None,
                down: None,
                prober: 0,
                srtt: None,
            }),
        })
    }

    fn health(&self) -> MutexGuard<'_, Health> {
        lock(&self.health)
    }

    fn is_healthy(&self) -> bool {
        self.health().down.is_none()
    }

    /// A query with health bookkeeping.
    async fn attempt(self: &Arc<Self>, query: &Message) -> Result<Message, UpstreamError> {
        let started = Instant::now();
        let result = self.exchange(query).await;
        crate::admin::metrics::upstream_request(&self.name, started.elapsed(), result.is_ok());
        match &result {
            Ok(_) => self.record_success(started.elapsed()),
            Err(err) => self.record_failure(err),
        }
        result
    }

    /// One query, bounded by this upstream's timeout (connecting and any retry included).
    async fn exchange(&self, query: &Message) -> Result<Message, UpstreamError> {
        let mut in_use = None;
        let result =
            tokio::time::timeout(self.timeout, self.exchange_inner(query, &mut in_use)).await;
        match result {
            Ok(result) => result,
            Err(_elapsed) => {
                if let Some((slot, id)) = in_use {
                    self.slot(slot).discard(id);
                }
                Err(UpstreamError::Timeout {
                    upstream: self.name.clone(),
                    after: self.timeout,
                })
            }
        }
    }

    fn slot(&self, fallback: bool) -> &Slot {
        match (&self.tcp_fallback, fallback) {
            (Some(tcp), true) => tcp,
            _ => &self.primary,
        }
    }

    async fn exchange_inner(
        &self,
        query: &Message,
        in_use: &mut Option<(bool, u64)>,
    ) -> Result<Message, UpstreamError> {
        let response = self.send_on(false, query, in_use).await?;
        if response.metadata.truncation && self.tcp_fallback.is_some() {
            return self.send_on(true, query, in_use).await;
        }
        Ok(response)
    }

    async fn send_on(
        &self,
        fallback: bool,
        query: &Message,
        in_use: &mut Option<(bool, u64)>,
    ) -> Result<Message, UpstreamError> {
        let slot = self.slot(fallback);
        let _permit = match &slot.inflight {
            Some(semaphore) => Some(
                semaphore
                    .acquire()
                    .await
                    .map_err(|e| self.transport_error(e))?,
            ),
            None => None,
        };
        let mut retried = false;
        loop {
            let (exchange, id, fresh) = slot
                .get(self.addr, self.timeout)
                .await
                .map_err(|e| self.transport_error(format_args!("connect: {e}")))?;
            *in_use = Some((fallback, id));
            let result = match round_trip(&exchange, query).await {
                Ok(response) => self.check(query, response),
                Err(err) => Err(err),
            };
            let err = match result {
                Ok(response) => return Ok(response),
                Err(err) => err,
            };
            slot.discard(id);
            // A reused connection may have been closed by the peer while idle: one fresh
            // connection gets a chance before this counts as the upstream's failure.
            if fresh || retried || matches!(err, Failure::Timeout) {
                return Err(match err {
                    Failure::Timeout => UpstreamError::Timeout {
                        upstream: self.name.clone(),
                        after: self.timeout,
                    },
                    Failure::Net(e) => self.transport_error(e),
                    Failure::Bad(reason) => UpstreamError::BadResponse {
                        upstream: self.name.clone(),
                        reason,
                    },
                });
            }
            tracing::debug!(upstream = %self.name, error = ?err, "reused connection failed, reconnecting");
            retried = true;
        }
    }

    fn transport_error(&self, reason: impl fmt::Display) -> UpstreamError {
        UpstreamError::Transport {
            upstream: self.name.clone(),
            reason: reason.to_string(),
        }
    }

    /// Accepts only a response to *this* question, and gives it the caller's id back.
    fn check(
        &self,
        query: &Message,
        response: hickory_proto::op::DnsResponse,
    ) -> Result<Message, Failure> {
        let mut msg = response.into_message();
        if msg.metadata.message_type != MessageType::Response {
            return Err(Failure::Bad("not a response".into()));
        }
        // Error answers may legitimately omit the question.
        let question_ok = msg.queries == query.queries
            || (msg.queries.is_empty() && is_poor(msg.metadata.response_code));
        if !question_ok {
            return Err(Failure::Bad(format!(
                "answers {:?}, not the question asked",
                msg.queries
            )));
        }
        msg.metadata.id = query.metadata.id;
        Ok(msg)
    }

    fn record_success(self: &Arc<Self>, rtt: Duration) {
        let mut h = self.health();
        h.consecutive_failures = 0;
        h.srtt = Some(match h.srtt {
            Some(srtt) => (srtt * 7 + rtt) / 8,
            None => rtt,
        });
        // Out of rotation yet answering (fail-open, or a query already in flight when it was
        // taken out): a real answer is as good as a probe.
        if h.down.take().is_some() {
            tracing::info!(upstream = %self.name, "upstream answered again, back in rotation");
        }
    }

    fn record_failure(self: &Arc<Self>, err: &UpstreamError) {
        let mut h = self.health();
        h.consecutive_failures = h.consecutive_failures.saturating_add(1);
        h.last_error = Some(err.to_string());
        h.srtt = Some(h.srtt.unwrap_or_default().max(self.timeout));
        tracing::debug!(upstream = %self.name, error = %err, failures = h.consecutive_failures, "upstream query failed");
        if h.down.is_none() && h.consecutive_failures >= h.policy.failure_threshold {
            tracing::warn!(upstream = %self.name, error = %err, failures = h.consecutive_failures, "upstream taken out of rotation");
            h.down = Some(Down {
                backoff: h.policy.backoff_initial,
            });
            self.ensure_prober(&mut h);
        }
    }

    fn ensure_prober(self: &Arc<Self>, h: &mut Health) {
        if h.prober != 0 {
            return;
        }
        // No runtime means no prober; a successful fail-open query still restores the upstream.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            h.prober = id;
            runtime.spawn(probe_loop(Arc::downgrade(self), id));
        }
    }
}

/// Probes a down upstream after each back-off until it answers or the pool is dropped.
async fn probe_loop(upstream: Weak<Upstream>, id: u64) {
    let _guard = ProbeGuard {
        upstream: upstream.clone(),
        id,
    };
    loop {
        // Decide under the lock whether to go on, so a concurrent take-out either sees this
        // prober still registered or registers a new one, never neither.
        let delay = {
            let Some(u) = upstream.upgrade() else { return };
            let mut h = u.health();
            match h.down {
                Some(down) => jitter(down.backoff),
                None => return h.release_prober(id),
            }
        };
        tokio::time::sleep(delay).await;
        let Some(u) = upstream.upgrade() else { return };
        if u.is_healthy() {
            continue; // restored by a real query meanwhile; the top of the loop ends this task
        }
        let started = Instant::now();
        let result = u.exchange(&probe_query()).await;
        let mut h = u.health();
        match result {
            Ok(msg)
                if matches!(
                    msg.metadata.response_code,
                    ResponseCode::NoError | ResponseCode::NXDomain
                ) =>
            {
                h.consecutive_failures = 0;
                h.srtt = Some(started.elapsed());
                if h.down.take().is_some() {
                    tracing::info!(upstream = %u.name, "probe answered, upstream back in rotation");
                }
                return h.release_prober(id);
            }
            other => {
                let reason = match other {
                    Ok(msg) => format!("probe answered {}", msg.metadata.response_code),
                    Err(err) => err.to_string(),
                };
                tracing::debug!(upstream = %u.name, error = %reason, "probe failed");
                h.consecutive_failures = h.consecutive_failures.saturating_add(1);
                h.last_error = Some(reason);
                let max = h.policy.backoff_max;
                if let Some(down) = h.down.as_mut() {
                    down.backoff = (down.backoff * 2).min(max);
                }
            }
        }
    }
}

/// Unregisters the prober however its task ends (including runtime shutdown).
struct ProbeGuard {
    upstream: Weak<Upstream>,
    id: u64,
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if let Some(u) = self.upstream.upgrade() {
            u.health().release_prober(self.id);
        }
    }
}

fn probe_query() -> Message {
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::root(), RecordType::NS));
    msg
}

/// Why one round trip failed.
#[derive(Debug)]
enum Failure {
    Timeout,
    Net(NetError),
    Bad(String),
}

async fn round_trip(
    exchange: &DnsExchange<Provider>,
    query: &Message,
) -> Result<hickory_proto::op::DnsResponse, Failure> {
    let mut msg = query.clone();
    // The caller's id may be predictable; the wire id is ours (multiplexers rewrite it anyway).
    msg.metadata.id = random_id();
    let mut responses = exchange.send(DnsRequest::new(msg, DnsRequestOptions::default()));
    match responses.next().await {
        Some(Ok(response)) => Ok(response),
        // hickory ends the stream without an item on its own timeout.
        None | Some(Err(NetError::Timeout)) => Err(Failure::Timeout),
        Some(Err(err)) => Err(Failure::Net(err)),
    }
}

/// A random 16-bit id from hickory's RNG (`Message::query` draws one), without a `rand` dependency.
fn random_id() -> u16 {
    Message::query().metadata.id
}

/// Spreads `d` over ±20% so upstreams taken out together are not probed in lockstep.
fn jitter(d: Duration) -> Duration {
    // Each RandomState is freshly keyed, so hashing nothing yields a new pseudo-random value.
    let r = RandomState::new().build_hasher().finish();
    let frac = (r % 10_000) as f64 / 10_000.0;
    d.mul_f64(0.8 + 0.4 * frac)
}

/// Locks, ignoring poison: the guarded state stays consistent across a panicking holder.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn tls_config(ca_file: Option<&Path>, alpn: &[u8]) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        let mut added = 0;
        for cert in certs {
            let cert = cert.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("ca_file {}: no certificates found", path.display()));
        }
    }
    // Explicit provider: never depend on whichever process-default provider got installed.
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Https,
    Tls,
    Udp,
    Tcp,
}

#[derive(Debug, PartialEq)]
struct ParsedUrl {
    scheme: Scheme,
    addr: SocketAddr,
    /// DoH request path; empty for the others.
    path: String,
}

/// Parses `scheme://ip[:port][/path]`. Hand-rolled: the grammar is tiny and IP-only.
fn parse_url(url: &str) -> Result<ParsedUrl, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("expected scheme://address, e.g. https://1.1.1.1/dns-query")?;
    let (scheme, default_port) = match scheme.to_ascii_lowercase().as_str() {
        "https" => (Scheme::Https, 443),
        "tls" => (Scheme::Tls, 853),
        "udp" => (Scheme::Udp, 53),
        "tcp" => (Scheme::Tcp, 53),
        other => {
            return Err(format!(
                "unsupported scheme {other:?} (https, tls, udp, tcp)"
            ));
        }
    };
    if rest.contains(['?', '#']) {
        return Err("query strings and fragments are not supported".into());
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err("credentials in the URL are not supported".into());
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or("unclosed '[' in IPv6 address")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("expected ':port' after ']'")?),
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err("IPv6 addresses must be in brackets, e.g. [2606:4700::1111]".into());
            }
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("missing host".into());
    }
    let ip: IpAddr = host.parse().map_err(|_| {
        format!("host {host:?} must be an IP address (a hostname would need DNS to reach DNS)")
    })?;
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => return Err(format!("bad port {p:?}")),
        },
    };
    let path = match scheme {
        Scheme::Https if path.is_empty() => "/dns-query".to_string(),
        Scheme::Https => path.to_string(),
        _ if path.is_empty() || path == "/" => String::new(),
        _ => return Err("only https:// URLs take a path".into()),
    };
    Ok(ParsedUrl {
        scheme,
        addr: SocketAddr::new(ip, port),
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str, tls_name: Option<&str>) -> UpstreamSpec {
        UpstreamSpec {
            name: None,
            url: url.to_string(),
            tls_name: tls_name.map(str::to_string),
            timeout_ms: None,
            ca_file: None,
        }
    }

    fn new_pool(specs: &[UpstreamSpec]) -> Result<UpstreamPool, UpstreamError> {
        UpstreamPool::new(specs, Strategy::Parallel, Duration::from_secs(2))
    }

    #[test]
    fn parses_urls_with_default_ports() {
        let p = parse_url("https://1.1.1.1/dns-query").unwrap();
        assert_eq!(p.scheme, Scheme::Https);
        assert_eq!(p.addr, "1.1.1.1:443".parse().unwrap());
        assert_eq!(p.path, "/dns-query");
        assert_eq!(parse_url("https://1.1.1.1").unwrap().path, "/dns-query");
        assert_eq!(
            parse_url("HTTPS://1.1.1.1:8443/q").unwrap().addr.port(),
            8443
        );
        assert_eq!(parse_url("tls://1.1.1.1").unwrap().addr.port(), 853);
        assert_eq!(parse_url("udp://9.9.9.9").unwrap().addr.port(), 53);
        assert_eq!(parse_url("tcp://9.9.9.9:5353/").unwrap().addr.port(), 5353);
        let v6 = parse_url("tls://[2606:4700::1111]:853").unwrap();
        assert_eq!(v6.addr, "[2606:4700::1111]:853".parse().unwrap());
        assert_eq!(parse_url("udp://[::1]").unwrap().addr.port(), 53);
    }

    #[test]
    fn rejects_bad_urls() {
        for url in [
            "1.1.1.1",
            "http://1.1.1.1/dns-query",
            "https://dns.example/dns-query",
            "https://1.1.1.1:0/",
            "https://1.1.1.1:99999/",
            "https://1.1.1.1/dns-query?dns=x",
            "https://user@1.1.1.1/",
            "udp://2606:4700::1111",
            "udp://[::1",
            "udp://1.1.1.1/path",
            "tcp://:53",
        ] {
            assert!(parse_url(url).is_err(), "{url} should be rejected");
        }
    }

    #[test]
    fn validates_specs() {
        assert!(matches!(new_pool(&[]), Err(UpstreamError::NoUpstreams)));
        // Without tls_name the certificate is checked against the IP itself.
        assert!(new_pool(&[spec("https://1.1.1.1/dns-query", None)]).is_ok());
        let err = new_pool(&[spec("udp://1.1.1.1", Some("x.example"))]).unwrap_err();
        assert!(matches!(err, UpstreamError::BadSpec { .. }), "{err}");
        assert_eq!(err.fault(), Fault::Internal);
        assert!(new_pool(&[spec("udp://1.1.1.1", Some("x.example"))]).is_err());
        assert!(new_pool(&[spec("tls://1.1.1.1", Some("bad name!"))]).is_err());
        let mut zero = spec("udp://1.1.1.1", None);
        zero.timeout_ms = Some(0);
        assert!(new_pool(&[zero]).is_err());
        let mut missing_ca = spec("tls://1.1.1.1", Some("one.one.one.one"));
        missing_ca.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(new_pool(&[missing_ca]).is_err());
    }

    #[test]
    fn default_specs_are_valid_and_named_by_url() {
        let pool = new_pool(&crate::config::upstream::default_specs()).unwrap();
        let health = pool.health();
        assert_eq!(health.len(), 4);
        assert_eq!(health[0].name, "https://1.1.1.1/dns-query");
        assert!(
            health
                .iter()
                .all(|h| h.healthy && h.consecutive_failures == 0)
        );
        assert!(pool.any_healthy());
    }

    #[tokio::test]
    async fn rejects_queries_without_exactly_one_question() {
        let pool = new_pool(&[spec("udp://127.0.0.1:9", None)]).unwrap();
        let err = pool.resolve(&Message::query()).await.unwrap_err();
        assert!(matches!(err, UpstreamError::BadQuery(0)));
        assert_eq!(err.fault(), Fault::Client);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let d = Duration::from_secs(10);
        for _ in 0..100 {
            let j = jitter(d);
            assert!(
                j >= Duration::from_secs(8) && j <= Duration::from_secs(12),
                "{j:?}"
            );
        }
    }

    #[test]
    fn pool_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<UpstreamPool>();
        // The DNS front door spawns resolve() onto the runtime.
        fn assert_send<T: Send>(_: &T) {}
        let pool = new_pool(&[spec("udp://127.0.0.1:9", None)]).unwrap();
        let query = Message::query();
        assert_send(&pool.resolve(&query));
    }

    #[test]
    fn errors_classify() {
        let t = UpstreamError::Timeout {
            upstream: "u".into(),
            after: Duration::from_secs(1),
        };
        assert!(t.is_timeout());
        assert_eq!(t.fault(), Fault::Upstream);
        let all = UpstreamError::AllFailed {
            errors: vec![
                t,
                UpstreamError::Transport {
                    upstream: "v".into(),
                    reason: "refused".into(),
                },
            ],
        };
        assert!(!all.is_timeout());
        assert!(all.to_string().contains("refused"));
    }
}
