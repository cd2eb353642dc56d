//! A batched DNS load generator for `benches/dnsperf.sh LOADGEN=batched`: the same
//! question files and the same summary lines as dnsperf, at a fraction of its CPU per
//! query, so that on a 2-core machine the server under test, not the client, is the limit.
//!
//! dnsperf spends ~10 µs of its core per query (one `sendto`/`recvfrom` each, two threads
//! per client thread); on this project's 2-vCPU VMs it saturates its core near 85k q/s while
//! the gate still has a third of its own idle, so "cached q/s" measured the client. This
//! driver keeps `-q` queries outstanding over `-c` connected UDP sockets and moves them with
//! `sendmmsg`/`recvmmsg` (up to 32 a call), from one thread, so its cost per query is mostly
//! the kernel's UDP path. Loopback only: it refuses any server address that is not.
//!
//! `cargo bench --bench dns_load -- -s 127.0.0.1 -p 5354 -d QUERIES -l 10 -c 10 -q 200`
//! (QUERIES: dnsperf's format, `name TYPE` a line). Prints dnsperf's summary lines
//! (`Queries completed:`, `Queries lost:`, `Response codes:`, `Average Latency (s):`,
//! `Queries per second:`), which `benches/dnsperf.sh` reads for either tool.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const BATCH: usize = 32;
const SLOT: usize = 512;
const ANSWER: usize = 4096;
/// Unanswered for this long: lost (dnsperf's `-t 2`).
const TIMEOUT: Duration = Duration::from_secs(2);

struct Args {
    server: SocketAddr,
    queries: String,
    seconds: u64,
    sockets: usize,
    outstanding: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut addr: IpAddr = [127, 0, 0, 1].into();
    let (mut port, mut queries, mut seconds, mut sockets, mut outstanding) =
        (53u16, None, 10u64, 10usize, 200usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let bad = |e: &dyn std::fmt::Display| format!("{flag}: {e}");
        match flag.as_str() {
            "-s" => addr = value()?.parse().map_err(|e| bad(&e))?,
            "-p" => port = value()?.parse().map_err(|e| bad(&e))?,
            "-d" => queries = Some(value()?),
            "-l" => seconds = value()?.parse().map_err(|e| bad(&e))?,
            "-c" => sockets = value()?.parse().map_err(|e| bad(&e))?,
            "-q" => outstanding = value()?.parse().map_err(|e| bad(&e))?,
            "--bench" => {}
            _ => return Err(format!("unknown argument `{flag}`")),
        }
    }
    if !addr.is_loopback() {
        return Err(format!("-s {addr}: only loopback servers are driven"));
    }
    if sockets == 0 || outstanding < sockets {
        return Err("-c must be at least 1 and -q at least -c".into());
    }
    Ok(Args {
        server: SocketAddr::new(addr, port),
        queries: queries.ok_or("-d QUERIES is required")?,
        seconds,
        sockets,
        outstanding,
    })
}

fn qtype(name: &str) -> Option<u16> {
    Some(match name.to_ascii_uppercase().as_str() {
        "A" => 1,
        "NS" => 2,
        "CNAME" => 5,
        "SOA" => 6,
        "PTR" => 12,
        "MX" => 15,
        "TXT" => 16,
        "AAAA" => 28,
        "SRV" => 33,
        "SVCB" => 64,
        "HTTPS" => 65,
        "ANY" => 255,
        _ => return None,
    })
}

/// A query with id 0 and RD set, no EDNS (dnsperf's default).
fn encode(name: &str, qtype: u16) -> Result<Vec<u8>, String> {
    let mut wire = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("`{name}`: bad label"));
        }
        wire.push(label.len() as u8);
        wire.extend_from_slice(label.as_bytes());
    }
    wire.push(0);
    wire.extend_from_slice(&qtype.to_be_bytes());
    wire.extend_from_slice(&1u16.to_be_bytes());
    if wire.len() > SLOT {
        return Err(format!("`{name}`: too long"));
    }
    Ok(wire)
}

fn read_queries(path: &str) -> Result<Vec<Vec<u8>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut words = line.split_whitespace();
        let Some(name) = words.next().filter(|w| !w.starts_with('#')) else {
            continue;
        };
        let t = words.next().unwrap_or("A");
        let t = qtype(t).ok_or(format!("{path}:{}: unknown type `{t}`", n + 1))?;
        out.push(encode(name, t).map_err(|e| format!("{path}:{}: {e}", n + 1))?);
    }
    if out.is_empty() {
        return Err(format!("{path}: no queries"));
    }
    Ok(out)
}

/// One connected socket: which ids are out (send time in ns since start, 0 = free) and the
/// order they went out in, for the timeout sweep.
struct Client {
    socket: UdpSocket,
    sent_at: Vec<u64>,
    order: VecDeque<(u16, u64)>,
    next_id: u16,
    out: usize,
}

