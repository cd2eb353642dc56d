//! Threat-list parsing: every common format, every skipped line reported.
//!
//! A list is text (already decompressed). A UTF-8 byte-order mark, CRLF line
//! endings, tabs, and leading or trailing whitespace are ignored everywhere.
//! Every line ends up in exactly one bucket of the [`ParseReport`]: blank,
//! comment, a line that produced at least one rule, or a skipped line with a
//! [`SkipReason`]. Nothing is dropped silently.
//!
//! # What each syntax means
//!
//! Every name goes through [`Name::parse`] (lower case, trailing dot removed,
//! IDN mapped to punycode, hostname characters only). "Blocks `name`" always
//! means **the name and all its subdomains**; only `=name` is exact.
//!
//! **Comments and headers (all formats).** A line whose first non-blank
//! character is `#` or `!` is a comment, and so is an `[Adblock Plus 2.0]`-style
//! header (`[` followed by a letter, ending in `]`). In `ips` lists `;` also
//! starts a comment. Two exceptions in `adblock` lists, which are reported as
//! `unsupported_syntax` instead, because they are rules we cannot apply rather
//! than notes: element-hiding rules that start with `##`, `#@#`, `#?#`, `#$#`,
//! `#%#` (e.g. `##.banner`), and preprocessor directives (`!#if`, `!#include`;
//! the rules between `!#if` and `!#endif` are parsed unconditionally).
//!
//! **`hosts`**: `ADDRESS name [name ...]`. The address may be any IPv4 or IPv6
//! address (`0.0.0.0`, `127.0.0.1`, `::1`, `fe80::1%lo0`, ...); it is ignored:
//! each name is blocked. `#` after whitespace starts an inline comment. The
//! standard boilerplate names are never rules (`hosts_boilerplate`):
//! `localhost`, `localhost.localdomain`, `local`, `broadcasthost`,
//! `ip6-localhost`, `ip6-loopback`, `ip6-localnet`, `ip6-mcastprefix`,
//! `ip6-allnodes`, `ip6-allrouters`, `ip6-allhosts`, and `0.0.0.0` used as a
//! name. A hosts list may also contain any single-token `domains` line below,
//! except a bare address (an address with no names is `unsupported_syntax`).
//!
//! **`domains`**: one entry a line, `#` after whitespace starts an inline comment.
//! - `name` or `name.` — blocks `name`.
//! - `*.name` or `.name` — blocks `name` (the same rule: subdomains are always covered).
//! - `=name` — blocks exactly `name`, not its subdomains.
//! - `/regex/` — a regular expression over the whole name (the text between the
//!   slashes; compiled later with a size limit). Longer than [`MAX_REGEX_LEN`]
//!   bytes: `regex_too_long`.
//! - an IPv4/IPv6 address or CIDR — an address rule, as in an `ips` list.
//! - `ADDRESS name [name ...]` — a hosts line, as above (mixed lists are common).
//!
//! Other wildcards (`ads.*`, `*ads*`) are `unsupported_syntax`.
//!
//! **`adblock`** (AdGuard DNS / uBlock Origin hostname rules):
//! - `||name^` (also `||name^|`, `||*.name^`) — blocks `name`.
//! - `||name^$important` — blocks `name`, and beats `@@` exceptions (never the
//!   operator's allowlist). Lists are pooled: see README, "Decision order".
//! - `@@||name^` — an exception: allows `name` (and subdomains) against the
//!   rules of the lists in the same groups.
//! - Modifiers: only `$important` and `$all` (for a whole host, "all request
//!   types" is exactly what a DNS block does) are accepted, comma-separated, in
//!   any order. Any other modifier (`$third-party`, `$script`, `$document`,
//!   `$domain=`, `$denyallow=`, `$client=`, `$ctag=`, `$dnstype=`,
//!   `$dnsrewrite=`, `$badfilter`, ...) skips the whole rule
//!   (`unsupported_modifier`): a rule is applied fully or not at all. Note that
//!   an ignored `$badfilter` leaves the rule it disables in force, and an
//!   ignored exception (`@@||name^$important`, `@@||name^$domain=...`) leaves
//!   the name blocked: skipping fails closed.
//! - Everything else is `unsupported_syntax`: rules without `||` (plain
//!   substrings such as `ads.`, `|https://...`, `|name^`, `/regex/`, hosts
//!   lines), rules with a path, port or query (`||name/ads`, `||name:8080^`),
//!   rules without the `^` separator (`||name`, a prefix match, not a name),
//!   wildcards inside the name, and element hiding / scriptlets
//!   (`name##.ad`, `#@#`, `#?#`, `#$#`, `$$`).
//!
//! **`dnsmasq`**: `server=/name/`, `server=/name/ADDRESS`, `address=/name/ADDRESS`,
//! `address=/name/#`, `address=/name/` and `local=/name/` — each blocks `name`
//! (in a blocklist, these lines exist to sinkhole the name). Several names in
//! one line (`server=/a.example/b.example/`) give one rule each; a leading `*.`
//! or `.` is ignored. `/#/` (every name) and `//` (unqualified names) are
//! `unsupported_syntax`, as are all other directives (`conf-file=`,
//! `bogus-nxdomain=`, `server=1.1.1.1`, ...).
//!
//! **`ips`**: one IPv4/IPv6 address or CIDR a line (host bits are cleared:
//! `10.0.0.1/8` is `10.0.0.0/8`); `#` or `;` after whitespace starts an inline
//! comment. Anything else, including ranges and extra columns, is
//! `not_an_address`. Networks broader than /8 (IPv4) or /16 (IPv6) are
//! `network_too_broad`.
//!
//! **Skipped in every format**: a single-label name (`com`, `lan`) would block a
//! whole top-level domain (`top_level_only`; `=name` is exempt, as it is exact);
//! an IP address written where a hosts, adblock or dnsmasq rule expects a name
//! (`ip_as_name`; put addresses in an `ips` list); a name that does not
//! normalise (`bad_name`).
//!
//! **Auto-detection** ([`detect_format`]) looks at the first 50 lines that are
//! neither blank nor comments: `adblock` when an `[Adblock ...]` header is present
//! or most lines are adblock rules (`||`, `@@`, `^`, `$`, `##`); `dnsmasq` when
//! most are `server=/`, `address=/` or `local=/` lines; `hosts` when most are
//! `ADDRESS name` lines; `ips` when all are addresses or CIDRs; else `domains`.

