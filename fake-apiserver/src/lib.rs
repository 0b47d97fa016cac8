//! An in-process Kubernetes API server for tests (docs/architecture.md §7): plain HTTP on
//! 127.0.0.1, the objects in memory, and the documented semantics the operator's controllers rely on —
//! resourceVersion and generation, list and watch with selectors and bookmarks, 409 conflicts, the
//! status subresource, merge / JSON / strategic merge patches, server-side apply with field managers,
//! finalizers and owner-reference garbage collection; and, on request, faults (`Faults`: 500s, 409s,
//! lost answers, expired and dropped watches) drawn from a seeded generator.
//!
//! What it approximates or leaves out (each documented where it is implemented):
//! - no real authentication: the bearer token is the identity, recorded with each write. Requests are
//!   unrestricted unless their identity is bound to a ServiceAccount
//!   (`FakeApiServer::authenticate_as_service_account`); those are authorized by RBAC against the
//!   Roles, ClusterRoles, RoleBindings and ClusterRoleBindings the server holds at that moment: verbs,
//!   API groups, resources and `plural/subresource`, `*` (and `*/subresource`), `resourceNames` (a list or
//!   watch is named by a `metadata.name` term of its field selector; a create or deletecollection never
//!   is, except the create check of an apply that creates, which carries the name), RoleBindings
//!   granting only in their namespace, and User / Group / ServiceAccount subjects (the groups
//!   `system:serviceaccounts`, `system:serviceaccounts:<namespace>`, `system:authenticated`). A refusal
//!   is a 403 `Forbidden` with the API server's message, and a refused write is recorded but not
//!   applied. Not modelled: aggregated ClusterRoles (`aggregationRule`), the escalate and bind checks on
//!   writes of RBAC objects, impersonation, non-resource URLs (discovery and `/version` are open to
//!   all), the default ClusterRoles and bindings of a real cluster, other authorizers (Node, webhook);
//! - a custom resource's structural schema and CEL rules are checked on every create and update
//!   (`schema`): no pruning of unknown fields, no `format`, no defaulting; objects a test seeds with
//!   `FakeApiServer::insert` are stored unchecked, as a store could hold them; no admission webhooks;
//!   no `dryRun`;
//! - paged lists are not snapshots: later pages show the current state (the list resourceVersion is the
//!   first page's, so a watch from it still sees every later change); `resourceVersionMatch=Exact` is
//!   served only for the current resourceVersion (else 410);
//! - server-side apply: only `Apply` operations take field ownership (PUT and other patches leave
//!   `managedFields` alone); list types come from the callguard CRDs' schemas, `ownerReferences` (by uid)
//!   and `finalizers` (set), and for built-in kinds from the usual merge keys (containers, env, volumes,
//!   ports, conditions…); other lists are atomic;
//! - strategic merge patch merges lists by those same keys and honours only `$patch: delete`;
//! - garbage collection runs inside the deleting request (or the write that leaves a dependent with no
//!   live owner); `Foreground` is treated as `Background`;
//!   deleting a Namespace does not delete its contents;
//! - the core and `events.k8s.io` Events are separate resources here;
//! - no controller runs pods: a Deployment's or StatefulSet's status is written with the object, every
//!   desired replica available, unless a test sets how many (`FakeApiServer::set_available_replicas`).
//!
//! ```no_run
//! # async fn example() {
//! let server = fake_apiserver::FakeApiServer::start().await;
//! let client = server.client_as("operator-a");
//! // … run controllers against `client`, then inspect `server.get(..)`, `server.writes()` …
//! # }
//! ```

mod apply;
mod faults;
mod fields;
mod gc;
mod http;
mod patch;
mod rbac;
mod recorder;
mod resources;
mod schema;
mod selectors;
mod status;
mod store;
mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

pub use crate::faults::Faults;
pub use crate::recorder::{ReadRecord, Verb, WriteRecord};
pub use crate::resources::{ListType, ResourceType};
pub use crate::status::{ApiError, Reason};

use crate::http::Shared;
use crate::store::Store;

/// Tuning of a server.
#[derive(Clone, Debug)]
pub struct Options {
    /// Changes kept per resource for watches that resume from a resourceVersion; an older one gets
    /// 410 Expired.
    pub history_limit: usize,
    /// How often a watch with `allowWatchBookmarks=true` receives a BOOKMARK.
    pub bookmark_interval: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options { history_limit: 50_000, bookmark_interval: Duration::from_secs(5) }
    }
}

