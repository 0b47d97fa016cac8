//! `callguard plan OLD NEW` on the quickstart and an edited copy: a profile's mode changed, a token
//! replaced (made with `callguard token create`), a trunk profile's port changed, a description
//! edited. Each change gets the resets and restarts the guide asks for, with its page; the
//! description gets none; an invalid NEW is refused with validate's message; a git revision reads
//! as a directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn quickstart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart")
}

fn callguard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_callguard")).args(args).output().unwrap()
}

/// A directory holding a copy of the quickstart, to edit.
fn quickstart_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(quickstart()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

fn edit(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(from), "{from:?} in {}", file.display());
    std::fs::write(file, text.replacen(from, to, 1)).unwrap();
}

fn plan(old: &Path, new: &Path, format: &str) -> String {
    let out = callguard(&["plan", old.to_str().unwrap(), new.to_str().unwrap(), "--format", format]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_same_manifests_need_nothing() {
    let text = plan(&quickstart(), &quickstart(), "markdown");
    assert!(text.contains("No reset or restart is required."), "{text}");
}

#[test]
fn each_change_gets_the_resets_and_restarts_the_guide_asks_for() {
    let dir = quickstart_copy();
    // A description alone changes nothing a device sees.
    edit(&dir.path().join("profiles.yaml"), "description: phones without security", "description: lobby phones");
    let unchanged = plan(&quickstart(), dir.path(), "markdown");
    assert!(unchanged.contains("No reset or restart is required."), "{unchanged}");

    edit(
        &dir.path().join("profiles.yaml"),
        "deviceSecurityMode: Authenticated\n  authenticationMode: ByNullString",
        "deviceSecurityMode: Encrypted\n  authenticationMode: ByNullString",
    );
    edit(&dir.path().join("trunk.yaml"), "incomingPort: 5061", "incomingPort: 5071");
    // token-backup replaced by a new token.
    let password = dir.path().join("password");
    std::fs::write(&password, "FakeToken789").unwrap();
    let made = callguard(&[
        "token",
        "create",
        "--name",
        "token-new",
        "--password-file",
        password.to_str().unwrap(),
        "--with-password-secret",
        "--out",
        dir.path().join("token-new.yaml").to_str().unwrap(),
    ]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    std::fs::remove_file(&password).unwrap();
    edit(&dir.path().join("cluster.yaml"), "tokens: [token-primary, token-backup]", "tokens: [token-primary, token-new]");

    let text = plan(&quickstart(), dir.path(), "markdown");
    for row in [
        "| Reset | Phone/hallway-7911 | its security profile sccp-authenticated changes | P.1-10 |",
        "| Reset | Phone/hallway-7911 | TFTP serves it a new SEP00AABBCCDD04.cnf.xml, which it fetches when reset | P.1-16 |",
        "| Reset | SipTrunk/sbc | its security profile sbc-tls changes | P.14-7 |",
        "| ResetAllDevices | every device | the CTL is signed anew: the security tokens changed | P.16-5 |",
        "| Restart | CallManager | the CTL is signed anew: the security tokens changed | P.1-10 |",
        "| Restart | Tftp | the CTL is signed anew: the security tokens changed | P.1-10 |",
    ] {
        assert!(text.contains(row), "{row}\nin:\n{text}");
    }
    assert!(text.contains("Trust lists signed anew:\n- CTLFile.tlv"), "{text}");
    // Phones on the other profiles are left alone.
    assert!(!text.contains("Phone/lobby"), "{text}");

    let json: serde_json::Value = serde_json::from_str(&plan(&quickstart(), dir.path(), "json")).unwrap();
    let steps = json[0]["steps"].as_array().unwrap();
    assert!(steps.iter().any(|s| s["action"] == "Reset" && s["target"] == "SipTrunk/sbc" && s["page"] == "P.14-7"), "{json}");
    assert_eq!(json[0]["trustListsResigned"], serde_json::json!(["CTLFile.tlv"]), "{json}");
}

#[test]
fn a_rotation_is_planned_as_its_steps() {
    let dir = quickstart_copy();
    // A new hostname for the node whose certificate signs the ITL starts its rotation.
    edit(&dir.path().join("cluster.yaml"), "hostname: cm1.quickstart.example", "hostname: cm1-new.quickstart.example");
    let text = plan(&quickstart(), dir.path(), "markdown");
    assert!(text.contains("Rotation steps:\n- ITL signer rotation, step 1 of 2 ("), "{text}");
    assert!(text.contains("- under way: ITL signer rotation, step 1 of 2: the ITL lists the incoming signer"), "{text}");

    // The CA, asked for by annotation.
    edit(
        &dir.path().join("cluster.yaml"),
        "  name: quickstart\n",
        "  name: quickstart\n  annotations:\n    callguard.io/rotate-ca: \"2026-12\"\n",
    );
    let json: serde_json::Value = serde_json::from_str(&plan(&quickstart(), dir.path(), "json")).unwrap();
    let steps: Vec<&str> = json[0]["rotationSteps"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert!(steps.iter().any(|s| s.starts_with("CA rotation, step 1 of 2 (asked by callguard.io/rotate-ca)")), "{steps:?}");
    assert!(steps.iter().any(|s| s.starts_with("under way: CA rotation, step 1 of 2: the previous CA stays trusted")), "{steps:?}");
    // Unchanged manifests plan no rotation.
    let json: serde_json::Value = serde_json::from_str(&plan(&quickstart(), &quickstart(), "json")).unwrap();
    assert_eq!(json[0]["rotationSteps"], serde_json::json!([]));
}

#[test]
fn an_invalid_new_is_refused_with_the_validation_message() {
    let dir = quickstart_copy();
    edit(&dir.path().join("trunk.yaml"), "incomingPort: 5061", "incomingPort: 99999");
    let out = callguard(&["plan", quickstart().to_str().unwrap(), dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not valid") && stderr.contains("incomingPort"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_git_revision_reads_as_its_directory() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO_BIN_EXE_callguard"))
        .current_dir(&root)
        .args(["plan", "HEAD:examples/quickstart", quickstart().to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("## callguard plan: `HEAD:examples/quickstart`"));
    let missing = callguard(&["plan", "no-such-revision:examples/quickstart", quickstart().to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("git archive"), "{}", String::from_utf8_lossy(&missing.stderr));
}
