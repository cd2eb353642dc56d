//! The upstream pool against real local servers (DoH, DoT, UDP, TCP). Loopback only.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use portcullis::dns::upstream::{HealthPolicy, Strategy, UpstreamPool, UpstreamSpec};

use crate::support::doh_server::{DohServer, TestZone};
use crate::support::wait_until;

const TIMEOUT: Duration = Duration::from_secs(2);
const QUERY_ID: u16 = 4242;

fn zone() -> TestZone {
    TestZone::new()
        .a("www.example.test", Ipv4Addr::new(192, 0, 2, 1))
        .cname("alias.example.test", "www.example.test")
        .aaaa("www.example.test", "2001:db8::1".parse().unwrap())
}

fn query(name: &str, qtype: RecordType) -> Message {
    let mut msg = Message::query();
    msg.metadata.id = QUERY_ID;
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    msg
}

fn a_records(msg: &Message) -> Vec<Ipv4Addr> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

fn spec(name: &str, url: String) -> UpstreamSpec {
    UpstreamSpec {
        name: Some(name.to_string()),
        url,
        tls_name: None,
        timeout_ms: None,
        ca_file: None,
    }
}

fn doh(name: &str, server: &DohServer) -> UpstreamSpec {
    UpstreamSpec {
        tls_name: Some(server.tls_name.clone()),
        ca_file: Some(server.ca_file.clone()),
        ..spec(name, server.url())
    }
}

/// A DoH spec for a loopback port nobody listens on (connection refused at once).
fn dead_doh(name: &str, like: &DohServer) -> UpstreamSpec {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    UpstreamSpec {
        url: format!("https://127.0.0.1:{port}/dns-query"),
        ..doh(name, like)
    }
}

fn pool(specs: &[UpstreamSpec], strategy: Strategy) -> UpstreamPool {
    UpstreamPool::new(specs, strategy, TIMEOUT).unwrap()
}

fn fast_health() -> HealthPolicy {
    HealthPolicy {
        failure_threshold: 3,
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
    }
}

/// Without `tls_name`, the certificate must name the upstream's IP (public DoH resolvers'
/// certificates carry IP SANs); one that names only a host is refused at the handshake.
#[tokio::test]
async fn doh_without_tls_name_verifies_the_ip_against_the_certificate() {
    let with_ip = DohServer::start_with_ip_san(zone()).await;
    let spec = UpstreamSpec {
        tls_name: None,
        ..doh("ip-san", &with_ip)
    };
    let answer = pool(&[spec], Strategy::Parallel)
        .resolve(&query("www.example.test.", RecordType::A))
        .await
        .unwrap();
    assert_eq!(a_records(&answer), [Ipv4Addr::new(192, 0, 2, 1)]);

    let host_only = DohServer::start(zone()).await;
    let spec = UpstreamSpec {
        tls_name: None,
        ..doh("host-only", &host_only)
    };
    let error = pool(&[spec], Strategy::Parallel)
        .resolve(&query("www.example.test.", RecordType::A))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("certificate") || error.to_string().contains("Certificate"),
        "{error}"
    );
    assert_eq!(host_only.queries(), 0);
}

#[tokio::test]
async fn doh_answers_a_cname_chain_and_nxdomain() {
    let server = DohServer::start(zone()).await;
    let pool = pool(&[doh("local", &server)], Strategy::Parallel);

    let answer = pool
        .resolve(&query("www.example.test.", RecordType::A))
        .await
        .unwrap();
    assert_eq!(answer.metadata.id, QUERY_ID);
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&answer), [Ipv4Addr::new(192, 0, 2, 1)]);

    let chain = pool
        .resolve(&query("ALIAS.example.test.", RecordType::A))
        .await
        .unwrap();
    assert_eq!(chain.answers.len(), 2);
    assert_eq!(chain.answers[0].record_type(), RecordType::CNAME);
    assert_eq!(a_records(&chain), [Ipv4Addr::new(192, 0, 2, 1)]);

    let nx = pool
        .resolve(&query("nope.example.test.", RecordType::A))
        .await
        .unwrap();
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);

    assert_eq!(server.queries(), 3);
    assert_eq!(pool.health()[0].consecutive_failures, 0);
    server.stop().await;
}

