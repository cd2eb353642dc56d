//! The allowlist loader: what it accepts, written back as an allowlist, loads the same.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use portcullis::config::allowlist;
use portcullis::policy::groups::Groups;

static GROUPS: LazyLock<Groups> = LazyLock::new(|| {
    let mut groups = Groups::default();
    for (name, net) in [("agent", "10.0.0.0/8"), ("litellm", "172.16.0.0/12")] {
        let id = groups.add(name).unwrap();
        groups.add_net(net.parse().unwrap(), id);
    }
    groups
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rules) = allowlist::parse(text, "allow.toml", &GROUPS) else {
        return;
    };
    let lines = text.split('\n').count() as u32;
    for rule in rules {
        assert!(rule.line >= 1 && rule.line <= lines, "line {}", rule.line);
        let ports: Vec<String> = rule.ports.iter().map(u16::to_string).collect();
        let again = format!(
            "[[allow]]\nhost = {:?}\nports = [{}]\nprivate = {}\n",
            rule.host,
            ports.join(", "),
            rule.private
        );
        let again = allowlist::parse(&again, "again.toml", &GROUPS)
            .unwrap_or_else(|e| panic!("{:?} does not load again: {e}", rule.host));
        assert_eq!(again[0].host, rule.host);
        assert_eq!(again[0].ports, rule.ports);
    }
});
