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
//! per process) in a bucketed, sorted array ([`NameTable`]): 8 bytes of key and 4 of
//! metadata (line and flags) a name, plus a 4-byte offset per bucket of about four names; no
//! string storage and no empty slots. A false match needs a 64-bit collision under the
//! random key. The union index ([`ListIndex`]) has the same layout with 4 bytes a distinct
//! name: a 16-bit fingerprint and the mask of the lists holding it. A lookup probes the index
//! once per suffix of the query; only a fingerprint match (a listed name, or about one miss
//! in 16,000) probes the tables of the lists its mask names. The index is rebuilt at every
//! publication by merging the lists' sorted keys (linear, ~10 ms for the shared lists).
//!
//! The operator's allow rules are few and security-relevant, so they are stored as exact
//! strings.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

use aho_corasick::AhoCorasick;
use ipnet::IpNet;
use regex::RegexSet;

use super::groups::{GroupId, GroupMask};
use super::name::Name;
use crate::error::{Fault, HasFault};
use crate::lists::parse::Entry;

/// Index of a list (source) in a [`RuleSet`].
pub type ListId = u16;

/// Longest regex rule accepted, and the compiled-size cap for one list's regex rules.
pub const MAX_REGEX_LEN: usize = 512;
const REGEX_SIZE_LIMIT: usize = 8 << 20;
/// Names unlike each other in every way a rule could look at (length, labels, digits, `-`,
/// `_`): a regex that matches them all matches every name.
const EVERY_NAME_PROBES: [&str; 5] = ["a", "0.b", "x-y.z", "_srv.q9", "portcullis-probe.invalid"];
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

// ---- names as keyed hashes --------------------------------------------------

/// The key every name table of this process hashes with: tables are shared between policy
/// generations and the union index routes by the same hash, so there is exactly one.
static NAME_KEY: LazyLock<foldhash::fast::RandomState> = LazyLock::new(Default::default);

#[inline]
fn name_hash(name: &str) -> u64 {
    NAME_KEY.hash_one(name.as_bytes())
}

/// The bucket of `hash` among `buckets`: its high bits, so buckets are in key order.
#[inline]
fn bucket_of(hash: u64, buckets: usize) -> usize {
    ((u128::from(hash) * buckets as u128) >> 64) as usize
}

/// Names per bucket, on average, in name tables and in the union index.
const NAMES_PER_BUCKET: usize = 4;

// ---- packed metadata of a listed name (4 bytes) -----------------------------

/// The 1-based line; longer lists report this line for every later rule.
const LINE_MASK: u32 = (1 << 29) - 1;
const F_SUBDOMAINS: u32 = 1 << 29;
const F_EXACT: u32 = 1 << 30;
const F_IMPORTANT: u32 = 1 << 31;
const FLAGS: u32 = F_SUBDOMAINS | F_EXACT | F_IMPORTANT;

fn pack(line: u32, flags: u32) -> u32 {
    line.min(LINE_MASK) | flags
}

/// One list's set of names, each covering itself (exact) and/or its subdomains.
///
/// Bucket `b` holds `keys[offsets[b]..offsets[b + 1]]` (and the same range of `metas`);
/// buckets follow key order and each is sorted, so `keys` is sorted as a whole.
#[derive(Default)]
struct NameTable {
    offsets: Box<[u32]>,
    keys: Box<[u64]>,
    metas: Box<[u32]>,
    /// Some name is a single label (a whole top-level domain).
    has_single_label: bool,
}

impl NameTable {
    /// The metadata of the name hashed to `hash`.
    #[inline]
    fn get(&self, hash: u64) -> Option<u32> {
        let buckets = self.offsets.len().checked_sub(1).filter(|&b| b > 0)?;
        let b = bucket_of(hash, buckets);
        let (start, end) = (self.offsets[b] as usize, self.offsets[b + 1] as usize);
        let at = self.keys[start..end].iter().position(|&k| k == hash)?;
        Some(self.metas[start + at])
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn heap_bytes(&self) -> usize {
        self.offsets.len() * 4 + self.keys.len() * 8 + self.metas.len() * 4
    }
}

/// Names collected while a list is parsed, compiled by [`NameTableBuilder::finish`].
#[derive(Default)]
struct NameTableBuilder {
    keys: Vec<u64>,
    metas: Vec<u32>,
    has_single_label: bool,
}

impl NameTableBuilder {
    fn reserve(&mut self, names: usize) {
        self.keys.reserve(names);
        self.metas.reserve(names);
    }

