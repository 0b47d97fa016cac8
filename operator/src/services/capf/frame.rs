//! CAPF frames: the 8-byte header of docs/wire-formats.md §7.2, the commands of §7.3 and the TLV elements of §7.4.
//!
//! Written by hand: the protocol is Cisco's own and no crate implements it. The element layer reuses the file TLV
//! codec of `trust::tlv` (same `u8 tag | u16 length | value`, docs/wire-formats.md §2.1); that codec gives `0x0D` no special
//! meaning outside file headers, which is what CAPF bodies need (§2.2).

use crate::core::trust::error::TrustError;
use crate::core::trust::tlv;

/// Protocol id, the first byte of every frame (docs/wire-formats.md §7.2).
pub const PROTOCOL_ID: u8 = 0x55;
/// Protocol id, command, session id and body length (docs/wire-formats.md §7.2).
pub const HEADER_LEN: usize = 8;
/// The largest body a u16 length describes.
pub const MAX_BODY_LEN: usize = 65_535;
/// The VERSION the server sends (docs/wire-formats.md §7.4).
pub const SERVER_VERSION: u8 = 3;
/// Hash code of SHA-512 in SHA2_SIGNED_DATA and SUDI_DATA, the only one accepted there (docs/wire-formats.md §1.6, §7.7).
pub const HASH_CODE_SHA512: u8 = 3;
/// Hash code of SHA-1 (docs/wire-formats.md §1.6), used inside SUDI_DATA (§7.7).
pub const HASH_CODE_SHA1: u8 = 1;
/// Length of the prefix in front of the DER in a CERTIFICATE element (docs/wire-formats.md §7.4).
pub const CERTIFICATE_PREFIX_LEN: usize = 5;

/// Element tags (docs/wire-formats.md §7.4).
pub mod tag {
    pub const REASON: u8 = 1;
    pub const REASON_INFO: u8 = 2;
    pub const CERTIFICATE_TYPE: u8 = 3;
    pub const CERTIFICATE: u8 = 4;
    pub const CERTIFICATE_ID: u8 = 5;
    pub const SIGNED_DATA: u8 = 6;
    pub const VERSION: u8 = 7;
    pub const AUTH_TYPE: u8 = 8;
    pub const PUBLIC_KEY: u8 = 9;
    pub const KEY_SIZE: u8 = 10;
    pub const PASSWORD: u8 = 11;
    pub const RETRY_DELAY: u8 = 12;
    pub const DEVICE_NAME: u8 = 13;
    pub const SUDI_DATA: u8 = 16;
    pub const KEY_TYPE: u8 = 17;
    pub const CURVE: u8 = 18;
    pub const DIGEST_TYPE: u8 = 19;
    pub const SHA2_SIGNED_DATA: u8 = 20;
}

