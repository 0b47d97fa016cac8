//! The one error type of the trust-file module. Every message names the rule and its section of docs/wire-formats.md.

use std::fmt;

/// Why a trust file could not be encoded, decoded, built or verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustError {
    /// Reading needs bytes past the end of the input.
    Truncated { offset: usize, needed: usize },
    /// A child element runs past the end of its container (or past the header or record it sits in).
    ContainerOverrun { tag: u8, offset: usize },
    /// A header tag (or, in Strict mode, a record tag) occurs twice.
    DuplicateTag { tag: u8, offset: usize },
    /// A tag this decoder does not know, in Strict mode.
    UnknownTag { tag: u8, offset: usize },
    /// A value longer than a u16 length can describe; encoders fail rather than truncate.
    ValueTooLong { tag: u8, length: usize },
    /// An element with a fixed size has another size.
    BadElementLength { tag: u8, expected: usize, found: usize },
    /// A required element is absent.
    MissingElement { tag: u8, name: &'static str },
    /// The file does not start with VERSION then HEADER_LENGTH.
    BadPreamble,
    /// VERSION is none of 1.2, 1.0 and 2.0.
    UnsupportedVersion { major: u8, minor: u8 },
    /// The file kind is not the one the caller asked for.
    WrongFileKind { expected: &'static str, found: &'static str },
    /// HEADER_LENGTH is beyond the end of the file, below 10, or (Strict) not a multiple of 4.
    BadHeaderLength { header_length: usize, file_length: usize },
    /// A pad byte is followed by a non-pad element (Strict).
    PadNotAtEnd { offset: usize },
    /// Hash code 2 (SHA-256) or any code other than 1 and 3.
    UnsupportedHashAlgorithm(u8),
    /// SIGNER_VERSION other than 1.0 and 1.1.
    UnsupportedSignerVersion { major: u8, minor: u8 },
    /// SIGNATURE_MODULUS outside 0..=3, or a signature length that has no modulus code.
    BadModulusCode(u8),
    /// The SIGNATURE length disagrees with SIGNATURE_MODULUS.
    SignatureLengthMismatch { modulus_bytes: usize, signature_bytes: usize },
    /// A name or file name is not NUL-terminated text.
    BadString { tag: u8 },
    /// A logical file name this implementation refuses to emit.
    BadFilename(String),
    /// A record does not start with a 5-byte RECORD_LENGTH element, or its length is below 5.
    BadRecordLength { offset: usize, length: usize },
    /// A record's PUBLIC_KEY or SERIAL_NUMBER disagrees with its CERTIFICATE (Strict).
    RecordInconsistent { offset: usize, field: &'static str },
    /// More than two SAST records.
    TooManySast(usize),
    /// The same (certificate, role) pair twice.
    DuplicateRecord { role: u16 },
    /// A role code the builder never emits (SRST and unknown codes).
    RoleNotEmitted(u16),
    /// The signer certificate is not among the SAST records of the file it signs.
    SignerNotInRecords,
    /// The new file's signer is not a SAST record of the previously published file.
    BrokenTrustChain,
    /// No record of the trust list (or given certificate) matches SIGNER_SERIAL with the required role.
    SignerNotFound,
    /// An EC record certificate in a file with signer version 1.0.
    EcRecordNeedsSignerVersion11,
    /// A record certificate whose key is neither RSA nor an uncompressed EC point.
    UnsupportedRecordKey(String),
    /// The file exceeds 64 KiB.
    FileTooLarge { size: usize, limit: usize },
    /// The header would exceed 65 535 bytes.
    HeaderTooLarge(usize),
    /// A signer key that §3.3 refuses.
    SignerKeyRefused(String),
    /// SHA-512 with a 1024-bit signer: the DigestInfo does not fit.
    Sha512NeedsRsa2048,
    /// The certificate cannot be parsed or holds a value we refuse.
    BadCertificate(String),
    /// A serial number that is zero or negative.
    BadSerial,
    /// The RSASSA-PKCS1-v1_5 signature does not verify.
    BadSignature,
    /// The wrapped AES key does not decrypt with the device key.
    KeyUnwrapFailed,
    /// A device certificate whose key is not RSA.
    EncryptUnsupportedKeyType(String),
    /// KEY_ALGORITHM other than 1 (AES-128).
    UnsupportedKeyAlgorithm(u8),
    /// Ciphertext empty or not a multiple of 16 bytes.
    BadCiphertextLength(usize),
    /// PAD_COUNT outside 1..=16 or longer than the decrypted text.
    BadPadCount(u16),
    /// A pad byte of the decrypted text is not 0x0D.
    BadPadding,
    /// The digest of the decrypted text differs from PLAINTEXT_HASH.
    PlaintextHashMismatch,
    /// PLAINTEXT_HASH_ALGORITHM differs from the header hash (Strict).
    PlaintextHashAlgorithmMismatch,
}

impl fmt::Display for TrustError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use TrustError::*;
        match self {
            Truncated { offset, needed } => {
                write!(f, "truncated: {needed} more byte(s) needed at offset {offset} (docs/wire-formats.md §2.4)")
            }
            ContainerOverrun { tag, offset } => {
                write!(f, "element 0x{tag:02X} at offset {offset} overruns its container (docs/wire-formats.md §2.3, §2.4)")
            }
            DuplicateTag { tag, offset } => write!(f, "tag 0x{tag:02X} repeated at offset {offset} (docs/wire-formats.md §2.4)"),
            UnknownTag { tag, offset } => {
                write!(f, "unknown tag 0x{tag:02X} at offset {offset} in Strict mode (docs/wire-formats.md §2.4)")
            }
            ValueTooLong { tag, length } => {
                write!(f, "value of tag 0x{tag:02X} is {length} bytes, more than the 65 535 a TLV length holds (docs/wire-formats.md §2.1)")
            }
            BadElementLength { tag, expected, found } => {
                write!(f, "element 0x{tag:02X} has length {found}, expected {expected} (docs/wire-formats.md §3.3, §5.2)")
            }
            MissingElement { tag, name } => write!(f, "required element 0x{tag:02X} {name} is missing (docs/wire-formats.md §3.6, §3.8)"),
            BadPreamble => {
                write!(
                    f,
                    "the file must start with VERSION (tag 1, length 2) then HEADER_LENGTH (tag 2, length 2) (docs/wire-formats.md §3.8)"
                )
            }
            UnsupportedVersion { major, minor } => {
                write!(f, "VERSION {major}.{minor} is none of 1.2 (.tlv), 1.0 (.sgn), 2.0 (.enc.sgn) (docs/wire-formats.md §3.3)")
            }
            WrongFileKind { expected, found } => write!(f, "expected a {expected} file, found a {found} file (docs/wire-formats.md §3.3)"),
            BadHeaderLength { header_length, file_length } => write!(
                f,
                "HEADER_LENGTH {header_length} is invalid for a {file_length}-byte file (at least 10, within the file, multiple of 4) (docs/wire-formats.md §3.8)"
            ),
            PadNotAtEnd { offset } => {
                write!(f, "element after a pad byte at offset {offset}: pad bytes end the header (docs/wire-formats.md §2.2)")
            }
            UnsupportedHashAlgorithm(code) => {
                write!(f, "hash algorithm code {code} is not accepted: only 1 (SHA-1) and 3 (SHA-512) (docs/wire-formats.md §1.6)")
            }
            UnsupportedSignerVersion { major, minor } => {
                write!(f, "SIGNER_VERSION {major}.{minor} is neither 1.0 nor 1.1 (docs/wire-formats.md §3.3)")
            }
            BadModulusCode(code) => write!(f, "SIGNATURE_MODULUS code {code} is not 0..=3 (docs/wire-formats.md §3.3)"),
            SignatureLengthMismatch { modulus_bytes, signature_bytes } => {
                write!(f, "SIGNATURE is {signature_bytes} bytes but SIGNATURE_MODULUS says {modulus_bytes} (docs/wire-formats.md §3.8)")
            }
            BadString { tag } => write!(f, "element 0x{tag:02X} is not NUL-terminated text (docs/wire-formats.md §1.2)"),
            BadFilename(why) => write!(f, "file name refused: {why} (docs/wire-formats.md §3.1, §4)"),
            BadRecordLength { offset, length } => {
                write!(f, "record at offset {offset}: RECORD_LENGTH {length} is below 5 or overruns the file (docs/wire-formats.md §3.8)")
            }
            RecordInconsistent { offset, field } => {
                write!(f, "record at offset {offset}: {field} disagrees with the record's CERTIFICATE (docs/wire-formats.md §3.6)")
            }
            TooManySast(n) => write!(f, "{n} SAST records; at most 2 are allowed (docs/wire-formats.md §3.7, §3.9)"),
            DuplicateRecord { role } => write!(f, "the same certificate appears twice with role {role} (docs/wire-formats.md §3.7)"),
            RoleNotEmitted(code) => write!(f, "role code {code} is never emitted (docs/wire-formats.md §1.7)"),
            SignerNotInRecords => write!(f, "the signer certificate must be present as a SAST record (docs/wire-formats.md §3.7)"),
            BrokenTrustChain => {
                write!(f, "the signer is not a SAST record of the previously published file (docs/wire-formats.md §3.7 step 2, §3.9)")
            }
            SignerNotFound => write!(f, "no record with the required role matches SIGNER_SERIAL (docs/wire-formats.md §3.8 step 4)"),
            EcRecordNeedsSignerVersion11 => write!(f, "EC record certificates need signer version 1.1 (docs/wire-formats.md §3.7)"),
            UnsupportedRecordKey(why) => write!(f, "record certificate key refused: {why} (docs/wire-formats.md §3.6)"),
            FileTooLarge { size, limit } => {
                write!(f, "file is {size} bytes, above the {limit}-byte limit (docs/wire-formats.md §3.7 step 4)")
            }
            HeaderTooLarge(n) => write!(f, "header would be {n} bytes, above 65 535 (docs/wire-formats.md §3.4)"),
            SignerKeyRefused(why) => write!(f, "signer key refused: {why} (docs/wire-formats.md §3.3)"),
            Sha512NeedsRsa2048 => {
                write!(f, "SHA-512 with a 1024-bit signer is refused: the DigestInfo does not fit (docs/wire-formats.md §3.7)")
            }
            BadCertificate(why) => write!(f, "certificate refused: {why} (docs/wire-formats.md §1.4, §1.5)"),
            BadSerial => write!(f, "certificate serial is zero or negative (docs/wire-formats.md §1.5)"),
            BadSignature => write!(f, "the file signature does not verify (docs/wire-formats.md §3.8 step 5)"),
            KeyUnwrapFailed => write!(f, "the wrapped key does not decrypt with the device key (docs/wire-formats.md §5.4)"),
            EncryptUnsupportedKeyType(kind) => {
                write!(f, "device certificate key is {kind}; only RSA keys can wrap the AES key (docs/wire-formats.md §5.3)")
            }
            UnsupportedKeyAlgorithm(code) => write!(f, "KEY_ALGORITHM {code} is not 1 (AES-128) (docs/wire-formats.md §5.2)"),
            BadCiphertextLength(n) => write!(f, "ciphertext of {n} bytes is empty or not a multiple of 16 (docs/wire-formats.md §5.4)"),
            BadPadCount(p) => write!(f, "PAD_COUNT {p} is outside 1..=16 or longer than the text (docs/wire-formats.md §5.4)"),
            BadPadding => write!(f, "a pad byte of the decrypted text is not 0x0D (docs/wire-formats.md §5.4)"),
            PlaintextHashMismatch => write!(f, "the decrypted text does not match PLAINTEXT_HASH (docs/wire-formats.md §5.4)"),
            PlaintextHashAlgorithmMismatch => {
                write!(f, "PLAINTEXT_HASH_ALGORITHM differs from the header hash (docs/wire-formats.md §5.2)")
            }
        }
    }
}

impl std::error::Error for TrustError {}
