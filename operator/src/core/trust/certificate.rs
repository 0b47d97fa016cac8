//! What the trust files take from an X.509 certificate: DN strings, serial, public key and signature (docs/wire-formats.md §3.6).

use rsa::RsaPublicKey;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::traits::PublicKeyParts;
use serde::Serialize;
use x509_parser::oid_registry::{OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::error::TrustError;
use super::names::{dn_string, serial_magnitude};

/// The kind and size of a public key, for validation and for `inspect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum KeyKind {
    Rsa { bits: usize },
    Ec { bits: usize },
    Other,
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyKind::Rsa { bits } => write!(f, "RSA-{bits}"),
            KeyKind::Ec { bits } => write!(f, "EC P-{bits}"),
            KeyKind::Other => write!(f, "other"),
        }
    }
}

/// A certificate's public key in the forms the trust files need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateKey {
    Rsa(RsaPublicKey),
    /// The X9.62 point as carried in the certificate.
    Ec(Vec<u8>),
    /// Neither RSA nor EC; the string names the algorithm OID.
    Other(String),
}

impl CertificateKey {
    pub fn kind(&self) -> KeyKind {
        match self {
            CertificateKey::Rsa(key) => KeyKind::Rsa { bits: key.n().bits() },
            CertificateKey::Ec(point) => KeyKind::Ec { bits: ec_bits(point) },
            CertificateKey::Other(_) => KeyKind::Other,
        }
    }
}

/// Curve size from an X9.62 point length (uncompressed `04‖X‖Y` or compressed `02/03‖X`).
fn ec_bits(point: &[u8]) -> usize {
    let coordinate = match point.first() {
        Some(4) => (point.len().saturating_sub(1)) / 2,
        Some(2 | 3) => point.len().saturating_sub(1),
        _ => 0,
    };
    // P-521 coordinates take 66 bytes.
    if coordinate == 66 { 521 } else { coordinate * 8 }
}

/// The fields of a certificate that trust-file records and headers carry, in their §1.4/§1.5 forms
/// (the policy view of a certificate is `pki::inspect::CertificateFacts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFields {
    pub der: Vec<u8>,
    /// §1.4 string, without NUL.
    pub subject: String,
    /// §1.4 string, without NUL.
    pub issuer: String,
    /// §1.5 magnitude.
    pub serial: Vec<u8>,
    pub key: CertificateKey,
    /// The subjectPublicKey BIT STRING contents: DER RSAPublicKey for RSA, the X9.62 point for EC.
    pub public_key_bytes: Vec<u8>,
    /// The certificate's signatureValue BIT STRING contents, without the unused-bits octet.
    pub signature: Vec<u8>,
}

impl CertificateFields {
    /// Parses a DER certificate. Refuses trailing bytes and zero or negative serials.
    pub fn from_der(der: &[u8]) -> Result<Self, TrustError> {
        let (rest, certificate) = X509Certificate::from_der(der).map_err(|e| TrustError::BadCertificate(format!("not DER X.509: {e}")))?;
        if !rest.is_empty() {
            return Err(TrustError::BadCertificate(format!("{} trailing byte(s) after the certificate", rest.len())));
        }
        let serial = serial_magnitude(certificate.raw_serial())?;
        let spki = certificate.public_key();
        let public_key_bytes = spki.subject_public_key.data.to_vec();
        let key = if spki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION {
            let key = RsaPublicKey::from_pkcs1_der(&public_key_bytes)
                .map_err(|e| TrustError::BadCertificate(format!("RSA public key does not decode: {e}")))?;
            CertificateKey::Rsa(key)
        } else if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
            CertificateKey::Ec(public_key_bytes.clone())
        } else {
            CertificateKey::Other(spki.algorithm.algorithm.to_id_string())
        };
        Ok(CertificateFields {
            der: der.to_vec(),
            subject: dn_string(certificate.subject()),
            issuer: dn_string(certificate.issuer()),
            serial,
            key,
            public_key_bytes,
            signature: certificate.signature_value.data.to_vec(),
        })
    }

    /// The RSA key, or why there is none.
    pub fn rsa_key(&self) -> Result<&RsaPublicKey, TrustError> {
        match &self.key {
            CertificateKey::Rsa(key) => Ok(key),
            other => Err(TrustError::SignerKeyRefused(format!("the certificate key is {}, not RSA", other.kind()))),
        }
    }
}