/// Why bytes are not a CAPF frame, or a frame cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the header or the declared body length need.
    Truncated { needed: usize, found: usize },
    /// More bytes than the header's length declares.
    TrailingBytes { declared: usize, found: usize },
    /// The first byte is not 0x55.
    BadProtocolId(u8),
    /// The frame carries another session's id.
    SessionMismatch { expected: u32, found: u32 },
    /// An element runs past the end of the body.
    ElementTruncated { offset: usize },
    /// A tag occurs twice in one body.
    DuplicateElement(u8),
    /// A fixed-size element has the wrong length.
    BadElementLength { tag: u8, expected: usize, found: usize },
    /// A NUL-terminated string lacks its NUL or is not UTF-8.
    BadString(u8),
    /// CERTIFICATE is shorter than its 5-byte prefix.
    ShortCertificate(usize),
    /// SHA2_SIGNED_DATA or SUDI_DATA is not `code ‖ u16 len ‖ bytes` blocks that fill the value.
    BadSignatureBlock { tag: u8 },
    /// An element value or the body is longer than a u16 length allows.
    TooLong { what: &'static str, length: usize },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Truncated { needed, found } => {
                write!(f, "truncated CAPF frame: {needed} bytes needed, {found} present (docs/wire-formats.md §7.2)")
            }
            FrameError::TrailingBytes { declared, found } => {
                write!(f, "CAPF frame has {found} body bytes but its header declares {declared} (docs/wire-formats.md §7.2)")
            }
            FrameError::BadProtocolId(id) => write!(f, "CAPF protocol id is 0x{id:02X}, expected 0x55 (docs/wire-formats.md §7.2)"),
            FrameError::SessionMismatch { expected, found } => {
                write!(f, "CAPF session id 0x{found:08X} differs from this session's 0x{expected:08X} (docs/wire-formats.md §7.2)")
            }
            FrameError::ElementTruncated { offset } => {
                write!(f, "CAPF element at body offset {offset} runs past the end of the body (docs/wire-formats.md §2.1, §7.4)")
            }
            FrameError::DuplicateElement(tag) => write!(f, "CAPF element tag {tag} occurs twice in one frame (docs/wire-formats.md §7.4)"),
            FrameError::BadElementLength { tag, expected, found } => {
                write!(f, "CAPF element tag {tag} has {found} bytes, expected {expected} (docs/wire-formats.md §7.4)")
            }
            FrameError::BadString(tag) => {
                write!(f, "CAPF element tag {tag} is not NUL-terminated UTF-8 text (docs/wire-formats.md §1.2, §7.4)")
            }
            FrameError::ShortCertificate(length) => {
                write!(f, "CAPF CERTIFICATE has {length} bytes, fewer than its 5-byte prefix (docs/wire-formats.md §7.4)")
            }
            FrameError::BadSignatureBlock { tag } => {
                write!(
                    f,
                    "CAPF element tag {tag} is not a sequence of `code ‖ u16 length ‖ bytes` blocks (docs/wire-formats.md §7.4, §7.7)"
                )
            }
            FrameError::TooLong { what, length } => write!(f, "CAPF {what} of {length} bytes exceeds 65535 (docs/wire-formats.md §2.1)"),
        }
    }
}

impl std::error::Error for FrameError {}

/// A command code (docs/wire-formats.md §7.3). Codes whose semantics are unknown (5–8, 16, 18–23) and any others are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    AuthRequest,
    AuthResponse,
    KeyGenerateRequest,
    KeyGenerateResponse,
    StoreCertificateRequest,
    StoreCertificateResponse,
    FetchCertificateRequest,
    FetchCertificateResponse,
    DeleteCertificateRequest,
    DeleteCertificateResponse,
    EndSession,
    RequestInProgress,
    Unknown(u8),
}

impl Command {
    pub fn code(self) -> u8 {
        match self {
            Command::AuthRequest => 1,
            Command::AuthResponse => 2,
            Command::KeyGenerateRequest => 3,
            Command::KeyGenerateResponse => 4,
            Command::StoreCertificateRequest => 9,
            Command::StoreCertificateResponse => 10,
            Command::FetchCertificateRequest => 11,
            Command::FetchCertificateResponse => 12,
            Command::DeleteCertificateRequest => 13,
            Command::DeleteCertificateResponse => 14,
            Command::EndSession => 15,
            Command::RequestInProgress => 17,
            Command::Unknown(code) => code,
        }
    }

    pub fn from_code(code: u8) -> Command {
        match code {
            1 => Command::AuthRequest,
            2 => Command::AuthResponse,
            3 => Command::KeyGenerateRequest,
            4 => Command::KeyGenerateResponse,
            9 => Command::StoreCertificateRequest,
            10 => Command::StoreCertificateResponse,
            11 => Command::FetchCertificateRequest,
            12 => Command::FetchCertificateResponse,
            13 => Command::DeleteCertificateRequest,
            14 => Command::DeleteCertificateResponse,
            15 => Command::EndSession,
            17 => Command::RequestInProgress,
            other => Command::Unknown(other),
        }
    }
}

/// REASON values (docs/wire-formats.md §7.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// 0: nothing scheduled; after a fetch.
    NoAction,
    /// 1: success / update certificate.
    Success,
    /// 7: invalid element or failure.
    Failure,
    /// 9: unknown device.
    UnknownDevice,
    Unknown(u8),
}

impl Reason {
    pub fn code(self) -> u8 {
        match self {
            Reason::NoAction => 0,
            Reason::Success => 1,
            Reason::Failure => 7,
            Reason::UnknownDevice => 9,
            Reason::Unknown(code) => code,
        }
    }

    pub fn from_code(code: u8) -> Reason {
        match code {
            0 => Reason::NoAction,
            1 => Reason::Success,
            7 => Reason::Failure,
            9 => Reason::UnknownDevice,
            other => Reason::Unknown(other),
        }
    }
}

