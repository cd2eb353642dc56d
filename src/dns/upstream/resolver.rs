//! One upstream resolver: its spec made into connections, and one query with its retry.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType};
use rustls::pki_types::ServerName;

use super::health::Health;
use super::tls::tls_config;
use super::transport::{Failure, Slot, Transport, round_trip};
use super::url::{Scheme, parse_url};
use super::{UpstreamError, UpstreamSpec, is_poor};
use crate::error::HasFault;

/// Hard ceiling on a per-upstream timeout, so a typo cannot park queries for hours.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) struct Upstream {
    pub(super) name: String,
    addr: SocketAddr,
    pub(super) timeout: Duration,
    primary: Slot,
    /// Plain UDP only: where truncated answers are re-asked.
    tcp_fallback: Option<Slot>,
    pub(super) health: Mutex<Health>,
}

impl Upstream {
    pub(super) fn from_spec(
        spec: &UpstreamSpec,
        default_timeout: Duration,
    ) -> Result<Self, UpstreamError> {
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
            health: Mutex::new(Health::new()),
        })
    }

    /// A query with health bookkeeping.
    pub(super) async fn attempt(
        self: &Arc<Self>,
        query: &Message,
    ) -> Result<Message, UpstreamError> {
        let started = Instant::now();
        let result = self.exchange(query).await;
        crate::telemetry::metrics::upstream_request(&self.name, started.elapsed(), result.is_ok());
        match &result {
            Ok(_) => self.record_success(started.elapsed()),
            Err(err) => {
                crate::telemetry::metrics::error("upstream", err.fault());
                self.record_failure(err)
            }
        }
        result
    }

    /// One query, bounded by this upstream's timeout (connecting and any retry included).
    pub(super) async fn exchange(&self, query: &Message) -> Result<Message, UpstreamError> {
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
}
