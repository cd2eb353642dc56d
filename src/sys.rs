//! Calls into the C library, and small process-wide helpers more than one module needs: one
//! copy of each, so that every `unsafe` block and the reasoning for it live in this file.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Locks `m`, ignoring poison: the gate's mutexes guard state that a panicking holder leaves
/// consistent (counts, values replaced whole), and one panicked task must not take every later
/// user of the lock down with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `wait` spread by up to `share` of it either way (`0.1`: anywhere from 90 % to 110 %), so
/// that timers set together do not fire together. Never negative.
pub fn jittered(wait: Duration, share: f64) -> Duration {
    wait.mul_f64(spread(share, random_unit()))
}

/// The factor [`jittered`] applies for a uniform `unit` in [0, 1).
fn spread(share: f64, unit: f64) -> f64 {
    (1.0 + share * (2.0 * unit - 1.0)).max(0.0)
}

/// A pseudo-random number in [0, 1), good for spreading timers, not for secrets: every
/// `RandomState` is freshly keyed, so hashing nothing yields a new value.
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    // The top 53 bits: exactly representable in an f64.
    (random >> 11) as f64 / (1u64 << 53) as f64
}

/// The soft limit on open file descriptors (`RLIMIT_NOFILE`; unlimited is `u64::MAX`), or
/// `None` when it cannot be read.
pub fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    ok.then_some(limit.rlim_cur)
}

/// Moves the calling thread to the lowest CPU priority (`SCHED_IDLE`, and nice 19), so that it
/// only takes the CPU that other threads leave: one of them that wakes up preempts it at once.
/// A no-op outside Linux; a refusal is logged at debug level and the thread runs on as it was.
pub fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: neither call has memory-safety preconditions beyond a valid `sched_param`; on
    // Linux `pid = 0` / `who = 0` name the calling thread only.
    unsafe {
        // SCHED_IDLE: a normal thread that wakes up always preempts this one (with nice 19
        // alone, the scheduler may let it run out its slice first: milliseconds of latency).
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            tracing::debug!(thread = ?std::thread::current().name(), "could not move the thread to SCHED_IDLE");
        }
        // Nice 19 too, should the policy above be refused.
        if libc::setpriority(libc::PRIO_PROCESS, 0, 19) != 0 {
            tracing::debug!(thread = ?std::thread::current().name(), "could not lower the thread's priority");
        }
    }
}

/// Hands the free memory inside glibc's arenas back to the system (`malloc_trim`): the tables
/// of small lists and the growth steps of a list being parsed live there (below the 1 MiB
/// mmap threshold), and without a trim the holes they leave keep RSS up after a refresh.
/// A no-op with another C library.
pub fn trim_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Makes glibc's allocator give rebuilt rule sets back to the system: allocations of 1 MiB and
/// more always get their own mapping (returned on free; by default the threshold creeps up to
/// 32 MiB after the first free, so later rule tables land in arenas that never shrink), and at
/// most two arenas (each thread would otherwise keep one, grown to a rule set's size).
/// Call once at process start, before other threads exist. Without it, peak RSS during a
/// refresh of the full shared set was ~4.5x steady instead of ~1.8x (`benches/refresh.sh`, when
/// a refresh still rebuilt every list at once).
/// Same effect as `MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=1048576`. A no-op elsewhere.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads run.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_bounds() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(100), 0.1);
            assert!(
                d >= Duration::from_secs(90) && d <= Duration::from_secs(110),
                "{d:?}"
            );
        }
        assert_eq!(
            jittered(Duration::from_secs(7), 0.0),
            Duration::from_secs(7)
        );
    }

    #[test]
    fn the_spread_covers_the_whole_share_and_never_goes_negative() {
        let near = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(near(spread(0.2, 0.0), 0.8));
        assert!(near(spread(0.2, 0.5), 1.0));
        assert_eq!(spread(3.0, 0.0), 0.0);
        for _ in 0..100 {
            assert!((0.0..1.0).contains(&random_unit()));
        }
    }

    #[test]
    fn a_poisoned_lock_still_locks() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _held = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }

    #[test]
    fn the_descriptor_limit_is_readable() {
        assert!(open_file_limit().is_some_and(|n| n > 0));
    }
}
