//! The cluster's own certificates: the CA and one certificate per function of each node
//! (CallManager, TFTP or both, CAPF), kept in the state directory and reissued only for a reason
//! (renewal due, hostname or address changed, key size changed).

use std::collections::BTreeSet;

use rsa::RsaPrivateKey;
use time::OffsetDateTime;

use super::identity_record::{identity_id, sha256_hex};
use super::rotation::{self, SignerRotation};
use super::state::RETIRED;
use super::state::{Sensitivity, StateDir};
use super::{BuildError, Change, ChangeKind};
use crate::api::{CallControlCluster, ClusterNode, IdentityRecord};
use crate::core::pki::ca::{CaKeySize, CaSettings, ClusterCa, certificate_pem};
use crate::core::pki::inspect::{CertificateFacts, SubjectAltName};
use crate::core::pki::issue::{ServerCertificateRequest, ServerRole, issue_server_certificate_with_new_key, node_roles};
use crate::core::pki::keys;
use crate::core::pki::renewal::{DesiredCertificate, RenewalPolicy, reissue_reasons};
use crate::core::pki::serial::Serial;
use crate::core::trust::TrustList;

/// Server certificates live five years; renewal starts when a third of that is left.
pub const SERVER_VALIDITY_DAYS: u32 = 1825;
const SERVER_KEY_BITS: u32 = 2048;

const CA_CERTIFICATE: &str = "ca/ca.crt";
const CA_KEY: &str = "ca/ca.key";
const ISSUED_SERIALS: &str = "ca/serials";
const PREVIOUS_CA: &str = super::identity_record::files::PREVIOUS_CA;

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
    /// An ITL signer rotation at its first step: the incoming signer, listed but not signing.
    pub signer_rotation: Option<SignerRotation>,
    /// The `callguard.io/rotate-itl-signer` value acted on, for the identity record.
    pub rotation_request: Option<String>,
    /// The CA that `ca` replaced in a rotation, trusted beside it while certificates it issued remain.
    pub previous_ca: Option<Vec<u8>>,
    /// The `callguard.io/rotate-ca` value acted on, for the identity record.
    pub ca_rotation_request: Option<String>,
}

/// What the ITL signer's rotation reads besides the state (see `rotation`).
#[derive(Debug, Clone, Copy)]
pub struct RotationInputs<'a> {
    /// The ITL as published before this build.
    pub published_itl: Option<&'a TrustList>,
    pub record: Option<&'a IdentityRecord>,
    /// The cluster's `callguard.io/rotate-itl-signer` annotation.
    pub request: Option<&'a str>,
    /// The cluster's `callguard.io/rotate-ca` annotation.
    pub ca_request: Option<&'a str>,
    pub grace: time::Duration,
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

/// Where the incoming ITL signer waits during a rotation: `certs/<node>.<role>.next`, in the
/// operator the Secret `<cluster>-<node>-<role>-next`, which no pod reads.
pub fn incoming_signer_base(signer_base: &str) -> String {
    format!("{signer_base}.next")
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

/// Issues function certificates under one CA, each with a serial it never gave before.
struct Issuer<'a> {
    state: &'a StateDir,
    ca: &'a ClusterCa,
    serials: BTreeSet<Serial>,
    now: OffsetDateTime,
}

impl Issuer<'_> {
    /// Why the certificate `der` of `node` must be reissued; empty when it is good.
    fn reasons(&self, der: &[u8], node: &ClusterNode) -> Vec<String> {
        let desired = DesiredCertificate {
            common_name: node.hostname.clone(),
            subject_alt_names: desired_sans(&node.hostname, node.ip_address),
            key_bits: SERVER_KEY_BITS,
        };
        match CertificateFacts::from_der(der) {
            Ok(facts) => {
                let mut reasons: Vec<String> =
                    reissue_reasons(&facts, &desired, RenewalPolicy::LSC, self.now).iter().map(|r| r.to_string()).collect();
                if !crate::core::pki::inspect::is_issued_by(der, self.ca.certificate_der()) {
                    reasons.push("not issued by the current cluster CA".into());
                }
                reasons
            }
            Err(e) => vec![format!("unreadable: {e}")],
        }
    }

    /// Issues the `role` certificate of `node` with a new key and keeps it as `base`.
    fn issue(&mut self, node: &ClusterNode, role: ServerRole, base: &str) -> Result<(Vec<u8>, RsaPrivateKey), BuildError> {
        let serial = Serial::unique(&mut rand::thread_rng(), &self.serials).map_err(|e| BuildError::Pki(e.to_string()))?;
        self.serials.insert(serial.clone());
        let request = ServerCertificateRequest {
            role,
            hostname: node.hostname.clone(),
            ip_address: node.ip_address,
            validity_days: validity_within(self.ca, self.now)?,
            serial,
            now: self.now,
            legacy_signer_keys: false,
        };
        let issued = issue_server_certificate_with_new_key(self.ca, &request).map_err(|e| BuildError::Pki(format!("{base}: {e}")))?;
        self.keep(base, &issued.certificate_der, &issued.key)?;
        Ok((issued.certificate_der, issued.key))
    }

    fn keep(&self, base: &str, certificate_der: &[u8], key: &RsaPrivateKey) -> Result<(), BuildError> {
        self.state.write(&format!("{base}.key"), keys::pkcs8_pem(key).as_bytes(), Sensitivity::Private)?;
        self.state.write(&format!("{base}.crt"), certificate_pem(certificate_der).as_bytes(), Sensitivity::Public)?;
        Ok(())
    }

    fn forget(&self, base: &str) -> Result<(), BuildError> {
        self.state.remove(&format!("{base}.crt"))?;
        self.state.remove(&format!("{base}.key"))?;
        Ok(())
    }
}

