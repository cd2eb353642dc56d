//! Dialling the checked address. A trait object so tests can prove which
//! addresses were (and, above all, were not) dialled.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;

/// Opens a TCP connection to exactly `addr` (the caller applies the connect timeout).
#[async_trait::async_trait]
pub trait Dial: Send + Sync {
    async fn dial(&self, addr: SocketAddr) -> io::Result<TcpStream>;
}

/// The production dialer: a plain TCP connect, no name resolution anywhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpDialer;

#[async_trait::async_trait]
impl Dial for TcpDialer {
    async fn dial(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}
