//! Proxy targets: `host:port` (CONNECT) and `http://host[:port]/path` (forwarding),
//! parsed strictly and checked before anything is looked up.
//!
//! Rejected here, before any DNS lookup: userinfo (`@`), zone ids (`%`), IPv4 in
//! anything but a strict dotted quad (`127.1`, `2130706433`, `0x7f.1`, `0177.0.0.1`),
//! unbracketed IPv6, non-ASCII that does not map to punycode, and bad or missing ports.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::policy::name::Name;

/// What the client asked to reach.
#[derive(Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // `Name` lives on the stack by design.
pub enum Host {
    /// A normalised host name.
    Name(Name),
    /// An IP literal (strict dotted quad or bracketed IPv6 without zone).
    Ip(IpAddr),
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name.as_str()),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// A checked `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: Host,
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Why a target was rejected (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("empty host")]
    EmptyHost,
    #[error("userinfo (`@`) is not allowed in a proxy target")]
    Userinfo,
    #[error("IPv6 zone ids (`%`) are not allowed")]
    ZoneId,
    #[error("`{0}` is not a strict dotted-quad IPv4 address")]
    NumericHost(String),
    #[error("`{0}` is not an IPv6 address")]
    BadIpv6(String),
    #[error("missing port")]
    MissingPort,
    #[error("`{0}` is not a port")]
    BadPort(String),
    #[error("bad host name: {0}")]
    BadName(String),
    #[error("only http:// URLs are forwarded (use CONNECT for https)")]
    Scheme,
    #[error("not an absolute http:// URL")]
    NotAbsolute,
    #[error("character {0:?} is not allowed in a URL")]
    BadChar(char),
}

/// Parses a CONNECT target (`host:port`, `[v6]:port`); the port is required.
pub fn parse_authority(input: &str) -> Result<Target, TargetError> {
    parse_host_port(input, None)
}

/// Parses an absolute-form `http://host[:port]/path?query` request target.
/// Returns the target and the origin-form path to send upstream.
pub fn parse_http_url(input: &str) -> Result<(Target, String), TargetError> {
    if let Some(c) = input
        .chars()
        .find(|&c| c == '\\' || c.is_control() || c == ' ' || c == '#')
    {
        return Err(TargetError::BadChar(c));
    }
    let Some(colon) = input.find("://") else {
        return Err(TargetError::NotAbsolute);
    };
    let scheme = &input[..colon];
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(if scheme.eq_ignore_ascii_case("https") {
            TargetError::Scheme
        } else if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphabetic()) {
            TargetError::NotAbsolute
        } else {
            TargetError::Scheme
        });
    }
    let rest = &input[colon + 3..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let target = parse_host_port(authority, Some(80))?;
    let path = if path.is_empty() {
        "/".to_owned()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    Ok((target, path))
}

fn parse_host_port(input: &str, default_port: Option<u16>) -> Result<Target, TargetError> {
    if input.contains('@') {
        return Err(TargetError::Userinfo);
    }
    if input.contains('%') {
        // Zone ids (`fe80::1%eth0`, `%25`) and percent-encoded hosts alike.
        return Err(TargetError::ZoneId);
    }
    if let Some(c) = input.chars().find(|c| c.is_control() || *c == ' ') {
        return Err(TargetError::BadChar(c));
    }
    let (host, port) = if let Some(rest) = input.strip_prefix('[') {
        let Some(close) = rest.find(']') else {
            return Err(TargetError::BadIpv6(input.to_owned()));
        };
        let inner = &rest[..close];
        let ip: Ipv6Addr = inner
            .parse()
            .map_err(|_| TargetError::BadIpv6(inner.to_owned()))?;
        let after = &rest[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return Err(TargetError::BadIpv6(input.to_owned())),
        };
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let (host, port) = match input.rfind(':') {
            Some(i) => (&input[..i], Some(&input[i + 1..])),
            None => (input, None),
        };
        if host.contains(':') {
            return Err(TargetError::BadIpv6(host.to_owned()));
        }
        (parse_host(host)?, port)
    };
    let port = match (port, default_port) {
        (Some(p), _) => parse_port(p)?,
        (None, Some(default)) => default,
        (None, None) => return Err(TargetError::MissingPort),
    };
    Ok(Target { host, port })
}

/// A strict port: 1 to 5 ASCII digits, no leading zero, 1..=65535.
fn parse_port(text: &str) -> Result<u16, TargetError> {
    let bad = || TargetError::BadPort(text.to_owned());
    if text.is_empty()
        || text.len() > 5
        || !text.bytes().all(|b| b.is_ascii_digit())
        || text.starts_with('0')
    {
        return Err(if text.is_empty() {
            TargetError::MissingPort
        } else {
            bad()
        });
    }
    match text.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(bad()),
    }
}

