//! The DNS-over-UDP listener.
//!
//! hickory-server's UDP loop spawns a task and allocates a buffer for every
//! datagram, with no bound; on the per-query hot path that cost more than the
//! filtering itself (see BENCHMARKS.md). This loop parses and encodes with
//! hickory-proto, answers everything that needs no upstream (blocks, local
//! names, fresh cache hits, malformed packets) inline from one reused buffer
//! (cache hits and most blocks and refusals straight from the request's bytes, see `wire`),
//! and spawns a task only for questions that go upstream; those are capped by
//! the filter's in-flight limit. Datagrams come in with one `recvmmsg` per batch
//! and the batch's inline answers leave with one `sendmmsg` (the kernel's UDP path
//! per system call was most of a cached answer's cost; see BENCHMARKS.md). DNS over
//! TCP stays on hickory-server.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::decision::{Decision, LineBatch, log, log_decision};
use super::filter::{FastMiss, Filter, Outcome, Reply, Step};
use super::request::{MAX_QUERY_LEN, body_refusal, ede_option, header_refusal};
use super::wire;
use crate::sys::{RecvBatch, SendBatch};

/// What a parsed request needs for its response. (Public, like [`parse`], [`encode`]
/// and [`encode_error`], for the fuzz targets in `fuzz/`.)
pub struct Request {
    pub id: u16,
    pub recursion_desired: bool,
    pub checking_disabled: bool,
    pub query: Query,
    /// The client's advertised UDP payload size, when it sent EDNS.
    pub edns_payload: Option<u16>,
}

/// What the full path makes of a datagram.
pub enum Parsed {
    /// Not worth an answer: too short for a header, or a response (reflection).
    Drop,
    /// Answer with this code and no question.
    Error {
        header: Header,
        rcode: ResponseCode,
        edns: bool,
    },
    Query(Request),
}

/// Classifies a datagram the fast path declined.
pub fn parse(bytes: &[u8]) -> Parsed {
    let Ok(header) = Header::read(&mut BinDecoder::new(bytes)) else {
        return Parsed::Drop;
    };
    if header.metadata.message_type == MessageType::Response {
        return Parsed::Drop;
    }
    let error = |rcode, edns| Parsed::Error {
        header,
        rcode,
        edns,
    };
    if let Some(rcode) = header_refusal(header.metadata.op_code, bytes.len()) {
        return error(rcode, false);
    }
    let Ok(message) = Message::from_vec(bytes) else {
        return error(ResponseCode::FormErr, false);
    };
    if let Some(rcode) = body_refusal(
        message.queries.len(),
        !message.answers.is_empty() || !message.authorities.is_empty(),
        message.edns.as_ref().map(Edns::version),
    ) {
        // BADVERS implies EDNS; a FORMERR carries it when the query did.
        return error(rcode, message.edns.is_some());
    }
    let mut message = message;
    Parsed::Query(Request {
        id: message.metadata.id,
        recursion_desired: message.metadata.recursion_desired,
        checking_disabled: message.metadata.checking_disabled,
        query: message.queries.swap_remove(0),
        edns_payload: message.edns.as_ref().map(Edns::max_payload),
    })
}

fn response_edns(rcode: ResponseCode, ede: Option<&(u16, String)>) -> Edns {
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    edns.set_rcode_high(rcode.high());
    if let Some((code, text)) = ede {
        edns.options_mut().insert(ede_option(*code, text));
    }
    edns
}

/// Encodes a refusal that carries no question.
pub fn encode_error(header: &Header, rcode: ResponseCode, edns: bool) -> Option<Vec<u8>> {
    let mut m = Message::new(
        header.metadata.id,
        MessageType::Response,
        header.metadata.op_code,
    );
    m.metadata.recursion_desired = header.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.response_code = rcode;
    if edns {
        m.edns = Some(response_edns(rcode, None));
    }
    m.to_vec().ok()
}

/// Encodes a reply, truncating (TC) to what the client can take over UDP.
pub fn encode(request: &Request, reply: Reply) -> Option<Vec<u8>> {
    let mut m = Message::new(request.id, MessageType::Response, OpCode::Query);
    m.metadata.recursion_desired = request.recursion_desired;
    m.metadata.checking_disabled = request.checking_disabled;
    m.metadata.recursion_available = true;
    m.metadata.response_code = reply.rcode;
    m.queries.push(request.query.clone());
    m.answers = reply.answers;
    m.authorities = reply.authorities;
    if request.edns_payload.is_some() {
        m.edns = Some(response_edns(reply.rcode, reply.ede.as_ref()));
    }
    let limit = usize::from(request.edns_payload.unwrap_or(512).clamp(512, 4096));
    let bytes = m.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    m.answers.clear();
    m.authorities.clear();
    m.metadata.truncation = true;
    m.to_vec().ok()
}

