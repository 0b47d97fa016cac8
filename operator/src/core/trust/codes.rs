//! The closed code sets of the trust files: hash algorithms, roles, signer versions, modulus codes, file kinds,
//! and the tag numbers (docs/wire-formats.md §1.6, §1.7, §3.3, §3.6, §5.2).

use rsa::Pkcs1v15Sign;
use serde::Serialize;
use sha1::Sha1;
use sha2::{Digest, Sha512};

use super::error::TrustError;

/// Header hash (tag 0x08) and plaintext hash (tag 0x1A) codes (docs/wire-formats.md §1.6). SHA-256 (2) is never accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, serde::Deserialize)]
pub enum HashAlgorithm {
    #[default]
    Sha1 = 1,
    Sha512 = 3,
}

impl HashAlgorithm {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Result<Self, TrustError> {
        match code {
            1 => Ok(Self::Sha1),
            3 => Ok(Self::Sha512),
            other => Err(TrustError::UnsupportedHashAlgorithm(other)),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sha1 => "SHA-1",
            Self::Sha512 => "SHA-512",
        }
    }

    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        self.digest_parts(&[data])
    }

    /// The digest of the concatenation of `parts`, without building it.
    pub fn digest_parts(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut hasher = D::new();
            for part in parts {
                hasher.update(part);
            }
            hasher.finalize().to_vec()
        }
        match self {
            Self::Sha1 => run::<Sha1>(parts),
            Self::Sha512 => run::<Sha512>(parts),
        }
    }

    pub fn digest_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha512 => 64,
        }
    }

    /// The digest a signer puts in the DigestInfo (docs/wire-formats.md §1.8).
    pub fn signature_digest(self) -> crate::core::pki::signing::SignatureDigest {
        match self {
            Self::Sha1 => crate::core::pki::signing::SignatureDigest::Sha1,
            Self::Sha512 => crate::core::pki::signing::SignatureDigest::Sha512,
        }
    }

    /// RSASSA-PKCS1-v1_5 with the standard DigestInfo prefix for this hash (docs/wire-formats.md §1.8).
    pub fn pkcs1v15(self) -> Pkcs1v15Sign {
        match self {
            Self::Sha1 => Pkcs1v15Sign::new::<Sha1>(),
            Self::Sha512 => Pkcs1v15Sign::new::<Sha512>(),
        }
    }
}

/// Record role ("function") codes (docs/wire-formats.md §1.7). Other codes decode as `Unknown(n)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Sast,
    Ccm,
    CcmTftp,
    Tftp,
    Capf,
    AppServer,
    Tvs,
    Unknown(u16),
}

impl Role {
    pub fn code(self) -> u16 {
        match self {
            Self::Sast => 0,
            Self::Ccm => 1,
            Self::CcmTftp => 2,
            Self::Tftp => 3,
            Self::Capf => 4,
            Self::AppServer => 7,
            Self::Tvs => 21,
            Self::Unknown(code) => code,
        }
    }

    pub fn from_code(code: u16) -> Self {
        match code {
            0 => Self::Sast,
            1 => Self::Ccm,
            2 => Self::CcmTftp,
            3 => Self::Tftp,
            4 => Self::Capf,
            7 => Self::AppServer,
            21 => Self::Tvs,
            other => Self::Unknown(other),
        }
    }

    pub fn name(self) -> String {
        match self {
            Self::Sast => "SAST".into(),
            Self::Ccm => "CCM".into(),
            Self::CcmTftp => "CCM+TFTP".into(),
            Self::Tftp => "TFTP".into(),
            Self::Capf => "CAPF".into(),
            Self::AppServer => "APP-SERVER".into(),
            Self::Tvs => "TVS".into(),
            Self::Unknown(code) => format!("UNKNOWN({code})"),
        }
    }

    /// Whether a certificate with this role may sign `.sgn` and `.enc.sgn` files (docs/wire-formats.md §3.8 step 4).
    pub fn signs_configuration(self) -> bool {
        matches!(self, Self::Tftp | Self::CcmTftp)
    }
}

impl Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name())
    }
}

/// SIGNER_VERSION (tag 0x1C), `.tlv` only. 1.1 enables EC record certificates (docs/wire-formats.md §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum SignerVersion {
    #[default]
    V1_0,
    V1_1,
}

impl SignerVersion {
    pub fn bytes(self) -> [u8; 2] {
        match self {
            Self::V1_0 => [1, 0],
            Self::V1_1 => [1, 1],
        }
    }

    pub fn from_bytes(major: u8, minor: u8) -> Result<Self, TrustError> {
        match (major, minor) {
            (1, 0) => Ok(Self::V1_0),
            (1, 1) => Ok(Self::V1_1),
            _ => Err(TrustError::UnsupportedSignerVersion { major, minor }),
        }
    }
}

/// SIGNATURE_MODULUS (tag 0x0B): the signer key size. 3072 bits has no code (docs/wire-formats.md §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ModulusCode {
    Bits512 = 0,
    Bits1024 = 1,
    Bits2048 = 2,
    Bits4096 = 3,
}

impl ModulusCode {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Result<Self, TrustError> {
        match code {
            0 => Ok(Self::Bits512),
            1 => Ok(Self::Bits1024),
            2 => Ok(Self::Bits2048),
            3 => Ok(Self::Bits4096),
            other => Err(TrustError::BadModulusCode(other)),
        }
    }

