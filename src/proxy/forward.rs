//! Absolute-form plain-HTTP forwarding: `GET http://host/path HTTP/1.1`.
//!
//! One request per client connection. The request is read whole (head and body,
//! bounded) and checked before the origin is dialled; it is re-written in origin form
//! with hop-by-hop and `Proxy-*` fields removed, `Host` set from the URL and the body
//! framed by `Content-Length`. The response is relayed as it comes (redirects
//! included: the proxy never follows them) with `Connection: close`.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::ProxyState;
use super::check::{Asker, Kind};
use super::error::ProxyError;
use super::http::{
    BodyFraming, RequestHead, connection_tokens, is_hop_by_hop, parse_response_head, read_chunked,
};
use super::server::{dial_checked, log_allowed, log_close, log_refusal, refuse};
use super::splice::{CloseReason, Relayed};
use super::target::{Target, parse_http_url};

pub(crate) async fn handle(
    state: &ProxyState,
    mut client: TcpStream,
    asker: &Asker,
    head: RequestHead,
    rest: Vec<u8>,
    stop: &CancellationToken,
) {
    let method = head.method.clone();
    let raw = head.target.clone();
    let prepared = tokio::select! {
        _ = stop.cancelled() => return,
        prepared = prepare(state, &mut client, asker, &head, rest) => prepared,
    };
    let (target, approval, request) = match prepared {
        Ok(p) => p,
        Err(err) => return refuse(&mut client, asker, &method, &raw, err).await,
    };
    let (mut origin, dialled) = match dial_checked(state, &approval.addrs).await {
        Ok(ok) => ok,
        Err(err) => return refuse(&mut client, asker, &method, &raw, err).await,
    };
    log_allowed(asker, &method, &target, &approval, dialled, None);
    let started = Instant::now();
    let idle = state.config.idle_timeout();
    let result = tokio::select! {
        _ = stop.cancelled() => Err((CloseReason::Shutdown, None)),
        r = tokio::time::timeout(state.config.tunnel_max(), exchange(state, &mut client, &mut origin, &request, idle)) => {
            r.unwrap_or(Err((CloseReason::MaxLifetime, None)))
        }
    };
    let relayed = match result {
        Ok(relayed) => relayed,
        Err((reason, err)) => {
            if let Some(err) = err {
                // Nothing was sent to the client yet: it gets a readable 502/504.
                log_refusal(asker, &method, &raw, &err);
                let _ = client
                    .write_all(&super::error::refusal_response(&err, asker.conn_id))
                    .await;
            }
            Relayed {
                up: request.len() as u64,
                down: 0,
                reason,
            }
        }
    };
    let _ = client.shutdown().await;
    log_close(asker, &method, &target, dialled, &relayed, started);
}

