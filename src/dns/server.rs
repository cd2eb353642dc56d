//! DNS listeners (UDP and TCP through hickory-server) and the request glue.
//!
//! Servers take bound sockets and a shutdown signal (as in tokio's mini-redis),
//! so tests start them on port 0.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_net::runtime::Time;
use hickory_proto::op::{Edns, MessageType, ResponseCode};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo, Server};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};

use super::decision::log_decision;
use super::filter::Filter;
use super::request::{body_refusal, ede_option, header_refusal};

/// Bound DNS sockets: per configured address, one TCP listener and one UDP socket per
/// tokio worker.
pub struct DnsSockets {
    pub udp: Vec<UdpSocket>,
    pub tcp: Vec<TcpListener>,
}

impl DnsSockets {
    /// Binds UDP and TCP on every address. With port 0 the TCP listener takes the
    /// port the UDP socket got, so one port serves both. With more than one tokio
    /// worker, each address gets one UDP socket per worker (SO_REUSEPORT: the kernel
    /// spreads the clients over them, and each has a loop of its own); unpinned on two
    /// cores that served 12-38% more queries per second (BENCHMARKS.md).
    pub async fn bind(addrs: &[SocketAddr]) -> std::io::Result<DnsSockets> {
        let mut sockets = DnsSockets {
            udp: Vec::new(),
            tcp: Vec::new(),
        };
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        for addr in addrs {
            let mut attempt = 0;
            loop {
                // A plain bind first, also with several workers: it fails when anything
                // holds the port, which SO_REUSEPORT sockets of the same user would share.
                let udp = UdpSocket::bind(addr).await?;
                let bound = udp.local_addr()?;
                match TcpListener::bind(bound).await {
                    Ok(tcp) => {
                        if workers > 1 {
                            drop(udp);
                            for _ in 0..workers {
                                let shared = crate::sys::bind_udp_reuseport(bound)?;
                                sockets.udp.push(UdpSocket::from_std(shared)?);
                            }
                        } else {
                            sockets.udp.push(udp);
                        }
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

    /// One per configured address (the UDP sockets of an address share its port).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.tcp
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
    // One line per address, however many SO_REUSEPORT sockets (one per worker) serve it.
    let mut addrs: Vec<(std::net::SocketAddr, usize)> = Vec::new();
    for udp in &sockets.udp {
        let addr = udp.local_addr()?;
        match addrs.iter_mut().find(|(a, _)| *a == addr) {
            Some((_, n)) => *n += 1,
            None => addrs.push((addr, 1)),
        }
    }
    for (addr, n) in addrs {
        tracing::info!(%addr, sockets = n, "listening dns/udp");
    }
    for udp in sockets.udp {
        udp_loops.spawn(super::udp::serve_udp(
            udp,
            filter.clone(),
            log_allowed,
            stop_udp.clone(),
        ));
    }
    // One hickory server per TCP listener, so that its handler knows the address the
    // listener is bound to (routed answers carry it).
    let mut servers = Vec::new();
    for tcp in sockets.tcp {
        let bound = tcp.local_addr()?;
        tracing::info!(addr = %bound, "listening dns/tcp");
        let mut server = Server::new(Handler {
            filter: filter.clone(),
            log_allowed,
            local: Some(bound.ip()).filter(|ip| !ip.is_unspecified()),
        });
        server.register_listener(tcp, tcp_idle, 64);
        servers.push(server);
    }
    shutdown.await;
    stop_udp.cancel();
    for mut server in servers {
        server.shutdown_gracefully().await?;
    }
    while udp_loops.join_next().await.is_some() {}
    Ok(())
}

struct Handler {
    filter: Arc<Filter>,
    log_allowed: bool,
    /// The listener's address, unless a wildcard.
    local: Option<std::net::IpAddr>,
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

        let query = match (refusal(request), request.queries.queries()) {
            (None, [one]) => one.original().clone(),
            (code, _) => {
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

        let mut reply = if self.filter.limited(client.ip()) {
            self.filter.rate_refusal(client.ip(), &query)
        } else {
            self.filter.resolve(client.ip(), &query).await
        };
        if reply.outcome != super::filter::Outcome::Refused
            && self.filter.policy.load().dns.any_routed()
        {
            // A wildcard listener answers the address it reaches the client from.
            let local = self
                .local
                .or_else(|| crate::sys::local_address_towards(client.ip()));
            self.filter.route(client.ip(), local, &query, &mut reply);
        }

        metadata.response_code = reply.rcode;
        if let (Some(edns), Some((code, text))) = (response_edns.as_mut(), &reply.ede) {
            edns.options_mut().insert(ede_option(*code, text));
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

/// Why a request hickory-server decoded is not answered, if it is not: the rules the UDP
/// loop applies too. A response sent to the gate gets FORMERR here (the UDP loop drops it
/// so as not to reflect it, a risk a TCP handshake rules out).
fn refusal(request: &Request) -> Option<ResponseCode> {
    if request.metadata.message_type != MessageType::Query {
        return Some(ResponseCode::FormErr);
    }
    header_refusal(request.metadata.op_code, request.as_slice().len()).or_else(|| {
        body_refusal(
            request.queries.queries().len(),
            !request.answers.is_empty() || !request.authorities.is_empty(),
            request.edns.as_ref().map(Edns::version),
        )
    })
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
