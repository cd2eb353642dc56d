//! The tunnel guard: how much a client tells a registered domain's authoritative servers
//! through the names it asks for.
//!
//! Data leaves through DNS in the labels a client picks (`<chunk>.<seq>.attacker.example`):
//! the gate's upstreams deliver them to the attacker's servers. For every name that goes
//! upstream and whose labels a client chose (every forwarded name in `public` mode, names
//! under an allowed wildcard in `allowlist` mode), the guard counts per client and
//! registered domain the bytes of **distinct labels** left of the registered domain over
//! a sliding window. A label counts once while it is among the entry's recent labels, so
//! repeating a name costs nothing; a label that looks encoded (long base32/hex, high
//! entropy) or a name over 52 characters counts double. Past the budget the pair trips:
//! one log line, a metric, and with `block` NXDOMAIN for the pair until the cool-down ends.
//! With the defaults (1 KiB in 10 minutes) a client moves at most 1 KiB of fresh label data
//! to one registered domain in 10 minutes: the query that would pass the budget is refused.
//!
//! Memory is bounded: at most `max_entries` pairs of [`ENTRY_BYTES`] each; when full, the
//! least recently seen unblocked pairs go first.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use foldhash::fast::FixedState;

use crate::config::GuardConfig;
use crate::policy::dns::GuardAction;

/// Slots of the sliding window.
const SLOTS: usize = 10;
/// Recent distinct labels an entry remembers; older ones count again when they return.
const LABELS: usize = 24;
/// The size of one tracked (client, registered domain) pair, table overhead included
/// (stated in BENCHMARKS.md; checked by a test).
pub const ENTRY_BYTES: usize = std::mem::size_of::<(Key, Entry)>() + 8;

/// The guard's settings, from `[dns.guard]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardSettings {
    pub budget_bytes: u32,
    pub window_secs: u32,
    pub cooldown_secs: u32,
    pub max_entries: usize,
}

impl From<&GuardConfig> for GuardSettings {
    fn from(c: &GuardConfig) -> Self {
        GuardSettings {
            budget_bytes: c.budget_bytes,
            window_secs: c.window_secs,
            cooldown_secs: c.cooldown_secs,
            max_entries: c.max_entries,
        }
    }
}

impl Default for GuardSettings {
    fn default() -> Self {
        GuardSettings::from(&GuardConfig::default())
    }
}

/// Why a name looks like tunnel traffic: the `reason` label of a trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Only the volume of fresh labels.
    Volume,
    /// A label of 24+ characters of letters and digits mixed (base32, hex).
    EncodedLabel,
    /// A name over 52 characters.
    LongName,
    /// A label of 20+ characters with high character entropy.
    HighEntropy,
}

impl Signal {
    pub const ALL: [Signal; 4] = [
        Signal::Volume,
        Signal::EncodedLabel,
        Signal::LongName,
        Signal::HighEntropy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Volume => "volume",
            Signal::EncodedLabel => "encoded_label",
            Signal::LongName => "long_name",
            Signal::HighEntropy => "high_entropy",
        }
    }
}

/// The strongest heuristic a name trips, if any.
pub fn signal(name: &str, prefix: &str) -> Option<Signal> {
    let mut found = None;
    for label in prefix.split('.') {
        if looks_encoded(label) {
            return Some(Signal::EncodedLabel);
        }
        // Words of this length stay under these; random letters and digits pass them.
        let threshold = if label.len() >= 32 { 4.2 } else { 3.8 };
        if label.len() >= 20 && entropy(label) >= threshold {
            found = Some(Signal::HighEntropy);
        }
    }
    found.or((name.len() > 52).then_some(Signal::LongName))
}

fn looks_encoded(label: &str) -> bool {
    if label.len() < 24 || !label.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    let digits = label.bytes().filter(u8::is_ascii_digit).count();
    // Words and dates have few digits or few letters; encodings mix them.
    digits * 8 >= label.len() && digits * 8 <= label.len() * 7
}

/// Shannon entropy of the label's bytes, bits per character.
fn entropy(label: &str) -> f64 {
    let mut counts = [0u16; 256];
    for b in label.bytes() {
        counts[usize::from(b)] += 1;
    }
    let n = label.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    client: IpAddr,
    domain: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    /// Weighted fresh bytes per slot, a ring: `newest` is the slot number of
    /// `slots[newest % SLOTS]`, the ones before it hold the earlier slots of the window.
    slots: [u16; SLOTS],
    newest: u32,
    labels: [u32; LABELS],
    next_label: u8,
    blocking: bool,
    last_seen: u32,
    /// Until then a trip is not reported again (and with `block`, queries are refused).
    tripped_until: u32,
}

