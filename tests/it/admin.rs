//! The admin listener of the real binary: /metrics counts exactly the traffic sent
//! (and passes `promtool check metrics`: promtool must be installed), /healthz,
//! /readyz, /api/explain, /api/lists, 404/405, and `portcullis health` exit codes.

use std::time::Duration;

use crate::support::config_head;
use crate::support::gate::{Gate, dig, portcullis};
use crate::support::http::{connect, http, http_with, reason_of};
use crate::support::metrics::{metric_sum, promtool, sample};

const CONFIG: &str = concat!(
    config_head!(),
    r#"name = "dead"
url = "udp://127.0.0.1:9"

[[lists]]
name = "threats"
inline = """
evil.example
"""
"#
);

/// `promtool check metrics` must pass (without promtool the test fails, as the
/// monitoring tests do: scripts/test.sh installs it).
fn promtool_check(metrics: &str) {
    let (ok, out) = promtool(&["check", "metrics"], Some(metrics));
    assert!(
        ok,
        "promtool check metrics failed:\n{out}\n--- metrics ---\n{metrics}"
    );
}

/// `portcullis health --url URL`'s exit code.
fn health(url: &str) -> Option<i32> {
    portcullis()
        .args(["health", "--url", url, "--timeout", "2"])
        .status()
        .expect("run portcullis health")
        .code()
}

