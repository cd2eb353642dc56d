//! The cached-answer fast path: an answer served from the cache is encoded once per
//! (policy, settings, client group) and then served by patching a copy of those bytes
//! (id, flags, the question's letter case, TTLs, EDNS), without decoding the request into
//! a `Message`, cloning records or running the encoder. On this path the per-query work
//! is a header scan, one cache lookup and a memcpy; everything else (anything unusual in
//! the request, a stale or uninspected answer, a policy or settings reload, another
//! group) takes the full path, which also (re)builds the encoding.
//!
//! A name with no fresh cache entry that the policy answers here (a listed name, a
//! refusal of the DNS policy) is answered on the same path by [`write_local`]: the header
//! and question copied from the request, an SOA and the EDNS record with its Extended DNS
//! Error written after them, no `Message`, no records, no allocation.
//!
//! An encoding is valid only for the policy and settings it was inspected under: it
//! holds `Weak` references to both and is used only while they are the ones in force.
//! (A `Weak` keeps its allocation, so a new policy can never reuse the address.)

use std::sync::{Arc, Weak};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name as DnsName, RecordType};

use super::cache::CachedResponse;
use super::filter::FilterSettings;
use crate::policy::Policy;
use crate::policy::groups::GroupId;

/// Header length.
const HEADER: usize = 12;
/// The OPT record of every EDNS answer the gate sends: root name, type 41, UDP payload
/// 1232, extended rcode 0, version 0, no flags, no options (what `udp::response_edns`
/// encodes when there is no Extended DNS Error).
const OPT: [u8; 11] = [0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0];
/// The longest name in dotted form (RFC 1035: 255 octets in wire form).
pub const MAX_NAME: usize = 253;

/// A request simple enough for the fast path: one question, class IN, an ASCII name of
/// letters, digits, `-` and `_`, no answer or authority records, and at most an OPT
/// record (EDNS version 0) as additional data.
pub struct FastQuery<'a> {
    pub id: u16,
    rd: bool,
    cd: bool,
    /// The question name as sent (letter case preserved).
    qname: &'a [u8],
    pub qtype: RecordType,
    /// The client's UDP payload size, when it sent EDNS.
    edns_payload: Option<u16>,
}

/// Parses `bytes` for the fast path, writing the name in lower-case dotted form (the
/// cache's key) to `name`. `None`: use the full path.
pub fn parse<'a>(bytes: &'a [u8], name: &mut String) -> Option<FastQuery<'a>> {
    let header = bytes.get(..HEADER)?;
    let (flags, counts) = (&header[2..4], &header[4..12]);
    // QR = 0 (a query), opcode 0, TC = 0.
    if flags[0] & 0xfa != 0 {
        return None;
    }
    let ar = match counts {
        [0, 1, 0, 0, 0, 0, 0, ar] if *ar <= 1 => *ar,
        _ => return None,
    };
    name.clear();
    let mut at = HEADER;
    loop {
        let len = usize::from(*bytes.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        // Compression pointers and extended label types are not for the fast path.
        if len > 63 {
            return None;
        }
        let label = bytes.get(at..at + len)?;
        if !name.is_empty() {
            name.push('.');
        }
        for &b in label {
            match b {
                b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => name.push(b as char),
                b'A'..=b'Z' => name.push(b.to_ascii_lowercase() as char),
                _ => return None,
            }
        }
        at += len;
    }
    if name.is_empty() || name.len() > MAX_NAME {
        return None;
    }
    let qname = &bytes[HEADER..at];
    let fixed = bytes.get(at..at + 4)?;
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    if u16::from_be_bytes([fixed[2], fixed[3]]) != 1 {
        return None;
    }
    at += 4;
    let mut edns_payload = None;
    if ar == 1 {
        // The OPT record: root owner, type 41, payload, ext-rcode, version 0, flags, rdata.
        let opt = bytes.get(at..at + 11)?;
        if opt[0] != 0 || opt[1..3] != [0, 41] || opt[6] != 0 {
            return None;
        }
        edns_payload = Some(u16::from_be_bytes([opt[3], opt[4]]));
        let rdata_len = usize::from(u16::from_be_bytes([opt[9], opt[10]]));
        if !plain_options(bytes.get(at + 11..at + 11 + rdata_len)?) {
            return None;
        }
        at += 11 + rdata_len;
    }
    if at != bytes.len() {
        return None;
    }
    let qtype = RecordType::from(qtype);
    if matches!(qtype, RecordType::ANY | RecordType::AXFR | RecordType::IXFR) {
        return None;
    }
    Some(FastQuery {
        id: u16::from_be_bytes([header[0], header[1]]),
        rd: flags[0] & 0x01 != 0,
        cd: flags[1] & 0x10 != 0,
        qname,
        qtype,
        edns_payload,
    })
}

