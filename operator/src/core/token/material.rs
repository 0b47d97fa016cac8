//! What a token's Secret must hold: a PEM X.509 certificate whose key is RSA 2048 with a positive
//! serial (docs/wire-formats.md §3.3, §1.5), and the key as password-encrypted PKCS#8 (P.3-17).

use pkcs8::EncryptedPrivateKeyInfo;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

/// The only key size a SAST signer may have: phones take RSA keys of at most 2048 bits, and 1024
/// needs a legacy flag the API does not have (docs/wire-formats.md §3.3).
pub const SAST_KEY_BITS: usize = 2048;

/// PEM label of a password-encrypted PKCS#8 key (RFC 5958).
pub const ENCRYPTED_KEY_LABEL: &str = "ENCRYPTED PRIVATE KEY";

const PEM_BEGIN: &[u8] = b"-----BEGIN ";

/// Why a token's certificate or key is not what signing needs. Messages never quote the content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaterialError {
    /// No `CERTIFICATE` PEM section, or its base64 does not decode.
    CertificateNotPem(String),
    /// The DER does not parse as an X.509 certificate.
    CertificateNotX509(String),
    /// The certificate's key is not RSA.
    KeyNotRsa,
    /// The certificate's RSA key has another size than 2048 bits.
    KeySize { bits: usize },
    /// The certificate's serial is zero or negative.
    SerialNotPositive,
    /// The key is not PEM, or another PEM than `ENCRYPTED PRIVATE KEY` (a plain key, say).
    KeyNotEncryptedPem(String),
    /// The `ENCRYPTED PRIVATE KEY` does not parse as EncryptedPrivateKeyInfo.
    KeyMalformed(String),
    /// The key's encryption parameters are not ones Callguard accepts (scrypt, a PBKDF2 round count
    /// out of bounds, another cipher): refused before any decryption is tried.
    KeyParameters(String),
}

impl std::fmt::Display for MaterialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaterialError::CertificateNotPem(why) => write!(f, "is not a PEM X.509 certificate: {why} (P.3-9)"),
            MaterialError::CertificateNotX509(why) => write!(f, "does not parse as an X.509 certificate: {why} (P.3-9)"),
            MaterialError::KeyNotRsa => {
                write!(f, "holds a certificate whose key is not RSA; a SAST signs with RSA 2048 (docs/wire-formats.md §3.3)")
            }
            MaterialError::KeySize { bits } => {
                write!(
                    f,
                    "holds a certificate with an RSA key of {bits} bits; a SAST signs with RSA {SAST_KEY_BITS} (docs/wire-formats.md §3.3)"
                )
            }
            MaterialError::SerialNotPositive => {
                write!(f, "holds a certificate whose serial is zero or negative (docs/wire-formats.md §1.5)")
            }
            MaterialError::KeyNotEncryptedPem(why) => {
                write!(f, "is not a password-encrypted PKCS#8 key (PEM {ENCRYPTED_KEY_LABEL}): {why} (P.3-17)")
            }
            MaterialError::KeyMalformed(why) => write!(f, "is a malformed {ENCRYPTED_KEY_LABEL}: {why} (P.3-17)"),
            MaterialError::KeyParameters(why) => write!(f, "has encryption parameters Callguard refuses: {why}"),
        }
    }
}

impl std::error::Error for MaterialError {}

/// The DER of the first `CERTIFICATE` section of a PEM text.
pub fn certificate_der(pem: &[u8]) -> Result<Vec<u8>, MaterialError> {
    CertificateDer::from_pem_slice(pem).map(|der| der.as_ref().to_vec()).map_err(|e| MaterialError::CertificateNotPem(pem_error(&e)))
}

/// Checks a SAST certificate PEM: X.509, RSA 2048, positive serial. Returns its DER.
pub fn check_certificate(pem: &[u8]) -> Result<Vec<u8>, MaterialError> {
    let der = certificate_der(pem)?;
    let (_, certificate) = X509Certificate::from_der(&der).map_err(|e| MaterialError::CertificateNotX509(e.to_string()))?;
    match certificate.public_key().parsed() {
        Ok(PublicKey::RSA(rsa)) if rsa.key_size() == SAST_KEY_BITS => {}
        Ok(PublicKey::RSA(rsa)) => return Err(MaterialError::KeySize { bits: rsa.key_size() }),
        _ => return Err(MaterialError::KeyNotRsa),
    }
    if !serial_is_positive(certificate.raw_serial()) {
        return Err(MaterialError::SerialNotPositive);
    }
    Ok(der)
}

/// Checks that a key PEM is an `ENCRYPTED PRIVATE KEY` that parses; it is not decrypted here.
pub fn check_encrypted_key(pem: &[u8]) -> Result<(), MaterialError> {
    // The PEM decoder's message for text without any PEM block ("preamble contains invalid data") says little.
    if !pem.windows(PEM_BEGIN.len()).any(|w| w == PEM_BEGIN) {
        return Err(MaterialError::KeyNotEncryptedPem("no PEM section".into()));
    }
    let (label, der) = pkcs8::der::pem::decode_vec(pem).map_err(|e| MaterialError::KeyNotEncryptedPem(e.to_string()))?;
    if label != ENCRYPTED_KEY_LABEL {
        return Err(MaterialError::KeyNotEncryptedPem(format!("found PEM {label}")));
    }
    let info = EncryptedPrivateKeyInfo::try_from(der.as_slice()).map_err(|e| MaterialError::KeyMalformed(e.to_string()))?;
    crate::core::pki::keys::check_encryption_parameters(&info).map_err(|e| MaterialError::KeyParameters(e.to_string()))
}

/// DER INTEGER content bytes: positive when the sign bit is clear and some byte is non-zero.
fn serial_is_positive(raw: &[u8]) -> bool {
    raw.first().is_some_and(|b| b & 0x80 == 0) && raw.iter().any(|b| *b != 0)
}

fn pem_error(error: &rustls_pki_types::pem::Error) -> String {
    match error {
        rustls_pki_types::pem::Error::NoItemsFound => "no CERTIFICATE section".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_refused_with_their_section() {
        let cert = check_certificate(b"FAKE-CERTIFICATE-placeholder").unwrap_err();
        assert_eq!(cert, MaterialError::CertificateNotPem("no CERTIFICATE section".into()));
        assert!(cert.to_string().ends_with("(P.3-9)"));
        let key = check_encrypted_key(b"FAKE-ENCRYPTED-KEY-placeholder").unwrap_err();
        assert_eq!(key, MaterialError::KeyNotEncryptedPem("no PEM section".into()));
        assert!(key.to_string().ends_with("(P.3-17)"));
    }

    #[test]
    fn a_plain_key_is_not_an_encrypted_key() {
        let key = crate::core::pki::keys::generate_rsa(1024);
        let plain = crate::core::pki::keys::pkcs8_pem(&key);
        assert_eq!(check_encrypted_key(plain.as_bytes()), Err(MaterialError::KeyNotEncryptedPem("found PEM PRIVATE KEY".into())));
        assert_eq!(check_encrypted_key(crate::core::pki::keys::encrypt_pem(&key, b"pw").as_bytes()), Ok(()));
    }

    #[test]
    fn serial_sign_and_zero() {
        assert!(serial_is_positive(&[0x00, 0xC1]));
        assert!(serial_is_positive(&[0x3A, 0x7F]));
        assert!(!serial_is_positive(&[0x80, 0x01]));
        assert!(!serial_is_positive(&[0x00]));
        assert!(!serial_is_positive(&[]));
    }
}
