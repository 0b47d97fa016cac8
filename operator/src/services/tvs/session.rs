//! One TVS connection as a pure state machine: bytes in, response frames, notes and a close decision out
//! (docs/wire-formats.md §8). No I/O and no clock: the server feeds it what it reads and the current time.
//!
//! Rules [D, docs/wire-formats.md §8]: the phone speaks first and picks the session id, which each response echoes;
//! requests are answered in order until EOF; a header version other than 1, a protocol id other than 0x57,
//! a body that is truncated or whose elements overrun it, and QUERY or unknown commands close the connection
//! without a response (docs/wire-formats.md §10 N-12).

use std::fmt;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::directory::{CertificateDirectory, InvalidReason, Verdict};
use super::frame::{Command, Element, Frame, FrameError, FrameHeader, HEADER_LEN, VerifyStatus, decode_body};
use crate::core::pki::inspect::lower_hex;

/// Why the server closes the connection. Nothing is sent for any of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The phone closed its side at a frame boundary: the normal end.
    EndOfInput,
    /// The phone closed its side inside a frame.
    Truncated { needed: usize, received: usize },
    /// The header's protocol id is not 0x57.
    BadProtocolId(u8),
    /// The header's version is not 1.
    UnsupportedVersion(u8),
    /// The body's elements are malformed (an element overruns the body, a fixed-size element has another size).
    MalformedBody(FrameError),
    /// QUERY_REQUEST/RESPONSE (semantics unknown), VERIFY_RESPONSE from a phone, or an unknown command.
    UnsupportedCommand(Command),
    /// The response could not be encoded; cannot happen with a directory built by `insert`.
    ResponseNotEncodable(FrameError),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::EndOfInput => write!(f, "the phone closed the connection"),
            CloseReason::Truncated { needed, received } => {
                write!(f, "the phone closed inside a frame: {needed} bytes announced, {received} received (docs/wire-formats.md §8, N-12)")
            }
            CloseReason::BadProtocolId(id) => write!(f, "protocol id 0x{id:02X} is not 0x57; closed (docs/wire-formats.md §8)"),
            CloseReason::UnsupportedVersion(version) => {
                write!(f, "header version {version} is not 1; closed (docs/wire-formats.md §8, N-12)")
            }
            CloseReason::MalformedBody(why) => write!(f, "malformed body, closed: {why}"),
            CloseReason::UnsupportedCommand(command) => {
                write!(f, "command {} is not answered; closed (docs/wire-formats.md §8: QUERY semantics unknown)", command.code())
            }
            CloseReason::ResponseNotEncodable(why) => write!(f, "response not encodable, closed: {why}"),
        }
    }
}

/// What the server should log. Tracing is not a dependency, so the session returns these instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionNote {
    /// A VERIFY_REQUEST was answered.
    Answered { session_id: u32, device_name: Option<String>, certificate_sha256: Option<String>, verdict: Verdict },
    /// DEVICE_NAME does not look like `CP-<4-digit model>-SEP<MAC>`; logged, not rejected (docs/wire-formats.md §8).
    UnexpectedDeviceName { session_id: u32, name: String },
    /// DEVICE_NAME with a lead byte other than 0x01, whose meaning is unknown (docs/wire-formats.md §8).
    UnexpectedDeviceNameLead { session_id: u32, lead: u8 },
    /// A non-zero reserved header byte.
    ReservedByteSet { session_id: u32, value: u8 },
    /// An element tag not defined for VERIFY_REQUEST; skipped.
    UnknownElement { session_id: u32, tag: u8 },
    /// A VERIFY_REQUEST without exactly one CERTIFICATE; answered STATUS 1 [D].
    CertificateCount { session_id: u32, count: usize },
}

/// The result of feeding bytes to a session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionOutput {
    /// Encoded response frames, in request order; each must go out in a single write (docs/wire-formats.md §10 W-16).
    pub responses: Vec<Vec<u8>>,
    pub notes: Vec<SessionNote>,
    /// Set once: the server closes after sending `responses`.
    pub close: Option<CloseReason>,
}

/// The state of one connection: the bytes of an incomplete frame, and whether it is closed.
#[derive(Debug, Default)]
pub struct TvsSession {
    buffer: Vec<u8>,
    closed: bool,
}

