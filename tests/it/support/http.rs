//! HTTP/1.1 written by hand over blocking sockets: requests to the admin listener, and
//! exchanges with the proxy that read its whole answer (it closes after a refusal).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One plain HTTP/1.1 request; (status, body).
pub fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    http_with(addr, method, path, "")
}

/// One plain HTTP/1.1 request (extra header lines each end in `\r\n`); (status, body).
pub fn http_with(addr: &str, method: &str, path: &str, headers: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, body.to_owned())
}

/// Sends `request` to the proxy at `proxy`; the whole answer, up to the close.
pub fn exchange(proxy: &str, request: &str) -> String {
    let mut stream = TcpStream::connect(proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    String::from_utf8_lossy(&raw).into_owned()
}

/// `CONNECT target` through the proxy at `proxy`; the whole answer.
pub fn connect(proxy: &str, target: &str) -> String {
    exchange(
        proxy,
        &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"),
    )
}

/// The value of `X-Portcullis-Reason` in a response head.
pub fn reason_of(head: &str) -> &str {
    head.split("\r\n")
        .find_map(|l| l.strip_prefix("X-Portcullis-Reason: "))
        .unwrap_or_else(|| panic!("no X-Portcullis-Reason in {head:?}"))
}
