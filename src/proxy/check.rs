//! Resolve, check, then dial exactly what was checked.
//!
//! [`ProxyState::approve`] turns a validated [`Target`] into the list of socket
//! addresses the proxy may dial: the policy decision for the name (allow rules,
//! special-use names, threat lists) and the client group's mode, one resolution
//! through the gate's own DNS pipeline (A and AAAA, never the OS resolver), and the
//! classification of every answer address. Nothing here dials.
//!
//! The decision itself is a pure function (`decide`); here its inputs are looked up and it
//! is applied twice: to the name before the lookup, so a refused name is never resolved,
//! and to every answer address after it.

use std::net::{IpAddr, SocketAddr};

use hickory_proto::op::{Query, ResponseCode};
use hickory_proto::rr::{Name as DnsName, RData, RecordType};

use super::config::ProxyMode;
use super::decide::{Ask, Decision, decide, port_ok, rule_ref};
use super::error::{ProxyError, RefusalCode};
use super::target::{Host, Target};
use super::{ProxyState, Resolve};
use crate::dns::filter::{Filter, Outcome, Reply};
use crate::host::HostAddrs;
use crate::policy::addr::{AddrClass, AddrClassifier};
use crate::policy::dns::DnsRefusal;
use crate::policy::groups::GroupId;
use crate::policy::name::Name;
use crate::policy::{Policy, Verdict};

/// CONNECT tunnel or plain-HTTP forwarding: they allow different ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Connect,
    Http,
}

/// The front door a request came in by: the `door` label of
/// `portcullis_proxy_decisions_total` and the `door` of its decision lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// The proxy listener, before a request head said CONNECT or not (connection
    /// limits, a late or malformed head).
    Proxy,
    /// `CONNECT host:port` on the proxy listener.
    Connect,
    /// An absolute-form `http://` request on the proxy listener.
    Forward,
    /// A routed TLS listener: the destination is the ClientHello's SNI.
    RoutedTls,
    /// A routed HTTP listener: the destination is the `Host` header.
    RoutedHttp,
}

impl Door {
    /// The metric label: a fixed set.
    pub fn label(self) -> &'static str {
        match self {
            Door::Proxy => "proxy",
            Door::Connect => "connect",
            Door::Forward => "forward",
            Door::RoutedTls => "routed_tls",
            Door::RoutedHttp => "routed_http",
        }
    }

    /// The decision line's `door`: `proxy` for both requests of the proxy listener.
    pub fn log_name(self) -> &'static str {
        match self {
            Door::Proxy | Door::Connect | Door::Forward => "proxy",
            Door::RoutedTls => "routed_tls",
            Door::RoutedHttp => "routed_http",
        }
    }
}

/// Who asked, for the decision log (filled in before anything can fail).
#[derive(Debug, Clone)]
pub struct Asker {
    pub client: SocketAddr,
    /// The front door; the proxy listener sets `Connect` or `Forward` once the head is read.
    pub door: Door,
    /// Correlation id of this client connection: on every log line it causes.
    pub conn_id: u64,
    pub group: GroupId,
    pub group_name: String,
    pub mode: ProxyMode,
}

/// What may be dialled, and why.
#[derive(Debug, Clone)]
pub struct Approval {
    /// Checked addresses, in the order to try.
    pub addrs: Vec<SocketAddr>,
    /// The allow rule that decided (`host (file:line)`), when one did.
    pub rule: Option<String>,
    /// Report mode: what the allowlist mode would have refused.
    pub would_refuse: Option<String>,
    /// Addresses skipped as denied, for the log (`ip (class)`).
    pub skipped: Vec<String>,
    /// May the ClientHello carry ECH?
    pub ech_ok: bool,
    /// Correlation ids of the DNS answers the addresses came from (see `Reply::answer_id`).
    pub answer_ids: Vec<u64>,
}

/// Why [`ProxyState::approve`] refused, and the DNS answers it used (none when the
/// name was refused before any lookup): the decision line's `answer_ids`.
#[derive(Debug)]
pub struct Refusal {
    pub error: ProxyError,
    pub answer_ids: Vec<u64>,
}

impl From<ProxyError> for Refusal {
    fn from(error: ProxyError) -> Refusal {
        Refusal {
            error,
            answer_ids: Vec::new(),
        }
    }
}

impl From<Refusal> for ProxyError {
    fn from(refusal: Refusal) -> ProxyError {
        refusal.error
    }
}

