//! Relaying a tunnel: bytes both ways between the client and the origin.
//!
//! An idle tunnel holds no buffer: each direction waits for readiness, then reads
//! into a per-thread 64 KiB buffer and writes straight out. Only bytes the other side
//! cannot take yet are copied into a heap buffer, freed once written. That keeps an
//! idle tunnel to its task, two sockets and a timer (see the RSS figures in
//! BENCHMARKS.md), where `tokio::io::copy_bidirectional` would hold 16 KiB each.

use std::cell::RefCell;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

const BUF_SIZE: usize = 64 * 1024;

thread_local! {
    static BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; BUF_SIZE].into_boxed_slice());
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both sides finished.
    Done,
    Idle,
    MaxLifetime,
    Error,
    Shutdown,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Done => "done",
            CloseReason::Idle => "idle_timeout",
            CloseReason::MaxLifetime => "max_lifetime",
            CloseReason::Error => "error",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// Bytes relayed and why the tunnel closed.
#[derive(Debug, Clone, Copy)]
pub struct Relayed {
    /// Client to origin.
    pub up: u64,
    /// Origin to client.
    pub down: u64,
    pub reason: CloseReason,
}

enum Step {
    Wrote(usize),
    Partial(Vec<u8>, usize),
    Eof,
    WouldBlock,
}

/// One direction: `src` to `dst` until EOF, then half-close `dst`.
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    count: &AtomicU64,
    last: &AtomicU64,
    epoch: Instant,
) -> io::Result<()> {
    loop {
        src.readable().await?;
        let step = BUF.with(|buf| -> io::Result<Step> {
            let mut buf = buf.borrow_mut();
            let n = match src.try_read(&mut buf[..]) {
                Ok(0) => return Ok(Step::Eof),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::WouldBlock),
                Err(e) => return Err(e),
            };
            match dst.try_write(&buf[..n]) {
                Ok(w) if w == n => Ok(Step::Wrote(n)),
                Ok(w) => Ok(Step::Partial(buf[w..n].to_vec(), n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    Ok(Step::Partial(buf[..n].to_vec(), n))
                }
                Err(e) => Err(e),
            }
        })?;
        match step {
            Step::WouldBlock => continue,
            Step::Eof => {
                let _ = socket_shutdown_write(dst);
                return Ok(());
            }
            Step::Wrote(n) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
            Step::Partial(rest, n) => {
                let mut off = 0;
                while off < rest.len() {
                    dst.writable().await?;
                    match dst.try_write(&rest[off..]) {
                        Ok(w) => off += w,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

fn socket_shutdown_write(stream: &TcpStream) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the fd is owned by `stream`, which outlives this call; shutdown(2)
    // does not close or invalidate it.
    let rc = unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Relays until both directions end, the tunnel is idle for `idle`, it has lived
/// `max_life`, or `stop` completes.
pub async fn relay(
    client: &TcpStream,
    origin: &TcpStream,
    idle: Duration,
    max_life: Duration,
    stop: impl std::future::Future<Output = ()>,
) -> Relayed {
    let epoch = Instant::now();
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    let last = AtomicU64::new(0);
    let both = async {
        let (a, b) = tokio::join!(
            pump(client, origin, &up, &last, epoch),
            pump(origin, client, &down, &last, epoch)
        );
        if a.is_err() || b.is_err() {
            CloseReason::Error
        } else {
            CloseReason::Done
        }
    };
    let watchdog = async {
        loop {
            let last_ms = last.load(Ordering::Relaxed);
            let idle_at = epoch + Duration::from_millis(last_ms) + idle;
            let end = epoch + max_life;
            if Instant::now() >= end {
                return CloseReason::MaxLifetime;
            }
            if Instant::now() >= idle_at {
                return CloseReason::Idle;
            }
            tokio::time::sleep_until(idle_at.min(end)).await;
        }
    };
    let reason = tokio::select! {
        r = both => r,
        r = watchdog => r,
        _ = stop => CloseReason::Shutdown,
    };
    Relayed {
        up: up.load(Ordering::Relaxed),
        down: down.load(Ordering::Relaxed),
        reason,
    }
}
