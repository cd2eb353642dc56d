//! The `portcullis` binary: run the gate, check a name, validate a config.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use portcullis::app::{Gate, Listeners, load_all, load_config, upstream_pool};
use portcullis::lists::refresh::fetch_into_cache;
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
        /// Explain a DNS query of this type (A, TXT, HTTPS, ...): the group's mode and
        /// query types decide too.
        #[arg(long, default_value = "A")]
        qtype: String,
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
        Command::Check {
            name,
            client,
            qtype,
            json,
        } => check(cli.config.as_deref(), &name, client, &qtype, json),
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

fn check(
    path: Option<&Path>,
    name: &str,
    client: Option<IpAddr>,
    qtype: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let code =
        portcullis::config::dns::qtype_code(qtype).map_err(|e| anyhow::anyhow!("--qtype: {e}"))?;
    let (_, loaded) = load_all(path)?;
    let explanation =
        loaded
            .policy
            .explain_query(name, client, Some((code, &qtype.to_ascii_uppercase())));
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
    let served = runtime.block_on(async {
        let gate = Gate::build(config, path.map(Path::to_owned)).await?;
        let listeners = Listeners::bind(&gate.shared().config()).await?;
        gate.serve(listeners, wait_for_stop()).await
    });
    // The decision lines still queued, with a bound: a stuck stderr must not hold up the exit.
    portcullis::telemetry::flush_logs(std::time::Duration::from_secs(2));
    served?;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_stop() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
