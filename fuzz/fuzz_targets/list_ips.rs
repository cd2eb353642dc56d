//! The `ips` line parser, every report invariant checked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::lists::parse::Format;

fuzz_target!(|data: &[u8]| {
    portcullis_fuzz::lists::parse_and_check(data, Format::Ips);
});
