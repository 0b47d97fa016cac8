//! Server-side apply (API docs: "Server-Side Apply"): field ownership per manager in
//! `metadata.managedFields`, conflicts between managers, and removal of fields a manager stops applying.
//!
//! Approximations: only `Apply` operations take ownership (a PUT or a non-apply patch leaves
//! `managedFields` as it was); a field is compared for conflicts only where both managers own the same
//! path; objects left empty after a removal stay (as `{}`).

use serde_json::{Map, Value, json};

use crate::fields::{self, FieldPath, FieldSet, PathElement};
use crate::resources::ResourceType;
use crate::status::{ApiError, Reason};

/// Which part of the object an apply writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The main resource: `status` is ignored when the resource has a status subresource.
    Main,
    /// The `/status` subresource: only `status` is taken.
    Status,
}

/// One `metadata.managedFields` entry.
struct ManagedEntry {
    manager: String,
    operation: String,
    subresource: Option<String>,
    api_version: String,
    time: Value,
    fields: FieldSet,
    /// Its index in the live object's `managedFields` while its fields are as stored there: written
    /// back from there, not made again from the set (most applies change one manager's time only).
    stored: Option<usize>,
}

impl ManagedEntry {
    fn parse(index: usize, entry: &Value) -> Option<ManagedEntry> {
        Some(ManagedEntry {
            stored: Some(index),
            manager: entry.get("manager")?.as_str()?.to_string(),
            operation: entry.get("operation").and_then(Value::as_str).unwrap_or("Update").to_string(),
            subresource: entry.get("subresource").and_then(Value::as_str).map(str::to_string),
            api_version: entry.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string(),
            time: entry.get("time").cloned().unwrap_or(Value::Null),
            fields: entry.get("fieldsV1").map(fields::from_fields_v1).unwrap_or_default(),
        })
    }

    fn to_json(&self, stored: &[Value]) -> Value {
        if let Some(stored) = self.stored.and_then(|index| stored.get(index)) {
            let mut entry = stored.clone();
            entry["apiVersion"] = json!(self.api_version);
            if !self.time.is_null() {
                entry["time"] = self.time.clone();
            }
            return entry;
        }
        let mut entry = json!({
            "manager": self.manager, "operation": self.operation, "apiVersion": self.api_version, "time": self.time,
            "fieldsType": "FieldsV1", "fieldsV1": fields::to_fields_v1(&self.fields),
        });
        if let Some(subresource) = &self.subresource {
            entry["subresource"] = json!(subresource);
        }
        entry
    }
}

/// What one apply request asks for.
pub struct ApplyRequest<'a> {
    pub resource: &'a ResourceType,
    pub manager: &'a str,
    pub force: bool,
    pub scope: Scope,
    /// The applied configuration (already checked for name, kind and resourceVersion).
    pub config: &'a Value,
    pub now: &'a str,
}

