//! The gate as `portcullis run` starts it (`app::Gate`), for `benches/refresh.sh`: every SIGUSR1 runs one refresh round of every `url` list now
//! (download, sanity guard, cache, one rebuild beside the running policy, one swap) and logs
//! how long it took. Not a criterion bench: `cargo bench --bench refresh_gate -- CONFIG`.

use std::time::Instant;

use portcullis::app::{Gate, Listeners};
use portcullis::config::Config;

fn main() -> anyhow::Result<()> {
    // A plain `cargo bench` runs every bench target with just `--bench`: this one is a
    // tool that benches/refresh.sh drives, with nothing to measure by itself.
    if std::env::args().skip(1).eq(["--bench"]) {
        eprintln!("refresh_gate: run by benches/refresh.sh");
        return Ok(());
    }
    if std::env::var_os("NO_TUNE").is_none() {
        portcullis::sys::tune_allocator();
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
    let gate = Gate::build(config, None).await?;
    // Only counted here: a policy held past this line would keep the start's tables
    // resident through every refresh and be measured as the refresh's memory.
    let deny_names = gate.shared().policy().load().rules.deny_name_count();
    eprintln!(
        "policy from cache in {} ms: {deny_names} deny names",
        started.elapsed().as_millis(),
    );
    let listeners = Listeners::bind(&gate.shared().config()).await?;
    let lists = gate.lists().clone();
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
    gate.serve(listeners, shutdown).await
}
