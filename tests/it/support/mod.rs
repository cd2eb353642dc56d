//! What the integration tests share: local servers (DNS, lists, origins), the real
//! binary and its clients, and the image's binary in a network namespace.

pub mod certs;
pub mod container;
pub mod doh_server;
pub mod gate;
pub mod http;
pub mod list_server;
pub mod metrics;
pub mod origins;
