//! `[routed]`: the routed listeners, for clients that ignore `HTTPS_PROXY` and connect
//! to the gate's own address (the answer the DNS gives them in `routed` mode).
//!
//! ```toml
//! [routed]
//! tls_listen = ["0.0.0.0:443"]   # TLS, routed by the ClientHello's SNI; empty: off
//! http_listen = ["0.0.0.0:80"]   # plain HTTP, routed by Host; empty: off
//! tls_ports = [8443]             # further TLS ports on every tls_listen address
//! ```
//!
//! The connections they accept are decided, resolved, dialled and relayed by the proxy
//! with the `[proxy]` settings (limits, timeouts, buffers, relay, drain).

use std::net::SocketAddr;

use serde::Deserialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutedConfig {
    /// TLS listener addresses. Empty (the default): no routed TLS listener.
    pub tls_listen: Vec<SocketAddr>,
    /// Plain-HTTP listener addresses. Empty (the default): no routed HTTP listener.
    pub http_listen: Vec<SocketAddr>,
    /// Further TLS ports, listened on at the address of every `tls_listen` entry.
    pub tls_ports: Vec<u16>,
}

impl RoutedConfig {
    /// Every TLS address to bind: each `tls_listen` address, then each of them on every
    /// port of `tls_ports`, without repeats.
    pub fn tls_addrs(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        let ported = self.tls_listen.iter().flat_map(|listen| {
            self.tls_ports
                .iter()
                .map(move |&port| SocketAddr::new(listen.ip(), port))
        });
        for addr in self.tls_listen.iter().copied().chain(ported) {
            // Port 0 (a free port each) is never a repeat.
            if addr.port() == 0 || !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        addrs
    }

    /// Checks values serde cannot: `(key, message)` of the first problem.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.tls_ports.contains(&0) {
            return Err((
                "routed.tls_ports",
                "port 0 is not a port (a tls_listen address with port 0 picks a free one)".into(),
            ));
        }
        if !self.tls_ports.is_empty() && self.tls_listen.is_empty() {
            return Err((
                "routed.tls_ports",
                "the ports are listened on at the tls_listen addresses: give at least one".into(),
            ));
        }
        let tls = self.tls_addrs();
        if let Some(addr) = self
            .http_listen
            .iter()
            .find(|a| a.port() != 0 && tls.contains(a))
        {
            return Err((
                "routed.http_listen",
                format!("{addr} is also a routed TLS address"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> RoutedConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn off_by_default() {
        let c = RoutedConfig::default();
        assert!(c.tls_addrs().is_empty() && c.http_listen.is_empty());
        assert_eq!(c.validate(), Ok(()));
        assert!(toml::from_str::<RoutedConfig>("tls_listn = []").is_err());
    }

    #[test]
    fn tls_ports_are_listened_on_at_every_tls_address() {
        let c = parse(
            "tls_listen = [\"0.0.0.0:443\", \"[::]:443\"]\ntls_ports = [8443, 443]\nhttp_listen = [\"0.0.0.0:80\"]\n",
        );
        let want: Vec<SocketAddr> = ["0.0.0.0:443", "[::]:443", "0.0.0.0:8443", "[::]:8443"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(c.tls_addrs(), want);
        assert_eq!(c.validate(), Ok(()));
        // Port 0 is a free port each time: two of them are two listeners.
        let free = parse("tls_listen = [\"127.0.0.1:0\", \"127.0.0.1:0\"]\n");
        assert_eq!(free.tls_addrs().len(), 2);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key, message) in [
            (
                "tls_listen = [\"127.0.0.1:443\"]\ntls_ports = [0]\n",
                "routed.tls_ports",
                "port 0 is not a port",
            ),
            (
                "tls_ports = [8443]\n",
                "routed.tls_ports",
                "give at least one",
            ),
            (
                "tls_listen = [\"127.0.0.1:443\"]\ntls_ports = [8080]\nhttp_listen = [\"127.0.0.1:8080\"]\n",
                "routed.http_listen",
                "127.0.0.1:8080 is also a routed TLS address",
            ),
        ] {
            let (got_key, got) = parse(text).validate().unwrap_err();
            assert_eq!(got_key, key, "{text}");
            assert!(got.contains(message), "{text}: {got}");
        }
    }
}
