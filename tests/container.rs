//! The container, without a container engine: the static binary the image ships, run as
//! the image runs it (uid/gid 65534, no capabilities, no_new_privs, read-only filesystem
//! except the cache directory, port 53 through `net.ipv4.ip_unprivileged_port_start`),
//! in a network namespace of the test's own. It must serve DNS on 53, the proxy and the
//! admin listener, pass its own `portcullis health` check and keep its list cache.

#[path = "support/container.rs"]
mod container;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use container::{Netns, credentials, readable_by_all};

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_image_binary_serves_as_nobody_without_capabilities_on_a_read_only_root() {
    if let Some(why) = container::unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let ns = Netns::new("ctr");
    // What the compose file's `sysctls:` does for the container's namespace.
    ns.run(&[
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.ip_unprivileged_port_start=53",
    ]);

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

    // The Dockerfile's ENV, pointing at this test's files.
    let config = etc.path().join("portcullis.toml");
    let lists_dir = cache.path().join("lists");
    let mut command = ns.as_container(cache.path(), &[]);
    command
        .env("PORTCULLIS_CONFIG", &config)
        .env("PORTCULLIS_CACHE_DIR", &lists_dir)
        .env("PORTCULLIS_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start the gate");
    let stderr = child.stderr.take().unwrap();
    let gate = Running(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut logs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut bound = Vec::new();
    while bound.len() < 4 {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("the gate did not bind; log:\n{}", logs.join("\n")));
        if line.contains("\"listening ") {
            bound.push(line.clone());
        }
        logs.push(line);
    }
    let bound = bound.join("\n");
    for addr in ["127.0.0.1:53", "127.0.0.1:3128", "127.0.0.1:9953"] {
        assert!(bound.contains(addr), "{addr} not bound:\n{bound}");
    }

    // It runs as nobody, with nothing to escalate to.
    let creds = credentials(gate.0.id());
    for want in [
        "Uid:\t65534\t65534\t65534\t65534",
        "Gid:\t65534\t65534\t65534\t65534",
        "CapEff:\t0000000000000000",
        "CapPrm:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "NoNewPrivs:\t1",
    ] {
        assert!(creds.contains(want), "want {want:?} in\n{creds}");
    }
    // Its root filesystem is read-only; its cache directory is not.
    let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", gate.0.id())).unwrap();
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
    let dig = |name: &str| {
        let out = ns
            .command("dig")
            .args(["@127.0.0.1", "-p", "53", name, "A", "+tries=1", "+time=3"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(dig("evil.example").contains("status: NXDOMAIN"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dig("feed-listed.example").contains("status: NXDOMAIN") {
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
