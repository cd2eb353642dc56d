//! Reads and writes that give up when a peer goes quiet, and the counters they keep.

use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes relayed one way, readable after the exchange is cancelled.
#[derive(Default)]
pub(super) struct Counter(AtomicU64);

impl Counter {
    pub(super) fn add(&self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(super) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// When either direction last moved a byte: the idle timeout is "nothing either way".
pub(super) struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub(super) fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn since(&self) -> Duration {
        self.epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// A read that gives up once neither direction has moved a byte for `idle`.
pub(super) async fn read_idle<R: AsyncRead + Unpin>(
    src: &mut R,
    buf: &mut [u8],
    idle: Duration,
    activity: &Activity,
) -> Option<io::Result<usize>> {
    loop {
        let wait = idle.saturating_sub(activity.since());
        if wait.is_zero() {
            return None;
        }
        // A TCP read is cancel safe: nothing is lost when the timer wins.
        if let Ok(read) = tokio::time::timeout(wait, src.read(buf)).await {
            activity.touch();
            return Some(read);
        }
    }
}

/// [`write_parts`] that fails once it has waited `idle` for the peer to take the bytes: a
/// reader that stops reading frees its connection slot and buffers instead of holding them
/// until `tunnel_max_secs`. (The write is not restarted: a partial one cannot be.)
pub(super) async fn write_idle<W: AsyncWrite + Unpin>(
    dst: &mut W,
    parts: &[&[u8]],
    idle: Duration,
) -> io::Result<()> {
    match tokio::time::timeout(idle, write_parts(dst, parts)).await {
        Ok(written) => written,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the peer took no bytes within the idle timeout",
        )),
    }
}

/// Writes every byte of `parts` (one writev where the socket takes it).
pub(super) async fn write_parts<W: AsyncWrite + Unpin>(
    dst: &mut W,
    parts: &[&[u8]],
) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| IoSlice::new(p))
        .collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        let n = dst.write_vectored(slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}
