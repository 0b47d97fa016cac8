//! The TVS frame (docs/wire-formats.md §8): a 10-byte header, then a body of TLV elements (§2.1).
//!
//! ```text
//! | 0x57 | version u8 = 1 | cmd u8 | reserved u8 = 0 | session id u32 BE | len u16 BE | TLV body |
//! ```
//!
//! Written by hand: the format is Cisco's own and no crate implements it. Decoding never panics on any input.

use std::fmt;

use crate::core::trust::codes::Role;

/// First byte of every TVS frame (docs/wire-formats.md §8).
pub const PROTOCOL_ID: u8 = 0x57;
/// The only header version this implementation speaks; any other closes the connection (docs/wire-formats.md §8).
pub const PROTOCOL_VERSION: u8 = 0x01;
/// Bytes before the body.
pub const HEADER_LEN: usize = 10;
/// The largest body a u16 length describes.
pub const MAX_BODY_LEN: usize = u16::MAX as usize;
/// Tag and length in front of every element value (docs/wire-formats.md §2.1).
pub const ELEMENT_OVERHEAD: usize = 3;
/// The byte in front of the name in DEVICE_NAME; its meaning is unknown (docs/wire-formats.md §8).
pub const DEVICE_NAME_LEAD_BYTE: u8 = 0x01;
/// TVS listens on TCP 2445 (docs/wire-formats.md §8).
pub const DEFAULT_PORT: u16 = 2445;

/// Element tags of TVS bodies (docs/wire-formats.md §8).
pub mod tag {
    pub const DEVICE_NAME: u8 = 1;
    pub const CERTIFICATE: u8 = 2;
    pub const STATUS: u8 = 7;
    pub const ROLES: u8 = 8;
    pub const TTL: u8 = 9;
}

/// The header command byte (docs/wire-formats.md §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    VerifyRequest,
    VerifyResponse,
    /// Semantics unknown; the server closes on receipt.
    QueryRequest,
    /// Semantics unknown; the server closes on receipt.
    QueryResponse,
    Unknown(u8),
}

impl Command {
    pub fn code(self) -> u8 {
        match self {
            Command::VerifyRequest => 1,
            Command::VerifyResponse => 2,
            Command::QueryRequest => 3,
            Command::QueryResponse => 4,
            Command::Unknown(code) => code,
        }
    }

    pub fn from_code(code: u8) -> Command {
        match code {
            1 => Command::VerifyRequest,
            2 => Command::VerifyResponse,
            3 => Command::QueryRequest,
            4 => Command::QueryResponse,
            other => Command::Unknown(other),
        }
    }
}

/// The STATUS element's value (docs/wire-formats.md §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VerifyStatus {
    Valid,
    Invalid,
    Unknown(u8),
}

impl VerifyStatus {
    pub fn code(self) -> u8 {
        match self {
            VerifyStatus::Valid => 0,
            VerifyStatus::Invalid => 1,
            VerifyStatus::Unknown(code) => code,
        }
    }

    pub fn from_code(code: u8) -> VerifyStatus {
        match code {
            0 => VerifyStatus::Valid,
            1 => VerifyStatus::Invalid,
            other => VerifyStatus::Unknown(other),
        }
    }
}

/// One element of a TVS body (docs/wire-formats.md §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Element {
    /// `lead ‖ ASCII name`, no NUL. `lead` is [`DEVICE_NAME_LEAD_BYTE`] in every known frame. A name that is not
    /// UTF-8 is decoded lossily: it is only logged, never a reason to refuse a request.
    DeviceName {
        lead: u8,
        name: String,
    },
    /// The DER certificate the phone asks about.
    Certificate(Vec<u8>),
    Status(VerifyStatus),
    /// One u8 per role code (docs/wire-formats.md §1.7).
    Roles(Vec<Role>),
    /// Seconds the phone may cache the verdict.
    Ttl(u32),
    /// A tag this decoder does not know, kept so it can be reported.
    Unknown {
        tag: u8,
        value: Vec<u8>,
    },
}

impl Element {
    pub fn device_name(name: &str) -> Element {
        Element::DeviceName { lead: DEVICE_NAME_LEAD_BYTE, name: name.to_owned() }
    }

    pub fn tag(&self) -> u8 {
        match self {
            Element::DeviceName { .. } => tag::DEVICE_NAME,
            Element::Certificate(_) => tag::CERTIFICATE,
            Element::Status(_) => tag::STATUS,
            Element::Roles(_) => tag::ROLES,
            Element::Ttl(_) => tag::TTL,
            Element::Unknown { tag, .. } => *tag,
        }
    }

