//! The signed header shared by `.tlv`, `.sgn` and `.enc.sgn`: assembly with its length arithmetic (docs/wire-formats.md §3.3,
//! §3.4), and the parse-and-verify procedure (docs/wire-formats.md §3.8 steps 1, 2 and 5).

use std::sync::Arc;

use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde::Serialize;

use super::certificate::CertificateFields;
use super::codes::{FileKind, HashAlgorithm, ModulusCode, SignerVersion, header_tag as tag};
use super::error::TrustError;
use super::tlv::{self, ELEMENT_OVERHEAD, Element, Elements, Mode};
use crate::core::pki::signing::RsaSigningKey;

/// Offset of HEADER_LENGTH's value: after VERSION (5 bytes) and HEADER_LENGTH's tag and length.
const HEADER_LENGTH_VALUE_OFFSET: usize = 8;
/// VERSION and HEADER_LENGTH, the fixed preamble every file starts with.
const PREAMBLE_LENGTH: usize = 10;

/// The RSA key that signs a file and its certificate (SAST for `.tlv`, TFTP or CCM+TFTP for `.sgn`/`.enc.sgn`).
///
/// Built with [`Signer::new`], which applies the signer key rules of docs/wire-formats.md §3.3.
#[derive(Clone)]
pub struct Signer {
    key: RsaPrivateKey,
    /// The certificate's fields, checked against the key rules once, at construction.
    fields: CertificateFields,
    /// The key loaded into OpenSSL once, for fast signing (see `pki::signing`).
    signing: Arc<RsaSigningKey>,
}

impl Signer {
    /// Checks §3.3: an RSA certificate whose key is `key`, of 2048 bits, or 1024 bits when `legacy_signer_keys`
    /// (the trust domain's `legacySignerKeys`) is set. 512, 3072, 4096 and EC signers are refused.
    pub fn new(certificate_der: Vec<u8>, key: RsaPrivateKey, legacy_signer_keys: bool) -> Result<Self, TrustError> {
        let fields = CertificateFields::from_der(&certificate_der)?;
        if *fields.rsa_key()? != RsaPublicKey::from(&key) {
            return Err(TrustError::SignerKeyRefused("the private key does not belong to the signer certificate".into()));
        }
        match key.n().bits() {
            2048 => {}
            1024 if legacy_signer_keys => {}
            1024 => return Err(TrustError::SignerKeyRefused("RSA-1024 needs the trust domain's legacySignerKeys flag".into())),
            bits => return Err(TrustError::SignerKeyRefused(format!("RSA-{bits}; signers are RSA-2048 (1024 with legacySignerKeys)"))),
        }
        let signing = Arc::new(RsaSigningKey::new(&key).map_err(|e| TrustError::SignerKeyRefused(e.to_string()))?);
        Ok(Signer { key, fields, signing })
    }

    /// The signer's certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.fields.der
    }

    pub fn key(&self) -> &RsaPrivateKey {
        &self.key
    }

    /// The certificate's values the header carries.
    pub(crate) fn fields(&self) -> &CertificateFields {
        &self.fields
    }

    /// SHA-512 needs a 2048-bit signer (docs/wire-formats.md §3.7 step 1).
    pub fn check_hash(&self, hash: HashAlgorithm) -> Result<(), TrustError> {
        if hash == HashAlgorithm::Sha512 && self.key.n().bits() < 2048 { Err(TrustError::Sha512NeedsRsa2048) } else { Ok(()) }
    }

    /// Signature length in bytes (the modulus size).
    pub fn signature_len(&self) -> usize {
        self.key.size()
    }
}

/// Names the certificate and key size only: the `rsa` crate's own `Debug` would print the private exponent.
impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("certificate_der", &format_args!("{} bytes", self.fields.der.len()))
            .field("key", &format_args!("RSA-{} (private, not shown)", self.key.n().bits()))
            .finish()
    }
}

/// What a file header says apart from the signer: the inputs of §3.4.
#[derive(Debug, Clone, Copy)]
pub struct HeaderFields<'a> {
    pub kind: FileKind,
    /// Written only in `.tlv` files (tag 0x1C).
    pub signer_version: SignerVersion,
    pub hash: HashAlgorithm,
    /// Logical name, written with a NUL.
    pub filename: &'a str,
    /// Unix seconds, UTC.
    pub timestamp: u32,
    /// Encoded elements that go between TIMESTAMP and the pad: the encryption elements of `.enc.sgn`.
    pub extra_elements: &'a [u8],
}

