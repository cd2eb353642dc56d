//! The load driver and origin for `benches/proxy.sh`: native, multi-threaded, in its
//! own process (never the proxy's). Loopback only: the origin is on 127.0.0.2 (the
//! gate refuses its own address, 127.0.0.1 where it listens), the proxies on 127.0.0.1.
//!
//! ```text
//! proxy_load origin PORT [--tls CA.pem]         bulk sender, PING/PONG responder, HOLD
//! proxy_load bulk    --origin PORT [--proxy PORT --target HOST:PORT] --mib N     [--pid PID] [--tls CA.pem]
//! proxy_load tunnels --origin PORT [--proxy PORT --target HOST:PORT] --secs S    [--pid PID] [--tls CA.pem]
//! proxy_load idle    --origin PORT  --proxy PORT --target HOST:PORT  --count N    --pid PID
//!   (bulk, tunnels and idle take --routed IP:PORT instead of --proxy: the gate's routed TLS listener)
//! proxy_load report RUNS.tsv                    medians and ranges as a Markdown table
//! ```
//!
//! Every tunnel speaks the same protocol, direct, through a proxy or through the gate's
//! routed TLS listener: (`CONNECT target`, wait for `200`: the proxy only), a TLS
//! ClientHello naming `bench.test` (the proxy checks the SNI on TLS ports; the routed
//! listener is routed by it), then one command line: `BULK n` (the origin sends `n` bytes
//! and half-closes), `PING` (the origin answers `PONG` and closes; the client closes
//! when it has read it) or `HOLD` (the origin waits for the client to close).
//!
//! Two kinds of tunnel:
//! - raw (the default): the ClientHello is a bare record the driver writes, and the
//!   command and the bytes that follow are plain TCP. No TLS work on either end, so
//!   the proxy's share of the CPU is as large as it can be: the worst case for it.
//! - `--tls CA.pem`: what an agent's HTTPS request is. The origin mints a CA and a
//!   certificate for `bench.test` at start (rcgen, written to CA.pem for the driver)
//!   and every tunnel carries a real rustls handshake (TLS 1.3, ring; the client's
//!   default session cache, so later tunnels resume) and the command and bytes
//!   inside TLS records.
//!
//! Who closes first matters on loopback: a connecting socket that closes first sits
//! in TIME_WAIT on its ephemeral port, and at 14,000 connections/s the 28,000 ports
//! run out (reuse needs a second's age), which capped the direct column at ~14,000/s
//! whatever the proxy did.
//!
//! Measurements print one tab-separated row each on stdout (`metric label value`)
//! and a readable line on stderr. `--pid` names the proxy's process: its CPU time
//! (utime + stime of it and its children, from /proc/PID/stat) is reported per GiB
//! and per 1,000 tunnels, and its RSS for the idle tunnels.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

#[path = "../tests/it/support/certs.rs"]
mod certs;

const SNI: &str = "bench.test";
const CHUNK: usize = 1 << 20;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve BULK / PING / HOLD on 127.0.0.2:PORT until killed.
    Origin {
        port: u16,
        /// Speak TLS as `bench.test`; the CA that signed its certificate is written here.
        #[arg(long)]
        tls: Option<String>,
    },
    /// Bulk download through one tunnel.
    Bulk {
        #[command(flatten)]
        via: Via,
        /// MiB to move.
        #[arg(long, default_value_t = 4096)]
        mib: u64,
    },
    /// Tunnels per second, one PING/PONG each, from `conc` concurrent workers.
    Tunnels {
        #[command(flatten)]
        via: Via,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        #[arg(long, default_value_t = 50)]
        conc: usize,
    },
    /// RSS of the proxy per idle tunnel.
    Idle {
        #[command(flatten)]
        via: Via,
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
    /// Summarises the rows the script collected: `round pin metric label value`.
    Report { file: String },
}

/// Where the origin listens: not 127.0.0.1, which the gate refuses as its own address.
const ORIGIN_IP: [u8; 4] = [127, 0, 0, 2];