/// EDNS options the full path decodes without a FORMERR: well-formed code-length-value
/// items, and no Client Subnet (whose content hickory validates). Anything else is the
/// full path's to refuse.
fn plain_options(mut rdata: &[u8]) -> bool {
    const CLIENT_SUBNET: u16 = 8;
    while let [c0, c1, l0, l1, rest @ ..] = rdata {
        let len = usize::from(u16::from_be_bytes([*l0, *l1]));
        if u16::from_be_bytes([*c0, *c1]) == CLIENT_SUBNET || rest.len() < len {
            return false;
        }
        rdata = &rest[len..];
    }
    rdata.is_empty()
}

/// A cached answer, inspected and encoded for one policy, settings and client group.
#[derive(Debug)]
pub struct WireAnswer {
    policy: Weak<Policy>,
    settings: Weak<FilterSettings>,
    group: GroupId,
    /// The response: id 0, no EDNS, the question in lower case.
    bytes: Box<[u8]>,
    /// Offset and original value of every record's TTL.
    ttls: Box<[(u16, u32)]>,
    /// For the decision log.
    pub answers: usize,
    pub rule: Option<String>,
}

impl WireAnswer {
    /// Encodes `response` (which inspection left as it was) for `name`/`qtype`. `None`
    /// when it cannot be encoded.
    pub fn build(
        policy: &Arc<Policy>,
        settings: &Arc<FilterSettings>,
        group: GroupId,
        name: &str,
        qtype: RecordType,
        response: &CachedResponse,
        rule: Option<String>,
    ) -> Option<WireAnswer> {
        let mut m = Message::new(0, MessageType::Response, OpCode::Query);
        m.metadata.recursion_available = true;
        m.metadata.response_code = response.rcode;
        m.queries.push(Query::query(
            DnsName::from_ascii(format!("{name}.")).ok()?,
            qtype,
        ));
        m.answers = response.answers.clone();
        m.authorities = response.authorities.clone();
        let bytes = m.to_vec().ok()?;
        let ttls = ttl_offsets(&bytes)?;
        Some(WireAnswer {
            policy: Arc::downgrade(policy),
            settings: Arc::downgrade(settings),
            group,
            bytes: bytes.into_boxed_slice(),
            ttls: ttls.into_boxed_slice(),
            answers: response.answers.len(),
            rule,
        })
    }

    /// Was this encoding made under exactly this policy, settings and group?
    pub fn valid_for(
        &self,
        policy: &Arc<Policy>,
        settings: &Arc<FilterSettings>,
        group: GroupId,
    ) -> bool {
        self.group == group
            && std::ptr::eq(self.policy.as_ptr(), Arc::as_ptr(policy))
            && std::ptr::eq(self.settings.as_ptr(), Arc::as_ptr(settings))
    }

