//! One reconcile of one CallControlCluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::availability::{self, Replicas};
use super::cache::Caches;
use super::capf_records;
use super::conditions::{Wanted, finished};
use super::desired::{Desired, DesiredInputs, WorkloadDefaults, desired_objects, owned};
use super::labels::{self, FIELD_MANAGER};
use super::namespace_objects::NamespaceObjects;
use super::state_objects::{objects_from_state, place, state_of, token_counters};
use super::status_writer::{Observed, Seen, Settled, StatusUpdate, Unsettled, write_statuses};
use crate::api::{CallControlCluster, SecurityToken};
use crate::core::build::state::StateDir;
use crate::core::build::{BuildError, BuildOptions, BuildOutput, ChangeKind, ResourceStatus, build_namespace};
use crate::ops::metrics::ReconcileStep;
use crate::ops::metrics::{CertificateLabels, Kind, Metrics, Outcome};
use crate::validate::{PassedChecks, SecretPolicy, validate_remembering};

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    /// The image, API server ports and pull Secrets of the data-plane pods.
    pub workload_defaults: WorkloadDefaults,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Consecutive failures per cluster, for exponential backoff.
    failures: Mutex<HashMap<(String, String), u32>>,
    /// At most this many status writes in flight.
    pub status_concurrency: usize,
    /// The watch caches of each controller's scope (a namespace, or None for all).
    pub caches: Vec<(Option<String>, Arc<Caches>)>,
    /// By namespace, the documents the last reconcile found to pass the schema and CEL checks.
    passed_checks: Mutex<HashMap<String, Arc<PassedChecks>>>,
    /// By namespace, the statuses its last reconcile found in place or wrote.
    settled: Mutex<HashMap<String, Settled>>,
}

impl Context {
    pub fn new(client: Client, image: String, metrics: Arc<Metrics>, recorder: Recorder) -> Self {
        let workload_defaults = WorkloadDefaults { image, api_server_ports: vec![443, 6443], image_pull_secrets: Vec::new() };
        Context {
            client,
            workload_defaults,
            metrics,
            recorder,
            failures: Mutex::default(),
            status_concurrency: 32,
            caches: Vec::new(),
            passed_checks: Mutex::default(),
            settled: Mutex::default(),
        }
    }

    /// The caches of the scope that `namespace` (None: every namespace) belongs to.
    pub fn caches_of(&self, namespace: Option<&str>) -> Arc<Caches> {
        let scope = self.caches.iter().find(|(scope, _)| scope.is_none() || scope.as_deref() == namespace);
        scope.map(|(_, caches)| Arc::clone(caches)).unwrap_or_default()
    }
}

/// A reconcile that could not run to its end, by the step that failed; retried with backoff.
/// (A configuration the steps refuse is no error: the reconcile ends `Stalled`, see [`StallReason`].)
#[derive(Debug)]
pub enum ReconcileError {
    /// Reading the namespace's objects and the Secrets they name.
    Dereference(kube::Error),
    /// Validation could not run to its end (a panic).
    Validate(String),
    /// The build could not run to its end (state unreadable, a projection too large, a panic).
    Build(String),
    /// Applying what the cluster owns, or deleting what no longer belongs.
    Apply(kube::Error),
    /// Writing the statuses.
    Status(kube::Error),
}

impl fmt::Display for ReconcileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReconcileError::Dereference(e) => write!(f, "reading the namespace: {e}"),
            ReconcileError::Validate(m) => write!(f, "validation: {m}"),
            ReconcileError::Build(m) => write!(f, "build: {m}"),
            ReconcileError::Apply(e) => write!(f, "applying: {e}"),
            ReconcileError::Status(e) => write!(f, "writing the statuses: {e}"),
        }
    }
}

impl std::error::Error for ReconcileError {}