#[derive(Args, Clone)]
struct Via {
    /// Name of the row (direct, portcullis, routed, squid).
    #[arg(long)]
    label: String,
    /// The origin's port on 127.0.0.2.
    #[arg(long)]
    origin: u16,
    /// The proxy's port on 127.0.0.1; none: a direct connection to the origin.
    #[arg(long)]
    proxy: Option<u16>,
    /// The CONNECT target (default bench.test:ORIGIN).
    #[arg(long)]
    target: Option<String>,
    /// A routed TLS listener of the gate (IP:PORT, PORT = the origin's): the tunnel
    /// connects straight to it, with no CONNECT; the ClientHello's SNI routes it.
    #[arg(long, conflicts_with = "proxy")]
    routed: Option<SocketAddr>,
    /// The proxy's process id, for CPU time and RSS.
    #[arg(long)]
    pid: Option<u32>,
    /// Real TLS inside the tunnel, trusting the CA in this PEM file (see `origin --tls`).
    #[arg(long)]
    tls: Option<String>,
}

impl Via {
    fn connect_request(&self) -> Option<Vec<u8>> {
        self.proxy?;
        let target = self
            .target
            .clone()
            .unwrap_or_else(|| format!("{SNI}:{}", self.origin));
        Some(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").into_bytes())
    }

    fn addr(&self) -> SocketAddr {
        match (self.proxy, self.routed) {
            (Some(proxy), _) => SocketAddr::from(([127, 0, 0, 1], proxy)),
            (None, Some(routed)) => routed,
            (None, None) => SocketAddr::from((ORIGIN_IP, self.origin)),
        }
    }
}

fn main() {
    // A plain `cargo bench` runs every bench target with just `--bench`: this one is a
    // tool that benches/proxy.sh drives, with nothing to measure by itself.
    if std::env::args().skip(1).eq(["--bench"]) {
        eprintln!("proxy_load: run by benches/proxy.sh");
        return;
    }
    let cli = Cli::parse();
    if let Command::Report { file } = &cli.command {
        report(file);
        return;
    }
    raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        match cli.command {
            Command::Origin { port, tls } => origin(port, tls).await,
            Command::Bulk { via, mib } => bulk(via, mib).await,
            Command::Tunnels { via, secs, conc } => tunnels(via, secs, conc).await,
            Command::Idle { via, count } => idle(via, count).await,
            Command::Report { .. } => unreachable!(),
        }
    });
}

fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A TLS 1.3-shaped ClientHello record with one extension: server_name.
fn client_hello(sni: &str) -> Vec<u8> {
    let name = sni.as_bytes();
    let n = name.len() as u16;
    let mut ext = Vec::new();
    ext.extend_from_slice(&0u16.to_be_bytes()); // server_name
    ext.extend_from_slice(&(n + 5).to_be_bytes());
    ext.extend_from_slice(&(n + 3).to_be_bytes());
    ext.push(0); // host_name
    ext.extend_from_slice(&n.to_be_bytes());
    ext.extend_from_slice(name);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 3, 1];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

// ---------------------------------------------------------------------------------
// Origin

async fn origin(port: u16, tls: Option<String>) {
    let listener = TcpListener::bind(SocketAddr::from((ORIGIN_IP, port)))
        .await
        .expect("bind origin");
    let acceptor = tls.map(|ca| {
        let ca = std::path::Path::new(&ca);
        let dir = ca.parent().filter(|d| !d.as_os_str().is_empty());
        let (acceptor, _) = certs::tls_acceptor(
            SNI,
            dir.unwrap_or(std::path::Path::new(".")),
            &ca.file_name().expect("CA file name").to_string_lossy(),
        );
        acceptor
    });
    let chunk: &'static [u8] = Box::leak(vec![0u8; CHUNK].into_boxed_slice());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _ = match acceptor {
                None => serve(stream, chunk, true).await,
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls) => serve(tls, chunk, false).await,
                    Err(_) => Ok(()),
                },
            };
        });
    }
}

/// Reads the command line (after the bare ClientHello record when `raw`) and serves it.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    chunk: &'static [u8],
    raw: bool,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut tmp = [0u8; 1024];
    let command = loop {
        let start = if raw && buf.len() >= 5 {
            Some(5 + u16::from_be_bytes([buf[3], buf[4]]) as usize)
        } else if raw {
            None
        } else {
            Some(0)
        };
        if let Some(start) = start
            && let Some(nl) = buf
                .get(start..)
                .and_then(|r| r.iter().position(|&b| b == b'\n'))
        {
            break String::from_utf8_lossy(&buf[start..start + nl]).into_owned();
        }
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    if let Some(n) = command.strip_prefix("BULK ") {
        let mut left: u64 = n.trim().parse().unwrap_or(0);
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            s.write_all(&chunk[..n]).await?;
            left -= n as u64;
        }
        s.shutdown().await?;
    } else if command == "PING" {
        // Answer and close, as an HTTP/1.0 server would: the side that closes first
        // keeps the TIME_WAIT, and the origin has no ephemeral port to run out of.
        s.write_all(b"PONG\n").await?;
        if !raw {
            s.shutdown().await?; // close_notify
        }
        return Ok(());
    }
    // BULK and HOLD: until the client closes.
    while s.read(&mut tmp).await? > 0 {}
    Ok(())
}

