//! HTTP/1 request heads from clients and response heads from origins: bounded
//! reads, strict parsing, and the framing checks that stop request smuggling.

use tokio::io::{AsyncRead, AsyncReadExt};

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
/// and its length in `buf` (bytes after it belong to the body or the tunnel).
pub async fn read_request_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    max_bytes: usize,
    max_headers: usize,
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
        buf.resize(start + want, 0);
        let n = stream
            .read(&mut buf[start..])
            .await
            .map_err(|e| ProxyError::BadRequest(format!("reading the request: {e}")));
        buf.truncate(start + *n.as_ref().unwrap_or(&0));
        match n? {
            0 if start == 0 => return Err(ProxyError::BadRequest("empty request".into())),
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

/// Reads a chunked body into `out` (decoded), at most `max` bytes of data.
/// `buf` holds bytes already read after the head.
pub async fn read_chunked<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<Vec<u8>, ProxyError> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let line = read_line(stream, buf, &mut pos).await?;
        let size_text = line.split(|&b| b == b';').next().unwrap_or_default();
        if size_text.is_empty()
            || size_text.len() > 8
            || !size_text.iter().all(u8::is_ascii_hexdigit)
        {
            return Err(ProxyError::BadRequest("bad chunk size".into()));
        }
        let size = usize::from_str_radix(std::str::from_utf8(size_text).unwrap_or("x"), 16)
            .map_err(|_| ProxyError::BadRequest("bad chunk size".into()))?;
        if size == 0 {
            // Trailers: read up to the blank line, drop them.
            loop {
                if read_line(stream, buf, &mut pos).await?.is_empty() {
                    buf.drain(..pos);
                    return Ok(out);
                }
            }
        }
        if out.len() + size > max {
            return Err(ProxyError::BodyTooLarge(max));
        }
        fill(stream, buf, pos + size + 2).await?;
        out.extend_from_slice(&buf[pos..pos + size]);
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err(ProxyError::BadRequest("chunk not followed by CRLF".into()));
        }
        pos += size + 2;
    }
}

async fn fill<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    want: usize,
) -> Result<(), ProxyError> {
    while buf.len() < want {
        let mut chunk = [0u8; 4096];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| ProxyError::BadRequest(format!("reading the body: {e}")))?;
        if n == 0 {
            return Err(ProxyError::BadRequest("truncated body".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

async fn read_line<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    pos: &mut usize,
) -> Result<Vec<u8>, ProxyError> {
    loop {
        if let Some(i) = buf[*pos..].windows(2).position(|w| w == b"\r\n") {
            let line = buf[*pos..*pos + i].to_vec();
            if line.contains(&b'\n') || line.contains(&b'\r') {
                return Err(ProxyError::BadRequest(
                    "bare CR or LF in chunked body".into(),
                ));
            }
            *pos += i + 2;
            return Ok(line);
        }
        if buf.len() - *pos > 4096 {
            return Err(ProxyError::BadRequest("chunk line too long".into()));
        }
        let want = buf.len() + 1;
        fill(stream, buf, want).await?;
    }
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

    #[tokio::test]
    async fn chunked_bodies() {
        let mut input: &[u8] = b"5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let mut buf = Vec::new();
        let body = read_chunked(&mut input, &mut buf, 100).await.unwrap();
        assert_eq!(body, b"hello");
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
}
