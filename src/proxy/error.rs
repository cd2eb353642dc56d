//! The proxy's errors: each one is an HTTP answer a person can read.

use crate::error::{Fault, HasFault};

use super::target::TargetError;

/// Why the proxy refused a request it understood (403): the stable code of the
/// `X-Portcullis-Reason` header, the decision log and `portcullis_proxy_decisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCode {
    Blocked,
    BlockedAnswer,
    SpecialUse,
    NotAllowlisted,
    PortNotAllowed,
    IpLiteral,
    DeniedAddress,
    NotTls,
    ClientHelloTimeout,
    SniMissing,
    SniMismatch,
    EchRefused,
    /// The DNS tunnel guard blocks the client's pair with the name's registered domain.
    TunnelGuard,
}

impl RefusalCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::Blocked => "blocked",
            RefusalCode::BlockedAnswer => "blocked_answer",
            RefusalCode::SpecialUse => "special_use",
            RefusalCode::NotAllowlisted => "not_allowlisted",
            RefusalCode::PortNotAllowed => "port_not_allowed",
            RefusalCode::IpLiteral => "ip_literal",
            RefusalCode::DeniedAddress => "denied_address",
            RefusalCode::NotTls => "not_tls",
            RefusalCode::ClientHelloTimeout => "client_hello_timeout",
            RefusalCode::SniMissing => "sni_missing",
            RefusalCode::SniMismatch => "sni_mismatch",
            RefusalCode::EchRefused => "ech_refused",
            RefusalCode::TunnelGuard => "tunnel_guard",
        }
    }
}

impl std::fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that ends a proxy request without a connection to the origin.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Malformed request: bad syntax, smuggling attempts, unsupported forms.
    #[error("malformed request: {0}")]
    BadRequest(String),
    /// The connection closed before sending a byte (a port probe, a health check):
    /// nothing to answer and nothing to log.
    #[error("connection closed before a request")]
    EmptyRequest,
    /// `target` is shown redacted ([`redact_target`]): it is logged.
    #[error("bad target `{}`: {error}", redact_target(.target))]
    BadTarget { target: String, error: TargetError },
    #[error("request head not received in time")]
    HeaderTimeout,
    #[error("request head larger than {0} bytes or too many header fields")]
    HeadTooLarge(usize),
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("request body not received in time")]
    BodyTimeout,
    #[error("chunked-body trailers larger than {0} bytes or too many fields")]
    TrailersTooLarge(usize),
    /// A policy refusal: `code` is the stable reason, `detail` names the rule or range.
    #[error("{code}: {detail}")]
    Forbidden { code: RefusalCode, detail: String },
    #[error("{host} does not resolve: {why}")]
    Unresolved { host: String, why: String },
    #[error("connecting to {addr} timed out")]
    ConnectTimeout { addr: String },
    #[error("connecting to {addr} failed: {why}")]
    ConnectFailed { addr: String, why: String },
    #[error("the origin sent a bad response: {0}")]
    BadGateway(String),
    #[error("too many connections from this client")]
    ClientLimit,
    #[error("the proxy is at its connection limit")]
    Overloaded,
    /// The gate-wide memory budget for heads and bodies is spent.
    #[error("the proxy's buffer budget of {0} bytes over all connections is spent")]
    BufferBudget(usize),
    /// One connection would hold more than its cap (a bound the relay keeps by design).
    #[error("the connection would hold more than its {0}-byte buffer cap")]
    BufferCap(usize),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    pub fn forbidden(code: RefusalCode, detail: impl Into<String>) -> ProxyError {
        ProxyError::Forbidden {
            code,
            detail: detail.into(),
        }
    }

    /// The HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::BadRequest(_) | ProxyError::EmptyRequest | ProxyError::BadTarget { .. } => {
                400
            }
            ProxyError::HeaderTimeout | ProxyError::BodyTimeout => 408,
            ProxyError::HeadTooLarge(_) | ProxyError::TrailersTooLarge(_) => 431,
            ProxyError::BodyTooLarge(_) => 413,
            ProxyError::Forbidden { .. } => 403,
            ProxyError::Unresolved { .. }
            | ProxyError::ConnectFailed { .. }
            | ProxyError::BadGateway(_) => 502,
            ProxyError::ConnectTimeout { .. } => 504,
            ProxyError::ClientLimit => 429,
            ProxyError::Overloaded | ProxyError::BufferBudget(_) | ProxyError::BufferCap(_) => 503,
            ProxyError::Internal(_) => 500,
        }
    }

    /// Stable snake_case reason code: the start of `X-Portcullis-Reason` and the log's `reason_code`.
    /// The refusal's code, for a request refused by policy (403).
    pub fn refusal_code(&self) -> Option<RefusalCode> {
        match self {
            ProxyError::Forbidden { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::EmptyRequest => "empty_request",
            ProxyError::BadTarget { .. } => "bad_target",
            ProxyError::HeaderTimeout => "header_timeout",
            ProxyError::HeadTooLarge(_) => "head_too_large",
            ProxyError::BodyTooLarge(_) => "body_too_large",
            ProxyError::BodyTimeout => "body_timeout",
            ProxyError::TrailersTooLarge(_) => "trailers_too_large",
            ProxyError::Forbidden { code, .. } => code.as_str(),
            ProxyError::Unresolved { .. } => "unresolved",
            ProxyError::ConnectTimeout { .. } => "connect_timeout",
            ProxyError::ConnectFailed { .. } => "connect_failed",
            ProxyError::BadGateway(_) => "bad_gateway",
            ProxyError::ClientLimit => "client_limit",
            ProxyError::Overloaded => "overloaded",
            ProxyError::BufferBudget(_) => "buffer_budget",
            ProxyError::BufferCap(_) => "buffer_cap",
            ProxyError::Internal(_) => "internal",
        }
    }
}

