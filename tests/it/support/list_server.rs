//! A small HTTP/1.1 list server for tests, plain and over TLS (certificate for `lists.test`,
//! minted at run time), that serves fixture lists and misbehaves on request.
//!
//! Written by hand on tokio: one request per connection (`Connection: close`). Stopped on drop.

use super::certs::tls_acceptor;
use std::collections::HashMap;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The name in the server certificate.
pub const TLS_NAME: &str = "lists.test";

/// How a path is answered.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with this body; 304 when the request's If-None-Match is `etag`.
    List {
        body: Vec<u8>,
        etag: Option<String>,
        /// Send with `Content-Encoding: gzip`.
        gzip: bool,
    },
    /// This status with a short text body.
    Status(u16),
    /// 200, `text/html`, an error page.
    Html,
    /// Headers and the first bytes of the body, then silence for `stall`.
    Slow { body: Vec<u8>, stall: Duration },
    /// `Content-Encoding: gzip` whose compressed body is cut in half (the declared length
    /// matches what is sent, so only the gzip stream is broken).
    TruncatedGzip { body: Vec<u8> },
    /// 200 with this body and `Last-Modified: last_modified` (no ETag); 304 when the
    /// request's If-Modified-Since is exactly that date.
    Dated {
        body: Vec<u8>,
        last_modified: String,
    },
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<String>,
    pub status: u16,
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Reply>,
    seen: Vec<Seen>,
}

pub struct ListServer {
    /// Plain HTTP on 127.0.0.1.
    pub http: SocketAddr,
    /// HTTPS on 127.0.0.1 (certificate for [`TLS_NAME`]).
    pub https: SocketAddr,
    /// PEM of the CA that signed the certificate.
    pub ca_file: PathBuf,
    state: Arc<Mutex<State>>,
    tasks: Vec<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl ListServer {
    pub async fn start() -> ListServer {
        let dir = tempfile::tempdir().unwrap();
        let (acceptor, ca_file) = tls_acceptor(TLS_NAME, dir.path(), "lists-ca.pem");

        let state = Arc::new(Mutex::new(State::default()));
        let plain = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let secure = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let http = plain.local_addr().unwrap();
        let https = secure.local_addr().unwrap();
        let mut tasks = Vec::new();
        let st = state.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = plain.accept().await else {
                    return;
                };
                tokio::spawn(serve(stream, st.clone()));
            }
        }));
        let st = state.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = secure.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        serve(stream, st).await;
                    }
                });
            }
        }));
        ListServer {
            http,
            https,
            ca_file,
            state,
            tasks,
            _dir: dir,
        }
    }

    pub fn set(&self, path: &str, reply: Reply) {
        self.state
            .lock()
            .unwrap()
            .routes
            .insert(path.to_owned(), reply);
    }

    /// A list body served with an ETag.
    pub fn set_list(&self, path: &str, body: &str, etag: &str) {
        self.set(
            path,
            Reply::List {
                body: body.as_bytes().to_vec(),
                etag: Some(etag.to_owned()),
                gzip: false,
            },
        );
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// `https://lists.test:PORT{path}` (resolve `lists.test` to 127.0.0.1 through the test DNS).
    pub fn https_url(&self, path: &str) -> String {
        format!("https://{TLS_NAME}:{}{path}", self.https.port())
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http.port())
    }

    /// Stops listening (connections in progress are dropped with their tasks' runtime).
    pub fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for ListServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, state: Arc<Mutex<State>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
        .to_owned();
    let headers: Vec<(&str, &str)> = lines.filter_map(|l| l.split_once(':')).collect();
    let request_header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    };
    let if_none_match = request_header("if-none-match");
    let if_modified_since = request_header("if-modified-since");
    let reply = state.lock().unwrap().routes.get(&path).cloned();
    let reply = reply.unwrap_or(Reply::Status(404));
    let record = |status: u16| {
        state.lock().unwrap().seen.push(Seen {
            if_none_match: if_none_match.clone(),
            if_modified_since: if_modified_since.clone(),
            status,
        })
    };
    let mut out = Vec::new();
    let head = |status: u16, headers: &[(&str, String)], len: usize| {
        let mut h =
            format!("HTTP/1.1 {status} X\r\nConnection: close\r\nContent-Length: {len}\r\n");
        for (k, v) in headers {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        h.push_str("\r\n");
        h.into_bytes()
    };
    match reply {
        Reply::List { body, etag, gzip } => {
            if let Some(tag) = etag.as_ref().filter(|t| if_none_match.as_ref() == Some(*t)) {
                record(304);
                // A 304 has no body and no Content-Length.
                out = format!(
                    "HTTP/1.1 304 Not Modified\r\nConnection: close\r\nETag: {tag}\r\n\r\n"
                )
                .into_bytes();
            } else {
                record(200);
                let mut headers = vec![("Content-Type", "text/plain".to_owned())];
                if let Some(etag) = etag {
                    headers.push(("ETag", etag));
                }
                let body = if gzip {
                    headers.push(("Content-Encoding", "gzip".to_owned()));
                    gzip_bytes(&body)
                } else {
                    body
                };
                out.extend(head(200, &headers, body.len()));
                out.extend(body);
            }
        }
        Reply::Status(status) => {
            record(status);
            let body = format!("status {status}\n");
            out.extend(head(
                status,
                &[("Content-Type", "text/plain".into())],
                body.len(),
            ));
            out.extend(body.into_bytes());
        }
        Reply::Html => {
            record(200);
            let body = b"<!DOCTYPE html>\n<html><body><h1>Service unavailable</h1></body></html>\n";
            out.extend(head(
                200,
                &[("Content-Type", "text/html".into())],
                body.len(),
            ));
            out.extend_from_slice(body);
        }
        Reply::Slow { body, stall } => {
            record(200);
            out.extend(head(
                200,
                &[("Content-Type", "text/plain".into())],
                body.len(),
            ));
            out.extend_from_slice(&body[..body.len() / 4]);
            let _ = stream.write_all(&out).await;
            let _ = stream.flush().await;
            tokio::time::sleep(stall).await;
            return;
        }
        Reply::Dated {
            body,
            last_modified,
        } => {
            if if_modified_since.as_deref() == Some(last_modified.as_str()) {
                record(304);
                out = b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n".to_vec();
            } else {
                record(200);
                let headers = [
                    ("Content-Type", "text/plain".to_owned()),
                    ("Last-Modified", last_modified),
                ];
                out.extend(head(200, &headers, body.len()));
                out.extend(body);
            }
        }
        Reply::TruncatedGzip { body } => {
            record(200);
            let gz = gzip_bytes(&body);
            let cut = &gz[..gz.len() / 2];
            out.extend(head(
                200,
                &[
                    ("Content-Type", "text/plain".into()),
                    ("Content-Encoding", "gzip".into()),
                ],
                cut.len(),
            ));
            out.extend_from_slice(cut);
        }
    }
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

pub fn gzip_bytes(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(body).unwrap();
    enc.finish().unwrap()
}
