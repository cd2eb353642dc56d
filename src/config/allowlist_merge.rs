//! Merging allow rules into an `allowlist.toml` without rewriting it: what
//! `portcullis allowlist diff` shows and `portcullis allowlist apply` writes (issue 16).
//!
//! The fragment is ordinary allowlist syntax (what `portcullis allowlist suggest` prints).
//! Each of its rules either merges into an existing rule or is appended at the end:
//!
//! - same host (normalised as [`allowlist::parse`] does: case, trailing dot) and same
//!   `private` flag: the union of the ports (existing first) and of the groups; a rule
//!   without `groups` already applies to every group and stays so. Nothing new: nothing
//!   changes.
//! - otherwise the rule is appended after everything else, with the comment lines written
//!   right above it in the fragment (the last run of `#` lines before its `[[allow]]`; a
//!   comment block separated from it by a blank line stays behind).
//!
//! The file is edited through `toml_edit`: every comment, blank line and rule of it outside
//! the rules that change keeps its bytes and its place. The merged text is checked with the
//! real parser before anyone may write it. This module touches no file: `app::allowlist`
//! reads, and writes atomically.

use std::fmt;
use std::ops::Range;

use toml_edit::{Array, ArrayOfTables, Document, DocumentMut, Item, Table, TableLike, Value};

use super::{ConfigError, allowlist, line_of};
use crate::error::{Fault, HasFault};
use crate::policy::groups::Groups;
use crate::policy::rules::AllowRule;

/// Why a fragment cannot be merged; every variant names a file and a line.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// Not TOML.
    #[error("{file}:{line}: TOML syntax: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    /// A key, a value's type or a value (an unknown key, a bad host, an unknown group), as
    /// the configuration's own errors: `file:line: key `allow.host`: ...`.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// The merged text does not pass the allowlist parser; nothing may be written.
    #[error("{file}: merging {fragment} would not validate, nothing written: {source}")]
    Merged {
        file: String,
        fragment: String,
        source: Box<ConfigError>,
    },
}

impl HasFault for MergeError {
    fn fault(&self) -> Fault {
        // The operator's input, like every configuration error.
        Fault::Internal
    }
}

/// What merging did to one rule of the fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The host as the gate matches it (lower case, no trailing dot).
    pub host: String,
    pub private: bool,
    pub kind: ChangeKind,
}

/// `None` for groups: every group.
pub type GroupNames = Option<Vec<String>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// Appended as a rule of its own.
    New { ports: Vec<u16>, groups: GroupNames },
    /// Merged into an existing rule: what changed, before and after.
    Extended {
        ports: Option<(Vec<u16>, Vec<u16>)>,
        groups: Option<(GroupNames, GroupNames)>,
    },
    /// An existing rule already allows all of it.
    Unchanged,
}

impl Change {
    /// Whether the file changes for this rule.
    pub fn changes(&self) -> bool {
        !matches!(self.kind, ChangeKind::Unchanged)
    }
}

fn ports_text(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn groups_text(groups: &GroupNames) -> String {
    match groups {
        None => "all".to_owned(),
        Some(names) => names.join(", "),
    }
}

/// One line: `+ host ports [443] groups [agent] (new rule)`, `~ host: ports 443 -> 443,
/// 8443`, `= host (already allowed)`.
impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let private = if self.private { " (private)" } else { "" };
        match &self.kind {
            ChangeKind::New { ports, groups } => {
                let groups = match groups {
                    None => "all".to_owned(),
                    Some(_) => format!("[{}]", groups_text(groups)),
                };
                write!(
                    f,
                    "+ {}{private} ports [{}] groups {groups} (new rule)",
                    self.host,
                    ports_text(ports)
                )
            }
            ChangeKind::Extended { ports, groups } => {
                write!(f, "~ {}{private}:", self.host)?;
                let mut sep = " ";
                if let Some((before, after)) = ports {
                    write!(
                        f,
                        "{sep}ports {} -> {}",
                        ports_text(before),
                        ports_text(after)
                    )?;
                    sep = "; ";
                }
                if let Some((before, after)) = groups {
                    write!(
                        f,
                        "{sep}groups {} -> {}",
                        groups_text(before),
                        groups_text(after)
                    )?;
                }
                Ok(())
            }
            ChangeKind::Unchanged => write!(f, "= {}{private} (already allowed)", self.host),
        }
    }
}

