//! HTTP/1 request heads from clients and response heads from origins: bounded
//! reads, strict parsing, and the framing checks that stop request smuggling.

use tokio::io::{AsyncRead, AsyncReadExt};

use super::budget::Held;
use super::error::ProxyError;

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// How a request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

impl RequestHead {
    pub fn header(&self, name: &str) -> impl Iterator<Item = &[u8]> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The body framing, refusing every ambiguous combination (RFC 9112 §6.3):
    /// Content-Length together with Transfer-Encoding, more than one
    /// Content-Length, a non-numeric length, and any coding but a lone `chunked`.
    pub fn framing(&self) -> Result<BodyFraming, ProxyError> {
        let lengths: Vec<&[u8]> = self.header("content-length").collect();
        let codings: Vec<&[u8]> = self.header("transfer-encoding").collect();
        let bad = |why: &str| Err(ProxyError::BadRequest(why.to_owned()));
        match (lengths.as_slice(), codings.as_slice()) {
            ([], []) => Ok(BodyFraming::None),
            (_, [_, ..]) if !lengths.is_empty() => {
                bad("both Content-Length and Transfer-Encoding (request smuggling)")
            }
            ([len], []) => {
                if len.is_empty() || len.len() > 18 || !len.iter().all(u8::is_ascii_digit) {
                    return bad("Content-Length is not a number");
                }
                let n = std::str::from_utf8(len)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| ProxyError::BadRequest("bad Content-Length".into()))?;
                Ok(BodyFraming::Length(n))
            }
            ([], [coding]) if coding.eq_ignore_ascii_case(b"chunked") => Ok(BodyFraming::Chunked),
            ([], [_]) => bad("Transfer-Encoding other than a lone `chunked`"),
            ([], _) => bad("more than one Transfer-Encoding header"),
            _ => bad("more than one Content-Length header (request smuggling)"),
        }
    }
}

/// Reads from `stream` into `buf` until a complete head is parsed. Returns the head
/// and its length in `buf` (bytes after it belong to the body or the tunnel). `held`
/// follows the buffer's capacity, which grows 4 KiB at a time up to `max_bytes`.
pub async fn read_request_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    max_bytes: usize,
    max_headers: usize,
    held: &mut Held<'_>,
) -> Result<(RequestHead, usize), ProxyError> {
    loop {
        if let Some(done) = parse_request_head(buf, max_headers)? {
            return Ok(done);
        }
        if buf.len() >= max_bytes {
            return Err(ProxyError::HeadTooLarge(max_bytes));
        }
        let want = (max_bytes - buf.len()).min(4096);
        let start = buf.len();
        held.resize(buf.capacity().max(start + want))?;
        buf.reserve_exact(want);
        buf.resize(start + want, 0);
        let n = stream
            .read(&mut buf[start..])
            .await
            .map_err(|e| ProxyError::BadRequest(format!("reading the request: {e}")));
        buf.truncate(start + *n.as_ref().unwrap_or(&0));
        match n? {
            0 if start == 0 => return Err(ProxyError::EmptyRequest),
            0 => return Err(ProxyError::BadRequest("truncated request head".into())),
            _ => {}
        }
    }
}

/// `Ok(None)` when the head is incomplete.
pub fn parse_request_head(
    buf: &[u8],
    max_headers: usize,
) -> Result<Option<(RequestHead, usize)>, ProxyError> {
    // Leading empty lines are tolerated by RFC 9112 but never sent by real clients.
    if buf.first().is_some_and(|b| b.is_ascii_whitespace()) {
        return Err(ProxyError::BadRequest(
            "request starts with whitespace".into(),
        ));
    }
    let Some(end) = find_head_end(buf) else {
        // Refuse bare LF / CR as soon as they arrive, not after the header timeout.
        let complete_lines = buf.len() - usize::from(buf.last() == Some(&b'\r'));
        check_line_endings(&buf[..complete_lines])?;
        return Ok(None);
    };
    let head = &buf[..end];
    check_line_endings(head)?;
    let mut storage = vec![httparse::EMPTY_HEADER; max_headers];
    let mut req = httparse::Request::new(&mut storage);
    let status = req.parse(head).map_err(|e| match e {
        httparse::Error::TooManyHeaders => ProxyError::HeadTooLarge(max_headers),
        e => ProxyError::BadRequest(format!("unparsable request head: {e}")),
    })?;
    let httparse::Status::Complete(len) = status else {
        return Err(ProxyError::BadRequest("incomplete request head".into()));
    };
    debug_assert_eq!(len, end);
    let method = req.method.unwrap_or_default().to_owned();
    let target = req.path.unwrap_or_default().to_owned();
    let version = req.version.unwrap_or(1);
    let headers = req
        .headers
        .iter()
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect();
    Ok(Some((
        RequestHead {
            method,
            target,
            version,
            headers,
        },
        end,
    )))
}

