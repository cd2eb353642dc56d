//! Reload on file change: watches the directories of the config file, the allowlist and
//! the local lists (not the files: editors and Kubernetes ConfigMaps replace a file by
//! renaming a new one over it, which a watch on the old inode never sees).
//!
//! An event only wakes the watcher; a reload is due when, after a short quiet period,
//! the content of a watched file differs from what was last loaded. So a `touch`, an
//! editor's swap file or a ConfigMap's `..data` symlink dance cost nothing.
//!
//! The content is read and hashed only when a watched file's `stat` changed (device,
//! inode, size, mtime, ctime, through symlinks), and then off the async workers: the
//! watched files include the local lists (tens of MB), and a write to any other file in
//! a watched directory (a log written beside the config) must not cost the DNS path a
//! read of all of them. (It did: a 10-25 ms stall of the serving worker 250 ms after
//! every such write, issue 15.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{Config, ListConfig};

/// Events closer together than this are one change (an editor's write-then-rename).
const QUIET: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
#[error("watching {dir}: {source}")]
pub struct WatchError {
    dir: String,
    source: notify::Error,
}

/// What a watched file held: `None` when it could not be read (removed mid-rename).
pub type Fingerprint = Vec<(PathBuf, Option<u64>)>;

/// The files a configuration is read from: the config file itself, the allowlist and
/// every local (`path`) list.
pub fn watched_files(config_file: Option<&Path>, config: &Config) -> Vec<PathBuf> {
    let mut files: BTreeSet<PathBuf> = BTreeSet::new();
    files.extend(config_file.map(Path::to_owned));
    files.extend(config.allowlist.as_deref().map(|p| config.resolve(p)));
    files.extend(
        config
            .lists
            .iter()
            .filter_map(ListConfig::path)
            .map(|p| config.resolve(p)),
    );
    files.into_iter().collect()
}

/// A content hash, as [`fingerprint`] takes it.
pub fn digest(bytes: &[u8]) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = foldhash::fast::FixedState::with_seed(0x7067_6174).build_hasher();
    h.write(bytes);
    h.finish()
}

/// The content hashes of `files`, read through symlinks. Blocking: see [`fingerprint_off`].
pub fn fingerprint(files: &[PathBuf]) -> Fingerprint {
    files
        .iter()
        .map(|f| (f.clone(), std::fs::read(f).ok().map(|b| digest(&b))))
        .collect()
}

/// [`fingerprint`] on the blocking pool, so that reading and hashing the lists never holds
/// an async worker (the one serving DNS).
pub async fn fingerprint_off(files: Vec<PathBuf>) -> Fingerprint {
    let copy = files.clone();
    match tokio::task::spawn_blocking(move || fingerprint(&copy)).await {
        Ok(print) => print,
        // The hashing panicked (it cannot, short of a bug): every file unreadable, so the
        // next comparison sees a change rather than missing one.
        Err(_) => files.into_iter().map(|f| (f, None)).collect(),
    }
}

/// What `stat` says of a file through symlinks; any content change changes it.
type Stamp = Option<(u64, u64, u64, i64, i64, i64, i64)>;

fn stamps(files: &[PathBuf]) -> Vec<Stamp> {
    use std::os::unix::fs::MetadataExt;
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f).ok().map(|m| {
                (
                    m.dev(),
                    m.ino(),
                    m.size(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                )
            })
        })
        .collect()
}

/// What a configuration was built from: like [`fingerprint`], but the config file's
/// entry is the text that was actually parsed, so an edit made between reading it and
/// starting to watch is still seen as a change.
pub fn loaded_fingerprint(config_file: Option<&Path>, config: &Config) -> Fingerprint {
    let mut print = fingerprint(&watched_files(config_file, config));
    if let Some(file) = config_file
        && let Some(entry) = print.iter_mut().find(|(f, _)| f == file)
    {
        entry.1 = Some(digest(config.origin.source.as_bytes()));
    }
    print
}

/// Watches the directories of a set of files and says when their content changed.
pub struct ConfigWatcher {
    files: Vec<PathBuf>,
    loaded: Fingerprint,
    /// The files' `stat` when their content was last compared.
    stamps: Vec<Stamp>,
    /// How often the content was read and hashed (tests: a write elsewhere costs none).
    hashed: usize,
    events: mpsc::Receiver<()>,
    _watcher: RecommendedWatcher,
}

