//! A readable description of any trust file (`.tlv`, `.sgn`, `.enc.sgn`), told apart by VERSION, as text or
//! JSON. Describes; does not verify.

use std::fmt;

use serde::Serialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::certificate::KeyKind;
use super::codes::FileKind;
use super::error::TrustError;
use super::header::SignedHeader;
use super::names::hex;
use super::tlv::Mode;
use super::trust_list::{TrustList, TrustRecord};

/// Everything the file says.
#[derive(Debug, Clone, Serialize)]
pub struct FileDescription {
    /// `.tlv`, `.sgn` or `.enc.sgn`.
    pub kind: &'static str,
    pub file_length: usize,
    /// Strict or Lenient: the first mode that parsed the file.
    pub parsed_as: &'static str,
    /// Why the Strict parser refused the file, when only the Lenient one accepted it.
    pub strict_error: Option<String>,
    pub header: HeaderDescription,
    /// Records of a `.tlv`; empty otherwise.
    pub records: Vec<RecordDescription>,
    /// Payload (`.sgn`) or ciphertext (`.enc.sgn`) length; records' total length for `.tlv`.
    pub body_length: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct HeaderDescription {
    pub version: String,
    pub header_length: usize,
    pub signer_version: Option<String>,
    pub signer_name: String,
    pub signer_issuer: String,
    pub signer_serial_hex: String,
    pub hash_algorithm_code: u8,
    pub hash_algorithm: &'static str,
    pub signature_algorithm: u8,
    pub modulus_code: u8,
    pub signature_length: usize,
    pub signature_offset: usize,
    pub filename: String,
    pub timestamp: u32,
    pub timestamp_rfc3339: String,
    pub encryption: Option<EncryptionDescription>,
    pub pad_count: usize,
    /// Tags skipped in Lenient mode, as `0xNN`.
    pub unknown_tags: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EncryptionDescription {
    pub iv_marker: u8,
    pub iv_hex: String,
    pub pad_count: u16,
    pub key_marker: u8,
    pub key_size_bits: u16,
    pub key_algorithm: u8,
    pub wrapped_key_length: usize,
    pub plaintext_hash_algorithm: &'static str,
    pub plaintext_hash_hex: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecordDescription {
    pub role: String,
    pub role_code: u16,
    pub subject: String,
    pub issuer: String,
    pub serial_hex: String,
    pub public_key: KeyKind,
    pub public_key_length: usize,
    pub certificate_sha256: String,
    pub certificate_length: usize,
    pub dns_name: Option<String>,
    pub certificate_hash_hex: Option<String>,
    /// Decode-only (0x02, 0x0A, 0x0B, 0x0C) and Lenient-skipped tags, as `0xNN`.
    pub decode_only_tags: Vec<String>,
}

/// Describes `bytes`: Strict first, Lenient when Strict refuses (the Strict error is kept).
pub fn describe(bytes: &[u8]) -> Result<FileDescription, TrustError> {
    match describe_in(bytes, Mode::Strict) {
        Ok(description) => Ok(description),
        Err(strict) => {
            let mut description = describe_in(bytes, Mode::Lenient).map_err(|_| strict.clone())?;
            description.strict_error = Some(strict.to_string());
            Ok(description)
        }
    }
}

/// Describes `bytes` parsed in `mode` only.
pub fn describe_in(bytes: &[u8], mode: Mode) -> Result<FileDescription, TrustError> {
    let header = super::header::parse_header(bytes, mode)?;
    let records = if header.kind == FileKind::TrustList {
        TrustList::parse(bytes, mode)?.records.iter().map(describe_record).collect()
    } else {
        Vec::new()
    };
    Ok(FileDescription {
        kind: header.kind.name(),
        file_length: bytes.len(),
        parsed_as: match mode {
            Mode::Strict => "strict",
            Mode::Lenient => "lenient",
        },
        strict_error: None,
        body_length: header.body(bytes).len(),
        header: describe_header(&header),
        records,
    })
}

fn tag_names(tags: &[u8]) -> Vec<String> {
    tags.iter().map(|t| format!("0x{t:02X}")).collect()
}

/// RFC 3339 in UTC, by hand: the `time` crate's formatting feature is not enabled here.
fn rfc3339(timestamp: u32) -> String {
    match OffsetDateTime::from_unix_timestamp(i64::from(timestamp)) {
        Ok(t) => {
            format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second())
        }
        Err(_) => String::new(),
    }
}

fn describe_header(header: &SignedHeader) -> HeaderDescription {
    HeaderDescription {
        version: format!("{}.{}", header.version[0], header.version[1]),
        header_length: header.header_length,
        signer_version: header.signer_version.map(|v| {
            let [major, minor] = v.bytes();
            format!("{major}.{minor}")
        }),
        signer_name: header.signer_name.clone(),
        signer_issuer: header.signer_issuer.clone(),
        signer_serial_hex: hex(&header.signer_serial),
        hash_algorithm_code: header.hash.code(),
        hash_algorithm: header.hash.name(),
        signature_algorithm: header.signature_algorithm,
        modulus_code: header.modulus.code(),
        signature_length: header.signature.len(),
        signature_offset: header.signature_offset,
        filename: header.filename.clone(),
        timestamp: header.timestamp,
        timestamp_rfc3339: rfc3339(header.timestamp),
        encryption: header.encryption.as_ref().map(|e| EncryptionDescription {
            iv_marker: e.iv_marker,
            iv_hex: hex(&e.iv),
            pad_count: e.pad_count,
            key_marker: e.key_marker,
            key_size_bits: e.key_size_bits,
            key_algorithm: e.key_algorithm,
            wrapped_key_length: e.wrapped_key.len(),
            plaintext_hash_algorithm: e.plaintext_hash_algorithm.name(),
            plaintext_hash_hex: hex(&e.plaintext_hash),
        }),
        pad_count: header.pad_count,
        unknown_tags: tag_names(&header.unknown_tags),
    }
}

fn describe_record(record: &TrustRecord) -> RecordDescription {
    RecordDescription {
        role: record.role.name(),
        role_code: record.role.code(),
        subject: record.subject.clone(),
        issuer: record.issuer.clone(),
        serial_hex: hex(&record.serial),
        public_key: record.key_kind(),
        public_key_length: record.public_key.len(),
        certificate_sha256: hex(&Sha256::digest(&record.certificate_der)),
        certificate_length: record.certificate_der.len(),
        dns_name: record.dns_name.clone(),
        certificate_hash_hex: record.certificate_hash.as_deref().map(hex),
        decode_only_tags: tag_names(&record.decode_only_tags),
    }
}

impl fmt::Display for FileDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = &self.header;
        writeln!(f, "{} file, {} bytes (parsed {})", self.kind, self.file_length, self.parsed_as)?;
        if let Some(error) = &self.strict_error {
            writeln!(f, "  strict parse failed: {error}")?;
        }
        writeln!(f, "Header ({} bytes)", h.header_length)?;
        writeln!(f, "  version            {}", h.version)?;
        if let Some(signer_version) = &h.signer_version {
            writeln!(f, "  signer version     {signer_version}")?;
        }
        writeln!(f, "  signer name        {}", h.signer_name)?;
        writeln!(f, "  signer issuer      {}", h.signer_issuer)?;
        writeln!(f, "  signer serial      {}", h.signer_serial_hex)?;
        writeln!(f, "  hash algorithm     {} ({})", h.hash_algorithm_code, h.hash_algorithm)?;
        writeln!(f, "  signature alg.     {}", h.signature_algorithm)?;
        writeln!(f, "  modulus code       {}", h.modulus_code)?;
        writeln!(f, "  signature          {} bytes at offset {}", h.signature_length, h.signature_offset)?;
        writeln!(f, "  filename           {}", h.filename)?;
        writeln!(f, "  timestamp          {} ({})", h.timestamp, h.timestamp_rfc3339)?;
        if let Some(e) = &h.encryption {
            writeln!(f, "  encryption")?;
            writeln!(f, "    iv               {} (marker {})", e.iv_hex, e.iv_marker)?;
            writeln!(f, "    pad count        {}", e.pad_count)?;
            writeln!(f, "    key size         {} bits (marker {})", e.key_size_bits, e.key_marker)?;
            writeln!(f, "    key algorithm    {}", e.key_algorithm)?;
            writeln!(f, "    wrapped key      {} bytes", e.wrapped_key_length)?;
            writeln!(f, "    plaintext hash   {} {}", e.plaintext_hash_algorithm, e.plaintext_hash_hex)?;
        }
        writeln!(f, "  pad bytes          {}", h.pad_count)?;
        if !h.unknown_tags.is_empty() {
            writeln!(f, "  skipped tags       {}", h.unknown_tags.join(" "))?;
        }
        if self.kind == FileKind::TrustList.name() {
            writeln!(f, "Records ({})", self.records.len())?;
            for (index, r) in self.records.iter().enumerate() {
                writeln!(f, "  [{}] {} (role {})", index + 1, r.role, r.role_code)?;
                writeln!(f, "      subject        {}", r.subject)?;
                writeln!(f, "      issuer         {}", r.issuer)?;
                writeln!(f, "      serial         {}", r.serial_hex)?;
                writeln!(f, "      public key     {} ({} bytes)", r.public_key, r.public_key_length)?;
                writeln!(f, "      certificate    {} bytes, SHA-256 {}", r.certificate_length, r.certificate_sha256)?;
                if let Some(dns) = &r.dns_name {
                    writeln!(f, "      dns name       {dns}")?;
                }
                if let Some(hash) = &r.certificate_hash_hex {
                    writeln!(f, "      cert hash      {hash}")?;
                }
                if !r.decode_only_tags.is_empty() {
                    writeln!(f, "      decode-only    {}", r.decode_only_tags.join(" "))?;
                }
            }
        } else {
            writeln!(f, "Body: {} bytes", self.body_length)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_the_spec_timestamp() {
        assert_eq!(rfc3339(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