impl ReconcileError {
    /// A metrics label: the step, never the message.
    fn category(&self) -> &'static str {
        match self {
            ReconcileError::Dereference(_) => "dereference",
            ReconcileError::Validate(_) => "validate",
            ReconcileError::Build(_) => "build",
            ReconcileError::Apply(_) => "apply",
            ReconcileError::Status(_) => "status",
        }
    }

    /// The reason of the Warning event on the cluster.
    fn reason(&self) -> &'static str {
        match self {
            ReconcileError::Dereference(_) => "ReadFailed",
            ReconcileError::Validate(_) => "ValidationFailed",
            ReconcileError::Build(_) => "BuildError",
            ReconcileError::Apply(_) => "ApplyFailed",
            ReconcileError::Status(_) => "StatusWriteFailed",
        }
    }
}

/// How long a reconcile waits for the watch caches to deliver its own last status writes.
const CACHE_PATIENCE: Duration = Duration::from_secs(10);

/// Requeue after success: certificates are checked for renewal at least this often.
const RESYNC: Duration = Duration::from_secs(15 * 60);

pub async fn reconcile(cluster: Arc<CallControlCluster>, context: Arc<Context>) -> Result<Action, ReconcileError> {
    let timer = context.metrics.start_reconcile(Kind::CallControlCluster);
    let key = (cluster.namespace().unwrap_or_default(), cluster.name_any());
    let result = reconcile_cluster(&cluster, &context).await;
    match &result {
        Ok(Reconciled { stalled, .. }) => {
            timer.finish(match stalled {
                Some(reason) => Outcome::Stalled { reason: reason.as_str() },
                None => Outcome::Success,
            });
            context.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        }
        Err(e) => {
            timer.finish(Outcome::Failure { reason: e.category() });
            publish(&context, &cluster, EventType::Warning, e.reason(), &e.to_string()).await;
        }
    }
    result.map(|reconciled| reconciled.action)
}

/// Why a reconcile stopped short of applying, waiting for a change: the reason of `Stalled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StallReason {
    InvalidConfiguration,
    IdentityLost,
    BuildFailed,
}

impl StallReason {
    fn as_str(self) -> &'static str {
        match self {
            StallReason::InvalidConfiguration => "InvalidConfiguration",
            StallReason::IdentityLost => "IdentityLost",
            StallReason::BuildFailed => "BuildFailed",
        }
    }
}

/// A reconcile that ran to its end: what to do next, and whether it stalled.
struct Reconciled {
    action: Action,
    stalled: Option<StallReason>,
}

impl Reconciled {
    fn stalled(reason: StallReason) -> Self {
        Reconciled { action: Action::await_change(), stalled: Some(reason) }
    }
}

/// Exponential backoff on transient errors: 1 s, 2 s, 4 s ... up to 5 minutes.
pub fn error_policy(cluster: Arc<CallControlCluster>, error: &ReconcileError, context: Arc<Context>) -> Action {
    let key = (cluster.namespace().unwrap_or_default(), cluster.name_any());
    let mut failures = context.failures.lock().unwrap_or_else(|p| p.into_inner());
    let count = failures.entry(key).or_insert(0);
    *count = count.saturating_add(1);
    let delay = Duration::from_secs(1u64 << (*count - 1).min(8)).min(Duration::from_secs(300));
    tracing::warn!(cluster = %cluster.name_any(), "reconcile failed ({} in a row), retrying in {delay:?}: {error}", *count);
    Action::requeue(delay)
}

