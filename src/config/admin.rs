//! `[admin]`: the admin listener (health, readiness, metrics, explain and lists APIs).
//!
//! ```toml
//! [admin]
//! listen = ["127.0.0.1:9953"]   # empty: no admin listener
//! ```

use std::net::SocketAddr;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Listener addresses. Keep it on the operator's network, never the agents'. Empty: none.
    pub listen: Vec<SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: vec!["127.0.0.1:9953".parse().expect("valid literal")],
        }
    }
}
