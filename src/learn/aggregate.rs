//! The bounded table of what report mode saw: one entry per (group, destination), the
//! least recently seen evicted first when it is full.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A front door, as the learner records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Door {
    Dns,
    Connect,
    Forward,
    RoutedTls,
    RoutedHttp,
}

impl Door {
    pub fn as_str(self) -> &'static str {
        match self {
            Door::Dns => "dns",
            Door::Connect => "connect",
            Door::Forward => "forward",
            Door::RoutedTls => "routed_tls",
            Door::RoutedHttp => "routed_http",
        }
    }
}

/// What a front door saw of a destination.
#[derive(Debug, Clone, Copy)]
pub enum Seen<'a> {
    /// `allowlist` mode would refuse it: a rule would be needed.
    WouldRefuse,
    /// A query type the group is not served (DNS), by name.
    Qtype(&'a str),
    /// A threat list names it: refused in every mode.
    Blocked { list: &'a str, rule: &'a str },
    /// It resolved to (or is) a private address (which one, when the door knows).
    Private(Option<IpAddr>),
    /// The tunnel guard tripped on its registered domain (the reason).
    Suspicious(&'a str),
}

/// One observation from a front door of a group in a report mode.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub group: &'a str,
    /// A name (lower case, no trailing dot) or an IP literal.
    pub host: &'a str,
    /// The destination port (none for DNS).
    pub port: Option<u16>,
    pub door: Door,
    pub client: IpAddr,
    pub seen: Seen<'a>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    pub group: String,
    pub host: String,
}

/// Why a destination's entry is never a plain rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedBy {
    pub list: String,
    pub rule: String,
}

/// Everything known about one (group, destination).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Unix seconds.
    pub first_seen: u64,
    pub last_seen: u64,
    pub count: u64,
    pub ports: BTreeSet<u16>,
    pub doors: BTreeSet<Door>,
    /// The first client seen asking.
    pub client: IpAddr,
    /// It resolved to a private address: the address, or "a private address" when the
    /// door that saw it did not say which.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<BlockedBy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspicious: Option<String>,
    /// Refused query types (DNS).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub qtypes: BTreeSet<String>,
}

/// Ports and query types kept per entry: enough for any real destination, bounded
/// against a client that scans.
const MAX_PORTS: usize = 16;
const MAX_QTYPES: usize = 8;

impl Entry {
    fn new(o: &Observation, now: u64) -> Entry {
        Entry {
            first_seen: now,
            last_seen: now,
            count: 0,
            ports: BTreeSet::new(),
            doors: BTreeSet::new(),
            client: o.client,
            private: None,
            blocked: None,
            suspicious: None,
            qtypes: BTreeSet::new(),
        }
    }

    fn add(&mut self, o: &Observation, now: u64) {
        self.last_seen = self.last_seen.max(now);
        self.first_seen = self.first_seen.min(now);
        self.count += 1;
        if let Some(port) = o.port
            && (self.ports.len() < MAX_PORTS || self.ports.contains(&port))
        {
            self.ports.insert(port);
        }
        self.doors.insert(o.door);
        match o.seen {
            Seen::WouldRefuse => {}
            Seen::Qtype(qtype) => {
                if self.qtypes.len() < MAX_QTYPES {
                    self.qtypes.insert(qtype.to_owned());
                }
            }
            Seen::Blocked { list, rule } => {
                self.blocked = Some(BlockedBy {
                    list: list.to_owned(),
                    rule: rule.to_owned(),
                });
            }
            Seen::Private(addr) => {
                let text = addr.map_or_else(|| "a private address".to_owned(), |a| a.to_string());
                match &self.private {
                    Some(known) if known != "a private address" => {}
                    _ => self.private = Some(text),
                }
            }
            Seen::Suspicious(reason) => {
                self.suspicious.get_or_insert_with(|| reason.to_owned());
            }
        }
    }
}

/// The table: a map and, beside it, the order of last use (sequence number → key), so
/// the least recently seen entry is found in O(log n) however full it is.
#[derive(Debug)]
pub struct Aggregate {
    entries: HashMap<Key, (Entry, u64)>,
    order: BTreeMap<u64, Key>,
    next: u64,
    cap: usize,
    evictions: u64,
    /// Changed since the last [`Aggregate::take_dirty`].
    dirty: bool,
}

impl Aggregate {
    pub fn new(cap: usize) -> Aggregate {
        Aggregate {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next: 0,
            cap: cap.max(1),
            evictions: 0,
            dirty: false,
        }
    }

    pub fn record(&mut self, o: &Observation, now: u64) {
        let key = Key {
            group: o.group.to_owned(),
            host: o.host.to_owned(),
        };
        self.next += 1;
        let seq = self.next;
        self.dirty = true;
        if let Some((entry, old)) = self.entries.get_mut(&key) {
            entry.add(o, now);
            self.order.remove(old);
            *old = seq;
            self.order.insert(seq, key);
            return;
        }
        while self.entries.len() >= self.cap {
            self.evict_oldest();
        }
        let mut entry = Entry::new(o, now);
        entry.add(o, now);
        self.order.insert(seq, key.clone());
        self.entries.insert(key, (entry, seq));
    }

    fn evict_oldest(&mut self) {
        if let Some((_, key)) = self.order.pop_first() {
            self.entries.remove(&key);
            self.evictions += 1;
        }
    }

