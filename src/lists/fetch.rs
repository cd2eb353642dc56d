//! Downloading list sources: HTTPS and HTTP with reqwest over rustls (ring), and `file://`.
//!
//! Host names are resolved through the gate's own upstream pool ([`PoolResolver`]), never the
//! operating system's resolver: in the container the gate is the only DNS there is. Requests
//! are conditional (ETag, Last-Modified), bounded in time and size, retried with back-off on
//! transient failures, and capped in number at once. Bodies are decompressed whether the
//! server says `Content-Encoding: gzip` or the file itself is gzip (`.gz`).

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use reqwest::StatusCode;
use reqwest::header::{
    CONTENT_LENGTH, CONTENT_TYPE, ETAG, HeaderMap, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::Semaphore;

use crate::config::SourcesConfig;
use crate::dns::upstream::UpstreamPool;
use crate::error::{Fault, HasFault};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: no complete answer within {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("{url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("{url}: body larger than the {limit}-byte cap (sources.max_bytes)")]
    TooLarge { url: String, limit: u64 },
    #[error("{url}: gzip body is corrupt or truncated: {reason}")]
    Gzip { url: String, reason: String },
    #[error("{url}: cannot read: {source}")]
    File { url: String, source: std::io::Error },
    #[error("invalid list URL `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("list downloads: cannot set up TLS: {0}")]
    Setup(String),
}

impl FetchError {
    /// Worth another attempt soon: the server or the path to it may recover.
    fn is_transient(&self) -> bool {
        match self {
            FetchError::Status { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            FetchError::Timeout { .. } | FetchError::Transport { .. } | FetchError::Gzip { .. } => {
                true
            }
            _ => false,
        }
    }
}

impl HasFault for FetchError {
    fn fault(&self) -> Fault {
        match self {
            FetchError::BadUrl { .. } | FetchError::Setup(_) => Fault::Internal,
            FetchError::File { .. } => Fault::Internal,
            _ => Fault::Upstream,
        }
    }
}

/// Validators of the copy we hold, for a conditional GET.
#[derive(Debug, Clone, Default)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// What a download produced.
#[derive(Debug)]
pub enum Fetched {
    /// 304: the copy we hold is current. Nothing was transferred or parsed.
    NotModified,
    /// A new body, decompressed.
    Body {
        bytes: Vec<u8>,
        etag: Option<String>,
        last_modified: Option<String>,
        content_type: Option<String>,
    },
}

/// Download limits, from `[sources]`.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub retries: u32,
    pub retry_backoff: Duration,
    pub max_bytes: u64,
    pub max_concurrent: usize,
    pub ca_file: Option<PathBuf>,
}

impl FetchSettings {
    /// The settings `[sources]` describes; `ca_file` resolved by the caller.
    pub fn from_config(sources: &SourcesConfig, ca_file: Option<PathBuf>) -> FetchSettings {
        FetchSettings {
            timeout: Duration::from_secs(sources.timeout_secs),
            connect_timeout: Duration::from_secs(sources.connect_timeout_secs),
            retries: sources.retries,
            retry_backoff: Duration::from_millis(sources.retry_backoff_ms),
            max_bytes: sources.max_bytes,
            max_concurrent: sources.max_concurrent.max(1),
            ca_file,
        }
    }
}

/// Downloads list sources. Cheap to share behind an `Arc`.
pub struct Fetcher {
    client: reqwest::Client,
    settings: FetchSettings,
    slots: Semaphore,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("settings", &self.settings)
            .finish()
    }
}

impl Fetcher {
    /// A client that trusts webpki-roots (plus `ca_file`) through rustls with ring, and
    /// resolves names through `pool`. No network I/O happens here.
    pub fn new(settings: FetchSettings, pool: Arc<UpstreamPool>) -> Result<Fetcher, FetchError> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(ca) = &settings.ca_file {
            let certs = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| FetchError::Setup(format!("ca_file {}: {e}", ca.display())))?;
            if certs.is_empty() {
                return Err(FetchError::Setup(format!(
                    "ca_file {}: no certificate",
                    ca.display()
                )));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| FetchError::Setup(format!("ca_file {}: {e}", ca.display())))?;
            }
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .dns_resolver(Arc::new(PoolResolver { pool }))
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .map_err(|e| FetchError::Setup(e.to_string()))?;
        Ok(Fetcher {
            client,
            slots: Semaphore::new(settings.max_concurrent.max(1)),
            settings,
        })
    }

    pub fn settings(&self) -> &FetchSettings {
        &self.settings
    }

    /// Downloads `url`, conditionally on `prior`, retrying transient failures with doubling
    /// back-off. At most `max_concurrent` downloads run at once.
    pub async fn fetch(&self, url: &str, prior: &Validators) -> Result<Fetched, FetchError> {
        let _slot = self.slots.acquire().await.expect("semaphore never closed");
        let mut attempt = 0;
        loop {
            match self.fetch_once(url, prior).await {
                Err(e) if e.is_transient() && attempt < self.settings.retries => {
                    let wait = self.settings.retry_backoff * 2u32.saturating_pow(attempt);
                    tracing::debug!(%url, error = %e, ?wait, "list download failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn fetch_once(&self, url: &str, prior: &Validators) -> Result<Fetched, FetchError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| FetchError::BadUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        match parsed.scheme() {
            "file" => self.read_file(url, &parsed).await,
            "http" | "https" => self.get(url, parsed, prior).await,
            other => Err(FetchError::BadUrl {
                url: url.to_owned(),
                reason: format!("unsupported scheme `{other}`"),
            }),
        }
    }

    async fn read_file(&self, url: &str, parsed: &reqwest::Url) -> Result<Fetched, FetchError> {
        let path = parsed.to_file_path().map_err(|()| FetchError::BadUrl {
            url: url.to_owned(),
            reason: "not a local file path".into(),
        })?;
        let file_err = |source| FetchError::File {
            url: url.to_owned(),
            source,
        };
        // Read (and gunzip) at the lowest priority: copying a list of many MB on a thread of
        // normal priority delays the queries on that core by milliseconds.
        let max_bytes = self.settings.max_bytes;
        let read = super::background::in_background(move || {
            let len = std::fs::metadata(&path)?.len();
            if len > max_bytes {
                return Ok(None);
            }
            let bytes = super::background::read(&path)?;
            // It may have grown since its size was read.
            Ok((bytes.len() as u64 <= max_bytes).then_some(bytes))
        })
        .await;
        let Some(bytes) = read.map_err(file_err)? else {
            return Err(FetchError::TooLarge {
                url: url.to_owned(),
                limit: self.settings.max_bytes,
            });
        };
        let bytes = self.gunzip_if_needed(url, bytes).await?;
        Ok(Fetched::Body {
            bytes,
            etag: None,
            last_modified: None,
            content_type: None,
        })
    }

    async fn get(
        &self,
        url: &str,
        parsed: reqwest::Url,
        prior: &Validators,
    ) -> Result<Fetched, FetchError> {
        let mut request = self.client.get(parsed);
        if let Some(etag) = &prior.etag {
            request = request.header(IF_NONE_MATCH, etag);
        }
        if let Some(lm) = &prior.last_modified {
            request = request.header(IF_MODIFIED_SINCE, lm);
        }
        let mut response = request.send().await.map_err(|e| self.http_error(url, e))?;
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED {
            return Ok(Fetched::NotModified);
        }
        if !status.is_success() {
            return Err(FetchError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
        let headers = response.headers().clone();
        let too_large = || FetchError::TooLarge {
            url: url.to_owned(),
            limit: self.settings.max_bytes,
        };
        // A declared length (of the undecoded body) already over the cap is refused at once.
        if header(&headers, CONTENT_LENGTH)
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|len| len > self.settings.max_bytes)
        {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.http_error(url, e))?
        {
            if (bytes.len() + chunk.len()) as u64 > self.settings.max_bytes {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        let bytes = self.gunzip_if_needed(url, bytes).await?;
        Ok(Fetched::Body {
            bytes,
            etag: header(&headers, ETAG),
            last_modified: header(&headers, LAST_MODIFIED),
            content_type: header(&headers, CONTENT_TYPE),
        })
    }

    /// A body that is itself a gzip file (a `.gz` list, or a server that sends one without
    /// `Content-Encoding`) is decompressed, within the size cap, on the low-priority list
    /// thread: inflating a list of many MB takes tens of milliseconds of CPU.
    async fn gunzip_if_needed(&self, url: &str, bytes: Vec<u8>) -> Result<Vec<u8>, FetchError> {
        if !bytes.starts_with(&[0x1f, 0x8b]) {
            return Ok(bytes);
        }
        let limit = self.settings.max_bytes;
        let out = super::background::in_background(move || {
            let mut out = Vec::with_capacity(bytes.len().saturating_mul(4).min(limit as usize));
            flate2::read::MultiGzDecoder::new(&bytes[..])
                .take(limit + 1)
                .read_to_end(&mut out)
                .map(|_| out)
        })
        .await
        .map_err(|e| FetchError::Gzip {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        if out.len() as u64 > limit {
            return Err(FetchError::TooLarge {
                url: url.to_owned(),
                limit,
            });
        }
        Ok(out)
    }

    fn http_error(&self, url: &str, e: reqwest::Error) -> FetchError {
        if e.is_timeout() {
            return FetchError::Timeout {
                url: url.to_owned(),
                after: self.settings.timeout,
            };
        }
        if e.is_decode() {
            return FetchError::Gzip {
                url: url.to_owned(),
                reason: error_chain(&e),
            };
        }
        FetchError::Transport {
            url: url.to_owned(),
            reason: error_chain(&e),
        }
    }
}

fn header(headers: &HeaderMap, name: reqwest::header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// reqwest's own message plus its causes ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Resolves download hosts with A and AAAA queries through the gate's own upstream pool.
pub struct PoolResolver {
    pool: Arc<UpstreamPool>,
}

impl PoolResolver {
    pub fn new(pool: Arc<UpstreamPool>) -> PoolResolver {
        PoolResolver { pool }
    }

    /// The addresses of `host` (IPv4 first), or why there are none.
    pub async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        lookup(&self.pool, host).await
    }
}

async fn lookup(pool: &UpstreamPool, host: &str) -> Result<Vec<IpAddr>, String> {
    let fqdn = if host.ends_with('.') {
        host.to_owned()
    } else {
        format!("{host}.")
    };
    let name = Name::from_ascii(&fqdn).map_err(|e| format!("`{host}`: {e}"))?;
    let ask = |qtype| {
        let mut query = Message::query();
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(name.clone(), qtype));
        async move { pool.resolve(&query).await }
    };
    let (a, aaaa) = tokio::join!(ask(RecordType::A), ask(RecordType::AAAA));
    let mut ips = Vec::new();
    let mut errors = Vec::new();
    for answer in [a, aaaa] {
        match answer {
            Ok(message) => ips.extend(message.answers.iter().filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                _ => None,
            })),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if ips.is_empty() {
        return Err(if errors.is_empty() {
            format!("`{host}` has no address (resolved through the gate's upstreams)")
        } else {
            format!("cannot resolve `{host}`: {}", errors.join("; "))
        });
    }
    Ok(ips)
}

impl reqwest::dns::Resolve for PoolResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let pool = self.pool.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let ips = lookup(&pool, &host).await?;
            let addrs: reqwest::dns::Addrs =
                Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// True when a body is an HTML page (an error or login page served with status 200).
pub fn looks_like_html(bytes: &[u8], content_type: Option<&str>) -> bool {
    if content_type.is_some_and(|ct| {
        let ct = ct.trim_start().to_ascii_lowercase();
        ct.starts_with("text/html") || ct.starts_with("application/xhtml")
    }) {
        return true;
    }
    let start = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let start: Vec<u8> = start
        .iter()
        .copied()
        .skip_while(u8::is_ascii_whitespace)
        .take(64)
        .map(|b| b.to_ascii_lowercase())
        .collect();
    [
        &b"<!doctype html"[..],
        b"<html",
        b"<head",
        b"<body",
        b"<?xml",
    ]
    .iter()
    .any(|tag| start.starts_with(tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_recognised() {
        assert!(looks_like_html(b"  <!DOCTYPE html><html>", None));
        assert!(looks_like_html(b"\xef\xbb\xbf<html>", None));
        assert!(looks_like_html(
            b"0.0.0.0 a.example",
            Some("text/html; charset=utf-8")
        ));
        assert!(!looks_like_html(b"0.0.0.0 a.example\n", Some("text/plain")));
        assert!(!looks_like_html(b"# <html> in a comment\n", None));
    }
}
