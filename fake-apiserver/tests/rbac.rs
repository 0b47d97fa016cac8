//! RBAC authorization of identities bound to a ServiceAccount, through kube's typed `Api`: resourceNames
//! (and list / watch by a `metadata.name` field selector), the namespace of a RoleBinding, cluster-wide
//! ClusterRoleBindings, refused writes, wildcards, subjects, discovery, and unbound identities.

mod common;

use std::fmt::Debug;
use std::time::Duration;

use common::{api_code, phone, phones};
use fake_apiserver::{FakeApiServer, Verb};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams, WatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

/// The bearer token the data-plane pod's client sends.
const TOKEN: &str = "lab-tftp-token";
/// The user the API server sees for the ServiceAccount voice/lab-tftp.
const USER: &str = "system:serviceaccount:voice:lab-tftp";

/// A server where `TOKEN` authenticates as the ServiceAccount voice/lab-tftp, and a client that is not
/// restricted (it stands for the operator, which writes the RBAC objects).
async fn server() -> (FakeApiServer, kube::Client) {
    let server = FakeApiServer::start().await;
    server.authenticate_as_service_account(TOKEN, "voice", "lab-tftp");
    let admin = server.client_as("operator");
    (server, admin)
}

fn typed<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("the fixture deserializes")
}

fn the_service_account() -> Value {
    json!({"kind": "ServiceAccount", "name": "lab-tftp", "namespace": "voice"})
}

async fn create_role(admin: &kube::Client, namespace: &str, name: &str, rules: Value) {
    let role: Role = typed(json!({"metadata": {"name": name}, "rules": rules}));
    Api::<Role>::namespaced(admin.clone(), namespace).create(&PostParams::default(), &role).await.unwrap();
}

async fn create_cluster_role(admin: &kube::Client, name: &str, rules: Value) {
    let role: ClusterRole = typed(json!({"metadata": {"name": name}, "rules": rules}));
    Api::<ClusterRole>::all(admin.clone()).create(&PostParams::default(), &role).await.unwrap();
}

/// A RoleBinding in `namespace` of the Role or ClusterRole `role` (`kind/name`) to `subjects`.
async fn create_role_binding(admin: &kube::Client, namespace: &str, name: &str, role: &str, subjects: Value) {
    let (kind, role_name) = role.split_once('/').unwrap();
    let binding: RoleBinding = typed(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role_name},
        "subjects": subjects,
    }));
    Api::<RoleBinding>::namespaced(admin.clone(), namespace).create(&PostParams::default(), &binding).await.unwrap();
}

async fn create_cluster_role_binding(admin: &kube::Client, name: &str, cluster_role: &str, subjects: Value) {
    let binding: ClusterRoleBinding = typed(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role},
        "subjects": subjects,
    }));
    Api::<ClusterRoleBinding>::all(admin.clone()).create(&PostParams::default(), &binding).await.unwrap();
}

async fn create_secret(admin: &kube::Client, namespace: &str, name: &str) {
    let secret: Secret = typed(json!({"metadata": {"name": name}, "stringData": {"key": name}}));
    Api::<Secret>::namespaced(admin.clone(), namespace).create(&PostParams::default(), &secret).await.unwrap();
}

async fn create_config_map(admin: &kube::Client, namespace: &str, name: &str) {
    let config_map: ConfigMap = typed(json!({"metadata": {"name": name}, "data": {"key": "value"}}));
    Api::<ConfigMap>::namespaced(admin.clone(), namespace).create(&PostParams::default(), &config_map).await.unwrap();
}

/// The message of a 403 `Forbidden`, or a panic naming the unexpected result.
fn forbidden<T: Debug>(result: Result<T, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 && status.reason == "Forbidden" => status.message.clone(),
        other => panic!("expected 403 Forbidden, got {other:?}"),
    }
}

