//! What the DNS door does per client group: its mode, the query types it serves, the
//! tunnel guard's action and the rate limit. [`DnsPolicy::decide`] is the table the
//! README documents: verdict × mode × query type → refuse, answer locally, or forward
//! (with the guard's action, and in `report` mode what `allowlist` would have refused).

use serde::Deserialize;

use super::Verdict;
use super::groups::{GroupId, MAX_GROUPS};

/// How DNS answers a group, in the proxy's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DnsMode {
    /// The drop-in resolver: every name no threat list names is forwarded.
    #[default]
    Public,
    /// Only names an allow rule of the group names are forwarded; any other name is
    /// answered here (NXDOMAIN or REFUSED) and never asked upstream.
    Allowlist,
    /// Like `public`, and every query `allowlist` would refuse is logged with `would_refuse`.
    Report,
    /// `allowlist`, and the A/AAAA answers of allowed names carry the gate's own address,
    /// so that clients that ignore HTTPS_PROXY connect to the gate's routed listeners.
    Routed,
    /// `routed` for every name no threat list names, and every query `routed` would
    /// refuse is logged with `would_refuse` (learn mode for clients that ignore
    /// HTTPS_PROXY: with `[proxy]` report mode for the group, the routed listeners pass it).
    RoutedReport,
}

impl DnsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DnsMode::Public => "public",
            DnsMode::Allowlist => "allowlist",
            DnsMode::Report => "report",
            DnsMode::Routed => "routed",
            DnsMode::RoutedReport => "routed_report",
        }
    }

    /// Allowed names are answered with the gate's own address (`routed`, `routed_report`).
    pub fn routed(self) -> bool {
        matches!(self, DnsMode::Routed | DnsMode::RoutedReport)
    }

    /// What `allowlist` would refuse is forwarded and reported (`report`, `routed_report`).
    pub fn reports(self) -> bool {
        matches!(self, DnsMode::Report | DnsMode::RoutedReport)
    }

    /// Only allowed names are forwarded (`allowlist` and `routed`).
    pub fn closed(self) -> bool {
        matches!(self, DnsMode::Allowlist | DnsMode::Routed)
    }
}

/// The tunnel guard's action, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GuardAction {
    /// `block` in `allowlist` and `routed` mode, `log` in `public` and `report`.
    #[default]
    Auto,
    Off,
    /// Count and log a trip; answer as usual.
    Log,
    /// Count, log, and answer NXDOMAIN for the client and registered domain for the
    /// cool-down window.
    Block,
}

impl GuardAction {
    pub fn as_str(self) -> &'static str {
        match self {
            GuardAction::Auto => "auto",
            GuardAction::Off => "off",
            GuardAction::Log => "log",
            GuardAction::Block => "block",
        }
    }

    /// `Auto` made concrete for a group in `mode`.
    pub fn resolved(self, mode: DnsMode) -> GuardAction {
        match (self, mode) {
            (GuardAction::Auto, mode) if mode.closed() => GuardAction::Block,
            (GuardAction::Auto, _) => GuardAction::Log,
            (other, _) => other,
        }
    }
}

/// The answer to a name `allowlist` mode refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NotAllowedAnswer {
    #[default]
    Nxdomain,
    Refused,
}

/// The answer to a query type a group is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum QtypeAnswer {
    #[default]
    Refused,
    Notimp,
}

/// Why the DNS policy (not a threat list) refused a query: a stable code for the
/// metric label and the decision line; the EDE text is made from it at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DnsRefusal {
    /// `allowlist` mode: no allow rule of the group names it.
    NotAllowed,
    /// The group is not served this query type.
    Qtype,
    /// The client is over its rate limit.
    RateLimited,
    /// The tunnel guard blocks this client and registered domain for a while.
    Tunnel,
}

impl DnsRefusal {
    pub const ALL: [DnsRefusal; 4] = [
        DnsRefusal::NotAllowed,
        DnsRefusal::Qtype,
        DnsRefusal::RateLimited,
        DnsRefusal::Tunnel,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DnsRefusal::NotAllowed => "not_allowed",
            DnsRefusal::Qtype => "qtype",
            DnsRefusal::RateLimited => "rate_limited",
            DnsRefusal::Tunnel => "tunnel",
        }
    }
}

