//! The proxy's errors: each one is an HTTP answer a person can read.

use crate::error::{Fault, HasFault};

use super::target::TargetError;

/// Everything that ends a proxy request without a connection to the origin.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Malformed request: bad syntax, smuggling attempts, unsupported forms.
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("bad target `{target}`: {error}")]
    BadTarget { target: String, error: TargetError },
    #[error("request head not received in time")]
    HeaderTimeout,
    #[error("request head larger than {0} bytes or too many header fields")]
    HeadTooLarge(usize),
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(usize),
    /// A policy refusal: `code` is the stable reason, `detail` names the rule or range.
    #[error("{code}: {detail}")]
    Forbidden { code: &'static str, detail: String },
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
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    pub fn forbidden(code: &'static str, detail: impl Into<String>) -> ProxyError {
        ProxyError::Forbidden {
            code,
            detail: detail.into(),
        }
    }

    /// The HTTP status of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::BadRequest(_) | ProxyError::BadTarget { .. } => 400,
            ProxyError::HeaderTimeout => 408,
            ProxyError::HeadTooLarge(_) => 431,
            ProxyError::BodyTooLarge(_) => 413,
            ProxyError::Forbidden { .. } => 403,
            ProxyError::Unresolved { .. }
            | ProxyError::ConnectFailed { .. }
            | ProxyError::BadGateway(_) => 502,
            ProxyError::ConnectTimeout { .. } => 504,
            ProxyError::ClientLimit => 429,
            ProxyError::Overloaded => 503,
            ProxyError::Internal(_) => 500,
        }
    }

    /// Stable snake_case reason code: the start of `X-Portcullis-Reason` and the log's `reason_code`.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::BadTarget { .. } => "bad_target",
            ProxyError::HeaderTimeout => "header_timeout",
            ProxyError::HeadTooLarge(_) => "head_too_large",
            ProxyError::BodyTooLarge(_) => "body_too_large",
            ProxyError::Forbidden { code, .. } => code,
            ProxyError::Unresolved { .. } => "unresolved",
            ProxyError::ConnectTimeout { .. } => "connect_timeout",
            ProxyError::ConnectFailed { .. } => "connect_failed",
            ProxyError::BadGateway(_) => "bad_gateway",
            ProxyError::ClientLimit => "client_limit",
            ProxyError::Overloaded => "overloaded",
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

/// The complete HTTP/1.1 answer for a refusal: status, `X-Portcullis-Reason`, a text body.
pub fn refusal_response(err: &ProxyError) -> Vec<u8> {
    let status = err.status();
    let message = err.to_string();
    // Header values must stay on one line and printable.
    let header: String = message
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(512)
        .collect();
    let body = format!("portcullis refused this request ({status}): {message}\n");
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
        let e = ProxyError::forbidden("denied_address", "10.0.0.1 is private: RFC 1918");
        assert_eq!((e.status(), e.fault()), (403, Fault::Client));
        let text = String::from_utf8(refusal_response(&e)).unwrap();
        assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{text}");
        assert!(text.contains("X-Portcullis-Reason: denied_address: 10.0.0.1"));
        assert_eq!(
            ProxyError::ConnectTimeout { addr: "x".into() }.fault(),
            Fault::Upstream
        );
        assert_eq!(ProxyError::Overloaded.status(), 503);
        assert_eq!(ProxyError::Internal("x".into()).fault(), Fault::Internal);
    }
}
