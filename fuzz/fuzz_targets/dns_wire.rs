//! The fast-path request parser (`dns::wire::parse`) against the full path's parser, and
//! the patched answer it serves (`WireAnswer::answer`) decoded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::dns::udp::{self, Parsed};
use portcullis::dns::wire;
use portcullis::policy::name::Name;

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
    // The cache key: the name the full path stores answers under (a name it refuses is
    // never cached, so the fast path's lookup for it misses).
    if let Ok(full) = Name::from_labels(request.query.name().iter()) {
        assert_eq!(full.as_str(), name);
    }
    assert_eq!(fast.id, request.id);
    assert_eq!(fast.qtype, request.query.query_type());
    assert!(name.len() <= wire::MAX_NAME);
});
