//! `CONNECT host:port`: approve, answer `200`, check the TLS ClientHello against the
//! approved host, then dial the checked address and relay.
//!
//! The ClientHello is read *before* the origin is dialled, so a refused tunnel (SNI
//! missing or naming another host, ECH, not TLS at all) never opens a connection.
//! The price: a connect failure after the `200` can only be told to the client as a
//! TLS alert (logged as 502/504). Ports in `opaque_ports` carry no TLS check: they are
//! dialled before the `200`, so their failures are proper 502/504 answers.

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::ProxyState;
use super::budget::Held;
use super::check::{Approval, Asker, Kind};
use super::conn::{Received, dial_checked, log_allowed, log_close, log_refusal, refuse};
use super::error::ProxyError;
use super::http::BodyFraming;
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
        rest: mut early,
        mut held,
        ..
    } = received;
    let raw = head.target.clone();
    let target = match head.framing() {
        Ok(BodyFraming::None) => parse_authority(&raw).map_err(|error| ProxyError::BadTarget {
            target: raw.clone(),
            error,
        }),
        Ok(_) => Err(ProxyError::BadRequest("CONNECT with a body".into())),
        Err(e) => Err(e),
    };
    let target = match target {
        Ok(t) => t,
        Err(err) => return refuse(&mut client, asker, "CONNECT", &raw, err).await,
    };
    let approval = match state.approve(asker, &target, Kind::Connect).await {
        Ok(a) => a,
        Err(err) => return refuse(&mut client, asker, "CONNECT", &raw, err).await,
    };

    if state.config.opaque_ports.contains(&target.port) {
        let (origin, dialled) = match dial_checked(state, &approval.addrs).await {
            Ok(ok) => ok,
            Err(err) => return refuse(&mut client, asker, "CONNECT", &raw, err).await,
        };
        if client.write_all(ESTABLISHED).await.is_err() {
            return;
        }
        log_allowed(asker, "CONNECT", &target, &approval, dialled, None);
        drop(held);
        return tunnel(state, client, origin, dialled, asker, &target, early, stop).await;
    }

    if client.write_all(ESTABLISHED).await.is_err() {
        return;
    }
    let hello = tokio::select! {
        _ = stop.cancelled() => return,
        hello = tokio::time::timeout(
            state.config.client_hello_timeout(),
            read_client_hello(&mut client, &mut early, &mut held, head_len),
        ) => hello,
    };
    let checked = match hello {
        Err(_) => Err((
            ProxyError::forbidden(
                "client_hello_timeout",
                "no complete TLS ClientHello in time",
            ),
            None,
        )),
        Ok(Err(err)) => Err((err, None)),
        Ok(Ok(hello)) => check_hello(&target, &approval, &hello).map(|()| hello),
    };
    let hello = match checked {
        Ok(hello) => hello,
        Err((err, alert)) => {
            log_refusal(asker, "CONNECT", &raw, &err);
            if let Some(alert) = alert {
                let _ = client.write_all(&sni::alert(alert)).await;
            }
            let _ = client.shutdown().await;
            return;
        }
    };
    let (mut origin, dialled) = match dial_checked(state, &approval.addrs).await {
        Ok(ok) => ok,
        Err(err) => {
            log_refusal(asker, "CONNECT", &raw, &err);
            let _ = client.write_all(&sni::alert(alerts::INTERNAL_ERROR)).await;
            let _ = client.shutdown().await;
            return;
        }
    };
    log_allowed(
        asker,
        "CONNECT",
        &target,
        &approval,
        dialled,
        hello.sni.as_deref(),
    );
    if origin.write_all(&early).await.is_err() {
        return;
    }
    let sent = early.len() as u64;
    drop(early);
    // A relaying tunnel holds no reservation (the relay's buffers are per thread).
    drop(held);
    tunnel_counted(state, client, origin, dialled, asker, &target, sent, stop).await;
}

/// Reads until the buffer holds a complete ClientHello (bounded by [`sni::MAX_CLIENT_HELLO`]).
/// `held` reserves `head_len` plus the buffer's capacity.
async fn read_client_hello(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    held: &mut Held<'_>,
    head_len: usize,
) -> Result<ClientHello, ProxyError> {
    let refuse = |why: String| ProxyError::forbidden("not_tls", why);
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
                "ech_refused",
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
                "sni_mismatch",
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
                "sni_missing",
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

#[allow(clippy::too_many_arguments)]
async fn tunnel(
    state: &ProxyState,
    client: TcpStream,
    mut origin: TcpStream,
    dialled: std::net::SocketAddr,
    asker: &Asker,
    target: &Target,
    early: Vec<u8>,
    stop: &CancellationToken,
) {
    if !early.is_empty() && origin.write_all(&early).await.is_err() {
        return;
    }
    let sent = early.len() as u64;
    drop(early);
    tunnel_counted(state, client, origin, dialled, asker, target, sent, stop).await;
}

#[allow(clippy::too_many_arguments)]
async fn tunnel_counted(
    state: &ProxyState,
    client: TcpStream,
    origin: TcpStream,
    dialled: std::net::SocketAddr,
    asker: &Asker,
    target: &Target,
    sent: u64,
    stop: &CancellationToken,
) {
    let started = Instant::now();
    let _tunnel = crate::admin::metrics::tunnel_open();
    let mut relayed = relay(
        &client,
        &origin,
        state.config.relay,
        state.config.idle_timeout(),
        state.config.tunnel_max(),
        stop.cancelled(),
    )
    .await;
    relayed.up += sent;
    log_close(asker, "CONNECT", target, dialled, &relayed, started);
}