/// AUTH_TYPE values, numbered like capfAuthMode (docs/wire-formats.md §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthType {
    None,
    Password,
    NoPassword,
    Lsc,
    Mic,
    Unknown(u8),
}

impl AuthType {
    pub fn code(self) -> u8 {
        match self {
            AuthType::None => 0,
            AuthType::Password => 1,
            AuthType::NoPassword => 2,
            AuthType::Lsc => 3,
            AuthType::Mic => 4,
            AuthType::Unknown(code) => code,
        }
    }

    pub fn from_code(code: u8) -> AuthType {
        match code {
            0 => AuthType::None,
            1 => AuthType::Password,
            2 => AuthType::NoPassword,
            3 => AuthType::Lsc,
            4 => AuthType::Mic,
            other => AuthType::Unknown(other),
        }
    }
}

/// CERTIFICATE_TYPE values and the type byte inside CERTIFICATE (docs/wire-formats.md §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertificateType {
    Lsc,
    Mic,
    Unknown(u8),
}

impl CertificateType {
    pub fn code(self) -> u8 {
        match self {
            CertificateType::Lsc => 1,
            CertificateType::Mic => 2,
            CertificateType::Unknown(code) => code,
        }
    }

    pub fn from_code(code: u8) -> CertificateType {
        match code {
            1 => CertificateType::Lsc,
            2 => CertificateType::Mic,
            other => CertificateType::Unknown(other),
        }
    }
}

/// KEY_TYPE values (docs/wire-formats.md §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    Rsa,
    Ec,
    Unknown(u8),
}

impl KeyType {
    pub fn code(self) -> u8 {
        match self {
            KeyType::Rsa => 0,
            KeyType::Ec => 1,
            KeyType::Unknown(code) => code,
        }
    }

    pub fn from_code(code: u8) -> KeyType {
        match code {
            0 => KeyType::Rsa,
            1 => KeyType::Ec,
            other => KeyType::Unknown(other),
        }
    }
}

/// CURVE values (docs/wire-formats.md §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Curve {
    P256,
    P384,
    P521,
    Unknown(u8),
}

impl Curve {
    pub fn code(self) -> u8 {
        match self {
            Curve::P256 => 0,
            Curve::P384 => 1,
            Curve::P521 => 2,
            Curve::Unknown(code) => code,
        }
    }

    pub fn from_code(code: u8) -> Curve {
        match code {
            0 => Curve::P256,
            1 => Curve::P384,
            2 => Curve::P521,
            other => Curve::Unknown(other),
        }
    }
}

/// The value of a CERTIFICATE element: `0x01 ‖ u16(2+D) ‖ 0x00 ‖ type ‖ DER` (docs/wire-formats.md §7.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateElement {
    pub certificate_type: CertificateType,
    pub der: Vec<u8>,
    /// The inner length as received, when it differs from 2 + DER length: logged, never fatal (docs/wire-formats.md §7.4).
    pub inner_length_mismatch: Option<u16>,
}

impl CertificateElement {
    pub fn new(certificate_type: CertificateType, der: Vec<u8>) -> CertificateElement {
        CertificateElement { certificate_type, der, inner_length_mismatch: None }
    }

    fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let inner = u16::try_from(self.der.len() + 2).map_err(|_| FrameError::TooLong { what: "CERTIFICATE", length: self.der.len() })?;
        let mut value = Vec::with_capacity(CERTIFICATE_PREFIX_LEN + self.der.len());
        value.push(0x01);
        value.extend_from_slice(&inner.to_be_bytes());
        value.push(0x00);
        value.push(self.certificate_type.code());
        value.extend_from_slice(&self.der);
        Ok(value)
    }

    fn decode(value: &[u8]) -> Result<CertificateElement, FrameError> {
        let (prefix, der) = value.split_at_checked(CERTIFICATE_PREFIX_LEN).ok_or(FrameError::ShortCertificate(value.len()))?;
        let inner = u16::from_be_bytes([prefix[1], prefix[2]]);
        let mismatch = (usize::from(inner) != der.len() + 2).then_some(inner);
        Ok(CertificateElement {
            certificate_type: CertificateType::from_code(prefix[4]),
            der: der.to_vec(),
            inner_length_mismatch: mismatch,
        })
    }
}

