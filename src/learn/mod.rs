//! Learn mode: what the agents of a group in a report mode reach that allowlist mode
//! would refuse, aggregated per (group, destination), so that the gate can write the
//! allowlist (`portcullis allowlist suggest`, `GET /api/suggestions`).
//!
//! The front doors call [`observe`] (a no-op until the app [`install`]s a learner);
//! [`aggregate`] keeps the bounded table, [`suggest`] turns it into rules. The table is
//! saved atomically into the cache directory at most once a minute and read back at start.

pub mod aggregate;
pub mod suggest;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

pub use aggregate::{Door, Entry, Key, Observation, Seen};

use crate::error::Fault;
use crate::policy::Policy;
use crate::policy::name::Name;
use aggregate::Aggregate;

#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a learned-destinations file: {message}")]
    Format { path: String, message: String },
}

impl LearnError {
    pub fn fault(&self) -> Fault {
        Fault::Internal
    }
}

/// The saved form.
#[derive(Serialize, Deserialize)]
struct Saved {
    version: u32,
    saved_at: u64,
    /// Least recently seen first.
    entries: Vec<SavedEntry>,
}

#[derive(Serialize, Deserialize)]
struct SavedEntry {
    #[serde(flatten)]
    key: Key,
    #[serde(flatten)]
    entry: Entry,
}

const VERSION: u32 = 1;

/// The learned destinations of the running gate.
#[derive(Debug)]
pub struct Learner {
    table: Mutex<Aggregate>,
    /// Where the table is kept across restarts (`None`: not kept).
    file: Option<PathBuf>,
}

impl Learner {
    /// A learner keeping at most `max_entries`, saved to `file`; what `file` holds now is
    /// read back. A file that does not read is set aside (`.bad`) and logged, never fatal:
    /// learning starts over.
    pub fn new(max_entries: usize, file: Option<PathBuf>) -> Learner {
        let mut table = Aggregate::new(max_entries);
        if let Some(path) = &file {
            match load(path) {
                Ok(Some(saved)) => {
                    let n = saved.len();
                    table.restore(saved);
                    tracing::info!(file = %path.display(), entries = n, "learned destinations read back");
                }
                Ok(None) => {}
                Err(error) => {
                    let aside = path.with_extension("json.bad");
                    let _ = std::fs::rename(path, &aside);
                    tracing::warn!(%error, set_aside = %aside.display(), "learned destinations not read back; starting over");
                }
            }
        }
        Learner {
            table: Mutex::new(table),
            file,
        }
    }

    pub fn record(&self, o: &Observation) {
        crate::sys::lock(&self.table).record(o, now_unix());
    }

    /// The entries of `group` (every group: `None`), least recently seen first.
    pub fn entries(&self, group: Option<&str>) -> Vec<(Key, Entry)> {
        let mut all = crate::sys::lock(&self.table).entries();
        if let Some(group) = group {
            all.retain(|(k, _)| k.group == group);
        }
        all
    }

    /// Entries kept, and entries evicted since the start.
    pub fn usage(&self) -> (usize, u64) {
        let t = crate::sys::lock(&self.table);
        (t.len(), t.evictions())
    }

