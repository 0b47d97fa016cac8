//! The cluster CA: a self-signed RSA root that issues the CallManager, TFTP and CAPF server certificates and
//! the phones' LSCs (P.1-13: the CAPF certificate is the trust anchor for LSCs).
//!
//! The CA key leaves this type only as PEM, for a Secret or the state directory: no `Debug` prints it.

use std::sync::{Arc, OnceLock};

use pkcs8::LineEnding;
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rsa::RsaPrivateKey;
use rsa::traits::PublicKeyParts;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime, UtcOffset};
use x509_parser::extensions::KeyUsage;
use x509_parser::public_key::PublicKey;

use super::inspect::{self, CertificateFacts, InspectError};
use super::keys::{self, KeyError};
use super::serial::Serial;
use super::signing::RsaSigningKey;

/// Organisation of the CA subject; leaves copy it (docs/wire-formats.md §7.8).
pub const CA_ORGANIZATION: &str = "Callguard";
/// Default CA lifetime: ten years, twice the default LSC lifetime of five years (the CAPF service parameter, P.6-7),
/// so a rotation can overlap a full LSC lifetime.
pub const DEFAULT_CA_VALIDITY_DAYS: u32 = 3650;
/// Longest CA lifetime accepted: thirty years.
pub const MAX_CA_VALIDITY_DAYS: u32 = 10_950;
/// Backdating of notBefore, so a peer whose clock runs a little slow accepts a fresh certificate. The LSC profile
/// fixes it at five minutes (docs/wire-formats.md §7.8); the CA and server certificates use the same for the same reason.
pub const NOT_BEFORE_BACKDATE: Duration = Duration::minutes(5);
/// RFC 5280 ub-common-name and ub-organizational-unit-name.
pub(crate) const MAX_NAME_CHARS: usize = 64;

/// RSA size of the CA key. 2048 matches the signer-key rule of docs/wire-formats.md §3.3; the CA key never signs a trust file,
/// so larger sizes are allowed for sites that want them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CaKeySize {
    #[default]
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

impl CaKeySize {
    pub fn bits(self) -> usize {
        match self {
            CaKeySize::Rsa2048 => 2048,
            CaKeySize::Rsa3072 => 3072,
            CaKeySize::Rsa4096 => 4096,
        }
    }

    pub fn from_bits(bits: usize) -> Option<CaKeySize> {
        [CaKeySize::Rsa2048, CaKeySize::Rsa3072, CaKeySize::Rsa4096].into_iter().find(|size| size.bits() == bits)
    }
}

/// What a new CA is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaSettings {
    /// The CallControlCluster's name: the subject becomes `CN=<cluster> CA, O=Callguard, OU=<namespace>`.
    pub cluster_name: String,
    pub namespace: String,
    pub key_size: CaKeySize,
    pub validity_days: u32,
}

impl CaSettings {
    /// RSA 2048 and ten years.
    pub fn new(cluster_name: &str, namespace: &str) -> CaSettings {
        CaSettings {
            cluster_name: cluster_name.to_owned(),
            namespace: namespace.to_owned(),
            key_size: CaKeySize::default(),
            validity_days: DEFAULT_CA_VALIDITY_DAYS,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum CaError {
    /// A setting is out of range; the text names it.
    InvalidSettings(String),
    /// The certificate PEM or DER does not parse.
    Certificate(String),
    /// The private key PEM does not parse or is not RSA.
    Key(KeyError),
    /// The certificate is not a CA that may sign certificates.
    NotACa(String),
    /// The private key does not belong to the certificate.
    KeyMismatch,
    /// The certificate encoder failed.
    Encoding(String),
}

impl std::fmt::Display for CaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaError::InvalidSettings(why) => write!(f, "invalid CA settings: {why}"),
            CaError::Certificate(why) => write!(f, "CA certificate: {why}"),
            CaError::Key(why) => write!(f, "CA key: {why}"),
            CaError::NotACa(why) => write!(f, "not a usable CA certificate: {why}"),
            CaError::KeyMismatch => write!(f, "the CA private key does not match the CA certificate's public key"),
            CaError::Encoding(why) => write!(f, "encoding the CA certificate failed: {why}"),
        }
    }
}

