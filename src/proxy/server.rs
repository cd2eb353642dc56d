//! The proxy listener: accept, apply the connection limits, read one request head
//! (bounded in size and time) and hand it to [`super::connect`] or [`super::forward`].
//!
//! Servers take bound listeners and a shutdown signal (as in tokio's mini-redis), so
//! tests start them on port 0.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::budget::ConnBudget;
use super::check::Door;
use super::conn::{Received, log_refusal, refuse};
use super::error::{ProxyError, refusal_response};
use super::forward::Form;
use super::http::read_request_head;
use super::{ProxyState, connect, forward};
use crate::listen::{LimitHit, accept_loop};

pub use crate::listen::bind_tcp as bind;

/// Serves the proxy on `listeners` until `shutdown` completes; then stops accepting and
/// drops connections that have not sent a request, lets open tunnels and requests run
/// for up to `drain_secs`, closes what is left and waits for every task to end.
pub async fn serve(
    listeners: Vec<TcpListener>,
    state: Arc<ProxyState>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    crate::telemetry::metrics::proxy_max_connections(state.config.max_connections);
    crate::telemetry::metrics::proxy_max_buffered(state.config.max_buffered_bytes);
    let stop = Stop::default();
    let tracker = TaskTracker::new();
    for listener in listeners {
        tracing::info!(addr = %listener.local_addr()?, "listening proxy");
        let (state, conn_stop, conns) = (state.clone(), stop.clone(), tracker.clone());
        tracker.spawn(accept_loop(
            listener,
            stop.accepting.clone(),
            "proxy",
            move |stream, client| {
                let _ = stream.set_nodelay(true);
                conns.spawn(connection(state.clone(), stream, client, conn_stop.clone()));
            },
        ));
    }
    shutdown.await;
    drain(&stop, &tracker, &state).await;
    Ok(())
}

/// The graceful stop of a listener's connections: stops accepting (connections that have
/// not sent a request close), lets open tunnels and requests run for up to `drain_secs`,
/// closes what is left and waits for every task in `tracker` to end. The proxy's and the
/// routed listeners' connections stop alike.
pub(crate) async fn drain(stop: &Stop, tracker: &TaskTracker, state: &ProxyState) {
    stop.accepting.cancel();
    tracker.close();
    let drain = state.config.drain();
    if tokio::time::timeout(Duration::from_millis(50), tracker.wait())
        .await
        .is_err()
    {
        tracing::info!(
            connections = tracker.len(),
            drain_secs = drain.as_secs(),
            "proxy draining: open tunnels may finish until the deadline"
        );
        if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
            tracing::info!(
                connections = tracker.len(),
                "drain deadline reached: closing the remaining tunnels"
            );
            stop.tunnels.cancel();
            tracker.wait().await;
        }
    }
}

/// The two steps of a graceful stop.
#[derive(Clone, Default)]
pub(crate) struct Stop {
    /// Stop accepting; close connections that have not sent a request yet.
    pub(crate) accepting: CancellationToken,
    /// The drain deadline passed: close tunnels and requests in progress.
    pub(crate) tunnels: CancellationToken,
}

/// Counts an open client connection in `portcullis_proxy_connections` until dropped.
pub(crate) struct OpenGauge;

impl OpenGauge {
    pub(crate) fn open() -> OpenGauge {
        crate::telemetry::metrics::proxy_connection(true);
        OpenGauge
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        crate::telemetry::metrics::proxy_connection(false);
    }
}

/// Which listener a plain-HTTP connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Front {
    /// The proxy: `CONNECT host:port` or an absolute-form `http://` request.
    Proxy,
    /// A routed HTTP listener on `port`: an origin-form request routed by `Host`.
    RoutedHttp { port: u16 },
}

/// Takes a connection slot of the proxy's limits for `client`, or says which limit refused.
pub(crate) fn take_slot(
    state: &ProxyState,
    client: SocketAddr,
) -> Result<crate::listen::Slot, ProxyError> {
    state
        .limits
        .conns
        .take(
            client.ip(),
            state.config.max_connections,
            state.config.max_connections_per_client,
        )
        .map_err(|hit| match hit {
            LimitHit::Total => ProxyError::Overloaded,
            LimitHit::PerClient => ProxyError::ClientLimit,
        })
}

async fn connection(state: Arc<ProxyState>, stream: TcpStream, client: SocketAddr, stop: Stop) {
    serve_http(&state, stream, client, &stop, Front::Proxy).await;
}

/// One client connection that starts with an HTTP request head: the connection limits,
/// the head (bounded in size and time), then CONNECT or forwarding.
pub(crate) async fn serve_http(
    state: &ProxyState,
    mut stream: TcpStream,
    client: SocketAddr,
    stop: &Stop,
    front: Front,
) {
    let _open = OpenGauge::open();
    let door = match front {
        Front::Proxy => Door::Proxy,
        Front::RoutedHttp { .. } => Door::RoutedHttp,
    };
    let mut asker = state.asker(client, door);
    let _slot = match take_slot(state, client) {
        Ok(slot) => slot,
        Err(err) => {
            log_refusal(&asker, "-", "-", &err, &[]);
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                stream.write_all(&refusal_response(&err, asker.conn_id)),
            )
            .await;
            return;
        }
    };
    let conn = ConnBudget::new(&state.limits.buffers, state.config.connection_buffer_cap());
    let Ok(mut held) = conn.hold(0) else { return };
    let mut buf = Vec::new();
    let read = tokio::select! {
        _ = stop.accepting.cancelled() => return,
        read = tokio::time::timeout(
            state.config.header_timeout(),
            read_request_head(&mut stream, &mut buf, state.config.max_header_bytes, state.config.max_headers, &mut held),
        ) => read,
    };
    let (head, len) = match read {
        Ok(Ok(head)) => head,
        Ok(Err(ProxyError::EmptyRequest)) => return,
        Ok(Err(err)) => return refuse(&mut stream, &asker, "-", "-", err).await,
        Err(_) => {
            return refuse(&mut stream, &asker, "-", "-", ProxyError::HeaderTimeout).await;
        }
    };
    // The bytes after the head stay in the same buffer; the parsed head is a copy.
    buf.drain(..len);
    if let Err(err) = held.resize(len + buf.capacity()) {
        return refuse(&mut stream, &asker, &head.method, &head.target, err).await;
    }
    let connect = head.method == "CONNECT";
    let received = Received {
        head,
        head_len: len,
        rest: buf,
        held,
        conn: &conn,
    };
    match front {
        Front::Proxy if connect => {
            asker.door = Door::Connect;
            connect::handle(state, stream, &asker, received, &stop.tunnels).await;
        }
        Front::Proxy => {
            asker.door = Door::Forward;
            forward::handle(
                state,
                stream,
                &asker,
                received,
                Form::Absolute,
                &stop.tunnels,
            )
            .await;
        }
        Front::RoutedHttp { port } => {
            let form = Form::Origin { port };
            forward::handle(state, stream, &asker, received, form, &stop.tunnels).await;
        }
    }
}