/// A host that is not bracketed: a strict dotted quad or a host name.
pub fn parse_host(host: &str) -> Result<Host, TargetError> {
    if host.is_empty() {
        return Err(TargetError::EmptyHost);
    }
    if looks_numeric(host) {
        // std's parser accepts exactly four decimal octets without leading zeros.
        return host
            .parse::<Ipv4Addr>()
            .map(|ip| Host::Ip(IpAddr::V4(ip)))
            .map_err(|_| TargetError::NumericHost(host.to_owned()));
    }
    let name = Name::parse(host).map_err(|e| TargetError::BadName(e.to_string()))?;
    // UTS-46 maps full-width digits and dots: `１２７.０.０.１` must not become a name.
    if looks_numeric(name.as_str()) {
        return Err(TargetError::NumericHost(host.to_owned()));
    }
    Ok(Host::Name(name))
}

/// Whether a host would be read as an IPv4 address by some parser (WHATWG "ends in a
/// number": the last label is decimal, or `0x` hex), or is all digits and dots.
fn looks_numeric(host: &str) -> bool {
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    let last = trimmed.rsplit('.').next().unwrap_or("");
    let is_number = |label: &str| {
        !label.is_empty()
            && (label.bytes().all(|b| b.is_ascii_digit())
                || ((label.starts_with("0x") || label.starts_with("0X"))
                    && label[2..].bytes().all(|b| b.is_ascii_hexdigit())))
    };
    is_number(last) || (host.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(input: &str) -> String {
        parse_authority(input)
            .unwrap_or_else(|e| panic!("{input}: {e}"))
            .to_string()
    }

    #[test]
    fn good_targets() {
        assert_eq!(ok("API.Example.COM:443"), "api.example.com:443");
        assert_eq!(ok("api.example.com.:443"), "api.example.com:443");
        assert_eq!(ok("8.8.8.8:443"), "8.8.8.8:443");
        assert_eq!(ok("[2606:4700::1111]:443"), "[2606:4700::1111]:443");
        assert_eq!(ok("bücher.example:443"), "xn--bcher-kva.example:443");
        assert_eq!(ok("a.example:65535"), "a.example:65535");
    }

    #[test]
    fn hostile_targets_are_rejected_before_lookup() {
        for bad in [
            "127.1:443",
            "2130706433:443",
            "0x7f.1:443",
            "0x7f000001:443",
            "0177.0.0.1:443",
            "127.0.0.01:443",
            "127.0.0.1.:443",
            "1.2.3.4.5:443",
            "256.1.1.1:443",
            "example.0x10:443",
            "example.123:443",
            "１２７.０.０.１:443",
            "[fe80::1%eth0]:443",
            "[fe80::1%25eth0]:443",
            "user@example.com:443",
            "example.com:443@evil.net:443",
            "example.com",
            "example.com:",
            "example.com:0",
            "example.com:65536",
            "example.com:+443",
            "example.com:0443",
            "example.com:44 3",
            "::1:443",
            "[::1:443",
            "[::1]x:443",
            ":443",
            "exa mple.com:443",
            "example.com\u{0}:443",
            "ex%61mple.com:443",
            "xn--zz.example:443",
            "\u{fffd}.example:443",
        ] {
            assert!(parse_authority(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn http_urls() {
        let (t, p) = parse_http_url("http://Example.com/a?b=1").unwrap();
        assert_eq!(
            (t.to_string(), p.as_str()),
            ("example.com:80".into(), "/a?b=1")
        );
        let (t, p) = parse_http_url("HTTP://example.com:8080").unwrap();
        assert_eq!(
            (t.to_string(), p.as_str()),
            ("example.com:8080".into(), "/")
        );
        let (_, p) = parse_http_url("http://example.com?x").unwrap();
        assert_eq!(p, "/?x");
        for bad in [
            "/relative",
            "https://example.com/",
            "ftp://example.com/",
            "http://user:pw@example.com/",
            "http://example.com@127.0.0.1/",
            "http://127.1/",
            "http:\\\\example.com/",
            "http://example.com\\@evil.net/",
            "http://example.com/#frag",
            "http:///path",
            "http://[::1%25lo]/",
        ] {
            assert!(parse_http_url(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
