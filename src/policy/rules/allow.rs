//! The operator's allow rules: few and security-relevant, so stored as exact strings.

use std::collections::HashMap;

use crate::policy::groups::GroupMask;
use crate::policy::name::Name;

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
pub(super) struct AllowSet {
    pub(super) rules: Vec<AllowRule>,
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
pub(super) fn tail(name: &str) -> &str {
    match name.rfind('.') {
        Some(last) => match name[..last].rfind('.') {
            Some(before) => &name[before + 1..],
            None => name,
        },
        None => name,
    }
}

impl AllowSet {
    pub(super) fn add(&mut self, rule: AllowRule) {
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

    pub(super) fn lookup(&self, name: &Name, group: GroupMask) -> Option<&AllowRule> {
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
    pub(super) fn matching<'a>(
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
