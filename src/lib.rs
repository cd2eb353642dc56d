//! Portcullis: the egress gate for self-hosted AI agents.
//!
//! One policy core ([`policy`]) that both front doors ask: the DNS firewall ([`dns`]) and
//! the egress proxy ([`proxy`]), with its routed listeners for clients that ignore
//! `HTTPS_PROXY` ([`routed`]). Lists are read and refreshed in [`lists`], configuration
//! in [`config`]; [`app`] builds and serves the gate. The layers, and the path of a query
//! through the files: README, "Code map".

pub mod admin;
pub mod app;
pub mod config;
pub mod dns;
pub mod error;
pub mod forwarding;
pub mod host;
pub mod learn;
pub mod listen;
pub mod lists;
pub mod live;
pub mod policy;
pub mod proxy;
pub mod routed;
pub mod sys;
pub mod telemetry;
