//! The cluster's own certificates: the CA and one certificate per function of each node
//! (CallManager, TFTP or both, CAPF), kept in the state directory and reissued only for a reason
//! (renewal due, hostname or address changed, key size changed).

use std::collections::BTreeSet;

use rsa::RsaPrivateKey;
use time::OffsetDateTime;

use super::BuildError;
use super::state::{Sensitivity, StateDir};
use crate::api::CallControlCluster;
use crate::core::pki::ca::{CaKeySize, CaSettings, ClusterCa, certificate_pem};
use crate::core::pki::inspect::{CertificateFacts, SubjectAltName};
use crate::core::pki::issue::{ServerCertificateRequest, ServerRole, issue_server_certificate_with_new_key, node_roles};
use crate::core::pki::keys;
use crate::core::pki::renewal::{DesiredCertificate, RenewalPolicy, reissue_reasons};
use crate::core::pki::serial::Serial;

/// Server certificates live five years; renewal starts when a third of that is left.
pub const SERVER_VALIDITY_DAYS: u32 = 1825;
const SERVER_KEY_BITS: u32 = 2048;

const CA_CERTIFICATE: &str = "ca/ca.crt";
const CA_KEY: &str = "ca/ca.key";
const ISSUED_SERIALS: &str = "ca/serials";

/// A certificate of one function of one node, with its key.
#[derive(Clone)]
pub struct FunctionCertificate {
    pub node: String,
    pub hostname: String,
    pub role: ServerRole,
    pub certificate_der: Vec<u8>,
    pub key: RsaPrivateKey,
}

impl std::fmt::Debug for FunctionCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionCertificate").field("node", &self.node).field("role", &self.role).field("key", &"<redacted>").finish()
    }
}

/// The CA and the function certificates of one cluster.
#[derive(Debug)]
pub struct ClusterIdentity {
    pub ca: ClusterCa,
    /// In node order, then role order.
    pub functions: Vec<FunctionCertificate>,
    /// Reissues that were due but not done, one line each (see [`Self::load_or_issue`]).
    pub deferred: Vec<String>,
}

/// The state base name (`certs/<node>.<role>`) of the certificate that signs the ITL and the
/// configuration files: the TFTP function of the first TFTP node, the CallManager+TFTP certificate
/// when both run there (P.1-16).
pub fn tftp_signer_base(cluster: &CallControlCluster) -> Option<String> {
    cluster.spec.nodes.iter().find_map(|node| {
        node_roles(&cluster.spec, node)
            .into_iter()
            .find(|role| matches!(role, ServerRole::Tftp | ServerRole::CallManagerAndTftp))
            .map(|role| format!("certs/{}.{}", node.name, role_file_name(role)))
    })
}

/// The state bases (`certs/<node>.<role>`) of the CallManager certificates, one per node that runs
/// CallManager, in the cluster's order: what each signaling pod presents over SIP-TLS (P.1-11).
pub fn call_manager_bases(cluster: &CallControlCluster) -> Vec<String> {
    cluster
        .spec
        .nodes
        .iter()
        .filter_map(|node| {
            node_roles(&cluster.spec, node)
                .into_iter()
                .find(|role| matches!(role, ServerRole::CallManager | ServerRole::CallManagerAndTftp))
                .map(|role| format!("certs/{}.{}", node.name, role_file_name(role)))
        })
        .collect()
}

/// The CA settings of the cluster's spec, used when a CA is created.
fn ca_settings(cluster: &CallControlCluster, namespace: &str) -> CaSettings {
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let mut settings = CaSettings::new(&name, namespace);
    let wanted = cluster.spec.certificate_authority.clone().unwrap_or_default();
    if let Some(size) = wanted.key_size.and_then(|bits| CaKeySize::from_bits(usize::from(bits.bits()))) {
        settings.key_size = size;
    }
    if let Some(days) = wanted.validity_days {
        settings.validity_days = days;
    }
    settings
}

