//! The proxy's decision, as a pure function: the policy's verdict for the name, the
//! port, the client's group and mode, the kind of request and the answer's address
//! class in; allowed or refused, and why, out. No I/O, no policy or config access:
//! [`super::check`] looks the inputs up and applies the decision in two steps, the name
//! before the lookup (a refused name is never resolved) and each answer address after.

use super::check::Kind;
use super::config::ProxyMode;
use super::error::{ProxyError, RefusalCode};
use super::target::TargetError;
use crate::policy::addr::AddrClass;
use crate::policy::name::Name;
use crate::policy::rules::AllowRule;
use crate::policy::{Allow, Verdict};

/// Everything a decision depends on, already looked up.
pub(crate) struct Ask<'a> {
    /// The name asked for (its words go into the refusal).
    pub name: &'a Name,
    /// What the policy says about the name for the client's group.
    pub verdict: &'a Verdict<'a>,
    /// A `Blocked` verdict: the name of the list that holds the rule.
    pub list: &'a str,
    /// An `Allowed` verdict: the allow rule that admits `port` ([`crate::policy::Policy::allow_for`]).
    pub allow: Option<Allow<'a>>,
    /// An `Allowed` verdict: every allow rule naming the name for the group, most
    /// specific first (for the refusal's words).
    pub rules: &'a [&'a AllowRule],
    pub port: u16,
    /// The client's group, by name.
    pub group: &'a str,
    pub mode: ProxyMode,
    pub kind: Kind,
    /// The public ports of `kind` (`public_connect_ports` or `public_http_ports`).
    pub public_ports: &'a [u16],
    /// The class of an address the answer gave; `None`: decide on the name alone.
    pub class: Option<AddrClass>,
}

/// What may be dialled, and why.
#[derive(Debug)]
pub(crate) enum Decision {
    /// An allow rule (`host (file:line)`) admits the name on this port; `private`: it
    /// opens the private ranges.
    Rule {
        rule: String,
        private: bool,
    },
    /// A public destination on a public port (public and report modes); in report mode,
    /// what the allowlist mode would have refused.
    Public {
        would_refuse: Option<String>,
    },
    Refused(ProxyError),
}

impl Decision {
    /// May an address of `class` be dialled under this decision?
    pub(crate) fn admits(&self, class: AddrClass) -> bool {
        match self {
            Decision::Rule { private, .. } => admits(*private, class),
            Decision::Public { .. } => admits(false, class),
            Decision::Refused(_) => false,
        }
    }
}

/// Decides for a name, then (with `class`) for the address the answer gave.
pub(crate) fn decide(ask: &Ask) -> Decision {
    let decision = decide_name(ask);
    match ask.class {
        Some(class) if !matches!(decision, Decision::Refused(_)) && !decision.admits(class) => {
            Decision::Refused(ProxyError::forbidden(
                RefusalCode::DeniedAddress,
                format!(
                    "an address of {} is denied: {} ({})",
                    ask.name.as_str(),
                    class.as_str(),
                    class.describe()
                ),
            ))
        }
        _ => decision,
    }
}

