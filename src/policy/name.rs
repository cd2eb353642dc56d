//! Name normalisation: the one place a name becomes comparable.
//!
//! Every name, whether from a DNS query, a proxy target or a list line, passes
//! through [`Name::parse`] (text) or [`Name::from_labels`] (DNS wire labels):
//! lower case, no trailing dot, IDN mapped to punycode (UTS-46), hostname
//! characters only, label and name length limits enforced. The result lives on
//! the stack so the per-query path allocates nothing for ASCII names.

use crate::error::{Fault, HasFault};
use std::fmt;

/// Longest name in presentation form without the trailing dot (RFC 1035: 255 octets on the wire).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;

/// Why a name did not survive normalisation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty name")]
    Empty,
    #[error("name longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("label longer than {MAX_LABEL_LEN} characters")]
    LabelTooLong,
    #[error("empty label")]
    EmptyLabel,
    #[error("character {0:?} is not allowed in a host name")]
    BadChar(char),
    #[error("international name does not map to punycode (UTS-46)")]
    Idna,
}

impl HasFault for NameError {
    fn fault(&self) -> Fault {
        Fault::Client
    }
}

/// A normalised host name: ASCII `[a-z0-9_-]` labels separated by dots.
#[derive(Clone)]
pub struct Name {
    len: u8,
    buf: [u8; MAX_NAME_LEN],
}

impl Name {
    /// Normalises a name written as text (a list line, a proxy target, a CLI argument).
    pub fn parse(input: &str) -> Result<Name, NameError> {
        let input = input.strip_suffix('.').unwrap_or(input);
        if input.is_empty() {
            return Err(NameError::Empty);
        }
        match Self::from_ascii(input.as_bytes()) {
            Err(NameError::BadChar(_)) if !input.is_ascii() => Self::parse_idn(input.as_bytes()),
            result => result,
        }
    }

    /// Normalises a name given as DNS wire labels (root label excluded).
    pub fn from_labels<'a>(labels: impl Iterator<Item = &'a [u8]>) -> Result<Name, NameError> {
        let mut name = Name {
            len: 0,
            buf: [0; MAX_NAME_LEN],
        };
        let mut pos = 0usize;
        let mut needs_idna = false;
        for label in labels {
            if label.is_empty() {
                return Err(NameError::EmptyLabel);
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(NameError::LabelTooLong);
            }
            let start = pos + usize::from(pos != 0);
            let end = start + label.len();
            if end > MAX_NAME_LEN {
                return Err(NameError::TooLong);
            }
            if pos != 0 {
                name.buf[pos] = b'.';
            }
            for (dst, &b) in name.buf[start..end].iter_mut().zip(label) {
                *dst = match b {
                    b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => b,
                    b'A'..=b'Z' => b | 0x20,
                    0x80.. => {
                        needs_idna = true;
                        b
                    }
                    other => return Err(NameError::BadChar(other as char)),
                };
            }
            pos = end;
            needs_idna |= label.len() >= 4 && label[..4].eq_ignore_ascii_case(b"xn--");
        }
        if pos == 0 {
            return Err(NameError::Empty);
        }
        name.len = pos as u8;
        if needs_idna {
            return Self::parse_idn(&name.buf[..pos]);
        }
        Ok(name)
    }

    fn from_ascii(bytes: &[u8]) -> Result<Name, NameError> {
        match Self::scan(bytes)? {
            (name, false) => Ok(name),
            (_, true) => Self::parse_idn(bytes),
        }
    }

    /// One pass over ASCII text: validates, lower-cases and copies; also says whether
    /// a label starts with `xn--` (then UTS-46 must validate it).
    fn scan(bytes: &[u8]) -> Result<(Name, bool), NameError> {
        if bytes.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        let mut name = Name {
            len: bytes.len() as u8,
            buf: [0; MAX_NAME_LEN],
        };
        let mut label_len = 0usize;
        let mut punycode = false;
        for (i, (dst, &b)) in name.buf.iter_mut().zip(bytes).enumerate() {
            let mapped = HOST_BYTE[usize::from(b)];
            if mapped == b'.' {
                if label_len == 0 {
                    return Err(NameError::EmptyLabel);
                }
                label_len = 0;
            } else if mapped == 0 {
                return Err(NameError::BadChar(b as char));
            } else {
                if label_len == 0 {
                    punycode |=
                        bytes[i..].len() >= 4 && bytes[i..i + 4].eq_ignore_ascii_case(b"xn--");
                }
                label_len += 1;
                if label_len > MAX_LABEL_LEN {
                    return Err(NameError::LabelTooLong);
                }
            }
            *dst = mapped;
        }
        if label_len == 0 {
            return Err(NameError::EmptyLabel);
        }
        Ok((name, punycode))
    }

    /// The slow path: UTS-46 mapping for non-ASCII names and validation of `xn--` labels.
    fn parse_idn(bytes: &[u8]) -> Result<Name, NameError> {
        let ascii = idna::domain_to_ascii_cow(bytes, idna::AsciiDenyList::EMPTY)
            .map_err(|_| NameError::Idna)?;
        let ascii = ascii.strip_suffix('.').unwrap_or(&ascii);
        if ascii.is_empty() {
            return Err(NameError::Empty);
        }
        // UTS-46 has validated any punycode: no second round.
        Self::scan(ascii.as_bytes()).map(|(name, _)| name)
    }

    /// The normalised name.
    pub fn as_str(&self) -> &str {
        let bytes = &self.buf[..usize::from(self.len)];
        debug_assert!(bytes.is_ascii());
        // SAFETY: every constructor writes only ASCII bytes (`[a-z0-9._-]`) into
        // `buf[..len]`, and ASCII is valid UTF-8. This runs several times per
        // query, so the check is worth skipping.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    /// Number of labels.
    pub fn label_count(&self) -> usize {
        self.as_str().bytes().filter(|&b| b == b'.').count() + 1
    }

    /// The name itself, then each parent down to the top-level label:
    /// `a.b.c` yields `a.b.c`, `b.c`, `c`.
    pub fn suffixes(&self) -> Suffixes<'_> {
        Suffixes {
            rest: Some(self.as_str()),
        }
    }

    /// True when `self` is `parent` or a subdomain of it.
    pub fn is_within(&self, parent: &str) -> bool {
        let s = self.as_str();
        s == parent
            || (s.len() > parent.len()
                && s.ends_with(parent)
                && s.as_bytes()[s.len() - parent.len() - 1] == b'.')
    }
}

