//! A routed TLS connection: a client that resolved `name` to the gate and opened TLS to
//! it. Nothing is decrypted: the ClientHello is read with the CONNECT check's reader
//! ([`read_client_hello`]: split across TCP segments and TLS records, bounded in size,
//! within `[proxy] client_hello_timeout_ms`); its SNI is the destination name and the
//! port the connection came in on the destination port. That is decided exactly as
//! `CONNECT name:port` ([`ProxyState::approve`] with [`Kind::Connect`]), then the
//! CONNECT tunnel's own steps take over ([`Approved::pass`]): the ECH check, a dial of
//! exactly a checked address, the buffered ClientHello to the origin, the relay.
//!
//! A refusal is one decision line (`door = "routed_tls"`) and a TLS alert: see
//! [`alert_for`]. A client that does not speak TLS, or not in time, is closed without
//! one. Nothing is dialled for any refusal.

use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpStream;

use crate::error::{Fault, HasFault};
use crate::proxy::ProxyState;
use crate::proxy::budget::ConnBudget;
use crate::proxy::check::{Door, Kind};
use crate::proxy::connect::{Approved, read_client_hello, refuse_tls};
use crate::proxy::error::{ProxyError, RefusalCode};
use crate::proxy::server::{OpenGauge, Stop, take_slot};
use crate::proxy::sni::{ClientHello, alerts};
use crate::proxy::target::{Host, Target, parse_host};

/// The decision lines' `method`: a routed connection sends no HTTP request.
const METHOD: &str = "-";

/// Serves one connection accepted on a routed TLS listener on `port`.
pub(crate) async fn connection(
    state: &ProxyState,
    mut stream: TcpStream,
    client: SocketAddr,
    port: u16,
    stop: &Stop,
) {
    let _open = OpenGauge::open();
    let asker = state.asker(client, Door::RoutedTls);
    let _slot = match take_slot(state, client) {
        Ok(slot) => slot,
        Err(err) => {
            let alert = Some(alert_for(&err));
            return refuse_tls(stream, &asker, METHOD, "-", &err, alert, &[]).await;
        }
    };
    let conn = ConnBudget::new(&state.limits.buffers, state.config.connection_buffer_cap());
    let Ok(mut held) = conn.hold(0) else { return };
    let mut buf = Vec::new();
    let read = tokio::select! {
        _ = stop.accepting.cancelled() => return,
        read = tokio::time::timeout(
            state.config.client_hello_timeout(),
            read_client_hello(&mut stream, &mut buf, &mut held, 0),
        ) => read,
    };
    let hello = match read {
        Ok(Ok(hello)) => hello,
        // Closed before a byte (a port probe, a TCP health check): nothing to log.
        Ok(Err(_)) if buf.is_empty() => return,
        // Not TLS (or broken TLS): no alert, which a plaintext client could not read.
        Ok(Err(err)) => return refuse_tls(stream, &asker, METHOD, "-", &err, None, &[]).await,
        Err(_) => {
            let err = ProxyError::forbidden(
                RefusalCode::ClientHelloTimeout,
                "no complete TLS ClientHello in time",
            );
            return refuse_tls(stream, &asker, METHOD, "-", &err, None, &[]).await;
        }
    };
    let raw = hello
        .sni
        .as_deref()
        .map_or_else(|| "-".to_owned(), |sni| format!("{sni}:{port}"));
    let target = match target_of(&hello, port) {
        Ok(target) => target,
        Err(err) => {
            let alert = Some(alert_for(&err));
            return refuse_tls(stream, &asker, METHOD, &raw, &err, alert, &[]).await;
        }
    };
    let approval = match state.approve(&asker, &target, Kind::Connect).await {
        Ok(approval) => approval,
        Err(refusal) => {
            let alert = Some(alert_for(&refusal.error));
            let (err, ids) = (&refusal.error, &refusal.answer_ids);
            return refuse_tls(stream, &asker, METHOD, &raw, err, alert, ids).await;
        }
    };
    let tunnel = Approved {
        state,
        asker: &asker,
        method: METHOD,
        raw,
        target,
        approval,
        stop: &stop.tunnels,
    };
    tunnel.pass(stream, buf, held, &hello).await;
}