/// SHA2_SIGNED_DATA: `hash code ‖ u16 len ‖ signature` (docs/wire-formats.md §7.4, §7.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sha2SignedData {
    /// Hash-algorithm code (docs/wire-formats.md §1.6); only 3 (SHA-512) passes authentication.
    pub hash_code: u8,
    pub signature: Vec<u8>,
}

/// SUDI_DATA: `00 ‖ u16 ‖ SUDI certificate ‖ 01 ‖ u16 ‖ SHA-1 signature ‖ 03 ‖ u16 ‖ SHA-512 signature` (docs/wire-formats.md §7.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SudiData {
    pub certificate_der: Vec<u8>,
    pub sha1_signature: Vec<u8>,
    pub sha512_signature: Vec<u8>,
}

/// Block codes inside SUDI_DATA, in the order they must appear.
const SUDI_BLOCKS: [u8; 3] = [0x00, HASH_CODE_SHA1, HASH_CODE_SHA512];

impl SudiData {
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::new();
        for (code, bytes) in SUDI_BLOCKS.iter().zip([&self.certificate_der, &self.sha1_signature, &self.sha512_signature]) {
            push_block(&mut out, *code, bytes)?;
        }
        Ok(out)
    }

    /// Kept apart from frame decoding: a SUDI_DATA layout we do not understand must not fail a session that does
    /// not verify SUDI (docs/wire-formats.md §7.7: verified only when configured).
    pub fn decode(value: &[u8]) -> Result<SudiData, FrameError> {
        let mut rest = value;
        let mut parts: Vec<Vec<u8>> = Vec::with_capacity(3);
        for code in SUDI_BLOCKS {
            let (found, bytes, after) = read_block(rest, tag::SUDI_DATA)?;
            if found != code {
                return Err(FrameError::BadSignatureBlock { tag: tag::SUDI_DATA });
            }
            parts.push(bytes.to_vec());
            rest = after;
        }
        if !rest.is_empty() {
            return Err(FrameError::BadSignatureBlock { tag: tag::SUDI_DATA });
        }
        let [certificate_der, sha1_signature, sha512_signature]: [Vec<u8>; 3] =
            parts.try_into().map_err(|_| FrameError::BadSignatureBlock { tag: tag::SUDI_DATA })?;
        Ok(SudiData { certificate_der, sha1_signature, sha512_signature })
    }
}

/// A password: NUL-terminated on the wire (docs/wire-formats.md §7.4). `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(text: &str) -> Password {
        Password(text.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// An element the decoder did not interpret: an unknown tag, or one whose meaning is unknown (REASON_INFO,
/// CERTIFICATE_ID, RETRY_DELAY, DIGEST_TYPE). Kept for logging (docs/wire-formats.md §7.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedElement {
    pub tag: u8,
    pub value: Vec<u8>,
}

/// The elements of one frame body (docs/wire-formats.md §7.4). Encoding writes them in ascending tag order; decoding accepts
/// any order, refuses a repeated tag, and keeps tags it does not interpret in `skipped`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Body {
    pub reason: Option<Reason>,
    pub certificate_type: Option<CertificateType>,
    pub certificate: Option<CertificateElement>,
    pub signed_data: Option<Vec<u8>>,
    pub version: Option<u8>,
    pub auth_type: Option<AuthType>,
    /// DER SubjectPublicKeyInfo.
    pub public_key: Option<Vec<u8>>,
    /// RSA bits.
    pub key_size: Option<u16>,
    pub password: Option<Password>,
    /// As received, without its NUL; the session normalises `SEP` MACs (docs/wire-formats.md §1.3).
    pub device_name: Option<String>,
    /// Raw value; see [`SudiData::decode`].
    pub sudi_data: Option<Vec<u8>>,
    pub key_type: Option<KeyType>,
    pub curve: Option<Curve>,
    pub sha2_signed_data: Option<Sha2SignedData>,
    /// Never emitted by us except in tests that replay a peer (REASON_INFO and unknown tags).
    pub skipped: Vec<SkippedElement>,
}

