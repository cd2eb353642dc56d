//! Where a key is written: configuration errors name the line of the key itself, found
//! by walking the parsed TOML document, not by searching its text (which found the first
//! `listen` anywhere, in a comment or another table).

use toml::de::{DeTable, DeValue};

/// The byte offset of the key at `path` in `source`: dotted keys, with `[n]` for the n-th
/// table of an array of tables (`lists[2].keywords`). Where the key is not written (a
/// default), the offset of the nearest table on the path that is; `None` for a document
/// that does not parse.
pub fn key_offset(source: &str, path: &str) -> Option<usize> {
    let doc = DeTable::parse(source).ok()?;
    let mut table = doc.get_ref();
    let mut found = None;
    for segment in path.split('.') {
        let (key, index) = match segment.split_once('[') {
            Some((key, rest)) => (key, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let Some((name, value)) = table.iter().find(|(k, _)| k.get_ref() == key) else {
            break;
        };
        found = Some(name.span().start);
        let value = match (value.get_ref(), index) {
            (DeValue::Array(items), Some(i)) => match items.get(i) {
                Some(item) => {
                    found = Some(item.span().start);
                    item.get_ref()
                }
                None => break,
            },
            (other, _) => other,
        };
        match value {
            DeValue::Table(inner) => table = inner,
            _ => break,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(source: &str, path: &str) -> Option<usize> {
        key_offset(source, path).map(|at| crate::config::line_of(source, at))
    }

    #[test]
    fn keys_are_found_where_they_are_written() {
        let source = "# listen here is a comment\n[admin]\nlisten = [\"127.0.0.1:1\"]\n\n[dns]\nmax_inflight = 0\nlisten = []\n\n[[lists]]\nname = \"a\"\n\n[[lists]]\nname = \"b\"\nkeywords = [\"x\"]\n\n[proxy]\ntimeouts = { connect_ms = 1 }\n";
        assert_eq!(line(source, "dns.listen"), Some(7));
        assert_eq!(line(source, "admin.listen"), Some(3));
        assert_eq!(line(source, "lists[1].keywords"), Some(14));
        assert_eq!(line(source, "proxy.timeouts.connect_ms"), Some(17));
        // Not written: the nearest table that is.
        assert_eq!(line(source, "dns.block_addresses"), Some(5));
        assert_eq!(line(source, "lists[0].keywords"), Some(9));
        assert_eq!(line(source, "cache.max_ttl"), None);
        assert_eq!(key_offset("[dns", "dns.listen"), None);
    }
}
