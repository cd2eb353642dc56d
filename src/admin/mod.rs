//! The admin listener (default `127.0.0.1:9953`, operator network only): health,
//! readiness, Prometheus metrics and the read-only explain and lists APIs.
//!
//! A deliberately small HTTP/1.1 server (one request per connection, `Connection: close`,
//! request heads parsed with httparse, bounded in size and time). It has the proxy's
//! kind of limits, read from `[admin]` at each connection: connections at once over all
//! clients (503) and per client address (429), and the time to send a head (408) and to
//! take an answer. No endpoint turns blocking off; the two that act need the bearer
//! token from `[admin] token_file`.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /healthz` | 200 `ok` while the process serves |
//! | `GET /readyz` | 200 when the rules are loaded and an upstream is healthy, else 503 and why (503 `draining` from SIGTERM on) |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /api/explain?name=N&client=IP&qtype=T` | the decision trail of `portcullis check --json` |
//! | `GET /api/lists` | every list source's status, as `portcullis lists --json` |
//! | `POST /api/lists/refresh` | downloads every list now (conditionally); per-list results |
//! | `POST /api/cache/flush` | empties the DNS answer cache |
//! | `GET /api/suggestions?group=G&since=D&min_count=N&format=toml\|json` | learn mode: the allow rules report mode suggests (`portcullis allowlist suggest`) |
//!
//! The POST endpoints and `/api/suggestions` (it tells what the agents reach) answer 401
//! without `Authorization: Bearer TOKEN` matching the token file, and 403 when no token
//! file is configured.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dns::filter::Filter;
use crate::listen::{ConnLimits, LimitHit, accept_loop};
use crate::lists::refresh::{Lists, Outcome};
use crate::live::Shared;
use crate::proxy::ProxyError;
use crate::proxy::http::{RequestHead, parse_request_head};
use crate::telemetry::metrics;

/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Most header fields accepted in a request head.
const MAX_HEADERS: usize = 32;

/// What the admin endpoints read.
pub struct AdminState {
    /// The configuration in force (the token, the limits).
    pub shared: Arc<Shared>,
    pub filter: Arc<Filter>,
    pub lists: Lists,
    /// Set when the gate stops (SIGTERM): from then on /readyz answers 503, while the
    /// front doors drain and this listener keeps answering until they are done.
    pub draining: AtomicBool,
    /// Learn mode's table (`None`: the gate learns nothing).
    pub learner: Option<Arc<crate::learn::Learner>>,
}

impl AdminState {
    fn snapshot(&self) -> metrics::Snapshot {
        let lists = self
            .lists
            .statuses()
            .into_iter()
            .map(|list| metrics::ListGauges {
                failing: list.last_attempt.map(|_| list.last_error.is_some()),
                name: list.name,
                entries: list.entries,
                ready: list.ready,
                last_success: list.last_success,
            });
        let upstreams =
            self.filter
                .upstream
                .health()
                .into_iter()
                .map(|u| metrics::UpstreamGauges {
                    name: u.name,
                    healthy: u.healthy,
                });
        let (guard_entries, guard_evictions, rate_clients) = self.filter.guard_usage();
        let (learn_entries, learn_evictions) = self.learner.as_ref().map_or((0, 0), |l| l.usage());
        metrics::Snapshot {
            learn_entries,
            learn_evictions,
            cache_entries: self.filter.cache.len(),
            guard_entries,
            guard_evictions,
            rate_clients,
            lists: lists.collect(),
            upstreams: upstreams.collect(),
        }
    }

    /// `None` when the request carries the configured bearer token, else the refusal.
    fn unauthorized(&self, authorization: Option<&[u8]>) -> Option<Response> {
        let config = self.shared.config();
        let Some(token) = &config.admin.token else {
            return Some(Response::text(
                403,
                "disabled: set [admin] token_file to enable this endpoint\n",
            ));
        };
        let presented = authorization.and_then(|v| v.strip_prefix(b"Bearer "));
        match presented {
            Some(p) if token.matches(p.trim_ascii()) => None,
            Some(_) => Some(Response::text(401, "wrong bearer token\n")),
            None => Some(Response::text(401, "bearer token required\n")),
        }
    }