fn names<K: kube::Resource>(items: &[K]) -> Vec<String> {
    items.iter().map(|item| item.meta().name.clone().unwrap_or_default()).collect()
}

async fn next_item<S: futures::Stream + Unpin>(stream: &mut S) -> S::Item {
    tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("an item within 5 s").expect("the stream is open")
}

/// A Role in voice that lets the pod read only the Secret `a`, bound to its ServiceAccount.
async fn only_secret_a(admin: &kube::Client) {
    for name in ["a", "b", "lab-ca"] {
        create_secret(admin, "voice", name).await;
    }
    let rules = json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"], "resourceNames": ["a"]}]);
    create_role(admin, "voice", "lab-tftp", rules).await;
    create_role_binding(admin, "voice", "lab-tftp", "Role/lab-tftp", json!([the_service_account()])).await;
}

#[tokio::test]
async fn resource_names_let_the_service_account_get_only_the_named_secret() {
    let (server, admin) = server().await;
    only_secret_a(&admin).await;
    let secrets: Api<Secret> = Api::namespaced(server.client_as(TOKEN), "voice");

    let a = secrets.get("a").await.unwrap();
    assert_eq!(a.metadata.name.as_deref(), Some("a"));
    assert_eq!(
        forbidden(secrets.get("lab-ca").await),
        format!(r#"secrets "lab-ca" is forbidden: User "{USER}" cannot get resource "secrets" in API group "" in the namespace "voice""#)
    );
    assert_eq!(api_code(secrets.get("b").await), 403);
    // Authorization comes first: a missing object the pod may not read is a 403, not a 404.
    assert_eq!(api_code(secrets.get("missing").await), 403);

    // A list needs the name in its field selector.
    assert_eq!(
        forbidden(secrets.list(&ListParams::default()).await),
        format!(r#"secrets is forbidden: User "{USER}" cannot list resource "secrets" in API group "" in the namespace "voice""#)
    );
    let listed = secrets.list(&ListParams::default().fields("metadata.name=a")).await.unwrap();
    assert_eq!(names(&listed.items), ["a"]);
    assert_eq!(
        forbidden(secrets.list(&ListParams::default().fields("metadata.name=b")).await),
        format!(r#"secrets "b" is forbidden: User "{USER}" cannot list resource "secrets" in API group "" in the namespace "voice""#)
    );
    // Another term besides the name only narrows the list further.
    let narrowed = secrets.list(&ListParams::default().fields("metadata.name=a,metadata.namespace=voice")).await.unwrap();
    assert_eq!(names(&narrowed.items), ["a"]);
    assert_eq!(api_code(secrets.list(&ListParams::default().fields("metadata.name!=b")).await), 403);
    // Across all namespaces only ClusterRoleBindings count.
    assert_eq!(
        forbidden(Api::<Secret>::all(server.client_as(TOKEN)).list(&ListParams::default().fields("metadata.name=a")).await),
        format!(r#"secrets "a" is forbidden: User "{USER}" cannot list resource "secrets" in API group "" at the cluster scope"#)
    );

    // The pure check agrees with the HTTP answers.
    assert!(server.can(TOKEN, "get", "", "secrets", Some("voice"), Some("a")));
    assert!(!server.can(TOKEN, "get", "", "secrets", Some("voice"), Some("lab-ca")));
    assert!(!server.can(TOKEN, "list", "", "secrets", Some("voice"), None));
    assert!(server.can(TOKEN, "watch", "", "secrets", Some("voice"), Some("a")));

    // Removing the binding revokes the grant at once.
    Api::<RoleBinding>::namespaced(admin.clone(), "voice").delete("lab-tftp", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_code(secrets.get("a").await), 403);
}

#[tokio::test]
async fn a_watcher_with_a_name_field_selector_is_allowed_only_for_a_granted_name() {
    let (server, admin) = server().await;
    only_secret_a(&admin).await;
    let secrets: Api<Secret> = Api::namespaced(server.client_as(TOKEN), "voice");
    let mut granted = watcher(secrets.clone(), watcher::Config::default().fields("metadata.name=a")).applied_objects().boxed();
    let listed = next_item(&mut granted).await.unwrap();
    assert_eq!(listed.metadata.name.as_deref(), Some("a"));
    // A change after the initial list arrives through the watch, which is allowed too.
    let label = json!({"metadata": {"labels": {"rotated": "yes"}}});
    Api::<Secret>::namespaced(admin.clone(), "voice").patch("a", &PatchParams::default(), &Patch::Merge(&label)).await.unwrap();
    let changed = next_item(&mut granted).await.unwrap();
    assert_eq!(changed.metadata.labels.unwrap()["rotated"], "yes");

    let mut refused = watcher(secrets.clone(), watcher::Config::default().fields("metadata.name=b")).applied_objects().boxed();
    match next_item(&mut refused).await {
        Err(watcher::Error::InitialListFailed(kube::Error::Api(status))) => {
            assert_eq!(status.code, 403);
            assert!(status.message.starts_with(r#"secrets "b" is forbidden"#), "{}", status.message);
        }
        other => panic!("expected the initial list to be refused, got {other:?}"),
    }

    // A bare watch (no list first) is authorized the same way.
    assert!(secrets.watch(&WatchParams::default().fields("metadata.name=a").timeout(1), "0").await.is_ok());
    let message = forbidden(secrets.watch(&WatchParams::default().timeout(1), "0").await.map(|_| ()));
    assert_eq!(
        message,
        format!(r#"secrets is forbidden: User "{USER}" cannot watch resource "secrets" in API group "" in the namespace "voice""#)
    );
}

#[tokio::test]
async fn resource_names_never_allow_create_or_deletecollection() {
    let (server, admin) = server().await;
    create_secret(&admin, "voice", "c").await;
    let rules = json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "deletecollection", "get", "delete"], "resourceNames": ["c", "d"]}]);
    create_role(&admin, "voice", "named", rules).await;
    create_role_binding(&admin, "voice", "named", "Role/named", json!([the_service_account()])).await;
    let secrets: Api<Secret> = Api::namespaced(server.client_as(TOKEN), "voice");

    assert!(secrets.get("c").await.is_ok());
    let d: Secret = typed(json!({"metadata": {"name": "d"}}));
    assert_eq!(
        forbidden(secrets.create(&PostParams::default(), &d).await),
        format!(r#"secrets is forbidden: User "{USER}" cannot create resource "secrets" in API group "" in the namespace "voice""#)
    );
    let selected = ListParams::default().fields("metadata.name=c");
    assert_eq!(
        forbidden(secrets.delete_collection(&DeleteParams::default(), &selected).await),
        format!(
            r#"secrets is forbidden: User "{USER}" cannot deletecollection resource "secrets" in API group "" in the namespace "voice""#
        )
    );
    assert!(server.get("v1", "Secret", Some("voice"), "c").is_some());
    assert!(server.get("v1", "Secret", Some("voice"), "d").is_none());
    // A named delete is what the rule allows.
    secrets.delete("c", &DeleteParams::default()).await.unwrap();
    assert!(server.get("v1", "Secret", Some("voice"), "c").is_none());
    assert!(!server.can(TOKEN, "create", "", "secrets", Some("voice"), None));
    assert!(!server.can(TOKEN, "deletecollection", "", "secrets", Some("voice"), None));
}

#[tokio::test]
async fn a_role_binding_grants_only_in_its_own_namespace() {
    let (server, admin) = server().await;
    for namespace in ["x", "y"] {
        create_config_map(&admin, namespace, "settings").await;
    }
    create_cluster_role(&admin, "config-reader", json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}])).await;
    create_role_binding(&admin, "x", "reader", "ClusterRole/config-reader", json!([the_service_account()])).await;
    let client = server.client_as(TOKEN);

    let in_x: Api<ConfigMap> = Api::namespaced(client.clone(), "x");
    assert!(in_x.get("settings").await.is_ok());
    assert_eq!(names(&in_x.list(&ListParams::default()).await.unwrap().items), ["settings"]);
    let in_y: Api<ConfigMap> = Api::namespaced(client.clone(), "y");
    assert_eq!(
        forbidden(in_y.get("settings").await),
        format!(
            r#"configmaps "settings" is forbidden: User "{USER}" cannot get resource "configmaps" in API group "" in the namespace "y""#
        )
    );
    assert_eq!(
        forbidden(Api::<ConfigMap>::all(client.clone()).list(&ListParams::default()).await),
        format!(r#"configmaps is forbidden: User "{USER}" cannot list resource "configmaps" in API group "" at the cluster scope"#)
    );

    // A RoleBinding's Role is looked up in the binding's own namespace: one in y naming the Role of x
    // grants nothing.
    create_role(&admin, "x", "x-reader", json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}])).await;
    create_role_binding(&admin, "y", "x-reader", "Role/x-reader", json!([the_service_account()])).await;
    assert_eq!(api_code(in_y.get("settings").await), 403);
    create_role(&admin, "y", "x-reader", json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}])).await;
    assert!(in_y.get("settings").await.is_ok());
}

