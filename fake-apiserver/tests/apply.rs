//! Server-side apply and the other patch types through kube's client.

mod common;

use common::{api_code, api_reason, phone, phone_json, phones};
use fake_apiserver::FakeApiServer;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

fn managed_entry<'a>(object: &'a Value, manager: &str) -> Option<&'a Value> {
    object["metadata"]["managedFields"].as_array()?.iter().find(|entry| entry["manager"] == manager)
}

#[tokio::test]
async fn apply_creates_updates_and_removes_fields() {
    let server = FakeApiServer::start().await;
    let api = phones(server.client(), "default");
    let mut config = phone_json("sep1", "7941");
    config["metadata"]["labels"] = json!({"site": "a", "tier": "edge"});
    config["spec"]["description"] = json!("lobby");

    let created = api.patch("sep1", &PatchParams::apply("operator"), &Patch::Apply(&config)).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let stored = server.get("callguard.io/v1alpha1", "Phone", Some("default"), "sep1").unwrap();
    let entry = managed_entry(&stored, "operator").expect("the applier owns fields");
    assert_eq!(entry["operation"], "Apply");
    assert_eq!(entry["fieldsType"], "FieldsV1");
    assert_eq!(entry["fieldsV1"]["f:spec"]["f:description"], json!({}));
    assert_eq!(entry["fieldsV1"]["f:spec"]["f:directoryNumbers"]["v:\"1000\""], json!({}), "directoryNumbers is a set in the CRD");
    assert_eq!(entry["fieldsV1"]["f:metadata"]["f:labels"]["f:site"], json!({}));

    // The same manager applies again without the description and one label: both are removed.
    let mut smaller = phone_json("sep1", "7961");
    smaller["metadata"]["labels"] = json!({"site": "a"});
    let updated = api.patch("sep1", &PatchParams::apply("operator"), &Patch::Apply(&smaller)).await.unwrap();
    assert_eq!(updated.data["spec"]["model"], "7961");
    assert!(updated.data["spec"].get("description").is_none(), "a field the manager stopped applying is removed");
    assert_eq!(updated.metadata.labels.unwrap().len(), 1);
    assert_eq!(updated.metadata.generation, Some(2));
    let stored = server.get("callguard.io/v1alpha1", "Phone", Some("default"), "sep1").unwrap();
    let entry = managed_entry(&stored, "operator").unwrap();
    assert!(entry["fieldsV1"]["f:spec"].get("f:description").is_none(), "the entry no longer owns what was not applied");
    assert_eq!(entry["fieldsV1"]["f:spec"]["f:model"], json!({}));

    // Applying the same configuration again is a no-op.
    let again = api.patch("sep1", &PatchParams::apply("operator"), &Patch::Apply(&smaller)).await.unwrap();
    assert_eq!(again.metadata.resource_version, updated.metadata.resource_version);
}

