//! DNS front door: listeners, the filtering handler, upstreams and the cache.
mod answer;
pub mod cache;
mod decision;
pub mod filter;
mod inspect;
pub mod limit;
mod request;
pub mod routed;
pub mod server;
pub mod tunnel;
pub mod udp;
pub mod upstream;
pub mod wire;
