//! Addresses and networks of `ips` lists.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// Addresses and networks from `ips` lists: one hash map per prefix length present,
/// most specific first, so a lookup costs one probe per distinct prefix length
/// (real lists: a handful) instead of a scan over every network.
#[derive(Debug, Default)]
pub(super) struct IpTable {
    v4: Vec<(u8, IpMap<u32>)>,
    v6: Vec<(u8, IpMap<u128>)>,
}

/// Network → the line it came from.
type IpMap<K> = HashMap<K, u32, foldhash::fast::RandomState>;

fn mask_v4(addr: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        addr & (u32::MAX << (32 - u32::from(len)))
    }
}

fn mask_v6(addr: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        addr & (u128::MAX << (128 - u32::from(len)))
    }
}

impl IpTable {
    pub(super) fn insert(&mut self, net: IpNet, line: u32) {
        fn add<K: std::hash::Hash + Eq>(
            maps: &mut Vec<(u8, IpMap<K>)>,
            len: u8,
            key: K,
            line: u32,
        ) {
            let at = match maps.iter().position(|(l, _)| *l == len) {
                Some(at) => at,
                None => {
                    maps.push((len, IpMap::default()));
                    maps.sort_by_key(|(l, _)| std::cmp::Reverse(*l));
                    maps.iter()
                        .position(|(l, _)| *l == len)
                        .expect("just added")
                }
            };
            // Keep the first line of a duplicate.
            maps[at].1.entry(key).or_insert(line);
        }
        match net.trunc() {
            IpNet::V4(n) => add(&mut self.v4, n.prefix_len(), u32::from(n.addr()), line),
            IpNet::V6(n) => add(&mut self.v6, n.prefix_len(), u128::from(n.addr()), line),
        }
    }

    /// The most specific network holding `ip`: its prefix length and line.
    pub(super) fn lookup(&self, ip: IpAddr) -> Option<(u8, u32)> {
        match ip {
            IpAddr::V4(v4) => {
                let addr = u32::from(v4);
                self.v4
                    .iter()
                    .find_map(|(len, map)| map.get(&mask_v4(addr, *len)).map(|&line| (*len, line)))
            }
            IpAddr::V6(v6) => {
                let addr = u128::from(v6);
                self.v6
                    .iter()
                    .find_map(|(len, map)| map.get(&mask_v6(addr, *len)).map(|&line| (*len, line)))
            }
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}
