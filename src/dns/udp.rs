//! The DNS-over-UDP listener.
//!
//! hickory-server's UDP loop spawns a task and allocates a buffer for every
//! datagram, with no bound; on the per-query hot path that cost more than the
//! filtering itself (see BENCHMARKS.md). This loop parses and encodes with
//! hickory-proto, answers everything that needs no upstream (blocks, local
//! names, fresh cache hits, malformed packets) inline from one reused buffer,
//! and spawns a task only for questions that go upstream; those are capped by
//! the filter's in-flight limit. DNS over TCP stays on hickory-server.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::decision::{Decision, log, log_decision};
use super::filter::{Filter, Outcome, Reply, Step};
use super::request::{MAX_QUERY_LEN, body_refusal, ede_option, header_refusal};
use super::wire;

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
    let pktinfo = wildcard
        && match crate::sys::enable_pktinfo(socket.as_raw_fd(), bound.is_some_and(|a| a.is_ipv6()))
        {
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
        pktinfo: pktinfo.then_some(bound.is_some_and(|a| a.is_ipv6())),
    };
    // Larger datagrams arrive cut to this size, which is past MAX_QUERY_LEN: FORMERR.
    let mut buf = vec![0u8; MAX_QUERY_LEN + 1];
    // The fast path's name and answer, reused.
    let mut name = String::with_capacity(wire::MAX_NAME);
    let mut out = Vec::with_capacity(1232);
    loop {
        let (len, client, local) = tokio::select! {
            received = listener.receive(&mut buf) => match received {
                Ok(received) => received,
                // ICMP errors from earlier sends surface here on Linux: not fatal.
                Err(error) => {
                    tracing::debug!(%error, "dns/udp receive error");
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let started = Instant::now();
        let datagram = &buf[..len];
        let to = Peer {
            addr: client,
            local,
        };
        if listener.over_limit(datagram, to, started).await {
            continue;
        }
        if !listener
            .answer_cached(datagram, to, started, &mut name, &mut out)
            .await
        {
            listener.answer_full(datagram, to, started).await;
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
    /// The next datagram: its length, source and (with `pktinfo`) destination address.
    async fn receive(
        &self,
        buf: &mut [u8],
    ) -> std::io::Result<(usize, SocketAddr, Option<IpAddr>)> {
        if self.pktinfo.is_none() {
            let (len, client) = self.socket.recv_from(buf).await?;
            return Ok((len, client, None));
        }
        let fd = self.socket.as_raw_fd();
        self.socket
            .async_io(tokio::io::Interest::READABLE, || {
                crate::sys::recv_with_destination(fd, buf)
            })
            .await
    }

    /// The rate limit, before any other work: `true` when the client is over it and was
    /// answered REFUSED (or, for what does not parse, nothing).
    async fn over_limit(&self, datagram: &[u8], to: Peer, started: Instant) -> bool {
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
            self.send(&bytes, to).await;
        }
        true
    }

    /// The fast path: a fresh cached answer already encoded for the client's group.
    /// `false`: nothing was sent; take the full path.
    async fn answer_cached(
        &self,
        datagram: &[u8],
        to: Peer,
        started: Instant,
        name: &mut String,
        out: &mut Vec<u8>,
    ) -> bool {
        let Some(fast) = wire::parse(datagram, name) else {
            return false;
        };
        let Some((cached, encoded)) = self.filter.answer_cached(to.addr.ip(), &fast, name, out)
        else {
            return false;
        };
        self.send(out, to).await;
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

    /// The full path: decode, refuse the malformed, answer inline what needs no
    /// upstream, and spawn a task for the rest.
    async fn answer_full(&self, datagram: &[u8], to: Peer, started: Instant) {
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
                    self.send(&bytes, to).await;
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
                    self.send(&bytes, to).await;
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

    async fn send(&self, bytes: &[u8], to: Peer) {
        send(&self.socket, self.pktinfo, bytes, to).await;
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
}
