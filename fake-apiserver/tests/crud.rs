//! Create, read, update and delete through kube's client: resourceVersion, generation, the status
//! subresource, conflicts, selectors, finalizers and garbage collection.

mod common;

use common::{api_code, api_reason, phone, phones};
use fake_apiserver::{FakeApiServer, Verb};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn config_map(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "data": {"key": "value"}})).unwrap()
}

#[tokio::test]
async fn config_map_round_trip() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());

    let created = api.create(&PostParams::default(), &config_map("settings", json!({}))).await.unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    assert_eq!(uid.len(), 36);
    assert_eq!(created.metadata.namespace.as_deref(), Some("default"));
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    let first_version: u64 = created.metadata.resource_version.clone().unwrap().parse().unwrap();

    let fetched = api.get("settings").await.unwrap();
    assert_eq!(fetched.data.as_ref().unwrap()["key"], "value");

    let mut changed = fetched.clone();
    changed.data.as_mut().unwrap().insert("key".into(), "other".into());
    let replaced = api.replace("settings", &PostParams::default(), &changed).await.unwrap();
    let second_version: u64 = replaced.metadata.resource_version.clone().unwrap().parse().unwrap();
    assert!(second_version > first_version, "{second_version} must follow {first_version}");
    assert_eq!(replaced.metadata.uid.as_deref(), Some(uid.as_str()));

    let listed = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert!(listed.metadata.resource_version.unwrap().parse::<u64>().unwrap() >= second_version);

    let deleted = api.delete("settings", &DeleteParams::default()).await.unwrap();
    assert!(deleted.is_right(), "an object without finalizers is gone at once");
    assert_eq!(api_code(api.get("settings").await), 404);
    assert!(server.get("v1", "ConfigMap", Some("default"), "settings").is_none());
}

#[tokio::test]
async fn phone_round_trip_as_dynamic_object() {
    let server = FakeApiServer::start().await;
    let api = phones(server.client(), "voice");
    let created = api.create(&PostParams::default(), &phone("sep001122334455", "7941")).await.unwrap();
    assert_eq!(created.metadata.namespace.as_deref(), Some("voice"));
    let fetched = api.get("sep001122334455").await.unwrap();
    assert_eq!(fetched.data["spec"]["model"], "7941");
    assert_eq!(server.list("callguard.io/v1alpha1", "Phone", Some("voice")).len(), 1);
    assert_eq!(server.list("callguard.io/v1alpha1", "Phone", Some("other")).len(), 0);
    api.delete("sep001122334455", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_code(api.get("sep001122334455").await), 404);
}

#[tokio::test]
async fn create_of_an_existing_name_is_409_already_exists() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    api.create(&PostParams::default(), &config_map("twice", json!({}))).await.unwrap();
    let second = api.create(&PostParams::default(), &config_map("twice", json!({}))).await;
    assert_eq!(api_reason(second), "AlreadyExists");
}

#[tokio::test]
async fn generate_name_gives_distinct_names() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    let template: ConfigMap = serde_json::from_value(json!({"metadata": {"generateName": "cm-"}})).unwrap();
    let first = api.create(&PostParams::default(), &template).await.unwrap().metadata.name.unwrap();
    let second = api.create(&PostParams::default(), &template).await.unwrap().metadata.name.unwrap();
    assert!(first.starts_with("cm-") && first.len() == 8, "{first}");
    assert_ne!(first, second);
    let nameless: ConfigMap = serde_json::from_value(json!({"metadata": {}})).unwrap();
    assert_eq!(api_code(api.create(&PostParams::default(), &nameless).await), 422);
}

#[tokio::test]
async fn update_with_a_stale_resource_version_is_409_conflict() {
    let server = FakeApiServer::start().await;
    let api = phones(server.client(), "default");
    let created = api.create(&PostParams::default(), &phone("sep1", "7941")).await.unwrap();
    let mut first = created.clone();
    first.data["spec"]["model"] = json!("7961");
    api.replace("sep1", &PostParams::default(), &first).await.unwrap();
    let mut stale = created.clone();
    stale.data["spec"]["model"] = json!("7960");
    assert_eq!(api_reason(api.replace("sep1", &PostParams::default(), &stale).await), "Conflict");
    // A custom resource cannot be replaced without a resourceVersion.
    let mut unconditional = created;
    unconditional.metadata.resource_version = None;
    assert_eq!(api_code(api.replace("sep1", &PostParams::default(), &unconditional).await), 422);
    assert_eq!(api.get("sep1").await.unwrap().data["spec"]["model"], "7961");
}

