//! `dnsmasq` lines: `server=/name/`, `address=/name/...`, `local=/name/`.

use super::{Entry, Kind, Run, SkipReason};

impl<'a, S, K> Run<'a, S, K>
where
    S: FnMut(u32, Entry<'a>),
    K: FnMut(u32, &'a str, SkipReason),
{
    pub(super) fn dnsmasq_line(&mut self, line: &'a str) {
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
}

/// `server=/...`, `address=/...`, `local=/...`: returns the value from the first `/`.
pub(super) fn dnsmasq_directive(line: &str) -> Option<&str> {
    let (key, value) = line.split_once('=')?;
    let value = value.trim_ascii_start();
    (matches!(key.trim_ascii(), "server" | "address" | "local") && value.starts_with('/'))
        .then_some(value)
}
