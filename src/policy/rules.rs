//! Compiled rule sets: immutable values built off the hot path.
//!
//! Deny names (threat lists) are the bulk: ~750k names. They are stored as a
//! hash table of 64-bit keyed hashes of the normalised name, each with a packed
//! 64-bit word of metadata (list, line, groups, flags): 16 bytes a slot, no
//! string storage. A false match needs a 64-bit collision under a per-process
//! random key, and could only block, never allow. The operator's allow rules are
//! few and security-relevant, so they are stored as exact strings.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::net::IpAddr;

use aho_corasick::AhoCorasick;
use ipnet::IpNet;
use regex::RegexSet;

use super::groups::{GroupId, GroupMask};
use super::name::Name;
use crate::error::{Fault, HasFault};
use crate::lists::parse::Entry;

/// Index of a list (source) in a [`RuleSet`].
pub type ListId = u16;

/// Longest regex rule accepted, and the compiled-size cap for the whole set.
pub const MAX_REGEX_LEN: usize = 512;
const REGEX_SIZE_LIMIT: usize = 8 << 20;
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
}

impl HasFault for RuleError {
    fn fault(&self) -> Fault {
        // Rules come from the operator's config or from list publishers; neither is
        // the querying client. Treated as configuration/upstream input.
        Fault::Upstream
    }
}

// ---- packed metadata of a deny/exception name ------------------------------

const LINE_BITS: u64 = 32;
const LIST_SHIFT: u64 = 32;
const LIST_MASK: u64 = (1 << 12) - 1;
const GROUP_SHIFT: u64 = 44;
const GROUP_MASK_BITS: u64 = 0xffff;
const F_SUBDOMAINS: u64 = 1 << 60;
const F_EXACT: u64 = 1 << 61;
const F_IMPORTANT: u64 = 1 << 62;

fn pack(list: ListId, line: u32, groups: GroupMask, flags: u64) -> u64 {
    u64::from(line)
        | (u64::from(list) & LIST_MASK) << LIST_SHIFT
        | u64::from(groups) << GROUP_SHIFT
        | flags
}

/// Identity hasher: keys are already uniformly distributed hashes.
#[derive(Default)]
struct IdHasher(u64);
impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("IdHasher only hashes u64 keys")
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A set of names, each covering itself (exact) and/or its subdomains.
struct NameTable {
    hasher: foldhash::fast::RandomState,
    map: HashMap<u64, u64, BuildHasherDefault<IdHasher>>,
    /// Lists rarely name a whole top-level domain; when none does, the last
    /// suffix of every query is not looked up.
    has_single_label: bool,
}

/// A name-rule hit: where in the queried name, and the packed metadata.
#[derive(Debug, Clone, Copy)]
struct Hit {
    suffix_start: u8,
    meta: u64,
}

impl NameTable {
    fn new() -> Self {
        NameTable {
            hasher: foldhash::fast::RandomState::default(),
            map: HashMap::default(),
            has_single_label: false,
        }
    }

    fn insert(&mut self, name: &str, meta: u64) {
        self.has_single_label |= !name.contains('.');
        let key = self.hasher.hash_one(name.as_bytes());
        self.map
            .entry(key)
            .and_modify(|m| {
                // Keep the first provenance; widen groups and flags.
                *m |=
                    meta & ((GROUP_MASK_BITS << GROUP_SHIFT) | F_SUBDOMAINS | F_EXACT | F_IMPORTANT)
            })
            .or_insert(meta);
    }

