//! CTL and ITL files (`.tlv`): records (docs/wire-formats.md §3.6), the build procedure (§3.7), parse and verify (§3.8).

use std::collections::BTreeSet;

use rsa::RsaPublicKey;
use rsa::pkcs1::DecodeRsaPublicKey;

use super::certificate::{CertificateFields, CertificateKey, KeyKind};
use super::codes::{FileKind, HashAlgorithm, Role, SignerVersion, record_tag as tag};
use super::error::TrustError;
use super::header::{HeaderFields, SignedHeader, Signer, assemble_signed, parse_header};
use super::names::serials_equal;
use super::tlv::{self, Elements, Mode};

/// Files above this size are refused: phones fail to load ITLs over 64 KB (docs/wire-formats.md §3.7 step 4).
pub const MAX_FILE_SIZE: usize = 65_536;
/// More records than this give a `ManyRecords` warning (docs/wire-formats.md §3.7 step 4).
pub const MANY_RECORDS: usize = 39;
/// At most two SAST records per file (docs/wire-formats.md §1.7).
pub const MAX_SAST: usize = 2;
/// RECORD_LENGTH is itself a 5-byte element.
const RECORD_LENGTH_ELEMENT: usize = 5;

/// The two trust lists; they share one format (docs/wire-formats.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum TrustListKind {
    Ctl,
    Itl,
}

impl TrustListKind {
    /// The generic header FILENAME, which per-MAC files carry too (docs/wire-formats.md §3.1).
    pub fn filename(self) -> &'static str {
        match self {
            TrustListKind::Ctl => "CTLFile.tlv",
            TrustListKind::Itl => "ITLFile.tlv",
        }
    }

    pub fn from_filename(filename: &str) -> Option<Self> {
        match filename {
            "CTLFile.tlv" => Some(TrustListKind::Ctl),
            "ITLFile.tlv" => Some(TrustListKind::Itl),
            _ => None,
        }
    }
}

/// One (certificate, role) record of a trust list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRecord {
    pub role: Role,
    /// DER X.509 (tag 0x09). Empty only for a Lenient record that has none.
    pub certificate_der: Vec<u8>,
    /// §1.4 string without NUL (tag 0x03).
    pub subject: String,
    /// §1.4 string without NUL (tag 0x05).
    pub issuer: String,
    /// §1.5 magnitude (tag 0x06).
    pub serial: Vec<u8>,
    /// DER RSAPublicKey or X9.62 uncompressed point (tag 0x07).
    pub public_key: Vec<u8>,
    /// The certificate's own signature bytes (tag 0x08).
    pub signature: Vec<u8>,
    /// Decode only: DNS_NAME (0x02).
    pub dns_name: Option<String>,
    /// Decode only: CERTIFICATE_HASH (0x0B).
    pub certificate_hash: Option<Vec<u8>>,
    /// Decode-only and (Lenient) unknown tags met in this record, in file order.
    pub decode_only_tags: Vec<u8>,
}

impl TrustRecord {
    /// The record for `certificate_der` in `role`, with every field taken from the certificate. Refuses keys
    /// other than RSA and uncompressed EC points.
    pub fn new(certificate_der: &[u8], role: Role) -> Result<Self, TrustError> {
        let facts = CertificateFields::from_der(certificate_der)?;
        match &facts.key {
            CertificateKey::Rsa(_) => {}
            CertificateKey::Ec(point) if point.first() == Some(&4) => {}
            CertificateKey::Ec(_) => return Err(TrustError::UnsupportedRecordKey("compressed EC point".into())),
            CertificateKey::Other(oid) => return Err(TrustError::UnsupportedRecordKey(format!("key algorithm {oid}"))),
        }
        Ok(TrustRecord {
            role,
            certificate_der: facts.der,
            subject: facts.subject,
            issuer: facts.issuer,
            serial: facts.serial,
            public_key: facts.public_key_bytes,
            signature: facts.signature,
            dns_name: None,
            certificate_hash: None,
            decode_only_tags: Vec::new(),
        })
    }

