//! The binary's command line: `check`, `config check`, refusing bad configs,
//! reloading on SIGHUP without losing the running config, stopping on SIGTERM.

use std::process::Command;
use std::time::Duration;

use crate::support::config_head;
use crate::support::gate::{self, Gate, dig, portcullis, run};

const CONFIG: &str = concat!(
    config_head!(),
    r#"url = "udp://127.0.0.1:9"

[groups]
agent = ["10.20.0.0/16"]

[[lists]]
name = "threats"
path = "threats.txt"

[[lists]]
name = "agent-extra"
inline = """
=exact.example
/^c2-[0-9]+\\./
"""
groups = ["agent"]
"#
);

const THREATS: &str =
    "# header\n0.0.0.0 localhost\n0.0.0.0 evil.example\n0.0.0.0 api.anthropic.com\n";

fn write(dir: &std::path::Path) -> String {
    std::fs::write(dir.join("portcullis.toml"), CONFIG).unwrap();
    std::fs::write(dir.join("threats.txt"), THREATS).unwrap();
    dir.join("portcullis.toml").display().to_string()
}

#[test]
fn check_prints_the_decision_rule_list_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path());
    let (ok, out, err) = run(&["--config", &cfg, "check", "www.Evil.example."]);
    assert!(ok, "{err}");
    assert!(out.contains("decision: blocked"), "{out}");
    assert!(out.contains("rule:     evil.example"), "{out}");
    assert!(out.contains("list:     threats"), "{out}");
    assert!(out.contains("threats.txt:3"), "{out}");

    // The shipped allowlist beats the list that names api.anthropic.com.
    let (_, out, _) = run(&["--config", &cfg, "check", "api.anthropic.com"]);
    assert!(out.contains("decision: allowed"), "{out}");

    // Group-scoped rules apply only to that group's clients.
    let (_, out, _) = run(&[
        "--config",
        &cfg,
        "check",
        "c2-7.example.net",
        "--client",
        "10.20.1.1",
    ]);
    assert!(
        out.contains("decision: blocked") && out.contains("group agent"),
        "{out}"
    );
    assert!(
        out.contains("portcullis.toml:21"),
        "inline rules point at the config line: {out}"
    );
    let (_, out, _) = run(&[
        "--config",
        &cfg,
        "check",
        "c2-7.example.net",
        "--client",
        "192.0.2.1",
    ]);
    assert!(out.contains("decision: pass"), "{out}");

    let (_, out, _) = run(&[
        "--config",
        &cfg,
        "check",
        "--json",
        "exact.example",
        "--client",
        "10.20.0.1",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"], "blocked");
    assert_eq!(v["rule"], "=exact.example");
    assert_eq!(v["line"], 20);
}

#[test]
fn check_explains_dns_mode_and_query_type_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("portcullis.toml");
    std::fs::write(
        &cfg,
        r#"
[dns]
listen = ["127.0.0.1:0"]
modes = { agent = "allowlist" }
qtypes = { agent = ["A", "AAAA", "CNAME", "HTTPS"] }

[[upstream.servers]]
url = "udp://127.0.0.1:9"

[groups]
agent = ["10.20.0.0/16"]
"#,
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    let check = |args: &[&str]| {
        let mut all = vec!["--config", &cfg, "check"];
        all.extend_from_slice(args);
        let (ok, out, err) = run(&all);
        assert!(ok, "{err}");
        out
    };
    let out = check(&["unlisted.example", "--client", "10.20.0.5"]);
    assert!(
        out.contains("dns:      allowlist mode: not on the allowlist of group agent; answered NXDOMAIN, never asked upstream"),
        "{out}"
    );
    let out = check(&[
        "api.anthropic.com",
        "--client",
        "10.20.0.5",
        "--qtype",
        "txt",
    ]);
    assert!(
        out.contains("query type TXT is not served to group agent (served: A, AAAA, CNAME, HTTPS)"),
        "{out}"
    );
    let out = check(&["unlisted.example"]);
    assert!(
        out.contains("dns:      public mode: forwarded A; tunnel guard: log"),
        "{out}"
    );
    let (ok, _, err) = run(&["--config", &cfg, "check", "x.example", "--qtype", "BOGUS"]);
    assert!(
        !ok && err.contains("--qtype: `BOGUS` is not a query type"),
        "{err}"
    );
}

#[test]
fn config_check_validates_and_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path());
    let (ok, out, err) = run(&["config", "check", &cfg]);
    assert!(ok, "{err}");
    assert!(out.contains("list threats: 2 entries, 1 skipped"), "{out}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[dns]\nlisten = [\"127.0.0.1:0\"]\nblock_ttl = -5\n").unwrap();
    let (ok, _, err) = run(&["config", "check", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("bad.toml") && err.contains("line 3") && err.contains("block_ttl"),
        "{err}"
    );

    // A missing list file names the file.
    std::fs::remove_file(dir.path().join("threats.txt")).unwrap();
    let (ok, _, err) = run(&["config", "check", &cfg]);
    assert!(!ok);
    assert!(
        err.contains("threats.txt") && err.contains("cannot read"),
        "{err}"
    );
}

