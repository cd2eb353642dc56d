//! Work that must not delay queries: parsing, hashing, reading and writing list files.
//! It runs on one long-lived thread at the lowest CPU priority, so on a core shared with the
//! query workers it only takes the time they leave (`benches/refresh.sh` measures this).

/// Runs `work` on a background thread at the lowest CPU priority (`SCHED_IDLE`, and nice
/// 19), so that parsing lists and building rule sets take only the CPU that answering queries
/// leaves: a query worker that wakes up preempts it at once.
///
/// The thread lives as long as the process. A thread created for each job did not stay out of
/// the way: for its first milliseconds the scheduler (EEVDF, Linux 6.18) kept running it after
/// a query worker woke up on the same core, until the next tick, up to 5 ms later
/// (`perf sched` under `benches/refresh.sh`).
pub(crate) async fn in_background<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)));
    });
    pool().send(job).expect("the list threads never stop");
    match rx.await.expect("a list job always answers") {
        Ok(value) => value,
        // Raised again in the caller's task, which turns it into that list's failure
        // (`refresh::guarded`): the thread itself goes on with the next job.
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The message of a caught panic, for a list's status.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

type Job = Box<dyn FnOnce() + Send>;

/// One thread. A runnable `SCHED_IDLE` thread that waits while a query worker runs is still
/// owed CPU time under EEVDF, and it is paid back by keeping the core for up to a tick after
/// the worker wakes: two such threads held queries up twice as often (refresh p99 0.71 ms
/// against 0.12-0.13 ms with one, steady 0.07-0.08 ms, `benches/refresh.sh` on one core).
const THREADS: usize = 1;

fn pool() -> &'static std::sync::mpsc::Sender<Job> {
    static POOL: std::sync::OnceLock<std::sync::mpsc::Sender<Job>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for _ in 0..THREADS {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name("portcullis-lists".into())
                .spawn(move || {
                    crate::sys::lower_thread_priority();
                    loop {
                        let job = match crate::sys::lock(&rx).recv() {
                            Ok(job) => job,
                            Err(_) => return,
                        };
                        // The job catches its own panic and hands it to its caller.
                        job();
                    }
                })
                .expect("spawning a list thread");
        }
        tx
    })
}

/// The most one read or write system call moves. On a kernel built without preemption
/// (`PREEMPT_NONE`, common on cloud and VM kernels) a thread inside a system call keeps its
/// core until the call returns, whatever its priority: one `read` of a 4 MB list held a query
/// worker off its core for up to 7 ms (`perf trace` under `benches/refresh.sh`). 64 KiB takes
/// tens of microseconds.
const SLICE: usize = 64 * 1024;

/// `std::fs::read`, in system calls of at most [`SLICE`] bytes. A file too large for
/// memory is an error, not an abort.
pub(crate) fn read(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
    let mut bytes = Vec::new();
    // One byte more than the size, so the read that finds the end needs no reallocation.
    let reserve = |bytes: &mut Vec<u8>, n: usize| {
        bytes
            .try_reserve_exact(n)
            .map_err(|e| Error::new(ErrorKind::OutOfMemory, e))
    };
    reserve(&mut bytes, len.saturating_add(1))?;
    loop {
        if bytes.len() == bytes.capacity() {
            // The file grew since its size was read.
            reserve(&mut bytes, SLICE)?;
        }
        let start = bytes.len();
        let end = bytes.capacity().min(start + SLICE);
        bytes.resize(end, 0);
        match file.read(&mut bytes[start..]) {
            Ok(0) => {
                bytes.truncate(start);
                return Ok(bytes);
            }
            Ok(n) => bytes.truncate(start + n),
            Err(e) if e.kind() == ErrorKind::Interrupted => bytes.truncate(start),
            Err(e) => return Err(e),
        }
    }
}

/// `write_all`, in system calls of at most [`SLICE`] bytes.
pub(crate) fn write_all(out: &mut impl std::io::Write, bytes: &[u8]) -> std::io::Result<()> {
    bytes
        .chunks(SLICE)
        .try_for_each(|slice| out.write_all(slice))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliced_reads_and_writes_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 1, SLICE - 1, SLICE, 3 * SLICE + 17] {
            let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let path = dir.path().join(format!("{len}.txt"));
            let mut file = std::fs::File::create(&path).unwrap();
            write_all(&mut file, &body).unwrap();
            drop(file);
            assert_eq!(read(&path).unwrap(), body, "{len} bytes");
        }
        assert!(read(&dir.path().join("missing")).is_err());
    }

    #[tokio::test]
    async fn a_panicking_job_fails_its_caller_and_the_thread_goes_on() {
        let failed = tokio::spawn(in_background(|| -> u32 { panic!("bad list") })).await;
        assert!(failed.is_err(), "the caller sees the panic");
        assert_eq!(
            in_background(|| 41 + 1).await,
            42,
            "the next job still runs"
        );
    }
}
