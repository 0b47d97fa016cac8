//! Field paths and field sets as server-side apply tracks them (`metadata.managedFields[].fieldsV1`), and
//! the list-aware merge that apply and strategic merge patch share. Written by hand: no crate implements
//! Kubernetes' structured-merge-diff in Rust.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::resources::{ListType, ResourceType};

/// One step of a path into an object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathElement {
    /// A field of an object (`f:name`).
    Field(String),
    /// An item of a map-typed list, by its key fields as a JSON object with sorted keys (`k:{"name":"a"}`).
    Key(String),
    /// An item of a set-typed list, by its JSON value (`v:"a"`).
    Value(String),
}

pub type FieldPath = Vec<PathElement>;

/// The fields one manager owns: leaves, and list items (a path ending in `Key` or `Value`).
pub type FieldSet = BTreeSet<FieldPath>;

/// Metadata fields the server sets; an apply configuration never owns them.
const SERVER_METADATA: [&str; 10] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// The schema path of a list at `path`: field names joined by dots, `[]` for each list item on the way.
pub fn schema_path(path: &[PathElement]) -> String {
    let mut text = String::new();
    for element in path {
        match element {
            PathElement::Field(name) => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(name);
            }
            PathElement::Key(_) | PathElement::Value(_) => text.push_str("[]"),
        }
    }
    text
}

/// The key of a map-list item: its key fields as a sorted JSON object, or `None` when one is missing.
pub fn item_key(item: &Value, keys: &[String]) -> Option<String> {
    let mut sorted: Vec<&String> = keys.iter().collect();
    sorted.sort();
    let mut parts = Vec::with_capacity(sorted.len());
    for key in sorted {
        let value = item.get(key)?;
        parts.push(format!("{}:{}", Value::String(key.clone()), value));
    }
    Some(format!("{{{}}}", parts.join(",")))
}

/// Whether `item` is the list item named by a `Key` element.
fn item_has_key(item: &Value, key: &str) -> bool {
    match serde_json::from_str::<Map<String, Value>>(key) {
        Ok(fields) => fields.iter().all(|(name, value)| item.get(name) == Some(value)),
        Err(_) => false,
    }
}

/// Whether `item` is the set member named by a `Value` element.
fn is_member(item: &Value, value: &str) -> bool {
    serde_json::from_str::<Value>(value).is_ok_and(|wanted| *item == wanted)
}

/// The fields an apply configuration sets. `null` values are not owned (they ask for removal).
pub fn collect(config: &Value, resource: &ResourceType) -> FieldSet {
    let mut set = FieldSet::new();
    let mut path = FieldPath::new();
    if let Some(fields) = config.as_object() {
        for (name, value) in fields {
            match name.as_str() {
                "apiVersion" | "kind" => {}
                "metadata" => {
                    path.push(PathElement::Field(name.clone()));
                    for (field, value) in value.as_object().into_iter().flatten() {
                        if !SERVER_METADATA.contains(&field.as_str()) {
                            path.push(PathElement::Field(field.clone()));
                            collect_value(value, &mut path, resource, &mut set);
                            path.pop();
                        }
                    }
                    path.pop();
                }
                _ => {
                    path.push(PathElement::Field(name.clone()));
                    collect_value(value, &mut path, resource, &mut set);
                    path.pop();
                }
            }
        }
    }
    set
}

fn collect_value(value: &Value, path: &mut FieldPath, resource: &ResourceType, set: &mut FieldSet) {
    match value {
        Value::Null => {}
        Value::Object(fields) if !fields.is_empty() => {
            for (name, child) in fields {
                path.push(PathElement::Field(name.clone()));
                collect_value(child, path, resource, set);
                path.pop();
            }
        }
        Value::Array(items) => match resource.list_type(&schema_path(path)) {
            ListType::Map { keys } => {
                for item in items {
                    let Some(key) = item_key(item, &keys) else {
                        // An item without its key cannot be tracked separately: own the list as a whole.
                        set.insert(path.clone());
                        continue;
                    };
                    path.push(PathElement::Key(key));
                    set.insert(path.clone());
                    for (name, child) in item.as_object().into_iter().flatten() {
                        path.push(PathElement::Field(name.clone()));
                        collect_value(child, path, resource, set);
                        path.pop();
                    }
                    path.pop();
                }
            }
            ListType::Set => {
                for item in items {
                    path.push(PathElement::Value(item.to_string()));
                    set.insert(path.clone());
                    path.pop();
                }
            }
            ListType::Atomic => {
                set.insert(path.clone());
            }
        },
        _ => {
            set.insert(path.clone());
        }
    }
}

