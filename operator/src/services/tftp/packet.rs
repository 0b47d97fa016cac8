//! TFTP packets: RFC 1350 (RRQ, WRQ, DATA, ACK, ERROR), RFC 2347 option negotiation (OACK) and the
//! options blksize (RFC 2348), timeout and tsize (RFC 2349) and windowsize (RFC 7440).
//!
//! Written by hand: no maintained crate covers the windowsize option and a never-panicking parser.

use std::fmt;

/// The largest UDP payload; anything longer cannot be a TFTP packet.
pub const MAX_PACKET_LEN: usize = 65_535;
/// The block size when no blksize option is negotiated (RFC 1350).
pub const DEFAULT_BLOCK_SIZE: u16 = 512;
/// blksize bounds (RFC 2348).
pub const MIN_BLOCK_SIZE: u16 = 8;
pub const MAX_BLOCK_SIZE: u16 = 65_464;
/// timeout bounds in seconds (RFC 2349).
pub const MIN_TIMEOUT_SECS: u8 = 1;
pub const MAX_TIMEOUT_SECS: u8 = 255;
/// windowsize bounds (RFC 7440).
pub const MIN_WINDOW_SIZE: u16 = 1;
pub const MAX_WINDOW_SIZE: u16 = 65_535;

/// Operation codes (RFC 1350 §5, RFC 2347 for OACK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Opcode {
    ReadRequest = 1,
    WriteRequest = 2,
    Data = 3,
    Ack = 4,
    Error = 5,
    OptionAck = 6,
}

impl Opcode {
    pub fn from_u16(value: u16) -> Option<Self> {
        match value {
            1 => Some(Self::ReadRequest),
            2 => Some(Self::WriteRequest),
            3 => Some(Self::Data),
            4 => Some(Self::Ack),
            5 => Some(Self::Error),
            6 => Some(Self::OptionAck),
            _ => None,
        }
    }
}

/// Transfer modes (RFC 1350 §1); the obsolete "mail" mode is not supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Octet,
    Netascii,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Octet => "octet",
            Self::Netascii => "netascii",
        }
    }
}

/// ERROR packet codes (RFC 1350 appendix, RFC 2347 for code 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum ErrorCode {
    NotDefined = 0,
    FileNotFound = 1,
    AccessViolation = 2,
    DiskFull = 3,
    IllegalOperation = 4,
    UnknownTransferId = 5,
    FileExists = 6,
    NoSuchUser = 7,
    OptionRefused = 8,
}

impl ErrorCode {
    /// Codes outside 0..=8 are read as "not defined" so that a peer's ERROR is never itself malformed.
    pub fn from_u16(value: u16) -> Self {
        match value {
            1 => Self::FileNotFound,
            2 => Self::AccessViolation,
            3 => Self::DiskFull,
            4 => Self::IllegalOperation,
            5 => Self::UnknownTransferId,
            6 => Self::FileExists,
            7 => Self::NoSuchUser,
            8 => Self::OptionRefused,
            _ => Self::NotDefined,
        }
    }
}

/// The options a request asks for or an OACK grants. `None` means "not present". Values outside the
/// RFC ranges are dropped at parse time, which RFC 2347 allows (a server may ignore any option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TransferOptions {
    pub block_size: Option<u16>,
    pub timeout_secs: Option<u8>,
    pub transfer_size: Option<u64>,
    pub window_size: Option<u16>,
}

impl TransferOptions {
    pub fn is_empty(&self) -> bool {
        self.block_size.is_none() && self.timeout_secs.is_none() && self.transfer_size.is_none() && self.window_size.is_none()
    }