/// The destination a ClientHello names: its SNI, a host name (never an IP address), on
/// the port the connection came in on.
pub(crate) fn target_of(hello: &ClientHello, port: u16) -> Result<Target, ProxyError> {
    let Some(sni) = hello.sni.as_deref() else {
        return Err(ProxyError::forbidden(
            RefusalCode::SniMissing,
            "the ClientHello names no server (SNI): a routed connection is routed by it",
        ));
    };
    let ip_literal = |ip: IpAddr| {
        ProxyError::forbidden(
            RefusalCode::IpLiteral,
            format!(
                "the ClientHello's server name is an IP address ({ip}); a routed connection is routed by a host name"
            ),
        )
    };
    if let Ok(ip) = sni.trim_start_matches('[').trim_end_matches(']').parse() {
        return Err(ip_literal(ip));
    }
    match parse_host(sni) {
        Ok(Host::Name(name)) => Ok(Target {
            host: Host::Name(name),
            port,
        }),
        Ok(Host::Ip(ip)) => Err(ip_literal(ip)),
        Err(error) => Err(ProxyError::BadTarget {
            target: sni.to_owned(),
            error,
        }),
    }
}

/// The TLS alert a refused routed connection gets: `unrecognized_name` when the name is
/// the problem (none, an IP address, malformed, on no allow rule), `access_denied` for
/// every other refusal of the client's request (a port no rule names, a blocked name, a
/// denied address, ECH, the client's connection limit), `internal_error` when the gate
/// or an upstream failed (no answer for the name, no connection to the origin, the
/// gate's limits).
pub(crate) fn alert_for(err: &ProxyError) -> u8 {
    match err {
        ProxyError::Forbidden {
            code:
                RefusalCode::SniMissing
                | RefusalCode::IpLiteral
                | RefusalCode::NotAllowlisted
                | RefusalCode::SniMismatch,
            ..
        }
        | ProxyError::BadTarget { .. } => alerts::UNRECOGNIZED_NAME,
        err if err.fault() == Fault::Client => alerts::ACCESS_DENIED,
        _ => alerts::INTERNAL_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(sni: Option<&str>) -> ClientHello {
        ClientHello {
            sni: sni.map(str::to_owned),
            ech: false,
        }
    }

    /// SNI → the target, or the refusal code and its alert.
    #[test]
    fn the_sni_is_the_destination_and_must_be_a_host_name() {
        for (sni, want) in [
            (Some("api.example.com"), Ok("api.example.com:8443")),
            (Some("API.Example.COM."), Ok("api.example.com:8443")),
            (None, Err(("sni_missing", alerts::UNRECOGNIZED_NAME))),
            (
                Some("10.0.0.1"),
                Err(("ip_literal", alerts::UNRECOGNIZED_NAME)),
            ),
            (Some("::1"), Err(("ip_literal", alerts::UNRECOGNIZED_NAME))),
            (
                Some("[::1]"),
                Err(("ip_literal", alerts::UNRECOGNIZED_NAME)),
            ),
            (
                Some("127.1"),
                Err(("bad_target", alerts::UNRECOGNIZED_NAME)),
            ),
            (Some("a..b"), Err(("bad_target", alerts::UNRECOGNIZED_NAME))),
            (
                Some("a:443"),
                Err(("bad_target", alerts::UNRECOGNIZED_NAME)),
            ),
        ] {
            let got = target_of(&hello(sni), 8443)
                .map(|t| t.to_string())
                .map_err(|e| (e.code(), alert_for(&e)));
            assert_eq!(got, want.map(str::to_owned), "{sni:?}");
        }
    }

    #[test]
    fn alerts_say_whose_refusal_it_is() {
        let forbidden = |code| ProxyError::forbidden(code, "x");
        for (err, want) in [
            (
                forbidden(RefusalCode::NotAllowlisted),
                alerts::UNRECOGNIZED_NAME,
            ),
            (
                forbidden(RefusalCode::PortNotAllowed),
                alerts::ACCESS_DENIED,
            ),
            (forbidden(RefusalCode::Blocked), alerts::ACCESS_DENIED),
            (forbidden(RefusalCode::BlockedAnswer), alerts::ACCESS_DENIED),
            (forbidden(RefusalCode::DeniedAddress), alerts::ACCESS_DENIED),
            (forbidden(RefusalCode::EchRefused), alerts::ACCESS_DENIED),
            (forbidden(RefusalCode::SpecialUse), alerts::ACCESS_DENIED),
            (forbidden(RefusalCode::TunnelGuard), alerts::ACCESS_DENIED),
            (ProxyError::ClientLimit, alerts::ACCESS_DENIED),
            (ProxyError::Overloaded, alerts::INTERNAL_ERROR),
            (ProxyError::BufferBudget(1), alerts::INTERNAL_ERROR),
            (
                ProxyError::Unresolved {
                    host: "a.example".into(),
                    why: "timeout".into(),
                },
                alerts::INTERNAL_ERROR,
            ),
            (
                ProxyError::ConnectTimeout {
                    addr: "192.0.2.1:443".into(),
                },
                alerts::INTERNAL_ERROR,
            ),
        ] {
            assert_eq!(alert_for(&err), want, "{err}");
        }
    }
}