/// Refuses file names that are empty, not ASCII, or hold a NUL (docs/wire-formats.md §1.2).
pub fn check_filename(filename: &str) -> Result<(), TrustError> {
    if filename.is_empty() {
        Err(TrustError::BadFilename("empty".into()))
    } else if !filename.is_ascii() {
        Err(TrustError::BadFilename(format!("{filename:?} is not ASCII")))
    } else if filename.contains('\0') {
        Err(TrustError::BadFilename(format!("{filename:?} holds a NUL")))
    } else {
        Ok(())
    }
}

/// Assembles, signs and returns a whole file: header then `body` (docs/wire-formats.md §3.4 steps 1-7).
pub fn assemble_signed(fields: &HeaderFields<'_>, signer: &Signer, body: &[u8]) -> Result<Vec<u8>, TrustError> {
    let facts = signer.fields();
    signer.check_hash(fields.hash)?;
    check_filename(fields.filename)?;
    let signature_len = signer.signature_len();
    let modulus = ModulusCode::from_signature_len(signature_len)
        .ok_or_else(|| TrustError::SignerKeyRefused(format!("a {signature_len}-byte modulus has no SIGNATURE_MODULUS code")))?;

    // Step 1: elements 1-5 with HEADER_LENGTH = 00 00.
    let mut header = Vec::with_capacity(512);
    tlv::encode_into(&mut header, tag::VERSION, &fields.kind.version())?;
    tlv::encode_into(&mut header, tag::HEADER_LENGTH, &[0, 0])?;
    if fields.kind == FileKind::TrustList {
        tlv::encode_into(&mut header, tag::SIGNER_VERSION, &fields.signer_version.bytes())?;
    }
    let mut signer_info = Vec::new();
    tlv::encode_into(&mut signer_info, tag::SIGNER_NAME, &tlv::with_nul(&facts.subject))?;
    tlv::encode_into(&mut signer_info, tag::SIGNER_ISSUER, &tlv::with_nul(&facts.issuer))?;
    tlv::encode_into(&mut signer_info, tag::SIGNER_SERIAL, &facts.serial)?;
    tlv::encode_into(&mut header, tag::SIGNER_INFO, &signer_info)?;
    let mut algorithm_info = Vec::with_capacity(8);
    tlv::encode_into(&mut algorithm_info, tag::SIGNATURE_ALGORITHM, &[0])?;
    tlv::encode_into(&mut algorithm_info, tag::SIGNATURE_MODULUS, &[modulus.code()])?;
    let mut signature_info = Vec::with_capacity(15);
    tlv::encode_into(&mut signature_info, tag::HASH_ALGORITHM, &[fields.hash.code()])?;
    tlv::encode_into(&mut signature_info, tag::SIGNATURE_ALGORITHM_INFO, &algorithm_info)?;
    tlv::encode_into(&mut header, tag::SIGNATURE_INFO, &signature_info)?;
    let insertion_point = header.len();

    // Step 2: FILENAME, TIMESTAMP and the encryption elements.
    tlv::encode_into(&mut header, tag::FILENAME, &tlv::with_nul(fields.filename))?;
    tlv::encode_into(&mut header, tag::TIMESTAMP, &fields.timestamp.to_be_bytes())?;
    header.extend_from_slice(fields.extra_elements);

    // Step 3: pad so that the header with the SIGNATURE element is a multiple of 4.
    while !(header.len() + ELEMENT_OVERHEAD + signature_len).is_multiple_of(4) {
        header.push(tag::PADDING);
    }
    // Step 4: patch HEADER_LENGTH.
    let header_length = header.len() + ELEMENT_OVERHEAD + signature_len;
    let header_length_u16 = u16::try_from(header_length).map_err(|_| TrustError::HeaderTooLarge(header_length))?;
    header[HEADER_LENGTH_VALUE_OFFSET..PREAMBLE_LENGTH].copy_from_slice(&header_length_u16.to_be_bytes());

    // Steps 5-6: sign the future file minus the SIGNATURE element.
    let signature =
        signer.signing.sign(fields.hash.signature_digest(), &[&header, body]).map_err(|e| TrustError::SignerKeyRefused(e.to_string()))?;

    // Step 7: insert SIGNATURE after SIGNATURE_INFO.
    let mut file = Vec::with_capacity(header_length + body.len());
    file.extend_from_slice(&header[..insertion_point]);
    tlv::encode_into(&mut file, tag::SIGNATURE, &signature)?;
    file.extend_from_slice(&header[insertion_point..]);
    debug_assert_eq!(file.len(), header_length);
    file.extend_from_slice(body);
    Ok(file)
}

