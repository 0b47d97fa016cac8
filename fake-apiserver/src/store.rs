//! The object store: every object of every resource, the global resourceVersion counter, and the
//! create / update / patch / delete semantics of the API (API concepts: "Resource versions",
//! "Generation", "Finalizers"). One mutex guards it all; each write is one critical section, so
//! watchers see writes in resourceVersion order.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use rand::Rng;
use serde_json::{Map, Value, json};

use crate::apply::{self, ApplyRequest, Scope};
use crate::patch::{self, PatchKind};
use crate::resources::{Registry, ResourceType};
use crate::selectors::Selection;
use crate::status::{self, ApiError, Reason};
use crate::watch::{Change, EventType, Watcher};

/// A resource's identity in the store: group and plural.
pub type ResourceKey = (String, String);
/// An object's identity within its resource: namespace (empty when cluster-scoped) and name.
pub type ObjectKey = (String, String);

pub fn resource_key(resource: &ResourceType) -> ResourceKey {
    (resource.group.clone(), resource.plural.clone())
}

/// The objects of one resource, its recent changes and its watchers.
#[derive(Default)]
pub struct Table {
    pub objects: BTreeMap<ObjectKey, Arc<Value>>,
    /// Changes in resourceVersion order, at most `history_limit` of them.
    pub history: VecDeque<Arc<Change>>,
    /// The resourceVersion of the newest change dropped from `history`: a watch must start at or after it.
    pub compacted_through: u64,
    pub watchers: Vec<Watcher>,
}

/// How DELETE treats the dependents of the deleted object (`propagationPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// Dependents are deleted once their owner is gone (also used for `Foreground`, which this server
    /// does not distinguish).
    Background,
    /// Dependents lose their owner reference and stay.
    Orphan,
}

/// What a DELETE request asks for beyond the name.
pub struct DeleteRequest {
    pub propagation: Propagation,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
}

/// What a DELETE did.
pub enum Deleted {
    /// Finalizers hold the object: it is marked for deletion and still there.
    Pending(Arc<Value>),
    /// The object is gone; the body is a success `Status`.
    Gone(Value),
}

/// One page of a list.
pub struct ListPage {
    pub items: Vec<Arc<Value>>,
    pub resource_version: u64,
    pub continue_token: Option<String>,
}

/// Options of a PATCH.
pub struct PatchRequest<'a> {
    pub kind: PatchKind,
    pub body: &'a [u8],
    pub scope: Scope,
    pub field_manager: Option<&'a str>,
    pub force: bool,
}

pub struct Store {
    pub registry: Registry,
    /// The newest resourceVersion handed out.
    pub revision: u64,
    pub tables: HashMap<ResourceKey, Table>,
    /// Where each live object is, by uid (for garbage collection).
    pub by_uid: HashMap<String, (ResourceKey, ObjectKey)>,
    /// Owner uid to the objects whose `ownerReferences` name it.
    pub dependents: HashMap<String, BTreeSet<(ResourceKey, ObjectKey)>>,
    pub history_limit: usize,
    /// Available replicas the simulated workload controllers report, by (kind, namespace, name),
    /// where a test set them; otherwise every desired replica is available.
    pub available_replicas: HashMap<(String, String, String), i64>,
}

impl Store {
    pub fn new(history_limit: usize) -> Store {
        Store {
            available_replicas: HashMap::new(),
            registry: Registry::with_defaults(),
            revision: 0,
            tables: HashMap::new(),
            by_uid: HashMap::new(),
            dependents: HashMap::new(),
            history_limit: history_limit.max(1),
        }
    }

    pub fn object(&self, resource: &ResourceType, key: &ObjectKey) -> Option<Arc<Value>> {
        self.tables.get(&resource_key(resource))?.objects.get(key).cloned()
    }

    pub fn get(&self, resource: &ResourceType, key: &ObjectKey) -> Result<Arc<Value>, ApiError> {
        self.object(resource, key).ok_or_else(|| ApiError::not_found(resource, &key.1))
    }

