//! Plain-HTTP forwarding: absolute form on the proxy (`GET http://host/path HTTP/1.1`),
//! origin form routed by `Host` on a routed HTTP listener ([`Form`]).
//!
//! One request per client connection. The head is checked and approved before the
//! origin is dialled, and re-written in origin form with hop-by-hop and `Proxy-*`
//! fields removed and `Host` set from the URL.
//!
//! Bodies stream through one buffer per direction (`[proxy] body_buffer_bytes`): the
//! client is read only as fast as the origin takes its bytes, so a body of any size
//! costs one buffer. A body that fits in the buffer (most do) is read whole and
//! checked before the origin is dialled and sent with `Content-Length`; a longer one
//! is sent as it arrives: with its `Content-Length`, or re-framed as canonical chunks
//! (sizes re-encoded, extensions and trailers dropped) after the strict decoder of
//! [`ChunkedDecoder`]. A body over `max_body_bytes` is refused with 413 before dialling
//! when Content-Length says so; a chunked one is cut off when it passes the limit and
//! the origin sees an incomplete request (no last chunk), never a complete one.
//!
//! The response streams back likewise, framing as sent, with `Connection: close`
//! (redirects included: the proxy never follows them). A failure before any response
//! byte reached the client is answered with the refusal's status (400, 408, 413, 502,
//! 504); after that the connection is closed.
//!
//! Here: the head, its approval and the start of the body; the exchange itself (both
//! directions at once) is `exchange`, its idle-bounded reads and writes `timed`.

mod exchange;
mod timed;

use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::ProxyState;
use super::budget::Held;
use super::check::{Approval, Asker, Kind};
use super::conn::{Received, dial_checked, linger, log_allowed, log_close, log_refusal, refuse};
use super::error::ProxyError;
use super::http::{BodyFraming, ChunkedDecoder, RequestHead, connection_tokens, is_hop_by_hop};
use super::relay::{CloseReason, Relayed};
use super::target::{Target, TargetError, parse_authority, parse_http_url};
use exchange::exchange;
use timed::Counter;

/// How a request names its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The proxy's absolute form: `GET http://host[:port]/path`.
    Absolute,
    /// A routed HTTP listener's origin form: `GET /path` with `Host: host`; the
    /// destination port is `port`, the one the connection came in on.
    Origin { port: u16 },
}

pub(crate) async fn handle(
    state: &ProxyState,
    mut client: TcpStream,
    asker: &Asker,
    received: Received<'_>,
    form: Form,
    stop: &CancellationToken,
) {
    let method = received.head.method.clone();
    // The request as the log names it: routed requests with their Host, as a URL.
    let raw = match form {
        Form::Absolute => received.head.target.clone(),
        Form::Origin { .. } => {
            let host = received.head.header("host").next().unwrap_or_default();
            format!(
                "http://{}{}",
                String::from_utf8_lossy(host),
                received.head.target
            )
        }
    };
    let conn = received.conn;
    let prepared = tokio::select! {
        _ = stop.cancelled() => return,
        prepared = prepare(state, &mut client, asker, received, form) => prepared,
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(err) => return refuse(&mut client, asker, &method, &raw, err).await,
    };
    let (mut origin, dialled) = match dial_checked(state, &prepared.approval.addrs).await {
        Ok(ok) => ok,
        Err(err) => return refuse(&mut client, asker, &method, &raw, err).await,
    };
    log_allowed(
        asker,
        &method,
        &prepared.target,
        &prepared.approval,
        dialled,
        None,
    );
    let target = prepared.target.clone();
    let started = Instant::now();
    let up = Counter::default();
    let result = tokio::select! {
        _ = stop.cancelled() => Err((CloseReason::Shutdown, None)),
        r = tokio::time::timeout(
            state.config.tunnel_max(),
            exchange(state, conn, &mut client, &mut origin, prepared, &up),
        ) => r.unwrap_or(Err((CloseReason::MaxLifetime, None))),
    };
    let relayed = match result {
        Ok(relayed) => relayed,
        Err((reason, err)) => {
            if let Some(err) = err {
                // Nothing was sent to the client yet: it gets a readable answer.
                log_refusal(asker, &method, &raw, &err, &[]);
                let _ = client
                    .write_all(&super::error::refusal_response(&err, asker.conn_id))
                    .await;
            }
            Relayed {
                up: up.get(),
                down: 0,
                reason,
            }
        }
    };
    drop(origin);
    let _ = client.shutdown().await;
    linger(&mut client).await;
    log_close(asker, &method, &target, dialled, &relayed, started);
}