/// The encryption elements of an `.enc.sgn` header (docs/wire-formats.md §5.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EncryptionElements {
    /// Tag 0x12, always 0 when we write it.
    pub iv_marker: u8,
    pub iv: [u8; 16],
    /// Number of 0x0D bytes appended before encryption.
    pub pad_count: u16,
    /// Tag 0x16, always 0 when we write it.
    pub key_marker: u8,
    /// Size of the wrapped key in bits (the device modulus); ignored on decode.
    pub key_size_bits: u16,
    /// 1 = AES-128.
    pub key_algorithm: u8,
    pub wrapped_key: Vec<u8>,
    pub plaintext_hash_algorithm: HashAlgorithm,
    pub plaintext_hash: Vec<u8>,
}

impl EncryptionElements {
    /// ENCRYPTION_INFO{IV_INFO{0x12, IV, PAD_COUNT}, KEY_INFO{0x16, KEY_SIZE, KEY_ALGORITHM, WRAPPED_KEY}},
    /// PLAINTEXT_HASH_ALGORITHM, PLAINTEXT_HASH, in that order.
    pub fn encode(&self) -> Result<Vec<u8>, TrustError> {
        let mut iv_info = Vec::with_capacity(28);
        tlv::encode_into(&mut iv_info, tag::IV_MARKER, &[self.iv_marker])?;
        tlv::encode_into(&mut iv_info, tag::IV, &self.iv)?;
        tlv::encode_into(&mut iv_info, tag::PAD_COUNT, &self.pad_count.to_be_bytes())?;
        let mut key_info = Vec::with_capacity(16 + self.wrapped_key.len());
        tlv::encode_into(&mut key_info, tag::KEY_MARKER, &[self.key_marker])?;
        tlv::encode_into(&mut key_info, tag::KEY_SIZE, &self.key_size_bits.to_be_bytes())?;
        tlv::encode_into(&mut key_info, tag::KEY_ALGORITHM, &[self.key_algorithm])?;
        tlv::encode_into(&mut key_info, tag::WRAPPED_KEY, &self.wrapped_key)?;
        let mut info = Vec::with_capacity(iv_info.len() + key_info.len() + 6);
        tlv::encode_into(&mut info, tag::ENCRYPTION_IV_INFO, &iv_info)?;
        tlv::encode_into(&mut info, tag::ENCRYPTION_KEY_INFO, &key_info)?;
        let mut out = tlv::encode(tag::ENCRYPTION_INFO, &info)?;
        tlv::encode_into(&mut out, tag::PLAINTEXT_HASH_ALGORITHM, &[self.plaintext_hash_algorithm.code()])?;
        tlv::encode_into(&mut out, tag::PLAINTEXT_HASH, &self.plaintext_hash)?;
        Ok(out)
    }
}

/// A parsed file header (docs/wire-formats.md §3.8 steps 1-2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeader {
    pub kind: FileKind,
    pub version: [u8; 2],
    /// Offset of the first record or payload byte.
    pub header_length: usize,
    /// Present in `.tlv` files.
    pub signer_version: Option<SignerVersion>,
    /// §1.4 string without NUL.
    pub signer_name: String,
    pub signer_issuer: String,
    /// As written (§1.5 magnitude in our files).
    pub signer_serial: Vec<u8>,
    pub hash: HashAlgorithm,
    pub signature_algorithm: u8,
    pub modulus: ModulusCode,
    pub signature: Vec<u8>,
    /// Offset of the SIGNATURE element's tag byte.
    pub signature_offset: usize,
    pub filename: String,
    pub timestamp: u32,
    /// Present in `.enc.sgn` files.
    pub encryption: Option<EncryptionElements>,
    pub pad_count: usize,
    /// Tags skipped in Lenient mode, in file order.
    pub unknown_tags: Vec<u8>,
}