/// End of the head (after the blank line), accepting only CRLF line endings.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Bare LF or CR, and obs-fold continuation lines (RFC 9112 §5.2), are refused:
/// parsers disagree on them, which is what smuggling needs.
fn check_line_endings(head: &[u8]) -> Result<(), ProxyError> {
    for (i, &b) in head.iter().enumerate() {
        match b {
            b'\n' if i == 0 || head[i - 1] != b'\r' => {
                return Err(ProxyError::BadRequest("bare LF in the request head".into()));
            }
            b'\r' if head.get(i + 1) != Some(&b'\n') => {
                return Err(ProxyError::BadRequest("bare CR in the request head".into()));
            }
            b'\n' if matches!(head.get(i + 1), Some(b' ' | b'\t')) => {
                return Err(ProxyError::BadRequest(
                    "obs-fold (folded header line) in the request head".into(),
                ));
            }
            0 => return Err(ProxyError::BadRequest("NUL in the request head".into())),
            _ => {}
        }
    }
    Ok(())
}

/// Hop-by-hop fields (RFC 9110 §7.6.1) plus the fields the proxy sets itself.
pub fn is_hop_by_hop(name: &str) -> bool {
    const HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "expect",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || name.len() >= 6 && name[..6].eq_ignore_ascii_case("proxy-")
}

/// Field names listed in the Connection header(s): hop-by-hop too.
pub fn connection_tokens(head: &RequestHead) -> Vec<String> {
    head.header("connection")
        .flat_map(|v| v.split(|&b| b == b','))
        .filter_map(|t| std::str::from_utf8(t).ok())
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Longest chunk-size line (with its extensions) or trailer line, bytes.
pub const MAX_CHUNK_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data: bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: trailer lines until the blank line.
    Trailers,
    Done,
}

/// A strict, incremental decoder of a chunked body (RFC 9112 §7.1) that works inside
/// the caller's buffer: decoded data is moved to the front and everything consumed is
/// dropped, so a body of any size passes through one bounded buffer. Bare CR or LF,
/// NUL, obs-fold, malformed sizes and trailer fields are refused; trailers are checked
/// against `max_trailer_bytes` and `max_trailers` (the head's limits) and dropped.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: Chunked,
    body: u64,
    max_body: u64,
    trailer_bytes: usize,
    trailers: usize,
    max_trailer_bytes: usize,
    max_trailers: usize,
    /// Bytes of the partial line kept after the data that were already checked: a line
    /// dribbled in a byte at a time is scanned once, not once a byte.
    scanned: usize,
}

impl ChunkedDecoder {
    pub fn new(max_body: u64, max_trailer_bytes: usize, max_trailers: usize) -> ChunkedDecoder {
        ChunkedDecoder {
            state: Chunked::Size,
            body: 0,
            max_body,
            trailer_bytes: 0,
            trailers: 0,
            max_trailer_bytes,
            max_trailers,
            scanned: 0,
        }
    }