    /// The broadest rule covering `name` for `group`; `important_only` restricts to
    /// `$important` rules. Parents are probed from the shortest up, so a deep name
    /// under a listed one costs as many probes as the listed name has labels, not
    /// as many as the query has.
    fn lookup(&self, name: &Name, group: GroupMask, important_only: bool) -> Option<Hit> {
        if self.map.is_empty() {
            return None;
        }
        let full = name.as_str();
        // Start offsets of every suffix, longest first (a name has at most 127 labels).
        let mut starts = [0u8; 128];
        let mut count = 1;
        for (i, b) in full.bytes().enumerate() {
            if b == b'.' {
                starts[count] = (i + 1) as u8;
                count += 1;
            }
        }
        // The top-level label alone only when some rule names a whole TLD.
        let shortest = if self.has_single_label || count == 1 {
            count
        } else {
            count - 1
        };
        for (i, &start) in starts[..shortest].iter().enumerate().rev() {
            let suffix = &full[usize::from(start)..];
            let key = self.hasher.hash_one(suffix.as_bytes());
            let Some(&meta) = self.map.get(&key) else {
                continue;
            };
            let groups = (meta >> GROUP_SHIFT) as GroupMask;
            let covers = if i == 0 {
                F_SUBDOMAINS | F_EXACT
            } else {
                F_SUBDOMAINS
            };
            if groups & group != 0
                && meta & covers != 0
                && (!important_only || meta & F_IMPORTANT != 0)
            {
                return Some(Hit {
                    suffix_start: start,
                    meta,
                });
            }
        }
        None
    }

    fn len(&self) -> usize {
        self.map.len()
    }
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

/// Metadata about a list kept beside its rules.
#[derive(Debug, Clone)]
pub struct ListInfo {
    pub name: String,
    /// Path, URL or `inline`.
    pub source: String,
    pub groups: GroupMask,
}

/// An operator allow rule (from `allowlist.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    /// The host pattern as written: `api.example.com` or `*.example.com`.
    pub host: String,
    /// Ports the proxy may connect to.
    pub ports: Vec<u16>,
    pub groups: GroupMask,
    /// May this name resolve to, and be dialled at, a private address?
    pub private: bool,
    /// File and line the rule came from, for explanations.
    pub file: String,
    pub line: u32,
    pub comment: Option<String>,
}

impl AllowRule {
    /// The name a `*.name` rule is anchored at, or the exact host.
    fn base(&self) -> (&str, bool) {
        match self.host.strip_prefix("*.") {
            Some(base) => (base, true),
            None => (&self.host, false),
        }
    }
}

/// Operator allow rules: `host` (that name only) or `*.host` (any subdomain, not the name itself).
#[derive(Debug, Default)]
struct AllowSet {
    rules: Vec<AllowRule>,
    exact: HashMap<Box<str>, Vec<u32>, foldhash::fast::RandomState>,
    wildcard: HashMap<Box<str>, Vec<u32>, foldhash::fast::RandomState>,
    /// Labels of the longest wildcard base: parents with more labels cannot match,
    /// so deep names cost one or two probes, not one per label.
    wildcard_max_labels: usize,
    /// The last two labels of every rule's name: a name whose last two labels are
    /// not among them matches no rule, and costs one probe instead of several.
    tails: std::collections::HashSet<Box<str>, foldhash::fast::RandomState>,
}

/// The last two labels of a name (the whole name when it has fewer).
fn tail(name: &str) -> &str {
    match name.rfind('.') {
        Some(last) => match name[..last].rfind('.') {
            Some(before) => &name[before + 1..],
            None => name,
        },
        None => name,
    }
}

impl AllowSet {
    fn add(&mut self, rule: AllowRule) {
        let idx = self.rules.len() as u32;
        let (base, wild) = rule.base();
        self.tails.insert(tail(base).into());
        let map = if wild {
            self.wildcard_max_labels = self.wildcard_max_labels.max(base.split('.').count());
            &mut self.wildcard
        } else {
            &mut self.exact
        };
        map.entry(base.into()).or_default().push(idx);
        self.rules.push(rule);
    }

    fn lookup(&self, name: &Name, group: GroupMask) -> Option<&AllowRule> {
        if self.rules.is_empty() || !self.tails.contains(tail(name.as_str())) {
            return None;
        }
        let pick = |idxs: Option<&Vec<u32>>| {
            idxs.into_iter()
                .flatten()
                .map(|&i| &self.rules[i as usize])
                .find(|r| r.groups & group != 0)
        };
        if let Some(rule) = pick(self.exact.get(name.as_str())) {
            return Some(rule);
        }
        self.wildcard_parents(name)
            .find_map(|parent| pick(self.wildcard.get(parent)))
    }

