//! Signed files (`.sgn`): any file a phone downloads, behind a VERSION 1.0 header signed by the TFTP key
//! (docs/wire-formats.md §4).

use super::codes::{FileKind, HashAlgorithm, SignerVersion};
use super::error::TrustError;
use super::header::{HeaderFields, SignedHeader, Signer, assemble_signed, check_filename, parse_header};
use super::tlv::Mode;
use super::trust_list::{TrustList, TrustRecord, verify_by_records};

/// Who is trusted to have signed a `.sgn` or `.enc.sgn` file.
#[derive(Debug, Clone, Copy)]
pub enum SignatureCheck<'a> {
    /// A TFTP or CCM+TFTP record of this trust list, matched by serial (docs/wire-formats.md §3.8 step 4).
    TrustList(&'a TrustList),
    /// This DER certificate, whose serial must equal SIGNER_SERIAL.
    Certificate(&'a [u8]),
}

/// Checks a relative TFTP path: `/` separators, no leading `/`, no empty, `.` or `..` segments (docs/wire-formats.md §4).
pub fn check_relative_path(path: &str) -> Result<(), TrustError> {
    check_filename(path)?;
    if path.contains('\\') {
        return Err(TrustError::BadFilename(format!("{path:?}: use `/` separators")));
    }
    if path.split('/').any(|segment| segment.is_empty() || segment == "." || segment == "..") {
        return Err(TrustError::BadFilename(format!("{path:?} is not a path relative to the TFTP root")));
    }
    Ok(())
}

/// The header FILENAME and served name of the signed form of `path`: `path` + `.sgn`.
pub fn signed_filename(path: &str) -> Result<String, TrustError> {
    check_relative_path(path)?;
    Ok(format!("{path}.sgn"))
}

/// Signs `payload`, the file served unsigned at `path` (relative to the TFTP root), as `path.sgn`
/// (docs/wire-formats.md §4). The payload may be empty.
pub fn sign(payload: &[u8], path: &str, signer: &Signer, hash: HashAlgorithm, timestamp: u32) -> Result<Vec<u8>, TrustError> {
    let filename = signed_filename(path)?;
    let fields = HeaderFields {
        kind: FileKind::Signed,
        signer_version: SignerVersion::V1_0,
        hash,
        filename: &filename,
        timestamp,
        extra_elements: &[],
    };
    assemble_signed(&fields, signer, payload)
}

/// The payload of a `.sgn` file: everything from HEADER_LENGTH on. Does not verify.
pub fn strip(file: &[u8]) -> Result<&[u8], TrustError> {
    let header = parse_header(file, Mode::Lenient)?;
    if header.kind != FileKind::Signed {
        return Err(TrustError::WrongFileKind { expected: FileKind::Signed.name(), found: header.kind.name() });
    }
    Ok(header.body(file))
}

/// A parsed `.sgn` file with its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedFile {
    pub header: SignedHeader,
    bytes: Vec<u8>,
}

impl SignedFile {
    /// Parses a `.sgn` file. Does not verify the signature.
    pub fn parse(bytes: &[u8], mode: Mode) -> Result<Self, TrustError> {
        let header = parse_header(bytes, mode)?;
        if header.kind != FileKind::Signed {
            return Err(TrustError::WrongFileKind { expected: FileKind::Signed.name(), found: header.kind.name() });
        }
        Ok(SignedFile { header, bytes: bytes.to_vec() })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The original file, verbatim.
    pub fn payload(&self) -> &[u8] {
        self.header.body(&self.bytes)
    }

    /// Verifies the signature (docs/wire-formats.md §3.8 steps 4-5).
    pub fn verify(&self, check: SignatureCheck<'_>) -> Result<(), TrustError> {
        verify_configuration(&self.header, &self.bytes, check).map(|_| ())
    }
}

/// §3.8 steps 4-5 for `.sgn` and `.enc.sgn`. Returns the trust-list record that verified, if one was used.
pub(crate) fn verify_configuration<'t>(
    header: &SignedHeader,
    file: &[u8],
    check: SignatureCheck<'t>,
) -> Result<Option<&'t TrustRecord>, TrustError> {
    match check {
        SignatureCheck::TrustList(list) => verify_by_records(header, file, list.configuration_signers()).map(Some),
        SignatureCheck::Certificate(der) => header.verify_with_certificate(file, der).map(|()| None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_keep_slashes_and_refuse_escapes() {
        assert_eq!(signed_filename("Desktops/320x196x4/List.xml").unwrap(), "Desktops/320x196x4/List.xml.sgn");
        assert_eq!(signed_filename("SEP001122334455.cnf.xml").unwrap(), "SEP001122334455.cnf.xml.sgn");
        for bad in ["", "/etc/passwd", "a//b", "../x", "a/./b", "a\\b", "caf\u{e9}"] {
            assert!(signed_filename(bad).is_err(), "{bad:?}");
        }
    }
}
