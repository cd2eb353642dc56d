//! Binding listeners: shared by the proxy and the admin server.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpListener;

/// Binds a TCP listener on every address (port 0 picks a free port; the servers
/// log what they got).
pub async fn bind_tcp(addrs: &[SocketAddr]) -> io::Result<Vec<TcpListener>> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        listeners.push(TcpListener::bind(addr).await?);
    }
    Ok(listeners)
}
