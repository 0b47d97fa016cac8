//! Authentication of a CAPF AUTH_RESPONSE: the password of mode 1 and the certificate signatures of modes 3 and 4
//! (docs/wire-formats.md §7.5 table, §7.7), and the optional SUDI block.
//!
//! RSA signatures are checked with the `rsa` crate in both forms §7.7 allows (raw hash, DigestInfo). ECDSA with
//! SHA-1 and SHA-512 goes through OpenSSL: ring, under rustls and x509-parser, verifies neither digest for ECDSA.
//! Chains are checked with OpenSSL too, since MICs are signed with algorithms ring refuses (SHA-1).

use openssl::hash::MessageDigest;
use openssl::pkey::{Id, PKey, Public};
use openssl::x509::{X509, X509VerifyResult};
use rsa::pkcs8::DecodePublicKey;
use rsa::{Pkcs1v15Sign, RsaPublicKey};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use super::frame::{Body, HASH_CODE_SHA512, SudiData};
use crate::api::CapfAuthenticationMode;

/// Lengths of the authentication string (Table 6-2: 4–10 digits).
pub const AUTHENTICATION_STRING_DIGITS: std::ops::RangeInclusive<usize> = 4..=10;

/// Why a device failed authentication. Every variant ends the session with END_SESSION{7} (docs/wire-formats.md §7.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// PASSWORD is missing or differs from the authentication string.
    WrongPassword,
    /// Mode 1 is configured but the device has no valid 4–10-digit authentication string.
    NoAuthenticationString,
    /// An element mode 3/4 needs is missing.
    MissingElement(&'static str),
    /// The certificate does not parse.
    BadCertificate(String),
    /// The certificate chains to no allowed issuer (our CA for LSCs, the MIC bundle for MICs).
    UnknownIssuer,
    /// An LSC's CN is not the device name, or a MIC's CN does not end in `-<device name>`.
    CommonNameMismatch { device_name: String, common_name: String },
    /// SHA2_SIGNED_DATA carries a hash code other than 3.
    UnsupportedHashCode(u8),
    /// The key of the certificate is neither RSA nor EC.
    UnsupportedKey,
    /// A signature does not verify; names the element.
    BadSignature(&'static str),
    /// SUDI_DATA is present, verification is configured, and it fails.
    Sudi(String),
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::WrongPassword => write!(f, "PASSWORD does not match the authentication string (docs/wire-formats.md §7.5)"),
            AuthError::NoAuthenticationString => {
                write!(
                    f,
                    "capfAuthMode 1 needs a 4-10 digit authentication string for the device, and none is set (docs/wire-formats.md §7.5)"
                )
            }
            AuthError::MissingElement(name) => {
                write!(f, "AUTH_RESPONSE lacks {name}, needed by capfAuthMode 3/4 (docs/wire-formats.md §7.5)")
            }
            AuthError::BadCertificate(why) => write!(f, "CERTIFICATE does not parse: {why} (docs/wire-formats.md §7.4)"),
            AuthError::UnknownIssuer => write!(f, "CERTIFICATE does not chain to an allowed issuer (docs/wire-formats.md §7.5)"),
            AuthError::CommonNameMismatch { device_name, common_name } => {
                write!(f, "certificate CN \"{common_name}\" does not belong to device {device_name} (docs/wire-formats.md §7.5)")
            }
            AuthError::UnsupportedHashCode(code) => {
                write!(f, "SHA2_SIGNED_DATA hash code {code}; only 3 (SHA-512) is accepted (docs/wire-formats.md §7.7)")
            }
            AuthError::UnsupportedKey => write!(f, "the certificate key is neither RSA nor EC (docs/wire-formats.md §7.7)"),
            AuthError::BadSignature(element) => {
                write!(f, "{element} does not verify over the device name and certificate (docs/wire-formats.md §7.7)")
            }
            AuthError::Sudi(why) => write!(f, "SUDI_DATA refused: {why} (docs/wire-formats.md §7.7)"),
        }
    }
}

impl std::error::Error for AuthError {}

/// Certificates a client certificate may chain to, besides the cluster CA (docs/wire-formats.md §7.5, §7.7).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustAnchors {
    /// DER certificates of the manufacturing chain (Cisco Manufacturing CA, Cisco Root CA 2048). A MIC must be
    /// issued directly by one of them. May be empty: then no MIC authenticates.
    pub mic_bundle: Vec<Vec<u8>>,
    /// DER certificates that issue SUDI certificates. Empty: SUDI_DATA is not verified (docs/wire-formats.md §7.7).
    pub sudi_bundle: Vec<Vec<u8>>,
    /// The cluster CA a rotation replaced (DER): an LSC it issued still authenticates until the
    /// rotation ends.
    pub previous_cluster_ca: Option<Vec<u8>>,
}

/// Which chain a client certificate was found on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertificateKind {
    Lsc,
    Mic,
}

