//! Layers one and two of validation, run offline: the CRD's OpenAPI schema (through the
//! `jsonschema` crate) and its CEL `x-kubernetes-validations` (through kube's `cel` feature), as
//! the API server would run them at `kubectl apply`.

use std::collections::{BTreeMap, HashSet};
use std::sync::OnceLock;

use jsonschema::error::ValidationErrorKind;
use jsonschema::paths::LocationSegment;
use kube::core::cel::{CompiledSchema, Validator, compile_schema};
use regex::Regex;
use serde_json::{Value, json};

use super::{Violation, closest};
use crate::api;

/// The compiled validators of one kind.
pub struct KindSchema {
    pub kind: String,
    /// `openAPIV3Schema` as the CRD carries it.
    pub openapi: Value,
    json_schema: jsonschema::Validator,
    cel: CompiledSchema,
    /// The seed section of the kind as a whole, from its description.
    section: String,
}

/// Every kind's compiled validators, built once.
pub fn kind_schemas() -> &'static BTreeMap<String, KindSchema> {
    static SCHEMAS: OnceLock<BTreeMap<String, KindSchema>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        api::crds()
            .into_iter()
            .map(|crd| {
                let kind = crd.spec.names.kind.clone();
                let openapi = serde_json::to_value(
                    crd.spec.versions[0].schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).expect("derived CRDs carry a schema"),
                )
                .expect("a schema serializes");
                let json_schema = jsonschema::options()
                    .with_draft(jsonschema::Draft::Draft4)
                    .should_validate_formats(false)
                    .build(&to_json_schema(&openapi, true))
                    .expect("the derived schema is a valid JSON schema");
                let cel = compile_schema(&openapi);
                let section = section_of(openapi.get("description")).unwrap_or_default();
                (kind.clone(), KindSchema { kind, openapi, json_schema, cel, section })
            })
            .collect()
    })
}

/// Translates a structural OpenAPI v3 schema into JSON Schema with the API server's semantics:
/// unknown fields are rejected (strict field validation), `nullable` admits null, and
/// `metadata.name` must be present and a DNS-1123 subdomain.
pub fn to_json_schema(openapi: &Value, root: bool) -> Value {
    let Value::Object(map) = openapi else { return openapi.clone() };
    let mut out = serde_json::Map::new();
    for (key, value) in map {
        match key.as_str() {
            "properties" => {
                let props = value.as_object().map(|p| p.iter().map(|(k, v)| (k.clone(), to_json_schema(v, false))).collect());
                out.insert(key.clone(), Value::Object(props.unwrap_or_default()));
            }
            "items" | "additionalProperties" if value.is_object() => {
                out.insert(key.clone(), to_json_schema(value, false));
            }
            "allOf" | "anyOf" | "oneOf" => {
                let list = value.as_array().map(|l| l.iter().map(|v| to_json_schema(v, false)).collect());
                out.insert(key.clone(), Value::Array(list.unwrap_or_default()));
            }
            "nullable" | "x-kubernetes-int-or-string" => {}
            k if k.starts_with("x-kubernetes-") || k == "description" || k == "format" => {}
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    let preserve = map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if map.contains_key("properties") && !map.contains_key("additionalProperties") && !preserve {
        out.insert("additionalProperties".into(), Value::Bool(false));
    }
    if map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        out.remove("type");
        out.insert("anyOf".into(), json!([{"type": "integer"}, {"type": "string"}]));
    }
    if map.get("nullable") == Some(&Value::Bool(true)) {
        if let Some(Value::String(t)) = out.get("type").cloned() {
            out.insert("type".into(), json!([t, "null"]));
        }
        if let Some(Value::Array(options)) = out.get_mut("enum") {
            options.push(Value::Null);
        }
    }
    if root {
        // The CRD schema leaves metadata open; the API server checks it itself.
        let props = out.entry("properties").or_insert_with(|| json!({})).as_object_mut().expect("properties is an object");
        props.insert("apiVersion".into(), json!({"type": "string"}));
        props.insert("kind".into(), json!({"type": "string"}));
        props.insert(
            "metadata".into(),
            json!({
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "maxLength": 253, "pattern": api::DNS1123_SUBDOMAIN},
                    "namespace": {"type": "string", "maxLength": 63, "pattern": api::DNS1123_LABEL}
                }
            }),
        );
        let required = out.entry("required").or_insert_with(|| json!([]));
        for field in ["apiVersion", "kind", "metadata"] {
            if let Some(list) = required.as_array_mut().filter(|l| !l.contains(&json!(field))) {
                list.push(json!(field));
            }
        }
    }
    Value::Object(out)
}

