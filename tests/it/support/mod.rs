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

/// The head of the self-contained test configurations: DNS on a free loopback port and
/// an `[upstream]` table whose one server, written next, never answers. A literal, so that
/// `concat!` builds each test's `CONFIG` with its lines where they were.
macro_rules! config_head {
    () => {
        "\n[dns]\nlisten = [\"127.0.0.1:0\"]\n\n[upstream]\ntimeout_ms = 500\n[[upstream.servers]]\n"
    };
}
pub(crate) use config_head;

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::config::Config;
use portcullis::dns::upstream::UpstreamPool;

/// Polls `done` every 10 ms until it holds; fails the test after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The upstream pool of `config`, built as the gate builds it, for tests that run the
/// gate's parts in process.
pub fn upstream_pool(config: &Config) -> Arc<UpstreamPool> {
    let pool = UpstreamPool::new(
        &config.upstream.servers,
        config.upstream.strategy,
        Duration::from_millis(config.upstream.timeout_ms),
    )
    .expect("upstream pool");
    Arc::new(pool)
}
