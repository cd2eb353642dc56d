//! The container, without a container engine: the static binary the image ships, run as
//! the image runs it (uid/gid 65534, no capabilities, no_new_privs, read-only filesystem
//! except the cache directory, port 53 through `net.ipv4.ip_unprivileged_port_start`),
//! in a network namespace of the test's own. It must serve DNS on 53, the proxy and the
//! admin listener, pass its own `portcullis health` check and keep its list cache.
//!
//! Needs root: `#[ignore]`d for a plain `cargo test`; scripts/test.sh runs them (always
//! under CI=true), and when they do run, a missing precondition fails them.

use std::time::{Duration, Instant};

use crate::support::container::{self, Netns, credentials, readable_by_all};

/// `dig @127.0.0.1 -p 53 NAME A` inside `ns`; dig's output.
fn dig(ns: &Netns, name: &str) -> String {
    let out = ns
        .command("dig")
        .args(["@127.0.0.1", "-p", "53", name, "A", "+tries=1", "+time=3"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs root, iproute2, util-linux, procps, dig, curl: scripts/test.sh runs it"]
fn the_image_binary_serves_as_nobody_without_capabilities_on_a_read_only_root() {
    container::require();
    let ns = Netns::new("ctr");
    // What the compose file's `sysctls:` does for the container's namespace.
    ns.allow_port_53();

    let etc = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    std::fs::write(etc.path().join("feed.txt"), "feed-listed.example\n").unwrap();
    std::fs::write(
        etc.path().join("portcullis.toml"),
        format!(
            r#"
[dns]
listen = ["127.0.0.1:53"]
[upstream]
timeout_ms = 500
[[upstream.servers]]
url = "udp://127.0.0.1:9"
[admin]
listen = ["127.0.0.1:9953"]
[proxy]
listen = ["127.0.0.1:3128"]
[[lists]]
name = "local"
inline = "evil.example"
[[lists]]
name = "feed"
url = "file://{}/feed.txt"
format = "domains"
"#,
            etc.path().display()
        ),
    )
    .unwrap();
    readable_by_all(etc.path());

    let config = etc.path().join("portcullis.toml");
    let lists_dir = cache.path().join("lists");
    let gate = ns.start_gate(
        cache.path(),
        &[
            ("PORTCULLIS_CONFIG", config.to_str().unwrap()),
            ("PORTCULLIS_CACHE_DIR", lists_dir.to_str().unwrap()),
        ],
    );
    for addr in ["127.0.0.1:53", "127.0.0.1:3128", "127.0.0.1:9953"] {
        assert!(
            gate.bound.contains(addr),
            "{addr} not bound:\n{}",
            gate.bound
        );
    }

    // It runs as nobody, with nothing to escalate to.
    let creds = credentials(gate.pid());
    for want in container::NOBODY_WITHOUT_CAPABILITIES {
        assert!(creds.contains(want), "want {want:?} in\n{creds}");
    }
    // Its root filesystem is read-only; its cache directory is not.
    let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", gate.pid())).unwrap();
    let options = |target: &str| {
        mounts
            .lines()
            .rfind(|l| l.split(' ').nth(4) == Some(target))
            .and_then(|l| l.split(' ').nth(5))
            .map(str::to_owned)
    };
    assert!(
        options("/").is_some_and(|o| o.starts_with("ro")),
        "{mounts}"
    );
    let cache_target = cache.path().to_str().unwrap();
    assert!(
        options(cache_target).is_some_and(|o| o.starts_with("rw")),
        "{mounts}"
    );

    // It serves DNS on port 53: the local list and the file:// feed both block.
    assert!(dig(&ns, "evil.example").contains("status: NXDOMAIN"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dig(&ns, "feed-listed.example").contains("status: NXDOMAIN") {
        assert!(Instant::now() < deadline, "the feed list never loaded");
        std::thread::sleep(Duration::from_millis(200));
    }

    // The image's HEALTHCHECK: `portcullis health`, run the same way.
    let health = ns
        .as_container(cache.path(), &["health", "--timeout", "3"])
        .output()
        .unwrap();
    assert!(
        health.status.success(),
        "portcullis health: {}",
        String::from_utf8_lossy(&health.stderr)
    );

    // The feed's last-known-good copy was written, by 65534, in the cache directory only.
    use std::os::unix::fs::MetadataExt;
    let copies: Vec<_> = std::fs::read_dir(&lists_dir)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(
        !copies.is_empty(),
        "nothing cached in {}",
        lists_dir.display()
    );
    assert!(
        copies
            .iter()
            .all(|e| e.metadata().unwrap().uid() == container::NOBODY),
        "cache files not owned by 65534"
    );
    drop(gate);
}

/// The configuration baked into the image (scripts/container-config.sh, as the Dockerfile
/// runs it) binds 0.0.0.0:53, :3128 and :9953 as nobody and serves. Only the upstreams are
/// pointed at a dead loopback port: this test sends nothing anywhere.
#[test]
#[ignore = "needs root, iproute2, util-linux, procps, dig, curl: scripts/test.sh runs it"]
fn the_baked_image_configuration_binds_53_as_nobody_and_serves() {
    container::require();
    let ns = Netns::new("img");
    ns.allow_port_53();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // /etc/portcullis as the Dockerfile lays it out.
    let etc = tempfile::tempdir().unwrap();
    let baked = std::process::Command::new(root.join("scripts/container-config.sh"))
        .arg(root.join("portcullis.toml"))
        .output()
        .unwrap();
    assert!(
        baked.status.success(),
        "{}",
        String::from_utf8_lossy(&baked.stderr)
    );
    std::fs::write(etc.path().join("portcullis.toml"), &baked.stdout).unwrap();
    std::fs::copy(
        root.join("allowlist.toml"),
        etc.path().join("allowlist.toml"),
    )
    .unwrap();
    std::fs::create_dir(etc.path().join("blocklists")).unwrap();
    std::fs::write(
        etc.path().join("blocklists/local.txt"),
        "operator-listed.example\n",
    )
    .unwrap();
    readable_by_all(etc.path());

    let cache = tempfile::tempdir().unwrap();
    let config = etc.path().join("portcullis.toml");
    let lists_dir = cache.path().join("lists");
    let gate = ns.start_gate(
        cache.path(),
        &[
            ("PORTCULLIS_CONFIG", config.to_str().unwrap()),
            // The image's /var/cache/portcullis is a volume; here, the test's directory.
            ("PORTCULLIS_CACHE_DIR", lists_dir.to_str().unwrap()),
            ("PORTCULLIS_UPSTREAMS", "udp://127.0.0.1:9"),
        ],
    );
    for addr in ["0.0.0.0:53", "0.0.0.0:3128", "0.0.0.0:9953"] {
        assert!(
            gate.bound.contains(addr),
            "{addr} not bound:\n{}",
            gate.bound
        );
    }
    // The operator's local list (a relative path in the baked config) and local answers.
    assert!(dig(&ns, "operator-listed.example").contains("status: NXDOMAIN"));
    assert!(dig(&ns, "localhost").contains("status: NOERROR"));
    // The baked allowlist is the mounted-over-able file, not the built-in copy.
    let check = ns
        .as_container(cache.path(), &["check", "api.anthropic.com"])
        .env("PORTCULLIS_CONFIG", &config)
        .env("PORTCULLIS_CACHE_DIR", &lists_dir)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(said.contains("allowlist.toml"), "{said}");
    // Alive (ready needs the subscribed lists, which nothing here can download).
    let health = ns
        .as_container(
            cache.path(),
            &["health", "--url", "http://127.0.0.1:9953/healthz"],
        )
        .output()
        .unwrap();
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
    drop(gate);
}
