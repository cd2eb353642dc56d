//! Turning a configuration into a compiled [`Policy`]: groups, allow rules and lists.
//!
//! Everything is built beside the running policy; the caller publishes the result
//! with one atomic swap, or keeps the old one when this returns an error.
//!
//! Building never touches the network: `path` lists are read from their files, `inline` lists
//! from the config, and `url` lists from the last-known-good cache
//! ([`super::store`]); a `url` list with no cached copy yet is reported not ready and
//! contributes nothing until the refresher ([`super::refresh`]) has downloaded it. List texts
//! are read one at a time, compiled into that list's own tables and dropped, so building holds
//! at most one list text and one list's collected entries beside the compiled lists.

use std::sync::Arc;
use std::time::Instant;

use crate::config::{BareNames, Config, ConfigError, ListConfig, ListSource, allowlist};
use crate::policy::Policy;
use crate::policy::groups::{ALL_GROUPS, GroupMask, Groups};
use crate::policy::rules::{
    AllowRule, CompiledList, ListBuilder, ListInfo, RuleError, RuleSetBuilder,
};
use crate::policy::suffix::Suffixes;

use super::parse::{Format, ParseReport, SkipReason, Skipped, parse_list};
// What a build reports of each list ([`Loaded::lists`]); the refresher keeps it current.
use super::status::all_ready;
pub use super::status::{ListStatus, SkipExample, SourceKind};
use super::store::Store;

/// The compiled policy and a report of how it was built.
pub struct Loaded {
    pub policy: Policy,
    pub lists: Vec<ListStatus>,
    pub allow_rules: usize,
    pub build_time: std::time::Duration,
}

impl Loaded {
    /// Every list has something served: `url` lists have a cached or downloaded copy.
    pub fn ready(&self) -> bool {
        all_ready(&self.lists)
    }
}

/// The cache directory a configuration names.
pub fn store_for(config: &Config) -> Store {
    Store::new(config.resolve(&config.sources.cache_dir))
}

/// Builds the policy a configuration describes, from local files, inline rules and the list
/// cache; never the network. Any error leaves nothing half-built.
///
/// Every configured list gets its slot in the rule set, in configuration order, also when
/// nothing of it is served yet (an empty list), so that the refresher can later replace it on
/// its own ([`crate::policy::Policy::with_list`]).
pub fn build_policy(config: &Config) -> Result<Loaded, ConfigError> {
    let started = Instant::now();
    let groups = groups_of(config)?;

    let mut builder = RuleSetBuilder::new();
    let allow_rules = allow_rules_of(config, &groups)?;
    let allow_count = allow_rules.len();
    for rule in allow_rules {
        builder.add_allow(rule);
    }

    let store = store_for(config);
    let mut statuses = Vec::with_capacity(config.lists.len());
    for list in &config.lists {
        let (compiled, status) = load_list(config, &store, list, &groups)?;
        builder.add_compiled(Arc::new(compiled)).map_err(|e| {
            config
                .origin
                .invalid(list.name.span().start, "lists", e.to_string())
        })?;
        statuses.push(status);
    }

    let rules = builder
        .build()
        .map_err(|e| config.origin.invalid(0, "lists", e.to_string()))?;
    let dns = config.dns.policy(&groups);
    let suffixes = suffixes_of(config)?;
    Ok(Loaded {
        policy: Policy {
            rules,
            groups,
            bare_names_nxdomain: config.dns.bare_names == BareNames::Nxdomain,
            dns,
            suffixes,
        },
        lists: statuses,
        allow_rules: allow_count,
        build_time: started.elapsed(),
    })
}

/// The Public Suffix List `[dns.guard] suffix_list` names, or the compiled-in one.
fn suffixes_of(config: &Config) -> Result<Arc<Suffixes>, ConfigError> {
    let Some(path) = &config.dns.guard.suffix_list else {
        return Ok(Suffixes::builtin());
    };
    let path = config.resolve(path);
    let file = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|reason| ConfigError::Read {
        file: file.clone(),
        reason,
    })?;
    Suffixes::parse(&text, &file).map(Arc::new).map_err(|e| {
        config.origin.invalid_key(
            "dns.guard.suffix_list",
            "suffix_list",
            format!("{file}: {e}"),
        )
    })
}