impl std::error::Error for CaError {}

impl From<InspectError> for CaError {
    fn from(e: InspectError) -> CaError {
        CaError::Certificate(e.to_string())
    }
}

/// The CA certificate and key as PEM, for a Secret or the state directory. `Debug` hides the key.
#[derive(Clone, PartialEq, Eq)]
pub struct CaPem {
    /// `CERTIFICATE`.
    pub certificate: String,
    /// Unencrypted PKCS#8 `PRIVATE KEY`.
    pub private_key: String,
}

impl std::fmt::Debug for CaPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaPem").field("certificate", &self.certificate).field("private_key", &"<redacted>").finish()
    }
}

/// The cluster CA. Built only through [`ClusterCa::generate`] or the checked loaders, so the key always
/// matches the certificate and the certificate is a CA.
#[derive(Clone)]
pub struct ClusterCa {
    certificate_der: Vec<u8>,
    key: RsaPrivateKey,
    /// rcgen's issuer with the key loaded into OpenSSL, made once (see `pki::signing`).
    issuer: Arc<OnceLock<rcgen::Issuer<'static, RsaSigningKey>>>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let subject = CertificateFacts::from_der(&self.certificate_der).map(|facts| facts.subject).unwrap_or_default();
        f.debug_struct("ClusterCa").field("subject", &subject).field("key", &"<redacted>").finish()
    }
}

