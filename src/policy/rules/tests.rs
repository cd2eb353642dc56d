use super::allow::tail;
use super::hash::name_hash;
use super::names::{F_EXACT, FLAGS, NameTable};
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

/// One text for a matched rule wherever a decision names it (DNS reason, EDE, proxy 403).
#[test]
fn a_match_is_described_the_same_everywhere() {
    let set = set_with(&[("evil.com", 7)]);
    let m = set.denied_by(&name("a.evil.com"), G, false).unwrap();
    assert_eq!(
        m.described(&set).to_string(),
        "name_and_subdomains rule evil.com of list threats"
    );
    assert_eq!(
        format!("{:#}", m.described(&set)),
        "name_and_subdomains rule evil.com of list threats (line 7)"
    );
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
    let list = |set: &RuleSet, n: &str| set.denied_by(&name(n), G, false).map(|m| m.origin.list);
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
