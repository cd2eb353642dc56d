//! The egress proxy: an allowlisting CONNECT and plain-HTTP forward proxy that asks
//! the same policy core as the DNS firewall and cannot be pointed inward.
//!
//! Per request: parse and validate the target ([`target`]) before any lookup; decide
//! with the policy and the client group's mode, resolve once through the gate's DNS
//! pipeline and classify every address ([`check`]); for a tunnel, read the TLS
//! ClientHello and compare its SNI with the approved host ([`sni`]); then dial exactly
//! a checked address ([`dial`]) and relay ([`relay`], [`forward`]). Every buffer a
//! connection reads into is reserved first from its cap and from the gate's budget
//! ([`budget`]). Every refusal is an HTTP answer with a one-line `X-Portcullis-Reason`
//! ([`error`]); every decision and every closed tunnel is one JSON log line
//! (`portcullis::decision`, `door = "proxy"`).

// The `[proxy]` section's types are config's (src/config/proxy.rs); this is the path the
// proxy's own code and tests name them by.
pub use crate::config::proxy as config;

pub mod budget;
pub mod check;
pub(crate) mod conn;
pub mod connect;
mod decide;
pub mod dial;
pub mod error;
pub mod forward;
pub mod http;
pub mod relay;
pub mod server;
pub mod sni;
pub mod target;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::rr::RecordType;

use crate::dns::filter::Reply;
use crate::policy::Policy;
use crate::policy::addr::AddrClassifier;
use crate::policy::name::Name;

pub use config::{ProxyConfig, ProxyMode, RelayMode};
pub use dial::{Dial, TcpDialer};
pub use error::ProxyError;
pub use server::{bind, serve};

/// Name resolution for the proxy: in production the gate's own DNS pipeline
/// ([`crate::dns::filter::Filter`]: threat lists, cache, upstreams, answer inspection).
#[async_trait::async_trait]
pub trait Resolve: Send + Sync {
    async fn lookup(&self, client: IpAddr, name: &Name, qtype: RecordType) -> Reply;
}

/// Everything a proxy connection needs. Shared by every listener and connection.
pub struct ProxyState {
    pub config: ProxyConfig,
    pub policy: Arc<ArcSwap<Policy>>,
    pub resolver: Arc<dyn Resolve>,
    pub dialer: Arc<dyn Dial>,
    /// Fixed ranges plus the listeners' own addresses and `deny_ranges`.
    pub classifier: AddrClassifier,
    /// Every address the gate listens on (DNS and proxy): never dialled.
    pub own_listeners: Vec<SocketAddr>,
    /// The host's interface addresses and default gateways, kept current
    /// ([`crate::host::LiveHost::spawn_refresh`]): never dialled, whatever the allow rules say.
    pub host: crate::host::LiveHost,
    pub(crate) limits: Limits,
}

/// Connection slots and the buffer budget, shared by every connection.
pub(crate) struct Limits {
    pub(crate) conns: Arc<crate::listen::ConnLimits>,
    pub(crate) buffers: budget::Budget,
}

impl ProxyState {
    /// A state with the production pieces: `resolver` is normally the DNS [`Filter`](crate::dns::filter::Filter).
    /// The classifier gets the listeners' own (non-wildcard) addresses and the configured
    /// `deny_ranges`; the host's addresses and gateways are read now (the binary keeps them
    /// current).
    pub fn new(
        config: ProxyConfig,
        policy: Arc<ArcSwap<Policy>>,
        resolver: Arc<dyn Resolve>,
        dialer: Arc<dyn Dial>,
        own_listeners: Vec<SocketAddr>,
    ) -> ProxyState {
        let mut classifier = AddrClassifier::new();
        for listener in &own_listeners {
            if !listener.ip().is_unspecified() {
                classifier = classifier.with_own(listener.ip());
            }
        }
        for net in &config.deny_ranges {
            classifier = classifier.with_extra(*net, format!("proxy.deny_ranges {net}"));
        }
        let limits = Limits {
            conns: Arc::default(),
            buffers: budget::Budget::new(config.max_buffered_bytes),
        };
        ProxyState {
            config,
            policy,
            resolver,
            dialer,
            classifier,
            own_listeners,
            host: crate::host::LiveHost::new(crate::host::HostAddrs::read()),
            limits,
        }
    }

    /// Connections being served right now.
    pub fn connections(&self) -> usize {
        self.limits.conns.open()
    }

    /// Bytes reserved for heads and bodies by every connection now.
    pub fn buffered(&self) -> usize {
        self.limits.buffers.used()
    }

    /// The largest reservation one connection has held since start.
    pub fn buffered_peak_per_connection(&self) -> usize {
        self.limits.buffers.peak_connection()
    }
}
