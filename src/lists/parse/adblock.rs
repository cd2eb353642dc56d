//! `adblock` lines: AdGuard DNS / uBlock Origin hostname rules.

use super::{Entry, Kind, Run, SkipReason};

impl<'a, S, K> Run<'a, S, K>
where
    S: FnMut(u32, Entry<'a>),
    K: FnMut(u32, &'a str, SkipReason),
{
    pub(super) fn adblock_line(&mut self, line: &'a str) {
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
}

/// `!#if`, `!#include`, `!#endif`: adblock preprocessor directives.
pub(super) fn is_adblock_directive(line: &str) -> bool {
    line.len() > 2 && line.as_bytes()[1] == b'#' && line.as_bytes()[2].is_ascii_alphabetic()
}

/// An element-hiding or scriptlet rule that applies everywhere (`##.ad`, `#@#.ad`, ...).
pub(super) fn is_cosmetic_start(line: &str) -> bool {
    const MARKERS: [&str; 8] = ["##", "#@#", "#?#", "#$#", "#%#", "#@?#", "#@$#", "#@%#"];
    MARKERS.iter().any(|marker| {
        line.strip_prefix(marker).is_some_and(|rest| {
            rest.bytes()
                .next()
                .is_some_and(|b| !b.is_ascii_whitespace() && b != b'#')
        })
    })
}

/// Characters that make an adblock host part a pattern rather than a name.
fn is_pattern_byte(b: u8) -> bool {
    matches!(
        b,
        b'/' | b':' | b'*' | b'^' | b'|' | b'?' | b'&' | b'=' | b'#' | b'@' | b'$' | b' ' | b'\t'
    )
}