#[tokio::test]
async fn a_cluster_role_binding_grants_in_every_namespace_and_at_the_cluster_scope() {
    let (server, admin) = server().await;
    for namespace in ["x", "y"] {
        let object: Namespace = typed(json!({"metadata": {"name": namespace}}));
        Api::<Namespace>::all(admin.clone()).create(&PostParams::default(), &object).await.unwrap();
        create_config_map(&admin, namespace, "settings").await;
    }
    let rules = json!([
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]},
    ]);
    create_cluster_role(&admin, "reader", rules).await;
    create_cluster_role_binding(&admin, "reader", "reader", json!([the_service_account()])).await;
    let client = server.client_as(TOKEN);

    for namespace in ["x", "y"] {
        assert!(Api::<ConfigMap>::namespaced(client.clone(), namespace).get("settings").await.is_ok(), "{namespace}");
    }
    let everywhere = Api::<ConfigMap>::all(client.clone()).list(&ListParams::default()).await.unwrap();
    assert_eq!(everywhere.items.len(), 2);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    assert!(namespaces.get("x").await.is_ok());
    assert_eq!(
        forbidden(namespaces.list(&ListParams::default()).await),
        format!(r#"namespaces is forbidden: User "{USER}" cannot list resource "namespaces" in API group "" at the cluster scope"#)
    );
    // Writes were not granted anywhere.
    let in_y: Api<ConfigMap> = Api::namespaced(client, "y");
    assert_eq!(api_code(in_y.delete("settings", &DeleteParams::default()).await), 403);
    assert!(server.can(TOKEN, "list", "", "configmaps", None, None));
    assert!(!server.can(TOKEN, "list", "", "secrets", None, None));
}