/// One reconcile, as its pipeline: dereference, validate, build (the state, then the desired
/// objects), apply, status. A step that refuses the configuration ends the reconcile `Stalled`,
/// with nothing applied, so that the pods keep serving the last good files.
async fn reconcile_cluster(cluster: &CallControlCluster, context: &Context) -> Result<Reconciled, ReconcileError> {
    let namespace = cluster.namespace().unwrap_or_default();
    let name = cluster.name_any();

    let mut steps = StepClock::start(&context.metrics);
    // Dereference.
    // The watch caches, once they hold this operator's own last status writes; if they lag behind
    // for long, the namespace is read from the API server instead.
    let caches = context.caches_of(Some(&namespace));
    let cached = caches.caught_up(CACHE_PATIENCE).await.then_some(&*caches);
    let objects = NamespaceObjects::read(&context.client, &namespace, cached).await.map_err(ReconcileError::Dereference)?;
    steps.done(ReconcileStep::Dereference);
    // The cluster as just read: the controller's copy can be a write behind (its identity record, its
    // observed generation), and the state is built from it.
    let Some(cluster) = objects.clusters.iter().find(|c| c.name_any() == name).cloned() else {
        return Ok(Reconciled { action: Action::await_change(), stalled: None });
    };
    let cluster = cluster.as_ref();
    // What the statuses and the build need, taken now: the objects themselves become the documents
    // validation reads, so that a 30 000-phone namespace is not held twice.
    let settled = context.settled.lock().unwrap_or_else(|p| p.into_inner()).remove(&namespace).unwrap_or_default();
    let mut observed = Observed::of(&objects, settled);
    let state = StateDir::in_memory(state_of(cluster, &objects));
    let holding_records = capf_records::holding_records(&name, &objects.secrets);
    let tokens = objects.tokens.clone();
    announce_new_generation(cluster, context, &mut observed).await?;

    // Validate.
    let passed_checks = Arc::clone(context.passed_checks.lock().unwrap_or_else(|p| p.into_inner()).entry(namespace.clone()).or_default());
    let validated = validate(objects, passed_checks).await?;
    steps.done(ReconcileStep::Validate);
    let snapshot = match validated {
        Ok(snapshot) => snapshot,
        Err(invalid) => {
            let reason = StallReason::InvalidConfiguration;
            return stall(cluster, context, observed, reason, &invalid.message, &invalid.by_object).await;
        }
    };

    // Build: the state first.
    // What the CAPF pods need of the phones, taken before the build consumes the snapshot.
    let capf_directory = crate::adapters::capf::Update::of(&snapshot);
    // A CAPF deadline passing or a lockout ending changes a status with no edit: reconcile then.
    let capf_change = capf_directory.next_change(&state, time::OffsetDateTime::now_utc());
    // The SIP directory is made of the snapshot and the build's certificates: kept for after it.
    let snapshot = Arc::new(snapshot);
    let built = build(cluster, Arc::clone(&snapshot), &state).await?;
    let owner = cluster.controller_owner_ref(&()).ok_or_else(|| ReconcileError::Build("the cluster has no uid yet".into()))?;
    // What a token unlock counted is stored before anything else can fail, the build included: a
    // failing apply or status write must never let a wrong password go uncounted (P.16-5).
    persist_token_registry(&context.client, &namespace, &name, &state, &owner).await.map_err(ReconcileError::Apply)?;
    steps.done(ReconcileStep::Build);
    let output = match built {
        Ok(output) => output,
        Err(refused) => {
            let (reason, message) = refusal(&name, &refused);
            return stall(cluster, context, observed, reason, &message, &BTreeMap::new()).await;
        }
    };
    let files = state.files();
    // Then the objects the cluster owns.
    let inputs = DesiredInputs {
        cluster,
        owner: &owner,
        files: &files,
        output: &output,
        snapshot: &snapshot,
        capf_directory,
        holding_records,
        defaults: &context.workload_defaults,
    };
    let desired = desired_objects(inputs).map_err(ReconcileError::Build)?;
    drop(snapshot);
    let output = StatusInputs::of(output);
    steps.done(ReconcileStep::Desired);

    // Apply.
    let replicas = apply(&desired, &context.client, &namespace, &name).await.map_err(ReconcileError::Apply)?;
    drop(desired);
    steps.done(ReconcileStep::Apply);

    // Status, and the events of what changed.
    for change in &output.changes {
        let kind = if change.kind == ChangeKind::NewIdentity { EventType::Warning } else { EventType::Normal };
        publish(context, cluster, kind, change.kind.reason(), &change.message).await;
    }
    record_expiry(context, &namespace, &name, &files);
    let statuses = built_statuses(&observed, &name, &output, &files, availability::condition(&replicas));
    let next_rotation_step = output.next_rotation_step;
    announce_token_changes(context, cluster, &tokens, &statuses).await;
    announce_downgrades(context, cluster, &observed, &statuses).await;
    announce_withheld_srtp(context, &observed, &statuses).await;
    let written = write_statuses(context, &mut observed, statuses).await;
    context.settled.lock().unwrap_or_else(|p| p.into_inner()).insert(namespace, observed.into_settled());
    written.map_err(ReconcileError::Status)?;
    steps.done(ReconcileStep::Status);
    // A rotation's next step is due with no edit either.
    let next_change = [capf_change, next_rotation_step].into_iter().flatten().min();
    let until_next_change =
        next_change.map(|at| at - time::OffsetDateTime::now_utc()).and_then(|left| Duration::try_from(left).ok()).unwrap_or(RESYNC);
    Ok(Reconciled { action: Action::requeue(until_next_change.clamp(Duration::from_secs(1), RESYNC)), stalled: None })
}

