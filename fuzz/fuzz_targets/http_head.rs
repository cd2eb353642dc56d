//! The proxy's request-head parser, its framing and hop-by-hop checks, the target it
//! leads to (CONNECT authority or absolute URL), and the origin response-head parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::proxy::ProxyError;
use portcullis::proxy::budget::{Budget, ConnBudget};
use portcullis::proxy::http::{
    connection_tokens, is_hop_by_hop, parse_request_head, parse_response_head, read_request_head,
};
use portcullis::proxy::target::{parse_authority, parse_http_url};
use portcullis_fuzz::{Trickle, block_on};

/// The proxy's defaults (`[proxy] max_headers`, `max_header_bytes`).
const MAX_HEADERS: usize = 100;
const MAX_HEAD_BYTES: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    let parsed = parse_request_head(data, MAX_HEADERS);
    if let Ok(Some((head, len))) = &parsed {
        assert!(*len <= data.len() && data[..*len].ends_with(b"\r\n\r\n"));
        // Every shorter prefix is incomplete: a head split across reads parses the same.
        for cut in [0, 1, len / 2, len - 1] {
            let prefix = parse_request_head(&data[..cut], MAX_HEADERS);
            assert!(
                matches!(prefix, Ok(None)),
                "{cut} of {len} bytes: {prefix:?}"
            );
        }
        let _ = head.framing();
        for token in connection_tokens(head) {
            assert_eq!(token, token.trim().to_ascii_lowercase());
        }
        for (name, _) in &head.headers {
            let _ = is_hop_by_hop(name);
        }
        if head.method.eq_ignore_ascii_case("CONNECT") {
            let _ = parse_authority(&head.target);
        } else if let Ok((target, path)) = parse_http_url(&head.target) {
            assert!(path.starts_with('/'), "{path:?}");
            assert_ne!(target.port, 0);
        }
    }
    // The reader the listener uses gives the same head, whatever the read sizes.
    if data.len() <= MAX_HEAD_BYTES {
        let step = 1 + usize::from(data.first().copied().unwrap_or(0) % 64);
        let mut buf = Vec::new();
        // A budget the head always fits, so every refusal is the parser's own.
        let gate = Budget::new(4 * MAX_HEAD_BYTES);
        let conn = ConnBudget::new(&gate, 2 * MAX_HEAD_BYTES);
        let mut held = conn.hold(0).expect("an empty reservation");
        let read = block_on(read_request_head(
            &mut Trickle::new(data, step),
            &mut buf,
            MAX_HEAD_BYTES,
            MAX_HEADERS,
            &mut held,
        ));
        match (&parsed, &read) {
            (Ok(Some((a, alen))), Ok((b, blen))) => {
                assert_eq!(alen, blen);
                assert_eq!(
                    (&a.method, &a.target, a.version, &a.headers),
                    (&b.method, &b.target, b.version, &b.headers)
                );
            }
            (Ok(Some(_)), Err(e)) => panic!("parsed whole, refused when read: {e}"),
            (Err(_), Ok(_)) => panic!("refused whole, parsed when read"),
            (Ok(None), Ok(_)) => panic!("incomplete whole, parsed when read"),
            (Ok(None) | Err(_), Err(_)) => {}
        }
        if let Err(ProxyError::HeadTooLarge(n)) = read {
            assert!(n == MAX_HEAD_BYTES || n == MAX_HEADERS);
        }
    }
    if let Ok(Some((head, len))) = parse_response_head(data) {
        assert!(len <= data.len());
        let _ = head.code;
    }
});