    /// The parents of `name` a wildcard rule could be anchored at, most specific first.
    fn wildcard_parents<'a>(&self, name: &'a Name) -> impl Iterator<Item = &'a str> + use<'a> {
        let labels = name.label_count();
        let max = self.wildcard_max_labels;
        name.suffixes()
            .enumerate()
            .skip(1)
            .filter(move |(i, _)| labels - i <= max)
            .map(|(_, parent)| parent)
    }

    /// Every rule naming `name` for `group`: exact rules first, then wildcards from the
    /// most specific parent. The proxy picks the one that allows its port.
    fn matching<'a>(
        &'a self,
        name: &'a Name,
        group: GroupMask,
    ) -> impl Iterator<Item = &'a AllowRule> + 'a {
        let exact = self.exact.get(name.as_str()).into_iter().flatten();
        let known = self.tails.contains(tail(name.as_str()));
        let wild = self
            .wildcard_parents(name)
            .filter_map(|p| self.wildcard.get(p))
            .flatten();
        exact
            .chain(wild)
            .filter(move |_| known)
            .map(|&i| &self.rules[i as usize])
            .filter(move |r| r.groups & group != 0)
    }
}

/// Addresses and networks from `ips` lists: one hash map per prefix length present,
/// most specific first, so a lookup costs one probe per distinct prefix length
/// (real lists: a handful) instead of a scan over every network.
#[derive(Debug, Default)]
struct IpTable {
    v4: Vec<(u8, IpMap<u32>)>,
    v6: Vec<(u8, IpMap<u128>)>,
}

type IpMap<K> = HashMap<K, (Origin, GroupMask), foldhash::fast::RandomState>;

fn mask_v4(addr: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        addr & (u32::MAX << (32 - u32::from(len)))
    }
}

fn mask_v6(addr: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        addr & (u128::MAX << (128 - u32::from(len)))
    }
}

impl IpTable {
    fn insert(&mut self, net: IpNet, origin: Origin, groups: GroupMask) {
        fn add<K: std::hash::Hash + Eq>(
            maps: &mut Vec<(u8, IpMap<K>)>,
            len: u8,
            key: K,
            origin: Origin,
            groups: GroupMask,
        ) {
            let at = match maps.iter().position(|(l, _)| *l == len) {
                Some(at) => at,
                None => {
                    maps.push((len, IpMap::default()));
                    maps.sort_by_key(|(l, _)| std::cmp::Reverse(*l));
                    maps.iter()
                        .position(|(l, _)| *l == len)
                        .expect("just added")
                }
            };
            // Keep the first origin of a duplicate and widen its groups.
            maps[at]
                .1
                .entry(key)
                .and_modify(|e| e.1 |= groups)
                .or_insert((origin, groups));
        }
        match net.trunc() {
            IpNet::V4(n) => add(
                &mut self.v4,
                n.prefix_len(),
                u32::from(n.addr()),
                origin,
                groups,
            ),
            IpNet::V6(n) => add(
                &mut self.v6,
                n.prefix_len(),
                u128::from(n.addr()),
                origin,
                groups,
            ),
        }
    }

    fn lookup(&self, ip: IpAddr, group: GroupMask) -> Option<Origin> {
        let hit = |&(origin, groups): &(Origin, GroupMask)| (groups & group != 0).then_some(origin);
        match ip {
            IpAddr::V4(v4) => {
                let addr = u32::from(v4);
                self.v4
                    .iter()
                    .find_map(|(len, map)| map.get(&mask_v4(addr, *len)).and_then(hit))
            }
            IpAddr::V6(v6) => {
                let addr = u128::from(v6);
                self.v6
                    .iter()
                    .find_map(|(len, map)| map.get(&mask_v6(addr, *len)).and_then(hit))
            }
        }
    }
}

struct PatternRules<M> {
    matcher: M,
    origins: Vec<(Origin, GroupMask)>,
    patterns: Vec<String>,
}

/// An immutable, compiled rule set: threat lists, list exceptions and operator allow rules.
pub struct RuleSet {
    lists: Vec<ListInfo>,
    deny: NameTable,
    exceptions: NameTable,
    regex: Option<PatternRules<RegexSet>>,
    keywords: Option<PatternRules<AhoCorasick>>,
    allow: AllowSet,
    ips: IpTable,
}