/// What the certificate check needs besides the frame.
pub(crate) struct CertificateCheck<'a> {
    /// The device name exactly as received (without NUL): what the phone signed.
    pub raw_device_name: &'a str,
    /// The normalised device name (docs/wire-formats.md §1.3): what CNs are compared with.
    pub device_name: &'a str,
    pub mode: CapfAuthenticationMode,
    pub lsc_ca_der: &'a [u8],
    pub trust: &'a TrustAnchors,
    pub check_mic_common_name: bool,
}

/// Mode 1: the PASSWORD equals the configured string. Both sides are hashed first so the comparison time depends
/// on neither the content nor the length of the secret; `subtle` (already a dependency of `rsa`) compares.
pub(crate) fn check_password(body: &Body, configured: Option<&str>) -> Result<(), AuthError> {
    let configured = configured.filter(|s| is_authentication_string(s)).ok_or(AuthError::NoAuthenticationString)?;
    let given = body.password.as_ref().ok_or(AuthError::WrongPassword)?;
    let equal = Sha256::digest(given.as_str().as_bytes()).ct_eq(&Sha256::digest(configured.as_bytes()));
    if bool::from(equal) { Ok(()) } else { Err(AuthError::WrongPassword) }
}

/// 4–10 ASCII digits (Table 6-2).
pub fn is_authentication_string(text: &str) -> bool {
    AUTHENTICATION_STRING_DIGITS.contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit())
}

/// Modes 3 and 4 (docs/wire-formats.md §7.5 table, §7.7): the certificate chains to an allowed issuer and names the device, and
/// both SIGNED_DATA and SHA2_SIGNED_DATA verify over `device name ‖ 00 ‖ certificate DER`.
pub(crate) fn check_certificate(body: &Body, check: &CertificateCheck<'_>) -> Result<ClientCertificateKind, AuthError> {
    let certificate = body.certificate.as_ref().ok_or(AuthError::MissingElement("CERTIFICATE"))?;
    let signed = body.signed_data.as_ref().ok_or(AuthError::MissingElement("SIGNED_DATA"))?;
    let sha2 = body.sha2_signed_data.as_ref().ok_or(AuthError::MissingElement("SHA2_SIGNED_DATA"))?;
    if sha2.hash_code != HASH_CODE_SHA512 {
        return Err(AuthError::UnsupportedHashCode(sha2.hash_code));
    }
    let leaf = X509::from_der(&certificate.der).map_err(|e| AuthError::BadCertificate(e.to_string()))?;
    let common_name = common_name(&certificate.der);
    let lsc_allowed = check.mode == CapfAuthenticationMode::ByExistingCertificatePrecedenceLsc;
    let kind = if lsc_allowed && issued_by_any(&leaf, std::iter::once(check.lsc_ca_der).chain(check.trust.previous_cluster_ca.as_deref())) {
        if common_name != check.device_name {
            return Err(AuthError::CommonNameMismatch { device_name: check.device_name.to_owned(), common_name });
        }
        ClientCertificateKind::Lsc
    } else if issued_by_any(&leaf, check.trust.mic_bundle.iter().map(Vec::as_slice)) {
        if check.check_mic_common_name && !common_name.ends_with(&format!("-{}", check.device_name)) {
            return Err(AuthError::CommonNameMismatch { device_name: check.device_name.to_owned(), common_name });
        }
        ClientCertificateKind::Mic
    } else {
        return Err(AuthError::UnknownIssuer);
    };

    let key = leaf.public_key().map_err(|e| AuthError::BadCertificate(e.to_string()))?;
    let mut auth_data = Vec::with_capacity(check.raw_device_name.len() + 1 + certificate.der.len());
    auth_data.extend_from_slice(check.raw_device_name.as_bytes());
    auth_data.push(0);
    auth_data.extend_from_slice(&certificate.der);
    verify(&key, SignedDigest::Sha1, &auth_data, signed, "SIGNED_DATA")?;
    verify(&key, SignedDigest::Sha512, &auth_data, &sha2.signature, "SHA2_SIGNED_DATA")?;
    Ok(kind)
}

