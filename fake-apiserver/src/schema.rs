//! What a real API server checks of a custom resource on every create and update (status writes
//! included): the CRD's structural schema, walked as the API server walks it (types, `nullable`,
//! `x-kubernetes-int-or-string`, `enum`, `required`, string lengths and `pattern`, numeric bounds,
//! item counts), then its CEL rules (`x-kubernetes-validations`, through kube's `cel` feature, with
//! the stored object as `oldSelf` for transition rules). A refusal is a 422 `Invalid` with a cause per
//! field, worded as the API server words them. An update is ratcheted, as Kubernetes does since 1.30:
//! a fault the stored object already had does not refuse it (a status written on an object stored
//! under an older schema goes through), and a top-level field the update leaves as it was (the
//! `spec` of a status write) is not checked again, since whatever it holds was admitted or ratcheted.
//!
//! Approximated: unknown fields are kept, not pruned; `format` is not checked; CEL runs only when the
//! schema holds (as the API server skips rules under invalid values).

use kube::core::cel::{CompiledSchema, Validator, compile_schema};
use serde_json::{Value, json};

use crate::resources::ResourceType;
use crate::status::{ApiError, Reason};

/// A CRD version's schema, compiled once.
pub struct SchemaValidation {
    schema: Value,
    cel: CompiledSchema,
    /// The top-level fields with a rule at or below them: the others are not walked by CEL.
    ruled: std::collections::BTreeSet<String>,
}

impl std::fmt::Debug for SchemaValidation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaValidation").finish_non_exhaustive()
    }
}

/// One refused field.
#[derive(PartialEq)]
struct Cause {
    field: String,
    message: String,
}

impl SchemaValidation {
    pub fn of(schema: &Value) -> SchemaValidation {
        let cel = compile_schema(schema);
        let ruled = cel.properties.iter().filter(|(_, compiled)| has_rules(compiled)).map(|(name, _)| name.clone()).collect();
        SchemaValidation { schema: schema.clone(), cel, ruled }
    }

    /// Err: the object is refused, every cause listed.
    pub fn admit(&self, resource: &ResourceType, object: &Value, old: Option<&Value>) -> Result<(), ApiError> {
        let mut causes = self.causes(object, old);
        if !causes.is_empty()
            && let Some(old) = old
        {
            let had = self.causes(old, None);
            causes.retain(|cause| !had.contains(cause));
        }
        if causes.is_empty() {
            return Ok(());
        }
        let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        let listed: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        let message = match listed.as_slice() {
            [one] => format!("{}.{} \"{name}\" is invalid: {one}", resource.kind, resource.group),
            many => format!("{}.{} \"{name}\" is invalid: [{}]", resource.kind, resource.group, many.join(", ")),
        };
        let mut error = ApiError::about(Reason::Invalid, resource, name, message);
        if let Some(details) = error.details.as_mut() {
            details["causes"] =
                causes.iter().map(|c| json!({"reason": "FieldValueInvalid", "message": c.message, "field": c.field})).collect();
        }
        Err(error)
    }
}

impl SchemaValidation {
    fn causes(&self, object: &Value, old: Option<&Value>) -> Vec<Cause> {
        let mut causes = Vec::new();
        // Rules on the root see every field: with one, the whole object is checked.
        match (object.as_object(), old) {
            (Some(fields), Some(old)) if self.cel.validations.is_empty() => {
                let changed: Vec<(&String, &Value)> =
                    fields.iter().filter(|(name, value)| old.get(name.as_str()) != Some(*value)).collect();
                self.changed_fields(fields, &changed, old, &mut causes);
            }
            _ => {
                structural(&self.schema, object, "", &mut causes);
                if causes.is_empty()
                    && let Err(errors) = validator().validate_compiled(&self.cel, object, old)
                {
                    causes.extend(errors.iter().map(|e| Cause { field: e.field_path.clone(), message: e.message.clone() }));
                }
            }
        }
        causes
    }

    /// The root's own checks, then those of the top-level fields an update changed.
    fn changed_fields(&self, fields: &serde_json::Map<String, Value>, changed: &[(&String, &Value)], old: &Value, causes: &mut Vec<Cause>) {
        missing_required(&self.schema, fields, "", causes);
        for (name, value) in changed {
            if let Some(field_schema) = self.schema.pointer(&format!("/properties/{name}")) {
                structural(field_schema, value, name, causes);
            }
        }
        if !causes.is_empty() {
            return;
        }
        for (name, value) in changed {
            let Some(compiled) = self.cel.properties.get(name.as_str()).filter(|_| self.ruled.contains(name.as_str())) else { continue };
            if let Err(errors) = validator().validate_compiled(compiled, value, old.get(name.as_str())) {
                causes.extend(errors.iter().map(|e| Cause { field: under(name, &e.field_path), message: e.message.clone() }));
            }
        }
    }
}