#[test]
fn metrics_count_exactly_the_traffic_sent() {
    let gate = Gate::start(CONFIG);
    let admin = gate.admin_addr();

    let (status, before) = http(&admin, "GET", "/metrics");
    assert_eq!(status, 200, "{before}");
    let blocked_a = r#"portcullis_dns_queries_total{qtype="A",outcome="blocked"}"#;
    let local_a = r#"portcullis_dns_queries_total{qtype="A",outcome="local"}"#;
    assert_eq!(sample(&before, blocked_a), Some(0.0), "{before}");
    assert_eq!(sample(&before, local_a), Some(0.0), "{before}");
    assert_eq!(
        sample(&before, r#"portcullis_dns_blocked_total{list="threats"}"#),
        None
    );

    for _ in 0..3 {
        assert_eq!(dig(gate.dns, "evil.example", "A", &[]).status, "NXDOMAIN");
    }
    for _ in 0..2 {
        assert_eq!(dig(gate.dns, "localhost", "A", &[]).status, "NOERROR");
    }

    let (status, after) = http(&admin, "GET", "/metrics");
    assert_eq!(status, 200);
    assert_eq!(sample(&after, blocked_a), Some(3.0), "{after}");
    assert_eq!(sample(&after, local_a), Some(2.0), "{after}");
    assert_eq!(
        sample(
            &after,
            r#"portcullis_dns_queries_total{qtype="AAAA",outcome="blocked"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&after, r#"portcullis_dns_blocked_total{list="threats"}"#),
        Some(3.0),
        "{after}"
    );
    // Blocked and local answers never touch the cache or the upstreams.
    assert_eq!(sample(&after, "portcullis_cache_hits_total"), Some(0.0));
    assert_eq!(sample(&after, "portcullis_cache_misses_total"), Some(0.0));
    assert_eq!(sample(&after, "portcullis_cache_entries"), Some(0.0));
    assert_eq!(
        sample(&after, r#"portcullis_list_rules{list="threats"}"#),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        sample(&after, r#"portcullis_upstream_healthy{upstream="dead"}"#),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            r#"portcullis_config_reloads_total{result="success"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&after, r#"portcullis_proxy_bytes_total{direction="up"}"#),
        Some(0.0)
    );
    assert_eq!(sample(&after, "portcullis_proxy_active_tunnels"), Some(0.0));
    assert_eq!(
        sample(
            &after,
            &format!(
                r#"portcullis_build_info{{version="{}"}}"#,
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0),
        "{after}"
    );
    // Never a domain or a client address in a label.
    assert!(!after.contains("evil.example"), "{after}");
    assert!(!after.contains("127.0.0.1"), "{after}");
    promtool_check(&after);

    // A SIGHUP with the same (good) config counts one successful reload.
    gate.signal("HUP");
    gate.wait_for_log("configuration reloaded", Duration::from_secs(10))
        .expect("reloaded");
    let (_, reloaded) = http(&admin, "GET", "/metrics");
    assert_eq!(
        sample(
            &reloaded,
            r#"portcullis_config_reloads_total{result="success"}"#
        ),
        Some(1.0),
        "{reloaded}"
    );
    assert_eq!(
        sample(&reloaded, "portcullis_config_last_reload_successful"),
        Some(1.0)
    );
    assert_eq!(
        sample(&reloaded, "portcullis_proxy_max_connections"),
        Some(10000.0)
    );
    assert_eq!(sample(&reloaded, "portcullis_proxy_connections"), Some(0.0));
    assert!(sample(&reloaded, "process_resident_memory_bytes").is_some_and(|v| v > 1e6));
    assert!(sample(&reloaded, "process_open_fds").is_some_and(|v| v > 3.0));
    promtool_check(&reloaded);

    // A refused reload: the gauge says so until a reload is applied.
    std::fs::write(
        gate.dir.path().join("portcullis.toml"),
        format!("bogus = 1\n{CONFIG}"),
    )
    .unwrap();
    gate.wait_for_log("reload refused", Duration::from_secs(10))
        .expect("refused");
    let (_, refused) = http(&admin, "GET", "/metrics");
    assert_eq!(
        sample(&refused, "portcullis_config_last_reload_successful"),
        Some(0.0),
        "{refused}"
    );
    assert_eq!(
        sample(
            &refused,
            r#"portcullis_config_reloads_total{result="failure"}"#
        ),
        Some(1.0)
    );
}

#[test]
fn health_readiness_explain_and_lists() {
    let gate = Gate::start(CONFIG);
    let admin = gate.admin_addr();

    assert_eq!(http(&admin, "GET", "/healthz"), (200, "ok\n".to_owned()));
    let (status, body) = http(&admin, "GET", "/readyz");
    assert_eq!(status, 200, "{body}");

    let (status, body) = http(&admin, "GET", "/api/explain?name=www.Evil.example.");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["decision"], "blocked", "{body}");
    assert_eq!(v["rule"], "evil.example", "{body}");
    assert_eq!(v["list"], "threats", "{body}");
    assert!(v["line"].as_u64().is_some(), "{body}");

    let (status, body) = http(
        &admin,
        "GET",
        "/api/explain?name=ok.example&client=192.0.2.1",
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["decision"], "pass", "{body}");
    assert_eq!(v["client"], "192.0.2.1", "{body}");

    assert_eq!(http(&admin, "GET", "/api/explain").0, 400);
    assert_eq!(
        http(&admin, "GET", "/api/explain?name=x&client=nope").0,
        400
    );

    let (status, body) = http(&admin, "GET", "/api/lists");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v[0]["name"], "threats", "{body}");
    assert_eq!(v[0]["entries"], 1, "{body}");

    assert_eq!(http(&admin, "GET", "/nope").0, 404);
    assert_eq!(http(&admin, "GET", "/").0, 404);
    assert_eq!(http(&admin, "POST", "/metrics").0, 405);
    assert_eq!(http(&admin, "DELETE", "/healthz").0, 405);
}

#[test]
fn readyz_fails_when_no_upstream_is_healthy_and_upstream_errors_are_counted() {
    let gate = Gate::start(CONFIG);
    let admin = gate.admin_addr();
    assert_eq!(http(&admin, "GET", "/readyz").0, 200);

    // Nothing listens on 127.0.0.1:9: three forwarded queries fail and take the only
    // upstream out of rotation.
    for i in 0..3 {
        assert_eq!(
            dig(gate.dns, &format!("n{i}.example"), "A", &[]).status,
            "SERVFAIL"
        );
    }
    let (status, body) = http(&admin, "GET", "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no upstream resolver is healthy"), "{body}");

    let (_, metrics) = http(&admin, "GET", "/metrics");
    assert_eq!(
        sample(
            &metrics,
            r#"portcullis_dns_queries_total{qtype="A",outcome="error"}"#
        ),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "portcullis_cache_misses_total"), Some(3.0));
    assert_eq!(
        sample(
            &metrics,
            r#"portcullis_upstream_errors_total{upstream="dead"}"#
        ),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"portcullis_upstream_request_duration_seconds_count{upstream="dead"}"#
        ),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, r#"portcullis_upstream_healthy{upstream="dead"}"#),
        Some(0.0),
        "{metrics}"
    );
    promtool_check(&metrics);

    // `portcullis health` follows /readyz.
    assert_eq!(health(&format!("http://{admin}/readyz")), Some(1));
    assert_eq!(health(&format!("http://{admin}/healthz")), Some(0));
    assert_eq!(health(&format!("http://{admin}/nope")), Some(1));
}