    /// `None` when ready, else why not.
    fn not_ready(&self) -> Option<String> {
        let mut why = Vec::new();
        if self.draining.load(Ordering::Relaxed) {
            why.push("draining: stopping, in-flight queries and tunnels are finishing".to_owned());
        }
        if !self.lists.ready() {
            let waiting: Vec<String> = self
                .lists
                .statuses()
                .into_iter()
                .filter(|l| !l.ready)
                .map(|l| l.name)
                .collect();
            why.push(format!(
                "lists not loaded yet: {}",
                if waiting.is_empty() {
                    "?".to_owned()
                } else {
                    waiting.join(", ")
                }
            ));
        }
        if !self.filter.upstream.any_healthy() {
            why.push("no upstream resolver is healthy".to_owned());
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

pub use crate::listen::bind_tcp as bind;

/// Serves the admin endpoints on `listeners` until `shutdown` completes.
pub async fn serve(
    listeners: Vec<TcpListener>,
    state: Arc<AdminState>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let limits = Arc::new(ConnLimits::default());
    for listener in listeners {
        tracing::info!(addr = %listener.local_addr()?, "listening admin");
        let (state, conn_stop, conns) = (state.clone(), stop.clone(), tracker.clone());
        let limits = limits.clone();
        tracker.spawn(accept_loop(
            listener,
            stop.clone(),
            "admin",
            move |stream, client| {
                let (state, stop, limits) = (state.clone(), conn_stop.clone(), limits.clone());
                conns.spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = connection(&state, &limits, stream, client.ip()) => {}
                    }
                });
            },
        ));
    }
    shutdown.await;
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// An HTTP answer.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// The `Allow` header of a 405.
    allow: &'static str,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            allow: "",
        }
    }

    fn json(value: &impl serde::Serialize) -> Response {
        match serde_json::to_string_pretty(value) {
            Ok(body) => Response {
                status: 200,
                content_type: "application/json",
                body,
                allow: "",
            },
            Err(e) => Response::text(500, format!("{e}\n")),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            429 => "Too Many Requests",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            out.push_str(&format!("Allow: {}\r\n", self.allow));
        }
        if self.status == 401 {
            out.push_str("WWW-Authenticate: Bearer realm=\"portcullis\"\r\n");
        }
        if self.status == 429 || self.status == 503 {
            out.push_str("Retry-After: 1\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(self.body.as_bytes());
        bytes
    }
}

async fn connection(
    state: &AdminState,
    limits: &Arc<ConnLimits>,
    mut stream: TcpStream,
    client: IpAddr,
) {
    let config = state.shared.config();
    let admin = &config.admin;
    let write_timeout = admin.write_timeout();
    let _slot = match limits.take(
        client,
        admin.max_connections,
        admin.max_connections_per_client,
    ) {
        Ok(slot) => slot,
        Err(hit) => {
            let response = match hit {
                LimitHit::Total => Response::text(503, "too many admin connections\n"),
                LimitHit::PerClient => {
                    Response::text(429, "too many admin connections from this address\n")
                }
            };
            tracing::warn!(%client, status = response.status, "admin connection refused at the limit");
            let _ = tokio::time::timeout(write_timeout, stream.write_all(&response.encode())).await;
            return;
        }
    };
    let head = tokio::time::timeout(admin.header_timeout(), read_head(&mut stream)).await;
    let response = match head {
        Ok(Ok(Some(head))) => {
            let authorization = head.header("authorization").next();
            route(state, &head.method, &head.target, authorization).await
        }
        Ok(Ok(None)) => return,
        Ok(Err(ProxyError::HeadTooLarge(_))) => Response::text(431, "request head too large\n"),
        Ok(Err(_)) => Response::text(400, "bad request\n"),
        Err(_) => Response::text(408, "request head not received in time\n"),
    };
    let _ = tokio::time::timeout(write_timeout, async {
        stream.write_all(&response.encode()).await?;
        stream.shutdown().await
    })
    .await;
}

/// Reads one request head with the proxy's parser (the gate has one HTTP/1 head reader):
/// `None` when the client closed before sending one.
async fn read_head(stream: &mut TcpStream) -> Result<Option<RequestHead>, ProxyError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some((head, _)) = parse_request_head(&buf, MAX_HEADERS)? {
            return Ok(Some(head));
        }
        if buf.len() > MAX_HEAD {
            return Err(ProxyError::HeadTooLarge(MAX_HEAD));
        }
    }
}