    /// A new cap (a reload): evicts down to it at once.
    pub fn set_cap(&mut self, cap: usize) {
        self.cap = cap.max(1);
        while self.entries.len() > self.cap {
            self.evict_oldest();
            self.dirty = true;
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// `true` once after any change: the saver writes only then.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Every entry, least recently seen first (the order a restore replays).
    pub fn entries(&self) -> Vec<(Key, Entry)> {
        self.order
            .values()
            .filter_map(|k| self.entries.get(k).map(|(e, _)| (k.clone(), e.clone())))
            .collect()
    }

    /// Puts back saved entries (oldest first), within the cap.
    pub fn restore(&mut self, saved: Vec<(Key, Entry)>) {
        for (key, entry) in saved {
            self.next += 1;
            let seq = self.next;
            if let Some((_, old)) = self.entries.remove(&key) {
                self.order.remove(&old);
            }
            while self.entries.len() >= self.cap {
                self.evict_oldest();
            }
            self.order.insert(seq, key.clone());
            self.entries.insert(key, (entry, seq));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen<'a>(
        group: &'a str,
        host: &'a str,
        port: Option<u16>,
        seen: Seen<'a>,
    ) -> Observation<'a> {
        Observation {
            group,
            host,
            port,
            door: if port.is_some() {
                Door::Connect
            } else {
                Door::Dns
            },
            client: "172.30.0.9".parse().unwrap(),
            seen,
        }
    }

    #[test]
    fn observations_of_one_destination_fold_into_one_entry() {
        let mut a = Aggregate::new(10);
        a.record(
            &seen("agent", "api.example.com", None, Seen::WouldRefuse),
            100,
        );
        a.record(
            &seen("agent", "api.example.com", Some(443), Seen::WouldRefuse),
            105,
        );
        a.record(
            &seen("agent", "api.example.com", Some(8443), Seen::WouldRefuse),
            103,
        );
        a.record(
            &seen("agent", "api.example.com", None, Seen::Qtype("TXT")),
            101,
        );
        a.record(
            &seen("litellm", "api.example.com", Some(443), Seen::WouldRefuse),
            102,
        );
        assert_eq!(a.len(), 2);
        let entries = a.entries();
        let (key, e) = entries.iter().find(|(k, _)| k.group == "agent").unwrap();
        assert_eq!(key.host, "api.example.com");
        assert_eq!((e.first_seen, e.last_seen, e.count), (100, 105, 4));
        assert_eq!(e.ports.iter().copied().collect::<Vec<_>>(), [443, 8443]);
        assert_eq!(
            e.doors.iter().copied().collect::<Vec<_>>(),
            [Door::Dns, Door::Connect]
        );
        assert_eq!(
            e.qtypes.iter().map(String::as_str).collect::<Vec<_>>(),
            ["TXT"]
        );
    }

    #[test]
    fn the_least_recently_seen_entry_is_evicted_first() {
        let mut a = Aggregate::new(3);
        for host in ["a.example", "b.example", "c.example"] {
            a.record(&seen("g", host, None, Seen::WouldRefuse), 1);
        }
        // a is seen again: b is now the oldest.
        a.record(&seen("g", "a.example", None, Seen::WouldRefuse), 2);
        a.record(&seen("g", "d.example", None, Seen::WouldRefuse), 3);
        let hosts: Vec<String> = a.entries().into_iter().map(|(k, _)| k.host).collect();
        assert_eq!(hosts, ["c.example", "a.example", "d.example"]);
        assert_eq!(a.evictions(), 1);
    }

    #[test]
    fn a_flood_of_unique_names_stays_within_the_cap() {
        let mut a = Aggregate::new(1000);
        a.record(&seen("g", "kept.example", Some(443), Seen::WouldRefuse), 0);
        for i in 0..100_000u32 {
            let host = format!("n{i}.flood.example");
            a.record(&seen("g", &host, None, Seen::WouldRefuse), u64::from(i));
        }
        assert_eq!(a.len(), 1000);
        assert_eq!(a.evictions(), 100_001 - 1000);
        assert_eq!(a.order.len(), 1000);
        // The newest survive.
        assert!(
            a.entries()
                .iter()
                .any(|(k, _)| k.host == "n99999.flood.example")
        );
        assert!(!a.entries().iter().any(|(k, _)| k.host == "kept.example"));
    }

    #[test]
    fn ports_per_entry_are_bounded() {
        let mut a = Aggregate::new(10);
        for port in 1..=1000u16 {
            a.record(&seen("g", "scan.example", Some(port), Seen::WouldRefuse), 0);
        }
        let e = &a.entries()[0].1;
        assert_eq!(e.ports.len(), MAX_PORTS);
        assert_eq!(e.count, 1000);
    }

    #[test]
    fn flags_stick_and_restore_keeps_order_and_cap() {
        let mut a = Aggregate::new(10);
        let private: IpAddr = "10.1.2.3".parse().unwrap();
        a.record(&seen("g", "nas.example", Some(443), Seen::Private(None)), 0);
        a.record(
            &seen("g", "nas.example", Some(443), Seen::Private(Some(private))),
            1,
        );
        a.record(&seen("g", "nas.example", Some(443), Seen::WouldRefuse), 2);
        a.record(
            &seen(
                "g",
                "evil.example",
                None,
                Seen::Blocked {
                    list: "urlhaus",
                    rule: "evil.example (u.txt:3)",
                },
            ),
            3,
        );
        let saved = a.entries();
        assert_eq!(saved[0].1.private.as_deref(), Some("10.1.2.3"));
        assert_eq!(saved[1].1.blocked.as_ref().unwrap().list, "urlhaus");
        let mut b = Aggregate::new(1);
        b.restore(saved.clone());
        assert_eq!(b.entries(), saved[1..].to_vec());
        let mut c = Aggregate::new(10);
        c.restore(saved.clone());
        assert_eq!(c.entries(), saved);
        assert!(!c.take_dirty(), "a restore is not a change to save");
    }
}
