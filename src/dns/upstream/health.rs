//! Upstream health: when an upstream leaves rotation, and the background probe that
//! brings it back.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard, Weak};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

use super::resolver::Upstream;
use super::{NEXT_ID, UpstreamError, lock};

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

/// Mutable health state of one upstream.
pub(super) struct Health {
    pub(super) policy: HealthPolicy,
    pub(super) consecutive_failures: u32,
    pub(super) last_error: Option<String>,
    /// `Some` while out of rotation.
    pub(super) down: Option<Down>,
    /// Id of the running probe task, 0 if none (at most one per upstream).
    prober: u64,
    /// Smoothed round-trip time; failures count as a full timeout. Ranks parallel candidates.
    pub(super) srtt: Option<Duration>,
}

impl Health {
    pub(super) fn new() -> Health {
        Health {
            policy: HealthPolicy::default(),
            consecutive_failures: 0,
            last_error: None,
            down: None,
            prober: 0,
            srtt: None,
        }
    }

    fn release_prober(&mut self, id: u64) {
        if self.prober == id {
            self.prober = 0;
        }
    }
}

#[derive(Clone, Copy)]
pub(super) struct Down {
    backoff: Duration,
}

impl Upstream {
    pub(super) fn health(&self) -> MutexGuard<'_, Health> {
        lock(&self.health)
    }

    pub(super) fn is_healthy(&self) -> bool {
        self.health().down.is_none()
    }

    pub(super) fn record_success(self: &Arc<Self>, rtt: Duration) {
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

    pub(super) fn record_failure(self: &Arc<Self>, err: &UpstreamError) {
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

/// Spreads `d` over ±20% so upstreams taken out together are not probed in lockstep.
fn jitter(d: Duration) -> Duration {
    crate::sys::jittered(d, 0.2)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