    /// One page of the objects `selection` selects, in namespace/name order.
    pub fn list(
        &self,
        resource: &ResourceType,
        selection: &Selection,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        let (resource_version, start) = match continue_token {
            Some(token) => {
                let (version, key) = parse_continue(token)?;
                (version, Bound::Excluded(key))
            }
            None => (self.revision, Bound::Included((selection.namespace.clone().unwrap_or_default(), String::new()))),
        };
        let mut page = ListPage { items: Vec::new(), resource_version, continue_token: None };
        let Some(table) = self.tables.get(&resource_key(resource)) else { return Ok(page) };
        let in_scope = |key: &ObjectKey| selection.namespace.as_ref().is_none_or(|namespace| &key.0 == namespace);
        let mut range = table.objects.range((start, Bound::Unbounded)).take_while(|(key, _)| in_scope(key));
        for (key, object) in range.by_ref() {
            if selection.matches(object) {
                page.items.push(object.clone());
                if limit.is_some_and(|limit| page.items.len() >= limit) {
                    page.continue_token = Some(format!("{resource_version}:{}/{}", key.0, key.1));
                    break;
                }
            }
        }
        if page.continue_token.is_some() && range.next().is_none() {
            page.continue_token = None;
        }
        Ok(page)
    }

    /// POST: stores a new object. `seeding` is for objects a test puts in through the library, as a
    /// store could hold them: their status is kept (a request's is dropped when the resource has a
    /// status subresource), and their schema is not checked (an object stored under an older one).
    pub fn create(
        &mut self,
        resource: &ResourceType,
        namespace: Option<&str>,
        mut object: Value,
        seeding: bool,
    ) -> Result<Arc<Value>, ApiError> {
        check_type(resource, &object)?;
        let Some(fields) = object.as_object_mut() else { return Err(ApiError::bad_request("the request body is not a JSON object")) };
        fields.insert("apiVersion".into(), json!(resource.api_version()));
        fields.insert("kind".into(), json!(resource.kind));
        if resource.has_status && !seeding {
            fields.remove("status");
        }
        let metadata = metadata_of(&mut object)?;
        let namespace = scope_namespace(resource, namespace, metadata)?;
        let name = match metadata.get("name").and_then(Value::as_str).filter(|name| !name.is_empty()) {
            Some(name) => name.to_string(),
            None => match metadata.get("generateName").and_then(Value::as_str).filter(|prefix| !prefix.is_empty()) {
                Some(prefix) => self.generate_name(resource, &namespace, prefix),
                None => return Err(ApiError::invalid(resource, "", "metadata.name", "Required value: name or generateName is required")),
            },
        };
        let key = (namespace.clone(), name.clone());
        if self.object(resource, &key).is_some() {
            return Err(ApiError::already_exists(resource, &name));
        }
        metadata.insert("name".into(), json!(name));
        if resource.namespaced {
            metadata.insert("namespace".into(), json!(namespace));
        }
        metadata.insert("uid".into(), json!(new_uid()));
        metadata.insert("creationTimestamp".into(), json!(now()));
        metadata.insert("generation".into(), json!(1));
        metadata.remove("deletionTimestamp");
        metadata.remove("deletionGracePeriodSeconds");
        if let Some(validation) = resource.validation.as_ref().filter(|_| !seeding) {
            validation.admit(resource, &object, None)?;
        }
        Ok(self.commit(resource, key, object, EventType::Added))
    }

    fn generate_name(&self, resource: &ResourceType, namespace: &str, prefix: &str) -> String {
        // The alphabet and length of the API server's name generator (no vowels, no confusable digits).
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut random = rand::thread_rng();
        loop {
            let suffix: String = (0..5).map(|_| ALPHABET[random.gen_range(0..ALPHABET.len())] as char).collect();
            let name = format!("{prefix}{suffix}");
            if self.object(resource, &(namespace.to_string(), name.clone())).is_none() {
                return name;
            }
        }
    }

