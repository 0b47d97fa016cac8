//! `callguard validate` as a GitOps pipeline runs it: exit 0 on the quickstart, exit 1 with the
//! exact expected line on each invalid example, exit 2 on unreadable input, and never a panic,
//! whatever the bytes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use callguard::validate::manifest::parse_documents;
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
    assert!(stdout.starts_with("valid: 26 objects and 11 secrets in 1 namespace(s)"), "{stdout}");
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
        // One `# expect:` line per line of output, in order: a rule whose breach also touches the
        // objects that depend on the broken one says so on them.
        let expected: Vec<&str> = content.lines().filter_map(|l| l.strip_prefix("# expect: ")).collect();
        assert!(!expected.is_empty(), "{relative} has no `# expect:` line");
        for line in &expected {
            assert!(line.starts_with(&format!("{relative}:")), "{relative}: the expected line names another file");
            assert!(line.ends_with(')'), "{relative}: the expected message names no seed section");
        }
        let out = callguard(&["validate", &relative]);
        assert_eq!(out.status.code(), Some(1), "{relative}: stderr {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), expected.iter().map(|l| format!("{l}\n")).collect::<String>(), "{relative}");
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

#[test]
fn a_yaml_error_names_one_position_counted_from_the_top_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phones.yaml");
    // The second document starts at line 4: its fifth line, badly indented, is the file's eighth.
    std::fs::write(&path, "a: 1\nb: 2\nc: 3\n---\nkey: value\nother:\n  x: 1\n y: 2\n").unwrap();
    let out = callguard(&["validate", path.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.starts_with(&format!("{}:8:2: ", path.display())), "{first}");
    assert!(!first.contains(" line ") && !first.contains(" column ") && !first.contains(" position "), "a second position: {first}");
}

/// Runs the whole pipeline in process: a panic anywhere fails the property.
fn validate_bytes(bytes: &[u8]) -> Option<usize> {
    let documents = parse_documents(Path::new("fuzz.yaml"), bytes).ok()?;
    Some(validate_documents(&documents, SecretPolicy::Require).violations.len())
}

fn quickstart_documents() -> Vec<Value> {
    let mut values = Vec::new();
    for file in callguard::validate::manifest::collect_files(&[repo().join("examples/quickstart")]).unwrap() {
        values.extend(callguard::validate::manifest::load_file(&file).unwrap().into_iter().map(|d| d.value));
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

/// Generous on purpose: each of these ends well under 2 s on an idle machine, the target; 10 s only
/// tells "it ends" from "it hangs" on a shared, loaded one. No test here measures speed.
const ENDS_WITHIN: Duration = Duration::from_secs(10);

/// Runs `callguard` with its output in files (a full pipe cannot stall it) and kills it after
/// `limit`: no output when it had not ended by then.
fn callguard_within(args: &[&str], limit: Duration) -> (Option<Output>, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_callguard"))
        .args(args)
        .current_dir(repo())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("callguard runs");
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let elapsed = started.elapsed();
            let output = Output { status, stdout: std::fs::read(&out_path).unwrap(), stderr: std::fs::read(&err_path).unwrap() };
            return (Some(output), elapsed);
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            return (None, started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_invalid_object_inside_a_list_is_reported_at_its_own_line() {
    let dir = tempfile::tempdir().unwrap();
    // kubectl applies every item of a v1 List and of any `*List` kind with items, nested or not.
    let yaml = "\
apiVersion: v1
kind: List
items:
- apiVersion: callguard.io/v1alpha1
  kind: CallControlCluster
  metadata: {name: lab}
  spec:
    nodes: [{name: cm1, hostname: cm1.lab.example}]
- apiVersion: callguard.io/v1alpha1
  kind: SrstReferenceList
  items:
  - apiVersion: callguard.io/v1alpha1
    kind: SrstReference
    metadata:
      name: branch
    spec:
      gatewayAddress: srst.branch.example
      srstCertificateProviderPort: 80
";
    let path = dir.path().join("list.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = callguard(&["validate", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "stdout: {}\nstderr: {}", text(&out.stdout), text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "{}:18: SrstReference/branch: spec.srstCertificateProviderPort: 80 is less than the minimum 1024 (Table 12-2, P.12-7)\n",
            path.display()
        )
    );
}

#[test]
fn the_quickstart_as_one_list_is_the_same_valid_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": quickstart_documents()});
    let path = dir.path().join("quickstart-list.yaml");
    std::fs::write(&path, serde_yaml::to_string(&list).unwrap()).unwrap();
    let out = callguard(&["validate", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "stdout: {}\nstderr: {}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).starts_with("valid: 26 objects and 11 secrets in 1 namespace(s), 1 file(s)"), "{}", text(&out.stdout));
}

#[test]
fn input_without_any_callguard_object_exits_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let others = dir.path().join("others");
    std::fs::create_dir(&others).unwrap();
    std::fs::write(others.join("cm.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\n").unwrap();
    std::fs::write(others.join("notes.txt"), "not a manifest\n").unwrap();
    for path in [&empty, &others] {
        let out = callguard(&["validate", path.to_str().unwrap()]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: stdout {} stderr {stderr}", path.display(), text(&out.stdout));
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("no Callguard object") && stderr.contains(&path.display().to_string()), "{stderr}");
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    }
}

#[cfg(unix)]
#[test]
fn a_directory_symlink_loop_ends_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("manifests");
    let deep = root.join("a/b");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::copy(repo().join("examples/invalid/02-enum-value.yaml"), deep.join("cluster.yaml")).unwrap();
    // Several ways back up at each level: followed, each level of the walk multiplies the paths.
    std::os::unix::fs::symlink("..", root.join("a/up")).unwrap();
    std::os::unix::fs::symlink("../..", deep.join("top")).unwrap();
    std::os::unix::fs::symlink(&root, deep.join("absolute")).unwrap();
    std::os::unix::fs::symlink(".", root.join("self")).unwrap();
    let (out, elapsed) = callguard_within(&["validate", root.to_str().unwrap()], ENDS_WITHIN);
    let out = out.unwrap_or_else(|| panic!("still walking after {elapsed:?}"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    // The file is read once, however many ways lead to it.
    assert_eq!(text(&out.stdout).lines().count(), 1, "{}", text(&out.stdout));
}

#[test]
fn deeply_nested_input_is_refused_quickly_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, String); 6] = [
        ("closed.yaml", format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000))),
        ("flow-mapping.yaml", "{a: ".repeat(100_000)),
        ("flow.yaml", "[".repeat(100_000)),
        ("block-sequence.yaml", format!("{}x\n", "- ".repeat(100_000))),
        ("indented.yaml", (0..1_500).map(|i| format!("{}a:\n", " ".repeat(i))).collect()),
        ("second-document.yaml", format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n---\na: {}\n", "[".repeat(100_000))),
    ];
    for (name, yaml) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        let (out, elapsed) = callguard_within(&["validate", path.to_str().unwrap()], ENDS_WITHIN);
        let out = out.unwrap_or_else(|| panic!("{name}: still parsing after {elapsed:?}"));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(&format!("{}:", path.display())), "{name}: {stderr}");
        assert!(stderr.contains("nested deeper than 64 levels"), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
}

#[test]
fn an_oversized_document_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.yaml");
    let yaml = format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: big}}\ndata:\n  x: \"{}\"\n", "a".repeat(4 << 20));
    std::fs::write(&path, yaml).unwrap();
    let out = callguard(&["validate", path.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("{}:1:1: ", path.display())) && stderr.contains("larger than 3 MiB"), "{stderr}");
}

