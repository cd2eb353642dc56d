//! What a DNS request must look like to be answered, and the Extended DNS Error option:
//! the rules both listeners apply (the UDP loop in [`super::udp`], the TCP handler in
//! [`super::server`]), written once so the two doors cannot drift apart.

use hickory_proto::op::{OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};

/// No single-question query is longer: 12 header + 255 name + 4 + OPT with options
/// (cookies, padding). Anything longer is malformed (FORMERR).
pub(crate) const MAX_QUERY_LEN: usize = 1232;

/// The refusal a request earns from its header and length alone, before its body is
/// decoded (so an unsupported opcode gets NOTIMP whatever its body holds).
pub(crate) fn header_refusal(op_code: OpCode, len: usize) -> Option<ResponseCode> {
    if op_code != OpCode::Query {
        Some(ResponseCode::NotImp)
    } else if len > MAX_QUERY_LEN {
        Some(ResponseCode::FormErr)
    } else {
        None
    }
}

/// The refusal a decoded query earns from its sections. Exactly one question and
/// nothing else is what every resolver sends (RFC 9619); EDNS past version 0 is not
/// spoken (RFC 6891: BADVERS).
pub(crate) fn body_refusal(
    questions: usize,
    other_records: bool,
    edns_version: Option<u8>,
) -> Option<ResponseCode> {
    if questions != 1 || other_records {
        Some(ResponseCode::FormErr)
    } else if edns_version.is_some_and(|v| v > 0) {
        Some(ResponseCode::BADVERS)
    } else {
        None
    }
}

/// The Extended DNS Error option (RFC 8914) for `code` and `text`.
pub(crate) fn ede_option(code: u16, text: &str) -> EdnsOption {
    let mut data = code.to_be_bytes().to_vec();
    // Keep the text short enough for a 512-byte answer.
    data.extend(text.bytes().take(200));
    EdnsOption::Unknown(u16::from(EdnsCode::Unknown(15)), data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ResponseCode::{BADVERS, FormErr, NotImp};

    #[test]
    fn the_first_rule_broken_decides_on_both_doors() {
        assert_eq!(
            header_refusal(OpCode::Notify, MAX_QUERY_LEN + 1),
            Some(NotImp)
        );
        assert_eq!(
            header_refusal(OpCode::Query, MAX_QUERY_LEN + 1),
            Some(FormErr)
        );
        assert_eq!(header_refusal(OpCode::Query, MAX_QUERY_LEN), None);
        assert_eq!(body_refusal(2, false, Some(1)), Some(FormErr));
        assert_eq!(body_refusal(0, false, None), Some(FormErr));
        assert_eq!(body_refusal(1, true, None), Some(FormErr));
        assert_eq!(body_refusal(1, false, Some(1)), Some(BADVERS));
        assert_eq!(body_refusal(1, false, Some(0)), None);
        assert_eq!(body_refusal(1, false, None), None);
    }

    #[test]
    fn the_ede_text_is_cut_for_a_small_answer() {
        let EdnsOption::Unknown(code, data) = ede_option(15, &"x".repeat(300)) else {
            panic!("an unknown-code option");
        };
        assert_eq!(code, 15);
        assert_eq!(data[..2], [0, 15]);
        assert_eq!(data.len(), 202);
    }
}