/// The class of a destination: the operator's `deny_ranges` first, then the host's own
/// addresses and its default gateway (above the fixed ranges, so that `private = true`,
/// which opens private ranges, never opens the gate itself or its gateway), then the
/// fixed ranges.
fn classify<'c>(
    classifier: &'c AddrClassifier,
    host: &HostAddrs,
    ip: IpAddr,
) -> (AddrClass, Option<&'c str>) {
    let (class, label) = classifier.classify_with_label(ip);
    if class == AddrClass::Configured {
        (class, label)
    } else if host.is_gateway(ip) {
        (AddrClass::Gateway, None)
    } else if host.is_own(ip) {
        (AddrClass::Own, None)
    } else {
        (class, label)
    }
}

/// Is `addr` one of the gate's own listeners? A wildcard listener (`0.0.0.0:3128`) is
/// its port on each of the host's addresses, not the port on every host.
fn is_own_listener(listeners: &[SocketAddr], host: &HostAddrs, addr: SocketAddr) -> bool {
    let ip = addr.ip();
    listeners.iter().any(|l| {
        l.port() == addr.port()
            && (l.ip() == ip
                || ip.is_loopback()
                || ip.is_unspecified()
                || (l.ip().is_unspecified() && host.is_own(ip)))
    })
}

/// The production resolver: the gate's DNS pipeline.
#[async_trait::async_trait]
impl Resolve for Filter {
    async fn lookup(&self, client: IpAddr, name: &Name, qtype: RecordType) -> Reply {
        match DnsName::from_ascii(format!("{}.", name.as_str())) {
            Ok(qname) => self.resolve(client, &Query::query(qname, qtype)).await,
            Err(e) => Reply::new(ResponseCode::Refused, Outcome::Refused, e.to_string()),
        }
    }
}

impl ProxyState {
    /// The client's group and mode, at `door`.
    pub fn asker(&self, client: SocketAddr, door: Door) -> Asker {
        let policy = self.policy.load();
        let group = policy.groups.of(client.ip());
        let group_name = policy.groups.name(group).to_owned();
        let mode = self.config.mode_of(&group_name);
        Asker {
            client,
            door,
            conn_id: crate::telemetry::next_id(),
            group,
            group_name,
            mode,
        }
    }

    /// Decides, resolves once and classifies. `Ok` carries at least one address; a
    /// refusal after the lookup carries the ids of the DNS answers it looked at.
    ///
    /// Every front door decides here: CONNECT and a routed TLS connection (the SNI and
    /// the port it came in on) as [`Kind::Connect`], plain HTTP by URL or by `Host` as
    /// [`Kind::Http`].
    pub async fn approve(
        &self,
        asker: &Asker,
        target: &Target,
        kind: Kind,
    ) -> Result<Approval, Refusal> {
        let port = target.port;
        let name = match &target.host {
            Host::Ip(ip) => {
                let decision = {
                    let policy = self.policy.load();
                    self.ip_literal_rule(&policy, asker, *ip, port, kind)?
                };
                let addr = SocketAddr::new(*ip, port);
                let approval = Approval::from(&decision);
                return Ok(self.check_addrs(&[addr], &decision, approval, &target.host)?);
            }
            Host::Name(name) => name,
        };
        let decision = match self.decide_name(asker, name, port, kind) {
            Decision::Refused(err) => return Err(err.into()),
            allowed => allowed,
        };
        let mut approval = Approval::from(&decision);
        approval.ech_ok = self.ech_allowed(name);
        let client = asker.client.ip();
        let (a, aaaa) = tokio::join!(
            self.resolver.lookup(client, name, RecordType::A),
            self.resolver.lookup(client, name, RecordType::AAAA)
        );
        let answer_ids: Vec<u64> = [&a, &aaaa].iter().filter_map(|r| r.answer_id).collect();
        approval.answer_ids = answer_ids.clone();
        let refusal = |error| Refusal { error, answer_ids };
        match answer_addrs(name, port, [&a, &aaaa]) {
            Ok(addrs) => self
                .check_addrs(&addrs, &decision, approval, &target.host)
                .map_err(refusal),
            Err(error) => Err(refusal(error)),
        }
    }

