//! `portcullis env`: the proxy variables for a client container, in the three formats, and
//! proof that each output parses back to the same variables (the shell form through `sh`,
//! the YAML forms through PyYAML when a python3 has it, else a strict parse here).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use crate::support::config_head;
use crate::support::gate::run;

const CONFIG: &str = concat!(
    config_head!(),
    r#"url = "udp://127.0.0.1:9"

[proxy]
listen = ["172.30.0.53:3128"]
"#
);

const WILDCARD: &str = concat!(
    config_head!(),
    r#"url = "udp://127.0.0.1:9"

[proxy]
listen = ["0.0.0.0:3128"]
"#
);

type Vars = BTreeMap<String, String>;

fn expected(host: &str, url: &str, no_proxy_extra: &str, java_extra: &str) -> Vars {
    let no_proxy = format!("localhost,127.0.0.1,::1,{host}{no_proxy_extra}");
    let java = format!(
        "-Dhttps.proxyHost={host} -Dhttps.proxyPort=3128 -Dhttp.proxyHost={host} \
         -Dhttp.proxyPort=3128 -Dhttp.nonProxyHosts=localhost|127.*|[::1]|{host}{java_extra}"
    );
    [
        ("HTTPS_PROXY", url),
        ("HTTP_PROXY", url),
        ("https_proxy", url),
        ("http_proxy", url),
        ("NO_PROXY", no_proxy.as_str()),
        ("no_proxy", no_proxy.as_str()),
        ("NODE_USE_ENV_PROXY", "1"),
        ("JAVA_TOOL_OPTIONS", java.as_str()),
        ("grpc_proxy", url),
        ("GIT_CONFIG_COUNT", "1"),
        ("GIT_CONFIG_KEY_0", "http.proxy"),
        ("GIT_CONFIG_VALUE_0", url),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Sources the shell form in `sh` with an empty environment and reads back what it set.
fn through_sh(dir: &std::path::Path, text: &str) -> Vars {
    let file = write(dir, "proxy.env", text);
    let out = Command::new("sh")
        .args(["-c", ". \"$1\"; env -0", "sh", &file])
        .env_clear()
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split('\0')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| !matches!(*k, "PWD" | "SHLVL" | "_" | "OLDPWD"))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A python3 that can `import yaml`, if there is one (the deploy checks' venv has one).
fn python_with_yaml() -> Option<String> {
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/target/deploy-venv/bin/python");
    ["python3", venv].into_iter().map(str::to_owned).find(|py| {
        Command::new(py)
            .args(["-c", "import yaml"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The YAML document as JSON, by PyYAML's safe_load.
fn yaml_to_json(python: &str, text: &str) -> serde_json::Value {
    use std::io::Write;
    let mut child = Command::new(python)
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "PyYAML refused:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A strict parse of exactly the two YAML shapes `env` prints, for machines without PyYAML:
/// every value must be a double-quoted scalar (read as the JSON string it is).
fn parse_yaml_here(text: &str, kubernetes: bool) -> serde_json::Value {
    let mut lines = text.lines().filter(|l| !l.starts_with('#'));
    let quoted = |v: &str| -> serde_json::Value {
        assert!(
            v.starts_with('"') && v.ends_with('"'),
            "unquoted value {v:?}"
        );
        serde_json::Value::String(serde_json::from_str(v).unwrap())
    };
    if kubernetes {
        assert_eq!(lines.next(), Some("env:"));
        let mut list = Vec::new();
        while let Some(name) = lines.next() {
            let name = name.strip_prefix("  - name: ").expect("  - name: K");
            let value = lines.next().and_then(|l| l.strip_prefix("    value: "));
            list.push(serde_json::json!({"name": name, "value": quoted(value.expect("value"))}));
        }
        serde_json::json!({ "env": list })
    } else {
        assert_eq!(lines.next(), Some("environment:"));
        let mut map = serde_json::Map::new();
        for line in lines {
            let (k, v) = line.strip_prefix("  ").unwrap().split_once(": ").unwrap();
            map.insert(k.to_owned(), quoted(v));
        }
        serde_json::json!({ "environment": map })
    }
}

fn yaml(text: &str, kubernetes: bool) -> serde_json::Value {
    match python_with_yaml() {
        Some(py) => yaml_to_json(&py, text),
        None => parse_yaml_here(text, kubernetes),
    }
}

fn env_output(args: &[&str]) -> String {
    let (ok, out, err) = run(args);
    assert!(ok, "portcullis {}: {err}", args.join(" "));
    out
}

#[test]
fn env_prints_the_proxy_variables_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "portcullis.toml", CONFIG);
    let want = expected("172.30.0.53", "http://172.30.0.53:3128", "", "");

    // The default format is shell; it survives `sh`.
    let shell = env_output(&["--config", &cfg, "env"]);
    assert!(
        shell.lines().skip(1).all(|l| l.starts_with("export ")),
        "{shell}"
    );
    assert_eq!(through_sh(dir.path(), &shell), want, "{shell}");
    assert_eq!(
        env_output(&["--config", &cfg, "env", "--format", "shell"]),
        shell
    );

    let compose = env_output(&["--config", &cfg, "env", "--format", "compose"]);
    let parsed = yaml(&compose, false);
    let got: Vars = serde_json::from_value(parsed["environment"].clone())
        .unwrap_or_else(|e| panic!("{e}: every value must be a string:\n{compose}"));
    assert_eq!(got, want, "{compose}");

    let k8s = env_output(&["--config", &cfg, "env", "--format", "kubernetes"]);
    let parsed = yaml(&k8s, true);
    let list = parsed["env"].as_array().expect("env: a list");
    let got: Vars = list
        .iter()
        .map(|item| {
            let obj = item.as_object().unwrap();
            assert_eq!(obj.len(), 2, "name and value only: {item}");
            (
                obj["name"].as_str().unwrap().to_owned(),
                obj["value"]
                    .as_str()
                    .unwrap_or_else(|| panic!("value must be a string: {item}"))
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(list.len(), want.len(), "no duplicate names");
    assert_eq!(got, want, "{k8s}");
}

#[test]
fn env_takes_the_address_clients_use() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "portcullis.toml", WILDCARD);

    // A wildcard listener is no address to give clients: the command says what to do.
    let (ok, out, err) = run(&["--config", &cfg, "env"]);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(
        err.contains("0.0.0.0:3128") && err.contains("--proxy HOST:PORT"),
        "{err}"
    );

    let shell = env_output(&[
        "--config",
        &cfg,
        "env",
        "--proxy",
        "portcullis:3128",
        "--no-proxy",
        "litellm,agent",
        "--no-proxy",
        ".svc.cluster.local",
    ]);
    let want = expected(
        "portcullis",
        "http://portcullis:3128",
        ",litellm,agent,.svc.cluster.local",
        "|litellm|agent|*.svc.cluster.local",
    );
    assert_eq!(through_sh(dir.path(), &shell), want, "{shell}");
    let k8s = env_output(&[
        "--config",
        &cfg,
        "env",
        "--proxy",
        "portcullis:3128",
        "--no-proxy",
        "litellm,agent,.svc.cluster.local",
        "--format",
        "kubernetes",
    ]);
    let parsed = yaml(&k8s, true);
    let no_proxy = parsed["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "NO_PROXY")
        .unwrap()["value"]
        .clone();
    assert_eq!(no_proxy, want["NO_PROXY"].as_str());

    // IPv6: brackets in URLs, none in NO_PROXY.
    let shell = env_output(&["--config", &cfg, "env", "--proxy", "[fd00::53]:3128"]);
    let got = through_sh(dir.path(), &shell);
    assert_eq!(got["HTTPS_PROXY"], "http://[fd00::53]:3128");
    assert_eq!(got["NO_PROXY"], "localhost,127.0.0.1,::1,fd00::53");

    // Anything that could break out of the quoting is refused before it is printed.
    for (flag, bad) in [
        ("--proxy", "x'y:3128"),
        ("--proxy", "gate:0"),
        ("--proxy", "0.0.0.0:3128"),
        ("--no-proxy", "a b"),
        ("--no-proxy", "$(id)"),
    ] {
        let (ok, out, err) = run(&["--config", &cfg, "env", "--proxy", "gate:3128", flag, bad]);
        assert!(!ok && out.is_empty(), "{flag} {bad}: {out}");
        assert!(err.contains(flag), "{flag} {bad}: {err}");
    }
    let (ok, _, err) = run(&["--config", &cfg, "env", "--format", "ini"]);
    assert!(!ok && err.contains("shell"), "{err}");
}
