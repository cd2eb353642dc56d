//! One list compiled on its own: its name tables, pattern rules and IP entries, and the
//! builder that collects them while the list is parsed.

use aho_corasick::AhoCorasick;
use ipnet::IpNet;
use regex::RegexSet;

use super::ips::IpTable;
use super::names::{F_EXACT, F_IMPORTANT, F_SUBDOMAINS, NameTable, NameTableBuilder, pack};
use super::{Entry, ListInfo, MAX_REGEX_LEN, RuleError};

/// The compiled-size cap for one list's regex rules.
const REGEX_SIZE_LIMIT: usize = 8 << 20;
/// Names unlike each other in every way a rule could look at (length, labels, digits, `-`,
/// `_`): a regex that matches them all matches every name.
const EVERY_NAME_PROBES: [&str; 5] = ["a", "0.b", "x-y.z", "_srv.q9", "portcullis-probe.invalid"];

pub(super) struct PatternRules<M> {
    pub(super) matcher: M,
    pub(super) lines: Vec<u32>,
    pub(super) patterns: Vec<String>,
}

/// One list, compiled: its deny names, `@@` exceptions, regex and keyword rules and IP
/// entries. Immutable; shared (`Arc`) by every policy generation until the list changes.
pub struct CompiledList {
    pub(super) info: ListInfo,
    pub(super) deny: NameTable,
    pub(super) exceptions: NameTable,
    pub(super) regex: Option<PatternRules<RegexSet>>,
    pub(super) keywords: Option<PatternRules<AhoCorasick>>,
    pub(super) ips: IpTable,
}

impl CompiledList {
    /// A list with no rules (not served yet: no cached copy, or an optional file that is absent).
    pub fn empty(info: ListInfo) -> CompiledList {
        CompiledList {
            info,
            deny: NameTable::default(),
            exceptions: NameTable::default(),
            regex: None,
            keywords: None,
            ips: IpTable::default(),
        }
    }

    pub fn info(&self) -> &ListInfo {
        &self.info
    }

    /// Distinct deny names (exact and name-and-subdomains) of this list.
    pub fn deny_name_count(&self) -> usize {
        self.deny.len()
    }

    /// Bytes of the name tables (deny and exceptions).
    pub fn table_bytes(&self) -> usize {
        self.deny.heap_bytes() + self.exceptions.heap_bytes()
    }
}

impl std::fmt::Debug for CompiledList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledList")
            .field("info", &self.info)
            .field("deny", &self.deny.len())
            .field("exceptions", &self.exceptions.len())
            .finish_non_exhaustive()
    }
}

/// Collects one list's rules, then compiles them into a [`CompiledList`].
pub struct ListBuilder {
    info: ListInfo,
    deny: NameTableBuilder,
    exceptions: NameTableBuilder,
    regex: Vec<(String, u32)>,
    keywords: Vec<(String, u32)>,
    ips: Vec<(IpNet, u32)>,
    /// Regex and keyword rules once compiled ([`Self::compile_patterns`]).
    patterns: Option<Patterns>,
}

type Patterns = (
    Option<PatternRules<RegexSet>>,
    Option<PatternRules<AhoCorasick>>,
);

impl ListBuilder {
    pub fn new(info: ListInfo) -> ListBuilder {
        ListBuilder {
            info,
            deny: NameTableBuilder::default(),
            exceptions: NameTableBuilder::default(),
            regex: Vec::new(),
            keywords: Vec::new(),
            ips: Vec::new(),
            patterns: None,
        }
    }

    /// Room for about `names` deny names, so that collecting them does not grow (and leave
    /// freed steps behind) as they come. Reserved memory that is never written costs no RSS.
    pub fn reserve(&mut self, names: usize) {
        self.deny.reserve(names);
    }

    /// Adds one parsed list entry. An invalid regex is returned as an error for the
    /// caller's skip report; nothing is half-added.
    pub fn add_entry(&mut self, line: u32, entry: Entry<'_>) -> Result<(), RuleError> {
        match entry {
            Entry::Block(name) => self.deny.insert(name.as_str(), pack(line, F_SUBDOMAINS)),
            Entry::BlockExact(name) => self.deny.insert(name.as_str(), pack(line, F_EXACT)),
            Entry::BlockImportant(name) => self
                .deny
                .insert(name.as_str(), pack(line, F_SUBDOMAINS | F_IMPORTANT)),
            Entry::Allow(name) => self
                .exceptions
                .insert(name.as_str(), pack(line, F_SUBDOMAINS)),
            Entry::BlockRegex(pattern) => {
                if pattern.len() > MAX_REGEX_LEN {
                    return Err(RuleError::BadRegex {
                        pattern: pattern.chars().take(64).collect(),
                        reason: format!("longer than {MAX_REGEX_LEN} characters"),
                    });
                }
                let compiled = regex::RegexBuilder::new(pattern)
                    .size_limit(REGEX_SIZE_LIMIT / 8)
                    .build()
                    .map_err(|e| RuleError::BadRegex {
                        pattern: pattern.to_owned(),
                        reason: e.to_string(),
                    })?;
                // `/./`, `/.*/`, `/\w/`: a rule that blocks every name is a mistake, as an
                // empty keyword is.
                if EVERY_NAME_PROBES.iter().all(|n| compiled.is_match(n)) {
                    return Err(RuleError::BadRegex {
                        pattern: pattern.to_owned(),
                        reason: "it matches every name".into(),
                    });
                }
                self.regex.push((pattern.to_owned(), line));
            }
            Entry::Ip(net) => self.ips.push((net, line)),
        }
        Ok(())
    }

    /// A substring rule: any name containing `word` is denied.
    pub fn add_keyword(&mut self, line: u32, word: &str) {
        self.keywords.push((word.to_ascii_lowercase(), line));
    }

    /// Compiles the regex and keyword rules: the part of [`Self::finish`] that can fail, for
    /// a caller that must know before it commits to the list (the refresher, before it caches
    /// a download). Entries added afterwards are not allowed.
    pub fn compile_patterns(&mut self) -> Result<(), RuleError> {
        if self.patterns.is_some() {
            return Ok(());
        }
        let regex = if self.regex.is_empty() {
            None
        } else {
            let matcher = regex::RegexSetBuilder::new(self.regex.iter().map(|(p, _)| p))
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| RuleError::RegexSetTooLarge(e.to_string()))?;
            let (patterns, lines) = std::mem::take(&mut self.regex).into_iter().unzip();
            Some(PatternRules {
                matcher,
                lines,
                patterns,
            })
        };
        let keywords = if self.keywords.is_empty() {
            None
        } else {
            let matcher = AhoCorasick::new(self.keywords.iter().map(|(w, _)| w))
                .map_err(|e| RuleError::Keywords(e.to_string()))?;
            let (patterns, lines) = std::mem::take(&mut self.keywords).into_iter().unzip();
            Some(PatternRules {
                matcher,
                lines,
                patterns,
            })
        };
        self.patterns = Some((regex, keywords));
        Ok(())
    }

    pub fn finish(mut self) -> Result<CompiledList, RuleError> {
        self.compile_patterns()?;
        let (regex, keywords) = self.patterns.take().expect("compiled above");
        let mut ips = IpTable::default();
        for (net, line) in self.ips {
            ips.insert(net, line);
        }
        Ok(CompiledList {
            info: self.info,
            deny: self.deny.finish(),
            exceptions: self.exceptions.finish(),
            regex,
            keywords,
            ips,
        })
    }
}
