//! Local origins for the proxy tests, all on loopback: a TLS HTTPS origin with a
//! certificate minted at run time, a TCP echo server and a scripted plain-HTTP origin.
//! Every server stops when its value is dropped.

use super::certs::tls_acceptor;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub struct Origin {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
    /// Requests received, head and body (plain-HTTP origin).
    pub seen: Arc<Mutex<Vec<String>>>,
    /// Bytes received so far over every connection (plain-HTTP origin).
    pub received: Arc<AtomicUsize>,
    pub ca_file: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Echoes every byte back.
pub async fn echo(ip: &str) -> Origin {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Origin {
        addr,
        task,
        seen: Default::default(),
        received: Default::default(),
        ca_file: None,
        _dir: None,
    }
}

/// A plain-HTTP origin: records each request (head and body, as received) and answers
/// with `response` once the request is complete: its Content-Length read, or its
/// chunked body up to the last chunk. A request cut short is recorded as it came.
pub async fn http(ip: &str, response: &'static str) -> Origin {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Default::default();
    let received: Arc<AtomicUsize> = Default::default();
    let (seen2, received2) = (seen.clone(), received.clone());
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (seen, received) = (seen2.clone(), received2.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 64 * 1024];
                while !request_complete(&buf) {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            buf.extend_from_slice(&chunk[..n]);
                            received.fetch_add(n, Ordering::SeqCst);
                        }
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf).into_owned());
                let _ = s.write_all(response.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    Origin {
        addr,
        task,
        seen,
        received,
        ca_file: None,
        _dir: None,
    }
}

/// A complete request head and body (Content-Length, chunked, or none).
fn request_complete(buf: &[u8]) -> bool {
    let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
    let body = &buf[i + 4..];
    if head.contains("\r\ntransfer-encoding: chunked") {
        return body == b"0\r\n\r\n" || body.ends_with(b"\r\n0\r\n\r\n");
    }
    let len = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-length: ")?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .unwrap_or(0);
    body.len() >= len
}

/// Decodes a chunked body as the origin received it (for tests that check re-framing).
pub fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&body[..line_end]).ok()?, 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return (body == b"\r\n").then_some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        if body.get(size..size + 2)? != b"\r\n" {
            return None;
        }
        body = &body[size + 2..];
    }
}

/// An HTTPS origin for `name` on `ip`: answers every request with `hello from origin`.
pub async fn https(ip: &str, name: &str) -> Origin {
    let dir = tempfile::tempdir().unwrap();
    let (acceptor, ca_file) = tls_acceptor(name, dir.path(), "origin-ca.pem");
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body = "hello from origin\n";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Origin {
        addr,
        task,
        seen: Default::default(),
        received: Default::default(),
        ca_file: Some(ca_file),
        _dir: Some(dir),
    }
}
