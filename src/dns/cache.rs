//! A bounded response cache with min/max TTL, negative caching and serve-stale (RFC 8767).
//!
//! Upstream answers are cached before per-client inspection, so a cached answer is
//! inspected for each client's group exactly like a fresh one. Their TTLs are clamped
//! first ([`Cache::clamp_ttls`]): what clients are served, fresh or cached, is what the
//! cache keeps, counted down by the entry's age.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Record, RecordType};

use crate::config::CacheConfig;

/// TTL given to a stale answer (RFC 8767 §4 recommends 30 seconds).
pub const STALE_ANSWER_TTL: u32 = 30;

/// The parts of an upstream response worth keeping, and its cache key and age. One
/// allocation per entry: a cache hit clones one `Arc`.
#[derive(Debug)]
pub struct CachedResponse {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    /// Which upstream answered, for the decision log.
    pub upstream: Arc<str>,
    /// The answer's correlation id (see [`Reply::answer_id`](super::filter::Reply)).
    pub answer_id: u64,
    /// The answer encoded for the fast path, for the policy, settings and group it was
    /// last served to (see `dns::wire`).
    pub wire: arc_swap::ArcSwapOption<super::wire::WireAnswer>,
    /// The key (checked on lookup: keys are 64-bit hashes) and the TTL clock.
    name: Box<str>,
    qtype: RecordType,
    stored: Instant,
    ttl: u32,
}

type Entry = Arc<CachedResponse>;

#[cfg(test)]
impl CachedResponse {
    /// A response as if just cached under `name`.
    pub(crate) fn for_test(
        name: &str,
        rcode: ResponseCode,
        answers: Vec<Record>,
        authorities: Vec<Record>,
    ) -> CachedResponse {
        CachedResponse {
            rcode,
            answers,
            authorities,
            upstream: "up".into(),
            answer_id: 1,
            wire: Default::default(),
            name: name.into(),
            qtype: RecordType::A,
            stored: Instant::now(),
            ttl: 60,
        }
    }
}

/// A cache hit: the response and how old it is.
pub struct Hit {
    pub response: Arc<CachedResponse>,
    /// Seconds the TTLs must be reduced by.
    pub age: u32,
    /// Past its TTL: only to be served when no upstream answers.
    pub stale: bool,
    /// The TTL a stale hit is served with ([`Cache::stale_ttl`]).
    pub stale_ttl: u32,
}

pub struct Cache {
    entries: Option<quick_cache::sync::Cache<u64, Entry>>,
    hasher: foldhash::fast::RandomState,
    min_ttl: u32,
    max_ttl: u32,
    negative_ttl: u32,
    serve_stale: bool,
    stale_max_age: u32,
}

impl Cache {
    pub fn new(config: &CacheConfig) -> Cache {
        Cache {
            entries: (config.max_entries > 0)
                .then(|| quick_cache::sync::Cache::new(config.max_entries)),
            hasher: foldhash::fast::RandomState::default(),
            min_ttl: config.min_ttl,
            max_ttl: config.max_ttl,
            negative_ttl: config.negative_ttl,
            serve_stale: config.serve_stale,
            stale_max_age: config.stale_max_age,
        }
    }

    fn key(&self, name: &str, qtype: RecordType) -> u64 {
        self.hasher.hash_one((name, u16::from(qtype)))
    }

    /// Looks up a normalised name. Expired entries come back marked stale while
    /// serve-stale allows them, so the caller can fall back to them.
    pub fn get(&self, name: &str, qtype: RecordType) -> Option<Hit> {
        let entries = self.entries.as_ref()?;
        let entry = entries.get(&self.key(name, qtype))?;
        if entry.qtype != qtype || &*entry.name != name {
            return None;
        }
        let age = entry.stored.elapsed().as_secs().min(u64::from(u32::MAX)) as u32;
        if age < entry.ttl {
            return Some(Hit {
                response: entry,
                age,
                stale: false,
                stale_ttl: self.stale_ttl(),
            });
        }
        (self.serve_stale && age - entry.ttl <= self.stale_max_age).then_some(Hit {
            response: entry,
            age,
            stale: true,
            stale_ttl: self.stale_ttl(),
        })
    }