impl Body {
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut elements: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut push = |tag: u8, value: Vec<u8>| elements.push((tag, value));
        if let Some(reason) = self.reason {
            push(tag::REASON, vec![reason.code()]);
        }
        if let Some(kind) = self.certificate_type {
            push(tag::CERTIFICATE_TYPE, vec![kind.code()]);
        }
        if let Some(certificate) = &self.certificate {
            push(tag::CERTIFICATE, certificate.encode()?);
        }
        if let Some(signed) = &self.signed_data {
            push(tag::SIGNED_DATA, signed.clone());
        }
        if let Some(version) = self.version {
            push(tag::VERSION, vec![version]);
        }
        if let Some(auth_type) = self.auth_type {
            push(tag::AUTH_TYPE, vec![auth_type.code()]);
        }
        if let Some(spki) = &self.public_key {
            push(tag::PUBLIC_KEY, spki.clone());
        }
        if let Some(bits) = self.key_size {
            push(tag::KEY_SIZE, bits.to_be_bytes().to_vec());
        }
        if let Some(password) = &self.password {
            push(tag::PASSWORD, tlv::with_nul(password.as_str()));
        }
        if let Some(name) = &self.device_name {
            push(tag::DEVICE_NAME, tlv::with_nul(name));
        }
        if let Some(sudi) = &self.sudi_data {
            push(tag::SUDI_DATA, sudi.clone());
        }
        if let Some(key_type) = self.key_type {
            push(tag::KEY_TYPE, vec![key_type.code()]);
        }
        if let Some(curve) = self.curve {
            push(tag::CURVE, vec![curve.code()]);
        }
        if let Some(sha2) = &self.sha2_signed_data {
            let mut value = Vec::new();
            push_block(&mut value, sha2.hash_code, &sha2.signature)?;
            push(tag::SHA2_SIGNED_DATA, value);
        }
        for skipped in &self.skipped {
            push(skipped.tag, skipped.value.clone());
        }
        // Stable: the typed fields were pushed in ascending order; skipped elements join by tag.
        elements.sort_by_key(|(tag, _)| *tag);
        let mut out = Vec::new();
        for (tag, value) in elements {
            tlv::encode_into(&mut out, tag, &value).map_err(|_| FrameError::TooLong { what: "element value", length: value.len() })?;
        }
        if out.len() > MAX_BODY_LEN {
            return Err(FrameError::TooLong { what: "frame body", length: out.len() });
        }
        Ok(out)
    }

    pub fn decode(body: &[u8]) -> Result<Body, FrameError> {
        let mut decoded = Body::default();
        let mut seen = [false; 256];
        for element in tlv::Elements::new(body, 0, body.len()) {
            let element = element.map_err(|e| match e {
                TrustError::ContainerOverrun { offset, .. } => FrameError::ElementTruncated { offset },
                _ => FrameError::ElementTruncated { offset: body.len() },
            })?;
            let seen_before = &mut seen[usize::from(element.tag)];
            if *seen_before {
                return Err(FrameError::DuplicateElement(element.tag));
            }
            *seen_before = true;
            decoded.decode_element(element.tag, element.value)?;
        }
        Ok(decoded)
    }

    fn decode_element(&mut self, element_tag: u8, value: &[u8]) -> Result<(), FrameError> {
        let byte = || fixed::<1>(element_tag, value).map(|[b]| b);
        match element_tag {
            tag::REASON => self.reason = Some(Reason::from_code(byte()?)),
            tag::CERTIFICATE_TYPE => self.certificate_type = Some(CertificateType::from_code(byte()?)),
            tag::CERTIFICATE => self.certificate = Some(CertificateElement::decode(value)?),
            tag::SIGNED_DATA => self.signed_data = Some(value.to_vec()),
            tag::VERSION => self.version = Some(byte()?),
            tag::AUTH_TYPE => self.auth_type = Some(AuthType::from_code(byte()?)),
            tag::PUBLIC_KEY => self.public_key = Some(value.to_vec()),
            tag::KEY_SIZE => self.key_size = Some(u16::from_be_bytes(fixed::<2>(element_tag, value)?)),
            tag::PASSWORD => self.password = Some(Password(nul_terminated(element_tag, value)?)),
            tag::DEVICE_NAME => self.device_name = Some(nul_terminated(element_tag, value)?),
            tag::SUDI_DATA => self.sudi_data = Some(value.to_vec()),
            tag::KEY_TYPE => self.key_type = Some(KeyType::from_code(byte()?)),
            tag::CURVE => self.curve = Some(Curve::from_code(byte()?)),
            tag::SHA2_SIGNED_DATA => {
                let (hash_code, signature, rest) = read_block(value, element_tag)?;
                if !rest.is_empty() {
                    return Err(FrameError::BadSignatureBlock { tag: element_tag });
                }
                self.sha2_signed_data = Some(Sha2SignedData { hash_code, signature: signature.to_vec() });
            }
            _ => self.skipped.push(SkippedElement { tag: element_tag, value: value.to_vec() }),
        }
        Ok(())
    }
}

