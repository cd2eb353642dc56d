//! The `portcullis` binary: run the gate, check a name, validate a config.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use clap::{Parser, Subcommand};

use portcullis::config::Config;
use portcullis::dns::cache::Cache;
use portcullis::dns::filter::{Filter, FilterSettings};
use portcullis::dns::server::{self, DnsSockets};
use portcullis::dns::upstream::UpstreamPool;
use portcullis::lists::load::{Loaded, build_policy};
use portcullis::lists::refresh::{Lists, fetch_into_cache};
use portcullis::sys::tune_allocator;

/// `print!` and `println!` that return a write error to the caller instead of panicking:
/// output into a closed pipe (`portcullis lists | head -1`) then ends quietly in `main`.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        stdout_result(write!(std::io::stdout(), $($arg)*))?
    }};
}
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        stdout_result(writeln!(std::io::stdout(), $($arg)*))?
    }};
}

/// Our standard output was closed by its reader: the one error that ends a command quietly.
#[derive(Debug, thiserror::Error)]
#[error("standard output is closed")]
struct StdoutClosed;

fn stdout_result(result: std::io::Result<()>) -> anyhow::Result<()> {
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        other => Ok(other?),
    }
}

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "The egress gate for self-hosted AI agents: DNS firewall and egress proxy"
)]
struct Cli {
    /// Configuration file (default: the built-in configuration).
    #[arg(long, short, global = true, env = "PORTCULLIS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gate (the default).
    Run,
    /// Print the decision for a name and why: the rule, the list and the line.
    Check {
        name: String,
        /// Decide as this client address would (its group's lists and rules apply).
        #[arg(long)]
        client: Option<IpAddr>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Every list source's status: entries, skipped lines, downloads, last error.
    Lists {
        #[command(subcommand)]
        command: Option<ListsCommand>,
        /// Print JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Container health check: GET the admin readiness URL; exit 0 on 200, else 1.
    Health {
        #[arg(long, default_value = "http://127.0.0.1:9953/readyz")]
        url: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ListsCommand {
    /// Download every url list into the cache now; exit 1 if any failed.
    Fetch,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file, its allowlist and its lists; exit non-zero on error.
    Check { file: Option<PathBuf> },
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.config.as_deref()),
        Command::Check { name, client, json } => check(cli.config.as_deref(), &name, client, json),
        Command::Lists {
            command: None,
            json,
        } => lists_status(cli.config.as_deref(), json),
        Command::Lists {
            command: Some(ListsCommand::Fetch),
            json,
        } => lists_fetch(cli.config.as_deref(), json),
        Command::Health { url, timeout } => health(&url, timeout),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => config_check(file.as_deref().or(cli.config.as_deref())),
    };
    match result {
        Ok(code) => code,
        Err(e) if closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The reader of our output went away (`| head`): nothing left to say, and no one to say it to.
fn closed_pipe(error: &anyhow::Error) -> bool {
    error.downcast_ref::<StdoutClosed>().is_some()
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    let mut config = match path {
        Some(path) => Config::load(path)?,
        None => Config::builtin()?,
    };
    config.apply_env(std::env::vars().filter(|(k, _)| k.starts_with("PORTCULLIS_")))?;
    config.read_admin_token()?;
    Ok(config)
}

/// Reads a configuration and builds everything `run` builds from it short of binding
/// sockets, so `config check`, `check`, `lists` and a reload refuse exactly what `run`
/// would refuse.
fn load_all(path: Option<&Path>) -> anyhow::Result<(Config, Loaded)> {
    let config = load_config(path)?;
    let pool = upstream_pool(&config)?;
    Lists::check_settings(&config, &Arc::new(pool))?;
    let loaded = build_policy(&config)?;
    Ok((config, loaded))
}

/// The upstream pool of `config`; a bad upstream is reported at its line in the file.
fn upstream_pool(config: &Config) -> anyhow::Result<UpstreamPool> {
    UpstreamPool::new(
        &config.upstream.servers,
        config.upstream.strategy,
        Duration::from_millis(config.upstream.timeout_ms),
    )
    .map_err(|error| {
        let at = match &error {
            portcullis::dns::upstream::UpstreamError::BadSpec { url, .. } => {
                config.origin.source.find(url.as_str())
            }
            _ => None,
        };
        config
            .origin
            .invalid(at.unwrap_or(0), "upstream.servers", error.to_string())
            .into()
    })
}

fn check(
    path: Option<&Path>,
    name: &str,
    client: Option<IpAddr>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (_, loaded) = load_all(path)?;
    let explanation = loaded.policy.explain(name, client);
    if json {
        outln!("{}", serde_json::to_string_pretty(&explanation)?);
    } else {
        out!("{explanation}");
    }
    Ok(ExitCode::SUCCESS)
}

fn health(url: &str, timeout: u64) -> anyhow::Result<ExitCode> {
    match portcullis::admin::probe(url, Duration::from_secs(timeout.max(1))) {
        Ok((true, _)) => Ok(ExitCode::SUCCESS),
        Ok((false, body)) => {
            eprintln!("portcullis: {url}: {}", body.trim());
            Ok(ExitCode::FAILURE)
        }
        Err(error) => {
            eprintln!("portcullis: {url}: {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn config_check(path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let (config, loaded) = load_all(path)?;
    outln!("{}: ok", config.origin.file);
    outln!(
        "  {} allow rules, {} lists, {} distinct deny names, {} groups",
        loaded.allow_rules,
        loaded.lists.len(),
        loaded.policy.rules.deny_name_count(),
        loaded.policy.groups.names().len()
    );
    for list in &loaded.lists {
        match &list.error {
            Some(e) => outln!("  list {}: {e}", list.name),
            None => outln!(
                "  list {}: {} entries, {} skipped ({})",
                list.name,
                list.entries,
                list.skipped,
                list.source
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn lists_status(path: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let (_, loaded) = load_all(path)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&loaded.lists)?);
    } else {
        for list in &loaded.lists {
            out!("{list}");
        }
        if !loaded.ready() {
            outln!("NOT READY: some url lists have no copy yet (`portcullis lists fetch`)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn lists_fetch(path: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let config = load_config(path)?;
    portcullis::telemetry::init(config.log.format, &config.log.level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let pool = Arc::new(upstream_pool(&config)?);
        let (report, statuses) = fetch_into_cache(&config, pool).await?;
        let printed = (|| -> anyhow::Result<()> {
            if json {
                outln!("{}", serde_json::to_string_pretty(&statuses)?);
            } else {
                for status in &statuses {
                    out!("{status}");
                }
            }
            Ok(())
        })();
        let mut failed = false;
        for error in report.failures() {
            eprintln!("portcullis: {error}");
            failed = true;
        }
        // A failed download fails the command even when nobody reads the status.
        if failed {
            return Ok(ExitCode::FAILURE);
        }
        printed.map(|()| ExitCode::SUCCESS)
    })
}

fn run(path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = load_config(path)?;
    portcullis::telemetry::init(config.log.format, &config.log.level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(config, path.map(Path::to_owned)))?;
    Ok(ExitCode::SUCCESS)
}

fn log_loaded(loaded: &Loaded) {
    for list in &loaded.lists {
        match &list.error {
            Some(error) => {
                tracing::warn!(list = %list.name, source = %list.source, %error, "list not loaded")
            }
            None => tracing::info!(
                list = %list.name,
                source = %list.source,
                entries = list.entries,
                skipped = list.skipped,
                "list loaded"
            ),
        }
    }
    tracing::info!(
        allow_rules = loaded.allow_rules,
        deny_names = loaded.policy.rules.deny_name_count(),
        build_ms = loaded.build_time.as_millis() as u64,
        "policy ready"
    );
}

async fn serve(config: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    // What the running configuration is built from, taken before the allowlist and the
    // lists are read: an edit from here on is a change to reload.
    let loaded_from = portcullis::config::watch::loaded_fingerprint(path.as_deref(), &config);
    // Build the policy off the async workers: big lists take a moment.
    let loaded = tokio::task::spawn_blocking({
        let config = config.clone();
        move || build_policy(&config)
    })
    .await??;
    log_loaded(&loaded);
    portcullis::forwarding::warn_if_forwarding();
    if !loaded.ready() {
        tracing::warn!(
            "some lists have no copy yet: serving the allowlist and the others, downloading in the background"
        );
    }
    let statuses = loaded.lists.clone();
    let policy = Arc::new(ArcSwap::from_pointee(loaded.policy));
    let upstream = Arc::new(upstream_pool(&config)?);
    let lists = Lists::new(config.clone(), policy.clone(), statuses, upstream.clone())?;
    let _refresher = lists.spawn();
    let filter = Arc::new(Filter::new(
        policy.clone(),
        upstream,
        Cache::new(&config.cache),
        FilterSettings::from(&config),
        config.dns.max_inflight,
    ));
    let sockets = DnsSockets::bind(&config.dns.listen)
        .await
        .with_context(|| format!("binding DNS on {:?}", config.dns.listen))?;

    let proxy_listeners = portcullis::proxy::bind(&config.proxy.listen)
        .await
        .with_context(|| format!("binding the proxy on {:?}", config.proxy.listen))?;
    portcullis::admin::metrics::init();
    let admin_listeners = portcullis::admin::bind(&config.admin.listen)
        .await
        .with_context(|| format!("binding the admin listener on {:?}", config.admin.listen))?;
    // The gate's own listeners are never a destination (the admin API least of all).
    let mut own = sockets.local_addrs();
    own.extend(
        proxy_listeners
            .iter()
            .chain(&admin_listeners)
            .filter_map(|l| l.local_addr().ok()),
    );
    let proxy_state = Arc::new(portcullis::proxy::ProxyState::new(
        config.proxy.clone(),
        policy.clone(),
        filter.clone(),
        Arc::new(portcullis::proxy::TcpDialer),
        own,
    ));

    // Interface addresses and gateways come and go: keep what the proxy refuses current.
    let _host_refresh = proxy_state
        .host
        .spawn_refresh(portcullis::host::REFRESH, portcullis::host::HostAddrs::read);

    let admin_state = Arc::new(portcullis::admin::AdminState {
        filter: filter.clone(),
        lists: lists.clone(),
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(reload_loop(
        path,
        lists.clone(),
        filter.clone(),
        loaded_from,
    ));
    tokio::spawn(async move {
        wait_for_stop().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let dns_stop = {
        let stop = stopped(stop_rx.clone());
        async move {
            stop.await;
            tracing::info!("stopping: finishing in-flight queries and tunnels");
        }
    };
    let (dns, proxy, admin) = tokio::join!(
        server::serve(
            sockets,
            filter,
            Duration::from_secs(config.dns.tcp_idle_secs),
            config.log.allowed_queries,
            dns_stop,
        ),
        portcullis::proxy::serve(proxy_listeners, proxy_state, stopped(stop_rx.clone())),
        portcullis::admin::serve(admin_listeners, admin_state, stopped(stop_rx)),
    );
    dns?;
    proxy?;
    admin?;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_stop() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// SIGHUP, or a change to a file the configuration is read from, rebuilds the policy;
/// a bad file is refused (file, line, key in the log; the failure counter moves) and the
/// running policy keeps serving.
async fn reload_loop(
    path: Option<PathBuf>,
    lists: Lists,
    filter: Arc<Filter>,
    loaded: portcullis::config::watch::Fingerprint,
) {
    use portcullis::config::watch::{ConfigWatcher, fingerprint, watched_files};
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).ok();
    let mut files = watched_files(path.as_deref(), &lists.config());
    let mut loaded = loaded;
    loop {
        let mut watcher = match ConfigWatcher::new(files.clone(), loaded.clone()) {
            Ok(watcher) => {
                tracing::debug!(files = ?watcher.files(), "watching for configuration changes");
                Some(watcher)
            }
            Err(error) => {
                tracing::warn!(%error, "not watching the configuration files; SIGHUP still reloads");
                None
            }
        };
        let hangup = async {
            match hup.as_mut() {
                Some(hup) => hup.recv().await,
                None => std::future::pending().await,
            }
        };
        let missed = watcher.as_ref().and_then(ConfigWatcher::missed_change);
        let changed = async {
            match (missed, watcher.as_mut()) {
                (Some(now), _) => now,
                (None, Some(watcher)) => watcher.changed().await,
                (None, None) => std::future::pending().await,
            }
        };
        // The fingerprint is taken before the files are read, so an edit made while this
        // reload runs is seen as a change next time.
        let trigger = tokio::select! {
            _ = hangup => {
                loaded = fingerprint(&files);
                "SIGHUP"
            }
            now = changed => {
                loaded = now;
                "file change"
            }
        };
        let result = tokio::task::spawn_blocking({
            let path = path.clone();
            move || load_all(path.as_deref())
        })
        .await;
        match result {
            Ok(Ok((config, built))) => {
                log_loaded(&built);
                let restart = lists.config().restart_needed(&config);
                if !restart.is_empty() {
                    tracing::warn!(
                        keys = restart.join(", "),
                        "these settings changed but apply only at the next start; the rest is applied now"
                    );
                }
                let now_read = watched_files(path.as_deref(), &config);
                if now_read != files {
                    files = now_read;
                    loaded = fingerprint(&files);
                }
                // `[proxy]` applies at the next start, `deny_ranges` included: DNS keeps
                // the ranges the proxy refuses, so both front doors refuse the same.
                let deny_ranges = filter.settings.load().deny_ranges.clone();
                filter.settings.store(Arc::new(FilterSettings {
                    deny_ranges,
                    ..FilterSettings::from(&config.dns)
                }));
                lists.publish(config, built).await;
                portcullis::admin::metrics::config_reload(true);
                tracing::info!(trigger, "configuration reloaded");
            }
            Ok(Err(error)) => {
                portcullis::admin::metrics::config_reload(false);
                tracing::error!(trigger, error = %format!("{error:#}"), "reload refused; the running configuration keeps serving")
            }
            Err(error) => {
                portcullis::admin::metrics::config_reload(false);
                tracing::error!(trigger, %error, "reload failed")
            }
        }
    }
}
