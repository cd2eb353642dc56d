//! The label values and label sets of the gate's metrics. Hot-path labels are small
//! enums and fixed tables, so their children can be pre-created and indexed.

use hickory_proto::rr::RecordType;
use prometheus_client::encoding::EncodeLabelSet;

/// What happened to a query: the `outcome` label of `portcullis_dns_queries_total` and
/// of the decision log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A deny rule matched the name or a CNAME target, or an answer address was on an IP list.
    Blocked,
    /// Answered from upstream (fresh).
    Forwarded,
    /// Answered from the cache.
    Cached,
    /// Answered from the cache past its TTL because no upstream answered.
    Stale,
    /// Answered locally: special-use names.
    Local,
    /// Refused: malformed name, rebinding answer, unsupported query.
    Refused,
    /// SERVFAIL: no upstream answered, or overload.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Blocked => "blocked",
            Outcome::Forwarded => "forwarded",
            Outcome::Cached => "cached",
            Outcome::Stale => "stale",
            Outcome::Local => "local",
            Outcome::Refused => "refused",
            Outcome::Error => "error",
        }
    }
}

/// Query types with their own label value; every other type counts as `other`.
pub const QTYPES: [&str; 12] = [
    "A", "AAAA", "CNAME", "MX", "TXT", "HTTPS", "SVCB", "PTR", "SRV", "NS", "SOA", "other",
];

/// Every DNS outcome, in `Outcome as usize` order.
pub(super) const OUTCOMES: [Outcome; 7] = [
    Outcome::Blocked,
    Outcome::Forwarded,
    Outcome::Cached,
    Outcome::Stale,
    Outcome::Local,
    Outcome::Refused,
    Outcome::Error,
];

/// The index of `qtype` in [`QTYPES`].
pub(super) fn qtype_index(qtype: RecordType) -> usize {
    match qtype {
        RecordType::A => 0,
        RecordType::AAAA => 1,
        RecordType::CNAME => 2,
        RecordType::MX => 3,
        RecordType::TXT => 4,
        RecordType::HTTPS => 5,
        RecordType::SVCB => 6,
        RecordType::PTR => 7,
        RecordType::SRV => 8,
        RecordType::NS => 9,
        RecordType::SOA => 10,
        _ => 11,
    }
}

/// The index of the pre-created `dns_queries_total` child of `qtype` and `outcome`.
#[inline]
pub(super) fn query_index(qtype: RecordType, outcome: Outcome) -> usize {
    qtype_index(qtype) * OUTCOMES.len() + outcome as usize
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct QueryLabels {
    pub qtype: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ListLabel {
    pub list: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct GroupLabel {
    pub group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct GroupReasonLabels {
    pub group: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct GuardTripLabels {
    pub group: String,
    pub action: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct UpstreamLabel {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct DecisionLabels {
    pub door: &'static str,
    pub decision: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct DirectionLabel {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct VersionLabel {
    pub version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct FaultLabels {
    pub source: &'static str,
    pub fault: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ResultLabel {
    pub result: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_order_matches_the_index() {
        for (i, outcome) in OUTCOMES.iter().enumerate() {
            assert_eq!(*outcome as usize, i);
        }
    }
}