/// Times the steps of one reconcile into `callguard_reconcile_step_duration_seconds`, with the
/// resident memory after each, so that a large namespace shows where its time and memory go.
struct StepClock<'a> {
    metrics: &'a crate::ops::metrics::Metrics,
    since: std::time::Instant,
}

impl<'a> StepClock<'a> {
    fn start(metrics: &'a crate::ops::metrics::Metrics) -> Self {
        StepClock { metrics, since: std::time::Instant::now() }
    }

    fn done(&mut self, step: ReconcileStep) {
        self.metrics.observe_step(step, self.since.elapsed());
        self.since = std::time::Instant::now();
    }
}

/// A new generation: says so first (kstatus `Reconciling`), so that GitOps tools wait for the result.
async fn announce_new_generation(cluster: &CallControlCluster, context: &Context, observed: &mut Observed) -> Result<(), ReconcileError> {
    // As just read, not as the controller's copy had it: that one can be a write behind, and
    // would announce again a generation already reconciled.
    let name = cluster.name_any();
    let Some(Seen { generation, object, .. }) = observed.get(Kind::CallControlCluster, &name) else { return Ok(()) };
    let status = object.to_json();
    if status.get("observedGeneration").and_then(Value::as_i64) == *generation {
        return Ok(());
    }
    let wanted = vec![
        Wanted::new("Ready", false, "Reconciling", format!("reconciling generation {}", generation.unwrap_or_default())),
        Wanted::new("Reconciling", true, "Progressing", "validating, building and applying"),
        Wanted::new("Stalled", false, "Valid", ""),
    ];
    // The identity record goes with it: a status applied without it would drop it (see
    // `invalid_statuses`).
    let extra = status.get("identity").map(|identity| ("identity".to_owned(), identity.clone())).into_iter().collect();
    let update = observed.unsettled(StatusUpdate { kind: Kind::CallControlCluster, name, wanted, extra });
    write_statuses(context, observed, update.into_iter().collect()).await.map_err(ReconcileError::Status)
}

/// What validation found wrong: every violation as one message, and by object.
struct Invalid {
    message: String,
    by_object: BTreeMap<String, Vec<String>>,
}

/// Validates exactly as `callguard validate` does: the namespace's snapshot, or what is wrong.
/// Of what passed the schema and CEL checks in the last reconcile, only what changed is checked.
async fn validate(
    objects: NamespaceObjects,
    passed_checks: Arc<PassedChecks>,
) -> Result<Result<crate::validate::Snapshot, Invalid>, ReconcileError> {
    let namespace = objects.namespace.clone();
    let mut report = tokio::task::spawn_blocking(move || {
        let before = passed_checks.take();
        let (documents, digests, prechecked) = objects.into_validation(&before);
        validate_remembering(&documents, &digests, prechecked, SecretPolicy::Require, &before, &passed_checks)
    })
    .await
    .map_err(|e| ReconcileError::Validate(e.to_string()))?;
    if report.violations.is_empty() {
        return Ok(Ok(report.snapshots.remove(&namespace).unwrap_or_else(|| crate::validate::Snapshot::new(&namespace))));
    }
    let messages: Vec<String> =
        report.violations.iter().map(|v| format!("{}: {}: {}", v.object, v.violation.field, v.violation.message)).collect();
    let mut by_object: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for v in &report.violations {
        by_object.entry(v.object.clone()).or_default().push(format!("{}: {}", v.violation.field, v.violation.message));
    }
    Ok(Err(Invalid { message: messages.join("; "), by_object }))
}

