//! Keeping `url` lists current: scheduled downloads, the sanity guard, the cache, and one
//! rebuild-and-swap of the whole policy when something changed.
//!
//! A round downloads every due source (conditionally; at most `max_concurrent` at once),
//! checks each new body (not empty, not HTML, not shrunk below `min_ratio` of the copy it
//! replaces), writes accepted bodies to the cache, then rebuilds the policy once from disk
//! beside the running one and publishes it with one atomic swap. A rejected or failed download
//! changes nothing that is served: the older copy keeps serving, and the status and the log
//! say why. A failed source is retried after `retry_secs`, doubling up to its refresh interval.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{Config, ConfigError, ListConfig};
use crate::dns::upstream::UpstreamPool;
use crate::error::{Fault, HasFault};
use crate::policy::Policy;

use super::fetch::{FetchError, FetchSettings, Fetched, Fetcher, Validators, looks_like_html};
use super::load::{ListStatus, Loaded, all_ready, build_policy_sized, store_for};
use super::parse::{Format, parse_list};
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
}

impl RefreshError {
    /// The message without the list name, for the list's own status.
    pub fn detail(&self) -> String {
        match self {
            RefreshError::Fetch { source, .. } => source.to_string(),
            RefreshError::Rejected { reason, .. } => format!("download rejected: {reason}"),
            RefreshError::Store { source, .. } => source.to_string(),
            RefreshError::Build(e) => e.to_string(),
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
        }
    }
}

/// Why the sanity guard refused a download.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("the body is empty")]
    Empty,
    #[error("the body is an HTML page, not a list")]
    Html,
    #[error("no entries in {lines} lines")]
    NoEntries { lines: u32 },
    #[error(
        "{entries} entries is less than {min_ratio} of the {previous} entries of the copy it replaces (min_ratio)"
    )]
    Shrunk {
        entries: u32,
        previous: u32,
        min_ratio: f64,
    },
}

