//! The policy core: the one place that decides, for the DNS firewall and the
//! egress proxy alike.
//!
//! Decision order for a name (documented in the README, printed by `explain`):
//!
//! 1. Malformed (does not survive [`name::Name`] normalisation) → refused.
//! 2. An operator allow rule (`allowlist.toml`) of the client's group names it →
//!    allowed; no threat list can block it, nor its answer's CNAME targets and addresses.
//! 3. Special-use names (`localhost`, `*.local`, `*.internal`, private reverse
//!    zones, `resolver.arpa`, bare names) → answered locally.
//! 4. A threat-list `$important` rule covers it → blocked.
//! 5. An `@@` exception of any list covers it → allowed (lists are pooled; README).
//! 6. Any other deny rule (name and subdomains, `=exact`, regex, keyword) → blocked.
//! 7. Otherwise it passes: DNS forwards it, and every answer address is then
//!    classified by [`addr`] (rebinding protection) unless the allow rule of
//!    step 2 says `private = true`.

pub mod addr;
pub mod dns;
pub mod groups;
pub mod name;
pub mod rules;
pub mod special;
pub mod suffix;

use std::net::IpAddr;

use groups::{GroupId, Groups};
use name::{Name, NameError};
use rules::{AllowRule, ListMatch, RuleSet};
use special::SpecialUse;

/// What the policy says about a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'p> {
    Malformed(NameError),
    /// An operator allow rule names it.
    Allowed(&'p AllowRule),
    /// A list's `@@` exception covers it.
    Excepted(ListMatch),
    Special(SpecialUse),
    Blocked(ListMatch),
    /// No rule: forward (DNS) or apply the proxy's mode.
    Pass,
}

impl Verdict<'_> {
    /// Stable snake_case outcome, for logs and metric labels.
    pub fn outcome(&self) -> &'static str {
        match self {
            Verdict::Malformed(_) => "malformed",
            Verdict::Allowed(_) => "allowed",
            Verdict::Excepted(_) => "excepted",
            Verdict::Special(_) => "special_use",
            Verdict::Blocked(_) => "blocked",
            Verdict::Pass => "pass",
        }
    }

    /// The operator allow rule, when that is what decided.
    pub fn allow_rule(&self) -> Option<&AllowRule> {
        match self {
            Verdict::Allowed(rule) => Some(rule),
            _ => None,
        }
    }
}

/// An allow rule picked for a (name, group, port) by [`Policy::allow_for`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allow<'p> {
    pub rule: &'p AllowRule,
    /// May the name resolve to, and be dialled at, a private address?
    pub private: bool,
}

/// A compiled, immutable policy. Built off the hot path and published whole; a refresh of
/// one list publishes a new policy that shares every other list's tables ([`Policy::with_list`]).
pub struct Policy {
    pub rules: RuleSet,
    pub groups: Groups,
    /// Answer names without a dot with NXDOMAIN (default) instead of forwarding them.
    pub bare_names_nxdomain: bool,
    /// Per group: DNS mode, query types, tunnel guard, rate limit.
    pub dns: dns::DnsPolicy,
    /// The Public Suffix List: registered domains.
    pub suffixes: std::sync::Arc<suffix::Suffixes>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            rules: RuleSet::empty(),
            groups: Groups::default(),
            bare_names_nxdomain: true,
            dns: dns::DnsPolicy::default(),
            suffixes: suffix::Suffixes::builtin(),
        }
    }
}

impl Policy {
    /// This policy with list `id` replaced by `list` (a refresh of that one list): groups,
    /// allow rules and every other list are shared or copied as they are. Publish the result
    /// whole (one `ArcSwap` store), so that a query sees either the old or the new list.
    ///
    /// # Panics
    /// When there is no list `id`.
    pub fn with_list(
        &self,
        id: rules::ListId,
        list: std::sync::Arc<rules::CompiledList>,
    ) -> Policy {
        Policy {
            rules: self.rules.with_list(id, list),
            groups: self.groups.clone(),
            bare_names_nxdomain: self.bare_names_nxdomain,
            dns: self.dns.clone(),
            suffixes: self.suffixes.clone(),
        }
    }

