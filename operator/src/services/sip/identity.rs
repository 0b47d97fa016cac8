//! Who a TLS peer is, from its certificate, whatever TLS library took the connection: the rules
//! a phone's certificate must meet (P.1-11, P.5-2, Chapter 6) and a trunk peer's subject name
//! (Table 14-1). The TLS layer has already checked the chain's signatures and dates; these rules
//! check them again, so that the OpenSSL path for old phones and the rustls path cannot differ.

use time::OffsetDateTime;

use crate::core::pki::inspect;

/// Where a phone's certificate comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateKind {
    /// Locally significant certificate, issued by the cluster's CA through CAPF.
    Lsc,
    /// Manufacturer-installed certificate, issued by a configured manufacturer CA.
    Mic,
}

/// What the service knows of one phone, for the identity check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhoneCredentials<'a> {
    /// `SEP` and the MAC in capitals: the CN its certificate must carry.
    pub device: &'a str,
    /// SHA-256 (lowercase hex) of the LSC CAPF issued it and has not deleted, if any.
    pub current_lsc_sha256: Option<&'a str>,
    /// Whether its CAPF authentication mode lets it use its MIC for signalling: with precedence to
    /// the MIC, or with precedence to the LSC while it has none (Table 5-1).
    pub mic_accepted: bool,
}

/// Why a phone's TLS identity is refused; each is a log line's reason and a counter's label.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityRefusal {
    #[error("no client certificate: an Authenticated or Encrypted phone must present its LSC or MIC (P.5-2)")]
    NoCertificate,
    #[error("the client certificate cannot be read: {0}")]
    Unreadable(String),
    #[error("the client certificate is not valid now ({not_before} to {not_after})")]
    OutOfValidity { not_before: OffsetDateTime, not_after: OffsetDateTime },
    #[error("the client certificate ({subject}) chains to neither the cluster CA nor a configured manufacturer CA")]
    UnknownIssuer { subject: String },
    #[error("the certificate's CN {0:?} is not a phone's device name (SEP and 12 hex digits)")]
    NotADeviceName(String),
    #[error("no phone {0} is configured")]
    UnknownDevice(String),
    #[error("the certificate names {presented}, but the request is for {expected}")]
    OtherDevice { presented: String, expected: String },
    #[error("{0} presented an LSC that is not its current one (deleted or superseded through CAPF)")]
    LscNotCurrent(String),
    #[error("{0} presented its MIC, which its CAPF authentication mode does not accept for signalling (Table 5-1)")]
    MicNotAccepted(String),
}

impl IdentityRefusal {
    /// A short label for the refusal counter.
    pub fn label(&self) -> &'static str {
        match self {
            IdentityRefusal::NoCertificate => "no_certificate",
            IdentityRefusal::Unreadable(_) => "unreadable",
            IdentityRefusal::OutOfValidity { .. } => "out_of_validity",
            IdentityRefusal::UnknownIssuer { .. } => "unknown_issuer",
            IdentityRefusal::NotADeviceName(_) => "not_a_device_name",
            IdentityRefusal::UnknownDevice(_) => "unknown_device",
            IdentityRefusal::OtherDevice { .. } => "other_device",
            IdentityRefusal::LscNotCurrent(_) => "lsc_not_current",
            IdentityRefusal::MicNotAccepted(_) => "mic_not_accepted",
        }
    }
}

/// A phone as its certificate proves it: the device name, and which kind of certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhoneIdentity {
    pub device: String,
    pub kind: CertificateKind,
}

/// The trust anchors of phone certificates.
#[derive(Clone, Debug, Default)]
pub struct PhoneAnchors {
    /// The cluster CA, and during a CA rotation the previous one too.
    pub cluster_cas: Vec<Vec<u8>>,
    pub manufacturer_cas: Vec<Vec<u8>>,
}