/// The sanity guard: the entries `bytes` parses to, or why it must not replace a list of
/// `previous` entries.
pub fn check_body(
    bytes: &[u8],
    content_type: Option<&str>,
    format: Format,
    previous: Option<u32>,
    min_ratio: f64,
) -> Result<u32, Rejection> {
    let content = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    if content.iter().all(u8::is_ascii_whitespace) {
        return Err(Rejection::Empty);
    }
    if looks_like_html(bytes, content_type) {
        return Err(Rejection::Html);
    }
    let text = String::from_utf8_lossy(bytes);
    let report = parse_list(&text, format, |_, _| {});
    if report.entries == 0 {
        return Err(Rejection::NoEntries {
            lines: report.lines,
        });
    }
    if let Some(previous) = previous
        && previous > 0
        && f64::from(report.entries) < min_ratio * f64::from(previous)
    {
        return Err(Rejection::Shrunk {
            entries: report.entries,
            previous,
            min_ratio,
        });
    }
    Ok(report.entries)
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
    /// A new policy was built and published.
    pub rebuilt: bool,
    /// The rebuild failed (e.g. the allowlist file vanished); the old policy keeps serving.
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
    config: Mutex<Arc<Config>>,
    policy: Arc<ArcSwap<Policy>>,
    pool: Arc<UpstreamPool>,
    fetcher: Mutex<Arc<Fetcher>>,
    statuses: Mutex<Vec<ListStatus>>,
    wake: Notify,
    /// One build-and-swap at a time, so a slow refresh cannot publish over a newer reload.
    publish: tokio::sync::Mutex<()>,
    /// Sources in progress at once (`max_concurrent`): bounds the bodies held in memory.
    pipeline: Semaphore,
    /// One sanity-guard parse and cache write at a time, off the async workers.
    checking: Arc<std::sync::Mutex<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn fetcher_for(config: &Config, pool: &Arc<UpstreamPool>) -> Result<Fetcher, FetchError> {
    let ca_file = config.sources.ca_file.as_deref().map(|p| config.resolve(p));
    Fetcher::new(
        FetchSettings::from_config(&config.sources, ca_file),
        pool.clone(),
    )
}

impl Lists {
    /// Takes over publishing list updates into `policy` (already holding the policy `lists`
    /// describes). Downloads resolve names through `pool`. No network I/O happens here.
    pub fn new(
        config: Config,
        policy: Arc<ArcSwap<Policy>>,
        lists: Vec<ListStatus>,
        pool: Arc<UpstreamPool>,
    ) -> Result<Lists, FetchError> {
        let fetcher = fetcher_for(&config, &pool)?;
        let config_max_concurrent = config.sources.max_concurrent.max(1);
        Ok(Lists {
            inner: Arc::new(Inner {
                config: Mutex::new(Arc::new(config)),
                policy,
                pool,
                fetcher: Mutex::new(Arc::new(fetcher)),
                statuses: Mutex::new(lists),
                wake: Notify::new(),
                publish: tokio::sync::Mutex::new(()),
                pipeline: Semaphore::new(config_max_concurrent),
                checking: Arc::new(std::sync::Mutex::new(())),
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
        lock(&self.inner.config).clone()
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
        *lock(&self.inner.config) = Arc::new(config);
        *lock(&self.inner.statuses) = loaded.lists;
        self.inner.policy.store(Arc::new(loaded.policy));
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
            .map(|l| l.name.get_ref().clone())
            .collect();
        self.refresh(&config, &names).await
    }

    async fn refresh(&self, config: &Arc<Config>, names: &[String]) -> RefreshReport {
        let fetcher = lock(&self.inner.fetcher).clone();
        let store = store_for(config);
        let jobs = url_lists(config)
            .filter(|l| names.contains(l.name.get_ref()))
            .map(|list| async {
                let _slot = self.inner.pipeline.acquire().await.expect("never closed");
                refresh_source(&fetcher, &store, config, list, &self.inner.checking).await
            });
        let sources = futures_util::future::join_all(jobs).await;
        let mut report = RefreshReport {
            sources,
            ..RefreshReport::default()
        };
        for source in &report.sources {
            self.note(config, &store, source);
        }
        let changed = report
            .sources
            .iter()
            .any(|s| matches!(s.result, Ok(Outcome::Updated { .. })));
        if changed {
            match self.rebuild().await {
                Ok(()) => report.rebuilt = true,
                Err(e) => {
                    tracing::error!(error = %e, "list refresh: the running policy keeps serving");
                    report.build_error = Some(e);
                }
            }
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
                tracing::warn!(list = %source.name, error = %e.detail(), fault = e.fault().as_str(), "list download failed; the older copy keeps serving")
            }
        }
        let Some(list) = config
            .lists
            .iter()
            .find(|l| l.name.get_ref() == &source.name)
        else {
            return;
        };
        let url = list
            .url
            .as_ref()
            .map(|u| u.get_ref().as_str())
            .unwrap_or("");
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

    /// Builds the policy again from disk, beside the running one, and swaps it in.
    async fn rebuild(&self) -> Result<(), RefreshError> {
        let _turn = self.inner.publish.lock().await;
        let config = self.config();
        let expected = self.inner.policy.load().rules.deny_name_count();
        let was_ready = self.ready();
        let loaded = in_background(move || build_policy_sized(&config, expected)).await?;
        tracing::info!(
            deny_names = loaded.policy.rules.deny_name_count(),
            build_ms = loaded.build_time.as_millis() as u64,
            "lists refreshed; policy swapped"
        );
        self.inner.policy.store(Arc::new(loaded.policy));
        let ready = all_ready(&loaded.lists);
        *lock(&self.inner.statuses) = loaded.lists;
        if ready && !was_ready {
            tracing::info!("all lists ready");
        }
        Ok(())
    }

    async fn run(self) {
        let mut schedule: HashMap<String, Slot> = HashMap::new();
        loop {
            let config = self.config();
            let now = Instant::now();
            reconcile(&mut schedule, &config, now);
            let due: Vec<String> = schedule
                .iter()
                .filter(|(_, s)| s.due <= now)
                .map(|(name, _)| name.clone())
                .collect();
            if !due.is_empty() {
                let report = self.refresh(&config, &due).await;
                let now = Instant::now();
                for source in &report.sources {
                    let Some(slot) = schedule.get_mut(&source.name) else {
                        continue;
                    };
                    let wait = if source.result.is_ok() {
                        slot.failures = 0;
                        slot.interval
                    } else {
                        slot.failures = slot.failures.saturating_add(1);
                        let base = Duration::from_secs(config.sources.retry_secs);
                        base.saturating_mul(1u32 << (slot.failures - 1).min(16))
                            .min(slot.interval)
                    };
                    slot.due = now + jittered(wait, config.sources.jitter);
                }
                continue;
            }
            let next = schedule
                .values()
                .map(|s| s.due)
                .min()
                .unwrap_or(now + Duration::from_secs(3600));
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = self.inner.wake.notified() => {}
            }
        }
    }
}

/// Runs `work` on a thread of its own at the lowest CPU priority (nice 19), so that parsing
/// lists and building rule sets take only the CPU that answering queries leaves: on a busy
/// single core the query workers keep ~98% of it.
async fn in_background<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("portcullis-lists".into())
        .spawn(move || {
            lower_priority();
            let _ = tx.send(work());
        })
        .expect("spawning the list thread");
    rx.await.expect("list thread panicked")
}

/// Makes glibc's allocator give rebuilt rule sets back to the system: allocations of 1 MiB and
/// more always get their own mapping (returned on free; by default the threshold creeps up to
/// 32 MiB after the first free, so later rule tables land in arenas that never shrink), and at
/// most two arenas (each thread would otherwise keep one, grown to a rule set's size).
/// Call once at process start, before other threads exist. Without it, peak RSS during a
/// refresh of the full shared set is ~4.5x steady instead of ~1.8x (`benches/refresh.sh`).
/// Same effect as `MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=1048576`. A no-op elsewhere.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads run.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: setpriority has no memory-safety preconditions; on Linux `who = 0` with
    // PRIO_PROCESS names the calling thread only.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    if rc != 0 {
        tracing::debug!("could not lower the list thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// When a source is next downloaded.
struct Slot {
    url: String,
    interval: Duration,
    due: Instant,
    failures: u32,
}

/// Adds new sources (due when their cached copy is older than their interval; at once with
/// none) and forgets removed ones. A changed URL is a new source.
fn reconcile(schedule: &mut HashMap<String, Slot>, config: &Config, now: Instant) {
    let store = store_for(config);
    schedule.retain(|name, slot| {
        url_lists(config)
            .any(|l| l.name.get_ref() == name && l.url.as_ref().unwrap().get_ref() == &slot.url)
    });
    for list in url_lists(config) {
        let name = list.name.get_ref();
        let interval = list.refresh_interval(&config.sources);
        if let Some(slot) = schedule.get_mut(name) {
            slot.interval = interval;
            continue;
        }
        let url = list.url.as_ref().expect("url list").get_ref().clone();
        let due = match store.read_meta(name, &url) {
            Some(Meta {
                fetched_at: Some(_),
                last_success: Some(checked),
                ..
            }) => {
                let age = Duration::from_secs(now_unix().saturating_sub(checked));
                now + jittered(interval.saturating_sub(age), config.sources.jitter)
            }
            _ => now,
        };
        schedule.insert(
            name.clone(),
            Slot {
                url,
                interval,
                due,
                failures: 0,
            },
        );
    }
}

fn url_lists(config: &Config) -> impl Iterator<Item = &ListConfig> {
    config.lists.iter().filter(|l| l.url.is_some())
}

/// `wait` spread by up to `jitter` (a share) either way.
fn jittered(wait: Duration, jitter: f64) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let unit = (random >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
    wait.mul_f64((1.0 + jitter * (2.0 * unit - 1.0)).max(0.0))
}

/// Downloads one source, applies the sanity guard, and caches an accepted body.
async fn refresh_source(
    fetcher: &Fetcher,
    store: &Store,
    config: &Config,
    list: &ListConfig,
    checking: &Arc<std::sync::Mutex<()>>,
) -> SourceRefresh {
    let name = list.name.get_ref().clone();
    let url = list.url.as_ref().expect("url list").get_ref().clone();
    let mut meta = store.read_meta(&name, &url).unwrap_or_else(|| Meta {
        url: url.clone(),
        ..Meta::default()
    });
    let have_body = meta.has_body() && store.list_path(&name).is_file();
    let validators = if have_body {
        Validators {
            etag: meta.etag.clone(),
            last_modified: meta.last_modified.clone(),
        }
    } else {
        Validators::default()
    };
    let now = now_unix();
    meta.last_attempt = Some(now);
    let min_ratio = list.min_ratio.unwrap_or(config.sources.min_ratio);
    let previous = have_body.then_some(meta.entries);
    let result = match fetcher.fetch(&url, &validators).await {
        Err(source) => Err(RefreshError::Fetch {
            name: name.clone(),
            source,
        }),
        Ok(Fetched::NotModified) => Ok(Outcome::Unchanged),
        Ok(Fetched::Body {
            bytes,
            etag,
            last_modified,
            content_type,
        }) => {
            let sum = digest(&bytes);
            if have_body && meta.digest.as_deref() == Some(sum.as_str()) {
                meta.etag = etag;
                meta.last_modified = last_modified;
                Ok(Outcome::Unchanged)
            } else {
                let format = list.format;
                let accepted = Meta {
                    url: url.clone(),
                    etag,
                    last_modified,
                    fetched_at: Some(now),
                    last_success: Some(now),
                    last_attempt: Some(now),
                    last_error: None,
                    entries: 0,
                    bytes: bytes.len() as u64,
                    digest: Some(sum),
                };
                let (store2, name2, checking) = (store.clone(), name.clone(), checking.clone());
                // Parse and write on a blocking thread, one source at a time; the body is
                // dropped there.
                let checked = in_background(move || {
                    let _one = lock(&checking);
                    let entries =
                        check_body(&bytes, content_type.as_deref(), format, previous, min_ratio)?;
                    let accepted = Meta {
                        entries,
                        ..accepted
                    };
                    Ok(store2
                        .write_list(&name2, &bytes, &accepted)
                        .map(|()| entries))
                })
                .await;
                match checked {
                    Err(reason) => Err(RefreshError::Rejected {
                        name: name.clone(),
                        reason,
                    }),
                    Ok(Ok(entries)) => {
                        return SourceRefresh {
                            name,
                            result: Ok(Outcome::Updated {
                                entries,
                                previous: previous.unwrap_or(0),
                            }),
                        };
                    }
                    Ok(Err(source)) => Err(RefreshError::Store {
                        name: name.clone(),
                        source,
                    }),
                }
            }
        }
    };
    match &result {
        Ok(_) => {
            meta.last_success = Some(now);
            meta.last_error = None;
        }
        Err(e) => meta.last_error = Some(e.detail()),
    }
    let (store2, name2) = (store.clone(), name.clone());
    let written = tokio::task::spawn_blocking(move || store2.write_meta(&name2, &meta))
        .await
        .expect("metadata write panicked");
    if let Err(error) = written {
        tracing::warn!(list = %name, %error, "cannot record the list download in the cache");
    }
    SourceRefresh { name, result }
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
    let policy = Arc::new(ArcSwap::from_pointee(Policy::default()));
    let lists = Lists::new(config.clone(), policy, loaded.lists, pool).map_err(|source| {
        RefreshError::Fetch {
            name: "*".into(),
            source,
        }
    })?;
    let report = lists.refresh_all().await;
    Ok((report, lists.statuses()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_refuses_empty_html_and_shrunk_bodies() {
        let f = Format::Auto;
        assert_eq!(check_body(b"", None, f, None, 0.5), Err(Rejection::Empty));
        assert_eq!(
            check_body(b"\xef\xbb\xbf\r\n \n", None, f, Some(3), 0.5),
            Err(Rejection::Empty)
        );
        assert_eq!(
            check_body(b"<!DOCTYPE html><p>503</p>", None, f, None, 0.5),
            Err(Rejection::Html)
        );
        assert_eq!(
            check_body(b"# only comments\n", None, f, None, 0.5),
            Err(Rejection::NoEntries { lines: 1 })
        );
        let body = b"a.example\nb.example\n";
        assert_eq!(check_body(body, None, f, Some(4), 0.5), Ok(2));
        assert_eq!(
            check_body(body, None, f, Some(5), 0.5),
            Err(Rejection::Shrunk {
                entries: 2,
                previous: 5,
                min_ratio: 0.5
            })
        );
        // Growth is always fine; min_ratio 0 turns the ratio check off.
        assert_eq!(check_body(body, None, f, Some(1), 0.5), Ok(2));
        assert_eq!(check_body(body, None, f, Some(1000), 0.0), Ok(2));
    }

    #[test]
    fn jitter_stays_in_bounds() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(100), 0.1);
            assert!(
                d >= Duration::from_secs(90) && d <= Duration::from_secs(110),
                "{d:?}"
            );
        }
    }
}
