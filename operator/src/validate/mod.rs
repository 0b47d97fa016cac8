//! Validation in three layers (DESIGN: validation): the CRD schema and the CEL rules of each
//! object (`schema`), then the rules across the objects of one namespace (`cross`). `validate`
//! runs all three offline on manifests; the operator runs `cross` on what it reads from the API.

mod cross;
mod schema;
mod snapshot;

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

pub use cross::check as check_snapshot;
pub use schema::{KindSchema, kind_schemas, to_json_schema};
pub use snapshot::{SecretData, SecretPolicy, Snapshot};

use crate::api::API_VERSION;
use crate::manifest::{Document, parse_field_path};

/// One broken rule: the field it concerns and a message that ends with the seed section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub message: String,
}

impl Violation {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Violation { field: field.into(), message: message.into() }
    }
}

/// The object a violation belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// A violation of a rule across objects, attached to the object that must change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub object: ObjectRef,
    pub violation: Violation,
}

/// A violation placed in a manifest file, ready to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub file: String,
    pub line: usize,
    pub object: String,
    pub violation: Violation,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}: {}: {}", self.file, self.line, self.object, self.violation.field, self.violation.message)
    }
}

/// What `validate` found in a set of manifests.
#[derive(Debug, Default)]
pub struct Report {
    pub violations: Vec<Located>,
    /// Callguard objects checked.
    pub objects: usize,
    /// Secrets read, to resolve references.
    pub secrets: usize,
    /// Namespaces seen.
    pub namespaces: usize,
    /// The typed objects of each namespace, for the build that follows a clean validation.
    pub snapshots: BTreeMap<String, Snapshot>,
}

/// Runs every layer on parsed manifest documents. Objects of other API groups are ignored, except
/// core/v1 Secrets, which resolve references.
pub fn validate_documents(documents: &[Document], policy: SecretPolicy) -> Report {
    let schemas = kind_schemas();
    let mut report = Report::default();
    let mut snapshots: BTreeMap<String, Snapshot> = BTreeMap::new();
    let mut origins: BTreeMap<ObjectRef, &Document> = BTreeMap::new();

    let checked: Vec<(usize, Vec<Violation>)> = check_in_parallel(documents, schemas);
    for (index, violations) in checked {
        let doc = &documents[index];
        let (kind, name, namespace) = doc.identity();
        let object = ObjectRef {
            kind: kind.unwrap_or("<no kind>").to_string(),
            namespace: namespace.unwrap_or("default").to_string(),
            name: name.unwrap_or("<no name>").to_string(),
        };
        let is_secret = doc.value.get("apiVersion").and_then(Value::as_str) == Some("v1") && kind == Some("Secret");
        let ours = doc.value.get("apiVersion").and_then(Value::as_str).map(api_group) == Some("callguard.io");
        if !is_secret && !ours {
            // Other objects pass through untouched; a document that is no object at all is reported.
            report.violations.extend(violations.into_iter().map(|v| locate(doc, &object, v)));
            continue;
        }
        if is_secret {
            report.secrets += 1;
        } else {
            report.objects += 1;
        }
        if !violations.is_empty() {
            report.violations.extend(violations.into_iter().map(|v| locate(doc, &object, v)));
            continue;
        }
        if let Some(first) = origins.get(&object) {
            let first_at = first.line_of(&[]);
            let v = Violation::new(
                "metadata.name",
                format!(
                    "defined twice; first at {}:{first_at}: names are unique per kind and namespace (DESIGN: resources)",
                    first.file.display()
                ),
            );
            report.violations.push(locate(doc, &object, v));
            continue;
        }
        let snapshot = snapshots.entry(object.namespace.clone()).or_insert_with(|| Snapshot::new(&object.namespace));
        match snapshot.insert(&object, &doc.value) {
            Ok(()) => {
                origins.insert(object, doc);
            }
            Err(v) => report.violations.push(locate(doc, &object, v)),
        }
    }
    report.namespaces = snapshots.len();
    for snapshot in snapshots.values() {
        for finding in check_snapshot(snapshot, policy) {
            match origins.get(&finding.object) {
                Some(doc) => report.violations.push(locate(doc, &finding.object, finding.violation)),
                None => report.violations.push(Located {
                    file: "<namespace>".into(),
                    line: 0,
                    object: finding.object.to_string(),
                    violation: finding.violation,
                }),
            }
        }
    }
    report.violations.sort_by(|a, b| (&a.file, a.line, &a.object).cmp(&(&b.file, b.line, &b.object)));
    report.snapshots = snapshots;
    report
}

/// Schema and CEL checks are independent per object: run them on every core.
fn check_in_parallel(documents: &[Document], schemas: &BTreeMap<String, KindSchema>) -> Vec<(usize, Vec<Violation>)> {
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8);
    let chunk = documents.len().div_ceil(workers).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = documents
            .chunks(chunk)
            .enumerate()
            .map(|(c, docs)| {
                scope.spawn(move || {
                    docs.iter().enumerate().map(|(i, doc)| (c * chunk + i, check_document(&doc.value, schemas))).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("a validation worker panicked")).collect()
    })
}

/// Schema and CEL violations of one manifest document; none for objects Callguard does not own.
pub fn check_document(value: &Value, schemas: &BTreeMap<String, KindSchema>) -> Vec<Violation> {
    let api_version = value.get("apiVersion").and_then(Value::as_str);
    let kind = value.get("kind").and_then(Value::as_str);
    match (api_version, kind) {
        (Some("v1"), Some("Secret")) => snapshot::check_secret_shape(value),
        (Some(v), _) if api_group(v) == "callguard.io" && v != API_VERSION => {
            vec![Violation::new("apiVersion", format!("{v:?} is not served; use {API_VERSION} (DESIGN: resources)"))]
        }
        (Some(API_VERSION), Some(kind)) => match schemas.get(kind) {
            Some(schema) => schema.check(value),
            None => {
                let kinds: Vec<&str> = schemas.keys().map(String::as_str).collect();
                vec![Violation::new(
                    "kind",
                    format!("{kind:?} is not a Callguard kind; kinds are {} (DESIGN: resources)", kinds.join(", ")),
                )]
            }
        },
        (Some(API_VERSION), None) => vec![Violation::new("kind", "required field is missing (DESIGN: resources)")],
        _ if value.is_object() => Vec::new(),
        _ => vec![Violation::new("", "a manifest must be a mapping with apiVersion and kind (DESIGN: resources)")],
    }
}

fn api_group(api_version: &str) -> &str {
    api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("")
}

fn locate(doc: &Document, object: &ObjectRef, violation: Violation) -> Located {
    Located {
        file: doc.file.display().to_string(),
        line: doc.line_of(&parse_field_path(&violation.field)),
        object: object.to_string(),
        violation,
    }
}