#[derive(Default)]
struct Totals {
    sent: u64,
    completed: u64,
    lost: u64,
    rcodes: [u64; 16],
    latency_sum: f64,
    latency_min: f64,
    latency_max: f64,
}

/// Scratch for one `sendmmsg` or `recvmmsg` call.
struct Batch {
    bufs: Vec<u8>,
    iov: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new(size: usize) -> Batch {
        let mut bufs = vec![0u8; BATCH * size];
        let iov: Vec<libc::iovec> = bufs
            .chunks_mut(size)
            .map(|c| libc::iovec {
                iov_base: c.as_mut_ptr().cast(),
                iov_len: c.len(),
            })
            .collect();
        // SAFETY: mmsghdr is plain data; all-zero is a valid value (no name, no control).
        let msgs = vec![unsafe { std::mem::zeroed::<libc::mmsghdr>() }; BATCH];
        let mut batch = Batch { bufs, iov, msgs };
        for i in 0..BATCH {
            batch.msgs[i].msg_hdr.msg_iov = &mut batch.iov[i];
            batch.msgs[i].msg_hdr.msg_iovlen = 1;
        }
        batch
    }
}

fn main() {
    // `cargo bench` runs every bench target with just `--bench` (`cargo test` with nothing):
    // this one is a tool that benches/dnsperf.sh drives.
    if std::env::args().skip(1).all(|a| a == "--bench") {
        eprintln!("dns_load: run by benches/dnsperf.sh LOADGEN=batched");
        return;
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("dns_load: {e}");
            std::process::exit(2)
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("dns_load: {e}");
        std::process::exit(1)
    }
}

fn run(args: &Args) -> Result<(), String> {
    let queries = read_queries(&args.queries)?;
    let mut clients = Vec::with_capacity(args.sockets);
    for _ in 0..args.sockets {
        let socket = UdpSocket::bind((args.server.ip(), 0)).map_err(|e| e.to_string())?;
        socket.connect(args.server).map_err(|e| e.to_string())?;
        socket.set_nonblocking(true).map_err(|e| e.to_string())?;
        clients.push(Client {
            socket,
            sent_at: vec![0; 1 << 16],
            order: VecDeque::new(),
            next_id: 0,
            out: 0,
        });
    }
    let window = args.outstanding / args.sockets;
    let mut send = Batch::new(SLOT);
    let mut recv = Batch::new(ANSWER);
    let mut totals = Totals {
        latency_min: f64::MAX,
        ..Totals::default()
    };
    let mut next_query = 0usize;
    let start = Instant::now();
    let end = start + Duration::from_secs(args.seconds);
    let mut last_sweep = start;
    let mut polls: Vec<libc::pollfd> = clients
        .iter()
        .map(|c| libc::pollfd {
            fd: c.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        let now = Instant::now();
        let sending = now < end;
        if !sending && (clients.iter().all(|c| c.out == 0) || now > end + TIMEOUT) {
            break;
        }
        let mut progress = false;
        for client in &mut clients {
            progress |= receive(client, &mut recv, start, &mut totals)?;
            if sending && client.out < window {
                progress |= transmit(client, &mut send, &queries, &mut next_query, start, window)?;
            }
        }
        if now.duration_since(last_sweep) > Duration::from_millis(50) {
            last_sweep = now;
            let now_ns = now.duration_since(start).as_nanos() as u64;
            for client in &mut clients {
                totals.lost += sweep(client, now_ns);
            }
        }
        if !progress {
            // SAFETY: `polls` is a valid array of pollfd for open sockets.
            unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, 1) };
        }
    }
    totals.sent =
        totals.completed + totals.lost + clients.iter().map(|c| c.out as u64).sum::<u64>();
    totals.lost += clients.iter().map(|c| c.out as u64).sum::<u64>();
    report(&totals, args.seconds as f64);
    Ok(())
}

