//! The compose stack, run for real: deploy/compose/docker-compose.yml itself, brought up by
//! a container engine (podman, with docker-compose 1.29 on podman's API socket), and checked
//! through that engine for what the file promises.
//!
//! ```text
//!  engine host: a network namespace of the test's own (podman's service, its bridges,
//!  │            its iptables rules and the published 127.0.0.1:9953 all live there; it has
//!  │            no link anywhere else, so nothing can leave the machine)
//!  │
//!  ├─ agent-tier 172.30.0.0/24 (internal): agent, litellm .10, gate .53
//!  ├─ egress     172.30.1.0/24: gate .53, internet .80 (the test's DoH server and TLS
//!  │             origin, run in that container's network namespace); .1 is the host
//!  ├─ ops        172.30.2.0/24 (internal): prometheus, gate .53
//!  └─ llm-host   172.30.3.0/24 (internal): gate .53; .1 is the host, where the test's
//!                stand-in Ollama listens on 11434
//! ```
//!
//! The shipped file is used unchanged (`-f deploy/compose/docker-compose.yml`, with
//! `--project-directory` a temporary copy of its directory's layout); images are swapped in
//! through its own variables (PORTCULLIS_IMAGE, AGENT_IMAGE, LITELLM_IMAGE,
//! PROMETHEUS_IMAGE, AGENT_COMMAND), and tests/it/compose/override.yml only adds the
//! internet container. No registry is reachable, so every image is built here:
//! - the gate: the Dockerfile's final stage as it stands (user, entrypoint, healthcheck,
//!   volume, environment, labels), built with `--build-arg RUNTIME_IMAGE=scratch` (the one
//!   difference from the published image: distroless static's CA bundle and /etc/passwd,
//!   which the gate does not use), over a build stage that holds what the Dockerfile's
//!   build stage lays out in /out, from the binary scripts/build-static.sh built;
//! - the stand-ins, from one small root filesystem (Debian's busybox-static, Node, Python):
//!   the agent (Node's fetch, busybox nslookup and wget), LiteLLM (tests/it/compose/litellm.py,
//!   which answers the compose file's own healthcheck), Prometheus (busybox httpd), the
//!   internet (idle: the test's servers run in its namespace).
//!
//! The gate's configuration is the shipped deploy/compose/portcullis/ with the outside
//! swapped for the test's: the DoH upstreams become the test's DoH server (its CA in the
//! directory), the list downloads trust the test origin's CA, and the allowlist gets rules
//! for the test's names (`private = true`: the test's internet has the egress network's
//! private addresses). Everything else (listeners, groups, modes, proxy, admin token file)
//! is as shipped.
//!
//! Podman differs from Docker in ways that matter here; the README's podman section says
//! what to do, and the test does it in its engine namespace:
//! - an internal network's bridge still gets the gateway address and an IPv6 link-local
//!   one (Docker's `com.docker.network.bridge.inhibit_ipv4` is ignored), and podman's DNS
//!   server (aardvark-dns) listens there: the agent tier would reach the host, and a
//!   resolver that is not the gate. The test prints that this is so, then applies the
//!   README's host firewall rules (iptables and ip6tables, INPUT from the agent tier's
//!   bridge) and checks that nothing gets through.
//! - podman 4.3 runs healthchecks from systemd timers; without systemd (this machine) the
//!   test runs `podman healthcheck run`, the engine's own execution of the container's
//!   HEALTHCHECK, once a second while `docker-compose start` waits for the gate to be
//!   healthy.
//! - docker-compose 1.29 refuses a second `up` over podman's networks (it reads their IPAM
//!   options back as changed): the test runs one `up --no-start`, starts the internet
//!   container, starts its servers, then `start`s the rest.
//!
//! Needs root, podman, runc, netavark, aardvark-dns, docker-compose, busybox-static, Node
//! and Python 3 (scripts/test.sh installs them): `#[ignore]`d for a plain `cargo test`; when
//! it runs, a missing precondition fails it.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::netns::{print_table, text};
use crate::support::certs::mint_certificates_for;
use crate::support::container::{Netns, credentials, static_binary};
use crate::support::doh_server::{DohServer, TestZone};

/// The internet container's address (tests/it/compose/override.yml).
const INTERNET: Ipv4Addr = Ipv4Addr::new(172, 30, 1, 80);
/// The llm-host network's gateway: the engine's host, where the stand-in Ollama listens.
const HOST_LLM: Ipv4Addr = Ipv4Addr::new(172, 30, 3, 1);
const OLLAMA_PORT: u16 = 11434;
/// A port on the engine's host where nothing of the stack is: every connection to it is
/// one the agent tier must not be able to make.
const HOST_SINK_PORT: u16 = 7070;
/// Names the test's DoH server and origin serve; the allowlist lets the agent reach
/// `origin.test` from the start and `reloaded.test` after the test edits it.
const ORIGIN_NAME: &str = "origin.test";
const RELOADED_NAME: &str = "reloaded.test";
/// The stand-ins' trust store for the test origin (baked into their image).
const TEST_CA: &str = "/etc/ssl/test-ca.pem";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why this test cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (a network namespace for the engine, rootful podman)".into());
    }
    for tool in [
        "podman",
        "runc",
        "docker-compose",
        "nsenter",
        "ip",
        "iptables",
        "tar",
        "ldd",
        "curl",
    ] {
        if !which(tool) {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    for file in [
        "/usr/lib/podman/netavark",
        "/usr/lib/podman/aardvark-dns",
        "/bin/busybox",
        "/usr/bin/node",
        "/usr/bin/python3",
    ] {
        if !Path::new(file).exists() {
            return Some(format!("{file} is missing"));
        }
    }
    None
}

fn require() {
    if let Some(why) = unavailable() {
        panic!(
            "this test cannot run here: {why}. It needs root, podman, runc, netavark, \
             aardvark-dns, docker-compose, busybox-static, nodejs, python3, iptables, curl and \
             util-linux; scripts/test.sh installs them"
        );
    }
}

/// Runs `command`; panics with its output when it fails.
fn checked(mut command: Command, what: &str) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(out.status.success(), "{what} failed: {}", text(&out));
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The last JSON line a probe printed (Value::Null when there is none).
fn json_of(out: &Output) -> Value {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null)
}

/// Runs `f` on a thread of its own inside the network namespace at `ns` (a /run/netns
/// file or /proc/PID/ns/net): the sockets it creates live there.
fn in_netns<T: Send + 'static>(ns: PathBuf, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        Netns::enter_path(&ns);
        f()
    })
    .join()
    .expect("thread in a network namespace")
}

/// Podman, its API service and docker-compose, all inside a network namespace of the test's
/// own and with storage, network configuration and run state in a temporary directory:
/// nothing is shared with another podman user (or another run of this test) on the
/// machine. Drop takes the project down and removes every container, network, volume and
/// image, the service and the namespace.
struct Engine {
    ns: Netns,
    dir: tempfile::TempDir,
    service: Option<Child>,
    project: String,
    /// The compose project's directory: the shipped deploy/compose layout, with the test's
    /// configuration directory and secret.
    project_dir: PathBuf,
    compose_env: Vec<(String, String)>,
    /// Container ids by service.
    containers: std::cell::RefCell<BTreeMap<String, String>>,
}

