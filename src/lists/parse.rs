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

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::policy::name::Name;

/// Longest `/regex/` pattern accepted, in bytes, slashes excluded.
pub const MAX_REGEX_LEN: usize = 512;
/// Examples kept per skip reason in a [`ParseReport`].
pub const MAX_EXAMPLES: usize = 5;
/// Longest example text kept, in characters.
pub const MAX_EXAMPLE_CHARS: usize = 200;
/// Broadest IPv4 network accepted from a list.
pub const MIN_PREFIX_V4: u8 = 8;
/// Broadest IPv6 network accepted from a list.
pub const MIN_PREFIX_V6: u8 = 16;

/// How many leading content lines [`detect_format`] looks at.
const DETECT_LINES: usize = 50;

// The format is configuration vocabulary; config owns it (config depends on no runtime module).
pub use crate::config::lists::Format;

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

/// Looks at the first non-comment lines (up to 50) to pick a format.
pub fn detect_format(text: &str) -> Format {
    let mut content = 0usize;
    let (mut adblock, mut dnsmasq, mut hosts, mut ips) = (0usize, 0usize, 0usize, 0usize);
    let (mut adblock_header, mut bang_comments, mut hash_comments) = (false, 0usize, 0usize);
    for raw in text.lines() {
        let line = trim(raw);
        let Some(&first) = line.as_bytes().first() else {
            continue;
        };
        if first == b'[' && is_header(line) {
            adblock_header |= line
                .get(1..8)
                .is_some_and(|s| s.eq_ignore_ascii_case("adblock"));
            continue;
        }
        if first == b';' {
            continue;
        }
        if first == b'!' && !is_adblock_directive(line) {
            bang_comments += 1;
            continue;
        }
        if first == b'#' && !is_cosmetic_start(line) {
            hash_comments += 1;
            continue;
        }
        content += 1;
        if looks_adblock(line) {
            adblock += 1;
        } else if dnsmasq_directive(line).is_some() {
            dnsmasq += 1;
        } else {
            let mut tokens = line.split_ascii_whitespace();
            let first = tokens.next().unwrap_or_default();
            match tokens.next() {
                Some(second) if parse_host_address(first).is_some() && !second.starts_with('#') => {
                    hosts += 1
                }
                _ if first.parse::<IpNet>().is_ok() || first.parse::<IpAddr>().is_ok() => ips += 1,
                _ => {}
            }
        }
        if content >= DETECT_LINES {
            break;
        }
    }
    if content == 0 {
        return if adblock_header || bang_comments > hash_comments {
            Format::Adblock
        } else {
            Format::Domains
        };
    }
    if adblock_header || adblock * 2 > content {
        Format::Adblock
    } else if dnsmasq * 2 > content {
        Format::Dnsmasq
    } else if hosts * 2 > content {
        Format::Hosts
    } else if ips == content {
        Format::Ips
    } else {
        Format::Domains
    }
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

    /// `hosts` and `domains` lines (the same grammar but for a bare address).
    fn hosts_or_domains_line(&mut self, line: &'a str, hosts: bool) {
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

    fn adblock_line(&mut self, line: &'a str) {
        let (allow, rule) = match line.strip_prefix("@@") {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let Some(rule) = rule.strip_prefix("||") else {
            return self.skip(SkipReason::UnsupportedSyntax);
        };
        let (pattern, modifiers) = match rule.find('$') {
            Some(i) => (&rule[..i], Some(&rule[i + 1..])),
            None => (rule, None),
        };
        let pattern = pattern.strip_suffix('|').unwrap_or(pattern);
        let Some(host) = pattern.strip_suffix('^') else {
            // A path, a port, a missing separator (prefix match), cosmetic...
            return self.skip(SkipReason::UnsupportedSyntax);
        };
        let host = host.strip_prefix("*.").unwrap_or(host);
        if host.is_empty() || host.bytes().any(is_pattern_byte) {
            return self.skip(SkipReason::UnsupportedSyntax);
        }
        let mut important = false;
        if let Some(modifiers) = modifiers {
            if modifiers.is_empty() {
                return self.skip(SkipReason::UnsupportedSyntax);
            }
            for modifier in modifiers.split(',') {
                let modifier = modifier.trim_ascii();
                if modifier.eq_ignore_ascii_case("important") {
                    important = true;
                } else if !modifier.eq_ignore_ascii_case("all") {
                    return self.skip(SkipReason::UnsupportedModifier);
                }
            }
        }
        let kind = match (allow, important) {
            (false, false) => Kind::Block,
            (false, true) => Kind::Important,
            (true, false) => Kind::Allow,
            // An exception that beats `$important` blocks: not modelled, so skipped (fails closed).
            (true, true) => return self.skip(SkipReason::UnsupportedModifier),
        };
        self.name(host, kind, false);
    }

    fn dnsmasq_line(&mut self, line: &'a str) {
        let Some(value) = dnsmasq_directive(line) else {
            return self.skip(SkipReason::UnsupportedSyntax);
        };
        // value is `/a/b/...` followed by the target (possibly empty).
        let Some(end) = value.rfind('/').filter(|&end| end > 0) else {
            return self.skip(SkipReason::UnsupportedSyntax);
        };
        for item in value[1..end].split('/') {
            let item = item.trim_ascii();
            let name = item
                .strip_prefix("*.")
                .or_else(|| item.strip_prefix('.'))
                .unwrap_or(item);
            if name.is_empty() || name == "#" {
                self.skip(SkipReason::UnsupportedSyntax);
            } else {
                self.name(name, Kind::Block, false);
            }
        }
    }

    fn ips_line(&mut self, line: &'a str) {
        let content = strip_inline_comment(line, &['#', ';']);
        let mut tokens = content.split_ascii_whitespace();
        match (tokens.next().and_then(parse_net), tokens.next()) {
            (Some(net), None) => self.net(net),
            _ => self.skip(SkipReason::NotAnAddress),
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

/// `!#if`, `!#include`, `!#endif`: adblock preprocessor directives.
fn is_adblock_directive(line: &str) -> bool {
    line.len() > 2 && line.as_bytes()[1] == b'#' && line.as_bytes()[2].is_ascii_alphabetic()
}

/// An element-hiding or scriptlet rule that applies everywhere (`##.ad`, `#@#.ad`, ...).
fn is_cosmetic_start(line: &str) -> bool {
    const MARKERS: [&str; 8] = ["##", "#@#", "#?#", "#$#", "#%#", "#@?#", "#@$#", "#@%#"];
    MARKERS.iter().any(|marker| {
        line.strip_prefix(marker).is_some_and(|rest| {
            rest.bytes()
                .next()
                .is_some_and(|b| !b.is_ascii_whitespace() && b != b'#')
        })
    })
}

/// Cheap vote for auto-detection: does this content line use adblock syntax?
fn looks_adblock(line: &str) -> bool {
    line.starts_with("||")
        || line.starts_with("@@")
        || line.starts_with('|')
        || line.starts_with('#')
        || line.ends_with('^')
        || line.contains("^$")
        || line.contains("##")
        || line.contains("#@#")
}

/// `server=/...`, `address=/...`, `local=/...`: returns the value from the first `/`.
fn dnsmasq_directive(line: &str) -> Option<&str> {
    let (key, value) = line.split_once('=')?;
    let value = value.trim_ascii_start();
    (matches!(key.trim_ascii(), "server" | "address" | "local") && value.starts_with('/'))
        .then_some(value)
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

/// Hosts boilerplate that must never become a rule.
fn is_boilerplate(name: &str) -> bool {
    const NAMES: [&str; 12] = [
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
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.len() > 21
        || !matches!(
            name.as_bytes().first(),
            Some(b'l' | b'L' | b'b' | b'B' | b'i' | b'I' | b'0')
        )
    {
        return false;
    }
    NAMES.iter().any(|b| b.eq_ignore_ascii_case(name))
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

/// The address column of a hosts line; an IPv6 zone (`fe80::1%lo0`) is allowed.
fn parse_host_address(token: &str) -> Option<IpAddr> {
    if !might_be_ip(token) {
        return None;
    }
    let address = token.split_once('%').map_or(token, |(address, _)| address);
    address.parse().ok()
}

/// Characters that make an adblock host part a pattern rather than a name.
fn is_pattern_byte(b: u8) -> bool {
    matches!(
        b,
        b'/' | b':' | b'*' | b'^' | b'|' | b'?' | b'&' | b'=' | b'#' | b'@' | b'$' | b' ' | b'\t'
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses and renders every entry as `line kind value` and every skip as `line !reason`.
    fn run(text: &str, format: Format) -> (Vec<String>, ParseReport) {
        let mut out = Vec::new();
        let mut skips = Vec::new();
        let report = parse_list_with_skips(
            text,
            format,
            |line, entry| {
                out.push(format!(
                    "{line} {}",
                    match entry {
                        Entry::Block(n) => format!("block {n}"),
                        Entry::BlockExact(n) => format!("exact {n}"),
                        Entry::BlockImportant(n) => format!("important {n}"),
                        Entry::BlockRegex(r) => format!("regex {r}"),
                        Entry::Allow(n) => format!("allow {n}"),
                        Entry::Ip(net) => format!("ip {net}"),
                    }
                ))
            },
            |line, _, reason| skips.push(format!("{line} !{}", reason.as_str())),
        );
        out.extend(skips);
        check_invariant(&report);
        (out, report)
    }

    fn check_invariant(r: &ParseReport) {
        assert_eq!(
            r.lines,
            r.blank + r.comments + r.entry_lines + r.skipped_lines,
            "{r:#?}"
        );
        assert_eq!(r.skipped, r.skipped_by_reason.values().sum::<u32>());
    }

    fn entries(text: &str, format: Format) -> Vec<String> {
        run(text, format).0
    }

    #[test]
    fn hosts_lines() {
        let text = "# header\n\
                    127.0.0.1 localhost\n\
                    127.0.0.1\tlocalhost.localdomain\n\
                    255.255.255.255 broadcasthost\n\
                    ::1 localhost ip6-localhost ip6-loopback\n\
                    fe80::1%lo0 localhost\n\
                    ff02::1 ip6-allnodes\n\
                    0.0.0.0 0.0.0.0\n\
                    0.0.0.0 ads.example.com tracker.example.net # inline comment\n\
                    127.0.0.1 Upper.Example.COM.\n\
                    10.1.2.3   spaced.example\t\n\
                    0.0.0.0 lan\n\
                    0.0.0.0 1.2.3.4\n\
                    0.0.0.0 bad..name\n\
                    notanaddress a.example b.example\n\
                    0.0.0.0\n\
                    plain.example\n\
                    \n";
        let (out, report) = run(text, Format::Hosts);
        assert_eq!(
            out,
            [
                "9 block ads.example.com",
                "9 block tracker.example.net",
                "10 block upper.example.com",
                "11 block spaced.example",
                "17 block plain.example",
                "2 !hosts_boilerplate",
                "3 !hosts_boilerplate",
                "4 !hosts_boilerplate",
                "5 !hosts_boilerplate",
                "5 !hosts_boilerplate",
                "5 !hosts_boilerplate",
                "6 !hosts_boilerplate",
                "7 !hosts_boilerplate",
                "8 !hosts_boilerplate",
                "12 !top_level_only",
                "13 !ip_as_name",
                "14 !bad_name",
                "15 !unsupported_syntax",
                "16 !unsupported_syntax",
            ]
        );
        assert_eq!((report.lines, report.blank, report.comments), (18, 1, 1));
        assert_eq!(report.entries, 5);
        assert_eq!(report.entry_lines, 4);
        assert_eq!(report.skipped, 14);
        assert_eq!(report.skipped_lines, 12);
        assert_eq!(report.skipped_for(SkipReason::HostsBoilerplate), 9);
        // Examples: at most 5 per reason, whole lines.
        let boiler: Vec<_> = report
            .examples
            .iter()
            .filter(|s| s.reason == SkipReason::HostsBoilerplate)
            .collect();
        assert_eq!(boiler.len(), MAX_EXAMPLES);
        assert_eq!(boiler[0].line, 2);
        assert_eq!(boiler[0].text, "127.0.0.1 localhost");
    }

    #[test]
    fn hosts_line_mixing_boilerplate_and_names_counts_both() {
        let (out, report) = run("127.0.0.1 localhost evil.example", Format::Hosts);
        assert_eq!(out, ["1 block evil.example", "1 !hosts_boilerplate"]);
        assert_eq!((report.entry_lines, report.skipped_lines), (1, 0));
    }

    #[test]
    fn crlf_bom_tabs_and_trailing_whitespace() {
        let text = "\u{feff}# c\r\n0.0.0.0\tA.example  \r\n\r\n  0.0.0.0 b.example\t\r\n";
        let (out, report) = run(text, Format::Auto);
        assert_eq!(report.format, Format::Hosts);
        assert_eq!(out, ["2 block a.example", "4 block b.example"]);
        assert_eq!((report.lines, report.blank, report.comments), (4, 1, 1));
        // A BOM in the middle (concatenated lists) is ignored too.
        assert_eq!(
            entries("a.example\n\u{feff}b.example\n", Format::Domains),
            ["1 block a.example", "2 block b.example"]
        );
    }

    #[test]
    fn domains_lines() {
        let text = "# comment\n\
                    ! also a comment\n\
                    [Adblock Plus 2.0]\n\
                    example.com\n\
                    trailing.dot.example.\n\
                    UPPER.Example\n\
                    *.wild.example\n\
                    .leading.example\n\
                    =exact.example\n\
                    /^ads[0-9]+\\./\n\
                    0000153.0000255.0000011.0000125\n\
                    1.2.3.4\n\
                    2001:db8::1\n\
                    198.51.100.0/24\n\
                    com\n\
                    =intranet\n\
                    bücher.example\n\
                    inline.example # comment\n\
                    inline2.example\t# comment\n\
                    ads.*\n\
                    *ads*\n\
                    bad_name!.example\n\
                    localhost\n\
                    two names.example\n\
                    //\n\
                    http://url.example/path\n";
        let (out, report) = run(text, Format::Domains);
        assert_eq!(
            out,
            [
                "4 block example.com",
                "5 block trailing.dot.example",
                "6 block upper.example",
                "7 block wild.example",
                "8 block leading.example",
                "9 exact exact.example",
                "10 regex ^ads[0-9]+\\.",
                "11 block 0000153.0000255.0000011.0000125",
                "12 ip 1.2.3.4/32",
                "13 ip 2001:db8::1/128",
                "14 ip 198.51.100.0/24",
                "16 exact intranet",
                "17 block xn--bcher-kva.example",
                "18 block inline.example",
                "19 block inline2.example",
                "15 !top_level_only",
                "20 !unsupported_syntax",
                "21 !unsupported_syntax",
                "22 !bad_name",
                "23 !hosts_boilerplate",
                "24 !unsupported_syntax",
                "25 !unsupported_syntax",
                "26 !unsupported_syntax",
            ]
        );
        assert_eq!(report.comments, 3);
    }

    #[test]
    fn domains_list_accepts_hosts_lines() {
        assert_eq!(
            entries("0.0.0.0 a.example b.example", Format::Domains),
            ["1 block a.example", "1 block b.example"]
        );
    }

    #[test]
    fn regex_length_limit() {
        let ok = format!("/{}/", "a".repeat(MAX_REGEX_LEN));
        let long = format!("/{}/", "a".repeat(MAX_REGEX_LEN + 1));
        let (out, report) = run(&format!("{ok}\n{long}\n"), Format::Domains);
        assert_eq!(out.len(), 2);
        assert!(out[0].starts_with("1 regex aaa"));
        assert_eq!(out[1], "2 !regex_too_long");
        assert_eq!(report.skipped_for(SkipReason::RegexTooLong), 1);
        // Examples are truncated to 200 characters.
        assert_eq!(report.examples[0].text.chars().count(), MAX_EXAMPLE_CHARS);
        // `#` inside a regex is not a comment; a comment after it is.
        assert_eq!(
            entries("/a #b/\n/c/ # note\n", Format::Domains),
            ["1 regex a #b", "2 regex c"]
        );
    }

    #[test]
    fn name_length_and_label_limits() {
        let long_label = format!("{}.example", "a".repeat(64));
        let (out, _) = run(&long_label, Format::Domains);
        assert_eq!(out, ["1 !bad_name"]);
        let ok = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        assert_eq!(entries(&ok, Format::Domains).len(), 1);
        assert_eq!(entries(&format!("{ok}x"), Format::Domains), ["1 !bad_name"]);
    }

    #[test]
    fn adblock_rules() {
        let text = "[Adblock Plus 2.0]\n\
                    ! Title: test\n\
                    # hash comment\n\
                    ||ads.example^\n\
                    ||Upper.Example.^\n\
                    ||anchored.example^|\n\
                    ||*.wild.example^\n\
                    ||imp.example^$important\n\
                    ||all.example^$all\n\
                    ||both.example^$important,all\n\
                    @@||good.example^\n\
                    @@||good2.example^|\n\
                    ||bücher.example^\n\
                    ||tp.example^$third-party\n\
                    ||s.example^$script\n\
                    ||d.example^$domain=a.example\n\
                    ||da.example^$denyallow=x.example\n\
                    ||c.example^$client=127.0.0.1\n\
                    ||t.example^$dnstype=AAAA\n\
                    ||bf.example^$badfilter\n\
                    ||ct.example^$ctag=device_pc\n\
                    ||doc.example^$document\n\
                    ||mix.example^$important,third-party\n\
                    @@||imp-allow.example^$important\n\
                    ||path.example/ads\n\
                    ||port.example:8080^\n\
                    ||noanchor.example\n\
                    ||a*.example^\n\
                    |exact.example^\n\
                    /regex/\n\
                    plain.example\n\
                    example.com##.banner\n\
                    ##.banner\n\
                    #@#.banner\n\
                    example.com#@#.banner\n\
                    0.0.0.0 hosts.example\n\
                    ||com^\n\
                    ||1.2.3.4^\n\
                    ||bad!.example^\n\
                    ||^\n\
                    ||empty.example^$\n\
                    !#if (adguard)\n\
                    ||inside.example^\n\
                    !#endif\n\
                    ## Section title\n";
        let (out, report) = run(text, Format::Auto);
        assert_eq!(report.format, Format::Adblock);
        assert_eq!(
            out,
            [
                "4 block ads.example",
                "5 block upper.example",
                "6 block anchored.example",
                "7 block wild.example",
                "8 important imp.example",
                "9 block all.example",
                "10 important both.example",
                "11 allow good.example",
                "12 allow good2.example",
                "13 block xn--bcher-kva.example",
                "43 block inside.example",
                "14 !unsupported_modifier",
                "15 !unsupported_modifier",
                "16 !unsupported_modifier",
                "17 !unsupported_modifier",
                "18 !unsupported_modifier",
                "19 !unsupported_modifier",
                "20 !unsupported_modifier",
                "21 !unsupported_modifier",
                "22 !unsupported_modifier",
                "23 !unsupported_modifier",
                "24 !unsupported_modifier",
                "25 !unsupported_syntax",
                "26 !unsupported_syntax",
                "27 !unsupported_syntax",
                "28 !unsupported_syntax",
                "29 !unsupported_syntax",
                "30 !unsupported_syntax",
                "31 !unsupported_syntax",
                "32 !unsupported_syntax",
                "33 !unsupported_syntax",
                "34 !unsupported_syntax",
                "35 !unsupported_syntax",
                "36 !unsupported_syntax",
                "37 !top_level_only",
                "38 !ip_as_name",
                "39 !bad_name",
                "40 !unsupported_syntax",
                "41 !unsupported_syntax",
                "42 !unsupported_syntax",
                "44 !unsupported_syntax",
            ]
        );
        assert_eq!(report.comments, 4);
    }

    #[test]
    fn dnsmasq_lines() {
        let text = "# dnsmasq\n\
                    server=/a.example/\n\
                    server=/b.example/127.0.0.1\n\
                    server=/c.example/d.example/\n\
                    address=/e.example/0.0.0.0\n\
                    address=/f.example/#\n\
                    address=/g.example/\n\
                    local=/h.example/\n\
                    address=/*.i.example/::\n\
                    server=/.j.example/\n\
                    server=/K.Example./\n\
                    address=/#/0.0.0.0\n\
                    server=//1.1.1.1\n\
                    server=1.1.1.1\n\
                    conf-file=/etc/dnsmasq.d/x.conf\n\
                    bogus-nxdomain=1.2.3.4\n\
                    no-resolv\n\
                    server=/lan/\n\
                    server=/ok.example/bad..example/\n\
                    server=/unterminated.example\n";
        let (out, report) = run(text, Format::Auto);
        assert_eq!(report.format, Format::Dnsmasq);
        assert_eq!(
            out,
            [
                "2 block a.example",
                "3 block b.example",
                "4 block c.example",
                "4 block d.example",
                "5 block e.example",
                "6 block f.example",
                "7 block g.example",
                "8 block h.example",
                "9 block i.example",
                "10 block j.example",
                "11 block k.example",
                "19 block ok.example",
                "12 !unsupported_syntax",
                "13 !unsupported_syntax",
                "14 !unsupported_syntax",
                "15 !unsupported_syntax",
                "16 !unsupported_syntax",
                "17 !unsupported_syntax",
                "18 !top_level_only",
                "19 !bad_name",
                "20 !unsupported_syntax",
            ]
        );
        assert_eq!((report.entry_lines, report.skipped_lines), (11, 8));
    }

    #[test]
    fn ips_lines() {
        let text = "# ips\n\
                    ; spamhaus-style comment\n\
                    192.0.2.1\n\
                    198.51.100.7/31\n\
                    10.0.0.1/8\n\
                    2001:db8::/32\n\
                    ::1\n\
                    203.0.113.0/24 ; SBL123\n\
                    203.0.114.0/24 # note\n\
                    0.0.0.0/0\n\
                    1.0.0.0/7\n\
                    2000::/3\n\
                    example.com\n\
                    1.2.3.4-1.2.3.9\n\
                    1.2.3.4 extra\n\
                    010.1.1.1\n\
                    1.2.3.4/33\n";
        let (out, report) = run(text, Format::Ips);
        assert_eq!(
            out,
            [
                "3 ip 192.0.2.1/32",
                "4 ip 198.51.100.6/31",
                "5 ip 10.0.0.0/8",
                "6 ip 2001:db8::/32",
                "7 ip ::1/128",
                "8 ip 203.0.113.0/24",
                "9 ip 203.0.114.0/24",
                "10 !network_too_broad",
                "11 !network_too_broad",
                "12 !network_too_broad",
                "13 !not_an_address",
                "14 !not_an_address",
                "15 !not_an_address",
                "16 !not_an_address",
                "17 !not_an_address",
            ]
        );
        assert_eq!(report.comments, 2);
    }

    #[test]
    fn auto_detection_per_format() {
        assert_eq!(
            detect_format("# c\n0.0.0.0 a.example\n0.0.0.0 b.example\n"),
            Format::Hosts
        );
        assert_eq!(
            detect_format("127.0.0.1 localhost\n::1 localhost\n0.0.0.0 a.example\n"),
            Format::Hosts
        );
        assert_eq!(
            detect_format("! c\n||a.example^\n@@||b.example^\n"),
            Format::Adblock
        );
        assert_eq!(
            detect_format("[Adblock Plus 2.0]\nplain.example\n"),
            Format::Adblock
        );
        assert_eq!(detect_format("! only comments\n! here\n"), Format::Adblock);
        assert_eq!(
            detect_format("# c\nserver=/a.example/\nlocal=/b.example/\n"),
            Format::Dnsmasq
        );
        assert_eq!(
            detect_format("# c\n; c\n1.2.3.4\n10.0.0.0/8 ; SBL1\n2001:db8::/32 # x\n"),
            Format::Ips
        );
        // Domains lists take bare addresses too, so one name is enough to pick domains.
        assert_eq!(
            detect_format("1.2.3.4\n5.6.7.8\nexample.com\n"),
            Format::Domains
        );
        assert_eq!(
            detect_format("a.example\n*.b.example\n=c.example\n/re/\n"),
            Format::Domains
        );
        assert_eq!(detect_format("1.2.3.4\na.example\n"), Format::Domains);
        assert_eq!(
            detect_format("0000153.0000255.0000011.0000125\n"),
            Format::Domains
        );
        assert_eq!(detect_format(""), Format::Domains);
        assert_eq!(
            detect_format("\u{feff}# c\r\n0.0.0.0 a.example\r\n"),
            Format::Hosts
        );
        // Only the first 50 content lines count.
        let mut text = "a.example\n".repeat(DETECT_LINES);
        text.push_str(&"0.0.0.0 b.example\n".repeat(100));
        assert_eq!(detect_format(&text), Format::Domains);
    }

    #[test]
    fn detection_takes_headers_with_multibyte_characters() {
        // Byte 8 falls inside `é`: slicing there panicked (issue 11, item 1; also found by
        // fuzz/fuzz_targets/list_detect.rs). U+FFFD is what lossy decoding puts for bad bytes.
        for text in ["[abcdefé]\na.example\n", "[A\0\u{fffd}\u{fffd}]\n", "[é]\n"] {
            assert_eq!(detect_format(text), Format::Domains, "{text:?}");
        }
        assert_eq!(
            detect_format("[AdBlock é]\nplain.example\n"),
            Format::Adblock
        );
        let (_, report) = run("[abcdefé]\na.example\n", Format::Auto);
        assert_eq!(report.format, Format::Domains);
    }

    #[test]
    fn line_splitting_matches_str_lines() {
        for text in [
            "", "a", "a\n", "a\n\n", "\n", "\n\n", "a\r\nb", "a\nb\r\n", "\r\n", "é\nü",
        ] {
            let ours: Vec<&str> = Lines(text)
                .map(|l| l.strip_suffix('\r').unwrap_or(l))
                .collect();
            let std: Vec<&str> = text.lines().collect();
            assert_eq!(ours, std, "{text:?}");
        }
    }

    #[test]
    fn explicit_format_overrides_detection() {
        let (out, report) = run("||a.example^\n", Format::Domains);
        assert_eq!(report.format, Format::Domains);
        assert_eq!(out, ["1 !unsupported_syntax"]);
    }

    #[test]
    fn skip_reason_labels_are_unique_snake_case() {
        let labels: std::collections::BTreeSet<_> =
            SkipReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), SkipReason::ALL.len());
        assert!(
            labels
                .iter()
                .all(|l| l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
    }

    #[test]
    fn format_deserialises_snake_case() {
        #[derive(serde::Deserialize)]
        struct C {
            format: Format,
        }
        let c: C = toml::from_str("format = \"dnsmasq\"").unwrap();
        assert_eq!(c.format, Format::Dnsmasq);
        assert_eq!(Format::default(), Format::Auto);
    }

    #[test]
    fn regex_borrows_from_the_text() {
        let text = String::from("/abc/\n");
        let mut got: Option<&str> = None;
        parse_list(&text, Format::Domains, |_, e| {
            if let Entry::BlockRegex(r) = e {
                got = Some(r);
            }
        });
        assert_eq!(got, Some("abc"));
    }
}
