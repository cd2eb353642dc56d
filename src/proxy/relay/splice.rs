//! The splice(2) step (Linux): socket to pipe to socket, the payload never in user
//! space. Pipes come from a per-thread pool of empty ones, under a process-wide cap.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::{Progress, Step};

/// Asked for with `F_SETPIPE_SZ` (the default is 64 KiB; at most
/// `/proc/sys/fs/pipe-max-size`, 1 MiB by default). One splice moves at most this.
const PIPE_SIZE: usize = 256 * 1024;
/// Empty pipes a thread keeps for the next step; more are closed.
const POOL_PER_THREAD: usize = 4;

/// Pipes open in the process: pooled ones and ones a direction holds.
static LIVE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

#[cfg(test)]
thread_local! {
    /// Tests: no pipes on this thread (the copy path).
    pub(super) static FORCE_COPY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Tests: pipes created minus pipes closed on this thread.
    static CREATED: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

/// At most 1/32 of the descriptor limit goes to pipes (two descriptors each), so
/// tunnels' sockets and accept(2) never starve for them.
fn cap() -> usize {
    static CAP: OnceLock<usize> = OnceLock::new();
    *CAP.get_or_init(|| {
        let fds = crate::sys::open_file_limit().map_or(1024, |n| n as usize);
        (fds / 32).clamp(4, 1024)
    })
}

pub(super) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
}

impl Pipe {
    /// An empty pipe from this thread's pool, or a new one within the cap.
    pub(super) fn take() -> Option<Pipe> {
        #[cfg(test)]
        if FORCE_COPY.with(|f| f.get()) {
            return None;
        }
        if let Ok(Some(pipe)) = POOL.try_with(|pool| pool.borrow_mut().pop()) {
            return Some(pipe);
        }
        if LIVE.fetch_add(1, Ordering::Relaxed) >= cap() {
            LIVE.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        match Pipe::open() {
            Ok(pipe) => Some(pipe),
            Err(_) => {
                LIVE.fetch_sub(1, Ordering::Relaxed);
                None
            }
        }
    }

    fn open() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just opened and are owned by nothing else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on a descriptor we own; failure leaves the default size.
        let size = match unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_SIZE as libc::c_int,
            )
        } {
            n if n > 0 => n as usize,
            _ => 64 * 1024,
        };
        #[cfg(test)]
        let _ = CREATED.try_with(|c| c.set(c.get() + 1));
        Ok(Pipe { read, write, size })
    }

    /// Back to this thread's pool. Only for an empty pipe.
    fn give_back(self) {
        let mut pipe = Some(self);
        let _ = POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < POOL_PER_THREAD {
                pool.extend(pipe.take());
            }
        });
    }

    /// Splices what `src` has (up to the pipe's size) into the empty pipe.
    fn fill(&self, src: RawFd) -> io::Result<usize> {
        splice(src, self.write.as_raw_fd(), self.size)
    }

    /// Splices up to `len` bytes from the pipe to `dst`.
    fn drain(&self, dst: RawFd, len: usize) -> io::Result<usize> {
        splice(self.read.as_raw_fd(), dst, len)
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
        #[cfg(test)]
        let _ = CREATED.try_with(|c| c.set(c.get() - 1));
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: plain descriptors, no offsets. Both sockets and the pipe are
        // non-blocking. A write to a socket whose peer is gone raises SIGPIPE, which
        // the Rust runtime ignores (the call fails with EPIPE instead).
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// splice(2) does not work on this descriptor (not a failure of the connection).
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
    )
}

/// Tests: pipes a direction holds on this thread (open minus pooled).
#[cfg(test)]
pub(super) fn held_here() -> isize {
    CREATED.with(|c| c.get()) - POOL.with(|p| p.borrow().len() as isize)
}

/// Splices what `src` has into `pipe` and all of it out to `dst`. The pipe goes back to
/// the pool only empty; an error or a cancelled wait for `dst` drops (closes) it.
pub(super) async fn splice_step(
    src: &TcpStream,
    dst: &TcpStream,
    pipe: Pipe,
    progress: &Progress<'_>,
) -> io::Result<Step> {
    let filled = src.try_io(Interest::READABLE, || pipe.fill(src.as_raw_fd()));
    let mut left = match filled {
        Ok(0) => {
            pipe.give_back();
            return Ok(Step::Eof);
        }
        Ok(n) => n,
        // splice(2) moves nothing when it fails: the pipe is still empty.
        Err(e) => {
            pipe.give_back();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(Step::WouldBlock),
                _ if unsupported(&e) => Ok(Step::Unsupported),
                _ => Err(e),
            };
        }
    };
    while left > 0 {
        match dst.try_io(Interest::WRITABLE, || pipe.drain(dst.as_raw_fd(), left)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(w) => {
                left -= w;
                progress.moved(w);
            }
            // The bytes stay in this direction's own pipe while it waits.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await?,
            Err(e) => return Err(e),
        }
    }
    pipe.give_back();
    Ok(Step::Moved)
}
