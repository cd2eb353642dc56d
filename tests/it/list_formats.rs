//! List parsing against real threat lists (`../shared/data/blocklists/`: an `#[ignore]`d
//! test that scripts/test.sh runs when they are there, and always under CI=true) and
//! against small fixtures with every odd case (`tests/fixtures/lists/`, always run).
//!
//! For every file: the detected format must match the file-name prefix, every
//! line must be accounted for (blank, comment, produced an entry, or skipped),
//! and the entries must match an independent count computed here with simpler,
//! different logic (regular expressions, no shared code with the parser).
//!
//! Run with `cargo test --test it list_formats:: -- --include-ignored --nocapture` for the
//! per-file table.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use portcullis::lists::parse::{Entry, Format, ParseReport, SkipReason, parse_list_with_skips};
use regex::Regex;

fn shared_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/blocklists")
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lists")
}

/// The `.txt` files of a folder, sorted.
fn list_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    files
}

fn format_from_file_name(path: &Path) -> Format {
    let name = path.file_name().unwrap().to_str().unwrap();
    let prefix = name.split('-').next().unwrap();
    match prefix {
        "hosts" => Format::Hosts,
        "adblock" => Format::Adblock,
        "dnsmasq" => Format::Dnsmasq,
        "domains" => Format::Domains,
        "ips" => Format::Ips,
        other => panic!("{name}: unknown format prefix {other:?}"),
    }
}

/// Renders an entry the way the independent expectations are written.
fn render(entry: &Entry<'_>) -> String {
    match entry {
        Entry::Block(n) => format!("block {n}"),
        Entry::BlockExact(n) => format!("exact {n}"),
        Entry::BlockImportant(n) => format!("important {n}"),
        Entry::BlockRegex(r) => format!("regex {r}"),
        Entry::Allow(n) => format!("allow {n}"),
        Entry::Ip(net) => format!("ip {net}"),
    }
}

/// Everything one parse produced, per line.
struct Outcome {
    report: ParseReport,
    /// line number → rendered entries of that line.
    entries: BTreeMap<u32, Vec<String>>,
    /// line number → skip reasons of that line.
    skips: BTreeMap<u32, Vec<SkipReason>>,
    entry_count: u32,
    kinds: BTreeMap<&'static str, u32>,
}

fn parse(text: &str) -> Outcome {
    let mut entries: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut skips: BTreeMap<u32, Vec<SkipReason>> = BTreeMap::new();
    let mut entry_count = 0;
    let mut kinds: BTreeMap<&'static str, u32> = BTreeMap::new();
    let report = parse_list_with_skips(
        text,
        Format::Auto,
        |line, entry| {
            entry_count += 1;
            let kind = match entry {
                Entry::Block(_) => "block",
                Entry::BlockExact(_) => "exact",
                Entry::BlockImportant(_) => "important",
                Entry::BlockRegex(_) => "regex",
                Entry::Allow(_) => "allow",
                Entry::Ip(_) => "ip",
            };
            *kinds.entry(kind).or_default() += 1;
            entries.entry(line).or_default().push(render(&entry));
        },
        |line, _text, reason| skips.entry(line).or_default().push(reason),
    );
    Outcome {
        report,
        entries,
        skips,
        entry_count,
        kinds,
    }
}

/// The test's own line classification and expectations, written with regular
/// expressions and no code shared with the parser.
struct Oracle {
    blank: Regex,
    comment: Regex,
    adblock_not_comment: Regex,
    address: Regex,
    ipv4: Regex,
    simple_name: Regex,
    adblock_simple: Regex,
    dnsmasq: Regex,
    boilerplate: BTreeSet<&'static str>,
}

/// What the oracle expects for one file.
#[derive(Default)]
struct Expected {
    blank: u32,
    comments: u32,
    /// Content lines (neither blank nor comment).
    content: Vec<u32>,
    /// Rule items (a hosts line with three names has three).
    items: u32,
    boilerplate: u32,
    /// Entries the oracle can predict exactly for simple lines: line → rendered entry.
    simple: Vec<(u32, String)>,
}