impl Entry {
    fn new(slot: u32) -> Entry {
        Entry {
            slots: [0; SLOTS],
            newest: slot,
            labels: [0; LABELS],
            next_label: 0,
            blocking: false,
            last_seen: 0,
            tripped_until: 0,
        }
    }

    /// Moves the window to `slot`, forgetting the slots that leave it.
    fn advance(&mut self, slot: u32) {
        if slot <= self.newest {
            return;
        }
        for k in 1..=(slot - self.newest).min(SLOTS as u32) {
            self.slots[(self.newest + k) as usize % SLOTS] = 0;
        }
        self.newest = slot;
    }

    fn in_window(&self) -> u32 {
        self.slots.iter().map(|&b| u32::from(b)).sum()
    }

    fn add(&mut self, bytes: u32) {
        let i = self.newest as usize % SLOTS;
        self.slots[i] = self.slots[i].saturating_add(bytes.min(u32::from(u16::MAX)) as u16);
    }

    /// Remembers `label`; `true` when it was not among the recent ones.
    fn fresh(&mut self, label: u32) -> bool {
        if self.labels.contains(&label) {
            return false;
        }
        self.labels[usize::from(self.next_label)] = label;
        self.next_label = (self.next_label + 1) % LABELS as u8;
        true
    }
}

/// What the guard says about one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// The pair crossed its budget with this query (reported once per cool-down).
    /// `blocked`: the action is `block`, and this query is refused.
    Tripped {
        signal: Signal,
        bytes: u32,
        blocked: bool,
    },
    /// The pair is in its `block` cool-down.
    Blocked {
        bytes: u32,
    },
}

/// The guard's table, shared by every listener.
pub struct TunnelGuard {
    started: Instant,
    table: Mutex<Table>,
}

struct Table {
    entries: std::collections::HashMap<Key, Entry, FixedState>,
    evictions: u64,
}

impl Default for TunnelGuard {
    fn default() -> Self {
        TunnelGuard::new()
    }
}

fn hash(s: &str) -> u64 {
    FixedState::with_seed(0x7075_6e6e_656c).hash_one(s)
}

impl TunnelGuard {
    pub fn new() -> TunnelGuard {
        TunnelGuard {
            started: Instant::now(),
            table: Mutex::new(Table {
                entries: std::collections::HashMap::with_hasher(FixedState::with_seed(1)),
                evictions: 0,
            }),
        }
    }

    fn now(&self) -> u32 {
        self.started.elapsed().as_secs() as u32
    }

