//! When each `url` list is next downloaded: its refresh interval after its last successful
//! check, sooner after a failure (`retry_secs`, doubling up to the interval); every wait
//! jittered so that lists do not all download at once.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Config, ListConfig};
use crate::sys::jittered;

use super::load::store_for;
use super::refresh::RefreshReport;
use super::store::{Meta, now_unix};

/// How long the refresher sleeps when no list is scheduled; a reload wakes it sooner.
const IDLE: Duration = Duration::from_secs(3600);

/// Every `url` list's next download, by list name.
#[derive(Default)]
pub(super) struct Schedule {
    slots: HashMap<String, Slot>,
}

/// When a source is next downloaded.
struct Slot {
    url: String,
    interval: Duration,
    due: Instant,
    failures: u32,
}

impl Schedule {
    /// Adds new sources (due when their cached copy is older than their interval; at once with
    /// none) and forgets removed ones. A changed URL is a new source.
    pub(super) fn reconcile(&mut self, config: &Config, now: Instant) {
        let store = store_for(config);
        self.slots.retain(|name, slot| {
            url_lists(config).any(|(l, url)| l.name.get_ref() == name && url == slot.url)
        });
        for (list, url) in url_lists(config) {
            let name = list.name.get_ref();
            let interval = list.refresh_interval(&config.sources);
            if let Some(slot) = self.slots.get_mut(name) {
                slot.interval = interval;
                continue;
            }
            let url = url.to_owned();
            let due = match store.read_meta(name, &url) {
                Some(Meta {
                    fetched_at: Some(_),
                    last_success: Some(checked),
                    ..
                }) => {
                    let age = Duration::from_secs(now_unix().saturating_sub(checked));
                    now + jittered(interval.saturating_sub(age), config.sources.jitter)
                }
                _ => now,
            };
            self.slots.insert(
                name.clone(),
                Slot {
                    url,
                    interval,
                    due,
                    failures: 0,
                },
            );
        }
    }

    /// The sources due at `now`.
    pub(super) fn due(&self, now: Instant) -> Vec<String> {
        self.slots
            .iter()
            .filter(|(_, s)| s.due <= now)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Sets the next download of every source of `report`: its interval after a success, the
    /// retry wait after a failure.
    pub(super) fn record(&mut self, report: &RefreshReport, config: &Config, now: Instant) {
        for source in &report.sources {
            let Some(slot) = self.slots.get_mut(&source.name) else {
                continue;
            };
            let wait = if source.result.is_ok() {
                slot.failures = 0;
                slot.interval
            } else {
                slot.failures = slot.failures.saturating_add(1);
                let retry = Duration::from_secs(config.sources.retry_secs);
                retry_wait(slot.failures, retry, slot.interval)
            };
            slot.due = now + jittered(wait, config.sources.jitter);
        }
    }

    /// When the next source is due.
    pub(super) fn next_due(&self, now: Instant) -> Instant {
        self.slots
            .values()
            .map(|s| s.due)
            .min()
            .unwrap_or(now + IDLE)
    }
}

/// The wait after `failures` (at least 1) failed attempts in a row: `retry`, doubled for each
/// failure after the first, at most `interval`.
fn retry_wait(failures: u32, retry: Duration, interval: Duration) -> Duration {
    retry
        .saturating_mul(1u32 << (failures - 1).min(16))
        .min(interval)
}

/// The lists of `config` that are downloaded, with their URLs.
pub(super) fn url_lists(config: &Config) -> impl Iterator<Item = (&ListConfig, &str)> {
    config.lists.iter().filter_map(|l| Some((l, l.url()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_wait_doubles_up_to_the_interval() {
        let (retry, hour) = (Duration::from_secs(60), Duration::from_secs(3600));
        let waits: Vec<u64> = (1..=8)
            .map(|n| retry_wait(n, retry, hour).as_secs())
            .collect();
        assert_eq!(waits, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
        let day = Duration::from_secs(86_400);
        assert_eq!(retry_wait(u32::MAX, retry, day), day);
        assert_eq!(
            retry_wait(u32::MAX, Duration::from_secs(1), day),
            Duration::from_secs(65_536)
        );
    }
}
