//! Connections to an upstream: one per transport, opened lazily and dropped on failure.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use hickory_net::NetError;
use hickory_net::h2::HttpsClientStream;
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::tls::tls_client_connect;
use hickory_net::udp::UdpClientStream;
use hickory_net::xfer::{DnsExchange, DnsHandle, DnsMultiplexer, DnsRequestSender};
use hickory_proto::op::{DnsRequest, DnsRequestOptions, Message};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::{NEXT_ID, lock};

type Provider = TokioRuntimeProvider;

/// Cap on concurrent queries over one multiplexed TCP/DoT connection. hickory's multiplexer
/// answers `Busy` beyond its own limit (set to twice this), which we would read as a failure.
const STREAM_INFLIGHT: usize = 32;

/// How to reach an upstream.
#[derive(Clone)]
pub(super) enum Transport {
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
pub(super) struct Slot {
    transport: Transport,
    current: Mutex<Option<Conn>>,
    /// Serialises connecting so a burst of queries opens one connection, not one each.
    connecting: tokio::sync::Mutex<()>,
    pub(super) inflight: Option<Semaphore>,
}

impl Slot {
    pub(super) fn new(transport: Transport) -> Self {
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
    pub(super) async fn get(
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
    pub(super) fn discard(&self, id: u64) {
        let mut current = lock(&self.current);
        if current.as_ref().is_some_and(|conn| conn.id == id) {
            *current = None;
        }
    }
}

/// Why one round trip failed.
#[derive(Debug)]
pub(super) enum Failure {
    Timeout,
    Net(NetError),
    Bad(String),
}

pub(super) async fn round_trip(
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