/// A running server. Dropping it stops it and ends its open watches.
pub struct FakeApiServer {
    address: SocketAddr,
    shared: Arc<Shared>,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl FakeApiServer {
    /// Starts a server with the default options on a free port of 127.0.0.1.
    ///
    /// # Panics
    /// When no port on 127.0.0.1 can be bound (a broken test machine).
    pub async fn start() -> FakeApiServer {
        FakeApiServer::start_with(Options::default()).await
    }

    /// Starts a server with `options`.
    ///
    /// # Panics
    /// When no port on 127.0.0.1 can be bound (a broken test machine).
    pub async fn start_with(options: Options) -> FakeApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0 for the fake API server");
        let address = listener.local_addr().expect("the bound listener has an address");
        let (shutdown, shutdown_signal) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(options.history_limit)),
            recorder: Mutex::default(),
            service_accounts: Mutex::default(),
            bookmark_interval: options.bookmark_interval,
            shutdown: shutdown_signal.clone(),
            faults: Mutex::default(),
        });
        let router = axum::Router::new().fallback(http::handle).with_state(shared.clone());
        let mut signal = shutdown_signal;
        let task = tokio::spawn(async move {
            let server = axum::serve(listener, router).with_graceful_shutdown(async move {
                // Ends on the signal or when the server handle is gone.
                let _ = signal.wait_for(|stopped| *stopped).await;
            });
            if let Err(error) = server.await {
                eprintln!("fake API server stopped: {error}");
            }
        });
        FakeApiServer { address, shared, shutdown, task: Some(task) }
    }

    /// Injects `faults` from now on (see [`Faults`]); `None` stops injecting.
    pub fn inject_faults(&self, faults: Option<Faults>) {
        self.shared.faults().set(faults);
    }

    /// How many faults of each kind were injected so far.
    pub fn injected_faults(&self) -> BTreeMap<&'static str, u64> {
        self.shared.faults().injected.clone()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A client of this server with default namespace `default` and no identity.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config(None)).expect("a plain-HTTP kube client can always be built")
    }

    /// A client that sends `Authorization: Bearer <identity>`; writes are recorded with that identity.
    ///
    /// # Panics
    /// When `identity` cannot be an HTTP header value (control characters).
    pub fn client_as(&self, identity: &str) -> kube::Client {
        kube::Client::try_from(self.config(Some(identity))).expect("a plain-HTTP kube client can always be built")
    }

    /// The kube configuration `client_as` uses.
    pub fn config(&self, identity: Option<&str>) -> kube::Config {
        let mut config = kube::Config::new(self.url().parse().expect("the server URL is a valid URI"));
        config.default_namespace = "default".into();
        if let Some(identity) = identity {
            let value = ::http::HeaderValue::from_str(&format!("Bearer {identity}")).expect("the identity is a valid header value");
            config.headers.push((::http::header::AUTHORIZATION, value));
        }
        config
    }

    /// A kubeconfig file's content for another process (set `KUBECONFIG` to its path).
    pub fn kubeconfig(&self, identity: &str) -> String {
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake-apiserver", "cluster": {"server": self.url()}}],
            "users": [{"name": identity, "user": {"token": identity}}],
            "contexts": [{"name": "fake-apiserver", "context": {"cluster": "fake-apiserver", "user": identity, "namespace": "default"}}],
            "current-context": "fake-apiserver",
        });
        serde_yaml::to_string(&config).unwrap_or_default()
    }

    /// From now on, requests with `Authorization: Bearer <identity>` (`client_as(identity)`,
    /// `kubeconfig(identity)`) are made by the ServiceAccount `name` in `namespace` (the user
    /// `system:serviceaccount:<namespace>:<name>` in the groups `system:serviceaccounts`,
    /// `system:serviceaccounts:<namespace>` and `system:authenticated`), and each is authorized against
    /// the Roles, ClusterRoles, RoleBindings and ClusterRoleBindings this server holds at that moment (see
    /// the crate docs for what the authorizer models). A refused request gets a 403 `Forbidden` and
    /// changes nothing. Identities never bound here stay unrestricted; binding one again replaces its
    /// ServiceAccount.
    pub fn authenticate_as_service_account(&self, identity: &str, namespace: &str, name: &str) {
        let service_account = rbac::ServiceAccount { namespace: namespace.to_string(), name: name.to_string() };
        self.shared.service_accounts().insert(identity.to_string(), service_account);
    }

    /// Whether a request by `identity` would be authorized, decided as for an HTTP request (without
    /// sending one): `verb` is an RBAC verb (`get`, `list`, `watch`, `create`, `update`, `patch`,
    /// `delete`, `deletecollection`), `api_group` is `""` for the core group, `resource` is `plural` or
    /// `plural/subresource`, `namespace` is `None` for a cluster-scoped request (or a list across all
    /// namespaces), and `name` is the object's (for `list` and `watch`: the `metadata.name` of the field
    /// selector; for the Namespace `x`, `namespace` defaults to `x` as the API server reads
    /// `namespaces/x`). An identity not bound with `authenticate_as_service_account` can do anything.
    pub fn can(&self, identity: &str, verb: &str, api_group: &str, resource: &str, namespace: Option<&str>, name: Option<&str>) -> bool {
        let Some(subject) = self.shared.service_accounts().get(identity).cloned() else { return true };
        let attributes = rbac::Attributes::new(verb, api_group, resource, namespace, name);
        rbac::allows(&self.shared.store(), &subject, &attributes)
    }

    /// Serves another resource (or replaces the one with the same group and plural).
    pub fn register(&self, resource: ResourceType) {
        self.shared.store().registry.register(resource);
    }

    /// Serves the resource a `CustomResourceDefinition` defines, with the list types of its schema.
    pub fn register_crd(&self, crd: &Value) -> Result<(), String> {
        self.register(ResourceType::from_crd(crd)?);
        Ok(())
    }

    /// Stores `object` as a create would (new uid, resourceVersion, generation 1, an ADDED event), but
    /// keeps its `status`, so tests can seed objects as controllers would have left them.
    pub fn insert(&self, object: Value) -> Result<Value, ApiError> {
        let mut store = self.shared.store();
        let resource = resource_of(&store, &object)?;
        let namespace = object.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_string);
        store.create(&resource, namespace.as_deref(), object, true).map(|created| (*created).clone())
    }

    /// Makes the simulated controller of the Deployment or StatefulSet `kind` `namespace/name` report
    /// `available` replicas (`None`: all of them, the default), as when pods crash or a node goes;
    /// the workload's status changes at once, with a watch event.
    pub fn set_available_replicas(&self, kind: &str, namespace: &str, name: &str, available: Option<i64>) {
        let mut store = self.shared.store();
        let key = (kind.to_string(), namespace.to_string(), name.to_string());
        match available {
            Some(count) => store.available_replicas.insert(key, count),
            None => store.available_replicas.remove(&key),
        };
        let Some(resource) = store.registry.by_kind("apps/v1", kind).cloned() else { return };
        let object_key = (namespace.to_string(), name.to_string());
        if let Some(live) = store.object(&resource, &object_key) {
            let object = (*live).clone();
            store.commit(&resource, object_key, object, watch::EventType::Modified);
        }
    }

    /// The object, if present.
    pub fn get(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let store = self.shared.store();
        let resource = store.registry.by_kind(api_version, kind)?.clone();
        store.object(&resource, &(namespace.unwrap_or_default().to_string(), name.to_string())).map(|object| (*object).clone())
    }

    /// The objects of a kind, in one namespace or (with `None`) in all.
    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        let store = self.shared.store();
        let Some(resource) = store.registry.by_kind(api_version, kind).cloned() else { return Vec::new() };
        let selection = selectors::Selection { namespace: namespace.map(str::to_string), ..Default::default() };
        match store.list(&resource, &selection, None, None) {
            Ok(page) => page.items.iter().map(|object| (**object).clone()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// How many objects of a kind `matching` holds, without copying them (a benchmark polls this).
    pub fn count(&self, api_version: &str, kind: &str, namespace: Option<&str>, matching: impl Fn(&Value) -> bool) -> usize {
        let store = self.shared.store();
        let Some(resource) = store.registry.by_kind(api_version, kind).cloned() else { return 0 };
        let selection = selectors::Selection { namespace: namespace.map(str::to_string), ..Default::default() };
        store.list(&resource, &selection, None, None).map_or(0, |page| page.items.iter().filter(|object| matching(object)).count())
    }

    /// The newest resourceVersion handed out.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().revision
    }

    /// Every write request so far, in arrival order.
    pub fn writes(&self) -> Vec<WriteRecord> {
        self.shared.recorder().writes.clone()
    }

    /// How many writes so far are `matching`, without copying them (a benchmark polls this).
    pub fn count_writes(&self, matching: impl Fn(&WriteRecord) -> bool) -> usize {
        self.shared.recorder().writes.iter().filter(|write| matching(write)).count()
    }

    /// Every read request (get, list, watch) so far, in arrival order.
    pub fn reads(&self) -> Vec<ReadRecord> {
        self.shared.recorder().reads.clone()
    }

    /// How many requests of each verb arrived.
    pub fn request_counts(&self) -> BTreeMap<Verb, u64> {
        self.shared.recorder().requests.clone()
    }

    /// Stops serving: open watches end, the listener closes.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            // Connections that do not close within a second are cut.
            if tokio::time::timeout(Duration::from_secs(1), task).await.is_err() {
                eprintln!("fake API server: connections still open after shutdown");
            }
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn resource_of(store: &Store, object: &Value) -> Result<ResourceType, ApiError> {
    let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
    store
        .registry
        .by_kind(api_version, kind)
        .cloned()
        .ok_or_else(|| ApiError::bad_request(format!("no resource is registered for apiVersion {api_version:?} kind {kind:?}")))
}
