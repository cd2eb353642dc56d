//! `ips` lines: one address or CIDR a line.

use super::{Entry, Run, SkipReason, parse_net, strip_inline_comment};

impl<'a, S, K> Run<'a, S, K>
where
    S: FnMut(u32, Entry<'a>),
    K: FnMut(u32, &'a str, SkipReason),
{
    pub(super) fn ips_line(&mut self, line: &'a str) {
        let content = strip_inline_comment(line, &['#', ';']);
        let mut tokens = content.split_ascii_whitespace();
        match (tokens.next().and_then(parse_net), tokens.next()) {
            (Some(net), None) => self.net(net),
            _ => self.skip(SkipReason::NotAnAddress),
        }
    }
}
