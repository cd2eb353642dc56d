//! The per-client rate limit: a token bucket per client address, `queries` per
//! `per_secs` (the bucket holds `queries`, so a burst that size passes, then the client
//! gets `queries / per_secs` a second). Over the limit: REFUSED, counted, and one log
//! line when a client starts being limited (not one per query: that is the flood).
//!
//! Memory is bounded: at most `max_clients` buckets; when full, the buckets that have
//! refilled (idle clients) go first.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use foldhash::fast::FixedState;

use crate::policy::dns::Rate;

/// What the limiter says about one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Over the limit; `first`: the first refusal since the client was last admitted.
    No {
        first: bool,
    },
}

struct Bucket {
    tokens: f32,
    /// Milliseconds since the limiter started.
    at: u64,
    limited: bool,
}

pub struct RateLimiter {
    started: Instant,
    buckets: Mutex<std::collections::HashMap<IpAddr, Bucket, FixedState>>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::new()
    }
}

impl RateLimiter {
    pub fn new() -> RateLimiter {
        RateLimiter {
            started: Instant::now(),
            buckets: Mutex::new(std::collections::HashMap::with_hasher(
                FixedState::with_seed(2),
            )),
        }
    }

    pub fn admit(&self, client: IpAddr, rate: Rate, max_clients: usize) -> Admit {
        self.admit_at(
            self.started.elapsed().as_millis() as u64,
            client,
            rate,
            max_clients,
        )
    }

    fn admit_at(&self, now: u64, client: IpAddr, rate: Rate, max_clients: usize) -> Admit {
        let capacity = rate.queries as f32;
        let per_ms = capacity / (rate.per_secs as f32 * 1000.0);
        let mut buckets = crate::sys::lock(&self.buckets);
        if !buckets.contains_key(&client) && buckets.len() >= max_clients {
            // Refilled buckets are idle clients: forgetting them changes nothing.
            buckets.retain(|_, b| b.tokens + (now.saturating_sub(b.at)) as f32 * per_ms < capacity);
            if buckets.len() >= max_clients {
                // A flood of new addresses: start over rather than grow.
                buckets.clear();
            }
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: capacity,
            at: now,
            limited: false,
        });
        bucket.tokens =
            (bucket.tokens + now.saturating_sub(bucket.at) as f32 * per_ms).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            bucket.limited = false;
            Admit::Yes
        } else {
            let first = !bucket.limited;
            bucket.limited = true;
            Admit::No { first }
        }
    }

    pub fn clients(&self) -> usize {
        crate::sys::lock(&self.buckets).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, n))
    }

    #[test]
    fn a_burst_is_cut_and_the_bucket_refills() {
        let l = RateLimiter::new();
        let rate = Rate {
            queries: 100,
            per_secs: 10,
        };
        for _ in 0..100 {
            assert_eq!(l.admit_at(0, ip(1), rate, 10), Admit::Yes);
        }
        assert_eq!(l.admit_at(0, ip(1), rate, 10), Admit::No { first: true });
        assert_eq!(l.admit_at(0, ip(1), rate, 10), Admit::No { first: false });
        // Another client is untouched.
        assert_eq!(l.admit_at(0, ip(2), rate, 10), Admit::Yes);
        // 10 queries a second: after 100 ms, one more.
        assert_eq!(l.admit_at(100, ip(1), rate, 10), Admit::Yes);
        assert_eq!(l.admit_at(100, ip(1), rate, 10), Admit::No { first: true });
    }

    #[test]
    fn the_table_is_bounded() {
        let l = RateLimiter::new();
        let rate = Rate {
            queries: 5,
            per_secs: 1,
        };
        for n in 0..=255 {
            l.admit_at(0, ip(n), rate, 16);
        }
        assert!(l.clients() <= 16, "{}", l.clients());
    }
}