impl HasFault for ProxyError {
    fn fault(&self) -> Fault {
        match self.status() {
            502 | 504 => Fault::Upstream,
            500 | 503 => Fault::Internal,
            _ => Fault::Client,
        }
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// Longest `X-Portcullis-Reason` value, in characters.
pub const REASON_MAX: usize = 200;

impl ProxyError {
    /// The one fact after the code in `X-Portcullis-Reason`. The whole message (every
    /// upstream's error, every skipped address) is in the decision log's `reason`.
    fn fact(&self) -> String {
        match self {
            ProxyError::BadRequest(why) => why.clone(),
            ProxyError::EmptyRequest => "no request".into(),
            // The target is the client's own; what was wrong with it is the fact.
            ProxyError::BadTarget { error, .. } => error.to_string(),
            ProxyError::Forbidden { detail, .. } => detail.clone(),
            ProxyError::Unresolved { host, why } => {
                format!("{host} does not resolve ({})", first_clause(why))
            }
            other => other.to_string(),
        }
    }

    /// `X-Portcullis-Reason`: `code: fact`, one line of printable ASCII, at most
    /// [`REASON_MAX`] characters.
    pub fn reason_header(&self) -> String {
        one_line(&format!("{}: {}", self.code(), self.fact()), REASON_MAX)
    }
}

/// The text before the first `: ` or `; `: a list of causes ("all upstreams failed: a:
/// timeout; b: refused") shortened to its headline.
fn first_clause(text: &str) -> &str {
    let end = [": ", "; "]
        .iter()
        .filter_map(|sep| text.find(sep))
        .min()
        .unwrap_or(text.len());
    if end == 0 { text } else { &text[..end] }
}

/// Printable ASCII only (a header value must stay on one line), cut to `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let clean = text.chars().map(|c| {
        if c.is_ascii_graphic() || c == ' ' {
            c
        } else {
            '?'
        }
    });
    let mut out: String = clean.clone().take(max + 1).collect();
    if out.len() > max {
        out = clean.take(max - 3).collect();
        out.push_str("...");
    }
    out
}

const REDACTED: &str = "<redacted>";

/// A request target as it may be logged: userinfo (`user:password@`), every query value
/// and the fragment replaced by `<redacted>`; query keys, host, port and path kept.
/// A query item without `=` may itself be a token, so it is redacted whole.
/// `http://u:p@h/p?token=abc&x=1#f` becomes
/// `http://<redacted>@h/p?token=<redacted>&x=<redacted>#<redacted>`.
pub fn redact_target(target: &str) -> std::borrow::Cow<'_, str> {
    let start = target.find("://").map_or(0, |i| i + 3);
    let authority_end = target[start..]
        .find(['/', '?', '#'])
        .map_or(target.len(), |i| start + i);
    let authority = &target[start..authority_end];
    let rest = &target[authority_end..];
    let (rest, fragment) = match rest.split_once('#') {
        Some((rest, fragment)) => (rest, Some(fragment)),
        None => (rest, None),
    };
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    let mut changed = false;
    let mut out = String::with_capacity(target.len() + 16);
    out.push_str(&target[..start]);
    match authority.rfind('@') {
        Some(at) => {
            out.push_str(REDACTED);
            out.push_str(&authority[at..]);
            changed = true;
        }
        None => out.push_str(authority),
    }
    out.push_str(path);
    if let Some(query) = query {
        out.push('?');
        for (i, item) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match item.split_once('=') {
                Some((key, value)) => {
                    out.push_str(key);
                    out.push('=');
                    if !value.is_empty() {
                        out.push_str(REDACTED);
                        changed = true;
                    }
                }
                None if item.is_empty() => {}
                None => {
                    out.push_str(REDACTED);
                    changed = true;
                }
            }
        }
    }
    if let Some(fragment) = fragment {
        out.push('#');
        if !fragment.is_empty() {
            out.push_str(REDACTED);
            changed = true;
        }
    }
    if changed { out.into() } else { target.into() }
}