/// Where each known tag may appear in our own files; Lenient mode accepts known tags anywhere.
fn strict_parent(kind: FileKind, tag_number: u8) -> Option<u8> {
    const TOP: u8 = 0;
    match tag_number {
        tag::SIGNER_VERSION if kind == FileKind::TrustList => Some(TOP),
        tag::SIGNER_INFO | tag::SIGNATURE_INFO | tag::SIGNATURE | tag::FILENAME | tag::TIMESTAMP => Some(TOP),
        tag::SIGNER_NAME | tag::SIGNER_ISSUER | tag::SIGNER_SERIAL => Some(tag::SIGNER_INFO),
        tag::HASH_ALGORITHM | tag::SIGNATURE_ALGORITHM_INFO => Some(tag::SIGNATURE_INFO),
        tag::SIGNATURE_ALGORITHM | tag::SIGNATURE_MODULUS => Some(tag::SIGNATURE_ALGORITHM_INFO),
        tag::ENCRYPTION_INFO | tag::PLAINTEXT_HASH_ALGORITHM | tag::PLAINTEXT_HASH if kind == FileKind::Encrypted => Some(TOP),
        tag::ENCRYPTION_IV_INFO | tag::ENCRYPTION_KEY_INFO if kind == FileKind::Encrypted => Some(tag::ENCRYPTION_INFO),
        tag::IV_MARKER | tag::IV | tag::PAD_COUNT if kind == FileKind::Encrypted => Some(tag::ENCRYPTION_IV_INFO),
        tag::KEY_MARKER | tag::KEY_SIZE | tag::KEY_ALGORITHM | tag::WRAPPED_KEY if kind == FileKind::Encrypted => {
            Some(tag::ENCRYPTION_KEY_INFO)
        }
        _ => None,
    }
}

fn is_known_header_tag(tag_number: u8) -> bool {
    (tag::VERSION..=tag::SIGNER_VERSION).contains(&tag_number) && tag_number != tag::PADDING
}

fn is_container(tag_number: u8) -> bool {
    matches!(
        tag_number,
        tag::SIGNER_INFO
            | tag::SIGNATURE_INFO
            | tag::SIGNATURE_ALGORITHM_INFO
            | tag::ENCRYPTION_INFO
            | tag::ENCRYPTION_IV_INFO
            | tag::ENCRYPTION_KEY_INFO
    )
}

/// The values found while scanning the header, before the required ones are checked.
struct Scan<'a> {
    seen: [bool; 256],
    values: Vec<Element<'a>>,
    unknown_tags: Vec<u8>,
}

impl<'a> Scan<'a> {
    fn new() -> Self {
        Scan { seen: [false; 256], values: Vec::new(), unknown_tags: Vec::new() }
    }

    fn visit(&mut self, data: &'a [u8], element: Element<'a>, parent: u8, kind: FileKind, mode: Mode) -> Result<(), TrustError> {
        let known = match mode {
            Mode::Strict => strict_parent(kind, element.tag) == Some(parent),
            Mode::Lenient => is_known_header_tag(element.tag),
        };
        if !known {
            return match mode {
                Mode::Strict => Err(TrustError::UnknownTag { tag: element.tag, offset: element.offset }),
                Mode::Lenient => {
                    self.unknown_tags.push(element.tag);
                    Ok(())
                }
            };
        }
        let seen = &mut self.seen[usize::from(element.tag)];
        if *seen {
            return Err(TrustError::DuplicateTag { tag: element.tag, offset: element.offset });
        }
        *seen = true;
        if is_container(element.tag) {
            for child in Elements::children(data, &element) {
                self.visit(data, child?, element.tag, kind, mode)?;
            }
        } else {
            self.values.push(element);
        }
        Ok(())
    }

