//! From what report mode saw to allow rules: which destinations become rules, which
//! become one `*.parent` rule, and which are never suggested (threat-listed, tunnel-guard
//! flagged, IP literals). Pure: the caller passes what the policy in force says.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use serde::Serialize;

use super::aggregate::{Entry, Key};
use crate::telemetry::lines::format_unix;

/// What the policy in force says of a destination now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judged {
    /// Nothing: an allow rule would be needed.
    Open,
    /// A threat list names it: refused whatever the allowlist says.
    Blocked { list: String, rule: String },
    /// An allow rule of the group already covers it on every port seen.
    Covered(String),
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Only destinations seen at or after this Unix time.
    pub since: Option<u64>,
    pub min_count: u64,
    /// This many sibling names under one parent become `*.parent` (0: never).
    pub wildcard_after: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            since: None,
            min_count: 1,
            wildcard_after: 3,
        }
    }
}

/// Why a destination is shown but not suggested as a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Withheld {
    Blocked { list: String, rule: String },
    Suspicious { reason: String },
    IpLiteral,
    Covered { rule: String },
}

/// One suggested allow rule (or one withheld destination).
#[derive(Debug, Clone, Serialize)]
pub struct Suggestion {
    /// The rule's host: a name, or `*.parent` standing for `names`.
    pub host: String,
    pub group: String,
    /// Empty: seen by DNS only (the rule then takes the default port, 443).
    pub ports: Vec<u16>,
    pub doors: Vec<&'static str>,
    pub count: u64,
    pub first_seen: u64,
    pub last_seen: u64,
    pub client: IpAddr,
    /// It resolved to a private address: the rule needs `private = true` and a review.
    pub private: Option<String>,
    /// Refused query types seen (DNS): `[dns] qtypes` would need them.
    pub qtypes: Vec<String>,
    /// The names a wildcard stands for (empty for an exact rule).
    pub names: Vec<String>,
    pub withheld: Option<Withheld>,
}

/// The suggestions for the entries of one or more groups, rules first (by group, then
/// host), withheld destinations after them.
pub fn suggest(
    entries: &[(Key, Entry)],
    judge: impl Fn(&str, &str, &[u16]) -> Judged,
    registered: impl Fn(&str) -> (String, String),
    opts: &Options,
) -> Vec<Suggestion> {
    // Registered domains the tunnel guard flagged, per group: nothing under them is a rule.
    let flagged: BTreeMap<(&str, String), &str> = entries
        .iter()
        .filter_map(|(k, e)| {
            let reason = e.suspicious.as_deref()?;
            Some(((k.group.as_str(), registered(&k.host).0), reason))
        })
        .collect();
    let mut rules: Vec<Suggestion> = Vec::new();
    let mut withheld: Vec<Suggestion> = Vec::new();
    for (key, entry) in entries {
        if opts.since.is_some_and(|since| entry.last_seen < since) || entry.count < opts.min_count {
            continue;
        }
        let mut s = from_entry(key, entry);
        let ports: Vec<u16> = entry.ports.iter().copied().collect();
        s.withheld = if key.host.parse::<IpAddr>().is_ok() {
            Some(Withheld::IpLiteral)
        } else if let Some(reason) = flagged.get(&(key.group.as_str(), registered(&key.host).0)) {
            Some(Withheld::Suspicious {
                reason: (*reason).to_owned(),
            })
        } else {
            match judge(&key.host, &key.group, &ports) {
                Judged::Open => entry.blocked.as_ref().map(|b| Withheld::Blocked {
                    list: b.list.clone(),
                    rule: b.rule.clone(),
                }),
                Judged::Blocked { list, rule } => Some(Withheld::Blocked { list, rule }),
                Judged::Covered(rule) => Some(Withheld::Covered { rule }),
            }
        };
        if s.withheld.is_some() {
            withheld.push(s);
        } else {
            rules.push(s);
        }
    }
    let mut rules = fold_siblings(rules, &registered, opts.wildcard_after);
    rules.sort_by(|a, b| (&a.group, &a.host).cmp(&(&b.group, &b.host)));
    withheld.sort_by(|a, b| (&a.group, &a.host).cmp(&(&b.group, &b.host)));
    rules.extend(withheld);
    rules
}

