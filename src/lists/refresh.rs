//! Keeping `url` lists current: scheduled downloads, the sanity guard, the cache, and one
//! atomic publication per changed list.
//!
//! A round downloads every due source (conditionally; at most `max_concurrent` at once). Each
//! new body is then, one source at a time: parsed once, both for the sanity guard (not empty,
//! not HTML, not shrunk below `min_ratio` of the copy it replaces) and into that list's new
//! tables; written to the cache when accepted; and published: a new policy that shares every
//! other list's tables and differs only in this list and the union index is swapped in with
//! one atomic store ([`crate::policy::Policy::with_list`]). So what a refresh holds beside the
//! running policy is one list's body and tables plus the index, never a second copy of every
//! list, and a query sees either the old or the new version of each list. A rejected or failed
//! download changes nothing that is served: the older copy keeps serving, and the status and
//! the log say why. A failed source is retried after `retry_secs`, doubling up to its refresh
//! interval. When the configuration was reloaded while a round ran, the new copy is served by
//! rebuilding the whole policy from the cache instead.
//!
//! The steps of one source are in `source.rs`, the guard in `guard.rs`, when each source is
//! due in `schedule.rs`; this module runs the rounds and publishes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::background::in_background;
use crate::config::{Config, ConfigError, ListConfig};
use crate::dns::upstream::UpstreamPool;
use crate::error::{Fault, HasFault};
use crate::live::Shared;
use crate::policy::Policy;
use crate::sys::lock;

use super::fetch::{FetchError, FetchSettings, Fetched, Fetcher};
// What RefreshError::Rejected carries.
pub use super::guard::Rejection;
use super::load::{CompiledSource, Loaded, build_policy, store_for};
use super::schedule::{Schedule, url_lists};
use super::source::{Attempt, NewBody, SourceDone, check_cache_compile, checking_turn};
use super::status::{ListStatus, all_ready};
use super::store::{Meta, Store, StoreError, digest, now_unix};

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("list `{name}`: {source}")]
    Fetch { name: String, source: FetchError },
    #[error("list `{name}`: download rejected, the older copy keeps serving: {reason}")]
    Rejected { name: String, reason: Rejection },
    #[error("list `{name}`: {source}")]
    Store { name: String, source: StoreError },
    #[error("rebuilding the policy after a list refresh: {0}")]
    Build(#[from] ConfigError),
    /// A bug met in this list's download, check or build: the list is marked failed and the
    /// other lists go on refreshing.
    #[error("list `{name}`: internal error while refreshing: {message}")]
    Panicked { name: String, message: String },
}

impl RefreshError {
    /// The message without the list name, for the list's own status.
    pub fn detail(&self) -> String {
        match self {
            RefreshError::Fetch { source, .. } => source.to_string(),
            RefreshError::Rejected { reason, .. } => format!("download rejected: {reason}"),
            RefreshError::Store { source, .. } => source.to_string(),
            RefreshError::Build(e) => e.to_string(),
            RefreshError::Panicked { message, .. } => format!("internal error: {message}"),
        }
    }
}

impl HasFault for RefreshError {
    fn fault(&self) -> Fault {
        match self {
            RefreshError::Fetch { source, .. } => source.fault(),
            RefreshError::Rejected { .. } => Fault::Upstream,
            RefreshError::Store { source, .. } => source.fault(),
            RefreshError::Build(e) => e.fault(),
            RefreshError::Panicked { .. } => Fault::Internal,
        }
    }
}

/// What one source's refresh did.
#[derive(Debug)]
pub enum Outcome {
    /// 304, or a body identical to the cached one: nothing parsed again, nothing rebuilt.
    Unchanged,
    /// A new body was accepted and cached.
    Updated { entries: u32, previous: u32 },
}

#[derive(Debug)]
pub struct SourceRefresh {
    pub name: String,
    pub result: Result<Outcome, RefreshError>,
}

/// What a refresh round did.
#[derive(Debug, Default)]
pub struct RefreshReport {
    pub sources: Vec<SourceRefresh>,
    /// A new policy was built and published (at least one list changed).
    pub rebuilt: bool,
    /// Publishing failed (e.g. the full rebuild after a reload met a vanished allowlist
    /// file); the old policy keeps serving.
    pub build_error: Option<RefreshError>,
}