    /// Tags 1, 3, 5, 6, 4, 7, 8, 9 in that order; RECORD_LENGTH counts the whole record (docs/wire-formats.md §3.6).
    pub fn encode(&self) -> Result<Vec<u8>, TrustError> {
        let mut elements = Vec::with_capacity(self.certificate_der.len() + self.public_key.len() + self.signature.len() + 128);
        tlv::encode_into(&mut elements, tag::SUBJECT_NAME, &tlv::with_nul(&self.subject))?;
        tlv::encode_into(&mut elements, tag::ISSUER_NAME, &tlv::with_nul(&self.issuer))?;
        tlv::encode_into(&mut elements, tag::SERIAL_NUMBER, &self.serial)?;
        tlv::encode_into(&mut elements, tag::ROLE, &self.role.code().to_be_bytes())?;
        tlv::encode_into(&mut elements, tag::PUBLIC_KEY, &self.public_key)?;
        tlv::encode_into(&mut elements, tag::SIGNATURE, &self.signature)?;
        tlv::encode_into(&mut elements, tag::CERTIFICATE, &self.certificate_der)?;
        let total = RECORD_LENGTH_ELEMENT + elements.len();
        let record_length = u16::try_from(total).map_err(|_| TrustError::ValueTooLong { tag: tag::RECORD_LENGTH, length: total })?;
        let mut record = tlv::encode(tag::RECORD_LENGTH, &record_length.to_be_bytes())?;
        record.extend_from_slice(&elements);
        Ok(record)
    }

    /// The key kind, from the certificate when it parses, else from PUBLIC_KEY.
    pub fn key_kind(&self) -> KeyKind {
        match CertificateFields::from_der(&self.certificate_der) {
            Ok(facts) => facts.key.kind(),
            Err(_) => match (self.public_key.first(), RsaPublicKey::from_pkcs1_der(&self.public_key)) {
                (_, Ok(key)) => CertificateKey::Rsa(key).kind(),
                (Some(4), _) => CertificateKey::Ec(self.public_key.clone()).kind(),
                _ => KeyKind::Other,
            },
        }
    }

    /// The RSA key that verifies signatures made by this record's certificate.
    pub fn rsa_public_key(&self) -> Option<RsaPublicKey> {
        match CertificateFields::from_der(&self.certificate_der) {
            Ok(facts) => match facts.key {
                CertificateKey::Rsa(key) => Some(key),
                _ => None,
            },
            Err(_) => RsaPublicKey::from_pkcs1_der(&self.public_key).ok(),
        }
    }
}

/// Non-fatal findings of a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildWarning {
    /// More than 39 records: near the size at which phones fail to load the file (docs/wire-formats.md §3.7 step 4).
    ManyRecords { count: usize },
}

impl std::fmt::Display for BuildWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildWarning::ManyRecords { count } => {
                write!(f, "{count} records, more than {MANY_RECORDS}: phones may fail to load the file (docs/wire-formats.md §3.7 step 4)")
            }
        }
    }
}

/// A built trust list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltTrustList {
    pub bytes: Vec<u8>,
    pub warnings: Vec<BuildWarning>,
    /// Records after CCM+TFTP merging, in file order.
    pub records: Vec<TrustRecord>,
}

/// Builds a CTL or ITL (docs/wire-formats.md §3.7).
#[derive(Debug, Clone)]
pub struct TrustFileBuilder<'a> {
    pub kind: TrustListKind,
    /// Header FILENAME; defaults to the kind's generic name.
    pub filename: String,
    pub signer: &'a Signer,
    pub hash: HashAlgorithm,
    pub signer_version: SignerVersion,
    /// Unix seconds: when the record set last changed, not the wall clock (docs/wire-formats.md §3.7 step 5).
    pub timestamp: u32,
    /// The previously published file with the same served name; `None` only for a new trust domain.
    pub previous: Option<&'a TrustList>,
    /// (certificate DER, role) pairs in any order.
    pub records: Vec<(Vec<u8>, Role)>,
}

impl<'a> TrustFileBuilder<'a> {
    /// SHA-1, signer version 1.0, no previous file, no records.
    pub fn new(kind: TrustListKind, signer: &'a Signer, timestamp: u32) -> Self {
        TrustFileBuilder {
            kind,
            filename: kind.filename().to_string(),
            signer,
            hash: HashAlgorithm::Sha1,
            signer_version: SignerVersion::V1_0,
            timestamp,
            previous: None,
            records: Vec::new(),
        }
    }