/// A rate: `queries` per `per_secs` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub queries: u32,
    pub per_secs: u32,
}

/// One group's DNS settings, resolved (no `Auto`, rate `None` = unlimited).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDns {
    pub mode: DnsMode,
    /// Query type codes served, sorted; `None`: every type but the ones never served
    /// (ANY, AXFR, IXFR).
    pub qtypes: Option<Vec<u16>>,
    /// The same types as configured, upper case, for explanations.
    pub qtype_names: Vec<String>,
    pub guard: GuardAction,
    pub rate: Option<Rate>,
    /// `routed` mode: the addresses answered for allowed names; empty: the local address
    /// the query arrived on.
    pub routed_addresses: Vec<std::net::IpAddr>,
}

impl Default for GroupDns {
    fn default() -> Self {
        GroupDns {
            mode: DnsMode::Public,
            qtypes: None,
            qtype_names: Vec::new(),
            guard: GuardAction::Log,
            rate: None,
            routed_addresses: Vec::new(),
        }
    }
}

impl GroupDns {
    pub fn serves(&self, qtype: u16) -> bool {
        self.qtypes
            .as_ref()
            .is_none_or(|types| types.binary_search(&qtype).is_ok())
    }
}

/// What the DNS door does with one query, before any upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsAction {
    /// Answered here with this refusal; nothing goes upstream.
    Refuse(DnsRefusal),
    /// The name verdict answers it here: blocked, special-use, malformed.
    Local,
    /// Ask the upstreams (or the cache). `guard`: the tunnel guard's action on the name
    /// (`Off` when the name carries nothing a client chose: an exact allow rule).
    /// `would_refuse`: in `report` mode, what `allowlist` mode would have refused.
    Forward {
        guard: GuardAction,
        would_refuse: Option<DnsRefusal>,
    },
}

/// Every group's DNS settings, indexed by [`GroupId`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsPolicy {
    groups: Vec<GroupDns>,
    pub not_allowed: NotAllowedAnswer,
    pub qtype_answer: QtypeAnswer,
    /// TTL of `routed` answers, seconds.
    pub routed_ttl: u32,
}

impl Default for DnsPolicy {
    fn default() -> Self {
        DnsPolicy {
            groups: vec![GroupDns::default()],
            not_allowed: NotAllowedAnswer::Nxdomain,
            qtype_answer: QtypeAnswer::Refused,
            routed_ttl: DEFAULT_ROUTED_TTL,
        }
    }
}

/// Short: a routed answer names the gate, and a client should ask again soon after the
/// allowlist changes.
pub const DEFAULT_ROUTED_TTL: u32 = 30;

static DEFAULT_GROUP: GroupDns = GroupDns {
    mode: DnsMode::Public,
    qtypes: None,
    qtype_names: Vec::new(),
    guard: GuardAction::Log,
    rate: None,
    routed_addresses: Vec::new(),
};

impl DnsPolicy {
    /// `groups[i]` is the settings of `GroupId(i)`; groups past the end get the last
    /// one's default (public, every type, guard `log`, no limit).
    pub fn new(
        groups: Vec<GroupDns>,
        not_allowed: NotAllowedAnswer,
        qtype_answer: QtypeAnswer,
    ) -> DnsPolicy {
        debug_assert!(groups.len() <= MAX_GROUPS);
        DnsPolicy {
            groups,
            not_allowed,
            qtype_answer,
            routed_ttl: DEFAULT_ROUTED_TTL,
        }
    }

    /// Any group in `routed` mode?
    pub fn any_routed(&self) -> bool {
        self.groups.iter().any(|g| g.mode.routed())
    }

    pub fn group(&self, group: GroupId) -> &GroupDns {
        self.groups
            .get(usize::from(group.0))
            .unwrap_or(&DEFAULT_GROUP)
    }