/// Checks the leaf certificate a phone presented over TLS and names the phone. `lookup` finds a
/// configured phone by device name.
pub fn identify_phone<'a>(
    leaf_der: Option<&[u8]>,
    anchors: &PhoneAnchors,
    lookup: impl Fn(&str) -> Option<PhoneCredentials<'a>>,
    now: OffsetDateTime,
) -> Result<PhoneIdentity, IdentityRefusal> {
    let leaf = leaf_der.ok_or(IdentityRefusal::NoCertificate)?;
    let facts = inspect::CertificateFacts::from_der(leaf).map_err(|e| IdentityRefusal::Unreadable(format!("{e:?}")))?;
    if now < facts.not_before || now > facts.not_after {
        return Err(IdentityRefusal::OutOfValidity { not_before: facts.not_before, not_after: facts.not_after });
    }
    let kind = if inspect::is_issued_by_any(leaf, &anchors.cluster_cas) {
        CertificateKind::Lsc
    } else if inspect::is_issued_by_any(leaf, &anchors.manufacturer_cas) {
        CertificateKind::Mic
    } else {
        return Err(IdentityRefusal::UnknownIssuer { subject: facts.subject });
    };
    let name = facts.subject_common_name.unwrap_or_default();
    if !is_device_name(&name) {
        return Err(IdentityRefusal::NotADeviceName(name));
    }
    let phone = lookup(&name).ok_or_else(|| IdentityRefusal::UnknownDevice(name.clone()))?;
    match kind {
        CertificateKind::Lsc if phone.current_lsc_sha256 != Some(inspect::sha256_hex(leaf).as_str()) => {
            Err(IdentityRefusal::LscNotCurrent(name))
        }
        CertificateKind::Mic if !phone.mic_accepted => Err(IdentityRefusal::MicNotAccepted(name)),
        _ => Ok(PhoneIdentity { device: name, kind }),
    }
}

/// `SEP` followed by 12 hexadecimal digits.
pub fn is_device_name(name: &str) -> bool {
    crate::core::build::devices::device_name(name).is_ok_and(|normal| normal == name)
}

/// Whether a trunk peer's certificate subject is one of the X.509 subject names of the port's
/// profiles (Table 14-1): its CN, or a DNS name or IP address among its subject alternative names.
pub fn trunk_subject_matches(leaf_der: &[u8], subject_names: &[&str]) -> bool {
    let Ok(facts) = inspect::CertificateFacts::from_der(leaf_der) else { return false };
    let alt_names = facts.subject_alt_names.iter().filter_map(|name| match name {
        inspect::SubjectAltName::Dns(dns) => Some(dns.clone()),
        inspect::SubjectAltName::Ip(ip) => Some(ip.to_string()),
        _ => None,
    });
    facts.subject_common_name.into_iter().chain(alt_names).any(|name| subject_names.iter().any(|wanted| wanted.eq_ignore_ascii_case(&name)))
}

