//! DNS listeners (UDP and TCP through hickory-server) and the request glue.
//!
//! Servers take bound sockets and a shutdown signal (as in tokio's mini-redis),
//! so tests start them on port 0.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_net::runtime::Time;
use hickory_proto::op::{Edns, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo, Server};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};

use super::filter::{Filter, Outcome, Reply};

/// No single-question query is longer: 12 header + 255 name + 4 + OPT with options
/// (cookies, padding). Anything longer is malformed (FORMERR).
pub(crate) const MAX_QUERY_LEN: usize = 1232;

/// Bound DNS sockets: one UDP socket and one TCP listener per configured address.
pub struct DnsSockets {
    pub udp: Vec<UdpSocket>,
    pub tcp: Vec<TcpListener>,
}

impl DnsSockets {
    /// Binds UDP and TCP on every address. With port 0 the TCP listener takes the
    /// port the UDP socket got, so one port serves both.
    pub async fn bind(addrs: &[SocketAddr]) -> std::io::Result<DnsSockets> {
        let mut sockets = DnsSockets {
            udp: Vec::new(),
            tcp: Vec::new(),
        };
        for addr in addrs {
            let mut attempt = 0;
            loop {
                let udp = UdpSocket::bind(addr).await?;
                let bound = udp.local_addr()?;
                match TcpListener::bind(bound).await {
                    Ok(tcp) => {
                        sockets.udp.push(udp);
                        sockets.tcp.push(tcp);
                        break;
                    }
                    // The UDP port picked for port 0 may be taken on TCP: try another.
                    Err(_) if addr.port() == 0 && attempt < 10 => attempt += 1,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(sockets)
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.udp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }
}

/// Serves DNS on the given sockets until `shutdown` completes, then stops accepting
/// and lets in-flight queries finish.
pub async fn serve(
    sockets: DnsSockets,
    filter: Arc<Filter>,
    tcp_idle: Duration,
    log_allowed: bool,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // UDP: our own loop (see udp.rs); TCP: hickory-server.
    let stop_udp = tokio_util::sync::CancellationToken::new();
    let mut udp_loops = tokio::task::JoinSet::new();
    for udp in sockets.udp {
        tracing::info!(addr = %udp.local_addr()?, "listening dns/udp");
        udp_loops.spawn(super::udp::serve_udp(
            udp,
            filter.clone(),
            log_allowed,
            stop_udp.clone(),
        ));
    }
    let mut server = Server::new(Handler {
        filter,
        log_allowed,
    });
    for tcp in sockets.tcp {
        tracing::info!(addr = %tcp.local_addr()?, "listening dns/tcp");
        server.register_listener(tcp, tcp_idle, 64);
    }
    shutdown.await;
    stop_udp.cancel();
    server.shutdown_gracefully().await?;
    while udp_loops.join_next().await.is_some() {}
    Ok(())
}

struct Handler {
    filter: Arc<Filter>,
    log_allowed: bool,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let client = request.src();
        let mut response_edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_max_payload(req.max_payload().clamp(512, 4096));
            edns
        });
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut metadata = hickory_proto::op::Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;

        let early_error = if request.metadata.message_type != MessageType::Query
            || request.as_slice().len() > MAX_QUERY_LEN
            || !request.answers.is_empty()
            || !request.authorities.is_empty()
        {
            Some(ResponseCode::FormErr)
        } else if request.metadata.op_code != OpCode::Query {
            Some(ResponseCode::NotImp)
        } else if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            Some(ResponseCode::BADVERS)
        } else {
            None
        };
        let query = match (early_error, request.queries.queries()) {
            (None, [one]) => one.original().clone(),
            (code, _) => {
                // Exactly one question is what every resolver sends (RFC 9619).
                let code = code.unwrap_or(ResponseCode::FormErr);
                metadata.response_code = code;
                if code == ResponseCode::BADVERS
                    && let Some(edns) = response_edns.as_mut()
                {
                    edns.set_rcode_high(code.high());
                }
                tracing::debug!(%client, rcode = %code, "refused a malformed request");
                let builder = match &response_edns {
                    Some(edns) => {
                        let mut b = builder;
                        b.edns(edns);
                        b
                    }
                    None => builder,
                };
                return send(
                    &mut response_handle,
                    builder.build_no_records(metadata),
                    request,
                )
                .await;
            }
        };