/// Takes every answer queued on `client` (a batch a call) and matches it to its id.
fn receive(
    client: &mut Client,
    batch: &mut Batch,
    start: Instant,
    totals: &mut Totals,
) -> Result<bool, String> {
    let mut any = false;
    loop {
        for m in &mut batch.msgs {
            m.msg_len = 0;
        }
        // SAFETY: the headers point at `batch`'s own iovecs and buffers, which outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                client.socket.as_raw_fd(),
                batch.msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::WouldBlock => Ok(any),
                // A refused port (ICMP) is the server going away; its queries time out.
                std::io::ErrorKind::ConnectionRefused => Ok(any),
                _ => Err(format!("recvmmsg: {e}")),
            };
        }
        let now_ns = start.elapsed().as_nanos() as u64;
        for i in 0..n as usize {
            let len = batch.msgs[i].msg_len as usize;
            let answer = &batch.bufs[i * ANSWER..i * ANSWER + len];
            if len < 12 {
                continue;
            }
            let id = u16::from_be_bytes([answer[0], answer[1]]);
            let sent = std::mem::replace(&mut client.sent_at[usize::from(id)], 0);
            if sent == 0 {
                continue; // late (already counted lost) or not ours
            }
            client.out -= 1;
            totals.completed += 1;
            totals.rcodes[usize::from(answer[3] & 0x0f)] += 1;
            let secs = (now_ns - sent) as f64 / 1e9;
            totals.latency_sum += secs;
            totals.latency_min = totals.latency_min.min(secs);
            totals.latency_max = totals.latency_max.max(secs);
        }
        any = true;
        if (n as usize) < BATCH {
            return Ok(any);
        }
    }
}

/// Sends queries on `client` until `window` are out or the socket's buffer is full.
fn transmit(
    client: &mut Client,
    batch: &mut Batch,
    queries: &[Vec<u8>],
    next_query: &mut usize,
    start: Instant,
    window: usize,
) -> Result<bool, String> {
    let want = (window - client.out).min(BATCH);
    let now_ns = (start.elapsed().as_nanos() as u64).max(1);
    let mut ids = [0u16; BATCH];
    let mut n = 0;
    while n < want {
        let id = client.next_id;
        client.next_id = client.next_id.wrapping_add(1);
        if client.sent_at[usize::from(id)] != 0 {
            continue; // still out after a full turn of ids: skip it
        }
        let query = &queries[*next_query % queries.len()];
        *next_query += 1;
        let slot = &mut batch.bufs[n * SLOT..n * SLOT + query.len()];
        slot.copy_from_slice(query);
        slot[..2].copy_from_slice(&id.to_be_bytes());
        batch.iov[n].iov_len = query.len();
        ids[n] = id;
        n += 1;
    }
    // SAFETY: the first `n` headers point at filled slots of `batch`, which outlive the call.
    let sent = unsafe {
        libc::sendmmsg(
            client.socket.as_raw_fd(),
            batch.msgs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    let sent = if sent < 0 {
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::ConnectionRefused => 0,
            _ => return Err(format!("sendmmsg: {e}")),
        }
    } else {
        sent as usize
    };
    for &id in &ids[..sent] {
        client.sent_at[usize::from(id)] = now_ns;
        client.order.push_back((id, now_ns));
    }
    client.out += sent;
    // Queries taken but not sent go out next time, in order.
    *next_query -= n - sent;
    for m in &mut batch.iov {
        m.iov_len = SLOT;
    }
    Ok(sent > 0)
}

/// Forgets ids out for longer than [`TIMEOUT`]; returns how many were lost.
fn sweep(client: &mut Client, now_ns: u64) -> u64 {
    let mut lost = 0;
    while let Some(&(id, at)) = client.order.front() {
        let slot = &mut client.sent_at[usize::from(id)];
        if *slot != at {
            client.order.pop_front(); // answered (or the id was reused later)
        } else if now_ns - at > TIMEOUT.as_nanos() as u64 {
            *slot = 0;
            client.out -= 1;
            lost += 1;
            client.order.pop_front();
        } else {
            break;
        }
    }
    lost
}

const RCODES: [&str; 16] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
    "NXRRSET", "NOTAUTH", "NOTZONE", "RCODE11", "RCODE12", "RCODE13", "RCODE14", "RCODE15",
];

/// dnsperf's summary lines.
fn report(t: &Totals, seconds: f64) {
    let pct = |n: u64| n as f64 * 100.0 / t.sent.max(1) as f64;
    let codes: Vec<String> = t
        .rcodes
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| {
            let share = *n as f64 * 100.0 / t.completed.max(1) as f64;
            format!("{} {n} ({share:.2}%)", RCODES[i])
        })
        .collect();
    let avg = t.latency_sum / t.completed.max(1) as f64;
    let min = if t.completed > 0 { t.latency_min } else { 0.0 };
    println!("Statistics (dns_load, batched):");
    println!();
    println!("  Queries sent:         {}", t.sent);
    println!(
        "  Queries completed:    {} ({:.2}%)",
        t.completed,
        pct(t.completed)
    );
    println!("  Queries lost:         {} ({:.2}%)", t.lost, pct(t.lost));
    println!();
    println!("  Response codes:       {}", codes.join(", "));
    println!("  Run time (s):         {seconds:.6}");
    println!(
        "  Queries per second:   {:.6}",
        t.completed as f64 / seconds
    );
    println!();
    println!(
        "  Average Latency (s):  {avg:.6} (min {min:.6}, max {:.6})",
        t.latency_max
    );
}