mod adblock;
mod detect;
mod dnsmasq;
mod hosts;
pub use hosts::HOSTS_BOILERPLATE;
mod ips;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::policy::name::Name;
/// The parser's output: defined by the policy it feeds.
pub use crate::policy::rules::Entry;
use crate::policy::rules::MAX_REGEX_LEN;

use adblock::{is_adblock_directive, is_cosmetic_start};
pub use detect::detect_format;
use hosts::is_boilerplate;

/// Examples kept per skip reason in a [`ParseReport`].
pub const MAX_EXAMPLES: usize = 5;
/// Longest example text kept, in characters.
pub const MAX_EXAMPLE_CHARS: usize = 200;
/// Broadest IPv4 network accepted from a list.
pub const MIN_PREFIX_V4: u8 = 8;
/// Broadest IPv6 network accepted from a list.
pub const MIN_PREFIX_V6: u8 = 16;

// The format is configuration vocabulary; config owns it (config depends on no runtime module).
pub use crate::config::lists::Format;

/// Why a line (or one item of a line) did not become a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// `localhost`, `broadcasthost`, `ip6-*`, `0.0.0.0` as a name, ...
    HostsBoilerplate,
    /// The name did not survive [`Name::parse`].
    BadName,
    /// An adblock modifier that has no DNS meaning (`$third-party`, `$domain=`, ...).
    UnsupportedModifier,
    /// Syntax we cannot interpret (adblock non-`||` rules, paths, cosmetic rules,
    /// wildcards, dnsmasq directives other than `server=`/`address=`/`local=`).
    UnsupportedSyntax,
    /// A `/regex/` longer than [`MAX_REGEX_LEN`].
    RegexTooLong,
    /// An `ips` list line that is not an address or CIDR.
    NotAnAddress,
    /// A single-label name (`com`): it would block a whole top-level domain.
    TopLevelOnly,
    /// An IP address where a hosts, adblock or dnsmasq rule expects a name.
    IpAsName,
    /// A network broader than [`MIN_PREFIX_V4`] / [`MIN_PREFIX_V6`].
    NetworkTooBroad,
}

