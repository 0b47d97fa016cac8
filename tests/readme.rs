//! The README is a promise: every `callguard` command it shows names a subcommand and flags the
//! binary has, and every file or directory of the repository it names exists. A README command that
//! does not work is a bug, so this test reads the README the way a new user would copy from it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn readme() -> String {
    std::fs::read_to_string(root().join("README.md")).expect("README.md")
}

/// The shell blocks of the README, each with its first line number.
fn shell_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (number, line) in text.lines().enumerate() {
        match (&mut current, line.trim_start()) {
            (None, fence) if fence.starts_with("```sh") || fence.starts_with("```bash") => current = Some((number + 2, String::new())),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some((_, block)), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// The `callguard` commands of a block: continuation lines (a trailing `\`, or an indented line of
/// options under a synopsis) joined, comments dropped, `cargo run --release --` read as `callguard`.
fn commands(block: &str) -> Vec<String> {
    let mut commands: Vec<String> = Vec::new();
    let mut continues = false;
    for line in block.lines() {
        let code = line.split(" # ").next().unwrap_or_default().trim_end();
        let trimmed = code.trim_start();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continues = false;
            continue;
        }
        let text = trimmed.trim_end_matches('\\').trim().to_owned();
        let indented_options = line.starts_with(' ') && (trimmed.starts_with('[') || trimmed.starts_with("--"));
        match commands.last_mut() {
            Some(last) if continues || indented_options => {
                last.push(' ');
                last.push_str(&text);
            }
            _ => commands.push(text),
        }
        continues = code.ends_with('\\');
    }
    commands
        .into_iter()
        .filter_map(|c| {
            c.strip_prefix("callguard ").map(str::to_owned).or_else(|| c.strip_prefix("cargo run --release -- ").map(str::to_owned))
        })
        .collect()
}

fn help(words: &[String]) -> Option<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_callguard")).args(words).arg("--help").output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The subcommands listed in a help text's `Commands:` section.
fn subcommands(help: &str) -> BTreeSet<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn every_callguard_command_of_the_readme_names_real_subcommands_and_flags() {
    let readme = readme();
    let mut checked = 0;
    for (line, block) in shell_blocks(&readme) {
        for command in commands(&block) {
            let words: Vec<&str> = command.split_whitespace().collect();
            let mut path: Vec<String> = Vec::new();
            let mut text = help(&path).expect("callguard --help");
            for word in &words {
                if subcommands(&text).contains(*word) {
                    path.push((*word).to_owned());
                    text = help(&path).unwrap_or_else(|| panic!("README line {line}: `callguard {} --help` fails", path.join(" ")));
                } else {
                    break;
                }
            }
            assert!(!path.is_empty(), "README line {line}: `callguard {command}` names no subcommand");
            for flag in words.iter().filter_map(|w| w.trim_start_matches('[').split(['=', ']']).next()).filter(|w| w.starts_with("--")) {
                assert!(
                    text.contains(&format!("{flag} ")) || text.contains(&format!("{flag}\n")) || text.contains(&format!("{flag}=")),
                    "README line {line}: `callguard {}` has no flag {flag}:\n{text}",
                    path.join(" ")
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "the README's commands were found ({checked})");
}

/// Words in backticks or code blocks that name a repository path: they start with a top-level
/// entry of the repository and hold no placeholder.
fn repository_paths(text: &str) -> BTreeSet<String> {
    let top: BTreeSet<String> = std::fs::read_dir(root())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "target" && name != ".git")
        .collect();
    text.split(|c: char| c.is_whitespace() || "`'\"(),;:".contains(c))
        .map(|word| word.trim_end_matches(['.', '/']))
        .filter(|word| word.contains('/') && !word.contains("://"))
        .filter(|word| word.split('/').next().is_some_and(|first| top.contains(first)))
        .filter(|word| {
            !word.chars().any(|c| "<>*{}$[]".contains(c)) && !word.chars().any(|c| c.is_ascii_uppercase() && word.contains("NAME"))
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_repository_path_the_readme_names_exists() {
    let paths = repository_paths(&readme());
    assert!(paths.len() >= 10, "the README's paths were found: {paths:?}");
    let missing: Vec<&String> = paths.iter().filter(|path| !root().join(path).exists()).collect();
    assert!(missing.is_empty(), "the README names paths that do not exist: {missing:?}");
}

#[test]
fn the_extraction_reads_synopses_and_continuations() {
    let block = "# a comment\ncallguard operator [--namespace NS]... [--api-server-port PORT]...\n                   [--leader-election]\ncargo run --release -- local examples/quickstart\nhelm install x \\\n  --set a=b\n";
    assert_eq!(
        commands(block),
        ["operator [--namespace NS]... [--api-server-port PORT]... [--leader-election]", "local examples/quickstart"]
    );
    let paths = repository_paths("see `charts/callguard/values.yaml`, `scripts/test`, `examples/<kind>` and https://x/charts/y");
    assert_eq!(paths.into_iter().collect::<Vec<_>>(), ["charts/callguard/values.yaml", "scripts/test"]);
}