/// Whether any rule sits at or below `compiled`. kube's validator turns every value it walks into a
/// CEL value, rules or none: a status write's status and metadata, which no rule reads, are not
/// walked at all, as the API server does not. Found once per schema (`SchemaValidation::ruled`).
fn has_rules(compiled: &CompiledSchema) -> bool {
    !compiled.validations.is_empty()
        || compiled.properties.values().any(has_rules)
        || compiled.items.as_deref().is_some_and(has_rules)
        || compiled.additional_properties.as_deref().is_some_and(has_rules)
        || [&compiled.all_of, &compiled.one_of, &compiled.any_of].into_iter().flatten().any(has_rules)
}

/// A field path found under the top-level field `name`, as seen from the root.
fn under(name: &str, path: &str) -> String {
    match path {
        "" => name.to_owned(),
        _ if path.starts_with('.') || path.starts_with('[') => format!("{name}{path}"),
        _ => format!("{name}.{path}"),
    }
}

fn validator() -> &'static Validator {
    static VALIDATOR: std::sync::OnceLock<Validator> = std::sync::OnceLock::new();
    VALIDATOR.get_or_init(Validator::new)
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() { name.to_string() } else { format!("{path}.{name}") }
}

/// The API server's own wording of a value in a message.
fn shown(value: &Value) -> String {
    match value {
        Value::String(text) => format!("{text:?}"),
        other => other.to_string(),
    }
}

