//! Registered domains, from the Public Suffix List: the unit the DNS tunnel guard counts
//! by (an attacker reads query names at the authoritative servers of a domain they
//! registered) and the parent a learned wildcard may stand for.
//!
//! A copy of the list is compiled in (`data/public_suffix_list.dat`, from Debian's
//! `publicsuffix` package); `[dns.guard] suffix_list` names a newer file, re-read at
//! every reload. Both sections count: under a private suffix (`cloudfront.net`,
//! `githubusercontent.com`, `duckdns.org`) each customer's name is its own registered
//! domain, as browsers see it.

use std::sync::{Arc, OnceLock};

use publicsuffix::{List, Psl};

/// The list shipped in the binary.
pub const BUILTIN: &str = include_str!("../../data/public_suffix_list.dat");

/// A parsed Public Suffix List.
pub struct Suffixes {
    list: List,
    /// Where it came from, for explanations: `built-in` or the file's path.
    pub source: String,
    pub rules: usize,
}

impl std::fmt::Debug for Suffixes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Suffixes({}, {} rules)", self.source, self.rules)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a Public Suffix List: {0}")]
pub struct SuffixError(String);

impl Suffixes {
    /// Parses a list in the publicsuffix.org format. Refuses one with too few rules to be
    /// the real list (an HTML error page, a truncated download).
    pub fn parse(text: &str, source: &str) -> Result<Suffixes, SuffixError> {
        let rules = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("//"))
            .count();
        if rules < 1000 {
            return Err(SuffixError(format!(
                "{rules} rules (the real list has about 10,000)"
            )));
        }
        let list: List = text.parse().map_err(|e| SuffixError(format!("{e}")))?;
        Ok(Suffixes {
            list,
            source: source.to_owned(),
            rules,
        })
    }

    /// The compiled-in list, parsed once per process.
    pub fn builtin() -> Arc<Suffixes> {
        static BUILT_IN: OnceLock<Arc<Suffixes>> = OnceLock::new();
        BUILT_IN
            .get_or_init(|| {
                Arc::new(Suffixes::parse(BUILTIN, "built-in").expect("the shipped list parses"))
            })
            .clone()
    }

    /// The registered domain of a normalised name (lower case, no trailing dot):
    /// `a.b.example.co.uk` → `example.co.uk`. `None` for a public suffix itself (`co.uk`)
    /// and names of one label.
    pub fn registered<'a>(&self, name: &'a str) -> Option<&'a str> {
        let domain = self.list.domain(name.as_bytes())?;
        let len = domain.as_bytes().len();
        name.get(name.len() - len..)
    }

    /// The labels left of the registered domain (`a.b` of `a.b.example.co.uk`), if any.
    pub fn split<'a>(&self, name: &'a str) -> (&'a str, Option<&'a str>) {
        match self.registered(name) {
            Some(domain) if domain.len() < name.len() => {
                (domain, Some(&name[..name.len() - domain.len() - 1]))
            }
            Some(domain) => (domain, None),
            None => (name, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_domains_follow_both_sections_of_the_list() {
        let s = Suffixes::builtin();
        for (name, domain, prefix) in [
            ("www.example.com", "example.com", Some("www")),
            ("example.com", "example.com", None),
            ("a.b.example.co.uk", "example.co.uk", Some("a.b")),
            // Private section: each customer is a registered domain of its own.
            (
                "raw.githubusercontent.com",
                "raw.githubusercontent.com",
                None,
            ),
            (
                "x.y.attacker.duckdns.org",
                "attacker.duckdns.org",
                Some("x.y"),
            ),
            (
                "d3c33hcgiwev3.cloudfront.net",
                "d3c33hcgiwev3.cloudfront.net",
                None,
            ),
            // An unknown top-level domain: the implicit `*` rule.
            ("aaaa.bbbb.tunnel.zzzz", "tunnel.zzzz", Some("aaaa.bbbb")),
            // A public suffix itself has no registered domain.
            ("co.uk", "co.uk", None),
            ("com", "com", None),
        ] {
            assert_eq!(s.split(name), (domain, prefix), "{name}");
        }
        assert!(s.rules > 5000, "{} rules", s.rules);
    }

    #[test]
    fn a_file_that_is_not_the_list_is_refused() {
        let err = Suffixes::parse("<html>not found</html>\n", "x").unwrap_err();
        assert!(err.to_string().contains("1 rules"), "{err}");
    }
}
