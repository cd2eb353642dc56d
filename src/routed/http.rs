//! A routed HTTP connection: an origin-form request (`GET /path` with `Host: name`) to
//! the gate's own address. It is served as the proxy serves an `http://name:PORT/path`
//! request ([`crate::proxy::forward`] with [`Form::Origin`](crate::proxy::forward::Form)),
//! `PORT` being the port the connection came in on: the same head reader and limits, the
//! same smuggling defences, the same decision, and the same refusals (an HTTP answer with
//! `X-Portcullis-Reason`). `Host` must name that port or none; a CONNECT or an
//! absolute-form request is refused (400).

use std::net::SocketAddr;

use tokio::net::TcpStream;

use crate::proxy::ProxyState;
use crate::proxy::server::{Front, Stop, serve_http};

/// Serves one connection accepted on a routed HTTP listener on `port`.
pub(crate) async fn connection(
    state: &ProxyState,
    stream: TcpStream,
    client: SocketAddr,
    port: u16,
    stop: &Stop,
) {
    serve_http(state, stream, client, stop, Front::RoutedHttp { port }).await;
}
