//! The build: from the validated objects of one namespace to the files the cluster serves. It keeps
//! its keys and published trust lists in a state directory so that a rebuild changes nothing without
//! a reason. Pure but for the state, its only IO, so that both adapters run the same build.

pub mod capf;
pub mod catalog;
pub mod devices;
pub mod identity;
pub mod identity_record;
pub mod lock;
pub mod media_control;
pub mod phone_files;
pub mod rotation;
pub mod served;
pub mod state;
pub mod tokens;
pub mod trust_files;
pub mod vouched;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use kube::ResourceExt;
use time::OffsetDateTime;

use crate::api::{CallControlCluster, ClusterSecurityMode, IdentityRecord, SignatureHash};
use crate::core::parallel::on_every_core;
use crate::core::token::signing::{CtlSigningPlan, PlanCondition};
use crate::core::trust::{HashAlgorithm, Mode, TrustList, TrustListKind};
use crate::validate::Snapshot;
use catalog::{SigningParameters, TftpCatalog};
use identity::{ClusterIdentity, tftp_signer_base};
use identity_record::{IdentityLost, Observed, Piece, RECORD_FILE, Verdict, identity_id, sha256_hex};
use phone_files::{PhoneContext, encryption_asked, resolve_phone};
use served::ServedFiles;
use state::{Sensitivity, StateDir};
use tokens::Tokens;
use trust_files::{TrustListPlan, build_trust_list, tftp_signer};

#[derive(Debug)]
pub enum BuildError {
    Io(std::io::Error),
    /// The state directory holds something unreadable.
    State(String),
    Pki(String),
    Trust(String),
    Token(String),
    /// No node runs TFTP, so nothing can sign configuration files (P.1-16).
    NoTftpNode,
    /// The namespace has no CallControlCluster, or more than one.
    Cluster(String),
    /// Part of the identity phones trust is missing or replaced: nothing is issued in its place.
    IdentityLost(IdentityLost),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Io(e) => write!(f, "state directory: {e}"),
            BuildError::State(m) => write!(f, "state directory: {m}"),
            BuildError::Pki(m) | BuildError::Trust(m) | BuildError::Token(m) | BuildError::Cluster(m) => f.write_str(m),
            BuildError::NoTftpNode => {
                f.write_str("no node runs the TFTP service, so nothing can sign the ITL and configuration files (P.1-16)")
            }
            BuildError::IdentityLost(lost) => lost.fmt(f),
        }
    }
}

impl std::error::Error for BuildError {}

impl From<std::io::Error> for BuildError {
    fn from(e: std::io::Error) -> Self {
        BuildError::Io(e)
    }
}

/// What a build may do beyond the spec, by explicit request.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Replace the identity of this id when pieces of it are lost (see `identity_record`).
    pub new_identity: Option<String>,
}

/// What a change was, for events and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    CertificateIssued,
    TrustListPublished,
    /// The identity phones trusted was set aside, as asked, and a new one issued.
    NewIdentity,
    /// A rotation took its first step: the incoming identity is announced beside the current one.
    RotationStarted,
    /// A rotation took its last step: the incoming identity replaced the current one.
    RotationCompleted,
}

impl ChangeKind {
    /// The event reason.
    pub fn reason(self) -> &'static str {
        match self {
            ChangeKind::CertificateIssued => "CertificateIssued",
            ChangeKind::TrustListPublished => "TrustListPublished",
            ChangeKind::NewIdentity => "NewIdentity",
            ChangeKind::RotationStarted => "RotationStarted",
            ChangeKind::RotationCompleted => "RotationCompleted",
        }
    }
}

/// One thing the build changed in the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    pub message: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Whether one resource came out as its spec asks, and why not.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ResourceStatus {
    pub kind: &'static str,
    pub name: String,
    pub ready: bool,
    /// A condition type: `Ready`, or the reason it is not.
    pub reason: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// A phone's LSC state (Table 6-2), when something is known of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lsc_state: Option<crate::api::LscState>,
    /// A phone's certificate operation and where it stands, as the guide's "Operation Status" says
    /// it: `Pending`, `Completed`, `Failed` with the reason, `LockedOut` until a time, or `Expired`
    /// (see `capf`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation_status: Option<String>,
    /// A phone's LSC, issued by the cluster CA: serial, issuer, notAfter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lsc: Option<crate::api::CertificateSummary>,
    /// A phone's consecutive wrong CAPF authentication strings; ten lock it out for ten minutes (P.16-6).
    #[serde(skip_serializing_if = "is_zero")]
    pub consecutive_auth_failures: u32,
    /// Where the resource is served with less protection than it asks for (`Reason: message`):
    /// credentials in clear, hardening not delivered, a secure SRST reference written insecure.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub downgrades: Vec<String>,
    /// A phone's device name, model, protocol, certificate operation and CAPF authentication mode, so
    /// that `callguard capf report` needs no manifest (`core::capf_report`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<crate::core::capf_report::DeviceFacts>,
    /// A user's CAPF profiles: each instance's operation and certificate (Table 11-2).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capf_profiles: Vec<crate::api::CapfProfileStatus>,
    /// A gateway's or H.323 trunk's media security: whether SRTP keys may go to it, and why
    /// (`core::gateway_media`, P.13-2, P.13-3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media: Option<crate::core::gateway_media::MediaDecision>,
}