impl ConfigWatcher {
    /// Starts watching. `loaded` is the content the running configuration was built from.
    pub fn new(files: Vec<PathBuf>, loaded: Fingerprint) -> Result<ConfigWatcher, WatchError> {
        // Capacity 1: events only need to wake the watcher, never to be counted.
        let (tx, events) = mpsc::channel(1);
        let dirs: BTreeSet<PathBuf> = files
            .iter()
            .map(|f| match f.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
                _ => PathBuf::from("."),
            })
            .collect();
        // Writes to files we do not watch (a log written into the config directory: an
        // event per write) do not wake the watcher. Everything else does: an event naming
        // a watched file, any create, remove or rename (a Kubernetes ConfigMap update
        // swaps the `..data` symlink, naming no watched file), and an event with no path
        // (an inotify queue overflow).
        let names: BTreeSet<std::ffi::OsString> = files
            .iter()
            .filter_map(|f| f.file_name().map(ToOwned::to_owned))
            .collect();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<_>| {
            let event: notify::Event = match event {
                Ok(event) => event,
                Err(_) => return,
            };
            use notify::EventKind;
            use notify::event::ModifyKind;
            let data_only = matches!(
                event.kind,
                EventKind::Access(_)
                    | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Metadata(_))
            );
            let ours = !data_only
                || event.paths.is_empty()
                || event
                    .paths
                    .iter()
                    .any(|p| p.file_name().is_some_and(|n| names.contains(n)));
            if ours {
                let _ = tx.try_send(());
            }
        })
        .map_err(|source| WatchError {
            dir: String::new(),
            source,
        })?;
        for dir in &dirs {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|source| WatchError {
                    dir: dir.display().to_string(),
                    source,
                })?;
        }
        Ok(ConfigWatcher {
            stamps: stamps(&files),
            hashed: 0,
            files,
            loaded,
            events,
            _watcher: watcher,
        })
    }

    /// Waits until a watched file's content differs from what was loaded; returns the new
    /// fingerprint (taken before the caller reads the files, so a change made while the
    /// caller reloads is seen next time).
    pub async fn changed(&mut self) -> Fingerprint {
        loop {
            if self.events.recv().await.is_none() {
                // The watcher thread is gone: never report a change again.
                std::future::pending::<()>().await;
            }
            // Let a burst of events settle.
            while tokio::time::timeout(QUIET, self.events.recv())
                .await
                .is_ok_and(|e| e.is_some())
            {}
            // Another file of the directory, or a touch: nothing to read.
            let now_stamps = stamps(&self.files);
            if now_stamps == self.stamps {
                continue;
            }
            self.stamps = now_stamps;
            self.hashed += 1;
            let now = fingerprint_off(self.files.clone()).await;
            if now != self.loaded {
                return now;
            }
        }
    }

    /// A change that happened before the watch began, if any.
    pub async fn missed_change(&self) -> Option<Fingerprint> {
        let now = fingerprint_off(self.files.clone()).await;
        (now != self.loaded).then_some(now)
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_rename_over_the_file_is_a_change_and_a_touch_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("portcullis.toml");
        std::fs::write(&file, "a = 1\n").unwrap();
        let files = vec![file.clone()];
        let mut watcher = ConfigWatcher::new(files.clone(), fingerprint(&files)).unwrap();

        // Writes to another file of the directory (a log beside the config): not even a
        // read of the watched files.
        for i in 0..5 {
            std::fs::write(dir.path().join("other.log"), format!("line {i}\n")).unwrap();
            let quiet = tokio::time::timeout(Duration::from_millis(300), watcher.changed()).await;
            assert!(quiet.is_err(), "no content change, no reload");
        }
        assert_eq!(
            watcher.hashed, 0,
            "stat said nothing changed: nothing was read"
        );
        // Appends to it (the log file exists now) do not even wake the watcher.
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("other.log"))
            .unwrap();
        for i in 0..200 {
            use std::io::Write as _;
            writeln!(log, "line {i}").unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            watcher.events.try_recv().is_err(),
            "appends to an unwatched file are no wake-up"
        );

        // Same content rewritten: read (its stat changed), no change reported.
        std::fs::write(&file, "a = 1\n").unwrap();
        let quiet = tokio::time::timeout(Duration::from_secs(1), watcher.changed()).await;
        assert!(quiet.is_err(), "no content change, no reload");
        assert_eq!(watcher.hashed, 1);

        // An editor's (or ConfigMap's) replace-by-rename.
        let tmp = dir.path().join(".portcullis.toml.swp");
        std::fs::write(&tmp, "a = 2\n").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        let changed = tokio::time::timeout(Duration::from_secs(5), watcher.changed())
            .await
            .expect("the rename is seen");
        assert_eq!(changed, fingerprint(&files));
        assert_ne!(changed[0].1, None);
    }

    /// The kubelet's atomic update of a ConfigMap volume: the file is a symlink through
    /// `..data`, and an update renames a new `..data` over it (no event names the file).
    #[tokio::test]
    async fn a_configmap_symlink_swap_is_a_change() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("..v1")).unwrap();
        std::fs::write(d.join("..v1/portcullis.toml"), "a = 1\n").unwrap();
        symlink("..v1", d.join("..data")).unwrap();
        symlink("..data/portcullis.toml", d.join("portcullis.toml")).unwrap();
        let files = vec![d.join("portcullis.toml")];
        let mut watcher = ConfigWatcher::new(files.clone(), fingerprint(&files)).unwrap();
        std::fs::create_dir(d.join("..v2")).unwrap();
        std::fs::write(d.join("..v2/portcullis.toml"), "a = 2\n").unwrap();
        symlink("..v2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        let changed = tokio::time::timeout(Duration::from_secs(5), watcher.changed())
            .await
            .expect("the swap is seen");
        assert_eq!(changed, fingerprint(&files));
    }
}