impl KindSchema {
    /// Every schema and CEL violation of one object.
    pub fn check(&self, object: &Value) -> Vec<Violation> {
        let mut violations: Vec<Violation> = self.json_schema.iter_errors(object).flat_map(|e| self.schema_violations(&e)).collect();
        check_list_types(&self.openapi, object, String::new(), &mut |field, message| {
            let section = self.section_at(&field);
            violations.push(Violation::new(field, format!("{message} ({section})")));
        });
        // CEL rules assume a structurally valid object, as the API server runs them after the schema.
        if violations.is_empty()
            && let Err(errors) = cel_validator().validate_compiled(&self.cel, object, None)
        {
            violations.extend(errors.iter().map(|e| Violation::new(e.field_path.clone(), e.message.clone())));
        }
        violations
    }

    fn schema_violations(&self, error: &jsonschema::ValidationError<'_>) -> Vec<Violation> {
        let mut field = dotted(error.instance_path().segments());
        let message = match error.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                let allowed = self.allowed_fields(&field);
                return unexpected
                    .iter()
                    .map(|name| {
                        let hint =
                            closest(name, allowed.iter().map(String::as_str)).map(|c| format!("; did you mean {c:?}?")).unwrap_or_default();
                        let field = join(&field, name);
                        let section = self.section_at(&field);
                        Violation::new(field, format!("unknown field {name:?}{hint} ({section})"))
                    })
                    .collect();
            }
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().unwrap_or_default().to_string();
                // A field missing because its name was mistyped: where unknown fields are refused,
                // the typo's own violation names this field; elsewhere (metadata) say it here.
                let allowed = self.allowed_fields(&field);
                let strangers = error.instance().as_object().into_iter().flat_map(|o| o.keys()).filter(|k| !allowed.contains(k));
                let typo = closest(&name, strangers.map(String::as_str)).map(str::to_string);
                let refused = field != "metadata" && self.schema_at(&field).is_some_and(refuses_unknown_fields);
                field = join(&field, &name);
                match typo {
                    Some(_) if refused => return Vec::new(),
                    Some(typo) => format!("required field is missing; is {typo:?} a typo of {name:?}?"),
                    None => "required field is missing".to_string(),
                }
            }
            ValidationErrorKind::Enum { options } => {
                let options: Vec<String> =
                    options.as_array().into_iter().flatten().filter(|o| !o.is_null()).map(|o| o.to_string()).collect();
                format!("{} is not one of {}", error.instance(), options.join(", "))
            }
            ValidationErrorKind::Minimum { limit } => format!("{} is less than the minimum {}", error.instance(), number(limit)),
            ValidationErrorKind::Maximum { limit } => format!("{} is greater than the maximum {}", error.instance(), number(limit)),
            ValidationErrorKind::Pattern { pattern } => format!("{} does not match {pattern}", error.instance()),
            ValidationErrorKind::MaxLength { limit } => format!("longer than {limit} characters"),
            ValidationErrorKind::MinLength { limit } => format!("shorter than {limit} characters"),
            ValidationErrorKind::MaxItems { limit } => format!("more than {limit} items"),
            ValidationErrorKind::MinItems { limit } => format!("fewer than {limit} items"),
            _ => error.to_string(),
        };
        let section = self.section_at(&field);
        vec![Violation::new(field, format!("{message} ({section})"))]
    }

    /// The CRD schema of the object at `field`, when the CRD describes it.
    fn schema_at(&self, field: &str) -> Option<&Value> {
        let mut node = &self.openapi;
        for segment in crate::validate::manifest::parse_field_path(field) {
            node = match segment {
                crate::validate::manifest::PathSegment::Key(k) => node.get("properties")?.get(&k)?,
                crate::validate::manifest::PathSegment::Index(_) => node.get("items")?,
            };
        }
        Some(node)
    }

    /// The fields an object at `field` may have: its schema's, the object's own at the root, and
    /// the standard ones of `metadata`.
    fn allowed_fields(&self, field: &str) -> Vec<String> {
        let mut fields: Vec<String> = self
            .schema_at(field)
            .and_then(|s| s.get("properties"))
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        let standard: &[&str] = match field {
            "" => &["apiVersion", "kind", "metadata"],
            "metadata" => &OBJECT_META,
            _ => &[],
        };
        fields.extend(standard.iter().map(|f| f.to_string()));
        fields
    }

    /// The seed section named in the description of the field at `field`, or of its nearest
    /// ancestor that names one, or of the kind.
    pub fn section_at(&self, field: &str) -> String {
        let mut node = &self.openapi;
        let mut section = self.section.clone();
        for segment in crate::validate::manifest::parse_field_path(field) {
            let next = match segment {
                crate::validate::manifest::PathSegment::Key(k) => node.get("properties").and_then(|p| p.get(&k)),
                crate::validate::manifest::PathSegment::Index(_) => node.get("items"),
            };
            let Some(next) = next else { break };
            node = next;
            if let Some(s) = section_of(node.get("description")) {
                section = s;
            }
        }
        section
    }
}

