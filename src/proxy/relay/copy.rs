//! The copying step: through a per-thread buffer, spilling to the heap only what the
//! destination cannot take yet.

use std::cell::RefCell;
use std::io;

use tokio::net::TcpStream;

use super::{Progress, Step};

/// 256 KiB: against 64 KiB, raw bulk throughput rose from 2100 to 2690 MB/s; 1 MiB
/// (3130 MB/s) would let a blocked direction hold up to 1 MiB of heap.
pub(super) const BUF_SIZE: usize = 256 * 1024;
/// Reads of a direction whose destination has once fallen behind: what it cannot take
/// waits on the heap, so a slow reader holds at most this much (after one full buffer
/// the first time), as it did before the buffer grew.
const SLOW_READ: usize = 64 * 1024;

thread_local! {
    static BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; BUF_SIZE].into_boxed_slice());
}

enum Copied {
    Wrote(usize),
    Partial(Vec<u8>, usize),
    Eof,
    WouldBlock,
}

/// Reads what `src` has (at most `read_max` bytes) into the per-thread buffer and writes
/// it to `dst`; what `dst` cannot take yet is copied to the heap and written as `dst`
/// allows, and `read_max` drops to [`SLOW_READ`] for good.
pub(super) async fn copy_step(
    src: &TcpStream,
    dst: &TcpStream,
    read_max: &mut usize,
    progress: &Progress<'_>,
) -> io::Result<Step> {
    let limit = *read_max;
    let copied = BUF.with(|buf| -> io::Result<Copied> {
        let mut buf = buf.borrow_mut();
        let n = match src.try_read(&mut buf[..limit]) {
            Ok(0) => return Ok(Copied::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Copied::WouldBlock),
            Err(e) => return Err(e),
        };
        match dst.try_write(&buf[..n]) {
            Ok(w) if w == n => Ok(Copied::Wrote(n)),
            Ok(w) => Ok(Copied::Partial(buf[w..n].to_vec(), w)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                Ok(Copied::Partial(buf[..n].to_vec(), 0))
            }
            Err(e) => Err(e),
        }
    })?;
    match copied {
        Copied::WouldBlock => Ok(Step::WouldBlock),
        Copied::Eof => Ok(Step::Eof),
        Copied::Wrote(n) => {
            progress.moved(n);
            Ok(Step::Moved)
        }
        Copied::Partial(rest, written) => {
            *read_max = SLOW_READ;
            if written > 0 {
                progress.moved(written);
            }
            let mut off = 0;
            while off < rest.len() {
                dst.writable().await?;
                match dst.try_write(&rest[off..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(w) => {
                        off += w;
                        progress.moved(w);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(Step::Moved)
        }
    }
}
