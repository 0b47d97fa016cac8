//! Phone certificates in the state directory: `namespaces/NAMESPACE/devices/SEP<MAC>.crt`, the LSC
//! (or MIC) that a phone's encrypted configuration is encrypted for (P.7-3). The build reads them;
//! `callguard device add-cert` checks one and writes it there.
//!
//! What is checked, since whoever holds the certificate's key reads the phone's configuration and its
//! credentials:
//!
//! - the file is one X.509 certificate, PEM or DER, and not a CA's (basicConstraints CA:true);
//! - its key is RSA, or EC on P-256, P-384 or P-521 (an EC certificate is accepted with a warning:
//!   configuration files are encrypted only for RSA keys, so an encrypted phone gets no `.enc.sgn`);
//! - it names the device. A certificate issued by the cluster CA of the state is an LSC: its
//!   signature must verify with the CA's key, and its CN must be the device name, as CAPF issues it
//!   (Chapter 6). Any other certificate is taken for a MIC (or an LSC of another CA): its CN or a
//!   subjectAltName must carry the device's MAC, as a MIC's `CN=CP-<model>-SEP<MAC>` does.
//!
//! Validity dates are reported, not enforced: a phone decrypts with its key whatever its
//! certificate's dates. The file is written atomically (a temporary file renamed over it), so a build
//! running meanwhile reads the old certificate or the new one, never half of one; it takes no lock,
//! so that it can run while `callguard local` holds the state directory, and `local` serves the new
//! certificate's files within seconds.

use std::fmt;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::namespace_state;
use super::state::{Sensitivity, StateDir};
use crate::core::pki::inspect::{self, CertificateFacts, PublicKeyKind, SubjectAltName};

/// Where the build finds the certificate of `device`, relative to the namespace's state.
pub fn certificate_file(device: &str) -> String {
    format!("devices/{device}.crt")
}

/// `SEP` and twelve hex digits, as the build names phones (P.5-9), normalised to upper case.
pub fn device_name(text: &str) -> Result<String, String> {
    let mac = text.get(..3).filter(|prefix| prefix.eq_ignore_ascii_case("SEP")).and_then(|_| text.get(3..));
    match mac {
        Some(mac) if mac.len() == 12 && mac.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(format!("SEP{}", mac.to_ascii_uppercase())),
        _ => Err(format!("{text:?} is not a device name: SEP and the phone's MAC, twelve hex digits (P.5-9)")),
    }
}

/// Whose certificate it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Issued by the cluster CA of the state.
    Lsc,
    /// Issued by someone else: a MIC, or an LSC of another CA.
    Other { issuer: String },
}

/// A certificate that passed [`check`].
#[derive(Debug, Clone)]
pub struct Checked {
    pub der: Vec<u8>,
    pub origin: Origin,
    pub key: PublicKeyKind,
    /// Accepted, but worth saying.
    pub warnings: Vec<String>,
}

/// Checks `bytes` (PEM or DER) as the certificate of `device` (see the module docs). `cluster_cas`
/// are the DER of the state's CA certificate, when there is one yet, and during a CA rotation of
/// the previous one, whose LSCs are still the phones' own.
pub fn check(device: &str, bytes: &[u8], cluster_cas: &[Vec<u8>], now: OffsetDateTime) -> Result<Checked, String> {
    let der = inspect::certificate_der(bytes)?;
    let facts = CertificateFacts::from_der(&der).map_err(|e| e.to_string())?;
    if facts.is_ca {
        return Err(format!("{} is a CA certificate (basicConstraints CA:true), not a phone's", facts.subject));
    }
    let mut warnings = Vec::new();
    match facts.public_key {
        PublicKeyKind::Rsa { .. } => {}
        PublicKeyKind::Ec(curve) => warnings.push(format!(
            "its key is EC ({curve:?}): configuration files are encrypted only for RSA keys, so if {device}'s profile asks for an \
             encrypted configuration it gets none while this is its certificate (Chapter 7)"
        )),
        PublicKeyKind::Other => return Err("its key is not RSA or EC (P-256, P-384, P-521): no phone certificate has such a key".into()),
    }
    let issued_by_ca = cluster_cas.iter().any(|ca| same_issuer(&der, ca));
    let origin = if issued_by_ca {
        if !inspect::is_issued_by_any(&der, cluster_cas) {
            return Err(format!(
                "it names the cluster CA ({}) as its issuer, but the CA's signature on it does not verify: not an LSC of this cluster",
                facts.issuer
            ));
        }
        let cn = facts.subject_common_name.clone().unwrap_or_default();
        if !cn.eq_ignore_ascii_case(device) {
            return Err(format!(
                "it is an LSC of the cluster CA for {cn:?}, not for {device}: CAPF issues a phone's LSC with its device name as CN (Chapter 6)"
            ));
        }
        Origin::Lsc
    } else {
        let mac = device.get(3..).unwrap_or(device).to_ascii_uppercase();
        let mut names = facts.subject_common_name.iter().cloned().chain(facts.subject_alt_names.iter().map(san_text));
        if !names.any(|name| name.to_ascii_uppercase().contains(&mac)) {
            return Err(format!(
                "it is not issued by the cluster CA, so it must be the phone's MIC, whose subject names the phone \
                 (CN=CP-<model>-{device}); but it names {:?}, not {device}",
                facts.subject
            ));
        }
        Origin::Other { issuer: facts.issuer.clone() }
    };
    if now > facts.not_after {
        warnings.push(format!(
            "it expired on {}; the phone still decrypts with its key, but CAPF should issue a new one",
            facts.not_after.date()
        ));
    } else if now < facts.not_before {
        warnings.push(format!("it is not valid before {}", facts.not_before.date()));
    }
    Ok(Checked { der, origin, key: facts.public_key, warnings })
}

