//! Special-use names (RFC 6761, 6762, 7686, 8375, 9462): answered locally, never forwarded.

use super::name::Name;

/// How a special-use name is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialUse {
    /// `localhost`, `*.localhost`: loopback addresses (RFC 6761 §6.3).
    Localhost,
    /// Names that only mean something on the local network or nowhere
    /// (`*.local`, `*.internal`, `home.arpa`, `*.onion`, `*.invalid`, private
    /// reverse zones): NXDOMAIN, so they never leak upstream.
    LocalOnly,
    /// `resolver.arpa` (RFC 9462 DDR): NODATA, so clients cannot discover the
    /// upstream resolver and go around the gate.
    ResolverDiscovery,
    /// A name without a dot.
    BareName,
}

impl SpecialUse {
    pub fn as_str(self) -> &'static str {
        match self {
            SpecialUse::Localhost => "localhost",
            SpecialUse::LocalOnly => "local_only",
            SpecialUse::ResolverDiscovery => "resolver_discovery",
            SpecialUse::BareName => "bare_name",
        }
    }
}

/// Reverse zones of private, loopback, link-local, CGNAT and ULA space.
const PRIVATE_REVERSE: &[&str] = &[
    "0.in-addr.arpa",
    "10.in-addr.arpa",
    "127.in-addr.arpa",
    "254.169.in-addr.arpa",
    "168.192.in-addr.arpa",
    "c.f.ip6.arpa",
    "d.f.ip6.arpa",
    "8.e.f.ip6.arpa",
    "9.e.f.ip6.arpa",
    "a.e.f.ip6.arpa",
    "b.e.f.ip6.arpa",
    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa",
    "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa",
];

/// Classifies `name`; `None` for ordinary names. Cheap: looks at the last label first.
pub fn classify(name: &Name) -> Option<SpecialUse> {
    let s = name.as_str();
    let tld = s.rsplit('.').next().unwrap_or(s);
    match tld {
        _ if !s.contains('.') && tld != "localhost" => Some(SpecialUse::BareName),
        "localhost" => Some(SpecialUse::Localhost),
        "local" | "internal" | "onion" | "invalid" | "alt" => Some(SpecialUse::LocalOnly),
        "arpa" => classify_arpa(name),
        _ => None,
    }
}

fn classify_arpa(name: &Name) -> Option<SpecialUse> {
    if name.is_within("resolver.arpa") {
        return Some(SpecialUse::ResolverDiscovery);
    }
    if name.is_within("home.arpa") || PRIVATE_REVERSE.iter().any(|zone| name.is_within(zone)) {
        return Some(SpecialUse::LocalOnly);
    }
    // 172.16.0.0/12 and 100.64.0.0/10 reverse zones: second octet ranges.
    let rest = name.as_str().strip_suffix(".in-addr.arpa")?;
    let mut labels = rest.rsplit('.');
    let first: u8 = labels.next()?.parse().ok()?;
    let second: u8 = labels.next()?.parse().ok()?;
    let private = (first == 172 && (16..=31).contains(&second))
        || (first == 100 && (64..=127).contains(&second));
    private.then_some(SpecialUse::LocalOnly)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Option<SpecialUse> {
        classify(&Name::parse(s).unwrap())
    }

    #[test]
    fn special_use_names() {
        use SpecialUse::*;
        assert_eq!(c("localhost"), Some(Localhost));
        assert_eq!(c("foo.localhost"), Some(Localhost));
        assert_eq!(c("printer.local"), Some(LocalOnly));
        assert_eq!(c("metadata.google.internal"), Some(LocalOnly));
        assert_eq!(c("host.docker.internal"), Some(LocalOnly));
        assert_eq!(c("router.home.arpa"), Some(LocalOnly));
        assert_eq!(c("x.onion"), Some(LocalOnly));
        assert_eq!(c("_dns.resolver.arpa"), Some(ResolverDiscovery));
        assert_eq!(c("1.0.0.10.in-addr.arpa"), Some(LocalOnly));
        assert_eq!(c("1.2.16.172.in-addr.arpa"), Some(LocalOnly));
        assert_eq!(c("1.2.31.172.in-addr.arpa"), Some(LocalOnly));
        assert_eq!(c("1.2.32.172.in-addr.arpa"), None);
        assert_eq!(c("1.2.15.172.in-addr.arpa"), None);
        assert_eq!(c("1.2.64.100.in-addr.arpa"), Some(LocalOnly));
        assert_eq!(c("1.2.128.100.in-addr.arpa"), None);
        assert_eq!(c("1.1.1.1.in-addr.arpa"), None);
        assert_eq!(c("intranet"), Some(BareName));
        assert_eq!(c("example.com"), None);
        assert_eq!(c("localhost.example.com"), None);
        assert_eq!(c("local.example.com"), None);
    }
}
