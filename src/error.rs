//! Whose fault an error is. Every module's error type maps onto this ([`HasFault`]), and
//! the answer decides, here and only here, the log level ([`Fault::level`],
//! [`fault_event!`](crate::fault_event)) and the `fault` label of logs and of
//! `portcullis_errors_total`. The status a client sees (HTTP code, DNS rcode) is each
//! error's own and finer than its fault: `proxy::ProxyError::status` gives it, and the
//! proxy's fault follows from it (4xx client, 502/504 upstream, 500/503 internal).

/// The side responsible for a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The client sent something malformed or forbidden: logged at debug/info, 4xx / FORMERR / REFUSED.
    Client,
    /// An upstream (DNS resolver, list server) failed: logged at warn, 502/504 / SERVFAIL.
    Upstream,
    /// Our own bug or resource exhaustion: logged at error, 500 / SERVFAIL.
    Internal,
}

impl Fault {
    /// A client's mistake is routine (info), an upstream's worth a look (warn), ours a
    /// bug or exhaustion (error).
    pub fn level(self) -> tracing::Level {
        match self {
            Fault::Client => tracing::Level::INFO,
            Fault::Upstream => tracing::Level::WARN,
            Fault::Internal => tracing::Level::ERROR,
        }
    }

    /// The metric and log label for this fault.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Upstream => "upstream",
            Fault::Internal => "internal",
        }
    }
}

/// Implemented by every module's error type.
pub trait HasFault {
    fn fault(&self) -> Fault;
}

/// A tracing event at the level of `fault` (tracing's macros need their level fixed where
/// they are written, so this matches over the three).
#[macro_export]
macro_rules! fault_event {
    ($fault:expr, $($arg:tt)+) => {
        match $crate::error::Fault::level($fault) {
            tracing::Level::ERROR => tracing::error!($($arg)+),
            tracing::Level::WARN => tracing::warn!($($arg)+),
            _ => tracing::info!($($arg)+),
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fault_decides_the_level_and_the_label() {
        assert_eq!(Fault::Client.level(), tracing::Level::INFO);
        assert_eq!(Fault::Upstream.level(), tracing::Level::WARN);
        assert_eq!(Fault::Internal.level(), tracing::Level::ERROR);
        let labels: Vec<_> = [Fault::Client, Fault::Upstream, Fault::Internal]
            .map(Fault::as_str)
            .into();
        assert_eq!(labels, ["client", "upstream", "internal"]);
    }
}