    /// PUT: replaces the object (or only its status for the status subresource).
    pub fn update(&mut self, resource: &ResourceType, key: &ObjectKey, object: Value, scope: Scope) -> Result<Arc<Value>, ApiError> {
        check_type(resource, &object)?;
        let live = self.get(resource, key)?;
        let requested_version = object.pointer("/metadata/resourceVersion").and_then(Value::as_str).filter(|version| !version.is_empty());
        match requested_version {
            Some(version) if Some(version) != live.pointer("/metadata/resourceVersion").and_then(Value::as_str) => {
                return Err(ApiError::stale(resource, &key.1));
            }
            None if resource.custom => {
                return Err(ApiError::invalid(
                    resource,
                    &key.1,
                    "metadata.resourceVersion",
                    "Invalid value: 0x0: must be specified for an update",
                ));
            }
            _ => {}
        }
        if let Some(name) = object.pointer("/metadata/name").and_then(Value::as_str)
            && name != key.1
        {
            return Err(ApiError::bad_request(format!("the name of the object ({name}) does not match the name on the URL ({})", key.1)));
        }
        self.replace(resource, key, &live, object, scope)
    }

    /// PATCH, including server-side apply (which creates the object when it is absent).
    pub fn patch(&mut self, resource: &ResourceType, key: &ObjectKey, request: &PatchRequest) -> Result<Arc<Value>, ApiError> {
        if request.kind == PatchKind::Apply {
            return self.apply(resource, key, request);
        }
        let live = self.get(resource, key)?;
        let patched = patch::patch(request.kind, &live, request.body, resource)?;
        if let Some(version) = patched.pointer("/metadata/resourceVersion").and_then(Value::as_str)
            && Some(version) != live.pointer("/metadata/resourceVersion").and_then(Value::as_str)
        {
            return Err(ApiError::stale(resource, &key.1));
        }
        self.replace(resource, key, &live, patched, request.scope)
    }

    fn apply(&mut self, resource: &ResourceType, key: &ObjectKey, request: &PatchRequest) -> Result<Arc<Value>, ApiError> {
        let manager = request.field_manager.filter(|manager| !manager.is_empty()).ok_or_else(|| {
            ApiError::new(
                Reason::Invalid,
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            )
        })?;
        let config = patch::parse_apply_config(request.body)?;
        if config.get("apiVersion").and_then(Value::as_str) != Some(&resource.api_version())
            || config.get("kind").and_then(Value::as_str) != Some(&resource.kind)
        {
            return Err(ApiError::bad_request(format!(
                "the apply configuration must have apiVersion {} and kind {}",
                resource.api_version(),
                resource.kind
            )));
        }
        if let Some(name) = config.pointer("/metadata/name").and_then(Value::as_str)
            && name != key.1
        {
            return Err(ApiError::bad_request(format!("the name of the object ({name}) does not match the name on the URL ({})", key.1)));
        }
        let live = self.object(resource, key);
        let requested_version = config.pointer("/metadata/resourceVersion").and_then(Value::as_str);
        if let Some(version) = requested_version
            && live.as_ref().and_then(|live| live.pointer("/metadata/resourceVersion")).and_then(Value::as_str) != Some(version)
        {
            return Err(ApiError::stale(resource, &key.1));
        }
        let now = now();
        let apply_request = ApplyRequest { resource, manager, force: request.force, scope: request.scope, config: &config, now: &now };
        match live {
            Some(live) => {
                let applied = apply::apply(&live, &apply_request)?;
                self.replace(resource, key, &live, applied, request.scope)
            }
            None if request.scope == Scope::Status => Err(ApiError::not_found(resource, &key.1)),
            None => {
                let mut identity = json!({"apiVersion": resource.api_version(), "kind": resource.kind, "metadata": {"name": key.1}});
                if resource.namespaced {
                    identity["metadata"]["namespace"] = json!(key.0);
                }
                let applied = apply::apply(&identity, &apply_request)?;
                self.create(resource, resource.namespaced.then_some(key.0.as_str()), applied, false)
            }
        }
    }