    /// The allow rule naming an IP literal (rule host equal to the canonical address).
    fn ip_literal_rule(
        &self,
        policy: &Policy,
        asker: &Asker,
        ip: IpAddr,
        port: u16,
        kind: Kind,
    ) -> Result<Decision, ProxyError> {
        let text = ip.to_string();
        let mut named = false;
        for rule in policy.rules.allow_rules() {
            if rule.host != text || rule.groups & asker.group.mask() == 0 {
                continue;
            }
            named = true;
            if rule.ports.contains(&port) && port_ok(port, kind) {
                return Ok(Decision::Rule {
                    rule: rule_ref(rule),
                    private: rule.private,
                });
            }
        }
        if named {
            return Err(ProxyError::forbidden(
                RefusalCode::PortNotAllowed,
                format!("an allow rule names {text} but not port {port} for this request"),
            ));
        }
        Err(ProxyError::forbidden(
            RefusalCode::IpLiteral,
            format!(
                "IP address targets are refused unless an allow rule names the address ({text})"
            ),
        ))
    }

    /// Looks up what [`decide`] needs for a name, and decides on the name alone.
    fn decide_name(&self, asker: &Asker, name: &Name, port: u16, kind: Kind) -> Decision {
        let policy = self.policy.load();
        let verdict = policy.decide(name, asker.group);
        let (list, allow, rules) = match &verdict {
            Verdict::Blocked(m) => {
                let list = policy.rules.list(m.origin.list);
                (list.map_or("?", |l| l.name.as_str()), None, Vec::new())
            }
            Verdict::Allowed(_) => (
                "",
                policy.allow_for(name, asker.group, Some(port)),
                policy.rules.allow_rules_for(name, asker.group).collect(),
            ),
            _ => ("", None, Vec::new()),
        };
        decide(&Ask {
            name,
            verdict: &verdict,
            list,
            allow,
            rules: &rules,
            port,
            group: &asker.group_name,
            mode: asker.mode,
            kind,
            public_ports: match kind {
                Kind::Connect => &self.config.public_connect_ports,
                Kind::Http => &self.config.public_http_ports,
            },
            class: None,
        })
    }

    /// Classifies every address; keeps the allowed ones, in order.
    fn check_addrs(
        &self,
        addrs: &[SocketAddr],
        decision: &Decision,
        mut approval: Approval,
        host: &Host,
    ) -> Result<Approval, ProxyError> {
        let me = self.host.load();
        for &addr in addrs {
            let (class, label) = classify(&self.classifier, &me, addr.ip());
            let own = is_own_listener(&self.own_listeners, &me, addr);
            if own || !decision.admits(class) {
                let why = if own {
                    format!("{addr} is one of the gate's own listeners")
                } else {
                    match label {
                        Some(label) => format!("{} ({}: {label})", addr.ip(), class.as_str()),
                        None => format!("{} ({}: {})", addr.ip(), class.as_str(), class.describe()),
                    }
                };
                approval.skipped.push(why);
            } else {
                approval.addrs.push(addr);
            }
        }
        if approval.addrs.is_empty() {
            let private = matches!(decision, Decision::Rule { private: true, .. });
            let hint = if private {
                ""
            } else {
                "; an allow rule with `private = true` is needed for private destinations"
            };
            return Err(ProxyError::forbidden(
                RefusalCode::DeniedAddress,
                format!(
                    "every address of {host} is denied: {}{hint}",
                    approval.skipped.join(", ")
                ),
            ));
        }
        Ok(approval)
    }

    fn ech_allowed(&self, name: &Name) -> bool {
        self.config
            .ech_hosts
            .iter()
            .any(|h| match h.strip_prefix("*.") {
                Some(base) => name.as_str() != base && name.is_within(base),
                None => name.as_str() == h.trim_end_matches('.').to_ascii_lowercase(),
            })
    }
}

impl From<&Decision> for Approval {
    /// The skeleton of an approval: the rule or the report-mode refusal, no addresses yet.
    fn from(decision: &Decision) -> Approval {
        let (rule, would_refuse) = match decision {
            Decision::Rule { rule, .. } => (Some(rule.clone()), None),
            Decision::Public { would_refuse } => (None, would_refuse.clone()),
            Decision::Refused(_) => (None, None),
        };
        Approval {
            addrs: Vec::new(),
            rule,
            would_refuse,
            skipped: Vec::new(),
            ech_ok: false,
            answer_ids: Vec::new(),
        }
    }
}