impl ClusterCa {
    /// A new self-signed CA: BasicConstraints CA:true pathlen 0 (it issues leaves only) and KeyUsage
    /// keyCertSign + cRLSign, both critical; valid from `now` − 5 min for `validity_days`.
    pub fn generate(settings: &CaSettings, now: OffsetDateTime) -> Result<ClusterCa, CaError> {
        let common_name = format!("{} CA", settings.cluster_name);
        check_name("cluster name", &settings.cluster_name, &common_name)?;
        check_name("namespace", &settings.namespace, &settings.namespace)?;
        if !(1..=MAX_CA_VALIDITY_DAYS).contains(&settings.validity_days) {
            return Err(CaError::InvalidSettings(format!("validityDays {} is outside 1..={MAX_CA_VALIDITY_DAYS}", settings.validity_days)));
        }
        let key = keys::generate_rsa(settings.key_size.bits());
        let signing_key = rcgen_key(&key)?;

        let now = whole_seconds_utc(now);
        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, common_name);
        subject.push(DnType::OrganizationName, CA_ORGANIZATION);
        subject.push(DnType::OrganizationalUnitName, settings.namespace.as_str());
        params.distinguished_name = subject;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(Serial::random(&mut rand::thread_rng()).as_bytes().to_vec().into());
        params.not_before = now - NOT_BEFORE_BACKDATE;
        params.not_after = now + Duration::days(i64::from(settings.validity_days));
        let certificate = params.self_signed(&signing_key).map_err(|e| CaError::Encoding(e.to_string()))?;
        Ok(ClusterCa { certificate_der: certificate.der().to_vec(), key, issuer: Arc::default() })
    }

    /// Loads a CA from its certificate PEM and its PKCS#8 or PKCS#1 key PEM, checking that the certificate is a CA
    /// allowed to sign certificates and that the key is its key.
    pub fn from_pem(certificate_pem: &str, key_pem: &str) -> Result<ClusterCa, CaError> {
        let der = CertificateDer::from_pem_slice(certificate_pem.as_bytes())
            .map_err(|e| CaError::Certificate(format!("expected a CERTIFICATE PEM: {e}")))?;
        let key = keys::from_pem(key_pem).map_err(CaError::Key)?;
        ClusterCa::from_parts(der.to_vec(), key)
    }

    /// Like [`ClusterCa::from_pem`], from DER and a key already loaded.
    pub fn from_parts(certificate_der: Vec<u8>, key: RsaPrivateKey) -> Result<ClusterCa, CaError> {
        let cert = inspect::parse_certificate(&certificate_der)?;
        let is_ca = cert.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(CaError::NotACa("BasicConstraints CA:true is missing".into()));
        }
        let may_sign = match cert.key_usage() {
            Ok(Some(usage)) => KeyUsage::key_cert_sign(usage.value),
            Ok(None) => true,
            Err(e) => return Err(CaError::NotACa(format!("malformed KeyUsage: {e}"))),
        };
        if !may_sign {
            return Err(CaError::NotACa("KeyUsage lacks keyCertSign".into()));
        }
        if CaKeySize::from_bits(keys::modulus_bits(&key)).is_none() {
            return Err(CaError::Key(KeyError::Unsupported(format!(
                "the CA key has {} bits; allowed are 2048, 3072 and 4096",
                keys::modulus_bits(&key)
            ))));
        }
        let matches = match cert.public_key().parsed() {
            Ok(PublicKey::RSA(public)) => {
                strip_zeros(public.modulus) == key.n().to_bytes_be().as_slice()
                    && strip_zeros(public.exponent) == key.e().to_bytes_be().as_slice()
            }
            _ => false,
        };
        if !matches {
            return Err(CaError::KeyMismatch);
        }
        Ok(ClusterCa { certificate_der, key, issuer: Arc::default() })
    }

    /// The certificate and the unencrypted PKCS#8 key, as PEM.
    pub fn to_pem(&self) -> CaPem {
        CaPem { certificate: self.certificate_pem(), private_key: keys::pkcs8_pem(&self.key) }
    }

    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate_der
    }

    pub fn certificate_pem(&self) -> String {
        certificate_pem(&self.certificate_der)
    }

    /// The CA key. Do not log it.
    pub fn key(&self) -> &RsaPrivateKey {
        &self.key
    }

    pub fn facts(&self) -> Result<CertificateFacts, InspectError> {
        CertificateFacts::from_der(&self.certificate_der)
    }

    /// The issuer rcgen signs leaves with: the CA's subject, key identifier and key.
    pub(crate) fn rcgen_issuer(&self) -> Result<&rcgen::Issuer<'static, RsaSigningKey>, CaError> {
        if let Some(issuer) = self.issuer.get() {
            return Ok(issuer);
        }
        let der = CertificateDer::from(self.certificate_der.as_slice());
        let key = RsaSigningKey::new(&self.key).map_err(CaError::Key)?;
        let issuer = rcgen::Issuer::from_ca_cert_der(&der, key).map_err(|e| CaError::Encoding(e.to_string()))?;
        Ok(self.issuer.get_or_init(|| issuer))
    }
}

/// PEM `CERTIFICATE` of a DER certificate.
pub fn certificate_pem(der: &[u8]) -> String {
    pkcs8::der::pem::encode_string("CERTIFICATE", LineEnding::LF, der).unwrap_or_default()
}

/// rcgen's view of an RSA key: ring signs it with PKCS#1 v1.5 SHA-256.
pub(crate) fn rcgen_key(key: &RsaPrivateKey) -> Result<KeyPair, CaError> {
    KeyPair::try_from(keys::pkcs8_der(key).as_slice()).map_err(|e| CaError::Encoding(format!("rcgen refused the RSA key: {e}")))
}

