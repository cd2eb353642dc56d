//! One datagram through the UDP listener's steps (fast path, full-path parse, policy,
//! cache, encode), twice: the second time the answer may come from the fast path, and it
//! must decode to what the full path sent. A block or refusal the fast path writes the
//! first time must decode to what the full path alone encodes.
#![no_main]

use std::sync::LazyLock;

use hickory_proto::op::MessageType;
use libfuzzer_sys::fuzz_target;
use portcullis::dns::udp::{self, Parsed};
use portcullis_fuzz::dns::{
    Gate, Served, decode_without_ttls, describe, payload_limit, serve, serve_full,
};

static GATE: LazyLock<Gate> = LazyLock::new(Gate::new);

fuzz_target!(|data: &[u8]| {
    let gate = &*GATE;
    gate.reset();
    let (mut name, mut out) = (String::new(), Vec::new());
    let first = serve(gate, data, &mut name, &mut out);
    let sent = match &first {
        Served::Dropped | Served::Upstream => {
            assert_eq!(serve_full(gate, data), first, "the fast path took it");
            return;
        }
        // A block or refusal written from the request's bytes: what the full path encodes.
        Served::Fast(bytes) => {
            let Served::Full(full) = serve_full(gate, data) else {
                panic!("the fast path answered what the full path does not answer here")
            };
            let sent = decode_without_ttls(bytes);
            assert_eq!(sent, decode_without_ttls(&full), "fast and full differ");
            sent
        }
        Served::Full(bytes) => decode_without_ttls(bytes),
    };
    assert_eq!(sent.metadata.message_type, MessageType::Response);
    assert_eq!(sent.metadata.id, u16::from_be_bytes([data[0], data[1]]));
    if let Parsed::Query(request) = udp::parse(data) {
        let (Served::Full(bytes) | Served::Fast(bytes)) = &first else {
            unreachable!()
        };
        assert!(
            bytes.len() <= payload_limit(&request),
            "{} bytes for {}",
            bytes.len(),
            describe(&request.query)
        );
        assert_eq!(sent.queries, [request.query.clone()]);
    }
    // Again: a cached answer is now encoded for the fast path.
    let second = serve(gate, data, &mut name, &mut out);
    match &second {
        Served::Fast(bytes) | Served::Full(bytes) => {
            assert_eq!(decode_without_ttls(bytes), sent, "{second:?}")
        }
        other => panic!("first answered, then {other:?}"),
    }
});