fn from_entry(key: &Key, e: &Entry) -> Suggestion {
    Suggestion {
        host: key.host.clone(),
        group: key.group.clone(),
        ports: e.ports.iter().copied().collect(),
        doors: e.doors.iter().map(|d| d.as_str()).collect(),
        count: e.count,
        first_seen: e.first_seen,
        last_seen: e.last_seen,
        client: e.client,
        private: e.private.clone(),
        qtypes: e.qtypes.iter().cloned().collect(),
        names: Vec::new(),
        withheld: None,
    }
}

/// `wildcard_after` or more names of one group directly under one parent, itself at or
/// under a registered domain, become one `*.parent` rule. Private destinations stay
/// exact rules: each needs its own review.
fn fold_siblings(
    rules: Vec<Suggestion>,
    registered: &impl Fn(&str) -> (String, String),
    wildcard_after: usize,
) -> Vec<Suggestion> {
    if wildcard_after == 0 {
        return rules;
    }
    let parent_of = |s: &Suggestion| -> Option<String> {
        if s.private.is_some() {
            return None;
        }
        // `prefix` non-empty: the name is below its registered domain, so its parent is
        // the registered domain or below it, never a public suffix (`com`, `co.uk`).
        let (_, prefix) = registered(&s.host);
        if prefix.is_empty() {
            return None;
        }
        s.host.split_once('.').map(|(_, parent)| parent.to_owned())
    };
    let mut siblings: BTreeMap<(String, String), usize> = BTreeMap::new();
    for s in &rules {
        if let Some(parent) = parent_of(s) {
            *siblings.entry((s.group.clone(), parent)).or_default() += 1;
        }
    }
    let mut out: Vec<Suggestion> = Vec::new();
    let mut folded: BTreeMap<(String, String), Suggestion> = BTreeMap::new();
    for s in rules {
        let key = parent_of(&s).map(|p| (s.group.clone(), p));
        match key {
            Some(key) if siblings[&key] >= wildcard_after => {
                let w = folded.entry(key.clone()).or_insert_with(|| Suggestion {
                    host: format!("*.{}", key.1),
                    names: Vec::new(),
                    ports: Vec::new(),
                    doors: Vec::new(),
                    count: 0,
                    first_seen: s.first_seen,
                    last_seen: s.last_seen,
                    qtypes: Vec::new(),
                    ..s.clone()
                });
                w.names.push(s.host.clone());
                w.count += s.count;
                w.first_seen = w.first_seen.min(s.first_seen);
                w.last_seen = w.last_seen.max(s.last_seen);
                merge(&mut w.ports, &s.ports);
                merge(&mut w.doors, &s.doors);
                merge(&mut w.qtypes, &s.qtypes);
            }
            _ => out.push(s),
        }
    }
    out.extend(folded.into_values());
    out
}

fn merge<T: Ord + Clone>(into: &mut Vec<T>, from: &[T]) {
    let set: BTreeSet<T> = into.iter().chain(from).cloned().collect();
    *into = set.into_iter().collect();
}

