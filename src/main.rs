//! The `portcullis` binary: run the gate, check a name, validate a config, print a
//! client's proxy variables, merge rules into the allowlist.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use portcullis::app::{Gate, Listeners, load_all, load_config, upstream_pool};
use portcullis::config::Config;
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
    /// Print the proxy variables a client container needs (HTTPS_PROXY, NO_PROXY,
    /// JAVA_TOOL_OPTIONS, git's...), from `[proxy] listen` or --proxy.
    Env {
        /// The proxy's address as the clients reach it (a name or an IP, and the port);
        /// needed when the proxy listens on a wildcard address such as 0.0.0.0:3128.
        #[arg(long, value_name = "HOST:PORT")]
        proxy: Option<String>,
        /// More NO_PROXY entries: the client's own tier (comma-separated or repeated).
        #[arg(long, value_name = "HOSTS", value_delimiter = ',')]
        no_proxy: Vec<String>,
        /// shell (`export K='V'`), compose (an `environment:` mapping) or kubernetes (an
        /// `env:` list).
        #[arg(long, value_enum, default_value_t = EnvFormatArg::Shell)]
        format: EnvFormatArg,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Kubernetes: manifests derived from the configuration.
    K8s {
        #[command(subcommand)]
        command: K8sCommand,
    },
    /// Sleep SECS seconds, then exit 0: a preStop hook for clusters before Kubernetes 1.30
    /// (no `sleep` action there, and the image has no shell nor sleep binary).
    Sleep { secs: u64 },
    /// Learn mode: the allowlist, from what report mode saw.
    Allowlist {
        #[command(subcommand)]
        command: AllowlistCommand,
    },
}

#[derive(Subcommand)]
enum AllowlistCommand {
    /// Print the allow rules report mode suggests, as an allowlist.toml fragment (from the
    /// running gate's admin API, with the admin token of the configuration).
    Suggest(Suggest),
    /// Print what merging FILE (allowlist.toml rules) into the configuration's allowlist
    /// would change, rule by rule, and the diff of the file; exit 0 when nothing would
    /// change, 1 when something would, 2 on error.
    Diff { file: PathBuf },
    /// Merge FILE into the configuration's allowlist and write it atomically, keeping its
    /// comments and order; a running gate reloads it.
    Apply { file: PathBuf },
    /// Allow HOST: merge one rule into the configuration's allowlist, as apply does (the
    /// command a refusal names: `portcullis allowlist add api.example.com --port 443
    /// --group agent`).
    Add(Add),
}

#[derive(clap::Args)]
struct Add {
    /// `api.example.com`, or `*.example.com` for every name under it.
    host: String,
    /// A port the proxy may connect to (repeat it; default 443).
    #[arg(long = "port", value_name = "PORT")]
    ports: Vec<u16>,
    /// A group the rule applies to (repeat it; default every group).
    #[arg(long = "group", value_name = "GROUP")]
    groups: Vec<String>,
    /// The name may resolve to, and be dialled at, a private address.
    #[arg(long)]
    private: bool,
    #[arg(long, default_value = "added with portcullis allowlist add")]
    comment: String,
}

#[derive(clap::Args)]
struct Suggest {
    /// Only this group's rules (default: every group).
    #[arg(long)]
    group: Option<String>,
    /// Only destinations seen in this last while: 30m, 12h, 7d.
    #[arg(long, value_name = "DURATION")]
    since: Option<String>,
    /// Only destinations seen at least this often.
    #[arg(long, default_value_t = 1)]
    min_count: u64,
    /// This many names under one parent become one `*.parent` rule (0: never).
    #[arg(long, default_value_t = 3)]
    wildcard_after: u64,
    /// Print JSON (every field, withheld destinations included) instead.
    #[arg(long)]
    json: bool,
    /// The admin listener (default: from `[admin] listen`).
    #[arg(long, value_name = "http://HOST:PORT")]
    url: Option<String>,
}