    /// Counts one query of `client` for `name` (normalised), whose registered domain is
    /// `domain` and whose labels left of it are `prefix`. `upstream`: the query goes
    /// upstream (a cache hit tells the domain nothing and is only checked for a block).
    #[allow(clippy::too_many_arguments)]
    pub fn observe(
        &self,
        settings: &GuardSettings,
        action: GuardAction,
        client: IpAddr,
        name: &str,
        domain: &str,
        prefix: Option<&str>,
        upstream: bool,
    ) -> Verdict {
        self.observe_at(
            self.now(),
            settings,
            action,
            client,
            name,
            domain,
            prefix,
            upstream,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn observe_at(
        &self,
        now: u32,
        settings: &GuardSettings,
        action: GuardAction,
        client: IpAddr,
        name: &str,
        domain: &str,
        prefix: Option<&str>,
        upstream: bool,
    ) -> Verdict {
        let key = Key {
            client,
            domain: hash(domain),
        };
        let slot_secs = settings.window_secs.div_ceil(SLOTS as u32).max(1);
        let slot = now / slot_secs;
        let mut table = crate::sys::lock(&self.table);
        if !table.entries.contains_key(&key) {
            // Nothing to remember of a query that tells the domain nothing new.
            if prefix.is_none() || !upstream {
                return Verdict::Pass;
            }
            if table.entries.len() >= settings.max_entries {
                table.evict(now, settings.max_entries);
            }
        }
        let entry = table.entries.entry(key).or_insert_with(|| Entry::new(slot));
        entry.last_seen = now;
        entry.advance(slot);
        let blocking = entry.blocking && now < entry.tripped_until;
        if blocking {
            return Verdict::Blocked {
                bytes: entry.in_window(),
            };
        }
        entry.blocking = false;
        let (Some(prefix), true) = (prefix, upstream) else {
            return Verdict::Pass;
        };
        let signal = signal(name, prefix);
        let weight = if signal.is_some() { 2 } else { 1 };
        let mut fresh = 0;
        for label in prefix.split('.') {
            if entry.fresh(hash(label) as u32) {
                fresh += (label.len() as u32 + 1) * weight;
            }
        }
        let before = entry.in_window();
        if before + fresh <= settings.budget_bytes {
            entry.add(fresh);
            return Verdict::Pass;
        }
        let blocked = action == GuardAction::Block;
        if !blocked {
            entry.add(fresh);
        }
        if now < entry.tripped_until {
            return Verdict::Pass;
        }
        entry.tripped_until = now.saturating_add(settings.cooldown_secs);
        entry.blocking = blocked;
        Verdict::Tripped {
            signal: signal.unwrap_or(Signal::Volume),
            bytes: before + fresh,
            blocked,
        }
    }

    /// Pairs tracked now, and pairs evicted since the start.
    pub fn usage(&self) -> (usize, u64) {
        let table = crate::sys::lock(&self.table);
        (table.entries.len(), table.evictions)
    }
}

impl Table {
    /// Makes room for an eighth of `cap`: the least recently seen pairs that are not
    /// blocking go first (a flood of new pairs cannot free a blocked one).
    fn evict(&mut self, now: u32, cap: usize) {
        let goal = cap - cap / 8 - 1;
        let mut seen: Vec<u32> = self
            .entries
            .values()
            .filter(|e| !(e.blocking && now < e.tripped_until))
            .map(|e| e.last_seen)
            .collect();
        let excess = self.entries.len().saturating_sub(goal);
        if excess == 0 {
            return;
        }
        let before = self.entries.len();
        if excess < seen.len() {
            let (_, &mut cutoff, _) = seen.select_nth_unstable(excess - 1);
            let mut left = excess;
            self.entries.retain(|_, e| {
                let old = e.last_seen <= cutoff && !(e.blocking && now < e.tripped_until);
                if old && left > 0 {
                    left -= 1;
                    false
                } else {
                    true
                }
            });
        } else {
            self.entries
                .retain(|_, e| e.blocking && now < e.tripped_until);
        }
        // Every entry blocking: the oldest blocked ones go (the cap holds, always).
        if self.entries.len() >= cap {
            let mut left = self.entries.len() - goal;
            self.entries.retain(|_, _| {
                if left > 0 {
                    left -= 1;
                    false
                } else {
                    true
                }
            });
        }
        self.evictions += (before - self.entries.len()) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    fn settings() -> GuardSettings {
        GuardSettings::default()
    }

    fn ask(g: &TunnelGuard, now: u32, action: GuardAction, name: &str) -> Verdict {
        let suffixes = crate::policy::suffix::Suffixes::builtin();
        let (domain, prefix) = suffixes.split(name);
        g.observe_at(now, &settings(), action, CLIENT, name, domain, prefix, true)
    }

    #[test]
    fn heuristics_flag_encodings_and_spare_words_and_cdn_names() {
        for (label, want) in [
            (
                "mfrggzdfmztwq2lknnwg23tpobyxe43u",
                Some(Signal::EncodedLabel),
            ),
            (
                "0123456789abcdef0123456789abcdef",
                Some(Signal::EncodedLabel),
            ),
            ("qzx7vk2pt9wmby4hfn8c", Some(Signal::HighEntropy)),
            ("api", None),
            ("objects", None),
            ("d3c33hcgiwev3", None),
            ("r3---sn-4g5e6nsz", None),
            ("production-cloudflare", None),
            ("github-production-release-asset-2e65be", None),
            ("release-assets", None),
        ] {
            assert_eq!(
                signal(&format!("{label}.example.com"), label),
                want,
                "{label}"
            );
        }
        let long = "aaaa.bbbb.cccc.dddd.eeee.ffff.gggg.hhhh.iiii.jjjj.example.com";
        assert_eq!(signal(long, "aaaa"), Some(Signal::LongName));
    }

    #[test]
    fn repeated_names_cost_nothing_and_fresh_labels_add_up() {
        let g = TunnelGuard::new();
        for _ in 0..1000 {
            assert_eq!(
                ask(&g, 1, GuardAction::Block, "api.example.com"),
                Verdict::Pass
            );
        }
        // 8-byte fresh labels ("xxxxxxx" + dot): 128 of them fill 1 KiB; the next trips.
        let mut tripped_at = None;
        for i in 0..200 {
            let name = format!("n{i:06}.example.com");
            if let Verdict::Tripped { blocked, .. } = ask(&g, 2, GuardAction::Block, &name) {
                assert!(blocked);
                tripped_at = Some(i);
                break;
            }
        }
        // "api" took 4 bytes: (1024 - 4) / 8 = 127 names pass.
        assert_eq!(tripped_at, Some(127));
        // Blocked for the cool-down, cached names included; other domains are not.
        assert!(matches!(
            ask(&g, 3, GuardAction::Block, "api.example.com"),
            Verdict::Blocked { .. }
        ));
        assert_eq!(
            ask(&g, 3, GuardAction::Block, "www.example.org"),
            Verdict::Pass
        );
        // After the cool-down and the window, the pair starts over.
        assert_eq!(
            ask(&g, 2 + 601, GuardAction::Block, "fresh1.example.com"),
            Verdict::Pass
        );
    }

    #[test]
    fn ordinary_traffic_does_not_trip_the_defaults() {
        let corpus: Vec<&str> = include_str!("../../tests/fixtures/normal-hostnames.txt")
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert!(corpus.len() >= 250, "{} names", corpus.len());
        let g = TunnelGuard::new();
        // Each name three times in one window, from one client.
        for round in 0..3 {
            for (i, name) in corpus.iter().enumerate() {
                let now = round * 150 + (i as u32 % 100);
                let v = ask(&g, now, GuardAction::Block, name);
                assert_eq!(v, Verdict::Pass, "{name} in round {round}");
            }
        }
        // The busiest registered domain of the corpus stays well under the budget.
        let suffixes = crate::policy::suffix::Suffixes::builtin();
        let mut per_domain = std::collections::HashMap::<&str, usize>::new();
        for name in &corpus {
            if let (domain, Some(prefix)) = suffixes.split(name) {
                let weight = if signal(name, prefix).is_some() { 2 } else { 1 };
                *per_domain.entry(domain).or_default() += (prefix.len() + 1) * weight;
            }
        }
        let (domain, most) = per_domain.iter().max_by_key(|(_, b)| **b).unwrap();
        assert!(*most * 2 < 1024, "{domain}: {most} bytes");
    }

    #[test]
    fn log_reports_a_trip_once_per_cooldown_and_answers() {
        let g = TunnelGuard::new();
        let mut trips = 0;
        for i in 0..1000 {
            match ask(&g, 5, GuardAction::Log, &format!("n{i:06}.example.com")) {
                Verdict::Tripped { blocked, .. } => {
                    assert!(!blocked);
                    trips += 1;
                }
                Verdict::Blocked { .. } => panic!("log never blocks"),
                Verdict::Pass => {}
            }
        }
        assert_eq!(trips, 1);
    }

    #[test]
    fn the_table_is_bounded_and_keeps_blocked_pairs() {
        let g = TunnelGuard::new();
        let s = GuardSettings {
            max_entries: 64,
            budget_bytes: 20,
            ..settings()
        };
        let suffixes = crate::policy::suffix::Suffixes::builtin();
        let at = |now, client: u8, name: &str| {
            let (d, p) = suffixes.split(name);
            let ip = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 1, client));
            g.observe_at(now, &s, GuardAction::Block, ip, name, d, p, true)
        };
        // Client 1 trips on tunnel.example.
        at(0, 1, "aaaaaaaaaa.tunnel.example");
        assert!(matches!(
            at(0, 1, "bbbbbbbbbbbbbbb.tunnel.example"),
            Verdict::Tripped { blocked: true, .. }
        ));
        // 1000 other pairs later, the table holds at most 64, and client 1 is still blocked.
        for i in 0..1000 {
            at(1, 2, &format!("www.d{i}.example"));
        }
        let (entries, evictions) = g.usage();
        assert!(entries <= 64, "{entries}");
        assert!(evictions >= 900, "{evictions}");
        assert!(matches!(
            at(2, 1, "cccc.tunnel.example"),
            Verdict::Blocked { .. }
        ));
        const { assert!(ENTRY_BYTES <= 176) };
    }
}