/// The operator's allow rules: the `allowlist` file, or the built-in one when none is named.
pub fn allow_rules_of(config: &Config, groups: &Groups) -> Result<Vec<AllowRule>, ConfigError> {
    let (allow_text, allow_file) = match &config.allowlist {
        Some(path) => {
            let path = config.resolve(path);
            let text = std::fs::read_to_string(&path).map_err(|reason| ConfigError::Read {
                file: path.display().to_string(),
                reason,
            })?;
            (text, path.display().to_string())
        }
        None => (
            allowlist::BUILTIN_ALLOWLIST.to_owned(),
            "<built-in allowlist.toml>".to_owned(),
        ),
    };
    allowlist::parse(&allow_text, &allow_file, groups)
}

/// One configured list as this build serves it: its compiled rules and its status. A list
/// with nothing to read yet (no download, an optional file that is missing, a cached copy
/// that cannot be read) or whose reading panicked serves only the config's own rules of it.
fn load_list(
    config: &Config,
    store: &Store,
    list: &ListConfig,
    groups: &Groups,
) -> Result<(CompiledList, ListStatus), ConfigError> {
    let mut status = ListStatus::new(config, list);
    let info = list_info_with(config, list, groups);
    let Some((text, lines)) = read_list_text(config, store, list, &mut status)? else {
        return Ok((keywords_only(config, list, info)?, status));
    };
    // A bug a list's text runs into fails that list only: the others load and serve.
    let compiled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        parse_into_list_mapped(info.clone(), &text, list.format, &lines, &list.keywords).finish()
    }));
    drop(text);
    match compiled {
        Ok(compiled) => {
            let compiled =
                compiled.map_err(|e| config.origin.invalid(0, "lists", e.to_string()))?;
            status.apply_report(&compiled.report);
            status.ready = true;
            Ok((compiled.list, status))
        }
        Err(panic) => {
            let message = super::background::panic_message(panic.as_ref());
            tracing::error!(list = %list.name.get_ref(), %message, "reading the list panicked; it is not served, the others are");
            status.error = Some(format!(
                "internal error while reading it ({message}); not served"
            ));
            Ok((keywords_only(config, list, info)?, status))
        }
    }
}

/// The text of `list` to compile and where its lines are in the file they were written in,
/// or `None` when there is nothing to read now (`status` says why).
fn read_list_text(
    config: &Config,
    store: &Store,
    list: &ListConfig,
    status: &mut ListStatus,
) -> Result<Option<(String, LineMap)>, ConfigError> {
    let text = match &list.source {
        ListSource::Path(path) => read_list_file(config, list, path, status)?,
        ListSource::Url(url) => read_cached_copy(store, list, url.get_ref(), status),
        ListSource::Inline(inline) => {
            // Inline rules report lines of the config file itself.
            let lines = LineMap::Table(inline_lines(&config.origin.source, inline.span().start));
            return Ok(Some((inline.get_ref().clone(), lines)));
        }
    };
    Ok(text.map(|text| (text, LineMap::Offset(0))))
}

/// A `path` list's file as it is now; `None` when it is optional and absent.
fn read_list_file(
    config: &Config,
    list: &ListConfig,
    path: &std::path::Path,
    status: &mut ListStatus,
) -> Result<Option<String>, ConfigError> {
    let path = config.resolve(path);
    match super::background::read(&path) {
        Ok(bytes) => Ok(Some(into_text(bytes))),
        Err(e) if list.optional && e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(list = %list.name.get_ref(), path = %path.display(), "optional list file not found; skipped");
            status.error = Some("file not found (optional)".into());
            // Nothing is missing that the operator asked for.
            status.ready = true;
            Ok(None)
        }
        Err(reason) => Err(ConfigError::Read {
            file: path.display().to_string(),
            reason,
        }),
    }
}

