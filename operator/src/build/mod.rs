//! The build: from the validated objects of one namespace to the files the cluster serves. It keeps
//! its keys and published trust lists in a state directory so that a rebuild changes nothing without
//! a reason (DESIGN: pure core; the state directory is its only IO).

pub mod identity;
pub mod phone_files;
pub mod served;
pub mod state;
pub mod tokens;
pub mod trust_files;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use kube::ResourceExt;
use time::OffsetDateTime;

use crate::api::{CallControlCluster, ClusterSecurityMode, SignatureHash};
use crate::token::signing::{CtlSigningPlan, PlanCondition};
use crate::trust::{HashAlgorithm, Mode, TrustList, TrustListKind};
use crate::validate::Snapshot;
use identity::ClusterIdentity;
use served::{PhoneRenderer, ServedFiles, Signing};
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
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Io(e) => write!(f, "state directory: {e}"),
            BuildError::State(m) => write!(f, "state directory: {m}"),
            BuildError::Pki(m) | BuildError::Trust(m) | BuildError::Token(m) | BuildError::Cluster(m) => f.write_str(m),
            BuildError::NoTftpNode => {
                f.write_str("no node runs the TFTP service, so nothing can sign the ITL and configuration files (P.1-16, spec/04 §4)")
            }
        }
    }
}

impl std::error::Error for BuildError {}

impl From<std::io::Error> for BuildError {
    fn from(e: std::io::Error) -> Self {
        BuildError::Io(e)
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
}

impl ResourceStatus {
    fn ready(kind: &'static str, name: &str) -> Self {
        ResourceStatus { kind, name: name.to_string(), ready: true, reason: "Ready".into(), message: String::new() }
    }