#[tokio::test]
async fn apply_keeps_fields_of_other_managers_and_reports_conflicts() {
    let server = FakeApiServer::start().await;
    let api = phones(server.client(), "default");
    let mut first = phone_json("sep1", "7941");
    first["spec"]["description"] = json!("lobby");
    api.patch("sep1", &PatchParams::apply("operator"), &Patch::Apply(&first)).await.unwrap();

    // Another manager adds a field of its own: no conflict, both keep their fields.
    let label = json!({"apiVersion": "callguard.io/v1alpha1", "kind": "Phone", "metadata": {"name": "sep1", "labels": {"team": "voice"}}});
    api.patch("sep1", &PatchParams::apply("labeller"), &Patch::Apply(&label)).await.unwrap();

    // The other manager now sets the operator's field to another value: 409 listing the conflict.
    let takeover =
        json!({"apiVersion": "callguard.io/v1alpha1", "kind": "Phone", "metadata": {"name": "sep1"}, "spec": {"description": "hall"}});
    let conflict = api.patch("sep1", &PatchParams::apply("labeller"), &Patch::Apply(&takeover)).await;
    let Err(kube::Error::Api(status)) = conflict else { panic!("expected a conflict, got {conflict:?}") };
    assert_eq!(status.code, 409);
    assert!(status.message.contains("conflict with \"operator\"") && status.message.contains(".spec.description"), "{}", status.message);

    // The same value is shared ownership, not a conflict.
    let same =
        json!({"apiVersion": "callguard.io/v1alpha1", "kind": "Phone", "metadata": {"name": "sep1"}, "spec": {"description": "lobby"}});
    api.patch("sep1", &PatchParams::apply("labeller"), &Patch::Apply(&same)).await.unwrap();

    // Forced, the field changes hands.
    let forced = api.patch("sep1", &PatchParams::apply("labeller").force(), &Patch::Apply(&takeover)).await.unwrap();
    assert_eq!(forced.data["spec"]["description"], "hall");
    let stored = server.get("callguard.io/v1alpha1", "Phone", Some("default"), "sep1").unwrap();
    assert!(managed_entry(&stored, "operator").unwrap()["fieldsV1"]["f:spec"].get("f:description").is_none());
    assert_eq!(managed_entry(&stored, "labeller").unwrap()["fieldsV1"]["f:spec"]["f:description"], json!({}));
    // The labeller stopped applying the label, so it is gone; the operator's fields are untouched.
    assert!(forced.metadata.labels.unwrap_or_default().is_empty());
    assert_eq!(forced.data["spec"]["model"], "7941");

    // The operator re-applies without the description it lost: the description stays (the labeller owns it).
    let without = phone_json("sep1", "7941");
    let kept = api.patch("sep1", &PatchParams::apply("operator"), &Patch::Apply(&without)).await.unwrap();
    assert_eq!(kept.data["spec"]["description"], "hall");
}

#[tokio::test]
async fn apply_validates_its_request() {
    let server = FakeApiServer::start().await;
    let api = phones(server.client(), "default");
    let config = phone_json("sep1", "7941");
    let no_manager = PatchParams { field_manager: None, ..Default::default() };
    assert_eq!(api_code(api.patch("sep1", &no_manager, &Patch::Apply(&config)).await), 422, "fieldManager is required");

    let first = api.patch("sep1", &PatchParams::apply("operator"), &Patch::Apply(&config)).await.unwrap();
    api.patch("sep1", &PatchParams::apply("operator"), &Patch::Apply(phone_json("sep1", "7960"))).await.unwrap();
    let mut stale = phone_json("sep1", "7961");
    stale["metadata"]["resourceVersion"] = json!(first.metadata.resource_version);
    let outcome = api.patch("sep1", &PatchParams::apply("operator"), &Patch::Apply(&stale)).await;
    assert_eq!(api_reason(outcome), "Conflict", "an apply with a stale resourceVersion is refused");

    let wrong_kind = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "sep1"}});
    assert_eq!(api_code(api.patch("sep1", &PatchParams::apply("operator"), &Patch::Apply(&wrong_kind)).await), 400);
}

#[tokio::test]
async fn status_apply_changes_only_status() {
    let server = FakeApiServer::start().await;
    let api = phones(server.client(), "default");
    api.patch("sep1", &PatchParams::apply("operator"), &Patch::Apply(phone_json("sep1", "7941"))).await.unwrap();
    let mut status = phone_json("sep1", "7960");
    status["status"] = json!({"lscState": "Installed", "conditions": [{"type": "Ready", "status": "True", "reason": "Done", "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z"}]});
    let after = api.patch_status("sep1", &PatchParams::apply("operator-status"), &Patch::Apply(&status)).await.unwrap();
    assert_eq!(after.data["status"]["lscState"], "Installed");
    assert_eq!(after.data["spec"]["model"], "7941", "a status apply does not touch spec");
    assert_eq!(after.metadata.generation, Some(1));
    let stored = server.get("callguard.io/v1alpha1", "Phone", Some("default"), "sep1").unwrap();
    let entry = managed_entry(&stored, "operator-status").unwrap();
    assert_eq!(entry["subresource"], "status");
    assert_eq!(
        entry["fieldsV1"]["f:status"]["f:conditions"]["k:{\"type\":\"Ready\"}"]["."],
        json!({}),
        "conditions are a map keyed by type"
    );

    // A main-resource apply ignores status.
    let mut main = phone_json("sep1", "7941");
    main["status"] = json!({"lscState": "Failed"});
    let main_after = api.patch("sep1", &PatchParams::apply("operator"), &Patch::Apply(&main)).await.unwrap();
    assert_eq!(main_after.data["status"]["lscState"], "Installed");

    // Dropping a condition from the status apply removes it.
    let cleared =
        json!({"apiVersion": "callguard.io/v1alpha1", "kind": "Phone", "metadata": {"name": "sep1"}, "status": {"lscState": "Installed"}});
    let cleared = api.patch_status("sep1", &PatchParams::apply("operator-status"), &Patch::Apply(&cleared)).await.unwrap();
    assert!(cleared.data["status"]["conditions"].as_array().is_none_or(|conditions| conditions.is_empty()));
}