/// What is known once the head is approved and the start of the body is read.
struct Prepared<'c> {
    target: Target,
    approval: Approval,
    /// The head for the origin.
    upstream_head: Vec<u8>,
    body: Body,
    /// Request-body buffer: the start of the body (see [`Body`]).
    buf: Vec<u8>,
    /// Reserves the client's head and `buf`.
    held: Held<'c>,
}

/// How the request body goes upstream.
enum Body {
    /// No body, or all of it is in `buf`: sent with `Content-Length`.
    Whole,
    /// `Content-Length` bytes, of which `buf` holds the first ones.
    Length { left: u64 },
    /// A chunked body longer than the buffer: `buf[..data_end]` is decoded data, the
    /// rest of `buf` the start of a line.
    Chunked {
        decoder: ChunkedDecoder,
        data_end: usize,
    },
}

/// Validates and approves the head and reads the body as far as the buffer goes.
async fn prepare<'c>(
    state: &ProxyState,
    client: &mut TcpStream,
    asker: &Asker,
    received: Received<'c>,
    form: Form,
) -> Result<Prepared<'c>, ProxyError> {
    let Received {
        head,
        head_len,
        rest: mut buf,
        mut held,
        ..
    } = received;
    let (target, path) = check_head(&head, form)?;
    let framing = head.framing()?;
    let approval = state.approve(asker, &target, Kind::Http).await?;

    let max = state.config.max_body_bytes;
    if let BodyFraming::Length(n) = framing
        && n > max as u64
    {
        return Err(ProxyError::BodyTooLarge(max));
    }
    let expects = head
        .header("expect")
        .any(|v| v.eq_ignore_ascii_case(b"100-continue"));
    if expects && framing != BodyFraming::None {
        client
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    }
    let size = state.config.body_buffer_bytes.max(buf.len());
    if framing == BodyFraming::None {
        buf = Vec::new();
    } else {
        // Reserved in the budget before it is allocated.
        held.resize(head_len + size)?;
        buf.reserve_exact(size - buf.len());
    }
    held.resize(head_len + buf.capacity())?;
    // The start of the body must come as promptly as the head.
    let body = tokio::time::timeout(
        state.config.header_timeout(),
        read_start(state, client, framing, &mut buf, size),
    )
    .await
    .map_err(|_| ProxyError::BodyTimeout)??;

    let framing_field = framing_field(&body, framing, buf.len());
    let out = upstream_head(&head, head_len, &target, &path, framing_field.as_deref());
    // The parsed head is no longer needed: its reservation goes to the upstream head.
    drop(head);
    held.resize(out.capacity() + buf.capacity())?;
    Ok(Prepared {
        target,
        approval,
        upstream_head: out,
        body,
        buf,
        held,
    })
}