#[test]
fn health_exits_1_when_nothing_listens() {
    // A port that was free a moment ago.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    assert_eq!(health(&format!("http://127.0.0.1:{port}/readyz")), Some(1));
}

#[test]
fn proxy_decisions_are_counted_by_reason_code() {
    let gate = Gate::start(CONFIG);
    let admin = gate.admin_addr();
    let proxy = gate.proxy_addr();

    // Two refused CONNECTs: a name no allow rule names, and a threat-listed one.
    let mut codes = Vec::new();
    for host in ["not-allowed.example", "evil.example"] {
        let head = connect(&proxy, &format!("{host}:443"));
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        assert_eq!(status, 403, "{head}");
        let reason = reason_of(&head);
        let code: String = reason
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        assert!(!code.is_empty(), "{reason}");
        codes.push(code);
    }

    let (_, metrics) = http(&admin, "GET", "/metrics");
    let refused_total = metric_sum(
        &metrics,
        "portcullis_proxy_decisions_total",
        &[r#"decision="refused""#],
    );
    assert_eq!(refused_total, 2.0, "{metrics}");
    for code in &codes {
        let want = codes.iter().filter(|c| *c == code).count() as f64;
        assert_eq!(
            sample(
                &metrics,
                &format!(
                    r#"portcullis_proxy_decisions_total{{door="connect",decision="refused",reason="{code}"}}"#
                )
            ),
            Some(want),
            "{metrics}"
        );
    }
    assert!(!metrics.contains("not-allowed.example"), "{metrics}");
    assert_eq!(
        sample(&metrics, "portcullis_proxy_active_tunnels"),
        Some(0.0)
    );
    promtool_check(&metrics);
}

#[test]
fn post_endpoints_are_disabled_without_a_token_file() {
    let gate = Gate::start(CONFIG);
    let admin = gate.admin_addr();
    for path in ["/api/lists/refresh", "/api/cache/flush"] {
        let (status, body) = http_with(&admin, "POST", path, "Authorization: Bearer x\r\n");
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("token_file"), "{body}");
        assert_eq!(http(&admin, "GET", path).0, 405, "{path}");
    }
}

#[test]
fn post_endpoints_need_the_bearer_token_and_act() {
    let secret = "t0ken-never-logged";
    let config = format!(
        "{CONFIG}\n[admin]\nlisten = [\"127.0.0.1:0\"]\ntoken_file = \"admin-token\"\n\n\
         [[lists]]\nname = \"feed\"\nurl = \"file://{{DIR}}/feed.txt\"\nformat = \"domains\"\n"
    );
    // The file:// list lives in the gate's own temp dir: write the config after start_full
    // has made it, so point the url at a path we know first.
    let feed_dir = tempfile::tempdir().unwrap();
    let feed = feed_dir.path().join("feed.txt");
    std::fs::write(&feed, "first.example\n").unwrap();
    let config = config.replace("{DIR}", &feed_dir.path().display().to_string());
    let gate = Gate::start_full(
        &config,
        &[("admin-token", &format!("{secret}\n"))],
        &[("PORTCULLIS_ADMIN_LISTEN", "127.0.0.1:0")],
    );
    let admin = gate.admin_addr();
    gate.wait_for_log("\"list\":\"feed\"", Duration::from_secs(10));

    let refresh = "/api/lists/refresh";
    let (status, body) = http(&admin, "POST", refresh);
    assert_eq!(status, 401, "{body}");
    let (status, body) = http_with(&admin, "POST", refresh, "Authorization: Bearer wrong\r\n");
    assert_eq!(status, 401, "{body}");
    let (status, body) = http_with(&admin, "POST", refresh, "Authorization: Basic x\r\n");
    assert_eq!(status, 401, "{body}");
    let auth = format!("Authorization: Bearer {secret}\r\n");

    // The feed grows: a refresh picks it up at once and the policy blocks the new name.
    assert_eq!(dig(gate.dns, "second.example", "A", &[]).status, "SERVFAIL");
    std::fs::write(&feed, "first.example\nsecond.example\n").unwrap();
    let (status, body) = http_with(&admin, "POST", refresh, &auth);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["rebuilt"], true, "{body}");
    assert_eq!(v["sources"][0]["name"], "feed", "{body}");
    assert_eq!(v["sources"][0]["result"], "updated", "{body}");
    assert_eq!(v["sources"][0]["entries"], 2, "{body}");
    assert_eq!(dig(gate.dns, "second.example", "A", &[]).status, "NXDOMAIN");
    // Unchanged feed: nothing rebuilt.
    let (status, body) = http_with(&admin, "POST", refresh, &auth);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["rebuilt"], false, "{body}");
    assert_eq!(v["sources"][0]["result"], "unchanged", "{body}");

    let (status, body) = http_with(&admin, "POST", "/api/cache/flush", &auth);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["flushed"].as_u64().is_some(), "{body}");

    // The token never reaches the log.
    let logs = gate.logs().join("\n");
    assert!(logs.contains("admin action"), "{logs}");
    assert!(!logs.contains(secret), "{logs}");
}