    pub fn record(mut self, certificate_der: &[u8], role: Role) -> Self {
        self.records.push((certificate_der.to_vec(), role));
        self
    }

    pub fn hash(mut self, hash: HashAlgorithm) -> Self {
        self.hash = hash;
        self
    }

    pub fn signer_version(mut self, signer_version: SignerVersion) -> Self {
        self.signer_version = signer_version;
        self
    }

    pub fn previous(mut self, previous: &'a TrustList) -> Self {
        self.previous = Some(previous);
        self
    }

    pub fn filename(mut self, filename: &str) -> Self {
        self.filename = filename.to_string();
        self
    }

    /// Validates, orders, assembles and signs.
    pub fn build(&self) -> Result<BuiltTrustList, TrustError> {
        let signer_facts = self.signer.fields();
        self.signer.check_hash(self.hash)?;
        let records = self.validated_records(&signer_facts.der)?;
        if let Some(previous) = self.previous
            && !previous.sast_records().any(|r| r.certificate_der == signer_facts.der)
        {
            return Err(TrustError::BrokenTrustChain);
        }
        let mut body = Vec::new();
        for record in &records {
            body.extend_from_slice(&record.encode()?);
        }
        let fields = HeaderFields {
            kind: FileKind::TrustList,
            signer_version: self.signer_version,
            hash: self.hash,
            filename: &self.filename,
            timestamp: self.timestamp,
            extra_elements: &[],
        };
        let bytes = assemble_signed(&fields, self.signer, &body)?;
        if bytes.len() > MAX_FILE_SIZE {
            return Err(TrustError::FileTooLarge { size: bytes.len(), limit: MAX_FILE_SIZE });
        }
        let warnings = if records.len() > MANY_RECORDS { vec![BuildWarning::ManyRecords { count: records.len() }] } else { Vec::new() };
        Ok(BuiltTrustList { bytes, warnings, records })
    }

    /// §3.7 step 1 and the §3.6 order.
    fn validated_records(&self, signer_der: &[u8]) -> Result<Vec<TrustRecord>, TrustError> {
        let mut pairs: Vec<(&[u8], Role)> = Vec::with_capacity(self.records.len());
        let mut seen = BTreeSet::new();
        for (der, role) in &self.records {
            if matches!(role, Role::Unknown(_)) {
                return Err(TrustError::RoleNotEmitted(role.code()));
            }
            if !seen.insert((der.as_slice(), *role)) {
                return Err(TrustError::DuplicateRecord { role: role.code() });
            }
            pairs.push((der.as_slice(), *role));
        }
        // One certificate that holds CCM and TFTP gets one CCM+TFTP record (docs/wire-formats.md §1.7, §3.7).
        let holds = |der: &[u8], role: Role| seen.contains(&(der, role));
        let mut merged: Vec<(&[u8], Role)> = Vec::with_capacity(pairs.len());
        for (der, role) in pairs {
            let combined = holds(der, Role::CcmTftp) || (holds(der, Role::Ccm) && holds(der, Role::Tftp));
            let role = if combined && matches!(role, Role::Ccm | Role::Tftp) { Role::CcmTftp } else { role };
            if !merged.contains(&(der, role)) {
                merged.push((der, role));
            }
        }

        let mut records = Vec::with_capacity(merged.len());
        for (der, role) in merged {
            let record = TrustRecord::new(der, role)?;
            if matches!(record.key_kind(), KeyKind::Ec { .. }) && self.signer_version != SignerVersion::V1_1 {
                return Err(TrustError::EcRecordNeedsSignerVersion11);
            }
            records.push(record);
        }
        let sast_count = records.iter().filter(|r| r.role == Role::Sast).count();
        if sast_count > MAX_SAST {
            return Err(TrustError::TooManySast(sast_count));
        }
        if !records.iter().any(|r| r.role == Role::Sast && r.certificate_der == signer_der) {
            return Err(TrustError::SignerNotInRecords);
        }
        // Role ascending, the signing SAST first among SASTs, then DER ascending (docs/wire-formats.md §3.6).
        records.sort_by(|a, b| {
            let key = |r: &TrustRecord| (r.role.code(), r.certificate_der != signer_der);
            key(a).cmp(&key(b)).then_with(|| a.certificate_der.cmp(&b.certificate_der))
        });
        Ok(records)
    }
}

