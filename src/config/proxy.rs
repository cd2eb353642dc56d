//! `[proxy]`: the egress proxy's listener, modes per client group, timeouts and limits.
//!
//! ```toml
//! [proxy]
//! listen = ["0.0.0.0:3128"]
//! mode = "allowlist"                 # default mode: allowlist | public | report
//! modes = { litellm = "allowlist", sandbox = "report" }
//! deny_ranges = ["203.0.113.0/24"]   # extra ranges never dialled nor answered by the DNS
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

/// Largest ClientHello the proxy accepts (records plus headers), read before a tunnel's
/// SNI check. Real ones, post-quantum key shares included, are under 2 KiB; browsers pad
/// to 512 bytes.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// How the proxy treats a client group's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProxyMode {
    /// Only names and ports that an allow rule names (the default).
    #[default]
    Allowlist,
    /// Any public destination that no deny list names, on the public ports.
    Public,
    /// Like `public`, and every request `allowlist` would refuse is logged with
    /// `would_refuse`: how operators learn what an agent needs before locking it down.
    Report,
}

impl ProxyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Allowlist => "allowlist",
            ProxyMode::Public => "public",
            ProxyMode::Report => "report",
        }
    }
}

/// How a tunnel's bytes are moved between its two sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RelayMode {
    /// read(2) into a per-thread buffer and write(2) out (the default): the higher
    /// throughput when the other end of the tunnel is on the same host (BENCHMARKS.md).
    #[default]
    Copy,
    /// splice(2) through a pipe, the payload never in user space: less than half the
    /// proxy's CPU per GiB, at some throughput when the sender shares the host (Linux).
    Splice,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Listener addresses (`0.0.0.0:3128` in a container). Empty: no proxy.
    pub listen: Vec<SocketAddr>,
    /// Mode of groups that `modes` does not name.
    pub mode: ProxyMode,
    /// Mode per client group (group names from `[groups]`, or `default`).
    pub modes: HashMap<String, ProxyMode>,
    /// CONNECT ports allowed in `public`/`report` mode without an allow rule.
    pub public_connect_ports: Vec<u16>,
    /// Plain-HTTP ports allowed in `public`/`report` mode without an allow rule.
    pub public_http_ports: Vec<u16>,
    /// CONNECT ports whose tunnels carry something other than TLS (no ClientHello
    /// check). Empty by default: every tunnel must open with a TLS ClientHello whose
    /// SNI is the approved host.
    pub opaque_ports: Vec<u16>,
    /// Hosts (exact or `*.` wildcard) whose ClientHello may carry Encrypted Client Hello.
    pub ech_hosts: Vec<String>,
    /// Extra ranges never dialled, whatever the allow rules say. The DNS front door
    /// applies them too ([`FilterSettings`](crate::dns::filter::FilterSettings)):
    /// answers pointing there are refused.
    pub deny_ranges: Vec<IpNet>,
    /// TCP connect timeout per address, milliseconds (504 when every address times out).
    pub connect_timeout_ms: u64,
    /// Time a client has to send a complete request head, milliseconds (408 after).
    pub header_timeout_ms: u64,
    /// Time a client has to send its TLS ClientHello after `200 Connection established`.
    pub client_hello_timeout_ms: u64,
    /// A tunnel or forwarded exchange with no byte either way for this long is closed, seconds.
    pub idle_timeout_secs: u64,
    /// Longest life of one tunnel, seconds.
    pub tunnel_max_secs: u64,
    /// On SIGTERM, open tunnels and requests may finish for this long before they are
    /// closed, seconds (0: close at once). Keep it under the orchestrator's stop grace
    /// period (Kubernetes 30 s; set compose's `stop_grace_period` above it).
    pub drain_secs: u64,
    /// Client connections at once, over all clients (503 beyond).
    pub max_connections: usize,
    /// Client connections at once from one client address (429 beyond).
    pub max_connections_per_client: usize,
    /// Largest request head (request line and headers), bytes (431 beyond).
    pub max_header_bytes: usize,
    /// Most header fields in a request (431 beyond).
    pub max_headers: usize,
    /// Largest plain-HTTP request body, bytes (413 beyond): refused before the origin
    /// is dialled when Content-Length says so, and a chunked body that passes it is
    /// cut off (413 if the origin has not answered yet).
    pub max_body_bytes: usize,
    /// Largest origin response head on plain HTTP, bytes (502 beyond).
    pub max_response_header_bytes: usize,
    /// Bodies are relayed through one buffer of this size per direction: the client
    /// (or the origin) is not read while it waits to be written. A body that fits is
    /// read whole, and checked, before the origin is dialled.
    pub body_buffer_bytes: usize,
    /// Memory for request and response heads and bodies (and ClientHellos being read)
    /// over all connections, bytes. A connection that cannot reserve its buffers gets
    /// 503 (`buffer_budget`). One connection never holds more than
    /// [`ProxyConfig::connection_buffer_cap`].
    pub max_buffered_bytes: usize,
    /// `copy` (default) or `splice`: see [`RelayMode`].
    pub relay: RelayMode,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 3128))],
            mode: ProxyMode::Allowlist,
            modes: HashMap::new(),
            public_connect_ports: vec![443],
            public_http_ports: vec![80],
            opaque_ports: Vec::new(),
            ech_hosts: Vec::new(),
            deny_ranges: Vec::new(),
            connect_timeout_ms: 5_000,
            header_timeout_ms: 10_000,
            client_hello_timeout_ms: 10_000,
            idle_timeout_secs: 300,
            tunnel_max_secs: 6 * 3600,
            drain_secs: 20,
            max_connections: 10_000,
            max_connections_per_client: 1_000,
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_body_bytes: 8 << 20,
            max_response_header_bytes: 64 * 1024,
            body_buffer_bytes: 16 * 1024,
            max_buffered_bytes: 256 << 20,
            relay: RelayMode::Copy,
        }
    }
}

