//! Local origins for the proxy tests, all on loopback: a TLS HTTPS origin with a
//! certificate minted at run time, a TCP echo server and a scripted plain-HTTP origin.
//! Every server stops when its value is dropped.
#![allow(dead_code)]

// Each support module brings its own copy: test crates include different sets.
#[allow(clippy::duplicate_mod)]
#[path = "certs.rs"]
mod certs;
use certs::tls_acceptor;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub struct Origin {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
    /// Request heads received (plain-HTTP origin).
    pub seen: Arc<Mutex<Vec<String>>>,
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
        ca_file: None,
        _dir: None,
    }
}

/// A plain-HTTP origin: records each request head and answers with `response`.
pub async fn http(ip: &str, response: &'static str) -> Origin {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Default::default();
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i + 4]).to_string();
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length: ")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        while buf.len() < i + 4 + len {
                            let Ok(n) = s.read(&mut chunk).await else {
                                return;
                            };
                            if n == 0 {
                                break;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                        }
                        let body = String::from_utf8_lossy(&buf[i + 4..]).to_string();
                        seen.lock().unwrap().push(format!("{head}{body}"));
                        break;
                    }
                }
                let _ = s.write_all(response.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    Origin {
        addr,
        task,
        seen,
        ca_file: None,
        _dir: None,
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
        ca_file: Some(ca_file),
        _dir: Some(dir),
    }
}
