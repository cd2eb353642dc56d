//! The composition root: builds the gate from a configuration and serves it.
//!
//! [`Gate::build`] reads the lists and builds the policy, the upstream pool, the list
//! refresher and the DNS filter; [`Listeners::bind`] binds the configured addresses (port 0
//! works: [`Listeners::addrs`] tells what was bound); [`Gate::serve`] runs every front door on
//! those listeners until the shutdown signal, then drains. `main`, the tests and the bench
//! harnesses all start the gate this way. The reload loop is in [`reload`].

pub mod allowlist;
pub mod env;
pub mod k8s;
pub mod reload;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::admin::AdminState;
use crate::config::Config;
use crate::config::watch::Fingerprint;
use crate::dns::cache::Cache;
use crate::dns::filter::{Filter, FilterSettings};
use crate::dns::server::{self, DnsSockets};
use crate::dns::upstream::{UpstreamError, UpstreamPool};
use crate::lists::load::{Loaded, build_policy};
use crate::lists::refresh::Lists;
use crate::live::Shared;
use crate::proxy::{Dial, ProxyState, TcpDialer};

/// Reads the configuration at `path` (the built-in one without), with its `PORTCULLIS_*`
/// overrides and the admin token.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
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
pub fn load_all(path: Option<&Path>) -> anyhow::Result<(Config, Loaded)> {
    let config = load_config(path)?;
    let pool = upstream_pool(&config)?;
    Lists::check_settings(&config, &Arc::new(pool))?;
    let loaded = build_policy(&config)?;
    Ok((config, loaded))
}

/// The upstream pool of `config`; a bad upstream is reported at its line in the file.
pub fn upstream_pool(config: &Config) -> anyhow::Result<UpstreamPool> {
    UpstreamPool::new(
        &config.upstream.servers,
        config.upstream.strategy,
        Duration::from_millis(config.upstream.timeout_ms),
    )
    .map_err(|error| {
        // The line of the bad server's own `url` key (the first server that has it).
        let path = match &error {
            UpstreamError::BadSpec { url, .. } => config
                .upstream
                .servers
                .iter()
                .position(|s| &s.url == url)
                .map_or_else(
                    || "upstream.servers".to_owned(),
                    |i| format!("upstream.servers[{i}].url"),
                ),
            _ => "upstream.servers".to_owned(),
        };
        config
            .origin
            .invalid_key(&path, "upstream.servers", error.to_string())
            .into()
    })
}

/// One log line per list and one for the policy: what a start or a reload put in force.
pub fn log_loaded(loaded: &Loaded) {
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

/// The sockets of every front door, bound before the gate serves.
pub struct Listeners {
    pub dns: DnsSockets,
    pub proxy: Vec<TcpListener>,
    /// `[routed] tls_listen` (with `tls_ports`) and `http_listen`.
    pub routed_tls: Vec<TcpListener>,
    pub routed_http: Vec<TcpListener>,
    pub admin: Vec<TcpListener>,
}

/// The addresses the listeners got (the real ports where the configuration said 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// DNS over UDP and TCP (one port serves both).
    pub dns: Vec<SocketAddr>,
    pub proxy: Vec<SocketAddr>,
    pub routed_tls: Vec<SocketAddr>,
    pub routed_http: Vec<SocketAddr>,
    pub admin: Vec<SocketAddr>,
}