    /// The decision table. The query type is checked first (a type the group is not
    /// served never goes upstream, whatever the name); then the name's verdict: an allow
    /// rule forwards in every mode, a threat list or a special-use name answers here, and
    /// a name no allow rule names is forwarded in `public`, refused in `allowlist`, and
    /// forwarded with `would_refuse` in `report`.
    pub fn decide(&self, verdict: &Verdict<'_>, group: GroupId, qtype: u16) -> DnsAction {
        let g = self.group(group);
        let report = g.mode.reports();
        let mut would_refuse = None;
        if !g.serves(qtype) {
            if !report {
                return DnsAction::Refuse(DnsRefusal::Qtype);
            }
            would_refuse = Some(DnsRefusal::Qtype);
        }
        match verdict {
            Verdict::Blocked(_) | Verdict::Special(_) | Verdict::Malformed(_) => DnsAction::Local,
            Verdict::Allowed(rule) => DnsAction::Forward {
                // Under a wildcard the labels left of it are the client's to choose; an
                // exact name carries nothing. In public and report mode every name counts.
                guard: if !g.mode.closed() || rule.host.starts_with("*.") {
                    g.guard
                } else {
                    GuardAction::Off
                },
                would_refuse,
            },
            Verdict::Excepted(_) | Verdict::Pass => match g.mode {
                DnsMode::Allowlist | DnsMode::Routed => DnsAction::Refuse(DnsRefusal::NotAllowed),
                DnsMode::Public => DnsAction::Forward {
                    guard: g.guard,
                    would_refuse,
                },
                DnsMode::Report | DnsMode::RoutedReport => DnsAction::Forward {
                    guard: g.guard,
                    would_refuse: would_refuse.or(Some(DnsRefusal::NotAllowed)),
                },
            },
        }
    }
}

