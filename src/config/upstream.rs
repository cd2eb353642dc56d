//! `[upstream]`: where allowed queries are sent, and how they are spread.
//!
//! The types live here, with the rest of the configuration, so that `config` depends on
//! no runtime module; [`crate::dns::upstream`] builds its pool from them.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub strategy: Strategy,
    /// Default per-upstream timeout, milliseconds.
    pub timeout_ms: u64,
    pub servers: Vec<UpstreamSpec>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            strategy: Strategy::Parallel,
            timeout_ms: 2000,
            servers: default_specs(),
        }
    }
}

/// One configured upstream resolver.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// Display name used in logs/metrics; defaults to the URL.
    #[serde(default)]
    pub name: Option<String>,
    /// "https://1.1.1.1/dns-query" (DoH, RFC 8484), "tls://1.1.1.1:853" (DoT), "udp://9.9.9.9:53",
    /// "tcp://9.9.9.9:53". Port defaults 443/853/53. The host must be an IP address: resolving
    /// a hostname would need DNS to reach DNS.
    pub url: String,
    /// TLS server name to verify when the URL host is an IP (e.g. "cloudflare-dns.com").
    /// Required for https/tls with an IP host.
    #[serde(default)]
    pub tls_name: Option<String>,
    /// Per-upstream timeout in milliseconds (overrides the pool default).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Extra PEM CA bundle to trust (private resolvers, tests). Default trust: webpki-roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// How queries are spread over upstreams.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Send to the two best healthy upstreams at once; the first good answer wins.
    #[default]
    Parallel,
    /// Try healthy upstreams in configured order, the next one on error or timeout.
    Failover,
}

/// Cloudflare (1.1.1.1, 1.0.0.1) and Quad9 (9.9.9.9, 149.112.112.112), all over DoH.
pub fn default_specs() -> Vec<UpstreamSpec> {
    [
        ("1.1.1.1", "cloudflare-dns.com"),
        ("1.0.0.1", "cloudflare-dns.com"),
        ("9.9.9.9", "dns.quad9.net"),
        ("149.112.112.112", "dns.quad9.net"),
    ]
    .into_iter()
    .map(|(ip, tls_name)| UpstreamSpec {
        name: None,
        url: format!("https://{ip}/dns-query"),
        tls_name: Some(tls_name.to_string()),
        timeout_ms: None,
        ca_file: None,
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_deserializes_and_denies_unknown_fields() {
        #[derive(serde::Deserialize)]
        struct Wrap {
            upstream: Vec<UpstreamSpec>,
            strategy: Strategy,
        }
        let w: Wrap = toml::from_str(
            r#"
            strategy = "failover"
            [[upstream]]
            url = "tls://1.1.1.1"
            tls_name = "one.one.one.one"
            timeout_ms = 500
            "#,
        )
        .unwrap();
        assert_eq!(w.strategy, Strategy::Failover);
        assert_eq!(w.upstream[0].timeout_ms, Some(500));
        assert!(toml::from_str::<UpstreamSpec>("url = \"udp://1.1.1.1\"\nport = 1").is_err());
    }
}