impl Listeners {
    /// Binds `[dns] listen`, `[proxy] listen`, the `[routed]` listeners and `[admin] listen`.
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let dns = DnsSockets::bind(&config.dns.listen)
            .await
            .with_context(|| format!("binding DNS on {:?}", config.dns.listen))?;
        let proxy = crate::proxy::bind(&config.proxy.listen)
            .await
            .with_context(|| format!("binding the proxy on {:?}", config.proxy.listen))?;
        let tls = config.routed.tls_addrs();
        let routed_tls = crate::routed::bind(&tls)
            .await
            .with_context(|| format!("binding the routed TLS listeners on {tls:?}"))?;
        let http = &config.routed.http_listen;
        let routed_http = crate::routed::bind(http)
            .await
            .with_context(|| format!("binding the routed HTTP listeners on {http:?}"))?;
        let admin = crate::admin::bind(&config.admin.listen)
            .await
            .with_context(|| format!("binding the admin listener on {:?}", config.admin.listen))?;
        Ok(Listeners {
            dns,
            proxy,
            routed_tls,
            routed_http,
            admin,
        })
    }

    pub fn addrs(&self) -> Bound {
        let tcp = |ls: &[TcpListener]| ls.iter().filter_map(|l| l.local_addr().ok()).collect();
        Bound {
            dns: self.dns.local_addrs(),
            proxy: tcp(&self.proxy),
            routed_tls: tcp(&self.routed_tls),
            routed_http: tcp(&self.routed_http),
            admin: tcp(&self.admin),
        }
    }
}

/// A built gate, ready to serve.
pub struct Gate {
    shared: Arc<Shared>,
    lists: Lists,
    filter: Arc<Filter>,
    dialer: Arc<dyn Dial>,
    /// The file the configuration was read from (`None`: the built-in one) and what it
    /// and the files it names were when they were read: the reload loop's baseline.
    path: Option<PathBuf>,
    loaded_from: Fingerprint,
}

impl Gate {
    /// Builds the policy (off the async workers: big lists take a moment), the upstream
    /// pool, the list refresher and the DNS filter from `config`, read from `path`.
    pub async fn build(config: Config, path: Option<PathBuf>) -> anyhow::Result<Gate> {
        // What the running configuration is built from, taken before the allowlist and
        // the lists are read: an edit from here on is a change to reload.
        let (loaded_from, loaded) = tokio::task::spawn_blocking({
            let config = config.clone();
            let path = path.clone();
            move || {
                let from = crate::config::watch::loaded_fingerprint(path.as_deref(), &config);
                build_policy(&config).map(|loaded| (from, loaded))
            }
        })
        .await??;
        log_loaded(&loaded);
        if !loaded.ready() {
            tracing::warn!(
                "some lists have no copy yet: serving the allowlist and the others, downloading in the background"
            );
        }
        let upstream = Arc::new(upstream_pool(&config)?);
        let shared = Shared::new(config, loaded.policy);
        let config = shared.config();
        let lists = Lists::new(shared.clone(), loaded.lists, upstream.clone())?;
        let filter = Arc::new(Filter::new(
            shared.policy().clone(),
            upstream,
            Cache::new(&config.cache),
            FilterSettings::from(&*config),
            config.dns.max_inflight,
        ));
        Ok(Gate {
            shared,
            lists,
            filter,
            dialer: Arc::new(TcpDialer),
            path,
            loaded_from,
        })
    }