#[derive(Subcommand)]
enum K8sCommand {
    /// Print the gate's NetworkPolicy (ingress from the listeners, egress to every port the
    /// configuration dials); with --policy, check a policy file against them instead.
    Networkpolicy {
        /// Read portcullis.toml and the allowlist it names from this ConfigMap manifest
        /// (as the pod that mounts it does) instead of --config.
        #[arg(long, value_name = "FILE")]
        configmap: Option<PathBuf>,
        /// Print no policy: name every port the configuration dials that this NetworkPolicy
        /// manifest does not let the gate out on, with the rules that need it; exit 1 if any.
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum EnvFormatArg {
    Shell,
    Compose,
    Kubernetes,
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
        Command::Env {
            proxy,
            no_proxy,
            format,
        } => env(cli.config.as_deref(), proxy.as_deref(), &no_proxy, format),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => config_check(file.as_deref().or(cli.config.as_deref())),
        Command::Allowlist {
            command: AllowlistCommand::Diff { file },
        } => allowlist_diff(cli.config.as_deref(), &file).or_else(|e| {
            // Like diff(1): 1 means "they differ", so an error is 2.
            if closed_pipe(&e) {
                return Err(e);
            }
            eprintln!("portcullis: {e:#}");
            Ok(ExitCode::from(2))
        }),
        Command::Allowlist {
            command: AllowlistCommand::Apply { file },
        } => allowlist_apply(cli.config.as_deref(), &file),
        Command::K8s {
            command: K8sCommand::Networkpolicy { configmap, policy },
        } => k8s_networkpolicy(
            cli.config.as_deref(),
            configmap.as_deref(),
            policy.as_deref(),
        ),
        Command::Allowlist {
            command: AllowlistCommand::Suggest(args),
        } => allowlist_suggest(cli.config.as_deref(), args),
        Command::Allowlist {
            command: AllowlistCommand::Add(add),
        } => allowlist_add(cli.config.as_deref(), &add),
        Command::Sleep { secs } => {
            std::thread::sleep(Duration::from_secs(secs));
            Ok(ExitCode::SUCCESS)
        }
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

fn env(
    path: Option<&Path>,
    proxy: Option<&str>,
    no_proxy: &[String],
    format: EnvFormatArg,
) -> anyhow::Result<ExitCode> {
    use portcullis::app::env::{self, EnvFormat, ProxyEndpoint};
    let endpoint = match proxy {
        Some(text) => ProxyEndpoint::parse(text).map_err(|e| anyhow::anyhow!("--proxy: {e}"))?,
        None => {
            // The configuration's `[proxy] listen`, with its PORTCULLIS_* overrides; not the
            // admin token (a client's environment has nothing to do with it).
            let mut config = match path {
                Some(path) => Config::load(path)?,
                None => Config::builtin()?,
            };
            config.apply_env(std::env::vars().filter(|(k, _)| k.starts_with("PORTCULLIS_")))?;
            ProxyEndpoint::from_config(&config).map_err(anyhow::Error::msg)?
        }
    };
    let no_proxy: Vec<String> = no_proxy
        .iter()
        .map(|e| e.trim().to_owned())
        .filter(|e| !e.is_empty())
        .collect();
    for entry in &no_proxy {
        env::check_no_proxy_entry(entry).map_err(anyhow::Error::msg)?;
    }
    let format = match format {
        EnvFormatArg::Shell => EnvFormat::Shell,
        EnvFormatArg::Compose => EnvFormat::Compose,
        EnvFormatArg::Kubernetes => EnvFormat::Kubernetes,
    };
    let vars = env::client_env(&endpoint, &no_proxy);
    out!("{}", env::render(&vars, &endpoint, format));
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

/// `portcullis allowlist suggest`: the running gate's `/api/suggestions`, printed.
fn allowlist_suggest(path: Option<&Path>, args: Suggest) -> anyhow::Result<ExitCode> {
    let config = load_config(path)?;
    let token = config.admin.token.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "{}: [admin] token_file is not set: the suggestions API needs the admin token",
            config.origin.file
        )
    })?;
    let base = match args.url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let addr = config.admin.listen.first().ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: [admin] listen is empty: pass --url",
                    config.origin.file
                )
            })?;
            let ip = match addr.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            format!("http://{}", std::net::SocketAddr::new(ip, addr.port()))
        }
    };
    if let Some(since) = &args.since {
        portcullis::learn::parse_duration(since).map_err(|e| anyhow::anyhow!("--since: {e}"))?;
    }
    let mut query = format!(
        "min_count={}&wildcard_after={}&format={}",
        args.min_count,
        args.wildcard_after,
        if args.json { "json" } else { "toml" }
    );
    if let Some(group) = &args.group {
        query.push_str(&format!("&group={}", percent_encode(group)));
    }
    if let Some(since) = &args.since {
        query.push_str(&format!("&since={}", percent_encode(since)));
    }
    let url = format!("{base}/api/suggestions?{query}");
    let (status, body) = portcullis::admin::get(
        &url,
        Duration::from_secs(10),
        Some(token.secret()),
        64 << 20,
    )
    .with_context(|| format!("asking the gate at {base} (is it running? --url)"))?;
    if status != 200 {
        anyhow::bail!("{url}: {status}: {}", body.trim());
    }
    out!("{body}");
    Ok(ExitCode::SUCCESS)
}