impl ProxyConfig {
    /// The mode of a group by name.
    pub fn mode_of(&self, group: &str) -> ProxyMode {
        self.modes.get(group).copied().unwrap_or(self.mode)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    pub fn client_hello_timeout(&self) -> Duration {
        Duration::from_millis(self.client_hello_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_secs)
    }

    pub fn tunnel_max(&self) -> Duration {
        Duration::from_secs(self.tunnel_max_secs)
    }

    /// The most one connection may hold, bytes. Forwarding: its request head and the
    /// buffer it was read into (which becomes the request-body buffer), or the head sent
    /// upstream (at most the request head plus 512 bytes of `Host`, framing and
    /// `Connection` lines) and that buffer; then that buffer and a response-head or
    /// response-body buffer. CONNECT: the request head, its read buffer and the
    /// ClientHello (with one read's slack).
    pub fn connection_buffer_cap(&self) -> usize {
        // Within `validate`'s bounds these sums are far below `usize::MAX`; saturate anyway
        // so an unvalidated value cannot wrap into a small cap.
        let head = self.max_header_bytes.saturating_mul(2);
        let forward = head
            .saturating_add(1024)
            .saturating_add(self.body_buffer_bytes.saturating_mul(2))
            .saturating_add(self.max_response_header_bytes);
        let connect = head.saturating_add(MAX_CLIENT_HELLO + 4096);
        forward.max(connect)
    }

    /// Checks values serde cannot: `(key, message)` of the first problem.
    /// `groups` are the configured group names (`default` included).
    pub fn validate(&self, groups: &[String]) -> Result<(), (&'static str, String)> {
        for group in self.modes.keys() {
            if !groups.iter().any(|g| g == group) {
                return Err((
                    "proxy.modes",
                    format!("unknown group `{group}` (define it under [groups])"),
                ));
            }
        }
        for (key, ports) in [
            ("proxy.public_connect_ports", &self.public_connect_ports),
            ("proxy.public_http_ports", &self.public_http_ports),
            ("proxy.opaque_ports", &self.opaque_ports),
        ] {
            if ports.contains(&0) {
                return Err((key, "port 0 is not a port".into()));
            }
        }
        for host in &self.ech_hosts {
            let base = host.strip_prefix("*.").unwrap_or(host);
            if crate::policy::name::Name::parse(base).is_err() {
                return Err(("proxy.ech_hosts", format!("`{host}` is not a host name")));
            }
        }
        for (key, value) in [
            ("proxy.connect_timeout_ms", self.connect_timeout_ms),
            ("proxy.header_timeout_ms", self.header_timeout_ms),
            (
                "proxy.client_hello_timeout_ms",
                self.client_hello_timeout_ms,
            ),
            ("proxy.idle_timeout_secs", self.idle_timeout_secs),
            ("proxy.tunnel_max_secs", self.tunnel_max_secs),
            ("proxy.max_connections", self.max_connections as u64),
            (
                "proxy.max_connections_per_client",
                self.max_connections_per_client as u64,
            ),
            ("proxy.max_headers", self.max_headers as u64),
        ] {
            if value == 0 {
                return Err((key, "must be greater than 0".into()));
            }
        }
        // Upper bounds keep `connection_buffer_cap`'s arithmetic far from overflow and a
        // single buffer allocatable.
        for (key, value, min, max) in [
            (
                "proxy.max_header_bytes",
                self.max_header_bytes,
                1024,
                MAX_HEAD_BYTES,
            ),
            (
                "proxy.max_response_header_bytes",
                self.max_response_header_bytes,
                1024,
                MAX_HEAD_BYTES,
            ),
            // A chunk-size or trailer line (up to 4 KiB) must fit with room to spare.
            (
                "proxy.body_buffer_bytes",
                self.body_buffer_bytes,
                8192,
                MAX_BODY_BUFFER_BYTES,
            ),
        ] {
            if !(min..=max).contains(&value) {
                return Err((key, format!("must be between {min} and {max}")));
            }
        }
        let cap = self.connection_buffer_cap();
        if self.max_buffered_bytes < cap {
            return Err((
                "proxy.max_buffered_bytes",
                format!("must be at least one connection's buffer cap, {cap} bytes"),
            ));
        }
        Ok(())
    }
}

/// Largest request or response head accepted as a setting: 1 MiB.
const MAX_HEAD_BYTES: usize = 1 << 20;
/// Largest body buffer accepted as a setting: 16 MiB a direction.
const MAX_BODY_BUFFER_BYTES: usize = 16 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_sizes_are_bounded() {
        for (text, key) in [
            (
                "max_header_bytes = 9223372036854775807",
                "proxy.max_header_bytes",
            ),
            (
                "max_response_header_bytes = 512",
                "proxy.max_response_header_bytes",
            ),
            ("body_buffer_bytes = 4294967296", "proxy.body_buffer_bytes"),
        ] {
            let c: ProxyConfig = toml::from_str(text).unwrap();
            let err = c.validate(&["default".into()]).unwrap_err();
            assert_eq!(err.0, key, "{text}");
            assert!(err.1.starts_with("must be between"), "{text}: {}", err.1);
        }
    }

