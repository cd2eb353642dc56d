//! The sanity guard: a download replaces a list's cached copy only when it looks like a list
//! (not empty, not an HTML page, some entries) and has not shrunk below `min_ratio` of the copy
//! it replaces.

use super::fetch::looks_like_html;
use super::load::{ParsedList, parse_into_list};
use super::parse::{Format, parse_list};
use crate::policy::rules::{ListInfo, RuleError};

/// Why the sanity guard refused a download.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("the body is empty")]
    Empty,
    #[error("the body is an HTML page, not a list")]
    Html,
    #[error("no entries in {lines} lines")]
    NoEntries { lines: u32 },
    #[error(
        "{entries} entries is less than {min_ratio} of the {previous} entries of the copy it replaces (min_ratio)"
    )]
    Shrunk {
        entries: u32,
        previous: u32,
        min_ratio: f64,
    },
}

/// The sanity guard: the entries `bytes` parses to, or why it must not replace a list of
/// `previous` entries.
pub fn check_body(
    bytes: &[u8],
    content_type: Option<&str>,
    format: Format,
    previous: Option<u32>,
    min_ratio: f64,
) -> Result<u32, Rejection> {
    let text = looks_like_a_list(bytes, content_type)?;
    let report = parse_list(&text, format, |_, _| {});
    guard(report.entries, report.lines, previous, min_ratio)?;
    Ok(report.entries)
}

/// The sanity guard and the parser in one pass: `bytes` parsed as the list `info` with its
/// regex and keyword rules compiled, or why it must not replace a list of `previous` entries
/// (the guard counts what the parser produced, as [`check_body`] does). The inner error is a
/// rule set that does not compile. The caller may drop `bytes` before building the tables
/// ([`ParsedList::finish`]).
pub fn check_and_parse(
    bytes: &[u8],
    content_type: Option<&str>,
    format: Format,
    previous: Option<u32>,
    min_ratio: f64,
    info: ListInfo,
    keywords: &[String],
) -> Result<Result<ParsedList, RuleError>, Rejection> {
    let text = looks_like_a_list(bytes, content_type)?;
    let mut parsed = parse_into_list(info, &text, format, 0, keywords);
    guard(
        parsed.parsed_entries,
        parsed.report.lines,
        previous,
        min_ratio,
    )?;
    Ok(parsed.compile_patterns().map(|()| parsed))
}

/// Not empty, not HTML: the body as text.
fn looks_like_a_list<'b>(
    bytes: &'b [u8],
    content_type: Option<&str>,
) -> Result<std::borrow::Cow<'b, str>, Rejection> {
    let content = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    if content.iter().all(u8::is_ascii_whitespace) {
        return Err(Rejection::Empty);
    }
    if looks_like_html(bytes, content_type) {
        return Err(Rejection::Html);
    }
    Ok(String::from_utf8_lossy(bytes))
}

fn guard(entries: u32, lines: u32, previous: Option<u32>, min_ratio: f64) -> Result<(), Rejection> {
    if entries == 0 {
        return Err(Rejection::NoEntries { lines });
    }
    if let Some(previous) = previous
        && previous > 0
        && f64::from(entries) < min_ratio * f64::from(previous)
    {
        return Err(Rejection::Shrunk {
            entries,
            previous,
            min_ratio,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_refuses_empty_html_and_shrunk_bodies() {
        let f = Format::Auto;
        assert_eq!(check_body(b"", None, f, None, 0.5), Err(Rejection::Empty));
        assert_eq!(
            check_body(b"\xef\xbb\xbf\r\n \n", None, f, Some(3), 0.5),
            Err(Rejection::Empty)
        );
        assert_eq!(
            check_body(b"<!DOCTYPE html><p>503</p>", None, f, None, 0.5),
            Err(Rejection::Html)
        );
        assert_eq!(
            check_body(b"# only comments\n", None, f, None, 0.5),
            Err(Rejection::NoEntries { lines: 1 })
        );
        let body = b"a.example\nb.example\n";
        assert_eq!(check_body(body, None, f, Some(4), 0.5), Ok(2));
        assert_eq!(
            check_body(body, None, f, Some(5), 0.5),
            Err(Rejection::Shrunk {
                entries: 2,
                previous: 5,
                min_ratio: 0.5
            })
        );
        // Growth is always fine; min_ratio 0 turns the ratio check off.
        assert_eq!(check_body(body, None, f, Some(1), 0.5), Ok(2));
        assert_eq!(check_body(body, None, f, Some(1000), 0.0), Ok(2));
    }
}