/// Builds the state from the Secrets, the trust ConfigMap and the cluster's status. The outer
/// error: the build could not run; the inner one: it refused the configuration.
async fn build(
    cluster: &CallControlCluster,
    snapshot: Arc<crate::validate::Snapshot>,
    state: &StateDir,
) -> Result<Result<BuildOutput, BuildError>, ReconcileError> {
    let state = state.clone();
    let options = BuildOptions { new_identity: cluster.annotations().get(labels::NEW_IDENTITY).cloned() };
    tokio::task::spawn_blocking(move || build_namespace(snapshot, &state, time::OffsetDateTime::now_utc(), &options))
        .await
        .map_err(|e| ReconcileError::Build(e.to_string()))
}

/// Stalled with `reason`: the event, the cluster's `Stalled` with `message`, every object of
/// `by_object` with its own faults, and the others waiting for the cluster.
async fn stall(
    cluster: &CallControlCluster,
    context: &Context,
    mut observed: Observed,
    reason: StallReason,
    message: &str,
    by_object: &BTreeMap<String, Vec<String>>,
) -> Result<Reconciled, ReconcileError> {
    publish(context, cluster, EventType::Warning, reason.as_str(), message).await;
    let statuses = invalid_statuses(&observed, &cluster.name_any(), reason.as_str(), message, by_object);
    let written = write_statuses(context, &mut observed, statuses).await;
    let namespace = observed.namespace.clone();
    context.settled.lock().unwrap_or_else(|p| p.into_inner()).insert(namespace, observed.into_settled());
    written.map_err(ReconcileError::Status)?;
    Ok(Reconciled::stalled(reason))
}

/// Why the build refused (no TFTP node, a lost identity), in words that say where to look.
fn refusal(cluster: &str, refused: &BuildError) -> (StallReason, String) {
    match refused {
        BuildError::IdentityLost(lost) => (StallReason::IdentityLost, lost.describe(|file| place(cluster, file))),
        other => (StallReason::BuildFailed, other.to_string()),
    }
}

/// Applies the token registry's Secret alone (see [`reconcile_cluster`]).
async fn persist_token_registry(
    client: &Client,
    namespace: &str,
    cluster: &str,
    state: &StateDir,
    owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) -> Result<(), kube::Error> {
    let (secrets, _) = objects_from_state(cluster, &state.files());
    let name = labels::tokens_secret(cluster);
    let Some(registry) = secrets.into_iter().find(|s| s.metadata.name.as_deref() == Some(name.as_str())) else {
        return Ok(());
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&owned(registry, owner))).await.map(|_| ())
}

/// Applies everything; the replicas the applied workloads report, from the answers to the applies
/// (which carry each object's status), for `DataPlaneAvailable`.
async fn apply(desired: &Desired, client: &Client, namespace: &str, cluster: &str) -> Result<Vec<Replicas>, kube::Error> {
    apply_kind(client, namespace, cluster, &desired.secrets).await?;
    apply_kind(client, namespace, cluster, &desired.config_maps).await?;
    apply_kind(client, namespace, cluster, &desired.service_accounts).await?;
    apply_kind(client, namespace, cluster, &desired.roles).await?;
    apply_kind(client, namespace, cluster, &desired.role_bindings).await?;
    let deployments = apply_kind(client, namespace, cluster, &desired.deployments).await?;
    let stateful_sets = apply_kind(client, namespace, cluster, &desired.stateful_sets).await?;
    apply_kind(client, namespace, cluster, &desired.services).await?;
    apply_kind(client, namespace, cluster, &desired.network_policies).await?;
    apply_kind(client, namespace, cluster, &desired.disruption_budgets).await?;
    Ok(deployments.iter().map(Replicas::of_deployment).chain(stateful_sets.iter().map(Replicas::of_stateful_set)).collect())
}

