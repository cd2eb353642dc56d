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