    fn insert(&mut self, name: &str, meta: u32) {
        self.has_single_label |= !name.contains('.');
        self.keys.push(name_hash(name));
        self.metas.push(meta);
    }

    /// Sorts the names into buckets (a counting sort: linear, stable), merges duplicates
    /// (the first line is kept, flags are widened) and drops the collected arrays.
    fn finish(self) -> NameTable {
        let NameTableBuilder {
            keys: input_keys,
            metas: input_metas,
            has_single_label,
        } = self;
        let n = input_keys.len();
        if n == 0 {
            return NameTable::default();
        }
        let buckets = n.div_ceil(NAMES_PER_BUCKET);
        let mut offsets = vec![0u32; buckets + 1];
        for &k in &input_keys {
            offsets[bucket_of(k, buckets) + 1] += 1;
        }
        for b in 0..buckets {
            offsets[b + 1] += offsets[b];
        }
        let mut next = offsets[..buckets].to_vec();
        let mut keys = vec![0u64; n];
        let mut metas = vec![0u32; n];
        for (&k, &m) in input_keys.iter().zip(&input_metas) {
            let slot = &mut next[bucket_of(k, buckets)];
            keys[*slot as usize] = k;
            metas[*slot as usize] = m;
            *slot += 1;
        }
        drop((next, input_keys, input_metas));
        // Sort each bucket (insertion sort: a handful of names, stable) and merge duplicates,
        // compacting in place. `offsets[b + 1]` is read before it is rewritten.
        let mut write = 0usize;
        let mut start = 0usize;
        for b in 0..buckets {
            let end = offsets[b + 1] as usize;
            for i in start + 1..end {
                let (k, m) = (keys[i], metas[i]);
                let mut j = i;
                while j > start && keys[j - 1] > k {
                    keys[j] = keys[j - 1];
                    metas[j] = metas[j - 1];
                    j -= 1;
                }
                keys[j] = k;
                metas[j] = m;
            }
            let first = write;
            offsets[b] = first as u32;
            for i in start..end {
                if write > first && keys[write - 1] == keys[i] {
                    metas[write - 1] |= metas[i] & FLAGS;
                } else {
                    keys[write] = keys[i];
                    metas[write] = metas[i];
                    write += 1;
                }
            }
            start = end;
        }
        offsets[buckets] = write as u32;
        keys.truncate(write);
        metas.truncate(write);
        NameTable {
            offsets: offsets.into_boxed_slice(),
            keys: keys.into_boxed_slice(),
            metas: metas.into_boxed_slice(),
            has_single_label,
        }
    }
}

// ---- the union index over every list's deny names ---------------------------

/// Lists numbered from this one up share the last bit of an index mask.
const SHARED_BIT: usize = 15;

fn list_bit(id: usize) -> u16 {
    1 << id.min(SHARED_BIT)
}

/// For every deny name of every list: a 16-bit fingerprint (the low bits of its hash; the
/// high bits pick the bucket) and which lists hold it, so a miss costs one probe per suffix
/// and a hit probes only the tables of the lists that have the name.
#[derive(Default)]
struct ListIndex {
    offsets: Box<[u32]>,
    /// `fingerprint << 16 | lists`: bit `i` for list `i`, bit 15 for any list from 15 up.
    entries: Box<[u32]>,
}

const FINGERPRINT: u32 = 0xffff_0000;

impl ListIndex {
    /// Linear passes over the lists' sorted keys, a chunk of buckets at a time: count the
    /// keys of each bucket, scatter `fingerprint | list bit` into a small scratch (each list's
    /// keys land in bucket order), then append each bucket with equal fingerprints merged (a
    /// name in several lists). Besides the result, only one chunk's scratch is held.
    fn build(lists: &[Arc<CompiledList>]) -> ListIndex {
        /// Buckets per chunk: a scratch of about 256 KiB.
        const CHUNK: usize = 16 << 10;
        let mut tables: Vec<(&[u64], u32)> = lists
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.deny.is_empty())
            .map(|(id, l)| (&*l.deny.keys, u32::from(list_bit(id))))
            .collect();
        let total: usize = tables.iter().map(|(keys, _)| keys.len()).sum();
        if total == 0 {
            return ListIndex::default();
        }
        let buckets = total.div_ceil(NAMES_PER_BUCKET);
        let mut offsets: Vec<u32> = Vec::with_capacity(buckets + 1);
        offsets.push(0);
        // Room for every key; only what is written becomes resident, the rest is given back.
        let mut entries: Vec<u32> = Vec::with_capacity(total);
        let mut ends = vec![0u32; CHUNK.min(buckets)];
        let mut scratch: Vec<u32> = Vec::new();
        let mut chunk_keys: Vec<&[u64]> = Vec::with_capacity(tables.len());
        for first_bucket in (0..buckets).step_by(CHUNK) {
            let last_bucket = (first_bucket + CHUNK).min(buckets);
            let ends = &mut ends[..last_bucket - first_bucket];
            ends.fill(0);
            // Each list's keys of this chunk, taken off the front of what is left of it.
            chunk_keys.clear();
            for (keys, _) in &mut tables {
                let n = keys.partition_point(|&k| bucket_of(k, buckets) < last_bucket);
                chunk_keys.push(&keys[..n]);
                *keys = &keys[n..];
            }
            for keys in &chunk_keys {
                for &k in *keys {
                    ends[bucket_of(k, buckets) - first_bucket] += 1;
                }
            }
            // Start of each bucket in the scratch; the scatter leaves each at its end.
            let mut at = 0u32;
            for slot in ends.iter_mut() {
                let count = *slot;
                *slot = at;
                at += count;
            }
            scratch.clear();
            scratch.resize(at as usize, 0);
            for (keys, (_, bit)) in chunk_keys.iter().zip(&tables) {
                for &k in *keys {
                    let slot = &mut ends[bucket_of(k, buckets) - first_bucket];
                    scratch[*slot as usize] = u32::from(k as u16) << 16 | bit;
                    *slot += 1;
                }
            }
            let mut start = 0usize;
            for &end in ends.iter() {
                let first = entries.len();
                for &e in &scratch[start..end as usize] {
                    match entries[first..]
                        .iter()
                        .position(|&seen| seen & FINGERPRINT == e & FINGERPRINT)
                    {
                        Some(at) => entries[first + at] |= e & !FINGERPRINT,
                        None => entries.push(e),
                    }
                }
                offsets.push(entries.len() as u32);
                start = end as usize;
            }
        }
        ListIndex {
            offsets: offsets.into_boxed_slice(),
            entries: entries.into_boxed_slice(),
        }
    }

