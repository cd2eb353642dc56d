//! The exchange with the origin: the request body up and the response down, both at once.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

use super::timed::{Activity, Counter, read_idle, write_idle, write_parts};
use super::{Body, Prepared};
use crate::proxy::ProxyState;
use crate::proxy::budget::{ConnBudget, Held};
use crate::proxy::error::ProxyError;
use crate::proxy::http::{ChunkedDecoder, ResponseHead, parse_response_head};
use crate::proxy::relay::{CloseReason, Relayed};

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
pub(super) async fn exchange(
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
    buf: Vec<u8>,
    activity: &Activity,
    up: &Counter,
) -> Result<(), UploadEnd> {
    let mut upload = Upload {
        client,
        origin,
        idle: state.config.idle_timeout(),
        header_timeout: state.config.header_timeout(),
        activity,
        up,
    };
    match body {
        Body::Whole => Ok(()),
        Body::Length { left } => upload.length(buf, left).await,
        Body::Chunked { decoder, data_end } => upload.chunked(buf, decoder, data_end).await,
    }
}

/// The request body's way up: its two ends, its timeouts and its counters.
struct Upload<'a, R, W> {
    client: &'a mut R,
    origin: &'a mut W,
    idle: Duration,
    /// For trailers, which are header fields.
    header_timeout: Duration,
    activity: &'a Activity,
    up: &'a Counter,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Upload<'_, R, W> {
    /// A `Content-Length` body: `buf` holds its first bytes, `left` are still to come.
    async fn length(&mut self, mut buf: Vec<u8>, mut left: u64) -> Result<(), UploadEnd> {
        let size = buf.capacity();
        loop {
            if !buf.is_empty() {
                write_idle(self.origin, &[&buf], self.idle)
                    .await
                    .map_err(|_| UploadEnd::Origin)?;
                self.up.add(buf.len());
                self.activity.touch();
            }
            if left == 0 {
                return Ok(());
            }
            let want = (left as usize).min(size);
            buf.resize(want, 0);
            let n = match read_idle(self.client, &mut buf, self.idle, self.activity).await {
                None => return Err(late()),
                Some(read) => read.map_err(client_err)?,
            };
            if n == 0 {
                return Err(truncated());
            }
            buf.truncate(n);
            left -= n as u64;
        }
    }

    /// A chunked body, re-framed as canonical chunks: `buf[..data_end]` is decoded data,
    /// the rest of `buf` the start of a line.
    async fn chunked(
        &mut self,
        mut buf: Vec<u8>,
        mut decoder: ChunkedDecoder,
        mut data_end: usize,
    ) -> Result<(), UploadEnd> {
        let size = buf.capacity();
        let mut trailers_due = None;
        loop {
            if data_end > 0 {
                let size_line = format!("{data_end:x}\r\n");
                write_idle(
                    self.origin,
                    &[size_line.as_bytes(), &buf[..data_end], b"\r\n"],
                    self.idle,
                )
                .await
                .map_err(|_| UploadEnd::Origin)?;
                self.up.add(size_line.len() + data_end + 2);
                self.activity.touch();
                buf.drain(..data_end);
            }
            if decoder.is_done() {
                write_idle(self.origin, &[b"0\r\n\r\n"], self.idle)
                    .await
                    .map_err(|_| UploadEnd::Origin)?;
                self.up.add(5);
                return Ok(());
            }
            let start = buf.len();
            buf.resize(size, 0);
            let read = if decoder.in_trailers() {
                // Trailers are header fields: the head's timeout, counted from the last chunk.
                let due = *trailers_due
                    .get_or_insert_with(|| tokio::time::Instant::now() + self.header_timeout);
                match tokio::time::timeout_at(due, self.client.read(&mut buf[start..])).await {
                    Err(_) => return Err(late()),
                    Ok(read) => Some(read),
                }
            } else {
                read_idle(self.client, &mut buf[start..], self.idle, self.activity).await
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

fn client_err(e: io::Error) -> UploadEnd {
    UploadEnd::Client(ProxyError::BadRequest(format!("reading the body: {e}")))
}

fn truncated() -> UploadEnd {
    UploadEnd::Client(ProxyError::BadRequest("truncated body".into()))
}

fn late() -> UploadEnd {
    UploadEnd::Client(ProxyError::BodyTimeout)
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
    let refused = |err: ProxyError| refusal(err, answered);
    let idle = state.config.idle_timeout();
    let mut held = conn.hold(0).map_err(refused)?;
    let mut buf = Vec::new();
    let mut down = 0u64;
    // Interim 1xx responses are passed on; the final head decides.
    let (head, len) = loop {
        let (head, len) =
            read_response_head(state, origin, &mut held, &mut buf, activity, answered).await?;
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
    let (body, reason) = relay_body(origin, client, size, idle, activity).await;
    Ok((down + body, reason))
}

fn gateway(why: String) -> ExchangeError {
    (CloseReason::Error, Some(ProxyError::BadGateway(why)))
}

/// A refusal, told to the client only while no response byte has reached it.
fn refusal(err: ProxyError, answered: &AtomicBool) -> ExchangeError {
    let err = (!answered.load(Ordering::Relaxed)).then_some(err);
    (CloseReason::Error, err)
}

/// Reads into `buf` until it holds a complete response head (at most
/// `max_response_header_bytes`): the head and its length.
async fn read_response_head<R: AsyncRead + Unpin>(
    state: &ProxyState,
    origin: &mut R,
    held: &mut Held<'_>,
    buf: &mut Vec<u8>,
    activity: &Activity,
    answered: &AtomicBool,
) -> Result<(ResponseHead, usize), ExchangeError> {
    let refused = |err: ProxyError| refusal(err, answered);
    let idle = state.config.idle_timeout();
    let max = state.config.max_response_header_bytes;
    loop {
        if let Some(done) = parse_response_head(buf).map_err(refused)? {
            return Ok(done);
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
    }
}

/// The response body as sent, through one buffer of `size` bytes: the bytes relayed and
/// why it ended.
async fn relay_body<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    origin: &mut R,
    client: &mut W,
    size: usize,
    idle: Duration,
    activity: &Activity,
) -> (u64, CloseReason) {
    let mut chunk = vec![0u8; size];
    let mut down = 0u64;
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
    (down, reason)
}

/// The response head for the client: hop-by-hop fields removed (framing kept: the
/// body is relayed as sent), `Connection: close` on the final response.
fn response_head(head: &ResponseHead, last: bool) -> Vec<u8> {
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
