//! Compiled rule sets: immutable values built off the hot path.
//!
//! Deny names (threat lists) are the bulk: ~750k names in a dozen lists. Each list is
//! compiled on its own into a [`CompiledList`], and a [`RuleSet`] holds the lists through
//! `Arc`s, so policy generations share the tables of every list that did not change: a
//! refresh rebuilds and publishes one changed list at a time ([`RuleSet::with_list`]), and
//! what it holds beside the running policy is that one list's tables plus a new union index,
//! never a second copy of everything.
//!
//! A list's names are stored as 64-bit keyed hashes of the normalised name (one random key
//! per process) in a bucketed, sorted array ([`NameTable`](names::NameTable)): 8 bytes of key and 4 of
//! metadata (line and flags) a name, plus a 4-byte offset per bucket of about four names; no
//! string storage and no empty slots. A false match needs a 64-bit collision under the
//! random key. The union index ([`ListIndex`](index::ListIndex)) has the same layout with 4 bytes a distinct
//! name: a 16-bit fingerprint and the mask of the lists holding it. A lookup probes the index
//! once per suffix of the query; only a fingerprint match (a listed name, or about one miss
//! in 16,000) probes the tables of the lists its mask names. The index is rebuilt at every
//! publication by merging the lists' sorted keys (linear, ~10 ms for the shared lists).
//!
//! The operator's allow rules are few and security-relevant, so they are stored as exact
//! strings.

mod allow;
mod entry;
mod hash;
mod index;
mod ips;
mod list;
mod names;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::error::{Fault, HasFault};

use super::groups::{GroupId, GroupMask};
use super::name::Name;

pub use allow::AllowRule;
use allow::AllowSet;
pub use entry::{Entry, MAX_REGEX_LEN};
use index::{ListIndex, SHARED_BIT, count_distinct};
pub use list::{CompiledList, ListBuilder};
use names::{F_IMPORTANT, F_SUBDOMAINS, LINE_MASK, parents};

/// Index of a list (source) in a [`RuleSet`].
pub type ListId = u16;

const MAX_LISTS: usize = 1 << 12;

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("regex /{pattern}/ is invalid or too large: {reason}")]
    BadRegex { pattern: String, reason: String },
    #[error("the regex rules together exceed the compiled size limit: {0}")]
    RegexSetTooLarge(String),
    #[error("keyword rules could not be compiled: {0}")]
    Keywords(String),
    #[error("more than {MAX_LISTS} lists")]
    TooManyLists,
    #[error("list {0} was added compiled and takes no more entries")]
    Sealed(ListId),
}

impl HasFault for RuleError {
    fn fault(&self) -> Fault {
        // Rules come from the operator's config or from list publishers; neither is
        // the querying client. Treated as configuration/upstream input.
        Fault::Upstream
    }
}

/// A name-rule hit: which list, where in the queried name, and the packed metadata.
#[derive(Debug, Clone, Copy)]
struct Hit {
    list: ListId,
    suffix_start: u8,
    meta: u32,
}

/// Where a rule came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub list: ListId,
    /// 1-based line in the list; 0 when the rule came from a config key.
    pub line: u32,
}

/// Which kind of rule matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// A name and all its subdomains.
    NameAndSubdomains,
    /// `=name`: that name only.
    Exact,
    /// `/regex/` over the whole normalised name.
    Regex,
    /// A substring of the normalised name.
    Keyword,
}

impl RuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::NameAndSubdomains => "name_and_subdomains",
            RuleKind::Exact => "exact",
            RuleKind::Regex => "regex",
            RuleKind::Keyword => "keyword",
        }
    }
}

/// A matched list rule (deny, or a list's `@@` exception).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListMatch {
    pub kind: RuleKind,
    pub origin: Origin,
    /// The rule as it matched: the listed name, `/pattern/` or the keyword.
    pub rule: String,
    pub important: bool,
}

impl ListMatch {
    /// How a decision names this rule, in logs, refusals and EDE texts alike:
    /// `exact rule ads.example of list urlhaus`; `{:#}` adds the rule's line in the list.
    pub fn described<'a>(&'a self, rules: &'a RuleSet) -> DescribedMatch<'a> {
        self.described_in(
            rules
                .list(self.origin.list)
                .map_or("?", |l| l.name.as_str()),
        )
    }

    /// [`ListMatch::described`] with the list's name already looked up.
    pub fn described_in<'a>(&'a self, list: &'a str) -> DescribedMatch<'a> {
        DescribedMatch {
            matched: self,
            list,
        }
    }
}