/// The name's decision: the verdict, then the mode.
fn decide_name(ask: &Ask) -> Decision {
    let (name, port, kind) = (ask.name.as_str(), ask.port, ask.kind);
    // What the allowlist mode says; public and report modes go on from there.
    let refusal = match ask.verdict {
        Verdict::Malformed(e) => {
            return Decision::Refused(ProxyError::BadTarget {
                target: name.to_owned(),
                error: TargetError::BadName(e.to_string()),
            });
        }
        Verdict::Blocked(m) => {
            return Decision::Refused(ProxyError::forbidden(
                RefusalCode::Blocked,
                format!("{name} is blocked by {:#}", m.described_in(ask.list)),
            ));
        }
        Verdict::Special(special) => {
            return Decision::Refused(ProxyError::forbidden(
                RefusalCode::SpecialUse,
                format!(
                    "{name} is a special-use name ({}); it is never dialled",
                    special.as_str()
                ),
            ));
        }
        Verdict::Allowed(rule) => match ask.allow.filter(|_| port_ok(port, kind)) {
            Some(allow) => {
                return Decision::Rule {
                    rule: rule_ref(allow.rule),
                    private: allow.private,
                };
            }
            None => port_refusal(ask, ask.rules.first().copied().unwrap_or(rule)),
        },
        Verdict::Excepted(_) | Verdict::Pass => ProxyError::forbidden(
            RefusalCode::NotAllowlisted,
            format!(
                "{name}:{port} is not on the allowlist of group {group}; an operator can allow it: {}",
                add_command(name, port, ask.group),
                group = ask.group
            ),
        ),
    };
    match ask.mode {
        ProxyMode::Allowlist => Decision::Refused(refusal),
        ProxyMode::Public | ProxyMode::Report => {
            if !ask.public_ports.contains(&port) {
                return Decision::Refused(ProxyError::forbidden(
                    RefusalCode::PortNotAllowed,
                    format!(
                        "port {port} is not a public {} port ({:?}) and no allow rule names {name}:{port}",
                        if kind == Kind::Connect {
                            "CONNECT"
                        } else {
                            "HTTP"
                        },
                        ask.public_ports,
                    ),
                ));
            }
            let would = (ask.mode == ProxyMode::Report).then(|| refusal.to_string());
            Decision::Public {
                would_refuse: would,
            }
        }
    }
}

/// Allow rules name the name, none of them for this port (or it is CONNECT to 80).
fn port_refusal(ask: &Ask, first: &AllowRule) -> ProxyError {
    let (name, port) = (ask.name.as_str(), ask.port);
    let what = if ask.kind == Kind::Connect && port == 80 {
        "port 80 is plain HTTP: send http:// requests through the proxy instead of CONNECT"
            .to_owned()
    } else {
        let ports: Vec<String> = ask
            .rules
            .iter()
            .flat_map(|r| r.ports.iter().map(u16::to_string))
            .collect();
        format!(
            "rule {} allows ports [{}], not {port}; an operator can allow it: {}",
            rule_ref(first),
            ports.join(", "),
            add_command(name, port, ask.group)
        )
    };
    ProxyError::forbidden(
        RefusalCode::PortNotAllowed,
        format!("{name}:{port}: {what}"),
    )
}

/// The operator command that allows `name:port` for `group`: agents (Claude Code and
/// others) show a refusal's text to the model, which can ask for exactly this.
fn add_command(name: &str, port: u16, group: &str) -> String {
    format!("portcullis allowlist add {name} --port {port} --group {group}")
}

/// May an address of `class` be dialled, `private`: under a rule with `private = true`?
pub(crate) fn admits(private: bool, class: AddrClass) -> bool {
    !class.is_denied() || (private && private_ok(class))
}

/// Classes an allow rule with `private = true` lets through. Metadata endpoints,
/// the gate itself, its default gateway, configured ranges and the odd special forms
/// never pass.
pub(crate) fn private_ok(class: AddrClass) -> bool {
    matches!(
        class,
        AddrClass::Loopback
            | AddrClass::Private
            | AddrClass::LinkLocal
            | AddrClass::Cgnat
            | AddrClass::Ula
            | AddrClass::SiteLocal
    )
}

pub(crate) fn rule_ref(rule: &AllowRule) -> String {
    format!("{} ({}:{})", rule.host, rule.file, rule.line)
}

/// CONNECT to port 80 is refused whatever the rules say: plain HTTP goes through the
/// proxy as HTTP, where the request line and Host are checked.
pub(crate) fn port_ok(port: u16, kind: Kind) -> bool {
    !(kind == Kind::Connect && port == 80)
}

#[cfg(test)]
mod tests {
    //! One row a case, as smokescreen tests its ACL: mode × verdict × kind × port (and
    //! the answer's address class) → the decision line's decision and code.

    use super::*;
    use crate::policy::groups::ALL_GROUPS;
    use crate::policy::name::NameError;
    use crate::policy::rules::{ListMatch, Origin, RuleKind};
    use crate::policy::special::SpecialUse;