/// Answers one request. `authorization` is the raw `Authorization` header, if any.
pub async fn route(
    state: &AdminState,
    method: &str,
    target: &str,
    authorization: Option<&[u8]>,
) -> Response {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let allowed = match path {
        "/healthz" | "/readyz" | "/metrics" | "/api/explain" | "/api/lists"
        | "/api/suggestions" => "GET",
        "/api/lists/refresh" | "/api/cache/flush" => "POST",
        _ => return Response::text(404, "not found\n"),
    };
    if method != allowed {
        return Response {
            allow: allowed,
            ..Response::text(405, "method not allowed\n")
        };
    }
    if allowed == "POST" || path == "/api/suggestions" {
        if let Some(refused) = state.unauthorized(authorization) {
            return refused;
        }
        if allowed == "POST" {
            tracing::info!(endpoint = path, "admin action");
        }
    }
    match path {
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => match state.not_ready() {
            None => Response::text(200, "ready\n"),
            Some(why) => Response::text(503, format!("not ready: {why}\n")),
        },
        "/metrics" => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: metrics::init().render(&state.snapshot()),
            allow: "",
        },
        "/api/explain" => explain(state, query),
        "/api/suggestions" => suggestions(state, query),
        "/api/lists" => Response::json(&state.lists.statuses()),
        "/api/lists/refresh" => refresh_lists(state).await,
        "/api/cache/flush" => {
            let flushed = state.filter.cache.len();
            state.filter.cache.clear();
            Response::json(&serde_json::json!({ "flushed": flushed }))
        }
        _ => Response::text(404, "not found\n"),
    }
}

/// Downloads every list now and says what each did. 200 even when a list failed (the
/// per-list results say so, and the old copy keeps serving); 500 when the rebuild failed.
async fn refresh_lists(state: &AdminState) -> Response {
    let report = state.lists.refresh_all().await;
    let sources: Vec<serde_json::Value> = report
        .sources
        .iter()
        .map(|s| match &s.result {
            Ok(Outcome::Unchanged) => serde_json::json!({ "name": s.name, "result": "unchanged" }),
            Ok(Outcome::Updated { entries, previous }) => serde_json::json!({
                "name": s.name, "result": "updated", "entries": entries, "previous": previous,
            }),
            Err(error) => serde_json::json!({ "name": s.name, "error": error.to_string() }),
        })
        .collect();
    let mut response = Response::json(&serde_json::json!({
        "rebuilt": report.rebuilt,
        "build_error": report.build_error.as_ref().map(ToString::to_string),
        "sources": sources,
    }));
    if report.build_error.is_some() {
        response.status = 500;
    }
    response
}