// ---------------------------------------------------------------------------------
// Clients

/// A tunnel's stream: plain TCP or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What every tunnel of one measurement sends: the `CONNECT` (through a proxy), and
/// either the bare ClientHello record (raw) or a real TLS handshake.
#[derive(Clone)]
struct Opener {
    addr: SocketAddr,
    connect: Option<Arc<[u8]>>,
    hello: Arc<[u8]>,
    tls: Option<TlsConnector>,
}

impl Opener {
    fn new(via: &Via) -> Self {
        let tls = via.tls.as_ref().map(|ca| {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
                roots.add(cert.expect("CA PEM")).expect("CA certificate");
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
            TlsConnector::from(Arc::new(config))
        });
        Opener {
            addr: via.addr(),
            connect: via.connect_request().map(Into::into),
            hello: client_hello(SNI).into(),
            tls,
        }
    }

    /// Opens a tunnel to the origin (through the proxy if any: `CONNECT`, then wait
    /// for the `200`), says hello and sends `command`.
    async fn open(&self, command: &[u8]) -> io::Result<Box<dyn Io>> {
        let mut s = TcpStream::connect(self.addr).await?;
        s.set_nodelay(true)?;
        if let Some(request) = &self.connect {
            s.write_all(request).await?;
            let mut head = [0u8; 512];
            let mut len = 0;
            loop {
                let n = s.read(&mut head[len..]).await?;
                if n == 0 {
                    return Err(io::Error::other("the proxy closed before answering"));
                }
                len += n;
                if head[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
                if len == head.len() {
                    return Err(io::Error::other("response head too long"));
                }
            }
            if !head[..len].starts_with(b"HTTP/1.1 200")
                && !head[..len].starts_with(b"HTTP/1.0 200")
            {
                let line = String::from_utf8_lossy(&head[..len]);
                return Err(io::Error::other(format!(
                    "proxy refused: {}",
                    line.lines().next().unwrap_or("")
                )));
            }
        }
        let mut s: Box<dyn Io> = match &self.tls {
            None => {
                s.write_all(&self.hello).await?;
                Box::new(s)
            }
            Some(tls) => {
                let name = ServerName::try_from(SNI).expect("server name");
                Box::new(tls.connect(name, s).await?)
            }
        };
        s.write_all(command).await?;
        s.flush().await?;
        Ok(s)
    }
}

/// utime + stime of `pid` and its descendants, seconds.
fn cpu_seconds(pid: u32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut parent: BTreeMap<u32, u32> = BTreeMap::new();
    let mut ticks: BTreeMap<u32, u64> = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // Fields after the ")" that closes comm: state(3) ppid(4) ... utime(14) stime(15).
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.len() < 13 {
                continue;
            }
            let ppid = f[1].parse().unwrap_or(0);
            let t = f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
            parent.insert(p, ppid);
            ticks.insert(p, t);
        }
    }
    let mut total = 0u64;
    for (&p, &t) in &ticks {
        let mut q = p;
        for _ in 0..64 {
            if q == pid {
                total += t;
                break;
            }
            match parent.get(&q) {
                Some(&pp) if pp != 0 => q = pp,
                _ => break,
            }
        }
    }
    total as f64 / hz
}

/// Busy and total jiffies of each core, from /proc/stat.
fn core_ticks() -> Vec<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