/// The result of a merge: the text to write and what happened to each rule of the fragment,
/// in the fragment's order.
#[derive(Debug, Clone)]
pub struct Merged {
    /// The merged file; the existing text itself when nothing changes.
    pub text: String,
    pub changes: Vec<Change>,
}

impl Merged {
    /// Whether anything would be written.
    pub fn changed(&self) -> bool {
        self.changes.iter().any(Change::changes)
    }

    /// `2 new rules, 1 rule extended, 3 already allowed`.
    pub fn summary(&self) -> String {
        let count =
            |pick: fn(&ChangeKind) -> bool| self.changes.iter().filter(|c| pick(&c.kind)).count();
        let new = count(|k| matches!(k, ChangeKind::New { .. }));
        let extended = count(|k| matches!(k, ChangeKind::Extended { .. }));
        let same = count(|k| matches!(k, ChangeKind::Unchanged));
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        format!(
            "{new} new rule{}, {extended} rule{} extended, {same} already allowed",
            plural(new),
            plural(extended)
        )
    }
}

/// Merges the rules of `fragment` (named `fragment_file` in errors) into `existing` (the
/// allowlist `file`), both checked against the configuration's `groups`.
pub fn merge(
    existing: &str,
    file: &str,
    fragment: &str,
    fragment_file: &str,
    groups: &Groups,
) -> Result<Merged, MergeError> {
    let incoming = read_fragment(fragment, fragment_file, groups)?;
    let (mut doc, rules) = read_parsed(existing, file, groups, false)?;
    // (host, private) of each `[[allow]]` table of `doc`, in order, appended ones included.
    let mut index: Vec<(String, bool)> =
        rules.iter().map(|r| (r.host.clone(), r.private)).collect();
    let mut changes = Vec::with_capacity(incoming.rules.len());
    for (table, rule) in incoming.tables.into_iter().zip(&incoming.rules) {
        let wanted_groups = group_names(&table);
        let kind = match index
            .iter()
            .position(|(host, private)| *host == rule.host && *private == rule.private)
        {
            Some(i) => {
                let tables = allow_tables(&mut doc);
                let target = tables.get_mut(i).expect("index follows the tables");
                let (kind, orphan) = extend(target, &rule.ports, wanted_groups.as_deref());
                if let Some(comment) = orphan {
                    // The comment above a removed last key: before the next rule, or at
                    // the end of the file.
                    match tables.get_mut(i + 1) {
                        Some(next) => prepend_prefix(next.decor_mut(), &comment),
                        None => {
                            let trailing = doc.trailing().as_str().unwrap_or("").to_owned();
                            doc.set_trailing(format!("{comment}{trailing}"));
                        }
                    }
                }
                kind
            }
            None => {
                let comments = comment_block(&table);
                append(&mut doc, table, &comments);
                index.push((rule.host.clone(), rule.private));
                ChangeKind::New {
                    ports: rule.ports.clone(),
                    groups: wanted_groups,
                }
            }
        };
        changes.push(Change {
            host: rule.host.clone(),
            private: rule.private,
            kind,
        });
    }
    if !changes.iter().any(Change::changes) {
        return Ok(Merged {
            text: existing.to_owned(),
            changes,
        });
    }
    let mut text = doc.to_string();
    // toml_edit writes `\n`; a file written with `\r\n` keeps them.
    if existing.contains("\r\n")
        && existing.matches('\n').count() == existing.matches("\r\n").count()
    {
        text = text.replace("\r\n", "\n").replace('\n', "\r\n");
    }
    validated(&text, file, fragment_file, groups)?;
    Ok(Merged { text, changes })
}

/// The merged text, checked by the parser the gate reads it with.
fn validated(
    text: &str,
    file: &str,
    fragment_file: &str,
    groups: &Groups,
) -> Result<(), MergeError> {
    allowlist::parse(text, file, groups)
        .map(drop)
        .map_err(|source| MergeError::Merged {
            file: file.to_owned(),
            fragment: fragment_file.to_owned(),
            source: Box::new(source),
        })
}

