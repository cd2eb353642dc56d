//! Whose fault an error is. Every module's error type maps onto this, and the
//! answer decides the log level, the metric label and the status code.

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
    /// The metric label for this fault.
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
