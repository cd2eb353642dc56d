//! `[learn]`: what report mode remembers for `portcullis allowlist suggest`.
//!
//! ```toml
//! [learn]
//! max_entries = 10000   # (group, destination) pairs kept; the least recently seen go first
//! persist = true        # keep them across restarts in [sources] cache_dir/learned.json
//! ```

use serde::Deserialize;

/// The file, in `[sources] cache_dir`, the learned destinations are kept in.
pub const LEARNED_FILE: &str = "learned.json";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearnConfig {
    pub max_entries: usize,
    pub persist: bool,
}

impl Default for LearnConfig {
    fn default() -> Self {
        LearnConfig {
            max_entries: 10_000,
            persist: true,
        }
    }
}

impl LearnConfig {
    /// Checks values serde cannot: `(key, message)` of the first problem.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(1..=1_000_000).contains(&self.max_entries) {
            return Err((
                "learn.max_entries",
                format!(
                    "{} is out of range: 1 to 1000000 (about 400 bytes each)",
                    self.max_entries
                ),
            ));
        }
        Ok(())
    }
}
