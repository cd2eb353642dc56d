//! `portcullis allowlist diff|apply`: the configuration's allowlist file, a fragment merged
//! into it ([`crate::config::allowlist_merge`]), and the atomic write.
//!
//! The write is a new file in the allowlist's own directory (same mode, and owner where we
//! may), written, fsynced and renamed over the old one, then the directory fsynced: a
//! reader (the running gate's watcher among them) sees the old file or the new one, never
//! half of one. The gate watches that directory and reloads on the rename.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::config::allowlist_merge::{self, MergeError, Merged};
use crate::config::{Config, ConfigError};
use crate::lists::load::groups_of;

#[derive(Debug, thiserror::Error)]
pub enum AllowlistError {
    #[error(
        "{config} uses the built-in allowlist, which cannot be changed: pass --config with a portcullis.toml whose `allowlist` names the file to merge into (or set PORTCULLIS_ALLOWLIST)"
    )]
    Builtin { config: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Merge(#[from] MergeError),
    #[error("{file}: changed while the merge ran; nothing written, run it again")]
    Raced { file: String },
    /// `reason` is not a `source`: the message carries it, once.
    #[error("{file}: cannot write: {reason}; the file is unchanged")]
    Write {
        file: String,
        reason: std::io::Error,
    },
}

/// A merge ready to be shown or written.
#[derive(Debug)]
pub struct Plan {
    /// The allowlist file, as the configuration names it (resolved against its directory).
    pub file: PathBuf,
    /// The fragment, as given.
    pub fragment: PathBuf,
    /// The allowlist's text before the merge.
    pub before: String,
    pub merged: Merged,
}

/// Reads the configuration at `config` (the built-in one without; `PORTCULLIS_*` overrides
/// applied, as `run` reads it), its allowlist and `fragment`, and merges them.
pub fn plan(config: Option<&Path>, fragment: &Path) -> Result<Plan, AllowlistError> {
    let text = read(fragment)?;
    plan_text(config, &text, fragment)
}

/// [`plan`] for a fragment in memory (`name`: what errors and the diff call it).
pub fn plan_text(
    config: Option<&Path>,
    fragment_text: &str,
    name: &Path,
) -> Result<Plan, AllowlistError> {
    let fragment = name;
    let mut config = match config {
        Some(path) => Config::load(path)?,
        None => Config::builtin()?,
    };
    config.apply_env(std::env::vars().filter(|(k, _)| k.starts_with("PORTCULLIS_")))?;
    let Some(named) = &config.allowlist else {
        return Err(AllowlistError::Builtin {
            config: config.origin.file.clone(),
        });
    };
    let file = config.resolve(named);
    let groups = groups_of(&config)?;
    let before = read(&file)?;
    let merged = allowlist_merge::merge(
        &before,
        &file.display().to_string(),
        fragment_text,
        &fragment.display().to_string(),
        &groups,
    )?;
    Ok(Plan {
        file,
        fragment: fragment.to_owned(),
        before,
        merged,
    })
}

/// The one-rule fragment of `portcullis allowlist add` (TOML strings quoted by the toml
/// crate: whatever `host` or `comment` hold, they stay values).
pub fn rule_fragment(
    host: &str,
    ports: &[u16],
    groups: &[String],
    private: bool,
    comment: &str,
) -> String {
    let string = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let mut out = format!("[[allow]]\nhost = {}\n", string(host));
    if !ports.is_empty() {
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        out.push_str(&format!("ports = [{}]\n", ports.join(", ")));
    }
    if !groups.is_empty() {
        let groups: Vec<String> = groups.iter().map(|g| string(g)).collect();
        out.push_str(&format!("groups = [{}]\n", groups.join(", ")));
    }
    if private {
        out.push_str("private = true\n");
    }
    out.push_str(&format!("comment = {}\n", string(comment)));
    out
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
        file: path.display().to_string(),
        reason,
    })
}

impl Plan {
    /// The unified diff of the file's text; empty when nothing changes.
    pub fn diff(&self) -> String {
        let file = self.file.display();
        allowlist_merge::unified_diff(
            &self.before,
            &self.merged.text,
            &file.to_string(),
            &format!("{file} (merged with {})", self.fragment.display()),
        )
    }

    /// Writes the merged text over the file, atomically; nothing when nothing changes. The
    /// file must still hold what was merged into (another writer's edit is not lost).
    pub fn write(&self) -> Result<(), AllowlistError> {
        if !self.merged.changed() {
            return Ok(());
        }
        let shown = self.file.display().to_string();
        if read(&self.file)? != self.before {
            return Err(AllowlistError::Raced { file: shown });
        }
        // A symlink stays one: the file it points to is replaced.
        let target = std::fs::canonicalize(&self.file).map_err(|reason| AllowlistError::Write {
            file: shown.clone(),
            reason,
        })?;
        write_atomic(&target, self.merged.text.as_bytes()).map_err(|reason| AllowlistError::Write {
            file: shown,
            reason,
        })
    }
}

