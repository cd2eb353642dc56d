//! `[admin]`: the admin listener (health, readiness, metrics, explain and lists APIs).
//!
//! ```toml
//! [admin]
//! listen = ["127.0.0.1:9953"]   # empty: no admin listener
//! token_file = "admin-token"    # enables POST /api/lists/refresh and /api/cache/flush
//! max_connections = 64           # the proxy's kind of limits: 503 / 429 / 408 beyond
//! max_connections_per_client = 16
//! header_timeout_ms = 5000
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
    /// Connections at once, over all clients (503 beyond).
    pub max_connections: usize,
    /// Connections at once from one client address (429 beyond).
    pub max_connections_per_client: usize,
    /// Time a client has to send its request head, milliseconds (408 after).
    pub header_timeout_ms: u64,
    /// Time to write an answer to a client that does not read it, milliseconds.
    pub write_timeout_ms: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: vec!["127.0.0.1:9953".parse().expect("valid literal")],
            token_file: None,
            token: None,
            max_connections: 64,
            max_connections_per_client: 16,
            header_timeout_ms: 5_000,
            write_timeout_ms: 5_000,
        }
    }
}

impl AdminConfig {
    pub fn header_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.header_timeout_ms)
    }

    pub fn write_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.write_timeout_ms)
    }

    /// Checks values serde cannot: `(key, message)` of the first problem.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, value) in [
            ("admin.max_connections", self.max_connections as u64),
            (
                "admin.max_connections_per_client",
                self.max_connections_per_client as u64,
            ),
            ("admin.header_timeout_ms", self.header_timeout_ms),
            ("admin.write_timeout_ms", self.write_timeout_ms),
        ] {
            if value == 0 {
                return Err((key, "must be greater than 0".into()));
            }
        }
        Ok(())
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

    /// The token itself, for a client of the admin API (`portcullis allowlist suggest`).
    pub fn secret(&self) -> &str {
        &self.0
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

    #[test]
    fn limits_default_and_validate() {
        let c: AdminConfig = toml::from_str("max_connections = 2").unwrap();
        assert_eq!((c.max_connections, c.max_connections_per_client), (2, 16));
        assert!(c.validate().is_ok());
        let zero: AdminConfig = toml::from_str("header_timeout_ms = 0").unwrap();
        assert_eq!(zero.validate().unwrap_err().0, "admin.header_timeout_ms");
    }
}