/// A `url` list's cached copy, and what the cache metadata says of its downloads; `None`
/// before the first download, or when the copy cannot be read.
fn read_cached_copy(
    store: &Store,
    list: &ListConfig,
    url: &str,
    status: &mut ListStatus,
) -> Option<String> {
    let name = list.name.get_ref();
    let meta = store.read_meta(name, url);
    status.apply_meta(meta.as_ref());
    let cached = meta
        .as_ref()
        .filter(|m| m.has_body())
        .map(|_| store.read_list(name));
    match cached {
        Some(Ok(bytes)) => Some(into_text(bytes)),
        Some(Err(e)) => {
            tracing::warn!(list = %name, error = %e, "cached copy unreadable; the list waits for a download");
            status.error = Some(format!(
                "cached copy unreadable ({e}); not served until downloaded"
            ));
            None
        }
        None => {
            status.error = Some("no cached copy yet; not served until downloaded".into());
            None
        }
    }
}

/// A list with nothing of it to read still has the config's own rules of it: its keywords.
fn keywords_only(
    config: &Config,
    list: &ListConfig,
    info: ListInfo,
) -> Result<CompiledList, ConfigError> {
    compile_list(info, "", Format::Domains, 0, &list.keywords)
        .map(|c| c.list)
        .map_err(|e| {
            config
                .origin
                .invalid(list.name.span().start, "lists", e.to_string())
        })
}

/// The client groups a configuration defines.
pub fn groups_of(config: &Config) -> Result<Groups, ConfigError> {
    let mut groups = Groups::default();
    for (name, nets) in &config.groups {
        let id = groups
            .add(name)
            .ok_or_else(|| config.origin.invalid(0, "groups", "too many groups"))?;
        for net in nets {
            groups.add_net(*net.get_ref(), id);
        }
    }
    Ok(groups)
}

/// What the rule set records about `list`: name, source and the groups it applies to.
pub fn list_info(config: &Config, list: &ListConfig) -> Result<ListInfo, ConfigError> {
    Ok(list_info_with(config, list, &groups_of(config)?))
}

fn list_info_with(config: &Config, list: &ListConfig, groups: &Groups) -> ListInfo {
    let groups: GroupMask = match &list.groups {
        None => ALL_GROUPS,
        Some(gs) => gs
            .iter()
            .map(|g| groups.id(g.get_ref()).map_or(0, |id| id.mask()))
            .fold(0, |a, b| a | b),
    };
    let source = match &list.source {
        ListSource::Path(path) => config.resolve(path).display().to_string(),
        ListSource::Url(url) => url.get_ref().clone(),
        ListSource::Inline(_) => config.origin.file.clone(),
    };
    ListInfo {
        name: list.name.get_ref().clone(),
        source,
        groups,
    }
}

/// One list compiled from its text, and how the parse went.
pub struct CompiledSource {
    pub list: CompiledList,
    /// Entries the rule compiler refused are counted as skipped here.
    pub report: ParseReport,
    /// Entries the parser produced (what the sanity guard compares), refused ones included.
    pub parsed_entries: u32,
}

/// One list parsed, its rules collected but its tables not built yet: the text is no longer
/// needed, so a caller can drop it before [`ParsedList::finish`] builds the tables.
pub struct ParsedList {
    builder: ListBuilder,
    pub report: ParseReport,
    /// Entries the parser produced (what the sanity guard compares), refused ones included.
    pub parsed_entries: u32,
}

impl ParsedList {
    /// Compiles the regex and keyword rules (the part that can fail) ahead of [`Self::finish`].
    pub fn compile_patterns(&mut self) -> Result<(), RuleError> {
        self.builder.compile_patterns()
    }

    /// Builds the list's tables.
    pub fn finish(self) -> Result<CompiledSource, RuleError> {
        Ok(CompiledSource {
            list: self.builder.finish()?,
            report: self.report,
            parsed_entries: self.parsed_entries,
        })
    }
}

/// Parses one list's text into a [`ParsedList`]: lines are numbered from `line_base + 1`, and
/// `keywords` (a list's `keywords` setting) are added as substring rules. Rules the parser
/// accepted but the compiler refused (a bad regex) are reported as skipped.
pub fn parse_into_list(
    info: ListInfo,
    text: &str,
    format: Format,
    line_base: u32,
    keywords: &[String],
) -> ParsedList {
    parse_into_list_mapped(info, text, format, &LineMap::Offset(line_base), keywords)
}

/// Where the lines of a list's text are in the file they were written in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineMap {
    /// Line `n` of the text is line `n + offset` of the file.
    Offset(u32),
    /// Line `n` of the text is at `table[n - 1]` (an `inline` string in the config: escapes
    /// and line-ending backslashes make its lines and the file's differ).
    Table(Vec<u32>),
}