    /// The last chunk and the trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == Chunked::Done
    }

    /// The last chunk has been read; the trailer section has not ended yet.
    pub fn in_trailers(&self) -> bool {
        self.state == Chunked::Trailers
    }

    /// Data bytes decoded so far.
    pub fn body_len(&self) -> u64 {
        self.body
    }

    /// Decodes `buf[data_end..]`. Its data is moved to follow `buf[..data_end]`; what
    /// cannot be decoded yet (part of a line) is kept after it. Returns the new end of
    /// the data. Bytes after the end of the body are dropped (one request per connection).
    pub fn decode(&mut self, buf: &mut Vec<u8>, data_end: usize) -> Result<usize, ProxyError> {
        let bad = |why: &str| ProxyError::BadRequest(why.to_owned());
        let len = buf.len();
        let (mut w, mut r) = (data_end, data_end);
        loop {
            match self.state {
                Chunked::Done => {
                    buf.truncate(w);
                    return Ok(w);
                }
                Chunked::Data(left) => {
                    let n = left.min((len - r) as u64) as usize;
                    if n == 0 {
                        break;
                    }
                    buf.copy_within(r..r + n, w);
                    (w, r) = (w + n, r + n);
                    self.state = if left == n as u64 {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left - n as u64)
                    };
                }
                Chunked::DataEnd => {
                    if len - r < 2 {
                        break;
                    }
                    if &buf[r..r + 2] != b"\r\n" {
                        return Err(bad("chunk not followed by CRLF"));
                    }
                    r += 2;
                    self.state = Chunked::Size;
                }
                Chunked::Size | Chunked::Trailers => {
                    let Some(end) = line_end(&buf[r..len], self.scanned)? else {
                        // A CR at the end is looked at again with the byte after it.
                        let rest = &buf[r..len];
                        self.scanned = rest.len() - usize::from(rest.last() == Some(&b'\r'));
                        break;
                    };
                    self.scanned = 0;
                    let line = &buf[r..r + end];
                    if self.state == Chunked::Size {
                        self.size_line(line)?;
                    } else {
                        self.trailer_line(line)?;
                    }
                    r += end + 2;
                }
            }
        }
        // Keep the partial line (or nothing) right after the data.
        buf.copy_within(r..len, w);
        buf.truncate(w + len - r);
        Ok(w)
    }

    fn size_line(&mut self, line: &[u8]) -> Result<(), ProxyError> {
        let size_text = line.split(|&b| b == b';').next().unwrap_or_default();
        if size_text.is_empty()
            || size_text.len() > 16
            || !size_text.iter().all(u8::is_ascii_hexdigit)
        {
            return Err(ProxyError::BadRequest("bad chunk size".into()));
        }
        let size = std::str::from_utf8(size_text)
            .ok()
            .and_then(|t| u64::from_str_radix(t, 16).ok())
            .ok_or_else(|| ProxyError::BadRequest("bad chunk size".into()))?;
        if size == 0 {
            self.state = Chunked::Trailers;
            return Ok(());
        }
        match self.body.checked_add(size) {
            Some(total) if total <= self.max_body => self.body = total,
            _ => return Err(ProxyError::BodyTooLarge(self.max_body as usize)),
        }
        self.state = Chunked::Data(size);
        Ok(())
    }

    fn trailer_line(&mut self, line: &[u8]) -> Result<(), ProxyError> {
        if line.is_empty() {
            self.state = Chunked::Done;
            return Ok(());
        }
        self.trailer_bytes += line.len() + 2;
        self.trailers += 1;
        if self.trailer_bytes > self.max_trailer_bytes || self.trailers > self.max_trailers {
            return Err(ProxyError::TrailersTooLarge(self.max_trailer_bytes));
        }
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        if name.len() == line.len() || name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(ProxyError::BadRequest(
                "malformed trailer field (or obs-fold)".into(),
            ));
        }
        Ok(())
    }
}

