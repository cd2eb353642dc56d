//! Binding listeners, accepting on them and counting their connections: shared by the
//! proxy and the admin server.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::sys::lock;

/// Binds a TCP listener on every address (port 0 picks a free port; the servers
/// log what they got).
pub async fn bind_tcp(addrs: &[SocketAddr]) -> io::Result<Vec<TcpListener>> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        listeners.push(TcpListener::bind(addr).await?);
    }
    Ok(listeners)
}

/// Accepts on `listener` until `stop`, handing each connection to `accepted`. A failed
/// accept (EMFILE and friends) backs off for a moment instead of spinning; `door` names
/// the listener in that warning.
pub async fn accept_loop(
    listener: TcpListener,
    stop: CancellationToken,
    door: &'static str,
    mut accepted: impl FnMut(TcpStream, SocketAddr),
) {
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            result = listener.accept() => result,
        };
        match result {
            Ok((stream, client)) => accepted(stream, client),
            Err(error) => {
                tracing::warn!(%error, door, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Connections open at once, over all clients and per client address, shared by the
/// proxy and the admin listener. Each accepted connection takes a [`Slot`] that frees
/// itself when dropped, so no exit path can leak a count.
#[derive(Default)]
pub struct ConnLimits {
    per_client: Mutex<HashMap<IpAddr, usize>>,
    total: AtomicUsize,
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    /// Every client together is at `max_total`.
    Total,
    /// This client address is at `max_per_client`.
    PerClient,
}

/// One open connection, counted until dropped.
pub struct Slot {
    limits: Arc<ConnLimits>,
    client: IpAddr,
}

impl ConnLimits {
    /// Counts a connection from `client`. The limits are passed in (not stored) so a
    /// listener can take them from a configuration that reloads.
    pub fn take(
        self: &Arc<Self>,
        client: IpAddr,
        max_total: usize,
        max_per_client: usize,
    ) -> Result<Slot, LimitHit> {
        let total = self.total.fetch_add(1, Ordering::Relaxed);
        // From here on, dropping `slot` undoes both counts, refusals included.
        let slot = Slot {
            limits: self.clone(),
            client,
        };
        let mut map = lock(&self.per_client);
        let n = map.entry(client).or_insert(0);
        *n += 1;
        let over_client = *n > max_per_client;
        drop(map);
        if total >= max_total {
            return Err(LimitHit::Total);
        }
        if over_client {
            return Err(LimitHit::PerClient);
        }
        Ok(slot)
    }

    /// Connections open now (those being refused included, briefly).
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.total.fetch_sub(1, Ordering::Relaxed);
        let mut map = lock(&self.limits.per_client);
        if let Some(n) = map.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_per_client_and_in_total_and_free_on_drop() {
        let limits = Arc::new(ConnLimits::default());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let one = limits.take(a, 3, 2).unwrap();
        let two = limits.take(a, 3, 2).unwrap();
        assert_eq!(limits.take(a, 3, 2).err(), Some(LimitHit::PerClient));
        let three = limits.take(b, 3, 2).unwrap();
        assert_eq!(limits.take(b, 3, 2).err(), Some(LimitHit::Total));
        assert_eq!(limits.open(), 3);
        drop((one, two, three));
        assert_eq!(limits.open(), 0);
        assert!(lock(&limits.per_client).is_empty());
        assert!(limits.take(a, 3, 2).is_ok());
    }
}