/// [`ListMatch::described`].
pub struct DescribedMatch<'a> {
    matched: &'a ListMatch,
    list: &'a str,
}

impl fmt::Display for DescribedMatch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.matched;
        write!(
            f,
            "{} rule {} of list {}",
            m.kind.as_str(),
            m.rule,
            self.list
        )?;
        if f.alternate() {
            write!(f, " (line {})", m.origin.line)?;
        }
        Ok(())
    }
}

/// Metadata about a list kept beside its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListInfo {
    pub name: String,
    /// Path, URL or `inline`.
    pub source: String,
    pub groups: GroupMask,
}

/// Heap bytes of a rule set's name tables and union index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableBytes {
    /// Every list's deny and exception tables.
    pub lists: usize,
    /// The union index over the deny names.
    pub index: usize,
}

/// An immutable, compiled rule set: threat lists, list exceptions and operator allow rules.
pub struct RuleSet {
    /// In configuration order: a [`ListId`] is an index here.
    lists: Vec<Arc<CompiledList>>,
    index: ListIndex,
    /// Distinct deny names over all lists, counted when first asked for.
    distinct: std::sync::OnceLock<usize>,
    /// Some list names a whole top-level domain: the last label of a query is looked up too.
    has_single_label: bool,
    exceptions_single_label: bool,
    /// The lists that have exceptions, regex rules, keywords, IP entries.
    with_exceptions: Box<[ListId]>,
    with_regex: Box<[ListId]>,
    with_keywords: Box<[ListId]>,
    with_ips: Box<[ListId]>,
    allow: Arc<AllowSet>,
}

fn list_ids(lists: &[Arc<CompiledList>], has: impl Fn(&CompiledList) -> bool) -> Box<[ListId]> {
    lists
        .iter()
        .enumerate()
        .filter(|(_, l)| has(l))
        .map(|(id, _)| id as ListId)
        .collect()
}

impl RuleSet {
    /// A rule set with nothing in it.
    pub fn empty() -> RuleSet {
        RuleSetBuilder::new()
            .build()
            .expect("an empty rule set always builds")
    }

    fn assemble(lists: Vec<Arc<CompiledList>>, allow: Arc<AllowSet>) -> RuleSet {
        RuleSet {
            index: ListIndex::build(&lists),
            distinct: std::sync::OnceLock::new(),
            has_single_label: lists.iter().any(|l| l.deny.has_single_label),
            exceptions_single_label: lists.iter().any(|l| l.exceptions.has_single_label),
            with_exceptions: list_ids(&lists, |l| !l.exceptions.is_empty()),
            with_regex: list_ids(&lists, |l| l.regex.is_some()),
            with_keywords: list_ids(&lists, |l| l.keywords.is_some()),
            with_ips: list_ids(&lists, |l| !l.ips.is_empty()),
            lists,
            allow,
        }
    }

    /// This rule set with list `id` replaced by `list`: every other list's tables and the
    /// allow rules are shared, not copied; only the union index is built anew. The caller
    /// publishes the result whole, so a query sees either the old or the new list.
    ///
    /// # Panics
    /// When there is no list `id`.
    pub fn with_list(&self, id: ListId, list: Arc<CompiledList>) -> RuleSet {
        let mut lists = self.lists.clone();
        lists[usize::from(id)] = list;
        RuleSet::assemble(lists, self.allow.clone())
    }

    /// Every list's metadata, in configuration order.
    pub fn lists(&self) -> impl ExactSizeIterator<Item = &ListInfo> {
        self.lists.iter().map(|l| &l.info)
    }

    pub fn list(&self, id: ListId) -> Option<&ListInfo> {
        self.lists.get(usize::from(id)).map(|l| &l.info)
    }

    /// The id of the list named `name`.
    pub fn list_id(&self, name: &str) -> Option<ListId> {
        self.lists
            .iter()
            .position(|l| l.info.name == name)
            .map(|id| id as ListId)
    }

    /// The compiled rules of list `id` (shared with other generations until it changes).
    pub fn list_rules(&self, id: ListId) -> Option<&Arc<CompiledList>> {
        self.lists.get(usize::from(id))
    }

    /// Distinct deny names (exact and name-and-subdomains) over all lists. Counted by
    /// [`RuleSetBuilder::build`]; after [`Self::with_list`], when first asked for (about
    /// 10 ms for the shared lists).
    pub fn deny_name_count(&self) -> usize {
        *self
            .distinct
            .get_or_init(|| count_distinct(&self.lists, &self.index))
    }