/// A unified diff of the file's text (3 lines of context), empty when they are equal.
pub fn unified_diff(before: &str, after: &str, before_name: &str, after_name: &str) -> String {
    similar::udiff::unified_diff(
        similar::Algorithm::Myers,
        before,
        after,
        3,
        Some((before_name, after_name)),
    )
}

/// A fragment's rules: its tables (inline ones made tables) beside what the parser made of
/// them.
struct Incoming {
    tables: Vec<Table>,
    rules: Vec<AllowRule>,
}

/// Parses an allowlist text for merging: TOML first (`file:line`), then its shape key by key
/// (an unknown key, a value of the wrong type), then the real parser (a bad host, an unknown
/// group). `inline`: `allow = [{ host = ... }]` is accepted too (a fragment is only read;
/// the file merged into must use `[[allow]]` tables).
fn read_parsed(
    text: &str,
    file: &str,
    groups: &Groups,
    inline: bool,
) -> Result<(DocumentMut, Vec<AllowRule>), MergeError> {
    let doc = Document::parse(text).map_err(|e| MergeError::Syntax {
        file: file.to_owned(),
        line: line_of(text, e.span().map_or(0, |s| s.start)),
        message: e.message().trim_end().to_owned(),
    })?;
    check_shape(&doc, file, text, inline)?;
    let rules = allowlist::parse(text, file, groups)?;
    Ok((doc.into_mut(), rules))
}

