//! Learn mode through the real binary, on loopback: what report mode saw at the DNS and
//! the proxy becomes `GET /api/suggestions` and `portcullis allowlist suggest`; what must
//! stay shut (threat-listed, private, IP literals) is never a plain rule; the table keeps
//! its cap under a flood and survives a restart. The group's client is 127.0.0.2 (dig -b,
//! curl --interface). Nothing is dialled: every proxy request here is refused before a
//! dial (a port outside the public ones, an IP literal, a private answer).

use std::net::Ipv4Addr;
use std::process::Command;

use crate::support::doh_server::{DohServer, TestZone};
use crate::support::gate::{Gate, dig_async as dig, portcullis};
use crate::support::http::{http, http_with};
use crate::support::metrics::sample;

const PUBLIC: Ipv4Addr = Ipv4Addr::new(93, 184, 215, 14);
const AGENT: &str = "127.0.0.2";
const TOKEN: &str = "learn-test-token-0123456789";

fn zone() -> TestZone {
    TestZone::new()
        .a("api.learned.example", PUBLIC)
        .a("a.cdn.learned.example", PUBLIC)
        .a("b.cdn.learned.example", PUBLIC)
        .a("c.cdn.learned.example", PUBLIC)
        .a("nas.learned.example", Ipv4Addr::new(10, 1, 2, 3))
        .a("evil.example", PUBLIC)
        .a("allowed.example", PUBLIC)
}

fn config(doh: &DohServer, learn: &str) -> String {
    format!(
        r#"
allowlist = "allowlist.toml"

[dns]
listen = ["127.0.0.1:0"]
modes = {{ agent = "report" }}

[proxy]
modes = {{ agent = "report" }}

[admin]
listen = ["127.0.0.1:0"]
token_file = "admin-token"

[groups]
agent = ["127.0.0.2/32"]

[learn]
{learn}

[[lists]]
name = "threats"
inline = "evil.example"

{upstream}
"#,
        upstream = doh.upstream_toml(),
    )
}

const ALLOWLIST: &str = "[[allow]]\nhost = \"allowed.example\"\ngroups = [\"agent\"]\n";

fn start(doh: &DohServer, learn: &str, cache: &std::path::Path) -> Gate {
    Gate::start_full(
        &config(doh, learn),
        &[("allowlist.toml", ALLOWLIST), ("admin-token", TOKEN)],
        &[("PORTCULLIS_CACHE_DIR", cache.to_str().unwrap())],
    )
}

