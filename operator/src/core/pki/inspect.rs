//! Facts about a certificate, read from its DER: what the renewal policy and the status need, plus the
//! fingerprints the wire formats use (docs/wire-formats.md §1.8: MD5 certHash, SHA-1 VPN pins, SHA-256 TVS lookup).

use std::net::IpAddr;

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::objects::{oid_registry, oid2abbrev};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521, OID_PKCS1_RSAENCRYPTION};
use x509_parser::prelude::FromDer;
use x509_parser::x509::{AttributeTypeAndValue, SubjectPublicKeyInfo, X509Name};

use super::serial::{Serial, SerialError};

/// The named curves a certificate key may use here (docs/wire-formats.md §7.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EcCurve {
    P256,
    P384,
    P521,
}

impl EcCurve {
    pub fn bits(self) -> u32 {
        match self {
            EcCurve::P256 => 256,
            EcCurve::P384 => 384,
            EcCurve::P521 => 521,
        }
    }
}

/// The kind and size of a public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PublicKeyKind {
    Rsa {
        bits: u32,
    },
    Ec(EcCurve),
    /// Any other algorithm, or an EC key on a curve not listed in [`EcCurve`].
    Other,
}

impl PublicKeyKind {
    /// RSA modulus bits, or the curve's size; 0 for [`PublicKeyKind::Other`].
    pub fn bits(self) -> u32 {
        match self {
            PublicKeyKind::Rsa { bits } => bits,
            PublicKeyKind::Ec(curve) => curve.bits(),
            PublicKeyKind::Other => 0,
        }
    }
}

/// One subjectAltName entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SubjectAltName {
    Dns(String),
    Ip(IpAddr),
    Uri(String),
    Email(String),
    /// Any other GeneralName form, kept as text for comparison.
    Other(String),
}

/// What the policy functions need to know about a certificate, without the DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    /// The first CN of the subject, if any.
    pub subject_common_name: Option<String>,
    /// The subject DN as RFC 4514-style text (see [`name_string`]), for display and comparison.
    pub subject: String,
    /// The issuer DN, rendered like `subject`.
    pub issuer: String,
    pub subject_alt_names: Vec<SubjectAltName>,
    pub public_key: PublicKeyKind,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub serial: Serial,
    /// BasicConstraints CA:true.
    pub is_ca: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InspectError {
    /// The bytes are not one DER X.509 certificate.
    NotACertificate(String),
    /// The serial is zero or negative (docs/wire-formats.md §1.5).
    BadSerial(SerialError),
    /// An extension the facts need is malformed or repeated.
    BadExtension(String),
}

impl std::fmt::Display for InspectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InspectError::NotACertificate(why) => write!(f, "not a DER X.509 certificate: {why}"),
            InspectError::BadSerial(why) => write!(f, "certificate refused: {why}"),
            InspectError::BadExtension(why) => write!(f, "certificate has a malformed extension: {why}"),
        }
    }
}

impl std::error::Error for InspectError {}

impl CertificateFacts {
    pub fn from_der(der: &[u8]) -> Result<CertificateFacts, InspectError> {
        let cert = parse_certificate(der)?;
        CertificateFacts::from_parsed(&cert)
    }

    pub(crate) fn from_parsed(cert: &X509Certificate<'_>) -> Result<CertificateFacts, InspectError> {
        let subject_common_name = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned);
        let subject_alt_names = match cert.subject_alternative_name() {
            Ok(Some(san)) => san.value.general_names.iter().map(subject_alt_name).collect(),
            Ok(None) => Vec::new(),
            Err(e) => return Err(InspectError::BadExtension(format!("subjectAltName: {e}"))),
        };
        let is_ca = match cert.basic_constraints() {
            Ok(bc) => bc.is_some_and(|bc| bc.value.ca),
            Err(e) => return Err(InspectError::BadExtension(format!("basicConstraints: {e}"))),
        };
        Ok(CertificateFacts {
            subject_common_name,
            subject: name_string(cert.subject()),
            issuer: name_string(cert.issuer()),
            subject_alt_names,
            public_key: public_key_kind(cert.public_key()),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            serial: Serial::from_der_integer(cert.raw_serial()).map_err(InspectError::BadSerial)?,
            is_ca,
        })
    }

    /// Whether `now` lies within notBefore..=notAfter.
    pub fn is_valid_at(&self, now: OffsetDateTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

/// Parses exactly one DER certificate; trailing bytes are an error.
pub(crate) fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, InspectError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok((rest, _)) => Err(InspectError::NotACertificate(format!("{} trailing bytes after the certificate", rest.len()))),
        Err(e) => Err(InspectError::NotACertificate(e.to_string())),
    }
}

