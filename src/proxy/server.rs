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
use super::conn::{Received, log_refusal, refuse};
use super::error::{ProxyError, refusal_response};
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
    Ok(())
}

/// The two steps of a graceful stop.
#[derive(Clone, Default)]
struct Stop {
    /// Stop accepting; close connections that have not sent a request yet.
    accepting: CancellationToken,
    /// The drain deadline passed: close tunnels and requests in progress.
    tunnels: CancellationToken,
}

/// Counts an open client connection in `portcullis_proxy_connections` until dropped.
struct OpenGauge;

impl Drop for OpenGauge {
    fn drop(&mut self) {
        crate::telemetry::metrics::proxy_connection(false);
    }
}

async fn connection(state: Arc<ProxyState>, mut stream: TcpStream, client: SocketAddr, stop: Stop) {
    crate::telemetry::metrics::proxy_connection(true);
    let _open = OpenGauge;
    let slot = state.limits.conns.take(
        client.ip(),
        state.config.max_connections,
        state.config.max_connections_per_client,
    );
    let _slot = match slot {
        Ok(slot) => slot,
        Err(hit) => {
            let err = match hit {
                LimitHit::Total => ProxyError::Overloaded,
                LimitHit::PerClient => ProxyError::ClientLimit,
            };
            let asker = state.asker(client);
            log_refusal(&asker, "-", "-", &err);
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                stream.write_all(&refusal_response(&err, asker.conn_id)),
            )
            .await;
            return;
        }
    };
    let asker = state.asker(client);
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
    if connect {
        connect::handle(&state, stream, &asker, received, &stop.tunnels).await;
    } else {
        forward::handle(&state, stream, &asker, received, &stop.tunnels).await;
    }
}