#[test]
fn the_proxy_never_dials_the_admin_listener_even_with_private_true() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!("allowlist = \"allow.toml\"\n{CONFIG}");
    let allow = format!("[[allow]]\nhost = \"127.0.0.1\"\nports = [{port}]\nprivate = true\n");
    let admin_listen = format!("127.0.0.1:{port}");
    let gate = Gate::start_full(
        &config,
        &[("allow.toml", &allow)],
        &[("PORTCULLIS_ADMIN_LISTEN", &admin_listen)],
    );
    assert_eq!(gate.admin_addr(), admin_listen);
    let proxy = gate.proxy_addr();
    let raw = connect(&proxy, &format!("127.0.0.1:{port}"));
    assert!(raw.starts_with("HTTP/1.1 403"), "{raw}");
    assert!(raw.contains("own listeners"), "{raw}");
}

/// Item 17: the admin listener has the proxy's kind of limits. Connections waiting to
/// send a head fill the per-client cap (429 beyond, that client only) and the total
/// cap (503 beyond, every client); a head not sent in time gets 408; freed slots
/// serve again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_caps_connections_and_times_out_heads() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream as Stream;
    let config = format!(
        "{CONFIG}\n[admin]\nlisten = [\"127.0.0.1:0\"]\nmax_connections = 3\n\
         max_connections_per_client = 2\nheader_timeout_ms = 3000\n"
    );
    let gate = Gate::start(&config);
    let admin: std::net::SocketAddr = gate.admin_addr().parse().unwrap();
    let connect = |src: &'static str| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{src}:0").parse().unwrap()).unwrap();
        socket.connect(admin).await.unwrap()
    };
    /// Sends a request and reads the whole answer; its status.
    async fn status_of(mut s: Stream) -> (u16, String) {
        let _ = s
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await;
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let status = raw
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, raw)
    }
    /// Answered (refused) already, rather than waiting for its head?
    async fn answered(s: &Stream) -> bool {
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_millis(20), s.peek(&mut byte))
            .await
            .is_ok()
    }
    // Each accepted connection takes its slot in its own task, so a probe can overtake
    // a waiting connection and be served while that one is refused. Probe until the
    // probe is refused and every waiting connection still waits.
    let mut waiting: Vec<(&'static str, Stream)> = Vec::new();
    let fill = async |waiting: &mut Vec<(&'static str, Stream)>, src: &'static str, want: u16| {
        for _ in 0..100 {
            for (from, s) in waiting.iter_mut() {
                if answered(s).await {
                    *s = connect(from).await;
                }
            }
            let (status, raw) = status_of(connect(src).await).await;
            let mut all_waiting = true;
            for (_, s) in waiting.iter() {
                all_waiting &= !answered(s).await;
            }
            if status == want && all_waiting {
                return raw;
            }
            assert!(status == 200 || status == want, "{raw}");
        }
        panic!("{src} never got {want}; log:\n{}", gate.logs().join("\n"));
    };
    waiting.push(("127.0.0.1", connect("127.0.0.1").await));
    waiting.push(("127.0.0.1", connect("127.0.0.1").await));
    let raw = fill(&mut waiting, "127.0.0.1", 429).await;
    assert!(raw.contains("\r\nRetry-After: 1\r\n"), "{raw}");
    waiting.push(("127.0.0.2", connect("127.0.0.2").await));
    let raw = fill(&mut waiting, "127.0.0.3", 503).await;
    assert!(raw.contains("\r\nRetry-After: 1\r\n"), "{raw}");
    // The waiting connections get 408 once the header timeout passes.
    for (_, mut s) in waiting {
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await;
        let raw = String::from_utf8_lossy(&raw);
        assert!(raw.starts_with("HTTP/1.1 408 "), "{raw}");
    }
    let (status, raw) = status_of(connect("127.0.0.1").await).await;
    assert_eq!(status, 200, "{raw}");
}