    fn get(&self, tag_number: u8) -> Option<&Element<'a>> {
        self.values.iter().find(|e| e.tag == tag_number)
    }

    fn require(&self, tag_number: u8, name: &'static str) -> Result<&Element<'a>, TrustError> {
        self.get(tag_number).ok_or(TrustError::MissingElement { tag: tag_number, name })
    }

    /// NUL-terminated text; Lenient mode takes what is there and an absent element as empty.
    fn text(&self, tag_number: u8, name: &'static str, mode: Mode) -> Result<String, TrustError> {
        match (mode, self.get(tag_number)) {
            (Mode::Strict, _) => tlv::nul_terminated(tag_number, self.require(tag_number, name)?.value),
            (Mode::Lenient, None) => Ok(String::new()),
            (Mode::Lenient, Some(element)) => {
                let value = element.value.strip_suffix(&[0]).unwrap_or(element.value);
                Ok(String::from_utf8_lossy(value).into_owned())
            }
        }
    }
}

/// Parses the header of any of the three file kinds (docs/wire-formats.md §3.8 steps 1-2).
pub fn parse_header(file: &[u8], mode: Mode) -> Result<SignedHeader, TrustError> {
    // Step 1: VERSION then HEADER_LENGTH.
    let version_element = tlv::read_element(file, 0, file.len())?;
    if version_element.tag != tag::VERSION || version_element.value.len() != 2 {
        return Err(TrustError::BadPreamble);
    }
    let version = [version_element.value[0], version_element.value[1]];
    let kind = FileKind::from_version(version[0], version[1])?;
    let length_element = tlv::read_element(file, version_element.end(), file.len())?;
    if length_element.tag != tag::HEADER_LENGTH || length_element.value.len() != 2 {
        return Err(TrustError::BadPreamble);
    }
    let header_length = usize::from(u16::from_be_bytes([length_element.value[0], length_element.value[1]]));
    let bad_length =
        header_length > file.len() || header_length < PREAMBLE_LENGTH || (mode == Mode::Strict && !header_length.is_multiple_of(4));
    if bad_length {
        return Err(TrustError::BadHeaderLength { header_length, file_length: file.len() });
    }

    // Step 2: scan 10..H, stepping into containers; 0x0D at the top level is a bare pad byte.
    let mut scan = Scan::new();
    let mut position = PREAMBLE_LENGTH;
    let mut pad_count = 0;
    while position < header_length {
        if file[position] == tag::PADDING {
            pad_count += 1;
            position += 1;
            continue;
        }
        if pad_count > 0 && mode == Mode::Strict {
            return Err(TrustError::PadNotAtEnd { offset: position });
        }
        let element = tlv::read_element(file, position, header_length)?;
        position = element.end();
        scan.visit(file, element, 0, kind, mode)?;
    }

    let signature = *scan.require(tag::SIGNATURE, "SIGNATURE")?;
    let hash = HashAlgorithm::from_code(tlv::fixed::<1>(scan.require(tag::HASH_ALGORITHM, "HASH_ALGORITHM")?)?[0])?;
    let signer_serial = scan.require(tag::SIGNER_SERIAL, "SIGNER_SERIAL")?.value.to_vec();
    let modulus = ModulusCode::from_code(tlv::fixed::<1>(scan.require(tag::SIGNATURE_MODULUS, "SIGNATURE_MODULUS")?)?[0])?;
    if signature.value.len() != modulus.signature_len() {
        return Err(TrustError::SignatureLengthMismatch { modulus_bytes: modulus.signature_len(), signature_bytes: signature.value.len() });
    }
    let signature_algorithm = match (mode, scan.get(tag::SIGNATURE_ALGORITHM)) {
        (_, Some(element)) => tlv::fixed::<1>(element)?[0],
        (Mode::Strict, None) => return Err(TrustError::MissingElement { tag: tag::SIGNATURE_ALGORITHM, name: "SIGNATURE_ALGORITHM" }),
        (Mode::Lenient, None) => 0,
    };
    let signer_version = match scan.get(tag::SIGNER_VERSION) {
        Some(element) => {
            let [major, minor] = tlv::fixed::<2>(element)?;
            Some(SignerVersion::from_bytes(major, minor)?)
        }
        None if kind == FileKind::TrustList && mode == Mode::Strict => {
            return Err(TrustError::MissingElement { tag: tag::SIGNER_VERSION, name: "SIGNER_VERSION" });
        }
        None => None,
    };
    let timestamp = match (mode, scan.get(tag::TIMESTAMP)) {
        (_, Some(element)) => u32::from_be_bytes(tlv::fixed::<4>(element)?),
        (Mode::Strict, None) => return Err(TrustError::MissingElement { tag: tag::TIMESTAMP, name: "TIMESTAMP" }),
        (Mode::Lenient, None) => 0,
    };
    let encryption = encryption_elements(&scan, kind, hash, mode)?;

    Ok(SignedHeader {
        kind,
        version,
        header_length,
        signer_version,
        signer_name: scan.text(tag::SIGNER_NAME, "SIGNER_NAME", mode)?,
        signer_issuer: scan.text(tag::SIGNER_ISSUER, "SIGNER_ISSUER", mode)?,
        signer_serial,
        hash,
        signature_algorithm,
        modulus,
        signature: signature.value.to_vec(),
        signature_offset: signature.offset,
        filename: scan.text(tag::FILENAME, "FILENAME", mode)?,
        timestamp,
        encryption,
        pad_count,
        unknown_tags: scan.unknown_tags,
    })
}