#[tokio::test]
async fn generation_counts_spec_changes_only() {
    let server = FakeApiServer::start().await;
    let api = phones(server.client(), "default");
    api.create(&PostParams::default(), &phone("sep1", "7941")).await.unwrap();
    let params = PatchParams::default();

    let labelled = api.patch("sep1", &params, &Patch::Merge(json!({"metadata": {"labels": {"site": "a"}}}))).await.unwrap();
    assert_eq!(labelled.metadata.generation, Some(1), "a metadata change keeps the generation");

    let status = api.patch_status("sep1", &params, &Patch::Merge(json!({"status": {"lscState": "Installed"}}))).await.unwrap();
    assert_eq!(status.metadata.generation, Some(1), "a status change keeps the generation");

    let spec = api.patch("sep1", &params, &Patch::Merge(json!({"spec": {"model": "7961"}}))).await.unwrap();
    assert_eq!(spec.metadata.generation, Some(2));

    let version = spec.metadata.resource_version.clone();
    let unchanged = api.patch("sep1", &params, &Patch::Merge(json!({"spec": {"model": "7961"}}))).await.unwrap();
    assert_eq!(unchanged.metadata.resource_version, version, "a write that changes nothing is not stored");
    assert_eq!(unchanged.metadata.generation, Some(2));
}

#[tokio::test]
async fn status_subresource_is_isolated() {
    let server = FakeApiServer::start().await;
    let api = phones(server.client(), "default");
    let mut with_status = phone("sep1", "7941");
    with_status.data["status"] = json!({"lscState": "Pending"});
    let created = api.create(&PostParams::default(), &with_status).await.unwrap();
    assert!(created.data.get("status").is_none(), "create ignores status when the status subresource exists");

    let mut main = created.clone();
    main.data["status"] = json!({"lscState": "Installed"});
    main.data["spec"]["model"] = json!("7961");
    let replaced = api.replace("sep1", &PostParams::default(), &main).await.unwrap();
    assert!(replaced.data.get("status").is_none(), "PUT on the main resource ignores status");
    assert_eq!(replaced.data["spec"]["model"], "7961");

    let mut status_write = replaced.clone();
    status_write.data["status"] = json!({"lscState": "Installed"});
    status_write.data["spec"]["model"] = json!("7960");
    let after = api.replace_status("sep1", &PostParams::default(), &status_write).await.unwrap();
    assert_eq!(after.data["status"]["lscState"], "Installed");
    assert_eq!(after.data["spec"]["model"], "7961", "PUT on /status ignores spec");

    let merged = api.patch("sep1", &PatchParams::default(), &Patch::Merge(json!({"status": {"lscState": "Failed"}}))).await.unwrap();
    assert_eq!(merged.data["status"]["lscState"], "Installed", "a patch of the main resource ignores status");
}

