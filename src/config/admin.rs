//! `[admin]`: the admin listener (health, readiness, metrics, explain and lists APIs).
//!
//! ```toml
//! [admin]
//! listen = ["127.0.0.1:9953"]   # empty: no admin listener
//! token_file = "admin-token"    # enables POST /api/lists/refresh and /api/cache/flush
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Listener addresses. Keep it on the operator's network, never the agents'. Empty: none.
    pub listen: Vec<SocketAddr>,
    /// File holding the bearer token the POST endpoints require (relative to the config
    /// file). Absent: those endpoints are disabled.
    pub token_file: Option<PathBuf>,
    /// The token read from `token_file` when the configuration is loaded.
    #[serde(skip)]
    pub token: Option<AdminToken>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: vec!["127.0.0.1:9953".parse().expect("valid literal")],
            token_file: None,
            token: None,
        }
    }
}

/// The admin bearer token. Its `Debug` never shows it, so it cannot reach a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// The token in a file: its first line, surrounding whitespace removed (so a trailing
    /// newline from `echo` or a Kubernetes Secret does not matter). `None` when empty.
    pub fn from_file_text(text: &str) -> Option<AdminToken> {
        let token = text.lines().next().unwrap_or("").trim();
        (!token.is_empty()).then(|| AdminToken(token.to_owned()))
    }

    /// Compares in time independent of where the first difference is.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        let mut diff = expected.len() ^ presented.len();
        for (i, &b) in presented.iter().enumerate() {
            diff |= usize::from(b ^ expected.get(i).copied().unwrap_or(0));
        }
        diff == 0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_and_redaction() {
        let token = AdminToken::from_file_text("s3cret\n").expect("a token");
        assert!(token.matches(b"s3cret"));
        assert!(!token.matches(b"s3cre"));
        assert!(!token.matches(b"s3cret!"));
        assert!(!token.matches(b"S3cret"));
        assert!(!token.matches(b""));
        assert!(!format!("{token:?}").contains("s3cret"));
        assert!(AdminToken::from_file_text("  \n").is_none());
        assert!(AdminToken::from_file_text("").is_none());
    }
}
