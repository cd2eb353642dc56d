//! `[dns]`: the DNS listener, block answers, and per group the mode, the query types,
//! the tunnel guard (`[dns.guard]`) and the rate limit (`[dns.rate_limit]`).
//!
//! ```toml
//! [dns]
//! mode = "public"                    # public | allowlist | report
//! modes = { agent = "allowlist" }
//! qtypes = { agent = ["A", "AAAA", "CNAME", "HTTPS"] }
//!
//! [dns.guard]
//! action = "auto"                    # auto | off | log | block
//!
//! [dns.rate_limit]
//! queries = 1000                     # per client per `per_secs`; 0: off
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use hickory_proto::rr::RecordType;
use serde::Deserialize;

pub use crate::policy::dns::{DnsMode, GuardAction, NotAllowedAnswer, QtypeAnswer};
use crate::policy::dns::{DnsPolicy, GroupDns, Rate};
use crate::policy::groups::Groups;

/// How blocked names are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BlockAnswer {
    /// NXDOMAIN with an SOA in the authority section, so clients cache the refusal.
    #[default]
    Nxdomain,
    /// `0.0.0.0` for A, `::` for AAAA, no data for other types.
    ZeroIp,
    /// REFUSED.
    Refused,
    /// The addresses in `block_addresses`.
    Addresses,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BareNames {
    #[default]
    Nxdomain,
    Forward,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Addresses served on both UDP and TCP. Port 0 picks a free port (logged).
    pub listen: Vec<SocketAddr>,
    /// Queries waiting on an upstream at once; beyond it the gate answers SERVFAIL at once.
    pub max_inflight: usize,
    /// Idle timeout of a DNS-over-TCP connection, seconds.
    pub tcp_idle_secs: u64,
    pub block_answer: BlockAnswer,
    pub block_addresses: Vec<std::net::IpAddr>,
    /// TTL of block answers (and of the SOA minimum), seconds.
    pub block_ttl: u32,
    pub bare_names: BareNames,
    /// Remove private, loopback, link-local... addresses from upstream answers.
    pub rebinding_protection: bool,
    /// Mode of groups that `modes` does not name.
    pub mode: DnsMode,
    /// Group name → mode.
    pub modes: BTreeMap<String, DnsMode>,
    /// The answer to a name `allowlist` mode refuses: `nxdomain` or `refused`.
    pub not_allowed: NotAllowedAnswer,
    /// Group name → the query types it is served (others are refused, never forwarded).
    pub qtypes: BTreeMap<String, Vec<String>>,
    /// The answer to a query type a group is not served: `refused` or `notimp`.
    pub qtype_answer: QtypeAnswer,
    pub guard: GuardConfig,
    pub rate_limit: RateLimitConfig,
    /// TTL of `routed` answers (the gate's own address), seconds.
    pub routed_ttl: u32,
    /// Group name → the addresses `routed` answers carry (default: the local address
    /// the query arrived on).
    pub routed_addresses: BTreeMap<String, Vec<std::net::IpAddr>>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: vec!["127.0.0.1:5353".parse().expect("valid literal")],
            max_inflight: 1024,
            tcp_idle_secs: 10,
            block_answer: BlockAnswer::Nxdomain,
            block_addresses: Vec::new(),
            block_ttl: 3600,
            bare_names: BareNames::Nxdomain,
            rebinding_protection: true,
            mode: DnsMode::Public,
            modes: BTreeMap::new(),
            not_allowed: NotAllowedAnswer::Nxdomain,
            qtypes: BTreeMap::new(),
            qtype_answer: QtypeAnswer::Refused,
            guard: GuardConfig::default(),
            rate_limit: RateLimitConfig::default(),
            routed_ttl: crate::policy::dns::DEFAULT_ROUTED_TTL,
            routed_addresses: BTreeMap::new(),
        }
    }
}

/// `[dns.guard]`: the tunnel guard on the names that are forwarded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    /// Action of groups `actions` does not name.
    pub action: GuardAction,
    /// Group name → action.
    pub actions: BTreeMap<String, GuardAction>,
    /// Fresh label bytes one client may send to one registered domain in `window_secs`.
    pub budget_bytes: u32,
    pub window_secs: u32,
    /// How long a `block` lasts, seconds.
    pub cooldown_secs: u32,
    /// (client, registered domain) pairs tracked at most.
    pub max_entries: usize,
    /// A Public Suffix List file (publicsuffix.org format) to use instead of the
    /// compiled-in copy; re-read at every reload.
    pub suffix_list: Option<PathBuf>,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            action: GuardAction::Auto,
            actions: BTreeMap::new(),
            budget_bytes: 1024,
            window_secs: 600,
            cooldown_secs: 600,
            max_entries: 65_536,
            suffix_list: None,
        }
    }
}