    /// The lists that may hold the name hashed to `hash` (0: none does).
    #[inline]
    fn get(&self, hash: u64) -> u16 {
        let Some(buckets) = self.offsets.len().checked_sub(1).filter(|&b| b > 0) else {
            return 0;
        };
        let b = bucket_of(hash, buckets);
        let (start, end) = (self.offsets[b] as usize, self.offsets[b + 1] as usize);
        let fingerprint = u32::from(hash as u16) << 16;
        self.entries[start..end]
            .iter()
            .find(|&&e| e & FINGERPRINT == fingerprint)
            .map_or(0, |&e| e as u16)
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn heap_bytes(&self) -> usize {
        (self.offsets.len() + self.entries.len()) * 4
    }
}

/// Distinct deny names over the lists: every list's names, less those an earlier list also
/// has. The index says which names may be shared; only those are looked up in the earlier
/// lists' tables.
fn count_distinct(lists: &[Arc<CompiledList>], index: &ListIndex) -> usize {
    let mut distinct = 0;
    for (j, list) in lists.iter().enumerate() {
        // The index bits of the lists before `j` (the shared bit from list 16 on).
        let earlier_bits = if j > SHARED_BIT {
            u16::MAX
        } else {
            list_bit(j) - 1
        };
        for &key in list.deny.keys.iter() {
            let earlier = index.get(key) & earlier_bits;
            if earlier == 0
                || !(0..j).any(|i| earlier & list_bit(i) != 0 && lists[i].deny.get(key).is_some())
            {
                distinct += 1;
            }
        }
    }
    distinct
}

/// A name-rule hit: which list, where in the queried name, and the packed metadata.
#[derive(Debug, Clone, Copy)]
struct Hit {
    list: ListId,
    suffix_start: u8,
    meta: u32,
}

/// Start offsets of every suffix of `full`, longest first (a name has at most 127 labels),
/// and how many there are.
#[inline]
fn suffix_starts(full: &str) -> ([u8; 128], usize) {
    let mut starts = [0u8; 128];
    let mut count = 1;
    for (i, b) in full.bytes().enumerate() {
        if b == b'.' {
            starts[count] = (i + 1) as u8;
            count += 1;
        }
    }
    (starts, count)
}

/// The suffixes of `full` that a listed name could be, probed from the shortest up: where
/// each starts, its hash, and the rule flags that cover `full` from there (an exact rule
/// only at `full` itself). The top-level label alone only when `single_label` (some rule
/// names a whole TLD).
#[inline]
fn parents(full: &str, single_label: bool) -> impl Iterator<Item = (u8, u64, u32)> + '_ {
    let (starts, count) = suffix_starts(full);
    let shortest = if single_label || count == 1 {
        count
    } else {
        count - 1
    };
    (0..shortest).rev().map(move |i| {
        let start = starts[i];
        let covers = if i == 0 {
            F_SUBDOMAINS | F_EXACT
        } else {
            F_SUBDOMAINS
        };
        (start, name_hash(&full[usize::from(start)..]), covers)
    })
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
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Network → the line it came from.
type IpMap<K> = HashMap<K, u32, foldhash::fast::RandomState>;

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
    fn insert(&mut self, net: IpNet, line: u32) {
        fn add<K: std::hash::Hash + Eq>(
            maps: &mut Vec<(u8, IpMap<K>)>,
            len: u8,
            key: K,
            line: u32,
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
            // Keep the first line of a duplicate.
            maps[at].1.entry(key).or_insert(line);
        }
        match net.trunc() {
            IpNet::V4(n) => add(&mut self.v4, n.prefix_len(), u32::from(n.addr()), line),
            IpNet::V6(n) => add(&mut self.v6, n.prefix_len(), u128::from(n.addr()), line),
        }
    }