/// The §5.2 elements. Strict `.enc.sgn` files need them all; elsewhere (Lenient) they are optional as a group.
fn encryption_elements(
    scan: &Scan<'_>,
    kind: FileKind,
    header_hash: HashAlgorithm,
    mode: Mode,
) -> Result<Option<EncryptionElements>, TrustError> {
    let any_present = (tag::ENCRYPTION_INFO..=tag::PLAINTEXT_HASH).any(|t| scan.seen[usize::from(t)]);
    if kind != FileKind::Encrypted && !any_present {
        return Ok(None);
    }
    let read = || -> Result<EncryptionElements, TrustError> {
        let plaintext_hash_algorithm =
            HashAlgorithm::from_code(tlv::fixed::<1>(scan.require(tag::PLAINTEXT_HASH_ALGORITHM, "PLAINTEXT_HASH_ALGORITHM")?)?[0])?;
        let plaintext_hash = scan.require(tag::PLAINTEXT_HASH, "PLAINTEXT_HASH")?;
        if plaintext_hash.value.len() != plaintext_hash_algorithm.digest_len() {
            return Err(TrustError::BadElementLength {
                tag: tag::PLAINTEXT_HASH,
                expected: plaintext_hash_algorithm.digest_len(),
                found: plaintext_hash.value.len(),
            });
        }
        Ok(EncryptionElements {
            iv_marker: tlv::fixed::<1>(scan.require(tag::IV_MARKER, "ENCRYPTION_IV_INFO 0x12")?)?[0],
            iv: tlv::fixed::<16>(scan.require(tag::IV, "IV")?)?,
            pad_count: u16::from_be_bytes(tlv::fixed::<2>(scan.require(tag::PAD_COUNT, "PAD_COUNT")?)?),
            key_marker: tlv::fixed::<1>(scan.require(tag::KEY_MARKER, "ENCRYPTION_KEY_INFO 0x16")?)?[0],
            key_size_bits: u16::from_be_bytes(tlv::fixed::<2>(scan.require(tag::KEY_SIZE, "KEY_SIZE")?)?),
            key_algorithm: tlv::fixed::<1>(scan.require(tag::KEY_ALGORITHM, "KEY_ALGORITHM")?)?[0],
            wrapped_key: scan.require(tag::WRAPPED_KEY, "WRAPPED_KEY")?.value.to_vec(),
            plaintext_hash_algorithm,
            plaintext_hash: plaintext_hash.value.to_vec(),
        })
    };
    let elements = match (mode, read()) {
        (_, Ok(elements)) => elements,
        (Mode::Strict, Err(e)) => return Err(e),
        // A foreign file with an incomplete set is still described; decryption will refuse it.
        (Mode::Lenient, Err(TrustError::MissingElement { .. })) => return Ok(None),
        (Mode::Lenient, Err(e)) => return Err(e),
    };
    if mode == Mode::Strict && elements.plaintext_hash_algorithm != header_hash {
        return Err(TrustError::PlaintextHashAlgorithmMismatch);
    }
    Ok(Some(elements))
}