/// `[dns.rate_limit]`: a token bucket per client address.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Queries per client per `per_secs` (the bucket's size; it refills evenly). 0: off.
    pub queries: u32,
    pub per_secs: u32,
    /// Group name → queries per `per_secs` (0: no limit for that group).
    pub groups: BTreeMap<String, u32>,
    /// Clients tracked at most.
    pub max_clients: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            // Pi-hole's default: generous for a person's or an agent's resolver use
            // (a page or a build is tens of names), far below a flood or a tunnel.
            queries: 1000,
            per_secs: 60,
            groups: BTreeMap::new(),
            max_clients: 65_536,
        }
    }
}

/// The code of a query type written in `qtypes` (`A`, `https`, `TYPE65`).
pub fn qtype_code(name: &str) -> Result<u16, String> {
    let upper = name.to_ascii_uppercase();
    if let Some(code) = upper.strip_prefix("TYPE")
        && let Ok(code) = code.parse::<u16>()
    {
        return Ok(code);
    }
    match RecordType::from_str(&upper) {
        Ok(RecordType::ANY | RecordType::AXFR | RecordType::IXFR) => Err(format!(
            "`{name}` is never served (ANY, AXFR and IXFR are refused for every group)"
        )),
        Ok(t) => Ok(u16::from(t)),
        Err(_) => Err(format!(
            "`{name}` is not a query type (A, AAAA, CNAME, HTTPS, TXT, ..., or TYPEn)"
        )),
    }
}