impl ClusterIdentity {
    /// Loads what the state directory holds, issues what is missing and reissues what is due.
    /// Returns what changed, one line each, for the caller to report.
    ///
    /// The ITL signer is never reissued here once it exists: phones holding the ITL accept a new
    /// signer only through a two-step rotation (P.3-18), so a due reissue is reported in `deferred`
    /// and the signer kept.
    pub fn load_or_issue(
        state: &StateDir,
        cluster: &CallControlCluster,
        namespace: &str,
        now: OffsetDateTime,
    ) -> Result<(Self, Vec<String>), BuildError> {
        let mut changes = Vec::new();
        let mut deferred = Vec::new();
        let signer_base = tftp_signer_base(cluster);
        let ca = match load_ca(state)? {
            Some(ca) => ca,
            None => {
                let ca = ClusterCa::generate(&ca_settings(cluster, namespace), now).map_err(|e| BuildError::Pki(e.to_string()))?;
                let pem = ca.to_pem();
                state.write(CA_KEY, pem.private_key.as_bytes(), Sensitivity::Private)?;
                state.write(CA_CERTIFICATE, pem.certificate.as_bytes(), Sensitivity::Public)?;
                changes.push(format!("created the cluster CA {}", ca.facts().map(|f| f.subject).unwrap_or_default()));
                ca
            }
        };
        let mut serials = issued_serials(state)?;
        let mut functions = Vec::new();
        for node in &cluster.spec.nodes {
            for role in node_roles(&cluster.spec, node) {
                let base = format!("certs/{}.{}", node.name, role_file_name(role));
                let desired = DesiredCertificate {
                    common_name: node.hostname.clone(),
                    subject_alt_names: desired_sans(&node.hostname, node.ip_address),
                    key_bits: SERVER_KEY_BITS,
                };
                let current = load_function(state, &base)?;
                let reasons = match &current {
                    Some((der, _)) => match CertificateFacts::from_der(der) {
                        Ok(facts) => {
                            let mut reasons: Vec<String> =
                                reissue_reasons(&facts, &desired, RenewalPolicy::LSC, now).iter().map(|r| r.to_string()).collect();
                            if !crate::core::pki::inspect::is_issued_by(der, ca.certificate_der()) {
                                reasons.push("not issued by the current cluster CA".into());
                            }
                            reasons
                        }
                        Err(e) => vec![format!("unreadable: {e}")],
                    },
                    None => vec!["none issued yet".into()],
                };
                let (certificate_der, key) = match current {
                    Some(pair) if reasons.is_empty() => pair,
                    Some(pair) if signer_base.as_deref() == Some(base.as_str()) => {
                        deferred.push(format!(
                            "the ITL signer ({base}) is due for reissue ({}), which needs a rotation the phones accept: it is kept (P.3-18)",
                            reasons.join("; ")
                        ));
                        pair
                    }
                    _ => {
                        let serial = Serial::unique(&mut rand::thread_rng(), &serials).map_err(|e| BuildError::Pki(e.to_string()))?;
                        serials.insert(serial.clone());
                        let request = ServerCertificateRequest {
                            role,
                            hostname: node.hostname.clone(),
                            ip_address: node.ip_address,
                            validity_days: validity_within(&ca, now)?,
                            serial,
                            now,
                            legacy_signer_keys: false,
                        };
                        let issued =
                            issue_server_certificate_with_new_key(&ca, &request).map_err(|e| BuildError::Pki(format!("{base}: {e}")))?;
                        state.write(&format!("{base}.key"), keys::pkcs8_pem(&issued.key).as_bytes(), Sensitivity::Private)?;
                        state.write(&format!("{base}.crt"), certificate_pem(&issued.certificate_der).as_bytes(), Sensitivity::Public)?;
                        changes.push(format!("issued the {role:?} certificate of node {} ({})", node.name, reasons.join("; ")));
                        (issued.certificate_der, issued.key)
                    }
                };
                functions.push(FunctionCertificate {
                    node: node.name.clone(),
                    hostname: node.hostname.clone(),
                    role,
                    certificate_der,
                    key,
                });
            }
        }
        write_serials(state, &serials)?;
        Ok((ClusterIdentity { ca, functions, deferred }, changes))
    }

