//! What a list line becomes: the rules a [`ListBuilder`](super::ListBuilder) takes. The list
//! parsers (`lists::parse`) produce them; the policy defines them, so that it depends on no
//! parser.

use ipnet::IpNet;

use crate::policy::name::Name;

/// Longest regex rule accepted, in bytes (the text between the slashes of a `/.../` line).
pub const MAX_REGEX_LEN: usize = 512;

/// One rule from a list line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry<'a> {
    /// Blocks the name AND all its subdomains (plain names, hosts lines, `*.name`,
    /// `||name^`, dnsmasq lines all mean this).
    Block(Name),
    /// `=name`: only that exact name.
    BlockExact(Name),
    /// adblock `||name^$important`: beats `@@` exceptions of every list (but never
    /// the operator's allowlist).
    BlockImportant(Name),
    /// `/.../` regex line (pattern text without the slashes); the caller
    /// compiles it with a size limit.
    BlockRegex(&'a str),
    /// adblock `@@||name^`: an allow rule (name and subdomains) scoped to this
    /// source's groups.
    Allow(Name),
    /// An IP or CIDR from an `ips` list (or a bare address line in a domains list).
    Ip(IpNet),
}
