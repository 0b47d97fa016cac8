//! Running the operator: metrics and probes, leader election, the controller while leading, and a
//! graceful stop on SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::labels;
use super::reconcile::{Context, error_policy, reconcile};
use crate::api::{
    ApplicationUser, CallControlCluster, EndUser, Phone, PhoneSecurityProfile, SecurityToken, SipRealm, SipTrunk, SipTrunkSecurityProfile,
    SrstReference,
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
        let context =
            Arc::new(Context::new(client.clone(), options.image.clone(), Arc::clone(&metrics), Recorder::new(client.clone(), reporter)));
        let controller = controller(client.clone(), context, shutdown.clone());
        tokio::select! {
            () = controller => {}
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

/// The CallControlCluster controller: it owns the cluster's workloads and Secrets, and any change to
/// a Callguard object or Secret of a namespace reconciles the namespace's cluster.
async fn controller(client: Client, context: Arc<Context>, shutdown: Shutdown) {
    let clusters: Api<CallControlCluster> = Api::all(client.clone());
    let owned = watcher::Config::default().labels(&format!("{}={}", labels::MANAGED_BY_KEY, labels::MANAGED_BY));
    let controller = Controller::new(clusters, watcher::Config::default());
    let store = controller.store();
    let controller = controller
        .owns(Api::<ConfigMap>::all(client.clone()), owned.clone())
        .owns(Api::<Deployment>::all(client.clone()), owned.clone())
        .owns(Api::<Service>::all(client.clone()), owned.clone())
        .owns(Api::<ServiceAccount>::all(client.clone()), owned.clone())
        .owns(Api::<Role>::all(client.clone()), owned.clone())
        .owns(Api::<RoleBinding>::all(client.clone()), owned);
    let controller = in_namespace::<Secret>(controller, &client, &store);
    let controller = in_namespace::<SecurityToken>(controller, &client, &store);
    let controller = in_namespace::<PhoneSecurityProfile>(controller, &client, &store);
    let controller = in_namespace::<Phone>(controller, &client, &store);
    let controller = in_namespace::<SipTrunkSecurityProfile>(controller, &client, &store);
    let controller = in_namespace::<SipTrunk>(controller, &client, &store);
    let controller = in_namespace::<SrstReference>(controller, &client, &store);
    let controller = in_namespace::<EndUser>(controller, &client, &store);
    let controller = in_namespace::<ApplicationUser>(controller, &client, &store);
    let controller = in_namespace::<SipRealm>(controller, &client, &store);
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

/// A change to any `K` reconciles the clusters of its namespace.
fn in_namespace<K>(
    controller: Controller<CallControlCluster>,
    client: &Client,
    clusters: &Store<CallControlCluster>,
) -> Controller<CallControlCluster>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let clusters = clusters.clone();
    controller.watches(Api::<K>::all(client.clone()), watcher::Config::default(), move |object: K| {
        let namespace = object.namespace();
        clusters
            .state()
            .into_iter()
            .filter(|cluster| cluster.namespace() == namespace)
            .map(|cluster| ObjectRef::from_obj(&*cluster))
            .collect::<Vec<_>>()
    })
}