#[tokio::test]
async fn dot_answers() {
    let server = DohServer::start(zone()).await;
    let spec = UpstreamSpec {
        url: server.dot_url(),
        ..doh("dot", &server)
    };
    let pool = pool(&[spec], Strategy::Failover);
    for _ in 0..2 {
        let answer = pool
            .resolve(&query("www.example.test.", RecordType::AAAA))
            .await
            .unwrap();
        assert_eq!(answer.metadata.id, QUERY_ID);
        assert_eq!(answer.answers.len(), 1);
    }
    server.stop().await;
}

#[tokio::test]
async fn udp_answers() {
    let server = DohServer::start(zone()).await;
    let pool = pool(&[spec("udp", server.udp_url())], Strategy::Parallel);
    let answer = pool
        .resolve(&query("www.example.test.", RecordType::A))
        .await
        .unwrap();
    assert_eq!(answer.metadata.id, QUERY_ID);
    assert_eq!(a_records(&answer), [Ipv4Addr::new(192, 0, 2, 1)]);
    server.stop().await;
}

#[tokio::test]
async fn tcp_answers() {
    let server = DohServer::start(zone()).await;
    let pool = pool(&[spec("tcp", server.tcp_url())], Strategy::Parallel);
    let answer = pool
        .resolve(&query("alias.example.test.", RecordType::A))
        .await
        .unwrap();
    assert_eq!(answer.metadata.id, QUERY_ID);
    assert_eq!(a_records(&answer), [Ipv4Addr::new(192, 0, 2, 1)]);
    server.stop().await;
}

#[tokio::test]
async fn truncated_udp_answer_is_retried_over_tcp() {
    // 60 A records do not fit in the 512 bytes a query without EDNS allows over UDP.
    let zone = (1..=60).fold(TestZone::new(), |z, i| {
        z.a("big.example.test", Ipv4Addr::new(198, 51, 100, i))
    });
    let server = DohServer::start(zone).await;
    let pool = pool(&[spec("udp", server.udp_url())], Strategy::Parallel);
    let answer = pool
        .resolve(&query("big.example.test.", RecordType::A))
        .await
        .unwrap();
    assert!(!answer.metadata.truncation);
    assert_eq!(a_records(&answer).len(), 60);
    assert_eq!(server.queries(), 2, "one UDP query, one TCP retry");
    server.stop().await;
}

#[tokio::test]
async fn parallel_answers_despite_a_dead_upstream() {
    let server = DohServer::start(zone()).await;
    let pool = pool(
        &[dead_doh("dead", &server), doh("live", &server)],
        Strategy::Parallel,
    );
    for _ in 0..2 {
        let answer = pool
            .resolve(&query("www.example.test.", RecordType::A))
            .await
            .unwrap();
        assert_eq!(a_records(&answer), [Ipv4Addr::new(192, 0, 2, 1)]);
    }
    // The loser's failure is recorded even though the winner answered.
    wait_until("dead upstream failures", Duration::from_secs(5), || {
        pool.health()[0].consecutive_failures >= 1
    })
    .await;
    assert!(pool.health()[1].healthy);
    server.stop().await;
}

#[tokio::test]
async fn servfail_does_not_win_a_race() {
    let bad = DohServer::start(zone().servfail("www.example.test")).await;
    let good = DohServer::start(zone()).await;
    let pool = pool(&[doh("bad", &bad), doh("good", &good)], Strategy::Parallel);
    for _ in 0..3 {
        let answer = pool
            .resolve(&query("www.example.test.", RecordType::A))
            .await
            .unwrap();
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a_records(&answer), [Ipv4Addr::new(192, 0, 2, 1)]);
    }
    // SERVFAIL is still an answer: it does not make the upstream unhealthy.
    wait_until("both answered", Duration::from_secs(5), || {
        bad.queries() == 3 && good.queries() == 3
    })
    .await;
    assert!(pool.health().iter().all(|h| h.healthy));

    // When nobody does better, the SERVFAIL itself is returned (not an error).
    let both_bad = DohServer::start(zone().servfail("www.example.test")).await;
    let pool = pool_of(&[doh("bad", &bad), doh("bad2", &both_bad)]);
    let answer = pool
        .resolve(&query("www.example.test.", RecordType::A))
        .await
        .unwrap();
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    bad.stop().await;
    good.stop().await;
    both_bad.stop().await;
}

fn pool_of(specs: &[UpstreamSpec]) -> UpstreamPool {
    pool(specs, Strategy::Parallel)
}

