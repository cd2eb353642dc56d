//! The egress proxy alone, for `benches/proxy.sh`: allows `bench.test:PORT` (which
//! resolves to 127.0.0.1, `private = true`) and dials with the production dialer.
//! Loopback only. Usage: `proxy_bench_gate LISTEN_PORT ORIGIN_PORT`.
//! `PROXY_LOG=1`: the production JSON decision lines on stderr (two per tunnel);
//! without it no subscriber is installed and logging costs nothing.
//! `PROXY_RELAY=splice`: `[proxy] relay = "splice"` (default: copy).

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
use portcullis::proxy::{self, ProxyConfig, ProxyState, Resolve, TcpDialer};

/// `bench.test` is 127.0.0.2 (the origin; 127.0.0.1 is the gate's own); nothing else resolves.
struct Static;

#[async_trait::async_trait]
impl Resolve for Static {
    async fn lookup(&self, _client: IpAddr, name: &Name, qtype: RecordType) -> Reply {
        let mut answers = Vec::new();
        if qtype == RecordType::A && name.as_str() == "bench.test" {
            let owner = hickory_proto::rr::Name::from_ascii("bench.test.").unwrap();
            answers.push(Record::from_rdata(
                owner,
                60,
                RData::A(A(Ipv4Addr::new(127, 0, 0, 2))),
            ));
        }
        let mut reply = Reply::new(ResponseCode::NoError, Outcome::Cached, "static");
        reply.answers = answers;
        reply
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
    let own = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let state = Arc::new(ProxyState::new(
        proxy_config,
        policy,
        Arc::new(Static),
        Arc::new(TcpDialer),
        own,
    ));
    eprintln!("listening proxy 127.0.0.1:{listen}");
    proxy::serve(listeners, state, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .unwrap();
}