    /// The common end of PUT and PATCH: keeps what the client may not change, refuses a change to an
    /// immutable field (a workload's selector), bumps `generation`, skips no-op writes, and removes an
    /// object whose deletion waited only for its last finalizer.
    fn replace(
        &mut self,
        resource: &ResourceType,
        key: &ObjectKey,
        live: &Arc<Value>,
        mut object: Value,
        scope: Scope,
    ) -> Result<Arc<Value>, ApiError> {
        // Every status write of a namespace passes here: the live object is read in place and copied
        // once at most (for a status write), not cloned whole for each comparison.
        match scope {
            Scope::Status => {
                let status = object.as_object_mut().and_then(|fields| fields.remove("status"));
                let managed_fields = object.pointer_mut("/metadata/managedFields").map(Value::take);
                object = (**live).clone();
                set_or_remove(&mut object, "status", status);
                if let Some(managed_fields) = managed_fields {
                    object["metadata"]["managedFields"] = managed_fields;
                }
            }
            Scope::Main if resource.has_status => set_or_remove(&mut object, "status", live.get("status").cloned()),
            Scope::Main => {}
        }
        let no_metadata = Map::new();
        let live_metadata = live.get("metadata").and_then(Value::as_object).unwrap_or(&no_metadata);
        let metadata = metadata_of(&mut object)?;
        for field in ["name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"] {
            match live_metadata.get(field) {
                Some(value) => metadata.insert(field.into(), value.clone()),
                None => metadata.remove(field),
            };
        }
        if !metadata.contains_key("managedFields")
            && let Some(managed_fields) = live_metadata.get("managedFields")
        {
            metadata.insert("managedFields".into(), managed_fields.clone());
        }
        if live_metadata.contains_key("deletionTimestamp") {
            let old_finalizers = finalizers(live);
            if let Some(added) = finalizers(&object).into_iter().find(|finalizer| !old_finalizers.contains(finalizer)) {
                return Err(ApiError::invalid(
                    resource,
                    &key.1,
                    "metadata.finalizers",
                    &format!("Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers [{added}]"),
                ));
            }
        }
        // apps/v1 workloads: the selector cannot change once the object exists.
        if resource.group == "apps"
            && matches!(resource.kind.as_str(), "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
            && live.pointer("/spec/selector") != object.pointer("/spec/selector")
        {
            let selector = object.pointer("/spec/selector").map(Value::to_string).unwrap_or_default();
            return Err(ApiError::invalid(resource, &key.1, "spec.selector", &format!("Invalid value: {selector}: field is immutable")));
        }
        // Everything but `metadata` and `status` is what `generation` counts changes of.
        if !same_fields_except(live, &object, &["metadata", "status"]) {
            let generation = live.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
            object["metadata"]["generation"] = json!(generation + 1);
        }
        object["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"].clone();
        if same_but_times(&object, live) {
            // A write that changes nothing is not stored: no new resourceVersion, no watch event.
            return Ok(Arc::clone(live));
        }
        if let Some(validation) = &resource.validation {
            validation.admit(resource, &object, Some(live))?;
        }
        if live_metadata.contains_key("deletionTimestamp") && finalizers(&object).is_empty() {
            // The last finalizer is gone: the write deletes the object (watchers see one DELETED event).
            return Ok(self.remove_as(resource, key, Some(object)).unwrap_or_else(|| Arc::clone(live)));
        }
        Ok(self.commit(resource, key.clone(), object, EventType::Modified))
    }

    /// What the Deployment and StatefulSet controllers would report once the pods are up: every
    /// desired replica ready and available, unless a test said how many are
    /// ([`Store::available_replicas`]). No pod runs here; the status is all a client sees of them.
    fn simulate_workload_status(&self, kind: &str, key: &ObjectKey, object: &mut Value) {
        let desired = object.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
        let available =
            self.available_replicas.get(&(kind.to_string(), key.0.clone(), key.1.clone())).copied().unwrap_or(desired).min(desired);
        let generation = object.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
        object["status"] = json!({
            "observedGeneration": generation,
            "replicas": desired,
            "readyReplicas": available,
            "availableReplicas": available,
            "updatedReplicas": desired,
        });
    }

    /// DELETE: marks the object when finalizers hold it, otherwise removes it; dependents follow.
    pub fn delete(&mut self, resource: &ResourceType, key: &ObjectKey, request: &DeleteRequest) -> Result<Deleted, ApiError> {
        let live = self.get(resource, key)?;
        let uid = live.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_string();
        if request.precondition_uid.as_ref().is_some_and(|wanted| *wanted != uid)
            || request
                .precondition_resource_version
                .as_ref()
                .is_some_and(|wanted| Some(wanted.as_str()) != live.pointer("/metadata/resourceVersion").and_then(Value::as_str))
        {
            return Err(ApiError::about(
                Reason::Conflict,
                resource,
                &key.1,
                format!(
                    "Precondition failed for {} \"{}\": the uid or resourceVersion in the delete options does not match the object",
                    status::qualified(resource),
                    key.1
                ),
            ));
        }
        if request.propagation == Propagation::Orphan {
            self.orphan_dependents(&uid);
        }
        if live.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok(Deleted::Pending(live));
        }
        if !finalizers(&live).is_empty() {
            let mut marked = (*live).clone();
            let generation = live.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
            marked["metadata"]["deletionTimestamp"] = json!(now());
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            marked["metadata"]["generation"] = json!(generation + 1);
            return Ok(Deleted::Pending(self.commit(resource, key.clone(), marked, EventType::Modified)));
        }
        self.remove_as(resource, key, None);
        Ok(Deleted::Gone(status::deleted(resource, &key.1, &uid)))
    }