impl ClusterIdentity {
    /// Loads what the state directory holds, issues what is missing and reissues what is due.
    /// Returns what changed, for the caller to report.
    ///
    /// The ITL signer is never reissued in place once it exists: phones holding the ITL accept a
    /// new signer only in two steps (P.3-18), which `rotation` decides and this carries out.
    pub fn load_or_issue(
        state: &StateDir,
        cluster: &CallControlCluster,
        namespace: &str,
        now: OffsetDateTime,
        rotation: RotationInputs<'_>,
    ) -> Result<(Self, Vec<Change>), BuildError> {
        let mut changes = Vec::new();
        let issued = |message: String| Change { kind: ChangeKind::CertificateIssued, message };
        let signer_base = tftp_signer_base(cluster);
        undo_half_started_ca_rotation(state)?;
        let mut previous_ca = load_previous_ca(state)?;
        let last_ca_request = rotation.record.and_then(|r| r.ca_rotation_request.as_deref());
        let ca = match load_ca(state)? {
            Some(current) if previous_ca.is_none() && rotation::requested(rotation.ca_request, last_ca_request) => {
                let ca = ClusterCa::generate(&ca_settings(cluster, namespace), now).map_err(|e| BuildError::Pki(e.to_string()))?;
                let label = retire_ca(state, &current)?;
                keep_ca(state, &ca)?;
                changes.push(Change {
                    kind: ChangeKind::RotationStarted,
                    message: format!(
                        "CA rotation, step 1 of 2 (asked by {}): created the CA {}, which issues from now on; the previous CA stays trusted until no certificate it issued remains; its key is set aside under {RETIRED}{label}/ (P.6-1)",
                        rotation::ROTATE_CA,
                        ca.facts().map(|f| f.subject).unwrap_or_default()
                    ),
                });
                previous_ca = Some(current.certificate_der().to_vec());
                ca
            }
            Some(ca) => ca,
            None => {
                let ca = ClusterCa::generate(&ca_settings(cluster, namespace), now).map_err(|e| BuildError::Pki(e.to_string()))?;
                keep_ca(state, &ca)?;
                changes.push(issued(format!("created the cluster CA {}", ca.facts().map(|f| f.subject).unwrap_or_default())));
                ca
            }
        };
        if let Some(base) = &signer_base
            && finish_half_written_swap(state, base)?
        {
            changes.push(Change {
                kind: ChangeKind::RotationCompleted,
                message: format!(
                    "ITL signer rotation, step 2 of 2: finished, as it had stopped between the key and the certificate of {base}; the incoming signer signs (P.3-18)"
                ),
            });
        }
        let mut issuer = Issuer { state, ca: &ca, serials: issued_serials(state)?, now };
        let mut functions = Vec::new();
        let mut signer_due = None;
        for node in &cluster.spec.nodes {
            for role in node_roles(&cluster.spec, node) {
                let base = format!("certs/{}.{}", node.name, role_file_name(role));
                let current = load_function(state, &base)?;
                let reasons = match &current {
                    Some((der, _)) => issuer.reasons(der, node),
                    None => vec!["none issued yet".into()],
                };
                let (certificate_der, key) = match current {
                    Some(pair) if reasons.is_empty() => pair,
                    Some(pair) if signer_base.as_deref() == Some(base.as_str()) => {
                        signer_due = Some(reasons);
                        pair
                    }
                    _ => {
                        let pair = issuer.issue(node, role, &base)?;
                        changes.push(issued(format!("issued the {role:?} certificate of node {} ({})", node.name, reasons.join("; "))));
                        pair
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
        let mut identity = ClusterIdentity {
            ca: ca.clone(),
            functions,
            signer_rotation: None,
            rotation_request: rotation::handled_request(
                rotation.request,
                rotation.record.and_then(|r| r.itl_signer_rotation_request.as_deref()),
            ),
            previous_ca,
            ca_rotation_request: rotation::handled_request(rotation.ca_request, last_ca_request),
        };
        if let Some(base) = &signer_base {
            identity.signer_rotation = identity.rotate_signer(&mut issuer, cluster, base, signer_due, rotation, &mut changes)?;
        }
        write_serials(state, &issuer.serials)?;
        Ok((identity, changes))
    }

    /// Carries the ITL signer's rotation one step further when it can (see `rotation`): starts it
    /// when the signer is due or a new request asks, lets the incoming signer sign once it may.
    fn rotate_signer(
        &mut self,
        issuer: &mut Issuer<'_>,
        cluster: &CallControlCluster,
        base: &str,
        due: Option<Vec<String>>,
        inputs: RotationInputs<'_>,
        changes: &mut Vec<Change>,
    ) -> Result<Option<SignerRotation>, BuildError> {
        let Some(index) = self.tftp_index() else { return Ok(None) };
        let Some(node) = cluster.spec.nodes.iter().find(|n| n.name == self.functions[index].node) else { return Ok(None) };
        let incoming_base = incoming_signer_base(base);
        let mut incoming = load_function(issuer.state, &incoming_base)?;
        if incoming.as_ref().is_some_and(|(der, _)| *der == self.functions[index].certificate_der) {
            // Step 2 was written but the incoming copy not yet removed.
            issuer.forget(&incoming_base)?;
            incoming = None;
        }
        let asked = rotation::requested(inputs.request, inputs.record.and_then(|r| r.itl_signer_rotation_request.as_deref()));
        let why = match (&incoming, due) {
            (None, Some(reasons)) => Some(reasons.join("; ")),
            (None, None) if asked => Some(format!("asked by {}", rotation::ROTATE_ITL_SIGNER)),
            (Some((der, _)), _) => Some(issuer.reasons(der, node).join("; ")).filter(|r| !r.is_empty()),
            (None, None) => None,
        };
        let role = self.functions[index].role;
        if let Some(why) = why {
            let (certificate_der, key) = issuer.issue(node, role, &incoming_base)?;
            changes.push(Change {
                kind: ChangeKind::RotationStarted,
                message: format!(
                    "ITL signer rotation, step 1 of 2 ({why}): issued the incoming {role:?} certificate of node {}, which the ITL lists beside the current signer (P.3-18)",
                    node.name
                ),
            });
            let incoming = FunctionCertificate { certificate_der, key, ..self.functions[index].clone() };
            return Ok(Some(SignerRotation { incoming, waiting: rotation::Waiting::Announcing }));
        }
        let Some((certificate_der, key)) = incoming else { return Ok(None) };
        let incoming = FunctionCertificate { certificate_der, key, ..self.functions[index].clone() };
        match rotation::incoming_may_sign(inputs.published_itl, &incoming.certificate_der, inputs.record, inputs.grace, issuer.now) {
            Ok(()) => {
                issuer.keep(base, &incoming.certificate_der, &incoming.key)?;
                issuer.forget(&incoming_base)?;
                changes.push(Change {
                    kind: ChangeKind::RotationCompleted,
                    message: format!(
                        "ITL signer rotation, step 2 of 2: the incoming {role:?} certificate of node {} signs the ITL and the configuration files; the previous signer and its key are gone (P.3-18)",
                        node.name
                    ),
                });
                self.functions[index] = incoming;
                Ok(None)
            }
            Err(waiting) => Ok(Some(SignerRotation { incoming, waiting })),
        }
    }

    /// The certificate that signs configuration files and the ITL: the TFTP function of the first
    /// TFTP node (the CallManager+TFTP certificate when both run there), as CallManager does (docs/wire-formats.md §4).
    pub fn tftp(&self) -> Option<&FunctionCertificate> {
        self.tftp_index().map(|index| &self.functions[index])
    }

    fn tftp_index(&self) -> Option<usize> {
        self.functions.iter().position(|f| matches!(f.role, ServerRole::Tftp | ServerRole::CallManagerAndTftp))
    }

    /// The CAs whose certificates are trusted: the cluster CA, and during a CA rotation the previous one.
    pub fn trusted_cas(&self) -> Vec<Vec<u8>> {
        std::iter::once(self.ca.certificate_der().to_vec()).chain(self.previous_ca.clone()).collect()
    }

    /// What the trust lists list: every function certificate, and during a rotation the incoming
    /// signer in the current one's role, so that a phone holding them accepts what it signs next.
    pub fn listed(&self) -> Vec<FunctionCertificate> {
        self.functions.iter().cloned().chain(self.signer_rotation.iter().map(|r| r.incoming.clone())).collect()
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

/// A rotation's second step writes the incoming signer's key and certificate over the current
/// ones, two files: when only one of them was written before the process stopped, the other is
/// written now, so that no key is ever used with another key's certificate. Whether it was.
fn finish_half_written_swap(state: &StateDir, base: &str) -> Result<bool, BuildError> {
    let incoming = incoming_signer_base(base);
    let read = |name: String| state.read(&name);
    let (Some(incoming_key), Some(incoming_certificate)) = (read(format!("{incoming}.key"))?, read(format!("{incoming}.crt"))?) else {
        return Ok(false);
    };
    let key_written = read(format!("{base}.key"))?.as_deref() == Some(incoming_key.as_slice());
    let certificate_written = read(format!("{base}.crt"))?.as_deref() == Some(incoming_certificate.as_slice());
    match (key_written, certificate_written) {
        (true, false) => state.write(&format!("{base}.crt"), &incoming_certificate, Sensitivity::Public)?,
        (false, true) => state.write(&format!("{base}.key"), &incoming_key, Sensitivity::Private)?,
        _ => return Ok(false),
    }
    Ok(true)
}

fn keep_ca(state: &StateDir, ca: &ClusterCa) -> Result<(), BuildError> {
    let pem = ca.to_pem();
    state.write(CA_KEY, pem.private_key.as_bytes(), Sensitivity::Private)?;
    state.write(CA_CERTIFICATE, pem.certificate.as_bytes(), Sensitivity::Public)?;
    Ok(())
}

/// Sets the CA a rotation replaces aside: its key and certificate under `retired/ca-<id>/` (read
/// by nothing; in a cluster the Secret `C-retired-ca-<id>`), its certificate as the previous CA,
/// which is trusted while certificates it issued remain. Returns the label.
fn retire_ca(state: &StateDir, ca: &ClusterCa) -> Result<String, BuildError> {
    let label = retired_ca_label(ca.certificate_der());
    let pem = ca.to_pem();
    state.write(&format!("{RETIRED}{label}/{CA_KEY}"), pem.private_key.as_bytes(), Sensitivity::Private)?;
    state.write(&format!("{RETIRED}{label}/{CA_CERTIFICATE}"), pem.certificate.as_bytes(), Sensitivity::Public)?;
    state.write(PREVIOUS_CA, pem.certificate.as_bytes(), Sensitivity::Public)?;
    Ok(label)
}

/// Where a rotated CA is set aside, by its certificate: `ca-` and its identity id. Not the bare id,
/// which names the identity `callguard.io/new-identity` would set aside.
fn retired_ca_label(certificate_der: &[u8]) -> String {
    format!("ca-{}", identity_id(&sha256_hex(certificate_der)))
}

/// A CA rotation's start writes the previous CA aside, then the new key, then the new certificate:
/// when the process stopped before the certificate, the CA certificate is still the previous one.
/// The previous key is put back and the start undone, so that the next build starts it whole.
fn undo_half_started_ca_rotation(state: &StateDir) -> Result<(), BuildError> {
    let (Some(previous), Some(current)) = (state.read(PREVIOUS_CA)?, state.read(CA_CERTIFICATE)?) else { return Ok(()) };
    if previous != current {
        return Ok(());
    }
    let der = crate::core::pki::inspect::certificate_der(&previous).map_err(|e| BuildError::State(format!("{PREVIOUS_CA}: {e}")))?;
    let label = retired_ca_label(&der);
    let key = state
        .read(&format!("{RETIRED}{label}/{CA_KEY}"))?
        .ok_or_else(|| BuildError::State(format!("{PREVIOUS_CA} is the CA certificate, but {RETIRED}{label}/{CA_KEY} is missing")))?;
    state.write(CA_KEY, &key, Sensitivity::Private)?;
    state.remove(PREVIOUS_CA)?;
    Ok(())
}

/// The CA a rotation replaced (DER), while it is still trusted.
pub fn load_previous_ca(state: &StateDir) -> Result<Option<Vec<u8>>, BuildError> {
    state
        .read(PREVIOUS_CA)?
        .map(|pem| crate::core::pki::inspect::certificate_der(&pem).map_err(|e| BuildError::State(format!("{PREVIOUS_CA}: {e}"))))
        .transpose()
}

/// Ends a CA rotation: the previous CA is no longer trusted.
pub fn forget_previous_ca(state: &StateDir) -> Result<(), BuildError> {
    Ok(state.remove(PREVIOUS_CA)?)
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
