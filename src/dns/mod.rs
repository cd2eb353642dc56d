//! DNS front door: listeners, the filtering handler, upstreams and the cache.
pub mod cache;
pub mod filter;
pub mod server;
pub mod udp;
pub mod upstream;
pub mod wire;