/// Server-side apply of `objects` under one field manager, then deletion of the objects of the same
/// kind labelled as this cluster's that are not among them. The objects as the API server answered.
async fn apply_kind<K>(client: &Client, namespace: &str, cluster: &str, objects: &[K]) -> Result<Vec<K>, kube::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + Serialize + DeserializeOwned + fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = BTreeSet::new();
    let mut applied = Vec::with_capacity(objects.len());
    for object in objects {
        let name = object.meta().name.clone().unwrap_or_default();
        applied.push(api.patch(&name, &params, &Patch::Apply(object)).await?);
        names.insert(name);
    }
    let existing = api.list(&ListParams::default().labels(&labels::owned_selector(cluster))).await?;
    for stale in existing.items.iter().filter(|o| !names.contains(&o.name_any())) {
        tracing::info!(kind = %K::kind(&()), name = %stale.name_any(), "deleting what no longer belongs to cluster {cluster}");
        match api.delete(&stale.name_any(), &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(applied)
}

async fn publish(context: &Context, cluster: &CallControlCluster, type_: EventType, reason: &str, note: &str) {
    publish_on(context, &cluster.object_ref(&()), type_, reason, note).await;
}

async fn publish_on(
    context: &Context,
    regarding: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note.chars().take(1024).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = context.recorder.publish(&event, regarding).await {
        tracing::warn!("cannot publish event {reason}: {e}");
    }
}

/// Per-phone events in one reconcile up to this many; beyond, one summary on the cluster, so that
/// a cold start of 30 000 phones does not write thousands of events.
const DOWNGRADE_EVENTS_PER_PHONE: usize = 50;

/// A phone that became downgraded (credentials in clear, hardening not delivered, a secure SRST
/// reference written insecure) gets a Warning event, once, when it happens; many at once are
/// summed up in one event on the cluster, by reason.
async fn announce_downgrades(context: &Context, cluster: &CallControlCluster, observed: &Observed, updates: &[Unsettled]) {
    let newly: Vec<(&String, &Wanted)> = updates
        .iter()
        .filter(|u| u.kind == Kind::Phone)
        .filter_map(|update| {
            let downgraded = update.wanted.iter().find(|w| w.type_ == DOWNGRADED && w.status)?;
            let was = observed.get(update.kind, &update.name).and_then(|seen| seen.object.condition(DOWNGRADED));
            (was != Some(true)).then_some((&update.name, downgraded))
        })
        .collect();
    if newly.len() > DOWNGRADE_EVENTS_PER_PHONE {
        let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, downgraded) in &newly {
            *by_reason.entry(downgraded.reason.as_str()).or_default() += 1;
        }
        let counts: Vec<String> = by_reason.iter().map(|(reason, count)| format!("{count} {reason}")).collect();
        let note = format!(
            "{} phones are served with less protection than their objects ask for ({}); see each phone's Downgraded condition",
            newly.len(),
            counts.join(", ")
        );
        publish(context, cluster, EventType::Warning, "SecurityDowngraded", &note).await;
        return;
    }
    for (name, downgraded) in newly {
        let regarding = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(crate::api::Phone::api_version(&()).into_owned()),
            kind: Some("Phone".into()),
            name: Some(name.clone()),
            namespace: Some(observed.namespace.clone()),
            ..Default::default()
        };
        publish_on(context, &regarding, EventType::Warning, "SecurityDowngraded", &downgraded.message).await;
    }
}

/// A gateway or H.323 trunk whose SRTP keys became withheld for lack of IPSec gets a Warning event,
/// once, when it happens (P.13-2, P.13-3).
async fn announce_withheld_srtp(context: &Context, observed: &Observed, updates: &[Unsettled]) {
    use super::gateway_status::SRTP_WITHHELD;
    for update in updates.iter().filter(|u| matches!(u.kind, Kind::H323Gateway | Kind::MgcpGateway)) {
        let Some(withheld) = update.wanted.iter().find(|w| w.type_ == SRTP_WITHHELD && w.status) else { continue };
        let was = observed.get(update.kind, &update.name).and_then(|seen| seen.object.condition(SRTP_WITHHELD));
        if was == Some(true) {
            continue;
        }
        let regarding = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(crate::api::API_VERSION.into()),
            kind: Some(update.kind.as_str().into()),
            name: Some(update.name.clone()),
            namespace: Some(observed.namespace.clone()),
            ..Default::default()
        };
        publish_on(context, &regarding, EventType::Warning, SRTP_WITHHELD, &withheld.message).await;
    }
}

/// The condition that shows a phone served with less protection than its objects ask for.
const DOWNGRADED: &str = "Downgraded";