/// What a head must be to be forwarded: a plain method other than TRACE, at most one
/// `Host`, and the form of its door: an absolute `http://` URL on the proxy, origin form
/// with a `Host` on a routed listener. The target and the origin-form path.
fn check_head(head: &RequestHead, form: Form) -> Result<(Target, String), ProxyError> {
    if !head.method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ProxyError::BadRequest(format!(
            "bad method {:?}",
            head.method
        )));
    }
    if head.method == "TRACE" {
        return Err(ProxyError::BadRequest("TRACE is not forwarded".into()));
    }
    if head.header("host").count() > 1 {
        return Err(ProxyError::BadRequest("more than one Host header".into()));
    }
    match form {
        Form::Absolute => {
            if head.target.starts_with('/') {
                return Err(ProxyError::BadRequest(
                    "origin-form request: this is a proxy; send absolute-form http:// URLs (or CONNECT)"
                        .into(),
                ));
            }
            parse_http_url(&head.target).map_err(|error| ProxyError::BadTarget {
                target: head.target.clone(),
                error,
            })
        }
        Form::Origin { port } => routed_target(head, port),
    }
}

/// The destination of an origin-form request on a routed listener: the `Host` header's
/// host, on the port the connection came in on. The host is checked as strictly as a
/// CONNECT authority and the path as strictly as a forwarded URL's.
fn routed_target(head: &RequestHead, port: u16) -> Result<(Target, String), ProxyError> {
    if !head.target.starts_with('/') {
        return Err(ProxyError::BadRequest(
            "a routed HTTP listener takes origin-form requests (`GET /path` with Host)".into(),
        ));
    }
    let Some(value) = head.header("host").next() else {
        return Err(ProxyError::BadRequest(
            "no Host header: a routed request is routed by it".into(),
        ));
    };
    let Ok(host) = std::str::from_utf8(value) else {
        return Err(ProxyError::BadRequest("Host is not ASCII".into()));
    };
    let bad = |error| ProxyError::BadTarget {
        target: host.to_owned(),
        error,
    };
    let with_port = match parse_authority(host) {
        Ok(target) => target,
        Err(TargetError::MissingPort) => parse_authority(&format!("{host}:{port}")).map_err(bad)?,
        Err(error) => return Err(bad(error)),
    };
    if with_port.port != port {
        return Err(ProxyError::BadRequest(format!(
            "Host names port {} but the request came in on port {port}",
            with_port.port
        )));
    }
    // The path gets the URL's checks; the host was checked above.
    let (_, path) =
        parse_http_url(&format!("http://{with_port}{}", head.target)).map_err(|error| {
            ProxyError::BadTarget {
                target: head.target.clone(),
                error,
            }
        })?;
    Ok((with_port, path))
}

/// The upstream head's framing field: `Content-Length` for a body sent whole or with its
/// length, `Transfer-Encoding: chunked` for a longer chunked one, none without a body.
fn framing_field(body: &Body, framing: BodyFraming, whole: usize) -> Option<String> {
    match (body, framing) {
        (Body::Whole, BodyFraming::None) => None,
        (Body::Whole, _) => Some(format!("Content-Length: {whole}\r\n")),
        (_, BodyFraming::Length(n)) => Some(format!("Content-Length: {n}\r\n")),
        _ => Some("Transfer-Encoding: chunked\r\n".to_owned()),
    }
}