    fn not_ready(kind: &'static str, name: &str, reason: &str, message: String) -> Self {
        ResourceStatus { kind, name: name.to_string(), ready: false, reason: reason.into(), message }
    }
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
    Unreadable(Vec<crate::manifest::LoadError>),
    /// Violations of the schema, CEL or cross-object rules, as `callguard validate` prints them.
    Invalid(Vec<crate::validate::Located>),
}

/// Validates the manifests under `paths` and, when they are valid, builds every namespace with its
/// state in `state_root/namespaces/NAMESPACE` (the layout `callguard build` and `callguard local` share).
pub fn build_paths(
    paths: &[std::path::PathBuf],
    state_root: &std::path::Path,
    now: OffsetDateTime,
) -> Result<BTreeMap<String, Result<BuildOutput, BuildError>>, PathsError> {
    let (documents, errors) = crate::manifest::load_paths(paths);
    if !errors.is_empty() {
        return Err(PathsError::Unreadable(errors));
    }
    let report = crate::validate::validate_documents(&documents, crate::validate::SecretPolicy::Require);
    if !report.violations.is_empty() {
        return Err(PathsError::Invalid(report.violations));
    }
    Ok(report
        .snapshots
        .into_iter()
        .map(|(namespace, snapshot)| {
            let built = StateDir::open(&state_root.join("namespaces").join(&namespace))
                .map_err(BuildError::Io)
                .and_then(|state| build_namespace(Arc::new(snapshot), &state, now));
            (namespace, built)
        })
        .collect())
}

/// What a build produced.
pub struct BuildOutput {
    /// The TFTP root; phone files are signed when first asked for.
    pub served: ServedFiles,
    /// What changed in the state directory, one line each.
    pub changes: Vec<String>,
    pub statuses: Vec<ResourceStatus>,
}

const PUBLISHED: &str = "published";

/// Builds one namespace. Exactly one CallControlCluster is expected; its phones, tokens and profiles
/// are the namespace's. Trust lists are built and signed here; phone files only resolved, for their
/// status, and signed on demand by [`ServedFiles`].
pub fn build_namespace(snapshot: Arc<Snapshot>, state: &StateDir, now: OffsetDateTime) -> Result<BuildOutput, BuildError> {
    let cluster = single_cluster(&snapshot)?;
    let cluster_name = cluster.name_any();
    let unix_now = u32::try_from(now.unix_timestamp())
        .map_err(|_| BuildError::Cluster("the clock is outside the u32 range of TIMESTAMP (spec/04 §3.3)".into()))?;
    let rfc3339_now = now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let hash = signature_hash(cluster);
    let mut changes = Vec::new();
    let mut statuses = Vec::new();
    let mut trust_lists: BTreeMap<String, Arc<[u8]>> = BTreeMap::new();

    let (identity, issued) = ClusterIdentity::load_or_issue(state, cluster, &snapshot.namespace, now)?;
    changes.extend(issued);
    let tftp = tftp_signer(&identity)?;

    // The ITL, signed by the TFTP certificate, which it also lists as SAST (spec/04 §3.1).
    let previous_itl = published(state, TrustListKind::Itl)?;
    let itl = build_trust_list(&TrustListPlan {
        kind: TrustListKind::Itl,
        signer: &tftp,
        sast: vec![tftp.certificate_der().to_vec()],
        functions: &identity.functions,
        hash,
        previous: previous_itl.as_ref(),
        now: unix_now,
    })?;
    publish(state, TrustListKind::Itl, &itl.bytes, &mut changes)?;
    let itl_list = TrustList::parse(&itl.bytes, Mode::Strict).map_err(|e| BuildError::Trust(format!("the ITL just built: {e}")))?;
    trust_lists.insert(TrustListKind::Itl.filename().into(), Arc::from(itl.bytes));

    // The CTL, in mixed mode only, signed by a token (Chapter 3).
    let tokens = Tokens::load(&snapshot, state)?;
    let mut cluster_status = ResourceStatus::ready("CallControlCluster", &cluster_name);
    if cluster.spec.security_mode() == ClusterSecurityMode::Mixed {
        let previous_ctl = published(state, TrustListKind::Ctl)?;
        match build_ctl(&snapshot, state, cluster, &tokens, &identity, hash, previous_ctl.as_ref(), unix_now, &rfc3339_now) {
            Ok((bytes, plan)) => {
                publish(state, TrustListKind::Ctl, &bytes, &mut changes)?;
                trust_lists.insert(TrustListKind::Ctl.filename().into(), Arc::from(bytes));
                statuses.push(ResourceStatus::ready("SecurityToken", &plan.signer));
                cluster_status.message = plan.conditions.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                // The CTL is published, but the seed wants two usable tokens in it at all times (P.3-13).
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
    for (name, (token, _)) in &tokens.tokens {
        if statuses.iter().any(|s: &ResourceStatus| s.kind == "SecurityToken" && s.name == *name) {
            continue;
        }
        statuses.push(token_status(name, token, &tokens::load_status(state, name)?));
    }
    statuses.push(cluster_status);

    // Phones: resolved now for their status, signed by the TFTP certificate when first fetched.
    let signing = Signing::from_itl(tftp, hash, &itl_list);
    let mut certificates = HashMap::new();
    for phone in snapshot.phones.values() {
        let device = phone.spec.device_name();
        if let Some(der) = device_certificate(state, &device)? {
            certificates.insert(device, der);
        }
    }
    let phones = PhoneRenderer::new(Arc::clone(&snapshot), cluster_name, signing, certificates);
    statuses.extend(phones.statuses());
    let status = serde_yaml::to_string(&statuses).map_err(|e| BuildError::State(e.to_string()))?;
    state.write("status.yaml", status.as_bytes(), Sensitivity::Public)?;
    Ok(BuildOutput { served: ServedFiles::new(trust_lists, phones), changes, statuses })
}

/// The hash of every signature of the cluster's files (spec/04 §3.3): SHA-1 unless the CTL settings ask for SHA-512.
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
            "locked after more than 15 consecutive wrong passwords; it can never sign again (P.16-5)".into(),
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

/// Conditions that leave a phone without the configuration its profile asks for; the others are
/// reported but the phone is served as specified.
const BLOCKING_PHONE_CONDITIONS: [&str; 2] = ["AwaitingDeviceCertificate", "ManualKeyEncryptionNotRendered"];

fn single_cluster(snapshot: &Snapshot) -> Result<&CallControlCluster, BuildError> {
    let mut clusters = snapshot.clusters.values();
    match (clusters.next(), clusters.next()) {
        (Some(cluster), None) => Ok(cluster),
        (None, _) => Err(BuildError::Cluster(format!("namespace {}: no CallControlCluster to build (Table 3-2)", snapshot.namespace))),
        (Some(_), Some(_)) => Err(BuildError::Cluster(format!(
            "namespace {}: more than one CallControlCluster; a namespace holds one cluster (DESIGN: resources)",
            snapshot.namespace
        ))),
    }
}

#[allow(clippy::too_many_arguments)]
fn build_ctl(
    snapshot: &Snapshot,
    state: &StateDir,
    cluster: &CallControlCluster,
    tokens: &Tokens,
    identity: &ClusterIdentity,
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
    let built = build_trust_list(&TrustListPlan {
        kind: TrustListKind::Ctl,
        signer: &signer,
        sast,
        functions: &identity.functions,
        hash,
        previous,
        now,
    })?;
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

fn publish(state: &StateDir, kind: TrustListKind, bytes: &[u8], changes: &mut Vec<String>) -> Result<(), BuildError> {
    let name = published_name(kind);
    if state.read(&name)?.as_deref() != Some(bytes) {
        state.write(&name, bytes, Sensitivity::Public)?;
        changes.push(format!("published a new {}", kind.filename()));
    }
    Ok(())
}

/// The phone's certificate (LSC, or MIC), PEM or DER, when CAPF or the administrator has put one in
/// `devices/SEP<MAC>.crt`.
fn device_certificate(state: &StateDir, device: &str) -> Result<Option<Vec<u8>>, BuildError> {
    let name = format!("devices/{device}.crt");
    let Some(bytes) = state.read(&name)? else { return Ok(None) };
    crate::pki::inspect::certificate_der(&bytes).map(Some).map_err(|e| BuildError::State(format!("{name}: {e}")))
}