/// One step of making a directory tree: a directory, a manifest, or a symbolic link in a directory
/// already made to another (an ancestor or itself makes a loop), relative or absolute, or to nothing.
#[derive(Debug, Clone)]
enum TreeStep {
    Dir { parent: usize },
    File { parent: usize, content: usize },
    Link { parent: usize, target: usize, absolute: bool },
    Up { parent: usize, levels: usize },
    Dangling { parent: usize },
}

fn tree_step() -> impl Strategy<Value = TreeStep> {
    prop_oneof![
        any::<usize>().prop_map(|parent| TreeStep::Dir { parent }),
        (any::<usize>(), 0..3usize).prop_map(|(parent, content)| TreeStep::File { parent, content }),
        (any::<usize>(), any::<usize>(), any::<bool>()).prop_map(|(parent, target, absolute)| TreeStep::Link { parent, target, absolute }),
        (any::<usize>(), 0..4usize).prop_map(|(parent, levels)| TreeStep::Up { parent, levels }),
        any::<usize>().prop_map(|parent| TreeStep::Dangling { parent }),
    ]
}

/// Runs `job` on a thread and fails when it has not ended within [`ENDS_WITHIN`] (the thread is
/// left behind: the property has failed anyway).
fn ends_quickly<T: Send + 'static>(what: &str, job: impl FnOnce() -> T + Send + 'static) -> Result<T, TestCaseError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(job());
    });
    rx.recv_timeout(ENDS_WITHIN).map_err(|_| TestCaseError::fail(format!("{what}: still running after {ENDS_WITHIN:?}")))
}