fn record_expiry(context: &Context, namespace: &str, cluster: &str, files: &crate::core::build::state::StateFiles) {
    context.metrics.remove_cluster_certificates(namespace, cluster);
    // A retired identity's or rotated CA's certificates serve nothing: their end is no alert.
    let in_use = |name: &str| name.ends_with(".crt") && !name.starts_with(crate::core::build::state::RETIRED);
    for (name, (bytes, _)) in files.iter().filter(|(name, _)| in_use(name)) {
        let Ok(der) = crate::core::pki::inspect::certificate_der(bytes) else { continue };
        let Ok((_, certificate)) = x509_parser::parse_x509_certificate(&der) else { continue };
        let Ok(not_after) = time::OffsetDateTime::from_unix_timestamp(certificate.validity().not_after.timestamp()) else { continue };
        let label = name.trim_end_matches(".crt").rsplit('/').next().unwrap_or(name);
        context.metrics.set_certificate_expiry(CertificateLabels::new(namespace, cluster, label), not_after);
    }
}

/// Statuses when nothing is built: the cluster and every offending object Stalled with the
/// validation message; the others NotReady, waiting for the cluster.
fn invalid_statuses(
    observed: &Observed,
    cluster: &str,
    reason: &str,
    message: &str,
    by_object: &BTreeMap<String, Vec<String>>,
) -> Vec<Unsettled> {
    let mut updates = Vec::new();
    for (kind, name) in observed.names() {
        let own = by_object.get(&format!("{}/{name}", kind.as_str()));
        let is_cluster = kind == Kind::CallControlCluster && name == cluster;
        let (ready, stalled) = match (own, is_cluster) {
            (Some(own), _) => (Wanted::new("Ready", false, reason, own.join("; ")), Some((reason.to_owned(), own.join("; ")))),
            (None, true) => (Wanted::new("Ready", false, reason, message), Some((reason.to_owned(), message.to_owned()))),
            (None, false) => {
                (Wanted::new("Ready", false, "ClusterNotReconciled", format!("CallControlCluster/{cluster} is stalled: {message}")), None)
            }
        };
        let mut extra = serde_json::Map::new();
        if is_cluster {
            // The identity record outlives a stall: a status applied without it would drop it, and
            // with it the memory that an identity exists (see `identity_record`).
            let previous = observed.get(kind, &name).and_then(|seen| seen.object.to_json().get("identity").cloned());
            extra.extend(previous.map(|identity| ("identity".to_owned(), identity)));
        }
        updates.extend(observed.unsettled(StatusUpdate { kind, name, wanted: finished(ready, stalled, vec![]), extra }));
    }
    updates
}

/// What the status step needs of a build. The rest, every phone's resolved files among it, is in
/// the desired objects by then: dropped before the statuses are made, not held beside them.
struct StatusInputs {
    changes: Vec<crate::core::build::Change>,
    statuses: Vec<ResourceStatus>,
    identity: crate::api::IdentityRecord,
    next_rotation_step: Option<time::OffsetDateTime>,
}

impl StatusInputs {
    fn of(output: BuildOutput) -> Self {
        let BuildOutput { changes, statuses, identity, next_rotation_step, .. } = output;
        StatusInputs { changes, statuses, identity, next_rotation_step }
    }
}