/// The complete HTTP/1.1 answer for a refusal: status, `X-Portcullis-Reason`, and a
/// text body with the same line and the `conn_id` to look up in the decision log.
pub fn refusal_response(err: &ProxyError, conn_id: u64) -> Vec<u8> {
    let status = err.status();
    let header = err.reason_header();
    let body = format!(
        "portcullis refused this request ({status}): {header}\n\
         details: the gate's decision log, conn_id {conn_id}\n"
    );
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nX-Portcullis-Reason: {header}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason_phrase(status),
        body.len()
    );
    if status == 429 || status == 503 {
        out.push_str("Retry-After: 1\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_faults_and_response() {
        let e = ProxyError::forbidden(RefusalCode::DeniedAddress, "10.0.0.1 is private: RFC 1918");
        assert_eq!((e.status(), e.fault()), (403, Fault::Client));
        let text = String::from_utf8(refusal_response(&e, 7)).unwrap();
        assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{text}");
        assert!(text.contains("X-Portcullis-Reason: denied_address: 10.0.0.1"));
        assert_eq!(
            ProxyError::ConnectTimeout { addr: "x".into() }.fault(),
            Fault::Upstream
        );
        assert_eq!(ProxyError::Overloaded.status(), 503);
        assert_eq!(ProxyError::Internal("x".into()).fault(), Fault::Internal);
        assert!(text.ends_with("conn_id 7\n"), "{text}");
    }

    #[test]
    fn the_reason_header_is_one_short_line() {
        // What check.rs builds when both lookups fail at every upstream.
        let list = (1..=6)
            .map(|i| format!("upstream dns{i} (udp://192.0.2.{i}:53): no answer within 2s"))
            .collect::<Vec<_>>()
            .join("; ");
        let why = format!("all upstreams failed: {list}; all upstreams failed: {list}");
        let e = ProxyError::Unresolved {
            host: "api.example.com".into(),
            why,
        };
        let header = e.reason_header();
        assert_eq!(
            header,
            "unresolved: api.example.com does not resolve (all upstreams failed)"
        );
        assert!(e.to_string().contains("dns6"), "the log keeps the details");
        let long = ProxyError::forbidden(
            RefusalCode::DeniedAddress,
            format!("x\r\n{}", "a".repeat(500)),
        );
        let header = long.reason_header();
        assert_eq!(header.chars().count(), REASON_MAX);
        assert!(header.starts_with("denied_address: x??aaa") && header.ends_with("..."));
        let bad = ProxyError::BadTarget {
            target: "http://h/?token=s3cret".into(),
            error: TargetError::NotAbsolute,
        };
        assert_eq!(
            bad.reason_header(),
            "bad_target: not an absolute http:// URL"
        );
        assert!(!bad.to_string().contains("s3cret"), "{bad}");
    }

    #[test]
    fn query_values_userinfo_and_fragments_never_reach_the_log() {
        for (target, logged) in [
            (
                "http://user:s3cret@example.com/path?q=a@b",
                "http://<redacted>@example.com/path?q=<redacted>",
            ),
            (
                "http://example.com/api?token=abc&x=1&empty=&bare&&last=z",
                "http://example.com/api?token=<redacted>&x=<redacted>&empty=&<redacted>&&last=<redacted>",
            ),
            (
                "http://example.com?key=v",
                "http://example.com?key=<redacted>",
            ),
            (
                "http://127.0.0.1#@api.example.com/",
                "http://127.0.0.1#<redacted>",
            ),
            ("user:s3cret@example.com:443", "<redacted>@example.com:443"),
            ("example.com:443", "example.com:443"),
            ("http://example.com/a@b", "http://example.com/a@b"),
            ("http://example.com/p?", "http://example.com/p?"),
        ] {
            assert_eq!(redact_target(target), logged, "{target}");
        }
    }
}