impl DnsConfig {
    /// Checks what serde cannot: `(key, message)` of the first problem. `groups` are the
    /// configured group names (`default` included).
    pub fn validate(&self, groups: &[String]) -> Result<(), (&'static str, String)> {
        let known = |key: &'static str, group: &String| {
            if groups.iter().any(|g| g == group) {
                Ok(())
            } else {
                Err((
                    key,
                    format!("unknown group `{group}` (define it under [groups])"),
                ))
            }
        };
        for group in self.modes.keys() {
            known("dns.modes", group)?;
        }
        for (group, types) in &self.qtypes {
            known("dns.qtypes", group)?;
            if types.is_empty() {
                return Err((
                    "dns.qtypes",
                    format!("group `{group}`: an empty list would refuse every query"),
                ));
            }
            for t in types {
                qtype_code(t).map_err(|m| ("dns.qtypes", format!("group `{group}`: {m}")))?;
            }
        }
        for group in self.guard.actions.keys() {
            known("dns.guard.actions", group)?;
        }
        for group in self.rate_limit.groups.keys() {
            known("dns.rate_limit.groups", group)?;
        }
        for (group, addrs) in &self.routed_addresses {
            known("dns.routed_addresses", group)?;
            if addrs.is_empty() {
                return Err((
                    "dns.routed_addresses",
                    format!("group `{group}`: name at least one address, or leave the group out"),
                ));
            }
            if let Some(bad) = addrs
                .iter()
                .find(|a| a.is_unspecified() || a.is_multicast())
            {
                return Err((
                    "dns.routed_addresses",
                    format!("group `{group}`: {bad} is not an address a client can connect to"),
                ));
            }
        }
        if self.routed_ttl == 0 {
            return Err(("dns.routed_ttl", "must be at least 1".into()));
        }
        let g = &self.guard;
        for (key, value) in [
            ("dns.guard.budget_bytes", g.budget_bytes),
            ("dns.guard.window_secs", g.window_secs),
            ("dns.guard.cooldown_secs", g.cooldown_secs),
        ] {
            if value == 0 {
                return Err((key, "must be at least 1".into()));
            }
        }
        if g.max_entries == 0 {
            return Err(("dns.guard.max_entries", "must be at least 1".into()));
        }
        if self.rate_limit.per_secs == 0 {
            return Err(("dns.rate_limit.per_secs", "must be at least 1".into()));
        }
        if self.rate_limit.max_clients == 0 {
            return Err(("dns.rate_limit.max_clients", "must be at least 1".into()));
        }
        Ok(())
    }

    /// The mode of a group by name.
    pub fn mode_of(&self, group: &str) -> DnsMode {
        self.modes.get(group).copied().unwrap_or(self.mode)
    }

    /// The per-group DNS policy for `groups` (validated names: unknown ones are skipped).
    pub fn policy(&self, groups: &Groups) -> DnsPolicy {
        let settings = groups
            .names()
            .iter()
            .map(|name| {
                let mode = self.mode_of(name);
                let qtypes = self.qtypes.get(name).map(|types| {
                    let mut codes: Vec<u16> =
                        types.iter().filter_map(|t| qtype_code(t).ok()).collect();
                    codes.sort_unstable();
                    codes.dedup();
                    codes
                });
                let guard = self
                    .guard
                    .actions
                    .get(name)
                    .copied()
                    .unwrap_or(self.guard.action)
                    .resolved(mode);
                let queries = self
                    .rate_limit
                    .groups
                    .get(name)
                    .copied()
                    .unwrap_or(self.rate_limit.queries);
                GroupDns {
                    mode,
                    qtypes,
                    qtype_names: self
                        .qtypes
                        .get(name)
                        .map(|types| types.iter().map(|t| t.to_ascii_uppercase()).collect())
                        .unwrap_or_default(),
                    guard,
                    rate: (queries > 0).then_some(Rate {
                        queries,
                        per_secs: self.rate_limit.per_secs,
                    }),
                    routed_addresses: self.routed_addresses.get(name).cloned().unwrap_or_default(),
                }
            })
            .collect();
        let mut policy = DnsPolicy::new(settings, self.not_allowed, self.qtype_answer);
        policy.routed_ttl = self.routed_ttl;
        policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> Groups {
        let mut g = Groups::default();
        g.add("agent");
        g.add("bench");
        g
    }

    #[test]
    fn per_group_settings_resolve() {
        let c: DnsConfig = toml::from_str(
            "mode = \"public\"\nmodes = { agent = \"allowlist\" }\n\
             qtypes = { agent = [\"a\", \"AAAA\", \"HTTPS\", \"TYPE65\"] }\n\
             [guard]\nactions = { bench = \"off\" }\n\
             [rate_limit]\nqueries = 100\ngroups = { bench = 0 }\n",
        )
        .unwrap();
        let names = vec!["agent".to_owned(), "bench".to_owned(), "default".to_owned()];
        c.validate(&names).unwrap();
        let g = groups();
        let p = c.policy(&g);
        let agent = p.group(g.id("agent").unwrap());
        assert_eq!(agent.mode, DnsMode::Allowlist);
        assert_eq!(agent.qtypes.as_deref(), Some(&[1, 28, 65][..]));
        assert_eq!(agent.guard, GuardAction::Block);
        assert_eq!(
            agent.rate,
            Some(Rate {
                queries: 100,
                per_secs: 60
            })
        );
        let bench = p.group(g.id("bench").unwrap());
        assert_eq!(bench.guard, GuardAction::Off);
        assert_eq!(bench.rate, None);
        let default = p.group(g.id("default").unwrap());
        assert_eq!(default.mode, DnsMode::Public);
        assert_eq!(default.guard, GuardAction::Log);
        assert!(default.qtypes.is_none());
    }

    #[test]
    fn bad_values_name_their_key() {
        let names = vec!["agent".to_owned(), "default".to_owned()];
        for (toml_text, key, message) in [
            (
                "modes = { nobody = \"allowlist\" }",
                "dns.modes",
                "unknown group `nobody`",
            ),
            (
                "qtypes = { agent = [\"TXTX\"] }",
                "dns.qtypes",
                "`TXTX` is not a query type",
            ),
            (
                "qtypes = { agent = [\"ANY\"] }",
                "dns.qtypes",
                "never served",
            ),
            (
                "qtypes = { agent = [] }",
                "dns.qtypes",
                "refuse every query",
            ),
            (
                "guard.budget_bytes = 0",
                "dns.guard.budget_bytes",
                "at least 1",
            ),
            (
                "guard.actions = { x = \"log\" }",
                "dns.guard.actions",
                "unknown group `x`",
            ),
            (
                "rate_limit.per_secs = 0",
                "dns.rate_limit.per_secs",
                "at least 1",
            ),
        ] {
            let c: DnsConfig = toml::from_str(toml_text).unwrap();
            let (k, m) = c.validate(&names).unwrap_err();
            assert_eq!(k, key, "{toml_text}");
            assert!(m.contains(message), "{toml_text}: {m}");
        }
        assert!(toml::from_str::<DnsConfig>("mode = \"open\"").is_err());
        assert!(toml::from_str::<DnsConfig>("[guard]\naction = \"maybe\"").is_err());
    }
}
