//! The proxy listener: accept, apply the connection limits, read one request head
//! (bounded in size and time) and hand it to [`super::connect`] or [`super::forward`].
//!
//! Servers take bound listeners and a shutdown signal (as in tokio's mini-redis), so
//! tests start them on port 0.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::check::{Approval, Asker};
use super::error::{ProxyError, redact_target, refusal_response};
use super::http::read_request_head;
use super::splice::Relayed;
use super::target::Target;
use super::{ProxyState, connect, forward};
use crate::error::HasFault;

pub use crate::listen::bind_tcp as bind;

/// Serves the proxy on `listeners` until `shutdown` completes; then stops accepting and
/// drops connections that have not sent a request, lets open tunnels and requests run
/// for up to `drain_secs`, closes what is left and waits for every task to end.
pub async fn serve(
    listeners: Vec<TcpListener>,
    state: Arc<ProxyState>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    crate::admin::metrics::proxy_max_connections(state.config.max_connections);
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

/// Holds one connection slot (global and per client) until dropped.
struct Slot {
    state: Arc<ProxyState>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.state.limits.total.fetch_sub(1, Ordering::Relaxed);
        crate::admin::metrics::proxy_connection(false);
        let mut map = self
            .state
            .limits
            .per_client
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.client);
            }
        }
    }
}

fn take_slot(state: &Arc<ProxyState>, client: IpAddr) -> Result<Slot, ProxyError> {
    let total = state.limits.total.fetch_add(1, Ordering::Relaxed);
    crate::admin::metrics::proxy_connection(true);
    let slot = Slot {
        state: state.clone(),
        client,
    };
    let mut map = state
        .limits
        .per_client
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let n = map.entry(client).or_insert(0);
    *n += 1;
    let over_client = *n > state.config.max_connections_per_client;
    drop(map);
    if total >= state.config.max_connections {
        return Err(ProxyError::Overloaded);
    }
    if over_client {
        return Err(ProxyError::ClientLimit);
    }
    Ok(slot)
}

async fn connection(state: Arc<ProxyState>, mut stream: TcpStream, client: SocketAddr, stop: Stop) {
    let _slot = match take_slot(&state, client.ip()) {
        Ok(slot) => slot,
        Err(err) => {
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
    let mut buf = Vec::with_capacity(1024);
    let read = tokio::select! {
        _ = stop.accepting.cancelled() => return,
        read = tokio::time::timeout(
            state.config.header_timeout(),
            read_request_head(&mut stream, &mut buf, state.config.max_header_bytes, state.config.max_headers),
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
    let rest = buf[len..].to_vec();
    drop(buf);
    if head.method == "CONNECT" {
        connect::handle(&state, stream, &asker, head, rest, &stop.tunnels).await;
    } else {
        forward::handle(&state, stream, &asker, head, rest, &stop.tunnels).await;
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
}

/// One decision line for a refusal.
pub(crate) fn log_refusal(asker: &Asker, method: &str, target: &str, err: &ProxyError) {
    crate::admin::metrics::proxy_decision("refused", err.code());
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
    crate::admin::metrics::proxy_decision(
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
    crate::admin::metrics::proxy_closed(relayed.up, relayed.down, started.elapsed());
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