    /// Writes the answer to `query` into `out`, TTLs reduced by `age`. `false` when it
    /// would not fit the client's UDP payload (the full path then truncates).
    pub fn answer(&self, query: &FastQuery, age: u32, out: &mut Vec<u8>) -> bool {
        let limit = usize::from(query.edns_payload.unwrap_or(512).clamp(512, 4096));
        let opt = if query.edns_payload.is_some() {
            OPT.len()
        } else {
            0
        };
        if self.bytes.len() + opt > limit || self.bytes.len() < HEADER + query.qname.len() {
            return false;
        }
        out.clear();
        out.extend_from_slice(&self.bytes);
        out[..2].copy_from_slice(&query.id.to_be_bytes());
        // QR, opcode 0, RD as asked; RA, CD as asked, the rcode.
        out[2] = 0x80 | u8::from(query.rd);
        out[3] = (out[3] & 0x8f) | if query.cd { 0x10 } else { 0 };
        // The question exactly as asked (DNS 0x20 letter case included).
        out[HEADER..HEADER + query.qname.len()].copy_from_slice(query.qname);
        for &(at, ttl) in &self.ttls {
            let at = usize::from(at);
            out[at..at + 4].copy_from_slice(&ttl.saturating_sub(age).to_be_bytes());
        }
        if opt > 0 {
            out[10..12].copy_from_slice(&1u16.to_be_bytes());
            out.extend_from_slice(&OPT);
        }
        true
    }
}

/// An answer the gate gives without an upstream and without records of its own but the
/// SOA of negative caching: a listed name blocked with NXDOMAIN or REFUSED, and the DNS
/// policy's refusals by mode and query type (what `answer::block_reply` and
/// `answer::refusal_reply` build for the full path).
pub struct LocalAnswer<'a> {
    pub rcode: ResponseCode,
    /// The authority SOA: its owner is the question name's last `labels` labels (`None`:
    /// the whole name), and its TTL (and MINIMUM).
    pub soa: Option<(Option<usize>, u32)>,
    /// The Extended DNS Error, sent to EDNS clients.
    pub ede: (u16, &'a str),
}

/// The SOA's MNAME and RNAME: `portcullis.` and `blocked.` + a pointer to it.
const SOA_MNAME: &[u8] = b"\x0aportcullis\x00";
/// The longest EDE text sent (what `request::ede_option` keeps: a 512-byte answer).
const EDE_TEXT_MAX: usize = 200;

/// Writes `answer` to `query` into `out`, from the request's own bytes (the question as
/// asked, letter case included), as the full path encodes it. `false` (nothing to send)
/// when it would not fit the client's UDP payload: the full path then truncates.
pub fn write_local(query: &FastQuery, answer: &LocalAnswer, out: &mut Vec<u8>) -> bool {
    let rcode = u16::from(answer.rcode);
    out.clear();
    out.extend_from_slice(&query.id.to_be_bytes());
    // QR, opcode 0, RD as asked; RA, CD as asked, the rcode's low bits.
    out.push(0x80 | u8::from(query.rd));
    out.push(0x80 | if query.cd { 0x10 } else { 0 } | (rcode & 0x0f) as u8);
    let ns = u16::from(answer.soa.is_some());
    let ar = u16::from(query.edns_payload.is_some());
    for count in [1, 0, ns, ar] {
        out.extend_from_slice(&count.to_be_bytes());
    }
    out.extend_from_slice(query.qname);
    out.extend_from_slice(&u16::from(query.qtype).to_be_bytes());
    out.extend_from_slice(&[0, 1]);
    if let Some((labels, ttl)) = answer.soa {
        let owner = HEADER + owner_offset(query.qname, labels);
        out.extend_from_slice(&(0xc000 | owner as u16).to_be_bytes());
        out.extend_from_slice(&[0, 6, 0, 1]);
        out.extend_from_slice(&ttl.to_be_bytes());
        let rdlength = SOA_MNAME.len() + 1 + b"blocked".len() + 2 + 20;
        out.extend_from_slice(&(rdlength as u16).to_be_bytes());
        let mname = out.len();
        out.extend_from_slice(SOA_MNAME);
        out.push(7);
        out.extend_from_slice(b"blocked");
        out.extend_from_slice(&(0xc000 | mname as u16).to_be_bytes());
        for value in [1, 3600, 600, 86400, ttl] {
            out.extend_from_slice(&u32::to_be_bytes(value));
        }
    }
    if query.edns_payload.is_some() {
        let (code, text) = answer.ede;
        let text = &text.as_bytes()[..text.len().min(EDE_TEXT_MAX)];
        let option = 4 + 2 + text.len();
        out.extend_from_slice(&OPT[..5]);
        out.push((rcode >> 4) as u8);
        out.extend_from_slice(&[0, 0, 0]);
        out.extend_from_slice(&(option as u16).to_be_bytes());
        out.extend_from_slice(&EDE_OPTION.to_be_bytes());
        out.extend_from_slice(&((2 + text.len()) as u16).to_be_bytes());
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(text);
    }
    out.len() <= usize::from(query.edns_payload.unwrap_or(512).clamp(512, 4096))
}

