//! `CONNECT host:port`: approve, answer `200`, check the TLS ClientHello against the
//! approved host, then dial the checked address and relay.
//!
//! The ClientHello is read *before* the origin is dialled, so a refused tunnel (SNI
//! missing or naming another host, ECH, not TLS at all) never opens a connection.
//! The price: a connect failure after the `200` can only be told to the client as a
//! TLS alert (logged as 502/504). Ports in `opaque_ports` carry no TLS check: they are
//! dialled before the `200`, so their failures are proper 502/504 answers.

use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::ProxyState;
use super::budget::Held;
use super::check::{Approval, Asker, Kind};
use super::conn::{Received, dial_checked, log_allowed, log_close, log_refusal, refuse};
use super::error::{ProxyError, RefusalCode};
use super::http::{BodyFraming, RequestHead};
use super::relay::relay;
use super::sni::{self, ClientHello, alerts};
use super::target::{Host, Target, parse_authority};
use crate::policy::name::Name;

const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

pub(crate) async fn handle(
    state: &ProxyState,
    mut client: TcpStream,
    asker: &Asker,
    received: Received<'_>,
    stop: &CancellationToken,
) {
    let Received {
        head,
        head_len,
        rest: early,
        held,
        ..
    } = received;
    let raw = head.target.clone();
    let target = match target_of(&head) {
        Ok(t) => t,
        Err(err) => return refuse(&mut client, asker, "CONNECT", &raw, err).await,
    };
    let approval = match state.approve(asker, &target, Kind::Connect).await {
        Ok(a) => a,
        Err(refusal) => return refuse(&mut client, asker, "CONNECT", &raw, refusal).await,
    };
    let tunnel = Approved {
        state,
        asker,
        method: "CONNECT",
        raw,
        target,
        approval,
        stop,
    };
    if state.config.opaque_ports.contains(&tunnel.target.port) {
        tunnel.opaque(client, early, held).await;
    } else {
        tunnel.tls(client, early, held, head_len).await;
    }
}

/// The `host:port` of a CONNECT, which carries no body.
fn target_of(head: &RequestHead) -> Result<Target, ProxyError> {
    match head.framing()? {
        BodyFraming::None => parse_authority(&head.target).map_err(|error| ProxyError::BadTarget {
            target: head.target.clone(),
            error,
        }),
        _ => Err(ProxyError::BadRequest("CONNECT with a body".into())),
    }
}

/// A tunnel the policy approved: who asked, for what, and which addresses may be
/// dialled. A CONNECT, or a routed TLS connection (`crate::routed`).
pub(crate) struct Approved<'a> {
    pub(crate) state: &'a ProxyState,
    pub(crate) asker: &'a Asker,
    /// The decision lines' `method`: `CONNECT`, or `-` for a routed connection.
    pub(crate) method: &'static str,
    /// The request target as sent, for refusal lines.
    pub(crate) raw: String,
    pub(crate) target: Target,
    pub(crate) approval: Approval,
    /// The drain deadline passed: close the tunnel.
    pub(crate) stop: &'a CancellationToken,
}

impl Approved<'_> {
    /// The decision line of this tunnel, once `dialled` answered.
    fn log_allowed(&self, dialled: std::net::SocketAddr, sni: Option<&str>) {
        log_allowed(
            self.asker,
            self.method,
            &self.target,
            &self.approval,
            dialled,
            sni,
        );
    }

    /// A port in `opaque_ports`: dialled before the `200`, no TLS check.
    async fn opaque(self, mut client: TcpStream, early: Vec<u8>, held: Held<'_>) {
        let (mut origin, dialled) = match dial_checked(self.state, &self.approval.addrs).await {
            Ok(ok) => ok,
            Err(err) => return refuse(&mut client, self.asker, self.method, &self.raw, err).await,
        };
        if client.write_all(ESTABLISHED).await.is_err() {
            return;
        }
        self.log_allowed(dialled, None);
        drop(held);
        if !early.is_empty() && origin.write_all(&early).await.is_err() {
            return;
        }
        let sent = early.len() as u64;
        drop(early);
        self.relay(client, origin, dialled, sent).await;
    }

    /// Answers `200`, checks the ClientHello against the approved host, then dials.
    async fn tls(
        self,
        mut client: TcpStream,
        mut early: Vec<u8>,
        mut held: Held<'_>,
        head_len: usize,
    ) {
        if client.write_all(ESTABLISHED).await.is_err() {
            return;
        }
        let hello = tokio::select! {
            _ = self.stop.cancelled() => return,
            hello = tokio::time::timeout(
                self.state.config.client_hello_timeout(),
                read_client_hello(&mut client, &mut early, &mut held, head_len),
            ) => hello,
        };
        let hello = match hello {
            Err(_) => Err(ProxyError::forbidden(
                RefusalCode::ClientHelloTimeout,
                "no complete TLS ClientHello in time",
            )),
            Ok(hello) => hello,
        };
        match hello {
            Ok(hello) => self.pass(client, early, held, &hello).await,
            Err(err) => self.refuse_tls(client, &err, None).await,
        }
    }

    /// The ClientHello is read (`early` holds its bytes, `held` reserves them): checks it
    /// against the approval, dials a checked address, sends it the ClientHello and relays.
    /// Nothing is dialled for a ClientHello the approval does not admit.
    pub(crate) async fn pass(
        self,
        client: TcpStream,
        early: Vec<u8>,
        held: Held<'_>,
        hello: &ClientHello,
    ) {
        if let Err((err, alert)) = check_hello(&self.target, &self.approval, hello) {
            return self.refuse_tls(client, &err, alert).await;
        }
        let (mut origin, dialled) = match dial_checked(self.state, &self.approval.addrs).await {
            Ok(ok) => ok,
            Err(err) => {
                let alert = Some(alerts::INTERNAL_ERROR);
                return self.refuse_tls(client, &err, alert).await;
            }
        };
        self.log_allowed(dialled, hello.sni.as_deref());
        if origin.write_all(&early).await.is_err() {
            return;
        }
        let sent = early.len() as u64;
        drop(early);
        // A relaying tunnel holds no reservation (the relay's buffers are per thread).
        drop(held);
        self.relay(client, origin, dialled, sent).await;
    }

    /// Once the client speaks TLS the refusal can only be a TLS alert (if any) and a close.
    async fn refuse_tls(&self, client: TcpStream, err: &ProxyError, alert: Option<u8>) {
        let ids = &self.approval.answer_ids;
        refuse_tls(client, self.asker, self.method, &self.raw, err, alert, ids).await;
    }

    /// Relays until the tunnel ends; `sent`: bytes already written to the origin.
    async fn relay(self, client: TcpStream, origin: TcpStream, dialled: SocketAddr, sent: u64) {
        let started = Instant::now();
        let _tunnel = crate::telemetry::metrics::tunnel_open();
        let config = &self.state.config;
        let mut relayed = relay(
            &client,
            &origin,
            config.relay,
            config.idle_timeout(),
            config.tunnel_max(),
            self.stop.cancelled(),
        )
        .await;
        relayed.up += sent;
        log_close(
            self.asker,
            self.method,
            &self.target,
            dialled,
            &relayed,
            started,
        );
    }
}

