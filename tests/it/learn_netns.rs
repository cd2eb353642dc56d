//! Learn mode end to end, in routed_netns.rs's namespaces (the agent, the gate, an
//! "internet" with a DoH server and a TLS/HTTP origin, a LAN NAS): a scripted agent run
//! in report mode (Node's built-in fetch and curl routed with no proxy settings, curl
//! through the proxy, a DNS lookup, a threat-listed name), then `portcullis allowlist
//! suggest` and `apply`, then the same run in allowlist mode (DNS `routed`, proxy
//! `allowlist`) with the applied allowlist alone: it passes, and names the run did not use
//! are still refused.
//!
//! Needs root and what routed_netns.rs needs: `#[ignore]`d for a plain `cargo test`;
//! scripts/test.sh runs it, and when it runs, a missing precondition fails it.

use std::process::Command;

use crate::routed_netns::Topology;
use crate::support::container::{readable_by_all, static_binary};

/// One step of the agent's run: what it did, whether it got what the run needs, the output.
type Step = (&'static str, bool, String);

/// curl through the gate's proxy from the agent: (CONNECT or HTTP code, output).
fn curl_proxy(topo: &Topology, url: &str) -> (String, String) {
    let out = topo
        .client("curl")
        .args(["-sS", "--max-time", "8", "--cacert", &topo.net.origin_ca])
        .args(["-x", "http://10.77.0.1:3128"])
        .args(["-o", "-", "-w", "\n%{http_connect} %{http_code}", url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let codes = stdout.lines().last().unwrap_or("").to_owned();
    (
        codes,
        format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

/// The agent's run: the same script, whatever the mode.
fn agent_run(topo: &Topology) -> Vec<Step> {
    let mut steps = Vec::new();
    let (ok, out) = topo.node_fetch("https://allowed.test/");
    steps.push((
        "Node fetch https://allowed.test/ (routed TLS, no proxy settings)",
        ok && out.contains("status 200") && out.contains("hello from origin allowed.test"),
        out,
    ));
    let (_, code, out) = topo.curl("http://allowed.test/");
    steps.push((
        "curl http://allowed.test/ (routed HTTP)",
        code == "200",
        out,
    ));
    let (codes, out) = curl_proxy(topo, "https://alt.test/");
    steps.push((
        "curl -x proxy https://alt.test/ (CONNECT)",
        codes == "200 200" && out.contains("hello from origin alt.test"),
        out,
    ));
    let (status, answers) = topo.dig("notallowed.test");
    steps.push((
        "dig notallowed.test (a lookup only)",
        status == "NOERROR" && answers == ["10.77.0.1"],
        format!("{status} {answers:?}"),
    ));
    let (ok, out) = topo.node_fetch("https://evil.test/");
    steps.push((
        "Node fetch https://evil.test/ (threat-listed: refused in every mode)",
        !ok && out.contains("ENOTFOUND"),
        out,
    ));
    steps
}

fn print_steps(title: &str, steps: &[Step]) {
    println!("{title}");
    for (what, ok, out) in steps {
        let out = out.replace('\n', " ");
        let out: String = out.chars().take(100).collect();
        println!(
            "  {:<70} {}  {out}",
            what,
            if *ok { "ok  " } else { "FAIL" }
        );
    }
}

#[test]
#[ignore = "needs root, iproute2, util-linux, procps, dig, curl, ping, node, openssl: scripts/test.sh runs it"]
fn report_suggest_apply_then_the_same_run_passes_in_allowlist_mode() {
    let topo = Topology::new();
    topo.gate.apply_compose_sysctls();
    let etc = topo.etc.path().to_owned();
    let config = etc.join("portcullis.toml");

    // 1. Report mode, nothing allowed for the agent: the run still works (report mode
    //    lets public destinations through) and the gate learns what it used.
    let gate = topo.start_gate_with("", "routed_report", "report");
    let learning = agent_run(&topo);
    print_steps("report mode (DNS routed_report, proxy report):", &learning);
    assert!(
        learning.iter().all(|s| s.1),
        "the run failed in report mode"
    );

    // 2. Suggest, from the running gate's admin API (as the container's user would).
    let out = topo
        .gate
        .as_container(
            topo.cache.path(),
            &[
                "--config",
                config.to_str().unwrap(),
                "allowlist",
                "suggest",
                "--group",
                "agent",
            ],
        )
        .output()
        .unwrap();
    let fragment = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "suggest: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("suggested:\n{fragment}");
    let parsed: toml::Table = toml::from_str(&fragment).unwrap();
    let mut rules: Vec<(String, Vec<i64>)> = parsed["allow"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let ports = r.get("ports").map_or_else(Vec::new, |p| {
                p.as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_integer().unwrap())
                    .collect()
            });
            (r["host"].as_str().unwrap().to_owned(), ports)
        })
        .collect();
    rules.sort();
    assert_eq!(
        rules,
        [
            ("allowed.test".to_owned(), vec![80, 443]),
            ("alt.test".to_owned(), vec![443]),
            ("notallowed.test".to_owned(), vec![]),
        ],
        "{fragment}"
    );
    assert!(
        fragment.contains("doors: dns, routed_tls, routed_http; ports: 80, 443"),
        "{fragment}"
    );
    assert!(
        fragment.contains("# evil.test (group agent): blocked anyway: list threats"),
        "{fragment}"
    );
    drop(gate);

    // 3. Apply it to the allowlist the configuration names (as the operator, on the host).
    let fragment_file = etc.join("suggested.toml");
    std::fs::write(&fragment_file, &fragment).unwrap();
    let apply = |args: &[&str]| {
        Command::new(static_binary())
            .args(["--config", config.to_str().unwrap(), "allowlist"])
            .args(args)
            .arg(&fragment_file)
            .env_remove("PORTCULLIS_CONFIG")
            .output()
            .unwrap()
    };
    let out = apply(&["apply"]);
    assert!(
        out.status.success(),
        "apply: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let applied = std::fs::read_to_string(etc.join("allowlist.toml")).unwrap();
    println!("applied allowlist.toml:\n{applied}");
    assert_eq!(
        apply(&["diff"]).status.code(),
        Some(0),
        "applied: nothing left to change"
    );
    readable_by_all(&etc);

    // 4. The same run in allowlist mode, with nothing allowed but what was applied.
    let gate = topo.start_gate_with(&applied, "routed", "allowlist");
    let locked = agent_run(&topo);
    print_steps("allowlist mode (DNS routed, proxy allowlist):", &locked);
    // Names the run did not use stay shut, at the DNS and at the proxy.
    let mut shut: Vec<Step> = Vec::new();
    for name in ["nas.test", "loop.test"] {
        let (status, answers) = topo.dig(name);
        shut.push((
            "dig of a name the run did not use",
            status == "NXDOMAIN" && answers.is_empty(),
            format!("{name}: {status} {answers:?}"),
        ));
    }
    let (codes, out) = curl_proxy(&topo, "https://nas.test/");
    shut.push((
        "curl -x proxy https://nas.test/ (not used by the run)",
        codes.starts_with("403"),
        out,
    ));
    // The refusal tells the agent what to ask for (curl shows a body of plain HTTP only).
    let (codes, out) = curl_proxy(&topo, "http://nas.test/");
    shut.push((
        "curl -x proxy http://nas.test/: the 403 names the command",
        codes == "000 403"
            && out.contains("not on the allowlist of group agent")
            && out.contains("portcullis allowlist add nas.test --port 80 --group agent"),
        out,
    ));
    let (ok, out) = topo.node_fetch("https://loop.test/");
    shut.push((
        "Node fetch https://loop.test/ (not used by the run)",
        !ok && out.contains("ENOTFOUND"),
        out,
    ));
    print_steps("what the run did not use:", &shut);
    // Every connection the origin saw came from the gate.
    let seen = topo.net.seen();
    let foreign: Vec<&String> = seen
        .iter()
        .filter(|s| !s.contains("from 52.10.0.1:"))
        .collect();
    drop(gate);
    assert!(
        locked.iter().all(|s| s.1),
        "the run failed in allowlist mode"
    );
    assert!(
        shut.iter().all(|s| s.1),
        "a name the run did not use got through"
    );
    assert!(foreign.is_empty(), "the origin saw {foreign:?}");
}