impl RuleSet {
    /// A rule set with nothing in it.
    pub fn empty() -> RuleSet {
        RuleSetBuilder::new()
            .build()
            .expect("an empty rule set always builds")
    }

    pub fn lists(&self) -> &[ListInfo] {
        &self.lists
    }

    pub fn list(&self, id: ListId) -> Option<&ListInfo> {
        self.lists.get(usize::from(id))
    }

    /// Distinct deny names (exact and name-and-subdomains).
    pub fn deny_name_count(&self) -> usize {
        self.deny.len()
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

    /// A list `@@` exception covering `name`.
    pub fn exception(&self, name: &Name, group: GroupId) -> Option<ListMatch> {
        self.exceptions
            .lookup(name, group.mask(), false)
            .map(|hit| name_match(name, hit))
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
        if let Some(hit) = self.deny.lookup(name, mask, important_only) {
            return Some(name_match(name, hit));
        }
        if important_only {
            return None;
        }
        let text = name.as_str();
        if let Some(rx) = &self.regex {
            for i in rx.matcher.matches(text).iter() {
                let (origin, groups) = rx.origins[i];
                if groups & mask != 0 {
                    return Some(ListMatch {
                        kind: RuleKind::Regex,
                        origin,
                        rule: format!("/{}/", rx.patterns[i]),
                        important: false,
                    });
                }
            }
        }
        if let Some(kw) = &self.keywords {
            for m in kw.matcher.find_overlapping_iter(text) {
                let i = m.pattern().as_usize();
                let (origin, groups) = kw.origins[i];
                if groups & mask != 0 {
                    return Some(ListMatch {
                        kind: RuleKind::Keyword,
                        origin,
                        rule: kw.patterns[i].clone(),
                        important: false,
                    });
                }
            }
        }
        None
    }

    /// The `ips` list entry covering an answer address, if any.
    pub fn denied_ip(&self, ip: IpAddr, group: GroupId) -> Option<Origin> {
        self.ips.lookup(ip, group.mask())
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
            list: ((hit.meta >> LIST_SHIFT) & LIST_MASK) as ListId,
            line: (hit.meta & ((1 << LINE_BITS) - 1)) as u32,
        },
        rule: if exact_only { format!("={rule}") } else { rule },
        important: hit.meta & F_IMPORTANT != 0,
    }
}