/// YAML nested one level per form, as many levels as forms: block mappings by indentation (0),
/// block sequences, compact on one line when they follow each other (1), then flow sequences (2)
/// and flow mappings (3); the flow collections closed or left open.
fn nested_yaml(forms: &[usize], closed: bool) -> String {
    let mut yaml = String::new();
    let mut indent = 0;
    let mut line_open = false;
    let mut in_flow = false;
    let mut closers = String::new();
    for (i, &form) in forms.iter().enumerate() {
        if !line_open && !in_flow {
            yaml.push_str(&" ".repeat(indent));
        }
        match if in_flow { form.max(2) } else { form } {
            0 => {
                yaml.push_str(&format!("k{i}:\n"));
                indent += 2;
                line_open = false;
            }
            1 => {
                yaml.push_str("- ");
                indent += 2;
                line_open = true;
            }
            2 => {
                in_flow = true;
                yaml.push('[');
                closers.insert(0, ']');
            }
            _ => {
                in_flow = true;
                yaml.push_str(&format!("{{k{i}: "));
                closers.insert(0, '}');
            }
        }
    }
    if closed {
        yaml.push_str(&closers);
    }
    yaml.push('\n');
    yaml
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 64, ..ProptestConfig::default() })]

    /// Any tree of directories, manifests and symbolic links (loops included) is walked and read
    /// to an end, quickly, without a panic; a link that leads nowhere is an error naming it.
    #[cfg(unix)]
    #[test]
    fn any_directory_tree_with_symlinks_is_read_quickly(steps in prop::collection::vec(tree_step(), 1..24)) {
        let root = tempfile::tempdir().unwrap();
        let mut dirs = vec![root.path().to_path_buf()];
        let contents = [
            "apiVersion: callguard.io/v1alpha1\nkind: SrstReference\nmetadata: {name: s}\nspec: {gatewayAddress: srst.example}\n",
            "apiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: ConfigMap, metadata: {name: c}}]\n",
            "a: [unclosed\n",
        ];
        for (n, step) in steps.into_iter().enumerate() {
            let pick = |i: usize| dirs[i % dirs.len()].clone();
            match step {
                TreeStep::Dir { parent } => {
                    let dir = pick(parent).join(format!("d{n}"));
                    std::fs::create_dir(&dir).unwrap();
                    dirs.push(dir);
                }
                TreeStep::File { parent, content } => std::fs::write(pick(parent).join(format!("f{n}.yaml")), contents[content]).unwrap(),
                TreeStep::Link { parent, target, absolute } => {
                    let (link, target) = (pick(parent).join(format!("l{n}")), pick(target));
                    let target = if absolute { target } else { relative_to(&target, link.parent().unwrap()) };
                    std::os::unix::fs::symlink(target, link).unwrap();
                }
                TreeStep::Up { parent, levels } => {
                    std::os::unix::fs::symlink(if levels == 0 { ".".to_string() } else { "../".repeat(levels) }, pick(parent).join(format!("u{n}"))).unwrap();
                }
                TreeStep::Dangling { parent } => std::os::unix::fs::symlink("nowhere", pick(parent).join(format!("x{n}.yaml"))).unwrap(),
            }
        }
        let path = root.path().to_path_buf();
        let (documents, errors) = ends_quickly("load_paths", move || callguard::validate::manifest::load_paths(&[path]))?;
        for error in &errors {
            prop_assert!(error.file.starts_with(root.path()), "{error}");
        }
        prop_assert!(documents.len() <= 48, "a file was read more than once: {} documents", documents.len());
    }

    /// Nesting of any form past 64 levels, closed or not, is refused quickly with an error that
    /// says so; never a panic, never a parse that takes seconds.
    #[test]
    fn deep_nesting_of_any_form_is_refused_quickly(forms in prop::collection::vec(0..4usize, 65..600), extra in 0..20_000usize, closed in any::<bool>()) {
        let mut forms = forms;
        forms.extend(std::iter::repeat_n(2, extra));
        let yaml = nested_yaml(&forms, closed);
        let result = ends_quickly("parse_documents", move || parse_documents(Path::new("deep.yaml"), yaml.as_bytes()).map(|d| d.len()))?;
        let error = result.expect_err("nesting past 64 levels is refused");
        prop_assert!(error.message.contains("nested deeper than 64 levels"), "{error}");
    }

    /// Up to 64 levels, the same forms parse.
    #[test]
    fn nesting_up_to_64_levels_parses(forms in prop::collection::vec(0..4usize, 1..=64)) {
        let yaml = nested_yaml(&forms, true);
        prop_assert!(parse_documents(Path::new("nested.yaml"), yaml.as_bytes()).is_ok(), "{}", yaml);
    }
}