impl Oracle {
    fn new() -> Oracle {
        Oracle {
            blank: Regex::new(r"^[\s\u{feff}]*$").unwrap(),
            comment: Regex::new(r"^\s*(#|!|\[[A-Za-z].*\]\s*$)").unwrap(),
            // Cosmetic rules and preprocessor directives look like comments but are not.
            adblock_not_comment: Regex::new(r"^\s*(#@?[#?$%][^\s#]|!#[a-z])").unwrap(),
            address: Regex::new(r"^(\d{1,3}(\.\d{1,3}){3}|[0-9A-Fa-f]*:[0-9A-Fa-f:.]*)(%\w+)?$")
                .unwrap(),
            ipv4: Regex::new(
                r"^((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$",
            )
            .unwrap(),
            // Labels of 1 to 63 characters; `xn--` labels are left out (their
            // punycode validity is the normaliser's business, not the oracle's).
            simple_name: Regex::new(r"^(([a-z0-9_-]{1,63})\.)+[a-z0-9_-]{1,63}\.?$").unwrap(),
            adblock_simple: Regex::new(r"^(@@)?\|\|([a-z0-9_.-]+)\^(\$important)?$").unwrap(),
            dnsmasq: Regex::new(r"^(server|address|local)=/(.*)/[^/]*$").unwrap(),
            // The names are data, not logic: the reference shares the parser's table.
            boilerplate: portcullis::lists::parse::HOSTS_BOILERPLATE
                .into_iter()
                .collect(),
        }
    }

    fn is_simple_name(&self, name: &str) -> bool {
        name.len() <= 253
            && self.simple_name.is_match(name)
            && !name.starts_with("xn--")
            && !name.contains(".xn--")
            && !self.address.is_match(name.trim_end_matches('.'))
    }

    fn expect(&self, text: &str, format: Format) -> Expected {
        let mut e = Expected::default();
        for (i, line) in text.lines().enumerate() {
            let n = i as u32 + 1;
            if self.blank.is_match(line) {
                e.blank += 1;
                continue;
            }
            let line = line.trim().trim_start_matches('\u{feff}');
            let comment =
                self.comment.is_match(line) || (format == Format::Ips && line.starts_with(';'));
            if comment && !(format == Format::Adblock && self.adblock_not_comment.is_match(line)) {
                e.comments += 1;
                continue;
            }
            e.content.push(n);
            match format {
                Format::Hosts | Format::Domains => {
                    let tokens: Vec<&str> = line
                        .split_whitespace()
                        .take_while(|t| !t.starts_with('#'))
                        .collect();
                    if tokens.len() > 1 && self.address.is_match(tokens[0]) {
                        for name in &tokens[1..] {
                            e.items += 1;
                            let lower = name.to_lowercase();
                            let bare = lower.trim_end_matches('.');
                            if self.boilerplate.contains(bare) {
                                e.boilerplate += 1;
                            } else if self.is_simple_name(&lower) {
                                e.simple.push((n, format!("block {bare}")));
                            }
                        }
                    } else {
                        e.items += 1;
                        let lower = tokens.first().unwrap_or(&"").to_lowercase();
                        // A lone address is an address line, not a boilerplate name.
                        if self.boilerplate.contains(lower.as_str())
                            && !self.address.is_match(&lower)
                        {
                            e.boilerplate += 1;
                        } else if tokens.len() == 1 && self.is_simple_name(&lower) {
                            e.simple
                                .push((n, format!("block {}", lower.trim_end_matches('.'))));
                        }
                    }
                }
                Format::Adblock => {
                    e.items += 1;
                    if let Some(c) = self.adblock_simple.captures(line) {
                        let name = c[2].trim_end_matches('.');
                        let kind = match (c.get(1).is_some(), c.get(3).is_some()) {
                            (false, false) => "block",
                            (false, true) => "important",
                            (true, false) => "allow",
                            (true, true) => continue,
                        };
                        if self.is_simple_name(name) {
                            e.simple.push((n, format!("{kind} {name}")));
                        }
                    }
                }
                Format::Dnsmasq => match self.dnsmasq.captures(line) {
                    Some(c) => {
                        for name in c[2].split('/') {
                            e.items += 1;
                            if self.is_simple_name(name) {
                                e.simple.push((n, format!("block {name}")));
                            }
                        }
                    }
                    None => e.items += 1,
                },
                Format::Ips => {
                    e.items += 1;
                    let (token, rest) = line.split_once([' ', '\t']).unwrap_or((line, ""));
                    let rest = rest.trim_start();
                    let no_extra = rest.is_empty() || rest.starts_with(['#', ';']);
                    if no_extra && self.ipv4.is_match(token) {
                        e.simple.push((n, format!("ip {token}/32")));
                    }
                }
                Format::Auto => unreachable!(),
            }
        }
        e
    }
}