/// Serves DNS over UDP on `socket` until `shutdown` is cancelled, then waits for
/// the queries already sent upstream.
///
/// Datagrams are taken in batches: once the socket is readable, one `recvmmsg` takes up
/// to [`crate::sys::BATCH`] of those queued; each is answered in turn (rate limit, fast
/// path, full path), and the answers ready by the end of the batch leave in one
/// `sendmmsg`. Questions sent upstream answer on their own, when their answer comes.
pub async fn serve_udp(
    socket: UdpSocket,
    filter: Arc<Filter>,
    log_allowed: bool,
    shutdown: CancellationToken,
) {
    // A socket bound to a wildcard learns each datagram's destination (routed answers
    // carry it); one bound to an address knows it.
    let bound = socket.local_addr().ok();
    let wildcard = bound.is_some_and(|a| a.ip().is_unspecified());
    let v6 = bound.is_some_and(|a| a.is_ipv6());
    let pktinfo = wildcard
        && match crate::sys::enable_pktinfo(socket.as_raw_fd(), v6) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, "dns/udp: no IP_PKTINFO: routed answers will carry the address the gate reaches each client from");
                false
            }
        };
    let listener = Listener {
        socket: Arc::new(socket),
        filter,
        log_allowed,
        tasks: TaskTracker::new(),
        local: bound.map(|a| a.ip()).filter(|ip| !ip.is_unspecified()),
        pktinfo: pktinfo.then_some(v6),
    };
    let fd = listener.socket.as_raw_fd();
    // Larger datagrams arrive cut to this size, which is past MAX_QUERY_LEN: FORMERR.
    let mut batch = RecvBatch::new(MAX_QUERY_LEN + 1);
    let mut replies = SendBatch::new(v6);
    // The fast path's name, reused.
    let mut name = String::with_capacity(wire::MAX_NAME);
    // The fast path's decision text (a block's reason, a refusal's), reused.
    let mut text = String::with_capacity(256);
    // Datagrams answered since this loop last gave its worker up (see below).
    let mut since_yield = 0;
    loop {
        tokio::select! {
            received = listener.socket.async_io(tokio::io::Interest::READABLE, || {
                crate::sys::recv_batch(fd, &mut batch)
            }) => {
                // ICMP errors from earlier sends surface here on Linux: not fatal.
                if let Err(error) = received {
                    tracing::debug!(%error, "dns/udp receive error");
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        }
        let lines = LineBatch::begin();
        for i in 0..batch.len() {
            let (datagram, client, local) = batch.get(i);
            let started = Instant::now();
            let to = Peer {
                addr: client,
                local,
            };
            if listener.over_limit(datagram, to, started, &mut replies) {
                continue;
            }
            if !listener.answer_fast(datagram, to, started, &mut name, &mut text, &mut replies) {
                listener.answer_full(datagram, to, started, &mut replies);
            }
        }
        drop(lines);
        listener.flush(&mut replies).await;
        // Tokio's budget makes a task that is always ready yield after 128 awaits: once
        // per datagram with one receive each, once per 128 batches now. Yield as often
        // per datagram as before, so that tasks sharing the worker (answers from the
        // upstreams, TCP, timers) wait no longer behind a flood.
        since_yield += batch.len();
        if since_yield >= 128 {
            since_yield = 0;
            tokio::task::yield_now().await;
        }
    }
    listener.tasks.close();
    listener.tasks.wait().await;
}

/// One UDP socket's loop state: what every datagram is answered with.
struct Listener {
    socket: Arc<UdpSocket>,
    filter: Arc<Filter>,
    log_allowed: bool,
    /// Questions sent upstream, awaited at shutdown.
    tasks: TaskTracker,
    /// The address the socket is bound to, unless a wildcard.
    local: Option<IpAddr>,
    /// A wildcard socket with IP_PKTINFO on (`Some(true)`: IPv6): each datagram's
    /// destination is read, and the answer is sent from it.
    pktinfo: Option<bool>,
}

/// Who a datagram came from, and the local address it was sent to (wildcard sockets).
#[derive(Clone, Copy)]
struct Peer {
    addr: SocketAddr,
    local: Option<IpAddr>,
}

impl Listener {
    /// Where an answer to `to` must come from: its datagram's destination, on a wildcard
    /// socket with IP_PKTINFO (`None`: wherever the kernel sends from).
    fn source(&self, to: Peer) -> Option<IpAddr> {
        self.pktinfo.and(to.local)
    }

    /// Queues `bytes` for `to` in this batch's answers.
    fn reply(&self, replies: &mut SendBatch, bytes: &[u8], to: Peer) {
        if let Err(error) = replies.push(bytes, to.addr, self.source(to)) {
            tracing::debug!(%error, client = %to.addr, "dns/udp send failed");
        }
    }

    /// Sends the batch's answers: what the kernel refuses for a full buffer waits until the
    /// socket is writable again (the next datagrams wait meanwhile, and the kernel drops
    /// what no longer fits in the receive buffer, as it would for a slow server); an answer
    /// the kernel refuses otherwise (an unreachable client) is dropped, logged at debug
    /// level, as a single send's would be.
    async fn flush(&self, replies: &mut SendBatch) {
        let fd = self.socket.as_raw_fd();
        while replies.pending() > 0 {
            let sent = match crate::sys::send_batch(fd, replies) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.socket
                        .async_io(tokio::io::Interest::WRITABLE, || {
                            crate::sys::send_batch(fd, replies)
                        })
                        .await
                }
                other => other,
            };
            if let Err(error) = sent {
                tracing::debug!(%error, client = ?replies.next_peer(), "dns/udp send failed");
                replies.skip();
            }
        }
        replies.clear();
    }

    /// The rate limit, before any other work: `true` when the client is over it and was
    /// answered REFUSED (or, for what does not parse, nothing).
    fn over_limit(
        &self,
        datagram: &[u8],
        to: Peer,
        started: Instant,
        replies: &mut SendBatch,
    ) -> bool {
        if !self.filter.limited(to.addr.ip()) {
            return false;
        }
        let Parsed::Query(request) = parse(datagram) else {
            // Malformed and over the limit: not worth an answer.
            return true;
        };
        let reply = self.filter.rate_refusal(to.addr.ip(), &request.query);
        log_decision(&reply, to.addr, &request.query, started, self.log_allowed);
        if let Some(bytes) = encode(&request, reply) {
            self.reply(replies, &bytes, to);
        }
        true
    }

    /// The fast paths, for a request [`wire::parse`] takes: a fresh cached answer
    /// already encoded for the client's group, written straight into the batch's next
    /// answer; for a name not cached, a block or refusal written from the request's bytes
    /// ([`Self::answer_local`]). `false`: nothing was queued; take the full path.
    fn answer_fast(
        &self,
        datagram: &[u8],
        to: Peer,
        started: Instant,
        name: &mut String,
        text: &mut String,
        replies: &mut SendBatch,
    ) -> bool {
        let Some(fast) = wire::parse(datagram, name) else {
            return false;
        };
        let out = replies.next_buffer();
        let (cached, encoded) = match self.filter.answer_cached(to.addr.ip(), &fast, name, out) {
            Ok(found) => found,
            Err(FastMiss::Declined) => return false,
            Err(FastMiss::NotCached) => {
                return self.answer_local(&fast, to, started, name, text, replies);
            }
        };
        if let Err(error) = replies.commit(to.addr, self.source(to)) {
            tracing::debug!(%error, client = %to.addr, "dns/udp send failed");
        }
        log(
            &Decision {
                client: to.addr,
                name,
                qtype: fast.qtype,
                outcome: Outcome::Cached,
                rcode: cached.rcode,
                reason: Outcome::Cached.as_str(),
                list: None,
                rule: encoded.rule.as_deref(),
                upstream: Some(&cached.upstream),
                answer_id: Some(cached.answer_id),
                answers: encoded.answers,
                started,
                group: None,
                would_refuse: None,
                refusal: None,
                routed_to: None,
            },
            self.log_allowed,
        );
        true
    }

    /// The fast path for what the policy answers here (blocks, refusals): see
    /// [`Filter::answer_local`]. `false`: nothing was queued; take the full path.
    fn answer_local(
        &self,
        fast: &wire::FastQuery,
        to: Peer,
        started: Instant,
        name: &str,
        text: &mut String,
        replies: &mut SendBatch,
    ) -> bool {
        let out = replies.next_buffer();
        let logged = self
            .filter
            .answer_local(to.addr.ip(), fast, name, out, text, |d| {
                log(
                    &Decision {
                        client: to.addr,
                        name,
                        qtype: fast.qtype,
                        outcome: d.outcome,
                        rcode: d.rcode,
                        reason: d.reason,
                        list: d.list,
                        rule: d.rule,
                        upstream: None,
                        answer_id: None,
                        answers: 0,
                        started,
                        group: d.group,
                        would_refuse: None,
                        refusal: d.refusal,
                        routed_to: None,
                    },
                    self.log_allowed,
                )
            });
        if logged.is_none() {
            return false;
        }
        if let Err(error) = replies.commit(to.addr, self.source(to)) {
            tracing::debug!(%error, client = %to.addr, "dns/udp send failed");
        }
        true
    }

    /// The full path: decode, refuse the malformed, answer inline what needs no
    /// upstream (queued in the batch), and spawn a task for the rest.
    fn answer_full(&self, datagram: &[u8], to: Peer, started: Instant, replies: &mut SendBatch) {
        let client = to.addr;
        let request = match parse(datagram) {
            Parsed::Drop => return,
            Parsed::Error {
                header,
                rcode,
                edns,
            } => {
                tracing::debug!(%client, %rcode, "refused a malformed request");
                if let Some(bytes) = encode_error(&header, rcode, edns) {
                    self.reply(replies, &bytes, to);
                }
                return;
            }
            Parsed::Query(request) => request,
        };
        let log_allowed = self.log_allowed;
        let local = to.local.or(self.local);
        match self.filter.begin(client.ip(), &request.query) {
            Step::Done(mut reply) => {
                self.filter
                    .route(client.ip(), local, &request.query, &mut reply);
                log_decision(&reply, client, &request.query, started, log_allowed);
                if let Some(bytes) = encode(&request, reply) {
                    self.reply(replies, &bytes, to);
                }
            }
            Step::Forward(pending) => {
                let (filter, socket, pktinfo) =
                    (self.filter.clone(), self.socket.clone(), self.pktinfo);
                self.tasks.spawn(async move {
                    let mut reply = filter.finish(pending).await;
                    filter.route(client.ip(), local, &request.query, &mut reply);
                    log_decision(&reply, client, &request.query, started, log_allowed);
                    if let Some(bytes) = encode(&request, reply) {
                        send(&socket, pktinfo, &bytes, to).await;
                    }
                });
            }
        }
    }
}