/// A parsed CTL or ITL with its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustList {
    pub header: SignedHeader,
    pub records: Vec<TrustRecord>,
    bytes: Vec<u8>,
}

impl TrustList {
    /// Parses a `.tlv` file (docs/wire-formats.md §3.8 steps 1-3). Does not verify the signature.
    pub fn parse(bytes: &[u8], mode: Mode) -> Result<Self, TrustError> {
        let header = parse_header(bytes, mode)?;
        if header.kind != FileKind::TrustList {
            return Err(TrustError::WrongFileKind { expected: FileKind::TrustList.name(), found: header.kind.name() });
        }
        let records = parse_records(bytes, header.header_length, mode)?;
        if mode == Mode::Strict {
            let sast_count = records.iter().filter(|r| r.role == Role::Sast).count();
            if sast_count > MAX_SAST {
                return Err(TrustError::TooManySast(sast_count));
            }
        }
        Ok(TrustList { header, records, bytes: bytes.to_vec() })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// CTL or ITL by the header FILENAME; `None` for other names.
    pub fn kind(&self) -> Option<TrustListKind> {
        TrustListKind::from_filename(&self.header.filename)
    }

    pub fn sast_records(&self) -> impl Iterator<Item = &TrustRecord> {
        self.records.iter().filter(|r| r.role == Role::Sast)
    }

    /// Self-consistency: the file verifies with its own SAST record whose serial is SIGNER_SERIAL
    /// (docs/wire-formats.md §3.8 steps 4-5). Returns that record.
    pub fn verify(&self) -> Result<&TrustRecord, TrustError> {
        verify_by_records(&self.header, &self.bytes, self.sast_records())
    }

    /// Trust continuity: the file verifies with a SAST record of `trusted`, the list the phone already holds
    /// (docs/wire-formats.md §3.9). Returns the record of `trusted` that verified it.
    pub fn verify_against<'t>(&self, trusted: &'t TrustList) -> Result<&'t TrustRecord, TrustError> {
        verify_by_records(&self.header, &self.bytes, trusted.sast_records())
    }

    /// The records that may sign `.sgn` and `.enc.sgn` files: TFTP and CCM+TFTP.
    pub fn configuration_signers(&self) -> impl Iterator<Item = &TrustRecord> {
        self.records.iter().filter(|r| r.role.signs_configuration())
    }
}

/// §3.8 steps 4-5: every candidate whose serial equals SIGNER_SERIAL is tried.
pub(crate) fn verify_by_records<'r>(
    header: &SignedHeader,
    file: &[u8],
    candidates: impl Iterator<Item = &'r TrustRecord>,
) -> Result<&'r TrustRecord, TrustError> {
    let mut matched = false;
    for record in candidates.filter(|r| serials_equal(&r.serial, &header.signer_serial)) {
        matched = true;
        if let Some(key) = record.rsa_public_key()
            && header.verify(file, &key).is_ok()
        {
            return Ok(record);
        }
    }
    if matched { Err(TrustError::BadSignature) } else { Err(TrustError::SignerNotFound) }
}

/// §3.8 step 3.
fn parse_records(file: &[u8], header_length: usize, mode: Mode) -> Result<Vec<TrustRecord>, TrustError> {
    let mut records = Vec::new();
    let mut position = header_length;
    while position < file.len() {
        let length_element = tlv::read_element(file, position, file.len())?;
        if length_element.tag != tag::RECORD_LENGTH || length_element.value.len() != 2 {
            return Err(TrustError::MissingElement { tag: tag::RECORD_LENGTH, name: "RECORD_LENGTH" });
        }
        let record_length = usize::from(u16::from_be_bytes([length_element.value[0], length_element.value[1]]));
        if record_length < RECORD_LENGTH_ELEMENT || position + record_length > file.len() {
            return Err(TrustError::BadRecordLength { offset: position, length: record_length });
        }
        records.push(parse_record(file, position, position + record_length, mode)?);
        position += record_length;
    }
    Ok(records)
}

