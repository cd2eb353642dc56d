//! Format auto-detection: a vote over the first content lines.

use std::net::IpAddr;

use ipnet::IpNet;

use super::adblock::{is_adblock_directive, is_cosmetic_start};
use super::dnsmasq::dnsmasq_directive;
use super::hosts::parse_host_address;
use super::{Format, is_header, trim};

/// How many leading content lines [`detect_format`] looks at.
pub(super) const DETECT_LINES: usize = 50;

/// Looks at the first non-comment lines (up to 50) to pick a format.
pub fn detect_format(text: &str) -> Format {
    let mut content = 0usize;
    let (mut adblock, mut dnsmasq, mut hosts, mut ips) = (0usize, 0usize, 0usize, 0usize);
    let (mut adblock_header, mut bang_comments, mut hash_comments) = (false, 0usize, 0usize);
    for raw in text.lines() {
        let line = trim(raw);
        let Some(&first) = line.as_bytes().first() else {
            continue;
        };
        if first == b'[' && is_header(line) {
            adblock_header |= line
                .get(1..8)
                .is_some_and(|s| s.eq_ignore_ascii_case("adblock"));
            continue;
        }
        if first == b';' {
            continue;
        }
        if first == b'!' && !is_adblock_directive(line) {
            bang_comments += 1;
            continue;
        }
        if first == b'#' && !is_cosmetic_start(line) {
            hash_comments += 1;
            continue;
        }
        content += 1;
        if looks_adblock(line) {
            adblock += 1;
        } else if dnsmasq_directive(line).is_some() {
            dnsmasq += 1;
        } else {
            let mut tokens = line.split_ascii_whitespace();
            let first = tokens.next().unwrap_or_default();
            match tokens.next() {
                Some(second) if parse_host_address(first).is_some() && !second.starts_with('#') => {
                    hosts += 1
                }
                _ if first.parse::<IpNet>().is_ok() || first.parse::<IpAddr>().is_ok() => ips += 1,
                _ => {}
            }
        }
        if content >= DETECT_LINES {
            break;
        }
    }
    if content == 0 {
        return if adblock_header || bang_comments > hash_comments {
            Format::Adblock
        } else {
            Format::Domains
        };
    }
    if adblock_header || adblock * 2 > content {
        Format::Adblock
    } else if dnsmasq * 2 > content {
        Format::Dnsmasq
    } else if hosts * 2 > content {
        Format::Hosts
    } else if ips == content {
        Format::Ips
    } else {
        Format::Domains
    }
}

/// Cheap vote for auto-detection: does this content line use adblock syntax?
fn looks_adblock(line: &str) -> bool {
    line.starts_with("||")
        || line.starts_with("@@")
        || line.starts_with('|')
        || line.starts_with('#')
        || line.ends_with('^')
        || line.contains("^$")
        || line.contains("##")
        || line.contains("#@#")
}
