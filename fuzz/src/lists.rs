//! One list parse with every invariant of [`ParseReport`] checked.

use portcullis::lists::parse::{
    Entry, Format, MAX_EXAMPLE_CHARS, MAX_EXAMPLES, MIN_PREFIX_V4, MIN_PREFIX_V6, SkipReason,
    parse_list_with_skips,
};
use portcullis::policy::name::Name;
use portcullis::policy::rules::MAX_REGEX_LEN;

/// Parses `data` as `format` (decoded as the loader does) and checks the report.
pub fn parse_and_check(data: &[u8], format: Format) {
    let text = crate::text(data);
    let mut entries = 0u32;
    let mut skips = 0u32;
    let mut last_line = 0u32;
    let report = parse_list_with_skips(
        &text,
        format,
        |line, entry| {
            assert!(line >= last_line, "entries arrive in line order");
            last_line = line;
            entries += 1;
            check_entry(&entry);
        },
        |line, _text, _reason| {
            assert!(line >= 1);
            skips += 1;
        },
    );
    // Every line lands in exactly one bucket.
    assert_eq!(
        report.lines,
        report.blank + report.comments + report.entry_lines + report.skipped_lines,
        "{report:?}"
    );
    let expected_lines = match text.strip_suffix('\n') {
        _ if text.is_empty() => 0,
        Some(body) => body.split('\n').count(),
        None => text.split('\n').count(),
    };
    assert_eq!(report.lines as usize, expected_lines);
    assert!(last_line <= report.lines);
    assert_eq!(report.entries, entries);
    assert_eq!(report.skipped, skips);
    assert_eq!(
        report.skipped_by_reason.values().sum::<u32>(),
        report.skipped
    );
    assert!(report.entry_lines <= report.entries);
    assert!(report.skipped_lines <= report.skipped);
    for reason in SkipReason::ALL {
        let examples = report
            .examples
            .iter()
            .filter(|e| e.reason == reason)
            .count();
        assert!(examples <= MAX_EXAMPLES);
        assert!(examples as u32 <= report.skipped_for(reason));
    }
    for example in &report.examples {
        assert!(example.line >= 1 && example.line <= report.lines);
        assert!(example.text.chars().count() <= MAX_EXAMPLE_CHARS);
    }
    match format {
        Format::Auto => assert_ne!(report.format, Format::Auto),
        other => assert_eq!(report.format, other),
    }
}

fn check_entry(entry: &Entry) {
    match entry {
        Entry::Block(name)
        | Entry::BlockExact(name)
        | Entry::BlockImportant(name)
        | Entry::Allow(name) => {
            // A normalised name normalises to itself.
            let again = Name::parse(name.as_str())
                .unwrap_or_else(|e| panic!("{:?} does not re-parse: {e}", name.as_str()));
            assert_eq!(again.as_str(), name.as_str());
        }
        Entry::BlockRegex(pattern) => assert!(pattern.len() <= MAX_REGEX_LEN),
        Entry::Ip(net) => {
            let min = if net.addr().is_ipv4() {
                MIN_PREFIX_V4
            } else {
                MIN_PREFIX_V6
            };
            assert!(net.prefix_len() >= min, "{net}");
            assert_eq!(net.network(), net.addr(), "host bits are cleared: {net}");
        }
    }
}
