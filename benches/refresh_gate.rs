//! The gate as `serve()` runs it, plus the list refresher wired the way `src/main.rs` will be,
//! for `benches/refresh.sh`: every SIGUSR1 runs one refresh round of every `url` list now
//! (download, sanity guard, cache, one rebuild beside the running policy, one swap) and logs
//! how long it took. Not a criterion bench: `cargo bench --bench refresh_gate -- CONFIG`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use portcullis::config::Config;
use portcullis::dns::cache::Cache;
use portcullis::dns::filter::{Filter, FilterSettings};
use portcullis::dns::server::{self, DnsSockets};
use portcullis::dns::upstream::UpstreamPool;
use portcullis::lists::load::build_policy;
use portcullis::lists::refresh::Lists;

fn main() -> anyhow::Result<()> {
    // A plain `cargo bench` runs every bench target with just `--bench`: this one is a
    // tool that benches/refresh.sh drives, with nothing to measure by itself.
    if std::env::args().skip(1).eq(["--bench"]) {
        eprintln!("refresh_gate: run by benches/refresh.sh");
        return Ok(());
    }
    if std::env::var_os("NO_TUNE").is_none() {
        portcullis::lists::refresh::tune_allocator();
    }
    let path = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .expect("usage: refresh_gate CONFIG");
    let config = Config::load(std::path::Path::new(&path))?;
    portcullis::telemetry::init(config.log.format, &config.log.level);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let started = Instant::now();
    let loaded = tokio::task::spawn_blocking({
        let config = config.clone();
        move || build_policy(&config)
    })
    .await??;
    eprintln!(
        "policy from cache in {} ms: {} deny names, ready = {}",
        started.elapsed().as_millis(),
        loaded.policy.rules.deny_name_count(),
        loaded.ready()
    );
    let statuses = loaded.lists.clone();
    let policy = Arc::new(ArcSwap::from_pointee(loaded.policy));
    let upstream = Arc::new(UpstreamPool::new(
        &config.upstream.servers,
        config.upstream.strategy,
        Duration::from_millis(config.upstream.timeout_ms),
    )?);
    let lists = Lists::new(config.clone(), policy.clone(), statuses, upstream.clone())?;
    let filter = Arc::new(Filter::new(
        policy,
        upstream,
        Cache::new(&config.cache),
        FilterSettings::from(&config.dns),
        config.dns.max_inflight,
    ));
    let sockets = DnsSockets::bind(&config.dns.listen).await?;
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut usr1 = signal(SignalKind::user_defined1()).expect("SIGUSR1");
        while usr1.recv().await.is_some() {
            let t = Instant::now();
            let report = lists.refresh_all().await;
            eprintln!(
                "refresh round: {} ms, rebuilt = {}, failures = {}",
                t.elapsed().as_millis(),
                report.rebuilt,
                report.failures().count()
            );
        }
    });
    let shutdown = async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM");
        term.recv().await;
    };
    server::serve(sockets, filter, Duration::from_secs(10), false, shutdown).await
}