/// The kind and size of the key in a parsed SubjectPublicKeyInfo.
pub(crate) fn public_key_kind(spki: &SubjectPublicKeyInfo<'_>) -> PublicKeyKind {
    let algorithm = &spki.algorithm.algorithm;
    if *algorithm == OID_PKCS1_RSAENCRYPTION {
        match spki.parsed() {
            // Counted by hand: x509-parser's key_size() assumes a leading zero octet in the modulus.
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => PublicKeyKind::Rsa { bits: magnitude_bits(rsa.modulus) },
            _ => PublicKeyKind::Other,
        }
    } else if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        match curve {
            Some(oid) if oid == OID_EC_P256 => PublicKeyKind::Ec(EcCurve::P256),
            Some(oid) if oid == OID_NIST_EC_P384 => PublicKeyKind::Ec(EcCurve::P384),
            Some(oid) if oid == OID_NIST_EC_P521 => PublicKeyKind::Ec(EcCurve::P521),
            _ => PublicKeyKind::Other,
        }
    } else {
        PublicKeyKind::Other
    }
}

/// Bits of an unsigned big-endian integer, ignoring leading zero octets.
fn magnitude_bits(bytes: &[u8]) -> u32 {
    match bytes.iter().position(|&b| b != 0) {
        Some(start) => (bytes.len() - start) as u32 * 8 - bytes[start].leading_zeros(),
        None => 0,
    }
}

fn subject_alt_name(name: &GeneralName<'_>) -> SubjectAltName {
    match name {
        GeneralName::DNSName(dns) => SubjectAltName::Dns((*dns).to_owned()),
        GeneralName::URI(uri) => SubjectAltName::Uri((*uri).to_owned()),
        GeneralName::RFC822Name(email) => SubjectAltName::Email((*email).to_owned()),
        GeneralName::IPAddress(bytes) => match <[u8; 4]>::try_from(*bytes) {
            Ok(v4) => SubjectAltName::Ip(IpAddr::from(v4)),
            Err(_) => match <[u8; 16]>::try_from(*bytes) {
                Ok(v6) => SubjectAltName::Ip(IpAddr::from(v6)),
                Err(_) => SubjectAltName::Other(format!("IP:{}", lower_hex(bytes))),
            },
        },
        other => SubjectAltName::Other(other.to_string()),
    }
}

/// A name as RFC 4514-style text: attributes in encoded order, `, ` between RDNs and ` + ` inside one, each
/// `TYPE=value` with the value escaped as RFC 4514 §2.4 says (`trust::names::escape_value`), so that a value
/// holding `,`, `+`, `=` or `\` cannot pass for other attributes in a status or an approval; a value
/// without a string form is `#` and the hex of its DER. x509-parser's own rendering escapes nothing.
pub fn name_string(name: &X509Name<'_>) -> String {
    use x509_parser::der_parser::asn1_rs::{Tag, ToDer};
    let attribute = |attribute: &AttributeTypeAndValue<'_>| {
        let oid = attribute.attr_type();
        let kind = oid2abbrev(oid, oid_registry()).map(str::to_owned).unwrap_or_else(|_| oid.to_id_string());
        let value = attribute.attr_value();
        let text = match value.tag() {
            Tag::NumericString
            | Tag::VisibleString
            | Tag::PrintableString
            | Tag::GeneralString
            | Tag::GraphicString
            | Tag::T61String
            | Tag::VideotexString
            | Tag::Utf8String
            | Tag::Ia5String => std::str::from_utf8(value.data).ok().map(str::to_owned),
            Tag::BmpString if value.data.len() % 2 == 0 => {
                String::from_utf16(&value.data.chunks_exact(2).map(|pair| u16::from_be_bytes([pair[0], pair[1]])).collect::<Vec<_>>()).ok()
            }
            _ => None,
        };
        match text {
            Some(text) => format!("{kind}={}", crate::core::trust::names::escape_value(&text)),
            None => {
                let der = value.to_der_vec().unwrap_or_else(|_| value.data.to_vec());
                format!("{kind}=#{}", der.iter().map(|b| format!("{b:02X}")).collect::<String>())
            }
        }
    };
    name.iter().map(|rdn| rdn.iter().map(attribute).collect::<Vec<_>>().join(" + ")).collect::<Vec<_>>().join(", ")
}

/// Whether `issuer_der`'s key signed `leaf_der` (and the leaf names it as issuer). Tells the CA rotation
/// which leaves the old CA issued, since CAs of one cluster may share a subject DN and LSCs carry no
/// authority key identifier (docs/wire-formats.md §7.8).
pub fn is_issued_by(leaf_der: &[u8], issuer_der: &[u8]) -> bool {
    let (Ok(leaf), Ok(issuer)) = (parse_certificate(leaf_der), parse_certificate(issuer_der)) else {
        return false;
    };
    signed_by(&leaf, &issuer)
}