#[tokio::test]
async fn a_write_without_a_grant_is_refused_and_changes_nothing() {
    let (server, admin) = server().await;
    create_config_map(&admin, "voice", "settings").await;
    create_role(&admin, "voice", "reader", json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}]))
        .await;
    create_role_binding(&admin, "voice", "reader", "Role/reader", json!([the_service_account()])).await;
    let before = server.get("v1", "ConfigMap", Some("voice"), "settings").unwrap();
    let version = server.resource_version();
    let config_maps: Api<ConfigMap> = Api::namespaced(server.client_as(TOKEN), "voice");

    let fresh: ConfigMap = typed(json!({"metadata": {"name": "fresh"}, "data": {"key": "new"}}));
    assert_eq!(
        forbidden(config_maps.create(&PostParams::default(), &fresh).await),
        format!(r#"configmaps is forbidden: User "{USER}" cannot create resource "configmaps" in API group "" in the namespace "voice""#)
    );
    let mut changed = config_maps.get("settings").await.unwrap();
    changed.data.as_mut().unwrap().insert("key".into(), "changed".into());
    assert_eq!(
        forbidden(config_maps.replace("settings", &PostParams::default(), &changed).await),
        format!(
            r#"configmaps "settings" is forbidden: User "{USER}" cannot update resource "configmaps" in API group "" in the namespace "voice""#
        )
    );
    let merge = json!({"data": {"key": "patched"}});
    assert_eq!(api_code(config_maps.patch("settings", &PatchParams::default(), &Patch::Merge(&merge)).await), 403);
    let apply = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"key": "applied"}});
    assert_eq!(api_code(config_maps.patch("settings", &PatchParams::apply("pod"), &Patch::Apply(&apply)).await), 403);
    assert_eq!(api_code(config_maps.delete("settings", &DeleteParams::default()).await), 403);
    assert_eq!(api_code(config_maps.delete_collection(&DeleteParams::default(), &ListParams::default()).await), 403);

    assert_eq!(server.get("v1", "ConfigMap", Some("voice"), "settings"), Some(before));
    assert!(server.get("v1", "ConfigMap", Some("voice"), "fresh").is_none());
    assert_eq!(server.resource_version(), version, "no write was applied");
    let refused: Vec<_> = server.writes().into_iter().filter(|write| write.identity.as_deref() == Some(TOKEN)).collect();
    let verbs: Vec<Verb> = refused.iter().map(|write| write.verb).collect();
    assert_eq!(verbs, [Verb::Create, Verb::Update, Verb::Patch, Verb::Patch, Verb::Delete, Verb::DeleteCollection]);
    assert!(refused.iter().all(|write| write.status == 403 && write.resource == "configmaps"), "{refused:?}");
    assert!(refused.iter().all(|write| write.namespace.as_deref() == Some("voice")), "{refused:?}");
}

