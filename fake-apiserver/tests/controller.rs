//! kube-runtime's `Controller` against the server, end to end: it reconciles Phones, writes their status
//! by server-side apply, publishes events with the `Recorder`, and reacts to a spec change.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{phone, phone_resource, phones};
use fake_apiserver::{FakeApiServer, Verb};
use futures::StreamExt;
use k8s_openapi::api::events::v1::Event as KubeEvent;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;

struct Context {
    api: Api<DynamicObject>,
    recorder: Recorder,
}

#[derive(Debug)]
struct ReconcileError(kube::Error);

impl std::fmt::Display for ReconcileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "reconcile failed: {}", self.0)
    }
}

impl std::error::Error for ReconcileError {}

async fn reconcile(phone: Arc<DynamicObject>, context: Arc<Context>) -> Result<Action, ReconcileError> {
    let status = json!({
        "apiVersion": "callguard.io/v1alpha1", "kind": "Phone", "metadata": {"name": phone.name_any()},
        "status": {"observedGeneration": phone.metadata.generation, "operationStatus": format!("model {}", phone.data["spec"]["model"].as_str().unwrap_or_default())},
    });
    context
        .api
        .patch_status(&phone.name_any(), &PatchParams::apply("callguard").force(), &Patch::Apply(&status))
        .await
        .map_err(ReconcileError)?;
    let event = Event { type_: EventType::Normal, reason: "Reconciled".into(), note: None, action: "Reconcile".into(), secondary: None };
    context.recorder.publish(&event, &phone.object_ref(&phone_resource())).await.map_err(ReconcileError)?;
    Ok(Action::await_change())
}

fn error_policy(_phone: Arc<DynamicObject>, _error: &ReconcileError, _context: Arc<Context>) -> Action {
    Action::requeue(Duration::from_millis(100))
}

#[tokio::test]
async fn controller_reconciles_and_reacts_to_changes() {
    let server = FakeApiServer::start().await;
    let client = server.client_as("operator-a");
    let api = phones(client.clone(), "default");
    api.create(&PostParams::default(), &phone("sep1", "7941")).await.unwrap();

    let reporter = Reporter { controller: "callguard".into(), instance: Some("operator-a".into()) };
    let context = Arc::new(Context { api: api.clone(), recorder: Recorder::new(client.clone(), reporter) });
    let controller = Controller::new_with(api.clone(), watcher::Config::default(), phone_resource())
        .run(reconcile, error_policy, context)
        .for_each(|_| async {});
    let running = tokio::spawn(controller);

    let status_of = |model: &'static str| {
        let server = &server;
        async move {
            loop {
                let stored = server.get("callguard.io/v1alpha1", "Phone", Some("default"), "sep1");
                if stored.is_some_and(|phone| phone["status"]["operationStatus"] == format!("model {model}")) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), status_of("7941")).await.expect("the first reconcile writes status");

    api.patch("sep1", &PatchParams::default(), &Patch::Merge(json!({"spec": {"model": "7961"}}))).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), status_of("7961")).await.expect("a spec change is reconciled");
    running.abort();

    let stored = server.get("callguard.io/v1alpha1", "Phone", Some("default"), "sep1").unwrap();
    assert_eq!(stored["status"]["observedGeneration"], 2);
    let events: Api<KubeEvent> = Api::default_namespaced(server.client());
    let published = events.list(&ListParams::default()).await.unwrap();
    assert!(!published.items.is_empty(), "the recorder created an events.k8s.io Event");
    assert_eq!(published.items[0].reason.as_deref(), Some("Reconciled"));
    let writes = server.writes();
    assert!(writes.iter().all(|write| write.identity.as_deref() == Some("operator-a")), "every write carries the bearer identity");
    assert!(
        writes.iter().any(|write| write.subresource.as_deref() == Some("status") && write.field_manager.as_deref() == Some("callguard"))
    );
    assert!(server.request_counts()[&Verb::Watch] >= 1);
}
