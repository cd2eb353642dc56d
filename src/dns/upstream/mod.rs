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
//!
//! Here: the pool and how a query is spread over its upstreams ([`Strategy`]). One upstream
//! and one query with its retry: `resolver`; connections: `transport`; health and probing:
//! `health`; the upstream URL grammar: `url`; TLS client setup: `tls`. The configured
//! [`UpstreamSpec`] and [`Strategy`] are config's types.

mod health;
mod resolver;
mod tls;
mod transport;
mod url;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};

pub use crate::config::upstream::{Strategy, UpstreamSpec};
use crate::error::{Fault, HasFault};
use crate::sys::lock;
pub use health::{HealthPolicy, UpstreamHealth};
use resolver::Upstream;

/// Where an upstream URL's queries go, for what must let them out (`portcullis k8s
/// networkpolicy`): its address, and whether UDP is used (`udp://`, which also opens TCP
/// for truncated answers) or TCP only (`https://`, `tls://`, `tcp://`).
pub fn dial_target(url_text: &str) -> Result<(std::net::SocketAddr, bool), UpstreamError> {
    let parsed = url::parse_url(url_text).map_err(|reason| UpstreamError::BadSpec {
        url: url_text.to_owned(),
        reason,
    })?;
    Ok((parsed.addr, parsed.scheme == url::Scheme::Udp))
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
