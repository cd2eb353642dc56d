//! Runs the static binary the way the container image does, without a container engine:
//! in a network namespace of the test's own, as uid/gid 65534 with no capabilities and
//! `no_new_privs`, on a read-only filesystem except its cache directory (`unshare`,
//! `setpriv`), with port 53 opened to non-root users by the same sysctl the compose
//! file sets. Needs root, `ip` (iproute2) and util-linux.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

/// The uid and gid the image runs as (nobody:nogroup).
pub const NOBODY: u32 = 65534;

/// Why these tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, mounts)".into());
    }
    for tool in ["ip", "unshare", "setpriv", "sysctl", "dig", "curl", "ping"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// Fails the test when it cannot run here. The tests that call this are `#[ignore]`d, so
/// they run only when asked for (scripts/test.sh asks when they can run, and always under
/// CI=true): a test that was asked for and cannot run must fail, never pass.
pub fn require() {
    if let Some(why) = unavailable() {
        panic!(
            "this test cannot run here: {why}. It needs root, iproute2, util-linux (unshare, \
             setpriv), procps (sysctl), dig, curl and ping; scripts/test.sh installs the tools"
        );
    }
}

/// The image's binary, built by `scripts/build-static.sh` (the script the Dockerfile
/// runs): by `scripts/test.sh`, which passes its path in `PORTCULLIS_STATIC_BIN`, or else
/// once per test process here.
pub fn static_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(built) = std::env::var_os("PORTCULLIS_STATIC_BIN").map(PathBuf::from) {
            assert!(
                built.is_file(),
                "PORTCULLIS_STATIC_BIN={} is no file",
                built.display()
            );
            return built;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-static.sh");
        let out = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/build-static.sh");
        assert!(out.status.success(), "scripts/build-static.sh failed");
        let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        assert!(path.is_file(), "{} was not built", path.display());
        path
    })
}

/// A network namespace, removed (with every process still in it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `ip netns add` a fresh namespace with its loopback up.
    pub fn new(role: &str) -> Netns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "pc-{role}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `args` inside the namespace; panics when it fails.
    pub fn run(&self, args: &[&str]) {
        let out = self.command(args[0]).args(&args[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{} in {}: {}",
            args.join(" "),
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Moves the calling thread into the namespace `name`: sockets it opens afterwards
    /// live there. For test servers running on a thread of their own.
    pub fn enter_by_name(name: &str) {
        Self::enter_path(Path::new(&format!("/run/netns/{name}")));
    }

    /// As [`Netns::enter_by_name`], for any namespace file: /run/netns/NAME, or
    /// /proc/PID/ns/net of a process (a container's, say).
    pub fn enter_path(path: &Path) {
        let file = std::fs::File::open(path)
            .unwrap_or_else(|e| panic!("netns file {}: {e}", path.display()));
        use std::os::fd::AsRawFd;
        // SAFETY: a valid namespace fd; affects only the calling thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }

    /// The command that runs the image's binary in this namespace as the container
    /// would. `cache` stays writable (and owned by 65534); every other mount is read-only.
    pub fn as_container(&self, cache: &Path, args: &[&str]) -> Command {
        chown_nobody(cache);
        const SCRIPT: &str = r#"set -e
cache=$1; shift
for m in $(awk '{print $5}' /proc/self/mountinfo); do
  case "$m" in /proc*|/sys*|/dev*) continue ;; esac
  mount -o remount,bind,ro "$m" 2>/dev/null || true
done
mount --bind "$cache" "$cache"
mount -o remount,bind,rw "$cache"
exec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all \
  --bounding-set=-all --no-new-privs -- "$@""#;
        let mut c = self.command("unshare");
        c.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            SCRIPT,
            "sh",
        ])
        .arg(cache)
        .arg(static_binary())
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("PORTCULLIS_CONFIG");
        c
    }
}

/// The `sysctls:` the compose file sets for the gate's service (`portcullis`), as
/// `(key, value)`: read from deploy/compose/docker-compose.yml, so that the namespace
/// tests run the gate as the shipped stack does.
pub fn compose_sysctls() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/compose/docker-compose.yml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (mut in_gate, mut in_sysctls) = (false, false);
    let mut out = Vec::new();
    for line in text.lines() {
        let item = line.trim();
        if item.is_empty() || item.starts_with('#') {
            continue;
        }
        match line.len() - line.trim_start().len() {
            0 | 1 => (in_gate, in_sysctls) = (false, false),
            2 | 3 => (in_gate, in_sysctls) = (item == "portcullis:", false),
            4 | 5 => in_sysctls = in_gate && item == "sysctls:",
            _ if in_sysctls => {
                // Map (`key: value`) or list (`- key=value`) syntax.
                let pair = match item.strip_prefix("- ") {
                    Some(entry) => entry.split_once('='),
                    None => item.split_once(':'),
                };
                let (key, value) = pair.unwrap_or_else(|| panic!("sysctl line {line:?}"));
                let unquote = |s: &str| s.trim().trim_matches('"').trim_matches('\'').to_owned();
                out.push((unquote(key), unquote(value)));
            }
            _ => {}
        }
    }
    assert!(
        !out.is_empty(),
        "no sysctls for portcullis in {}",
        path.display()
    );
    out
}