    fn value(&self) -> Result<Vec<u8>, FrameError> {
        Ok(match self {
            Element::DeviceName { lead, name } => {
                let mut value = Vec::with_capacity(1 + name.len());
                value.push(*lead);
                value.extend_from_slice(name.as_bytes());
                value
            }
            Element::Certificate(der) => der.clone(),
            Element::Status(status) => vec![status.code()],
            Element::Roles(roles) => roles
                .iter()
                .map(|role| u8::try_from(role.code()).map_err(|_| FrameError::RoleNotEncodable(role.code())))
                .collect::<Result<Vec<u8>, FrameError>>()?,
            Element::Ttl(seconds) => seconds.to_be_bytes().to_vec(),
            Element::Unknown { value, .. } => value.clone(),
        })
    }

    fn decode(tag: u8, value: &[u8]) -> Result<Element, FrameError> {
        let fixed = |expected: usize| {
            if value.len() == expected { Ok(()) } else { Err(FrameError::BadElementLength { tag, expected, found: value.len() }) }
        };
        Ok(match tag {
            tag::DEVICE_NAME => match value.split_first() {
                Some((lead, name)) => Element::DeviceName { lead: *lead, name: String::from_utf8_lossy(name).into_owned() },
                None => return Err(FrameError::EmptyDeviceName),
            },
            tag::CERTIFICATE => Element::Certificate(value.to_vec()),
            tag::STATUS => {
                fixed(1)?;
                Element::Status(VerifyStatus::from_code(value[0]))
            }
            tag::ROLES => Element::Roles(value.iter().map(|&code| Role::from_code(u16::from(code))).collect()),
            tag::TTL => {
                fixed(4)?;
                Element::Ttl(u32::from_be_bytes([value[0], value[1], value[2], value[3]]))
            }
            other => Element::Unknown { tag: other, value: value.to_vec() },
        })
    }
}

/// The fixed part of a frame, parsed before the body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub command: Command,
    /// Should be 0; other values are accepted and reported.
    pub reserved: u8,
    pub session_id: u32,
    pub body_len: u16,
}

impl FrameHeader {
    /// Parses the first [`HEADER_LEN`] bytes: a protocol id other than 0x57 or a version other than 1 fails.
    pub fn parse(bytes: &[u8]) -> Result<FrameHeader, FrameError> {
        let header: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|head| head.try_into().ok())
            .ok_or(FrameError::Truncated { needed: HEADER_LEN, available: bytes.len() })?;
        if header[0] != PROTOCOL_ID {
            return Err(FrameError::BadProtocolId(header[0]));
        }
        if header[1] != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion(header[1]));
        }
        Ok(FrameHeader {
            command: Command::from_code(header[2]),
            reserved: header[3],
            session_id: u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
            body_len: u16::from_be_bytes([header[8], header[9]]),
        })
    }

    /// Header plus body.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + usize::from(self.body_len)
    }
}

/// A whole TVS message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub command: Command,
    pub session_id: u32,
    /// In the order they are encoded or were received.
    pub elements: Vec<Element>,
}

impl Frame {
    /// Header and body as one buffer, so a server can send it in a single write (docs/wire-formats.md §10 W-16).
    /// Fails rather than truncating an element or a body longer than 65 535 bytes (docs/wire-formats.md §2.1).
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut body = Vec::new();
        for element in &self.elements {
            let tag = element.tag();
            let value = element.value()?;
            let length = u16::try_from(value.len()).map_err(|_| FrameError::ValueTooLong { tag, length: value.len() })?;
            body.push(tag);
            body.extend_from_slice(&length.to_be_bytes());
            body.extend_from_slice(&value);
        }
        let body_len = u16::try_from(body.len()).map_err(|_| FrameError::BodyTooLong(body.len()))?;
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(&[PROTOCOL_ID, PROTOCOL_VERSION, self.command.code(), 0]);
        out.extend_from_slice(&self.session_id.to_be_bytes());
        out.extend_from_slice(&body_len.to_be_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decodes the frame at the start of `bytes`; returns it and the number of bytes it used.
    pub fn decode_prefix(bytes: &[u8]) -> Result<(Frame, usize), FrameError> {
        let header = FrameHeader::parse(bytes)?;
        let frame_len = header.frame_len();
        let body = bytes.get(HEADER_LEN..frame_len).ok_or(FrameError::Truncated { needed: frame_len, available: bytes.len() })?;
        let elements = decode_body(body)?;
        Ok((Frame { command: header.command, session_id: header.session_id, elements }, frame_len))
    }

    /// Decodes a buffer that holds exactly one frame.
    pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
        let (frame, used) = Frame::decode_prefix(bytes)?;
        match bytes.len() - used {
            0 => Ok(frame),
            extra => Err(FrameError::TrailingBytes(extra)),
        }
    }