impl ResourceStatus {
    fn ready(kind: &'static str, name: &str) -> Self {
        ResourceStatus {
            kind,
            name: name.to_string(),
            ready: true,
            reason: "Ready".into(),
            message: String::new(),
            lsc_state: None,
            operation_status: None,
            lsc: None,
            consecutive_auth_failures: 0,
            downgrades: Vec::new(),
            device: None,
            capf_profiles: Vec::new(),
            media: None,
        }
    }

    fn not_ready(kind: &'static str, name: &str, reason: &str, message: String) -> Self {
        ResourceStatus { ready: false, reason: reason.into(), message, ..ResourceStatus::ready(kind, name) }
    }

    /// The reasons of the downgrades, for a column.
    pub fn downgrade_reasons(&self) -> Vec<&str> {
        self.downgrades.iter().map(|d| d.split_once(':').map_or(d.as_str(), |(reason, _)| reason)).collect()
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// `Kind/name: Ready`, `Kind/name: Ready; warnings` or `Kind/name: NotReady Reason: message`.
impl fmt::Display for ResourceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}: ", self.kind, self.name)?;
        match (self.ready, self.message.is_empty()) {
            (true, true) => f.write_str("Ready"),
            (true, false) => write!(f, "Ready; {}", self.message),
            (false, _) => write!(f, "NotReady {}: {}", self.reason, self.message),
        }
    }
}

/// Why nothing was built from a set of manifest paths.
#[derive(Debug)]
pub enum PathsError {
    /// Files that cannot be read or parsed.
    Unreadable(Vec<crate::validate::manifest::LoadError>),
    /// Violations of the schema, CEL or cross-object rules, as `callguard validate` prints them.
    Invalid(Vec<crate::validate::Located>),
}

/// Validates the manifests under `paths` and, when they are valid, builds every namespace with its
/// state in `state_root/namespaces/NAMESPACE` (the layout `callguard build` and `callguard local` share).
pub fn build_paths(
    paths: &[std::path::PathBuf],
    state_root: &std::path::Path,
    now: OffsetDateTime,
    options: &BuildOptions,
) -> Result<BTreeMap<String, Result<BuildOutput, BuildError>>, PathsError> {
    Ok(validate_paths(paths)?.into_iter().map(|(namespace, snapshot)| (namespace, build_in(state_root, snapshot, now, options))).collect())
}

/// Reads and validates the manifests under `paths`, writing nothing: every namespace's objects.
pub fn validate_paths(paths: &[std::path::PathBuf]) -> Result<BTreeMap<String, Snapshot>, PathsError> {
    let (documents, errors) = crate::validate::manifest::load_paths(paths);
    if !errors.is_empty() {
        return Err(PathsError::Unreadable(errors));
    }
    let report = crate::validate::validate_documents(&documents, crate::validate::SecretPolicy::Require);
    if !report.violations.is_empty() {
        return Err(PathsError::Invalid(report.violations));
    }
    Ok(report.snapshots)
}

/// Where a namespace's state is kept under the state directory `state_root`.
pub fn namespace_state(state_root: &std::path::Path, namespace: &str) -> std::path::PathBuf {
    state_root.join("namespaces").join(namespace)
}

/// Builds one validated namespace with its state in [`namespace_state`].
pub fn build_in(
    state_root: &std::path::Path,
    snapshot: Snapshot,
    now: OffsetDateTime,
    options: &BuildOptions,
) -> Result<BuildOutput, BuildError> {
    StateDir::open(&namespace_state(state_root, &snapshot.namespace))
        .map_err(BuildError::Io)
        .and_then(|state| build_namespace(Arc::new(snapshot), &state, now, options))
}

/// What a build produced.
pub struct BuildOutput {
    /// What the TFTP service serves, resolved and validated.
    pub catalog: TftpCatalog,
    /// The catalog, served with the TFTP signer; phone files are signed when first asked for.
    pub served: ServedFiles,
    /// What changed in the state, one entry each.
    pub changes: Vec<Change>,
    pub statuses: Vec<ResourceStatus>,
    /// The identity as published, for the adapter to keep apart from the state (the cluster's status).
    pub identity: IdentityRecord,
    /// What the CAPF service presents and issues with, when the cluster runs it (P.6-6).
    pub capf: Option<CapfIdentity>,
    /// What TVS presents and vouches for, when the first node runs CallManager (docs/wire-formats.md §8).
    pub tvs: Option<TvsIdentity>,
    /// What the first node's SIP service presents and trusts, when it runs CallManager.
    pub sip: Option<SipIdentity>,
    /// The media control interface's credentials, when a node runs CallManager (its calls' media).
    pub media_control: Option<media_control::MediaControlIdentity>,
    /// When a rotation may take its next step: build again then.
    pub next_rotation_step: Option<OffsetDateTime>,
    /// The rotations under way after this build and what each waits for, one line each.
    pub rotations: Vec<String>,
}