/// The `fieldsV1` tree of a field set.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for element in path {
            let name = match element {
                PathElement::Field(name) => format!("f:{name}"),
                PathElement::Key(key) => format!("k:{key}"),
                PathElement::Value(value) => format!("v:{value}"),
            };
            node = node.entry(name).or_insert_with(|| Value::Object(Map::new())).as_object_mut().expect("field set nodes are objects");
        }
        if matches!(path.last(), Some(PathElement::Key(_))) {
            node.insert(".".into(), Value::Object(Map::new()));
        }
    }
    Value::Object(root)
}

/// The field set of a `fieldsV1` tree; unknown entries are ignored.
pub fn from_fields_v1(tree: &Value) -> FieldSet {
    let mut set = FieldSet::new();
    walk_fields_v1(tree, &mut FieldPath::new(), &mut set);
    set
}

fn walk_fields_v1(node: &Value, path: &mut FieldPath, set: &mut FieldSet) {
    let Some(children) = node.as_object() else { return };
    if children.is_empty() {
        if !path.is_empty() {
            set.insert(path.clone());
        }
        return;
    }
    for (name, child) in children {
        let element = if name == "." {
            set.insert(path.clone());
            continue;
        } else if let Some(field) = name.strip_prefix("f:") {
            PathElement::Field(field.to_string())
        } else if let Some(key) = name.strip_prefix("k:") {
            PathElement::Key(key.to_string())
        } else if let Some(value) = name.strip_prefix("v:") {
            PathElement::Value(value.to_string())
        } else {
            continue;
        };
        path.push(element);
        walk_fields_v1(child, path, set);
        path.pop();
    }
}

/// The value at `path`, if present.
pub fn get<'a>(object: &'a Value, path: &[PathElement]) -> Option<&'a Value> {
    let mut current = object;
    for element in path {
        current = match element {
            PathElement::Field(name) => current.get(name)?,
            PathElement::Key(key) => current.as_array()?.iter().find(|item| item_has_key(item, key))?,
            PathElement::Value(value) => current.as_array()?.iter().find(|item| is_member(item, value))?,
        };
    }
    Some(current)
}

/// Removes the field or list item at `path`; nothing happens when it is absent.
pub fn remove(object: &mut Value, path: &[PathElement]) {
    let Some((last, parent_path)) = path.split_last() else { return };
    let mut parent = object;
    for element in parent_path {
        let next = match element {
            PathElement::Field(name) => parent.get_mut(name),
            PathElement::Key(key) => parent.as_array_mut().and_then(|items| items.iter_mut().find(|item| item_has_key(item, key))),
            PathElement::Value(value) => parent.as_array_mut().and_then(|items| items.iter_mut().find(|item| is_member(item, value))),
        };
        match next {
            Some(next) => parent = next,
            None => return,
        }
    }
    match last {
        PathElement::Field(name) => {
            if let Some(fields) = parent.as_object_mut() {
                fields.remove(name);
            }
        }
        PathElement::Key(key) => {
            if let Some(items) = parent.as_array_mut() {
                items.retain(|item| !item_has_key(item, key));
            }
        }
        PathElement::Value(value) => {
            if let Some(items) = parent.as_array_mut() {
                items.retain(|item| !is_member(item, value));
            }
        }
    }
}

/// A path as the API server prints it in conflict messages: `.spec.lines[number="1"].label`.
pub fn display(path: &[PathElement]) -> String {
    let mut text = String::new();
    for element in path {
        match element {
            PathElement::Field(name) => {
                text.push('.');
                text.push_str(name);
            }
            PathElement::Key(key) => {
                let fields: Map<String, Value> = serde_json::from_str(key).unwrap_or_default();
                let parts: Vec<String> = fields.iter().map(|(name, value)| format!("{name}={value}")).collect();
                text.push_str(&format!("[{}]", parts.join(",")));
            }
            PathElement::Value(value) => text.push_str(&format!("[={value}]")),
        }
    }
    text
}