/// The head for the origin: origin form, `Host` from the URL, hop-by-hop and `Proxy-*`
/// fields removed, then `framing` and `Connection: close`.
fn upstream_head(
    head: &RequestHead,
    head_len: usize,
    target: &Target,
    path: &str,
    framing: Option<&str>,
) -> Vec<u8> {
    let dropped = connection_tokens(head);
    let mut out = Vec::with_capacity(head_len + 512);
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
    if let Some(field) = framing {
        out.extend_from_slice(field.as_bytes());
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    // Held at its length: the request head plus at most the lines added here.
    out.shrink_to_fit();
    out
}

/// Reads the body into `buf` up to `size` bytes: all of it if it fits.
async fn read_start(
    state: &ProxyState,
    client: &mut TcpStream,
    framing: BodyFraming,
    buf: &mut Vec<u8>,
    size: usize,
) -> Result<Body, ProxyError> {
    match framing {
        BodyFraming::None => Ok(Body::Whole),
        BodyFraming::Length(n) => {
            // Bytes after the body (a pipelined request) are not forwarded.
            buf.truncate(buf.len().min(n as usize));
            let want = (n as usize).min(size);
            while buf.len() < want {
                if read_more(client, buf, want).await? == 0 {
                    return Err(ProxyError::BadRequest("truncated body".into()));
                }
            }
            Ok(if buf.len() as u64 == n {
                Body::Whole
            } else {
                Body::Length {
                    left: n - buf.len() as u64,
                }
            })
        }
        BodyFraming::Chunked => {
            let c = &state.config;
            let mut decoder =
                ChunkedDecoder::new(c.max_body_bytes as u64, c.max_header_bytes, c.max_headers);
            let mut data_end = decoder.decode(buf, 0)?;
            loop {
                if decoder.is_done() {
                    return Ok(Body::Whole);
                }
                if buf.len() >= size {
                    return Ok(Body::Chunked { decoder, data_end });
                }
                if read_more(client, buf, size).await? == 0 {
                    return Err(ProxyError::BadRequest("truncated body".into()));
                }
                data_end = decoder.decode(buf, data_end)?;
            }
        }
    }
}

/// One read into `buf`, which grows to at most `limit` (within its capacity).
async fn read_more<R: AsyncRead + Unpin>(
    src: &mut R,
    buf: &mut Vec<u8>,
    limit: usize,
) -> Result<usize, ProxyError> {
    let start = buf.len();
    buf.resize(limit, 0);
    let n = src.read(&mut buf[start..]).await;
    buf.truncate(start + *n.as_ref().unwrap_or(&0));
    n.map_err(|e| ProxyError::BadRequest(format!("reading the body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::http::parse_request_head;

    fn head(text: &str) -> RequestHead {
        parse_request_head(text.as_bytes(), 100).unwrap().unwrap().0
    }

    /// A routed request: the destination is `Host` on the port it came in on.
    #[test]
    fn a_routed_request_is_routed_by_host_on_the_local_port() {
        let routed = |text: &str| {
            check_head(&head(text), Form::Origin { port: 80 })
                .map(|(t, path)| format!("{t} {path}"))
                .map_err(|e| e.code())
        };
        for (text, want) in [
            (
                "GET /a?b=c HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
                Ok("api.example.com:80 /a?b=c"),
            ),
            (
                "GET / HTTP/1.1\r\nHost: API.example.com:80\r\n\r\n",
                Ok("api.example.com:80 /"),
            ),
            (
                "GET / HTTP/1.1\r\nHost: [2001:db8::1]\r\n\r\n",
                Ok("[2001:db8::1]:80 /"),
            ),
            (
                "GET / HTTP/1.1\r\nHost: api.example.com:8080\r\n\r\n",
                Err("bad_request"),
            ),
            ("GET / HTTP/1.0\r\n\r\n", Err("bad_request")),
            (
                "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
                Err("bad_request"),
            ),
            (
                "GET / HTTP/1.1\r\nHost: u@api.example.com\r\n\r\n",
                Err("bad_target"),
            ),
            (
                "GET / HTTP/1.1\r\nHost: api.example.com/x\r\n\r\n",
                Err("bad_target"),
            ),
            ("GET / HTTP/1.1\r\nHost: 127.1\r\n\r\n", Err("bad_target")),
            (
                "GET /a\\b HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
                Err("bad_target"),
            ),
            (
                "GET http://api.example.com/ HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
                Err("bad_request"),
            ),
            (
                "CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
                Err("bad_request"),
            ),
            (
                "TRACE / HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
                Err("bad_request"),
            ),
        ] {
            assert_eq!(routed(text), want.map(str::to_owned), "{text:?}");
        }
        // The proxy's own door still wants absolute form.
        let proxied = check_head(
            &head("GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n"),
            Form::Absolute,
        );
        assert_eq!(proxied.unwrap_err().code(), "bad_request");
    }
}
