//! The chunked request-body decoder, against a plain reference decoder, over reads of
//! every size (so the result cannot depend on them), with the bytes after the body kept for the next request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::proxy::ProxyError;
use portcullis::proxy::http::read_chunked;
use portcullis_fuzz::{Trickle, block_on};

/// RFC 9112 §7.1 as the proxy reads it: 1 to 8 hex digits (then `;extensions`), CRLF
/// line ends, no bare CR or LF in a line, trailers dropped up to the blank line. No line
/// length cap. Returns the body and the bytes it took.
fn reference(input: &[u8], max: usize) -> Option<(Vec<u8>, usize)> {
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
        if size.is_empty() || size.len() > 8 || !size.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let size = usize::from_str_radix(std::str::from_utf8(size).ok()?, 16).ok()?;
        if size == 0 {
            while !line(&mut pos)?.is_empty() {}
            return Some((out, pos));
        }
        if out.len() + size > max {
            return None;
        }
        let chunk = input.get(pos..pos + size + 2)?;
        if !chunk.ends_with(b"\r\n") {
            return None;
        }
        out.extend_from_slice(&chunk[..size]);
        pos += size + 2;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&[steps, limit, already], input)) = data.split_first_chunk::<3>() else {
        return;
    };
    let max = [0, 16, 4096, 8 << 20][usize::from(limit % 4)];
    // Part of the body may arrive with the head (`buf`), the rest is read.
    let split = usize::from(already).min(input.len());
    let want = reference(input, max);
    for step in [1 + usize::from(steps % 16), 4096] {
        let mut buf = input[..split].to_vec();
        let mut stream = Trickle::new(&input[split..], step);
        let got = block_on(read_chunked(&mut stream, &mut buf, max));
        match &got {
            Ok(body) => {
                let (body_ref, used) = want.as_ref().unwrap_or_else(|| {
                    panic!("decoded {} bytes the reference refuses", body.len())
                });
                assert_eq!(body, body_ref);
                assert!(body.len() <= max);
                // What follows the body is kept, not lost.
                let mut after = buf.clone();
                after.extend_from_slice(stream.rest());
                assert_eq!(after, &input[*used..], "step {step}");
            }
            Err(ProxyError::BodyTooLarge(n)) => assert_eq!(*n, max),
            Err(ProxyError::BadRequest(_)) => {}
            Err(e) => panic!("unexpected error kind: {e}"),
        }
    }
});
