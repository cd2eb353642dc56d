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

// The policy core sits below every other module and imports none of them: its errors get
// their fault here.

impl HasFault for crate::policy::name::NameError {
    fn fault(&self) -> Fault {
        Fault::Client
    }
}

impl HasFault for crate::policy::rules::RuleError {
    fn fault(&self) -> Fault {
        // Rules come from the operator's config or from list publishers; neither is
        // the querying client. Treated as configuration/upstream input.
        Fault::Upstream
    }
}
