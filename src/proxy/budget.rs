//! Memory the proxy holds for its connections' heads and bodies.
//!
//! Every buffer a proxy connection allocates for a request head, a request or response
//! body, a response head or a TLS ClientHello is reserved before it is allocated: from
//! the connection's cap ([`ProxyConfig::connection_buffer_cap`](super::ProxyConfig::connection_buffer_cap))
//! and from one budget for the whole gate (`[proxy] max_buffered_bytes`). A reservation
//! that does not fit is refused (503, counted in
//! `portcullis_proxy_buffer_refusals_total{reason}`) instead of allocated.
//!
//! Bodies are relayed through one buffer per direction of `body_buffer_bytes` (the
//! client is not read while that buffer waits for the origin: back-pressure, as squid's
//! `client_request_buffer_max_size` and `read_ahead_gap`), so a request needs no more
//! than its cap whatever its size. Tunnels, once relaying, hold no reservation: the
//! relay's buffers are per thread ([`super::splice`]).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::error::ProxyError;

/// The gate-wide budget, shared by every connection.
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
    /// Largest reservation one connection has held (for tests and benchmarks).
    peak_connection: AtomicUsize,
}

impl Budget {
    pub fn new(limit: usize) -> Budget {
        Budget {
            used: AtomicUsize::new(0),
            limit,
            peak_connection: AtomicUsize::new(0),
        }
    }

    /// Bytes reserved by every connection now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn peak_connection(&self) -> usize {
        self.peak_connection.load(Ordering::Relaxed)
    }

    /// Adds `bytes` unless that would pass the limit.
    fn try_add(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.limit)
            })
            .is_ok()
    }
}

/// One connection's share of the budget, capped.
pub struct ConnBudget<'a> {
    gate: &'a Budget,
    held: AtomicUsize,
    cap: usize,
}

impl<'a> ConnBudget<'a> {
    pub fn new(gate: &'a Budget, cap: usize) -> ConnBudget<'a> {
        ConnBudget {
            gate,
            held: AtomicUsize::new(0),
            cap,
        }
    }

    /// Reserves `bytes` for one buffer, released when the [`Held`] is dropped.
    pub fn hold(&self, bytes: usize) -> Result<Held<'_>, ProxyError> {
        let mut held = Held {
            conn: self,
            bytes: 0,
        };
        held.resize(bytes)?;
        Ok(held)
    }

    fn grow(&self, bytes: usize) -> Result<(), ProxyError> {
        let held = self.held.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if held > self.cap {
            self.held.fetch_sub(bytes, Ordering::Relaxed);
            crate::telemetry::metrics::proxy_buffer_refusal("connection");
            return Err(ProxyError::BufferCap(self.cap));
        }
        if !self.gate.try_add(bytes) {
            self.held.fetch_sub(bytes, Ordering::Relaxed);
            crate::telemetry::metrics::proxy_buffer_refusal("gate");
            return Err(ProxyError::BufferBudget(self.gate.limit));
        }
        self.gate.peak_connection.fetch_max(held, Ordering::Relaxed);
        crate::telemetry::metrics::proxy_buffered(bytes as i64);
        Ok(())
    }

    fn release(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
        self.gate.used.fetch_sub(bytes, Ordering::Relaxed);
        crate::telemetry::metrics::proxy_buffered(-(bytes as i64));
    }
}

/// A reservation for one buffer; follows the buffer's size through [`Held::resize`].
pub struct Held<'c> {
    conn: &'c ConnBudget<'c>,
    bytes: usize,
}

impl Held<'_> {
    /// Makes the reservation exactly `bytes`: growing may be refused, shrinking never is.
    pub fn resize(&mut self, bytes: usize) -> Result<(), ProxyError> {
        if bytes > self.bytes {
            self.conn.grow(bytes - self.bytes)?;
        } else {
            self.conn.release(self.bytes - bytes);
        }
        self.bytes = bytes;
        Ok(())
    }

    /// Makes the reservation `bytes` if that is less (never refused).
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.conn.release(self.bytes - bytes);
            self.bytes = bytes;
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.conn.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_respect_the_connection_cap_and_the_gate_budget() {
        let gate = Budget::new(100);
        let a = ConnBudget::new(&gate, 60);
        let b = ConnBudget::new(&gate, 60);
        let mut one = a.hold(40).unwrap();
        assert!(matches!(a.hold(30), Err(ProxyError::BufferCap(60))));
        let two = b.hold(50).unwrap();
        assert!(matches!(one.resize(55), Err(ProxyError::BufferBudget(100))));
        assert_eq!(gate.used(), 90, "a refused growth takes nothing");
        one.resize(10).unwrap();
        assert_eq!(gate.used(), 60);
        drop(two);
        drop(one);
        assert_eq!(gate.used(), 0);
        assert_eq!(a.held.load(Ordering::Relaxed), 0);
        assert_eq!(gate.peak_connection(), 50);
    }
}