#[tokio::test]
async fn label_and_field_selectors_filter_lists() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    for (name, labels) in [("a", json!({"tier": "edge", "site": "x"})), ("b", json!({"tier": "core"})), ("c", json!({}))] {
        api.create(&PostParams::default(), &config_map(name, labels)).await.unwrap();
    }
    let other: Api<ConfigMap> = Api::namespaced(server.client(), "other");
    other.create(&PostParams::default(), &config_map("d", json!({"tier": "edge"}))).await.unwrap();

    let names =
        |list: kube::core::ObjectList<ConfigMap>| list.items.into_iter().map(|item| item.metadata.name.unwrap()).collect::<Vec<_>>();
    assert_eq!(names(api.list(&ListParams::default().labels("tier=edge")).await.unwrap()), ["a"]);
    assert_eq!(names(api.list(&ListParams::default().labels("tier in (edge,core)")).await.unwrap()), ["a", "b"]);
    assert_eq!(names(api.list(&ListParams::default().labels("site")).await.unwrap()), ["a"]);
    assert_eq!(names(api.list(&ListParams::default().labels("!tier")).await.unwrap()), ["c"]);
    assert_eq!(names(api.list(&ListParams::default().fields("metadata.name=b")).await.unwrap()), ["b"]);

    let everywhere: Api<ConfigMap> = Api::all(server.client());
    assert_eq!(names(everywhere.list(&ListParams::default().labels("tier=edge")).await.unwrap()), ["a", "d"]);
    assert_eq!(names(everywhere.list(&ListParams::default().fields("metadata.namespace=other")).await.unwrap()), ["d"]);

    let first_page = everywhere.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first_page.items.len(), 2);
    let token = first_page.metadata.continue_.clone().expect("a continue token for the rest");
    let second_page = everywhere.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap();
    assert_eq!(names(second_page.clone()), ["c", "d"]);
    assert!(second_page.metadata.continue_.is_none());
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let server = FakeApiServer::start().await;
    let api = phones(server.client(), "default");
    let mut held = phone("sep1", "7941");
    held.metadata.finalizers = Some(vec!["callguard.io/cleanup".into()]);
    api.create(&PostParams::default(), &held).await.unwrap();

    let pending = api.delete("sep1", &DeleteParams::default()).await.unwrap();
    let pending = pending.left().expect("a finalized object is returned, not a Status");
    assert!(pending.metadata.deletion_timestamp.is_some());
    let still_there = api.get("sep1").await.unwrap();
    assert!(still_there.metadata.deletion_timestamp.is_some());

    let adding = api
        .patch("sep1", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": ["callguard.io/cleanup", "other"]}})))
        .await;
    assert_eq!(api_code(adding), 422, "no new finalizers on an object being deleted");

    api.patch("sep1", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.unwrap();
    assert_eq!(api_code(api.get("sep1").await), 404);
}

#[tokio::test]
async fn owner_removal_cascades_to_dependents() {
    let server = FakeApiServer::start().await;
    let client = server.client();
    let owners = phones(client.clone(), "default");
    let owner = owners.create(&PostParams::default(), &phone("sep1", "7941")).await.unwrap();
    let other_owner = owners.create(&PostParams::default(), &phone("sep2", "7941")).await.unwrap();
    let reference = |object: &kube::api::DynamicObject| json!({"apiVersion": "callguard.io/v1alpha1", "kind": "Phone", "name": object.metadata.name, "uid": object.metadata.uid});
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let secret = |name: &str, references: serde_json::Value, finalizers: serde_json::Value| -> Secret {
        serde_json::from_value(json!({"metadata": {"name": name, "ownerReferences": references, "finalizers": finalizers}})).unwrap()
    };
    let only_owned = secrets.create(&PostParams::default(), &secret("only", json!([reference(&owner)]), json!([]))).await.unwrap();
    secrets
        .create(&PostParams::default(), &secret("shared", json!([reference(&owner), reference(&other_owner)]), json!([])))
        .await
        .unwrap();
    secrets.create(&PostParams::default(), &secret("held", json!([reference(&owner)]), json!(["keep"]))).await.unwrap();
    // A grandchild, owned by the Secret that goes away.
    let maps: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let grandchild: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "grandchild", "ownerReferences": [{
        "apiVersion": "v1", "kind": "Secret", "name": "only", "uid": only_owned.metadata.uid,
    }]}}))
    .unwrap();
    maps.create(&PostParams::default(), &grandchild).await.unwrap();

    owners.delete("sep1", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_code(secrets.get("only").await), 404);
    assert_eq!(api_code(maps.get("grandchild").await), 404, "garbage collection cascades");
    let shared = secrets.get("shared").await.unwrap();
    let remaining: Vec<_> = shared.metadata.owner_references.unwrap().into_iter().map(|reference| reference.name).collect();
    assert_eq!(remaining, ["sep2"], "a dependent with a live owner stays and loses the dangling reference");
    let held = secrets.get("held").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some(), "the dependent's finalizers are respected");

    let orphan = secrets.create(&PostParams::default(), &secret("orphan", json!([reference(&other_owner)]), json!([]))).await.unwrap();
    assert!(orphan.metadata.owner_references.is_some());
    owners
        .delete("sep2", &DeleteParams { propagation_policy: Some(kube::api::PropagationPolicy::Orphan), ..Default::default() })
        .await
        .unwrap();
    let orphaned = secrets.get("orphan").await.unwrap();
    assert!(orphaned.metadata.owner_references.unwrap_or_default().is_empty());

    // A dependent written after its owner went (an apply in flight when the owner was deleted) is
    // collected too, whether it was created or updated.
    secrets.create(&PostParams::default(), &secret("late", json!([reference(&owner)]), json!([]))).await.unwrap();
    assert_eq!(api_code(secrets.get("late").await), 404, "created with only a deleted owner: collected");
    let adopted = secrets
        .patch("orphan", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"ownerReferences": [reference(&owner)]}})))
        .await
        .unwrap();
    assert!(adopted.metadata.owner_references.is_some());
    assert_eq!(api_code(secrets.get("orphan").await), 404, "updated to only a deleted owner: collected");
}

