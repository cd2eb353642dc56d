//! A DNS gate without sockets: the filter the UDP listener asks, with a cache filled
//! before every input, and [`serve`], which handles one datagram as
//! `dns::udp::serve_udp` does (fast path first, then the full path). No upstream is ever
//! asked: a question that would go upstream ends as [`Served::Upstream`].

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use portcullis::config::Config;
use portcullis::dns::cache::Cache;
use portcullis::dns::filter::{FastMiss, Filter, FilterSettings, Step};
use portcullis::dns::udp::{self, Parsed};
use portcullis::dns::upstream::UpstreamPool;
use portcullis::dns::wire;
use portcullis::lists::load::build_policy;

/// The client every datagram comes from.
pub const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

// The upstream is never asked (no `finish`); it only has to be a valid spec. The tunnel
// guard blocks on a small budget, so hostile names reach its block path too.
const CONFIG: &str = r#"
[dns]
qtypes = { agent = ["A", "AAAA", "CNAME", "HTTPS", "TXT", "MX"] }
guard.actions = { agent = "block" }
guard.budget_bytes = 64
guard.max_entries = 256
rate_limit.queries = 0
[[upstream.servers]]
url = "udp://127.0.0.1:9"
[groups]
agent = ["127.0.0.0/8"]
[[lists]]
name = "threats"
inline = "evil.example\n||ads.example^\n/^track[0-9]+\\./\n"
keywords = ["malware"]
"#;

pub struct Gate {
    pub filter: Filter,
    /// What the cache holds at the start of every input.
    entries: Vec<(&'static str, RecordType, Message)>,
}

fn record(name: &str, ttl: u32, data: RData) -> Record {
    Record::from_rdata(Name::from_ascii(name).unwrap(), ttl, data)
}

fn response(rcode: ResponseCode, answers: Vec<Record>, authorities: Vec<Record>) -> Message {
    let mut m = Message::new(0, MessageType::Response, OpCode::Query);
    m.metadata.response_code = rcode;
    m.answers = answers;
    m.authorities = authorities;
    m
}

fn soa(zone: &str) -> Record {
    let soa = SOA::new(
        Name::from_ascii(zone).unwrap(),
        Name::from_ascii("hostmaster.example.").unwrap(),
        1,
        3600,
        600,
        86400,
        300,
    );
    record(zone, 300, RData::SOA(soa))
}

impl Gate {
    pub fn new() -> Gate {
        let config = Config::parse(CONFIG, "fuzz.toml", Path::new("/nonexistent")).unwrap();
        let loaded = build_policy(&config).unwrap();
        let upstream = UpstreamPool::new(
            &config.upstream.servers,
            config.upstream.strategy,
            Duration::from_millis(config.upstream.timeout_ms),
        )
        .unwrap();
        let filter = Filter::new(
            Arc::new(ArcSwap::from_pointee(loaded.policy)),
            Arc::new(upstream),
            Cache::new(&config.cache),
            FilterSettings::from(&config.dns),
            config.dns.max_inflight,
        );
        let a = |last: u8| RData::A(A(Ipv4Addr::new(93, 184, 215, last)));
        let entries = vec![
            (
                "cached.example",
                RecordType::A,
                response(
                    ResponseCode::NoError,
                    vec![
                        record("cached.example.", 300, a(14)),
                        record("cached.example.", 60, a(15)),
                    ],
                    vec![],
                ),
            ),
            (
                "cached.example",
                RecordType::AAAA,
                response(ResponseCode::NoError, vec![], vec![soa("example.")]),
            ),
            (
                "alias.example",
                RecordType::A,
                response(
                    ResponseCode::NoError,
                    vec![
                        record(
                            "alias.example.",
                            300,
                            RData::CNAME(CNAME(Name::from_ascii("cdn.example.net.").unwrap())),
                        ),
                        record("cdn.example.net.", 30, a(20)),
                    ],
                    vec![],
                ),
            ),
            (
                "gone.example",
                RecordType::A,
                response(ResponseCode::NXDomain, vec![], vec![soa("example.")]),
            ),
            (
                "big.example",
                RecordType::A,
                response(
                    ResponseCode::NoError,
                    (0..40).map(|i| record("big.example.", 60, a(i))).collect(),
                    vec![],
                ),
            ),
            (
                "v6.example",
                RecordType::AAAA,
                response(
                    ResponseCode::NoError,
                    vec![record(
                        "v6.example.",
                        120,
                        RData::AAAA(AAAA("2606:2800:220:1::1".parse().unwrap())),
                    )],
                    vec![],
                ),
            ),
            (
                // Rebinding protection rewrites this one: never on the fast path.
                "private.example",
                RecordType::A,
                response(
                    ResponseCode::NoError,
                    vec![record(
                        "private.example.",
                        60,
                        RData::A(A(Ipv4Addr::new(10, 0, 0, 1))),
                    )],
                    vec![],
                ),
            ),
            (
                "txt.example",
                RecordType::TXT,
                response(
                    ResponseCode::NoError,
                    vec![record(
                        "txt.example.",
                        60,
                        RData::TXT(TXT::new(vec!["v=spf1 -all".into(); 3])),
                    )],
                    vec![],
                ),
            ),
        ];
        let gate = Gate { filter, entries };
        gate.reset();
        gate
    }

