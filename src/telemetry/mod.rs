//! What the gate tells about itself: the Prometheus counters ([`metrics`]) and the
//! tracing setup (JSON lines for containers, readable text for terminals), and the
//! decision log's own line writer ([`lines`]) for JSON lines.

pub mod lines;
pub mod metrics;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// A process-wide id for log correlation: upstream answers and proxy connections.
/// Starts at the process start time in microseconds, so ids from one run do not repeat
/// those of the run before it in a log store.
pub fn next_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: std::sync::OnceLock<AtomicU64> = std::sync::OnceLock::new();
    NEXT.get_or_init(|| {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        AtomicU64::new(start)
    })
    .fetch_add(1, Ordering::Relaxed)
}

static DECISION_LINES: std::sync::OnceLock<lines::LineWriter> = std::sync::OnceLock::new();

/// The writer of DNS decision lines, when the log is JSON ([`init`] started it).
/// Without it (text logs, unit tests) decision lines go through tracing.
#[inline]
pub fn decision_lines() -> Option<&'static lines::LineWriter> {
    DECISION_LINES.get()
}

/// Writes out the decision lines still queued, waiting at most `timeout` for stderr to
/// take them (a stuck reader must not hold up the exit). Call once, at shutdown.
pub fn flush_logs(timeout: std::time::Duration) {
    if let Some(writer) = DECISION_LINES.get()
        && !writer.close(timeout)
    {
        tracing::warn!(
            timeout_ms = timeout.as_millis() as u64,
            "decision log: stderr did not take the queued lines in time; they are lost"
        );
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides the configured level.
/// hickory's own per-request logging is turned down: the gate logs one decision
/// line per query itself. With JSON logs, also starts the decision line writer (its
/// lines keep tracing's shape and obey the same filter: see `dns::decision`).
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{level},hickory_server=warn,hickory_net=warn,hickory_proto=warn,rustls=warn"
        ))
    });
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.try_init()
    };
    if json && DECISION_LINES.get().is_none() {
        match lines::LineWriter::start(lines::Stderr::new(), lines::QUEUE_BYTES) {
            Ok(writer) => {
                let _ = DECISION_LINES.set(writer);
            }
            // Decision lines then go through tracing, as with text logs.
            Err(error) => tracing::warn!(%error, "no decision log writer thread"),
        }
    }
}
