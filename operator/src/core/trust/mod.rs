//! Cisco trust files, byte for byte (docs/wire-formats.md §1-5): CTL/ITL (`.tlv`), signed files (`.sgn`) and encrypted
//! configuration (`.enc.sgn`), with a parser, a verifier and a readable description for each.

pub mod certificate;
pub mod cli;
pub mod codes;
pub mod encrypted;
pub mod error;
pub mod header;
pub mod inspect;
pub mod names;
pub mod signed;
pub mod tlv;
pub mod trust_list;

pub use certificate::{CertificateFields, CertificateKey, KeyKind};
pub use codes::{FileKind, HashAlgorithm, ModulusCode, Role, SignerVersion};
pub use encrypted::{EncryptedConfigBuilder, EncryptedFile};
pub use error::TrustError;
pub use header::{EncryptionElements, HeaderFields, SignedHeader, Signer, assemble_signed, parse_header};
pub use inspect::{FileDescription, describe};
pub use signed::{SignatureCheck, SignedFile};
pub use tlv::Mode;
pub use trust_list::{BuildWarning, BuiltTrustList, TrustFileBuilder, TrustList, TrustListKind, TrustRecord};