    /// Empties the cache and puts the fixed entries back (fresh, not yet encoded for the
    /// fast path), so every input starts from the same state.
    pub fn reset(&self) {
        let cache = &self.filter.cache;
        cache.clear();
        for (i, (name, qtype, message)) in self.entries.iter().enumerate() {
            cache.insert(name, *qtype, message, "up".into(), i as u64);
        }
    }
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

/// What the listener did with one datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Served {
    /// Nothing sent: too short for a header, or a response.
    Dropped,
    /// Sent from the fast path.
    Fast(Vec<u8>),
    /// Sent from the full path.
    Full(Vec<u8>),
    /// Would have gone to the upstreams.
    Upstream,
}

/// The client's UDP payload limit for a query `udp::parse` accepted.
pub fn payload_limit(request: &udp::Request) -> usize {
    usize::from(request.edns_payload.unwrap_or(512).clamp(512, 4096))
}

/// One datagram through the listener's steps (`dns::udp::serve_udp`), minus the socket.
pub fn serve(gate: &Gate, datagram: &[u8], name: &mut String, out: &mut Vec<u8>) -> Served {
    let filter = &gate.filter;
    if let Some(fast) = wire::parse(datagram, name) {
        match filter.answer_cached(CLIENT, &fast, name, out) {
            Ok(_) => return Served::Fast(out.clone()),
            Err(FastMiss::NotCached) => {
                let mut text = String::new();
                if filter
                    .answer_local(CLIENT, &fast, name, out, &mut text, |_| ())
                    .is_some()
                {
                    return Served::Fast(out.clone());
                }
            }
            Err(FastMiss::Declined) => {}
        }
    }
    serve_full(gate, datagram)
}

/// One datagram through the full path only (what the listener does when the fast paths
/// decline).
pub fn serve_full(gate: &Gate, datagram: &[u8]) -> Served {
    let filter = &gate.filter;
    match udp::parse(datagram) {
        Parsed::Drop => Served::Dropped,
        Parsed::Error {
            header,
            rcode,
            edns,
        } => {
            Served::Full(udp::encode_error(&header, rcode, edns).expect("a refusal always encodes"))
        }
        Parsed::Query(request) => match filter.begin(CLIENT, &request.query) {
            Step::Done(reply) => Served::Full(
                udp::encode(&request, reply).expect("a reply to a parsed query encodes"),
            ),
            Step::Forward(_) => Served::Upstream,
        },
    }
}

/// `bytes` decoded, with every TTL set to 0 (the fast and the full path may be a second
/// apart), and without the digits of a tunnel guard's EDE text (its byte count is the
/// guard's window, which moves with the clock).
pub fn decode_without_ttls(bytes: &[u8]) -> Message {
    let mut m = Message::from_vec(bytes)
        .unwrap_or_else(|e| panic!("the gate sent an undecodable message ({e}): {bytes:02x?}"));
    for r in m.answers.iter_mut().chain(m.authorities.iter_mut()) {
        r.ttl = 0;
    }
    if let Some(edns) = m.edns.as_mut() {
        let code = EdnsCode::Unknown(15);
        if let Some(EdnsOption::Unknown(_, data)) = edns.options().get(code).cloned()
            && data.windows(19).any(|w| w == b"possible DNS tunnel")
        {
            let data: Vec<u8> = data.into_iter().filter(|b| !b.is_ascii_digit()).collect();
            // `insert` appends: drop the original first.
            edns.options_mut().remove(code);
            edns.options_mut().insert(EdnsOption::Unknown(u16::from(code), data));
        }
    }
    m
}

/// The question of a parsed request, for messages in assertions.
pub fn describe(query: &Query) -> String {
    format!("{} {}", query.name(), query.query_type())
}
