//! Running the operator: metrics and probes, leader election, the controller while leading, and a
//! graceful stop on SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::watch;

use super::labels;
use super::reconcile::{Context, error_policy, reconcile};
use super::triggers::Triggers;
use crate::api::{
    ApplicationUser, CallControlCluster, EndUser, H323Gateway, MgcpGateway, Phone, PhoneSecurityProfile, SecurityToken, SipRealm, SipTrunk,
    SipTrunkSecurityProfile, SrstReference,
};
use crate::ops::http::{Health, serve};
use crate::ops::leader::{LeaderElector, default_identity, leadership_lost, wait_for_leadership};
use crate::ops::metrics::Metrics;
use crate::ops::shutdown::Shutdown;

/// The Lease two replicas share.
pub const LEASE_NAME: &str = "callguard-operator";

#[derive(Debug, Clone)]
pub struct OperatorOptions {
    /// `/metrics`, `/healthz` and `/readyz`.
    pub metrics_bind: SocketAddr,
    pub leader_election: bool,
    /// Namespace of the Lease; the pod's own (`POD_NAMESPACE`) in a cluster.
    pub lease_namespace: String,
    /// The image the data-plane pods run: the operator's own.
    pub image: String,
    /// Who this replica is, in the Lease and in events; the pod name by default.
    pub identity: Option<String>,
    /// The namespaces managed; empty means every namespace (cluster scope).
    pub namespaces: Vec<String>,
    /// Ports of the API server, which the data-plane NetworkPolicies let the pods reach.
    pub api_server_ports: Vec<u16>,
    /// Pull Secrets of the image, given to the data-plane pods.
    pub image_pull_secrets: Vec<String>,
}

/// Runs until SIGINT or SIGTERM (or `shutdown`), writing only while it leads.
pub async fn run(client: Client, options: OperatorOptions, shutdown: Shutdown) -> Result<(), String> {
    let metrics = Arc::new(Metrics::new());
    let health = Health::new();
    let identity = options.identity.clone().unwrap_or_else(default_identity);
    let http = tokio::spawn(serve(options.metrics_bind, Arc::clone(&metrics), health.clone(), shutdown.wait()));

    let (is_leader, mut leadership) = watch::channel(!options.leader_election);
    let elector = if options.leader_election {
        let api: Api<Lease> = Api::namespaced(client.clone(), &options.lease_namespace);
        let elector = LeaderElector::new(api, LEASE_NAME, identity.clone());
        Some(tokio::spawn(elector.run(is_leader, shutdown.wait())))
    } else {
        None
    };
    // A standby is ready too: it serves probes and metrics and takes over when the leader goes.
    health.set_ready(true);
    tracing::info!(%identity, leader_election = options.leader_election, "callguard operator started");

    while !shutdown.is_triggered() {
        tokio::select! {
            result = wait_for_leadership(&mut leadership) => if result.is_err() { break },
            () = shutdown.wait() => break,
        }
        tracing::info!(%identity, "leading: reconciling");
        metrics.set_leader(true);
        let reporter = Reporter { controller: "callguard".into(), instance: Some(identity.clone()) };
        let mut context =
            Context::new(client.clone(), options.image.clone(), Arc::clone(&metrics), Recorder::new(client.clone(), reporter));
        context.workload_defaults.api_server_ports = options.api_server_ports.clone();
        context.workload_defaults.image_pull_secrets = options.image_pull_secrets.clone();
        // One controller per managed namespace, or one for the whole cluster, each with its caches.
        let scopes: Vec<Option<String>> =
            if options.namespaces.is_empty() { vec![None] } else { options.namespaces.iter().cloned().map(Some).collect() };
        context.caches = scopes.iter().map(|scope| (scope.clone(), Arc::default())).collect();
        let context = Arc::new(context);
        let controllers = scopes
            .into_iter()
            .map(|namespace| controller(client.clone(), namespace, Arc::clone(&context), health.clone(), shutdown.clone()));
        let controller = futures::future::join_all(controllers);
        tokio::select! {
            _ = controller => {}
            _ = leadership_lost(&mut leadership) => tracing::warn!(%identity, "leadership lost: stopped writing"),
        }
        metrics.set_leader(false);
    }
    shutdown.trigger();
    if let Some(elector) = elector {
        let _ = elector.await;
    }
    match http.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("metrics endpoint: {e}")),
        Err(e) => Err(format!("metrics endpoint: {e}")),
    }
}

/// `K` in `namespace`, or in every namespace.
fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// The CallControlCluster controller of one namespace (or all): it owns the cluster's workloads and
/// Secrets, and any change to a Callguard object of a namespace, or to a Secret labelled
/// `callguard.io/watch`, reconciles the namespace's cluster. No other Secret is watched. The
/// Callguard objects and the watched Secrets are kept in the scope's watch caches as they change. Each of
/// these watches fails and backs off alone (`triggers`).
async fn controller(client: Client, namespace: Option<String>, context: Arc<Context>, health: Health, shutdown: Shutdown) {
    let scope = namespace.as_deref();
    let clusters: Api<CallControlCluster> = api(&client, scope);
    let controller = Controller::new(clusters, watcher::Config::default());
    let triggers = Triggers {
        client: client.clone(),
        clusters: controller.store(),
        namespace: namespace.clone(),
        metrics: Arc::clone(&context.metrics),
        health,
    };
    let owned = || watcher::Config::default().labels(&format!("{}={}", labels::MANAGED_BY_KEY, labels::MANAGED_BY));
    let caches = context.caches_of(scope);
    let streams = [
        triggers.owned::<Secret>(owned()),
        triggers.owned::<ConfigMap>(owned()),
        triggers.owned::<Deployment>(owned()),
        triggers.owned::<StatefulSet>(owned()),
        triggers.owned::<Service>(owned()),
        triggers.owned::<ServiceAccount>(owned()),
        triggers.owned::<Role>(owned()),
        triggers.owned::<RoleBinding>(owned()),
        triggers.owned::<NetworkPolicy>(owned()),
        triggers.owned::<PodDisruptionBudget>(owned()),
        triggers.watched_secrets(Arc::clone(&caches)),
        triggers.in_namespace::<SecurityToken>(),
        triggers.cached::<PhoneSecurityProfile>(Arc::clone(&caches), |c| &c.phone_profiles),
        triggers.cached::<Phone>(Arc::clone(&caches), |c| &c.phones),
        triggers.cached::<SipTrunkSecurityProfile>(Arc::clone(&caches), |c| &c.trunk_profiles),
        triggers.cached::<SipTrunk>(Arc::clone(&caches), |c| &c.trunks),
        triggers.cached::<SrstReference>(Arc::clone(&caches), |c| &c.srst_references),
        triggers.cached::<H323Gateway>(Arc::clone(&caches), |c| &c.h323_gateways),
        triggers.cached::<MgcpGateway>(Arc::clone(&caches), |c| &c.mgcp_gateways),
        triggers.cached::<EndUser>(Arc::clone(&caches), |c| &c.end_users),
        triggers.cached::<ApplicationUser>(Arc::clone(&caches), |c| &c.application_users),
        triggers.cached::<SipRealm>(Arc::clone(&caches), |c| &c.realms),
    ];
    // Never an error in these streams: the controller's shared backoff never holds them back.
    let controller = streams.into_iter().fold(controller, |controller, stream| controller.reconcile_on(stream));
    controller
        .graceful_shutdown_on(shutdown.wait())
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!("controller: {e}");
            }
        })
        .await;
}