/// Learn mode's suggestions, as an `allowlist.toml` fragment (default) or JSON.
fn suggestions(state: &AdminState, query: &str) -> Response {
    use crate::learn::suggest::{Options, render_toml, suggest};
    let mut group = None;
    let mut opts = Options::default();
    let mut json = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(value) = percent_decode(value) else {
            return Response::text(400, format!("`{key}`: bad percent-encoding\n"));
        };
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|e| Response::text(400, format!("`{key}`: {e}\n")))
        };
        match key {
            "group" => group = Some(value),
            "since" => match crate::learn::parse_duration(&value) {
                Ok(secs) => opts.since = Some(crate::learn::now_unix().saturating_sub(secs)),
                Err(e) => return Response::text(400, format!("`since`: {e}\n")),
            },
            "min_count" => match number(&value) {
                Ok(n) => opts.min_count = n,
                Err(r) => return r,
            },
            "wildcard_after" => match number(&value) {
                Ok(n) => opts.wildcard_after = n as usize,
                Err(r) => return r,
            },
            "format" => match value.as_str() {
                "toml" => json = false,
                "json" => json = true,
                _ => return Response::text(400, "`format`: toml or json\n"),
            },
            _ => {
                return Response::text(
                    400,
                    format!(
                        "unknown parameter `{key}`: group, since, min_count, wildcard_after, format\n"
                    ),
                );
            }
        }
    }
    let Some(learner) = &state.learner else {
        return Response::text(404, "learn mode is off\n");
    };
    let policy = state.filter.policy.load();
    if let Some(g) = &group
        && policy.groups.id(g).is_none()
    {
        return Response::text(
            400,
            format!(
                "`group`: no group `{g}` (groups: {})\n",
                policy.groups.names().join(", ")
            ),
        );
    }
    let entries = learner.entries(group.as_deref());
    let found = suggest(
        &entries,
        |host, group, ports| crate::learn::judge(&policy, host, group, ports),
        |name| {
            let (registered, prefix) = policy.suffixes.split(name);
            (registered.to_owned(), prefix.unwrap_or("").to_owned())
        },
        &opts,
    );
    if json {
        return Response::json(&found);
    }
    Response {
        status: 200,
        content_type: "application/toml; charset=utf-8",
        body: render_toml(&found, crate::learn::now_unix()),
        allow: "",
    }
}

fn explain(state: &AdminState, query: &str) -> Response {
    let mut name = None;
    let mut client = None;
    let mut qtype = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(value) = percent_decode(value) else {
            return Response::text(400, format!("`{key}`: bad percent-encoding\n"));
        };
        match key {
            "name" => name = Some(value),
            "client" => match value.parse::<IpAddr>() {
                Ok(ip) => client = Some(ip),
                Err(e) => return Response::text(400, format!("`client`: {e}\n")),
            },
            "qtype" => match crate::config::dns::qtype_code(&value) {
                Ok(code) => qtype = Some((code, value.to_ascii_uppercase())),
                Err(e) => return Response::text(400, format!("`qtype`: {e}\n")),
            },
            _ => {}
        }
    }
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Response::text(
            400,
            "`name` is required: /api/explain?name=NAME[&client=IP][&qtype=TYPE]\n",
        );
    };
    let explanation = state.filter.policy.load().explain_query(
        &name,
        client,
        qtype.as_ref().map(|(code, name)| (*code, name.as_str())),
    );
    Response::json(&explanation)
}

/// Decodes `%XX` escapes and `+` (as a space); `None` on a bad escape or invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `portcullis health`: GET `url` over plain TCP; `Ok(true)` on a 200 answer.
pub fn probe(url: &str, timeout: Duration) -> io::Result<(bool, String)> {
    let (status, body) = get(url, timeout, None, 64 * 1024)?;
    Ok((status == 200, body))
}

/// GET `url` (`http://` only: the admin listener) with an optional bearer token: the
/// status and at most `limit` bytes of the body.
pub fn get(
    url: &str,
    timeout: Duration,
    token: Option<&str>,
    limit: u64,
) -> io::Result<(u16, String)> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, why.to_owned());
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid("only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/readyz"),
    };
    let addr = authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| invalid("no address"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.take(limit).read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Eb+c").as_deref(), Some("a.b c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }
}
