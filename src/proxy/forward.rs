//! Absolute-form plain-HTTP forwarding: `GET http://host/path HTTP/1.1`.
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

use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::ProxyState;
use super::budget::{ConnBudget, Held};
use super::check::{Approval, Asker, Kind};
use super::conn::{Received, dial_checked, linger, log_allowed, log_close, log_refusal, refuse};
use super::error::ProxyError;
use super::http::{
    BodyFraming, ChunkedDecoder, connection_tokens, is_hop_by_hop, parse_response_head,
};
use super::relay::{CloseReason, Relayed};
use super::target::{Target, parse_http_url};

pub(crate) async fn handle(
    state: &ProxyState,
    mut client: TcpStream,
    asker: &Asker,
    received: Received<'_>,
    stop: &CancellationToken,
) {
    let method = received.head.method.clone();
    let raw = received.head.target.clone();
    let conn = received.conn;
    let prepared = tokio::select! {
        _ = stop.cancelled() => return,
        prepared = prepare(state, &mut client, asker, received) => prepared,
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
                log_refusal(asker, &method, &raw, &err);
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
) -> Result<Prepared<'c>, ProxyError> {
    let Received {
        head,
        head_len,
        rest: mut buf,
        mut held,
        ..
    } = received;
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

    let dropped = connection_tokens(&head);
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
    match (&body, framing) {
        (Body::Whole, BodyFraming::None) => {}
        (Body::Whole, _) => {
            out.extend_from_slice(format!("Content-Length: {}\r\n", buf.len()).as_bytes())
        }
        (_, BodyFraming::Length(n)) => {
            out.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes())
        }
        _ => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    // Held at its length: the request head plus at most the lines added here.
    out.shrink_to_fit();
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

/// Bytes relayed one way, readable after the exchange is cancelled.
#[derive(Default)]
struct Counter(AtomicU64);

impl Counter {
    fn add(&self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// When either direction last moved a byte: the idle timeout is "nothing either way".
struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn since(&self) -> Duration {
        self.epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// A read that gives up once neither direction has moved a byte for `idle`.
async fn read_idle<R: AsyncRead + Unpin>(
    src: &mut R,
    buf: &mut [u8],
    idle: Duration,
    activity: &Activity,
) -> Option<io::Result<usize>> {
    loop {
        let wait = idle.saturating_sub(activity.since());
        if wait.is_zero() {
            return None;
        }
        // A TCP read is cancel safe: nothing is lost when the timer wins.
        if let Ok(read) = tokio::time::timeout(wait, src.read(buf)).await {
            activity.touch();
            return Some(read);
        }
    }
}

/// [`write_parts`] that fails once it has waited `idle` for the peer to take the bytes: a
/// reader that stops reading frees its connection slot and buffers instead of holding them
/// until `tunnel_max_secs`. (The write is not restarted: a partial one cannot be.)
async fn write_idle<W: AsyncWrite + Unpin>(
    dst: &mut W,
    parts: &[&[u8]],
    idle: Duration,
) -> io::Result<()> {
    match tokio::time::timeout(idle, write_parts(dst, parts)).await {
        Ok(written) => written,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the peer took no bytes within the idle timeout",
        )),
    }
}

/// Writes every byte of `parts` (one writev where the socket takes it).
async fn write_parts<W: AsyncWrite + Unpin>(dst: &mut W, parts: &[&[u8]]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| IoSlice::new(p))
        .collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        let n = dst.write_vectored(slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

type ExchangeError = (CloseReason, Option<ProxyError>);

/// Why the request body stopped going up.
enum UploadEnd {
    /// The client's body is bad, too large, late or cut short: the exchange ends.
    Client(ProxyError),
    /// The origin stopped taking it (it may have answered early): its answer still counts.
    Origin,
}

/// Sends the request and relays the response; both directions run at once, so an
/// origin that answers before the body is complete is relayed at once.
async fn exchange(
    state: &ProxyState,
    conn: &ConnBudget<'_>,
    client: &mut TcpStream,
    origin: &mut TcpStream,
    prepared: Prepared<'_>,
    up: &Counter,
) -> Result<Relayed, ExchangeError> {
    let Prepared {
        upstream_head,
        body,
        mut buf,
        mut held,
        ..
    } = prepared;
    let gateway = |why: String| (CloseReason::Error, Some(ProxyError::BadGateway(why)));
    let whole: &[u8] = if matches!(body, Body::Whole) {
        &buf
    } else {
        &[]
    };
    write_parts(origin, &[&upstream_head, whole])
        .await
        .map_err(|e| gateway(format!("sending the request: {e}")))?;
    up.add(upstream_head.len() + whole.len());
    drop(upstream_head);
    if matches!(body, Body::Whole) {
        buf = Vec::new();
    }
    held.shrink_to(buf.capacity());

    let activity = Activity::new();
    let answered = AtomicBool::new(false);
    let (mut client_r, mut client_w) = client.split();
    let (mut origin_r, mut origin_w) = origin.split();
    let sending = upload(
        state,
        &mut client_r,
        &mut origin_w,
        body,
        buf,
        &activity,
        up,
    );
    let receiving = download(
        state,
        conn,
        &mut origin_r,
        &mut client_w,
        &activity,
        &answered,
    );
    tokio::pin!(sending, receiving);
    let mut uploading = true;
    loop {
        tokio::select! {
            end = &mut sending, if uploading => match end {
                Ok(()) | Err(UploadEnd::Origin) => uploading = false,
                Err(UploadEnd::Client(err)) => {
                    let err = (!answered.load(Ordering::Relaxed)).then_some(err);
                    return Err((CloseReason::Error, err));
                }
            },
            done = &mut receiving => {
                let (down, reason) = done?;
                return Ok(Relayed { up: up.get(), down, reason });
            }
        }
    }
}

/// The rest of the request body, client to origin, through `buf`.
async fn upload<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    state: &ProxyState,
    client: &mut R,
    origin: &mut W,
    body: Body,
    mut buf: Vec<u8>,
    activity: &Activity,
    up: &Counter,
) -> Result<(), UploadEnd> {
    let idle = state.config.idle_timeout();
    let size = buf.capacity();
    let client_err =
        |e: io::Error| UploadEnd::Client(ProxyError::BadRequest(format!("reading the body: {e}")));
    let truncated = || UploadEnd::Client(ProxyError::BadRequest("truncated body".into()));
    let late = || UploadEnd::Client(ProxyError::BodyTimeout);
    match body {
        Body::Whole => Ok(()),
        Body::Length { mut left } => loop {
            if !buf.is_empty() {
                write_idle(origin, &[&buf], idle)
                    .await
                    .map_err(|_| UploadEnd::Origin)?;
                up.add(buf.len());
                activity.touch();
            }
            if left == 0 {
                return Ok(());
            }
            let want = (left as usize).min(size);
            buf.resize(want, 0);
            let n = match read_idle(client, &mut buf, idle, activity).await {
                None => return Err(late()),
                Some(read) => read.map_err(client_err)?,
            };
            if n == 0 {
                return Err(truncated());
            }
            buf.truncate(n);
            left -= n as u64;
        },
        Body::Chunked {
            mut decoder,
            mut data_end,
        } => {
            let mut trailers_due = None;
            loop {
                if data_end > 0 {
                    let size_line = format!("{data_end:x}\r\n");
                    write_idle(
                        origin,
                        &[size_line.as_bytes(), &buf[..data_end], b"\r\n"],
                        idle,
                    )
                    .await
                    .map_err(|_| UploadEnd::Origin)?;
                    up.add(size_line.len() + data_end + 2);
                    activity.touch();
                    buf.drain(..data_end);
                }
                if decoder.is_done() {
                    write_idle(origin, &[b"0\r\n\r\n"], idle)
                        .await
                        .map_err(|_| UploadEnd::Origin)?;
                    up.add(5);
                    return Ok(());
                }
                let start = buf.len();
                buf.resize(size, 0);
                let read = if decoder.in_trailers() {
                    // Trailers are header fields: the head's timeout, counted from the last chunk.
                    let due = *trailers_due.get_or_insert_with(|| {
                        tokio::time::Instant::now() + state.config.header_timeout()
                    });
                    match tokio::time::timeout_at(due, client.read(&mut buf[start..])).await {
                        Err(_) => return Err(late()),
                        Ok(read) => Some(read),
                    }
                } else {
                    read_idle(client, &mut buf[start..], idle, activity).await
                };
                let n = match read {
                    None => return Err(late()),
                    Some(read) => read.map_err(client_err)?,
                };
                buf.truncate(start + n);
                if n == 0 {
                    return Err(truncated());
                }
                data_end = decoder.decode(&mut buf, 0).map_err(UploadEnd::Client)?;
            }
        }
    }
}

/// The response, origin to client: the head (bounded, filtered), then the body as sent.
/// Returns the bytes sent to the client and why the exchange ended.
async fn download<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    state: &ProxyState,
    conn: &ConnBudget<'_>,
    origin: &mut R,
    client: &mut W,
    activity: &Activity,
    answered: &AtomicBool,
) -> Result<(u64, CloseReason), ExchangeError> {
    let gateway = |why: String| (CloseReason::Error, Some(ProxyError::BadGateway(why)));
    let refused = |err: ProxyError| {
        let err = (!answered.load(Ordering::Relaxed)).then_some(err);
        (CloseReason::Error, err)
    };
    let idle = state.config.idle_timeout();
    let max = state.config.max_response_header_bytes;
    let mut held = conn.hold(0).map_err(refused)?;
    let mut buf = Vec::new();
    let mut down = 0u64;
    // Interim 1xx responses are passed on; the final head decides.
    let (head, len) = loop {
        let parsed = loop {
            if let Some(done) = parse_response_head(&buf).map_err(refused)? {
                break done;
            }
            if buf.len() >= max {
                return Err(gateway("response head too large".into()));
            }
            let want = (max - buf.len()).min(4096);
            held.resize(buf.capacity().max(buf.len() + want))
                .map_err(refused)?;
            buf.reserve_exact(want);
            let start = buf.len();
            buf.resize(start + want, 0);
            let n = match read_idle(origin, &mut buf[start..], idle, activity).await {
                None => {
                    return Err((
                        CloseReason::Idle,
                        Some(ProxyError::ConnectTimeout {
                            addr: "origin (no response)".into(),
                        }),
                    ));
                }
                Some(Err(e)) => return Err(gateway(format!("reading the response: {e}"))),
                Some(Ok(n)) => n,
            };
            buf.truncate(start + n);
            if n == 0 {
                return Err(gateway("the origin closed without a response".into()));
            }
        };
        let (head, len) = parsed;
        if (100..200).contains(&head.code) {
            if head.code == 101 {
                return Err(gateway("unexpected 101 Switching Protocols".into()));
            }
            let interim = response_head(&head, false);
            answered.store(true, Ordering::Relaxed);
            write_idle(client, &[&interim], idle)
                .await
                .map_err(|_| (CloseReason::Error, None))?;
            down += interim.len() as u64;
            buf.drain(..len);
            continue;
        }
        break (head, len);
    };
    let out = response_head(&head, true);
    answered.store(true, Ordering::Relaxed);
    write_idle(client, &[&out, &buf[len..]], idle)
        .await
        .map_err(|_| (CloseReason::Error, None))?;
    down += (out.len() + buf.len() - len) as u64;
    drop(buf);
    let size = state.config.body_buffer_bytes;
    held.resize(size).map_err(|_| (CloseReason::Error, None))?;
    let mut chunk = vec![0u8; size];
    let reason = loop {
        match read_idle(origin, &mut chunk, idle, activity).await {
            None => break CloseReason::Idle,
            Some(Err(_)) => break CloseReason::Error,
            Some(Ok(0)) => break CloseReason::Done,
            Some(Ok(n)) => {
                match write_idle(client, &[&chunk[..n]], idle).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => break CloseReason::Idle,
                    Err(_) => break CloseReason::Error,
                }
                activity.touch();
                down += n as u64;
            }
        }
    };
    Ok((down, reason))
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
