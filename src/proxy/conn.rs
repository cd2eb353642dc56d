//! What a client connection's two handlers ([`super::connect`], [`super::forward`]) share
//! once its head is read: the received head, refusing, lingering, dialling the checked
//! addresses, and the decision lines.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::ProxyState;
use super::budget::{ConnBudget, Held};
use super::check::{Approval, Asker, Door, Refusal};
use super::error::{ProxyError, redact_target, refusal_response};
use super::http::RequestHead;
use super::relay::Relayed;
use super::target::Target;
use crate::error::HasFault;

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

/// Writes the refusal and logs it.
pub(crate) async fn refuse(
    stream: &mut TcpStream,
    asker: &Asker,
    method: &str,
    target: &str,
    err: impl Into<Refusal>,
) {
    let Refusal {
        error: err,
        answer_ids,
    } = err.into();
    log_refusal(asker, method, target, &err, &answer_ids);
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

/// The decision line's `answer_ids`: the ids of the DNS answers used, comma-separated.
fn ids(answer_ids: &[u64]) -> Option<String> {
    (!answer_ids.is_empty()).then(|| {
        answer_ids
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// One decision line for a refusal; `answer_ids`: the DNS answers it looked at, if any.
pub(crate) fn log_refusal(
    asker: &Asker,
    method: &str,
    target: &str,
    err: &ProxyError,
    answer_ids: &[u64],
) {
    crate::telemetry::metrics::proxy_decision(asker.door.label(), "refused", err.code());
    if asker.mode == super::ProxyMode::Report {
        learn_refusal(asker, target, err);
    }
    let fault = err.fault();
    if fault != crate::error::Fault::Client {
        crate::telemetry::metrics::error("proxy", fault);
    }
    // A refusal of the client's request is routine; an upstream's or our own failure is
    // logged at warn or error, by its fault.
    crate::fault_event!(
        fault,
        target: "portcullis::decision",
        door = asker.door.log_name(),
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
        fault = fault.as_str(),
        answer_ids = ids(answer_ids),
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
        asker.door.label(),
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
    if approval.would_refuse.is_some() {
        learn(asker, target, crate::learn::Seen::WouldRefuse);
    }
    tracing::info!(
        target: "portcullis::decision",
        door = asker.door.log_name(),
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
        answer_ids = ids(&approval.answer_ids),
        sni,
    );
}

/// Tells the learner what a report-mode request of `asker` reached.
fn learn(asker: &Asker, target: &Target, seen: crate::learn::Seen) {
    let host = match &target.host {
        super::target::Host::Name(name) => name.as_str().to_owned(),
        super::target::Host::Ip(ip) => ip.to_string(),
    };
    crate::learn::observe(&crate::learn::Observation {
        group: &asker.group_name,
        host: &host,
        port: Some(target.port),
        door: match asker.door {
            Door::Forward => crate::learn::Door::Forward,
            Door::RoutedTls => crate::learn::Door::RoutedTls,
            Door::RoutedHttp => crate::learn::Door::RoutedHttp,
            Door::Proxy | Door::Connect => crate::learn::Door::Connect,
        },
        client: asker.client.ip(),
        seen,
    });
}

/// A report-mode refusal the allowlist could change, or must never: a threat-listed
/// name, a private answer, a port outside the public ones, an IP literal.
fn learn_refusal(asker: &Asker, raw: &str, err: &ProxyError) {
    use super::error::RefusalCode;
    let Some(code) = err.refusal_code() else {
        return;
    };
    let reason = err.to_string();
    let seen = match code {
        RefusalCode::Blocked | RefusalCode::BlockedAnswer => crate::learn::Seen::Blocked {
            list: "threat list",
            rule: &reason,
        },
        RefusalCode::DeniedAddress => crate::learn::Seen::Private(None),
        RefusalCode::PortNotAllowed | RefusalCode::IpLiteral | RefusalCode::NotAllowlisted => {
            crate::learn::Seen::WouldRefuse
        }
        _ => return,
    };
    let target = super::target::parse_authority(raw)
        .ok()
        .or_else(|| super::target::parse_http_url(raw).ok().map(|(t, _)| t));
    if let Some(target) = target {
        learn(asker, &target, seen);
    }
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
        door = asker.door.log_name(),
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
