//! `portcullis allowlist diff` and `apply` (issue 16): the real binary merges a fragment
//! into the configuration's allowlist, keeps the file's text, refuses a bad fragment
//! without touching the file, and the running gate reloads what `apply` wrote.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::support::config_head;
use crate::support::gate::{Gate, portcullis};
use crate::support::http::http;

const CONFIG: &str = concat!(
    config_head!(),
    r#"url = "udp://127.0.0.1:9"

[groups]
agent = ["10.20.0.0/16"]
"#
);

const ALLOWLIST: &str = "\
# Our allowlist.

# LLM API
[[allow]]
host = \"api.anthropic.com\"
comment = \"Anthropic API (Claude)\"

[[allow]]
host = \"git.example.org\"   # the agent's forge
groups = [\"agent\"]
";

const FRAGMENT: &str = "\
# portcullis allowlist suggest: group agent

# 12 requests, first seen 2026-12-02T04:50:01Z; doors: proxy, dns; ports: 443
[[allow]]
host = \"api.example.com\"
ports = [443]
groups = [\"agent\"]
comment = \"learned in report mode\"

# 3 requests, first seen 2026-12-02T04:51:00Z; doors: proxy; ports: 22
[[allow]]
host = \"Git.Example.org.\"
ports = [22]
groups = [\"agent\"]
";

/// `allowlist = "allowlist.toml"` on top of [`CONFIG`]: a config dir with both files and
/// the fragment; the config's path.
fn config_dir(dir: &Path) -> String {
    std::fs::write(
        dir.join("portcullis.toml"),
        format!("allowlist = \"allowlist.toml\"\n{CONFIG}"),
    )
    .unwrap();
    std::fs::write(dir.join("allowlist.toml"), ALLOWLIST).unwrap();
    std::fs::write(dir.join("fragment.toml"), FRAGMENT).unwrap();
    dir.join("portcullis.toml").display().to_string()
}

fn allowlist(config: &str, args: &[&str]) -> Output {
    portcullis()
        .args(["--config", config, "allowlist"])
        .args(args)
        .output()
        .expect("run portcullis")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn diff_shows_apply_writes_and_a_second_diff_finds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_dir(dir.path());
    let file = dir.path().join("allowlist.toml");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let fragment = dir.path().join("fragment.toml").display().to_string();

    let diff = allowlist(&config, &["diff", &fragment]);
    let out = text(&diff.stdout);
    assert_eq!(diff.status.code(), Some(1), "{out}{}", text(&diff.stderr));
    assert!(
        out.starts_with(
            "+ api.example.com ports [443] groups [agent] (new rule)\n\
             ~ git.example.org: ports 443 -> 443, 22\n\
             1 new rule, 1 rule extended, 0 already allowed\n\n---"
        ),
        "{out}"
    );
    assert!(out.contains("+host = \"api.example.com\"\n"), "{out}");
    assert!(out.contains("+ports = [443, 22]\n"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        ALLOWLIST,
        "diff writes nothing"
    );

    let apply = allowlist(&config, &["apply", &fragment]);
    let out = text(&apply.stdout);
    assert!(apply.status.success(), "{out}{}", text(&apply.stderr));
    assert!(
        out.contains("~ git.example.org: ports 443 -> 443, 22\n")
            && out.contains(
                "allowlist.toml: written (1 new rule, 1 rule extended, 0 already allowed)"
            ),
        "{out}"
    );
    let expected = format!(
        "{}\n{}",
        ALLOWLIST.replace(
            "host = \"git.example.org\"   # the agent's forge\n",
            "host = \"git.example.org\"   # the agent's forge\nports = [443, 22]\n"
        ),
        "# 12 requests, first seen 2026-12-02T04:50:01Z; doors: proxy, dns; ports: 443\n\
         [[allow]]\n\
         host = \"api.example.com\"\n\
         ports = [443]\n\
         groups = [\"agent\"]\n\
         comment = \"learned in report mode\"\n"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), expected);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o640, "the file keeps its mode");

    // What apply wrote is what the gate reads.
    let check = portcullis()
        .args(["--config", &config, "config", "check"])
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check.stderr));
    assert!(
        text(&check.stdout).contains("3 allow rules"),
        "{}",
        text(&check.stdout)
    );

    let again = allowlist(&config, &["diff", &fragment]);
    let out = text(&again.stdout);
    assert_eq!(again.status.code(), Some(0), "{out}{}", text(&again.stderr));
    assert!(
        out.contains("= api.example.com (already allowed)\n= git.example.org (already allowed)\n")
            && out.contains("nothing to change"),
        "{out}"
    );
    let reapply = allowlist(&config, &["apply", &fragment]);
    assert!(reapply.status.success());
    assert!(text(&reapply.stdout).contains("nothing to change, not written"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), expected);
}