/// `curl -x PROXY URL` from the agent's address: the status of the proxy's CONNECT answer.
fn curl_via_proxy(gate: &Gate, url: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_connect}",
            "--max-time",
            "5",
        ])
        .args(["--interface", AGENT, "-x"])
        .arg(format!("http://{}", gate.proxy_addr()))
        .arg(url)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn suggestions(gate: &Gate, query: &str) -> (u16, String) {
    http_with(
        &gate.admin_addr(),
        "GET",
        &format!("/api/suggestions?{query}"),
        &format!("Authorization: Bearer {TOKEN}\r\n"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn report_mode_suggests_the_allowlist_and_never_what_must_stay_shut() {
    let doh = DohServer::start(zone()).await;
    let cache = tempfile::tempdir().unwrap();
    let gate = start(&doh, "", cache.path());
    let dns = gate.dns;
    for name in [
        "api.learned.example",
        "a.cdn.learned.example",
        "b.cdn.learned.example",
        "c.cdn.learned.example",
        "nas.learned.example",
        "evil.example",
        "allowed.example",
    ] {
        dig(dns, name, "A", &["-b", AGENT]).await;
    }
    // A tunnel under a name report mode forwards: the guard (log, in report mode) trips,
    // and nothing under its registered domain is ever suggested.
    let secret = crate::dns_modes::base32_secret(2048);
    crate::dns_modes::exfiltrate(&gate, &doh, "tunnel.example", &secret).await;
    // A client of no report-mode group teaches nothing.
    dig(dns, "default-group.learned.example", "A", &[]).await;
    // Through the proxy: a port allowlist mode would need a rule for (refused here too:
    // 8443 is not a public port, so nothing is dialled), an IP literal, a private answer.
    assert_eq!(
        curl_via_proxy(&gate, "https://api.learned.example:8443/"),
        "403"
    );
    assert_eq!(curl_via_proxy(&gate, "https://203.0.113.7/"), "403");
    assert_eq!(curl_via_proxy(&gate, "https://nas.learned.example/"), "403");
    assert_eq!(curl_via_proxy(&gate, "https://evil.example/"), "403");

    // The token guards what the agents reach.
    let (status, _) = http(&gate.admin_addr(), "GET", "/api/suggestions");
    assert_eq!(status, 401);
    for bad in [
        "group=nobody",
        "since=2w",
        "min_count=many",
        "format=xml",
        "colour=blue",
        "group=%zz",
    ] {
        let (status, body) = suggestions(&gate, bad);
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = http(&gate.admin_addr(), "POST", "/api/suggestions");
    assert_eq!(status, 405);

    let (status, fragment) = suggestions(&gate, "group=agent");
    assert_eq!(status, 200, "{fragment}");
    let parsed: toml::Table =
        toml::from_str(&fragment).unwrap_or_else(|e| panic!("{e}\n{fragment}"));
    let rules: Vec<(String, Vec<i64>, bool)> = parsed["allow"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["groups"].as_array().unwrap()[0].as_str(), Some("agent"));
            let ports = r
                .get("ports")
                .map(|p| {
                    p.as_array()
                        .unwrap()
                        .iter()
                        .map(|p| p.as_integer().unwrap())
                        .collect()
                })
                .unwrap_or_default();
            let private = r.get("private").and_then(|p| p.as_bool()).unwrap_or(false);
            (r["host"].as_str().unwrap().to_owned(), ports, private)
        })
        .collect();
    assert_eq!(
        rules,
        [
            ("*.cdn.learned.example".to_owned(), vec![], false),
            ("api.learned.example".to_owned(), vec![8443], false),
            ("nas.learned.example".to_owned(), vec![443], true),
        ],
        "{fragment}"
    );
    for needle in [
        "# REVIEW: resolved to a private address (10.1.2.3)",
        "# stands for 3 names seen: a.cdn.learned.example, b.cdn.learned.example, c.cdn.learned.example",
        "# evil.example (group agent): blocked anyway: list threats, rule",
        "# 203.0.113.7 (group agent): IP literal: never suggested",
        "doors: dns, connect; ports: 8443",
        "# tunnel.example (group agent): suspicious: the tunnel guard flagged its registered domain",
    ] {
        assert!(
            fragment.contains(needle),
            "missing {needle:?} in\n{fragment}"
        );
    }
    assert!(
        !fragment.contains("allowed.example\""),
        "already allowed: not suggested\n{fragment}"
    );
    assert!(!fragment.contains("default-group"), "{fragment}");
    assert!(
        !fragment.contains(".tunnel.example\""),
        "no rule under a flagged domain\n{fragment}"
    );

    // The CLI prints the same fragment from the running gate.
    let dir = gate_dir_config(&gate);
    let out = portcullis()
        .args([
            "--config",
            &dir,
            "allowlist",
            "suggest",
            "--group",
            "agent",
            "--url",
        ])
        .arg(format!("http://{}", gate.admin_addr()))
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains("host = \"api.learned.example\"\nports = [8443]"),
        "{printed}"
    );
    let json = portcullis()
        .args([
            "--config",
            &dir,
            "allowlist",
            "suggest",
            "--json",
            "--min-count",
            "2",
            "--url",
        ])
        .arg(format!("http://{}", gate.admin_addr()))
        .output()
        .unwrap();
    // api.learned.example: one lookup and one CONNECT; nas: one lookup and one CONNECT.
    let hosts = hosts_of(&json.stdout);
    assert!(
        hosts.iter().any(|h| h == "api.learned.example")
            && !hosts.iter().any(|h| h == "*.cdn.learned.example"),
        "{hosts:?}"
    );

    // The table survives a restart (saved at the stop, read back at the start).
    assert!(gate.stop().success());
    assert!(cache.path().join("learned.json").exists());
    let again = start(&doh, "", cache.path());
    let (status, after) = suggestions(&again, "group=agent");
    assert_eq!(status, 200);
    let strip = |t: &str| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        strip(&after),
        strip(&fragment),
        "the first line holds the time"
    );
}

/// The `host` of every suggestion of a `format=json` answer.
fn hosts_of(json: &[u8]) -> Vec<String> {
    let json: serde_json::Value = serde_json::from_slice(json).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .map(|s| s["host"].as_str().unwrap().to_owned())
        .collect()
}

/// The config path the support harness wrote (the gate's `--config`).
fn gate_dir_config(gate: &Gate) -> String {
    gate.config_path().display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_unique_names_keeps_the_table_within_its_cap() {
    let doh = DohServer::start(zone()).await;
    let cache = tempfile::tempdir().unwrap();
    let gate = start(&doh, "max_entries = 50", cache.path());
    let names = tempfile::NamedTempFile::new().unwrap();
    let batch: String = (0..600)
        .map(|i| format!("n{i}.flood{i}.example A\n"))
        .collect();
    std::fs::write(names.path(), batch).unwrap();
    let out = Command::new("dig")
        .args([
            "-b",
            AGENT,
            "-p",
            &gate.dns.port().to_string(),
            "@127.0.0.1",
        ])
        .args(["+tries=1", "+time=2", "+noall", "-f"])
        .arg(names.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, metrics) = http(&gate.admin_addr(), "GET", "/metrics");
    assert_eq!(
        sample(&metrics, "portcullis_learn_entries"),
        Some(50.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "portcullis_learn_evictions_total"),
        Some(550.0)
    );
    let (status, json) = suggestions(&gate, "format=json");
    assert_eq!(status, 200);
    let hosts = hosts_of(json.as_bytes());
    assert_eq!(hosts.len(), 50);
    // The newest stay.
    assert!(
        hosts.iter().any(|h| h == "n599.flood599.example"),
        "{hosts:?}"
    );
    assert!(!hosts.iter().any(|h| h == "n0.flood0.example"));
}