/// One CAPF message (docs/wire-formats.md §7.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub command: Command,
    pub session_id: u32,
    pub body: Body,
}

/// The fixed header, read before the body so a reader knows how much follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub command: Command,
    pub session_id: u32,
    pub body_len: u16,
}

impl FrameHeader {
    /// Decodes the first 8 bytes; refuses a protocol id other than 0x55 (docs/wire-formats.md §7.2).
    pub fn decode(bytes: &[u8]) -> Result<FrameHeader, FrameError> {
        let header: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(FrameError::Truncated { needed: HEADER_LEN, found: bytes.len() })?;
        if header[0] != PROTOCOL_ID {
            return Err(FrameError::BadProtocolId(header[0]));
        }
        Ok(FrameHeader {
            command: Command::from_code(header[1]),
            session_id: u32::from_be_bytes([header[2], header[3], header[4], header[5]]),
            body_len: u16::from_be_bytes([header[6], header[7]]),
        })
    }
}

impl Frame {
    pub fn new(command: Command, session_id: u32, body: Body) -> Frame {
        Frame { command, session_id, body }
    }

    /// Header and body in one buffer, so the transport can send them in one write (docs/wire-formats.md §7.1).
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let body = self.body.encode()?;
        let body_len = u16::try_from(body.len()).map_err(|_| FrameError::TooLong { what: "frame body", length: body.len() })?;
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.push(PROTOCOL_ID);
        out.push(self.command.code());
        out.extend_from_slice(&self.session_id.to_be_bytes());
        out.extend_from_slice(&body_len.to_be_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decodes exactly one frame: the header, then exactly `len` body bytes.
    pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
        let header = FrameHeader::decode(bytes)?;
        let body = &bytes[HEADER_LEN..];
        let declared = usize::from(header.body_len);
        if body.len() < declared {
            return Err(FrameError::Truncated { needed: HEADER_LEN + declared, found: bytes.len() });
        }
        if body.len() > declared {
            return Err(FrameError::TrailingBytes { declared, found: body.len() });
        }
        Ok(Frame { command: header.command, session_id: header.session_id, body: Body::decode(body)? })
    }
}

fn fixed<const N: usize>(element_tag: u8, value: &[u8]) -> Result<[u8; N], FrameError> {
    value.try_into().map_err(|_| FrameError::BadElementLength { tag: element_tag, expected: N, found: value.len() })
}

fn nul_terminated(element_tag: u8, value: &[u8]) -> Result<String, FrameError> {
    tlv::nul_terminated(element_tag, value).map_err(|_| FrameError::BadString(element_tag))
}