/// The suggestions as an `allowlist.toml` fragment, ready for `portcullis allowlist
/// apply`: every rule with a comment (count, first seen, doors, ports), the withheld
/// destinations as comments only.
pub fn render_toml(suggestions: &[Suggestion], generated_at: u64) -> String {
    let mut out = String::new();
    let rules = suggestions.iter().filter(|s| s.withheld.is_none()).count();
    let _ = writeln!(
        out,
        "# Suggested by `portcullis allowlist suggest` at {} from what report mode saw:\n\
         # {rules} rule(s), {} destination(s) not suggested (at the end). Review, then:\n\
         #   portcullis allowlist diff THIS_FILE && portcullis allowlist apply THIS_FILE",
        format_unix(generated_at),
        suggestions.len() - rules
    );
    for s in suggestions.iter().filter(|s| s.withheld.is_none()) {
        out.push('\n');
        let _ = writeln!(out, "# {}", summary(s));
        if !s.names.is_empty() {
            let _ = writeln!(
                out,
                "# stands for {} names seen: {} (it allows every name under {}, threat-listed ones too: narrow it if you can)",
                s.names.len(),
                commented(&s.names.join(", ")),
                commented(&s.host[2..])
            );
        }
        if let Some(addr) = &s.private {
            let _ = writeln!(
                out,
                "# REVIEW: resolved to a private address ({}): allowed only with private = true, which opens the private ranges for this name",
                commented(addr)
            );
        }
        if s.ports.is_empty() {
            out.push_str("# seen by DNS only: the rule takes the default port 443\n");
        }
        if !s.qtypes.is_empty() {
            let _ = writeln!(
                out,
                "# also asked for query types the group is not served: {} ([dns] qtypes)",
                s.qtypes.join(", ")
            );
        }
        out.push_str("[[allow]]\n");
        let _ = writeln!(out, "host = {}", quoted(&s.host));
        if !s.ports.is_empty() {
            let ports: Vec<String> = s.ports.iter().map(u16::to_string).collect();
            let _ = writeln!(out, "ports = [{}]", ports.join(", "));
        }
        let _ = writeln!(out, "groups = [{}]", quoted(&s.group));
        if s.private.is_some() {
            out.push_str("private = true\n");
        }
        let _ = writeln!(
            out,
            "comment = {}",
            quoted(&format!(
                "learned in report mode, first seen {}",
                format_unix(s.first_seen)
            ))
        );
    }
    let withheld: Vec<&Suggestion> = suggestions
        .iter()
        .filter(|s| s.withheld.is_some())
        .collect();
    if !withheld.is_empty() {
        out.push_str("\n# Not suggested:\n");
        for s in withheld {
            let why = match s.withheld.as_ref().expect("filtered") {
                Withheld::Blocked { list, rule } => {
                    format!("blocked anyway: list {list}, rule {rule}")
                }
                Withheld::Suspicious { reason } => format!(
                    "suspicious: the tunnel guard flagged its registered domain ({reason}); never suggested"
                ),
                Withheld::IpLiteral => {
                    "IP literal: never suggested (allow the name the client should use)".to_owned()
                }
                Withheld::Covered { rule } => format!("already allowed by {rule}"),
            };
            let _ = writeln!(
                out,
                "# {} (group {}): {}; {}",
                commented(&s.host),
                s.group,
                commented(&why),
                summary(s)
            );
        }
    }
    out
}

fn summary(s: &Suggestion) -> String {
    let ports = if s.ports.is_empty() {
        "-".to_owned()
    } else {
        s.ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "{} request(s), first seen {}, last seen {}; doors: {}; ports: {ports}; client {}",
        s.count,
        format_unix(s.first_seen),
        format_unix(s.last_seen),
        s.doors.join(", "),
        s.client
    )
}