impl SignedHeader {
    /// The signed message: the file without the SIGNATURE element (docs/wire-formats.md §3.8 step 5), as two slices.
    pub fn signed_parts<'f>(&self, file: &'f [u8]) -> Result<[&'f [u8]; 2], TrustError> {
        let start = self.signature_offset;
        let end = start + ELEMENT_OVERHEAD + self.signature.len();
        if end > file.len() {
            return Err(TrustError::Truncated { offset: file.len(), needed: end - file.len() });
        }
        Ok([&file[..start], &file[end..]])
    }

    /// Verifies the header signature of `file` (which this header was parsed from) with `key`.
    pub fn verify(&self, file: &[u8], key: &RsaPublicKey) -> Result<(), TrustError> {
        let digest = self.hash.digest_parts(&self.signed_parts(file)?);
        key.verify(self.hash.pkcs1v15(), &digest, &self.signature).map_err(|_| TrustError::BadSignature)
    }

    /// Verifies with the key of a DER certificate whose serial must equal SIGNER_SERIAL.
    pub fn verify_with_certificate(&self, file: &[u8], certificate_der: &[u8]) -> Result<(), TrustError> {
        let facts = CertificateFields::from_der(certificate_der)?;
        if !super::names::serials_equal(&facts.serial, &self.signer_serial) {
            return Err(TrustError::SignerNotFound);
        }
        self.verify(file, facts.rsa_key()?)
    }

    /// The bytes after the header: records or payload.
    pub fn body<'f>(&self, file: &'f [u8]) -> &'f [u8] {
        file.get(self.header_length..).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::pki::keys;

    fn signer() -> Signer {
        let key = keys::generate_rsa(2048);
        let key_pair = rcgen::KeyPair::try_from(keys::pkcs8_der(&key).as_slice()).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, "TFTP");
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x01, 0x01]));
        let der = params.self_signed(&key_pair).unwrap().der().to_vec();
        Signer::new(der, key, false).unwrap()
    }

    fn fields(extra: &[u8]) -> HeaderFields<'_> {
        HeaderFields {
            kind: FileKind::Signed,
            signer_version: SignerVersion::V1_0,
            hash: HashAlgorithm::Sha1,
            filename: "a.sgn",
            timestamp: 7,
            extra_elements: extra,
        }
    }

    #[test]
    fn header_rules() {
        let signer = signer();
        assert!(!format!("{signer:?}").contains("primes"), "Debug must not print the private key");
        let file = assemble_signed(&fields(&[]), &signer, b"body").unwrap();
        let header = parse_header(&file, Mode::Strict).unwrap();
        assert_eq!((header.signer_name.as_str(), header.filename.as_str(), header.timestamp), ("CN=TFTP", "a.sgn", 7));
        header.verify(&file, &RsaPublicKey::from(signer.key())).unwrap();

        // SIGNER_INFO children in another order are accepted (docs/wire-formats.md §3.3): subject = issuer, so swapping the
        // tags of 0x04 and 0x06 gives the order 06, 04, 05.
        let mut reordered = file.clone();
        assert_eq!((reordered[13], reordered[24]), (tag::SIGNER_NAME, tag::SIGNER_ISSUER));
        reordered.swap(13, 24);
        let header = parse_header(&reordered, Mode::Strict).unwrap();
        assert_eq!(header.signer_issuer, "CN=TFTP");

        // SIGNER_VERSION is unknown in a .sgn in Strict mode; Lenient reads it.
        let with_version = tlv::encode(tag::SIGNER_VERSION, &[1, 0]).unwrap();
        let file = assemble_signed(&fields(&with_version), &signer, b"").unwrap();
        assert!(matches!(parse_header(&file, Mode::Strict), Err(TrustError::UnknownTag { tag: tag::SIGNER_VERSION, .. })));
        assert_eq!(parse_header(&file, Mode::Lenient).unwrap().signer_version, Some(SignerVersion::V1_0));

        // A pad byte before an element is refused in Strict mode.
        let pad_then_element = [&[tag::PADDING][..], &tlv::encode(0x30, &[]).unwrap()].concat();
        let file = assemble_signed(&fields(&pad_then_element), &signer, b"").unwrap();
        assert!(matches!(parse_header(&file, Mode::Strict), Err(TrustError::PadNotAtEnd { .. })));
        assert_eq!(parse_header(&file, Mode::Lenient).unwrap().unknown_tags, vec![0x30]);

        assert!(matches!(assemble_signed(&HeaderFields { filename: "", ..fields(&[]) }, &signer, b""), Err(TrustError::BadFilename(_))));
    }
}