/// Validates, approves and reads the whole request; returns the bytes to send upstream.
async fn prepare(
    state: &ProxyState,
    client: &mut TcpStream,
    asker: &Asker,
    head: &RequestHead,
    mut rest: Vec<u8>,
) -> Result<(Target, super::check::Approval, Vec<u8>), ProxyError> {
    if head.target.starts_with('/') {
        return Err(ProxyError::BadRequest(
            "origin-form request: this is a proxy; send absolute-form http:// URLs (or CONNECT)"
                .into(),
        ));
    }
    if !head.method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ProxyError::BadRequest(format!(
            "bad method {:?}",
            head.method
        )));
    }
    if head.method == "TRACE" {
        return Err(ProxyError::BadRequest("TRACE is not forwarded".into()));
    }
    let (target, path) = parse_http_url(&head.target).map_err(|error| ProxyError::BadTarget {
        target: head.target.clone(),
        error,
    })?;
    if head.header("host").count() > 1 {
        return Err(ProxyError::BadRequest("more than one Host header".into()));
    }
    let framing = head.framing()?;
    let approval = state.approve(asker, &target, Kind::Http).await?;

    let max = state.config.max_body_bytes;
    let expects = head
        .header("expect")
        .any(|v| v.eq_ignore_ascii_case(b"100-continue"));
    if expects && framing != BodyFraming::None {
        if let BodyFraming::Length(n) = framing
            && n > max as u64
        {
            return Err(ProxyError::BodyTooLarge(max));
        }
        client
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    }
    let body_timeout = state.config.idle_timeout().min(Duration::from_secs(60));
    let body = tokio::time::timeout(body_timeout, async {
        match framing {
            BodyFraming::None => Ok(Vec::new()),
            BodyFraming::Length(n) => {
                if n > max as u64 {
                    return Err(ProxyError::BodyTooLarge(max));
                }
                let n = n as usize;
                while rest.len() < n {
                    let mut chunk = vec![0u8; (n - rest.len()).min(64 * 1024)];
                    let got = client
                        .read(&mut chunk)
                        .await
                        .map_err(|e| ProxyError::BadRequest(format!("reading the body: {e}")))?;
                    if got == 0 {
                        return Err(ProxyError::BadRequest("truncated body".into()));
                    }
                    rest.extend_from_slice(&chunk[..got]);
                }
                rest.truncate(n);
                Ok(rest)
            }
            BodyFraming::Chunked => read_chunked(client, &mut rest, max).await,
        }
    })
    .await
    .map_err(|_| ProxyError::BadRequest("request body not received in time".into()))??;

    let dropped = connection_tokens(head);
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(format!("{} {path} HTTP/1.1\r\n", head.method).as_bytes());
    let host = if target.port == 80 {
        target.host.to_string()
    } else {
        target.to_string()
    };
    out.extend_from_slice(format!("Host: {host}\r\n").as_bytes());
    for (name, value) in &head.headers {
        if is_hop_by_hop(name) || dropped.iter().any(|d| name.eq_ignore_ascii_case(d)) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if framing != BodyFraming::None || !body.is_empty() {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(&body);
    Ok((target, approval, out))
}

type ExchangeError = (CloseReason, Option<ProxyError>);

/// Sends the request, relays the response head (filtered) and body until the origin closes.
async fn exchange(
    state: &ProxyState,
    client: &mut TcpStream,
    origin: &mut TcpStream,
    request: &[u8],
    idle: Duration,
) -> Result<Relayed, ExchangeError> {
    let gateway = |why: String| (CloseReason::Error, Some(ProxyError::BadGateway(why)));
    origin
        .write_all(request)
        .await
        .map_err(|e| gateway(format!("sending the request: {e}")))?;
    let mut buf = Vec::with_capacity(4096);
    let mut down = 0u64;
    // Interim 1xx responses are passed on; the final head decides.
    let (head, len) = loop {
        let parsed = loop {
            if let Some(done) =
                parse_response_head(&buf).map_err(|e| (CloseReason::Error, Some(e)))?
            {
                break done;
            }
            if buf.len() >= state.config.max_response_header_bytes {
                return Err(gateway("response head too large".into()));
            }
            let mut chunk = [0u8; 4096];
            let n = match tokio::time::timeout(idle, origin.read(&mut chunk)).await {
                Err(_) => {
                    return Err((
                        CloseReason::Idle,
                        Some(ProxyError::ConnectTimeout {
                            addr: "origin (no response)".into(),
                        }),
                    ));
                }
                Ok(Err(e)) => return Err(gateway(format!("reading the response: {e}"))),
                Ok(Ok(n)) => n,
            };
            if n == 0 {
                return Err(gateway("the origin closed without a response".into()));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let (head, len) = parsed;
        if (100..200).contains(&head.code) {
            if head.code == 101 {
                return Err(gateway("unexpected 101 Switching Protocols".into()));
            }
            let interim = response_head(&head, false);
            client
                .write_all(&interim)
                .await
                .map_err(|_| (CloseReason::Error, None))?;
            buf.drain(..len);
            continue;
        }
        break (head, len);
    };
    let out = response_head(&head, true);
    client
        .write_all(&out)
        .await
        .map_err(|_| (CloseReason::Error, None))?;
    client
        .write_all(&buf[len..])
        .await
        .map_err(|_| (CloseReason::Error, None))?;
    down += (out.len() + buf.len() - len) as u64;
    drop(buf);
    let mut chunk = vec![0u8; 16 * 1024];
    let reason = loop {
        match tokio::time::timeout(idle, origin.read(&mut chunk)).await {
            Err(_) => break CloseReason::Idle,
            Ok(Err(_)) => break CloseReason::Error,
            Ok(Ok(0)) => break CloseReason::Done,
            Ok(Ok(n)) => {
                if client.write_all(&chunk[..n]).await.is_err() {
                    break CloseReason::Error;
                }
                down += n as u64;
            }
        }
    };
    Ok(Relayed {
        up: request.len() as u64,
        down,
        reason,
    })
}

/// The response head for the client: hop-by-hop fields removed (framing kept: the
/// body is relayed as sent), `Connection: close` on the final response.
fn response_head(head: &super::http::ResponseHead, last: bool) -> Vec<u8> {
    let dropped: Vec<String> = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| {
            v.split(|&b| b == b',')
                .map(|t| String::from_utf8_lossy(t).trim().to_ascii_lowercase())
        })
        .collect();
    let mut out = format!("HTTP/1.1 {} {}\r\n", head.code, head.reason).into_bytes();
    for (name, value) in &head.headers {
        let lower = name.to_ascii_lowercase();
        let hop = matches!(
            lower.as_str(),
            "connection" | "keep-alive" | "te" | "upgrade"
        ) || lower.starts_with("proxy-")
            || dropped.contains(&lower)
                && lower != "content-length"
                && lower != "transfer-encoding";
        if hop {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if last {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}