    /// The first element with this tag.
    pub fn element(&self, tag: u8) -> Option<&Element> {
        self.elements.iter().find(|element| element.tag() == tag)
    }

    /// The CERTIFICATE values, in order.
    pub fn certificates(&self) -> impl Iterator<Item = &[u8]> {
        self.elements.iter().filter_map(|element| match element {
            Element::Certificate(der) => Some(der.as_slice()),
            _ => None,
        })
    }

    pub fn device_name(&self) -> Option<&str> {
        self.elements.iter().find_map(|element| match element {
            Element::DeviceName { name, .. } => Some(name.as_str()),
            _ => None,
        })
    }

    pub fn status(&self) -> Option<VerifyStatus> {
        self.elements.iter().find_map(|element| match element {
            Element::Status(status) => Some(*status),
            _ => None,
        })
    }
}

/// Splits a body into elements; an element running past the end of the body is an error (docs/wire-formats.md §2.4).
pub fn decode_body(body: &[u8]) -> Result<Vec<Element>, FrameError> {
    // The element layout is the trust files' (docs/wire-formats.md §2.1), so their reader serves here too.
    let mut elements = Vec::new();
    let mut offset = 0;
    while let Some(&tag) = body.get(offset) {
        let element =
            crate::core::trust::tlv::read_element(body, offset, body.len()).map_err(|_| FrameError::ElementOverrun { tag, offset })?;
        elements.push(Element::decode(element.tag, element.value)?);
        offset = element.end();
    }
    Ok(elements)
}

/// Why a TVS frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the header, or than its length field, announces.
    Truncated { needed: usize, available: usize },
    /// The first byte is not 0x57.
    BadProtocolId(u8),
    /// The version byte is not 1.
    UnsupportedVersion(u8),
    /// An element's tag, length or value runs past the end of the body.
    ElementOverrun { tag: u8, offset: usize },
    /// STATUS or TTL with the wrong value size.
    BadElementLength { tag: u8, expected: usize, found: usize },
    /// DEVICE_NAME without even its lead byte.
    EmptyDeviceName,
    /// An element value longer than a u16 length describes; encoders fail rather than truncate.
    ValueTooLong { tag: u8, length: usize },
    /// A body longer than a u16 length describes.
    BodyTooLong(usize),
    /// A role whose code does not fit the one-byte ROLES encoding.
    RoleNotEncodable(u16),
    /// Bytes after the one frame a buffer should hold.
    TrailingBytes(usize),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Truncated { needed, available } => {
                write!(f, "TVS frame truncated: {needed} bytes announced, {available} present (docs/wire-formats.md §8)")
            }
            FrameError::BadProtocolId(id) => write!(f, "TVS frame protocol id is 0x{id:02X}, not 0x57 (docs/wire-formats.md §8)"),
            FrameError::UnsupportedVersion(version) => {
                write!(f, "TVS header version is {version}, only 1 is spoken (docs/wire-formats.md §8)")
            }
            FrameError::ElementOverrun { tag, offset } => {
                write!(f, "TVS element tag {tag} at body offset {offset} runs past the end of the body (docs/wire-formats.md §2.1, §8)")
            }
            FrameError::BadElementLength { tag, expected, found } => {
                write!(f, "TVS element tag {tag} has a {found}-byte value, expected {expected} (docs/wire-formats.md §8)")
            }
            FrameError::EmptyDeviceName => write!(f, "TVS DEVICE_NAME is empty, without its lead byte (docs/wire-formats.md §8)"),
            FrameError::ValueTooLong { tag, length } => {
                write!(f, "TVS element tag {tag} value of {length} bytes exceeds 65 535 (docs/wire-formats.md §2.1)")
            }
            FrameError::BodyTooLong(length) => write!(f, "TVS body of {length} bytes exceeds 65 535 (docs/wire-formats.md §8)"),
            FrameError::RoleNotEncodable(code) => {
                write!(f, "role code {code} does not fit the one-byte TVS ROLES element (docs/wire-formats.md §1.7, §8)")
            }
            FrameError::TrailingBytes(extra) => write!(f, "{extra} bytes follow the TVS frame (docs/wire-formats.md §8)"),
        }
    }
}