/// A query-string value: everything but unreserved characters percent-encoded.
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
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

fn allowlist_diff(path: Option<&Path>, fragment: &Path) -> anyhow::Result<ExitCode> {
    let plan = portcullis::app::allowlist::plan(path, fragment)?;
    for change in &plan.merged.changes {
        outln!("{change}");
    }
    if !plan.merged.changed() {
        outln!("{}: nothing to change", plan.file.display());
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{}", plan.merged.summary());
    outln!();
    out!("{}", plan.diff());
    Ok(ExitCode::from(1))
}

fn allowlist_apply(path: Option<&Path>, fragment: &Path) -> anyhow::Result<ExitCode> {
    write_plan(portcullis::app::allowlist::plan(path, fragment)?)
}

fn allowlist_add(path: Option<&Path>, add: &Add) -> anyhow::Result<ExitCode> {
    use portcullis::app::allowlist::{plan_text, rule_fragment};
    let fragment = rule_fragment(
        &add.host,
        &add.ports,
        &add.groups,
        add.private,
        &add.comment,
    );
    write_plan(plan_text(path, &fragment, Path::new("<allowlist add>"))?)
}

/// Writes a merge (apply, add) and says what changed.
fn write_plan(plan: portcullis::app::allowlist::Plan) -> anyhow::Result<ExitCode> {
    let file = plan.file.display();
    if !plan.merged.changed() {
        for change in &plan.merged.changes {
            outln!("{change}");
        }
        outln!("{file}: nothing to change, not written");
        return Ok(ExitCode::SUCCESS);
    }
    plan.write()?;
    for change in &plan.merged.changes {
        outln!("{change}");
    }
    outln!(
        "{file}: written ({}); a running gate reloads it",
        plan.merged.summary()
    );
    Ok(ExitCode::SUCCESS)
}

fn k8s_networkpolicy(
    path: Option<&Path>,
    configmap: Option<&Path>,
    policy: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    use portcullis::app::k8s;
    // The file alone: the Deployment sets no PORTCULLIS_* variable, and the token is
    // no business of a network policy.
    let (config, rules) = match (configmap, path) {
        (Some(configmap), _) => k8s::from_configmap(configmap)?,
        (None, path) => {
            let config = match path {
                Some(path) => Config::load(path)?,
                None => Config::builtin()?,
            };
            let rules = k8s::allow_rules(&config)?;
            (config, rules)
        }
    };
    let ports = k8s::gate_ports(&config, &rules)?;
    for warning in &ports.warnings {
        eprintln!("portcullis: warning: {warning}");
    }
    let Some(policy) = policy else {
        out!("{}", k8s::render(&ports));
        return Ok(ExitCode::SUCCESS);
    };
    let file = policy.display().to_string();
    let text = std::fs::read_to_string(policy).with_context(|| format!("{file}: cannot read"))?;
    match k8s::check_policy(&ports, &text, &file)? {
        None => {
            outln!(
                "{file}: no NetworkPolicy restricts the gate's egress (namespace {}, pods {}={}): every port is open",
                k8s::NAMESPACE,
                k8s::APP_LABEL,
                k8s::APP
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(missing) if missing.is_empty() => {
            outln!(
                "{file}: opens all {} egress ports the configuration dials",
                ports.egress.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(missing) => {
            for m in &missing {
                eprintln!(
                    "portcullis: {file} does not let the gate out on {} {} to {}, which these need:",
                    m.egress.protocol, m.egress.port, m.egress.to
                );
                for reason in &m.reasons {
                    eprintln!("  {}", reason.detail);
                }
            }
            eprintln!(
                "portcullis: {} egress port(s) shut: regenerate the policy (`portcullis k8s networkpolicy`)",
                missing.len()
            );
            Ok(ExitCode::FAILURE)
        }
    }
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