/// `target` as a path relative to `from`.
fn relative_to(target: &Path, from: &Path) -> PathBuf {
    let (target, from): (Vec<_>, Vec<_>) = (target.components().collect(), from.components().collect());
    let common = target.iter().zip(&from).take_while(|(a, b)| a == b).count();
    let mut path: PathBuf = std::iter::repeat_n("..", from.len() - common).collect();
    path.extend(&target[common..]);
    if path.as_os_str().is_empty() { PathBuf::from(".") } else { path }
}

/// `-o json`: one document with the verdict, the counts and each violation as fields, and the exit
/// code of the text form; `completion` prints a script that knows the subcommands.
#[test]
fn validate_speaks_json_to_tools_and_completion_knows_the_commands() {
    let quickstart = repo().join("examples/quickstart");
    let valid = callguard(&["validate", "-o", "json", quickstart.to_str().unwrap()]);
    assert_eq!(valid.status.code(), Some(0));
    let document: Value = serde_json::from_slice(&valid.stdout).expect("one JSON document");
    assert_eq!(document["result"], "valid");
    assert!(document["objects"].as_u64().unwrap() > 20 && document["violations"].as_array().unwrap().is_empty());
    let invalid = repo().join("examples/invalid/41-ctl-token-locked.yaml");
    let refused = callguard(&["validate", "--output", "json", invalid.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    let document: Value = serde_json::from_slice(&refused.stdout).expect("one JSON document");
    assert_eq!(document["result"], "invalid");
    let violation = &document["violations"][0];
    assert_eq!((violation["object"].as_str(), violation["field"].as_str()), (Some("CallControlCluster/lab"), Some("spec.ctl.tokens[1]")));
    assert!(violation["line"].as_u64().is_some() && violation["message"].as_str().unwrap().contains("P.16-5"));
    let empty = tempfile::tempdir().unwrap();
    let nothing = callguard(&["validate", "-o", "json", empty.path().to_str().unwrap()]);
    assert_eq!(nothing.status.code(), Some(2));
    assert_eq!(serde_json::from_slice::<Value>(&nothing.stdout).unwrap()["result"], "nothing-to-validate");

    for shell in ["bash", "zsh", "fish"] {
        let script = callguard(&["completion", shell]);
        assert_eq!(script.status.code(), Some(0), "{shell}");
        let text = text(&script.stdout);
        for word in ["validate", "local", "operator", "state-dir"] {
            assert!(text.contains(word), "{shell} completion lacks {word}");
        }
    }
    let help = text(&callguard(&["--help"]).stdout);
    assert!(!help.contains("crdgen"), "crdgen is the project's own tool, out of the user's way:\n{help}");
}