/// Sends an answer; from a wildcard socket, from the address the question was sent to.
async fn send(socket: &UdpSocket, pktinfo: Option<bool>, bytes: &[u8], to: Peer) {
    let client = to.addr;
    let result = match (pktinfo, to.local) {
        (Some(v6), Some(from)) => {
            let fd = socket.as_raw_fd();
            match crate::sys::send_from(fd, bytes, client, from, v6) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    socket
                        .async_io(tokio::io::Interest::WRITABLE, || {
                            crate::sys::send_from(fd, bytes, client, from, v6)
                        })
                        .await
                }
                other => other,
            }
        }
        // Non-blocking first: the common case needs no await.
        _ => match socket.try_send_to(bytes, client) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                socket.send_to(bytes, client).await
            }
            other => other,
        },
    };
    if let Err(error) = result {
        tracing::debug!(%error, %client, "dns/udp send failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::filter::Outcome;
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    fn request(edns_payload: Option<u16>) -> Request {
        Request {
            id: 9,
            recursion_desired: true,
            checking_disabled: false,
            query: Query::query(Name::from_ascii("big.example.").unwrap(), RecordType::A),
            edns_payload,
        }
    }

    fn big_reply() -> Reply {
        let mut reply = Reply::new(ResponseCode::NoError, Outcome::Forwarded, "forwarded");
        for i in 1..=60u8 {
            reply.answers.push(Record::from_rdata(
                Name::from_ascii("big.example.").unwrap(),
                60,
                RData::A(A::new(93, 184, 216, i)),
            ));
        }
        reply
    }

    #[test]
    fn answers_too_big_for_the_client_are_truncated_whole() {
        let bytes = encode(&request(None), big_reply()).unwrap();
        assert!(bytes.len() <= 512);
        let m = Message::from_vec(&bytes).unwrap();
        assert!(m.metadata.truncation);
        assert!(m.answers.is_empty(), "{} answers", m.answers.len());
        let bytes = encode(&request(Some(4096)), big_reply()).unwrap();
        let m = Message::from_vec(&bytes).unwrap();
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 60);
    }

    #[test]
    fn malformed_requests_are_classified() {
        assert!(matches!(parse(&[0; 5]), Parsed::Drop));
        let mut q = Message::new(1, MessageType::Query, OpCode::Query);
        q.queries.push(Query::query(
            Name::from_ascii("a.example.").unwrap(),
            RecordType::A,
        ));
        let good = q.to_vec().unwrap();
        assert!(matches!(parse(&good), Parsed::Query(_)));
        let mut notify = good.clone();
        notify[2] |= 4 << 3; // opcode NOTIFY
        assert!(matches!(
            parse(&notify),
            Parsed::Error {
                rcode: ResponseCode::NotImp,
                ..
            }
        ));
        let mut response = good.clone();
        response[2] |= 0x80;
        assert!(matches!(parse(&response), Parsed::Drop));
    }

    /// A filter over `dns` (lines under `[dns]`) and a threat list, with no upstream
    /// ever asked (the tests take only the paths that answer here).
    fn filter(dns: &str) -> Filter {
        use crate::dns::cache::Cache;
        use crate::dns::filter::FilterSettings;
        use crate::dns::upstream::UpstreamPool;
        let text = format!(
            r#"
[dns]
{dns}
rate_limit.queries = 0
[[upstream.servers]]
url = "udp://127.0.0.1:9"
[groups]
agent = ["127.0.0.2/32"]
reporter = ["127.0.0.3/32"]
[[lists]]
name = "threats"
inline = "evil.example\n*.ads.example\n=exact.example\n/^track[0-9]+\\./\n={long}\n"
"#,
            long = long_name(),
        );
        let config =
            crate::config::Config::parse(&text, "test.toml", std::path::Path::new("/nonexistent"))
                .unwrap();
        let loaded = crate::lists::load::build_policy(&config).unwrap();
        let upstream = UpstreamPool::new(
            &config.upstream.servers,
            config.upstream.strategy,
            std::time::Duration::from_secs(1),
        )
        .unwrap();
        Filter::new(
            Arc::new(arc_swap::ArcSwap::from_pointee(loaded.policy)),
            Arc::new(upstream),
            Cache::new(&config.cache),
            FilterSettings::from(&config.dns),
            64,
        )
    }

    /// A listed name of 247 characters: its block's reason is longer than the 200 bytes
    /// of EDE text an answer carries.
    fn long_name() -> String {
        format!(
            "{a}.{b}.{c}.{d}.example",
            a = "a".repeat(63),
            b = "b".repeat(63),
            c = "c".repeat(63),
            d = "d".repeat(47)
        )
    }

    fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::new(0x5eed, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.metadata.checking_disabled = edns.is_some();
        m.queries
            .push(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some(payload) = edns {
            let mut e = Edns::new();
            e.set_max_payload(payload);
            m.edns = Some(e);
        }
        m.to_vec().unwrap()
    }

    /// What the fast path for local answers writes (`None`: it declined), and what the
    /// full path encodes, for one datagram from `client`.
    fn both_paths(filter: &Filter, client: IpAddr, datagram: &[u8]) -> (Option<Vec<u8>>, Vec<u8>) {
        let (mut name, mut text, mut out) = (String::new(), String::new(), Vec::new());
        let fast = wire::parse(datagram, &mut name).expect("a plain query");
        let logged = filter.answer_local(client, &fast, &name, &mut out, &mut text, |d| {
            (d.outcome, d.reason.to_owned(), d.list.map(str::to_owned))
        });
        let Parsed::Query(request) = parse(datagram) else {
            panic!("the full path refused a plain query")
        };
        let Step::Done(reply) = filter.begin(client, &request.query) else {
            panic!("{} went upstream", request.query.name())
        };
        let outcome = (reply.outcome, reply.reason.clone(), reply.list.clone());
        if let Some(logged) = &logged {
            assert_eq!(
                logged, &outcome,
                "the fast path logs what the full path does"
            );
        }
        (logged.map(|_| out), encode(&request, reply).unwrap())
    }

    fn decoded(bytes: &[u8]) -> Message {
        Message::from_vec(bytes).unwrap_or_else(|e| panic!("{e}: {bytes:02x?}"))
    }

    /// Blocks and refusals written from the request's bytes decode to exactly what the
    /// full path encodes: rcode, flags, the question as asked, the SOA (the listed zone's
    /// for a rule with subdomains), the EDNS record and its Extended DNS Error.
    #[test]
    fn local_answers_on_the_fast_path_decode_as_the_full_path_encodes() {
        let public: IpAddr = "127.0.0.1".parse().unwrap();
        let agent: IpAddr = "127.0.0.2".parse().unwrap();
        let cases: &[(&str, IpAddr, &str, RecordType)] = &[
            ("", public, "evil.example.", RecordType::A),
            ("", public, "Deep.Sub.EVIL.example.", RecordType::AAAA),
            ("", public, "x.ads.example.", RecordType::TXT),
            ("", public, "exact.example.", RecordType::A),
            ("", public, "Track7.example.", RecordType::A),
            (
                "block_answer = \"refused\"",
                public,
                "a.evil.example.",
                RecordType::A,
            ),
            (
                "modes = { agent = \"allowlist\" }",
                agent,
                "nope.example.",
                RecordType::A,
            ),
            (
                "modes = { agent = \"allowlist\" }\nnot_allowed = \"refused\"",
                agent,
                "Nope.Example.",
                RecordType::MX,
            ),
            (
                "qtypes = { agent = [\"A\"] }",
                agent,
                "fine.example.",
                RecordType::TXT,
            ),
            (
                "qtypes = { agent = [\"A\"] }\nqtype_answer = \"notimp\"",
                agent,
                "fine.example.",
                RecordType::SRV,
            ),
        ];
        for &(dns, client, name, qtype) in cases {
            let filter = filter(dns);
            for edns in [None, Some(1232), Some(4096)] {
                let datagram = query(name, qtype, edns);
                let (fast, full) = both_paths(&filter, client, &datagram);
                let fast = fast.unwrap_or_else(|| panic!("[{dns}] {name} {qtype}: declined"));
                assert_eq!(
                    decoded(&fast),
                    decoded(&full),
                    "[{dns}] {name} {qtype} {edns:?}"
                );
                assert!(fast.len() <= 512);
            }
        }
    }

    /// The fast path leaves to the full path what it does not write itself: names to
    /// forward, special-use names, reporting groups (the learner hears them on the full
    /// path), block answers with addresses, and an answer too big for the client.
    #[test]
    fn the_fast_path_declines_what_the_full_path_must_answer() {
        let public: IpAddr = "127.0.0.1".parse().unwrap();
        let reporter: IpAddr = "127.0.0.3".parse().unwrap();
        let (mut name, mut text, mut out) = (String::new(), String::new(), Vec::new());
        let declined = |filter: &Filter, client: IpAddr, qname: &str| {
            let (mut name, mut text, mut out) = (String::new(), String::new(), Vec::new());
            let datagram = query(qname, RecordType::A, Some(1232));
            let fast = wire::parse(&datagram, &mut name).unwrap();
            filter
                .answer_local(client, &fast, &name, &mut out, &mut text, |_| ())
                .is_none()
        };
        let plain = filter("");
        assert!(declined(&plain, public, "fine.example."), "forwarded");
        assert!(declined(&plain, public, "localhost."), "special-use");
        let report = filter("modes = { reporter = \"report\" }");
        assert!(declined(&report, reporter, "evil.example."), "reported");
        assert!(!declined(&report, public, "evil.example."), "not reported");
        let zero = filter("block_answer = \"zero_ip\"");
        assert!(declined(&zero, public, "evil.example."), "zero_ip");
        // The long listed name: with a 1232-byte payload its answer is written, the EDE
        // text cut at 200 bytes as the full path cuts it; with 512 bytes it does not fit,
        // and the full path answers truncated.
        let long = format!("{}.", long_name());
        let datagram = query(&long, RecordType::A, Some(1232));
        let fast = wire::parse(&datagram, &mut name).unwrap();
        let written = plain.answer_local(public, &fast, &name, &mut out, &mut text, |_| ());
        assert!(written.is_some() && text.len() > 200, "{text}");
        let (_, full) = both_paths(&plain, public, &datagram);
        assert_eq!(decoded(&out), decoded(&full));
        let datagram = query(&long, RecordType::A, Some(512));
        let fast = wire::parse(&datagram, &mut name).unwrap();
        let written = plain.answer_local(public, &fast, &name, &mut out, &mut text, |_| ());
        assert!(
            written.is_none(),
            "{} bytes for a 512-byte payload",
            out.len()
        );
        let (_, full) = both_paths(&plain, public, &datagram);
        assert!(full.len() <= 512 && decoded(&full).metadata.truncation);
    }
}