/// The fields of Kubernetes' ObjectMeta that a manifest may carry.
const OBJECT_META: [&str; 15] = [
    "name",
    "namespace",
    "generateName",
    "labels",
    "annotations",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "finalizers",
    "ownerReferences",
    "managedFields",
    "selfLink",
];

/// Whether a structural schema refuses fields it does not list, as [`to_json_schema`] makes it.
fn refuses_unknown_fields(schema: &Value) -> bool {
    schema.get("properties").is_some()
        && schema.get("additionalProperties").is_none()
        && schema.get("x-kubernetes-preserve-unknown-fields") != Some(&Value::Bool(true))
}

fn cel_validator() -> &'static Validator {
    static VALIDATOR: OnceLock<Validator> = OnceLock::new();
    VALIDATOR.get_or_init(Validator::new)
}

/// The parenthesised seed reference that ends a description: `(Table 5-2)`, `(P.3-5)`, `(Chapter 9)`.
fn section_of(description: Option<&Value>) -> Option<String> {
    static SECTION: OnceLock<Regex> = OnceLock::new();
    let re = SECTION.get_or_init(|| Regex::new(r"\(((?:Table|T\d|P\.|Chapter|docs/)[^()]*)\)").expect("valid regex"));
    re.captures_iter(description?.as_str()?).last().map(|c| c[1].to_string())
}

/// CRD bounds are floats (`49151.0`); print whole ones as integers.
fn number(limit: &Value) -> String {
    match limit.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        _ => limit.to_string(),
    }
}

fn dotted<'a>(segments: impl Iterator<Item = LocationSegment<'a>>) -> String {
    let mut out = String::new();
    for segment in segments {
        match segment {
            LocationSegment::Property(p) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&p);
            }
            LocationSegment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() { child.to_string() } else { format!("{parent}.{child}") }
}

/// `x-kubernetes-list-type: set` and `map` demand unique items and unique keys; JSON Schema cannot
/// say so, the API server checks it.
fn check_list_types(schema: &Value, value: &Value, path: String, report: &mut impl FnMut(String, String)) {
    match value {
        Value::Object(map) => {
            let Some(props) = schema.get("properties") else { return };
            for (key, child) in map {
                if let Some(child_schema) = props.get(key) {
                    check_list_types(child_schema, child, join(&path, key), report);
                }
            }
        }
        Value::Array(items) => {
            let list_type = schema.get("x-kubernetes-list-type").and_then(Value::as_str);
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut seen = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                let identity = match list_type {
                    Some("set") => Some(item.to_string()),
                    Some("map") => {
                        Some(keys.iter().map(|k| item.get(*k).map(Value::to_string).unwrap_or_default()).collect::<Vec<_>>().join("/"))
                    }
                    _ => None,
                };
                if let Some(identity) = identity
                    && !seen.insert(identity.clone())
                {
                    let what = if keys.is_empty() { "value".to_string() } else { keys.join(", ") };
                    report(format!("{path}[{i}]"), format!("duplicate {what} {identity}"));
                }
                if let Some(item_schema) = schema.get("items") {
                    check_list_types(item_schema, item, format!("{path}[{i}]"), report);
                }
            }
        }
        _ => {}
    }
}