    /// Records one name/value pair; unknown names and out-of-range values are ignored, the first
    /// occurrence of a name wins.
    fn accept(&mut self, name: &str, value: &str) {
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "blksize" if self.block_size.is_none() => {
                self.block_size = value.parse::<u16>().ok().filter(|size| (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(size));
            }
            "timeout" if self.timeout_secs.is_none() => {
                self.timeout_secs = value.parse::<u8>().ok().filter(|secs| *secs >= MIN_TIMEOUT_SECS);
            }
            "tsize" if self.transfer_size.is_none() => self.transfer_size = value.parse::<u64>().ok(),
            "windowsize" if self.window_size.is_none() => {
                self.window_size = value.parse::<u16>().ok().filter(|size| *size >= MIN_WINDOW_SIZE);
            }
            _ => {}
        }
    }

    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        if let Some(size) = self.block_size {
            pairs.push(("blksize", size.to_string()));
        }
        if let Some(secs) = self.timeout_secs {
            pairs.push(("timeout", secs.to_string()));
        }
        if let Some(size) = self.transfer_size {
            pairs.push(("tsize", size.to_string()));
        }
        if let Some(size) = self.window_size {
            pairs.push(("windowsize", size.to_string()));
        }
        pairs
    }
}

/// A read or write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub filename: String,
    pub mode: Mode,
    pub options: TransferOptions,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    ReadRequest(Request),
    WriteRequest(Request),
    Data { block: u16, payload: Vec<u8> },
    Ack { block: u16 },
    Error { code: ErrorCode, message: String },
    OptionAck(TransferOptions),
}

/// Why bytes are not a TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PacketError {
    TooShort,
    TooLong(usize),
    UnknownOpcode(u16),
    /// A request or ERROR string lacks its NUL terminator.
    MissingTerminator(&'static str),
    NotUtf8(&'static str),
    UnknownMode(String),
    /// An option name without a value (RFC 2347 §"Packet format").
    OptionWithoutValue(String),
    /// A DATA payload longer than the largest block size.
    DataTooLong(usize),
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort => write!(f, "packet shorter than its opcode and fixed fields (RFC 1350 §5)"),
            Self::TooLong(len) => write!(f, "packet of {len} bytes exceeds the {MAX_PACKET_LEN}-byte UDP limit"),
            Self::UnknownOpcode(code) => write!(f, "unknown opcode {code} (RFC 1350 §5, RFC 2347)"),
            Self::MissingTerminator(field) => write!(f, "{field} is not NUL-terminated (RFC 1350 §5)"),
            Self::NotUtf8(field) => write!(f, "{field} is not valid text"),
            Self::UnknownMode(mode) => write!(f, "transfer mode {mode:?} is neither octet nor netascii (RFC 1350 §1)"),
            Self::OptionWithoutValue(name) => write!(f, "option {name:?} has no value (RFC 2347)"),
            Self::DataTooLong(len) => write!(f, "DATA payload of {len} bytes exceeds blksize {MAX_BLOCK_SIZE} (RFC 2348)"),
        }
    }
}

impl std::error::Error for PacketError {}

impl Packet {
    /// Parses one datagram. Never panics, whatever the input.
    pub fn parse(bytes: &[u8]) -> Result<Self, PacketError> {
        if bytes.len() > MAX_PACKET_LEN {
            return Err(PacketError::TooLong(bytes.len()));
        }
        let (opcode, body) = split_u16(bytes).ok_or(PacketError::TooShort)?;
        match Opcode::from_u16(opcode).ok_or(PacketError::UnknownOpcode(opcode))? {
            Opcode::ReadRequest => parse_request(body).map(Self::ReadRequest),
            Opcode::WriteRequest => parse_request(body).map(Self::WriteRequest),
            Opcode::Data => {
                let (block, payload) = split_u16(body).ok_or(PacketError::TooShort)?;
                if payload.len() > usize::from(MAX_BLOCK_SIZE) {
                    return Err(PacketError::DataTooLong(payload.len()));
                }
                Ok(Self::Data { block, payload: payload.to_vec() })
            }
            // Trailing bytes after an ACK's block number are tolerated, as most implementations do.
            Opcode::Ack => split_u16(body).map(|(block, _)| Self::Ack { block }).ok_or(PacketError::TooShort),
            Opcode::Error => {
                let (code, rest) = split_u16(body).ok_or(PacketError::TooShort)?;
                let mut fields = NulFields::new(rest);
                // A missing terminator on the message is tolerated: the message is informational only.
                let message = match fields.next() {
                    Some(field) => String::from_utf8_lossy(field).into_owned(),
                    None => String::from_utf8_lossy(rest).into_owned(),
                };
                Ok(Self::Error { code: ErrorCode::from_u16(code), message })
            }
            Opcode::OptionAck => parse_options(&mut NulFields::new(body)).map(Self::OptionAck),
        }
    }

