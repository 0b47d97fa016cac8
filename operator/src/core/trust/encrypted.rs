//! Encrypted configuration (`SEP<MAC>.cnf.xml.enc.sgn`), public-key method: AES-128-CBC under a fresh key that
//! is wrapped with the phone's RSA key, behind a VERSION 2.0 signed header (docs/wire-formats.md §5.2-5.4).
//!
//! The companion stub XML is rendered elsewhere; this module only takes plaintext bytes.

use aes::Aes128;
use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use rand::RngCore;
use rand::rngs::OsRng;
use rsa::{Pkcs1v15Encrypt, RsaPrivateKey};

use super::certificate::{CertificateFields, CertificateKey};
use super::codes::{FileKind, HashAlgorithm, SignerVersion};
use super::error::TrustError;
use super::header::{EncryptionElements, HeaderFields, SignedHeader, Signer, assemble_signed, parse_header};
use super::signed::{SignatureCheck, check_relative_path, verify_configuration};
use super::tlv::Mode;

/// KEY_ALGORITHM code of AES-128 (docs/wire-formats.md §5.2).
pub const KEY_ALGORITHM_AES128: u8 = 1;
/// The byte appended before encryption. Not PKCS#7 (docs/wire-formats.md §5.3 step 3).
pub const PAD_BYTE: u8 = 0x0D;
const BLOCK: usize = 16;

/// The header FILENAME and served name of the encrypted form of `config_path`: `config_path` + `.enc.sgn`.
pub fn encrypted_filename(config_path: &str) -> Result<String, TrustError> {
    check_relative_path(config_path)?;
    Ok(format!("{config_path}.enc.sgn"))
}

/// p = 16 − (len mod 16), so 1..=16: an aligned text gains a whole block (docs/wire-formats.md §5.3 step 3).
pub fn pad_count(plaintext_len: usize) -> u16 {
    // Both operands are below 17, so the cast cannot truncate.
    (BLOCK - plaintext_len % BLOCK) as u16
}

/// Builds `.enc.sgn` files (docs/wire-formats.md §5.3).
#[derive(Debug, Clone, Copy)]
pub struct EncryptedConfigBuilder<'a> {
    /// The TFTP (or CCM+TFTP) signer.
    pub signer: &'a Signer,
    /// Header hash, also used for PLAINTEXT_HASH.
    pub hash: HashAlgorithm,
    pub timestamp: u32,
}

impl<'a> EncryptedConfigBuilder<'a> {
    pub fn new(signer: &'a Signer, hash: HashAlgorithm, timestamp: u32) -> Self {
        EncryptedConfigBuilder { signer, hash, timestamp }
    }

    /// Encrypts `plaintext` (the full `config_path`, e.g. `SEP001122334455.cnf.xml`) for the phone holding
    /// `device_certificate_der` (its LSC, else its MIC) and signs it as `config_path.enc.sgn`. Every call draws a
    /// fresh AES key and IV from the OS RNG.
    pub fn encrypt(&self, config_path: &str, plaintext: &[u8], device_certificate_der: &[u8]) -> Result<Vec<u8>, TrustError> {
        let filename = encrypted_filename(config_path)?;
        let device = CertificateFields::from_der(device_certificate_der)?;
        let device_key = match &device.key {
            CertificateKey::Rsa(key) => key,
            other => return Err(TrustError::EncryptUnsupportedKeyType(other.kind().to_string())),
        };
        let mut key = [0u8; BLOCK];
        let mut iv = [0u8; BLOCK];
        OsRng.fill_bytes(&mut key);
        OsRng.fill_bytes(&mut iv);

        let pad = pad_count(plaintext.len());
        let mut padded = Vec::with_capacity(plaintext.len() + usize::from(pad));
        padded.extend_from_slice(plaintext);
        padded.resize(plaintext.len() + usize::from(pad), PAD_BYTE);
        let ciphertext = cbc::Encryptor::<Aes128>::new(&key.into(), &iv.into()).encrypt_padded_vec_mut::<NoPadding>(&padded);
        let wrapped_key = device_key
            .encrypt(&mut OsRng, Pkcs1v15Encrypt, &key)
            .map_err(|e| TrustError::EncryptUnsupportedKeyType(format!("RSA key that cannot wrap 16 bytes: {e}")))?;
        let key_size_bits = u16::try_from(wrapped_key.len() * 8)
            .map_err(|_| TrustError::EncryptUnsupportedKeyType(format!("RSA-{} (KEY_SIZE overflows)", wrapped_key.len() * 8)))?;

        let elements = EncryptionElements {
            iv_marker: 0,
            iv,
            pad_count: pad,
            key_marker: 0,
            key_size_bits,
            key_algorithm: KEY_ALGORITHM_AES128,
            wrapped_key,
            plaintext_hash_algorithm: self.hash,
            plaintext_hash: self.hash.digest(plaintext),
        };
        let extra = elements.encode()?;
        let fields = HeaderFields {
            kind: FileKind::Encrypted,
            signer_version: SignerVersion::V1_0,
            hash: self.hash,
            filename: &filename,
            timestamp: self.timestamp,
            extra_elements: &extra,
        };
        assemble_signed(&fields, self.signer, &ciphertext)
    }
}