fn type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Hand-written: the API server's structural checks of a value against an OpenAPI v3 schema (no
/// crate walks a Kubernetes structural schema with its extensions and messages).
fn structural(schema: &Value, value: &Value, path: &str, causes: &mut Vec<Cause>) {
    let mut refuse = |message: String| causes.push(Cause { field: path.to_string(), message });
    if value.is_null() {
        if schema.get("nullable") != Some(&json!(true)) && schema.get("type").is_some() {
            refuse(format!("Invalid value: \"null\": {path} in body must be of type {}", schema["type"].as_str().unwrap_or("object")));
        }
        return;
    }
    let int_or_string = schema.get("x-kubernetes-int-or-string") == Some(&json!(true));
    if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        let actual = type_of(value);
        let fits = actual == expected
            || (expected == "number" && actual == "integer")
            || (int_or_string && matches!(actual, "integer" | "string"));
        if !fits {
            refuse(format!("Invalid value: \"{actual}\": {path} in body must be of type {expected}: {}", shown(value)));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let supported: Vec<String> = allowed.iter().map(shown).collect();
        refuse(format!("Unsupported value: {}: supported values: {}", shown(value), supported.join(", ")));
    }
    let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
    match value {
        Value::String(text) => {
            let length = text.chars().count() as f64;
            if bound("minLength").is_some_and(|min| length < min) {
                refuse(format!("Invalid value: {}: {path} in body should be at least {} chars long", shown(value), schema["minLength"]));
            }
            if bound("maxLength").is_some_and(|max| length > max) {
                refuse(format!("Too long: may not be more than {} bytes", schema["maxLength"]));
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
                && regex::Regex::new(pattern).is_ok_and(|re| !re.is_match(text))
            {
                refuse(format!("Invalid value: {}: {path} in body should match '{pattern}'", shown(value)));
            }
        }
        Value::Number(number) => {
            let number = number.as_f64().unwrap_or_default();
            if bound("minimum").is_some_and(|min| number < min) {
                refuse(format!("Invalid value: {}: {path} in body should be greater than or equal to {}", shown(value), schema["minimum"]));
            }
            if bound("maximum").is_some_and(|max| number > max) {
                refuse(format!("Invalid value: {}: {path} in body should be less than or equal to {}", shown(value), schema["maximum"]));
            }
        }
        Value::Array(items) => {
            let count = items.len() as f64;
            if bound("minItems").is_some_and(|min| count < min) {
                refuse(format!("Invalid value: {count}: {path} in body should have at least {} items", schema["minItems"]));
            }
            if bound("maxItems").is_some_and(|max| count > max) {
                refuse(format!("Too many: {count}: must have at most {} items", schema["maxItems"]));
            }
            if let Some(item_schema) = schema.get("items") {
                for (index, item) in items.iter().enumerate() {
                    structural(item_schema, item, &format!("{path}[{index}]"), causes);
                }
            }
        }
        Value::Object(fields) => {
            missing_required(schema, fields, path, causes);
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (name, field) in fields {
                match (properties.and_then(|p| p.get(name)), additional) {
                    (Some(field_schema), _) | (None, Some(field_schema)) => structural(field_schema, field, &join(path, name), causes),
                    (None, None) => {}
                }
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
}

/// A cause for each field `schema` requires that `fields` (the object at `path`) lacks.
fn missing_required(schema: &Value, fields: &serde_json::Map<String, Value>, path: &str, causes: &mut Vec<Cause>) {
    for required in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        if !fields.contains_key(required) {
            causes.push(Cause { field: join(path, required), message: "Required value".into() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phone_schema() -> SchemaValidation {
        SchemaValidation::of(&json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["model"],
                    "properties": {
                        "model": {"type": "string", "enum": ["7941", "7961"]},
                        "lines": {"type": "array", "maxItems": 2, "items": {"type": "string", "pattern": "^[0-9]+$"}},
                        "port": {"type": "integer", "minimum": 1024, "maximum": 65535},
                        "note": {"type": "string", "nullable": true}
                    },
                    "x-kubernetes-validations": [{"rule": "!has(self.port) || self.port != 5060", "message": "5060 is the SIP port", "fieldPath": ".port"}]
                },
                "status": {
                    "type": "object",
                    "properties": {"state": {"type": "string", "enum": ["Ready", "Failed"]}},
                    "x-kubernetes-validations": [{"rule": "!has(self.state) || self.state != 'Failed' || has(self.reason)", "message": "a failure needs a reason"}]
                }
            }
        }))
    }

    fn phone() -> ResourceType {
        ResourceType::new("callguard.io", "v1alpha1", "Phone", "phones", true, true)
    }

    fn causes(object: Value) -> Vec<String> {
        match phone_schema().admit(&phone(), &object, None) {
            Ok(()) => Vec::new(),
            Err(error) => {
                error.details.unwrap()["causes"].as_array().unwrap().iter().map(|c| c["field"].as_str().unwrap().to_owned()).collect()
            }
        }
    }

    #[test]
    fn a_valid_object_is_admitted_and_null_is_taken_where_nullable() {
        assert!(
            causes(json!({"metadata": {"name": "a"}, "spec": {"model": "7941", "lines": ["1001"], "port": 5070, "note": null}})).is_empty()
        );
    }

    #[test]
    fn each_structural_fault_is_a_cause_on_its_field() {
        let found = causes(json!({"metadata": {"name": "a"}, "spec": {"model": "7942", "lines": ["10a", "1", "2"], "port": 80}}));
        assert_eq!(found, ["spec.lines", "spec.lines[0]", "spec.model", "spec.port"]);
        assert_eq!(causes(json!({"spec": {"lines": "1001"}})), ["spec.model", "spec.lines"]);
    }

    #[test]
    fn cel_rules_run_once_the_schema_holds_and_the_message_is_the_rules() {
        let error =
            phone_schema().admit(&phone(), &json!({"metadata": {"name": "a"}, "spec": {"model": "7941", "port": 5060}}), None).unwrap_err();
        assert_eq!(error.code(), 422);
        assert!(
            error.message.contains("Phone.callguard.io \"a\" is invalid") && error.message.contains("5060 is the SIP port"),
            "{}",
            error.message
        );
    }

    /// Rules are found wherever they sit; a subtree without any is not walked by the CEL validator.
    #[test]
    fn rules_are_found_at_any_depth() {
        let schema = phone_schema();
        assert!(has_rules(&schema.cel.properties["spec"]) && has_rules(&schema.cel.properties["status"]));
        assert_eq!(schema.ruled.iter().collect::<Vec<_>>(), ["spec", "status"]);
        let deep = compile_schema(&json!({"type": "object", "properties": {"lines": {"type": "array", "items": {
            "type": "object", "x-kubernetes-validations": [{"rule": "has(self.number)"}]}}}}));
        assert!(has_rules(&deep));
        let plain = compile_schema(&json!({"type": "object", "properties": {"lines": {"type": "array", "items": {"type": "string"}},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}}}}));
        assert!(!has_rules(&plain));
    }

    /// A fault the stored object already had does not refuse an update; a new one does.
    #[test]
    fn an_update_is_refused_only_for_a_fault_it_brings() {
        let stored = json!({"metadata": {"name": "a"}, "spec": {"model": "7942"}});
        let with_status = json!({"metadata": {"name": "a"}, "spec": {"model": "7942"}, "status": {}});
        assert!(phone_schema().admit(&phone(), &with_status, Some(&stored)).is_ok());
        let worse = json!({"metadata": {"name": "a"}, "spec": {"model": "7942", "port": 1}});
        assert!(phone_schema().admit(&phone(), &worse, Some(&stored)).is_err());
    }

    /// An update checks what it changes, named from the root, whatever the fields it left alone hold.
    #[test]
    fn an_update_checks_the_fields_it_changes_and_names_them_from_the_root() {
        let schema = phone_schema();
        let update = |old: Value, new: Value| match schema.admit(&phone(), &new, Some(&old)) {
            Ok(()) => Vec::new(),
            Err(error) => {
                error.details.unwrap()["causes"].as_array().unwrap().iter().map(|c| c["field"].as_str().unwrap().to_owned()).collect()
            }
        };
        let stored = json!({"metadata": {"name": "a"}, "spec": {"model": "7941"}});
        let with = |status: Value| json!({"metadata": {"name": "a"}, "spec": {"model": "7941"}, "status": status});
        assert_eq!(update(stored.clone(), with(json!({"state": "Ready"}))), Vec::<String>::new());
        assert_eq!(update(stored.clone(), with(json!({"state": "Gone"}))), ["status.state"]);
        assert_eq!(update(stored.clone(), with(json!({"state": "Failed"}))), ["status"]);
        let spec = json!({"metadata": {"name": "a"}, "spec": {"model": "7941", "port": 5060}});
        assert_eq!(update(stored, spec), ["spec.port"]);
    }
}