        let reply = self.filter.resolve(client.ip(), &query).await;

        metadata.response_code = reply.rcode;
        if let (Some(edns), Some((code, text))) = (response_edns.as_mut(), &reply.ede) {
            let mut data = code.to_be_bytes().to_vec();
            // Keep the text short enough for a 512-byte answer.
            data.extend(text.bytes().take(200));
            edns.options_mut()
                .insert(EdnsOption::Unknown(u16::from(EdnsCode::Unknown(15)), data));
        }
        log_decision(&reply, client, &query, started, self.log_allowed);
        let mut builder = builder;
        if let Some(edns) = &response_edns {
            builder.edns(edns);
        }
        let response = builder.build(
            metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty(),
            std::iter::empty(),
        );
        send(&mut response_handle, response, request).await
    }
}

async fn send<'a, R: ResponseHandler>(
    handle: &mut R,
    response: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
    >,
    request: &Request,
) -> ResponseInfo {
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            tracing::debug!(%error, client = %request.src(), "could not send a DNS response");
            let mut metadata =
                hickory_proto::op::Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            hickory_proto::op::Header {
                metadata,
                counts: Default::default(),
            }
            .into()
        }
    }
}

/// One decision line's fields.
pub(crate) struct Decision<'a> {
    pub client: SocketAddr,
    /// Lower case, no trailing dot.
    pub name: &'a str,
    pub qtype: hickory_proto::rr::RecordType,
    pub outcome: Outcome,
    pub rcode: hickory_proto::op::ResponseCode,
    pub reason: &'a str,
    pub list: Option<&'a str>,
    pub rule: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub answer_id: Option<u64>,
    pub answers: usize,
    pub started: Instant,
}

/// Counts a query in the metrics and writes its decision line (allowed queries only
/// when `log_allowed`).
pub(crate) fn log_decision(
    reply: &Reply,
    client: SocketAddr,
    query: &hickory_proto::op::Query,
    started: Instant,
    log_allowed: bool,
) {
    let mut name = query.name().to_ascii();
    name.make_ascii_lowercase();
    let name = name.strip_suffix('.').unwrap_or(&name);
    log(
        &Decision {
            client,
            name,
            qtype: query.query_type(),
            outcome: reply.outcome,
            rcode: reply.rcode,
            reason: &reply.reason,
            list: reply.list.as_deref(),
            rule: reply.rule.as_deref(),
            upstream: reply.upstream.as_deref(),
            answer_id: reply.answer_id,
            answers: reply.answers.len(),
            started,
        },
        log_allowed,
    );
}

pub(crate) fn log(d: &Decision, log_allowed: bool) {
    crate::telemetry::metrics::dns_query(d.qtype, d.outcome, d.list);
    let quiet = matches!(d.outcome, Outcome::Forwarded | Outcome::Cached);
    if (quiet && !log_allowed)
        || !tracing::enabled!(target: "portcullis::decision", tracing::Level::INFO)
    {
        return;
    }
    tracing::info!(
        target: "portcullis::decision",
        door = "dns",
        client = %d.client.ip(),
        name = d.name,
        qtype = %d.qtype,
        outcome = d.outcome.as_str(),
        rcode = %d.rcode,
        reason = d.reason,
        list = d.list,
        rule = d.rule,
        upstream = d.upstream,
        answer_id = d.answer_id,
        answers = d.answers,
        duration_us = d.started.elapsed().as_micros() as u64,
        "dns decision"
    );
}