#[tokio::test]
async fn lease_acquire_race_has_one_winner() {
    let server = FakeApiServer::start().await;
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "callguard-leader"}, "spec": {"holderIdentity": null}})).unwrap();
    let seeded = Api::<Lease>::default_namespaced(server.client()).create(&PostParams::default(), &lease).await.unwrap();

    let attempt = |identity: &'static str| {
        let api: Api<Lease> = Api::default_namespaced(server.client_as(identity));
        let mut claim = seeded.clone();
        claim.spec.as_mut().unwrap().holder_identity = Some(identity.to_string());
        async move { api.replace("callguard-leader", &PostParams::default(), &claim).await }
    };
    let (first, second) = tokio::join!(attempt("operator-a"), attempt("operator-b"));
    let outcomes = [first.is_ok(), second.is_ok()];
    assert_eq!(outcomes.iter().filter(|won| **won).count(), 1, "exactly one replace wins: {outcomes:?}");
    let loser = if first.is_ok() { second } else { first };
    assert_eq!(api_code(loser), 409);

    let holder =
        server.get("coordination.k8s.io/v1", "Lease", Some("default"), "callguard-leader").unwrap()["spec"]["holderIdentity"].clone();
    let writes = server.writes();
    let winner = writes.iter().find(|write| write.verb == Verb::Update && write.status == 200).unwrap();
    assert_eq!(Some(winner.identity.clone().unwrap()), holder.as_str().map(str::to_string));
    assert_eq!(writes.iter().filter(|write| write.status == 409).count(), 1);
    assert_eq!(server.request_counts()[&Verb::Update], 2);
}

#[tokio::test]
async fn discovery_lists_the_served_resources() {
    let server = FakeApiServer::start().await;
    let discovery = kube::Discovery::new(server.client()).run().await.unwrap();
    let (phone, capabilities) = discovery
        .groups()
        .find(|group| group.name() == "callguard.io")
        .and_then(|group| group.recommended_resources().into_iter().find(|(resource, _)| resource.kind == "Phone"))
        .expect("the Phone kind is discovered");
    assert_eq!(phone.plural, "phones");
    assert!(capabilities.subresources.iter().any(|(resource, _)| resource.plural == "phones/status" || resource.plural == "status"));
    assert!(discovery.groups().any(|group| group.name() == "coordination.k8s.io"));
    let version = server.client().apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");
}

#[tokio::test]
async fn kubeconfig_carries_url_namespace_and_identity() {
    use k8s_openapi::api::core::v1::Namespace;
    let server = FakeApiServer::start().await;
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&server.kubeconfig("operator-b")).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await.unwrap();
    assert_eq!(config.default_namespace, "default");
    let client = kube::Client::try_from(config).unwrap();
    // Namespaces are cluster-scoped.
    let namespaces: Api<Namespace> = Api::all(client);
    let created =
        namespaces.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "voice"}})).unwrap()).await.unwrap();
    assert!(created.metadata.namespace.is_none());
    assert!(server.get("v1", "Namespace", None, "voice").is_some());
    let write = server.writes().pop().unwrap();
    assert_eq!(
        (write.verb, write.identity.as_deref(), write.resource.as_str(), write.status),
        (Verb::Create, Some("operator-b"), "namespaces", 201)
    );
    assert_eq!(write.name.as_deref(), Some("voice"));
}

#[tokio::test]
async fn a_workloads_selector_is_immutable_and_reads_are_recorded() {
    use k8s_openapi::api::apps::v1::Deployment;
    let server = FakeApiServer::start().await;
    let api: Api<Deployment> = Api::default_namespaced(server.client_as("reader"));
    let deployment = |app: &str| -> Deployment {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": app}}, "template": {"metadata": {"labels": {"app": app}}, "spec": {"containers": []}}}
        }))
        .unwrap()
    };
    api.create(&PostParams::default(), &deployment("a")).await.unwrap();
    let refused = api.patch("web", &PatchParams::apply("test").force(), &Patch::Apply(&deployment("b"))).await;
    assert_eq!(api_code(refused), 422, "spec.selector is immutable (apps/v1)");
    assert_eq!(api.get("web").await.unwrap().spec.selector.match_labels.unwrap()["app"], "a");
    api.list(&ListParams::default().labels("app=a")).await.unwrap();
    let reads = server.reads();
    let list = reads.iter().find(|r| r.verb == Verb::List).expect("the list is recorded");
    assert_eq!((list.identity.as_deref(), list.label_selector.as_deref()), (Some("reader"), Some("app=a")));
    assert!(reads.iter().any(|r| r.verb == Verb::Get && r.name.as_deref() == Some("web")));
}

