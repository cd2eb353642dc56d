//! The gate started in process through its composition root (`app::Gate`), as `main`
//! starts it: every listener on port 0, the bound addresses from `Gate::start`, a dialer
//! that records every dial, and the shutdown signal ending `serve`.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use portcullis::app::{Gate, Listeners};
use portcullis::config::Config;
use portcullis::proxy::Dial;
use tokio::net::TcpStream;

use crate::support::doh_server::{DohServer, TestZone};
use crate::support::gate::dig_async as dig;
use crate::support::http::{exchange, http};

/// Records every address the proxy dials and refuses them all: a refused request must
/// never reach it.
#[derive(Default)]
struct Recorder(Mutex<Vec<SocketAddr>>);

#[async_trait::async_trait]
impl Dial for Recorder {
    async fn dial(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        self.0.lock().unwrap().push(addr);
        Err(std::io::Error::other("the test dialer connects nowhere"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_serves_on_the_addresses_it_was_bound_to_and_stops_on_the_signal() {
    let doh = DohServer::start(
        TestZone::new()
            .a("open.example", Ipv4Addr::new(93, 184, 216, 34))
            .a("inside.example", Ipv4Addr::new(10, 0, 0, 1)),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("allow.toml"),
        "[[allow]]\nhost = \"inside.example\"\n",
    )
    .unwrap();
    let text = format!(
        "allowlist = \"allow.toml\"\n[dns]\nlisten = [\"127.0.0.1:0\"]\n[proxy]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = [\"127.0.0.1:0\"]\n{}\n[[lists]]\nname = \"threats\"\ninline = \"evil.example\\n\"\n",
        doh.upstream_toml()
    );
    let config = Config::parse(&text, "test.toml", dir.path()).unwrap();
    let gate = Gate::build(config, None).await.unwrap();
    let listeners = Listeners::bind(&gate.shared().config()).await.unwrap();
    let dialer = Arc::new(Recorder::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (bound, task) = gate.with_dialer(dialer.clone()).start(listeners, async {
        let _ = stop_rx.await;
    });
    for addrs in [&bound.dns, &bound.proxy, &bound.admin] {
        assert!(addrs.len() == 1 && addrs[0].port() != 0, "{bound:?}");
    }

    // DNS: a listed name is blocked, another forwarded to the upstream.
    let evil = dig(bound.dns[0], "evil.example", "A", &[]).await;
    assert_eq!(evil.status, "NXDOMAIN", "{}", evil.raw);
    let open = dig(bound.dns[0], "open.example", "A", &[]).await;
    assert_eq!(
        open.addresses(),
        vec!["93.184.216.34".to_owned()],
        "{}",
        open.raw
    );

    // Proxy: an allowlisted name whose answer is private, an address literal and a name
    // no rule allows are refused, and none of them was dialled.
    let proxy = bound.proxy[0].to_string();
    let admin = bound.admin[0].to_string();
    let answers = tokio::task::spawn_blocking(move || {
        let refusals = ["inside.example:443", "10.0.0.1:443", "open.example:443"].map(|t| {
            exchange(
                &proxy,
                &format!("CONNECT {t} HTTP/1.1\r\nHost: {t}\r\n\r\n"),
            )
        });
        (refusals, http(&admin, "GET", "/healthz"))
    })
    .await
    .unwrap();
    let (refusals, health) = answers;
    for answer in &refusals {
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    }
    assert!(refusals[0].contains("denied_address"), "{}", refusals[0]);
    assert!(
        dialer.0.lock().unwrap().is_empty(),
        "dialled a refused destination"
    );
    assert_eq!(health.0, 200, "{}", health.1);

    stop_tx.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert!(
        TcpStream::connect(bound.proxy[0]).await.is_err(),
        "the proxy listener is closed after serve returns"
    );
    doh.stop().await;
}