    /// The name's verdict in a row.
    #[derive(Debug, Clone, Copy)]
    enum V {
        /// An allow rule with these ports (`private = false`).
        Rule(&'static [u16]),
        /// The same with `private = true`.
        PrivateRule(&'static [u16]),
        Excepted,
        Pass,
        Blocked,
        Special,
        Malformed,
    }

    /// mode, verdict, kind, port, the answer's address class (`None`: the name alone)
    /// → (decision, code).
    type Row = (
        ProxyMode,
        V,
        Kind,
        u16,
        Option<AddrClass>,
        (&'static str, &'static str),
    );

    /// What the decision line says.
    fn outcome(d: &Decision) -> (&'static str, &'static str) {
        match d {
            Decision::Rule { .. } => ("allowed", "allow_rule"),
            Decision::Public { would_refuse: None } => ("allowed", "public_destination"),
            Decision::Public {
                would_refuse: Some(_),
            } => ("allowed_report", "public_destination"),
            Decision::Refused(err) => ("refused", err.code()),
        }
    }

    fn list_match() -> ListMatch {
        ListMatch {
            kind: RuleKind::NameAndSubdomains,
            origin: Origin { list: 0, line: 7 },
            rule: "api.example.com".into(),
            important: false,
        }
    }

    fn run(&(mode, verdict, kind, port, class, _): &Row) -> (&'static str, &'static str) {
        let name = Name::parse("api.example.com").unwrap();
        let (ports, private) = match verdict {
            V::Rule(ports) => (ports, false),
            V::PrivateRule(ports) => (ports, true),
            _ => (&[][..], false),
        };
        let rule = AllowRule {
            host: "api.example.com".into(),
            ports: ports.to_vec(),
            groups: ALL_GROUPS,
            private,
            file: "allowlist.toml".into(),
            line: 3,
            comment: None,
        };
        let verdict = match verdict {
            V::Rule(_) | V::PrivateRule(_) => Verdict::Allowed(&rule),
            V::Excepted => Verdict::Excepted(list_match()),
            V::Pass => Verdict::Pass,
            V::Blocked => Verdict::Blocked(list_match()),
            V::Special => Verdict::Special(SpecialUse::LocalOnly),
            V::Malformed => Verdict::Malformed(NameError::EmptyLabel),
        };
        let named = matches!(verdict, Verdict::Allowed(_));
        let rules = if named { vec![&rule] } else { Vec::new() };
        // What `Policy::allow_for` picks: the rule, if its ports hold this one.
        let allow = (named && rule.ports.contains(&port)).then_some(Allow {
            rule: &rule,
            private,
        });
        let public_ports: &[u16] = match kind {
            Kind::Connect => &[443],
            Kind::Http => &[80],
        };
        let decision = decide(&Ask {
            name: &name,
            verdict: &verdict,
            list: "threats",
            allow,
            rules: &rules,
            port,
            group: "default",
            mode,
            kind,
            public_ports,
            class,
        });
        outcome(&decision)
    }

    #[test]
    fn decisions() {
        use AddrClass::{CloudMetadata, Gateway, Loopback, Private, Public as Open};
        use Kind::{Connect, Http};
        use ProxyMode::{Allowlist, Public, Report};
        use V::*;
        let allowed = ("allowed", "allow_rule");
        let public = ("allowed", "public_destination");
        let report = ("allowed_report", "public_destination");
        let refused = |code| ("refused", code);
        let no = None;
        #[rustfmt::skip]
        let rows: &[Row] = &[
            // allowlist: only what a rule names, on its ports
            (Allowlist, Rule(&[443]),     Connect, 443,  no, allowed),
            (Allowlist, Rule(&[443]),     Connect, 8443, no, refused("port_not_allowed")),
            (Allowlist, Rule(&[80, 443]), Connect, 80,   no, refused("port_not_allowed")),
            (Allowlist, Rule(&[80]),      Http,    80,   no, allowed),
            (Allowlist, Rule(&[443]),     Http,    80,   no, refused("port_not_allowed")),
            (Allowlist, Rule(&[443]),     Http,    443,  no, allowed),
            (Allowlist, Pass,             Connect, 443,  no, refused("not_allowlisted")),
            (Allowlist, Excepted,         Http,    80,   no, refused("not_allowlisted")),
            (Allowlist, Blocked,          Connect, 443,  no, refused("blocked")),
            (Allowlist, Special,          Connect, 443,  no, refused("special_use")),
            (Allowlist, Malformed,        Http,    80,   no, refused("bad_target")),
            // public: any public port of a name no list blocks; rules still admit theirs
            (Public,    Pass,             Connect, 443,  no, public),
            (Public,    Excepted,         Http,    80,   no, public),
            (Public,    Pass,             Connect, 8443, no, refused("port_not_allowed")),
            (Public,    Pass,             Http,    443,  no, refused("port_not_allowed")),
            (Public,    Pass,             Connect, 80,   no, refused("port_not_allowed")),
            (Public,    Rule(&[8443]),    Connect, 8443, no, allowed),
            (Public,    Rule(&[443]),     Http,    80,   no, public),
            (Public,    Rule(&[443]),     Connect, 8443, no, refused("port_not_allowed")),
            (Public,    Blocked,          Connect, 443,  no, refused("blocked")),
            (Public,    Special,          Http,    80,   no, refused("special_use")),
            (Public,    Malformed,        Connect, 443,  no, refused("bad_target")),
            // report: public, and what allowlist would refuse goes into the line
            (Report,    Pass,             Connect, 443,  no, report),
            (Report,    Rule(&[443]),     Connect, 443,  no, allowed),
            (Report,    Rule(&[443]),     Http,    80,   no, report),
            (Report,    Pass,             Http,    8080, no, refused("port_not_allowed")),
            (Report,    Blocked,          Http,    80,   no, refused("blocked")),
            // the answer's address class: private ranges only under `private = true`
            (Allowlist, Rule(&[443]),        Connect, 443, Some(Open),          allowed),
            (Allowlist, Rule(&[443]),        Connect, 443, Some(Private),       refused("denied_address")),
            (Allowlist, PrivateRule(&[443]), Connect, 443, Some(Private),       allowed),
            (Allowlist, PrivateRule(&[443]), Http,    443, Some(Loopback),      allowed),
            (Allowlist, PrivateRule(&[80]),  Http,    80,  Some(CloudMetadata), refused("denied_address")),
            (Allowlist, PrivateRule(&[443]), Connect, 443, Some(Gateway),       refused("denied_address")),
            (Public,    Pass,                Connect, 443, Some(Open),          public),
            (Public,    Pass,                Connect, 443, Some(Private),       refused("denied_address")),
            (Report,    Pass,                Http,    80,  Some(Loopback),      refused("denied_address")),
            (Public,    Blocked,             Connect, 443, Some(Private),       refused("blocked")),
        ];
        for (i, r) in rows.iter().enumerate() {
            let (mode, verdict, kind, port, class, want) = *r;
            assert_eq!(
                run(r),
                want,
                "row {i}: mode {mode:?}, verdict {verdict:?}, {kind:?} port {port}, class {class:?}"
            );
        }
    }

    #[test]
    fn the_refusal_names_the_rule_and_its_ports() {
        let name = Name::parse("api.example.com").unwrap();
        let rule = AllowRule {
            host: "api.example.com".into(),
            ports: vec![443],
            groups: ALL_GROUPS,
            private: false,
            file: "allowlist.toml".into(),
            line: 3,
            comment: None,
        };
        let verdict = Verdict::Allowed(&rule);
        let rules = [&rule];
        let ask = |port, kind, mode| Ask {
            name: &name,
            verdict: &verdict,
            list: "",
            allow: None,
            rules: &rules,
            port,
            group: "default",
            mode,
            kind,
            public_ports: &[443, 8443],
            class: None,
        };
        let Decision::Refused(err) = decide(&ask(8443, Kind::Connect, ProxyMode::Allowlist)) else {
            panic!("refused");
        };
        assert!(
            err.to_string()
                .contains("api.example.com:8443: rule api.example.com (allowlist.toml:3) allows ports [443], not 8443"),
            "{err}"
        );
        let Decision::Public {
            would_refuse: Some(would),
        } = decide(&ask(8443, Kind::Connect, ProxyMode::Report))
        else {
            panic!("public, reported");
        };
        assert!(would.contains("allows ports [443], not 8443"), "{would}");
    }
}