impl DnsPolicy {
    /// What the DNS door does with `verdict` for `group` (named `group_name`), in words,
    /// for `portcullis check` and the explain API. `qtype`: code and name, when asked.
    pub fn explain(
        &self,
        verdict: &Verdict<'_>,
        group: GroupId,
        group_name: &str,
        qtype: Option<(u16, &str)>,
    ) -> String {
        let g = self.group(group);
        let mode = g.mode.as_str();
        let served = if g.qtype_names.is_empty() {
            "every type but ANY, AXFR, IXFR".to_owned()
        } else {
            g.qtype_names.join(", ")
        };
        let (code, qname) = qtype.unwrap_or((1, "A"));
        let guard = g.guard.as_str();
        let routed = if g.mode.routed() && matches!(code, 1 | 28) {
            "; the answer carries the gate's own address (routed listeners)"
        } else {
            ""
        };
        let explained = match self.decide(verdict, group, code) {
            DnsAction::Refuse(DnsRefusal::Qtype) => format!(
                "{mode} mode: query type {qname} is not served to group {group_name} (served: {served}); refused, never forwarded"
            ),
            DnsAction::Refuse(DnsRefusal::NotAllowed) => format!(
                "{mode} mode: not on the allowlist of group {group_name}; answered {}, never asked upstream",
                match self.not_allowed {
                    NotAllowedAnswer::Nxdomain => "NXDOMAIN",
                    NotAllowedAnswer::Refused => "REFUSED",
                }
            ),
            DnsAction::Refuse(other) => format!("{mode} mode: refused ({})", other.as_str()),
            DnsAction::Local => format!("{mode} mode: answered by the gate (see the decision)"),
            DnsAction::Forward {
                guard: GuardAction::Off,
                would_refuse: None,
            } => format!("{mode} mode: forwarded {qname}; an exact allow rule, so no tunnel guard"),
            DnsAction::Forward {
                would_refuse: None, ..
            } => format!("{mode} mode: forwarded {qname}; tunnel guard: {guard}"),
            DnsAction::Forward {
                would_refuse: Some(would),
                ..
            } => format!(
                "{mode} mode: forwarded {qname}, logged with would_refuse = {}; tunnel guard: {guard}",
                would.as_str()
            ),
        };
        match self.decide(verdict, group, code) {
            DnsAction::Forward { .. } => format!("{explained}{routed}"),
            _ => explained,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rules::AllowRule;
    use crate::policy::special::SpecialUse;

    const A: u16 = 1;
    const TXT: u16 = 16;

    fn rule(host: &str) -> AllowRule {
        AllowRule {
            host: host.into(),
            ports: vec![443],
            groups: crate::policy::groups::ALL_GROUPS,
            private: false,
            file: "allowlist.toml".into(),
            line: 1,
            comment: None,
        }
    }

    fn policy(mode: DnsMode, guard: GuardAction) -> DnsPolicy {
        DnsPolicy::new(
            vec![GroupDns {
                mode,
                qtypes: Some(vec![A, 28]),
                qtype_names: vec!["A".into(), "AAAA".into()],
                guard: guard.resolved(mode),
                rate: None,
                routed_addresses: Vec::new(),
            }],
            NotAllowedAnswer::Nxdomain,
            QtypeAnswer::Refused,
        )
    }

    #[test]
    fn the_decision_table() {
        use DnsAction::{Forward, Local, Refuse};
        use DnsMode::{Allowlist, Public, Report, Routed, RoutedReport};
        use DnsRefusal::{NotAllowed, Qtype};
        use GuardAction::{Auto, Block, Log, Off};
        let exact = rule("api.example.com");
        let wild = rule("*.example.com");
        let g = GroupId::DEFAULT;
        let fwd = |guard, would_refuse| Forward {
            guard,
            would_refuse,
        };
        // (mode, guard as configured, verdict, qtype) → action
        let rows: Vec<(DnsMode, GuardAction, Verdict, u16, DnsAction)> = vec![
            (Allowlist, Auto, Verdict::Pass, A, Refuse(NotAllowed)),
            (Allowlist, Auto, Verdict::Allowed(&exact), A, fwd(Off, None)),
            (
                Allowlist,
                Auto,
                Verdict::Allowed(&wild),
                A,
                fwd(Block, None),
            ),
            (Allowlist, Log, Verdict::Allowed(&wild), A, fwd(Log, None)),
            (Allowlist, Off, Verdict::Allowed(&wild), A, fwd(Off, None)),
            (
                Allowlist,
                Auto,
                Verdict::Allowed(&exact),
                TXT,
                Refuse(Qtype),
            ),
            (Allowlist, Auto, Verdict::Pass, TXT, Refuse(Qtype)),
            (
                Allowlist,
                Auto,
                Verdict::Special(SpecialUse::Localhost),
                A,
                Local,
            ),
            (Routed, Auto, Verdict::Pass, A, Refuse(NotAllowed)),
            (Routed, Auto, Verdict::Allowed(&exact), A, fwd(Off, None)),
            (Routed, Auto, Verdict::Allowed(&wild), A, fwd(Block, None)),
            (Routed, Auto, Verdict::Allowed(&exact), TXT, Refuse(Qtype)),
            // routed_report: forwarded (and routed at the listener), reported, guard logs
            (
                RoutedReport,
                Auto,
                Verdict::Pass,
                A,
                fwd(Log, Some(NotAllowed)),
            ),
            (
                RoutedReport,
                Auto,
                Verdict::Allowed(&exact),
                A,
                fwd(Log, None),
            ),
            (
                RoutedReport,
                Auto,
                Verdict::Allowed(&exact),
                TXT,
                fwd(Log, Some(Qtype)),
            ),
            (
                RoutedReport,
                Auto,
                Verdict::Special(SpecialUse::Localhost),
                A,
                Local,
            ),
            (Public, Auto, Verdict::Pass, A, fwd(Log, None)),
            (Public, Auto, Verdict::Allowed(&exact), A, fwd(Log, None)),
            (Public, Block, Verdict::Pass, A, fwd(Block, None)),
            (Public, Auto, Verdict::Pass, TXT, Refuse(Qtype)),
            (
                Public,
                Auto,
                Verdict::Special(SpecialUse::Localhost),
                A,
                Local,
            ),
            (Report, Auto, Verdict::Pass, A, fwd(Log, Some(NotAllowed))),
            (Report, Auto, Verdict::Allowed(&exact), A, fwd(Log, None)),
            (Report, Auto, Verdict::Pass, TXT, fwd(Log, Some(Qtype))),
            (
                Report,
                Auto,
                Verdict::Allowed(&wild),
                TXT,
                fwd(Log, Some(Qtype)),
            ),
        ];
        for (mode, guard, verdict, qtype, want) in rows {
            let got = policy(mode, guard).decide(&verdict, g, qtype);
            assert_eq!(
                got,
                want,
                "{} / {} / {} / type {qtype}",
                mode.as_str(),
                guard.as_str(),
                verdict.outcome()
            );
        }
    }

    #[test]
    fn groups_without_settings_are_public_and_unlimited() {
        let p = DnsPolicy::default();
        let g = p.group(GroupId(7));
        assert_eq!(g.mode, DnsMode::Public);
        assert!(g.serves(TXT));
        assert_eq!(g.rate, None);
    }
}