/// A custom resource is held to its CRD: a Phone of a model the schema does not list is refused
/// 422 with a cause on its field, an H.323 gateway that breaks the CRD's CEL rule is refused with the
/// rule's message, and a patch that brings a fault is refused while the stored object stays.
#[tokio::test]
async fn the_crd_schema_and_its_cel_rules_refuse_what_a_real_api_server_refuses() {
    let server = FakeApiServer::start().await;
    let api = phones(server.client(), "default");
    let refused = api.create(&PostParams::default(), &phone("p", "8845")).await;
    match refused {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
            let causes = status.details.unwrap().causes;
            assert_eq!(causes.iter().map(|c| c.field.as_str()).collect::<Vec<_>>(), ["spec.model"], "{causes:?}");
            assert!(causes[0].message.starts_with("Unsupported value: \"8845\""), "{causes:?}");
        }
        other => panic!("the model is refused: {other:?}"),
    }
    api.create(&PostParams::default(), &phone("p", "7941")).await.unwrap();
    let bad_mac = api.patch("p", &PatchParams::default(), &Patch::Merge(json!({"spec": {"macAddress": "00:11:22:33:44:55"}}))).await;
    assert_eq!(api_code(bad_mac), 422);
    assert_eq!(server.get("callguard.io/v1alpha1", "Phone", Some("default"), "p").unwrap()["spec"]["macAddress"], "001122334455");

    let gateways: Api<kube::api::DynamicObject> = Api::default_namespaced_with(
        server.client(),
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("callguard.io", "v1alpha1", "H323Gateway"),
            "h323gateways",
        ),
    );
    let gateway = |fast_start: bool| -> kube::api::DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "callguard.io/v1alpha1", "kind": "H323Gateway", "metadata": {"name": "pstn"},
            "spec": {"kind": "H323Gateway", "address": "h323.example", "srtpAllowed": true, "enableOutboundFastStart": fast_start},
        }))
        .unwrap()
    };
    match gateways.create(&PostParams::default(), &gateway(true)).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422);
            assert!(status.message.contains("srtpAllowed and enableOutboundFastStart cannot both be true"), "{}", status.message);
        }
        other => panic!("the CEL rule refuses it: {other:?}"),
    }
    gateways.create(&PostParams::default(), &gateway(false)).await.unwrap();
}

/// Injected faults: a lost answer is a 504 for a write that was done; a conflict or a 500 is
/// answered before anything is done; only the named identity meets them; and they stop on request.
#[tokio::test]
async fn injected_faults_reach_only_their_identity_and_a_lost_answer_hides_a_done_write() {
    let server = FakeApiServer::start().await;
    // kube's own retry of a 504 would hide the first answer: this client asks once.
    let mut config = server.config(Some("operator"));
    config.default_retry = false;
    let faulty = phones(kube::Client::try_from(config).unwrap(), "default");
    let other = phones(server.client_as("user"), "default");
    let only = |fault: &str| {
        let mut faults = fake_apiserver::Faults { identity: Some("operator".into()), seed: 7, ..Default::default() };
        match fault {
            "lost_answer" => faults.lost_answer = 1.0,
            "conflict" => faults.conflict = 1.0,
            _ => faults.internal_error = 1.0,
        }
        Some(faults)
    };
    server.inject_faults(only("lost_answer"));
    assert_eq!(api_code(faulty.create(&PostParams::default(), &phone("a", "7941")).await), 504);
    assert!(server.get("callguard.io/v1alpha1", "Phone", Some("default"), "a").is_some(), "done, though unanswered");
    other.create(&PostParams::default(), &phone("b", "7941")).await.expect("another identity meets no fault");

    server.inject_faults(only("conflict"));
    assert_eq!(api_code(faulty.create(&PostParams::default(), &phone("c", "7941")).await), 409);
    assert!(server.get("callguard.io/v1alpha1", "Phone", Some("default"), "c").is_none(), "refused before anything was done");
    server.inject_faults(only("internal_error"));
    assert_eq!(api_code(faulty.get("a").await), 500);

    server.inject_faults(None);
    faulty.get("a").await.expect("no fault once they stop");
    assert_eq!(server.injected_faults(), [("conflict", 1), ("internal_error", 1), ("lost_answer", 1)].into_iter().collect());
}