/// Logs the refusal of a connection that speaks (or should speak) TLS, sends it `alert`
/// (none to a client that did not send a ClientHello) and closes.
pub(crate) async fn refuse_tls(
    mut client: TcpStream,
    asker: &Asker,
    method: &str,
    raw: &str,
    err: &ProxyError,
    alert: Option<u8>,
    answer_ids: &[u64],
) {
    log_refusal(asker, method, raw, err, answer_ids);
    if let Some(alert) = alert {
        let _ = client.write_all(&sni::alert(alert)).await;
    }
    let _ = client.shutdown().await;
}

/// Reads until the buffer holds a complete ClientHello (bounded by [`sni::MAX_CLIENT_HELLO`]).
/// `held` reserves `head_len` plus the buffer's capacity. The one reader of a tunnel's
/// ClientHello: CONNECT's and the routed TLS listener's.
pub(crate) async fn read_client_hello(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    held: &mut Held<'_>,
    head_len: usize,
) -> Result<ClientHello, ProxyError> {
    let refuse = |why: String| ProxyError::forbidden(RefusalCode::NotTls, why);
    loop {
        match sni::parse(buf) {
            Ok(Some(hello)) => return Ok(hello),
            Ok(None) => {}
            Err(e) => return Err(refuse(e.to_string())),
        }
        let mut chunk = [0u8; 2048];
        let n = client
            .read(&mut chunk)
            .await
            .map_err(|e| refuse(format!("reading the ClientHello: {e}")))?;
        if n == 0 {
            return Err(refuse(
                "the client closed before a complete ClientHello".into(),
            ));
        }
        held.resize(head_len + buf.capacity().max(buf.len() + n))?;
        buf.reserve_exact(n);
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The SNI must name the approved host (an IP-literal target: no SNI); ECH only where allowed.
fn check_hello(
    target: &Target,
    approval: &Approval,
    hello: &ClientHello,
) -> Result<(), (ProxyError, Option<u8>)> {
    if hello.ech && !approval.ech_ok {
        return Err((
            ProxyError::forbidden(
                RefusalCode::EchRefused,
                format!(
                    "Encrypted Client Hello to {} is not allowed (proxy.ech_hosts)",
                    target.host
                ),
            ),
            Some(alerts::ACCESS_DENIED),
        ));
    }
    let mismatch = |sni: &str| {
        (
            ProxyError::forbidden(
                RefusalCode::SniMismatch,
                format!(
                    "TLS server name {sni:?} is not the approved host {} (domain fronting)",
                    target.host
                ),
            ),
            Some(alerts::UNRECOGNIZED_NAME),
        )
    };
    match (&target.host, hello.sni.as_deref()) {
        (Host::Name(name), Some(sni)) => match Name::parse(sni) {
            Ok(sni_name) if sni_name == *name => Ok(()),
            _ => Err(mismatch(sni)),
        },
        (Host::Name(name), None) => Err((
            ProxyError::forbidden(
                RefusalCode::SniMissing,
                format!(
                    "the ClientHello names no server; the tunnel was approved for {}",
                    name.as_str()
                ),
            ),
            Some(alerts::UNRECOGNIZED_NAME),
        )),
        (Host::Ip(_), None) => Ok(()),
        (Host::Ip(_), Some(sni)) => Err(mismatch(sni)),
    }
}