    /// Decides for an already normalised name. This is the hot path.
    pub fn decide(&self, name: &Name, group: GroupId) -> Verdict<'_> {
        if let Some(rule) = self.rules.allowed_by(name, group) {
            return Verdict::Allowed(rule);
        }
        if let Some(special) = special::classify(name)
            && (special != SpecialUse::BareName || self.bare_names_nxdomain)
        {
            return Verdict::Special(special);
        }
        let Some(deny) = self.rules.denied_by(name, group, false) else {
            return Verdict::Pass;
        };
        if deny.important {
            return Verdict::Blocked(deny);
        }
        // `$important` only matters against a list's exceptions: look for it only then.
        match self.rules.exception(name, group) {
            None => Verdict::Blocked(deny),
            Some(exception) => match self.rules.denied_by(name, group, true) {
                Some(important) => Verdict::Blocked(important),
                None => Verdict::Excepted(exception),
            },
        }
    }

    /// The allow rule that admits `name` for `group` on `port`: the one place that picks
    /// it, for every front door.
    ///
    /// - `Some(port)` (the proxy): the most specific rule naming `name` whose ports include
    ///   `port`; its `private` says whether a private destination may be dialled.
    /// - `None` (DNS, whose answer serves every port): the most specific rule naming `name`;
    ///   private answers pass when any rule naming it allows them, because a client may use
    ///   that rule's port. The proxy then checks the addresses again against its port's rule.
    pub fn allow_for<'p>(
        &'p self,
        name: &'p Name,
        group: GroupId,
        port: Option<u16>,
    ) -> Option<Allow<'p>> {
        let mut rules = self.rules.allow_rules_for(name, group);
        match port {
            Some(port) => rules.find(|r| r.ports.contains(&port)).map(|rule| Allow {
                rule,
                private: rule.private,
            }),
            None => {
                let rule = rules.next()?;
                let private = rule.private || rules.any(|r| r.private);
                Some(Allow { rule, private })
            }
        }
    }

    /// Decides for a name given as text (proxy targets, the CLI).
    pub fn decide_text(&self, input: &str, group: GroupId) -> (Option<Name>, Verdict<'_>) {
        match Name::parse(input) {
            Ok(name) => {
                let verdict = self.decide(&name, group);
                (Some(name), verdict)
            }
            Err(e) => (None, Verdict::Malformed(e)),
        }
    }

    /// The full decision trail for a name and client, for `portcullis check` and the explain API.
    pub fn explain(&self, input: &str, client: Option<IpAddr>) -> Explanation {
        self.explain_query(input, client, None)
    }

    /// [`Policy::explain`] for a query type (code and name): what the DNS door does with it
    /// too (mode, query types).
    pub fn explain_query(
        &self,
        input: &str,
        client: Option<IpAddr>,
        qtype: Option<(u16, &str)>,
    ) -> Explanation {
        let group = client.map_or(GroupId::DEFAULT, |ip| self.groups.of(ip));
        let (name, verdict) = self.decide_text(input, group);
        let dns = self
            .dns
            .explain(&verdict, group, self.groups.name(group), qtype);
        let mut ex = Explanation {
            input: input.to_owned(),
            name: name.as_ref().map(|n| n.to_string()),
            client: client.map(|c| c.to_string()),
            group: self.groups.name(group).to_owned(),
            decision: verdict.outcome(),
            reason: String::new(),
            rule: None,
            list: None,
            source: None,
            line: None,
            private_answers_allowed: false,
            dns,
        };
        match &verdict {
            Verdict::Malformed(e) => ex.reason = format!("malformed name: {e}"),
            Verdict::Allowed(rule) => {
                ex.reason = "an allow rule names it; no threat list can block it".into();
                ex.rule = Some(rule.host.clone());
                ex.source = Some(rule.file.clone());
                ex.line = Some(rule.line);
                ex.private_answers_allowed = rule.private;
            }
            Verdict::Special(s) => {
                ex.reason = match s {
                    SpecialUse::Localhost => "special-use name: answered locally with loopback",
                    SpecialUse::LocalOnly => "special-use name: local-only, never forwarded (NXDOMAIN)",
                    SpecialUse::ResolverDiscovery => "resolver discovery name: answered with no data",
                    SpecialUse::BareName => "name without a dot: NXDOMAIN",
                }
                .into()
            }
            Verdict::Blocked(m) | Verdict::Excepted(m) => {
                let what = if matches!(verdict, Verdict::Blocked(_)) {
                    "blocked by"
                } else {
                    "allowed by the exception"
                };
                ex.reason = format!("{what} {} rule {}", m.kind.as_str(), m.rule);
                ex.rule = Some(m.rule.clone());
                if let Some(list) = self.rules.list(m.origin.list) {
                    ex.list = Some(list.name.clone());
                    ex.source = Some(list.source.clone());
                }
                ex.line = (m.origin.line > 0).then_some(m.origin.line);
            }
            Verdict::Pass => {
                ex.reason = "no rule matches: forwarded upstream; answers pointing at private addresses are removed".into()
            }
        }
        ex
    }
}