    /// Rewrites the TTLs of an upstream response to what clients may be served, as
    /// blocky and unbound do: every record's TTL clamped to `[min_ttl, max_ttl]`, and in a
    /// negative answer (NXDOMAIN, NODATA) the authority records (the SOA included) at
    /// most as long as the answer is cached (RFC 2308 §5: the SOA's TTL is the negative
    /// TTL). Called on every upstream answer, with or without a cache; the OPT record is
    /// not a record here (hickory keeps it apart), and additional records are not served.
    pub fn clamp_ttls(&self, response: &mut Message) {
        let negative = self.ttl_for(response).filter(|_| is_negative(response));
        let clamp = |ttl: u32| ttl.clamp(self.min_ttl, self.max_ttl);
        for record in &mut response.answers {
            record.ttl = clamp(record.ttl);
        }
        for record in &mut response.authorities {
            record.ttl = match negative {
                Some(cached) => clamp(record.ttl).min(cached),
                None => clamp(record.ttl),
            };
        }
    }

    /// TTL of a stale answer: RFC 8767's 30 seconds, within the clamp.
    pub fn stale_ttl(&self) -> u32 {
        STALE_ANSWER_TTL.clamp(self.min_ttl, self.max_ttl)
    }

    /// Stores an upstream response; SERVFAIL and other failures are not cached.
    pub fn insert(
        &self,
        name: &str,
        qtype: RecordType,
        response: &Message,
        upstream: Arc<str>,
        answer_id: u64,
    ) {
        let Some(entries) = &self.entries else { return };
        let Some(ttl) = self.ttl_for(response) else {
            return;
        };
        let entry = Arc::new(CachedResponse {
            rcode: response.metadata.response_code,
            answers: response.answers.clone(),
            authorities: response.authorities.clone(),
            upstream,
            answer_id,
            wire: Default::default(),
            name: name.into(),
            qtype,
            stored: Instant::now(),
            ttl,
        });
        entries.insert(self.key(name, qtype), entry);
    }

    /// How long a response may be cached, or `None` when it must not be.
    fn ttl_for(&self, response: &Message) -> Option<u32> {
        if !matches!(
            response.metadata.response_code,
            ResponseCode::NoError | ResponseCode::NXDomain
        ) {
            return None;
        }
        let ttl = if is_negative(response) {
            // RFC 2308: the SOA's TTL bounded by its MINIMUM field.
            let soa_ttl = response
                .authorities
                .iter()
                .find_map(|r| match &r.data {
                    hickory_proto::rr::RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                    _ => None,
                })
                .unwrap_or(self.negative_ttl);
            soa_ttl.min(self.negative_ttl)
        } else {
            response.answers.iter().map(|r| r.ttl).min().unwrap_or(0)
        };
        Some(ttl.clamp(self.min_ttl, self.max_ttl))
    }

    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, |c| c.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&self) {
        if let Some(entries) = &self.entries {
            entries.clear();
        }
    }

    /// Test hook: pretend an entry was stored `by` earlier.
    #[doc(hidden)]
    pub fn age_all(&self, by: Duration) {
        if let Some(entries) = &self.entries {
            let aged: Vec<_> = entries
                .iter()
                .map(|(k, e)| {
                    let e = Arc::new(CachedResponse {
                        rcode: e.rcode,
                        answers: e.answers.clone(),
                        authorities: e.authorities.clone(),
                        upstream: e.upstream.clone(),
                        answer_id: e.answer_id,
                        wire: Default::default(),
                        name: e.name.clone(),
                        qtype: e.qtype,
                        stored: e.stored.checked_sub(by).unwrap_or(e.stored),
                        ttl: e.ttl,
                    });
                    (k, e)
                })
                .collect();
            for (k, e) in aged {
                entries.insert(k, e);
            }
        }
    }
}