/// A parsed `.enc.sgn` file with its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedFile {
    pub header: SignedHeader,
    pub encryption: EncryptionElements,
    bytes: Vec<u8>,
}

impl EncryptedFile {
    /// Parses an `.enc.sgn` file. Does not verify or decrypt.
    pub fn parse(bytes: &[u8], mode: Mode) -> Result<Self, TrustError> {
        let header = parse_header(bytes, mode)?;
        if header.kind != FileKind::Encrypted {
            return Err(TrustError::WrongFileKind { expected: FileKind::Encrypted.name(), found: header.kind.name() });
        }
        let encryption = header
            .encryption
            .clone()
            .ok_or(TrustError::MissingElement { tag: super::codes::header_tag::ENCRYPTION_INFO, name: "ENCRYPTION_INFO" })?;
        Ok(EncryptedFile { header, encryption, bytes: bytes.to_vec() })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn ciphertext(&self) -> &[u8] {
        self.header.body(&self.bytes)
    }

    /// Verifies the signature (docs/wire-formats.md §3.8 steps 4-5).
    pub fn verify(&self, check: SignatureCheck<'_>) -> Result<(), TrustError> {
        verify_configuration(&self.header, &self.bytes, check).map(|_| ())
    }

    /// Recovers the plaintext (docs/wire-formats.md §5.4). With `check`, the signature is verified first and nothing is
    /// decrypted when it fails; without it the signature is not checked, but PLAINTEXT_HASH still is.
    ///
    /// Tests and diagnostics only: the `rsa` crate's PKCS#1 v1.5 decryption is not constant-time.
    pub fn decrypt(&self, device_key: &RsaPrivateKey, check: Option<SignatureCheck<'_>>) -> Result<Vec<u8>, TrustError> {
        if let Some(check) = check {
            self.verify(check)?;
        }
        let elements = &self.encryption;
        if elements.key_algorithm != KEY_ALGORITHM_AES128 {
            return Err(TrustError::UnsupportedKeyAlgorithm(elements.key_algorithm));
        }
        let key: [u8; BLOCK] = device_key
            .decrypt(Pkcs1v15Encrypt, &elements.wrapped_key)
            .ok()
            .and_then(|key| key.try_into().ok())
            .ok_or(TrustError::KeyUnwrapFailed)?;
        let ciphertext = self.ciphertext();
        if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(BLOCK) {
            return Err(TrustError::BadCiphertextLength(ciphertext.len()));
        }
        let mut padded = cbc::Decryptor::<Aes128>::new(&key.into(), &elements.iv.into())
            .decrypt_padded_vec_mut::<NoPadding>(ciphertext)
            .map_err(|_| TrustError::BadCiphertextLength(ciphertext.len()))?;
        let pad = usize::from(elements.pad_count);
        if !(1..=BLOCK).contains(&pad) || pad > padded.len() {
            return Err(TrustError::BadPadCount(elements.pad_count));
        }
        let text_len = padded.len() - pad;
        if padded[text_len..].iter().any(|&b| b != PAD_BYTE) {
            return Err(TrustError::BadPadding);
        }
        padded.truncate(text_len);
        if elements.plaintext_hash_algorithm.digest(&padded) != elements.plaintext_hash {
            return Err(TrustError::PlaintextHashMismatch);
        }
        Ok(padded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_count_is_one_to_sixteen() {
        assert_eq!(pad_count(0), 16);
        assert_eq!(pad_count(16), 16);
        assert_eq!(pad_count(15), 1);
        assert_eq!(pad_count(17), 15);
    }

    #[test]
    fn encrypted_filename_appends_enc_sgn() {
        assert_eq!(encrypted_filename("SEP001122334455.cnf.xml").unwrap(), "SEP001122334455.cnf.xml.enc.sgn");
        assert!(encrypted_filename("/SEP.cnf.xml").is_err());
    }
}
