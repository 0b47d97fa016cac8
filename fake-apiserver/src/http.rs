//! The HTTP face: URL routing (API concepts: "Resource URIs"), query parameters, discovery, list and
//! watch bodies, and errors as `Status` responses.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::apply::Scope;
use crate::faults::{Fault, Injector};
use crate::patch::PatchKind;
use crate::rbac::{self, Attributes, ServiceAccount};
use crate::recorder::{ReadRecord, Recorder, Verb, WriteRecord};
use crate::resources::ResourceType;
use crate::selectors::{FieldSelector, LabelSelector, Selection};
use crate::status::{ApiError, Reason, qualified};
use crate::store::{DeleteRequest, Deleted, ObjectKey, PatchRequest, Propagation, Store};
use crate::watch::{self, Frame, WatchStart};

/// State shared by the request handlers and the library API.
pub struct Shared {
    pub store: Mutex<Store>,
    pub recorder: Mutex<Recorder>,
    /// Bearer identities that authenticate as a ServiceAccount, and so are authorized by RBAC.
    pub service_accounts: Mutex<HashMap<String, ServiceAccount>>,
    pub bookmark_interval: Duration,
    /// Flips to true on shutdown, ending open watches.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// The faults a test asked for.
    pub faults: Mutex<Injector>,
}