/// Parses one file and checks everything; returns the table row.
fn check_file(oracle: &Oracle, path: &Path, text: &str) -> (Outcome, String) {
    let name = path.file_name().unwrap().to_str().unwrap().to_owned();
    let want_format = format_from_file_name(path);
    let start = std::time::Instant::now();
    let out = parse(text);
    let elapsed = start.elapsed();
    let r = &out.report;
    assert_eq!(r.format, want_format, "{name}: detected format");

    // Internal consistency.
    assert_eq!(
        r.entries, out.entry_count,
        "{name}: report.entries vs sink calls"
    );
    assert_eq!(
        r.skipped,
        out.skips.values().map(|v| v.len() as u32).sum::<u32>(),
        "{name}: report.skipped vs on_skip calls"
    );
    assert_eq!(
        r.skipped,
        r.skipped_by_reason.values().sum::<u32>(),
        "{name}: skipped_by_reason sum"
    );
    for (reason, count) in &r.skipped_by_reason {
        let examples = r.examples.iter().filter(|s| s.reason == *reason).count();
        assert_eq!(
            examples,
            (*count as usize).min(5),
            "{name}: examples of {reason:?}"
        );
    }

    // Every line accounted for, checked against the oracle's own classification.
    let e = oracle.expect(text, want_format);
    assert_eq!(r.lines, text.lines().count() as u32, "{name}: lines");
    assert_eq!(r.blank, e.blank, "{name}: blank lines");
    assert_eq!(r.comments, e.comments, "{name}: comment lines");
    let entry_lines: BTreeSet<u32> = out.entries.keys().copied().collect();
    let skip_only_lines: BTreeSet<u32> = out
        .skips
        .keys()
        .copied()
        .filter(|l| !entry_lines.contains(l))
        .collect();
    assert_eq!(
        r.entry_lines as usize,
        entry_lines.len(),
        "{name}: entry lines"
    );
    assert_eq!(
        r.skipped_lines as usize,
        skip_only_lines.len(),
        "{name}: skipped lines"
    );
    assert_eq!(
        r.lines,
        r.blank + r.comments + r.entry_lines + r.skipped_lines,
        "{name}: every line accounted for"
    );
    let content: BTreeSet<u32> = e.content.iter().copied().collect();
    let produced: BTreeSet<u32> = entry_lines.union(&skip_only_lines).copied().collect();
    let lines: Vec<&str> = text.lines().collect();
    if let Some(l) = content.symmetric_difference(&produced).next() {
        panic!(
            "{name}: line {l} {:?}: oracle says content={}, parser says produced={}",
            lines[*l as usize - 1],
            content.contains(l),
            produced.contains(l)
        );
    }

    // Independent counts: items seen by the oracle minus what the parser skipped.
    assert_eq!(
        r.skipped_for(SkipReason::HostsBoilerplate),
        e.boilerplate,
        "{name}: boilerplate names"
    );
    assert_eq!(
        r.entries,
        e.items - r.skipped,
        "{name}: entries == items - skipped"
    );
    // Simple lines: the exact entry is predicted.
    for (line, want) in &e.simple {
        let got = out.entries.get(line).map(Vec::as_slice).unwrap_or_default();
        assert!(
            got.contains(want),
            "{name}: line {line} {:?}: expected {want:?}, got {got:?} (skips {:?})",
            lines[*line as usize - 1],
            out.skips.get(line)
        );
    }

    let mut row = format!(
        "{name:<40} {:<8} {:>7} {:>6} {:>6} {:>7} {:>6} {:>6} {:>8.1?}",
        r.format.as_str(),
        r.lines,
        r.blank,
        r.comments,
        r.entries,
        r.skipped,
        e.simple.len() * 100 / e.items.max(1) as usize,
        elapsed
    );
    for (reason, count) in &r.skipped_by_reason {
        let _ = write!(row, "\n    skipped {:<22} {count:>6}", reason.as_str());
        for ex in r.examples.iter().filter(|s| s.reason == *reason).take(3) {
            let text: String = ex.text.chars().take(70).collect();
            let _ = write!(row, "\n        line {:>6}: {text}", ex.line);
        }
    }
    let kinds: Vec<String> = out.kinds.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = write!(row, "\n    entries: {}", kinds.join(" "));
    (out, row)
}