impl LineMap {
    pub fn line(&self, line: u32) -> u32 {
        match self {
            LineMap::Offset(offset) => line + offset,
            LineMap::Table(table) => {
                let at = (line as usize)
                    .saturating_sub(1)
                    .min(table.len().saturating_sub(1));
                table.get(at).copied().unwrap_or(line)
            }
        }
    }
}

/// The file line of each line of the TOML string value that starts at byte `opening` of
/// `source`: basic and literal strings, one-line and multi-line, with TOML's escapes (`\n`
/// adds a line without a new file line) and line-ending backslashes (file lines that are no
/// lines of the value), and the newline right after an opening `"""` trimmed.
pub fn inline_lines(source: &str, opening: usize) -> Vec<u32> {
    let mut file_line = crate::config::line_of(source, opening) as u32;
    let rest = source.get(opening..).unwrap_or_default();
    let (delimiter, basic) = match rest.as_bytes() {
        [b'"', b'"', b'"', ..] => ("\"\"\"", true),
        [b'\'', b'\'', b'\'', ..] => ("\'\'\'", false),
        [b'"', ..] => ("\"", true),
        _ => ("\'", false),
    };
    let multi = delimiter.len() == 3;
    let mut body = &rest[delimiter.len()..];
    if multi
        && let Some(after) = body
            .strip_prefix("\r\n")
            .or_else(|| body.strip_prefix('\n'))
    {
        body = after;
        file_line += 1;
    }
    let mut lines = vec![file_line];
    // Bytes, not chars: only ASCII is looked at, and the scan stays linear.
    let bytes = body.as_bytes();
    let blank = |b: u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let mut i = 0;
    while i < bytes.len() && !bytes[i..].starts_with(delimiter.as_bytes()) {
        match bytes[i] {
            b'\\' if basic => match bytes.get(i + 1) {
                Some(b'n') => {
                    lines.push(file_line);
                    i += 2;
                }
                // A line-ending backslash: the value goes on after the blanks that follow.
                Some(&w) if multi && blank(w) => {
                    i += 1;
                    while let Some(&w) = bytes.get(i).filter(|&&w| blank(w)) {
                        file_line += u32::from(w == b'\n');
                        i += 1;
                    }
                }
                _ => i += 2,
            },
            b'\n' => {
                file_line += 1;
                lines.push(file_line);
                i += 1;
            }
            _ => i += 1,
        }
    }
    lines
}

fn parse_into_list_mapped(
    info: ListInfo,
    text: &str,
    format: Format,
    lines: &LineMap,
    keywords: &[String],
) -> ParsedList {
    // Stands in for a parser bug in the tests of the panic containment.
    #[cfg(test)]
    if text.starts_with("!test: panic") {
        panic!("a parser bug");
    }
    let mut builder = ListBuilder::new(info);
    // About a name a line (hosts lines with several names grow it).
    builder.reserve(text.bytes().filter(|&b| b == b'\n').count() + 1);
    let mut rule_errors: Vec<Skipped> = Vec::new();
    let mut report = parse_list(text, format, |line, entry| {
        let line = lines.line(line);
        if let Err(e) = builder.add_entry(line, entry) {
            rule_errors.push(Skipped {
                line,
                text: e.to_string(),
                reason: SkipReason::UnsupportedSyntax,
            });
        }
    });
    let parsed_entries = report.entries;
    for word in keywords {
        builder.add_keyword(0, word);
    }
    for skipped in rule_errors {
        report.entries = report.entries.saturating_sub(1);
        report.skipped += 1;
        *report.skipped_by_reason.entry(skipped.reason).or_default() += 1;
        report.examples.push(skipped);
    }
    ParsedList {
        builder,
        report,
        parsed_entries,
    }
}

/// [`parse_into_list`] and [`ParsedList::finish`]: one list compiled from its text.
pub fn compile_list(
    info: ListInfo,
    text: &str,
    format: Format,
    line_base: u32,
    keywords: &[String],
) -> Result<CompiledSource, RuleError> {
    parse_into_list(info, text, format, line_base, keywords).finish()
}