/// Replaces `path` with `content` through [`crate::sys::write_atomic_with`] (a temporary
/// file beside it, fsynced, renamed over it, the directory fsynced), with the old file's
/// mode, and its owner where we may set it.
pub fn write_atomic(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let old = std::fs::metadata(path)?;
    crate::sys::write_atomic_with(path, |file| {
        // Before a byte is written: the content is never readable by more than the old was.
        file.set_permissions(old.permissions())?;
        // Only root may give a file away; anyone else leaves it theirs.
        let _ = std::os::unix::fs::fchown(&*file, Some(old.uid()), Some(old.gid()));
        file.write_all(content)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    #[test]
    fn the_atomic_write_replaces_the_file_and_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allowlist.toml");
        std::fs::write(&path, "old\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let inode = std::fs::metadata(&path).unwrap().ino();
        write_atomic(&path, b"new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert_ne!(meta.ino(), inode, "a new file, renamed over the old one");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["allowlist.toml"], "no temporary file left behind");
    }

    #[test]
    fn the_built_in_allowlist_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let fragment = dir.path().join("fragment.toml");
        std::fs::write(&fragment, "[[allow]]\nhost = \"a.example\"\n").unwrap();
        let config = dir.path().join("portcullis.toml");
        std::fs::write(&config, "[dns]\nlisten = [\"127.0.0.1:0\"]\n").unwrap();
        // Not what the test runs in: no PORTCULLIS_ALLOWLIST.
        if std::env::var_os("PORTCULLIS_ALLOWLIST").is_some() {
            return;
        }
        let err = plan(Some(&config), &fragment).unwrap_err().to_string();
        assert!(
            err.contains("uses the built-in allowlist") && err.contains("pass --config"),
            "{err}"
        );
    }

    /// A config dir: portcullis.toml naming `allowlist`, and a fragment.
    fn config_dir(dir: &Path, allowlist: &str) -> (PathBuf, PathBuf) {
        let config = dir.join("portcullis.toml");
        std::fs::write(&config, format!("allowlist = \"{allowlist}\"\n")).unwrap();
        let fragment = dir.join("fragment.toml");
        std::fs::write(&fragment, "[[allow]]\nhost = \"new.example\"\n").unwrap();
        (config, fragment)
    }

    #[test]
    fn a_symlinked_allowlist_stays_a_symlink_and_another_writer_is_not_overwritten() {
        if std::env::var_os("PORTCULLIS_ALLOWLIST").is_some() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        let real = dir.path().join("real/allowlist.toml");
        std::fs::write(&real, "[[allow]]\nhost = \"old.example\"\n").unwrap();
        let link = dir.path().join("allowlist.toml");
        std::os::unix::fs::symlink("real/allowlist.toml", &link).unwrap();
        let (config, fragment) = config_dir(dir.path(), "allowlist.toml");

        let plan = plan(Some(&config), &fragment).unwrap();
        assert!(plan.merged.changed());
        plan.write().unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            std::fs::read_to_string(&real).unwrap(),
            "[[allow]]\nhost = \"old.example\"\n\n[[allow]]\nhost = \"new.example\"\n"
        );

        // Someone edits the file between the merge and the write: theirs is kept.
        std::fs::write(
            dir.path().join("fragment.toml"),
            "[[allow]]\nhost = \"third.example\"\n",
        )
        .unwrap();
        let plan = super::plan(Some(&config), &fragment).unwrap();
        std::fs::write(&real, "# edited meanwhile\n").unwrap();
        let err = plan.write().unwrap_err().to_string();
        assert!(err.contains("changed while the merge ran"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&real).unwrap(),
            "# edited meanwhile\n"
        );
    }

    /// What `portcullis allowlist suggest` prints goes in as it is: each rule with the
    /// comment lines above it; the fragment's header and its "Not suggested" notes stay
    /// behind; a second apply changes nothing.
    #[test]
    fn a_suggested_fragment_merges_with_its_rule_comments_only() {
        use crate::config::allowlist::BUILTIN_ALLOWLIST;
        use crate::learn::suggest::{Suggestion, Withheld, render_toml};
        use crate::policy::groups::Groups;
        let suggestion = |host: &str, ports: Vec<u16>, private: Option<&str>| Suggestion {
            host: host.to_owned(),
            group: "agent".to_owned(),
            ports,
            doors: vec!["connect", "dns"],
            count: 12,
            first_seen: 1_796_000_000,
            last_seen: 1_796_000_600,
            client: "10.20.0.7".parse().unwrap(),
            private: private.map(str::to_owned),
            qtypes: Vec::new(),
            names: Vec::new(),
            withheld: None,
        };
        let mut blocked = suggestion("evil.example", vec![443], None);
        blocked.withheld = Some(Withheld::Blocked {
            list: "threats".to_owned(),
            rule: "evil.example".to_owned(),
        });
        let fragment = render_toml(
            &[
                suggestion("api.example.com", vec![443], None),
                suggestion("nas.example.com", vec![8443], Some("192.168.1.5")),
                // Already allowed for every group: merges into the shipped rule, unchanged.
                suggestion("github.com", vec![443], None),
                blocked,
            ],
            1_796_000_700,
        );
        let mut groups = Groups::default();
        groups.add("agent");
        let merge = |existing: &str| {
            allowlist_merge::merge(
                existing,
                "allowlist.toml",
                &fragment,
                "suggested.toml",
                &groups,
            )
            .unwrap()
        };
        let merged = merge(BUILTIN_ALLOWLIST);
        let added = merged
            .text
            .strip_prefix(BUILTIN_ALLOWLIST)
            .expect("the shipped file is kept as it was");
        assert_eq!(added.matches("[[allow]]").count(), 2, "{added}");
        assert!(
            added.contains("# 12 request(s), first seen ")
                && added.contains("# REVIEW: resolved to a private address (192.168.1.5)"),
            "{added}"
        );
        assert!(
            !added.contains("Suggested by") && !added.contains("evil.example"),
            "{added}"
        );
        let lines: Vec<String> = merged.changes.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            lines,
            [
                "+ api.example.com ports [443] groups [agent] (new rule)",
                "+ nas.example.com (private) ports [8443] groups [agent] (new rule)",
                "= github.com (already allowed)",
            ]
        );
        assert!(!merge(&merged.text).changed(), "a second apply is a no-op");
    }
}