/// The object after applying `request` to `live` (for a create, an object with only its identity).
pub fn apply(live: &Value, request: &ApplyRequest) -> Result<Value, ApiError> {
    let scoped = scoped_config(request);
    let applied_set = fields::collect(&scoped, request.resource);
    let subresource = (request.scope == Scope::Status).then(|| "status".to_string());
    let stored = live.pointer("/metadata/managedFields").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let mut entries: Vec<ManagedEntry> = stored.iter().enumerate().filter_map(|(index, entry)| ManagedEntry::parse(index, entry)).collect();
    let is_mine = |entry: &ManagedEntry| entry.manager == request.manager && entry.operation == "Apply" && entry.subresource == subresource;

    let conflicts = find_conflicts(live, &scoped, &applied_set, &entries, &is_mine);
    if !conflicts.is_empty() {
        if !request.force {
            return Err(conflict_error(request, live, &entries, &conflicts));
        }
        for (index, path) in &conflicts {
            entries[*index].fields.remove(path);
            entries[*index].stored = None;
        }
    }

    let mut merged = live.clone();
    fields::merge(&mut merged, &scoped, &mut FieldPath::new(), request.resource);

    let previously_owned = entries.iter().find(|entry| is_mine(entry)).map(|entry| entry.fields.clone()).unwrap_or_default();
    let others: Vec<&FieldSet> = entries.iter().filter(|entry| !is_mine(entry)).map(|entry| &entry.fields).collect();
    for path in previously_owned.difference(&applied_set) {
        let still_wanted = has_extension(&applied_set, path) || has_prefix(&applied_set, path);
        let owned_elsewhere = others.iter().any(|set| has_extension(set, path));
        if !still_wanted && !owned_elsewhere {
            fields::remove(&mut merged, path);
        }
    }

    match entries.iter_mut().find(|entry| is_mine(entry)) {
        Some(entry) => {
            if entry.fields != applied_set {
                entry.stored = None;
            }
            entry.fields = applied_set;
            entry.time = json!(request.now);
            entry.api_version = request.resource.api_version();
        }
        None => entries.push(ManagedEntry {
            manager: request.manager.to_string(),
            operation: "Apply".into(),
            subresource,
            api_version: request.resource.api_version(),
            time: json!(request.now),
            fields: applied_set,
            stored: None,
        }),
    }
    entries.retain(|entry| !entry.fields.is_empty());
    merged["metadata"]["managedFields"] = Value::Array(entries.iter().map(|entry| entry.to_json(stored)).collect());
    Ok(merged)
}

/// The part of the configuration this apply writes.
fn scoped_config(request: &ApplyRequest) -> Value {
    let mut scoped = request.config.clone();
    match request.scope {
        Scope::Status => {
            let mut only_status = Map::new();
            if let Some(status) = scoped.get("status") {
                only_status.insert("status".into(), status.clone());
            }
            Value::Object(only_status)
        }
        Scope::Main => {
            if request.resource.has_status
                && let Some(fields) = scoped.as_object_mut()
            {
                fields.remove("status");
            }
            scoped
        }
    }
}

/// Paths another manager owns where the applied value differs from the live one, with that manager's index.
fn find_conflicts(
    live: &Value,
    scoped: &Value,
    applied_set: &FieldSet,
    entries: &[ManagedEntry],
    is_mine: &dyn Fn(&ManagedEntry) -> bool,
) -> Vec<(usize, FieldPath)> {
    let mut conflicts = Vec::new();
    for path in applied_set {
        // List items are compared through their fields, not as a whole.
        if matches!(path.last(), Some(PathElement::Key(_) | PathElement::Value(_))) {
            continue;
        }
        if fields::get(live, path) == fields::get(scoped, path) {
            continue;
        }
        for (index, entry) in entries.iter().enumerate() {
            if !is_mine(entry) && entry.fields.contains(path) {
                conflicts.push((index, path.clone()));
            }
        }
    }
    conflicts
}

fn conflict_error(request: &ApplyRequest, live: &Value, entries: &[ManagedEntry], conflicts: &[(usize, FieldPath)]) -> ApiError {
    let manager_of = |index: usize| entries.get(index).map(|entry| entry.manager.clone()).unwrap_or_default();
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(index, path)| {
            json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{}\"", manager_of(*index)), "field": fields::display(path)})
        })
        .collect();
    let lines: Vec<String> =
        conflicts.iter().map(|(index, path)| format!("- conflict with \"{}\": {}", manager_of(*index), fields::display(path))).collect();
    let count = conflicts.len();
    let plural = if count == 1 { "" } else { "s" };
    let name = live.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    let mut error = ApiError::about(
        Reason::Conflict,
        request.resource,
        name,
        format!("Apply failed with {count} conflict{plural}:\n{}", lines.join("\n")),
    );
    if let Some(details) = error.details.as_mut() {
        details["causes"] = Value::Array(causes);
    }
    error
}

/// Whether `set` holds `path` or a path below it.
fn has_extension(set: &FieldSet, path: &FieldPath) -> bool {
    set.range(path.clone()..).next().is_some_and(|candidate| candidate.starts_with(path))
}

/// Whether `set` holds a path strictly above `path` (a leaf that now replaces this subtree).
fn has_prefix(set: &FieldSet, path: &FieldPath) -> bool {
    (1..path.len()).any(|length| set.contains(&path[..length]))
}
