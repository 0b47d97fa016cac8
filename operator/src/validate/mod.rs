//! Validation in three layers (docs/architecture.md §4): the CRD schema and the CEL rules of each
//! object (`schema`), then the rules across the objects of one namespace (`cross`). `validate`
//! runs all three offline on manifests; the operator runs `cross` on what it reads from the API.

mod cross;
pub mod manifest;
mod schema;
mod snapshot;

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

pub use cross::check as check_snapshot;
pub use schema::{KindSchema, kind_schemas, to_json_schema};
pub use snapshot::{SecretData, SecretPolicy, Snapshot, SnapshotKind};

use crate::api::API_VERSION;
use crate::core::parallel::on_every_core;
use crate::validate::manifest::{Document, parse_field_path};

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
/// core/v1 Secrets, which resolve references, and objects meant for Callguard under a mistyped
/// apiVersion (see [`meant_for_callguard`]), which are errors.
pub fn validate_documents(documents: &[Document], policy: SecretPolicy) -> Report {
    validate_all(documents, policy, None)
}

/// What a long-running validator (the operator) already holds typed and found unchanged, by
/// digest, since it last passed the schema and CEL checks: those objects go into the snapshot as
/// they are, with no document made, checked or typed again; the cross-object rules still read them.
#[derive(Default)]
pub struct Prechecked {
    /// Their namespace's objects, typed.
    pub snapshot: Snapshot,
    /// Each of them, and whether it is a Secret.
    pub objects: Vec<(ObjectRef, bool)>,
    /// What they are remembered by, to remember again.
    pub digests: Vec<[u8; 32]>,
    /// Objects already typed that changed, to check through a document of each.
    pub to_check: Vec<ToCheck>,
}

/// An object the operator holds typed and that must be checked: its document is made, checked and
/// dropped on a worker, so that a cold start never holds the documents of a whole namespace at
/// once; when it passes, the object itself goes into the snapshot, not one typed again from JSON.
pub struct ToCheck {
    pub object: ObjectRef,
    /// What it is remembered by when it passes.
    pub digest: [u8; 32],
    /// Its manifest: apiVersion, kind, metadata and spec.
    pub document: Box<dyn Fn() -> Value + Send + Sync>,
    /// Puts it into a snapshot.
    pub put: Box<dyn FnOnce(&mut Snapshot) + Send + Sync>,
}

/// As [`validate_documents`], for the operator: `documents` (each remembered by its digest in
/// `digests`, when it passes) and `prechecked`; the schema and CEL checks of a document among
/// `before` (what passed in the previous run, taken with [`PassedChecks::take`]) are not made
/// again, and what passes now goes back into `remembered`.
pub fn validate_remembering(
    documents: &[Document],
    digests: &[[u8; 32]],
    mut prechecked: Prechecked,
    policy: SecretPolicy,
    before: &std::collections::HashSet<[u8; 32]>,
    remembered: &PassedChecks,
) -> Report {
    let still_passing = std::mem::take(&mut prechecked.digests);
    validate_all(documents, policy, Some((Remembering { digests, before, still_passing, memory: remembered }, prechecked)))
}

/// How a run remembers what passed: each document's digest, what passed in the previous run, the
/// digests of what passes unchecked (see [`Prechecked`]), and the memory.
struct Remembering<'a> {
    digests: &'a [[u8; 32]],
    before: &'a std::collections::HashSet<[u8; 32]>,
    still_passing: Vec<[u8; 32]>,
    memory: &'a PassedChecks,
}

/// Where an object came from, to place what is found about it.
enum Origin<'d> {
    Document(&'d Document),
    /// Typed by the operator, with no document made: named as the operator names its documents.
    Prechecked,
}

impl Origin<'_> {
    fn file_and_line(&self, object: &ObjectRef) -> (String, usize) {
        match self {
            Origin::Document(doc) => (doc.file.display().to_string(), doc.line_of(&[])),
            Origin::Prechecked => (object.to_string(), 0),
        }
    }

    fn locate(&self, object: &ObjectRef, violation: Violation) -> Located {
        match self {
            Origin::Document(doc) => locate(doc, object, violation),
            Origin::Prechecked => Located { file: object.to_string(), line: 0, object: object.to_string(), violation },
        }
    }
}