/// The length of the line at the start of `buf` (without its CRLF), `None` while it is
/// incomplete; `buf[..from]` was checked already. Bare CR or LF and NUL are refused as
/// soon as they arrive, and so is a line longer than [`MAX_CHUNK_LINE`].
fn line_end(buf: &[u8], from: usize) -> Result<Option<usize>, ProxyError> {
    for (i, &b) in buf.iter().enumerate().skip(from) {
        match b {
            b'\r' => match buf.get(i + 1) {
                Some(b'\n') => return Ok(Some(i)),
                Some(_) => {
                    return Err(ProxyError::BadRequest("bare CR in chunked body".into()));
                }
                None => break,
            },
            b'\n' => {
                return Err(ProxyError::BadRequest("bare LF in chunked body".into()));
            }
            0 => return Err(ProxyError::BadRequest("NUL in chunked body".into())),
            _ if i >= MAX_CHUNK_LINE => {
                return Err(ProxyError::BadRequest(
                    "chunk-size or trailer line too long".into(),
                ));
            }
            _ => {}
        }
    }
    Ok(None)
}

/// A field-name character (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A parsed origin response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub code: u16,
    pub reason: String,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// `Ok(None)` when incomplete.
pub fn parse_response_head(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, ProxyError> {
    let mut storage = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut storage);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => Ok(Some((
            ResponseHead {
                code: resp.code.unwrap_or(0),
                reason: resp.reason.unwrap_or("").to_owned(),
                headers: resp
                    .headers
                    .iter()
                    .map(|h| (h.name.to_owned(), h.value.to_vec()))
                    .collect(),
            },
            len,
        ))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(ProxyError::BadGateway(format!(
            "unparsable response head: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RequestHead, ProxyError> {
        parse_request_head(text.as_bytes(), 100).map(|r| r.expect("complete").0)
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        for text in [
            "POST http://a.example/ HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST http://a.example/ HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            "POST http://a.example/ HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST http://a.example/ HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "POST http://a.example/ HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            "POST http://a.example/ HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "POST http://a.example/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST http://a.example/ HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
        ] {
            let head = parse(text).expect("parses");
            assert!(head.framing().is_err(), "{text:?}");
        }
        for text in [
            "GET http://a.example/ HTTP/1.1\r\nX-A: 1\r\n  folded\r\n\r\n",
            "GET http://a.example/ HTTP/1.1\r\nX-A: 1\r\n\tfolded\r\n\r\n",
            "GET http://a.example/ HTTP/1.1\nHost: a\r\n\r\n",
            "GET http://a.example/ HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
            "GET http://a.example/ HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n",
            "\r\nGET http://a.example/ HTTP/1.1\r\n\r\n",
            "GET http://a.example/ HTTP/2.0\r\n\r\n",
        ] {
            assert!(parse(text).is_err(), "{text:?}");
        }
        let ok = parse("POST http://a.example/ HTTP/1.1\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(ok.framing().unwrap(), BodyFraming::Length(5));
    }

    /// A whole chunked body through [`ChunkedDecoder`] (the proxy streams it instead).
    async fn read_chunked<S: AsyncRead + Unpin>(
        stream: &mut S,
        buf: &mut Vec<u8>,
        max: usize,
    ) -> Result<Vec<u8>, ProxyError> {
        let mut decoder = ChunkedDecoder::new(max as u64, 16 * 1024, 100);
        let mut end = decoder.decode(buf, 0)?;
        while !decoder.is_done() {
            let mut chunk = [0u8; 4096];
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| ProxyError::BadRequest(format!("reading the body: {e}")))?;
            if n == 0 {
                return Err(ProxyError::BadRequest("truncated body".into()));
            }
            buf.extend_from_slice(&chunk[..n]);
            end = decoder.decode(buf, end)?;
        }
        Ok(std::mem::take(buf))
    }

    #[tokio::test]
    async fn chunked_bodies() {
        let mut input: &[u8] = b"5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let mut buf = Vec::new();
        let body = read_chunked(&mut input, &mut buf, 100).await.unwrap();
        assert_eq!(body, b"hello");
        assert!(buf.is_empty(), "nothing of the body is kept in the buffer");
        let mut input: &[u8] = b"5\r\nhelloXX0\r\n\r\n";
        assert!(
            read_chunked(&mut input, &mut Vec::new(), 100)
                .await
                .is_err()
        );
        let mut input: &[u8] = b"ff\r\n";
        assert!(matches!(
            read_chunked(&mut input, &mut Vec::new(), 100).await,
            Err(ProxyError::BodyTooLarge(100))
        ));
    }

    /// Feeds `input` to a decoder `step` bytes at a time through one buffer, as the
    /// forwarder does; returns the data and the largest the buffer ever was.
    fn decode_in_steps(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), ProxyError> {
        let mut decoder = ChunkedDecoder::new(1 << 20, 1024, 4);
        let (mut buf, mut data, mut peak) = (Vec::new(), Vec::new(), 0);
        for piece in input.chunks(step) {
            buf.extend_from_slice(piece);
            peak = peak.max(buf.len());
            let end = decoder.decode(&mut buf, 0)?;
            data.extend(buf.drain(..end));
            if decoder.is_done() {
                return Ok((data, peak));
            }
        }
        Err(ProxyError::BadRequest("incomplete".into()))
    }

    #[test]
    fn the_decoder_streams_through_a_small_buffer_whatever_the_split() {
        let mut body = Vec::new();
        for i in 0..2000u32 {
            body.extend_from_slice(format!("{:x}\r\n", i % 7 + 1).as_bytes());
            body.extend(std::iter::repeat_n(
                b'a' + (i % 26) as u8,
                (i % 7 + 1) as usize,
            ));
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\nX-T: 1\r\n\r\nNEXT REQUEST");
        let want: Vec<u8> = (0..2000u32)
            .flat_map(|i| std::iter::repeat_n(b'a' + (i % 26) as u8, (i % 7 + 1) as usize))
            .collect();
        for step in [1, 2, 3, 5, 64, 4096] {
            let (data, peak) = decode_in_steps(&body, step).unwrap();
            assert_eq!(data, want, "step {step}");
            // Never more than one partial line plus the new bytes.
            assert!(peak <= step + 8, "step {step}: buffer grew to {peak}");
        }
    }

    #[test]
    fn trailers_are_bounded_and_checked() {
        let ok = b"1\r\na\r\n0\r\nA: 1\r\nB: 2\r\n\r\n";
        assert_eq!(decode_in_steps(ok, 1).unwrap().0, b"a");
        // More fields than allowed, more bytes than allowed, however they are split.
        let many = b"0\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\nE: 1\r\n\r\n";
        let big = format!(
            "0\r\nA: {}\r\nB: {}\r\n\r\n",
            "x".repeat(600),
            "y".repeat(600)
        );
        for step in [1, 7, 4096] {
            assert!(matches!(
                decode_in_steps(many, step),
                Err(ProxyError::TrailersTooLarge(1024))
            ));
            assert!(matches!(
                decode_in_steps(big.as_bytes(), step),
                Err(ProxyError::TrailersTooLarge(1024))
            ));
        }
        // An endless trailer line is refused once it passes the line limit.
        let endless = format!("0\r\nA: {}", "x".repeat(MAX_CHUNK_LINE + 10));
        assert!(matches!(
            decode_in_steps(endless.as_bytes(), 100),
            Err(ProxyError::BadRequest(_))
        ));
        for bad in [
            &b"0\r\n folded: 1\r\n\r\n"[..],
            b"0\r\nno colon\r\n\r\n",
            b"0\r\n: empty name\r\n\r\n",
            b"0\r\nA: 1\nB: 2\r\n\r\n",
            b"1\r\na\r\n0\r\nA\r: 1\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"1\r\na\r\n\x000\r\n\r\n",
            b"11111111111111111\r\n",
            b"\r\n",
        ] {
            // Every split, a CR at the end of a piece included (a line is scanned once,
            // resuming where the last piece ended).
            for step in [1, 2, 3, 4096] {
                assert!(
                    matches!(decode_in_steps(bad, step), Err(ProxyError::BadRequest(_))),
                    "step {step}: {:?}",
                    String::from_utf8_lossy(bad)
                );
            }
        }
        // The body limit counts the declared sizes, before any data arrives.
        let mut decoder = ChunkedDecoder::new(10, 1024, 4);
        let mut buf = b"6\r\nabcdef\r\n5\r\n".to_vec();
        assert!(matches!(
            decoder.decode(&mut buf, 0),
            Err(ProxyError::BodyTooLarge(10))
        ));
    }
}
