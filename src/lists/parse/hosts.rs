//! `hosts` and `domains` lines: one grammar, but for a bare address (an address rule in a
//! domains list, skipped in a hosts list).

use std::net::IpAddr;

use super::{
    Entry, Kind, MAX_REGEX_LEN, Run, SkipReason, might_be_ip, parse_net, strip_inline_comment,
};

impl<'a, S, K> Run<'a, S, K>
where
    S: FnMut(u32, Entry<'a>),
    K: FnMut(u32, &'a str, SkipReason),
{
    /// `hosts` and `domains` lines (the same grammar but for a bare address).
    pub(super) fn hosts_or_domains_line(&mut self, line: &'a str, hosts: bool) {
        if line.starts_with('/') {
            // A regex may contain ` #`: only strip an inline comment when the
            // whole line is not already `/.../`.
            let regex = if line.len() >= 2 && line.ends_with('/') {
                line
            } else {
                strip_inline_comment(line, &['#'])
            };
            if regex.len() >= 2 && regex.ends_with('/') {
                let pattern = &regex[1..regex.len() - 1];
                return if pattern.is_empty() {
                    self.skip(SkipReason::UnsupportedSyntax)
                } else if pattern.len() > MAX_REGEX_LEN {
                    self.skip(SkipReason::RegexTooLong)
                } else {
                    self.emit(Entry::BlockRegex(pattern))
                };
            }
        }
        // Fast path: a line without blanks (most of them) has one token and no inline comment.
        if !line.bytes().any(|b| b.is_ascii_whitespace()) {
            return self.single_token(line, hosts);
        }
        let content = strip_inline_comment(line, &['#']);
        let mut tokens = content.split_ascii_whitespace();
        let Some(first) = tokens.next() else {
            return self.skip(SkipReason::UnsupportedSyntax);
        };
        let mut names = tokens.peekable();
        if names.peek().is_some() {
            // `ADDRESS name [name...]`
            if parse_host_address(first).is_none() {
                return self.skip(SkipReason::UnsupportedSyntax);
            }
            for name in names {
                self.name(name, Kind::Block, true);
            }
            return;
        }
        self.single_token(first, hosts);
    }

    /// A `domains` entry: `name`, `*.name`, `.name`, `=name` or an address.
    fn single_token(&mut self, first: &'a str, hosts: bool) {
        if let Some(rest) = first.strip_prefix('=') {
            return self.name(rest, Kind::Exact, false);
        }
        let name = first
            .strip_prefix("*.")
            .or_else(|| first.strip_prefix('.'))
            .unwrap_or(first);
        if name.len() == first.len()
            && might_be_ip(first)
            && let Some(net) = parse_net(first)
        {
            return if hosts {
                // An address with no names.
                self.skip(SkipReason::UnsupportedSyntax)
            } else {
                self.net(net)
            };
        }
        self.name(name, Kind::Block, true);
    }
}

/// The names hosts files carry for the machine itself: boilerplate that must never
/// become a rule.
pub const HOSTS_BOILERPLATE: [&str; 12] = [
    "localhost",
    "localhost.localdomain",
    "local",
    "broadcasthost",
    "ip6-localhost",
    "ip6-loopback",
    "ip6-localnet",
    "ip6-mcastprefix",
    "ip6-allnodes",
    "ip6-allrouters",
    "ip6-allhosts",
    "0.0.0.0",
];

/// Hosts boilerplate that must never become a rule.
pub(super) fn is_boilerplate(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.len() > 21
        || !matches!(
            name.as_bytes().first(),
            Some(b'l' | b'L' | b'b' | b'B' | b'i' | b'I' | b'0')
        )
    {
        return false;
    }
    HOSTS_BOILERPLATE
        .iter()
        .any(|b| b.eq_ignore_ascii_case(name))
}

/// The address column of a hosts line; an IPv6 zone (`fe80::1%lo0`) is allowed.
pub(super) fn parse_host_address(token: &str) -> Option<IpAddr> {
    if !might_be_ip(token) {
        return None;
    }
    let address = token.split_once('%').map_or(token, |(address, _)| address);
    address.parse().ok()
}