fn validate_all(documents: &[Document], policy: SecretPolicy, remembering: Option<(Remembering, Prechecked)>) -> Report {
    let schemas = kind_schemas();
    let mut report = Report::default();
    let mut snapshots: BTreeMap<String, Snapshot> = BTreeMap::new();
    let mut origins: BTreeMap<ObjectRef, Origin> = BTreeMap::new();

    let checked: Vec<(usize, Vec<Violation>)> = match remembering {
        None => check_in_parallel(documents, schemas, None),
        Some((mut remembering, prechecked)) => {
            if !prechecked.objects.is_empty() || !prechecked.to_check.is_empty() {
                snapshots.insert(prechecked.snapshot.namespace.clone(), prechecked.snapshot);
            }
            for (object, is_secret) in prechecked.objects {
                *(if is_secret { &mut report.secrets } else { &mut report.objects }) += 1;
                origins.insert(object, Origin::Prechecked);
            }
            let to_check = prechecked.to_check;
            let checked = on_every_core(&to_check, |item| {
                check_remembering(&(item.document)(), schemas, Some(remembering.before), Some(&item.digest))
            });
            for (item, checked) in to_check.into_iter().zip(checked) {
                report.objects += 1;
                let snapshot = snapshots.entry(item.object.namespace.clone()).or_insert_with(|| Snapshot::new(&item.object.namespace));
                if checked.violations.is_empty() {
                    (item.put)(snapshot);
                    remembering.still_passing.extend(checked.passed);
                } else {
                    report.violations.extend(checked.violations.into_iter().map(|v| Origin::Prechecked.locate(&item.object, v)));
                    snapshot.mark_invalid(&item.object);
                }
                origins.insert(item.object, Origin::Prechecked);
            }
            check_in_parallel(documents, schemas, Some(remembering))
        }
    };
    for (index, violations) in checked {
        let doc = &documents[index];
        let (kind, name, namespace) = doc.identity();
        let object = ObjectRef {
            kind: kind.unwrap_or("<no kind>").to_string(),
            namespace: namespace.unwrap_or("default").to_string(),
            name: name.unwrap_or("<no name>").to_string(),
        };
        let api_version = doc.value.get("apiVersion").and_then(Value::as_str);
        let is_secret = api_version == Some("v1") && kind == Some("Secret");
        let ours = api_version.is_some_and(|v| meant_for_callguard(v, kind));
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
            // Kept out of the snapshot, but known to be there: what refers to it says it is invalid.
            snapshots.entry(object.namespace.clone()).or_insert_with(|| Snapshot::new(&object.namespace)).mark_invalid(&object);
            continue;
        }
        if let Some(first) = origins.get(&object) {
            let (first_file, first_at) = first.file_and_line(&object);
            let v = Violation::new(
                "metadata.name",
                format!(
                    "defined twice; first at {first_file}:{first_at}: names are unique per kind and namespace (docs/architecture.md §3.1)"
                ),
            );
            report.violations.push(locate(doc, &object, v));
            continue;
        }
        let snapshot = snapshots.entry(object.namespace.clone()).or_insert_with(|| Snapshot::new(&object.namespace));
        match snapshot.insert(&object, &doc.value) {
            Ok(()) => {
                origins.insert(object, Origin::Document(doc));
            }
            Err(v) => {
                snapshot.mark_invalid(&object);
                report.violations.push(locate(doc, &object, v));
            }
        }
    }
    report.namespaces = snapshots.len();
    for snapshot in snapshots.values() {
        for finding in check_snapshot(snapshot, policy) {
            match origins.get(&finding.object) {
                Some(origin) => report.violations.push(origin.locate(&finding.object, finding.violation)),
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

/// The documents a long-running validator (the operator) found to pass the schema and CEL checks
/// in its last run, by the SHA-256 of their JSON (the operator's typed objects: of their manifest's
/// parts, written straight from the type): in the next one, only what changed is checked again. A
/// digest, not the object's name and version, so that nothing but the same bytes passes unchecked.
#[derive(Default)]
pub struct PassedChecks {
    passed: std::sync::Mutex<std::collections::HashSet<[u8; 32]>>,
}

impl PassedChecks {
    /// The SHA-256 of `value`'s JSON: of a document, or of what the operator makes one of.
    pub fn digest(value: &impl serde::Serialize) -> [u8; 32] {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        // Writing into a hasher cannot fail. What cannot be written as JSON never passes (no
        // document of it is checked), so a digest of part of it is never remembered.
        let _ = serde_json::to_writer(HashWriter(&mut hasher), value);
        hasher.finalize().into()
    }

    /// What passed in the last run, taken out: the run that takes it remembers what passes in it.
    pub fn take(&self) -> std::collections::HashSet<[u8; 32]> {
        std::mem::take(&mut *self.passed.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// `io::Write` into a SHA-256, so that a document is hashed without a copy of its JSON.
struct HashWriter<'a>(&'a mut sha2::Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        sha2::Digest::update(self.0, bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Schema and CEL checks are independent per object: run them on every core. With `remembering`,
/// a document that passed last time is not checked again, and what passes now is remembered for
/// the next run (and nothing else) beside what still passes unchecked.
fn check_in_parallel(
    documents: &[Document],
    schemas: &BTreeMap<String, KindSchema>,
    remembering: Option<Remembering>,
) -> Vec<(usize, Vec<Violation>)> {
    let (digests, before, still_passing, remembered) = match remembering {
        Some(Remembering { digests, before, still_passing, memory }) => (Some(digests), Some(before), Some(still_passing), Some(memory)),
        None => (None, None, None, None),
    };
    let checked: Vec<(usize, Checked)> = on_every_core(&documents.iter().enumerate().collect::<Vec<_>>(), |&(index, doc)| {
        (index, check_remembering(&doc.value, schemas, before, digests.and_then(|d| d.get(index))))
    });
    if let Some(remembered) = remembered {
        let passed = checked.iter().filter_map(|(_, checked)| checked.passed).chain(still_passing.into_iter().flatten());
        *remembered.passed.lock().unwrap_or_else(|e| e.into_inner()) = passed.collect();
    }
    checked.into_iter().map(|(index, checked)| (index, checked.violations)).collect()
}

/// One document's violations, and the digest to remember when it passes (only when remembering).
struct Checked {
    violations: Vec<Violation>,
    passed: Option<[u8; 32]>,
}

/// Checks one document; given what passed before (`before`), a document among it passes unchecked.
/// It is known by `digest` where its maker gave one, by its JSON's otherwise.
fn check_remembering(
    value: &Value,
    schemas: &BTreeMap<String, KindSchema>,
    before: Option<&std::collections::HashSet<[u8; 32]>>,
    digest: Option<&[u8; 32]>,
) -> Checked {
    let Some(before) = before else { return Checked { violations: check_document(value, schemas), passed: None } };
    let digest = digest.copied().unwrap_or_else(|| PassedChecks::digest(value));
    let violations = if before.contains(&digest) { Vec::new() } else { check_document(value, schemas) };
    let passed = violations.is_empty().then_some(digest);
    Checked { violations, passed }
}

/// Schema and CEL violations of one manifest document; none for objects Callguard does not own.
pub fn check_document(value: &Value, schemas: &BTreeMap<String, KindSchema>) -> Vec<Violation> {
    let api_version = value.get("apiVersion").and_then(Value::as_str);
    let kind = value.get("kind").and_then(Value::as_str);
    if let Some(problem) = api_version.and_then(|v| api_version_problem(v, kind, schemas)) {
        return vec![Violation::new("apiVersion", problem)];
    }
    match (api_version, kind) {
        (Some("v1"), Some("Secret")) => snapshot::check_secret_shape(value),
        (Some(API_VERSION), Some(kind)) => match schemas.get(kind) {
            Some(schema) => schema.check(value),
            None => {
                let kinds: Vec<&str> = schemas.keys().map(String::as_str).collect();
                let hint = match closest(kind, kinds.iter().copied()) {
                    Some(close) => format!("did you mean {close:?}?"),
                    None => format!("kinds are {}", kinds.join(", ")),
                };
                vec![Violation::new("kind", format!("{kind:?} is not a Callguard kind; {hint} ({RESOURCES})"))]
            }
        },
        (Some(API_VERSION), None) => vec![Violation::new("kind", format!("required field is missing ({RESOURCES})"))],
        _ if value.is_object() => Vec::new(),
        _ => vec![Violation::new("", format!("a manifest must be a mapping with apiVersion and kind ({RESOURCES})"))],
    }
}

/// Where the docs describe the resources, their group and version.
const RESOURCES: &str = "docs/architecture.md §3.1";

const GROUP: &str = "callguard.io";

/// The group of an apiVersion: before the `/`; a dotted name without one is a group whose version
/// was left out, a name without either the core group's version (`v1`).
fn api_group(api_version: &str) -> &str {
    match api_version.rsplit_once('/') {
        Some((group, _)) => group,
        None if api_version.contains('.') => api_version,
        None => "",
    }
}

/// Whether an object is meant for Callguard, whatever is wrong with its apiVersion: in the group
/// `callguard.io`, in a group one or two edits from it (a typo, not another API to pass over), or
/// of a Callguard kind in the core group (the group left out). The core group has no such kind,
/// and no served group is that close to `callguard.io`.
pub fn meant_for_callguard(api_version: &str, kind: Option<&str>) -> bool {
    let group = api_group(api_version);
    group == GROUP
        || edit_distance(&group.to_ascii_lowercase(), GROUP) <= 2
        || group.is_empty() && kind.is_some_and(|k| kind_schemas().contains_key(k))
}

/// What is wrong with the apiVersion of an object meant for Callguard; `None` when it is right or
/// the object is not Callguard's.
fn api_version_problem(api_version: &str, kind: Option<&str>, schemas: &BTreeMap<String, KindSchema>) -> Option<String> {
    if api_version == API_VERSION || !meant_for_callguard(api_version, kind) {
        return None;
    }
    let group = api_group(api_version);
    let problem = if group == GROUP && api_version == GROUP {
        format!("{api_version:?} names no version; did you mean {API_VERSION:?}?")
    } else if group == GROUP {
        format!("{api_version:?} is not a version Callguard serves; did you mean {API_VERSION:?}?")
    } else if group.is_empty() {
        let kind = kind.filter(|k| schemas.contains_key(*k)).unwrap_or_default();
        format!("{api_version:?} is the core API group, which has no kind {kind:?}; did you mean {API_VERSION:?}?")
    } else {
        format!("{api_version:?} is not an API group Callguard serves; did you mean {API_VERSION:?}?")
    };
    Some(format!("{problem} ({RESOURCES})"))
}

/// The candidate closest to `word`, if it is close enough to be what was meant: at most one edit
/// per three characters of the shorter (and always one), ignoring case.
pub(crate) fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_lowercase();
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| (edit_distance(&lower, &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= (word.chars().count().min(c.chars().count()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// The optimal string alignment distance: insertions, deletions, substitutions and swaps of two
/// adjacent characters, one edit each (Damerau-Levenshtein without edits of edited text).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // Names longer than any Callguard name by far are not typos of one; do not spend time on them.
    if a.len().abs_diff(b.len()) > 8 {
        return a.len().abs_diff(b.len());
    }
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    d[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

fn locate(doc: &Document, object: &ObjectRef, violation: Violation) -> Located {
    Located {
        file: doc.file.display().to_string(),
        line: doc.line_of(&parse_field_path(&violation.field)),
        object: object.to_string(),
        violation,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;
    use crate::validate::manifest::parse_documents;

    fn messages(value: Value) -> Vec<String> {
        check_document(&value, kind_schemas()).into_iter().map(|v| format!("{}: {}", v.field, v.message)).collect()
    }

    fn srst(api_version: &str, kind: &str) -> Value {
        json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": "s"}, "spec": {"gatewayAddress": "srst.example"}})
    }

    #[test]
    fn a_group_one_or_two_edits_from_callguard_io_is_a_typo_not_another_api() {
        let typos = [
            "calguard.io/v1alpha1",
            "Callguard.io/v1alpha1",
            "callgaurd.io/v1alpha1",
            "callguard.oi/v1alpha1",
            "callguard.com/v1alpha1",
            "CALLGUARD.IO/v1alpha1",
            "calguard.io/v1",
            // No version: read as the core group's version "callguard.io".
            "callguard.io",
        ];
        for api_version in typos {
            let found = messages(srst(api_version, "SrstReference"));
            assert_eq!(found.len(), 1, "{api_version}: {found:?}");
            assert!(found[0].starts_with("apiVersion: "), "{api_version}: {found:?}");
            assert!(found[0].contains("did you mean \"callguard.io/v1alpha1\"?"), "{api_version}: {found:?}");
        }
        // A Callguard kind in the core group: the group was left out.
        for api_version in ["v1alpha1", "v1"] {
            let found = messages(srst(api_version, "SrstReference"));
            assert!(found.len() == 1 && found[0].contains("did you mean \"callguard.io/v1alpha1\"?"), "{api_version}: {found:?}");
        }
        // Other API groups, and the core group's own kinds, pass through.
        for (api_version, kind) in [
            ("apps/v1", "Deployment"),
            ("example.com/v1", "Phone"),
            ("guard.io/v1", "Phone"),
            ("callguard.example.com/v1", "Phone"),
            ("v1", "ConfigMap"),
        ] {
            assert_eq!(messages(srst(api_version, kind)), Vec::<String>::new(), "{api_version} {kind}");
        }
    }

    #[test]
    fn an_unknown_version_or_kind_of_callguard_io_names_the_closest() {
        let found = messages(srst("callguard.io/v1alpha2", "SrstReference"));
        assert!(
            found.len() == 1 && found[0].contains("is not a version Callguard serves; did you mean \"callguard.io/v1alpha1\"?"),
            "{found:?}"
        );
        for (kind, closest) in [("Phnoe", "Phone"), ("srstreference", "SrstReference"), ("SipTrunks", "SipTrunk"), ("EndUsr", "EndUser")] {
            let found = messages(srst(API_VERSION, kind));
            assert!(found.len() == 1 && found[0].contains(&format!("did you mean {closest:?}?")), "{kind}: {found:?}");
        }
        let found = messages(srst(API_VERSION, "Gateway"));
        assert!(found.len() == 1 && !found[0].contains("did you mean") && found[0].contains("kinds are ApplicationUser"), "{found:?}");
    }

    #[test]
    fn an_unknown_field_names_the_closest_allowed_field() {
        let mut value = srst(API_VERSION, "SrstReference");
        value["spec"]["isSrstSecre"] = json!(true);
        value["spec"]["hsrpPeer"] = json!("srst2.example");
        let found = messages(value);
        assert!(
            found.iter().any(|m| m.starts_with("spec.isSrstSecre: unknown field \"isSrstSecre\"; did you mean \"isSrstSecure\"?")),
            "{found:?}"
        );
        // Nothing close: no guess.
        assert!(found.iter().any(|m| m.starts_with("spec.hsrpPeer: unknown field \"hsrpPeer\" (")), "{found:?}");
        let cluster = json!({
            "apiVersion": API_VERSION, "kind": "CallControlCluster", "metadata": {"nmae": "lab"},
            "spec": {"nodes": [{"name": "cm1", "hostnme": "cm1.example"}]}
        });
        let found = messages(cluster);
        assert!(
            found.iter().any(|m| m.starts_with("spec.nodes[0].hostnme: unknown field \"hostnme\"; did you mean \"hostname\"?")),
            "{found:?}"
        );
        // A required field whose name was mistyped: the typo is named where the field is missing.
        assert!(
            found.iter().any(|m| m.starts_with("metadata.name: required field is missing; is \"nmae\" a typo of \"name\"?")),
            "{found:?}"
        );
    }

    fn report(yaml: &str) -> Vec<String> {
        let documents = parse_documents(Path::new("ns.yaml"), yaml.as_bytes()).unwrap();
        validate_documents(&documents, SecretPolicy::Require).violations.iter().map(ToString::to_string).collect()
    }

    const CLUSTER: &str = "apiVersion: callguard.io/v1alpha1\nkind: CallControlCluster\nmetadata: {name: lab}\nspec:\n  nodes: [{name: cm1, hostname: cm1.lab.example}]\n";

    #[test]
    fn an_invalid_object_carries_the_cause_and_its_dependents_say_it_is_invalid() {
        // Every kind a reference can name: profile, digest user, SRST reference, and the Secret of a token.
        let yaml = format!(
            "{CLUSTER}---
apiVersion: callguard.io/v1alpha1
kind: PhoneSecurityProfile
metadata: {{name: sip}}
spec: {{protocol: SIP, deviceSecurityMode: Secure}}
---
apiVersion: callguard.io/v1alpha1
kind: EndUser
metadata: {{name: alice}}
spec: {{digestCredentials: {{name: alice-digest}}}}
---
apiVersion: callguard.io/v1alpha1
kind: SrstReference
metadata: {{name: branch}}
spec: {{gatewayAddress: 'not a host'}}
---
apiVersion: callguard.io/v1alpha1
kind: PhoneSecurityProfile
metadata: {{name: sip-ok}}
spec: {{protocol: SIP, deviceSecurityMode: NonSecure}}
---
apiVersion: callguard.io/v1alpha1
kind: Phone
metadata: {{name: bob-7961}}
spec: {{macAddress: '00AABBCCDD02', model: '7961', protocol: SIP, securityProfileRef: sip}}
---
apiVersion: callguard.io/v1alpha1
kind: Phone
metadata: {{name: alice-7961}}
spec: {{macAddress: '00AABBCCDD01', model: '7961', protocol: SIP, securityProfileRef: sip-ok, digestUserRef: alice, srstReferenceRef: branch}}
---
apiVersion: v1
kind: Secret
metadata: {{name: realm-password}}
data: {{password: '***not base64***'}}
---
apiVersion: callguard.io/v1alpha1
kind: SipRealm
metadata: {{name: peer}}
spec: {{realm: peer.example, user: cm, password: {{name: realm-password, key: password}}}}
"
        );
        let found = report(&yaml);
        for line in &found {
            assert!(
                !line.contains("not found") && !line.contains("has no CallControlCluster"),
                "a follow-on error: {line}\nall: {found:#?}"
            );
        }
        for (object, field, reference) in [
            ("Phone/bob-7961", "spec.securityProfileRef", "PhoneSecurityProfile/sip"),
            ("Phone/alice-7961", "spec.digestUserRef", "EndUser/alice"),
            ("Phone/alice-7961", "spec.srstReferenceRef", "SrstReference/branch"),
            ("SipRealm/peer", "spec.password", "Secret/realm-password"),
        ] {
            let expected = format!("{object}: {field}: {reference} is invalid (see its own error)");
            assert!(found.iter().any(|l| l.contains(&expected)), "{expected}\nall: {found:#?}");
        }
        // Each invalid object carries its own cause, once.
        for object in ["PhoneSecurityProfile/sip:", "EndUser/alice:", "SrstReference/branch:", "Secret/realm-password:"] {
            assert_eq!(found.iter().filter(|l| l.contains(object)).count(), 1, "{object}\nall: {found:#?}");
        }
    }

    #[test]
    fn an_invalid_cluster_is_the_only_error_of_its_namespace() {
        let yaml = format!(
            "{}---\napiVersion: callguard.io/v1alpha1\nkind: SrstReference\nmetadata: {{name: branch}}\nspec: {{gatewayAddress: srst.example}}\n",
            CLUSTER.replace("spec:\n", "spec:\n  securityMode: Mixd\n")
        );
        let found = report(&yaml);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].starts_with("ns.yaml:5: CallControlCluster/lab: spec.securityMode: \"Mixd\" is not one of"), "{found:#?}");
    }

    /// What passed is remembered by its bytes: the same document passes again unchecked, a changed
    /// one is checked again, a failing one is never remembered, and only the last run is kept.
    #[test]
    fn only_what_passed_last_time_byte_for_byte_skips_the_checks() {
        let document = |gateway: &str| {
            let value =
                json!({"apiVersion": API_VERSION, "kind": "SrstReference", "metadata": {"name": "s"}, "spec": {"gatewayAddress": gateway}});
            Document::new(std::sync::Arc::from(Path::new("t.yaml")), 1, std::sync::Arc::from(""), value)
        };
        let invalid = || {
            let value =
                json!({"apiVersion": API_VERSION, "kind": "SrstReference", "metadata": {"name": "t"}, "spec": {"gatewayAddress": 7}});
            Document::new(std::sync::Arc::from(Path::new("t.yaml")), 1, std::sync::Arc::from(""), value)
        };
        let remembered = PassedChecks::default();
        let held = || remembered.passed.lock().unwrap().clone();
        let run = |documents: &[Document]| {
            let digests: Vec<[u8; 32]> = documents.iter().map(|d| PassedChecks::digest(&d.value)).collect();
            let before = remembered.take();
            let remembering = Remembering { digests: &digests, before: &before, still_passing: Vec::new(), memory: &remembered };
            check_in_parallel(documents, kind_schemas(), Some(remembering))
        };

        let first = run(&[document("srst.example"), invalid()]);
        assert!(first[0].1.is_empty() && !first[1].1.is_empty(), "{first:?}");
        assert_eq!(held(), [PassedChecks::digest(&document("srst.example").value)].into());
        // The same bytes: not checked, and still remembered; the invalid one is checked again.
        let second = run(&[document("srst.example"), invalid()]);
        assert!(second[0].1.is_empty() && !second[1].1.is_empty());
        assert_eq!(held().len(), 1);
        // A new address passes and replaces the old one in what is remembered.
        assert!(run(&[document("srst2.example")])[0].1.is_empty());
        assert_eq!(held(), [PassedChecks::digest(&document("srst2.example").value)].into());
        // A digest that was remembered does not excuse different bytes.
        let with_fault = Document::new(
            std::sync::Arc::from(Path::new("t.yaml")),
            1,
            std::sync::Arc::from(""),
            json!({"apiVersion": API_VERSION, "kind": "SrstReference", "metadata": {"name": "s"}, "spec": {"gatewayAddress": "srst2.example", "port": "x"}}),
        );
        assert!(!run(&[with_fault])[0].1.is_empty());
        assert!(held().is_empty());
    }
}