fn parse_record(file: &[u8], start: usize, end: usize, mode: Mode) -> Result<TrustRecord, TrustError> {
    let mut record = TrustRecord {
        role: Role::Unknown(u16::MAX),
        certificate_der: Vec::new(),
        subject: String::new(),
        issuer: String::new(),
        serial: Vec::new(),
        public_key: Vec::new(),
        signature: Vec::new(),
        dns_name: None,
        certificate_hash: None,
        decode_only_tags: Vec::new(),
    };
    let mut seen = [false; 256];
    let mut role = None;
    for element in Elements::new(file, start + RECORD_LENGTH_ELEMENT, end) {
        let element = match (mode, element) {
            (_, Ok(element)) => element,
            (Mode::Strict, Err(e)) => return Err(e),
            // Lenient: keep what was read before the bytes stopped making sense.
            (Mode::Lenient, Err(_)) => break,
        };
        let known = (tag::DNS_NAME..=tag::HASH_ALGORITHM).contains(&element.tag);
        if !known {
            match mode {
                Mode::Strict => return Err(TrustError::UnknownTag { tag: element.tag, offset: element.offset }),
                Mode::Lenient => {
                    record.decode_only_tags.push(element.tag);
                    continue;
                }
            }
        }
        let repeated = std::mem::replace(&mut seen[usize::from(element.tag)], true);
        if repeated {
            match mode {
                Mode::Strict => return Err(TrustError::DuplicateTag { tag: element.tag, offset: element.offset }),
                Mode::Lenient => continue,
            }
        }
        let text = |value: &[u8]| match mode {
            Mode::Strict => tlv::nul_terminated(element.tag, value),
            Mode::Lenient => Ok(String::from_utf8_lossy(value.strip_suffix(&[0]).unwrap_or(value)).into_owned()),
        };
        match element.tag {
            tag::SUBJECT_NAME => record.subject = text(element.value)?,
            tag::ISSUER_NAME => record.issuer = text(element.value)?,
            tag::SERIAL_NUMBER => record.serial = element.value.to_vec(),
            tag::ROLE => role = Some(Role::from_code(u16::from_be_bytes(tlv::fixed::<2>(&element)?))),
            tag::PUBLIC_KEY => record.public_key = element.value.to_vec(),
            tag::SIGNATURE => record.signature = element.value.to_vec(),
            tag::CERTIFICATE => record.certificate_der = element.value.to_vec(),
            tag::DNS_NAME => {
                record.dns_name = Some(text(element.value)?);
                record.decode_only_tags.push(element.tag);
            }
            tag::CERTIFICATE_HASH => {
                record.certificate_hash = Some(element.value.to_vec());
                record.decode_only_tags.push(element.tag);
            }
            // IP_ADDRESS and HASH_ALGORITHM: encodings unknown, skipped (docs/wire-formats.md §3.6).
            _ => record.decode_only_tags.push(element.tag),
        }
    }
    record.role = role.ok_or(TrustError::MissingElement { tag: tag::ROLE, name: "ROLE" })?;
    if mode == Mode::Strict {
        check_strict_record(&record, start)?;
    }
    Ok(record)
}

/// Strict records carry SERIAL_NUMBER and CERTIFICATE, and agree with the certificate (docs/wire-formats.md §3.6).
fn check_strict_record(record: &TrustRecord, offset: usize) -> Result<(), TrustError> {
    if record.serial.is_empty() {
        return Err(TrustError::MissingElement { tag: tag::SERIAL_NUMBER, name: "SERIAL_NUMBER" });
    }
    if record.certificate_der.is_empty() {
        return Err(TrustError::MissingElement { tag: tag::CERTIFICATE, name: "CERTIFICATE" });
    }
    let facts = CertificateFields::from_der(&record.certificate_der)?;
    if !serials_equal(&facts.serial, &record.serial) {
        return Err(TrustError::RecordInconsistent { offset, field: "SERIAL_NUMBER" });
    }
    if !record.public_key.is_empty() && facts.public_key_bytes != record.public_key {
        return Err(TrustError::RecordInconsistent { offset, field: "PUBLIC_KEY" });
    }
    Ok(())
}