impl Engine {
    fn start() -> Engine {
        let ns = Netns::new("eng");
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        for sub in ["storage", "run", "networks", "tmp"] {
            std::fs::create_dir(root.join(sub)).unwrap();
        }
        // The README's podman settings for hosts like this one (hybrid cgroup v1: crun
        // refuses it; hard limits under podman's default ulimits), plus this run's own
        // network configuration directory.
        std::fs::write(
            root.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = []\n\n[engine]\ncgroup_manager = \"cgroupfs\"\n\
                 runtime = \"runc\"\ntmp_dir = \"{0}/tmp\"\n\n[network]\n\
                 network_backend = \"netavark\"\nnetwork_config_dir = \"{0}/networks\"\n",
                root.display()
            ),
        )
        .unwrap();
        std::fs::write(
            root.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{0}/storage\"\nrunroot = \"{0}/run\"\n",
                root.display()
            ),
        )
        .unwrap();
        let project = format!("pc{}", std::process::id());
        let mut engine = Engine {
            ns,
            project_dir: root.join("deploy/compose"),
            dir,
            service: None,
            project,
            compose_env: Vec::new(),
            containers: Default::default(),
        };
        let socket = engine.dir.path().join("podman.sock");
        let mut service = engine.podman_command();
        service
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(engine.dir.path().join("service.log"))
                    .map(Stdio::from)
                    .unwrap(),
            );
        engine.service = Some(service.spawn().expect("start podman system service"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "podman's API socket never appeared: {}",
                engine.service_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        engine
            .compose_env
            .push(("DOCKER_HOST".into(), format!("unix://{}", socket.display())));
        engine
    }

    fn service_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default()
    }

    fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.ns.name))
    }

    /// `nsenter --net=... COMMAND`: on the engine's host. Only the network namespace:
    /// podman needs the machine's cgroup mounts, which `ip netns exec` would hide.
    fn host_command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns_path().display()))
            .arg(program);
        c
    }

    fn podman_command(&self) -> Command {
        let mut c = self.host_command("podman");
        c.env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .env(
                "CONTAINERS_STORAGE_CONF",
                self.dir.path().join("storage.conf"),
            )
            .env_remove("CONTAINER_HOST")
            .env_remove("DOCKER_HOST");
        c
    }

    fn podman(&self, args: &[&str]) -> Output {
        self.podman_command().args(args).output().expect("podman")
    }

    fn podman_ok(&self, args: &[&str]) -> String {
        let mut c = self.podman_command();
        c.args(args);
        stdout(&checked(c, &format!("podman {}", args.join(" "))))
    }

    /// `podman inspect` of one container or image.
    fn inspect(&self, what: &str) -> Value {
        let out = self.podman_ok(&["inspect", what]);
        let all: Value = serde_json::from_str(&out).expect("podman inspect JSON");
        all[0].clone()
    }

    fn compose_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker-compose");
        c.arg("-p")
            .arg(&self.project)
            .arg("--project-directory")
            .arg(&self.project_dir)
            .arg("-f")
            .arg(repo().join("deploy/compose/docker-compose.yml"))
            .arg("-f")
            .arg(repo().join("tests/it/compose/override.yml"))
            .args(args)
            .current_dir(&self.project_dir);
        // The file's optional variables take their defaults unless the test sets them.
        for var in [
            "PORTCULLIS_IMAGE",
            "AGENT_IMAGE",
            "AGENT_COMMAND",
            "AGENT_USER",
            "LITELLM_IMAGE",
            "PROMETHEUS_IMAGE",
            "OLLAMA_MODEL",
            "ANTHROPIC_API_KEY",
            "LITELLM_MASTER_KEY",
            "COMPOSE_FILE",
            "COMPOSE_PROJECT_NAME",
        ] {
            c.env_remove(var);
        }
        c.envs(self.compose_env.iter().map(|(k, v)| (k, v)));
        c
    }

    fn compose_ok(&self, args: &[&str]) -> String {
        stdout(&checked(
            self.compose_command(args),
            &format!("docker-compose {}", args.join(" ")),
        ))
    }

    /// The container of a compose service.
    fn container(&self, service: &str) -> String {
        if let Some(id) = self.containers.borrow().get(service) {
            return id.clone();
        }
        let id = self.compose_ok(&["ps", "-q", service]);
        let id = id.lines().next().unwrap_or_default().to_owned();
        assert!(!id.is_empty(), "no container for service {service}");
        self.containers
            .borrow_mut()
            .insert(service.to_owned(), id.clone());
        id
    }

    /// `podman exec` in a service's container (with its environment), plus `env`.
    fn exec(&self, service: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
        let id = self.container(service);
        let mut c = self.podman_command();
        c.arg("exec");
        for (k, v) in env {
            c.arg("-e").arg(format!("{k}={v}"));
        }
        c.arg(&id).args(args);
        c.output().expect("podman exec")
    }

    /// `podman import` of a root filesystem directory as `image`, with `changes`.
    fn import(&self, rootfs: &Path, image: &str, changes: &[&str]) {
        let mut tar = Command::new("tar")
            .args(["--numeric-owner", "-C"])
            .arg(rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("tar");
        let mut import = self.podman_command();
        import.args(["import", "-q"]);
        for change in changes {
            import.arg("--change").arg(change);
        }
        import.args(["-", image]).stdin(tar.stdout.take().unwrap());
        let out = import.output().expect("podman import");
        assert!(tar.wait().unwrap().success(), "tar of {}", rootfs.display());
        assert!(
            out.status.success(),
            "podman import {image}: {}",
            text(&out)
        );
    }

    /// `podman build --format docker` (the OCI format drops HEALTHCHECK).
    fn build(&self, containerfile: &str, context: &Path, image: &str, build_args: &[&str]) {
        let file = self
            .dir
            .path()
            .join(format!("{}.Containerfile", image.replace(['/', ':'], "-")));
        std::fs::write(&file, containerfile).unwrap();
        let mut args = vec!["build", "-q", "--format", "docker", "--pull=never"];
        for arg in build_args {
            args.extend(["--build-arg", arg]);
        }
        let file_arg = file.display().to_string();
        let context_arg = context.display().to_string();
        args.extend(["-t", image, "-f", &file_arg, &context_arg]);
        self.podman_ok(&args);
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if !self.compose_env.is_empty() && self.project_dir.exists() {
            let _ = self
                .compose_command(&["down", "-v", "--remove-orphans", "-t", "5"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        // Whatever compose left (a failed `up`), then the images: all of them are this
        // run's (its own storage).
        for args in [
            &["rm", "-a", "-f", "-t", "2"][..],
            &["network", "prune", "-f"],
            &["volume", "prune", "-f"],
            &["rmi", "-a", "-f"],
        ] {
            let _ = self
                .podman_command()
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if let Some(mut service) = self.service.take() {
            let _ = service.kill();
            let _ = service.wait();
        }
        // containers/storage keeps its overlay directory mounted: unmount what is left
        // under the temporary directory before it is removed (deepest first).
        let root = self.dir.path().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&root))
            .collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        // The namespace (Netns's drop ends what is still in it: conmon, aardvark-dns) and
        // the temporary directory go after this.
    }
}

/// The stand-ins' root filesystem: busybox (every applet), Node and Python with the
/// libraries they load, the stand-in scripts, and the test CA.
fn standin_rootfs(dir: &Path, test_ca_pem: &str) {
    let copy = |from: &Path, to_rel: &Path| {
        let to = dir.join(to_rel.strip_prefix("/").unwrap_or(to_rel));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    };
    copy(Path::new("/bin/busybox"), Path::new("/bin/busybox"));
    let applets = checked(
        {
            let mut c = Command::new("/bin/busybox");
            c.arg("--list");
            c
        },
        "busybox --list",
    );
    for applet in String::from_utf8_lossy(&applets.stdout).split_whitespace() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet));
        }
    }
    let python = std::fs::canonicalize("/usr/bin/python3").unwrap();
    let mut binaries = vec![
        PathBuf::from("/bin/busybox"),
        PathBuf::from("/usr/bin/node"),
        python.clone(),
    ];
    copy(Path::new("/usr/bin/node"), Path::new("/usr/bin/node"));
    copy(&python, &python);
    std::os::unix::fs::symlink(python.file_name().unwrap(), dir.join("usr/bin/python3")).unwrap();
    // The standard library, without what no stand-in imports.
    let stdlib = PathBuf::from(format!(
        "/usr/lib/{}",
        python.file_name().unwrap().to_string_lossy()
    ));
    let skip = [
        "test",
        "idlelib",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "lib2to3",
        "pydoc_data",
        "site-packages",
        "dist-packages",
        "__pycache__",
    ];
    let mut stack = vec![stdlib.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if skip.contains(&name.as_str()) || name.starts_with("config-") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                if name.ends_with(".so") {
                    binaries.push(path.clone());
                }
                copy(&path, &path);
            }
        }
    }
    // Every shared library those load, at the path the loader looks for it.
    for binary in &binaries {
        let out = Command::new("ldd").arg(binary).output().unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let lib = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(lib) = lib.filter(|l| l.starts_with('/')) {
                copy(Path::new(lib), Path::new(lib));
            }
        }
    }
    let write = |rel: &str, content: &str, mode: u32| {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    write(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    );
    write("etc/group", "root:x:0:\nnogroup:x:65534:\n", 0o644);
    write(&TEST_CA[1..], test_ca_pem, 0o644);
    write("www/-/healthy", "Prometheus Server is Healthy.\n", 0o644);
    for (script, mode) in [
        ("litellm.py", 0o644),
        ("probe.py", 0o644),
        ("probe.js", 0o644),
        ("idle.sh", 0o755),
        ("prometheus.sh", 0o755),
    ] {
        let source = repo().join("tests/it/compose").join(script);
        let content = std::fs::read_to_string(&source)
            .unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        write(&format!("opt/{script}"), &content, mode);
    }
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
}