    /// Stores `object` under a new resourceVersion, indexes it and tells the watchers.
    pub fn commit(&mut self, resource: &ResourceType, key: ObjectKey, mut object: Value, event_type: EventType) -> Arc<Value> {
        if resource.group.is_empty() && resource.kind == "Secret" {
            fold_string_data(&mut object);
        }
        if resource.group == "apps" && matches!(resource.kind.as_str(), "Deployment" | "StatefulSet") {
            self.simulate_workload_status(&resource.kind, &key, &mut object);
        }
        self.revision += 1;
        object["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        let object = Arc::new(object);
        let resource_key = resource_key(resource);
        let previous = self.tables.entry(resource_key.clone()).or_default().objects.insert(key.clone(), object.clone());
        if let Some(uid) = object.pointer("/metadata/uid").and_then(Value::as_str) {
            self.by_uid.insert(uid.to_string(), (resource_key.clone(), key.clone()));
        }
        self.index_owners(&resource_key, &key, previous.as_deref(), Some(&object));
        self.publish(&resource_key, Change { resource_version: self.revision, event_type, object: object.clone(), previous });
        self.collect_if_orphaned(resource, &key, &object);
        object
    }

    /// Removes an object for good (a DELETED event carrying `last_state`, or the stored object), then lets
    /// garbage collection handle its dependents. Returns the state the DELETED event carried.
    pub fn remove_as(&mut self, resource: &ResourceType, key: &ObjectKey, last_state: Option<Value>) -> Option<Arc<Value>> {
        let resource_key = resource_key(resource);
        let removed = self.tables.get_mut(&resource_key).and_then(|table| table.objects.remove(key))?;
        self.revision += 1;
        let mut last_state = last_state.unwrap_or_else(|| (*removed).clone());
        last_state["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        let last_state = Arc::new(last_state);
        let uid = removed.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_string();
        self.by_uid.remove(&uid);
        self.index_owners(&resource_key, key, Some(&removed), None);
        let change =
            Change { resource_version: self.revision, event_type: EventType::Deleted, object: last_state.clone(), previous: Some(removed) };
        self.publish(&resource_key, change);
        self.collect_dependents(&uid);
        Some(last_state)
    }

    fn index_owners(&mut self, resource_key: &ResourceKey, key: &ObjectKey, before: Option<&Value>, after: Option<&Value>) {
        let before = before.map(owner_uids).unwrap_or_default();
        let after = after.map(owner_uids).unwrap_or_default();
        let entry = (resource_key.clone(), key.clone());
        for uid in before.difference(&after) {
            if let Some(dependents) = self.dependents.get_mut(uid) {
                dependents.remove(&entry);
                if dependents.is_empty() {
                    self.dependents.remove(uid);
                }
            }
        }
        for uid in after.difference(&before) {
            self.dependents.entry(uid.clone()).or_default().insert(entry.clone());
        }
    }

    fn publish(&mut self, resource_key: &ResourceKey, change: Change) {
        let limit = self.history_limit;
        let table = self.tables.entry(resource_key.clone()).or_default();
        let change = Arc::new(change);
        table.watchers.retain(|watcher| watcher.send_change(&change));
        table.history.push_back(change);
        while table.history.len() > limit {
            if let Some(dropped) = table.history.pop_front() {
                table.compacted_through = dropped.resource_version;
            }
        }
    }

    /// The resource type of a resource key, if still registered.
    pub fn resource_of(&self, resource_key: &ResourceKey) -> Option<ResourceType> {
        self.registry.all().iter().find(|resource| resource.group == resource_key.0 && resource.plural == resource_key.1).cloned()
    }
}

fn parse_continue(token: &str) -> Result<(u64, ObjectKey), ApiError> {
    let invalid = || ApiError::bad_request(format!("invalid continue token {token:?}"));
    let (version, key) = token.split_once(':').ok_or_else(invalid)?;
    let (namespace, name) = key.split_once('/').ok_or_else(invalid)?;
    Ok((version.parse().map_err(|_| invalid())?, (namespace.to_string(), name.to_string())))
}

fn check_type(resource: &ResourceType, object: &Value) -> Result<(), ApiError> {
    let api_version = object.get("apiVersion").and_then(Value::as_str);
    let kind = object.get("kind").and_then(Value::as_str);
    if api_version.is_some_and(|api_version| api_version != resource.api_version()) || kind.is_some_and(|kind| kind != resource.kind) {
        return Err(ApiError::bad_request(format!(
            "the object is a {} {}, but the request is for {} {}",
            api_version.unwrap_or_default(),
            kind.unwrap_or_default(),
            resource.api_version(),
            resource.kind
        )));
    }
    Ok(())
}

fn metadata_of(object: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let fields = object.as_object_mut().ok_or_else(|| ApiError::bad_request("the request body is not a JSON object"))?;
    fields
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata is not an object"))
}

/// The namespace an object of `resource` is stored in: the one on the URL, which the body must agree with.
fn scope_namespace(resource: &ResourceType, url_namespace: Option<&str>, metadata: &mut Map<String, Value>) -> Result<String, ApiError> {
    if !resource.namespaced {
        metadata.remove("namespace");
        return Ok(String::new());
    }
    let body_namespace = metadata.get("namespace").and_then(Value::as_str).filter(|namespace| !namespace.is_empty());
    match (url_namespace, body_namespace) {
        (Some(url), Some(body)) if url != body => {
            Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"))
        }
        (Some(url), _) => Ok(url.to_string()),
        (None, Some(body)) => Ok(body.to_string()),
        (None, None) => Ok("default".to_string()),
    }
}

fn set_or_remove(object: &mut Value, field: &str, value: Option<Value>) {
    if let Some(fields) = object.as_object_mut() {
        match value {
            Some(value) => fields.insert(field.to_string(), value),
            None => fields.remove(field),
        };
    }
}

/// Whether `a` and `b` have the same fields, apart from `skipped` (compared in place: the maps are
/// ordered by key, so equal maps list the same entries in the same order). Values that are not
/// objects are compared whole.
fn same_fields_except(a: &Value, b: &Value, skipped: &[&str]) -> bool {
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => {
            let kept = |(name, _): &(&String, &Value)| !skipped.contains(&name.as_str());
            a.iter().filter(kept).eq(b.iter().filter(kept))
        }
        _ => a == b,
    }
}

/// Whether `a` and `b` are the same object but for the times of their managed fields' entries.
fn same_but_times(a: &Value, b: &Value) -> bool {
    static NO_METADATA: Value = Value::Null;
    fn metadata(object: &Value) -> &Value {
        object.get("metadata").unwrap_or(&NO_METADATA)
    }
    fn entries(object: &Value) -> &[Value] {
        object.pointer("/metadata/managedFields").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
    }
    same_fields_except(a, b, &["metadata"])
        && same_fields_except(metadata(a), metadata(b), &["managedFields"])
        && entries(a).len() == entries(b).len()
        && entries(a).iter().zip(entries(b)).all(|(a, b)| same_fields_except(a, b, &["time"]))
}

pub fn finalizers(object: &Value) -> Vec<String> {
    object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

pub fn owner_uids(object: &Value) -> BTreeSet<String> {
    object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|reference| reference.get("uid").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

/// A random version-4 UUID, as the API server assigns to `metadata.uid`.
fn new_uid() -> String {
    let bits: u128 = rand::thread_rng().r#gen::<u128>() & !(0xf << 76) & !(0x3 << 62) | (0x4 << 76) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// The current time in RFC 3339 with second precision, as `metav1.Time` is serialised.
pub fn now() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// A Secret's `stringData` is write-only: the API server merges it into `data`, base64-encoded,
/// and stores no `stringData` (Secret API reference).
fn fold_string_data(secret: &mut Value) {
    use base64::Engine;
    let Some(fields) = secret.as_object_mut() else { return };
    let Some(Value::Object(string_data)) = fields.remove("stringData") else { return };
    let data = fields.entry("data").or_insert_with(|| json!({}));
    if let Some(data) = data.as_object_mut() {
        for (key, value) in string_data {
            let text = value.as_str().unwrap_or_default();
            data.insert(key, json!(base64::engine::general_purpose::STANDARD.encode(text)));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{same_but_times, same_fields_except};

    fn phone(labels: serde_json::Value, entry: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "Phone", "metadata": {"name": "sep1", "labels": labels, "managedFields": [entry]}, "spec": {"model": "7961"}})
    }

    #[test]
    fn a_write_that_only_moves_a_managed_fields_time_changes_nothing() {
        let entry = |time: &str, fields: serde_json::Value| json!({"manager": "operator", "time": time, "fieldsV1": fields});
        let before = phone(json!({"site": "a"}), entry("2026-01-01T00:00:00Z", json!({"f:spec": {}})));
        let later = phone(json!({"site": "a"}), entry("2026-01-02T00:00:00Z", json!({"f:spec": {}})));
        assert!(same_but_times(&before, &later));
        let relabelled = phone(json!({"site": "b"}), entry("2026-01-01T00:00:00Z", json!({"f:spec": {}})));
        assert!(!same_but_times(&before, &relabelled), "a label is a change");
        let other_fields = phone(json!({"site": "a"}), entry("2026-01-01T00:00:00Z", json!({"f:status": {}})));
        assert!(!same_but_times(&before, &other_fields), "a managed fields entry's fields are a change");
        let mut no_entries = before.clone();
        no_entries["metadata"]["managedFields"] = json!([]);
        assert!(!same_but_times(&before, &no_entries), "an entry fewer is a change");
    }

    #[test]
    fn fields_are_compared_apart_from_the_skipped_ones() {
        let a = json!({"metadata": {"name": "x"}, "spec": {"model": "7961"}, "status": {"ready": true}});
        let b = json!({"metadata": {"name": "y"}, "spec": {"model": "7961"}});
        assert!(same_fields_except(&a, &b, &["metadata", "status"]));
        assert!(!same_fields_except(&a, &b, &["metadata"]));
        assert!(!same_fields_except(&json!({"spec": {}, "extra": 1}), &json!({"spec": {}}), &["metadata"]));
        assert!(!same_fields_except(&json!(1), &json!(2), &[]), "values that are not objects are compared whole");
    }
}
