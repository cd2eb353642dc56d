use super::detect::DETECT_LINES;
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