/// UTF-8 without a copy when it is valid (it nearly always is); lossy otherwise.
fn into_text(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Verdict;
    use crate::policy::groups::GroupId;
    use crate::policy::name::Name;

    fn load(text: &str) -> Loaded {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse(text, "test.toml", dir.path()).unwrap();
        build_policy(&config).unwrap()
    }

    fn blocked_line(loaded: &Loaded, name: &str) -> Option<u32> {
        match loaded
            .policy
            .decide(&Name::parse(name).unwrap(), GroupId::DEFAULT)
        {
            Verdict::Blocked(m) => Some(m.origin.line),
            _ => None,
        }
    }

    #[test]
    fn inline_rules_report_the_config_line_they_are_written_on() {
        let loaded = load(
            "[[upstream.servers]]\nurl = \"udp://127.0.0.1:9\"\n[[lists]]\nname = \"one\"\ninline = \"a.example\\nb.example\"\n[[lists]]\nname = \"multi\"\ninline = \"\"\"\nc.example\nd.example \\\n\n  e.example\\nf.example\ng.example\"\"\"\n[[lists]]\nname = \"literal\"\ninline = '''h.example\ni.example'''\n",
        );
        // A one-line string: every rule is on line 5 (issue 11, item 12: it said 5 and 6).
        assert_eq!(blocked_line(&loaded, "a.example"), Some(5));
        assert_eq!(blocked_line(&loaded, "b.example"), Some(5));
        // `"""` + newline: the value starts on the next line; `\` at a line end joins lines;
        // `\n` splits one.
        assert_eq!(blocked_line(&loaded, "c.example"), Some(9));
        assert_eq!(blocked_line(&loaded, "d.example"), None, "joined with e");
        assert_eq!(blocked_line(&loaded, "f.example"), Some(12));
        assert_eq!(blocked_line(&loaded, "g.example"), Some(13));
        assert_eq!(blocked_line(&loaded, "h.example"), Some(16));
        assert_eq!(blocked_line(&loaded, "i.example"), Some(17));
    }

    #[test]
    fn keywords_of_a_url_list_block_before_its_first_download() {
        let loaded = load(
            "[[upstream.servers]]\nurl = \"udp://127.0.0.1:9\"\n[[lists]]\nname = \"remote\"\nurl = \"https://lists.example/x.txt\"\nkeywords = [\"exfil\"]\n[[lists]]\nname = \"gone\"\npath = \"missing.txt\"\noptional = true\nkeywords = [\"tunnel\"]\n",
        );
        assert!(!loaded.ready(), "no copy of the url list yet");
        assert!(blocked_line(&loaded, "data.exfil.example").is_some());
        assert!(blocked_line(&loaded, "my-tunnel.example").is_some());
        assert!(blocked_line(&loaded, "fine.example").is_none());
    }

    #[test]
    fn a_list_that_panics_fails_alone_and_the_others_load() {
        let loaded = load(
            "[[upstream.servers]]\nurl = \"udp://127.0.0.1:9\"\n[[lists]]\nname = \"bad\"\ninline = \"!test: panic\"\n[[lists]]\nname = \"good\"\ninline = \"evil.example\"\n",
        );
        let bad = loaded.lists.iter().find(|l| l.name == "bad").unwrap();
        assert!(!bad.ready, "{bad:?}");
        assert!(
            bad.error
                .as_deref()
                .is_some_and(|e| e.contains("a parser bug")),
            "{bad:?}"
        );
        assert!(
            !loaded.ready(),
            "a list the operator asked for is not served"
        );
        assert!(blocked_line(&loaded, "evil.example").is_some());
    }

    #[test]
    fn inline_line_table() {
        let src = "x = 1\ninline = \"a\\nb\"\n";
        assert_eq!(inline_lines(src, src.find('"').unwrap()), [2, 2]);
        let src = "inline = '''\na\nb'''";
        assert_eq!(inline_lines(src, src.find('\'').unwrap()), [2, 3]);
        // Multi-byte text and escaped quotes do not end the value early.
        let src = "inline = \"\"\"é\\\"\"\"x\ny\"\"\"\nz = 2\n";
        assert_eq!(inline_lines(src, src.find('"').unwrap()), [1, 2]);
    }
}