    /// The certificate that signs configuration files and the ITL: the TFTP function of the first
    /// TFTP node (the CallManager+TFTP certificate when both run there), as CallManager does (docs/wire-formats.md §4).
    pub fn tftp(&self) -> Option<&FunctionCertificate> {
        self.functions.iter().find(|f| matches!(f.role, ServerRole::Tftp | ServerRole::CallManagerAndTftp))
    }
}

/// Server certificates live [`SERVER_VALIDITY_DAYS`], but never past their CA, whose lifetime is a
/// cluster setting: a leaf that outlived its CA would be refused anyway.
fn validity_within(ca: &ClusterCa, now: OffsetDateTime) -> Result<u32, BuildError> {
    let ca_end = ca.facts().map_err(|e| BuildError::Pki(format!("the cluster CA: {e}")))?.not_after;
    let days_left = (ca_end - now).whole_days() - 1;
    if days_left < 1 {
        return Err(BuildError::Pki(format!("the cluster CA expires on {ca_end}: nothing can be issued under it")));
    }
    Ok(u32::try_from(days_left).unwrap_or(u32::MAX).min(SERVER_VALIDITY_DAYS))
}

pub fn role_file_name(role: ServerRole) -> &'static str {
    match role {
        ServerRole::CallManager => "callmanager",
        ServerRole::Tftp => "tftp",
        ServerRole::CallManagerAndTftp => "callmanager-tftp",
        ServerRole::Capf => "capf",
        ServerRole::Tvs => "tvs",
    }
}

fn desired_sans(hostname: &str, ip: Option<std::net::IpAddr>) -> BTreeSet<SubjectAltName> {
    let mut sans = BTreeSet::from([SubjectAltName::Dns(hostname.to_string())]);
    sans.extend(ip.map(SubjectAltName::Ip));
    sans
}

fn load_function(state: &StateDir, base: &str) -> Result<Option<(Vec<u8>, RsaPrivateKey)>, BuildError> {
    let (Some(certificate), Some(key)) = (state.read(&format!("{base}.crt"))?, state.read_string(&format!("{base}.key"))?) else {
        return Ok(None);
    };
    let der = crate::core::pki::inspect::certificate_der(&certificate).map_err(|e| BuildError::State(format!("{base}.crt: {e}")))?;
    let key = keys::from_pem(&key).map_err(|e| BuildError::State(format!("{base}.key: {e}")))?;
    Ok(Some((der, key)))
}

/// The cluster CA kept in the state directory, if one was created.
pub fn load_ca(state: &StateDir) -> Result<Option<ClusterCa>, BuildError> {
    match (state.read_string(CA_CERTIFICATE)?, state.read_string(CA_KEY)?) {
        (Some(certificate), Some(key)) => {
            ClusterCa::from_pem(&certificate, &key).map(Some).map_err(|e| BuildError::State(format!("{CA_CERTIFICATE}: {e}")))
        }
        _ => Ok(None),
    }
}

/// The serials the cluster CA issued its function certificates with (`ca/serials`).
pub fn issued_serials(state: &StateDir) -> Result<BTreeSet<Serial>, BuildError> {
    let text = state.read_string(ISSUED_SERIALS)?.unwrap_or_default();
    let mut serials = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let bytes = decode_hex(line.trim()).ok_or_else(|| BuildError::State(format!("{ISSUED_SERIALS}: {line:?} is not hex")))?;
        serials.insert(Serial::from_magnitude(&bytes).map_err(|e| BuildError::State(format!("{ISSUED_SERIALS}: {e}")))?);
    }
    Ok(serials)
}

fn write_serials(state: &StateDir, serials: &BTreeSet<Serial>) -> Result<(), BuildError> {
    let text: String = serials.iter().map(|s| format!("{}\n", s.to_hex())).collect();
    Ok(state.write(ISSUED_SERIALS, text.as_bytes(), Sensitivity::Public)?)
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}