/// What the Dockerfile's build stage lays out in /out, from the static binary: the binary,
/// the baked configuration (scripts/container-config.sh), the allowlist, the local list and
/// the cache directory owned by 65534.
fn gate_build_out(dir: &Path) {
    let out = dir.join("out");
    let etc = out.join("etc/portcullis");
    std::fs::create_dir_all(out.join("usr/local/bin")).unwrap();
    std::fs::create_dir_all(etc.join("blocklists")).unwrap();
    std::fs::copy(static_binary(), out.join("usr/local/bin/portcullis")).unwrap();
    let baked = checked(
        {
            let mut c = Command::new(repo().join("scripts/container-config.sh"));
            c.arg(repo().join("portcullis.toml"));
            c
        },
        "scripts/container-config.sh",
    );
    std::fs::write(etc.join("portcullis.toml"), &baked.stdout).unwrap();
    std::fs::copy(repo().join("allowlist.toml"), etc.join("allowlist.toml")).unwrap();
    std::fs::copy(
        repo().join("blocklists/local.txt"),
        etc.join("blocklists/local.txt"),
    )
    .unwrap();
    let cache = out.join("var/cache/portcullis");
    std::fs::create_dir_all(&cache).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&cache, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(
        out.join("usr/local/bin/portcullis"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
}

/// The Containerfile the test builds the gate from: the Dockerfile's global ARGs, a build
/// stage that is the test's /out tree, and the Dockerfile's final stage verbatim.
fn gate_containerfile(build_image: &str) -> String {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let lines: Vec<&str> = dockerfile.lines().collect();
    let first_from = lines
        .iter()
        .position(|l| l.starts_with("FROM "))
        .expect("a FROM in the Dockerfile");
    let last_from = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    assert!(
        last_from > first_from,
        "the Dockerfile has no separate build stage"
    );
    let args: Vec<&str> = lines[..first_from]
        .iter()
        .copied()
        .filter(|l| l.starts_with("ARG "))
        .collect();
    assert!(
        args.iter().any(|a| a.starts_with("ARG RUNTIME_IMAGE=")),
        "the Dockerfile takes no RUNTIME_IMAGE build argument"
    );
    assert!(
        lines[last_from].contains("${RUNTIME_IMAGE}"),
        "the final stage is not FROM ${{RUNTIME_IMAGE}}: {}",
        lines[last_from]
    );
    format!(
        "{}\nFROM {build_image} AS build\n{}\n",
        args.join("\n"),
        lines[last_from..].join("\n")
    )
}

/// The list subscriptions of the shipped configuration: (name, url, format).
fn shipped_lists(config: &str) -> Vec<(String, String, String)> {
    let value: toml::Value = toml::from_str(config).expect("shipped portcullis.toml");
    value
        .get("lists")
        .and_then(|l| l.as_array())
        .into_iter()
        .flatten()
        .filter_map(|l| {
            Some((
                l.get("name")?.as_str()?.to_owned(),
                l.get("url")?.as_str()?.to_owned(),
                l.get("format")
                    .and_then(|f| f.as_str())
                    .unwrap_or("domains")
                    .to_owned(),
            ))
        })
        .collect()
}

/// `https://host/path` -> (host, /path).
fn host_path(url: &str) -> (String, String) {
    let rest = url.strip_prefix("https://").expect("an https:// list URL");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    (host.to_owned(), format!("/{path}"))
}

/// The shipped deploy/compose/portcullis/portcullis.toml with the outside swapped: its
/// `[[upstream.servers]]` become the test's DoH server, and list downloads trust the test
/// origin's CA. Every other line is the shipped one.
fn test_config(shipped: &str, doh_url: &str, doh_name: &str) -> String {
    let mut out = String::new();
    let mut in_servers = false;
    let mut replaced = false;
    for line in shipped.lines() {
        let table = line.trim_start().starts_with('[');
        if line.trim() == "[[upstream.servers]]" {
            in_servers = true;
            if !replaced {
                replaced = true;
                out.push_str(&format!(
                    "# tests/it/compose.rs: the test's DoH server in place of the public ones.\n\
                     [[upstream.servers]]\nurl = \"{doh_url}\"\ntls_name = \"{doh_name}\"\n\
                     ca_file = \"/etc/portcullis/doh-ca.pem\"\n\n"
                ));
            }
            continue;
        }
        if in_servers && table {
            in_servers = false;
        }
        if in_servers {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line.trim() == "[sources]" {
            out.push_str(
                "# tests/it/compose.rs: the lists come from the test's origin.\n\
                 ca_file = \"origin-ca.pem\"\n",
            );
        }
    }
    assert!(
        replaced,
        "no [[upstream.servers]] in the shipped configuration"
    );
    out
}

fn allow_rule(host: &str) -> String {
    format!(
        "\n# tests/it/compose.rs: the test's internet has the egress network's (private) addresses.\n\
         [[allow]]\nhost = \"{host}\"\ngroups = [\"agent\"]\nprivate = true\n"
    )
}

/// The internet's servers, in the internet container's network namespace: the DoH server
/// the gate asks, and an HTTPS origin on 443 for the test's names and every list URL of the
/// configuration, recording `SNI from PEER` for each connection.
struct Internet {
    doh: DohServer,
    origin_ca: String,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

/// The names the internet serves (DoH zone and origin certificate) and the list bodies,
/// by (host, path).
struct InternetNames {
    names: Vec<String>,
    bodies: BTreeMap<(String, String), String>,
}

impl InternetNames {
    fn new(lists: &[(String, String, String)]) -> InternetNames {
        let mut names = vec![
            ORIGIN_NAME.to_owned(),
            RELOADED_NAME.to_owned(),
            "api.github.com".to_owned(),
            "api.anthropic.com".to_owned(),
        ];
        let mut bodies = BTreeMap::new();
        for (name, url, format) in lists {
            let (host, path) = host_path(url);
            let entry = format!("{name}.listed.test");
            let body = if format == "hosts" {
                format!("0.0.0.0 {entry}\n")
            } else {
                format!("{entry}\n")
            };
            bodies.insert((host.clone(), path), body);
            if !names.contains(&host) {
                names.push(host);
            }
        }
        InternetNames { names, bodies }
    }
}

impl Internet {
    /// `origin`: the origin's certificate chain and key for every name of `served`.
    fn start(
        rt: &tokio::runtime::Runtime,
        netns: PathBuf,
        served: InternetNames,
        origin_ca: String,
        chain: Vec<rustls::pki_types::CertificateDer<'static>>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> Internet {
        let InternetNames { names, bodies } = served;
        let mut zone = TestZone::new();
        for name in &names {
            zone = zone.a(name, INTERNET);
        }
        let acceptor = crate::support::certs::acceptor(chain, key);
        let handle = rt.handle().clone();
        let (doh, listener) = in_netns(netns, move || {
            let listener = std::net::TcpListener::bind((INTERNET, 443)).expect("bind origin :443");
            listener.set_nonblocking(true).unwrap();
            (
                handle.block_on(DohServer::start_on(INTERNET.into(), zone)),
                listener,
            )
        });
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        let bodies = Arc::new(bodies);
        let task = rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((s, peer)) = listener.accept().await {
                let (acceptor, log, bodies) = (acceptor.clone(), log.clone(), bodies.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(s).await else {
                        log.lock().unwrap().push(format!("- from {peer} (no TLS)"));
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().unwrap_or("-").to_owned();
                    log.lock()
                        .unwrap()
                        .push(format!("{sni} from {}", peer.ip()));
                    let Some(head) = read_head(&mut tls).await else {
                        return;
                    };
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let body = bodies
                        .get(&(sni.clone(), path))
                        .cloned()
                        .unwrap_or_else(|| format!("hello from origin {sni}\n"));
                    let _ = tls.write_all(response(&body).as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Internet {
            doh,
            origin_ca,
            seen,
            task,
        }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The engine host's listeners, on every address of the host (IPv4 and IPv6): the stand-in
/// Ollama (LiteLLM's `api_base` is its llm-host address, which the allowlist lets LiteLLM
/// reach), and a sink that nothing may reach. Each records `PORT from PEER`.
struct HostServers {
    heard: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl HostServers {
    fn start(rt: &tokio::runtime::Runtime, netns: PathBuf) -> HostServers {
        let listeners = in_netns(netns, || {
            // [::] without IPV6_V6ONLY: every IPv4 and IPv6 address of the host (the
            // llm-host bridge gets 172.30.3.1 only when the gate starts), as an Ollama with
            // OLLAMA_HOST=0.0.0.0 listens.
            [OLLAMA_PORT, HOST_SINK_PORT]
                .map(|port| SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)))
                .map(|addr| {
                    let l = std::net::TcpListener::bind(addr)
                        .unwrap_or_else(|e| panic!("bind {addr} on the engine's host: {e}"));
                    l.set_nonblocking(true).unwrap();
                    (addr.port(), l)
                })
        });
        let heard: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut tasks = Vec::new();
        for (port, listener) in listeners {
            let log = heard.clone();
            tasks.push(rt.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((mut s, peer)) = listener.accept().await {
                    log.lock()
                        .unwrap()
                        .push(format!("{port} from {}", peer.ip()));
                    if port != OLLAMA_PORT {
                        continue;
                    }
                    tokio::spawn(async move {
                        // A held tunnel sends nothing: wait for it as long as it stays.
                        let Some(head) = read_head(&mut s).await else {
                            return;
                        };
                        let body = if head.contains("/api/chat") {
                            "{\"model\":\"llama3.2\",\"message\":{\"role\":\"assistant\",\
                             \"content\":\"hello from the host's ollama\"},\"done\":true}"
                        } else {
                            "{\"models\":[{\"name\":\"llama3.2\"}]}"
                        };
                        let _ = s.write_all(response(body).as_bytes()).await;
                        let _ = s.shutdown().await;
                    });
                }
            }));
        }
        HostServers { heard, tasks }
    }

    fn heard(&self) -> Vec<String> {
        self.heard.lock().unwrap().clone()
    }
}

impl Drop for HostServers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn response(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(60), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
    // The body, as far as Content-Length says (LiteLLM's POST /api/chat).
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// One row of the result table.
struct Checks(Vec<(String, String, String, bool)>);

impl Checks {
    fn add(&mut self, what: impl Into<String>, expected: &str, got: impl Into<String>, ok: bool) {
        let got: String = got.into();
        let short: String = got.chars().take(120).collect();
        self.0.push((what.into(), expected.to_owned(), short, ok));
    }
}

/// The line of busybox nslookup's output that says how it ended.
fn nslookup_said(out: &Output) -> String {
    let said = text(out);
    said.lines()
        .find(|l| l.contains("NXDOMAIN") || l.contains("timed out") || l.contains("can't"))
        .or_else(|| said.lines().rfind(|l| !l.trim().is_empty()))
        .unwrap_or("")
        .trim()
        .to_owned()
}

fn nslookup_address(out: &Output) -> Option<String> {
    // busybox nslookup: the server's lines first, then `Name:` / `Address: IP`.
    let said = String::from_utf8_lossy(&out.stdout);
    let answer = said.split_once("Name:")?.1;
    answer
        .lines()
        .find_map(|l| l.trim().strip_prefix("Address:"))
        .map(|a| a.trim().to_owned())
}

#[test]
#[ignore = "needs root, podman, docker-compose, busybox-static, node, python3: scripts/test.sh runs it"]
fn the_shipped_compose_stack_keeps_its_promises_under_podman() {
    require();
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut engine = Engine::start();
    let id = engine.project.clone();

    // The project directory: deploy/compose's layout (and ../prometheus), with the test's
    // configuration directory and the admin token made as the compose file's step 1 says.
    let project = engine.project_dir.clone();
    let config_dir = project.join("portcullis");
    let secrets = project.join("secrets");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::create_dir_all(&secrets).unwrap();
    let prometheus_dir = project.parent().unwrap().join("prometheus");
    std::fs::create_dir_all(&prometheus_dir).unwrap();
    for file in ["prometheus.yml", "alerts.yml"] {
        std::fs::copy(
            repo().join("deploy/prometheus").join(file),
            prometheus_dir.join(file),
        )
        .unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o700)).unwrap();
    let token = format!("{:032x}{:032x}", rand_u128(), rand_u128());
    std::fs::write(secrets.join("admin-token"), format!("{token}\n")).unwrap();
    std::fs::set_permissions(
        secrets.join("admin-token"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    // The whole temporary tree must be traversable for the containers' users.
    std::fs::set_permissions(engine.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for d in [project.parent().unwrap(), &project] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    // Images. The gate: the Dockerfile's final stage over the test's /out.
    let images = engine.dir.path().join("images");
    let gate_ctx = images.join("gate");
    std::fs::create_dir_all(&gate_ctx).unwrap();
    gate_build_out(&gate_ctx);
    let gate_build = format!("localhost/{id}-gate-build:test");
    let gate_image = format!("localhost/{id}-portcullis:test");
    engine.import(&gate_ctx, &gate_build, &[]);
    let empty_ctx = images.join("context");
    std::fs::create_dir_all(&empty_ctx).unwrap();
    engine.build(
        &gate_containerfile(&gate_build),
        &empty_ctx,
        &gate_image,
        &["RUNTIME_IMAGE=scratch"],
    );

    // The shipped lists, served by the test's internet.
    let shipped_config =
        std::fs::read_to_string(repo().join("deploy/compose/portcullis/portcullis.toml")).unwrap();
    let lists = shipped_lists(&shipped_config);
    assert!(
        !lists.is_empty(),
        "the shipped configuration subscribes to no list"
    );

    let served = InternetNames::new(&lists);
    let refs: Vec<&str> = served.names.iter().map(String::as_str).collect();
    let (origin_ca, origin_chain, origin_key) = mint_certificates_for(&refs);

    // The stand-ins (the agent's image is the internet's too), trusting the origin's CA.
    let rootfs = images.join("standin");
    standin_rootfs(&rootfs, &origin_ca);
    let agent_image = format!("localhost/{id}-agent:test");
    let litellm_image = format!("localhost/{id}-litellm:test");
    let prometheus_image = format!("localhost/{id}-prometheus:test");
    engine.import(&rootfs, &agent_image, &["ENV PATH=/usr/bin:/bin"]);
    engine.build(
        &format!("FROM {agent_image}\nENTRYPOINT [\"python3\", \"/opt/litellm.py\"]\n"),
        &empty_ctx,
        &litellm_image,
        &[],
    );
    engine.build(
        &format!("FROM {agent_image}\nENTRYPOINT [\"/opt/prometheus.sh\"]\n"),
        &empty_ctx,
        &prometheus_image,
        &[],
    );
    engine.compose_env.extend(
        [
            ("PORTCULLIS_IMAGE", gate_image.clone()),
            ("AGENT_IMAGE", agent_image.clone()),
            ("LITELLM_IMAGE", litellm_image),
            ("PROMETHEUS_IMAGE", prometheus_image),
            ("INTERNET_IMAGE", agent_image),
            ("LITELLM_MASTER_KEY", format!("sk-test-{id}")),
            ("AGENT_COMMAND", "/opt/idle.sh".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );

    // Every network, volume and container, as `up` makes them, but not started yet; then
    // the internet container alone, and the test's servers in its namespace and on the
    // engine's host. (One `up` only: docker-compose 1.29 refuses a second one over
    // podman's networks, whose IPAM options it reads back as changed.)
    engine.compose_ok(&["up", "--no-build", "--no-start"]);
    engine.compose_ok(&["start", "internet"]);
    let internet_pid = engine.inspect(&engine.container("internet"))["State"]["Pid"]
        .as_u64()
        .expect("the internet container's pid");
    let internet = Internet::start(
        &rt,
        PathBuf::from(format!("/proc/{internet_pid}/ns/net")),
        served,
        origin_ca,
        origin_chain,
        origin_key,
    );
    let host = HostServers::start(&rt, engine.netns_path());

    // The configuration directory: the shipped one with the outside swapped.
    std::fs::write(
        config_dir.join("portcullis.toml"),
        test_config(&shipped_config, &internet.doh.url(), &internet.doh.tls_name),
    )
    .unwrap();
    let shipped_allowlist =
        std::fs::read_to_string(repo().join("deploy/compose/portcullis/allowlist.toml")).unwrap();
    std::fs::write(
        config_dir.join("allowlist.toml"),
        format!("{shipped_allowlist}{}", allow_rule(ORIGIN_NAME)),
    )
    .unwrap();
    std::fs::copy(&internet.doh.ca_file, config_dir.join("doh-ca.pem")).unwrap();
    std::fs::write(config_dir.join("origin-ca.pem"), &internet.origin_ca).unwrap();
    crate::support::container::readable_by_all(&config_dir);

    // The rest: docker-compose starts the services in the file's order and waits for the
    // gate's healthcheck (depends_on: service_healthy); the engine runs that healthcheck
    // when asked (no systemd timers here).
    let up_started = Instant::now();
    let mut up = engine
        .compose_command(&["start"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker-compose start");
    let gate_name = format!("{id}_portcullis_1");
    let mut health_runs = 0;
    let up_status = loop {
        if let Some(status) = up.try_wait().unwrap() {
            break status;
        }
        if up_started.elapsed() > Duration::from_secs(150) {
            let _ = up.kill();
            panic!(
                "docker-compose start did not finish in 150 s; gate log:\n{}",
                text(&engine.podman(&["logs", &gate_name]))
            );
        }
        if engine
            .podman(&["container", "exists", &gate_name])
            .status
            .success()
        {
            let _ = engine.podman(&["healthcheck", "run", &gate_name]);
            health_runs += 1;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let up_out = up.wait_with_output().unwrap();
    assert!(
        up_status.success(),
        "docker-compose start failed: {}\ngate log:\n{}",
        text(&up_out),
        text(&engine.podman(&["logs", &gate_name]))
    );
    let up_secs = up_started.elapsed().as_secs_f32();
    println!("stack up in {up_secs:.1} s ({health_runs} healthcheck runs)");

    let mut checks = Checks(Vec::new());
    let gate = engine.container("portcullis");
    let gate_inspect = engine.inspect(&gate);

    // 1. Healthy through its own HEALTHCHECK (the compose file's, over the image's).
    let health = &gate_inspect["State"]["Health"];
    checks.add(
        "gate healthy through the engine's healthcheck",
        "healthy",
        health["Status"].as_str().unwrap_or("-"),
        health["Status"] == "healthy",
    );
    let test_cmd = gate_inspect["Config"]["Healthcheck"]["Test"].to_string();
    checks.add(
        "healthcheck command",
        "portcullis health, no shell",
        &test_cmd,
        test_cmd.contains("/usr/local/bin/portcullis") && !test_cmd.contains("/bin/sh"),
    );
    let image = engine.inspect(&gate_image);
    let image_health = image["Healthcheck"]["Test"].to_string();
    checks.add(
        "image keeps the Dockerfile's HEALTHCHECK",
        "portcullis health",
        &image_health,
        image_health.contains("/usr/local/bin/portcullis"),
    );

    // Every list of the shipped configuration came from the test's origin through the
    // gate's own DoH resolution (readyz wants a copy of each).
    let list_fetches = internet
        .seen()
        .iter()
        .filter(|s| s.ends_with("from 172.30.1.53") && !s.starts_with(ORIGIN_NAME))
        .count();
    checks.add(
        "lists downloaded from the test's origin",
        &format!(">= {} from 172.30.1.53", lists.len()),
        format!("{list_fetches}"),
        list_fetches >= lists.len(),
    );

    // 2. The agent resolves allowed names through the gate (routed mode: the gate's own
    // address) and reaches the origin with Node's fetch, no proxy variable.
    let agent_env = stdout(&engine.exec("agent", &[], &["env"]));
    let proxy_vars: Vec<&str> = agent_env
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("_proxy="))
        .collect();
    checks.add(
        "agent environment",
        "no proxy variable",
        proxy_vars.join(" "),
        proxy_vars.is_empty(),
    );
    let lookup = engine.exec("agent", &[], &["nslookup", ORIGIN_NAME]);
    let answer = nslookup_address(&lookup);
    checks.add(
        format!("agent: nslookup {ORIGIN_NAME}"),
        "172.30.0.53 (routed)",
        answer.clone().unwrap_or_else(|| text(&lookup)),
        answer.as_deref() == Some("172.30.0.53"),
    );
    let node_ca = [("NODE_EXTRA_CA_CERTS", TEST_CA)];
    let fetch = |url: &str| {
        json_of(&engine.exec("agent", &node_ca, &["node", "/opt/probe.js", "fetch", url]))
    };
    let before = internet.seen().len();
    let got = fetch(&format!("https://{ORIGIN_NAME}/"));
    let origin_saw = internet.seen()[before..].to_vec();
    checks.add(
        format!("agent: fetch https://{ORIGIN_NAME}/"),
        "200 hello from origin",
        got.to_string(),
        got["status"] == 200
            && got["body"]
                .as_str()
                .unwrap_or("")
                .contains("hello from origin"),
    );
    checks.add(
        "  the origin saw it from",
        "the gate's egress address only",
        origin_saw.join(", "),
        !origin_saw.is_empty() && origin_saw.iter().all(|s| s.ends_with("from 172.30.1.53")),
    );

    // Names outside the agent's rules get NXDOMAIN and never leave the gate.
    let secret = format!("secret-{id}.exfil.test");
    let lookup = engine.exec("agent", &[], &["nslookup", &secret]);
    checks.add(
        format!("agent: nslookup {secret}"),
        "NXDOMAIN",
        nslookup_said(&lookup),
        text(&lookup).contains("NXDOMAIN"),
    );
    let asked: Vec<String> = internet
        .doh
        .names()
        .into_iter()
        .filter(|n| n.contains("exfil"))
        .collect();
    checks.add(
        "  the DoH server was asked",
        "nothing of it",
        asked.join(", "),
        asked.is_empty(),
    );
    // An allowed name of the shipped allowlist whose answer is private (this internet's):
    // refused, not dialled.
    let before = internet.seen().len();
    let got = fetch("https://api.github.com/");
    let origin_saw = internet.seen()[before..].to_vec();
    checks.add(
        "agent: fetch https://api.github.com/ (answer private)",
        "refused, origin never dialled",
        format!("{got} / {}", origin_saw.join(",")),
        got["status"] != 200 && origin_saw.is_empty(),
    );

    // 3. What the agent must not reach. The engine's host first: the agent tier's bridge
    // has 172.30.0.1 and an IPv6 link-local address on podman. Before the README's podman
    // firewall rules, print what the host answers there; then apply them.
    let probe = |targets: &[String]| -> Value {
        let mut args = vec!["node", "/opt/probe.js", "connect"];
        args.extend(targets.iter().map(String::as_str));
        json_of(&engine.exec("agent", &[], &args))
    };
    let agent_bridge = engine.podman_ok(&[
        "network",
        "inspect",
        &format!("{id}_agent-tier"),
        "--format",
        "{{.NetworkInterface}}",
    ]);
    let bridge_addrs = stdout(&checked(
        {
            let mut c = engine.host_command("ip");
            c.args(["-o", "addr", "show", "dev", &agent_bridge]);
            c
        },
        "ip addr",
    ));
    assert!(
        bridge_addrs.contains("inet 172.30.0.1/"),
        "the agent tier's bridge {agent_bridge}: {bridge_addrs}"
    );
    let link_local = bridge_addrs.lines().find_map(|l| {
        l.split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .filter(|a| a.starts_with("fe80"))
            .map(|a| a.split('/').next().unwrap().to_owned())
    });
    let mut host_targets = vec![format!("172.30.0.1:{HOST_SINK_PORT}")];
    host_targets.extend(
        link_local
            .iter()
            .map(|ll| format!("[{ll}%eth0]:{HOST_SINK_PORT}")),
    );
    let before_rule = probe(&host_targets);
    println!(
        "without the README's podman firewall rules, agent -> the engine's host: {before_rule}"
    );
    for (tool, chain) in [
        ("iptables", "INPUT"),
        ("ip6tables", "INPUT"),
        ("iptables", "FORWARD"),
    ] {
        let mut c = engine.host_command(tool);
        c.args(["-I", chain, "-i", &agent_bridge]);
        if chain == "FORWARD" {
            c.args(["!", "-o", &agent_bridge]);
        }
        c.args(["-j", "DROP"]);
        checked(c, &format!("{tool} -I {chain} -i {agent_bridge} -j DROP"));
    }
    let heard_before = host.heard().len();
    let seen_before = internet.seen().len();
    let mut targets = vec![
        (
            format!("{INTERNET}:443"),
            "the internet container, directly",
        ),
        (
            format!("172.30.0.1:{HOST_SINK_PORT}"),
            "the host on the agent tier's gateway",
        ),
        (
            format!("172.30.1.1:{HOST_SINK_PORT}"),
            "the host on the egress gateway",
        ),
        (
            format!("172.30.2.1:{HOST_SINK_PORT}"),
            "the host on the ops gateway",
        ),
        (
            format!("172.30.3.1:{HOST_SINK_PORT}"),
            "the host on the llm-host gateway",
        ),
        (
            "172.30.0.1:53".to_owned(),
            "the engine's DNS (aardvark) on the gateway",
        ),
        (
            "172.30.0.53:9953".to_owned(),
            "the gate's admin port, agent-tier address",
        ),
        (
            "172.30.1.53:9953".to_owned(),
            "the gate's admin port, egress address",
        ),
        (
            "172.30.2.53:9953".to_owned(),
            "the gate's admin port, ops address",
        ),
        (
            format!("{HOST_LLM}:{OLLAMA_PORT}"),
            "LiteLLM's outside (the host's Ollama)",
        ),
    ];
    if let Some(ll) = &link_local {
        targets.push((
            format!("[{ll}%eth0]:{HOST_SINK_PORT}"),
            "the host, IPv6 link-local on the agent tier",
        ));
        targets.push((
            format!("[{ll}%eth0]:53"),
            "the engine's DNS, IPv6 link-local",
        ));
    }
    let names: Vec<String> = targets.iter().map(|(t, _)| t.clone()).collect();
    let results = probe(&names);
    for (target, what) in &targets {
        let got = results[target].as_str().unwrap_or("no answer").to_owned();
        checks.add(
            format!("agent -> {target} ({what})"),
            "no connection",
            &got,
            got != "connected",
        );
    }
    // The engine's DNS server, asked directly: no answer (the gate is the only resolver).
    let lookup = engine.exec("agent", &[], &["nslookup", ORIGIN_NAME, "172.30.0.1"]);
    checks.add(
        "agent: nslookup via 172.30.0.1 (the engine's DNS)",
        "no answer",
        nslookup_said(&lookup),
        nslookup_address(&lookup).is_none(),
    );
    // Through the gate: the proxy refuses the agent what its rules do not name.
    for target in [
        format!("{HOST_LLM}:{OLLAMA_PORT}"),
        "172.30.2.53:9953".to_owned(),
        format!("{INTERNET}:443"),
    ] {
        let got = json_of(&engine.exec(
            "agent",
            &[],
            &[
                "node",
                "/opt/probe.js",
                "connect-via",
                "172.30.0.53:3128",
                &target,
            ],
        ));
        let reply = got["reply"].as_str().unwrap_or("-").to_owned();
        checks.add(
            format!("agent: CONNECT {target} via the gate's proxy"),
            "refused (4xx)",
            &reply,
            reply.starts_with("HTTP/1.1 4"),
        );
    }
    let heard = host.heard()[heard_before..].to_vec();
    checks.add(
        "  the host heard",
        "nothing",
        heard.join(", "),
        heard.is_empty(),
    );
    let origin_saw = internet.seen()[seen_before..].to_vec();
    checks.add(
        "  the internet saw",
        "nothing",
        origin_saw.join(", "),
        origin_saw.is_empty(),
    );

    // 4. LiteLLM reaches what its rules allow (the host's Ollama, through HTTP_PROXY), and
    // nothing else; the agent reaches LiteLLM directly, by name.
    let litellm = |args: &[&str]| {
        let mut all = vec!["python3", "/opt/probe.py"];
        all.extend_from_slice(args);
        json_of(&engine.exec("litellm", &[], &all))
    };
    let heard_before = host.heard().len();
    let got = litellm(&[
        "fetch",
        &format!("http://{HOST_LLM}:{OLLAMA_PORT}/api/tags"),
    ]);
    let heard = host.heard()[heard_before..].to_vec();
    checks.add(
        "litellm: GET the host's Ollama (HTTP_PROXY)",
        "200, heard from the gate",
        format!("{} / {}", got["status"], heard.join(",")),
        got["status"] == 200 && heard == [format!("{OLLAMA_PORT} from ::ffff:172.30.3.53")],
    );
    for (url, what) in [
        (
            format!("https://{ORIGIN_NAME}/"),
            "the agent's rule, not LiteLLM's",
        ),
        (
            format!("http://{HOST_LLM}:22/"),
            "the host, a port no rule names",
        ),
        (
            format!("http://172.30.1.1:{OLLAMA_PORT}/"),
            "the egress gateway: no rule names it",
        ),
        (
            "https://api.anthropic.com/".to_owned(),
            "its rule, but a private answer",
        ),
    ] {
        let (before, heard_before) = (internet.seen().len(), host.heard().len());
        let got = litellm(&["fetch", &url]);
        let saw = internet.seen()[before..].to_vec();
        let heard = host.heard()[heard_before..].to_vec();
        // The gate's refusal: 403 to a plain-HTTP request, a CONNECT answered 403.
        let refused = got["status"] == 403
            || got["error"]
                .as_str()
                .is_some_and(|e| e.contains("Tunnel connection failed: 403"));
        checks.add(
            format!("litellm: {url} ({what})"),
            "403 from the gate, nothing reached",
            format!("{got} / {}", [saw, heard].concat().join(",")),
            refused && internet.seen().len() == before && host.heard().len() == heard_before,
        );
    }
    let got = litellm(&["connect", &format!("{INTERNET}:443")]);
    checks.add(
        "litellm -> the internet, directly",
        "no connection",
        got.to_string(),
        got["result"] != "connected",
    );
    let got = litellm(&["resolve", ORIGIN_NAME]);
    checks.add(
        format!("litellm: resolve {ORIGIN_NAME} (not its rule)"),
        "no address",
        got.to_string(),
        got.get("addresses").is_none(),
    );
    let key = format!("sk-test-{id}");
    let chat = engine.exec(
        "agent",
        &[],
        &[
            "wget",
            "-qO-",
            "--header",
            &format!("Authorization: Bearer {key}"),
            "--header",
            "Content-Type: application/json",
            "--post-data",
            "{\"model\":\"llama\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
            "http://litellm:4000/chat/completions",
        ],
    );
    checks.add(
        "agent -> http://litellm:4000 -> gate -> host's Ollama",
        "the model's answer",
        text(&chat),
        stdout(&chat).contains("hello from the host's ollama"),
    );

    // 5. A changed allowlist in the mounted directory is reloaded (written the way editors
    // save: a new file renamed over the old one).
    let lookup = engine.exec("agent", &[], &["nslookup", RELOADED_NAME]);
    checks.add(
        format!("agent: nslookup {RELOADED_NAME}, before the edit"),
        "NXDOMAIN",
        nslookup_said(&lookup),
        text(&lookup).contains("NXDOMAIN"),
    );
    let allowlist = config_dir.join("allowlist.toml");
    let edited = format!(
        "{}{}",
        std::fs::read_to_string(&allowlist).unwrap(),
        allow_rule(RELOADED_NAME)
    );
    let tmp = config_dir.join(".allowlist.toml.new");
    std::fs::write(&tmp, edited).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::rename(&tmp, &allowlist).unwrap();
    let edit = Instant::now();
    let mut answer = None;
    while edit.elapsed() < Duration::from_secs(20) && answer.is_none() {
        std::thread::sleep(Duration::from_millis(500));
        answer = nslookup_address(&engine.exec("agent", &[], &["nslookup", RELOADED_NAME]))
            .filter(|a| a == "172.30.0.53");
    }
    checks.add(
        format!("agent: nslookup {RELOADED_NAME}, after the edit"),
        "172.30.0.53 within 20 s",
        match &answer {
            Some(a) => format!("{a} after {:.1} s", edit.elapsed().as_secs_f32()),
            None => "never".to_owned(),
        },
        answer.is_some(),
    );
    let got = fetch(&format!("https://{RELOADED_NAME}/"));
    checks.add(
        format!("agent: fetch https://{RELOADED_NAME}/"),
        "200",
        got.to_string(),
        got["status"] == 200,
    );

    // 6. The admin token secret: the gate (65534) read it (it refuses to start otherwise)
    // and answers with it on the only published port, 127.0.0.1:9953 of the engine's host.
    let mounts = gate_inspect["Mounts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let secret_mount = mounts
        .iter()
        .find(|m| m["Destination"] == "/run/secrets/admin-token")
        .cloned()
        .unwrap_or(Value::Null);
    checks.add(
        "secret mounted at /run/secrets/admin-token",
        "read-only bind of secrets/admin-token",
        secret_mount.to_string(),
        secret_mount["RW"] == false
            && secret_mount["Source"]
                .as_str()
                .is_some_and(|s| s.ends_with("secrets/admin-token")),
    );
    let check = engine.podman(&[
        "exec",
        "--user",
        "65534:65534",
        &gate,
        "/usr/local/bin/portcullis",
        "config",
        "check",
        "/etc/portcullis/portcullis.toml",
    ]);
    checks.add(
        "portcullis config check as 65534 in the gate",
        "ok (reads the token file)",
        text(&check).lines().last().unwrap_or(""),
        check.status.success(),
    );
    let admin = |auth: &str| {
        let mut c = engine.host_command("curl");
        c.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {auth}"),
            "--max-time",
            "20",
            "http://127.0.0.1:9953/api/lists/refresh",
        ]);
        stdout(&c.output().unwrap())
    };
    let good = admin(&token);
    let bad = admin("not-the-token");
    checks.add(
        "POST /api/lists/refresh on 127.0.0.1:9953, with the token / without",
        "200 / 401",
        format!("{good} / {bad}"),
        good == "200" && bad == "401",
    );
    let scrape = engine.exec(
        "prometheus",
        &[],
        &["wget", "-qO-", "http://portcullis:9953/metrics"],
    );
    checks.add(
        "prometheus (ops network) scrapes portcullis:9953/metrics",
        "metrics",
        format!("{} bytes", scrape.stdout.len()),
        scrape.status.success() && stdout(&scrape).contains("portcullis_"),
    );

    // 7. The gate runs as 65534 with no capabilities on a read-only root.
    let gate_pid = gate_inspect["State"]["Pid"].as_u64().unwrap() as u32;
    let user = gate_inspect["Config"]["User"]
        .as_str()
        .unwrap_or("-")
        .to_owned();
    checks.add(
        "gate: Config.User",
        "65534:65534",
        &user,
        user == "65534:65534",
    );
    let readonly = gate_inspect["HostConfig"]["ReadonlyRootfs"].clone();
    checks.add(
        "gate: HostConfig.ReadonlyRootfs",
        "true",
        readonly.to_string(),
        readonly == true,
    );
    let effective = gate_inspect["EffectiveCaps"].clone();
    checks.add(
        "gate: EffectiveCaps",
        "none",
        effective.to_string(),
        effective.is_null() || effective.as_array().is_some_and(|a| a.is_empty()),
    );
    let security = gate_inspect["HostConfig"]["SecurityOpt"].to_string();
    checks.add(
        "gate: SecurityOpt",
        "no-new-privileges",
        &security,
        security.contains("no-new-privileges"),
    );
    let creds = credentials(gate_pid);
    for want in crate::support::container::NOBODY_WITHOUT_CAPABILITIES {
        checks.add(
            "gate: /proc/1/status (its pid on the host)",
            want,
            creds
                .lines()
                .find(|l| l.starts_with(want.split('\t').next().unwrap()))
                .unwrap_or("-"),
            creds.contains(want),
        );
    }
    let mountinfo = std::fs::read_to_string(format!("/proc/{gate_pid}/mountinfo")).unwrap();
    let root = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .and_then(|l| l.split(' ').nth(5))
        .unwrap_or("-")
        .to_owned();
    checks.add("gate: / mount options", "ro", &root, root.starts_with("ro"));
    for (sysctl, want) in [
        ("net/ipv4/ip_unprivileged_port_start", "53"),
        ("net/ipv4/ip_forward", "0"),
    ] {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/proc/{gate_pid}/ns/net"))
            .arg("cat")
            .arg(format!("/proc/sys/{sysctl}"));
        let got = stdout(&checked(c, sysctl));
        checks.add(format!("gate: {sysctl}"), want, &got, got == want);
    }

    // 8. Stopping: the gate drains an open tunnel (LiteLLM's, to the Ollama) for at most
    // `[proxy] drain_secs` and exits 0 before its stop_grace_period (30 s) is over; then
    // the rest of the stack stops, every container exiting 0.
    let mut hold = engine.podman_command();
    hold.args([
        "exec",
        &engine.container("litellm"),
        "python3",
        "/opt/probe.py",
        "hold",
        &format!("{HOST_LLM}:{OLLAMA_PORT}"),
        "60",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut hold = hold.spawn().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let stop_started = Instant::now();
    let stop = engine
        .compose_command(&["stop", "portcullis"])
        .output()
        .unwrap();
    let gate_stop = stop_started.elapsed();
    let gate_state = engine.inspect(&gate)["State"].clone();
    let _ = hold.kill();
    let mut held = String::new();
    if let Some(mut out) = hold.stdout.take() {
        use std::io::Read;
        let _ = out.read_to_string(&mut held);
    }
    let _ = hold.wait();
    checks.add(
        "  tunnel held through the gate while it stopped",
        "200 Connection established",
        held.lines().next().unwrap_or("-"),
        held.contains(" 200"),
    );
    checks.add(
        "docker-compose stop portcullis",
        "exit 0 within 30 s",
        format!(
            "exit {} after {:.1} s",
            gate_state["ExitCode"],
            gate_stop.as_secs_f32()
        ),
        stop.status.success() && gate_state["ExitCode"] == 0 && gate_stop < Duration::from_secs(30),
    );
    let rest_started = Instant::now();
    let stop = engine.compose_command(&["stop"]).output().unwrap();
    let rest = rest_started.elapsed();
    let mut codes = Vec::new();
    for service in ["agent", "litellm", "prometheus", "internet"] {
        let state = engine.inspect(&engine.container(service))["State"].clone();
        codes.push(format!("{service} {}", state["ExitCode"]));
    }
    checks.add(
        "docker-compose stop (the rest)",
        "every exit 0, within 30 s",
        format!("{} after {:.1} s", codes.join(", "), rest.as_secs_f32()),
        stop.status.success()
            && codes.iter().all(|c| c.ends_with(" 0"))
            && rest < Duration::from_secs(30),
    );

    print_table(&checks.0);
    let gate_log = text(&engine.podman(&["logs", &gate]));
    let down = engine
        .compose_command(&["down", "-v", "--remove-orphans", "-t", "5"])
        .output()
        .unwrap();
    assert!(
        down.status.success(),
        "docker-compose down: {}",
        text(&down)
    );
    println!("whole test: {:.1} s", started.elapsed().as_secs_f32());
    let failed: Vec<&str> = checks
        .0
        .iter()
        .filter(|c| !c.3)
        .map(|c| c.0.as_str())
        .collect();
    assert!(
        failed.is_empty(),
        "failed: {failed:?}\ngate log (last lines):\n{}",
        gate_log
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(internet);
    drop(host);
    drop(engine);
    let _ = std::io::stdout().flush();
}

/// 128 random bits from the kernel (for the admin token).
fn rand_u128() -> u128 {
    let mut bytes = [0u8; 16];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom");
    u128::from_le_bytes(bytes)
}
