//! `callguard validate` as a GitOps pipeline runs it: exit 0 on the quickstart, exit 1 with the
//! exact expected line on each invalid example, exit 2 on unreadable input, and never a panic,
//! whatever the bytes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use callguard::manifest::parse_documents;
use callguard::validate::{SecretPolicy, validate_documents};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn callguard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_callguard")).args(args).current_dir(repo()).output().expect("callguard runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn quickstart_is_valid() {
    let out = callguard(&["validate", "examples/quickstart"]);
    assert_eq!(out.status.code(), Some(0), "stdout: {}\nstderr: {}", text(&out.stdout), text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("valid: 24 objects and 11 secrets in 1 namespace(s)"), "{stdout}");
    assert_eq!(stdout.lines().count(), 1);
}

fn invalid_examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("examples/invalid")).unwrap().map(|e| e.unwrap().path()).collect();
    files.retain(|f| f.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    files
}

#[test]
fn each_invalid_example_gives_exactly_its_message() {
    let files = invalid_examples();
    assert!(files.len() >= 40, "only {} invalid examples", files.len());
    for file in files {
        let relative = file.strip_prefix(repo()).unwrap().to_str().unwrap().to_string();
        let content = std::fs::read_to_string(&file).unwrap();
        let expected =
            content.lines().find_map(|l| l.strip_prefix("# expect: ")).unwrap_or_else(|| panic!("{relative} has no `# expect:` line"));
        assert!(expected.starts_with(&format!("{relative}:")), "{relative}: the expected line names another file");
        assert!(expected.ends_with(')'), "{relative}: the expected message names no seed section");
        let out = callguard(&["validate", &relative]);
        assert_eq!(out.status.code(), Some(1), "{relative}: stderr {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("{expected}\n"), "{relative}");
    }
}

#[test]
fn the_readme_shows_real_output() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let out = callguard(&["validate", "examples/invalid/46-phone-profile-protocol.yaml"]);
    let line = text(&out.stdout);
    assert!(readme.contains(line.trim_end()), "README's example of a violation is not what validate prints: {line}");
}

#[test]
fn unparsable_input_exits_2_naming_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8], &str); 4] = [
        ("flow.yaml", b"apiVersion: v1\nkind: [unclosed\n", "flow.yaml:3:1: "),
        ("tab.yaml", b"a: 1\n---\nb:\n\t- c\n", "tab.yaml:4:1: "),
        ("binary.yaml", b"kind: Phone\n\xff\xfe\x00garbage", "binary.yaml:2:1: not UTF-8 text"),
        ("dup.yaml", b"a: 1\na: 2\n", "dup.yaml:2:1: "),
    ];
    for (name, bytes, prefix) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = callguard(&["validate", path.to_str().unwrap()]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(&format!("{}/{prefix}", dir.path().display())), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        assert!(out.stdout.is_empty());
    }
    let out = callguard(&["validate", "examples/does-not-exist"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("examples/does-not-exist:0:0: cannot read"), "{}", text(&out.stderr));
}

/// Runs the whole pipeline in process: a panic anywhere fails the property.
fn validate_bytes(bytes: &[u8]) -> Option<usize> {
    let documents = parse_documents(Path::new("fuzz.yaml"), bytes).ok()?;
    Some(validate_documents(&documents, SecretPolicy::Require).violations.len())
}

fn quickstart_documents() -> Vec<Value> {
    let mut values = Vec::new();
    for file in callguard::manifest::collect_files(&[repo().join("examples/quickstart")]).unwrap() {
        values.extend(callguard::manifest::load_file(&file).unwrap().into_iter().map(|d| d.value));
    }
    values
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(|f| serde_json::json!(f)),
        "[ -~]{0,12}".prop_map(Value::String),
        prop::sample::select(vec!["SIP", "SCCP", "TLS", "Mixed", "Encrypted", "7912", "InstallUpgrade", "a b:c", ""])
            .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replaces the value at a random path of a document with `replacement`.
fn mutate(value: &mut Value, path: &[usize], replacement: Value) {
    let Some((&first, rest)) = path.split_first() else {
        *value = replacement;
        return;
    };
    let child = match value {
        Value::Object(map) if !map.is_empty() => {
            let key = map.keys().nth(first % map.len()).unwrap().clone();
            map.get_mut(&key)
        }
        Value::Array(items) if !items.is_empty() => {
            let len = items.len();
            items.get_mut(first % len)
        }
        _ => None,
    };
    match child {
        Some(child) if !rest.is_empty() => mutate(child, rest, replacement),
        Some(child) => *child = replacement,
        None => *value = replacement,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        validate_bytes(&bytes);
    }

    #[test]
    fn arbitrary_yaml_never_panics(values in prop::collection::vec(any_json(), 1..4), kind in prop::sample::select(vec!["Phone", "CallControlCluster", "SipTrunkSecurityProfile", "Secret", "Nope"])) {
        let mut yaml = String::new();
        for mut value in values {
            if let Value::Object(map) = &mut value {
                map.insert("apiVersion".into(), Value::from(if kind == "Secret" { "v1" } else { "callguard.io/v1alpha1" }));
                map.insert("kind".into(), Value::from(kind));
            }
            yaml.push_str("---\n");
            yaml.push_str(&serde_yaml::to_string(&value).unwrap());
        }
        prop_assert!(validate_bytes(yaml.as_bytes()).is_some(), "generated YAML must parse:\n{}", yaml);
    }

    /// Mutating one field of the valid quickstart reaches the typed and cross-object layers.
    #[test]
    fn mutated_quickstart_never_panics(index in any::<usize>(), path in prop::collection::vec(any::<usize>(), 1..6), replacement in any_json()) {
        let mut documents = quickstart_documents();
        let len = documents.len();
        mutate(&mut documents[index % len], &path, replacement);
        let yaml: String = documents.iter().map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap())).collect();
        prop_assert!(validate_bytes(yaml.as_bytes()).is_some());
    }
}

#[test]
fn the_binary_survives_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for i in 0..24 {
        let bytes = prop::collection::vec(any::<u8>(), 0..256).new_tree(&mut runner).unwrap().current();
        let path = dir.path().join(format!("g{i}.yaml"));
        std::fs::write(&path, &bytes).unwrap();
        let out = callguard(&["validate", path.to_str().unwrap()]);
        let code = out.status.code();
        assert!(matches!(code, Some(0..=2)), "exit {code:?} on {bytes:?}");
        assert!(!text(&out.stderr).contains("panicked"), "{}", text(&out.stderr));
    }
}