/// NXDOMAIN, or NOERROR with no answer (NODATA).
fn is_negative(response: &Message) -> bool {
    match response.metadata.response_code {
        ResponseCode::NoError => response.answers.is_empty(),
        ResponseCode::NXDomain => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, OpCode};
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, RData};
    use std::str::FromStr;

    fn config() -> CacheConfig {
        CacheConfig {
            max_entries: 100,
            min_ttl: 5,
            max_ttl: 600,
            negative_ttl: 60,
            serve_stale: true,
            stale_max_age: 3600,
        }
    }

    fn answer(ttl: u32) -> Message {
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.answers.push(Record::from_rdata(
            Name::from_str("a.example.").unwrap(),
            ttl,
            RData::A(A::new(192, 0, 2, 1)),
        ));
        m
    }

    fn nxdomain(soa_ttl: u32, minimum: u32) -> Message {
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.metadata.response_code = ResponseCode::NXDomain;
        let soa = SOA::new(
            Name::from_str("example.").unwrap(),
            Name::from_str("admin.example.").unwrap(),
            1,
            3600,
            600,
            86400,
            minimum,
        );
        m.authorities.push(Record::from_rdata(
            Name::from_str("example.").unwrap(),
            soa_ttl,
            RData::SOA(soa),
        ));
        m
    }

    #[test]
    fn ttls_are_clamped_and_negative_answers_bounded() {
        let c = Cache::new(&config());
        assert_eq!(c.ttl_for(&answer(1)), Some(5));
        assert_eq!(c.ttl_for(&answer(100)), Some(100));
        assert_eq!(c.ttl_for(&answer(100_000)), Some(600));
        assert_eq!(c.ttl_for(&nxdomain(3600, 30)), Some(30));
        assert_eq!(c.ttl_for(&nxdomain(3600, 3600)), Some(60));
        let mut servfail = answer(100);
        servfail.metadata.response_code = ResponseCode::ServFail;
        assert_eq!(c.ttl_for(&servfail), None);
    }

    #[test]
    fn served_ttls_are_clamped_like_the_cache_entry() {
        let c = Cache::new(&config());
        // A week-long answer and a 1-second one: served within [5, 600].
        for (ttl, served) in [(604_800, 600), (1, 5), (100, 100)] {
            let mut m = answer(ttl);
            c.clamp_ttls(&mut m);
            assert_eq!(m.answers[0].ttl, served, "upstream TTL {ttl}");
            assert_eq!(c.ttl_for(&m), Some(served), "the entry lives as long");
        }
        // Negative answers: the SOA's TTL is the negative TTL (bounded by MINIMUM and
        // negative_ttl, then clamped), and clamping again changes nothing.
        for (soa_ttl, minimum, served) in [(604_800, 604_800, 60), (3600, 30, 30), (1, 1, 5)] {
            let mut m = nxdomain(soa_ttl, minimum);
            let cached = c.ttl_for(&m);
            c.clamp_ttls(&mut m);
            assert_eq!(m.authorities[0].ttl, served, "SOA TTL {soa_ttl}/{minimum}");
            assert_eq!(c.ttl_for(&m), cached);
            c.clamp_ttls(&mut m);
            assert_eq!(m.authorities[0].ttl, served);
        }
        // Serve-stale's 30 s stays inside the clamp too.
        let mut cfg = config();
        cfg.max_ttl = 10;
        assert_eq!(Cache::new(&cfg).stale_ttl(), 10);
        assert_eq!(c.stale_ttl(), STALE_ANSWER_TTL);
    }

    #[test]
    fn fresh_then_stale_then_gone() {
        let c = Cache::new(&config());
        c.insert("a.example", RecordType::A, &answer(10), "up".into(), 7);
        let hit = c.get("a.example", RecordType::A).unwrap();
        assert!(!hit.stale);
        assert!(c.get("a.example", RecordType::AAAA).is_none());
        assert!(c.get("b.example", RecordType::A).is_none());
        c.age_all(Duration::from_secs(11));
        let hit = c.get("a.example", RecordType::A).unwrap();
        assert!(hit.stale);
        assert!(hit.age >= 11);
        c.age_all(Duration::from_secs(3600));
        assert!(c.get("a.example", RecordType::A).is_none());
    }

    #[test]
    fn stale_serving_can_be_disabled_and_cache_bounded() {
        let mut cfg = config();
        cfg.serve_stale = false;
        cfg.max_entries = 10;
        let c = Cache::new(&cfg);
        for i in 0..100 {
            c.insert(
                &format!("n{i}.example"),
                RecordType::A,
                &answer(10),
                "up".into(),
                i as u64,
            );
        }
        assert!(c.len() <= 10, "cache holds {} entries", c.len());
        c.insert("a.example", RecordType::A, &answer(10), "up".into(), 7);
        c.age_all(Duration::from_secs(11));
        assert!(c.get("a.example", RecordType::A).is_none());
    }
}