    /// The packet's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Self::ReadRequest(request) => encode_request(&mut out, Opcode::ReadRequest, request),
            Self::WriteRequest(request) => encode_request(&mut out, Opcode::WriteRequest, request),
            Self::Data { block, payload } => {
                out.extend_from_slice(&(Opcode::Data as u16).to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
                out.extend_from_slice(payload);
            }
            Self::Ack { block } => {
                out.extend_from_slice(&(Opcode::Ack as u16).to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
            }
            Self::Error { code, message } => {
                out.extend_from_slice(&(Opcode::Error as u16).to_be_bytes());
                out.extend_from_slice(&(*code as u16).to_be_bytes());
                // A NUL inside the message would end it early on the peer's side.
                out.extend(message.bytes().filter(|byte| *byte != 0));
                out.push(0);
            }
            Self::OptionAck(options) => {
                out.extend_from_slice(&(Opcode::OptionAck as u16).to_be_bytes());
                push_options(&mut out, options);
            }
        }
        out
    }
}

/// What a client sends back during a read transfer: an ACK of a block, or an ERROR ending it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Ack(u16),
    Error,
}

impl Reply {
    /// Reads an ACK or an ERROR without allocating (the single-port receive loop's hot path), with
    /// exactly the acceptance of `Packet::parse`; `None` for anything else.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > MAX_PACKET_LEN {
            return None;
        }
        let (opcode, body) = split_u16(bytes)?;
        let (value, _) = split_u16(body)?;
        match Opcode::from_u16(opcode)? {
            Opcode::Ack => Some(Self::Ack(value)),
            Opcode::Error => Some(Self::Error),
            _ => None,
        }
    }
}

/// Encodes a DATA packet without copying the payload into a `Packet` first (the server's hot path).
pub fn encode_data(block: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&(Opcode::Data as u16).to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Converts bytes to netascii (RFC 1350 §1, RFC 764): LF becomes CR LF and a bare CR becomes CR NUL.
pub fn to_netascii(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 16);
    for &byte in bytes {
        match byte {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            other => out.push(other),
        }
    }
    out
}

fn split_u16(bytes: &[u8]) -> Option<(u16, &[u8])> {
    match bytes {
        [high, low, rest @ ..] => Some((u16::from_be_bytes([*high, *low]), rest)),
        _ => None,
    }
}

/// Iterates over NUL-terminated fields; a trailing unterminated remainder is reported by `remainder`.
struct NulFields<'a> {
    rest: &'a [u8],
}

impl<'a> NulFields<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Self { rest }
    }

    fn remainder(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for NulFields<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let end = self.rest.iter().position(|byte| *byte == 0)?;
        let (field, rest) = self.rest.split_at(end);
        self.rest = rest.get(1..).unwrap_or_default();
        Some(field)
    }
}

fn text<'a>(field: &'a [u8], name: &'static str) -> Result<&'a str, PacketError> {
    std::str::from_utf8(field).map_err(|_| PacketError::NotUtf8(name))
}

fn parse_request(body: &[u8]) -> Result<Request, PacketError> {
    let mut fields = NulFields::new(body);
    let filename = text(fields.next().ok_or(PacketError::MissingTerminator("filename"))?, "filename")?.to_owned();
    let mode_text = text(fields.next().ok_or(PacketError::MissingTerminator("mode"))?, "mode")?;
    let mode = match mode_text.to_ascii_lowercase().as_str() {
        "octet" => Mode::Octet,
        "netascii" => Mode::Netascii,
        _ => return Err(PacketError::UnknownMode(mode_text.chars().take(32).collect())),
    };
    let options = parse_options(&mut fields)?;
    Ok(Request { filename, mode, options })
}