impl Shared {
    /// The store; a panic in another request does not make the store unusable.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn recorder(&self) -> MutexGuard<'_, Recorder> {
        self.recorder.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn faults(&self) -> MutexGuard<'_, Injector> {
        self.faults.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn service_accounts(&self) -> MutexGuard<'_, HashMap<String, ServiceAccount>> {
        self.service_accounts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What a resource URL names.
struct Target {
    resource: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    scope: Scope,
}

impl Target {
    fn key(&self) -> Result<ObjectKey, ApiError> {
        let name =
            self.name.clone().ok_or_else(|| ApiError::new(Reason::MethodNotAllowed, "this method needs an object name in the URL"))?;
        Ok((self.namespace.clone().unwrap_or_default(), name))
    }
}

/// What a URL addresses.
enum Route {
    Discovery(Value),
    Resource(Target),
}

/// Every request goes through here (one fallback handler, since Kubernetes URLs have many shapes).
pub async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let identity = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::to_string);
    // As in the API server, authorization comes before routing: a refused request to a resource this
    // server does not serve is a 403, not a 404.
    let service_account = identity.as_ref().and_then(|identity| shared.service_accounts().get(identity).cloned());
    let denial = service_account.as_ref().and_then(|subject| {
        let attributes = Attributes::of_request(&method, uri.path(), &query)?;
        (!rbac::allows(&shared.store(), subject, &attributes)).then(|| rbac::forbidden(subject, &attributes))
    });
    let route = match route(&shared, uri.path()) {
        Ok(route) => route,
        Err(error) => return error_response(denial.as_ref().unwrap_or(&error)),
    };
    let target = match route {
        Route::Discovery(document) => {
            count(&shared, Verb::Discovery);
            return json_response(StatusCode::OK, document.to_string().into_bytes());
        }
        Route::Resource(target) => target,
    };
    let metadata_only = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("as=PartialObjectMetadata"));
    let verb = match (&method, target.name.is_some()) {
        (&Method::GET, true) => Verb::Get,
        (&Method::GET, false) if query_flag(&query, "watch") => Verb::Watch,
        (&Method::GET, false) => Verb::List,
        (&Method::POST, false) => Verb::Create,
        (&Method::PUT, true) => Verb::Update,
        (&Method::PATCH, true) => Verb::Patch,
        (&Method::DELETE, true) => Verb::Delete,
        (&Method::DELETE, false) => Verb::DeleteCollection,
        _ => {
            let unsupported = ApiError::new(Reason::MethodNotAllowed, format!("{method} is not supported on {}", uri.path()));
            return error_response(denial.as_ref().unwrap_or(&unsupported));
        }
    };
    count(&shared, verb);
    if !verb.is_write() {
        shared.recorder().reads.push(ReadRecord {
            verb,
            path: uri.to_string(),
            identity: identity.clone(),
            resource: qualified(&target.resource),
            namespace: target.namespace.clone(),
            name: target.name.clone(),
            label_selector: query.get("labelSelector").cloned(),
            field_selector: query.get("fieldSelector").cloned(),
            forbidden: denial.is_some(),
        });
    }
    let resumes = query.get("resourceVersion").is_some_and(|version| !version.is_empty() && version != "0");
    let fault = match denial {
        Some(_) => None,
        None => shared.faults().draw(identity.as_deref(), verb.is_write(), verb == Verb::Watch, resumes),
    };
    if verb == Verb::Watch {
        return match denial {
            Some(denial) => error_response(&denial),
            None => watch(shared, target, &query, metadata_only, fault),
        };
    }
    let field_manager = query.get("fieldManager").cloned();
    let outcome = match (denial, verb) {
        // A refused write is recorded (with its 403) but not applied.
        (Some(denial), _) => Err(denial),
        (None, _) if fault == Some(Fault::InternalError) => Err(ApiError::new(Reason::InternalError, "injected fault: the server failed")),
        (None, _) if fault == Some(Fault::Conflict) => Err(ApiError::new(
            Reason::Conflict,
            "injected fault: Operation cannot be fulfilled: the object has been modified; please apply your changes to the latest version and try again",
        )),
        (None, Verb::Get) => get(&shared, &target, metadata_only),
        (None, Verb::List) => list(&shared, &target, &query, metadata_only),
        (None, Verb::DeleteCollection) => delete_collection(&shared, &target, &query),
        (None, _) => write(&shared, &target, verb, &query, &headers, &body, service_account.as_ref()),
    };
    let (status, body, created_name) = match outcome {
        Ok((status, body, name)) => (status, body, name),
        Err(error) => (
            StatusCode::from_u16(error.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            error.to_status().to_string().into_bytes(),
            None,
        ),
    };
    if verb.is_write() {
        let record = WriteRecord {
            verb,
            method: method.to_string(),
            path: uri.to_string(),
            identity,
            resource: qualified(&target.resource),
            namespace: target.namespace.clone(),
            name: target.name.clone().or(created_name),
            subresource: (target.scope == Scope::Status).then(|| "status".to_string()),
            status: status.as_u16(),
            field_manager,
        };
        shared.recorder().writes.push(record);
    }
    if fault == Some(Fault::LostAnswer) {
        // Done, but the client never hears it.
        return error_response(&ApiError::new(
            Reason::Timeout,
            "injected fault: the server was unable to return a response in the time allotted",
        ));
    }
    json_response(status, body)
}

/// Whether a boolean query parameter is set (`true` or `1`).
pub(crate) fn query_flag(query: &HashMap<String, String>, name: &str) -> bool {
    query.get(name).is_some_and(|value| value == "true" || value == "1")
}

fn count(shared: &Shared, verb: Verb) {
    *shared.recorder().requests.entry(verb).or_default() += 1;
}

type Outcome = Result<(StatusCode, Vec<u8>, Option<String>), ApiError>;

