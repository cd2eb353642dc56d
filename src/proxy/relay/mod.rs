//! Relaying a tunnel: bytes both ways between the client and the origin.
//!
//! By default (`[proxy] relay = "copy"`) a direction reads what its source has into a
//! per-thread 256 KiB buffer and writes it straight out; only bytes the destination
//! cannot take yet are copied to the heap, freed once written. Once its destination
//! has fallen behind, a direction reads 64 KiB at a time, so a slow reader holds at
//! most that much.
//!
//! With `relay = "splice"` (Linux) each direction moves its bytes with splice(2),
//! socket to pipe to socket, so the payload never enters user space: less than half
//! the CPU per GiB. It is not the default because, with the sender on the same host,
//! the sender's pages stay pinned in the pipe and the receiver's socket until the
//! receiver has read them, and the TLS bulk benchmark ran at 80% of a direct
//! connection against 95-97% with copying (BENCHMARKS.md). A pipe belongs to a direction only while
//! it holds bytes: when the source is readable the direction takes an empty pipe
//! from a small per-thread pool, splices what the source has into it and out to the
//! destination, and gives it back once it is empty. If the destination cannot take
//! everything, the direction keeps its pipe, bytes and all, until they are written;
//! a pipe with bytes in it is never shared nor pooled, and one dropped with bytes in
//! it (the tunnel closed meanwhile) is closed with them.
//!
//! Pipes cost two descriptors each, so their number is capped (a share of
//! `RLIMIT_NOFILE`). Past the cap, on other systems, or if a socket cannot splice, a
//! direction copies instead.
//!
//! Either way an idle tunnel holds no buffer and no pipe: its task, two sockets and
//! a timer (see the RSS figures in BENCHMARKS.md), where
//! `tokio::io::copy_bidirectional` would hold 16 KiB each.
//!
//! Here: the tunnel's two directions, its timeouts, and the choice of a step; the steps
//! themselves are in `copy` and (Linux) `splice`.

mod copy;
#[cfg(target_os = "linux")]
mod splice;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::RelayMode;
use copy::{BUF_SIZE, copy_step};

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

/// What one step of a direction did.
enum Step {
    /// Bytes went through (all of them written to the destination).
    Moved,
    /// The source had nothing after all.
    WouldBlock,
    /// The source is at EOF.
    Eof,
    /// The source cannot splice: copy from now on.
    #[cfg(target_os = "linux")]
    Unsupported,
}

/// A direction's byte count and the tunnel's last activity (for the idle timeout).
struct Progress<'a> {
    count: &'a AtomicU64,
    last: &'a AtomicU64,
    epoch: Instant,
}

impl Progress<'_> {
    fn moved(&self, n: usize) {
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// One direction: `src` to `dst` until EOF or an error, then half-close `dst`: its
/// peer gets a FIN either way, so an error on one side also ends the other direction
/// (the origin sees EOF and closes) instead of waiting for the idle timeout.
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    mode: RelayMode,
    progress: Progress<'_>,
) -> io::Result<()> {
    let result = pump_to_eof(src, dst, mode, &progress).await;
    let _ = socket_shutdown_write(dst);
    result
}

