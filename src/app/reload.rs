//! Reloads: SIGHUP, or a change to a file the configuration is read from, rebuilds the
//! configuration and the policy off the async workers and puts them in force together.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;
use crate::config::watch::{ConfigWatcher, Fingerprint, fingerprint_off, watched_files};
use crate::dns::filter::{Filter, FilterSettings};
use crate::lists::load::Loaded;
use crate::lists::refresh::Lists;

/// SIGHUP, or a change to a file the configuration is read from, rebuilds the policy;
/// a bad file is refused (file, line, key in the log; the failure counter moves) and the
/// running policy keeps serving.
pub async fn reload_loop(
    path: Option<PathBuf>,
    lists: Lists,
    filter: Arc<Filter>,
    loaded: Fingerprint,
) {
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
        let missed = match watcher.as_ref() {
            Some(watcher) => watcher.missed_change().await,
            None => None,
        };
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
                loaded = fingerprint_off(files.clone()).await;
                "SIGHUP"
            }
            now = changed => {
                loaded = now;
                "file change"
            }
        };
        let result = tokio::task::spawn_blocking({
            let path = path.clone();
            move || super::load_all(path.as_deref())
        })
        .await;
        match result {
            Ok(Ok((config, built))) => {
                let now_read = watched_files(path.as_deref(), &config);
                if now_read != files {
                    files = now_read;
                    loaded = fingerprint_off(files.clone()).await;
                }
                put_in_force(&lists, &filter, config, built).await;
                tracing::info!(trigger, "configuration reloaded");
            }
            Ok(Err(error)) => {
                crate::telemetry::metrics::config_reload(false);
                tracing::error!(trigger, error = %format!("{error:#}"), "reload refused; the running configuration keeps serving")
            }
            Err(error) => {
                crate::telemetry::metrics::config_reload(false);
                tracing::error!(trigger, %error, "reload failed")
            }
        }
    }
}

/// Puts a configuration and the policy built from it in force: the DNS settings at once,
/// the lists and the policy through the refresher; what applies only at the next start is
/// named in the log.
async fn put_in_force(lists: &Lists, filter: &Filter, config: Config, built: Loaded) {
    super::log_loaded(&built);
    let restart = lists.config().restart_needed(&config);
    if !restart.is_empty() {
        tracing::warn!(
            keys = restart.join(", "),
            "these settings changed but apply only at the next start; the rest is applied now"
        );
    }
    // `[proxy]` applies at the next start, `deny_ranges` included: DNS keeps the ranges
    // the proxy refuses, so both front doors refuse the same.
    let deny_ranges = filter.settings.load().deny_ranges.clone();
    filter.settings.store(Arc::new(FilterSettings {
        deny_ranges,
        ..FilterSettings::from(&config.dns)
    }));
    Filter::register_groups(&built.policy);
    lists.publish(config, built).await;
    crate::telemetry::metrics::config_reload(true);
}