fn route(shared: &Shared, path: &str) -> Result<Route, ApiError> {
    let segments: Vec<&str> = path.split('/').filter(|segment| !segment.is_empty()).collect();
    let store = shared.store();
    let registry = &store.registry;
    let (group, version, rest) = match segments.as_slice() {
        ["version"] => return Ok(Route::Discovery(version_document())),
        ["api"] => return Ok(Route::Discovery(json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}))),
        ["apis"] => return Ok(Route::Discovery(group_list(registry.all()))),
        ["apis", group] => {
            let groups = group_list(registry.all());
            let found = groups["groups"].as_array().into_iter().flatten().find(|entry| entry["name"] == *group).cloned();
            return found
                .map(|mut entry| {
                    entry["kind"] = json!("APIGroup");
                    entry["apiVersion"] = json!("v1");
                    Route::Discovery(entry)
                })
                .ok_or_else(|| {
                    ApiError::new(Reason::NotFound, format!("the server could not find the requested resource (group {group})"))
                });
        }
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::new(Reason::NotFound, format!("the server could not find the requested resource ({path})"))),
    };
    if rest.is_empty() {
        let resources: Vec<Value> = registry
            .all()
            .iter()
            .filter(|resource| resource.group == group && resource.version == version)
            .flat_map(ResourceType::discovery_entries)
            .collect();
        if resources.is_empty() {
            return Err(ApiError::new(Reason::NotFound, format!("the server could not find the requested resource ({path})")));
        }
        let group_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
        return Ok(Route::Discovery(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
        ));
    }
    let lookup = |plural: &str| {
        registry
            .by_plural(group, version, plural)
            .cloned()
            .ok_or_else(|| ApiError::new(Reason::NotFound, format!("the server could not find the requested resource ({path})")))
    };
    let target = |resource: ResourceType, namespace: Option<&str>, name: Option<&str>, subresource: Option<&str>| match subresource {
        None => Ok(Target { resource, namespace: namespace.map(str::to_string), name: name.map(str::to_string), scope: Scope::Main }),
        Some("status") if resource.has_status => {
            Ok(Target { resource, namespace: namespace.map(str::to_string), name: name.map(str::to_string), scope: Scope::Status })
        }
        Some(other) => Err(ApiError::new(
            Reason::NotFound,
            format!("the server could not find the requested resource ({} subresource {other})", resource.plural),
        )),
    };
    // `namespaces/x` is the Namespace x; `namespaces/x/plural/...` is inside namespace x.
    let addressed = match rest {
        ["namespaces", namespace, plural, tail @ ..] if *plural != "status" => {
            let resource = lookup(plural)?;
            if !resource.namespaced {
                return Err(ApiError::new(Reason::NotFound, format!("{} is not namespaced ({path})", qualified(&resource))));
            }
            match tail {
                [] => target(resource, Some(namespace), None, None),
                [name] => target(resource, Some(namespace), Some(name), None),
                [name, subresource] => target(resource, Some(namespace), Some(name), Some(subresource)),
                _ => Err(ApiError::new(Reason::NotFound, format!("the server could not find the requested resource ({path})"))),
            }
        }
        [plural] => target(lookup(plural)?, None, None, None),
        [plural, name] => target(lookup(plural)?, None, Some(name), None),
        [plural, name, subresource] => target(lookup(plural)?, None, Some(name), Some(subresource)),
        _ => Err(ApiError::new(Reason::NotFound, format!("the server could not find the requested resource ({path})"))),
    }?;
    if addressed.name.is_some() && addressed.resource.namespaced && addressed.namespace.is_none() {
        return Err(ApiError::new(
            Reason::NotFound,
            format!("{} is namespaced: the URL needs namespaces/<namespace> ({path})", qualified(&addressed.resource)),
        ));
    }
    Ok(Route::Resource(addressed))
}

fn version_document() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "gitCommit": "", "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64",
    })
}