fn parse_options(fields: &mut NulFields<'_>) -> Result<TransferOptions, PacketError> {
    let mut options = TransferOptions::default();
    while let Some(name) = fields.next() {
        let name = text(name, "option name")?;
        let Some(value) = fields.next() else {
            if !fields.remainder().is_empty() {
                return Err(PacketError::MissingTerminator("option value"));
            }
            return Err(PacketError::OptionWithoutValue(name.chars().take(32).collect()));
        };
        options.accept(name, text(value, "option value")?);
    }
    if !fields.remainder().is_empty() {
        return Err(PacketError::MissingTerminator("option"));
    }
    Ok(options)
}

fn encode_request(out: &mut Vec<u8>, opcode: Opcode, request: &Request) {
    out.extend_from_slice(&(opcode as u16).to_be_bytes());
    out.extend_from_slice(request.filename.as_bytes());
    out.push(0);
    out.extend_from_slice(request.mode.as_str().as_bytes());
    out.push(0);
    push_options(out, &request.options);
}

fn push_options(out: &mut Vec<u8>, options: &TransferOptions) {
    for (name, value) in options.pairs() {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_an_rfc_1350_read_request() {
        let bytes = b"\x00\x01SEP001122334455.cnf.xml\x00octet\x00";
        let packet = Packet::parse(bytes).expect("valid RRQ");
        assert_eq!(
            packet,
            Packet::ReadRequest(Request {
                filename: "SEP001122334455.cnf.xml".into(),
                mode: Mode::Octet,
                options: TransferOptions::default()
            })
        );
        assert_eq!(packet.encode(), bytes.to_vec());
    }

    #[test]
    fn parses_options_case_insensitively_and_ignores_unknown_or_out_of_range_ones() {
        let bytes = b"\x00\x01f\x00NetASCII\x00BLKSIZE\x001428\x00windowsize\x008\x00tsize\x000\x00multicast\x00\x00timeout\x000\x00";
        let Ok(Packet::ReadRequest(request)) = Packet::parse(bytes) else { panic!("valid RRQ expected") };
        assert_eq!(request.mode, Mode::Netascii);
        assert_eq!(request.options.block_size, Some(1428));
        assert_eq!(request.options.window_size, Some(8));
        assert_eq!(request.options.transfer_size, Some(0));
        // RFC 2349: timeout 0 is out of range, so the option is ignored.
        assert_eq!(request.options.timeout_secs, None);
    }

    #[test]
    fn blksize_outside_rfc_2348_range_is_ignored() {
        for value in ["7", "65465", "0", "-1", "abc"] {
            let bytes = [b"\x00\x01f\x00octet\x00blksize\x00".as_slice(), value.as_bytes(), b"\x00"].concat();
            let Ok(Packet::ReadRequest(request)) = Packet::parse(&bytes) else { panic!("valid RRQ expected") };
            assert_eq!(request.options.block_size, None, "blksize {value}");
        }
        let bytes = b"\x00\x01f\x00octet\x00blksize\x0065464\x00";
        let Ok(Packet::ReadRequest(request)) = Packet::parse(bytes) else { panic!("valid RRQ expected") };
        assert_eq!(request.options.block_size, Some(65_464));
    }

    #[test]
    fn rejects_malformed_requests() {
        assert_eq!(Packet::parse(b""), Err(PacketError::TooShort));
        assert_eq!(Packet::parse(b"\x00"), Err(PacketError::TooShort));
        assert_eq!(Packet::parse(b"\x00\x09x"), Err(PacketError::UnknownOpcode(9)));
        assert_eq!(Packet::parse(b"\x00\x01file"), Err(PacketError::MissingTerminator("filename")));
        assert_eq!(Packet::parse(b"\x00\x01file\x00octet"), Err(PacketError::MissingTerminator("mode")));
        assert_eq!(Packet::parse(b"\x00\x01file\x00mail\x00"), Err(PacketError::UnknownMode("mail".into())));
        assert!(matches!(Packet::parse(b"\x00\x01file\x00octet\x00blksize\x00"), Err(PacketError::OptionWithoutValue(_))));
        assert_eq!(Packet::parse(b"\x00\x01file\x00octet\x00blksize\x00512"), Err(PacketError::MissingTerminator("option value")));
        assert_eq!(Packet::parse(b"\x00\x01file\x00octet\x00blk"), Err(PacketError::MissingTerminator("option")));
        assert_eq!(Packet::parse(&vec![0u8; MAX_PACKET_LEN + 1]), Err(PacketError::TooLong(MAX_PACKET_LEN + 1)));
    }

    #[test]
    fn encodes_data_ack_error_and_oack_as_the_rfcs_lay_them_out() {
        assert_eq!(Packet::Data { block: 258, payload: b"ab".to_vec() }.encode(), b"\x00\x03\x01\x02ab");
        assert_eq!(encode_data(258, b"ab"), b"\x00\x03\x01\x02ab");
        assert_eq!(Packet::Ack { block: 1 }.encode(), b"\x00\x04\x00\x01");
        assert_eq!(
            Packet::Error { code: ErrorCode::FileNotFound, message: "File not found".into() }.encode(),
            b"\x00\x05\x00\x01File not found\x00"
        );
        let oack = Packet::OptionAck(TransferOptions { block_size: Some(1428), window_size: Some(8), ..Default::default() });
        assert_eq!(oack.encode(), b"\x00\x06blksize\x001428\x00windowsize\x008\x00");
        assert_eq!(Packet::parse(&oack.encode()), Ok(oack));
    }

    #[test]
    fn error_codes_cover_rfc_1350_and_2347() {
        for (value, code) in [
            (0, ErrorCode::NotDefined),
            (1, ErrorCode::FileNotFound),
            (2, ErrorCode::AccessViolation),
            (3, ErrorCode::DiskFull),
            (4, ErrorCode::IllegalOperation),
            (5, ErrorCode::UnknownTransferId),
            (6, ErrorCode::FileExists),
            (7, ErrorCode::NoSuchUser),
            (8, ErrorCode::OptionRefused),
        ] {
            assert_eq!(ErrorCode::from_u16(value), code);
            assert_eq!(code as u16, value);
        }
    }

    #[test]
    fn netascii_expands_line_ends_as_rfc_1350_says() {
        assert_eq!(to_netascii(b"a\nb\rc\r\n"), b"a\r\nb\r\0c\r\0\r\n");
        assert_eq!(to_netascii(b""), b"");
    }

    proptest! {
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = Packet::parse(&bytes);
        }

        #[test]
        fn a_reply_is_read_as_the_full_parser_reads_it(opcode in 0u16..8, body in proptest::collection::vec(any::<u8>(), 0..16)) {
            let bytes = [opcode.to_be_bytes().as_slice(), &body].concat();
            let full = match Packet::parse(&bytes) {
                Ok(Packet::Ack { block }) => Some(Reply::Ack(block)),
                Ok(Packet::Error { .. }) => Some(Reply::Error),
                _ => None,
            };
            prop_assert_eq!(Reply::parse(&bytes), full);
        }

        #[test]
        fn parsing_request_shaped_input_never_panics(
            opcode in 0u16..8,
            fields in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..24), 0..12),
            terminate in any::<bool>(),
        ) {
            let mut bytes = opcode.to_be_bytes().to_vec();
            for field in &fields {
                bytes.extend_from_slice(field);
                if terminate { bytes.push(0); }
            }
            let _ = Packet::parse(&bytes);
        }

        #[test]
        fn requests_round_trip(name in "[A-Za-z0-9._-]{1,64}", block_size in proptest::option::of(8u16..=65464), window_size in proptest::option::of(1u16..)) {
            let packet = Packet::ReadRequest(Request {
                filename: name,
                mode: Mode::Octet,
                options: TransferOptions { block_size, window_size, ..Default::default() },
            });
            prop_assert_eq!(Packet::parse(&packet.encode()), Ok(packet));
        }
    }
}
