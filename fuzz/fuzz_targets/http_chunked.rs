//! The proxy's incremental chunked-body decoder (`ChunkedDecoder`, what `proxy/forward/`
//! streams uploads through), against a plain reference decoder, fed in pieces of every
//! size: the result cannot depend on how TCP splits the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::proxy::ProxyError;
use portcullis::proxy::http::{ChunkedDecoder, MAX_CHUNK_LINE};

/// The trailer limits the proxy passes (`[proxy] max_header_bytes`, `max_headers`).
const MAX_TRAILER_BYTES: usize = 16 * 1024;
const MAX_TRAILERS: usize = 100;

/// RFC 9112 §7.1 as the proxy reads it: 1 to 16 hex digits (then `;extensions`), CRLF
/// line ends, no bare CR or LF in a line, trailers dropped up to the blank line. Returns
/// the body. The decoder may refuse more (NUL, long lines, malformed trailer fields, the
/// trailer limits) but never accepts what this refuses, nor decodes anything else.
fn reference(input: &[u8], max: u64) -> Option<Vec<u8>> {
    let mut pos = 0;
    let line = |pos: &mut usize| -> Option<&[u8]> {
        let i = input[*pos..].windows(2).position(|w| w == b"\r\n")?;
        let line = &input[*pos..*pos + i];
        *pos += i + 2;
        (!line.contains(&b'\r') && !line.contains(&b'\n')).then_some(line)
    };
    let mut out = Vec::new();
    loop {
        let size = line(&mut pos)?.split(|&b| b == b';').next()?;
        if size.is_empty() || size.len() > 16 || !size.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let size = u64::from_str_radix(std::str::from_utf8(size).ok()?, 16).ok()?;
        if size == 0 {
            while !line(&mut pos)?.is_empty() {}
            return Some(out);
        }
        if out.len() as u64 + size > max {
            return None;
        }
        let size = size as usize;
        let chunk = input.get(pos..pos + size + 2)?;
        if !chunk.ends_with(b"\r\n") {
            return None;
        }
        out.extend_from_slice(&chunk[..size]);
        pos += size + 2;
    }
}

/// Feeds `input` to a decoder `step` bytes at a time through one buffer, as the proxy
/// does; `Ok(None)` when the input ended before the body did.
fn decode(input: &[u8], max: u64, step: usize) -> Result<Option<Vec<u8>>, ProxyError> {
    let mut decoder = ChunkedDecoder::new(max, MAX_TRAILER_BYTES, MAX_TRAILERS);
    let (mut buf, mut body) = (Vec::new(), Vec::new());
    for piece in input.chunks(step) {
        buf.extend_from_slice(piece);
        let end = decoder.decode(&mut buf, 0)?;
        body.extend_from_slice(&buf[..end]);
        buf.drain(..end);
        // What is kept is a partial line, never more than the longest line allowed.
        assert!(buf.len() <= MAX_CHUNK_LINE + 2, "{} bytes kept", buf.len());
        assert!(decoder.body_len() <= max);
        if decoder.is_done() {
            return Ok(Some(body));
        }
    }
    Ok(None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&[steps, limit], input)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max = [0, 16, 4096, 8 << 20][usize::from(limit % 4)];
    let want = reference(input, max);
    let mut first: Option<Result<Option<Vec<u8>>, String>> = None;
    for step in [1, 1 + usize::from(steps % 16), input.len().max(1)] {
        let got = decode(input, max, step);
        match &got {
            Ok(Some(body)) => {
                let expected = want.as_ref().unwrap_or_else(|| {
                    panic!("decoded {} bytes the reference refuses", body.len())
                });
                assert_eq!(body, expected, "step {step}");
            }
            Ok(None) => {}
            Err(ProxyError::BodyTooLarge(n)) => assert_eq!(*n as u64, max),
            Err(ProxyError::BadRequest(_) | ProxyError::TrailersTooLarge(_)) => {}
            Err(e) => panic!("unexpected error kind: {e}"),
        }
        // The same bytes give the same outcome whatever the piece size.
        let outcome = got.map_err(|e| e.to_string());
        match &first {
            None => first = Some(outcome),
            Some(earlier) => assert_eq!(earlier, &outcome, "step {step}"),
        }
    }
});