#[tokio::test]
async fn failover_follows_configured_order() {
    let first = DohServer::start(zone()).await;
    let second = DohServer::start(zone()).await;
    let pool = pool(
        &[doh("first", &first), doh("second", &second)],
        Strategy::Failover,
    );
    for _ in 0..3 {
        pool.resolve(&query("www.example.test.", RecordType::A))
            .await
            .unwrap();
    }
    assert_eq!((first.queries(), second.queries()), (3, 0));

    first.stop().await;
    let answer = pool
        .resolve(&query("www.example.test.", RecordType::A))
        .await
        .unwrap();
    assert_eq!(a_records(&answer), [Ipv4Addr::new(192, 0, 2, 1)]);
    assert_eq!(second.queries(), 1);
    let health = pool.health();
    assert_eq!(health[0].consecutive_failures, 1);
    assert!(health[0].last_error.is_some());
    second.stop().await;
}

#[tokio::test]
async fn black_holed_upstream_times_out_within_its_timeout() {
    // Accepts TCP connections and then says nothing: the TLS handshake never completes.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let _holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = hole.accept().await {
            held.push(conn);
        }
    });
    // A UDP socket nobody reads.
    let udp_hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();

    let server = DohServer::start(zone()).await;
    for spec in [
        UpstreamSpec {
            url: format!("https://{hole_addr}/dns-query"),
            timeout_ms: Some(300),
            ..doh("doh-hole", &server)
        },
        UpstreamSpec {
            timeout_ms: Some(300),
            ..spec(
                "udp-hole",
                format!("udp://{}", udp_hole.local_addr().unwrap()),
            )
        },
    ] {
        let pool = pool(&[spec], Strategy::Parallel);
        let started = Instant::now();
        let err = pool
            .resolve(&query("www.example.test.", RecordType::A))
            .await
            .unwrap_err();
        let elapsed = started.elapsed();
        assert!(err.is_timeout(), "{err}");
        assert!(
            elapsed >= Duration::from_millis(290) && elapsed < Duration::from_millis(800),
            "{elapsed:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn stopped_server_fails_within_the_timeout() {
    let server = DohServer::start(zone()).await;
    let spec = UpstreamSpec {
        timeout_ms: Some(500),
        ..doh("local", &server)
    };
    let pool = pool(&[spec], Strategy::Parallel);
    pool.resolve(&query("www.example.test.", RecordType::A))
        .await
        .unwrap();
    server.stop().await;

    let started = Instant::now();
    let result = pool
        .resolve(&query("www.example.test.", RecordType::A))
        .await;
    assert!(result.is_err());
    assert!(started.elapsed() < Duration::from_millis(500 + 300));
}

#[tokio::test]
async fn failing_upstream_leaves_rotation_and_returns_after_a_probe() {
    let mut flaky = DohServer::start(zone()).await;
    let steady = DohServer::start(zone()).await;
    let pool = pool(
        &[doh("flaky", &flaky), doh("steady", &steady)],
        Strategy::Failover,
    )
    .with_health_policy(fast_health());

    flaky.halt().await;
    for i in 1..=3 {
        let answer = pool
            .resolve(&query("www.example.test.", RecordType::A))
            .await
            .unwrap();
        assert_eq!(a_records(&answer), [Ipv4Addr::new(192, 0, 2, 1)]);
        assert_eq!(pool.health()[0].consecutive_failures, i);
    }
    let health = pool.health();
    assert!(!health[0].healthy, "{health:?}");
    assert!(health[0].last_error.is_some());
    assert!(health[1].healthy);
    assert!(pool.any_healthy());

    // Out of rotation: queries go straight to the healthy upstream.
    flaky.resume().await;
    pool.resolve(&query("www.example.test.", RecordType::A))
        .await
        .unwrap();
    assert_eq!(steady.queries(), 4);

    // The background probe brings it back; nothing else reached it.
    wait_until("probe", Duration::from_secs(5), || pool.health()[0].healthy).await;
    assert_eq!(
        flaky.queries(),
        1,
        "exactly one query (the probe) reached it"
    );
    assert_eq!(pool.health()[0].consecutive_failures, 0);

    pool.resolve(&query("www.example.test.", RecordType::A))
        .await
        .unwrap();
    assert_eq!((flaky.queries(), steady.queries()), (2, 4));
    flaky.stop().await;
    steady.stop().await;
}

#[tokio::test]
async fn with_nothing_healthy_upstreams_are_still_tried() {
    let mut server = DohServer::start(zone()).await;
    let policy = HealthPolicy {
        failure_threshold: 1,
        // Far beyond the test: only a real query can bring it back.
        backoff_initial: Duration::from_secs(30),
        backoff_max: Duration::from_secs(30),
    };
    let pool = pool(&[doh("only", &server)], Strategy::Parallel).with_health_policy(policy);
    server.halt().await;
    assert!(
        pool.resolve(&query("www.example.test.", RecordType::A))
            .await
            .is_err()
    );
    assert!(!pool.any_healthy());

    server.resume().await;
    let answer = pool
        .resolve(&query("www.example.test.", RecordType::A))
        .await
        .unwrap();
    assert_eq!(a_records(&answer), [Ipv4Addr::new(192, 0, 2, 1)]);
    assert!(pool.any_healthy());
    server.stop().await;
}

/// hickory keeps using a DoH connection the server has closed (hickory-dns#3837): the pool must
/// notice and reconnect, without the first query after the restart failing.
#[tokio::test]
async fn reconnects_after_server_restart_on_the_same_port() {
    for transport in ["doh", "dot", "tcp"] {
        let mut server = DohServer::start(zone()).await;
        let url = match transport {
            "doh" => server.url(),
            "dot" => server.dot_url(),
            _ => server.tcp_url(),
        };
        let spec = if transport == "tcp" {
            spec(transport, url)
        } else {
            UpstreamSpec {
                url,
                ..doh(transport, &server)
            }
        };
        let pool = pool(&[spec], Strategy::Failover);
        let before: SocketAddr = server.addr;
        for _ in 0..2 {
            pool.resolve(&query("www.example.test.", RecordType::A))
                .await
                .unwrap();
        }

        server.halt().await;
        server.resume().await;
        assert_eq!(server.addr, before);

        let answer = pool
            .resolve(&query("www.example.test.", RecordType::A))
            .await
            .unwrap_or_else(|e| panic!("{transport}: first query after restart failed: {e}"));
        assert_eq!(a_records(&answer), [Ipv4Addr::new(192, 0, 2, 1)]);
        let health = pool.health();
        assert_eq!(health[0].consecutive_failures, 0, "{transport}: {health:?}");
        assert_eq!(server.queries(), 3);
        server.stop().await;
    }
}

/// A TCP relay in front of a server that counts connections and can cut them all.
struct Relay {
    addr: SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    _acceptor: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (acc, cs) = (accepted.clone(), conns.clone());
        let acceptor = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                acc.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let task = tokio::spawn(async move {
                    if let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
                cs.lock().unwrap().push(task);
            }
        });
        Self {
            addr,
            accepted,
            conns,
            _acceptor: acceptor,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Drops every relayed connection, like a NAT or middlebox silently reaping them.
    async fn cut(&self) {
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn one_connection_is_reused_and_replaced_when_cut() {
    let server = DohServer::start(zone()).await;
    for transport in ["doh", "dot", "tcp"] {
        let target = match transport {
            "doh" => server.addr,
            "dot" => server.dot_addr,
            _ => server.tcp_addr,
        };
        let relay = Relay::start(target).await;
        let url = match transport {
            "doh" => format!("https://{}/dns-query", relay.addr),
            "dot" => format!("tls://{}", relay.addr),
            _ => format!("tcp://{}", relay.addr),
        };
        let spec = if transport == "tcp" {
            spec(transport, url)
        } else {
            UpstreamSpec {
                url,
                ..doh(transport, &server)
            }
        };
        let pool = pool(&[spec], Strategy::Parallel);

        // Concurrent and sequential queries share one connection.
        let q = query("www.example.test.", RecordType::A);
        let burst = futures_util::future::join_all((0..8).map(|_| pool.resolve(&q))).await;
        assert!(burst.iter().all(Result::is_ok), "{transport}: {burst:?}");
        for _ in 0..3 {
            pool.resolve(&q).await.unwrap();
        }
        assert_eq!(
            relay.accepted(),
            1,
            "{transport}: one connection for all queries"
        );

        relay.cut().await;
        let answer = pool
            .resolve(&q)
            .await
            .unwrap_or_else(|e| panic!("{transport}: query after cut failed: {e}"));
        assert_eq!(a_records(&answer), [Ipv4Addr::new(192, 0, 2, 1)]);
        assert_eq!(relay.accepted(), 2, "{transport}: reconnected once");
        assert_eq!(pool.health()[0].consecutive_failures, 0, "{transport}");
    }
    server.stop().await;
}
