//! The routed listeners: for clients that ignore `HTTPS_PROXY` (Node's `fetch`) and
//! connect to the gate's own address on 443 or 80, where the DNS in `routed` mode sent
//! them.
//!
//! They are two more front doors of the egress proxy, not a second proxy: a connection
//! takes a slot of the proxy's connection limits and its buffers come from the proxy's
//! budget; the destination is decided by the same function as a CONNECT or an `http://`
//! request ([`ProxyState::approve`]), resolved through the same pipeline (the real
//! addresses of the name, [`crate::proxy::Resolve`]), checked the same way, dialled
//! through the same [`Dial`](crate::proxy::Dial) and relayed by the same relay, with the
//! `[proxy]` timeouts and drain. What differs is where the destination comes from:
//!
//! - [`tls`]: the ClientHello's SNI (read with the CONNECT check's reader), and the port
//!   the connection came in on. Refusals are TLS alerts.
//! - [`http`]: the `Host` header of an origin-form request, and that port. Refusals are
//!   the proxy's HTTP answers with `X-Portcullis-Reason`.
//!
//! Decision lines say `door = "routed_tls"` / `"routed_http"`, and so does the `door`
//! label of `portcullis_proxy_decisions_total`.

pub mod http;
pub mod tls;

use std::future::Future;
use std::io;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::listen::accept_loop;
use crate::proxy::ProxyState;
use crate::proxy::server::Stop;

pub use crate::listen::bind_tcp as bind;

/// Serves the routed TLS listeners `tls` and HTTP listeners `http` until `shutdown`
/// completes; then stops as the proxy does (connections that sent nothing close, open
/// tunnels and requests get `[proxy] drain_secs`).
pub async fn serve(
    tls: Vec<TcpListener>,
    http: Vec<TcpListener>,
    state: Arc<ProxyState>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let stop = Stop::default();
    let tracker = TaskTracker::new();
    for listener in tls {
        let port = listener.local_addr()?.port();
        tracing::info!(addr = %listener.local_addr()?, "listening routed/tls");
        let (state, conn_stop, conns) = (state.clone(), stop.clone(), tracker.clone());
        tracker.spawn(accept_loop(
            listener,
            stop.accepting.clone(),
            "routed/tls",
            move |stream, client| {
                let _ = stream.set_nodelay(true);
                let (state, stop) = (state.clone(), conn_stop.clone());
                conns.spawn(async move {
                    tls::connection(&state, stream, client, port, &stop).await;
                });
            },
        ));
    }
    for listener in http {
        let port = listener.local_addr()?.port();
        tracing::info!(addr = %listener.local_addr()?, "listening routed/http");
        let (state, conn_stop, conns) = (state.clone(), stop.clone(), tracker.clone());
        tracker.spawn(accept_loop(
            listener,
            stop.accepting.clone(),
            "routed/http",
            move |stream, client| {
                let _ = stream.set_nodelay(true);
                let (state, stop) = (state.clone(), conn_stop.clone());
                conns.spawn(async move {
                    http::connection(&state, stream, client, port, &stop).await;
                });
            },
        ));
    }
    shutdown.await;
    crate::proxy::server::drain(&stop, &tracker, &state).await;
    Ok(())
}