    /// The code for a signature of `bytes` bytes, if there is one.
    pub fn from_signature_len(bytes: usize) -> Option<Self> {
        match bytes {
            64 => Some(Self::Bits512),
            128 => Some(Self::Bits1024),
            256 => Some(Self::Bits2048),
            512 => Some(Self::Bits4096),
            _ => None,
        }
    }

    pub fn signature_len(self) -> usize {
        match self {
            Self::Bits512 => 64,
            Self::Bits1024 => 128,
            Self::Bits2048 => 256,
            Self::Bits4096 => 512,
        }
    }
}

/// The three file kinds, told apart by VERSION (docs/wire-formats.md §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FileKind {
    /// `.tlv` (CTL or ITL), VERSION 1.2.
    TrustList,
    /// `.sgn`, VERSION 1.0.
    Signed,
    /// `.enc.sgn`, VERSION 2.0.
    Encrypted,
}

impl FileKind {
    pub fn version(self) -> [u8; 2] {
        match self {
            Self::TrustList => [1, 2],
            Self::Signed => [1, 0],
            Self::Encrypted => [2, 0],
        }
    }

    pub fn from_version(major: u8, minor: u8) -> Result<Self, TrustError> {
        match (major, minor) {
            (1, 2) => Ok(Self::TrustList),
            (1, 0) => Ok(Self::Signed),
            (2, 0) => Ok(Self::Encrypted),
            _ => Err(TrustError::UnsupportedVersion { major, minor }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::TrustList => ".tlv",
            Self::Signed => ".sgn",
            Self::Encrypted => ".enc.sgn",
        }
    }
}

/// Header tags of `.tlv`, `.sgn` and `.enc.sgn` (docs/wire-formats.md §3.3, §5.2).
pub mod header_tag {
    pub const VERSION: u8 = 0x01;
    pub const HEADER_LENGTH: u8 = 0x02;
    pub const SIGNER_INFO: u8 = 0x03;
    pub const SIGNER_NAME: u8 = 0x04;
    pub const SIGNER_SERIAL: u8 = 0x05;
    pub const SIGNER_ISSUER: u8 = 0x06;
    pub const SIGNATURE_INFO: u8 = 0x07;
    pub const HASH_ALGORITHM: u8 = 0x08;
    pub const SIGNATURE_ALGORITHM_INFO: u8 = 0x09;
    pub const SIGNATURE_ALGORITHM: u8 = 0x0A;
    pub const SIGNATURE_MODULUS: u8 = 0x0B;
    pub const SIGNATURE: u8 = 0x0C;
    pub const PADDING: u8 = 0x0D;
    pub const FILENAME: u8 = 0x0E;
    pub const TIMESTAMP: u8 = 0x0F;
    pub const ENCRYPTION_INFO: u8 = 0x10;
    pub const ENCRYPTION_IV_INFO: u8 = 0x11;
    pub const IV_MARKER: u8 = 0x12;
    pub const IV: u8 = 0x13;
    pub const PAD_COUNT: u8 = 0x14;
    pub const ENCRYPTION_KEY_INFO: u8 = 0x15;
    pub const KEY_MARKER: u8 = 0x16;
    pub const KEY_SIZE: u8 = 0x17;
    pub const KEY_ALGORITHM: u8 = 0x18;
    pub const WRAPPED_KEY: u8 = 0x19;
    pub const PLAINTEXT_HASH_ALGORITHM: u8 = 0x1A;
    pub const PLAINTEXT_HASH: u8 = 0x1B;
    pub const SIGNER_VERSION: u8 = 0x1C;
}

/// Record tags of `.tlv` files (docs/wire-formats.md §3.6).
pub mod record_tag {
    pub const RECORD_LENGTH: u8 = 0x01;
    pub const DNS_NAME: u8 = 0x02;
    pub const SUBJECT_NAME: u8 = 0x03;
    pub const ROLE: u8 = 0x04;
    pub const ISSUER_NAME: u8 = 0x05;
    pub const SERIAL_NUMBER: u8 = 0x06;
    pub const PUBLIC_KEY: u8 = 0x07;
    pub const SIGNATURE: u8 = 0x08;
    pub const CERTIFICATE: u8 = 0x09;
    pub const IP_ADDRESS: u8 = 0x0A;
    pub const CERTIFICATE_HASH: u8 = 0x0B;
    pub const HASH_ALGORITHM: u8 = 0x0C;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_codes_round_trip_and_srst_stays_unknown() {
        for role in [Role::Sast, Role::Ccm, Role::CcmTftp, Role::Tftp, Role::Capf, Role::AppServer, Role::Tvs] {
            assert_eq!(Role::from_code(role.code()), role);
        }
        assert_eq!(Role::from_code(5), Role::Unknown(5));
        assert_eq!(Role::Tvs.code(), 21);
        assert_eq!(Role::AppServer.code(), 7);
    }

    #[test]
    fn sha256_code_is_rejected() {
        assert_eq!(HashAlgorithm::from_code(2), Err(TrustError::UnsupportedHashAlgorithm(2)));
        assert_eq!(HashAlgorithm::from_code(3), Ok(HashAlgorithm::Sha512));
    }

    #[test]
    fn modulus_codes_match_signature_lengths() {
        assert_eq!(ModulusCode::from_signature_len(256), Some(ModulusCode::Bits2048));
        assert_eq!(ModulusCode::from_signature_len(384), None);
        assert_eq!(ModulusCode::Bits1024.code(), 1);
    }
}