impl RefreshReport {
    pub fn failures(&self) -> impl Iterator<Item = &RefreshError> {
        self.sources
            .iter()
            .filter_map(|s| s.result.as_ref().err())
            .chain(self.build_error.as_ref())
    }
}

/// The list sources of a running gate: statuses, downloads and the background refresher.
/// Clones share everything.
#[derive(Clone)]
pub struct Lists {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    pool: Arc<UpstreamPool>,
    fetcher: Mutex<Arc<Fetcher>>,
    statuses: Mutex<Vec<ListStatus>>,
    wake: Notify,
    /// One build-and-swap at a time, so a slow refresh cannot publish over a newer reload.
    publish: tokio::sync::Mutex<()>,
    /// Sources in progress at once (`max_concurrent`): bounds the bodies held in memory.
    pipeline: Semaphore,
    /// One source at a time is parsed (guard and compile), cached and published: bounds
    /// what a refresh holds beside the running policy to one list's body and tables.
    checking: tokio::sync::Mutex<()>,
}

fn fetcher_for(config: &Config, pool: &Arc<UpstreamPool>) -> Result<Fetcher, FetchError> {
    let ca_file = config.sources.ca_file.as_deref().map(|p| config.resolve(p));
    Fetcher::new(
        FetchSettings::from_config(&config.sources, ca_file),
        pool.clone(),
    )
}

impl Lists {
    /// Checks the download settings of `config` (the TLS trust store of `sources.ca_file`)
    /// as [`Lists::new`] would, without starting anything: `config check` refuses what the
    /// gate would refuse at start.
    pub fn check_settings(config: &Config, pool: &Arc<UpstreamPool>) -> Result<(), FetchError> {
        fetcher_for(config, pool).map(drop)
    }