/// A TOML basic string.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Text for a comment line: control characters (a newline would end the comment) escaped.
fn commented(s: &str) -> String {
    s.chars()
        .flat_map(char::escape_debug)
        .collect::<String>()
        .replace("\\\"", "\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::aggregate::{Aggregate, Door, Observation, Seen};

    /// A stand-in for the Public Suffix List that knows `com` and `co.uk`.
    fn registered(name: &str) -> (String, String) {
        let labels: Vec<&str> = name.split('.').collect();
        let keep = if name.ends_with(".co.uk") { 3 } else { 2 };
        if labels.len() <= keep {
            return (name.to_owned(), String::new());
        }
        let cut = labels.len() - keep;
        (labels[cut..].join("."), labels[..cut].join("."))
    }

    fn open(_: &str, _: &str, _: &[u16]) -> Judged {
        Judged::Open
    }

    fn table(obs: &[(&str, &str, Option<u16>, Seen)]) -> Vec<(Key, Entry)> {
        let mut a = Aggregate::new(100);
        for (i, (group, host, port, seen)) in obs.iter().enumerate() {
            a.record(
                &Observation {
                    group,
                    host,
                    port: *port,
                    door: if port.is_some() {
                        Door::Connect
                    } else {
                        Door::Dns
                    },
                    client: "172.30.0.9".parse().unwrap(),
                    seen: *seen,
                },
                1_800_000_000 + i as u64,
            );
        }
        a.entries()
    }

    fn hosts(s: &[Suggestion]) -> Vec<(&str, bool)> {
        s.iter()
            .map(|s| (s.host.as_str(), s.withheld.is_none()))
            .collect()
    }

    #[test]
    fn siblings_under_a_registered_domain_become_a_wildcard_never_a_public_suffix() {
        let w = Seen::WouldRefuse;
        let entries = table(&[
            ("agent", "a.cdn.example.com", Some(443), w),
            ("agent", "b.cdn.example.com", Some(443), w),
            ("agent", "c.cdn.example.com", Some(8443), w),
            // Three registered domains under `com`: never `*.com`.
            ("agent", "one.com", Some(443), w),
            ("agent", "two.com", Some(443), w),
            ("agent", "three.com", Some(443), w),
            ("agent", "x.co.uk", Some(443), w),
            ("agent", "y.co.uk", Some(443), w),
            ("agent", "z.co.uk", Some(443), w),
            // Two siblings only: exact rules.
            ("agent", "api.two-only.org", Some(443), w),
            ("agent", "www.two-only.org", Some(443), w),
        ]);
        let s = suggest(&entries, open, registered, &Options::default());
        let got: Vec<&str> = s.iter().map(|s| s.host.as_str()).collect();
        assert_eq!(
            got,
            [
                "*.cdn.example.com",
                "api.two-only.org",
                "one.com",
                "three.com",
                "two.com",
                "www.two-only.org",
                "x.co.uk",
                "y.co.uk",
                "z.co.uk"
            ]
        );
        let wild = &s[0];
        assert_eq!(wild.ports, [443, 8443]);
        assert_eq!(wild.count, 3);
        assert_eq!(wild.names.len(), 3);
        // Siblings directly under the registered domain fold to it.
        let entries = table(&[
            ("agent", "a.example.net", None, w),
            ("agent", "b.example.net", None, w),
            ("agent", "c.example.net", None, w),
        ]);
        let s = suggest(&entries, open, registered, &Options::default());
        assert_eq!(hosts(&s), [("*.example.net", true)]);
        let never = Options {
            wildcard_after: 0,
            ..Options::default()
        };
        assert_eq!(suggest(&entries, open, registered, &never).len(), 3);
    }

    #[test]
    fn what_must_stay_shut_is_never_a_rule() {
        let entries = table(&[
            (
                "agent",
                "evil.example.com",
                None,
                Seen::Blocked {
                    list: "urlhaus",
                    rule: "evil.example.com (u.txt:3)",
                },
            ),
            ("agent", "t1.tunnel.example.org", None, Seen::WouldRefuse),
            (
                "agent",
                "tunnel.example.org",
                None,
                Seen::Suspicious("encoded_label"),
            ),
            ("agent", "203.0.113.7", Some(443), Seen::WouldRefuse),
            (
                "agent",
                "nas.example.net",
                Some(5001),
                Seen::Private(Some("10.0.0.5".parse().unwrap())),
            ),
            ("agent", "listed-now.example", Some(443), Seen::WouldRefuse),
            ("agent", "allowed.example", Some(443), Seen::WouldRefuse),
        ]);
        let judge = |host: &str, _: &str, _: &[u16]| match host {
            "listed-now.example" => Judged::Blocked {
                list: "phishing".into(),
                rule: "listed-now.example (p.txt:9)".into(),
            },
            "allowed.example" => Judged::Covered("allowed.example (allowlist.toml:4)".into()),
            _ => Judged::Open,
        };
        let s = suggest(&entries, judge, registered, &Options::default());
        assert_eq!(
            hosts(&s),
            [
                ("nas.example.net", true),
                ("203.0.113.7", false),
                ("allowed.example", false),
                ("evil.example.com", false),
                ("listed-now.example", false),
                ("t1.tunnel.example.org", false),
                ("tunnel.example.org", false),
            ]
        );
        assert_eq!(s[0].private.as_deref(), Some("10.0.0.5"));
        let text = render_toml(&s, 1_800_000_100);
        assert!(
            text.contains("# REVIEW: resolved to a private address (10.0.0.5)"),
            "{text}"
        );
        assert!(text.contains("private = true\n"), "{text}");
        assert!(text.contains("# evil.example.com (group agent): blocked anyway: list urlhaus, rule evil.example.com (u.txt:3)"), "{text}");
        assert!(
            text.contains("# listed-now.example (group agent): blocked anyway: list phishing"),
            "{text}"
        );
        assert!(
            text.contains("# 203.0.113.7 (group agent): IP literal: never suggested"),
            "{text}"
        );
        assert!(
            text.contains("# t1.tunnel.example.org (group agent): suspicious"),
            "{text}"
        );
        // Only the one rule is a table.
        assert_eq!(text.matches("[[allow]]").count(), 1, "{text}");
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        let allow = parsed["allow"].as_array().unwrap();
        assert_eq!(allow[0]["host"].as_str(), Some("nas.example.net"));
        assert_eq!(
            allow[0]["ports"].as_array().unwrap()[0].as_integer(),
            Some(5001)
        );
        assert_eq!(
            allow[0]["groups"].as_array().unwrap()[0].as_str(),
            Some("agent")
        );
    }

    #[test]
    fn since_and_min_count_filter_and_dns_only_names_take_the_default_port() {
        let w = Seen::WouldRefuse;
        let entries = table(&[
            ("agent", "old.example", None, w),
            ("agent", "busy.example", None, w),
            ("agent", "busy.example", None, w),
            ("agent", "busy.example", None, w),
        ]);
        let opts = Options {
            min_count: 2,
            ..Options::default()
        };
        let s = suggest(&entries, open, registered, &opts);
        assert_eq!(hosts(&s), [("busy.example", true)]);
        let opts = Options {
            since: Some(1_800_000_002),
            ..Options::default()
        };
        let s = suggest(&entries, open, registered, &opts);
        assert_eq!(hosts(&s), [("busy.example", true)]);
        let text = render_toml(&s, 1_800_000_100);
        assert!(
            text.contains("# 3 request(s), first seen 2027-01-15T08:00:01Z"),
            "{text}"
        );
        assert!(
            text.contains("# seen by DNS only: the rule takes the default port 443"),
            "{text}"
        );
        assert!(!text.contains("ports ="), "{text}");
    }

    #[test]
    fn hostile_names_cannot_break_out_of_the_fragment() {
        let hostile = "a\"b\n[[allow]]\nhost = \"x";
        let entries = table(&[
            ("agent", hostile, Some(443), Seen::WouldRefuse),
            (
                "agent",
                "q.example",
                None,
                Seen::Suspicious("x\n[[allow]]\nhost = \"y\""),
            ),
        ]);
        let text = render_toml(&suggest(&entries, open, registered, &Options::default()), 0);
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        let allow = parsed["allow"].as_array().unwrap();
        assert_eq!(allow.len(), 1, "{text}");
        assert_eq!(allow[0]["host"].as_str(), Some(hostile));
    }
}