    /// Writes the table if it changed since the last save: `Ok(true)` when it wrote.
    pub fn save(&self) -> Result<bool, LearnError> {
        let Some(path) = &self.file else {
            return Ok(false);
        };
        let entries = {
            let mut t = crate::sys::lock(&self.table);
            if !t.take_dirty() {
                return Ok(false);
            }
            t.entries()
        };
        let saved = Saved {
            version: VERSION,
            saved_at: now_unix(),
            entries: entries
                .into_iter()
                .map(|(key, entry)| SavedEntry { key, entry })
                .collect(),
        };
        let bytes = serde_json::to_vec(&saved).map_err(|e| LearnError::Format {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        crate::sys::write_atomic(path, &bytes).map_err(|source| LearnError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(true)
    }
}

fn load(path: &Path) -> Result<Option<Vec<(Key, Entry)>>, LearnError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LearnError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let format = |message: String| LearnError::Format {
        path: path.display().to_string(),
        message,
    };
    let saved: Saved = serde_json::from_slice(&bytes).map_err(|e| format(e.to_string()))?;
    if saved.version != VERSION {
        return Err(format(format!(
            "version {} (this gate reads {VERSION})",
            saved.version
        )));
    }
    Ok(Some(
        saved
            .entries
            .into_iter()
            .map(|s| (s.key, s.entry))
            .collect(),
    ))
}

/// What `policy` says now of `host` for `group` on `ports` (every port seen; none: DNS
/// only, any rule naming it will do): the [`suggest::suggest`] judge of the running gate.
pub fn judge(policy: &Policy, host: &str, group: &str, ports: &[u16]) -> suggest::Judged {
    use crate::policy::Verdict;
    use suggest::Judged;
    let (Some(id), Ok(name)) = (policy.groups.id(group), Name::parse(host)) else {
        return Judged::Open;
    };
    match policy.decide(&name, id) {
        Verdict::Blocked(m) => {
            let list = policy
                .rules
                .list(m.origin.list)
                .map_or("?", |l| l.name.as_str())
                .to_owned();
            Judged::Blocked {
                rule: format!("{} ({}, line {})", m.rule, m.kind.as_str(), m.origin.line),
                list,
            }
        }
        Verdict::Allowed(_) => {
            let covering = |port: Option<u16>| policy.allow_for(&name, id, port).map(|a| a.rule);
            let rules: Option<Vec<_>> = if ports.is_empty() {
                covering(None).map(|r| vec![r])
            } else {
                ports.iter().map(|&p| covering(Some(p))).collect()
            };
            match rules.as_deref() {
                Some([first, ..]) => {
                    Judged::Covered(format!("{} ({}:{})", first.host, first.file, first.line))
                }
                _ => Judged::Open,
            }
        }
        _ => Judged::Open,
    }
}

/// `90`, `90s`, `15m`, `2h`, `7d` as seconds (`--since`, `since=`).
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}`: expected a number and a unit (s, m, h, d), e.g. 15m"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("`{text}`: unknown unit `{other}` (s, m, h, d)")),
    };
    n.checked_mul(unit)
        .ok_or_else(|| format!("`{text}`: too long"))
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

static INSTALLED: OnceLock<Arc<Learner>> = OnceLock::new();

/// Makes `learner` the one the front doors feed (the first install wins: one gate a
/// process).
pub fn install(learner: Arc<Learner>) -> Arc<Learner> {
    INSTALLED.get_or_init(|| learner).clone()
}

/// The installed learner, if any.
pub fn installed() -> Option<&'static Arc<Learner>> {
    INSTALLED.get()
}

/// Records `o` with the installed learner (nothing without one).
#[inline]
pub fn observe(o: &Observation) {
    if let Some(learner) = INSTALLED.get() {
        learner.record(o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(host: &str) -> Observation<'_> {
        Observation {
            group: "agent",
            host,
            port: Some(443),
            door: Door::Connect,
            client: "172.30.0.9".parse().unwrap(),
            seen: Seen::WouldRefuse,
        }
    }

    #[test]
    fn the_table_survives_a_restart_and_is_written_only_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("learned.json");
        let a = Learner::new(100, Some(path.clone()));
        assert!(!a.save().unwrap(), "nothing learned, nothing written");
        assert!(!path.exists());
        a.record(&obs("api.example.com"));
        a.record(&obs("cdn.example.com"));
        assert!(a.save().unwrap());
        assert!(!a.save().unwrap(), "unchanged: not written again");
        let b = Learner::new(100, Some(path.clone()));
        assert_eq!(b.entries(None), a.entries(None));
        assert_eq!(b.entries(Some("agent")).len(), 2);
        assert!(b.entries(Some("litellm")).is_empty());
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["learned.json"]);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        assert!(
            parse_duration("2w")
                .unwrap_err()
                .contains("unknown unit `w`")
        );
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn a_bad_file_is_set_aside_and_learning_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("learned.json");
        std::fs::write(&path, b"{ not json").unwrap();
        let l = Learner::new(100, Some(path.clone()));
        assert!(l.entries(None).is_empty());
        assert!(dir.path().join("learned.json.bad").exists());
        l.record(&obs("api.example.com"));
        assert!(l.save().unwrap());
        assert_eq!(Learner::new(100, Some(path)).entries(None).len(), 1);
    }
}
