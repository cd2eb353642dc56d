//! The proxy listener: accept, apply the connection limits, read one request head
//! (bounded in size and time) and hand it to [`super::connect`] or [`super::forward`].
//!
//! Servers take bound listeners and a shutdown signal (as in tokio's mini-redis), so
//! tests start them on port 0.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::budget::{ConnBudget, Held};
use super::check::{Approval, Asker};
use super::error::{ProxyError, redact_target, refusal_response};
use super::http::{RequestHead, read_request_head};
use super::splice::Relayed;
use super::target::Target;
use super::{ProxyState, connect, forward};
use crate::error::HasFault;
use crate::listen::LimitHit;

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
        tracker.spawn(accept_loop(
            listener,
            state.clone(),
            stop.clone(),
            tracker.clone(),
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

async fn accept_loop(
    listener: TcpListener,
    state: Arc<ProxyState>,
    stop: Stop,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.accepting.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, client)) => {
                let _ = stream.set_nodelay(true);
                tracker.spawn(connection(state.clone(), stream, client, stop.clone()));
            }
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "proxy accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A request head read from a client, and what it holds of the connection's budget.
pub(crate) struct Received<'c> {
    pub head: RequestHead,
    /// Length of the head as received (what `head` holds).
    pub head_len: usize,
    /// Bytes read after the head (body, or the start of the tunnel).
    pub rest: Vec<u8>,
    /// Reserves `head_len` plus the capacity of `rest`.
    pub held: Held<'c>,
    pub conn: &'c ConnBudget<'c>,
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
        Ok(Err(ProxyError::BadRequest(why))) if why == "empty request" => return,
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

/// Writes the refusal and logs it.
pub(crate) async fn refuse(
    stream: &mut TcpStream,
    asker: &Asker,
    method: &str,
    target: &str,
    err: ProxyError,
) {
    log_refusal(asker, method, target, &err);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        stream
            .write_all(&refusal_response(&err, asker.conn_id))
            .await?;
        stream.shutdown().await
    })
    .await;
    linger(stream).await;
}

/// After the answer and a FIN, reads and drops what the client still sends (a body
/// it was uploading) for a moment: closing with unread bytes would reset the
/// connection, and a reset can destroy the answer before the client reads it.
pub(crate) async fn linger(stream: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    let mut left = 4usize << 20;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// One decision line for a refusal.
pub(crate) fn log_refusal(asker: &Asker, method: &str, target: &str, err: &ProxyError) {
    crate::telemetry::metrics::proxy_decision("refused", err.code());
    tracing::info!(
        target: "portcullis::decision",
        door = "proxy",
        conn_id = asker.conn_id,
        client = %asker.client.ip(),
        group = %asker.group_name,
        mode = asker.mode.as_str(),
        method,
        // Not `target`: the JSON formatter already uses that key for the log target.
        request = %redact_target(target),
        decision = "refused",
        status = err.status(),
        reason_code = err.code(),
        reason = %err,
        fault = err.fault().as_str(),
    );
}

/// One decision line for an allowed request, once the origin is connected.
pub(crate) fn log_allowed(
    asker: &Asker,
    method: &str,
    target: &Target,
    approval: &Approval,
    dialled: SocketAddr,
    sni: Option<&str>,
) {
    crate::telemetry::metrics::proxy_decision(
        if approval.would_refuse.is_some() {
            "allowed_report"
        } else {
            "allowed"
        },
        if approval.rule.is_some() {
            "allow_rule"
        } else {
            "public_destination"
        },
    );
    tracing::info!(
        target: "portcullis::decision",
        door = "proxy",
        conn_id = asker.conn_id,
        client = %asker.client.ip(),
        group = %asker.group_name,
        mode = asker.mode.as_str(),
        method,
        host = %target.host,
        port = target.port,
        addr = %dialled,
        decision = if approval.would_refuse.is_some() { "allowed_report" } else { "allowed" },
        reason = approval.rule.as_deref().map_or("public destination", |_| "allow rule"),
        rule = approval.rule.as_deref(),
        would_refuse = approval.would_refuse.as_deref(),
        skipped = (!approval.skipped.is_empty()).then(|| approval.skipped.join(", ")),
        answer_ids = (!approval.answer_ids.is_empty()).then(|| {
            approval.answer_ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
        }),
        sni,
    );
}

/// One line when a tunnel or forwarded exchange closes.
pub(crate) fn log_close(
    asker: &Asker,
    method: &str,
    target: &Target,
    dialled: SocketAddr,
    relayed: &Relayed,
    started: Instant,
) {
    crate::telemetry::metrics::proxy_closed(relayed.up, relayed.down, started.elapsed());
    tracing::info!(
        target: "portcullis::decision",
        door = "proxy",
        event = "close",
        conn_id = asker.conn_id,
        client = %asker.client.ip(),
        group = %asker.group_name,
        method,
        host = %target.host,
        port = target.port,
        addr = %dialled,
        decision = "closed",
        reason = relayed.reason.as_str(),
        bytes_up = relayed.up,
        bytes_down = relayed.down,
        duration_ms = started.elapsed().as_millis() as u64,
    );
}

/// Dials the checked addresses in order (at most 4), each with the connect timeout.
pub(crate) async fn dial_checked(
    state: &ProxyState,
    addrs: &[SocketAddr],
) -> Result<(TcpStream, SocketAddr), ProxyError> {
    let mut last = ProxyError::Internal("no address to dial".into());
    for &addr in addrs.iter().take(4) {
        match tokio::time::timeout(state.config.connect_timeout(), state.dialer.dial(addr)).await {
            Ok(Ok(stream)) => return Ok((stream, addr)),
            Ok(Err(e)) => {
                last = ProxyError::ConnectFailed {
                    addr: addr.to_string(),
                    why: e.to_string(),
                }
            }
            Err(_) => {
                last = ProxyError::ConnectTimeout {
                    addr: addr.to_string(),
                }
            }
        }
    }
    Err(last)
}