/// Appends `code ‖ u16 len ‖ bytes`.
fn push_block(out: &mut Vec<u8>, code: u8, bytes: &[u8]) -> Result<(), FrameError> {
    let length = u16::try_from(bytes.len()).map_err(|_| FrameError::TooLong { what: "signature block", length: bytes.len() })?;
    out.push(code);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// Reads `code ‖ u16 len ‖ bytes` from the front of `data`.
fn read_block(data: &[u8], element_tag: u8) -> Result<(u8, &[u8], &[u8]), FrameError> {
    let bad = FrameError::BadSignatureBlock { tag: element_tag };
    let (head, rest) = data.split_at_checked(3).ok_or(bad.clone())?;
    let length = usize::from(u16::from_be_bytes([head[1], head[2]]));
    let (bytes, after) = rest.split_at_checked(length).ok_or(bad)?;
    Ok((head[0], bytes, after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn element(tag: u8, value: &[u8]) -> Vec<u8> {
        tlv::encode(tag, value).unwrap()
    }

    fn frame_bytes(command: u8, session_id: u32, body: &[u8]) -> Vec<u8> {
        let mut out = vec![PROTOCOL_ID, command];
        out.extend_from_slice(&session_id.to_be_bytes());
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn decoder_accepts_any_order_and_skips_unknown_tags_and_0x0d_is_an_ordinary_tag() {
        let mut body = Vec::new();
        body.extend(element(tag::DEVICE_NAME, b"SEP001122334455\0"));
        body.extend(element(99, b"future"));
        body.extend(element(tag::REASON_INFO, &[0xAB]));
        body.extend(element(tag::VERSION, &[3]));
        body.extend(element(tag::REASON, &[1]));
        let decoded = Body::decode(&body).unwrap();
        assert_eq!(decoded.device_name.as_deref(), Some("SEP001122334455"));
        assert_eq!((decoded.version, decoded.reason), (Some(3), Some(Reason::Success)));
        assert_eq!(
            decoded.skipped,
            vec![SkippedElement { tag: 99, value: b"future".to_vec() }, SkippedElement { tag: tag::REASON_INFO, value: vec![0xAB] }]
        );
        // Re-encoding sorts by tag: REASON, REASON_INFO, VERSION, DEVICE_NAME, 99.
        let encoded = decoded.encode().unwrap();
        let tags: Vec<u8> = tlv::Elements::new(&encoded, 0, encoded.len()).map(|e| e.unwrap().tag).collect();
        assert_eq!(tags, [1, 2, 7, 13, 99]);
    }

    #[test]
    fn encoder_emits_ascending_tags() {
        let body = Body {
            reason: Some(Reason::Success),
            sha2_signed_data: Some(Sha2SignedData { hash_code: 3, signature: vec![1, 2] }),
            device_name: Some("SEP001122334455".into()),
            version: Some(3),
            skipped: vec![SkippedElement { tag: 2, value: vec![9] }],
            ..Body::default()
        };
        let encoded = body.encode().unwrap();
        let tags: Vec<u8> = tlv::Elements::new(&encoded, 0, encoded.len()).map(|e| e.unwrap().tag).collect();
        assert_eq!(tags, [1, 2, 7, 13, 20]);
        assert_eq!(&encoded[encoded.len() - 8..], &[20, 0, 5, 3, 0, 2, 1, 2], "SHA2_SIGNED_DATA = 03 ‖ u16 len ‖ signature");
        assert_eq!(Body::decode(&encoded).unwrap(), body);
    }

    #[test]
    fn header_and_length_errors() {
        assert_eq!(Frame::decode(&[0x55, 1, 0]), Err(FrameError::Truncated { needed: 8, found: 3 }));
        assert_eq!(Frame::decode(&frame_bytes(1, 42, &[])[..]).map(|f| f.session_id), Ok(42));
        let mut wrong_id = frame_bytes(1, 42, &[]);
        wrong_id[0] = 0x54;
        assert_eq!(Frame::decode(&wrong_id), Err(FrameError::BadProtocolId(0x54)));
        let mut short = frame_bytes(2, 42, &element(tag::VERSION, &[3]));
        short.pop();
        assert_eq!(Frame::decode(&short), Err(FrameError::Truncated { needed: 12, found: 11 }));
        let mut long = frame_bytes(2, 42, &[]);
        long.push(0);
        assert_eq!(Frame::decode(&long), Err(FrameError::TrailingBytes { declared: 0, found: 1 }));
        assert_eq!(Frame::decode(&frame_bytes(5, 1, &[])).unwrap().command, Command::Unknown(5));
    }

    #[test]
    fn element_errors() {
        let twice = [element(tag::VERSION, &[3]), element(tag::VERSION, &[3])].concat();
        assert_eq!(Body::decode(&twice), Err(FrameError::DuplicateElement(tag::VERSION)));
        assert_eq!(Body::decode(&element(tag::KEY_SIZE, &[8])), Err(FrameError::BadElementLength { tag: 10, expected: 2, found: 1 }));
        assert_eq!(Body::decode(&element(tag::PASSWORD, b"1234")), Err(FrameError::BadString(tag::PASSWORD)));
        assert_eq!(Body::decode(&element(tag::CERTIFICATE, &[1, 0, 2, 0])), Err(FrameError::ShortCertificate(4)));
        assert_eq!(
            Body::decode(&element(tag::SHA2_SIGNED_DATA, &[3, 0, 5, 1])),
            Err(FrameError::BadSignatureBlock { tag: tag::SHA2_SIGNED_DATA })
        );
        assert!(matches!(Body::decode(&[tag::VERSION, 0, 2, 3]), Err(FrameError::ElementTruncated { .. })));
        // Every message names its section of docs/wire-formats.md.
        for error in [FrameError::BadProtocolId(1), FrameError::DuplicateElement(7), FrameError::SessionMismatch { expected: 1, found: 2 }]
        {
            assert!(error.to_string().contains("docs/wire-formats.md §"), "{error}");
        }
    }

    #[test]
    fn empty_password_is_a_lone_nul_and_is_hidden_from_debug() {
        let body = Body { password: Some(Password::new("")), ..Body::default() };
        assert_eq!(body.encode().unwrap(), [tag::PASSWORD, 0, 1, 0]);
        let secret = Body { password: Some(Password::new("987654")), ..Body::default() };
        assert!(!format!("{secret:?}").contains("987654"));
    }

    #[test]
    fn certificate_inner_length_mismatch_is_recorded_not_fatal() {
        let value = [&[0x01, 0x00, 0x09, 0x00, 0x02][..], b"DER"].concat();
        let decoded = Body::decode(&element(tag::CERTIFICATE, &value)).unwrap().certificate.unwrap();
        assert_eq!(decoded.der, b"DER");
        assert_eq!(decoded.certificate_type, CertificateType::Mic);
        assert_eq!(decoded.inner_length_mismatch, Some(9));
    }

    #[test]
    fn sudi_data_round_trips_and_refuses_other_layouts() {
        let sudi = SudiData { certificate_der: vec![0x30, 0x00], sha1_signature: vec![1; 4], sha512_signature: vec![2; 5] };
        let encoded = sudi.encode().unwrap();
        assert_eq!(&encoded[..5], &[0x00, 0x00, 0x02, 0x30, 0x00]);
        assert_eq!(SudiData::decode(&encoded).unwrap(), sudi);
        let mut swapped = encoded.clone();
        swapped[5] = HASH_CODE_SHA512;
        assert!(SudiData::decode(&swapped).is_err());
        assert!(SudiData::decode(&[encoded.as_slice(), &[0]].concat()).is_err());
    }

    #[test]
    fn codes_round_trip_and_unknown_values_are_kept() {
        for code in 0..=u8::MAX {
            assert_eq!(Command::from_code(code).code(), code);
            assert_eq!(Reason::from_code(code).code(), code);
            assert_eq!(AuthType::from_code(code).code(), code);
            assert_eq!(KeyType::from_code(code).code(), code);
            assert_eq!(Curve::from_code(code).code(), code);
            assert_eq!(CertificateType::from_code(code).code(), code);
        }
        assert_eq!(Command::from_code(6), Command::Unknown(6));
        assert_eq!(Reason::from_code(3), Reason::Unknown(3));
    }

    #[test]
    fn oversized_values_fail_instead_of_truncating() {
        let body = Body { public_key: Some(vec![0; 65_536]), ..Body::default() };
        assert!(matches!(body.encode(), Err(FrameError::TooLong { .. })));
        let body = Body { public_key: Some(vec![0; 40_000]), signed_data: Some(vec![0; 40_000]), ..Body::default() };
        assert!(matches!(body.encode(), Err(FrameError::TooLong { what: "frame body", .. })));
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Frame::decode(&bytes);
            let _ = Body::decode(&bytes);
            let _ = SudiData::decode(&bytes);
            let _ = FrameHeader::decode(&bytes);
        }

        #[test]
        fn well_formed_headers_with_random_bodies_never_panic(command: u8, session_id: u32, body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let bytes = frame_bytes(command, session_id, &body);
            if let Ok(frame) = Frame::decode(&bytes) {
                prop_assert_eq!(frame.session_id, session_id);
                prop_assert_eq!(frame.command.code(), command);
            }
        }

        #[test]
        fn typed_bodies_round_trip(
            reason in proptest::option::of(any::<u8>()),
            version in proptest::option::of(any::<u8>()),
            key_size in proptest::option::of(any::<u16>()),
            name in proptest::option::of("[A-Za-z0-9]{0,20}"),
            spki in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            der in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            sha2 in proptest::option::of((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..64))),
        ) {
            let body = Body {
                reason: reason.map(Reason::from_code),
                version,
                key_size,
                device_name: name,
                public_key: spki,
                certificate: der.map(|der| CertificateElement::new(CertificateType::Lsc, der)),
                sha2_signed_data: sha2.map(|(hash_code, signature)| Sha2SignedData { hash_code, signature }),
                ..Body::default()
            };
            let frame = Frame::new(Command::AuthResponse, 7, body);
            prop_assert_eq!(Frame::decode(&frame.encode().unwrap()).unwrap(), frame);
        }
    }
}