#[tokio::test]
async fn apply_merges_containers_by_name() {
    let server = FakeApiServer::start().await;
    let api: Api<Deployment> = Api::default_namespaced(server.client());
    let deployment = |containers: Value| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "tftp"}, "spec": {
            "selector": {"matchLabels": {"app": "tftp"}},
            "template": {"metadata": {"labels": {"app": "tftp"}}, "spec": {"containers": containers}},
        }})
    };
    api.patch("tftp", &PatchParams::apply("operator"), &Patch::Apply(deployment(json!([{"name": "server", "image": "tftp:1"}]))))
        .await
        .unwrap();
    api.patch("tftp", &PatchParams::apply("sidecar-injector"), &Patch::Apply(deployment(json!([{"name": "proxy", "image": "proxy:1"}]))))
        .await
        .unwrap();
    let both = api.get("tftp").await.unwrap();
    let names: Vec<_> = both.spec.template.spec.unwrap().containers.into_iter().map(|container| container.name).collect();
    assert_eq!(names, ["server", "proxy"], "each manager owns its own container");
}

#[tokio::test]
async fn merge_json_and_strategic_patches() {
    let server = FakeApiServer::start().await;
    let api = phones(server.client(), "default");
    let mut labelled = phone("sep1", "7941");
    labelled.metadata.labels = Some([("a".to_string(), "1".to_string()), ("b".to_string(), "2".to_string())].into());
    api.create(&PostParams::default(), &labelled).await.unwrap();

    let merged =
        api.patch("sep1", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"a": null, "c": "3"}}}))).await.unwrap();
    let labels = merged.metadata.labels.unwrap();
    assert_eq!(labels.keys().collect::<Vec<_>>(), ["b", "c"]);

    let operations: json_patch::Patch = serde_json::from_value(json!([
        {"op": "replace", "path": "/spec/model", "value": "7961"},
        {"op": "add", "path": "/spec/directoryNumbers/-", "value": "2000"},
    ]))
    .unwrap();
    let patched = api.patch("sep1", &PatchParams::default(), &Patch::<()>::Json(operations)).await.unwrap();
    assert_eq!(patched.data["spec"]["model"], "7961");
    assert_eq!(patched.data["spec"]["directoryNumbers"], json!(["1000", "2000"]));

    let failing: json_patch::Patch = serde_json::from_value(json!([{"op": "test", "path": "/spec/model", "value": "x"}])).unwrap();
    assert_eq!(api_code(api.patch("sep1", &PatchParams::default(), &Patch::<()>::Json(failing)).await), 422);

    let strategic = api.patch("sep1", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"model": "x"}}))).await;
    assert_eq!(api_code(strategic), 415, "strategic merge patch is refused for custom resources");

    let deployments: Api<Deployment> = Api::default_namespaced(server.client());
    let deployment: Deployment = serde_json::from_value(json!({"metadata": {"name": "tftp"}, "spec": {
        "selector": {"matchLabels": {"app": "tftp"}},
        "template": {"spec": {"containers": [{"name": "server", "image": "tftp:1"}, {"name": "proxy", "image": "proxy:1"}]}},
    }}))
    .unwrap();
    deployments.create(&PostParams::default(), &deployment).await.unwrap();
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "proxy", "image": "proxy:2"}]}}}});
    let after = deployments.patch("tftp", &PatchParams::default(), &Patch::Strategic(patch)).await.unwrap();
    let images: Vec<_> = after.spec.template.spec.unwrap().containers.into_iter().map(|container| container.image.unwrap()).collect();
    assert_eq!(images, ["tftp:1", "proxy:2"], "strategic merge merges containers by name");
}