#[tokio::test]
async fn an_apply_that_creates_needs_create_as_well_as_patch() {
    let (server, admin) = server().await;
    create_config_map(&admin, "voice", "settings").await;
    create_role(&admin, "voice", "patcher", json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["patch"]}])).await;
    create_role_binding(&admin, "voice", "patcher", "Role/patcher", json!([the_service_account()])).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(server.client_as(TOKEN), "voice");
    let apply = |name: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"key": "applied"}});

    config_maps.patch("settings", &PatchParams::apply("pod"), &Patch::Apply(&apply("settings"))).await.unwrap();
    assert_eq!(
        forbidden(config_maps.patch("fresh", &PatchParams::apply("pod"), &Patch::Apply(&apply("fresh"))).await),
        format!(
            r#"configmaps "fresh" is forbidden: User "{USER}" cannot create resource "configmaps" in API group "" in the namespace "voice""#
        )
    );
    assert!(server.get("v1", "ConfigMap", Some("voice"), "fresh").is_none());
    // That create is authorized with the object's name, so resourceNames can grant it.
    create_role(
        &admin,
        "voice",
        "creator",
        json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"], "resourceNames": ["fresh"]}]),
    )
    .await;
    create_role_binding(&admin, "voice", "creator", "Role/creator", json!([the_service_account()])).await;
    config_maps.patch("fresh", &PatchParams::apply("pod"), &Patch::Apply(&apply("fresh"))).await.unwrap();
    assert!(server.get("v1", "ConfigMap", Some("voice"), "fresh").is_some());
    assert_eq!(api_code(config_maps.patch("other", &PatchParams::apply("pod"), &Patch::Apply(&apply("other"))).await), 403);
}

