//! `allowlist.toml`: the operator's allow rules, shared by the DNS firewall and the proxy.
//!
//! ```toml
//! [[allow]]
//! host = "api.anthropic.com"     # that name only; "*.example.com" = any subdomain of example.com
//! ports = [443]                  # proxy ports (default [443])
//! groups = ["agent", "litellm"]  # default: every group
//! private = false                # may it resolve to / be dialled at a private address?
//! comment = "Claude API"
//! ```

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, line_of};
use crate::policy::groups::{ALL_GROUPS, GroupMask, Groups};
use crate::policy::name::Name;
use crate::policy::rules::AllowRule;

/// The allowlist shipped with Portcullis (built into the binary).
pub const BUILTIN_ALLOWLIST: &str = include_str!("../../allowlist.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowFile {
    #[serde(default)]
    allow: Vec<AllowEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowEntry {
    host: Spanned<String>,
    #[serde(default = "default_ports")]
    ports: Vec<Spanned<u16>>,
    #[serde(default)]
    /// Spanned as a whole too: `groups = []` is reported at its own line.
    groups: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    private: bool,
    #[serde(default)]
    comment: Option<String>,
}

fn default_ports() -> Vec<Spanned<u16>> {
    vec![Spanned::new(0..0, 443)]
}

/// Parses and validates an allowlist against the configured groups.
pub fn parse(text: &str, file: &str, groups: &Groups) -> Result<Vec<AllowRule>, ConfigError> {
    let parsed: AllowFile = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        file: file.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    let invalid = |offset: usize, key: &str, message: String| ConfigError::Invalid {
        file: file.to_owned(),
        line: line_of(text, offset),
        key: key.to_owned(),
        message,
    };
    let mut rules = Vec::with_capacity(parsed.allow.len());
    for entry in parsed.allow {
        let at = entry.host.span().start;
        let raw = entry.host.get_ref().trim();
        // An IP literal (the proxy's only way to reach an address target): stored in
        // canonical form; IPv6 with or without brackets, no zone id.
        let literal = raw
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(raw);
        if let Ok(ip) = literal.parse::<std::net::IpAddr>() {
            rules.push(allow_rule(&entry, ip.to_string(), file, text, groups)?);
            continue;
        }
        if looks_numeric(raw) {
            return Err(invalid(
                at,
                "allow.host",
                format!("`{raw}` is neither a host name nor a strict IP address"),
            ));
        }
        let (wild, base) = match raw.strip_prefix("*.") {
            Some(base) => (true, base),
            None => (false, raw),
        };
        let name =
            Name::parse(base).map_err(|e| invalid(at, "allow.host", format!("`{raw}`: {e}")))?;
        if wild && !name.as_str().contains('.') {
            return Err(invalid(
                at,
                "allow.host",
                format!("`{raw}` would allow a whole top-level domain"),
            ));
        }
        let host = if wild {
            format!("*.{}", name.as_str())
        } else {
            name.as_str().to_owned()
        };
        rules.push(allow_rule(&entry, host, file, text, groups)?);
    }
    Ok(rules)
}

/// Whether a host would be read as an IPv4 address by some parser: the last label is
/// decimal or `0x` hex (`127.1`, `2130706433`, `0x7f.1`).
fn looks_numeric(host: &str) -> bool {
    let last = host.trim_end_matches('.').rsplit('.').next().unwrap_or("");
    !last.is_empty()
        && (last.bytes().all(|b| b.is_ascii_digit())
            || ((last.starts_with("0x") || last.starts_with("0X"))
                && last[2..].bytes().all(|b| b.is_ascii_hexdigit())))
}

fn allow_rule(
    entry: &AllowEntry,
    host: String,
    file: &str,
    text: &str,
    groups: &Groups,
) -> Result<AllowRule, ConfigError> {
    let at = entry.host.span().start;
    let invalid = |offset: usize, key: &str, message: String| ConfigError::Invalid {
        file: file.to_owned(),
        line: line_of(text, offset),
        key: key.to_owned(),
        message,
    };
    if let Some(empty) = entry.groups.as_ref().filter(|g| g.get_ref().is_empty()) {
        // `groups = []` would match no client at all: a rule that silently does nothing.
        return Err(invalid(
            empty.span().start,
            "allow.groups",
            "an empty group list matches no client; name the groups, or leave `groups` out for every group".into(),
        ));
    }
    let mut mask: GroupMask = 0;
    for group in entry.groups.iter().flat_map(|g| g.get_ref()) {
        let id = groups.id(group.get_ref()).ok_or_else(|| {
            invalid(
                group.span().start,
                "allow.groups",
                format!(
                    "unknown group `{}` (define it under [groups] in portcullis.toml)",
                    group.get_ref()
                ),
            )
        })?;
        mask |= id.mask();
    }
    if entry.groups.is_none() {
        mask = ALL_GROUPS;
    }
    let mut ports = Vec::with_capacity(entry.ports.len());
    for port in &entry.ports {
        if *port.get_ref() == 0 {
            return Err(invalid(
                port.span().start,
                "allow.ports",
                "port 0 is not a port".into(),
            ));
        }
        ports.push(*port.get_ref());
    }
    Ok(AllowRule {
        host,
        ports,
        groups: mask,
        private: entry.private,
        file: file.to_owned(),
        line: line_of(text, at) as u32,
        comment: entry.comment.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_allowlist_parses_and_names_the_agent_apis() {
        let rules = parse(BUILTIN_ALLOWLIST, "allowlist.toml", &Groups::default()).unwrap();
        let hosts: Vec<_> = rules.iter().map(|r| r.host.as_str()).collect();
        for needed in [
            "api.anthropic.com",
            "www.virustotal.com",
            "api.telegram.org",
            "github.com",
            "huggingface.co",
        ] {
            assert!(hosts.contains(&needed), "{needed} missing from {hosts:?}");
        }
        assert!(
            rules.iter().all(|r| !r.private),
            "the shipped allowlist allows no private destination"
        );
    }

    #[test]
    fn rules_normalise_and_errors_point_at_the_line() {
        let mut groups = Groups::default();
        groups.add("agent");
        let text = "[[allow]]\nhost = \"API.Example.COM.\"\ngroups = [\"agent\"]\n\n[[allow]]\nhost = \"*.cdn.example\"\nports = [443, 8443]\n";
        let rules = parse(text, "allow.toml", &groups).unwrap();
        assert_eq!(rules[0].host, "api.example.com");
        assert_eq!(rules[0].line, 2);
        assert_eq!(rules[0].ports, vec![443]);
        assert_eq!(rules[1].host, "*.cdn.example");
        assert_eq!(rules[1].ports, vec![443, 8443]);

        let err = parse(
            "[[allow]]\nhost = \"ok.example\"\n[[allow]]\nhost = \"bad host\"\n",
            "allow.toml",
            &groups,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("allow.toml:4: key `allow.host`: `bad host`"),
            "{err}"
        );
        let err = parse(
            "[[allow]]\nhost = \"a.example\"\ngroups = [\"nobody\"]\n",
            "allow.toml",
            &groups,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("allow.toml:3: key `allow.groups`: unknown group `nobody`"),
            "{err}"
        );
        // `groups = []` matches no client: refused, not silently dead (issue 11, item 13).
        let err = parse(
            "[[allow]]\nhost = \"a.example\"\nports = [443]\ngroups = []\n",
            "allow.toml",
            &groups,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(
                "allow.toml:4: key `allow.groups`: an empty group list matches no client"
            ),
            "{err}"
        );
        let err = parse("[[allow]]\nhost = \"*.com\"\n", "allow.toml", &groups)
            .unwrap_err()
            .to_string();
        assert!(err.contains("top-level"), "{err}");
        let err = parse("[[allow]]\nhots = \"a.example\"\n", "allow.toml", &groups)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("hots"), "{err}");
    }

    #[test]
    fn ip_literal_hosts_are_canonical_and_loose_numbers_refused() {
        let groups = Groups::default();
        let text = "[[allow]]\nhost = \"[2001:DB8::0001]\"\n[[allow]]\nhost = \"203.0.113.7\"\nports = [8443]\n";
        let rules = parse(text, "allow.toml", &groups).unwrap();
        assert_eq!(rules[0].host, "2001:db8::1");
        assert_eq!(rules[1].host, "203.0.113.7");
        assert_eq!(rules[1].ports, vec![8443]);
        for bad in [
            "127.1",
            "2130706433",
            "0x7f.1",
            "0177.0.0.1",
            "fe80::1%eth0",
        ] {
            let text = format!("[[allow]]\nhost = \"{bad}\"\n");
            assert!(parse(&text, "allow.toml", &groups).is_err(), "{bad}");
        }
    }
}
