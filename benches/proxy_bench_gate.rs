//! The egress proxy alone, for `benches/proxy.sh`: allows `bench.test:PORT` (which
//! resolves to 127.0.0.2, `private = true`) and dials with the production dialer.
//! Loopback only. Usage: `proxy_bench_gate LISTEN_PORT ORIGIN_PORT`.
//! `PROXY_LOG=1`: the production JSON decision lines on stderr (two per tunnel);
//! without it no subscriber is installed and logging costs nothing.
//! `PROXY_RELAY=splice`: `[proxy] relay = "splice"` (default: copy).
//! `ROUTED_TLS=IP:PORT`: also a routed TLS listener there (`[routed] tls_listen`), on
//! the same proxy state, as the gate runs it: a ClientHello naming `bench.test` is
//! dialled on the listener's own port, so PORT must be ORIGIN_PORT. The gate counts
//! every loopback address on a port it listens on as its own listener (never dialled),
//! so with a routed listener on ORIGIN_PORT `bench.test` resolves to [`ALIAS`]
//! (10.255.255.2, private: `private = true` admits it) instead, and the dialer connects
//! to 127.0.0.2 on the same port for it, and to nothing else. Both the CONNECT and the
//! routed tunnels then take that path; the check, the approval and the dial are the
//! production ones, only the address the socket connects to is swapped. Nothing leaves
//! loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use portcullis::config::Config;
use portcullis::dns::filter::{Outcome, Reply};
use portcullis::lists::load::build_policy;
use portcullis::policy::name::Name;
use portcullis::proxy::{self, Dial, ProxyConfig, ProxyState, Resolve, TcpDialer};
use tokio::net::TcpStream;

/// Where the origin listens (127.0.0.1 is the gate's own).
const ORIGIN: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// What `bench.test` resolves to when a routed listener shares the origin's port.
const ALIAS: Ipv4Addr = Ipv4Addr::new(10, 255, 255, 2);

/// `bench.test` is `.0` (the origin, or its alias); nothing else resolves.
struct Static(Ipv4Addr);

#[async_trait::async_trait]
impl Resolve for Static {
    async fn lookup(&self, _client: IpAddr, name: &Name, qtype: RecordType) -> Reply {
        let mut answers = Vec::new();
        if qtype == RecordType::A && name.as_str() == "bench.test" {
            let owner = hickory_proto::rr::Name::from_ascii("bench.test.").unwrap();
            answers.push(Record::from_rdata(owner, 60, RData::A(A(self.0))));
        }
        let mut reply = Reply::new(ResponseCode::NoError, Outcome::Cached, "static");
        reply.answers = answers;
        reply
    }
}

/// The production dialer to [`ORIGIN`] for [`ALIAS`]; refuses every other address.
struct Aliased;

#[async_trait::async_trait]
impl Dial for Aliased {
    async fn dial(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        if addr.ip() != IpAddr::V4(ALIAS) {
            return Err(std::io::Error::other(format!("{addr}: not the origin")));
        }
        TcpDialer
            .dial(SocketAddr::from((ORIGIN, addr.port())))
            .await
    }
}

#[tokio::main]
async fn main() {
    // A plain `cargo bench` runs every bench target with just `--bench`: this one is a
    // tool that benches/proxy.sh drives, with nothing to measure by itself.
    if std::env::args().skip(1).eq(["--bench"]) {
        eprintln!("proxy_bench_gate: run by benches/proxy.sh");
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let listen: u16 = args[1].parse().expect("LISTEN_PORT");
    let origin: u16 = args[2].parse().expect("ORIGIN_PORT");
    if std::env::var_os("PROXY_LOG").is_some_and(|v| v == "1") {
        portcullis::telemetry::init(portcullis::config::LogFormat::Json, "info");
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("allow.toml"),
        format!("[[allow]]\nhost = \"bench.test\"\nports = [{origin}]\nprivate = true\n"),
    )
    .unwrap();
    let config = Config::parse(
        "allowlist = \"allow.toml\"\n[[lists]]\nname = \"none\"\ninline = \"\"\n",
        "bench.toml",
        dir.path(),
    )
    .unwrap();
    let policy = Arc::new(ArcSwap::from_pointee(build_policy(&config).unwrap().policy));
    let mut proxy_config = ProxyConfig {
        listen: vec![SocketAddr::from(([127, 0, 0, 1], listen))],
        ..ProxyConfig::default()
    };
    if std::env::var_os("PROXY_RELAY").is_some_and(|v| v == "splice") {
        proxy_config.relay = proxy::RelayMode::Splice;
    }
    proxy_config.max_connections = 100_000;
    proxy_config.max_connections_per_client = 100_000;
    let listeners = proxy::bind(&proxy_config.listen).await.unwrap();
    let routed_addrs: Vec<SocketAddr> = std::env::var("ROUTED_TLS")
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| vec![v.parse().expect("ROUTED_TLS: IP:PORT")])
        .unwrap_or_default();
    let routed_tls = portcullis::routed::bind(&routed_addrs).await.unwrap();
    // The gate's own listeners are never a destination, the routed ones included.
    let own = listeners
        .iter()
        .chain(&routed_tls)
        .map(|l| l.local_addr().unwrap())
        .collect();
    let (resolve, dial): (Static, Arc<dyn Dial>) = if routed_addrs.is_empty() {
        (Static(ORIGIN), Arc::new(TcpDialer))
    } else {
        (Static(ALIAS), Arc::new(Aliased))
    };
    let state = Arc::new(ProxyState::new(
        proxy_config,
        policy,
        Arc::new(resolve),
        dial,
        own,
    ));
    eprintln!("listening proxy 127.0.0.1:{listen}");
    for addr in &routed_addrs {
        eprintln!("listening routed/tls {addr}");
    }
    let stop = || async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let (proxy, routed) = tokio::join!(
        proxy::serve(listeners, state.clone(), stop()),
        portcullis::routed::serve(routed_tls, Vec::new(), state, stop()),
    );
    proxy.unwrap();
    routed.unwrap();
}