/// Rows `WHAT_coreN_busy_pct` for the interval since `before`.
fn core_rows(what: &str, label: &str, before: &[(u64, u64)]) {
    let after = core_ticks();
    let mut text = Vec::new();
    for (i, (a, b)) in after.iter().zip(before).enumerate() {
        let total = a.1.saturating_sub(b.1).max(1);
        let pct = a.0.saturating_sub(b.0) as f64 * 100.0 / total as f64;
        text.push(format!("core {i} {pct:.0}%"));
        row(&format!("{what}_core{i}_busy_pct"), label, pct);
    }
    eprintln!("{label:10} {what}: busy {}", text.join(", "));
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn row(metric: &str, label: &str, value: f64) {
    println!("{metric}\t{label}\t{value:.3}");
}

async fn bulk(via: Via, mib: u64) {
    let opener = Opener::new(&via);
    let bytes = mib << 20;
    let cpu0 = via.pid.map(cpu_seconds);
    let cores = core_ticks();
    let mut s = opener
        .open(format!("BULK {bytes}\n").as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{}: bulk tunnel: {e}", via.label));
    let t = Instant::now();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => got += n as u64,
            // An origin that closed the TCP connection without a close_notify.
            Err(e) if got == bytes && e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => panic!("{}: bulk read: {e}", via.label),
        }
    }
    let dt = t.elapsed().as_secs_f64();
    assert_eq!(got, bytes, "{}: short bulk transfer", via.label);
    let mbps = got as f64 / dt / 1e6;
    eprintln!(
        "{:10} bulk: {mbps:8.0} MB/s ({} MiB in {dt:.2} s)",
        via.label,
        got >> 20
    );
    row("bulk_MBps", &via.label, mbps);
    core_rows("bulk", &via.label, &cores);
    if let (Some(pid), Some(cpu0)) = (via.pid, cpu0) {
        let cpu = cpu_seconds(pid) - cpu0;
        let per_gib = cpu / (got as f64 / (1u64 << 30) as f64);
        eprintln!(
            "{:10} bulk: proxy CPU {cpu:.2} s = {per_gib:.3} s/GiB",
            via.label
        );
        row("cpu_s_per_GiB", &via.label, per_gib);
    }
}

