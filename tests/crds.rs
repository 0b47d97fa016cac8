//! The committed CRDs are what the Rust types generate, they carry what a kubectl user needs, their
//! CEL rules fit the API server's cost budget, and every example passes its CRD's schema and rules.

use std::path::Path;

use callguard::validate::{kind_schemas, to_json_schema};
use kube::core::cel::{WarningKind, compile_schema, estimate_rule_cost};
use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

#[test]
fn committed_crds_match_the_types() {
    let dir = repo().join("crds");
    let mut expected = Vec::new();
    for (name, text) in callguard::api::crdgen::rendered() {
        let committed =
            std::fs::read_to_string(dir.join(&name)).unwrap_or_else(|_| panic!("crds/{name} is missing: run `callguard crdgen`"));
        assert!(committed == text, "crds/{name} differs from the types: run `callguard crdgen` and commit");
        expected.push(name);
    }
    let mut present: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).filter(|n| n.ends_with(".yaml")).collect();
    present.sort();
    expected.sort();
    assert_eq!(present, expected, "crds/ holds files the types do not generate");
}

#[test]
fn the_readme_reference_and_the_chart_copy_match_the_types() {
    // The committed files, read as they are: the test command never regenerates them first, so
    // this compares the types with what was committed, not the generator with itself.
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let expected = callguard::api::crdgen::with_reference(&readme).expect("README.md has the reference markers");
    assert!(
        expected == readme,
        "the README's field reference differs from the types: run `cargo run -- crdgen --readme README.md` and commit"
    );
    let chart = repo().join("charts/callguard/crds-source");
    for (name, text) in callguard::api::crdgen::rendered() {
        let copy = std::fs::read_to_string(chart.join(&name)).unwrap_or_else(|_| panic!("charts/callguard/crds-source/{name} is missing"));
        assert!(copy == text, "charts/callguard/crds-source/{name} differs from the types: copy crds/ into it and commit");
    }
}

#[test]
fn every_kind_has_status_short_name_and_columns() {
    let crds = callguard::api::crds();
    assert_eq!(crds.len(), 12);
    for crd in crds {
        let kind = &crd.spec.names.kind;
        assert_eq!(crd.spec.group, "callguard.io");
        assert_eq!(crd.spec.scope, "Namespaced", "{kind}");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(), "{kind} has no status subresource");
        assert!(crd.spec.names.short_names.as_ref().is_some_and(|s| !s.is_empty()), "{kind} has no short name");
        assert_eq!(crd.spec.names.categories.as_deref(), Some(&["callguard".to_string()][..]), "{kind}");
        let columns: Vec<&str> = version.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
        assert!(columns.ends_with(&["Ready", "Age"]), "{kind} columns {columns:?}");
        let schema = serde_json::to_value(version.schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap()).unwrap();
        let conditions = &schema["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{kind} conditions are not a list-map");
        assert_eq!(conditions["x-kubernetes-list-map-keys"], serde_json::json!(["type"]), "{kind}");
        assert!(schema["properties"]["status"]["properties"]["observedGeneration"].is_object(), "{kind} has no observedGeneration");
        assert!(!serde_json::to_string(&schema["properties"]["spec"]).unwrap().contains("\"default\""), "{kind}: defaults belong in code");
    }
}

fn rules_with_their_schema(schema: &Value, out: &mut Vec<(String, Value)>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(rules)) = map.get("x-kubernetes-validations") {
                out.extend(rules.iter().map(|r| (r["rule"].as_str().unwrap().to_string(), schema.clone())));
            }
            map.values().for_each(|v| rules_with_their_schema(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| rules_with_their_schema(v, out)),
        _ => {}
    }
}

#[test]
fn cel_rules_fit_the_api_server_cost_budget() {
    let mut rules = Vec::new();
    for schema in kind_schemas().values() {
        rules_with_their_schema(&schema.openapi, &mut rules);
    }
    assert!(rules.len() >= 25);
    for (rule, schema) in rules {
        let warnings = estimate_rule_cost(&rule, &compile_schema(&schema));
        let fatal: Vec<_> = warnings.iter().filter(|w| w.kind == WarningKind::CostExceeded).collect();
        assert!(fatal.is_empty(), "{rule}: {fatal:?}");
    }
}

/// Every Callguard object of the quickstart passes its CRD's OpenAPI schema (the `jsonschema`
/// crate, unknown fields rejected) and its CEL rules.
#[test]
fn quickstart_objects_pass_schema_and_cel() {
    let mut checked = 0;
    for file in callguard::validate::manifest::collect_files(&[repo().join("examples/quickstart")]).unwrap() {
        for doc in callguard::validate::manifest::load_file(&file).unwrap() {
            let Some(kind) = doc.value["kind"].as_str().filter(|_| doc.value["apiVersion"] == "callguard.io/v1alpha1") else { continue };
            let schema = &kind_schemas()[kind];
            let plain = jsonschema::validator_for(&to_json_schema(&schema.openapi, true)).unwrap();
            let errors: Vec<String> = plain.iter_errors(&doc.value).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{}: {kind}: {errors:?}", file.display());
            assert_eq!(schema.check(&doc.value), vec![], "{}: {kind}", file.display());
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} objects checked");
}

/// The schema layer itself rejects what it must: an unknown field anywhere, not only at the top.
#[test]
fn schema_rejects_unknown_nested_fields() {
    let object = serde_json::json!({
        "apiVersion": "callguard.io/v1alpha1", "kind": "Phone", "metadata": {"name": "p"},
        "spec": {"macAddress": "001122334455", "model": "7970", "protocol": "SIP", "securityProfileRef": "x", "hardening": {"webAcess": "Disabled"}}
    });
    let violations = kind_schemas()["Phone"].check(&object);
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].field, "spec.hardening.webAcess");
    assert_eq!(violations[0].message, "unknown field \"webAcess\"; did you mean \"webAccess\"? (Chapter 9)");
}