const HEADER: &str = "file                                     format     lines  blank  cmnts entries  skips simple%  debug-time";

#[test]
fn fixtures_every_odd_case() {
    let oracle = Oracle::new();
    let files = list_files(&fixtures_dir());
    assert_eq!(files.len(), 5, "one fixture per format");
    println!("\n{HEADER}");
    let mut summaries = HashMap::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let (out, row) = check_file(&oracle, path, &text);
        println!("{row}");

        // The same file with a BOM and CRLF line endings parses identically.
        let crlf = format!("\u{feff}{}", text.replace('\n', "\r\n"));
        let again = parse(&crlf);
        assert_eq!(again.entries, out.entries, "{}: CRLF + BOM", path.display());
        assert_eq!(again.skips, out.skips, "{}: CRLF + BOM", path.display());

        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        summaries.insert(name, out);
    }

    // Pin the exact outcome of every odd case.
    let expect = |file: &str, want: &[(u32, &str)]| {
        let out = &summaries[file];
        let mut got: Vec<(u32, String)> = Vec::new();
        for (line, entries) in &out.entries {
            got.extend(entries.iter().map(|e| (*line, e.clone())));
        }
        for (line, reasons) in &out.skips {
            got.extend(reasons.iter().map(|r| (*line, format!("!{}", r.as_str()))));
        }
        got.sort();
        let mut want: Vec<(u32, String)> =
            want.iter().map(|(l, s)| (*l, (*s).to_owned())).collect();
        want.sort();
        assert_eq!(got, want, "{file}");
    };
    expect(
        "hosts-odd.txt",
        &[
            (3, "!hosts_boilerplate"),
            (4, "!hosts_boilerplate"),
            (5, "!hosts_boilerplate"),
            (6, "!hosts_boilerplate"),
            (7, "!hosts_boilerplate"),
            (7, "!hosts_boilerplate"),
            (7, "!hosts_boilerplate"),
            (8, "!hosts_boilerplate"),
            (9, "!hosts_boilerplate"),
            (10, "!hosts_boilerplate"),
            (11, "!hosts_boilerplate"),
            (12, "!hosts_boilerplate"),
            (13, "!hosts_boilerplate"),
            (14, "!hosts_boilerplate"),
            (17, "block ads.example.com"),
            (18, "block tab.separated.example"),
            (19, "block multi1.example"),
            (19, "block multi2.example"),
            (19, "block multi3.example"),
            (20, "block upper.case.example"),
            (21, "block trailing.dot.example"),
            (22, "block inline.comment.example"),
            (23, "block inline.tab.example"),
            (24, "block 0000153.0000255.0000011.0000125"),
            (25, "block xn--bcher-kva.example"),
            (26, "block 0.0.0.0.prefixed.example"),
            (27, "block ipv6.address.example"),
            (28, "block other.address.example"),
            (29, "block leading.whitespace.example"),
            (30, "!hosts_boilerplate"),
            (30, "block evil.mixed.example"),
            (31, "block localhost.evil.example"),
            (32, "block under_score.example"),
            (33, "block plain.name.in.hosts.example"),
            (37, "!top_level_only"),
            (38, "!ip_as_name"),
            (39, "!bad_name"),
            (40, "!bad_name"),
            (41, "!unsupported_syntax"),
            (42, "!unsupported_syntax"),
            (43, "!unsupported_syntax"),
            (44, "!unsupported_syntax"),
        ],
    );
    expect(
        "domains-odd.txt",
        &[
            (4, "block example.com"),
            (5, "block trailing.dot.example"),
            (6, "block upper.case.example"),
            (7, "block leading.and.trailing.spaces.example"),
            (8, "block wildcard.example"),
            (9, "block leading.dot.example"),
            (10, "exact exact.example"),
            (11, "exact exact.upper.example"),
            (12, "exact intranet"),
            (13, r"regex ^ad[0-9]+\."),
            (14, r"regex (^|\.)tracker\."),
            (15, "regex a #hash inside"),
            (16, "block 0000153.0000255.0000011.0000125"),
            (17, "block xn--bcher-kva.example"),
            (18, "block xn--bcher-kva.example"),
            (19, "block fullwidth.example"),
            (20, "ip 192.0.2.1/32"),
            (21, "ip 2001:db8::1/128"),
            (22, "ip 198.51.100.0/24"),
            (23, "block hosts.style.a.example"),
            (23, "block hosts.style.b.example"),
            (24, "block inline.example"),
            (25, "block under_score.example"),
            (
                26,
                "block aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example",
            ),
            (28, "!top_level_only"),
            (29, "!hosts_boilerplate"),
            (30, "!unsupported_syntax"),
            (31, "!unsupported_syntax"),
            (32, "!bad_name"),
            (33, "!bad_name"),
            (34, "!unsupported_syntax"),
            (35, "!regex_too_long"),
            (36, "!unsupported_syntax"),
            (37, "!bad_name"),
            (38, "!unsupported_syntax"),
            (39, "!ip_as_name"),
            (40, "!unsupported_syntax"),
        ],
    );
    expect(
        "adblock-odd.txt",
        &[
            (7, "block ads.example"),
            (8, "block upper.case.example"),
            (9, "block trailing.dot.example"),
            (10, "block anchored.example"),
            (11, "block wildcard.example"),
            (12, "important important.example"),
            (13, "block all.example"),
            (14, "important both.example"),
            (15, "block xn--bcher-kva.example"),
            (16, "block 0000153.0000255.0000011.0000125"),
            (17, "allow allowed.example"),
            (18, "allow allowed.anchored.example"),
            (19, "allow allowed.all.example"),
            (20, "block whitespace.example"),
            (22, "!unsupported_modifier"),
            (23, "!unsupported_modifier"),
            (24, "!unsupported_modifier"),
            (25, "!unsupported_modifier"),
            (26, "!unsupported_modifier"),
            (27, "!unsupported_modifier"),
            (28, "!unsupported_modifier"),
            (29, "!unsupported_modifier"),
            (30, "!unsupported_modifier"),
            (31, "!unsupported_modifier"),
            (32, "!unsupported_modifier"),
            (33, "!unsupported_modifier"),
            (34, "!unsupported_modifier"),
            (36, "!unsupported_syntax"),
            (37, "!unsupported_syntax"),
            (38, "!unsupported_syntax"),
            (39, "!unsupported_syntax"),
            (40, "!unsupported_syntax"),
            (41, "!unsupported_syntax"),
            (42, "!unsupported_syntax"),
            (43, "!unsupported_syntax"),
            (44, "!unsupported_syntax"),
            (45, "!unsupported_syntax"),
            (46, "!unsupported_syntax"),
            (47, "!unsupported_syntax"),
            (48, "!unsupported_syntax"),
            (49, "!unsupported_syntax"),
            (50, "!unsupported_syntax"),
            (51, "!unsupported_syntax"),
            (52, "!unsupported_syntax"),
            (53, "!unsupported_syntax"),
            (54, "!unsupported_syntax"),
            (55, "!unsupported_syntax"),
            (56, "block inside.conditional.example"),
            (57, "!unsupported_syntax"),
            (59, "!top_level_only"),
            (60, "!ip_as_name"),
            (61, "!bad_name"),
            (62, "!bad_name"),
        ],
    );
    expect(
        "dnsmasq-odd.txt",
        &[
            (2, "block a.example"),
            (3, "block b.example"),
            (4, "block b2.example"),
            (5, "block c.example"),
            (5, "block d.example"),
            (6, "block e.example"),
            (7, "block f.example"),
            (8, "block g.example"),
            (9, "block v6.example"),
            (10, "block h.example"),
            (11, "block i.example"),
            (12, "block j.example"),
            (13, "block k.example"),
            (14, "block xn--bcher-kva.example"),
            (15, "block whitespace.example"),
            (17, "!unsupported_syntax"),
            (18, "!unsupported_syntax"),
            (19, "!unsupported_syntax"),
            (20, "!unsupported_syntax"),
            (21, "!unsupported_syntax"),
            (22, "!unsupported_syntax"),
            (23, "!top_level_only"),
            (24, "!ip_as_name"),
            (25, "block ok.example"),
            (25, "!bad_name"),
            (26, "!unsupported_syntax"),
        ],
    );
    let mut ips: Vec<(u32, String)> = (1..=40)
        .map(|i| (i + 3, format!("ip 192.0.2.{i}/32")))
        .collect();
    ips.extend(
        [
            (44, "ip 198.51.100.6/31"),
            (45, "ip 10.0.0.0/8"),
            (46, "ip 2001:db8::/32"),
            (47, "ip 2001:db8::1/128"),
            (48, "ip ::1/128"),
            (49, "ip 203.0.113.0/24"),
            (50, "ip 203.0.114.0/24"),
            (51, "ip 198.51.100.200/32"),
            (52, "ip 100.64.0.0/10"),
            (53, "ip 8.0.0.0/8"),
            (55, "!network_too_broad"),
            (56, "!network_too_broad"),
            (57, "!network_too_broad"),
            (58, "!not_an_address"),
            (59, "!not_an_address"),
            (60, "!not_an_address"),
            (61, "!not_an_address"),
            (62, "!not_an_address"),
            (63, "!not_an_address"),
        ]
        .map(|(l, s)| (l, s.to_owned())),
    );
    let ips: Vec<(u32, &str)> = ips.iter().map(|(l, s)| (*l, s.as_str())).collect();
    expect("ips-odd.txt", &ips);
}

#[test]
#[ignore = "needs ../shared/data/blocklists (the real lists): scripts/test.sh runs it when present"]
fn real_shared_lists() {
    let dir = shared_dir();
    assert!(
        dir.is_dir(),
        "this test reads the real lists in {}, which are not there",
        dir.display()
    );
    let oracle = Oracle::new();
    let files = list_files(&dir);
    assert!(!files.is_empty(), "no .txt lists in {}", dir.display());
    println!("\n{HEADER}");
    let (mut lines, mut entries, mut skipped) = (0u64, 0u64, 0u64);
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let (out, row) = check_file(&oracle, path, &text);
        println!("{row}");
        lines += u64::from(out.report.lines);
        entries += u64::from(out.report.entries);
        skipped += u64::from(out.report.skipped);
        // Real lists are overwhelmingly clean: a parser bug shows as mass skipping.
        assert!(
            out.report.skipped * 100 <= out.report.entries.max(1),
            "{}: more than 1% skipped",
            path.display()
        );
    }
    println!(
        "total: {} files, {lines} lines, {entries} entries, {skipped} skipped",
        files.len()
    );
}