    /// Heap bytes of the name tables and the union index.
    pub fn table_bytes(&self) -> TableBytes {
        TableBytes {
            lists: self.lists.iter().map(|l| l.table_bytes()).sum(),
            index: self.index.heap_bytes(),
        }
    }

    pub fn allow_rules(&self) -> &[AllowRule] {
        &self.allow.rules
    }

    /// The operator allow rule that names `name` for `group`, if any.
    pub fn allowed_by(&self, name: &Name, group: GroupId) -> Option<&AllowRule> {
        self.allow.lookup(name, group.mask())
    }

    /// Every operator allow rule that names `name` for `group`, most specific first.
    pub fn allow_rules_for<'a>(
        &'a self,
        name: &'a Name,
        group: GroupId,
    ) -> impl Iterator<Item = &'a AllowRule> + 'a {
        self.allow.matching(name, group.mask())
    }

    /// A list `@@` exception covering `name`: the shortest listed parent first, then the
    /// first list in configuration order.
    pub fn exception(&self, name: &Name, group: GroupId) -> Option<ListMatch> {
        if self.with_exceptions.is_empty() {
            return None;
        }
        let mask = group.mask();
        for (start, hash, covers) in parents(name.as_str(), self.exceptions_single_label) {
            for &id in &self.with_exceptions {
                let list = &self.lists[usize::from(id)];
                if list.info.groups & mask == 0 {
                    continue;
                }
                if let Some(meta) = list.exceptions.get(hash)
                    && meta & covers != 0
                {
                    return Some(name_match(
                        name,
                        Hit {
                            list: id,
                            suffix_start: start,
                            meta,
                        },
                    ));
                }
            }
        }
        None
    }

    /// The broadest listed name covering `name` for `group`; `important_only` restricts to
    /// `$important` rules. Parents are probed from the shortest up, so a deep name under a
    /// listed one costs as many probes as the listed name has labels. At one parent, the
    /// first list (in configuration order) whose rule covers the name is reported.
    #[inline]
    fn deny_hit(&self, name: &Name, mask: GroupMask, important_only: bool) -> Option<Hit> {
        if self.index.is_empty() {
            return None;
        }
        for (start, hash, covers) in parents(name.as_str(), self.has_single_label) {
            let mut holders = self.index.get(hash);
            if holders == 0 {
                continue;
            }
            while holders != 0 {
                let bit = holders.trailing_zeros() as usize;
                holders &= holders - 1;
                let ids = if bit == SHARED_BIT {
                    SHARED_BIT..self.lists.len()
                } else {
                    bit..bit + 1
                };
                for id in ids {
                    let list = &self.lists[id];
                    if list.info.groups & mask == 0 {
                        continue;
                    }
                    if let Some(meta) = list.deny.get(hash)
                        && meta & covers != 0
                        && (!important_only || meta & F_IMPORTANT != 0)
                    {
                        return Some(Hit {
                            list: id as ListId,
                            suffix_start: start,
                            meta,
                        });
                    }
                }
            }
        }
        None
    }

    /// The deny rule that covers `name` for `group`. `important_only` asks only for
    /// `$important` rules (which beat list exceptions).
    pub fn denied_by(
        &self,
        name: &Name,
        group: GroupId,
        important_only: bool,
    ) -> Option<ListMatch> {
        let mask = group.mask();
        if let Some(hit) = self.deny_hit(name, mask, important_only) {
            return Some(name_match(name, hit));
        }
        if important_only {
            return None;
        }
        let text = name.as_str();
        for &id in &self.with_regex {
            let list = &self.lists[usize::from(id)];
            if list.info.groups & mask == 0 {
                continue;
            }
            let Some(rx) = &list.regex else { continue };
            if let Some(i) = rx.matcher.matches(text).iter().next() {
                return Some(ListMatch {
                    kind: RuleKind::Regex,
                    origin: Origin {
                        list: id,
                        line: rx.lines[i],
                    },
                    rule: format!("/{}/", rx.patterns[i]),
                    important: false,
                });
            }
        }
        for &id in &self.with_keywords {
            let list = &self.lists[usize::from(id)];
            if list.info.groups & mask == 0 {
                continue;
            }
            let Some(kw) = &list.keywords else { continue };
            if let Some(m) = kw.matcher.find_overlapping_iter(text).next() {
                let i = m.pattern().as_usize();
                return Some(ListMatch {
                    kind: RuleKind::Keyword,
                    origin: Origin {
                        list: id,
                        line: kw.lines[i],
                    },
                    rule: kw.patterns[i].clone(),
                    important: false,
                });
            }
        }
        None
    }

    /// The `ips` list entry covering an answer address, if any: the most specific network
    /// over all lists (the first list on a tie).
    pub fn denied_ip(&self, ip: IpAddr, group: GroupId) -> Option<Origin> {
        let mask = group.mask();
        let mut best: Option<(u8, Origin)> = None;
        for &id in &self.with_ips {
            let list = &self.lists[usize::from(id)];
            if list.info.groups & mask == 0 {
                continue;
            }
            if let Some((len, line)) = list.ips.lookup(ip)
                && best.is_none_or(|(best_len, _)| len > best_len)
            {
                best = Some((len, Origin { list: id, line }));
            }
        }
        best.map(|(_, origin)| origin)
    }
}