async fn tunnels(via: Via, secs: f64, conc: usize) {
    let opener = Opener::new(&via);
    let tls = opener.tls.is_some();
    let via = Arc::new(via);
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let cpu0 = via.pid.map(cpu_seconds);
    let cores = core_ticks();
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..conc {
        let (via, opener, stop, errors) =
            (via.clone(), opener.clone(), stop.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(16 * 1024);
            let mut pong = [0u8; 5];
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let one = async {
                    let mut s = opener.open(b"PING\n").await?;
                    s.read_exact(&mut pong).await?;
                    if &pong != b"PONG\n" {
                        return Err(io::Error::other("not PONG"));
                    }
                    if tls {
                        // The origin's close_notify: closing with it unread would send
                        // an RST instead of a FIN through the proxy.
                        let mut rest = [0u8; 64];
                        while s.read(&mut rest).await? > 0 {}
                    }
                    io::Result::Ok(())
                };
                match tokio::time::timeout(Duration::from_secs(10), one).await {
                    Ok(Ok(())) => lat.push(t.elapsed().as_micros() as u32),
                    Ok(Err(e)) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("{}: first error: {e}", via.label);
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for w in workers {
        lat.extend(w.await.expect("worker"));
    }
    let dt = t0.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |q: f64| {
        if lat.is_empty() {
            f64::NAN
        } else {
            lat[((q * lat.len() as f64) as usize).min(lat.len() - 1)] as f64 / 1e3
        }
    };
    let rate = lat.len() as f64 / dt;
    let errors = errors.load(Ordering::Relaxed);
    eprintln!(
        "{:10} tunnels: {rate:8.0}/s, set-up + exchange p50 {:.2} ms p99 {:.2} ms ({conc} concurrent, {} tunnels, {errors} errors)",
        via.label,
        pct(0.5),
        pct(0.99),
        lat.len()
    );
    row("tunnels_per_s", &via.label, rate);
    row("p50_ms", &via.label, pct(0.5));
    row("p99_ms", &via.label, pct(0.99));
    row("errors", &via.label, errors as f64);
    core_rows("tunnels", &via.label, &cores);
    if let (Some(pid), Some(cpu0)) = (via.pid, cpu0) {
        let cpu = cpu_seconds(pid) - cpu0;
        let per_1k = cpu / (lat.len().max(1) as f64 / 1000.0);
        eprintln!(
            "{:10} tunnels: proxy CPU {cpu:.2} s = {:.1} ms per 1k tunnels",
            via.label,
            per_1k * 1e3
        );
        row("cpu_ms_per_1k", &via.label, per_1k * 1e3);
    }
}

async fn idle(via: Via, count: usize) {
    let pid = via.pid.expect("idle needs --pid");
    let opener = Opener::new(&via);
    let via = Arc::new(via);
    // Warm up: the first tunnels allocate once-per-thread buffers and runtime state.
    for _ in 0..100 {
        let mut s = opener.open(b"PING\n").await.expect("warm-up tunnel");
        let mut pong = [0u8; 5];
        s.read_exact(&mut pong).await.expect("warm-up PONG");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_kib(pid);
    let mut held = Vec::with_capacity(count);
    let mut left = count;
    while left > 0 {
        let batch = left.min(50);
        left -= batch;
        let mut opening = Vec::new();
        for _ in 0..batch {
            let opener = opener.clone();
            opening.push(tokio::spawn(async move { opener.open(b"HOLD\n").await }));
        }
        for o in opening {
            held.push(o.await.expect("task").expect("idle tunnel"));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid);
    let per = (after as f64 - before as f64) / count as f64;
    eprintln!(
        "{:10} idle: {count} tunnels, RSS {before} -> {after} KiB = {per:.1} KiB per idle tunnel",
        via.label
    );
    row("idle_KiB", &via.label, per);
    drop(held);
    tokio::time::sleep(Duration::from_millis(500)).await;
}

// ---------------------------------------------------------------------------------
// Report

fn report(file: &str) {
    let text = std::fs::read_to_string(file).expect("runs file");
    // (pin, metric, label) -> values
    let mut values: BTreeMap<(String, String, String), Vec<f64>> = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 5 {
            continue;
        }
        if let Ok(v) = f[4].parse::<f64>() {
            values
                .entry((f[1].into(), f[2].into(), f[3].into()))
                .or_default()
                .push(v);
        }
    }
    let labels = ["direct", "routed", "portcullis", "squid"];
    // Ratios of the medians (throughput and tunnels/s): (numerator, denominator).
    let ratios = [
        ("portcullis", "direct"),
        ("routed", "direct"),
        ("routed", "portcullis"),
    ];
    let metrics = [
        ("bulk_MBps", "bulk, one tunnel, MB/s", 0),
        ("tunnels_per_s", "tunnels/s, one PING/PONG each", 0),
        ("p50_ms", "p50 set-up + exchange, ms", 2),
        ("p99_ms", "p99 set-up + exchange, ms", 2),
        ("errors", "tunnel errors", 0),
        ("cpu_s_per_GiB", "proxy CPU s per GiB", 3),
        ("cpu_ms_per_1k", "proxy CPU ms per 1k tunnels", 0),
        ("idle_KiB", "RSS per idle tunnel, KiB", 1),
    ];
    let pins: Vec<String> = {
        let mut p: Vec<String> = values.keys().map(|k| k.0.clone()).collect();
        p.sort();
        p.dedup();
        p
    };
    for pin in &pins {
        // The columns this pin and mode measured (routed: TLS mode only).
        let present: Vec<&str> = labels
            .into_iter()
            .filter(|l| values.keys().any(|k| &k.0 == pin && k.2 == *l))
            .collect();
        let shown: Vec<(&str, &str)> = ratios
            .into_iter()
            .filter(|(a, b)| present.contains(a) && present.contains(b))
            .collect();
        println!("\n### {pin}\n");
        println!("median [min-max] of the rounds\n");
        let mut head = String::from("|");
        let mut rule = String::from("|---");
        for label in &present {
            head += &format!(" | {label}");
            rule += "|---:";
        }
        for (a, b) in &shown {
            head += &format!(" | {a} / {b}");
            rule += "|---:";
        }
        println!("{head} |\n{rule}|");
        for (metric, title, prec) in metrics {
            let mut cells = Vec::new();
            let mut medians = BTreeMap::new();
            let mut any = false;
            for &label in &present {
                match values.get(&(pin.clone(), metric.into(), label.into())) {
                    Some(v) if !v.is_empty() => {
                        any = true;
                        let mut v = v.clone();
                        v.sort_by(f64::total_cmp);
                        let med = if v.len() % 2 == 1 {
                            v[v.len() / 2]
                        } else {
                            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
                        };
                        medians.insert(label, med);
                        cells.push(format!(
                            "{med:.prec$} [{:.prec$}-{:.prec$}] (n={})",
                            v[0],
                            v[v.len() - 1],
                            v.len()
                        ));
                    }
                    _ => cells.push("-".into()),
                }
            }
            if !any {
                continue;
            }
            for (a, b) in &shown {
                cells.push(match (medians.get(a), medians.get(b)) {
                    (Some(x), Some(y))
                        if *y > 0.0 && matches!(metric, "bulk_MBps" | "tunnels_per_s") =>
                    {
                        format!("{:.0}%", x / y * 100.0)
                    }
                    _ => String::new(),
                });
            }
            println!("| {title} | {} |", cells.join(" | "));
        }
    }
}