/// `config check` refuses what `run` refuses (issue 11, item 3): here a DoH upstream whose
/// CA file is missing, which only building the upstream pool finds.
#[test]
fn config_check_refuses_what_run_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("portcullis.toml");
    std::fs::write(
        &bad,
        "[dns]\nlisten = [\"127.0.0.1:0\"]\n\n[[upstream.servers]]\nurl = \"https://192.0.2.10/dns-query\"\nca_file = \"/nonexistent/ca.pem\"\n",
    )
    .unwrap();
    let bad = bad.to_str().unwrap();
    let (ok, _, check_err) = run(&["config", "check", bad]);
    assert!(!ok, "config check passed a config run refuses");
    assert!(
        check_err.contains("portcullis.toml:5: key `upstream.servers`")
            && check_err.contains("/nonexistent/ca.pem"),
        "{check_err}"
    );
    let (ok, _, run_err) = run(&["--config", bad]);
    assert!(!ok);
    assert!(run_err.contains("/nonexistent/ca.pem"), "{run_err}");

    // Without tls_name, an IP upstream is verified against the IP itself: accepted.
    let good = dir.path().join("ip.toml");
    std::fs::write(
        &good,
        "[dns]\nlisten = [\"127.0.0.1:0\"]\n\n[[upstream.servers]]\nurl = \"https://192.0.2.10/dns-query\"\n",
    )
    .unwrap();
    let (ok, out, err) = run(&["config", "check", good.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
}

/// A list header with a multi-byte character at byte 8 panicked format detection, so
/// neither `config check` nor `check` could read the configuration (issue 11, item 1).
#[test]
fn a_header_with_a_multibyte_character_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path());
    std::fs::write(dir.path().join("threats.txt"), "[abcdefé]\nevil.example\n").unwrap();
    let (ok, out, err) = run(&["config", "check", &cfg]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run(&["--config", &cfg, "check", "evil.example"]);
    assert!(ok && out.contains("decision: blocked"), "{out}{err}");
}