/// The EDNS option code of an Extended DNS Error (RFC 8914).
const EDE_OPTION: u16 = 15;

/// Where, in `qname` (wire form, as [`FastQuery`] keeps it), the name of its last
/// `labels` labels starts (`None`, or more labels than it has: the whole name).
fn owner_offset(qname: &[u8], labels: Option<usize>) -> usize {
    let Some(keep) = labels else { return 0 };
    let mut starts = [0usize; 128];
    let (mut count, mut at) = (0, 0);
    while let Some(&len) = qname.get(at)
        && len != 0
    {
        starts[count] = at;
        count += 1;
        at += 1 + usize::from(len);
    }
    if keep >= count {
        0
    } else {
        starts[count - keep]
    }
}

/// The offset and value of each record's TTL in an encoded message without additional
/// records; `None` if it does not parse.
fn ttl_offsets(bytes: &[u8]) -> Option<Vec<(u16, u32)>> {
    let count = |i: usize| usize::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
    let header = bytes.get(..HEADER)?;
    let _ = header;
    let (qd, records) = (count(4), count(6) + count(8));
    if count(10) != 0 {
        return None;
    }
    let mut at = HEADER;
    let skip_name = |mut at: usize| -> Option<usize> {
        loop {
            let len = *bytes.get(at)?;
            match len {
                0 => return Some(at + 1),
                l if l & 0xc0 == 0xc0 => return Some(at + 2),
                l if l < 64 => at += 1 + usize::from(l),
                _ => return None,
            }
        }
    };
    for _ in 0..qd {
        at = skip_name(at)? + 4;
    }
    let mut ttls = Vec::with_capacity(records);
    for _ in 0..records {
        at = skip_name(at)? + 4;
        let field = bytes.get(at..at + 6)?;
        let ttl = u32::from_be_bytes([field[0], field[1], field[2], field[3]]);
        ttls.push((u16::try_from(at).ok()?, ttl));
        at += 6 + usize::from(u16::from_be_bytes([field[4], field[5]]));
    }
    (at == bytes.len()).then_some(ttls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::rdata::{A, CNAME, SOA};
    use hickory_proto::rr::{RData, Record};
    use std::net::Ipv4Addr;

    fn request(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::new(0xbeef, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.metadata.checking_disabled = true;
        m.queries
            .push(Query::query(DnsName::from_ascii(name).unwrap(), qtype));
        if let Some(payload) = edns {
            let mut e = hickory_proto::op::Edns::new();
            e.set_max_payload(payload);
            m.edns = Some(e);
        }
        m.to_vec().unwrap()
    }

    fn record(name: &str, ttl: u32, data: RData) -> Record {
        Record::from_rdata(DnsName::from_ascii(name).unwrap(), ttl, data)
    }

    fn cached(
        answers: Vec<Record>,
        authorities: Vec<Record>,
        rcode: ResponseCode,
    ) -> CachedResponse {
        CachedResponse::for_test("test.example", rcode, answers, authorities)
    }

    fn policy_and_settings() -> (Arc<Policy>, Arc<FilterSettings>) {
        let settings = FilterSettings::from(&crate::config::DnsConfig::default());
        (Arc::new(Policy::default()), Arc::new(settings))
    }

    #[test]
    fn parses_plain_queries_and_declines_the_unusual() {
        let mut name = String::new();
        let q = request("WwW.Example.COM.", RecordType::AAAA, Some(1232));
        let fast = parse(&q, &mut name).expect("a plain query");
        assert_eq!(name, "www.example.com");
        assert_eq!(
            (fast.id, fast.qtype, fast.edns_payload),
            (0xbeef, RecordType::AAAA, Some(1232))
        );
        assert!(fast.rd && fast.cd);
        assert!(parse(&request("a.example.", RecordType::A, None), &mut name).is_some());

        // Not for the fast path: the full path decides.
        let mut odd_byte = request("exa-mple.com.", RecordType::A, None);
        odd_byte[16] = b' ';
        for bad in [
            odd_byte,
            request(".", RecordType::A, None),
            request("a.example.", RecordType::ANY, None),
        ] {
            assert!(parse(&bad, &mut name).is_none());
        }
        let q = request("a.example.", RecordType::A, None);
        assert!(parse(&q[..q.len() - 1], &mut name).is_none(), "truncated");
        let mut trailing = q.clone();
        trailing.push(0);
        assert!(parse(&trailing, &mut name).is_none(), "trailing garbage");
        let mut response = q.clone();
        response[2] |= 0x80;
        assert!(parse(&response, &mut name).is_none(), "a response");
        let mut two = q.clone();
        two[5] = 2;
        assert!(parse(&two, &mut name).is_none(), "two questions");
        let mut edns1 = request("a.example.", RecordType::A, Some(1232));
        let version = edns1.len() - 5;
        edns1[version] = 1;
        assert!(
            parse(&edns1, &mut name).is_none(),
            "EDNS version 1 gets BADVERS"
        );
        let mut compressed = q.clone();
        compressed[12] = 0xc0;
        assert!(parse(&compressed, &mut name).is_none());
    }

    /// `request` with EDNS whose OPT record carries `rdata` as its options.
    fn with_options(rdata: &[u8]) -> Vec<u8> {
        let mut q = request("a.example.", RecordType::A, Some(1232));
        let len = q.len();
        q[len - 2..].copy_from_slice(&(rdata.len() as u16).to_be_bytes());
        q.extend_from_slice(rdata);
        q
    }

    #[test]
    fn edns_options_the_full_path_refuses_are_not_for_the_fast_path() {
        // Found by fuzz/fuzz_targets/dns_wire.rs: an option longer than the OPT record
        // (the full path answers FORMERR) was answered from the cache.
        let cookie = [0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
        let mut name = String::new();
        let good = with_options(&cookie);
        assert!(Message::from_vec(&good).is_ok());
        assert!(parse(&good, &mut name).is_some(), "a client cookie");
        let overrun = with_options(&[0, 10, 0, 0x5d, 1, 2, 3, 4, 5, 6, 7, 8]);
        let short = with_options(&[0, 10, 0]);
        // Client Subnet with an unknown address family.
        let subnet = with_options(&[0, 8, 0, 4, 0, 9, 0, 0]);
        for bad in [overrun, short, subnet] {
            assert!(Message::from_vec(&bad).is_err(), "{bad:02x?}");
            assert!(parse(&bad, &mut name).is_none(), "{bad:02x?}");
        }
    }

    #[test]
    fn the_patched_copy_decodes_as_the_full_path_would_answer() {
        let (policy, settings) = policy_and_settings();
        let response = cached(
            vec![
                record(
                    "www.example.com.",
                    300,
                    RData::CNAME(CNAME(DnsName::from_ascii("cdn.example.net.").unwrap())),
                ),
                record(
                    "cdn.example.net.",
                    60,
                    RData::A(A(Ipv4Addr::new(93, 184, 215, 14))),
                ),
            ],
            vec![],
            ResponseCode::NoError,
        );
        let wire = WireAnswer::build(
            &policy,
            &settings,
            GroupId(2),
            "www.example.com",
            RecordType::A,
            &response,
            None,
        )
        .expect("encodes");
        assert!(wire.valid_for(&policy, &settings, GroupId(2)));
        assert!(!wire.valid_for(&policy, &settings, GroupId(0)));
        let (other, _) = policy_and_settings();
        assert!(!wire.valid_for(&other, &settings, GroupId(2)));

        let mut name = String::new();
        for edns in [None, Some(4096)] {
            let q = request("WWW.example.Com.", RecordType::A, edns);
            let fast = parse(&q, &mut name).unwrap();
            let mut out = Vec::new();
            assert!(wire.answer(&fast, 10, &mut out));
            let m = Message::from_vec(&out).expect("a valid message");
            assert_eq!(m.metadata.id, 0xbeef);
            assert_eq!(m.metadata.message_type, MessageType::Response);
            assert!(m.metadata.recursion_desired && m.metadata.recursion_available);
            assert!(m.metadata.checking_disabled);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            assert_eq!(m.queries[0].name().to_ascii(), "WWW.example.Com.");
            let ttls: Vec<u32> = m.answers.iter().map(|r| r.ttl).collect();
            assert_eq!(ttls, [290, 50]);
            assert_eq!(
                m.answers[1].data,
                RData::A(A(Ipv4Addr::new(93, 184, 215, 14)))
            );
            assert_eq!(m.edns.is_some(), edns.is_some());
            if let Some(e) = &m.edns {
                assert_eq!(e.max_payload(), 1232);
            }
        }
    }

    #[test]
    fn negative_answers_and_the_size_limit() {
        let (policy, settings) = policy_and_settings();
        let soa = SOA::new(
            DnsName::from_ascii("example.").unwrap(),
            DnsName::from_ascii("hostmaster.example.").unwrap(),
            1,
            3600,
            600,
            86400,
            300,
        );
        let response = cached(
            vec![],
            vec![record("example.", 300, RData::SOA(soa))],
            ResponseCode::NXDomain,
        );
        let wire = WireAnswer::build(
            &policy,
            &settings,
            GroupId(0),
            "nope.example",
            RecordType::A,
            &response,
            None,
        )
        .unwrap();
        let mut name = String::new();
        let q = request("nope.example.", RecordType::A, None);
        let mut out = Vec::new();
        assert!(wire.answer(&parse(&q, &mut name).unwrap(), 1000, &mut out));
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(m.authorities[0].ttl, 0, "TTLs never wrap below zero");

        // An answer bigger than 512 bytes for a client without EDNS: the full path
        // (which truncates) answers instead.
        let many: Vec<Record> = (0..40u8)
            .map(|i| {
                record(
                    "big.example.",
                    60,
                    RData::A(A(Ipv4Addr::new(93, 184, 216, i))),
                )
            })
            .collect();
        let wire = WireAnswer::build(
            &policy,
            &settings,
            GroupId(0),
            "big.example",
            RecordType::A,
            &cached(many, vec![], ResponseCode::NoError),
            None,
        )
        .unwrap();
        let q = request("big.example.", RecordType::A, None);
        assert!(!wire.answer(&parse(&q, &mut name).unwrap(), 0, &mut out));
        let q = request("big.example.", RecordType::A, Some(1232));
        assert!(wire.answer(&parse(&q, &mut name).unwrap(), 0, &mut out));
    }
}