    /// Dials proxy destinations through `dialer` (tests: one that records or refuses).
    pub fn with_dialer(mut self, dialer: Arc<dyn Dial>) -> Gate {
        self.dialer = dialer;
        self
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn lists(&self) -> &Lists {
        &self.lists
    }

    pub fn filter(&self) -> &Arc<Filter> {
        &self.filter
    }

    /// Serves on `listeners` in a task of its own and returns what they are bound to.
    pub fn start(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> (Bound, JoinHandle<anyhow::Result<()>>) {
        let bound = listeners.addrs();
        (bound, tokio::spawn(self.serve(listeners, shutdown)))
    }

    /// Runs the list refresher, the reload loop, the host-address refresh and every front
    /// door until `shutdown` completes; then stops accepting and drains in-flight queries
    /// and tunnels.
    pub async fn serve(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let config = self.shared.config();
        crate::forwarding::warn_if_forwarding();
        crate::telemetry::metrics::init();
        Filter::register_groups(&self.shared.policy().load());
        let _refresher = self.lists.spawn();
        let bound = listeners.addrs();
        // The gate's own listeners are never a destination (the admin API least of all).
        let own = [
            &bound.dns,
            &bound.proxy,
            &bound.routed_tls,
            &bound.routed_http,
            &bound.admin,
        ]
        .into_iter()
        .flatten()
        .copied()
        .collect();
        let proxy_state = Arc::new(ProxyState::new(
            config.proxy.clone(),
            self.shared.policy().clone(),
            self.filter.clone(),
            self.dialer.clone(),
            own,
        ));
        // Interface addresses and gateways come and go: keep what the proxy refuses current.
        let _host_refresh = proxy_state
            .host
            .spawn_refresh(crate::host::REFRESH, crate::host::HostAddrs::read);
        let learner = crate::learn::install(Arc::new(crate::learn::Learner::new(
            config.learn.max_entries,
            config.learn.persist.then(|| {
                config
                    .resolve(&config.sources.cache_dir)
                    .join(crate::config::learn::LEARNED_FILE)
            }),
        )));
        let saver = tokio::spawn(save_learned(learner.clone()));
        let admin_state = Arc::new(AdminState {
            shared: self.shared.clone(),
            filter: self.filter.clone(),
            lists: self.lists.clone(),
            draining: AtomicBool::new(false),
            learner: Some(learner.clone()),
        });
        let reload = tokio::spawn(reload::reload_loop(
            self.path.clone(),
            self.lists.clone(),
            self.filter.clone(),
            self.loaded_from.clone(),
        ));

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn({
            let admin_state = admin_state.clone();
            async move {
                shutdown.await;
                // Not ready from the first moment of the drain (the probe's 503 says why);
                // the admin listener itself stays up until the front doors are done.
                admin_state.draining.store(true, Ordering::Relaxed);
                let _ = stop_tx.send(true);
            }
        });
        let (drained_tx, drained_rx) = tokio::sync::watch::channel(false);
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
        let front_doors = async {
            let done = tokio::join!(
                server::serve(
                    listeners.dns,
                    self.filter.clone(),
                    Duration::from_secs(config.dns.tcp_idle_secs),
                    config.log.allowed_queries,
                    dns_stop,
                ),
                crate::proxy::serve(
                    listeners.proxy,
                    proxy_state.clone(),
                    stopped(stop_rx.clone())
                ),
                crate::routed::serve(
                    listeners.routed_tls,
                    listeners.routed_http,
                    proxy_state,
                    stopped(stop_rx.clone()),
                ),
            );
            let _ = drained_tx.send(true);
            done
        };
        let ((dns, proxy, routed), admin) = tokio::join!(
            front_doors,
            crate::admin::serve(listeners.admin, admin_state, stopped(drained_rx)),
        );
        reload.abort();
        saver.abort();
        // What the last minute learned, before the exit.
        let _ = tokio::task::spawn_blocking(move || log_save(learner.save())).await;
        dns?;
        proxy?;
        routed?;
        admin?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Saves learn mode's table once a minute when it changed (off the async workers).
async fn save_learned(learner: Arc<crate::learn::Learner>) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let learner = learner.clone();
        let _ = tokio::task::spawn_blocking(move || log_save(learner.save())).await;
    }
}

fn log_save(result: Result<bool, crate::learn::LearnError>) {
    if let Err(error) = result {
        crate::fault_event!(
            error.fault(),
            %error,
            "learned destinations not saved; kept in memory, retried in a minute"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bad upstream is reported at its own `url` line, not where its text first occurs.
    #[test]
    fn a_bad_upstream_is_reported_at_its_url_key() {
        let text = "# was: url = \"ftp://9.9.9.9\"\n[upstream]\n[[upstream.servers]]\nurl = \"udp://127.0.0.1:9\"\n[[upstream.servers]]\nurl = \"ftp://9.9.9.9\"\n";
        let config = Config::parse(text, "p.toml", Path::new(".")).unwrap();
        let err = upstream_pool(&config).unwrap_err().to_string();
        assert!(
            err.starts_with("p.toml:6: key `upstream.servers`: "),
            "{err}"
        );
    }
}
