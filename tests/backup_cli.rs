//! `callguard backup` and `callguard restore` of a state directory: the quickstart built, backed up,
//! restored into a new directory and built again serves the same trust lists and phone files, byte
//! for byte, with the same CA. The backup holds no key in the clear and is its owner's alone; a
//! wrong passphrase, a state that exists, a short passphrase and a link in the state are refused
//! with nothing written.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn quickstart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart")
}

fn callguard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_callguard")).args(args).output().unwrap()
}

fn ok(output: Output) -> String {
    assert!(output.status.success(), "{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn refused(output: Output) -> String {
    assert_eq!(output.status.code(), Some(2), "{}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8(output.stderr).unwrap()
}

/// `callguard backup` of the state directory `state` into `out`.
fn take_backup(state: &Path, out: &Path, passphrase: &Path) -> Output {
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    callguard(&["backup", "--state-dir", &path(state), "--out", &path(out), "--passphrase-file", &path(passphrase)])
}

/// `callguard restore` of `file` into the state directory `state`.
fn restore(file: &Path, state: &Path, passphrase: &Path) -> Output {
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    callguard(&["restore", &path(file), "--state-dir", &path(state), "--passphrase-file", &path(passphrase)])
}

fn build(state: &Path, out: &Path) {
    ok(callguard(&["build", quickstart().to_str().unwrap(), "--state-dir", state.to_str().unwrap(), "--out", out.to_str().unwrap()]));
}

/// Every file under `dir`, by relative path.
fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut found = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.insert(path.strip_prefix(dir).unwrap().to_string_lossy().into_owned(), std::fs::read(&path).unwrap());
            }
        }
    }
    found
}

#[test]
fn a_restored_state_serves_the_same_files_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (state, served) = (dir.path().join("state"), dir.path().join("served"));
    build(&state, &served);
    let passphrase = dir.path().join("passphrase");
    std::fs::write(&passphrase, "a long enough passphrase\n").unwrap();
    let backup = dir.path().join("voice.backup");
    let said = ok(take_backup(&state, &backup, &passphrase));
    assert!(said.contains("of 1 namespace(s)"), "{said}");
    let sealed = std::fs::read(&backup).unwrap();
    assert!(!sealed.windows(11).any(|w| w == b"PRIVATE KEY"), "no key in the clear");
    assert_eq!(std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777, 0o600);
    let again = refused(take_backup(&state, &backup, &passphrase));
    assert!(again.contains("never written over a file"), "{again}");

    let (restored, served_again) = (dir.path().join("restored"), dir.path().join("served-again"));
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "another long passphrase").unwrap();
    let refusal = refused(restore(&backup, &restored, &wrong));
    assert!(refusal.contains("cannot be opened"), "{refusal}");
    assert!(!restored.join("namespaces").exists(), "nothing written on a wrong passphrase");

    ok(restore(&backup, &restored, &passphrase));
    let ca = |state: &Path| std::fs::read(state.join("namespaces/default/ca/ca.crt")).unwrap();
    assert_eq!(ca(&state), ca(&restored));
    let key = restored.join("namespaces/default/ca/ca.key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o077, 0, "a key stays its owner's");
    build(&restored, &served_again);
    let (before, after) = (files(&served), files(&served_again));
    assert!(
        before.keys().any(|name| name.ends_with("ITLFile.tlv")) && before.keys().any(|name| name.ends_with("CTLFile.tlv")),
        "{:?}",
        before.keys()
    );
    assert_eq!(before, after, "the same files, byte for byte");

    // Into a state that exists: refused whole.
    let exists = refused(restore(&backup, &state, &passphrase));
    assert!(exists.contains("already holds a state") && exists.contains("nothing was written"), "{exists}");
}

#[test]
fn a_short_passphrase_and_a_link_in_the_state_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    build(&state, &dir.path().join("served"));
    let short = dir.path().join("short");
    std::fs::write(&short, "short").unwrap();
    let out = dir.path().join("b");
    let refusal = refused(take_backup(&state, &out, &short));
    assert!(refusal.contains("at least 12"), "{refusal}");
    assert!(!out.exists());

    std::os::unix::fs::symlink(&state, state.join("namespaces/default/loop")).unwrap();
    let long = dir.path().join("long");
    std::fs::write(&long, "a long enough passphrase").unwrap();
    let refusal = refused(take_backup(&state, &out, &long));
    assert!(refusal.contains("a link"), "{refusal}");
}
