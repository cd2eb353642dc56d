//! Format detection, and the parse it leads to (`format = "auto"`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::lists::parse::{Format, detect_format};

fuzz_target!(|data: &[u8]| {
    let text = portcullis_fuzz::text(data);
    let format = detect_format(&text);
    assert_ne!(format, Format::Auto);
    portcullis_fuzz::lists::parse_and_check(data, Format::Auto);
});