fn same_issuer(leaf: &[u8], issuer: &[u8]) -> bool {
    match (inspect::parse_certificate(leaf), inspect::parse_certificate(issuer)) {
        (Ok(leaf), Ok(issuer)) => leaf.issuer().as_raw() == issuer.subject().as_raw(),
        _ => false,
    }
}

fn san_text(name: &SubjectAltName) -> String {
    match name {
        SubjectAltName::Dns(text) | SubjectAltName::Uri(text) | SubjectAltName::Email(text) | SubjectAltName::Other(text) => text.clone(),
        SubjectAltName::Ip(ip) => ip.to_string(),
    }
}

/// Why nothing was written.
#[derive(Debug)]
pub enum AddError {
    /// The certificate is refused (exit 1).
    Refused(String),
    /// The arguments or the state directory cannot be used (exit 2).
    Unusable(String),
}

impl fmt::Display for AddError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddError::Refused(m) | AddError::Unusable(m) => f.write_str(m),
        }
    }
}

/// What [`add`] wrote.
#[derive(Debug)]
pub struct Added {
    pub device: String,
    pub namespace: String,
    pub path: PathBuf,
    pub checked: Checked,
}

/// The namespace to write into: the one asked for; else the state's only namespace, or `default`
/// when it has none yet.
pub fn choose_namespace(state_root: &Path, asked: Option<&str>) -> Result<String, String> {
    if let Some(namespace) = asked {
        return Ok(namespace.to_owned());
    }
    let mut found: Vec<String> = match std::fs::read_dir(state_root.join("namespaces")) {
        Ok(entries) => entries.flatten().filter(|e| e.path().is_dir()).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("{}: {e}", state_root.join("namespaces").display())),
    };
    found.sort();
    match found.len() {
        0 => Ok("default".to_owned()),
        1 => Ok(found.remove(0)),
        _ => Err(format!("the state directory holds namespaces {found:?}: pass --namespace")),
    }
}

/// Checks `bytes` as the certificate of `device` and writes it, as PEM, where the build of
/// `namespace` (see [`choose_namespace`]) finds it.
pub fn add(state_root: &Path, namespace: Option<&str>, device: &str, bytes: &[u8], now: OffsetDateTime) -> Result<Added, AddError> {
    let device = device_name(device).map_err(AddError::Unusable)?;
    if !state_root.is_dir() {
        return Err(AddError::Unusable(format!(
            "no state directory {}: pass the --state-dir of callguard build or local",
            state_root.display()
        )));
    }
    let namespace = choose_namespace(state_root, namespace).map_err(AddError::Unusable)?;
    let state = StateDir::open(&namespace_state(state_root, &namespace)).map_err(|e| AddError::Unusable(e.to_string()))?;
    let mut cas = Vec::new();
    for file in [super::identity_record::files::CA_CERTIFICATE, super::identity_record::files::PREVIOUS_CA] {
        if let Some(bytes) = state.read(file).map_err(|e| AddError::Unusable(e.to_string()))? {
            cas.push(inspect::certificate_der(&bytes).map_err(|e| AddError::Unusable(format!("{file}: {e}")))?);
        }
    }
    let checked = check(&device, bytes, &cas, now).map_err(|e| AddError::Refused(format!("{device}: certificate refused: {e}")))?;
    let name = certificate_file(&device);
    state
        .write(&name, crate::core::pki::ca::certificate_pem(&checked.der).as_bytes(), Sensitivity::Public)
        .map_err(|e| AddError::Unusable(format!("{}: {e}", state.path(&name).display())))?;
    Ok(Added { path: state.path(&name), device, namespace, checked })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_are_sep_and_twelve_hex_digits() {
        assert_eq!(device_name("SEP001122334455"), Ok("SEP001122334455".into()));
        assert_eq!(device_name("sep00aabbccdd02"), Ok("SEP00AABBCCDD02".into()));
        for bad in ["SEP0011223344", "001122334455", "SEP00112233445G", "SEPé0112233445", ""] {
            assert!(device_name(bad).is_err(), "{bad}");
        }
    }

    fn self_signed(cn: &str, key: &rcgen::KeyPair, ca: bool) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        if ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        params.self_signed(key).unwrap().der().to_vec()
    }

    #[test]
    fn a_certificate_not_of_the_cluster_ca_must_carry_the_mac() {
        let now = OffsetDateTime::now_utc();
        let key = rcgen::KeyPair::generate().unwrap();
        let mic = self_signed("CP-7961G-SEP00AABBCCDD01", &key, false);
        let checked = check("SEP00AABBCCDD01", &mic, &[], now).expect("a MIC naming the phone");
        assert!(matches!(checked.origin, Origin::Other { .. }));
        assert!(checked.warnings.iter().any(|w| w.contains("EC")), "{:?}", checked.warnings);
        let refused = check("SEP00AABBCCDD02", &mic, &[], now).unwrap_err();
        assert!(refused.contains("SEP00AABBCCDD02") && refused.contains("CP-7961G-SEP00AABBCCDD01"), "{refused}");
        let ca = self_signed("SEP00AABBCCDD01", &key, true);
        assert!(check("SEP00AABBCCDD01", &ca, &[], now).unwrap_err().contains("CA certificate"));
        assert!(check("SEP00AABBCCDD01", b"junk", &[], now).is_err());
    }
}