    /// Takes over publishing list updates into `policy` (already holding the policy `lists`
    /// describes). Downloads resolve names through `pool`. No network I/O happens here.
    /// The refresher of the lists of `shared`'s configuration, which publishes what it
    /// builds into `shared`'s policy.
    pub fn new(
        shared: Arc<Shared>,
        lists: Vec<ListStatus>,
        pool: Arc<UpstreamPool>,
    ) -> Result<Lists, FetchError> {
        let config = shared.config();
        let fetcher = fetcher_for(&config, &pool)?;
        let config_max_concurrent = config.sources.max_concurrent.max(1);
        Ok(Lists {
            inner: Arc::new(Inner {
                shared,
                pool,
                fetcher: Mutex::new(Arc::new(fetcher)),
                statuses: Mutex::new(lists),
                wake: Notify::new(),
                publish: tokio::sync::Mutex::new(()),
                pipeline: Semaphore::new(config_max_concurrent),
                checking: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Every source's status, in configuration order.
    pub fn statuses(&self) -> Vec<ListStatus> {
        lock(&self.inner.statuses).clone()
    }

    /// Every `url` list has a copy served (downloaded now or cached earlier).
    pub fn ready(&self) -> bool {
        all_ready(&lock(&self.inner.statuses))
    }

    pub fn config(&self) -> Arc<Config> {
        self.inner.shared.config()
    }

    /// Publishes a policy built from a new configuration (SIGHUP) and makes the refresher
    /// follow that configuration. Waits for a rebuild in progress, so an older rebuild can
    /// never overwrite it.
    pub async fn publish(&self, config: Config, loaded: Loaded) {
        let _turn = self.inner.publish.lock().await;
        match fetcher_for(&config, &self.inner.pool) {
            Ok(fetcher) => *lock(&self.inner.fetcher) = Arc::new(fetcher),
            Err(error) => {
                tracing::error!(%error, "list download settings refused; the previous ones stay")
            }
        }
        self.inner.shared.set_config(config);
        *lock(&self.inner.statuses) = loaded.lists;
        self.inner.shared.policy().store(Arc::new(loaded.policy));
        drop(_turn);
        self.inner.wake.notify_one();
    }

    /// Starts the background refresher: every `url` list is downloaded when its copy is older
    /// than its refresh interval (at once when there is none), then every interval (jittered).
    pub fn spawn(&self) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move { this.run().await })
    }

    /// Downloads every `url` list now (conditionally), then rebuilds and publishes once if
    /// anything changed. `portcullis lists fetch` and tests use it.
    pub async fn refresh_all(&self) -> RefreshReport {
        let config = self.config();
        let names: Vec<String> = url_lists(&config)
            .map(|(l, _)| l.name.get_ref().clone())
            .collect();
        self.refresh(&config, &names).await
    }

    async fn refresh(&self, config: &Arc<Config>, names: &[String]) -> RefreshReport {
        let fetcher = lock(&self.inner.fetcher).clone();
        let store = store_for(config);
        let jobs = url_lists(config)
            .filter(|(l, _)| names.contains(l.name.get_ref()))
            .map(|(list, url)| {
                let (fetcher, store) = (&fetcher, &store);
                async move {
                    let _slot = self.inner.pipeline.acquire().await.expect("never closed");
                    guarded(
                        list.name.get_ref(),
                        self.refresh_source(fetcher, store, config, list, url),
                    )
                    .await
                }
            });
        let done = futures_util::future::join_all(jobs).await;
        let mut report = RefreshReport::default();
        for (source, published) in done {
            self.note(config, &store, &source);
            match published {
                Some(Ok(())) => report.rebuilt = true,
                Some(Err(e)) => {
                    tracing::error!(list = %source.name, error = %e, "list refresh: the running policy keeps serving");
                    report.build_error = Some(e);
                }
                None => {}
            }
            report.sources.push(source);
        }
        report
    }

    /// Logs one source's outcome and updates its status from the cache metadata.
    fn note(&self, config: &Config, store: &Store, source: &SourceRefresh) {
        match &source.result {
            Ok(Outcome::Unchanged) => tracing::debug!(list = %source.name, "list unchanged"),
            Ok(Outcome::Updated { entries, previous }) => {
                tracing::info!(list = %source.name, entries, previous, "list downloaded")
            }
            Err(e @ RefreshError::Rejected { .. }) => {
                tracing::warn!(list = %source.name, error = %e.detail(), "list download rejected; the older copy keeps serving")
            }
            Err(e) => {
                let fault = e.fault();
                crate::telemetry::metrics::error("lists", fault);
                crate::fault_event!(fault, list = %source.name, error = %e.detail(), fault = fault.as_str(), "list download failed; the older copy keeps serving")
            }
        }
        let Some(list) = config
            .lists
            .iter()
            .find(|l| l.name.get_ref() == &source.name)
        else {
            return;
        };
        let url = list.url().unwrap_or("");
        if let Err(e @ RefreshError::Panicked { .. }) = &source.result {
            // The panic came before the source's own metadata write: record it, so that
            // `portcullis lists` (which reads the cache) shows the list failed. Rare enough
            // to write here, on the async worker.
            let mut meta = store.read_meta(&source.name, url).unwrap_or_else(|| Meta {
                url: url.to_owned(),
                ..Meta::default()
            });
            meta.last_attempt = Some(now_unix());
            meta.last_error = Some(e.detail());
            if let Err(error) = store.write_meta(&source.name, &meta) {
                tracing::warn!(list = %source.name, %error, "cannot record the list failure in the cache");
            }
        }
        let meta = store.read_meta(&source.name, url);
        let mut statuses = lock(&self.inner.statuses);
        if let Some(status) = statuses.iter_mut().find(|s| s.name == source.name) {
            status.apply_meta(meta.as_ref());
            if let Err(e) = &source.result {
                // Also when the cache could not even record it.
                status.last_error = Some(e.detail());
            }
        }
    }

    /// Publishes a new copy of the list `name`: a policy that shares every other list with
    /// the running one, built off the async workers, swapped in with one store. When the
    /// configuration changed since `config` (a reload during the round), the whole policy is
    /// built again from the cache instead, which holds the new copy.
    async fn install(
        &self,
        config: &Arc<Config>,
        name: &str,
        compiled: CompiledSource,
    ) -> Result<(), RefreshError> {
        let _turn = self.inner.publish.lock().await;
        let current = self.inner.shared.policy().load_full();
        let slot = current
            .rules
            .list_id(name)
            .filter(|&id| current.rules.list(id) == Some(compiled.list.info()));
        let (Some(id), true) = (slot, Arc::ptr_eq(&self.config(), config)) else {
            drop((compiled, current));
            return self.rebuild_locked().await;
        };
        let was_ready = self.ready();
        let CompiledSource { list, report, .. } = compiled;
        let names = list.deny_name_count();
        let started = std::time::Instant::now();
        let swap = self.inner.shared.policy().clone();
        in_background(move || {
            let next = Arc::new(current.with_list(id, Arc::new(list)));
            let old = swap.swap(next);
            drop(current);
            retire(old);
        })
        .await;
        tracing::info!(
            list = %name,
            names,
            publish_ms = started.elapsed().as_millis() as u64,
            "list refreshed; policy swapped"
        );
        let ready = {
            let mut statuses = lock(&self.inner.statuses);
            if let Some(status) = statuses.iter_mut().find(|s| s.name == name) {
                status.apply_report(&report);
                status.ready = true;
                status.error = None;
            }
            all_ready(&statuses)
        };
        if ready && !was_ready {
            tracing::info!("all lists ready");
        }
        Ok(())
    }

    /// Builds the whole policy again from disk, beside the running one, and swaps it in.
    /// The caller holds the publish turn.
    async fn rebuild_locked(&self) -> Result<(), RefreshError> {
        let config = self.config();
        let was_ready = self.ready();
        let loaded = in_background(move || build_policy(&config)).await?;
        tracing::info!(
            deny_names = loaded.policy.rules.deny_name_count(),
            build_ms = loaded.build_time.as_millis() as u64,
            "lists refreshed; whole policy rebuilt and swapped"
        );
        self.inner.shared.policy().store(Arc::new(loaded.policy));
        let ready = all_ready(&loaded.lists);
        *lock(&self.inner.statuses) = loaded.lists;
        if ready && !was_ready {
            tracing::info!("all lists ready");
        }
        Ok(())
    }

    /// Downloads one source, applies the sanity guard, caches an accepted body and publishes
    /// it. Returns what happened to the source and, when a new copy was accepted, whether it
    /// was published.
    async fn refresh_source(
        &self,
        fetcher: &Fetcher,
        store: &Store,
        config: &Arc<Config>,
        list: &ListConfig,
        url: &str,
    ) -> SourceDone {
        let mut attempt = Attempt::begin(store, list, url);
        let result = match fetcher.fetch(attempt.url(), &attempt.validators()).await {
            Err(source) => Err(RefreshError::Fetch {
                name: attempt.name().to_owned(),
                source,
            }),
            Ok(Fetched::NotModified) => Ok(Outcome::Unchanged),
            Ok(Fetched::Body {
                bytes,
                etag,
                last_modified,
                content_type,
            }) => {
                // Off the async workers, which also answer queries: hashing a body of a few MB
                // takes milliseconds.
                let (sum, bytes) = in_background(move || (digest(&bytes), bytes)).await;
                if attempt.is_cached(&sum) {
                    attempt.keep_validators(etag, last_modified);
                    Ok(Outcome::Unchanged)
                } else {
                    let body = attempt.new_body(bytes, sum, etag, last_modified, content_type);
                    let previous = attempt.previous();
                    match self
                        .take_new_copy(store, config, list, body, previous)
                        .await
                    {
                        Ok((entries, published)) => return attempt.updated(entries, published),
                        Err(e) => Err(e),
                    }
                }
            }
        };
        attempt.record(store, result).await
    }

    /// Checks, caches, compiles and publishes a new body of `list`, one source at a time from
    /// the check to the publication. Returns the entries it parsed to and how its publication
    /// went, or why it was not taken (the older copy keeps serving).
    async fn take_new_copy(
        &self,
        store: &Store,
        config: &Arc<Config>,
        list: &ListConfig,
        body: NewBody,
        previous: Option<u32>,
    ) -> Result<(u32, Result<(), RefreshError>), RefreshError> {
        let name = list.name.get_ref();
        let (_one, body) = checking_turn(&self.inner.checking, store, name, body).await;
        let compiled = check_cache_compile(store, config, list, body?, previous).await?;
        let entries = compiled.parsed_entries;
        Ok((entries, self.install(config, name, compiled).await))
    }

    async fn run(self) {
        let mut schedule = Schedule::default();
        loop {
            let config = self.config();
            let now = Instant::now();
            schedule.reconcile(&config, now);
            let due = schedule.due(now);
            if !due.is_empty() {
                let report = self.refresh(&config, &due).await;
                schedule.record(&report, &config, Instant::now());
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(schedule.next_due(now)) => {}
                _ = self.inner.wake.notified() => {}
            }
        }
    }
}

/// Runs one source's refresh so that a panic in it (a bug, say in a parser, met by some
/// input) fails that source only: it is logged and shown in its status and in
/// `portcullis_list_failing`, and the refresher goes on with every other list.
async fn guarded(name: &str, work: impl std::future::Future<Output = SourceDone>) -> SourceDone {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(done) => done,
        Err(panic) => {
            let message = super::background::panic_message(panic.as_ref());
            tracing::error!(list = %name, %message, "list refresh panicked; the list is marked failed, the others go on");
            let source = SourceRefresh {
                name: name.to_owned(),
                result: Err(RefreshError::Panicked {
                    name: name.to_owned(),
                    message,
                }),
            };
            (source, None)
        }
    }
}

/// Drops a policy that was just replaced on this (background) thread: waits a little for the
/// queries that still hold it, so that its tables are unmapped here rather than by the query
/// that happens to let go of it last. Holders that keep it longer (a connection) free it then.
fn retire(old: Arc<Policy>) {
    for _ in 0..50 {
        if Arc::strong_count(&old) == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(old);
    crate::sys::trim_allocator();
}

/// `portcullis lists fetch`: downloads every `url` list of `config` into its cache (no
/// running gate needed), and returns the round's report and every source's status after it.
pub async fn fetch_into_cache(
    config: &Config,
    pool: Arc<UpstreamPool>,
) -> Result<(RefreshReport, Vec<ListStatus>), RefreshError> {
    let loaded = tokio::task::spawn_blocking({
        let config = config.clone();
        move || super::load::build_policy(&config)
    })
    .await
    .expect("policy build panicked")?;
    // The policy the cache holds now: each downloaded list then replaces its own slot.
    let shared = Shared::new(config.clone(), loaded.policy);
    let lists = Lists::new(shared, loaded.lists, pool).map_err(|source| RefreshError::Fetch {
        name: "*".into(),
        source,
    })?;
    let report = lists.refresh_all().await;
    Ok((report, lists.statuses()))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::policy::groups::GroupId;
    use crate::policy::name::Name;
    use crate::policy::rules::ListId;

    fn names(prefix: &str, count: usize) -> String {
        (0..count)
            .map(|i| format!("{prefix}-{i}.example\n"))
            .collect()
    }

    /// Lists `a`, `b` and `c` as `file://` sources in a temporary directory.
    fn gate(dir: &std::path::Path) -> (Lists, Arc<arc_swap::ArcSwap<Policy>>) {
        for l in ["a", "b", "c"] {
            std::fs::write(dir.join(format!("{l}.txt")), names(l, 200)).unwrap();
        }
        let mut text = String::from(
            "[[upstream.servers]]\nurl = \"udp://127.0.0.1:9\"\n[sources]\ncache_dir = \"cache\"\n",
        );
        for l in ["a", "b", "c"] {
            text.push_str(&format!(
                "[[lists]]\nname = \"{l}\"\nurl = \"file://{}\"\n",
                dir.join(format!("{l}.txt")).display()
            ));
        }
        let config = Config::parse(&text, "test.toml", dir).unwrap();
        let loaded = build_policy(&config).unwrap();
        assert!(!loaded.ready(), "no cached copies yet");
        let pool = Arc::new(
            UpstreamPool::new(
                &config.upstream.servers,
                config.upstream.strategy,
                Duration::from_millis(200),
            )
            .unwrap(),
        );
        let shared = Shared::new(config, loaded.policy);
        let policy = shared.policy().clone();
        let lists = Lists::new(shared, loaded.lists, pool).unwrap();
        (lists, policy)
    }

    fn blocked_by(policy: &Policy, name: &str) -> Option<String> {
        match policy.decide(&Name::parse(name).unwrap(), GroupId::DEFAULT) {
            crate::policy::Verdict::Blocked(m) => {
                Some(policy.rules.list(m.origin.list).unwrap().name.clone())
            }
            _ => None,
        }
    }

    fn tables(policy: &Policy) -> Vec<Arc<crate::policy::rules::CompiledList>> {
        (0..3 as ListId)
            .map(|id| policy.rules.list_rules(id).unwrap().clone())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refresh_replaces_only_the_changed_list_and_shares_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let (lists, policy) = gate(dir.path());
        let report = lists.refresh_all().await;
        assert!(
            report.rebuilt && report.failures().count() == 0,
            "{report:?}"
        );
        assert!(lists.ready());
        let before = policy.load_full();
        assert_eq!(before.rules.deny_name_count(), 600);
        // Bodies that waited for their turn on disk were read back and removed.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("cache"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".pending"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert_eq!(blocked_by(&before, "x.b-7.example").as_deref(), Some("b"));

        std::fs::write(dir.path().join("b.txt"), names("b2", 150)).unwrap();
        let report = lists.refresh_all().await;
        assert!(report.rebuilt, "{report:?}");
        let updated: Vec<_> = report
            .sources
            .iter()
            .filter(|s| matches!(s.result, Ok(Outcome::Updated { .. })))
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(updated, ["b"]);
        let after = policy.load_full();
        let (old, new) = (tables(&before), tables(&after));
        assert!(Arc::ptr_eq(&old[0], &new[0]), "list a is shared");
        assert!(Arc::ptr_eq(&old[2], &new[2]), "list c is shared");
        assert!(!Arc::ptr_eq(&old[1], &new[1]), "list b is new");
        // The other lists decide as before; b serves its new copy only.
        for i in 0..200 {
            assert_eq!(
                blocked_by(&after, &format!("a-{i}.example")).as_deref(),
                Some("a")
            );
            assert_eq!(
                blocked_by(&after, &format!("w.c-{i}.example")).as_deref(),
                Some("c")
            );
            assert_eq!(blocked_by(&after, &format!("b-{i}.example")), None);
        }
        assert_eq!(blocked_by(&after, "b2-149.example").as_deref(), Some("b"));
        assert_eq!(after.rules.deny_name_count(), 550);
        let status = lists
            .statuses()
            .into_iter()
            .find(|s| s.name == "b")
            .unwrap();
        assert_eq!((status.entries, status.ready), (150, true));
        // The old generation is untouched by the swap.
        assert_eq!(blocked_by(&before, "b-3.example").as_deref(), Some("b"));

        // A rejected download (shrunk below min_ratio) keeps every table as it was.
        std::fs::write(dir.path().join("b.txt"), names("b3", 10)).unwrap();
        let report = lists.refresh_all().await;
        assert!(!report.rebuilt, "{report:?}");
        let kept = tables(&policy.load_full());
        assert!((0..3).all(|i| Arc::ptr_eq(&kept[i], &new[i])));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queries_during_publication_see_one_whole_version_of_each_list() {
        let dir = tempfile::tempdir().unwrap();
        let (lists, policy) = gate(dir.path());
        assert!(lists.refresh_all().await.rebuilt);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (policy, stop) = (policy.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut seen = [0u32; 2];
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let p = policy.load();
                        // Version 1 of b lists b-N, version 2 lists v2-N: all of one, none of the other.
                        let v1 = (0..200)
                            .step_by(13)
                            .filter(|i| blocked_by(&p, &format!("b-{i}.example")).is_some())
                            .count();
                        let v2 = (0..200)
                            .step_by(13)
                            .filter(|i| blocked_by(&p, &format!("v2-{i}.example")).is_some())
                            .count();
                        assert!(
                            (v1 == 16 && v2 == 0) || (v1 == 0 && v2 == 16),
                            "a half-built list: {v1} old and {v2} new names"
                        );
                        seen[usize::from(v2 > 0)] += 1;
                        // The other lists never change.
                        assert_eq!(blocked_by(&p, "a-5.example").as_deref(), Some("a"));
                        assert_eq!(blocked_by(&p, "c-199.example").as_deref(), Some("c"));
                    }
                    seen
                })
            })
            .collect();
        for round in 0..12 {
            let body = if round % 2 == 0 {
                names("v2", 200)
            } else {
                names("b", 200)
            };
            std::fs::write(dir.path().join("b.txt"), body).unwrap();
            let report = lists.refresh_all().await;
            assert!(report.rebuilt, "{report:?}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let seen = readers
            .into_iter()
            .map(|r| r.join().unwrap())
            .fold([0, 0], |a, s| [a[0] + s[0], a[1] + s[1]]);
        assert!(
            seen[0] > 0 && seen[1] > 0,
            "readers saw both versions: {seen:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reload_during_a_round_rebuilds_the_whole_policy_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let (lists, policy) = gate(dir.path());
        assert!(lists.refresh_all().await.rebuilt);
        let round_config = lists.config();
        // A reload publishes a policy built from a newer configuration (here: the same text).
        let reloaded = (*round_config).clone();
        let loaded = build_policy(&reloaded).unwrap();
        lists.publish(reloaded, loaded).await;
        std::fs::write(dir.path().join("c.txt"), names("c2", 200)).unwrap();
        // The round that started before the reload installs c: the policy is rebuilt whole.
        let report = lists.refresh(&round_config, &["c".to_owned()]).await;
        assert!(report.rebuilt && report.build_error.is_none(), "{report:?}");
        let now = policy.load_full();
        assert_eq!(blocked_by(&now, "c2-1.example").as_deref(), Some("c"));
        assert_eq!(blocked_by(&now, "c-1.example"), None);
        assert_eq!(blocked_by(&now, "a-1.example").as_deref(), Some("a"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_in_one_list_fails_that_list_and_the_others_go_on_refreshing() {
        let dir = tempfile::tempdir().unwrap();
        let (lists, policy) = gate(dir.path());
        assert!(lists.refresh_all().await.rebuilt);
        // b's parse panics (on the background thread); a and c change.
        std::fs::write(dir.path().join("a.txt"), names("a2", 200)).unwrap();
        std::fs::write(dir.path().join("b.txt"), "!test: panic\nx.example\n").unwrap();
        std::fs::write(dir.path().join("c.txt"), names("c2", 200)).unwrap();
        let report = lists.refresh_all().await;
        let failed: Vec<_> = report
            .sources
            .iter()
            .filter(|s| s.result.is_err())
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(failed, ["b"], "{report:?}");
        let b = report.sources.iter().find(|s| s.name == "b").unwrap();
        assert!(
            matches!(&b.result, Err(RefreshError::Panicked { message, .. }) if message == "a parser bug"),
            "{b:?}"
        );
        let now = policy.load_full();
        assert_eq!(blocked_by(&now, "a2-1.example").as_deref(), Some("a"));
        assert_eq!(blocked_by(&now, "c2-1.example").as_deref(), Some("c"));
        // b keeps serving its older copy and says why it failed.
        assert_eq!(blocked_by(&now, "b-1.example").as_deref(), Some("b"));
        let names_the_bug = |statuses: &[ListStatus]| {
            let status = statuses.iter().find(|s| s.name == "b").unwrap();
            assert!(
                status
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("a parser bug")),
                "{status:?}"
            );
        };
        names_the_bug(&lists.statuses());
        // What `portcullis lists` reads: the cache's metadata, from another process.
        names_the_bug(&build_policy(&lists.config()).unwrap().lists);
        // The next round (the background thread survived) refreshes b again.
        std::fs::write(dir.path().join("b.txt"), names("b2", 200)).unwrap();
        let report = lists.refresh_all().await;
        assert_eq!(report.failures().count(), 0, "{report:?}");
        assert_eq!(
            blocked_by(&policy.load_full(), "b2-1.example").as_deref(),
            Some("b")
        );
    }
}
