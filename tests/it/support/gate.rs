//! Runs the real `portcullis` binary for integration tests and queries it with
//! real clients (dig from Debian's dnsutils, and hickory-proto over a UDP socket).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running gate. Killed on drop.
pub struct Gate {
    child: Child,
    pub dns: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    /// Milliseconds the stderr reader sleeps after each line (0: it reads at once).
    stderr_delay_ms: Arc<AtomicU64>,
    pub dir: tempfile::TempDir,
}

impl Gate {
    /// Writes `config` to a temp dir as portcullis.toml and starts the binary on it.
    /// `config` should listen on 127.0.0.1:0; the bound port is read from the log.
    pub fn start(config: &str) -> Gate {
        Self::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Gate {
        Self::start_full(config, &[], env)
    }

    /// Also writes `files` (name, content) beside the config before starting.
    pub fn start_full(config: &str, files: &[(&str, &str)], env: &[(&str, &str)]) -> Gate {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).expect("write file");
        }
        let path = dir.path().join("portcullis.toml");
        std::fs::write(&path, config).expect("write config");
        let mut child = portcullis()
            .arg("--config")
            .arg(&path)
            .env("PORTCULLIS_LOG_FORMAT", "json")
            .env("PORTCULLIS_LOG_LEVEL", "info")
            // Tests run side by side: the proxy takes a free port unless a test says otherwise.
            .env("PORTCULLIS_PROXY_LISTEN", "127.0.0.1:0")
            .env("PORTCULLIS_ADMIN_LISTEN", "127.0.0.1:0")
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start portcullis");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let stderr_delay_ms = Arc::new(AtomicU64::new(0));
        let delay = stderr_delay_ms.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
                let ms = delay.load(Ordering::Relaxed);
                if ms > 0 {
                    std::thread::sleep(Duration::from_millis(ms));
                }
            }
        });
        let mut gate = Gate {
            child,
            dns: SocketAddr::from(([0, 0, 0, 0], 0)),
            logs,
            stderr_delay_ms,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            if let Some(addr) = gate.listening("dns/udp") {
                break addr;
            }
            let exited = gate.child.try_wait().expect("try_wait").is_some();
            if exited || Instant::now() >= deadline {
                if exited {
                    // Its last lines are what says why: let the reader finish them.
                    let _ = reader.join();
                }
                panic!("gate did not start; log:\n{}", gate.logs().join("\n"));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        gate.dns = addr.parse().expect("bound address");
        gate
    }

    /// The address the gate bound for `listener` (`dns/udp`, `dns/tcp`, `proxy`, `admin`).
    /// The one place the tests learn a bound port, from the `listening` log line: a
    /// gate run in process would say it here instead.
    pub fn bound(&self, listener: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(addr) = self.listening(listener) {
                return addr;
            }
            assert!(
                Instant::now() < deadline,
                "no `listening {listener}` line; log:\n{}",
                self.logs().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The portcullis.toml the gate was started with.
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("portcullis.toml")
    }

    /// The proxy's bound address.
    pub fn proxy_addr(&self) -> String {
        self.bound("proxy")
    }

    /// The admin listener's bound address.
    pub fn admin_addr(&self) -> String {
        self.bound("admin")
    }

    /// The `addr` of the first `listening LISTENER` line logged so far.
    fn listening(&self, listener: &str) -> Option<String> {
        let needle = format!("listening {listener}");
        let logs = self.logs.lock().unwrap();
        let line = logs.iter().find(|l| l.contains(&needle))?;
        json_field(line, "addr")
    }

    /// Reads the gate's stderr one line per `per_line` from now on (a slow log
    /// collector: the pipe fills and the gate's writes to it block); zero: at once.
    pub fn read_stderr_slowly(&self, per_line: Duration) {
        self.stderr_delay_ms
            .store(per_line.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(line) = self.logs().into_iter().find(|l| l.contains(needle)) {
                return Some(line);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "gate did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real binary as every test runs it: configured by its arguments only, never by a
/// `PORTCULLIS_CONFIG` in the environment the tests run in.
pub fn portcullis() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command.env_remove("PORTCULLIS_CONFIG");
    command
}

/// Runs the binary with `args` to its end: (success, stdout, stderr).
pub fn run(args: &[&str]) -> (bool, String, String) {
    let out = portcullis().args(args).output().expect("run portcullis");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A string field of a JSON log line.
pub fn json_field(line: &str, field: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    value.get(field)?.as_str().map(str::to_owned)
}

/// What dig printed, parsed.
#[derive(Debug, Default)]
pub struct Dig {
    pub status: String,
    pub answers: Vec<String>,
    pub authority: Vec<String>,
    pub ede: Option<String>,
    pub raw: String,
}

impl Dig {
    /// The data of the answer records (last column).
    pub fn addresses(&self) -> Vec<String> {
        self.answers
            .iter()
            .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
            .collect()
    }

    pub fn ttls(&self) -> Vec<u32> {
        self.answers
            .iter()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .collect()
    }
}

/// Runs `dig @addr name type [extra...]` with one try.
pub fn dig(addr: SocketAddr, name: &str, qtype: &str, extra: &[&str]) -> Dig {
    let output = Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args([
            "-p",
            &addr.port().to_string(),
            name,
            qtype,
            "+tries=1",
            "+time=5",
        ])
        .args(extra)
        .output()
        .expect("dig (Debian package dnsutils) must be installed");
    let raw = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut dig = Dig {
        raw: raw.clone(),
        ..Dig::default()
    };
    let mut section = "";
    for line in raw.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            dig.status = rest.split(',').next().unwrap_or("").to_owned();
        }
        if let Some(rest) = line.strip_prefix("; EDE: ") {
            dig.ede = Some(rest.to_owned());
        }
        if line.starts_with(";; ANSWER SECTION") {
            section = "answer";
            continue;
        }
        if line.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
            continue;
        }
        if line.starts_with(";;") || line.trim().is_empty() {
            section = "";
            continue;
        }
        match section {
            "answer" => dig.answers.push(line.to_owned()),
            "authority" => dig.authority.push(line.to_owned()),
            _ => {}
        }
    }
    dig
}

/// [`dig`] from async tests: on the blocking pool, so the runtime's workers stay free.
pub async fn dig_async(addr: SocketAddr, name: &str, qtype: &str, extra: &[&str]) -> Dig {
    let (name, qtype) = (name.to_owned(), qtype.to_owned());
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        dig(addr, &name, &qtype, &extra)
    })
    .await
    .unwrap()
}

/// The last `dns decision` log line for `name`.
pub fn dns_decision(gate: &Gate, name: &str) -> Option<String> {
    // The line reaches the test through the binary's stderr and a reader thread, which
    // may lag behind the answer under load: wait for a line, then let the reader settle
    // so that the latest of several lines for the name is the one returned.
    let last = || {
        gate.logs()
            .into_iter()
            .rev()
            .find(|l| l.contains("dns decision") && json_field(l, "name").as_deref() == Some(name))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while last().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(50));
    last()
}