/// The SIP service's identity on a node: the CallManager certificate SIP-TLS presents (role 1 or 2,
/// the one the CTL lists for the node, P.1-11), the cluster CA its phones' LSCs chain to, and the
/// phones' certificates the state holds, by device name.
#[derive(Debug, Clone)]
pub struct SipIdentity {
    pub certificate: identity::FunctionCertificate,
    /// The CAs whose LSCs it accepts: the cluster CA, and during a CA rotation the previous one.
    pub trusted_cas: Vec<Vec<u8>>,
    pub device_certificates: BTreeMap<String, Vec<u8>>,
    /// `spec.legacyTls: Enabled`: TLS 1.0 and 1.1 for the guide's phones too.
    pub legacy_tls: bool,
}

/// The TVS service's identity: the certificate TLS presents (the first node's CallManager
/// certificate, which the ITL lists) and the certificates it vouches for (`vouched`).
#[derive(Debug, Clone)]
pub struct TvsIdentity {
    pub certificate: identity::FunctionCertificate,
    pub vouched: Vec<vouched::Vouched>,
    /// `spec.legacyTls: Enabled`: TLS 1.0 and 1.1 for the guide's phones too.
    pub legacy_tls: bool,
}

/// The CAPF service's identity: the cluster CA, which issues LSCs, and the CAPF function certificate
/// of the node that runs it, which TLS presents (P.6-1, P.6-6).
#[derive(Debug, Clone)]
pub struct CapfIdentity {
    pub ca: crate::core::pki::ca::ClusterCa,
    pub certificate: identity::FunctionCertificate,
    /// The CA a rotation replaced (DER): its LSCs still authenticate until the rotation ends.
    pub previous_ca: Option<Vec<u8>>,
}

const PUBLISHED: &str = "published";

/// What the state holds of the identity now, for [`identity_record::verdict`].
fn observe_identity<'a>(files: &'a BTreeMap<&str, Vec<u8>>, signer: &Option<String>) -> Observed<'a> {
    let piece = |name: &str| Piece::of(files.get(name).map(Vec::as_slice));
    let signer = signer.clone().unwrap_or_default();
    let (certificate, key) = (format!("{signer}.crt"), format!("{signer}.key"));
    Observed {
        ca_certificate: piece(identity_record::files::CA_CERTIFICATE),
        ca_key: piece(identity_record::files::CA_KEY),
        previous_ca: piece(identity_record::files::PREVIOUS_CA),
        signer_certificate: piece(&certificate),
        signer_key: piece(&key),
        signer_files: (certificate, key),
        published_itl: piece(identity_record::files::PUBLISHED_ITL),
        published_ctl: piece(identity_record::files::PUBLISHED_CTL),
    }
}

/// Checks that the identity phones trust is whole before anything is issued, and sets it aside when
/// the administrator asked for a new one (see `identity_record`).
fn keep_identity(
    state: &StateDir,
    cluster: &CallControlCluster,
    options: &BuildOptions,
    changes: &mut Vec<Change>,
) -> Result<Option<IdentityRecord>, BuildError> {
    let record: Option<IdentityRecord> = state
        .read(RECORD_FILE)?
        .map(|bytes| serde_yaml::from_slice(&bytes).map_err(|e| BuildError::State(format!("{RECORD_FILE}: {e}"))))
        .transpose()?;
    let signer = tftp_signer_base(cluster);
    let mut names = vec![
        identity_record::files::CA_CERTIFICATE.to_owned(),
        identity_record::files::CA_KEY.to_owned(),
        identity_record::files::PREVIOUS_CA.to_owned(),
        identity_record::files::PUBLISHED_ITL.to_owned(),
        identity_record::files::PUBLISHED_CTL.to_owned(),
    ];
    if let Some(base) = &signer {
        names.extend([format!("{base}.crt"), format!("{base}.key")]);
    }
    let mut files = BTreeMap::new();
    for name in &names {
        if let Some(bytes) = state.read(name)? {
            // Fingerprints are of the certificate's DER, whatever its encoding in the state.
            let bytes = if name.ends_with(".crt") { crate::core::pki::inspect::certificate_der(&bytes).unwrap_or(bytes) } else { bytes };
            files.insert(name.as_str(), bytes);
        }
    }
    match identity_record::verdict(record.as_ref(), &observe_identity(&files, &signer), options.new_identity.as_deref())
        .map_err(BuildError::IdentityLost)?
    {
        Verdict::Genesis | Verdict::Continue => Ok(record),
        Verdict::Replace { previous } => {
            state.retire(&["ca/", "certs/", "published/", RECORD_FILE], &previous)?;
            changes.push(Change {
                kind: ChangeKind::NewIdentity,
                message: format!(
                    "set aside identity {previous}, as asked, and issued a new one: every phone that holds the previous ITL refuses this cluster's files until its ITL is deleted by hand (P.3-18)"
                ),
            });
            Ok(None)
        }
    }
}

