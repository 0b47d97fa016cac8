//! The repository stands alone: what it cites is in it. No file cites the team's material outside the
//! repository; every `docs/NAME.md` reference names a file of `docs/`, and every `§N.M` after it a
//! heading of that file; `docs/architecture.md` names every module of `operator/src`.
//!
//! Walks the directory, not git's index, so that it checks a tarball as well as a clone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use regex::Regex;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Every text file of the repository but build output, git's own, and this file, which names the
/// documents it looks for; by path relative to the root.
fn text_files() -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let relative = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let file_type = entry.file_type().unwrap();
            if file_type.is_dir() {
                if !matches!(relative.as_str(), "target" | ".git") {
                    walk(root, &path, out);
                }
            } else if file_type.is_file()
                && let Ok(text) = std::fs::read_to_string(&path)
            {
                out.insert(relative, text);
            }
        }
    }
    let root = repo();
    let mut files = BTreeMap::new();
    walk(&root, &root, &mut files);
    files.remove("tests/docs.rs");
    assert!(files.contains_key("README.md") && files.keys().any(|f| f.starts_with("operator/src/")), "the walk found the sources");
    files
}

/// The citations of documents that are not in the repository. Spelled in pieces so that this file
/// does not match itself.
fn outside_citation() -> Regex {
    let patterns = [
        ["spec", "/0[0-9]"].concat(),
        ["spec", " 0[0-9]"].concat(),
        ["DESI", "GN"].concat(),
        ["STY", r"LE\.md"].concat(),
        [r"\.\./", "shared"].concat(),
    ];
    Regex::new(&patterns.join("|")).unwrap()
}