fn name_match(name: &Name, hit: Hit) -> ListMatch {
    let rule = name.as_str()[usize::from(hit.suffix_start)..].to_owned();
    let exact_only = hit.meta & F_SUBDOMAINS == 0;
    ListMatch {
        kind: if exact_only {
            RuleKind::Exact
        } else {
            RuleKind::NameAndSubdomains
        },
        origin: Origin {
            list: hit.list,
            line: hit.meta & LINE_MASK,
        },
        rule: if exact_only { format!("={rule}") } else { rule },
        important: hit.meta & F_IMPORTANT != 0,
    }
}

enum Slot {
    Open(Box<ListBuilder>),
    Compiled(Arc<CompiledList>),
}

/// Collects lists (open ones taking entries, or already compiled ones) and the operator's
/// allow rules, then assembles them into a [`RuleSet`].
pub struct RuleSetBuilder {
    lists: Vec<Slot>,
    allow: AllowSet,
}

impl Default for RuleSetBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl RuleSetBuilder {
    pub fn new() -> Self {
        RuleSetBuilder {
            lists: Vec::new(),
            allow: AllowSet::default(),
        }
    }

    /// Adds an empty list that takes entries ([`Self::add_entry`]).
    pub fn add_list(&mut self, info: ListInfo) -> Result<ListId, RuleError> {
        self.push(Slot::Open(Box::new(ListBuilder::new(info))))
    }

    /// Adds a list compiled on its own ([`ListBuilder`]); it takes no more entries.
    pub fn add_compiled(&mut self, list: Arc<CompiledList>) -> Result<ListId, RuleError> {
        self.push(Slot::Compiled(list))
    }

    fn push(&mut self, slot: Slot) -> Result<ListId, RuleError> {
        if self.lists.len() >= MAX_LISTS {
            return Err(RuleError::TooManyLists);
        }
        self.lists.push(slot);
        Ok((self.lists.len() - 1) as ListId)
    }

    fn open(&mut self, list: ListId) -> Result<&mut ListBuilder, RuleError> {
        match &mut self.lists[usize::from(list)] {
            Slot::Open(builder) => Ok(builder),
            Slot::Compiled(_) => Err(RuleError::Sealed(list)),
        }
    }

    /// Adds one parsed list entry. An invalid regex is returned as an error for the
    /// caller's skip report; nothing is half-added.
    ///
    /// # Panics
    /// When there is no list `list`.
    pub fn add_entry(
        &mut self,
        list: ListId,
        line: u32,
        entry: Entry<'_>,
    ) -> Result<(), RuleError> {
        self.open(list)?.add_entry(line, entry)
    }

    /// A substring rule: any name containing `word` is denied.
    ///
    /// # Panics
    /// When `list` was added compiled, or there is no such list.
    pub fn add_keyword(&mut self, list: ListId, line: u32, word: &str) {
        self.open(list)
            .expect("keywords go to a list added with add_list")
            .add_keyword(line, word);
    }

    pub fn add_allow(&mut self, rule: AllowRule) {
        self.allow.add(rule);
    }

    pub fn build(self) -> Result<RuleSet, RuleError> {
        let lists = self
            .lists
            .into_iter()
            .map(|slot| match slot {
                Slot::Open(builder) => builder.finish().map(Arc::new),
                Slot::Compiled(list) => Ok(list),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let set = RuleSet::assemble(lists, Arc::new(self.allow));
        // Built off the hot path: count now, so that logging the count never costs a query.
        set.deny_name_count();
        Ok(set)
    }
}