impl SkipReason {
    /// Every reason, in order.
    pub const ALL: [SkipReason; 9] = [
        SkipReason::HostsBoilerplate,
        SkipReason::BadName,
        SkipReason::UnsupportedModifier,
        SkipReason::UnsupportedSyntax,
        SkipReason::RegexTooLong,
        SkipReason::NotAnAddress,
        SkipReason::TopLevelOnly,
        SkipReason::IpAsName,
        SkipReason::NetworkTooBroad,
    ];

    /// Stable snake_case label (metrics, status output).
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::HostsBoilerplate => "hosts_boilerplate",
            SkipReason::BadName => "bad_name",
            SkipReason::UnsupportedModifier => "unsupported_modifier",
            SkipReason::UnsupportedSyntax => "unsupported_syntax",
            SkipReason::RegexTooLong => "regex_too_long",
            SkipReason::NotAnAddress => "not_an_address",
            SkipReason::TopLevelOnly => "top_level_only",
            SkipReason::IpAsName => "ip_as_name",
            SkipReason::NetworkTooBroad => "network_too_broad",
        }
    }
}

/// An example of a skipped line.
#[derive(Debug, Clone)]
pub struct Skipped {
    /// 1-based line number.
    pub line: u32,
    /// The trimmed line, truncated to [`MAX_EXAMPLE_CHARS`] characters.
    pub text: String,
    pub reason: SkipReason,
}

/// What a parse did with every line.
///
/// Invariant: `lines == blank + comments + entry_lines + skipped_lines`.
#[derive(Debug, Clone, Default)]
pub struct ParseReport {
    /// All lines, blank ones included.
    pub lines: u32,
    pub blank: u32,
    pub comments: u32,
    /// Entries passed to the sink (a hosts line with 3 names counts 3).
    pub entries: u32,
    /// Lines or items skipped (a hosts line with 2 boilerplate names counts 2).
    pub skipped: u32,
    /// Lines that produced at least one entry.
    pub entry_lines: u32,
    /// Lines that produced no entry (each has at least one skip).
    pub skipped_lines: u32,
    pub skipped_by_reason: BTreeMap<SkipReason, u32>,
    /// The first [`MAX_EXAMPLES`] skips of each reason.
    pub examples: Vec<Skipped>,
    /// The format used: the detected one when [`Format::Auto`] was asked for.
    pub format: Format,
}

impl ParseReport {
    /// Skips counted for one reason.
    pub fn skipped_for(&self, reason: SkipReason) -> u32 {
        self.skipped_by_reason.get(&reason).copied().unwrap_or(0)
    }
}

/// Parses `text` (already decompressed; may have a UTF-8 BOM and CRLF line
/// endings), calling `sink(line_number /*1-based*/, entry)` for every rule.
pub fn parse_list<'a>(
    text: &'a str,
    format: Format,
    sink: impl FnMut(u32, Entry<'a>),
) -> ParseReport {
    parse_list_with_skips(text, format, sink, |_, _, _| {})
}