/// Merges `patch` into `live`: objects field by field (`null` removes a field), map-typed lists item by
/// item on their keys, set-typed lists by union, everything else replaced. Strategic merge patch's
/// `$patch: delete` on a map-list item removes that item; its other `$` directives are ignored.
pub fn merge(live: &mut Value, patch: &Value, path: &mut FieldPath, resource: &ResourceType) {
    match (live, patch) {
        (Value::Object(live_fields), Value::Object(patch_fields)) => {
            for (name, value) in patch_fields {
                if name.starts_with('$') {
                    continue;
                }
                if value.is_null() {
                    live_fields.remove(name);
                    continue;
                }
                match live_fields.get_mut(name) {
                    Some(existing) => {
                        path.push(PathElement::Field(name.clone()));
                        merge(existing, value, path, resource);
                        path.pop();
                    }
                    None => {
                        live_fields.insert(name.clone(), without_directives(value));
                    }
                }
            }
        }
        (Value::Array(live_items), Value::Array(patch_items)) => match resource.list_type(&schema_path(path)) {
            ListType::Map { keys } => {
                for item in patch_items {
                    let key = item_key(item, &keys);
                    let position =
                        key.as_ref().and_then(|key| live_items.iter().position(|live| item_key(live, &keys).as_ref() == Some(key)));
                    let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                    match (position, key) {
                        (Some(position), _) if delete => {
                            live_items.remove(position);
                        }
                        (Some(position), Some(key)) => {
                            path.push(PathElement::Key(key));
                            merge(&mut live_items[position], item, path, resource);
                            path.pop();
                        }
                        _ if delete => {}
                        _ => live_items.push(without_directives(item)),
                    }
                }
            }
            ListType::Set => {
                for item in patch_items {
                    if !live_items.contains(item) {
                        live_items.push(item.clone());
                    }
                }
            }
            ListType::Atomic => *live_items = patch_items.iter().map(without_directives).collect(),
        },
        (live, patch) => *live = without_directives(patch),
    }
}

/// A copy without strategic-merge directives (`$patch`, `$setElementOrder/…`) and without `null` fields.
fn without_directives(value: &Value) -> Value {
    match value {
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .filter(|(name, value)| !name.starts_with('$') && !value.is_null())
                .map(|(name, value)| (name.clone(), without_directives(value)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_directives).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn phone_resource() -> ResourceType {
        let mut resource = ResourceType::new("callguard.io", "v1alpha1", "Phone", "phones", true, true);
        resource.custom = true;
        resource.list_types.insert("spec.lines".into(), ListType::Map { keys: vec!["number".into()] });
        resource.list_types.insert("spec.codecs".into(), ListType::Set);
        resource
    }

    #[test]
    fn fields_v1_round_trip() {
        let config = json!({
            "apiVersion": "callguard.io/v1alpha1", "kind": "Phone",
            "metadata": {"name": "sep1", "labels": {"site": "a"}, "finalizers": ["x"]},
            "spec": {"model": "8845", "lines": [{"number": "1", "label": "front"}], "codecs": ["g711"], "other": []},
        });
        let set = collect(&config, &phone_resource());
        let tree = to_fields_v1(&set);
        assert_eq!(tree["f:metadata"]["f:finalizers"]["v:\"x\""], json!({}));
        assert_eq!(tree["f:spec"]["f:lines"]["k:{\"number\":\"1\"}"]["."], json!({}));
        assert_eq!(tree["f:spec"]["f:lines"]["k:{\"number\":\"1\"}"]["f:label"], json!({}));
        assert!(tree["f:metadata"].get("f:name").is_none());
        assert_eq!(from_fields_v1(&tree), set);
    }

    #[test]
    fn merge_and_remove_by_key() {
        let resource = phone_resource();
        let mut live = json!({"spec": {"lines": [{"number": "1", "label": "a"}, {"number": "2"}], "codecs": ["g711"]}});
        merge(&mut live, &json!({"spec": {"lines": [{"number": "2", "label": "b"}], "codecs": ["g722"]}}), &mut Vec::new(), &resource);
        assert_eq!(live["spec"]["lines"], json!([{"number": "1", "label": "a"}, {"number": "2", "label": "b"}]));
        assert_eq!(live["spec"]["codecs"], json!(["g711", "g722"]));
        let key = item_key(&json!({"number": "1"}), &["number".to_string()]).unwrap();
        assert_eq!(
            get(&live, &[PathElement::Field("spec".into()), PathElement::Field("lines".into()), PathElement::Key(key.clone())]).unwrap()["label"],
            "a"
        );
        remove(&mut live, &[PathElement::Field("spec".into()), PathElement::Field("lines".into()), PathElement::Key(key)]);
        assert_eq!(live["spec"]["lines"], json!([{"number": "2", "label": "b"}]));
    }
}