/// An LSC of `ca` for `device` and the key `spki`, valid from now for 30 days: for the tests here
/// and the server's.
#[cfg(test)]
pub(crate) fn lsc_for(ca: &crate::core::pki::ca::ClusterCa, device: &str, spki: &[u8]) -> Vec<u8> {
    use crate::core::pki::issue::{LscKeySource, LscRequest, issue_lsc};
    let request = LscRequest {
        device_name: device,
        key: LscKeySource::PublicKey(spki),
        validity_days: 30,
        serial: crate::core::pki::serial::Serial::random(&mut rand::thread_rng()),
        now: OffsetDateTime::now_utc(),
    };
    issue_lsc(ca, &request).expect("the test's LSC request is valid").certificate_der
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::pki::ca::{CaSettings, ClusterCa};
    use crate::core::pki::keys;
    use rsa::pkcs8::EncodePublicKey;
    use std::sync::OnceLock;

    const PHONE: &str = "SEP001122334455";

    struct Fixture {
        cluster: ClusterCa,
        manufacturer: ClusterCa,
        stranger: ClusterCa,
        spki: Vec<u8>,
    }

    /// CAs and a phone key, made once: RSA key generation is slow.
    fn fixture() -> &'static Fixture {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(|| {
            let now = OffsetDateTime::now_utc();
            let ca = |name: &str| ClusterCa::generate(&CaSettings::new(name, "default"), now).unwrap();
            let key = keys::generate_rsa(1024);
            let spki = rsa::RsaPublicKey::from(&key).to_public_key_der().unwrap().as_bytes().to_vec();
            Fixture { cluster: ca("cluster"), manufacturer: ca("manufacturer"), stranger: ca("stranger"), spki }
        })
    }

    fn certificate(ca: &ClusterCa, device: &str) -> Vec<u8> {
        lsc_for(ca, device, &fixture().spki)
    }

    fn anchors() -> PhoneAnchors {
        let f = fixture();
        PhoneAnchors {
            cluster_cas: vec![f.cluster.certificate_der().to_vec()],
            manufacturer_cas: vec![f.manufacturer.certificate_der().to_vec()],
        }
    }

    fn check(leaf: Option<&[u8]>, current_lsc: Option<&str>, mic_accepted: bool) -> Result<PhoneIdentity, IdentityRefusal> {
        let lookup =
            |name: &str| (name == PHONE).then_some(PhoneCredentials { device: PHONE, current_lsc_sha256: current_lsc, mic_accepted });
        identify_phone(leaf, &anchors(), lookup, OffsetDateTime::now_utc())
    }

    #[test]
    fn the_current_lsc_names_its_phone_and_a_deleted_or_other_one_does_not() {
        let lsc = certificate(&fixture().cluster, PHONE);
        let fingerprint = inspect::sha256_hex(&lsc);
        assert_eq!(check(Some(&lsc), Some(&fingerprint), false), Ok(PhoneIdentity { device: PHONE.into(), kind: CertificateKind::Lsc }));
        assert_eq!(check(Some(&lsc), None, true), Err(IdentityRefusal::LscNotCurrent(PHONE.into())));
        let superseded = certificate(&fixture().cluster, PHONE);
        assert_eq!(check(Some(&superseded), Some(&fingerprint), false), Err(IdentityRefusal::LscNotCurrent(PHONE.into())));
    }

    #[test]
    fn a_mic_counts_only_where_the_authentication_mode_accepts_it() {
        let mic = certificate(&fixture().manufacturer, PHONE);
        assert_eq!(check(Some(&mic), None, true), Ok(PhoneIdentity { device: PHONE.into(), kind: CertificateKind::Mic }));
        assert_eq!(check(Some(&mic), None, false), Err(IdentityRefusal::MicNotAccepted(PHONE.into())));
    }

    #[test]
    fn no_certificate_an_unknown_issuer_and_unknown_or_foreign_names_are_refused() {
        assert_eq!(check(None, None, true), Err(IdentityRefusal::NoCertificate));
        let stranger = certificate(&fixture().stranger, PHONE);
        assert!(matches!(check(Some(&stranger), None, true), Err(IdentityRefusal::UnknownIssuer { .. })));
        let other = certificate(&fixture().cluster, "SEP00112233445A");
        let fingerprint = inspect::sha256_hex(&other);
        assert_eq!(check(Some(&other), Some(&fingerprint), true), Err(IdentityRefusal::UnknownDevice("SEP00112233445A".into())));
        assert!(matches!(check(Some(b"not a certificate"), None, true), Err(IdentityRefusal::Unreadable(_))));
    }

    #[test]
    fn device_names_are_sep_and_twelve_hex_digits() {
        assert!(is_device_name("SEP001122AABBCC"));
        for name in ["SEP00112233445", "SEP0011223344556", "CSF001122334455", "SEP00112233445G", "", "SEPé1122334455"] {
            assert!(!is_device_name(name), "{name}");
        }
    }

    #[test]
    fn a_trunk_peer_matches_by_cn_case_insensitively_and_nothing_else() {
        let leaf = certificate(&fixture().cluster, PHONE);
        assert!(trunk_subject_matches(&leaf, &["gw.example.com", "sep001122334455"]));
        assert!(!trunk_subject_matches(&leaf, &["gw.example.com", "SEP00112233445"]));
        assert!(!trunk_subject_matches(&leaf, &[]));
        assert!(!trunk_subject_matches(b"junk", &["SEP001122334455"]));
    }
}