/// Output into a closed pipe ends quietly, as `ls | head` does (issue 11, item 2).
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::io::Read;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path());
    for args in [
        &["lists"][..],
        &["lists", "--json"],
        &["check", "evil.example"],
        &["check", "evil.example", "--json"],
        &["config", "check"],
    ] {
        let mut child = portcullis()
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the read end before the child writes anything: every write fails with EPIPE.
        drop(child.stdout.take());
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "{args:?}: {status:?} {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}

#[test]
fn the_gate_refuses_to_start_on_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("portcullis.toml");
    std::fs::write(&bad, "[dns]\nlisten = [\"127.0.0.1:0\"]\n\n[[lists]]\nname = \"x\"\ninline = \"a.example\"\ngroups = [\"nobody\"]\n").unwrap();
    let (ok, _, err) = run(&["--config", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("portcullis.toml:7: key `lists.groups`: unknown group `nobody`"),
        "{err}"
    );
}

#[test]
fn sighup_reloads_a_good_config_and_refuses_a_bad_one() {
    let mut gate = Gate::start_full(CONFIG, &[("threats.txt", THREATS)], &[]);
    assert_eq!(dig(gate.dns, "evil.example", "A", &[]).status, "NXDOMAIN");
    assert_eq!(
        dig(gate.dns, "newly-bad.example", "A", &[]).status,
        "SERVFAIL"
    );

    // A good change is applied.
    std::fs::write(
        gate.dir.path().join("threats.txt"),
        format!("{THREATS}0.0.0.0 newly-bad.example\n"),
    )
    .unwrap();
    gate.signal("HUP");
    gate.wait_for_log("configuration reloaded", Duration::from_secs(10))
        .expect("reload");
    assert_eq!(
        dig(gate.dns, "newly-bad.example", "A", &[]).status,
        "NXDOMAIN"
    );

    // A bad one is refused with file, line and key; the running config keeps serving.
    std::fs::write(
        gate.dir.path().join("portcullis.toml"),
        format!("bogus = 1\n{CONFIG}"),
    )
    .unwrap();
    gate.signal("HUP");
    let line = gate
        .wait_for_log("reload refused", Duration::from_secs(10))
        .expect("refusal logged");
    assert!(
        line.contains("portcullis.toml") && line.contains("bogus"),
        "{line}"
    );
    assert_eq!(
        dig(gate.dns, "newly-bad.example", "A", &[]).status,
        "NXDOMAIN"
    );
    assert_eq!(dig(gate.dns, "evil.example", "A", &[]).status, "NXDOMAIN");
    assert!(gate.is_running());
}

#[test]
fn sigterm_stops_cleanly() {
    let gate = Gate::start_full(CONFIG, &[("threats.txt", THREATS)], &[]);
    assert_eq!(dig(gate.dns, "evil.example", "A", &[]).status, "NXDOMAIN");
    let status = gate.stop();
    assert!(status.success(), "exit status {status:?}");
}

/// The preStop hook of clusters before Kubernetes 1.30 (deploy/k8s/deployment.yaml): the
/// image has no shell, so the gate sleeps itself.
#[test]
fn sleep_waits_then_exits_zero() {
    let started = std::time::Instant::now();
    let (ok, _, err) = run(&["sleep", "1"]);
    assert!(ok, "{err}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    let (ok, _, err) = run(&["sleep", "ten"]);
    assert!(!ok && err.contains("ten"), "{err}");
}

#[test]
fn every_bound_address_is_logged() {
    let gate = Gate::start_full(CONFIG, &[("threats.txt", THREATS)], &[]);
    let udp = gate
        .wait_for_log("listening dns/udp", Duration::from_secs(5))
        .unwrap();
    let tcp = gate
        .wait_for_log("listening dns/tcp", Duration::from_secs(5))
        .unwrap();
    assert_eq!(
        gate::json_field(&udp, "addr"),
        gate::json_field(&tcp, "addr")
    );
    assert_eq!(
        gate::json_field(&udp, "addr").unwrap(),
        gate.dns.to_string()
    );
}

#[test]
fn the_binary_serves_the_proxy_with_the_same_policy() {
    let gate = Gate::start_full(CONFIG, &[("threats.txt", THREATS)], &[]);
    let proxy = gate.proxy_addr();
    // CONNECT to a name no allow rule names: refused with a readable reason, no tunnel.
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_connect}",
            "--max-time",
            "5",
        ])
        .args([
            "-x",
            &format!("http://{proxy}"),
            "https://not-allowed.example/",
        ])
        .output()
        .expect("curl (Debian package curl) must be installed");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403", "{out:?}");
    // A threat-listed name: the proxy refuses it too, naming the list.
    let out = Command::new("curl")
        .args([
            "-sS",
            "-i",
            "--max-time",
            "5",
            "-x",
            &format!("http://{proxy}"),
        ])
        .arg("http://evil.example/")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.starts_with("http/1.1 403"), "{text}");
    assert!(
        text.contains("x-portcullis-reason:") && text.contains("threats"),
        "{text}"
    );

    // One JSON decision line per refusal, saying why.
    let refusal = gate
        .wait_for_log("not-allowed.example", Duration::from_secs(5))
        .expect("decision line for the CONNECT");
    let line: serde_json::Value = serde_json::from_str(&refusal).unwrap();
    assert_eq!(line["door"], "proxy", "{refusal}");
    assert_eq!(line["decision"], "refused", "{refusal}");
    assert_eq!(line["status"], 403, "{refusal}");
    assert_eq!(line["reason_code"], "not_allowlisted", "{refusal}");
    assert_eq!(line["client"], "127.0.0.1", "{refusal}");
    assert_eq!(line["request"], "not-allowed.example:443", "{refusal}");
}
