//! CONNECT authorities (`host:port`, `[v6]:port`), absolute `http://` URLs and bare
//! hosts: what is accepted prints back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::proxy::target::{Host, parse_authority, parse_host, parse_http_url};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(target) = parse_authority(input) {
        assert_ne!(target.port, 0);
        let printed = target.to_string();
        assert_eq!(parse_authority(&printed).as_ref(), Ok(&target), "{printed}");
    }
    if let Ok((target, path)) = parse_http_url(input) {
        assert!(path.starts_with('/'), "{path:?}");
        let printed = format!("http://{target}{path}");
        let again = parse_http_url(&printed).expect("a printed URL parses");
        assert_eq!(again, (target, path));
    }
    if let Ok(host) = parse_host(input) {
        match &host {
            Host::Name(name) => assert_eq!(parse_host(name.as_str()).as_ref(), Ok(&host)),
            Host::Ip(ip) => assert!(ip.is_ipv4()),
        }
    }
});
