//! Upstream URLs: `scheme://ip[:port][/path]`.

use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scheme {
    Https,
    Tls,
    Udp,
    Tcp,
}

#[derive(Debug, PartialEq)]
pub(super) struct ParsedUrl {
    pub(super) scheme: Scheme,
    pub(super) addr: SocketAddr,
    /// DoH request path; empty for the others.
    pub(super) path: String,
}

/// Parses `scheme://ip[:port][/path]`. Hand-rolled: the grammar is tiny and IP-only.
pub(super) fn parse_url(url: &str) -> Result<ParsedUrl, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("expected scheme://address, e.g. https://1.1.1.1/dns-query")?;
    let (scheme, default_port) = match scheme.to_ascii_lowercase().as_str() {
        "https" => (Scheme::Https, 443),
        "tls" => (Scheme::Tls, 853),
        "udp" => (Scheme::Udp, 53),
        "tcp" => (Scheme::Tcp, 53),
        other => {
            return Err(format!(
                "unsupported scheme {other:?} (https, tls, udp, tcp)"
            ));
        }
    };
    if rest.contains(['?', '#']) {
        return Err("query strings and fragments are not supported".into());
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err("credentials in the URL are not supported".into());
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or("unclosed '[' in IPv6 address")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("expected ':port' after ']'")?),
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err("IPv6 addresses must be in brackets, e.g. [2606:4700::1111]".into());
            }
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("missing host".into());
    }
    let ip: IpAddr = host.parse().map_err(|_| {
        format!("host {host:?} must be an IP address (a hostname would need DNS to reach DNS)")
    })?;
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => return Err(format!("bad port {p:?}")),
        },
    };
    let path = match scheme {
        Scheme::Https if path.is_empty() => "/dns-query".to_string(),
        Scheme::Https => path.to_string(),
        _ if path.is_empty() || path == "/" => String::new(),
        _ => return Err("only https:// URLs take a path".into()),
    };
    Ok(ParsedUrl {
        scheme,
        addr: SocketAddr::new(ip, port),
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_with_default_ports() {
        let p = parse_url("https://1.1.1.1/dns-query").unwrap();
        assert_eq!(p.scheme, Scheme::Https);
        assert_eq!(p.addr, "1.1.1.1:443".parse().unwrap());
        assert_eq!(p.path, "/dns-query");
        assert_eq!(parse_url("https://1.1.1.1").unwrap().path, "/dns-query");
        assert_eq!(
            parse_url("HTTPS://1.1.1.1:8443/q").unwrap().addr.port(),
            8443
        );
        assert_eq!(parse_url("tls://1.1.1.1").unwrap().addr.port(), 853);
        assert_eq!(parse_url("udp://9.9.9.9").unwrap().addr.port(), 53);
        assert_eq!(parse_url("tcp://9.9.9.9:5353/").unwrap().addr.port(), 5353);
        let v6 = parse_url("tls://[2606:4700::1111]:853").unwrap();
        assert_eq!(v6.addr, "[2606:4700::1111]:853".parse().unwrap());
        assert_eq!(parse_url("udp://[::1]").unwrap().addr.port(), 53);
    }

    #[test]
    fn rejects_bad_urls() {
        for url in [
            "1.1.1.1",
            "http://1.1.1.1/dns-query",
            "https://dns.example/dns-query",
            "https://1.1.1.1:0/",
            "https://1.1.1.1:99999/",
            "https://1.1.1.1/dns-query?dns=x",
            "https://user@1.1.1.1/",
            "udp://2606:4700::1111",
            "udp://[::1",
            "udp://1.1.1.1/path",
            "tcp://:53",
        ] {
            assert!(parse_url(url).is_err(), "{url} should be rejected");
        }
    }
}
