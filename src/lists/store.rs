//! The last-known-good cache of downloaded lists: one directory, the only place the gate
//! writes.
//!
//! Each `url` source keeps two files named after the source: `NAME.list`, the body as it was
//! accepted (decompressed), and `NAME.meta.json`, its validators (ETag, Last-Modified), the
//! entry count the sanity guard compares against, and the last attempt and error. Both are
//! written atomically (temporary file, fsync, rename, fsync of the directory), the list before
//! its metadata, so a crash leaves either the old pair or a new list with old metadata (which
//! only costs one unconditional download).

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::background;
use crate::error::{Fault, HasFault};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("list cache {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl HasFault for StoreError {
    fn fault(&self) -> Fault {
        // A full disk or a read-only cache directory is ours to fix.
        Fault::Internal
    }
}

/// What is known about the cached copy of one source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Meta {
    /// The URL the cached body came from; a cache for another URL is ignored.
    pub url: String,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// Unix seconds when the cached body was downloaded.
    pub fetched_at: Option<u64>,
    /// Unix seconds of the last successful check (a 200 accepted, a 304, or an unchanged body).
    pub last_success: Option<u64>,
    /// Unix seconds of the last attempt, successful or not.
    pub last_attempt: Option<u64>,
    /// Why the last attempt failed or was rejected; `None` after a success.
    pub last_error: Option<String>,
    /// Entries the cached body parsed to (the sanity guard's reference).
    pub entries: u32,
    /// Size of the cached body in bytes.
    pub bytes: u64,
    /// FNV-1a 64 of the cached body, hex: an unchanged 200 is not re-parsed.
    pub digest: Option<String>,
}

impl Meta {
    /// True when a body was accepted for this source at some point (`NAME.list` exists).
    pub fn has_body(&self) -> bool {
        self.fetched_at.is_some()
    }
}

/// The cache directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `NAME.list` (the name made safe for a file name).
    pub fn list_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}.list", file_stem(name)))
    }

    pub fn meta_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}.meta.json", file_stem(name)))
    }

    /// `.NAME.pending`: a downloaded body that waits on disk, not in memory, for its turn to
    /// be checked (never read as a cached copy; removed once read back).
    pub fn pending_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!(".{}.pending", file_stem(name)))
    }

    /// Parks `body` in [`Self::pending_path`]; no sync, it is scratch.
    pub fn park(&self, name: &str, body: &[u8]) -> Result<(), StoreError> {
        let path = self.pending_path(name);
        let io = |source| StoreError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        File::create(&path)
            .and_then(|mut file| background::write_all(&mut file, body))
            .map_err(io)
    }

    /// Reads a parked body back and removes it.
    pub fn unpark(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.pending_path(name);
        let body = background::read(&path);
        let _ = std::fs::remove_file(&path);
        body.map_err(|source| StoreError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// The metadata of a source, if any was written for this URL. An unreadable or foreign
    /// file counts as absent (it is rewritten by the next download).
    pub fn read_meta(&self, name: &str, url: &str) -> Option<Meta> {
        let path = self.meta_path(name);
        let text = std::fs::read(&path).ok()?;
        match serde_json::from_slice::<Meta>(&text) {
            Ok(meta) if meta.url == url => Some(meta),
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "list cache metadata unreadable; ignored");
                None
            }
        }
    }

    /// The cached body of a source.
    pub fn read_list(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.list_path(name);
        background::read(&path).map_err(|source| StoreError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Replaces the cached body and its metadata.
    pub fn write_list(&self, name: &str, body: &[u8], meta: &Meta) -> Result<(), StoreError> {
        atomic_write(&self.list_path(name), body)?;
        self.write_meta(name, meta)
    }

    pub fn write_meta(&self, name: &str, meta: &Meta) -> Result<(), StoreError> {
        let mut json = serde_json::to_vec_pretty(meta).expect("metadata serialises");
        json.push(b'\n');
        atomic_write(&self.meta_path(name), &json)
    }
}

/// Letters, digits, `-`, `_` and `.` kept; everything else becomes `_`.
/// The cache file stem of list `name`: the name itself where it is safe in a file name,
/// each other byte as `%XX`. Distinct names get distinct files (`a b`, `a_b` and `a/b` once
/// shared one, and overwrote each other's last-known-good copy).
fn file_stem(name: &str) -> String {
    use std::fmt::Write;
    if name.is_empty() {
        return "%".to_owned();
    }
    let mut stem = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        // A leading dot would hide the file (and `.x.pending` is ours).
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_') || (b == b'.' && i > 0) {
            stem.push(char::from(b));
        } else {
            let _ = write!(stem, "%{b:02X}");
        }
    }
    stem
}

/// Writes `bytes` atomically ([`crate::sys::write_atomic_with`]), at the background
/// threads' pace.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    crate::sys::write_atomic_with(path, |file| background::write_all(file, bytes)).map_err(
        |source| StoreError::Io {
            path: path.display().to_string(),
            source,
        },
    )
}

/// FNV-1a, 64 bits, as 16 hex digits: stable across processes, enough to spot an unchanged body.
pub fn digest(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub use crate::telemetry::lines::format_unix;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_as_rfc3339() {
        assert_eq!(format_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_unix(1_795_310_039), "2026-11-22T01:13:59Z");
    }

    #[test]
    fn names_become_safe_file_names() {
        assert_eq!(file_stem("stevenblack-unified"), "stevenblack-unified");
        assert_eq!(file_stem("urlhaus.abuse.ch"), "urlhaus.abuse.ch");
        assert_eq!(file_stem("../etc/passwd"), "%2E.%2Fetc%2Fpasswd");
        assert_eq!(file_stem("a b/c"), "a%20b%2Fc");
        assert_eq!(file_stem(".."), "%2E.");
        assert_eq!(file_stem("é"), "%C3%A9");
        // Distinct names, distinct files (issue 11, item 13).
        let names = ["a b", "a_b", "a/b", "a%20b", "a%b", ".a", "a", "", "%", "_"];
        let stems: std::collections::HashSet<String> = names.iter().map(|n| file_stem(n)).collect();
        assert_eq!(stems.len(), names.len(), "{stems:?}");
        assert!(
            stems
                .iter()
                .all(|s| !s.contains('/') && !s.starts_with('.'))
        );
    }

    #[test]
    fn writes_are_atomic_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("cache"));
        let meta = Meta {
            url: "https://lists.test/x.txt".into(),
            etag: Some("\"v1\"".into()),
            fetched_at: Some(1),
            entries: 2,
            ..Meta::default()
        };
        store
            .write_list("x", b"a.example\nb.example\n", &meta)
            .unwrap();
        assert_eq!(store.read_list("x").unwrap(), b"a.example\nb.example\n");
        assert_eq!(store.read_meta("x", "https://lists.test/x.txt"), Some(meta));
        // Metadata of another URL is not this source's.
        assert_eq!(store.read_meta("x", "https://other.test/x.txt"), None);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_parked_body_reads_back_once_and_is_never_the_cached_copy() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("cache"));
        store.park("x", b"c.example\n").unwrap();
        assert!(store.read_list("x").is_err(), "not a cached copy");
        assert_eq!(store.unpark("x").unwrap(), b"c.example\n");
        assert!(!store.pending_path("x").exists());
        assert!(store.unpark("x").is_err());
    }
}