/// Collects rules, then compiles them into a [`RuleSet`].
pub struct RuleSetBuilder {
    lists: Vec<ListInfo>,
    deny: NameTable,
    exceptions: NameTable,
    regex: Vec<(String, Origin, GroupMask)>,
    keywords: Vec<(String, Origin, GroupMask)>,
    allow: AllowSet,
    ips: Vec<(IpNet, Origin, GroupMask)>,
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
            deny: NameTable::new(),
            exceptions: NameTable::new(),
            regex: Vec::new(),
            keywords: Vec::new(),
            allow: AllowSet::default(),
            ips: Vec::new(),
        }
    }

    /// Reserve room for about `names` deny names (avoids rehashing while loading).
    pub fn reserve(&mut self, names: usize) {
        self.deny.map.reserve(names);
    }

    pub fn add_list(&mut self, info: ListInfo) -> Result<ListId, RuleError> {
        if self.lists.len() >= MAX_LISTS {
            return Err(RuleError::TooManyLists);
        }
        self.lists.push(info);
        Ok((self.lists.len() - 1) as ListId)
    }

    /// Adds one parsed list entry. An invalid regex is returned as an error for the
    /// caller's skip report; nothing is half-added.
    pub fn add_entry(
        &mut self,
        list: ListId,
        line: u32,
        entry: Entry<'_>,
    ) -> Result<(), RuleError> {
        let groups = self.lists[usize::from(list)].groups;
        let origin = Origin { list, line };
        match entry {
            Entry::Block(name) => self
                .deny
                .insert(name.as_str(), pack(list, line, groups, F_SUBDOMAINS)),
            Entry::BlockExact(name) => self
                .deny
                .insert(name.as_str(), pack(list, line, groups, F_EXACT)),
            Entry::BlockImportant(name) => self.deny.insert(
                name.as_str(),
                pack(list, line, groups, F_SUBDOMAINS | F_IMPORTANT),
            ),
            Entry::Allow(name) => self
                .exceptions
                .insert(name.as_str(), pack(list, line, groups, F_SUBDOMAINS)),
            Entry::BlockRegex(pattern) => {
                if pattern.len() > MAX_REGEX_LEN {
                    return Err(RuleError::BadRegex {
                        pattern: pattern.chars().take(64).collect(),
                        reason: format!("longer than {MAX_REGEX_LEN} characters"),
                    });
                }
                regex::RegexBuilder::new(pattern)
                    .size_limit(REGEX_SIZE_LIMIT / 8)
                    .build()
                    .map_err(|e| RuleError::BadRegex {
                        pattern: pattern.to_owned(),
                        reason: e.to_string(),
                    })?;
                self.regex.push((pattern.to_owned(), origin, groups));
            }
            Entry::Ip(net) => self.ips.push((net, origin, groups)),
        }
        Ok(())
    }

    /// A substring rule: any name containing `word` is denied.
    pub fn add_keyword(&mut self, list: ListId, line: u32, word: &str) {
        let groups = self.lists[usize::from(list)].groups;
        self.keywords
            .push((word.to_ascii_lowercase(), Origin { list, line }, groups));
    }

    pub fn add_allow(&mut self, rule: AllowRule) {
        self.allow.add(rule);
    }

    pub fn build(self) -> Result<RuleSet, RuleError> {
        let regex = if self.regex.is_empty() {
            None
        } else {
            let matcher = regex::RegexSetBuilder::new(self.regex.iter().map(|(p, _, _)| p))
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| RuleError::RegexSetTooLarge(e.to_string()))?;
            Some(PatternRules {
                matcher,
                origins: self.regex.iter().map(|&(_, o, g)| (o, g)).collect(),
                patterns: self.regex.into_iter().map(|(p, _, _)| p).collect(),
            })
        };
        let keywords = if self.keywords.is_empty() {
            None
        } else {
            let matcher = AhoCorasick::new(self.keywords.iter().map(|(w, _, _)| w))
                .map_err(|e| RuleError::Keywords(e.to_string()))?;
            Some(PatternRules {
                matcher,
                origins: self.keywords.iter().map(|&(_, o, g)| (o, g)).collect(),
                patterns: self.keywords.into_iter().map(|(w, _, _)| w).collect(),
            })
        };
        let mut ips = IpTable::default();
        for (net, origin, groups) in self.ips {
            ips.insert(net, origin, groups);
        }
        let mut deny = self.deny;
        deny.map.shrink_to_fit();
        Ok(RuleSet {
            lists: self.lists,
            deny,
            exceptions: self.exceptions,
            regex,
            keywords,
            allow: self.allow,
            ips,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::groups::ALL_GROUPS;

    fn name(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    fn set_with(entries: &[(&str, u32)]) -> RuleSet {
        let mut b = RuleSetBuilder::new();
        let list = b
            .add_list(ListInfo {
                name: "threats".into(),
                source: "inline".into(),
                groups: ALL_GROUPS,
            })
            .unwrap();
        for &(line_text, line) in entries {
            let entry = if let Some(rest) = line_text.strip_prefix('=') {
                Entry::BlockExact(name(rest))
            } else if let Some(rest) = line_text.strip_prefix("@@") {
                Entry::Allow(name(rest))
            } else if let Some(rest) = line_text.strip_prefix('!') {
                Entry::BlockImportant(name(rest))
            } else if line_text.starts_with('/') {
                Entry::BlockRegex(line_text.trim_matches('/'))
            } else {
                Entry::Block(name(line_text))
            };
            b.add_entry(list, line, entry).unwrap();
        }
        b.add_keyword(list, 0, "exfil");
        b.build().unwrap()
    }

    const G: GroupId = GroupId::DEFAULT;

    #[test]
    fn name_rules_cover_subdomains_and_report_origin() {
        let set = set_with(&[("evil.com", 7), ("=exact.net", 9)]);
        let m = set.denied_by(&name("a.b.evil.com"), G, false).unwrap();
        assert_eq!(m.rule, "evil.com");
        assert_eq!(m.kind, RuleKind::NameAndSubdomains);
        assert_eq!(m.origin, Origin { list: 0, line: 7 });
        assert!(set.denied_by(&name("evil.com"), G, false).is_some());
        assert!(set.denied_by(&name("notevil.com"), G, false).is_none());
        assert!(set.denied_by(&name("evil.com.example"), G, false).is_none());
        let m = set.denied_by(&name("exact.net"), G, false).unwrap();
        assert_eq!((m.kind, m.rule.as_str()), (RuleKind::Exact, "=exact.net"));
        assert!(set.denied_by(&name("sub.exact.net"), G, false).is_none());
    }

    #[test]
    fn a_top_level_rule_is_looked_up_only_when_one_exists() {
        let without = set_with(&[("evil.com", 1)]);
        assert!(without.denied_by(&name("a.zip"), G, false).is_none());
        let with = set_with(&[("zip", 1)]);
        assert_eq!(
            with.denied_by(&name("a.b.zip"), G, false).unwrap().rule,
            "zip"
        );
    }

    #[test]
    fn the_broadest_listed_parent_is_reported() {
        let set = set_with(&[("example.com", 1), ("ads.example.com", 2)]);
        let m = set.denied_by(&name("x.ads.example.com"), G, false).unwrap();
        assert_eq!((m.rule.as_str(), m.origin.line), ("example.com", 1));
        let m = set.denied_by(&name("ads.example.com"), G, false).unwrap();
        assert_eq!(m.rule, "example.com");
        // An exact rule only ever matches the whole name.
        let set = set_with(&[("=deep.a.example", 1)]);
        assert!(set.denied_by(&name("x.deep.a.example"), G, false).is_none());
        assert!(set.denied_by(&name("deep.a.example"), G, false).is_some());
    }

    #[test]
    fn regex_and_keyword_rules() {
        let set = set_with(&[("/^ad[0-9]+\\./", 3)]);
        let m = set.denied_by(&name("ad42.tracker.net"), G, false).unwrap();
        assert_eq!(
            (m.kind, m.rule.as_str()),
            (RuleKind::Regex, "/^ad[0-9]+\\./")
        );
        assert!(
            set.denied_by(&name("bad42.tracker.net"), G, false)
                .is_none()
        );
        let m = set
            .denied_by(&name("data-exfil.example"), G, false)
            .unwrap();
        assert_eq!((m.kind, m.rule.as_str()), (RuleKind::Keyword, "exfil"));
    }

    #[test]
    fn bad_regex_is_refused_without_side_effects() {
        let mut b = RuleSetBuilder::new();
        let list = b
            .add_list(ListInfo {
                name: "l".into(),
                source: "inline".into(),
                groups: ALL_GROUPS,
            })
            .unwrap();
        assert!(
            b.add_entry(list, 1, Entry::BlockRegex("(unclosed"))
                .is_err()
        );
        let long = "a".repeat(MAX_REGEX_LEN + 1);
        assert!(b.add_entry(list, 2, Entry::BlockRegex(&long)).is_err());
        // A pattern that compiles to something huge is refused too.
        assert!(
            b.add_entry(list, 3, Entry::BlockRegex("\\w{1000}\\w{1000}"))
                .is_err()
        );
        assert!(b.build().unwrap().regex.is_none());
    }

    #[test]
    fn exceptions_and_important() {
        let set = set_with(&[
            ("ads.net", 1),
            ("@@cdn.ads.net", 2),
            ("!tracker.net", 3),
            ("@@x.tracker.net", 4),
        ]);
        assert!(set.exception(&name("a.cdn.ads.net"), G).is_some());
        assert!(set.denied_by(&name("a.cdn.ads.net"), G, true).is_none());
        let imp = set.denied_by(&name("x.tracker.net"), G, true).unwrap();
        assert!(imp.important);
    }

    #[test]
    fn groups_scope_rules() {
        let mut b = RuleSetBuilder::new();
        let agent_only = b
            .add_list(ListInfo {
                name: "agent-list".into(),
                source: "inline".into(),
                groups: GroupId(1).mask(),
            })
            .unwrap();
        b.add_entry(agent_only, 1, Entry::Block(name("scoped.com")))
            .unwrap();
        b.add_entry(agent_only, 2, Entry::Ip("203.0.113.9/32".parse().unwrap()))
            .unwrap();
        b.add_entry(agent_only, 3, Entry::Ip("198.51.100.0/24".parse().unwrap()))
            .unwrap();
        b.add_entry(
            agent_only,
            4,
            Entry::Ip("2001:db8:bad::/48".parse().unwrap()),
        )
        .unwrap();
        let set = b.build().unwrap();
        assert!(
            set.denied_by(&name("scoped.com"), GroupId(1), false)
                .is_some()
        );
        assert!(
            set.denied_by(&name("scoped.com"), GroupId(2), false)
                .is_none()
        );
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        assert!(set.denied_ip(ip, GroupId(1)).is_some());
        assert!(set.denied_ip(ip, GroupId(2)).is_none());
        let in_net: IpAddr = "198.51.100.77".parse().unwrap();
        assert_eq!(set.denied_ip(in_net, GroupId(1)).unwrap().line, 3);
        assert!(
            set.denied_ip("198.51.101.1".parse().unwrap(), GroupId(1))
                .is_none()
        );
        assert_eq!(
            set.denied_ip("2001:db8:bad:1::5".parse().unwrap(), GroupId(1))
                .unwrap()
                .line,
            4
        );
        assert!(
            set.denied_ip("2001:db8:bae::1".parse().unwrap(), GroupId(1))
                .is_none()
        );
    }

    /// Wildcards of different depths: deep names still find the right base.
    fn b2_check() {
        let mut b = RuleSetBuilder::new();
        for host in ["*.hf.co", "*.eu.cdn.example.net"] {
            b.add_allow(AllowRule {
                host: host.into(),
                ports: vec![443],
                groups: ALL_GROUPS,
                private: false,
                file: "allowlist.toml".into(),
                line: 1,
                comment: None,
            });
        }
        let set = b.build().unwrap();
        let rule = |n: &str| set.allowed_by(&name(n), G).map(|r| r.host.clone());
        assert_eq!(rule("a.b.c.d.hf.co").as_deref(), Some("*.hf.co"));
        assert_eq!(
            rule("x.y.eu.cdn.example.net").as_deref(),
            Some("*.eu.cdn.example.net")
        );
        assert_eq!(rule("eu.cdn.example.net"), None);
        assert_eq!(rule("x.us.cdn.example.net"), None);
        assert_eq!(tail("a.b.example.net"), "example.net");
        assert_eq!(tail("example.net"), "example.net");
        assert_eq!(tail("intranet"), "intranet");
    }

    #[test]
    fn allow_rules_exact_and_wildcard() {
        let mut b = RuleSetBuilder::new();
        let rule = |host: &str| AllowRule {
            host: host.into(),
            ports: vec![443],
            groups: ALL_GROUPS,
            private: false,
            file: "allowlist.toml".into(),
            line: 1,
            comment: None,
        };
        b.add_allow(rule("api.example.com"));
        b.add_allow(rule("*.cdn.example"));
        let set = b.build().unwrap();
        assert!(set.allowed_by(&name("api.example.com"), G).is_some());
        assert!(set.allowed_by(&name("x.api.example.com"), G).is_none());
        assert!(set.allowed_by(&name("a.b.cdn.example"), G).is_some());
        assert!(set.allowed_by(&name("cdn.example"), G).is_none());
        assert!(set.allowed_by(&name("evilcdn.example"), G).is_none());
        b2_check();
        let n = name("x.cdn.example");
        let hosts: Vec<_> = set
            .allow_rules_for(&n, G)
            .map(|r| r.host.as_str())
            .collect();
        assert_eq!(hosts, ["*.cdn.example"]);
    }
}