/// `now` in UTC without the sub-second part, which certificate times cannot hold.
pub(crate) fn whole_seconds_utc(now: OffsetDateTime) -> OffsetDateTime {
    let now = now.to_offset(UtcOffset::UTC);
    now - Duration::nanoseconds(i64::from(now.nanosecond()))
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

fn check_name(field: &str, value: &str, rendered: &str) -> Result<(), CaError> {
    if value.trim().is_empty() {
        return Err(CaError::InvalidSettings(format!("{field} is empty")));
    }
    if rendered.chars().count() > MAX_NAME_CHARS {
        return Err(CaError::InvalidSettings(format!(
            "{field} gives the subject attribute \"{rendered}\", longer than {MAX_NAME_CHARS} characters (RFC 5280 upper bounds)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    pub(crate) fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap()
    }

    fn ca() -> &'static ClusterCa {
        static CA: OnceLock<ClusterCa> = OnceLock::new();
        CA.get_or_init(|| ClusterCa::generate(&CaSettings::new("cucm-lab", "voice"), now()).unwrap())
    }

    #[test]
    fn generated_ca_has_the_requested_subject_validity_and_key() {
        let facts = ca().facts().unwrap();
        assert_eq!(facts.subject_common_name.as_deref(), Some("cucm-lab CA"));
        assert_eq!(facts.subject, "CN=cucm-lab CA, O=Callguard, OU=voice");
        assert_eq!(facts.issuer, facts.subject, "self-signed");
        assert!(facts.is_ca);
        assert_eq!(facts.public_key.bits(), 2048);
        assert_eq!(facts.not_before, now() - Duration::minutes(5));
        assert_eq!(facts.not_after, now() + Duration::days(3650));
        assert_eq!(facts.serial.as_bytes().len(), 16);
    }

    #[test]
    fn pem_round_trip_keeps_certificate_and_key() {
        let pem = ca().to_pem();
        assert!(pem.certificate.starts_with("-----BEGIN CERTIFICATE-----"));
        // An unencrypted PKCS#8 key: the label says so, and it is not the ENCRYPTED form.
        let (label, _) = pkcs8::der::pem::decode_vec(pem.private_key.as_bytes()).unwrap();
        assert_eq!(label, "PRIVATE KEY");
        let loaded = ClusterCa::from_pem(&pem.certificate, &pem.private_key).unwrap();
        assert_eq!(loaded.certificate_der(), ca().certificate_der());
        assert_eq!(loaded.key(), ca().key());
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let pem = ca().to_pem();
        let key_body: String = pem.private_key.lines().nth(1).unwrap().to_owned();
        for shown in [format!("{:?}", ca()), format!("{pem:?}")] {
            assert!(shown.contains("<redacted>"), "{shown}");
            assert!(!shown.contains(&key_body), "the key leaked into Debug output");
            assert!(!shown.contains("PRIVATE KEY"), "the key leaked into Debug output");
        }
    }

    #[test]
    fn loader_refuses_a_foreign_key_and_a_non_ca() {
        let other_key = keys::generate_rsa(2048);
        assert_eq!(ClusterCa::from_parts(ca().certificate_der().to_vec(), other_key.clone()).unwrap_err(), CaError::KeyMismatch);

        // A self-signed leaf (no BasicConstraints) is not a CA.
        let params = CertificateParams::new(vec!["leaf.example".to_string()]).unwrap();
        let leaf = params.self_signed(&rcgen_key(&other_key).unwrap()).unwrap();
        assert!(matches!(ClusterCa::from_parts(leaf.der().to_vec(), other_key), Err(CaError::NotACa(_))));

        assert!(matches!(ClusterCa::from_pem("garbage", &ca().to_pem().private_key), Err(CaError::Certificate(_))));
        assert!(matches!(ClusterCa::from_pem(&ca().certificate_pem(), "garbage"), Err(CaError::Key(_))));
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        let mut long = CaSettings::new(&"c".repeat(62), "voice");
        assert!(matches!(ClusterCa::generate(&long, now()), Err(CaError::InvalidSettings(_))));
        long.cluster_name = "ok".into();
        long.validity_days = 0;
        assert!(matches!(ClusterCa::generate(&long, now()), Err(CaError::InvalidSettings(_))));
        assert!(matches!(ClusterCa::generate(&CaSettings::new("", "voice"), now()), Err(CaError::InvalidSettings(_))));
    }

    #[test]
    fn key_sizes_map_to_bits() {
        assert_eq!(CaKeySize::default().bits(), 2048);
        assert_eq!(CaKeySize::from_bits(3072), Some(CaKeySize::Rsa3072));
        assert_eq!(CaKeySize::from_bits(1024), None);
    }
}