impl std::error::Error for FrameError {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_checks_protocol_id_then_version() {
        let mut header = [0x57, 1, 1, 0, 0, 0, 0, 7, 0, 0];
        assert_eq!(FrameHeader::parse(&header).map(|h| h.session_id), Ok(7));
        header[1] = 2;
        assert_eq!(FrameHeader::parse(&header), Err(FrameError::UnsupportedVersion(2)));
        header[0] = 0x55;
        assert_eq!(FrameHeader::parse(&header), Err(FrameError::BadProtocolId(0x55)));
        assert_eq!(FrameHeader::parse(&header[..9]), Err(FrameError::Truncated { needed: 10, available: 9 }));
    }

    #[test]
    fn element_overrunning_the_body_is_refused() {
        // STATUS announces 2 bytes, the body holds 1.
        assert_eq!(decode_body(&[7, 0, 2, 0]), Err(FrameError::ElementOverrun { tag: 7, offset: 0 }));
        // A lone tag byte.
        assert_eq!(decode_body(&[7]), Err(FrameError::ElementOverrun { tag: 7, offset: 0 }));
        assert_eq!(decode_body(&[9, 0, 3, 0, 0, 1]), Err(FrameError::BadElementLength { tag: 9, expected: 4, found: 3 }));
        assert_eq!(decode_body(&[1, 0, 0]), Err(FrameError::EmptyDeviceName));
    }

    #[test]
    fn unknown_tags_and_roles_are_kept() {
        let elements = decode_body(&[0x0D, 0, 1, 0xAA, 8, 0, 2, 5, 21]).expect("decodes");
        assert_eq!(elements[0], Element::Unknown { tag: 0x0D, value: vec![0xAA] });
        assert_eq!(elements[1], Element::Roles(vec![Role::Unknown(5), Role::Tvs]));
    }

    #[test]
    fn encoders_fail_rather_than_truncate() {
        let frame = Frame { command: Command::VerifyRequest, session_id: 1, elements: vec![Element::Certificate(vec![0; 65_536])] };
        assert_eq!(frame.encode(), Err(FrameError::ValueTooLong { tag: 2, length: 65_536 }));
        let frame = Frame { command: Command::VerifyResponse, session_id: 1, elements: vec![Element::Roles(vec![Role::Unknown(256)])] };
        assert_eq!(frame.encode(), Err(FrameError::RoleNotEncodable(256)));
        let two_halves = vec![Element::Certificate(vec![0; 40_000]), Element::Certificate(vec![0; 40_000])];
        let frame = Frame { command: Command::VerifyRequest, session_id: 1, elements: two_halves };
        assert_eq!(frame.encode(), Err(FrameError::BodyTooLong(80_006)));
    }

    fn element_strategy() -> impl Strategy<Value = Element> {
        prop_oneof![
            ("[ -~]{0,40}", any::<u8>()).prop_map(|(name, lead)| Element::DeviceName { lead, name }),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Element::Certificate),
            any::<u8>().prop_map(|code| Element::Status(VerifyStatus::from_code(code))),
            proptest::collection::vec(any::<u8>(), 0..8)
                .prop_map(|codes| Element::Roles(codes.into_iter().map(|c| Role::from_code(u16::from(c))).collect())),
            any::<u32>().prop_map(Element::Ttl),
            (10u8..=255, proptest::collection::vec(any::<u8>(), 0..20)).prop_map(|(tag, value)| Element::Unknown { tag, value }),
        ]
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Frame::decode(&bytes);
            let _ = decode_body(&bytes);
        }

        #[test]
        fn decoding_any_body_behind_a_valid_header_never_panics(
            body in proptest::collection::vec(any::<u8>(), 0..200), announced in any::<u16>(), cmd in any::<u8>()
        ) {
            let mut bytes = vec![0x57, 1, cmd, 0, 0, 0, 0, 1];
            bytes.extend_from_slice(&announced.to_be_bytes());
            bytes.extend_from_slice(&body);
            let _ = Frame::decode_prefix(&bytes);
        }

        #[test]
        fn frames_round_trip(
            cmd in any::<u8>(), session_id in any::<u32>(), elements in proptest::collection::vec(element_strategy(), 0..6)
        ) {
            // Unknown tags must not collide with known ones for the round trip to hold.
            let elements: Vec<Element> = elements
                .into_iter()
                .filter(|e| !matches!(e, Element::Unknown { tag, .. } if [1, 2, 7, 8, 9].contains(tag)))
                .collect();
            let frame = Frame { command: Command::from_code(cmd), session_id, elements };
            let bytes = frame.encode().expect("small frames encode");
            prop_assert_eq!(Frame::decode(&bytes), Ok(frame));
        }
    }
}
