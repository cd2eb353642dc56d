//! DNS front door: listeners, the filtering handler, upstreams and the cache.
mod answer;
pub mod cache;
mod decision;
pub mod filter;
mod inspect;
mod request;
pub mod server;
pub mod udp;
pub mod upstream;
pub mod wire;