/// The addresses the A and AAAA answers give for `name`, in order, without repeats; a
/// blocked, denied or local answer refuses the name, and no address at all is `Unresolved`.
fn answer_addrs(
    name: &Name,
    port: u16,
    replies: [&Reply; 2],
) -> Result<Vec<SocketAddr>, ProxyError> {
    let mut addrs = Vec::new();
    let mut unresolved = Vec::new();
    for reply in replies {
        match reply.outcome {
            Outcome::Blocked => {
                return Err(ProxyError::forbidden(
                    RefusalCode::BlockedAnswer,
                    format!("{}: {}", name.as_str(), reply.reason),
                ));
            }
            Outcome::Refused if reply.denied_address.is_some() => {
                return Err(ProxyError::forbidden(
                    RefusalCode::DeniedAddress,
                    format!("{}: {}", name.as_str(), reply.reason),
                ));
            }
            // The group's DNS mode (allowlist) and tunnel guard hold for the proxy's own
            // lookups: a name the group may not resolve is not resolved for it here either.
            Outcome::Refused
                if matches!(
                    reply.refusal,
                    Some(DnsRefusal::NotAllowed | DnsRefusal::Tunnel)
                ) =>
            {
                let code = if reply.refusal == Some(DnsRefusal::Tunnel) {
                    RefusalCode::TunnelGuard
                } else {
                    RefusalCode::NotAllowlisted
                };
                return Err(ProxyError::forbidden(
                    code,
                    format!("{}: {}", name.as_str(), reply.reason),
                ));
            }
            Outcome::Local => {
                return Err(ProxyError::forbidden(
                    RefusalCode::SpecialUse,
                    format!("{}: {}", name.as_str(), reply.reason),
                ));
            }
            Outcome::Forwarded | Outcome::Cached | Outcome::Stale => {
                if reply.rcode != ResponseCode::NoError {
                    unresolved.push(reply.rcode.to_string());
                }
                for record in &reply.answers {
                    let ip = match &record.data {
                        RData::A(a) => IpAddr::V4(a.0),
                        RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
                        _ => continue,
                    };
                    let addr = SocketAddr::new(ip, port);
                    if !addrs.contains(&addr) {
                        addrs.push(addr);
                    }
                }
            }
            Outcome::Refused | Outcome::Error => unresolved.push(reply.reason.clone()),
        }
    }
    if addrs.is_empty() {
        let why = if unresolved.is_empty() {
            "no A or AAAA records".to_owned()
        } else {
            unresolved.join("; ")
        };
        return Err(ProxyError::Unresolved {
            host: name.as_str().to_owned(),
            why,
        });
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::decide::private_ok;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn host() -> HostAddrs {
        HostAddrs {
            interfaces: vec![ip("127.0.0.1"), ip("172.18.0.2"), ip("::1")],
            gateways: vec![ip("172.18.0.1")],
        }
    }

    /// A wildcard listener is its port on the host's own addresses only (issue 11, item 9):
    /// it used to refuse that port on every host.
    #[test]
    fn a_wildcard_listener_is_the_hosts_own_addresses_only() {
        let listeners = [sa("0.0.0.0:3128"), sa("[::]:53"), sa("127.0.0.1:9953")];
        let own = |to: &str| is_own_listener(&listeners, &host(), sa(to));
        assert!(own("172.18.0.2:3128"));
        assert!(own("127.0.0.1:3128"));
        assert!(own("127.0.0.7:9953"), "any loopback address is this host");
        assert!(own("0.0.0.0:53"));
        assert!(
            !own("93.184.216.34:3128"),
            "another host on the listener's port"
        );
        assert!(!own("93.184.216.34:53"));
        assert!(!own("172.18.0.9:9953"));
        assert!(
            !own("172.18.0.2:8080"),
            "not a listener port (the class refuses it)"
        );
    }

    /// The host's own addresses and its gateway rank above the private ranges, so that
    /// `private = true` never opens them (issue 11, item 9).
    #[test]
    fn own_addresses_and_the_gateway_are_never_private_ok() {
        let classifier = AddrClassifier::new().with_extra("172.18.0.0/30".parse().unwrap(), "x");
        let class = |s: &str| classify(&classifier, &host(), ip(s)).0;
        assert_eq!(
            class("172.18.0.1"),
            AddrClass::Configured,
            "the operator's ranges first"
        );
        let classifier = AddrClassifier::new();
        let class = |s: &str| classify(&classifier, &host(), ip(s)).0;
        assert_eq!(class("172.18.0.1"), AddrClass::Gateway);
        assert_eq!(class("172.18.0.2"), AddrClass::Own);
        assert_eq!(class("127.0.0.1"), AddrClass::Own);
        assert_eq!(class("172.18.0.3"), AddrClass::Private);
        assert_eq!(class("127.0.0.2"), AddrClass::Loopback);
        for never in ["172.18.0.1", "172.18.0.2", "127.0.0.1", "::1"] {
            assert!(!private_ok(class(never)), "{never}");
        }
        assert!(private_ok(class("172.18.0.3")));
    }
}