/// The leaf names `issuer` as its issuer and `issuer`'s key signed it.
fn signed_by(leaf: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    leaf.issuer().as_raw() == issuer.subject().as_raw() && leaf.verify_signature(Some(issuer.public_key())).is_ok()
}

/// Whether one of `issuers` (DER) issued `leaf_der`, as [`is_issued_by`] checks it; the leaf is
/// parsed once.
pub fn is_issued_by_any(leaf_der: &[u8], issuers: &[Vec<u8>]) -> bool {
    let Ok(leaf) = parse_certificate(leaf_der) else { return false };
    issuers.iter().filter_map(|der| parse_certificate(der).ok()).any(|issuer| signed_by(&leaf, &issuer))
}

/// The most certificates a CA bundle may hold: a manufacturer has a handful of CAs.
pub const MAX_BUNDLE_CERTIFICATES: usize = 64;

/// The DER certificates of a PEM bundle of CA certificates: at least one, at most
/// [`MAX_BUNDLE_CERTIFICATES`], each one a CA's (basicConstraints CA:true).
pub fn ca_bundle(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut bundle = Vec::new();
    for (index, item) in CertificateDer::pem_slice_iter(pem).enumerate() {
        let der = item.map_err(|e| format!("PEM block {}: {e}", index + 1))?.to_vec();
        let facts = CertificateFacts::from_der(&der).map_err(|e| format!("certificate {}: {e}", index + 1))?;
        if !facts.is_ca {
            return Err(format!("certificate {} ({}) is not a CA certificate (basicConstraints CA:true)", index + 1, facts.subject));
        }
        bundle.push(der);
        if bundle.len() > MAX_BUNDLE_CERTIFICATES {
            return Err(format!("more than {MAX_BUNDLE_CERTIFICATES} certificates"));
        }
    }
    if bundle.is_empty() {
        return Err("no PEM CERTIFICATE block".into());
    }
    Ok(bundle)
}

/// MD5 of the DER certificate as 32 lowercase hex characters: the `certHash` of phone status (P.7-3).
/// The DER of a certificate given as PEM (its first `CERTIFICATE` block) or as raw DER.
pub fn certificate_der(pem_or_der: &[u8]) -> Result<Vec<u8>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    match CertificateDer::from_pem_slice(pem_or_der) {
        Ok(der) => Ok(der.to_vec()),
        // A DER certificate is a SEQUENCE.
        Err(_) if pem_or_der.first() == Some(&0x30) => Ok(pem_or_der.to_vec()),
        Err(e) => Err(format!("neither a PEM CERTIFICATE nor DER: {e}")),
    }
}

pub fn md5_hex(der: &[u8]) -> String {
    lower_hex(&Md5::digest(der))
}

/// SHA-1 fingerprint of the DER certificate, lowercase hex (VPN pins, docs/wire-formats.md §1.8).
pub fn sha1_hex(der: &[u8]) -> String {
    lower_hex(&Sha1::digest(der))
}

/// SHA-256 fingerprint of the DER certificate, lowercase hex (TVS lookup, docs/wire-formats.md §1.8; status `sha256`).
pub fn sha256_hex(der: &[u8]) -> String {
    lower_hex(&Sha256::digest(der))
}

/// Lowercase hex without separators.
pub fn lower_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_the_standard_test_vectors() {
        // RFC 1321 and FIPS 180 test vectors for "abc".
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(md5_hex(b"").len(), 32);
    }

    #[test]
    fn magnitude_bits_ignores_leading_zeros() {
        assert_eq!(magnitude_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(magnitude_bits(&[0x01, 0x00]), 9);
        assert_eq!(magnitude_bits(&[0, 0]), 0);
    }

    #[test]
    fn name_values_are_escaped_so_that_none_passes_for_other_attributes() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[1]));
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, "gw.example, O=Cisco Systems");
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "#1 \\ branch ");
        let der = params.self_signed(&key).unwrap().der().to_vec();
        let facts = CertificateFacts::from_der(&der).unwrap();
        assert_eq!(facts.subject, r"CN=gw.example\, O=Cisco Systems, O=\#1 \\ branch\ ");
        assert_eq!(facts.issuer, facts.subject);
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(matches!(CertificateFacts::from_der(b"not der"), Err(InspectError::NotACertificate(_))));
        assert!(!is_issued_by(b"x", b"y"));
    }
}