/// Builds one namespace. Exactly one CallControlCluster is expected; its phones, tokens and profiles
/// are the namespace's. Trust lists are built and signed here; phone files only resolved, for their
/// status and the catalog, and signed on demand by [`ServedFiles`].
pub fn build_namespace(
    snapshot: Arc<Snapshot>,
    state: &StateDir,
    now: OffsetDateTime,
    options: &BuildOptions,
) -> Result<BuildOutput, BuildError> {
    let cluster = single_cluster(&snapshot)?;
    let cluster_name = cluster.name_any();
    let unix_now = u32::try_from(now.unix_timestamp())
        .map_err(|_| BuildError::Cluster("the clock is outside the u32 range of the trust lists' TIMESTAMP".into()))?;
    let rfc3339_now = now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let hash = signature_hash(cluster);
    let mut changes = Vec::new();
    let mut statuses = Vec::new();
    let mut trust_lists: BTreeMap<String, Arc<[u8]>> = BTreeMap::new();

    let record = keep_identity(state, cluster, options, &mut changes)?;
    let previous_itl = published(state, TrustListKind::Itl)?;
    let rotation = identity::RotationInputs {
        published_itl: previous_itl.as_ref(),
        record: record.as_ref(),
        request: cluster.annotations().get(rotation::ROTATE_ITL_SIGNER).map(String::as_str),
        ca_request: cluster.annotations().get(rotation::ROTATE_CA).map(String::as_str),
        grace: cluster.spec.rotation.clone().unwrap_or_default().grace_period(),
    };
    let (mut identity, issued) = ClusterIdentity::load_or_issue(state, cluster, &snapshot.namespace, now, rotation)?;
    changes.extend(issued);
    let ca_overlap = end_ca_overlap(&snapshot, state, &mut identity, now, &mut changes)?;
    let listed = identity.listed();
    let media_control = if !identity::call_manager_bases(cluster).is_empty() {
        let mut made = Vec::new();
        let identity = media_control::load_or_create(state, &mut made)?;
        changes.extend(made.into_iter().map(|message| Change { kind: ChangeKind::CertificateIssued, message }));
        Some(identity)
    } else {
        None
    };
    let tftp = tftp_signer(&identity)?;

    // The ITL, signed by the TFTP certificate, which it also lists as SAST (P.3-4), beside the
    // incoming signer during a rotation (P.3-18).
    let mut sast = vec![tftp.certificate_der().to_vec()];
    sast.extend(identity.signer_rotation.as_ref().map(|r| r.incoming.certificate_der.clone()));
    let itl = build_trust_list(&TrustListPlan {
        kind: TrustListKind::Itl,
        signer: &tftp,
        sast,
        functions: &listed,
        hash,
        previous: previous_itl.as_ref(),
        now: unix_now,
    })?;
    publish(state, TrustListKind::Itl, &itl.bytes, &mut changes)?;
    let itl_list = TrustList::parse(&itl.bytes, Mode::Strict).map_err(|e| BuildError::Trust(format!("the ITL just built: {e}")))?;
    trust_lists.insert(TrustListKind::Itl.filename().into(), Arc::from(itl.bytes));

    // The CTL, in mixed mode only, signed by a token (Chapter 3).
    let mut tokens = Tokens::load(&snapshot, state, &rfc3339_now)?;
    let mut cluster_status = ResourceStatus::ready("CallControlCluster", &cluster_name);
    if cluster.spec.security_mode() == ClusterSecurityMode::Mixed {
        let previous_ctl = published(state, TrustListKind::Ctl)?;
        match build_ctl(&snapshot, state, cluster, &mut tokens, &listed, hash, previous_ctl.as_ref(), unix_now, &rfc3339_now) {
            Ok((bytes, plan)) => {
                publish(state, TrustListKind::Ctl, &bytes, &mut changes)?;
                trust_lists.insert(TrustListKind::Ctl.filename().into(), Arc::from(bytes));
                statuses.push(ResourceStatus::ready("SecurityToken", &plan.signer));
                cluster_status.message = plan.conditions.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                // The CTL is published, but the guide wants two usable tokens in it at all times (P.3-13).
                if plan.conditions.iter().any(|c| matches!(c, PlanCondition::FewerThanTwoTokens { .. })) {
                    cluster_status.ready = false;
                    cluster_status.reason = "FewerThanTwoTokens".into();
                }
            }
            Err(e) => {
                // The last published CTL stays served: phones keep a trust list they can verify.
                if let Some(previous) = previous_ctl {
                    trust_lists.insert(TrustListKind::Ctl.filename().into(), Arc::from(previous.as_bytes()));
                }
                cluster_status = ResourceStatus::not_ready("CallControlCluster", &cluster_name, "CtlNotSigned", e.to_string());
            }
        }
    }
    let served_ctl = trust_lists.get(TrustListKind::Ctl.filename()).and_then(|bytes| TrustList::parse(bytes, Mode::Strict).ok());
    tokens.save_statuses(state, served_ctl.as_ref())?;
    for (name, (token, _)) in &tokens.tokens {
        if statuses.iter().any(|s: &ResourceStatus| s.kind == "SecurityToken" && s.name == *name) {
            continue;
        }
        statuses.push(match tokens.refusal(name) {
            Some(reason) => ResourceStatus::not_ready("SecurityToken", name, "CertificateRefused", reason.to_string()),
            None => token_status(name, token, &tokens.status(name)),
        });
    }
    let rotations: Vec<String> = identity.signer_rotation.as_ref().map(|r| r.describe()).into_iter().chain(ca_overlap).collect();
    cluster_status.message = std::iter::once(cluster_status.message.clone())
        .chain(rotations.iter().cloned())
        .filter(|m| !m.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    statuses.push(cluster_status);

    // Phones: resolved now, for their status and the catalog; signed by the TFTP service when fetched.
    let signing = SigningParameters::from_itl(hash, &itl_list);
    let trusted_cas = identity.trusted_cas();
    let (phones, phone_statuses) = resolve_phones(&snapshot, cluster, state, signing, &trusted_cas, now)?;
    statuses.extend(phone_statuses);
    // Every other object was validated and is used as it is: it says so, so that the table lists
    // every resource of the namespace, not only those with something to report.
    // Kinds that report for themselves (the cluster, its tokens and phones) and Secrets, which are
    // inputs, not resources with a status, are left out.
    let reported = ["CallControlCluster", "SecurityToken", "Phone", "Secret"];
    for (kind, names) in snapshot.names_by_kind().into_iter().filter(|(kind, _)| !reported.contains(kind)) {
        for name in names {
            let mut status = ResourceStatus::ready(kind, name);
            status.capf_profiles = user_capf_profiles(&snapshot, state, kind, name, &trusted_cas, now)?;
            status.media = gateway_media(&snapshot, kind, name);
            if let Some(media) = &status.media {
                status.message = media.reason();
            }
            statuses.push(status);
        }
    }

    let identity_record = record_identity(state, record.as_ref(), &identity, &tftp, &trust_lists)?;
    // For `callguard capf report` on a state directory; in memory (the operator keeps statuses in
    // the objects themselves) it would only cost a namespace-sized string per build.
    if !state.is_in_memory() {
        let status = serde_yaml::to_string(&statuses).map_err(|e| BuildError::State(e.to_string()))?;
        state.write("status.yaml", status.as_bytes(), Sensitivity::Public)?;
    }
    let catalog = TftpCatalog { trust_lists, signing, phones: Arc::new(phones) };
    let served = ServedFiles::new(catalog.clone(), tftp);
    let capf = identity.functions.iter().find(|f| f.role == crate::core::pki::issue::ServerRole::Capf).map(|certificate| CapfIdentity {
        ca: identity.ca.clone(),
        certificate: certificate.clone(),
        previous_ca: identity.previous_ca.clone(),
    });
    let phones: BTreeMap<String, Vec<u8>> = snapshot
        .phones
        .values()
        .filter_map(|phone| {
            let device = phone.spec.device_name();
            // An unreadable certificate is the phone's status to report, not TVS's or SIP's.
            let der = device_certificate(state, &device).ok().flatten()?;
            Some((device, der))
        })
        .collect();
    let tvs = match vouched::tls_certificate(cluster, &identity) {
        Some(certificate) => {
            let tokens: BTreeMap<String, Vec<u8>> =
                tokens.tokens.keys().filter_map(|name| Some((name.clone(), tokens.certificate(name)?.to_vec()))).collect();
            let vouched = vouched::vouched(&catalog.trust_lists, &identity, &tokens, &phones)?;
            let legacy_tls = cluster.spec.legacy_tls == Some(crate::api::LegacyTls::Enabled);
            Some(TvsIdentity { certificate: certificate.clone(), vouched, legacy_tls })
        }
        None => None,
    };
    let sip = cluster.spec.first_node().and_then(|first| {
        let certificate = identity.functions.iter().find(|f| {
            f.node == first.name
                && matches!(
                    f.role,
                    crate::core::pki::issue::ServerRole::CallManager | crate::core::pki::issue::ServerRole::CallManagerAndTftp
                )
        })?;
        Some(SipIdentity {
            certificate: certificate.clone(),
            trusted_cas: trusted_cas.clone(),
            device_certificates: phones,
            legacy_tls: cluster.spec.legacy_tls == Some(crate::api::LegacyTls::Enabled),
        })
    });
    let next_rotation_step = identity.signer_rotation.as_ref().map(|r| r.next_step(now));
    Ok(BuildOutput {
        catalog,
        served,
        changes,
        statuses,
        identity: identity_record,
        capf,
        tvs,
        sip,
        media_control,
        next_rotation_step,
        rotations,
    })
}

/// The media security of a gateway or H.323 trunk (P.13-2, P.13-3); none for other kinds.
fn gateway_media(snapshot: &Snapshot, kind: &str, name: &str) -> Option<crate::core::gateway_media::MediaDecision> {
    use crate::core::gateway_media::{decide_h323, decide_mgcp};
    match kind {
        "H323Gateway" => snapshot.h323_gateways.get(name).map(|g| decide_h323(&g.spec)),
        "MgcpGateway" => snapshot.mgcp_gateways.get(name).map(|g| decide_mgcp(&g.spec)),
        _ => None,
    }
}

/// Resolves every phone on every core: its payloads for the catalog, and its status.
fn resolve_phones(
    snapshot: &Snapshot,
    cluster: &CallControlCluster,
    state: &StateDir,
    signing: SigningParameters,
    cas: &[Vec<u8>],
    now: OffsetDateTime,
) -> Result<(BTreeMap<String, phone_files::PhonePayloads>, Vec<ResourceStatus>), BuildError> {
    let asked = encryption_asked(snapshot);
    let context = PhoneContext { snapshot, cluster, trust: signing.trust(), encryption_asked: &asked };
    let phones: Vec<(&String, &crate::api::Phone)> = snapshot.phones.iter().map(|(name, phone)| (name, &**phone)).collect();
    // Each phone's certificate and CAPF record are read where it is resolved, not gathered first: a
    // namespace-sized map of them would sit beside every phone's files at the build's peak.
    let resolved = on_every_core(&phones, |(name, phone)| {
        let device = phone.spec.device_name();
        let certificate = device_certificate(state, &device)?;
        let view = capf_view(snapshot, state, phone, cas, certificate.as_deref(), now)?;
        // An operation CAPF completed, or whose deadline went by, is no longer pending: the phone is
        // no longer told to contact CAPF (docs/wire-formats.md §7.5 "After success").
        let settled = view.state.scheduled().is_none() && view.state != capf::OperationState::None;
        let settled_phone = settled.then(|| {
            let mut phone = (*phone).clone();
            if let Some(capf) = phone.spec.capf.as_mut() {
                capf.certificate_operation = Some(crate::api::CertificateOperation::NoPendingOperation);
            }
            phone
        });
        let (payloads, mut status) = match resolve_phone(&context, settled_phone.as_ref().unwrap_or(phone), certificate.as_deref()) {
            Ok(resolved) => (Some((device, resolved.payloads)), phone_status(name, &resolved.conditions)),
            Err(message) => (None, ResourceStatus::not_ready("Phone", name, "ConfigurationRefused", message)),
        };
        view.apply(&mut status);
        // Only `callguard capf report` reads these, from a state directory's `status.yaml`; the
        // operator keeps statuses in the objects, where they are not written.
        if !state.is_in_memory() {
            let mode = snapshot.phone_profiles.get(&phone.spec.security_profile_ref).map(|p| p.spec.authentication_mode());
            status.device = Some(crate::core::capf_report::DeviceFacts::of(phone, mode));
        }
        Ok::<_, BuildError>((payloads, status))
    });
    let mut catalog = BTreeMap::new();
    let mut statuses = Vec::with_capacity(resolved.len());
    for result in resolved {
        let (payloads, status) = result?;
        catalog.extend(payloads);
        statuses.push(status);
    }
    Ok((catalog, statuses))
}

/// Ready, or why the phone's configuration is not what its spec asks; downgrades either way.
fn phone_status(name: &str, conditions: &[crate::core::phone_config::ConfigCondition]) -> ResourceStatus {
    let describe = |c: &crate::core::phone_config::ConfigCondition| format!("{}: {c}", c.reason());
    let mut blocking: Vec<_> = conditions.iter().filter(|c| c.is_blocking()).collect();
    // What the phone gets now comes first; a pending operation is why it will change.
    blocking.sort_by_key(|c| matches!(c, crate::core::phone_config::ConfigCondition::CertificateOperationPending { .. }));
    let notes: Vec<String> = conditions.iter().filter(|c| !c.is_blocking()).map(describe).collect();
    let mut status = match blocking.first() {
        Some(first) => {
            let message =
                std::iter::once(first.to_string()).chain(blocking[1..].iter().map(|c| describe(c))).chain(notes).collect::<Vec<_>>();
            ResourceStatus::not_ready("Phone", name, first.reason(), message.join("; "))
        }
        None => ResourceStatus { message: notes.join("; "), ..ResourceStatus::ready("Phone", name) },
    };
    status.downgrades = conditions.iter().filter(|c| c.is_downgrade()).map(describe).collect();
    status
}

/// What the status says of each CAPF profile of the user `kind`/`name` (none for other kinds).
fn user_capf_profiles(
    snapshot: &Snapshot,
    state: &StateDir,
    kind: &str,
    name: &str,
    cas: &[Vec<u8>],
    now: OffsetDateTime,
) -> Result<Vec<crate::api::CapfProfileStatus>, BuildError> {
    let profiles = match kind {
        "EndUser" => snapshot.end_users.get(name).map(|u| &u.spec.capf_profiles),
        "ApplicationUser" => snapshot.application_users.get(name).map(|u| &u.spec.capf_profiles),
        _ => None,
    };
    let mut statuses = Vec::new();
    for profile in profiles.into_iter().flatten() {
        let record = capf::load(state, &profile.instance_id).map_err(BuildError::State)?;
        let string = profile.authentication_string.as_ref().and_then(|reference| phone_files::secret_text(snapshot, reference).ok());
        let certificate = state.read(&devices::certificate_file(&profile.instance_id))?;
        let certificate = certificate.and_then(|bytes| crate::core::pki::inspect::certificate_der(&bytes).ok());
        let view = CapfView {
            state: capf::operation_state_of(capf::OperationId::of_profile(profile), string.as_deref().map(String::as_str), &record, now),
            lsc: lsc_summary(certificate.as_deref(), cas, now),
            wrong_strings: record.wrong_strings(now),
        };
        statuses.push(crate::api::CapfProfileStatus {
            instance_id: profile.instance_id.clone(),
            lsc_state: view.lsc_state(),
            operation_status: view.state.describe(),
            lsc: view.lsc.map(|(summary, _)| summary),
            consecutive_auth_failures: (view.wrong_strings > 0).then_some(view.wrong_strings),
        });
    }
    Ok(statuses)
}

/// The summary of `certificate` when a trusted cluster CA (`cas`) issued it, and whether it expired.
fn lsc_summary(certificate: Option<&[u8]>, cas: &[Vec<u8>], now: OffsetDateTime) -> Option<(crate::api::CertificateSummary, bool)> {
    certificate.filter(|der| crate::core::pki::inspect::is_issued_by_any(der, cas)).and_then(|der| {
        let facts = crate::core::pki::inspect::CertificateFacts::from_der(der).ok()?;
        let summary = crate::api::CertificateSummary {
            subject: facts.subject,
            issuer: facts.issuer,
            serial_number: facts.serial.to_hex(),
            not_after: capf::rfc3339(facts.not_after),
            sha256: crate::core::pki::inspect::sha256_hex(der),
        };
        Some((summary, facts.not_after < now))
    })
}

/// What the status says of a phone's LSC and CAPF operation.
struct CapfView {
    state: capf::OperationState,
    /// Its certificate, when the cluster CA issued it, and whether it expired.
    lsc: Option<(crate::api::CertificateSummary, bool)>,
    wrong_strings: u32,
}

/// Reads what CAPF recorded of `phone` and what its certificate is.
fn capf_view(
    snapshot: &Snapshot,
    state: &StateDir,
    phone: &crate::api::Phone,
    cas: &[Vec<u8>],
    certificate: Option<&[u8]>,
    now: OffsetDateTime,
) -> Result<CapfView, BuildError> {
    let device = phone.spec.device_name();
    let record = capf::load(state, &device).map_err(BuildError::State)?;
    let by_string = snapshot
        .phone_profiles
        .get(&phone.spec.security_profile_ref)
        .is_some_and(|p| p.spec.authentication_mode() == crate::api::CapfAuthenticationMode::ByAuthenticationString);
    let string = match phone.spec.capf.as_ref().and_then(|c| c.authentication_string.as_ref()) {
        Some(reference) if by_string => phone_files::secret_text(snapshot, reference).ok(),
        _ => None,
    };
    let lsc = lsc_summary(certificate, cas, now);
    Ok(CapfView {
        state: capf::operation_state(phone, string.as_deref().map(String::as_str), &record, now),
        lsc,
        wrong_strings: record.wrong_strings(now),
    })
}

impl CapfView {
    fn apply(&self, status: &mut ResourceStatus) {
        status.operation_status = self.state.describe();
        status.lsc = self.lsc.as_ref().map(|(summary, _)| summary.clone());
        status.consecutive_auth_failures = self.wrong_strings;
        status.lsc_state = self.lsc_state();
    }

    /// Table 6-2's Operation Status, from the operation and the certificate.
    fn lsc_state(&self) -> Option<crate::api::LscState> {
        use crate::api::LscState;
        use capf::OperationState;
        match (&self.state, &self.lsc) {
            (OperationState::Failed { .. } | OperationState::LockedOut { .. }, _) => Some(LscState::Failed),
            (OperationState::Pending { .. }, _) => Some(LscState::Pending),
            (_, Some((_, true))) => Some(LscState::Expired),
            (_, Some((_, false))) => Some(LscState::Installed),
            (OperationState::None, None) => None,
            (_, None) => Some(LscState::None),
        }
    }
}

/// Writes the record of the identity just published (see `identity_record`).
fn record_identity(
    state: &StateDir,
    previous: Option<&IdentityRecord>,
    identity: &ClusterIdentity,
    signer: &crate::core::trust::Signer,
    trust_lists: &BTreeMap<String, Arc<[u8]>>,
) -> Result<IdentityRecord, BuildError> {
    let ca = sha256_hex(identity.ca.certificate_der());
    let record = IdentityRecord {
        // A rotated CA keeps the identity's name: phones still trust it.
        id: previous.map_or_else(|| identity_id(&ca), |r| r.id.clone()),
        ca,
        itl_signer: sha256_hex(signer.certificate_der()),
        ctl_published: trust_lists.contains_key(TrustListKind::Ctl.filename()),
        incoming_itl_signer: identity.signer_rotation.as_ref().map(|r| sha256_hex(&r.incoming.certificate_der)),
        itl_signer_rotation_request: identity.rotation_request.clone(),
        previous_ca: identity.previous_ca.as_deref().map(sha256_hex),
        ca_rotation_request: identity.ca_rotation_request.clone(),
    };
    let text = serde_yaml::to_string(&record).map_err(|e| BuildError::State(e.to_string()))?;
    state.write(RECORD_FILE, text.as_bytes(), Sensitivity::Public)?;
    Ok(record)
}

/// Ends a CA rotation once nothing the previous CA issued is in use (see `rotation`); else the
/// cluster status's line about what it waits for.
fn end_ca_overlap(
    snapshot: &Snapshot,
    state: &StateDir,
    identity: &mut ClusterIdentity,
    now: OffsetDateTime,
    changes: &mut Vec<Change>,
) -> Result<Option<String>, BuildError> {
    let Some(previous) = identity.previous_ca.clone() else { return Ok(None) };
    let phones = snapshot.phones.values().map(|p| p.spec.device_name());
    let users = snapshot.end_users.values().flat_map(|u| &u.spec.capf_profiles);
    let applications = snapshot.application_users.values().flat_map(|u| &u.spec.capf_profiles);
    let mut devices = Vec::new();
    for name in phones.chain(users.chain(applications).map(|p| p.instance_id.clone())) {
        if let Some(der) = device_certificate(state, &name)? {
            devices.push((name, der));
        }
    }
    let left = rotation::left_by_previous_ca(&previous, &identity.listed(), &devices, now);
    if !left.is_empty() {
        return Ok(Some(rotation::describe_ca_overlap(&left)));
    }
    identity::forget_previous_ca(state)?;
    identity.previous_ca = None;
    changes.push(Change {
        kind: ChangeKind::RotationCompleted,
        message: "CA rotation, step 2 of 2: nothing the previous CA issued is in use any more; it is no longer trusted (P.6-1)".into(),
    });
    Ok(None)
}

/// The hash of every signature of the cluster's files: SHA-1 unless the CTL settings ask for SHA-512 (P.3-4).
pub fn signature_hash(cluster: &CallControlCluster) -> HashAlgorithm {
    match cluster.spec.ctl.as_ref().and_then(|c| c.hash_algorithm).unwrap_or_default() {
        SignatureHash::Sha1 => HashAlgorithm::Sha1,
        SignatureHash::Sha512 => HashAlgorithm::Sha512,
    }
}

fn token_status(name: &str, token: &crate::api::SecurityToken, status: &crate::api::SecurityTokenStatus) -> ResourceStatus {
    if status.locked {
        ResourceStatus::not_ready(
            "SecurityToken",
            name,
            "Locked",
            format!("locked, and it can never sign again: {}", crate::api::TOKEN_LOCK_RULE),
        )
    } else if status.consecutive_failed_logins > 0 {
        ResourceStatus::not_ready(
            "SecurityToken",
            name,
            "WrongPassword",
            format!(
                "{} consecutive wrong password(s); the token locks for good after {} (P.16-5)",
                status.consecutive_failed_logins,
                crate::api::TOKEN_RETRY_COUNTER
            ),
        )
    } else if token.spec.state() != crate::api::TokenState::Active {
        ResourceStatus::not_ready(
            "SecurityToken",
            name,
            "NotActive",
            format!("state {:?}: not listed in the CTL (P.16-5)", token.spec.state()),
        )
    } else {
        ResourceStatus::ready("SecurityToken", name)
    }
}

fn single_cluster(snapshot: &Snapshot) -> Result<&CallControlCluster, BuildError> {
    let mut clusters = snapshot.clusters.values();
    match (clusters.next(), clusters.next()) {
        (Some(cluster), None) => Ok(cluster),
        (None, _) => Err(BuildError::Cluster(format!("namespace {}: no CallControlCluster to build (Table 3-2)", snapshot.namespace))),
        (Some(_), Some(_)) => Err(BuildError::Cluster(format!(
            "namespace {}: more than one CallControlCluster; a namespace holds one cluster",
            snapshot.namespace
        ))),
    }
}

#[allow(clippy::too_many_arguments)]
fn build_ctl(
    snapshot: &Snapshot,
    state: &StateDir,
    cluster: &CallControlCluster,
    tokens: &mut Tokens,
    functions: &[identity::FunctionCertificate],
    hash: HashAlgorithm,
    previous: Option<&TrustList>,
    now: u32,
    rfc3339_now: &str,
) -> Result<(Vec<u8>, CtlSigningPlan), BuildError> {
    let settings =
        cluster.spec.ctl.as_ref().ok_or_else(|| BuildError::Token("spec.ctl: a mixed-mode cluster names its tokens (Table 3-2)".into()))?;
    let plan = tokens.plan(settings, previous)?;
    let signer = tokens.unlock_signer(snapshot, state, &plan.signer, rfc3339_now)?;
    let sast = plan.sast.iter().filter_map(|name| tokens.certificate(name).map(<[u8]>::to_vec)).collect();
    let built = build_trust_list(&TrustListPlan { kind: TrustListKind::Ctl, signer: &signer, sast, functions, hash, previous, now })?;
    Ok((built.bytes, plan))
}

fn published_name(kind: TrustListKind) -> String {
    format!("{PUBLISHED}/{}", kind.filename())
}

fn published(state: &StateDir, kind: TrustListKind) -> Result<Option<TrustList>, BuildError> {
    let name = published_name(kind);
    state
        .read(&name)?
        .map(|bytes| TrustList::parse(&bytes, Mode::Strict).map_err(|e| BuildError::State(format!("{name}: {e}"))))
        .transpose()
}

fn publish(state: &StateDir, kind: TrustListKind, bytes: &[u8], changes: &mut Vec<Change>) -> Result<(), BuildError> {
    let name = published_name(kind);
    if state.read(&name)?.as_deref() != Some(bytes) {
        state.write(&name, bytes, Sensitivity::Public)?;
        changes.push(Change { kind: ChangeKind::TrustListPublished, message: format!("published a new {}", kind.filename()) });
    }
    Ok(())
}

/// The phone's certificate (LSC, or MIC), PEM or DER, when CAPF or the administrator has put one in
/// `devices/SEP<MAC>.crt`.
fn device_certificate(state: &StateDir, device: &str) -> Result<Option<Vec<u8>>, BuildError> {
    let name = devices::certificate_file(device);
    let Some(bytes) = state.read(&name)? else { return Ok(None) };
    crate::core::pki::inspect::certificate_der(&bytes).map(Some).map_err(|e| BuildError::State(format!("{name}: {e}")))
}