/// A decision and why, as printed by `portcullis check` and served as JSON.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Explanation {
    pub input: String,
    pub name: Option<String>,
    pub client: Option<String>,
    pub group: String,
    pub decision: &'static str,
    pub reason: String,
    pub rule: Option<String>,
    pub list: Option<String>,
    pub source: Option<String>,
    pub line: Option<u32>,
    pub private_answers_allowed: bool,
    /// What the DNS door does with it: mode, query types, tunnel guard.
    pub dns: String,
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "name:     {}",
            self.name.as_deref().unwrap_or(&self.input)
        )?;
        writeln!(
            f,
            "client:   {} (group {})",
            self.client.as_deref().unwrap_or("-"),
            self.group
        )?;
        writeln!(f, "decision: {}", self.decision)?;
        writeln!(f, "reason:   {}", self.reason)?;
        writeln!(f, "dns:      {}", self.dns)?;
        if let Some(rule) = &self.rule {
            writeln!(f, "rule:     {rule}")?;
        }
        if let Some(list) = &self.list {
            writeln!(f, "list:     {list}")?;
        }
        if let Some(source) = &self.source {
            match self.line {
                Some(line) => writeln!(f, "from:     {source}:{line}")?,
                None => writeln!(f, "from:     {source}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use groups::ALL_GROUPS;
    use rules::{Entry, ListInfo, RuleSetBuilder};

    fn n(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    fn allow(host: &str, groups: groups::GroupMask) -> AllowRule {
        AllowRule {
            host: host.into(),
            ports: vec![443],
            groups,
            private: false,
            file: "allowlist.toml".into(),
            line: 1,
            comment: None,
        }
    }

    /// deny: corp.example (subdomains), bad.cdn.example, `$important` tracker.example;
    /// list exception: ok.tracker.example, ok.ads.example; allow: *.cdn.example, internal.corp.example.
    fn policy() -> Policy {
        let mut b = RuleSetBuilder::new();
        let list = b
            .add_list(ListInfo {
                name: "threats".into(),
                source: "threats.txt".into(),
                groups: ALL_GROUPS,
            })
            .unwrap();
        b.add_entry(list, 1, Entry::Block(n("corp.example")))
            .unwrap();
        b.add_entry(list, 2, Entry::Block(n("bad.cdn.example")))
            .unwrap();
        b.add_entry(list, 3, Entry::BlockImportant(n("tracker.example")))
            .unwrap();
        b.add_entry(list, 4, Entry::Allow(n("ok.tracker.example")))
            .unwrap();
        b.add_entry(list, 5, Entry::Block(n("ads.example")))
            .unwrap();
        b.add_entry(list, 6, Entry::Allow(n("ok.ads.example")))
            .unwrap();
        b.add_entry(list, 7, Entry::Block(n("example.internal")))
            .unwrap();
        b.add_allow(allow("*.cdn.example", ALL_GROUPS));
        b.add_allow(allow("internal.corp.example", ALL_GROUPS));
        b.add_allow(allow("metadata.google.internal", groups::GroupId(1).mask()));
        Policy {
            rules: b.build().unwrap(),
            ..Policy::default()
        }
    }

    const G: GroupId = GroupId::DEFAULT;

    #[test]
    fn an_allowed_wildcard_beats_a_more_specific_deny_inside_it() {
        let p = policy();
        // bad.cdn.example is listed, but *.cdn.example is allowed: allow wins, whatever the specificity.
        assert_eq!(p.decide(&n("bad.cdn.example"), G).outcome(), "allowed");
        assert_eq!(p.decide(&n("x.bad.cdn.example"), G).outcome(), "allowed");
        // The wildcard does not cover the bare name.
        assert_eq!(p.decide(&n("cdn.example"), G).outcome(), "pass");
    }

    #[test]
    fn an_allowed_name_inside_a_blocked_parent_is_allowed_and_only_it() {
        let p = policy();
        assert_eq!(
            p.decide(&n("internal.corp.example"), G).outcome(),
            "allowed"
        );
        assert_eq!(p.decide(&n("other.corp.example"), G).outcome(), "blocked");
        assert_eq!(
            p.decide(&n("sub.internal.corp.example"), G).outcome(),
            "blocked"
        );
    }

    #[test]
    fn important_rules_beat_list_exceptions_which_beat_plain_rules() {
        let p = policy();
        assert_eq!(p.decide(&n("ok.tracker.example"), G).outcome(), "blocked");
        assert_eq!(p.decide(&n("ok.ads.example"), G).outcome(), "excepted");
        assert_eq!(p.decide(&n("x.ok.ads.example"), G).outcome(), "excepted");
        assert_eq!(p.decide(&n("other.ads.example"), G).outcome(), "blocked");
    }

    /// Lists are pooled (README, "Decision order"; issue 11, item 11): one list's `@@`
    /// lets through what another blocks, and `$important` in one list beats another's `@@`.
    #[test]
    fn exceptions_and_important_rules_act_across_lists() {
        let mut b = RuleSetBuilder::new();
        let info = |name: &str| ListInfo {
            name: name.into(),
            source: format!("{name}.txt"),
            groups: ALL_GROUPS,
        };
        let threats = b.add_list(info("threats")).unwrap();
        let adblock = b.add_list(info("adblock")).unwrap();
        b.add_entry(threats, 1, Entry::BlockImportant(n("c2.example")))
            .unwrap();
        b.add_entry(threats, 2, Entry::Block(n("cdn.example")))
            .unwrap();
        b.add_entry(adblock, 1, Entry::Allow(n("c2.example")))
            .unwrap();
        b.add_entry(adblock, 2, Entry::Allow(n("cdn.example")))
            .unwrap();
        let p = Policy {
            rules: b.build().unwrap(),
            ..Policy::default()
        };
        match p.decide(&n("x.c2.example"), G) {
            Verdict::Blocked(m) => assert_eq!((m.origin.list, m.important), (threats, true)),
            other => panic!("{other:?}"),
        }
        match p.decide(&n("cdn.example"), G) {
            Verdict::Excepted(m) => assert_eq!(m.origin.list, adblock),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn allow_for_picks_the_rule_of_the_port() {
        let mut b = RuleSetBuilder::new();
        b.add_allow(AllowRule {
            line: 1,
            ..allow("priv.test", ALL_GROUPS)
        });
        b.add_allow(AllowRule {
            ports: vec![8080],
            private: true,
            line: 4,
            ..allow("priv.test", ALL_GROUPS)
        });
        let p = Policy {
            rules: b.build().unwrap(),
            ..Policy::default()
        };
        let name = n("priv.test");
        let at = |port| {
            p.allow_for(&name, G, port)
                .map(|a| (a.rule.line, a.private))
        };
        assert_eq!(at(Some(443)), Some((1, false)));
        assert_eq!(
            at(Some(8080)),
            Some((4, true)),
            "the port's rule, not the first one"
        );
        assert_eq!(at(Some(22)), None);
        // DNS serves every port: private answers pass when a rule of the name allows them.
        assert_eq!(at(None), Some((1, true)));
        assert!(p.allow_for(&name, GroupId(1), Some(443)).is_some());
        assert!(p.allow_for(&n("other.test"), G, None).is_none());
    }

    #[test]
    fn special_use_names_unless_an_allow_rule_names_them() {
        let p = policy();
        assert_eq!(
            p.decide(&n("metadata.google.internal"), G).outcome(),
            "special_use"
        );
        assert_eq!(
            p.decide(&n("metadata.google.internal"), GroupId(1))
                .outcome(),
            "allowed"
        );
        // Special-use comes before deny lists: the local answer is already a refusal.
        assert_eq!(p.decide(&n("example.internal"), G).outcome(), "special_use");
    }

    #[test]
    fn bare_names_can_be_forwarded() {
        let mut p = policy();
        assert_eq!(p.decide(&n("intranet"), G).outcome(), "special_use");
        p.bare_names_nxdomain = false;
        assert_eq!(p.decide(&n("intranet"), G).outcome(), "pass");
    }

    #[test]
    fn explain_names_rule_list_and_line() {
        let p = policy();
        let ex = p.explain("WWW.Corp.Example.", None);
        assert_eq!(ex.decision, "blocked");
        assert_eq!(ex.name.as_deref(), Some("www.corp.example"));
        assert_eq!(ex.rule.as_deref(), Some("corp.example"));
        assert_eq!(ex.list.as_deref(), Some("threats"));
        assert_eq!(ex.source.as_deref(), Some("threats.txt"));
        assert_eq!(ex.line, Some(1));
        let ex = p.explain("bad name!", None);
        assert_eq!(ex.decision, "malformed");
        assert!(ex.reason.contains("not allowed"));
    }
}