#[test]
fn nothing_cites_a_document_outside_the_repository() {
    let pattern = outside_citation();
    let mut found = Vec::new();
    for (path, text) in text_files() {
        for (number, line) in text.lines().enumerate() {
            if pattern.is_match(line) {
                found.push(format!("{path}:{}: {}", number + 1, line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "cite the guide's pages or docs/ instead:\n{}", found.join("\n"));
}

#[test]
fn the_outside_citation_pattern_catches_what_it_must() {
    let pattern = outside_citation();
    // Assembled here, so that `git grep` for these citations finds nothing in the repository.
    let cited = [
        ["(spec", "/04 §3.9)"].concat(),
        ["spec", " 01 §16.3"].concat(),
        ["(DESI", "GN: secrets)"].concat(),
        ["see STY", "LE.md"].concat(),
        ["../sha", "red/x"].concat(),
    ];
    for cited in cited {
        assert!(pattern.is_match(&cited), "{cited}");
    }
    for fine in ["docs/wire-formats.md §3.9", "P.3-18", "Table 14-1", "the design of the server"] {
        assert!(!pattern.is_match(fine), "{fine}");
    }
}

/// The section numbers of a Markdown file's headings: `## 3. Title` gives `3`, `### 3.9 Title` `3.9`.
fn heading_numbers(markdown: &str) -> BTreeSet<String> {
    let heading = Regex::new(r"^#{1,6}\s+([0-9]+(?:\.[0-9]+)*)\.?\s").unwrap();
    markdown.lines().filter_map(|line| heading.captures(line)).map(|c| c[1].to_string()).collect()
}

/// Every `docs/NAME.md` reference, with the section numbers that follow it (`§3.1 and §6.2`).
fn doc_references(text: &str) -> Vec<(String, Vec<String>)> {
    let reference = Regex::new(r"docs/([A-Za-z0-9_-]+\.md)((?:(?:\s*(?:,|and|or|;))?\s*§\s*[0-9]+(?:\.[0-9]+)*)*)").unwrap();
    let section = Regex::new(r"§\s*([0-9]+(?:\.[0-9]+)*)").unwrap();
    reference.captures_iter(text).map(|c| (c[1].to_string(), section.captures_iter(&c[2]).map(|s| s[1].to_string()).collect())).collect()
}

#[test]
fn every_docs_reference_names_a_file_and_a_heading_that_exist() {
    let files = text_files();
    let headings: BTreeMap<String, BTreeSet<String>> =
        files.iter().filter_map(|(path, text)| path.strip_prefix("docs/").map(|name| (name.to_string(), heading_numbers(text)))).collect();
    for required in ["architecture.md", "wire-formats.md", "security-model.md", "operations.md"] {
        assert!(headings.contains_key(required), "docs/{required} is missing");
    }
    let mut broken = Vec::new();
    let mut checked = 0;
    for (path, text) in &files {
        for (document, sections) in doc_references(text) {
            checked += 1;
            match headings.get(&document) {
                None => broken.push(format!("{path}: docs/{document} does not exist")),
                Some(numbers) => {
                    for section in sections.iter().filter(|s| !numbers.contains(*s)) {
                        broken.push(format!("{path}: docs/{document} has no heading §{section}"));
                    }
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} references found: the pattern no longer matches the citations");
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn references_and_headings_are_read_as_written() {
    assert_eq!(
        doc_references("(docs/wire-formats.md §3.1 and §6.2: UDP 69), docs/architecture.md, docs/x.md §7.6, §7.7"),
        vec![
            ("wire-formats.md".to_string(), vec!["3.1".to_string(), "6.2".to_string()]),
            ("architecture.md".to_string(), vec![]),
            ("x.md".to_string(), vec!["7.6".to_string(), "7.7".to_string()]),
        ]
    );
    let numbers = heading_numbers("# Title\n## 3. CTL and ITL\n### 3.9 Trust semantics\nnot 4.1 a heading\n#### 7.4.2 Deep\n");
    assert_eq!(numbers, ["3", "3.9", "7.4.2"].iter().map(|s| s.to_string()).collect());
}

/// Markdown without its code: fenced blocks and inline code spans, where brackets are not links.
fn prose(markdown: &str) -> String {
    let inline_code = Regex::new(r"`[^`]*`").unwrap();
    let mut fenced = false;
    let mut out = String::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            out.push_str(&inline_code.replace_all(line, ""));
            out.push('\n');
        }
    }
    out
}

/// Links between the docs and from the README: `[text](file.md)` names a file that exists.
#[test]
fn markdown_links_to_files_name_files_that_exist() {
    let link = Regex::new(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)").unwrap();
    let root = repo();
    let mut broken = Vec::new();
    for (path, text) in text_files().iter().filter(|(p, _)| p.ends_with(".md")) {
        let base = root.join(path).parent().unwrap().to_path_buf();
        for target in link.captures_iter(&prose(text)).map(|c| c[1].to_string()) {
            if !base.join(&target).exists() {
                broken.push(format!("{path}: {target}"));
            }
        }
    }
    assert!(broken.is_empty(), "links to missing files:\n{}", broken.join("\n"));
}

/// `core/build/mod.rs` is `core::build`, `core/build/state.rs` `core::build::state`; test-only
/// modules (`tests.rs`) are left out.
fn modules() -> Vec<String> {
    let src = repo().join("operator/src");
    let mut modules: Vec<String> = text_files()
        .keys()
        .filter_map(|path| path.strip_prefix("operator/src/"))
        .filter(|path| path.ends_with(".rs") && !path.ends_with("tests.rs"))
        .map(|path| path.trim_end_matches(".rs").trim_end_matches("/mod").replace('/', "::"))
        .collect();
    assert!(src.join("lib.rs").exists());
    modules.sort();
    modules
}

#[test]
fn the_architecture_names_every_module_of_the_source() {
    let architecture = std::fs::read_to_string(repo().join("docs/architecture.md")).unwrap();
    let modules = modules();
    assert!(modules.contains(&"core::build::state".to_string()) && modules.contains(&"core".to_string()), "{modules:?}");
    let missing: Vec<&String> = modules.iter().filter(|m| !architecture.contains(&format!("| `{m}` |"))).collect();
    assert!(missing.is_empty(), "docs/architecture.md §2 has no row for {missing:?}: add one saying what it owns");
}

/// Source files the docs and the README point to exist: `operator/src/...`, `tests/...`, or a path
/// under `operator/src` such as `core/trust/tlv.rs`.
#[test]
fn source_paths_in_the_docs_exist() {
    let path =
        Regex::new(r"\b((?:operator/src/|tests/|fake-apiserver/src/|api/|validate/|core/|services/|adapters/|ops/)[a-z0-9_/]*\.rs)\b")
            .unwrap();
    let root = repo();
    let mut broken = Vec::new();
    let mut checked = 0;
    for (document, text) in text_files().iter().filter(|(p, _)| p.ends_with(".md")) {
        for cited in path.captures_iter(text).map(|c| c[1].to_string()) {
            checked += 1;
            let under_src = !["operator/", "tests/", "fake-apiserver/"].iter().any(|p| cited.starts_with(p));
            let file = if under_src { root.join("operator/src").join(&cited) } else { root.join(&cited) };
            if !file.exists() {
                broken.push(format!("{document}: {cited}"));
            }
        }
    }
    assert!(checked > 20, "only {checked} paths found: the pattern no longer matches");
    assert!(broken.is_empty(), "paths that do not exist:\n{}", broken.join("\n"));
}