/// [`parse_list`], also calling `on_skip(line_number, trimmed_line, reason)`
/// for every skipped line or item.
pub fn parse_list_with_skips<'a>(
    text: &'a str,
    format: Format,
    sink: impl FnMut(u32, Entry<'a>),
    on_skip: impl FnMut(u32, &'a str, SkipReason),
) -> ParseReport {
    let format = match format {
        Format::Auto => detect_format(text),
        other => other,
    };
    let mut run = Run {
        sink,
        on_skip,
        report: ParseReport {
            format,
            ..ParseReport::default()
        },
        line_no: 0,
        line: "",
        line_entries: 0,
        line_skips: 0,
    };
    for raw in Lines(text) {
        run.line_no += 1;
        run.report.lines += 1;
        let line = trim(raw);
        if line.is_empty() {
            run.report.blank += 1;
            continue;
        }
        if is_comment(format, line) {
            run.report.comments += 1;
            continue;
        }
        run.line = line;
        run.line_entries = 0;
        run.line_skips = 0;
        match format {
            Format::Hosts => run.hosts_or_domains_line(line, true),
            Format::Auto | Format::Domains => run.hosts_or_domains_line(line, false),
            Format::Adblock => run.adblock_line(line),
            Format::Dnsmasq => run.dnsmasq_line(line),
            Format::Ips => run.ips_line(line),
        }
        if run.line_entries > 0 {
            run.report.entry_lines += 1;
        } else {
            if run.line_skips == 0 {
                // Defensive: every content line is accounted for.
                run.skip(SkipReason::UnsupportedSyntax);
            }
            run.report.skipped_lines += 1;
        }
    }
    run.report
}

/// The per-parse state: outputs, report and the current line.
struct Run<'a, S, K> {
    sink: S,
    on_skip: K,
    report: ParseReport,
    line_no: u32,
    line: &'a str,
    line_entries: u32,
    line_skips: u32,
}

/// What a name rule becomes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Block,
    Exact,
    Important,
    Allow,
}

impl<'a, S, K> Run<'a, S, K>
where
    S: FnMut(u32, Entry<'a>),
    K: FnMut(u32, &'a str, SkipReason),
{
    fn emit(&mut self, entry: Entry<'a>) {
        self.report.entries += 1;
        self.line_entries += 1;
        (self.sink)(self.line_no, entry);
    }

    fn skip(&mut self, reason: SkipReason) {
        self.report.skipped += 1;
        self.line_skips += 1;
        let count = self.report.skipped_by_reason.entry(reason).or_insert(0);
        if (*count as usize) < MAX_EXAMPLES {
            self.report.examples.push(Skipped {
                line: self.line_no,
                text: truncate_chars(self.line, MAX_EXAMPLE_CHARS).to_owned(),
                reason,
            });
        }
        *count += 1;
        (self.on_skip)(self.line_no, self.line, reason);
    }

    /// A name in rule position: boilerplate, address and single-label checks, then normalisation.
    fn name(&mut self, text: &str, kind: Kind, hosts_rules: bool) {
        if hosts_rules && is_boilerplate(text) {
            return self.skip(SkipReason::HostsBoilerplate);
        }
        if might_be_ip(text) && text.parse::<IpAddr>().is_ok() {
            return self.skip(SkipReason::IpAsName);
        }
        match Name::parse(text) {
            Ok(name) => {
                if kind != Kind::Exact && is_single_label(text, &name) {
                    return self.skip(SkipReason::TopLevelOnly);
                }
                self.emit(match kind {
                    Kind::Block => Entry::Block(name),
                    Kind::Exact => Entry::BlockExact(name),
                    Kind::Important => Entry::BlockImportant(name),
                    Kind::Allow => Entry::Allow(name),
                });
            }
            Err(_) => self.skip(name_failure(text)),
        }
    }

    fn net(&mut self, net: IpNet) {
        let min = match net {
            IpNet::V4(_) => MIN_PREFIX_V4,
            IpNet::V6(_) => MIN_PREFIX_V6,
        };
        if net.prefix_len() < min {
            self.skip(SkipReason::NetworkTooBroad);
        } else {
            self.emit(Entry::Ip(net.trunc()));
        }
    }
}

/// `str::lines` without the `\r` handling ([`trim`] does that) and without
/// the general-purpose searcher: list lines are short, and a plain byte loop
/// beats a memchr call per line.
struct Lines<'a>(&'a str);

impl<'a> Iterator for Lines<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.0.is_empty() {
            return None;
        }
        let (line, rest) = match self.0.bytes().position(|b| b == b'\n') {
            Some(i) => (&self.0[..i], &self.0[i + 1..]),
            None => (self.0, ""),
        };
        self.0 = rest;
        Some(line)
    }
}