/// Statuses after a build: the build's own (cluster, tokens, phones); Ready for what it validated,
/// and for the cluster, only while its data plane runs (`data_plane`, from the applied workloads).
fn built_statuses(
    observed: &Observed,
    cluster: &str,
    output: &StatusInputs,
    files: &crate::core::build::state::StateFiles,
    data_plane: Wanted,
) -> Vec<Unsettled> {
    let built: HashMap<(&str, &str), &ResourceStatus> = output.statuses.iter().map(|s| ((s.kind, s.name.as_str()), s)).collect();
    let mut updates = Vec::new();
    for (kind, name) in observed.names() {
        let status = built.get(&(kind.as_str(), name.as_str()));
        let mut ready = match status {
            Some(s) if s.ready => Wanted::new("Ready", true, "Ready", s.message.clone()),
            Some(s) => Wanted::new("Ready", false, s.reason.clone(), s.message.clone()),
            None => Wanted::new("Ready", true, "Valid", ""),
        };
        let mut domain = Vec::new();
        // A field that no longer applies is written as null, which removes it: a deleted LSC must
        // leave the status, not linger as the last one seen.
        let mut extra = serde_json::Map::new();
        if matches!(kind, Kind::EndUser | Kind::ApplicationUser) {
            let profiles = status.map(|s| &s.capf_profiles).filter(|p| !p.is_empty());
            extra.insert("capfProfiles".into(), profiles.map_or(Value::Null, |p| json!(p)));
        }
        if kind == Kind::Phone {
            extra.insert("lscState".into(), json!(status.and_then(|s| s.lsc_state)));
            extra.insert("operationStatus".into(), json!(status.and_then(|s| s.operation_status.clone())));
            extra.insert("lsc".into(), json!(status.and_then(|s| s.lsc.clone())));
            let failures = status.map(|s| s.consecutive_auth_failures).filter(|n| *n > 0);
            extra.insert("consecutiveAuthFailures".into(), json!(failures));
            let downgrades = status.map(|s| s.downgrades.as_slice()).unwrap_or_default();
            domain.push(match status.map(|s| s.downgrade_reasons()).and_then(|r| r.first().copied()) {
                Some(first) => Wanted::new(DOWNGRADED, true, first, downgrades.join("; ")),
                None => Wanted::new(DOWNGRADED, false, "AsSpecified", ""),
            });
        }
        if let Some(media) = status.and_then(|s| s.media.as_ref()) {
            let (conditions, fields) = super::gateway_status::gateway_status(media);
            domain.extend(conditions);
            extra.extend(fields);
        }
        if kind == Kind::CallControlCluster && name == cluster {
            if ready.status && !data_plane.status {
                ready = Wanted::new("Ready", false, "DataPlaneUnavailable", data_plane.message.clone());
            }
            domain.push(data_plane.clone());
            extra.insert("identity".into(), serde_json::to_value(&output.identity).unwrap_or(Value::Null));
            domain.push(Wanted::new(
                "CertificatesIssued",
                files.contains_key("ca/ca.crt"),
                "Issued",
                "the cluster CA and every node's function certificates",
            ));
            let ctl_signed = status.is_some_and(|s| s.reason != "CtlNotSigned");
            let published = files.contains_key("published/ITLFile.tlv") && ctl_signed;
            let reason = if published { "Published" } else { "NotSigned" };
            domain.push(Wanted::new(
                "TrustListPublished",
                published,
                reason,
                if published { "" } else { "the last published CTL is still served" },
            ));
        }
        if kind == Kind::SecurityToken
            && let Some(counters) = token_counters(files, &name)
        {
            extra.insert("consecutiveFailedLogins".into(), json!(counters.consecutive_failed_logins));
            extra.insert("inCurrentCtl".into(), json!(counters.in_current_ctl));
            extra.insert("signedCurrentCtl".into(), json!(counters.signed_current_ctl));
            extra.insert("locked".into(), json!(counters.locked));
            if let Some(at) = counters.locked_at {
                extra.insert("lockedAt".into(), json!(at));
            }
        }
        updates.extend(observed.unsettled(StatusUpdate { kind, name, wanted: finished(ready, None, domain), extra }));
    }
    updates
}

/// A token that this reconcile locked gets a Warning event on the cluster (P.16-5).
async fn announce_token_changes(context: &Context, cluster: &CallControlCluster, tokens: &[Arc<SecurityToken>], updates: &[Unsettled]) {
    for update in updates.iter().filter(|u| u.kind == Kind::SecurityToken) {
        let locked_now = update.extra.get("locked") == Some(&json!(true));
        let was_locked = tokens.iter().any(|t| t.name_any() == update.name && t.status.as_ref().is_some_and(|s| s.locked));
        if locked_now && !was_locked {
            let note = format!("SecurityToken/{} is locked, and it can never sign again: {}", update.name, crate::api::TOKEN_LOCK_RULE);
            publish(context, cluster, EventType::Warning, "TokenLocked", &note).await;
        }
    }
}
