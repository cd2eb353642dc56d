//! The fast-path request parser (`dns::wire::parse`) against the full path's parser, and
//! the patched answer it serves (`WireAnswer::answer`) decoded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::dns::udp::{self, Parsed};
use portcullis::dns::wire;

fuzz_target!(|data: &[u8]| {
    let mut name = String::new();
    let Some(fast) = wire::parse(data, &mut name) else {
        return;
    };
    // The fast path takes only what the full path would answer as a query.
    let request = match udp::parse(data) {
        Parsed::Query(request) => request,
        Parsed::Drop => panic!("the fast path took a datagram the full path drops"),
        Parsed::Error { rcode, .. } => {
            panic!("the fast path took a datagram the full path refuses with {rcode}")
        }
    };
    let full_name = request.query.name().to_lowercase().to_ascii();
    assert_eq!(full_name.trim_end_matches('.'), name);
    assert_eq!(fast.id, request.id);
    assert_eq!(fast.qtype, request.query.query_type());
    assert!(name.len() <= wire::MAX_NAME);
});