#[tokio::test]
async fn wildcards_in_api_groups_resources_and_verbs() {
    let (server, admin) = server().await;
    phones(admin.clone(), "voice").create(&PostParams::default(), &phone("sep1", "7941")).await.unwrap();
    create_secret(&admin, "voice", "a").await;
    // Everything in callguard.io, subresources included.
    create_cluster_role(&admin, "callguard-admin", json!([{"apiGroups": ["callguard.io"], "resources": ["*"], "verbs": ["*"]}])).await;
    create_role_binding(&admin, "voice", "callguard-admin", "ClusterRole/callguard-admin", json!([the_service_account()])).await;
    let client = server.client_as(TOKEN);
    let pod_phones = phones(client.clone(), "voice");

    pod_phones.create(&PostParams::default(), &phone("sep2", "7961")).await.unwrap();
    pod_phones.patch("sep1", &PatchParams::default(), &Patch::Merge(json!({"spec": {"model": "7961"}}))).await.unwrap();
    pod_phones.patch_status("sep1", &PatchParams::default(), &Patch::Merge(json!({"status": {"ready": true}}))).await.unwrap();
    pod_phones.delete("sep2", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_code(Api::<Secret>::namespaced(client.clone(), "voice").get("a").await), 403);
    assert!(server.can(TOKEN, "escalate", "callguard.io", "phones", Some("voice"), None), "`*` matches any verb");

    // `*` in apiGroups: the resource name in any group.
    create_role(&admin, "voice", "any-group", json!([{"apiGroups": ["*"], "resources": ["secrets"], "verbs": ["get"]}])).await;
    create_role_binding(&admin, "voice", "any-group", "Role/any-group", json!([the_service_account()])).await;
    assert!(Api::<Secret>::namespaced(client.clone(), "voice").get("a").await.is_ok());
    assert!(server.can(TOKEN, "get", "example.com", "secrets", Some("voice"), Some("a")));
    assert!(!server.can(TOKEN, "list", "", "secrets", Some("voice"), None));
}

#[tokio::test]
async fn subresources_are_their_own_resources() {
    let (server, admin) = server().await;
    phones(admin.clone(), "voice").create(&PostParams::default(), &phone("sep1", "7941")).await.unwrap();
    let rules = json!([
        {"apiGroups": ["callguard.io"], "resources": ["phones"], "verbs": ["get", "patch"]},
        {"apiGroups": ["callguard.io"], "resources": ["*/status"], "verbs": ["update"]},
    ]);
    create_role(&admin, "voice", "phone-writer", rules).await;
    create_role_binding(&admin, "voice", "phone-writer", "Role/phone-writer", json!([the_service_account()])).await;
    let pod_phones = phones(server.client_as(TOKEN), "voice");

    pod_phones.patch("sep1", &PatchParams::default(), &Patch::Merge(json!({"spec": {"model": "7961"}}))).await.unwrap();
    // `phones` does not cover `phones/status`.
    assert_eq!(
        forbidden(pod_phones.patch_status("sep1", &PatchParams::default(), &Patch::Merge(json!({"status": {"ready": true}}))).await),
        format!(
            r#"phones.callguard.io "sep1" is forbidden: User "{USER}" cannot patch resource "phones/status" in API group "callguard.io" in the namespace "voice""#
        )
    );
    // `*/status` covers the status of any resource (for the verbs of its rule).
    assert_eq!(api_code(pod_phones.get_status("sep1").await), 403, "nor does `*/status` for get");
    let mut live = pod_phones.get("sep1").await.unwrap();
    live.data["status"] = json!({"ready": true});
    pod_phones.replace_status("sep1", &PostParams::default(), &live).await.unwrap();
    assert_eq!(server.get("callguard.io/v1alpha1", "Phone", Some("voice"), "sep1").unwrap()["status"]["ready"], true);
    assert!(server.can(TOKEN, "update", "callguard.io", "phonesecurityprofiles/status", Some("voice"), Some("p")));
    assert!(!server.can(TOKEN, "update", "callguard.io", "phones", Some("voice"), Some("sep1")));
}