    /// The most specific network holding `ip`: its prefix length and line.
    fn lookup(&self, ip: IpAddr) -> Option<(u8, u32)> {
        match ip {
            IpAddr::V4(v4) => {
                let addr = u32::from(v4);
                self.v4
                    .iter()
                    .find_map(|(len, map)| map.get(&mask_v4(addr, *len)).map(|&line| (*len, line)))
            }
            IpAddr::V6(v6) => {
                let addr = u128::from(v6);
                self.v6
                    .iter()
                    .find_map(|(len, map)| map.get(&mask_v6(addr, *len)).map(|&line| (*len, line)))
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

struct PatternRules<M> {
    matcher: M,
    lines: Vec<u32>,
    patterns: Vec<String>,
}

/// One list, compiled: its deny names, `@@` exceptions, regex and keyword rules and IP
/// entries. Immutable; shared (`Arc`) by every policy generation until the list changes.
pub struct CompiledList {
    info: ListInfo,
    deny: NameTable,
    exceptions: NameTable,
    regex: Option<PatternRules<RegexSet>>,
    keywords: Option<PatternRules<AhoCorasick>>,
    ips: IpTable,
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
    fn a_regex_that_matches_every_name_is_refused() {
        let info = ListInfo {
            name: "l".into(),
            source: "l.txt".into(),
            groups: crate::policy::groups::ALL_GROUPS,
        };
        let mut b = ListBuilder::new(info);
        for every in [".", ".*", "\\w", "^", "[a-z0-9_]", "(?:)|x"] {
            let err = b.add_entry(1, Entry::BlockRegex(every)).unwrap_err();
            assert!(
                err.to_string().contains("matches every name"),
                "/{every}/: {err}"
            );
        }
        for narrow in ["^ads?\\.", "^c2-[0-9]+\\.", "tracker"] {
            assert!(
                b.add_entry(1, Entry::BlockRegex(narrow)).is_ok(),
                "/{narrow}/"
            );
        }
    }

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
        assert!(b.build().unwrap().with_regex.is_empty());
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

    fn info(name: &str, groups: GroupMask) -> ListInfo {
        ListInfo {
            name: name.into(),
            source: format!("{name}.txt"),
            groups,
        }
    }

    fn list_of(name_: &str, groups: GroupMask, names: &[&str]) -> Arc<CompiledList> {
        let mut b = ListBuilder::new(info(name_, groups));
        for (i, n) in names.iter().enumerate() {
            b.add_entry(i as u32 + 1, Entry::Block(name(n))).unwrap();
        }
        Arc::new(b.finish().unwrap())
    }

    #[test]
    fn name_tables_find_every_name_and_nothing_else() {
        let mut b = ListBuilder::new(info("big", ALL_GROUPS));
        for i in 0..20_000u32 {
            b.add_entry(i + 1, Entry::Block(name(&format!("h{i}.example"))))
                .unwrap();
        }
        // Duplicates keep the first line and widen the flags.
        b.add_entry(20_001, Entry::BlockExact(name("h7.example")))
            .unwrap();
        b.add_entry(20_002, Entry::BlockImportant(name("h8.example")))
            .unwrap();
        let list = b.finish().unwrap();
        assert_eq!(list.deny_name_count(), 20_000);
        assert!(list.deny.keys.is_sorted());
        for i in 0..20_000u32 {
            let meta = list.deny.get(name_hash(&format!("h{i}.example"))).unwrap();
            assert_eq!(meta & LINE_MASK, i + 1);
            assert!(list.deny.get(name_hash(&format!("x{i}.example"))).is_none());
        }
        let h7 = list.deny.get(name_hash("h7.example")).unwrap();
        assert_eq!(h7 & FLAGS, F_SUBDOMAINS | F_EXACT);
        let h8 = list.deny.get(name_hash("h8.example")).unwrap();
        assert_eq!(
            (h8 & LINE_MASK, h8 & FLAGS),
            (9, F_SUBDOMAINS | F_IMPORTANT)
        );
        assert!(NameTable::default().get(1).is_none());
        assert_eq!(ListIndex::default().get(1), 0);
    }

    #[test]
    fn the_first_list_whose_own_rule_covers_the_name_is_reported() {
        let mut b = RuleSetBuilder::new();
        // List 0 applies to group 1 only and names the parent; list 1 to everyone, exact only.
        b.add_compiled(list_of("agents", GroupId(1).mask(), &["evil.com"]))
            .unwrap();
        let mut exact = ListBuilder::new(info("exact", ALL_GROUPS));
        exact
            .add_entry(4, Entry::BlockExact(name("evil.com")))
            .unwrap();
        b.add_compiled(Arc::new(exact.finish().unwrap())).unwrap();
        b.add_compiled(list_of("later", ALL_GROUPS, &["x", "evil.com"]))
            .unwrap();
        let set = b.build().unwrap();
        assert_eq!(set.deny_name_count(), 2);
        let m = set
            .denied_by(&name("a.evil.com"), GroupId(1), false)
            .unwrap();
        assert_eq!(
            (m.origin, m.kind),
            (Origin { list: 0, line: 1 }, RuleKind::NameAndSubdomains)
        );
        // Group 2: list 0 does not apply, list 1 covers only the name itself.
        let m = set.denied_by(&name("evil.com"), GroupId(2), false).unwrap();
        assert_eq!(
            (m.origin, m.rule.as_str()),
            (Origin { list: 1, line: 4 }, "=evil.com")
        );
        let m = set
            .denied_by(&name("a.evil.com"), GroupId(2), false)
            .unwrap();
        assert_eq!(m.origin, Origin { list: 2, line: 2 });
        // A list names a whole TLD: the last label is looked up.
        assert_eq!(set.denied_by(&name("a.b.x"), G, false).unwrap().rule, "x");
    }

    #[test]
    fn more_lists_than_the_index_has_bits() {
        let mut b = RuleSetBuilder::new();
        for i in 0..20 {
            let own = format!("only-{i}.example");
            let mut names = vec![own.as_str(), "everywhere.example"];
            if i >= 17 {
                names.push("late.example");
            }
            b.add_compiled(list_of(&format!("l{i}"), ALL_GROUPS, &names))
                .unwrap();
        }
        let set = b.build().unwrap();
        for i in 0..20u16 {
            let m = set
                .denied_by(&name(&format!("a.only-{i}.example")), G, false)
                .unwrap();
            assert_eq!(m.origin.list, i);
        }
        let m = set.denied_by(&name("late.example"), G, false).unwrap();
        assert_eq!(m.origin.list, 17);
        let m = set
            .denied_by(&name("everywhere.example"), G, false)
            .unwrap();
        assert_eq!(m.origin.list, 0);
        assert!(set.denied_by(&name("nowhere.example"), G, false).is_none());
        assert_eq!(set.deny_name_count(), 22);
    }

    #[test]
    fn replacing_a_list_shares_the_others_and_changes_only_it() {
        let mut b = RuleSetBuilder::new();
        b.add_allow(AllowRule {
            host: "ok.example".into(),
            ports: vec![443],
            groups: ALL_GROUPS,
            private: false,
            file: "allowlist.toml".into(),
            line: 1,
            comment: None,
        });
        b.add_compiled(list_of("a", ALL_GROUPS, &["a1.example", "shared.example"]))
            .unwrap();
        b.add_compiled(list_of("b", ALL_GROUPS, &["b1.example", "shared.example"]))
            .unwrap();
        let mut ips = ListBuilder::new(info("ips", ALL_GROUPS));
        ips.add_entry(3, Entry::Ip("192.0.2.0/24".parse().unwrap()))
            .unwrap();
        b.add_compiled(Arc::new(ips.finish().unwrap())).unwrap();
        let old = b.build().unwrap();
        let new = old.with_list(0, list_of("a", ALL_GROUPS, &["a2.example"]));
        for id in 1..3 {
            assert!(Arc::ptr_eq(
                old.list_rules(id).unwrap(),
                new.list_rules(id).unwrap()
            ));
        }
        assert!(!Arc::ptr_eq(
            old.list_rules(0).unwrap(),
            new.list_rules(0).unwrap()
        ));
        assert!(Arc::ptr_eq(&old.allow, &new.allow));
        let list =
            |set: &RuleSet, n: &str| set.denied_by(&name(n), G, false).map(|m| m.origin.list);
        assert_eq!(list(&old, "a1.example"), Some(0));
        assert_eq!(list(&new, "a1.example"), None);
        assert_eq!(list(&new, "a2.example"), Some(0));
        // The other lists decide as before.
        assert_eq!(list(&new, "b1.example"), Some(1));
        assert_eq!(list(&new, "shared.example"), Some(1));
        assert_eq!(list(&old, "shared.example"), Some(0));
        assert_eq!(
            new.denied_ip("192.0.2.7".parse().unwrap(), G),
            Some(Origin { list: 2, line: 3 })
        );
        assert!(new.allowed_by(&name("ok.example"), G).is_some());
        assert_eq!((old.deny_name_count(), new.deny_name_count()), (3, 3));
    }

    #[test]
    fn the_most_specific_ip_entry_wins_over_list_order() {
        let mut b = RuleSetBuilder::new();
        for (i, net) in ["198.51.100.0/24", "198.51.100.7/32"]
            .into_iter()
            .enumerate()
        {
            let mut l = ListBuilder::new(info(&format!("ips{i}"), ALL_GROUPS));
            l.add_entry(i as u32 + 1, Entry::Ip(net.parse().unwrap()))
                .unwrap();
            b.add_compiled(Arc::new(l.finish().unwrap())).unwrap();
        }
        let set = b.build().unwrap();
        let at = |ip: &str| set.denied_ip(ip.parse().unwrap(), G).map(|o| o.list);
        assert_eq!(at("198.51.100.7"), Some(1));
        assert_eq!(at("198.51.100.8"), Some(0));
    }

    #[test]
    fn a_compiled_list_takes_no_more_entries() {
        let mut b = RuleSetBuilder::new();
        let id = b
            .add_compiled(list_of("sealed", ALL_GROUPS, &["x.example"]))
            .unwrap();
        assert!(matches!(
            b.add_entry(id, 2, Entry::Block(name("y.example"))),
            Err(RuleError::Sealed(0))
        ));
    }

    #[test]
    fn the_union_index_over_several_chunks_routes_every_name_to_its_lists() {
        // 150k keys: the index is built in several chunks of buckets.
        let lists: Vec<Vec<String>> = (0..3)
            .map(|l| {
                (0..50_000)
                    .map(|i| format!("n{}.example", i + l * 25_000))
                    .collect()
            })
            .collect();
        let mut b = RuleSetBuilder::new();
        for (l, names) in lists.iter().enumerate() {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            b.add_compiled(list_of(&format!("l{l}"), ALL_GROUPS, &names))
                .unwrap();
        }
        let set = b.build().unwrap();
        // n0..n100000: each name is in one or two lists; the first one is reported.
        assert_eq!(set.deny_name_count(), 100_000);
        for i in (0..100_000).step_by(7) {
            let m = set
                .denied_by(&name(&format!("x.n{i}.example")), G, false)
                .unwrap();
            let first = if i < 50_000 {
                0
            } else if i < 75_000 {
                1
            } else {
                2
            };
            assert_eq!(m.origin.list, first, "n{i}");
        }
        assert!(set.denied_by(&name("n100000.example"), G, false).is_none());
        let again = set.with_list(1, set.list_rules(1).unwrap().clone());
        assert_eq!(again.deny_name_count(), 100_000);
        let without = set.with_list(2, Arc::new(CompiledList::empty(info("l2", ALL_GROUPS))));
        assert_eq!(without.deny_name_count(), 75_000);
        assert!(
            without
                .denied_by(&name("n80000.example"), G, false)
                .is_none()
        );
        assert_eq!(
            without
                .denied_by(&name("n60000.example"), G, false)
                .unwrap()
                .origin
                .list,
            1
        );
    }
}