impl Netns {
    /// What the compose file's `sysctls:` for the gate does to its container's namespace.
    pub fn apply_compose_sysctls(&self) {
        for (key, value) in compose_sysctls() {
            self.run(&["sysctl", "-q", "-w", &format!("{key}={value}")]);
        }
    }

    /// What the compose file's `sysctls:` does for the container's namespace: port 53
    /// for a user without capabilities.
    pub fn allow_port_53(&self) {
        self.run(&[
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_unprivileged_port_start=53",
        ]);
    }

    /// Starts the image's binary here as the container runs it, with `env` and JSON
    /// logs; returns once it logged its listeners (DNS UDP and TCP, proxy, admin: the last).
    pub fn start_gate(&self, cache: &Path, env: &[(&str, &str)]) -> RunningGate {
        let mut command = self.as_container(cache, &[]);
        command
            .envs(env.iter().copied())
            .env("PORTCULLIS_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start the gate");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut gate = RunningGate {
            child,
            lines: rx,
            logs: Vec::new(),
            bound: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut bound = Vec::new();
        // The admin listener binds last.
        while !bound
            .iter()
            .any(|l: &String| l.contains("\"listening admin\""))
        {
            let line = gate
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| {
                    panic!("the gate did not bind; log:\n{}", gate.logs.join("\n"))
                });
            if line.contains("\"listening ") {
                bound.push(line.clone());
            }
            gate.logs.push(line);
        }
        gate.bound = bound.join("\n");
        gate
    }
}

/// The lines of `/proc/PID/status` ([`credentials`]) of a process as the image runs the
/// gate: nobody, no capabilities at all, nothing to escalate to.
pub const NOBODY_WITHOUT_CAPABILITIES: [&str; 6] = [
    "Uid:\t65534\t65534\t65534\t65534",
    "Gid:\t65534\t65534\t65534\t65534",
    "CapEff:\t0000000000000000",
    "CapPrm:\t0000000000000000",
    "CapBnd:\t0000000000000000",
    "NoNewPrivs:\t1",
];

/// The image's binary running in a namespace; killed on drop.
pub struct RunningGate {
    child: Child,
    lines: mpsc::Receiver<String>,
    logs: Vec<String>,
    /// The `listening ...` log lines.
    pub bound: String,
}

impl RunningGate {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every log line so far.
    pub fn logs(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.logs.push(line);
        }
        &self.logs
    }
}

impl Drop for RunningGate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes still inside would keep the namespace alive: end them first.
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|out| {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs a command on the host; panics when it fails.
pub fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A veth pair between two namespaces with an address on each end.
pub fn link(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    // Interface names are created on the host first: keep them unique and short.
    let tmp = format!("pcv{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let peer = format!("{tmp}p{}", std::process::id() % 10000);
    run(
        "ip",
        &[
            "link", "add", &tmp, "netns", &a.name, "type", "veth", "peer", "name", &peer, "netns",
            &b.name,
        ],
    );
    a.run(&["ip", "link", "set", &tmp, "name", a_if]);
    b.run(&["ip", "link", "set", &peer, "name", b_if]);
    a.run(&["ip", "addr", "add", a_addr, "dev", a_if]);
    b.run(&["ip", "addr", "add", b_addr, "dev", b_if]);
    a.run(&["ip", "link", "set", a_if, "up"]);
    b.run(&["ip", "link", "set", b_if, "up"]);
}

/// Files the gate reads must be readable by 65534 (temp dirs are 0700 root).
pub fn readable_by_all(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            readable_by_all(&path);
        } else {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
}

fn chown_nobody(dir: &Path) {
    std::os::unix::fs::chown(dir, Some(NOBODY), Some(NOBODY)).unwrap();
}

/// The `Uid`, `CapEff`, `CapBnd` and `NoNewPrivs` lines of a process.
pub fn credentials(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            [
                "Uid:",
                "Gid:",
                "CapEff:",
                "CapBnd:",
                "CapPrm:",
                "NoNewPrivs:",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .collect::<Vec<_>>()
        .join("\n")
}