/// A fragment: its `[[allow]]` tables (inline tables made tables) and its rules.
fn read_fragment(text: &str, file: &str, groups: &Groups) -> Result<Incoming, MergeError> {
    let (doc, rules) = read_parsed(text, file, groups, true)?;
    let tables = match doc.get("allow") {
        Some(Item::ArrayOfTables(tables)) => tables.iter().cloned().collect(),
        Some(Item::Value(Value::Array(array))) => array
            .iter()
            .filter_map(Value::as_inline_table)
            .map(|t| {
                let mut table = t.clone().into_table();
                table.fmt();
                table
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(Incoming { tables, rules })
}

/// An error at `span` of `text`.
fn invalid_at(
    file: &str,
    text: &str,
    span: Option<Range<usize>>,
    key: &str,
    message: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        file: file.to_owned(),
        line: line_of(text, span.map_or(0, |s| s.start)),
        key: key.to_owned(),
        message: message.into(),
    }
}

/// The keys of an allowlist, one by one: serde's messages for these name a line and a
/// column in a block of their own, the configuration's name `file:line: key`.
fn check_shape(
    doc: &Document<&str>,
    file: &str,
    text: &str,
    inline: bool,
) -> Result<(), ConfigError> {
    let invalid = |span, key: &str, message: &str| invalid_at(file, text, span, key, message);
    for (name, item) in doc.iter() {
        let key_span = doc.key(name).and_then(|k| k.span());
        if name != "allow" {
            return Err(invalid(
                key_span,
                name,
                "unknown key: an allowlist has only `[[allow]]` rules",
            ));
        }
        match item {
            Item::ArrayOfTables(tables) => {
                for table in tables.iter() {
                    check_rule(table, table.span(), file, text)?;
                }
            }
            Item::Value(Value::Array(array)) if inline => {
                for value in array.iter() {
                    match value.as_inline_table() {
                        Some(table) => check_rule(table, table.span(), file, text)?,
                        None => {
                            return Err(invalid(
                                value.span(),
                                "allow",
                                "expected `[[allow]]` tables",
                            ));
                        }
                    }
                }
            }
            Item::Value(Value::Array(_)) => {
                return Err(invalid(
                    key_span,
                    "allow",
                    "rules written as `allow = [...]` cannot be merged into: write them as `[[allow]]` tables",
                ));
            }
            _ => return Err(invalid(key_span, "allow", "expected `[[allow]]` tables")),
        }
    }
    Ok(())
}

/// One rule: known keys, each of its type, and a `host`.
fn check_rule(
    rule: &dyn TableLike,
    at: Option<Range<usize>>,
    file: &str,
    text: &str,
) -> Result<(), ConfigError> {
    for (name, item) in rule.iter() {
        let key = format!("allow.{name}");
        let span = rule
            .key(name)
            .and_then(|k| k.span())
            .or_else(|| item.span());
        let value = item.as_value();
        let (ok, expected) = match name {
            "host" => (value.is_some_and(Value::is_str), "a string"),
            "comment" => (value.is_some_and(Value::is_str), "a string"),
            "private" => (value.is_some_and(Value::is_bool), "true or false"),
            "groups" => (
                value
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().all(Value::is_str)),
                "a list of group names",
            ),
            "ports" => match value.and_then(Value::as_array) {
                Some(ports) => {
                    for port in ports.iter() {
                        match port.as_integer() {
                            // 0 is the parser's to refuse, with its own message.
                            Some(n) if (0..=65535).contains(&n) => {}
                            Some(n) => {
                                return Err(invalid_at(
                                    file,
                                    text,
                                    port.span(),
                                    &key,
                                    format!("{n} is not a port (1 to 65535)"),
                                ));
                            }
                            None => {
                                return Err(invalid_at(
                                    file,
                                    text,
                                    port.span(),
                                    &key,
                                    "expected a list of port numbers",
                                ));
                            }
                        }
                    }
                    (true, "")
                }
                None => (false, "a list of port numbers"),
            },
            _ => {
                return Err(invalid_at(
                    file,
                    text,
                    span,
                    &key,
                    "unknown key: a rule has `host`, `ports`, `groups`, `private` and `comment`",
                ));
            }
        };
        if !ok {
            return Err(invalid_at(
                file,
                text,
                item.span().or(span),
                &key,
                format!("expected {expected}"),
            ));
        }
    }
    if !rule.contains_key("host") {
        return Err(invalid_at(
            file,
            text,
            at,
            "allow.host",
            "a rule needs a `host`",
        ));
    }
    Ok(())
}

/// The `[[allow]]` tables of the file merged into (made when it has none yet).
fn allow_tables(doc: &mut DocumentMut) -> &mut ArrayOfTables {
    doc.entry("allow")
        .or_insert(Item::ArrayOfTables(ArrayOfTables::new()))
        .as_array_of_tables_mut()
        .expect("checked: `allow` holds `[[allow]]` tables")
}

/// A rule's `groups`; `None`: written without, every group.
fn group_names(table: &Table) -> GroupNames {
    table.get("groups").and_then(Item::as_array).map(|groups| {
        groups
            .iter()
            .filter_map(|g| g.as_str().map(str::to_owned))
            .collect()
    })
}

/// A rule's ports, the default `[443]` when it names none.
fn ports_of(table: &Table) -> Vec<u16> {
    match table.get("ports").and_then(Item::as_array) {
        Some(ports) => ports
            .iter()
            .filter_map(|p| p.as_integer().and_then(|n| u16::try_from(n).ok()))
            .collect(),
        None => vec![443],
    }
}

/// The members of `wanted` that `have` lacks, each once, in `wanted`'s order.
fn missing<T: PartialEq + Clone>(have: &[T], wanted: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for w in wanted {
        if !have.contains(w) && !out.contains(w) {
            out.push(w.clone());
        }
    }
    out
}

/// Merges ports and groups into an existing rule. The second value: the comment that stood
/// above a removed last key, for the caller to keep.
fn extend(
    table: &mut Table,
    ports: &[u16],
    groups: Option<&[String]>,
) -> (ChangeKind, Option<String>) {
    let before_ports = ports_of(table);
    let new_ports = missing(&before_ports, ports);
    let ports_change = (!new_ports.is_empty()).then(|| {
        let after: Vec<u16> = before_ports.iter().chain(&new_ports).copied().collect();
        match table.get_mut("ports").and_then(Item::as_array_mut) {
            Some(array) => {
                for port in &new_ports {
                    array.push(i64::from(*port));
                }
            }
            None => {
                let mut array = Array::new();
                for port in &after {
                    array.push(i64::from(*port));
                }
                insert_after(table, "host", "ports", toml_edit::value(array));
            }
        }
        (before_ports, after)
    });
    let mut orphan = None;
    let groups_change = match (group_names(table), groups) {
        // Every group already.
        (None, _) => None,
        // Every group now: the rule loses its `groups`.
        (Some(before), None) => {
            orphan = remove_keeping_comment(table, "groups");
            Some((Some(before), None))
        }
        (Some(before), Some(wanted)) => {
            let new_groups = missing(&before, wanted);
            (!new_groups.is_empty()).then(|| {
                if let Some(array) = table.get_mut("groups").and_then(Item::as_array_mut) {
                    for group in &new_groups {
                        array.push(group.as_str());
                    }
                }
                let after = before.iter().chain(&new_groups).cloned().collect();
                (Some(before), Some(after))
            })
        }
    };
    let kind = if ports_change.is_none() && groups_change.is_none() {
        ChangeKind::Unchanged
    } else {
        ChangeKind::Extended {
            ports: ports_change,
            groups: groups_change,
        }
    };
    (kind, orphan)
}

/// Inserts `key` right after `after` (at the end when there is no `after`); the keys that
/// follow keep their order and formatting.
fn insert_after(table: &mut Table, after: &str, key: &str, item: Item) {
    let names: Vec<String> = table.iter().map(|(k, _)| k.to_owned()).collect();
    let following = match names.iter().position(|n| n == after) {
        Some(i) => &names[i + 1..],
        None => &names[names.len()..],
    };
    let moved: Vec<_> = following
        .iter()
        .filter_map(|name| table.remove_entry(name))
        .collect();
    table.insert(key, item);
    for (k, v) in moved {
        table.insert_formatted(&k, v);
    }
}

/// Removes `key`; the comment lines above it go to the key after it, or, when it was the
/// last, are returned.
fn remove_keeping_comment(table: &mut Table, key: &str) -> Option<String> {
    let names: Vec<String> = table.iter().map(|(k, _)| k.to_owned()).collect();
    let next = names
        .iter()
        .position(|n| n == key)
        .and_then(|i| names.get(i + 1))
        .cloned();
    let (removed, _) = table.remove_entry(key)?;
    let prefix = removed
        .leaf_decor()
        .prefix()
        .and_then(|p| p.as_str())
        .unwrap_or("");
    // Up to the end of the last line before the key itself (the rest is its indentation).
    let comment = match prefix.rfind('\n') {
        Some(end) if prefix[..end].contains('#') => prefix[..=end].to_owned(),
        _ => return None,
    };
    match next {
        Some(next) => {
            if let Some(mut k) = table.key_mut(&next) {
                prepend_prefix(k.leaf_decor_mut(), &comment);
            }
            None
        }
        None => Some(comment),
    }
}

fn prepend_prefix(decor: &mut toml_edit::Decor, text: &str) {
    let old = decor
        .prefix()
        .and_then(|p| p.as_str())
        .unwrap_or("")
        .to_owned();
    decor.set_prefix(format!("{text}{old}"));
}

/// The comment lines right above a fragment's `[[allow]]` header: the last run of `#`
/// lines, each with its newline.
fn comment_block(table: &Table) -> String {
    let prefix = table
        .decor()
        .prefix()
        .and_then(|p| p.as_str())
        .unwrap_or("");
    let mut lines: Vec<&str> = prefix.split('\n').collect();
    // What stands before `[[` on the header's own line (indentation, if any).
    lines.pop();
    let start = lines
        .iter()
        .rposition(|l| !l.trim_start().starts_with('#'))
        .map_or(0, |i| i + 1);
    lines[start..].iter().map(|l| format!("{l}\n")).collect()
}

/// Appends a rule after everything in the file (its closing comments included), one blank
/// line apart, its comment lines above it.
fn append(doc: &mut DocumentMut, mut table: Table, comments: &str) {
    let trailing = doc.trailing().as_str().unwrap_or("").to_owned();
    doc.set_trailing("");
    let mut before = doc.to_string();
    let mut prefix = trailing.clone();
    before.push_str(&trailing);
    if !before.is_empty() && !before.ends_with('\n') {
        prefix.push('\n');
        before.push('\n');
    }
    if !before.is_empty() && !before.ends_with("\n\n") {
        prefix.push('\n');
    }
    prefix.push_str(comments);
    table.decor_mut().set_prefix(prefix);
    // Printed after the table before it, not at the fragment's place.
    table.set_position(None);
    allow_tables(doc).push(table);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> Groups {
        let mut groups = Groups::default();
        groups.add("agent");
        groups.add("ci");
        groups
    }

    fn merge_into(existing: &str, fragment: &str) -> Result<Merged, MergeError> {
        merge(
            existing,
            "allowlist.toml",
            fragment,
            "fragment.toml",
            &groups(),
        )
    }

    const EXISTING: &str = "\
# Our allowlist: keep it short.

# LLM API
[[allow]]
host = \"api.anthropic.com\"
comment = \"Anthropic API (Claude)\"

# GitHub
[[allow]]
host = \"API.GitHub.com.\"   # written loosely on purpose
ports = [443]  # https only
groups = [\"agent\"]

# [[allow]]
# host = \"disabled.example\"
";

    const FRAGMENT: &str = "\
# portcullis allowlist suggest: group agent

# blocked anyway: evil.example (list threats, rule evil.example)

# 12 requests, first seen 2026-12-02T04:50:01Z, last 2026-12-02T05:01:00Z; doors: connect, dns; ports: 443
[[allow]]
host = \"api.example.com\"
ports = [443]
groups = [\"agent\"]
comment = \"learned in report mode\"

# REVIEW: resolved to a private address
[[allow]]
host = \"nas.example.com\"
ports = [8443]
groups = [\"agent\"]
private = true
comment = \"learned in report mode\"
";

    #[test]
    fn new_rules_are_appended_with_their_comments_and_the_file_kept_byte_for_byte() {
        let merged = merge_into(EXISTING, FRAGMENT).unwrap();
        let appended = "
# 12 requests, first seen 2026-12-02T04:50:01Z, last 2026-12-02T05:01:00Z; doors: connect, dns; ports: 443
[[allow]]
host = \"api.example.com\"
ports = [443]
groups = [\"agent\"]
comment = \"learned in report mode\"

# REVIEW: resolved to a private address
[[allow]]
host = \"nas.example.com\"
ports = [8443]
groups = [\"agent\"]
private = true
comment = \"learned in report mode\"
";
        assert_eq!(merged.text, format!("{EXISTING}{appended}"));
        let lines: Vec<String> = merged.changes.iter().map(Change::to_string).collect();
        assert_eq!(
            lines,
            [
                "+ api.example.com ports [443] groups [agent] (new rule)",
                "+ nas.example.com (private) ports [8443] groups [agent] (new rule)",
            ]
        );
        assert!(merged.changed());
        assert_eq!(
            merged.summary(),
            "2 new rules, 0 rules extended, 0 already allowed"
        );
    }

    #[test]
    fn ports_and_groups_are_united_in_place_existing_first() {
        let fragment = "\
[[allow]]
host = \"api.github.com\"
ports = [8443, 443, 8443]
groups = [\"ci\", \"agent\"]

[[allow]]
host = \"API.ANTHROPIC.COM\"
ports = [443, 8080]
groups = [\"ci\"]
";
        let merged = merge_into(EXISTING, fragment).unwrap();
        let expected = EXISTING
            .replace(
                "ports = [443]  # https only\ngroups = [\"agent\"]",
                "ports = [443, 8443]  # https only\ngroups = [\"agent\", \"ci\"]",
            )
            // No `ports` was the default [443]; no `groups` is every group, and stays so.
            .replace(
                "host = \"api.anthropic.com\"\n",
                "host = \"api.anthropic.com\"\nports = [443, 8080]\n",
            );
        assert_eq!(merged.text, expected);
        let lines: Vec<String> = merged.changes.iter().map(Change::to_string).collect();
        assert_eq!(
            lines,
            [
                "~ api.github.com: ports 443 -> 443, 8443; groups agent -> agent, ci",
                "~ api.anthropic.com: ports 443 -> 443, 8080",
            ]
        );
        assert_eq!(
            merged.summary(),
            "0 new rules, 2 rules extended, 0 already allowed"
        );
    }

    #[test]
    fn nothing_new_changes_nothing_and_applying_twice_is_applying_once() {
        let once = merge_into(EXISTING, FRAGMENT).unwrap();
        let twice = merge_into(&once.text, FRAGMENT).unwrap();
        assert!(!twice.changed());
        assert_eq!(twice.text, once.text);
        let lines: Vec<String> = twice.changes.iter().map(Change::to_string).collect();
        assert_eq!(
            lines,
            [
                "= api.example.com (already allowed)",
                "= nas.example.com (private) (already allowed)",
            ]
        );
        // A subset of what a rule allows, in another spelling: nothing to do.
        let subset = "[[allow]]\nhost = \"Api.GitHub.Com.\"\ngroups = [\"agent\"]\n";
        let merged = merge_into(EXISTING, subset).unwrap();
        assert!(!merged.changed());
        assert_eq!(merged.text, EXISTING);
        assert_eq!(
            merged.summary(),
            "0 new rules, 0 rules extended, 1 already allowed"
        );
    }

    #[test]
    fn a_different_private_flag_is_a_rule_of_its_own() {
        let fragment = "# on the LAN\n[[allow]]\nhost = \"api.github.com\"\ngroups = [\"agent\"]\nprivate = true\n";
        let merged = merge_into(EXISTING, fragment).unwrap();
        assert_eq!(merged.text, format!("{EXISTING}\n{fragment}"));
        assert_eq!(
            merged.changes[0].to_string(),
            "+ api.github.com (private) ports [443] groups [agent] (new rule)"
        );
    }

    #[test]
    fn rules_of_one_fragment_for_one_host_merge_together() {
        let fragment = "[[allow]]\nhost = \"new.example\"\ngroups = [\"agent\"]\n\n[[allow]]\nhost = \"new.example\"\nports = [8443]\ngroups = [\"ci\"]\n";
        let merged = merge_into("", fragment).unwrap();
        assert_eq!(
            merged.text,
            "[[allow]]\nhost = \"new.example\"\nports = [443, 8443]\ngroups = [\"agent\", \"ci\"]\n"
        );
        assert_eq!(
            merged.changes[1].to_string(),
            "~ new.example: ports 443 -> 443, 8443; groups agent -> agent, ci"
        );
    }

    #[test]
    fn a_rule_for_every_group_widens_one_for_some_and_keeps_its_comments() {
        let existing = "[[allow]]\nhost = \"a.example\"\n# only the agent, for now\ngroups = [\"agent\"]\ncomment = \"A\"\n\n[[allow]]\nhost = \"b.example\"\n# the agent alone\ngroups = [\"agent\"]\n\n# the end\n";
        let fragment = "[[allow]]\nhost = \"a.example\"\n[[allow]]\nhost = \"b.example\"\n";
        let merged = merge_into(existing, fragment).unwrap();
        assert_eq!(
            merged.text,
            "[[allow]]\nhost = \"a.example\"\n# only the agent, for now\ncomment = \"A\"\n\n[[allow]]\nhost = \"b.example\"\n# the agent alone\n\n# the end\n"
        );
        assert_eq!(
            merged.changes[0].to_string(),
            "~ a.example: groups agent -> all"
        );
    }

    #[test]
    fn rules_go_after_a_file_of_comments_only() {
        let existing = "# nothing allowed yet\n";
        let fragment = "# wanted\n[[allow]]\nhost = \"a.example\"\n";
        let merged = merge_into(existing, fragment).unwrap();
        assert_eq!(merged.text, format!("{existing}\n{fragment}"));
        let merged = merge_into("", "allow = [{ host = \"a.example\", ports = [80] }]\n").unwrap();
        assert_eq!(
            merged.text,
            "[[allow]]\nhost = \"a.example\"\nports = [80]\n"
        );
    }

    #[test]
    fn a_file_with_crlf_line_ends_keeps_them() {
        let existing = EXISTING.replace('\n', "\r\n");
        let merged = merge_into(&existing, FRAGMENT).unwrap();
        let lf = merge_into(EXISTING, FRAGMENT).unwrap();
        assert_eq!(merged.text, lf.text.replace('\n', "\r\n"));
    }

    #[test]
    fn fragment_errors_name_its_file_line_and_key() {
        let err = |fragment: &str| merge_into(EXISTING, fragment).unwrap_err().to_string();
        assert_eq!(
            err("[[allow]]\nhots = \"a.example\"\n"),
            "fragment.toml:2: key `allow.hots`: unknown key: a rule has `host`, `ports`, `groups`, `private` and `comment`"
        );
        assert_eq!(
            err("# x\n[[allow]]\nports = [443]\n"),
            "fragment.toml:2: key `allow.host`: a rule needs a `host`"
        );
        assert!(
            err("[[allow]]\n\nhost = \"bad host\"\n")
                .starts_with("fragment.toml:3: key `allow.host`: `bad host`"),
        );
        assert_eq!(
            err("[[allow]]\nhost = \"a.example\"\ngroups = [\"nobody\"]\n"),
            "fragment.toml:3: key `allow.groups`: unknown group `nobody` (define it under [groups] in portcullis.toml)"
        );
        assert_eq!(
            err("[[allow]]\nhost = \"a.example\"\nports = [443, 70000]\n"),
            "fragment.toml:3: key `allow.ports`: 70000 is not a port (1 to 65535)"
        );
        assert_eq!(
            err("[[allow]]\nhost = \"a.example\"\nports = \"443\"\n"),
            "fragment.toml:3: key `allow.ports`: expected a list of port numbers"
        );
        assert_eq!(
            err("[[allow]]\nhost = \"a.example\"\nprivate = \"yes\"\n"),
            "fragment.toml:3: key `allow.private`: expected true or false"
        );
        assert_eq!(
            err("[[allow]]\nhost = \"a.example\"\n[extra]\n"),
            "fragment.toml:3: key `extra`: unknown key: an allowlist has only `[[allow]]` rules"
        );
        let syntax = err("[[allow]]\nhost = \"a.example\"\nports = [443\n");
        assert!(
            syntax.starts_with("fragment.toml:3: TOML syntax: ")
                || syntax.starts_with("fragment.toml:4: TOML syntax: "),
            "{syntax}"
        );
    }

    #[test]
    fn the_file_merged_into_must_be_valid_and_written_as_tables() {
        let err = merge_into(
            "[[allow]]\nhost = \"a.example\"\ngroups = [\"ghost\"]\n",
            FRAGMENT,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("allowlist.toml:3: key `allow.groups`: unknown group `ghost`"),
            "{err}"
        );
        let err = merge_into("allow = [{ host = \"a.example\" }]\n", FRAGMENT)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("allowlist.toml:1: key `allow`: rules written as `allow = [...]`"),
            "{err}"
        );
    }

    /// The last check before a write: a merged text the parser refuses is an error that
    /// names the file, the line and the key.
    #[test]
    fn a_merged_text_that_does_not_validate_is_refused() {
        let bad = "[[allow]]\nhost = \"a.example\"\n\n[[allow]]\nhost = \"b.example\"\ngroups = [\"ghost\"]\n";
        let err = validated(bad, "allowlist.toml", "fragment.toml", &groups())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "allowlist.toml: merging fragment.toml would not validate, nothing written: allowlist.toml:6: key `allow.groups`: unknown group `ghost` (define it under [groups] in portcullis.toml)"
        );
        assert!(validated(EXISTING, "allowlist.toml", "fragment.toml", &groups()).is_ok());
    }

    #[test]
    fn the_diff_is_unified_and_empty_without_a_change() {
        let merged = merge_into(
            EXISTING,
            "[[allow]]\nhost = \"api.github.com\"\nports = [8443]\ngroups = [\"agent\"]\n",
        )
        .unwrap();
        let diff = unified_diff(
            EXISTING,
            &merged.text,
            "a/allowlist.toml",
            "b/allowlist.toml",
        );
        assert!(
            diff.starts_with("--- a/allowlist.toml\n+++ b/allowlist.toml\n@@ "),
            "{diff}"
        );
        assert!(
            diff.contains("\n-ports = [443]  # https only\n+ports = [443, 8443]  # https only\n"),
            "{diff}"
        );
        assert_eq!(unified_diff(EXISTING, EXISTING, "a", "b"), "");
    }
}