impl TvsSession {
    pub fn new() -> TvsSession {
        TvsSession::default()
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Feeds bytes read from the phone; answers every complete request in order. Ignores input once closed.
    pub fn receive(&mut self, bytes: &[u8], directory: &CertificateDirectory, now: OffsetDateTime) -> SessionOutput {
        let mut output = SessionOutput::default();
        if self.closed {
            return output;
        }
        self.buffer.extend_from_slice(bytes);
        let mut consumed = 0;
        loop {
            match self.step(&mut consumed, directory, now, &mut output) {
                Step::Continue => continue,
                Step::NeedMore => break,
                Step::Close(reason) => {
                    self.close(&mut output, reason);
                    break;
                }
            }
        }
        self.buffer.drain(..consumed.min(self.buffer.len()));
        output
    }

    /// The phone closed its side: a clean end at a frame boundary, otherwise a truncated frame.
    pub fn end_of_input(&mut self) -> SessionOutput {
        let mut output = SessionOutput::default();
        if self.closed {
            return output;
        }
        let reason = if self.buffer.is_empty() {
            CloseReason::EndOfInput
        } else {
            let needed = FrameHeader::parse(&self.buffer).map_or(HEADER_LEN, |header| header.frame_len());
            CloseReason::Truncated { needed, received: self.buffer.len() }
        };
        self.close(&mut output, reason);
        output
    }

    fn close(&mut self, output: &mut SessionOutput, reason: CloseReason) {
        self.closed = true;
        self.buffer.clear();
        output.close = Some(reason);
    }

    fn step(&self, consumed: &mut usize, directory: &CertificateDirectory, now: OffsetDateTime, output: &mut SessionOutput) -> Step {
        let pending = &self.buffer[*consumed..];
        if pending.len() < HEADER_LEN {
            return Step::NeedMore;
        }
        let header = match FrameHeader::parse(pending) {
            Ok(header) => header,
            Err(FrameError::BadProtocolId(id)) => return Step::Close(CloseReason::BadProtocolId(id)),
            Err(FrameError::UnsupportedVersion(version)) => return Step::Close(CloseReason::UnsupportedVersion(version)),
            Err(_) => return Step::NeedMore,
        };
        let Some(body) = pending.get(HEADER_LEN..header.frame_len()) else {
            return Step::NeedMore;
        };
        let elements = match decode_body(body) {
            Ok(elements) => elements,
            Err(why) => return Step::Close(CloseReason::MalformedBody(why)),
        };
        *consumed += header.frame_len();
        if header.command != Command::VerifyRequest {
            return Step::Close(CloseReason::UnsupportedCommand(header.command));
        }
        if header.reserved != 0 {
            output.notes.push(SessionNote::ReservedByteSet { session_id: header.session_id, value: header.reserved });
        }
        let request = Frame { command: header.command, session_id: header.session_id, elements };
        let (response, notes) = answer(&request, directory, now);
        output.notes.extend(notes);
        match response.encode() {
            Ok(bytes) => output.responses.push(bytes),
            Err(why) => return Step::Close(CloseReason::ResponseNotEncodable(why)),
        }
        Step::Continue
    }
}

enum Step {
    Continue,
    NeedMore,
    Close(CloseReason),
}

/// The VERIFY_RESPONSE to one VERIFY_REQUEST, with what to log. Known certificate: STATUS 0, ROLES, TTL;
/// anything else: STATUS 1 only (docs/wire-formats.md §8). The session id is echoed.
pub fn answer(request: &Frame, directory: &CertificateDirectory, now: OffsetDateTime) -> (Frame, Vec<SessionNote>) {
    let session_id = request.session_id;
    let mut notes = Vec::new();
    for element in &request.elements {
        match element {
            Element::DeviceName { lead, name } => {
                if *lead != super::frame::DEVICE_NAME_LEAD_BYTE {
                    notes.push(SessionNote::UnexpectedDeviceNameLead { session_id, lead: *lead });
                }
                if !looks_like_phone_device_name(name) {
                    notes.push(SessionNote::UnexpectedDeviceName { session_id, name: name.clone() });
                }
            }
            Element::Certificate(_) => {}
            other => notes.push(SessionNote::UnknownElement { session_id, tag: other.tag() }),
        }
    }
    let certificates: Vec<&[u8]> = request.certificates().collect();
    let (verdict, certificate_sha256) = match certificates.as_slice() {
        [der] => (directory.verify(der, now), Some(lower_hex(&Sha256::digest(der)))),
        _ => {
            notes.push(SessionNote::CertificateCount { session_id, count: certificates.len() });
            (Verdict::Invalid(InvalidReason::Unknown), None)
        }
    };
    let elements = match &verdict {
        Verdict::Valid { roles, ttl_seconds } => {
            vec![Element::Status(VerifyStatus::Valid), Element::Roles(roles.clone()), Element::Ttl(*ttl_seconds)]
        }
        Verdict::Invalid(_) => vec![Element::Status(VerifyStatus::Invalid)],
    };
    notes.push(SessionNote::Answered { session_id, device_name: request.device_name().map(str::to_owned), certificate_sha256, verdict });
    (Frame { command: Command::VerifyResponse, session_id, elements }, notes)
}

/// `CP-<4 digits>-SEP<12 hex digits>`, hex in either case (docs/wire-formats.md §1.3, §8). Checked by hand: four fixed parts.
pub fn looks_like_phone_device_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() == 3 + 4 + 4 + 12
        && bytes.starts_with(b"CP-")
        && bytes[3..7].iter().all(u8::is_ascii_digit)
        && &bytes[7..11] == b"-SEP"
        && bytes[11..].iter().all(u8::is_ascii_hexdigit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory() -> CertificateDirectory {
        CertificateDirectory::new()
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH
    }

    fn request(session_id: u32, certificate: &[u8]) -> Vec<u8> {
        let frame = Frame {
            command: Command::VerifyRequest,
            session_id,
            elements: vec![Element::device_name("CP-8841-SEP001122334455"), Element::Certificate(certificate.to_vec())],
        };
        frame.encode().expect("encodes")
    }

    #[test]
    fn device_name_pattern() {
        assert!(looks_like_phone_device_name("CP-8841-SEP001122334455"));
        assert!(looks_like_phone_device_name("CP-7975-SEPaabbccddeeff"));
        assert!(!looks_like_phone_device_name("SEP001122334455"));
        assert!(!looks_like_phone_device_name("CP-884-SEP001122334455X"));
        assert!(!looks_like_phone_device_name("CP-8841-SEP00112233445G"));
        assert!(!looks_like_phone_device_name("CP-8841-SEP0011223344556"));
    }

    #[test]
    fn requests_split_across_reads_are_answered_in_order() {
        let mut bytes = request(1, b"one");
        bytes.extend(request(2, b"two"));
        let mut session = TvsSession::new();
        let first = session.receive(&bytes[..7], &directory(), now());
        assert!(first.responses.is_empty() && first.close.is_none());
        let rest = session.receive(&bytes[7..], &directory(), now());
        let ids: Vec<u32> = rest.responses.iter().map(|r| Frame::decode(r).expect("decodes").session_id).collect();
        assert_eq!(ids, vec![1, 2]);
        assert_eq!(session.end_of_input().close, Some(CloseReason::EndOfInput));
        assert!(session.is_closed());
    }

    #[test]
    fn a_bad_device_name_is_noted_not_rejected() {
        let frame = Frame {
            command: Command::VerifyRequest,
            session_id: 3,
            elements: vec![Element::DeviceName { lead: 2, name: "SEP001122334455".into() }, Element::Certificate(b"x".to_vec())],
        };
        let output = TvsSession::new().receive(&frame.encode().expect("encodes"), &directory(), now());
        assert_eq!(output.responses.len(), 1);
        assert!(output.notes.contains(&SessionNote::UnexpectedDeviceName { session_id: 3, name: "SEP001122334455".into() }));
        assert!(output.notes.contains(&SessionNote::UnexpectedDeviceNameLead { session_id: 3, lead: 2 }));
    }

    #[test]
    fn a_request_without_certificate_gets_status_1() {
        let frame = Frame { command: Command::VerifyRequest, session_id: 4, elements: vec![] };
        let output = TvsSession::new().receive(&frame.encode().expect("encodes"), &directory(), now());
        let response = Frame::decode(&output.responses[0]).expect("decodes");
        assert_eq!(response.elements, vec![Element::Status(VerifyStatus::Invalid)]);
        assert!(output.notes.contains(&SessionNote::CertificateCount { session_id: 4, count: 0 }));
    }

    #[test]
    fn query_commands_close_without_response() {
        for command in [Command::QueryRequest, Command::QueryResponse, Command::VerifyResponse, Command::Unknown(99)] {
            let frame = Frame { command, session_id: 5, elements: vec![] };
            let output = TvsSession::new().receive(&frame.encode().expect("encodes"), &directory(), now());
            assert!(output.responses.is_empty());
            assert_eq!(output.close, Some(CloseReason::UnsupportedCommand(command)));
        }
    }

    #[test]
    fn a_bad_frame_after_a_good_one_closes_after_the_first_answer() {
        let mut bytes = request(1, b"one");
        bytes.extend([0x57, 0x02, 0x01, 0x00, 0, 0, 0, 2, 0, 0]);
        bytes.extend(request(3, b"three"));
        let mut session = TvsSession::new();
        let output = session.receive(&bytes, &directory(), now());
        assert_eq!(output.responses.len(), 1);
        assert_eq!(output.close, Some(CloseReason::UnsupportedVersion(2)));
        assert!(session.receive(&request(4, b"four"), &directory(), now()).responses.is_empty());
    }

    #[test]
    fn eof_inside_a_frame_is_truncation() {
        let bytes = request(1, b"certificate");
        let mut session = TvsSession::new();
        assert!(session.receive(&bytes[..bytes.len() - 1], &directory(), now()).responses.is_empty());
        assert_eq!(session.end_of_input().close, Some(CloseReason::Truncated { needed: bytes.len(), received: bytes.len() - 1 }));
        let mut session = TvsSession::new();
        session.receive(&bytes[..4], &directory(), now());
        assert_eq!(session.end_of_input().close, Some(CloseReason::Truncated { needed: HEADER_LEN, received: 4 }));
    }
}