#[test]
fn a_bad_fragment_leaves_the_file_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_dir(dir.path());
    let file = dir.path().join("allowlist.toml");
    let bad = dir.path().join("bad.toml");
    let listing = || {
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    for (fragment, error) in [
        (
            "[[allow]]\nhost = \"a.example\"\n\n[[allow]]\nhots = \"b.example\"\n",
            "bad.toml:5: key `allow.hots`: unknown key",
        ),
        (
            "[[allow]]\nhost = \"not a host\"\n",
            "bad.toml:2: key `allow.host`: `not a host`",
        ),
        (
            "[[allow]]\nhost = \"a.example\"\ngroups = [\"sandbox\"]\n",
            "bad.toml:3: key `allow.groups`: unknown group `sandbox`",
        ),
        (
            "[[allow]\nhost = \"a.example\"\n",
            "bad.toml:1: TOML syntax: ",
        ),
    ] {
        std::fs::write(&bad, fragment).unwrap();
        let before = listing();
        let bad = bad.display().to_string();
        let diff = allowlist(&config, &["diff", &bad]);
        assert_eq!(diff.status.code(), Some(2), "{fragment}");
        assert!(text(&diff.stderr).contains(error), "{}", text(&diff.stderr));
        let apply = allowlist(&config, &["apply", &bad]);
        assert_eq!(apply.status.code(), Some(1), "{fragment}");
        assert!(
            text(&apply.stderr).contains(error),
            "{}",
            text(&apply.stderr)
        );
        assert_eq!(std::fs::read(&file).unwrap(), ALLOWLIST.as_bytes());
        assert_eq!(listing(), before, "no temporary file left behind");
    }

    // The built-in configuration's allowlist is built in: nothing to write to.
    let apply = portcullis()
        .args(["allowlist", "apply"])
        .arg(dir.path().join("fragment.toml"))
        .env_remove("PORTCULLIS_ALLOWLIST")
        .output()
        .unwrap();
    assert_eq!(apply.status.code(), Some(1));
    let err = text(&apply.stderr);
    assert!(
        err.contains("<built-in> uses the built-in allowlist") && err.contains("pass --config"),
        "{err}"
    );
}

#[test]
fn the_running_gate_reloads_what_apply_wrote() {
    let gate = Gate::start_full(
        &format!("allowlist = \"allowlist.toml\"\n{CONFIG}"),
        &[("allowlist.toml", ALLOWLIST), ("fragment.toml", FRAGMENT)],
        &[],
    );
    let admin = gate.admin_addr();
    let explain = || {
        let (status, body) = http(
            &admin,
            "GET",
            "/api/explain?name=api.example.com&client=10.20.0.7",
        );
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        (v["decision"].as_str().unwrap_or_default().to_owned(), v)
    };
    assert_eq!(explain().0, "pass", "no rule names it yet");

    let config = gate
        .dir
        .path()
        .join("portcullis.toml")
        .display()
        .to_string();
    let fragment = gate.dir.path().join("fragment.toml").display().to_string();
    let apply = allowlist(&config, &["apply", &fragment]);
    assert!(apply.status.success(), "{}", text(&apply.stderr));
    gate.wait_for_log("configuration reloaded", Duration::from_secs(10))
        .expect("the watcher reloads the renamed file");
    let (decision, v) = explain();
    assert_eq!(decision, "allowed", "{v}");
    assert_eq!(v["rule"], "api.example.com", "{v}");
    assert!(
        v["source"]
            .as_str()
            .is_some_and(|s| s.ends_with("allowlist.toml")),
        "{v}"
    );
}

/// `allowlist add`, the command a refusal names: one rule merged as `apply` merges it.
#[test]
fn add_allows_one_host_and_a_second_add_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_dir(dir.path());
    let args = [
        "add",
        "api.new.example",
        "--port",
        "8443",
        "--group",
        "agent",
    ];
    let out = allowlist(&config, &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("+ api.new.example"),
        "{}",
        text(&out.stdout)
    );
    let written = std::fs::read_to_string(dir.path().join("allowlist.toml")).unwrap();
    assert_eq!(
        written,
        format!(
            "{ALLOWLIST}\n[[allow]]\nhost = \"api.new.example\"\nports = [8443]\ngroups = [\"agent\"]\ncomment = \"added with portcullis allowlist add\"\n"
        )
    );
    let again = allowlist(&config, &args);
    assert!(again.status.success());
    assert!(
        text(&again.stdout).contains("nothing to change"),
        "{}",
        text(&again.stdout)
    );
    // A port for an existing rule widens it in place.
    let out = allowlist(
        &config,
        &["add", "git.example.org", "--port", "22", "--group", "agent"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let widened = std::fs::read_to_string(dir.path().join("allowlist.toml")).unwrap();
    assert!(
        widened.contains(
            "host = \"git.example.org\"   # the agent's forge\nports = [443, 22]\ngroups = [\"agent\"]\n"
        ),
        "{widened}"
    );
    // A bad host or group is refused and nothing is written.
    for bad in [
        vec!["add", "not a host", "--group", "agent"],
        vec!["add", "ok.example", "--group", "nobody"],
    ] {
        let out = allowlist(&config, &bad);
        assert!(!out.status.success(), "{bad:?} was accepted");
        assert!(
            text(&out.stderr).contains("<allowlist add>") || text(&out.stderr).contains("nobody"),
            "{}",
            text(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("allowlist.toml")).unwrap(),
            widened
        );
    }
}