async fn pump_to_eof(
    src: &TcpStream,
    dst: &TcpStream,
    mode: RelayMode,
    progress: &Progress<'_>,
) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    let mut splicing = mode == RelayMode::Splice;
    let mut read_max = BUF_SIZE;
    #[cfg(not(target_os = "linux"))]
    let _ = mode;
    loop {
        src.readable().await?;
        #[cfg(target_os = "linux")]
        if splicing && let Some(pipe) = splice::Pipe::take() {
            match splice::splice_step(src, dst, pipe, progress).await? {
                Step::Eof => return Ok(()),
                Step::Moved | Step::WouldBlock => continue,
                // Nothing was read: copy this time and from now on.
                Step::Unsupported => splicing = false,
            }
        }
        if let Step::Eof = copy_step(src, dst, &mut read_max, progress).await? {
            return Ok(());
        }
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
    mode: RelayMode,
    idle: Duration,
    max_life: Duration,
    stop: impl std::future::Future<Output = ()>,
) -> Relayed {
    let epoch = Instant::now();
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    let last = AtomicU64::new(0);
    let progress = |count| Progress {
        count,
        last: &last,
        epoch,
    };
    let both = async {
        let (a, b) = tokio::join!(
            pump(client, origin, mode, progress(&up)),
            pump(origin, client, mode, progress(&down))
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
        biased;
        r = both => r,
        _ = stop => CloseReason::Shutdown,
        r = watchdog => r,
    };
    Relayed {
        up: up.load(Ordering::Relaxed),
        down: down.load(Ordering::Relaxed),
        reason,
    }
}

#[cfg(test)]
mod tests {
    //! Run on tokio's current-thread runtime: the relay, both ends and the pipe pool
    //! share the test's thread, so `pipe::held_here()` sees every pipe a direction holds.

    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;

    use super::{CloseReason, Relayed, relay};

    const LONG: Duration = Duration::from_secs(30);

    /// Both copies of each test: splice (where there is one) and the copy path.
    fn modes() -> [bool; 2] {
        [false, true]
    }

    fn force_copy(on: bool) {
        #[cfg(target_os = "linux")]
        super::splice::FORCE_COPY.with(|f| f.set(on));
        let _ = on;
    }

    fn held() -> isize {
        #[cfg(target_os = "linux")]
        return super::splice::held_here();
        #[cfg(not(target_os = "linux"))]
        0
    }

    fn set_buf(s: &TcpStream, opt: libc::c_int, bytes: libc::c_int) {
        // SAFETY: setsockopt on a socket we own, with a c_int option value.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// The ends the applications hold, and the relay between them.
    struct Tunnel {
        client: TcpStream,
        origin: TcpStream,
        relay: JoinHandle<Relayed>,
    }

    /// `small`: tiny socket buffers on the way to the client, so the relay's writes
    /// to it are partial and then would block as soon as the client stops reading.
    async fn tunnel(idle: Duration, max_life: Duration, small: bool) -> Tunnel {
        let (client, proxy_client) = pair().await;
        let (proxy_origin, origin) = pair().await;
        if small {
            // Far below one pipe's worth (tiny ones make loopback TCP crawl).
            set_buf(&client, libc::SO_RCVBUF, 32 * 1024);
            set_buf(&proxy_client, libc::SO_SNDBUF, 32 * 1024);
        }
        let relay = tokio::spawn(async move {
            // Splice mode; `force_copy` turns it into the copy path.
            relay(
                &proxy_client,
                &proxy_origin,
                super::RelayMode::Splice,
                idle,
                max_life,
                std::future::pending(),
            )
            .await
        });
        Tunnel {
            client,
            origin,
            relay,
        }
    }

    /// A pattern whose period (251) divides no buffer or pipe size: a lost, repeated or
    /// reordered chunk shows.
    fn pattern(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| ((i % 251) as u8) ^ seed).collect()
    }

    async fn read_all(s: &mut TcpStream) -> Vec<u8> {
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn every_byte_arrives_in_order_through_partial_writes_both_ways() {
        for copy in modes() {
            force_copy(copy);
            let t = tunnel(LONG, LONG, true).await;
            let (client, origin) = (t.client, t.origin);
            let down = pattern(0x5a, 6 << 20);
            let up = pattern(0xa5, 3 << 20);
            let sender = {
                let down = down.clone();
                let (mut r, mut w) = origin.into_split();
                tokio::spawn(async move {
                    w.write_all(&down).await.unwrap();
                    w.shutdown().await.unwrap();
                    let mut got = Vec::new();
                    r.read_to_end(&mut got).await.unwrap();
                    got
                })
            };
            // The client does not read yet: the relay's writes to it fill its buffers,
            // and then the direction waits, holding its pipe with the bytes in it.
            if !copy && cfg!(target_os = "linux") {
                let mut waited = 0;
                while held() != 1 && waited < 500 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    waited += 1;
                }
                assert_eq!(
                    held(),
                    1,
                    "a direction with bytes it cannot write keeps its pipe"
                );
            } else {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let (mut r, mut w) = client.into_split();
            let upload = {
                let up = up.clone();
                tokio::spawn(async move {
                    w.write_all(&up).await.unwrap();
                    w.shutdown().await.unwrap();
                })
            };
            let mut got = Vec::new();
            let mut buf = vec![0u8; 1000];
            loop {
                // Small, slow reads: the relay keeps meeting a full destination.
                let n = r.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                if got.len() % 97 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            upload.await.unwrap();
            let relay_result = t.relay.await;
            assert!(got == down, "copy={copy}: the download arrived intact");
            let got_up = sender.await.unwrap();
            assert!(got_up == up, "copy={copy}: the upload arrived intact");
            let relayed = relay_result.unwrap();
            assert_eq!(relayed.reason, CloseReason::Done, "copy={copy}");
            assert_eq!(relayed.up, up.len() as u64, "copy={copy}");
            assert_eq!(relayed.down, down.len() as u64, "copy={copy}");
            assert_eq!(held(), 0, "copy={copy}: every pipe is back in the pool");
        }
    }

    #[tokio::test]
    async fn a_tunnel_waiting_on_its_pipe_does_not_share_it() {
        for copy in modes() {
            force_copy(copy);
            // A: the client does not read; its direction holds bytes.
            let mut a = tunnel(LONG, LONG, true).await;
            let a_down = pattern(1, 2 << 20);
            let a_send = {
                let data = a_down.clone();
                let (_r, mut w) = a.origin.into_split();
                tokio::spawn(async move {
                    w.write_all(&data).await.unwrap();
                    w.shutdown().await.unwrap();
                    _r
                })
            };
            tokio::time::sleep(Duration::from_millis(100)).await;
            // B, on the same thread, meanwhile moves its own bytes.
            let mut b = tunnel(LONG, LONG, false).await;
            let b_down = pattern(2, 2 << 20);
            b.origin.write_all(&b_down).await.unwrap();
            b.origin.shutdown().await.unwrap();
            b.client.shutdown().await.unwrap();
            assert!(
                read_all(&mut b.client).await == b_down,
                "copy={copy}: B intact"
            );
            let rb = b.relay.await.unwrap();
            assert_eq!(
                (rb.reason, rb.down),
                (CloseReason::Done, b_down.len() as u64)
            );
            // A's bytes, still waiting, are A's alone.
            a.client.shutdown().await.unwrap();
            assert!(
                read_all(&mut a.client).await == a_down,
                "copy={copy}: A intact"
            );
            drop(a_send.await.unwrap());
            let ra = a.relay.await.unwrap();
            assert_eq!(
                (ra.reason, ra.down),
                (CloseReason::Done, a_down.len() as u64)
            );
            assert_eq!(held(), 0);
        }
    }

    #[tokio::test]
    async fn half_close_passes_through_and_the_other_way_goes_on() {
        for copy in modes() {
            force_copy(copy);
            let mut t = tunnel(LONG, LONG, false).await;
            t.client.write_all(b"request").await.unwrap();
            t.client.shutdown().await.unwrap();
            // The origin sees the request, then EOF: the client's FIN went through.
            assert_eq!(read_all(&mut t.origin).await, b"request", "copy={copy}");
            // The other direction still works after the half-close.
            t.origin.write_all(b"response").await.unwrap();
            t.origin.shutdown().await.unwrap();
            assert_eq!(read_all(&mut t.client).await, b"response", "copy={copy}");
            let r = t.relay.await.unwrap();
            assert_eq!(
                (r.reason, r.up, r.down),
                (CloseReason::Done, 7, 8),
                "copy={copy}"
            );
        }
    }

    #[tokio::test]
    async fn eof_at_once_ends_with_nothing_relayed() {
        for copy in modes() {
            force_copy(copy);
            let t = tunnel(LONG, LONG, false).await;
            drop(t.client);
            drop(t.origin);
            let r = tokio::time::timeout(Duration::from_secs(5), t.relay)
                .await
                .expect("the relay ends")
                .unwrap();
            assert_eq!((r.up, r.down), (0, 0), "copy={copy}");
            assert_eq!(held(), 0);
        }
    }

    #[tokio::test]
    async fn an_idle_tunnel_holds_no_pipe_and_closes_after_the_idle_timeout() {
        for copy in modes() {
            force_copy(copy);
            let idle = Duration::from_millis(1000);
            let mut t = tunnel(idle, LONG, false).await;
            let started = tokio::time::Instant::now();
            // Traffic every 100 ms for 1.5 s keeps it open past the idle timeout.
            let mut buf = [0u8; 64];
            for _ in 0..15 {
                t.origin.write_all(&[7u8; 64]).await.unwrap();
                t.client.read_exact(&mut buf).await.unwrap();
                assert_eq!(held(), 0, "copy={copy}: no pipe between bursts");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(
                !t.relay.is_finished(),
                "copy={copy}: activity resets the idle timer"
            );
            let r = t.relay.await.unwrap();
            assert_eq!(r.reason, CloseReason::Idle, "copy={copy}");
            assert_eq!(r.down, 15 * 64);
            assert!(
                started.elapsed() >= Duration::from_millis(2400),
                "copy={copy}"
            );
            assert_eq!(held(), 0);
        }
    }

    #[tokio::test]
    async fn max_lifetime_closes_a_busy_tunnel() {
        let mut t = tunnel(LONG, Duration::from_millis(300), false).await;
        let mut buf = [0u8; 8];
        let r = loop {
            if t.relay.is_finished() {
                break t.relay.await.unwrap();
            }
            if t.client.write_all(b"12345678").await.is_err()
                || t.origin.read_exact(&mut buf).await.is_err()
            {
                break t.relay.await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(r.reason, CloseReason::MaxLifetime);
    }

    #[tokio::test]
    async fn a_reset_client_ends_the_tunnel_without_waiting_for_the_idle_timeout() {
        for copy in modes() {
            force_copy(copy);
            let mut t = tunnel(LONG, LONG, false).await;
            t.client.write_all(b"hi").await.unwrap();
            let mut buf = [0u8; 2];
            t.origin.read_exact(&mut buf).await.unwrap();
            // SO_LINGER 0: close sends a RST.
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: setsockopt on a socket we own, with a `linger` value.
            let rc = unsafe {
                libc::setsockopt(
                    t.client.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0);
            drop(t.client);
            // The origin gets a FIN (it closes then), and the relay ends with an error.
            let rest = tokio::time::timeout(Duration::from_secs(5), read_all(&mut t.origin))
                .await
                .expect("the origin sees EOF");
            assert!(rest.is_empty());
            drop(t.origin);
            let r = tokio::time::timeout(Duration::from_secs(5), t.relay)
                .await
                .expect("the relay ends")
                .unwrap();
            assert_eq!((r.reason, r.up), (CloseReason::Error, 2), "copy={copy}");
            assert_eq!(held(), 0);
        }
    }
}