/// SUDI_DATA (docs/wire-formats.md §7.7): verified only when a SUDI bundle is configured and the SUDI key is RSA. The signed
/// input starts with the session id in LITTLE-endian order (docs/wire-formats.md §1.1).
pub(crate) fn check_sudi(body: &Body, session_id: u32, trust: &TrustAnchors) -> Result<(), AuthError> {
    let (Some(raw), false) = (&body.sudi_data, trust.sudi_bundle.is_empty()) else {
        return Ok(());
    };
    let sudi = SudiData::decode(raw).map_err(|e| AuthError::Sudi(e.to_string()))?;
    let certificate = X509::from_der(&sudi.certificate_der).map_err(|e| AuthError::Sudi(format!("certificate: {e}")))?;
    let key = certificate.public_key().map_err(|e| AuthError::Sudi(format!("certificate key: {e}")))?;
    if key.id() != Id::RSA {
        return Ok(());
    }
    if !issued_by_any(&certificate, trust.sudi_bundle.iter().map(Vec::as_slice)) {
        return Err(AuthError::Sudi("the SUDI certificate chains to no configured SUDI CA".into()));
    }
    let mut signed_input = session_id.to_le_bytes().to_vec();
    signed_input.extend_from_slice(&sudi.certificate_der);
    verify(&key, SignedDigest::Sha1, &signed_input, &sudi.sha1_signature, "SUDI SHA-1 signature")
        .and_then(|()| verify(&key, SignedDigest::Sha512, &signed_input, &sudi.sha512_signature, "SUDI SHA-512 signature"))
        .map_err(|e| AuthError::Sudi(e.to_string()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SignedDigest {
    Sha1,
    Sha512,
}

/// RSA: `s^e mod n` must be PKCS#1 v1.5 padding around the raw hash or around DigestInfo(hash) (docs/wire-formats.md §7.7).
/// EC: a DER ECDSA-Sig-Value over the message with the digest.
fn verify(key: &PKey<Public>, digest: SignedDigest, message: &[u8], signature: &[u8], element: &'static str) -> Result<(), AuthError> {
    let bad = AuthError::BadSignature(element);
    match key.id() {
        Id::RSA => {
            let spki = key.public_key_to_der().map_err(|_| AuthError::UnsupportedKey)?;
            let public = RsaPublicKey::from_public_key_der(&spki).map_err(|_| AuthError::UnsupportedKey)?;
            let (hash, prefixed) = match digest {
                SignedDigest::Sha1 => (Sha1::digest(message).to_vec(), Pkcs1v15Sign::new::<Sha1>()),
                SignedDigest::Sha512 => (Sha512::digest(message).to_vec(), Pkcs1v15Sign::new::<Sha512>()),
            };
            let raw_ok = public.verify(Pkcs1v15Sign::new_unprefixed(), &hash, signature).is_ok();
            if raw_ok || public.verify(prefixed, &hash, signature).is_ok() { Ok(()) } else { Err(bad) }
        }
        Id::EC => {
            let md = match digest {
                SignedDigest::Sha1 => MessageDigest::sha1(),
                SignedDigest::Sha512 => MessageDigest::sha512(),
            };
            let mut verifier = openssl::sign::Verifier::new(md, key).map_err(|_| AuthError::UnsupportedKey)?;
            match verifier.verify_oneshot(signature, message) {
                Ok(true) => Ok(()),
                _ => Err(bad),
            }
        }
        _ => Err(AuthError::UnsupportedKey),
    }
}

/// Whether one of `issuers` (DER) names `leaf`'s issuer and its key verifies `leaf`'s signature.
fn issued_by_any<'a>(leaf: &X509, issuers: impl IntoIterator<Item = &'a [u8]>) -> bool {
    issuers.into_iter().filter_map(|der| X509::from_der(der).ok()).any(|issuer| {
        issuer.issued(leaf) == X509VerifyResult::OK && issuer.public_key().is_ok_and(|key| leaf.verify(&key).unwrap_or(false))
    })
}

/// The first CN of the subject, empty when there is none.
fn common_name(der: &[u8]) -> String {
    crate::core::pki::inspect::parse_certificate(der)
        .ok()
        .and_then(|cert| cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::capf::frame::Password;

    fn with_password(text: &str) -> Body {
        Body { password: Some(Password::new(text)), ..Body::default() }
    }

    #[test]
    fn password_must_equal_a_valid_authentication_string() {
        assert_eq!(check_password(&with_password("12345"), Some("12345")), Ok(()));
        assert_eq!(check_password(&with_password("12346"), Some("12345")), Err(AuthError::WrongPassword));
        assert_eq!(check_password(&with_password("1234"), Some("12345")), Err(AuthError::WrongPassword));
        assert_eq!(check_password(&Body::default(), Some("12345")), Err(AuthError::WrongPassword));
        // A configured string outside 4-10 digits never authenticates, even when the phone sends the same text.
        for configured in [None, Some(""), Some("123"), Some("12345678901"), Some("12a4")] {
            let given = with_password(configured.unwrap_or_default());
            assert_eq!(check_password(&given, configured), Err(AuthError::NoAuthenticationString), "{configured:?}");
        }
    }

    #[test]
    fn certificate_modes_need_all_three_elements() {
        let trust = TrustAnchors::default();
        let check = CertificateCheck {
            raw_device_name: "SEP001122334455",
            device_name: "SEP001122334455",
            mode: CapfAuthenticationMode::ByExistingCertificatePrecedenceMic,
            lsc_ca_der: &[],
            trust: &trust,
            check_mic_common_name: true,
        };
        assert_eq!(check_certificate(&Body::default(), &check), Err(AuthError::MissingElement("CERTIFICATE")));
        assert!(AuthError::UnknownIssuer.to_string().contains("docs/wire-formats.md §7.5"));
    }
}