/// Trims ASCII whitespace and a byte-order mark (at the start of the text, or
/// of a list concatenated into it).
fn trim(raw: &str) -> &str {
    let line = raw.trim_ascii();
    match line.strip_prefix('\u{feff}') {
        Some(rest) => rest.trim_ascii(),
        None => line,
    }
}

fn is_comment(format: Format, line: &str) -> bool {
    match line.as_bytes()[0] {
        b'#' => !(format == Format::Adblock && is_cosmetic_start(line)),
        b'!' => !(format == Format::Adblock && is_adblock_directive(line)),
        b';' => format == Format::Ips,
        b'[' => is_header(line),
        _ => false,
    }
}

/// `[Adblock Plus 2.0]`, `[uBlock Origin]`...
fn is_header(line: &str) -> bool {
    line.len() > 2 && line.as_bytes()[1].is_ascii_alphabetic() && line.ends_with(']')
}

/// Cuts the line at the first of `markers` that follows whitespace.
fn strip_inline_comment<'s>(line: &'s str, markers: &[char]) -> &'s str {
    let bytes = line.as_bytes();
    let mut from = 0;
    // `str::find` with one char is a memchr: most lines have no marker at all.
    while let Some(i) = match markers {
        [one] => line[from..].find(*one),
        many => line[from..].find(many),
    } {
        let at = from + i;
        if at == 0 || bytes[at - 1].is_ascii_whitespace() {
            return line[..at].trim_ascii_end();
        }
        from = at + 1;
    }
    line
}

/// Could this token be an address or CIDR (cheap pre-check before parsing)?
fn might_be_ip(token: &str) -> bool {
    match token.as_bytes().first() {
        Some(b'0'..=b'9') => true,
        // IPv6 starts with a hex digit or `::`.
        Some(b'a'..=b'f' | b'A'..=b'F' | b':') => token.contains(':'),
        _ => false,
    }
}

/// Whether the normalised `name` has one label. Normalisation only removes a
/// trailing dot, so for ASCII input the input text answers without
/// re-reading the name; IDN input (where `。` becomes `.`) asks the name.
fn is_single_label(text: &str, name: &Name) -> bool {
    let text = text.strip_suffix('.').unwrap_or(text);
    if text.bytes().any(|b| b == b'.') {
        return false;
    }
    text.is_ascii() || !name.as_str().contains('.')
}

/// An address or CIDR; a bare address is a host network (/32, /128).
fn parse_net(token: &str) -> Option<IpNet> {
    if token.contains('/') {
        token.parse::<IpNet>().ok()
    } else {
        token.parse::<IpAddr>().ok().map(IpNet::from)
    }
}

/// Why a token failed [`Name::parse`]: a pattern or URL is syntax we do not
/// support; anything else is a bad name.
fn name_failure(text: &str) -> SkipReason {
    if text
        .bytes()
        .any(|b| matches!(b, b'*' | b'/' | b':' | b'|' | b'^' | b'$'))
    {
        SkipReason::UnsupportedSyntax
    } else {
        SkipReason::BadName
    }
}

fn truncate_chars(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}