    #[test]
    fn defaults_and_modes() {
        let c: ProxyConfig = toml::from_str(
            "mode = \"public\"\nmodes = { agent = \"allowlist\", sandbox = \"report\" }\n\
             deny_ranges = [\"44.0.0.0/8\"]\n",
        )
        .unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:3128".parse().unwrap()]);
        assert_eq!(c.mode_of("agent"), ProxyMode::Allowlist);
        assert_eq!(c.mode_of("sandbox"), ProxyMode::Report);
        assert_eq!(c.mode_of("default"), ProxyMode::Public);
        assert_eq!(c.public_connect_ports, vec![443]);
        let groups = ["default".to_owned(), "agent".to_owned()];
        assert!(c.validate(&groups).unwrap_err().1.contains("sandbox"));
        assert!(ProxyConfig::default().validate(&groups).is_ok());
        assert!(toml::from_str::<ProxyConfig>("mode = \"open\"").is_err());
        assert!(toml::from_str::<ProxyConfig>("lisen = []").is_err());
        let tiny: ProxyConfig = toml::from_str("max_buffered_bytes = 1000").unwrap();
        assert_eq!(
            tiny.validate(&groups).unwrap_err().0,
            "proxy.max_buffered_bytes"
        );
        let small: ProxyConfig = toml::from_str("body_buffer_bytes = 100").unwrap();
        assert_eq!(
            small.validate(&groups).unwrap_err().0,
            "proxy.body_buffer_bytes"
        );
    }
}