#[tokio::test]
async fn bindings_apply_to_the_service_account_its_user_and_its_groups() {
    let (server, admin) = server().await;
    create_cluster_role(&admin, "secret-reader", json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}])).await;
    let can_get = |namespace: &str| server.can(TOKEN, "get", "", "secrets", Some(namespace), Some("a"));

    // A ServiceAccount subject without a namespace is in the RoleBinding's namespace.
    create_role_binding(&admin, "voice", "local", "ClusterRole/secret-reader", json!([{"kind": "ServiceAccount", "name": "lab-tftp"}]))
        .await;
    assert!(can_get("voice"));
    create_role_binding(&admin, "n1", "local", "ClusterRole/secret-reader", json!([{"kind": "ServiceAccount", "name": "lab-tftp"}])).await;
    assert!(!can_get("n1"), "that is the ServiceAccount n1/lab-tftp");
    // Another ServiceAccount, or the groups of another namespace, are not this one.
    let others = json!([
        {"kind": "ServiceAccount", "name": "other", "namespace": "voice"},
        {"kind": "Group", "name": "system:serviceaccounts:n2"},
        {"kind": "User", "name": "lab-tftp"},
    ]);
    create_role_binding(&admin, "n2", "others", "ClusterRole/secret-reader", others).await;
    assert!(!can_get("n2"));
    // The user name and each of the groups.
    let cases = [
        ("n3", json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": USER})),
        ("n4", json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "system:serviceaccounts:voice"})),
        ("n5", json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "system:serviceaccounts"})),
        ("n6", json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "system:authenticated"})),
    ];
    for (namespace, subject) in cases {
        assert!(!can_get(namespace));
        create_role_binding(&admin, namespace, "grant", "ClusterRole/secret-reader", json!([subject])).await;
        assert!(can_get(namespace), "{subject}");
    }
    create_secret(&admin, "n6", "a").await;
    assert!(Api::<Secret>::namespaced(server.client_as(TOKEN), "n6").get("a").await.is_ok());
}

#[tokio::test]
async fn discovery_is_allowed_to_a_service_account_without_grants() {
    let (server, _admin) = server().await;
    let client = server.client_as(TOKEN);
    client.apiserver_version().await.unwrap();
    client.list_core_api_versions().await.unwrap();
    client.list_core_api_resources("v1").await.unwrap();
    client.list_api_groups().await.unwrap();
    client.list_api_group_resources("rbac.authorization.k8s.io/v1").await.unwrap();
    // Resources are another matter, even ones this server does not serve (authorization comes first).
    assert_eq!(api_code(Api::<Secret>::namespaced(client.clone(), "voice").list(&ListParams::default()).await), 403);
    let widgets = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("example.com", "v1", "Widget"), "widgets");
    assert_eq!(
        forbidden(Api::<DynamicObject>::namespaced_with(client, "voice", &widgets).get("w").await),
        format!(
            r#"widgets.example.com "w" is forbidden: User "{USER}" cannot get resource "widgets" in API group "example.com" in the namespace "voice""#
        )
    );
}

#[tokio::test]
async fn identities_not_bound_to_a_service_account_are_unrestricted() {
    let (server, admin) = server().await;
    only_secret_a(&admin).await;
    for client in [admin.clone(), server.client(), server.client_as("someone-else")] {
        let secrets: Api<Secret> = Api::namespaced(client, "voice");
        assert_eq!(secrets.list(&ListParams::default()).await.unwrap().items.len(), 3);
        assert!(secrets.get("lab-ca").await.is_ok());
        create_secret(&admin, "voice", "temporary").await;
        secrets.delete("temporary", &DeleteParams::default()).await.unwrap();
    }
    assert!(server.can("someone-else", "delete", "", "secrets", Some("voice"), Some("lab-ca")));
    assert!(server.writes().iter().all(|write| write.status < 400), "{:?}", server.writes());
}
