//! The standard `process_*` families, read from `/proc` at scrape time.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::sys;

/// The standard `process_*` metrics of Prometheus client libraries, read from `/proc` at
/// scrape time (Linux; elsewhere they stay 0).
pub(super) struct ProcessMetrics {
    cpu_seconds: Counter<f64, AtomicU64>,
    resident_bytes: Gauge,
    virtual_bytes: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time: Gauge,
}

impl ProcessMetrics {
    pub(super) fn register(root: &mut Registry) -> ProcessMetrics {
        let r = root.sub_registry_with_prefix("process");
        let m = ProcessMetrics {
            cpu_seconds: Counter::default(),
            resident_bytes: Gauge::default(),
            virtual_bytes: Gauge::default(),
            open_fds: Gauge::default(),
            max_fds: Gauge::default(),
            start_time: Gauge::default(),
        };
        r.register_with_unit(
            "cpu",
            "Total user and system CPU time spent in seconds",
            Unit::Seconds,
            m.cpu_seconds.clone(),
        );
        r.register_with_unit(
            "resident_memory",
            "Resident memory size in bytes",
            Unit::Bytes,
            m.resident_bytes.clone(),
        );
        r.register_with_unit(
            "virtual_memory",
            "Virtual memory size in bytes",
            Unit::Bytes,
            m.virtual_bytes.clone(),
        );
        r.register(
            "open_fds",
            "Number of open file descriptors",
            m.open_fds.clone(),
        );
        r.register(
            "max_fds",
            "Maximum number of open file descriptors",
            m.max_fds.clone(),
        );
        r.register_with_unit(
            "start_time",
            "Start time of the process since unix epoch in seconds",
            Unit::Seconds,
            m.start_time.clone(),
        );
        m
    }

    pub(super) fn refresh(&self) {
        // SAFETY: sysconf has no preconditions.
        let (tick, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
            // Fields after the command name, which may hold spaces: state is field 3.
            && let Some((_, rest)) = stat.rsplit_once(')')
        {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| {
                f.get(i - 3)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            if tick > 0 {
                let cpu = (num(14) + num(15)) as f64 / tick as f64;
                let seen = self.cpu_seconds.get();
                if cpu > seen {
                    self.cpu_seconds.inc_by(cpu - seen);
                }
                if let Some(boot) = boot_time() {
                    self.start_time.set(boot + (num(22) / tick as u64) as i64);
                }
            }
            self.virtual_bytes.set(num(23) as i64);
            self.resident_bytes.set(num(24) as i64 * page.max(0));
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(dir.count() as i64);
        }
        if let Some(limit) = sys::open_file_limit() {
            self.max_fds.set(limit.min(i64::MAX as u64) as i64);
        }
    }
}

/// Boot time (Unix seconds) from `/proc/stat`.
fn boot_time() -> Option<i64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}