fn group_list(resources: &[ResourceType]) -> Value {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for resource in resources.iter().filter(|resource| !resource.group.is_empty()) {
        match groups.iter_mut().find(|(name, _)| *name == resource.group) {
            Some((_, versions)) if !versions.contains(&resource.version) => versions.push(resource.version.clone()),
            Some(_) => {}
            None => groups.push((resource.group.clone(), vec![resource.version.clone()])),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(name, versions)| {
            let versions: Vec<Value> =
                versions.iter().map(|version| json!({"groupVersion": format!("{name}/{version}"), "version": version})).collect();
            json!({"name": name, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn get(shared: &Shared, target: &Target, metadata_only: bool) -> Outcome {
    let object = shared.store().get(&target.resource, &target.key()?)?;
    let mut body = Vec::new();
    watch::write_object(&mut body, &object, metadata_only);
    Ok((StatusCode::OK, body, None))
}

fn selection(target: &Target, query: &HashMap<String, String>) -> Result<Selection, ApiError> {
    Ok(Selection {
        namespace: target.namespace.clone(),
        labels: LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or_default())?,
        fields: FieldSelector::parse(query.get("fieldSelector").map(String::as_str).unwrap_or_default())?,
    })
}

fn list(shared: &Shared, target: &Target, query: &HashMap<String, String>, metadata_only: bool) -> Outcome {
    let selection = selection(target, query)?;
    let limit = match query.get("limit") {
        Some(limit) => Some(limit.parse::<usize>().map_err(|_| ApiError::bad_request(format!("limit must be a number, not {limit:?}")))?)
            .filter(|limit| *limit > 0),
        None => None,
    };
    let page = {
        let store = shared.store();
        if query.get("resourceVersionMatch").map(String::as_str) == Some("Exact")
            && let Some(version) = query.get("resourceVersion")
            && version.parse::<u64>().ok() != Some(store.revision)
        {
            // Only the current state is kept, so only the current resourceVersion can be served exactly.
            return Err(ApiError::expired(version.parse().unwrap_or(0), store.revision));
        }
        store.list(&target.resource, &selection, limit, query.get("continue").map(String::as_str).filter(|token| !token.is_empty()))?
    };
    let kind = if metadata_only { "PartialObjectMetadataList".to_string() } else { format!("{}List", target.resource.kind) };
    let api_version = if metadata_only { "meta.k8s.io/v1".to_string() } else { target.resource.api_version() };
    let mut metadata = json!({"resourceVersion": page.resource_version.to_string()});
    if let Some(token) = &page.continue_token {
        metadata["continue"] = json!(token);
    }
    let mut body = Vec::with_capacity(page.items.len() * 1024 + 256);
    body.extend_from_slice(
        format!("{{\"apiVersion\":\"{api_version}\",\"kind\":\"{kind}\",\"metadata\":{metadata},\"items\":[").as_bytes(),
    );
    for (index, item) in page.items.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        watch::write_object(&mut body, item, metadata_only);
    }
    body.extend_from_slice(b"]}");
    Ok((StatusCode::OK, body, None))
}

/// A create, update, patch or delete; `service_account` is the requester when RBAC authorizes it.
fn write(
    shared: &Shared,
    target: &Target,
    verb: Verb,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
    service_account: Option<&ServiceAccount>,
) -> Outcome {
    if query.get("dryRun").is_some() {
        return Err(ApiError::bad_request("dryRun is not supported by this test server"));
    }
    let parse_body =
        || serde_json::from_slice::<Value>(body).map_err(|error| ApiError::bad_request(format!("the request body is not JSON: {error}")));
    let mut store = shared.store();
    let object = match verb {
        Verb::Create => {
            if target.scope == Scope::Status {
                return Err(ApiError::new(Reason::MethodNotAllowed, "POST is not supported on the status subresource"));
            }
            let created = store.create(&target.resource, target.namespace.as_deref(), parse_body()?, false)?;
            // The answer is written once the store is free for the next request.
            drop(store);
            let name = created.pointer("/metadata/name").and_then(Value::as_str).map(str::to_string);
            return Ok((StatusCode::CREATED, serde_json::to_vec(&*created).unwrap_or_default(), name));
        }
        Verb::Update => store.update(&target.resource, &target.key()?, parse_body()?, target.scope)?,
        Verb::Patch => {
            let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or_default();
            let kind = PatchKind::from_content_type(content_type)?;
            let force = query.get("force").is_some_and(|value| value == "true");
            if force && kind != PatchKind::Apply {
                return Err(ApiError::new(
                    Reason::Invalid,
                    "PatchOptions.meta.k8s.io \"\" is invalid: force: Forbidden: may not be specified for non-apply patch",
                ));
            }
            let key = target.key()?;
            let existed = store.object(&target.resource, &key).is_some();
            // An apply that creates the object needs `create` as well as `patch` (the API server authorizes
            // the create with the object's name).
            if !existed
                && kind == PatchKind::Apply
                && target.scope == Scope::Main
                && let Some(subject) = service_account
            {
                let resource = &target.resource;
                let attributes = Attributes::new("create", &resource.group, &resource.plural, target.namespace.as_deref(), Some(&key.1));
                if !rbac::allows(&store, subject, &attributes) {
                    return Err(rbac::forbidden(subject, &attributes));
                }
            }
            let request =
                PatchRequest { kind, body, scope: target.scope, field_manager: query.get("fieldManager").map(String::as_str), force };
            let patched = store.patch(&target.resource, &key, &request)?;
            drop(store);
            let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
            return Ok((status, serde_json::to_vec(&*patched).unwrap_or_default(), None));
        }
        Verb::Delete => {
            let options: Value = if body.is_empty() { json!({}) } else { parse_body()? };
            let policy =
                query.get("propagationPolicy").map(String::as_str).or_else(|| options.get("propagationPolicy").and_then(Value::as_str));
            let request = DeleteRequest {
                propagation: if policy == Some("Orphan") || options.get("orphanDependents") == Some(&json!(true)) {
                    Propagation::Orphan
                } else {
                    Propagation::Background
                },
                precondition_uid: options.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_string),
                precondition_resource_version: options
                    .pointer("/preconditions/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            };
            return match store.delete(&target.resource, &target.key()?, &request)? {
                Deleted::Pending(object) => Ok((StatusCode::OK, serde_json::to_vec(&*object).unwrap_or_default(), None)),
                Deleted::Gone(status) => Ok((StatusCode::OK, status.to_string().into_bytes(), None)),
            };
        }
        _ => return Err(ApiError::new(Reason::MethodNotAllowed, "unsupported verb")),
    };
    drop(store);
    Ok((StatusCode::OK, serde_json::to_vec(&*object).unwrap_or_default(), None))
}

/// DELETE on a collection: deletes every selected object, returns what was selected.
fn delete_collection(shared: &Shared, target: &Target, query: &HashMap<String, String>) -> Outcome {
    let selection = selection(target, query)?;
    let mut store = shared.store();
    let page = store.list(&target.resource, &selection, None, None)?;
    let request = DeleteRequest { propagation: Propagation::Background, precondition_uid: None, precondition_resource_version: None };
    for item in &page.items {
        let namespace = item.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default().to_string();
        let name = item.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        // An object already removed by the garbage collection of an earlier one is fine to miss.
        let _ = store.delete(&target.resource, &(namespace, name), &request);
    }
    let items: Vec<&Value> = page.items.iter().map(|item| &**item).collect();
    let list = json!({"apiVersion": target.resource.api_version(), "kind": format!("{}List", target.resource.kind), "metadata": {"resourceVersion": store.revision.to_string()}, "items": items});
    Ok((StatusCode::OK, list.to_string().into_bytes(), None))
}

/// A streaming response of newline-delimited watch events.
fn watch(shared: Arc<Shared>, target: Target, query: &HashMap<String, String>, metadata_only: bool, fault: Option<Fault>) -> Response {
    let selection = match selection(&target, query) {
        Ok(selection) => selection,
        Err(error) => return error_response(&error),
    };
    let streaming_list = query.get("sendInitialEvents").is_some_and(|value| value == "true");
    let start = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => WatchStart::CurrentState { initial_events_end: streaming_list },
        Some(_) if streaming_list => {
            return error_response(&ApiError::new(
                Reason::Invalid,
                "sendInitialEvents is only supported with resourceVersion \"\" or \"0\" in this test server",
            ));
        }
        Some(version) => match version.parse() {
            Ok(version) => WatchStart::After(version),
            Err(_) => return error_response(&ApiError::bad_request(format!("resourceVersion {version:?} is not a number"))),
        },
    };
    let timeout = query.get("timeoutSeconds").and_then(|seconds| seconds.parse::<u64>().ok()).unwrap_or(1800);
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|value| value == "true" || value == "1");
    let (sender, receiver) = match (fault, start) {
        // As after a compaction: only the ERROR event, and the watch ends.
        (Some(Fault::ExpiredWatch), WatchStart::After(version)) => {
            let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
            let _ = sender.send(Frame::Error(ApiError::expired(version, version + 1).to_status()));
            (sender, receiver)
        }
        _ => shared.store().watch(&target.resource, selection, start),
    };
    let mut deadline = Instant::now() + Duration::from_secs(timeout);
    if let Some(Fault::DroppedWatch(after)) = fault {
        deadline = deadline.min(Instant::now() + after);
    }
    let stream = WatchStream {
        shared: shared.clone(),
        sender,
        receiver,
        deadline,
        bookmarks: bookmarks.then(|| tokio::time::interval_at(Instant::now() + shared.bookmark_interval, shared.bookmark_interval)),
        resource: target.resource,
        metadata_only,
        shutdown: shared.shutdown.clone(),
        finished: false,
    };
    let body = Body::from_stream(futures::stream::unfold(stream, |mut stream| async move {
        let line = stream.next_line().await?;
        Some((Ok::<_, Infallible>(line), stream))
    }));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap_or_else(|_| error_response(&ApiError::bad_request("could not build the watch response")))
}

/// The most bytes of queued events sent as one chunk.
const MAX_CHUNK: usize = 1 << 20;

struct WatchStream {
    shared: Arc<Shared>,
    sender: tokio::sync::mpsc::UnboundedSender<Frame>,
    receiver: tokio::sync::mpsc::UnboundedReceiver<Frame>,
    deadline: Instant,
    bookmarks: Option<tokio::time::Interval>,
    resource: ResourceType,
    metadata_only: bool,
    shutdown: tokio::sync::watch::Receiver<bool>,
    finished: bool,
}

impl WatchStream {
    /// The next event line, or `None` when the watch ends (timeout, ERROR event sent, shutdown).
    async fn next_line(&mut self) -> Option<Bytes> {
        if self.finished || *self.shutdown.borrow() {
            return None;
        }
        enum Wake {
            Frame(Option<Frame>),
            Bookmark,
            End,
        }
        loop {
            let WatchStream { receiver, bookmarks, deadline, shutdown, .. } = self;
            let bookmark_tick = async {
                match bookmarks.as_mut() {
                    Some(interval) => {
                        interval.tick().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let wake = tokio::select! {
                frame = receiver.recv() => Wake::Frame(frame),
                _ = bookmark_tick => Wake::Bookmark,
                _ = tokio::time::sleep_until(*deadline) => Wake::End,
                _ = shutdown.changed() => Wake::End,
            };
            match wake {
                Wake::Frame(frame) => {
                    let mut frame = frame?;
                    // Frames already queued go out in one chunk (a 30 000-object initial state is one burst).
                    let mut chunk = Vec::new();
                    loop {
                        chunk.extend_from_slice(&watch::encode(&frame, &self.resource, self.metadata_only));
                        if matches!(frame, Frame::Error(_)) {
                            self.finished = true;
                            break;
                        }
                        if chunk.len() >= MAX_CHUNK {
                            break;
                        }
                        match self.receiver.try_recv() {
                            Ok(next) => frame = next,
                            Err(_) => break,
                        }
                    }
                    return Some(Bytes::from(chunk));
                }
                Wake::Bookmark => self.shared.store().bookmark(&self.sender),
                Wake::End => return None,
            }
        }
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn error_response(error: &ApiError) -> Response {
    json_response(
        StatusCode::from_u16(error.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        error.to_status().to_string().into_bytes(),
    )
}
