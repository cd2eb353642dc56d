//! The ClientHello reader: any split of the bytes gives "need more" or the same answer as
//! the whole, and what it reads, rebuilt, reads back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::proxy::sni::{self, build_client_hello};

fuzz_target!(|data: &[u8]| {
    let whole = sni::parse(data);
    // The listener calls the reader again after every read: a prefix must never be
    // refused for a reason the whole would not give, nor read differently.
    let step = (data.len() / 16).max(1);
    for cut in (0..data.len())
        .step_by(step)
        .chain([data.len().saturating_sub(1)])
    {
        let prefix = sni::parse(&data[..cut]);
        assert!(
            matches!(prefix, Ok(None)) || prefix == whole,
            "{cut} of {} bytes: {prefix:?}, whole: {whole:?}",
            data.len()
        );
    }
    if let Ok(Some(hello)) = whole {
        if let Some(name) = &hello.sni {
            assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()));
        }
        let rebuilt = build_client_hello(hello.sni.as_deref(), hello.ech, 0);
        assert_eq!(sni::parse(&rebuilt), Ok(Some(hello)));
    }
});