/// Each byte's normalised form in a host name: lower case for letters, itself for
/// `0-9 - _ .`, 0 for anything else.
static HOST_BYTE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = match c {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => c,
            b'A'..=b'Z' => c | 0x20,
            _ => 0,
        };
        b += 1;
    }
    table
};

/// Iterator over a name and its parents, most specific first.
pub struct Suffixes<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for Suffixes<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        let current = self.rest?;
        self.rest = current
            .bytes()
            .position(|b| b == b'.')
            .map(|i| &current[i + 1..]);
        Some(current)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({})", self.as_str())
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}
impl Eq for Name {}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Result<String, NameError> {
        Name::parse(s).map(|n| n.as_str().to_owned())
    }

    #[test]
    fn lower_cases_and_strips_trailing_dot() {
        assert_eq!(n("WWW.Example.COM.").unwrap(), "www.example.com");
        assert_eq!(n("a_b-c.example").unwrap(), "a_b-c.example");
        assert_eq!(
            n("0000153.0000255.0000011.0000125").unwrap(),
            "0000153.0000255.0000011.0000125"
        );
    }

    #[test]
    fn maps_idn_to_punycode() {
        assert_eq!(n("bücher.example").unwrap(), "xn--bcher-kva.example");
        assert_eq!(n("BÜCHER.example.").unwrap(), "xn--bcher-kva.example");
        // Full-width dot and letters map under UTS-46.
        assert_eq!(n("ｅｘａｍｐｌｅ。com").unwrap(), "example.com");
        // A valid punycode label survives; an invalid one does not.
        assert_eq!(n("xn--bcher-kva.example").unwrap(), "xn--bcher-kva.example");
        assert_eq!(n("xn--zz-.example"), Err(NameError::Idna));
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(n(""), Err(NameError::Empty));
        assert_eq!(n("."), Err(NameError::Empty));
        assert_eq!(n("a..b"), Err(NameError::EmptyLabel));
        assert_eq!(n(".a"), Err(NameError::EmptyLabel));
        assert_eq!(n("a b.com"), Err(NameError::BadChar(' ')));
        assert_eq!(n("evil.com/x"), Err(NameError::BadChar('/')));
        assert_eq!(n("user@evil.com"), Err(NameError::BadChar('@')));
        assert_eq!(n("*.evil.com"), Err(NameError::BadChar('*')));
        let label64 = "a".repeat(64);
        assert_eq!(n(&format!("{label64}.com")), Err(NameError::LabelTooLong));
        let label63 = "a".repeat(63);
        let ok = format!("{label63}.{label63}.{label63}.{}", "a".repeat(61));
        assert_eq!(ok.len(), 253);
        assert!(n(&ok).is_ok());
        assert_eq!(n(&format!("{ok}a")), Err(NameError::TooLong));
    }

    #[test]
    fn wire_labels_normalise_like_text() {
        let labels: [&[u8]; 3] = [b"WWW", b"Example", b"com"];
        assert_eq!(
            Name::from_labels(labels.into_iter()).unwrap().as_str(),
            "www.example.com"
        );
        let bad: [&[u8]; 2] = [b"a.b", b"com"];
        assert_eq!(
            Name::from_labels(bad.into_iter()),
            Err(NameError::BadChar('.'))
        );
        let utf8: [&[u8]; 2] = ["bücher".as_bytes(), b"example"];
        assert_eq!(
            Name::from_labels(utf8.into_iter()).unwrap().as_str(),
            "xn--bcher-kva.example"
        );
        assert_eq!(Name::from_labels(std::iter::empty()), Err(NameError::Empty));
    }

    #[test]
    fn suffixes_and_containment() {
        let name = Name::parse("a.b.example.com").unwrap();
        let all: Vec<_> = name.suffixes().collect();
        assert_eq!(
            all,
            ["a.b.example.com", "b.example.com", "example.com", "com"]
        );
        assert!(name.is_within("example.com"));
        assert!(name.is_within("a.b.example.com"));
        assert!(!name.is_within("le.com"));
        assert!(
            !Name::parse("evilexample.com")
                .unwrap()
                .is_within("example.com")
        );
        assert_eq!(name.label_count(), 4);
    }
}
