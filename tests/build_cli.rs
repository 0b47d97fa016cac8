//! `callguard build` on the quickstart, checked with `callguard trust` and with openssl: the CTL's
//! records, signatures against the published trust lists, determinism across rebuilds, encrypted
//! configuration for a phone with a certificate, the lost-token procedure and the token lock
//! (docs/wire-formats.md §3-5, P.3-12, P.16-5).

#[path = "support/process.rs"]
mod process;
use process::copy_quickstart;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use callguard::core::pki::ca::ClusterCa;
use callguard::core::pki::issue::{LscKeySource, LscRequest, issue_lsc};
use callguard::core::pki::serial::Serial;
use rsa::pkcs8::EncodePublicKey;
use serde_json::Value;

fn callguard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_callguard")).args(args).output().expect("the callguard binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A copy of the quickstart that a test may edit, with its own state directory.
struct Workspace {
    _dir: tempfile::TempDir,
    manifests: PathBuf,
    state: PathBuf,
}

impl Workspace {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let manifests = copy_quickstart(dir.path());
        let state = dir.path().join("state");
        Workspace { _dir: dir, manifests, state }
    }

    fn build(&self) -> Output {
        self.build_exits(0)
    }

    /// Builds and checks the exit code: 1 when the cluster is NotReady, its trust lists not what
    /// its spec asks, though the files are written.
    fn build_exits(&self, code: i32) -> Output {
        let output = callguard(&["build", self.manifests.to_str().unwrap(), "--state-dir", self.state.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(code), "build: {}{}", stdout(&output), String::from_utf8_lossy(&output.stderr));
        output
    }

    fn tftp(&self, name: &str) -> PathBuf {
        self.state.join("tftp/default").join(name)
    }

    fn edit(&self, file: &str, from: &str, to: &str) {
        let path = self.manifests.join(file);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} does not contain {from:?}");
        fs::write(path, text.replacen(from, to, 1)).unwrap();
    }

    fn token_status(&self, name: &str) -> serde_yaml::Value {
        let text = fs::read_to_string(self.state.join(format!("namespaces/default/status/tokens/{name}.yaml"))).unwrap_or_default();
        serde_yaml::from_str(&text).unwrap_or(serde_yaml::Value::Null)
    }
}

fn inspect_json(file: &Path) -> Value {
    let output = callguard(&["trust", "inspect", file.to_str().unwrap(), "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("inspect --json prints JSON")
}

fn records(description: &Value) -> Vec<(String, String, String)> {
    description["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["role"].as_str().unwrap().to_string(),
                r["subject"].as_str().unwrap().to_string(),
                r["serial_hex"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn verify(file: &Path, flag: &str, against: &Path) -> Output {
    callguard(&["trust", "verify", file.to_str().unwrap(), flag, against.to_str().unwrap()])
}

#[test]
fn quickstart_ctl_lists_both_tokens_ccm_tftp_and_capf_and_verifies() {
    let ws = Workspace::new();
    ws.build();
    let ctl = ws.tftp("CTLFile.tlv");
    let description = inspect_json(&ctl);
    let records = records(&description);
    let roles: Vec<&str> = records.iter().map(|(role, _, _)| role.as_str()).collect();
    assert_eq!(roles, ["SAST", "SAST", "CCM+TFTP", "CCM+TFTP", "CAPF"], "{records:?}");
    assert_eq!(
        records[0].1, "CN=token-primary,O=Example,OU=Quickstart",
        "the signing token's SAST comes first (docs/wire-formats.md §3.6)"
    );
    assert_eq!(records[1].1, "CN=token-backup,O=Example,OU=Quickstart");
    // Each token's status says whether the served CTL lists it and whether it signed it.
    let listed = |name: &str| {
        let status = ws.token_status(name);
        (status["inCurrentCtl"].as_bool(), status["signedCurrentCtl"].as_bool())
    };
    assert_eq!(listed("token-primary"), (Some(true), Some(true)));
    assert_eq!(listed("token-backup"), (Some(true), Some(false)));
    assert!(records[2..].iter().all(|(_, subject, _)| subject.starts_with("CN=cm")), "{records:?}");
    for (_, _, serial) in &records {
        assert!(serial.len() >= 2 && serial.chars().all(|c| c.is_ascii_hexdigit()), "{serial}");
    }
    assert_eq!(description["header"]["signer_serial_hex"].as_str(), Some(records[0].2.as_str()));
    // The readable form names the same records.
    let text = stdout(&callguard(&["trust", "inspect", ctl.to_str().unwrap()]));
    for needle in ["SAST", "CCM+TFTP", "CAPF", "CN=token-backup,O=Example,OU=Quickstart", &records[4].2] {
        assert!(text.contains(needle), "inspect does not show {needle}:\n{text}");
    }

    // The CTL verifies with its own SAST; the ITL likewise; every signed configuration verifies
    // against the TFTP record of both lists.
    assert_eq!(callguard(&["trust", "verify", ctl.to_str().unwrap()]).status.code(), Some(0));
    let itl = ws.tftp("ITLFile.tlv");
    assert_eq!(callguard(&["trust", "verify", itl.to_str().unwrap()]).status.code(), Some(0));
    let itl_roles: Vec<String> = self::records(&inspect_json(&itl)).into_iter().map(|(role, _, _)| role).collect();
    assert_eq!(
        itl_roles,
        ["SAST", "CCM+TFTP", "CCM+TFTP", "CAPF", "TVS"],
        "the ITL is signed by the TFTP certificate and lists TVS's, which the CTL does not (docs/wire-formats.md §3.1, §8)"
    );
    let mut signed = 0;
    for entry in fs::read_dir(ws.state.join("tftp/default")).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with(".cnf.xml.sgn") {
            for list in [&ctl, &itl] {
                let output = verify(&path, "--ctl", list);
                assert_eq!(output.status.code(), Some(0), "{}: {}", path.display(), String::from_utf8_lossy(&output.stderr));
            }
            signed += 1;
        }
    }
    assert_eq!(signed, 7, "one signed configuration per quickstart phone");

    // Every phone also gets ITLSEP<MAC>.tlv and CTLSEP<MAC>.tlv, which carry the generic name in their
    // header (docs/wire-formats.md §3.1), so they verify and equal the generic lists.
    let mut per_phone = 0;
    for entry in fs::read_dir(ws.state.join("tftp/default")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let Some(device) = name.strip_suffix(".cnf.xml.sgn") else { continue };
        for (prefix, generic) in [("ITL", &itl), ("CTL", &ctl)] {
            let path = ws.tftp(&format!("{prefix}{device}.tlv"));
            assert_eq!(fs::read(&path).unwrap(), fs::read(generic).unwrap(), "{}", path.display());
            let header = inspect_json(&path)["header"]["filename"].as_str().map(str::to_string);
            assert_eq!(header.as_deref(), Some(&format!("{prefix}File.tlv")[..]), "{}", path.display());
            per_phone += 1;
        }
    }
    assert_eq!(per_phone, 14, "ITLSEP and CTLSEP for each of the 7 quickstart phones");
}

#[test]
fn a_rebuild_changes_nothing_and_keeps_the_ca() {
    let ws = Workspace::new();
    let first = stdout(&ws.build());
    assert!(first.contains("created the cluster CA"), "{first}");
    let snapshot = |ws: &Workspace| -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<_> = fs::read_dir(ws.state.join("tftp/default"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), fs::read(&p).unwrap()))
            .collect();
        files.sort();
        files
    };
    let files = snapshot(&ws);
    let ca = fs::read(ws.state.join("namespaces/default/ca/ca.crt")).unwrap();
    let second = stdout(&ws.build());
    assert!(!second.contains("created") && !second.contains("issued") && !second.contains("published"), "{second}");
    assert_eq!(snapshot(&ws), files, "same input and state give the same bytes (docs/wire-formats.md §3.7 step 5)");
    assert_eq!(fs::read(ws.state.join("namespaces/default/ca/ca.crt")).unwrap(), ca);
    // Private keys are owner-only.
    use std::os::unix::fs::PermissionsExt;
    for key in
        ["namespaces/default/ca/ca.key", "namespaces/default/certs/cm1.callmanager-tftp.key", "namespaces/default/certs/cm1.capf.key"]
    {
        assert_eq!(fs::metadata(ws.state.join(key)).unwrap().permissions().mode() & 0o777, 0o600, "{key}");
    }
    // A changed phone changes its file only.
    ws.edit("phones.yaml", "directoryNumbers: [\"1002\"]", "directoryNumbers: [\"1009\"]");
    ws.build();
    let changed: Vec<String> = snapshot(&ws).into_iter().zip(files).filter(|(new, old)| new != old).map(|(new, _)| new.0).collect();
    assert!(!changed.is_empty() && changed.iter().all(|name| name.starts_with("SEP00AABBCCDD02")), "{changed:?}");
}

/// A phone key and its LSC, issued by the workspace's cluster CA.
fn phone_certificate(ws: &Workspace, device: &str, dir: &Path) -> (PathBuf, Vec<u8>) {
    let ca = ClusterCa::from_pem(
        &fs::read_to_string(ws.state.join("namespaces/default/ca/ca.crt")).unwrap(),
        &fs::read_to_string(ws.state.join("namespaces/default/ca/ca.key")).unwrap(),
    )
    .unwrap();
    let key = callguard::core::pki::keys::generate_rsa(2048);
    let spki = rsa::RsaPublicKey::from(&key).to_public_key_der().unwrap();
    let request = LscRequest {
        device_name: device,
        key: LscKeySource::PublicKey(spki.as_bytes()),
        validity_days: 365,
        serial: Serial::random(&mut rand::thread_rng()),
        now: time::OffsetDateTime::now_utc(),
    };
    let lsc = issue_lsc(&ca, &request).unwrap().certificate_der;
    let key_path = dir.join(format!("{device}.key"));
    fs::write(&key_path, callguard::core::pki::keys::pkcs8_pem(&key)).unwrap();
    (key_path, lsc)
}

#[test]
fn an_encrypted_phone_with_a_certificate_gets_a_file_only_its_key_opens() {
    let ws = Workspace::new();
    ws.build();
    let device = "SEP001122334455"; // lobby-7970, sccp-encrypted
    assert!(!ws.tftp(&format!("{device}.cnf.xml.enc.sgn")).exists(), "no certificate, no encrypted file (docs/wire-formats.md §5.1)");
    let keys = tempfile::tempdir().unwrap();
    let (key, lsc) = phone_certificate(&ws, device, keys.path());
    fs::create_dir_all(ws.state.join("namespaces/default/devices")).unwrap();
    fs::write(ws.state.join(format!("namespaces/default/devices/{device}.crt")), &lsc).unwrap();
    ws.build();

    let encrypted = ws.tftp(&format!("{device}.cnf.xml.enc.sgn"));
    let ctl = ws.tftp("CTLFile.tlv");
    let output =
        callguard(&["trust", "decrypt", encrypted.to_str().unwrap(), "--key", key.to_str().unwrap(), "--ctl", ctl.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let plain = stdout(&output);
    let md5 = callguard::core::pki::inspect::md5_hex(&lsc);
    assert!(plain.contains("<fullConfig>true</fullConfig>") && plain.contains("<deviceSecurityMode>3</deviceSecurityMode>"), "{plain}");
    assert!(plain.contains(&format!("<certHash>{md5}</certHash>")) && plain.contains("<encrConfig>true</encrConfig>"), "{plain}");

    // The signed stub carries the same certHash; the plain name serves the unsigned stub, never the
    // full configuration (docs/wire-formats.md §5.5, §5.6).
    let stub = fs::read_to_string(ws.tftp(&format!("{device}.cnf.xml"))).unwrap();
    assert!(stub.contains("<fullConfig>false</fullConfig>") && stub.contains(&md5), "{stub}");
    let signed = fs::read(ws.tftp(&format!("{device}.cnf.xml.sgn"))).unwrap();
    assert!(String::from_utf8_lossy(&signed).contains(&stub), "the .sgn payload is the stub");

    // Another phone's key does not open it, and nothing is printed.
    let (other_key, _) = phone_certificate(&ws, "SEP00AABBCCDD06", keys.path());
    let output =
        callguard(&["trust", "decrypt", encrypted.to_str().unwrap(), "--key", other_key.to_str().unwrap(), "--ctl", ctl.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.stdout.is_empty());
}

#[test]
fn a_lost_token_leaves_the_ctl_which_a_remaining_token_re_signs() {
    let ws = Workspace::new();
    ws.build();
    let first = fs::read(ws.tftp("CTLFile.tlv")).unwrap();
    let first_path = ws.state.join("first-CTLFile.tlv");
    fs::write(&first_path, &first).unwrap();

    // P.16-5: buy a new token, and with a token of the CTL add it and delete the lost one.
    let password = ws.manifests.join("new-token-password");
    fs::write(&password, "example-only-new-9Qx").unwrap();
    let created = callguard(&[
        "token",
        "create",
        "--name",
        "token-new",
        "--password-file",
        password.to_str().unwrap(),
        "--organization",
        "Example",
        "--with-password-secret",
        "--out",
        ws.manifests.join("token-new.yaml").to_str().unwrap(),
    ]);
    assert_eq!(created.status.code(), Some(0), "{}", String::from_utf8_lossy(&created.stderr));
    fs::remove_file(&password).unwrap();
    ws.edit(
        "tokens.yaml",
        "  password: {name: token-primary-password, key: password}",
        "  password: {name: token-primary-password, key: password}\n  state: Lost",
    );
    ws.edit("cluster.yaml", "tokens: [token-primary, token-backup]", "tokens: [token-backup, token-new]");
    ws.edit("cluster.yaml", "signingToken: token-primary", "signingToken: token-backup");
    let output = stdout(&ws.build());
    assert!(output.contains("published a new CTLFile.tlv"), "{output}");

    let ctl = ws.tftp("CTLFile.tlv");
    let description = inspect_json(&ctl);
    let subjects: Vec<String> = records(&description).into_iter().filter(|(role, _, _)| role == "SAST").map(|(_, s, _)| s).collect();
    assert_eq!(subjects, ["CN=token-backup,O=Example,OU=Quickstart", "CN=token-new,O=Example"]);
    assert_eq!(description["header"]["signer_name"], "CN=token-backup,O=Example,OU=Quickstart");
    // Phones holding the first CTL accept the new one: it is signed by a SAST they trust (docs/wire-formats.md §3.9).
    let output = verify(&ctl, "--ctl", &first_path);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn wrong_token_passwords_count_once_each_and_the_sixteenth_locks_for_good() {
    let ws = Workspace::new();
    ws.build();
    let published = fs::read(ws.tftp("CTLFile.tlv")).unwrap();
    let right = "example-only-primary-4fJq9";
    let key_pem = fs::read_to_string(ws.manifests.join("secrets.yaml")).unwrap();
    let mut current = right.to_string();
    let mut set_password = |ws: &Workspace, password: &str| {
        ws.edit("secrets.yaml", &format!("password: {current}\n"), &format!("password: {password}\n"));
        current = password.to_string();
    };

    set_password(&ws, "wrong-1");
    for _ in 0..2 {
        // The CTL the spec asks for was not signed: the build fails, and says why on stderr.
        let output = ws.build_exits(1);
        let text = stdout(&output);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("callguard build: namespace default: CallControlCluster/quickstart is NotReady (CtlNotSigned)"),
            "{stderr}"
        );
        assert!(text.contains("CallControlCluster/quickstart: NotReady CtlNotSigned"), "{text}");
        assert!(text.contains("wrong token password"), "{text}");
        assert!(text.contains("SecurityToken/token-primary: NotReady WrongPassword: 1 consecutive"), "{text}");
        assert!(!text.contains("PRIVATE KEY") && !text.contains("wrong-1"), "neither the key nor the password is shown: {text}");
        assert_eq!(fs::read(ws.tftp("CTLFile.tlv")).unwrap(), published, "the published CTL stays served");
    }
    // A retry of the same wrong password is one attempt.
    assert_eq!(ws.token_status("token-primary")["consecutiveFailedLogins"].as_u64(), Some(1));
    // The offline attack on what was stored: the unkeyed SHA-256 of a label, the certificate and a
    // guess, checked against status at hundreds of thousands of guesses a second. Nothing in the
    // state is that value, nor any hash of the password alone: the stored MAC needs the registry's key.
    let unindented: String = key_pem.lines().map(|line| format!("{}\n", line.trim_start())).collect();
    let certificate = callguard::core::token::material::certificate_der(unindented.as_bytes()).unwrap();
    let old_fingerprint = {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        hash.update(b"callguard/token/wrong-password-fingerprint/v1\0");
        hash.update((certificate.len() as u64).to_be_bytes());
        hash.update(&certificate);
        hash.update(b"wrong-1");
        hash.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let plain_hash: String = {
        use sha2::Digest;
        sha2::Sha256::digest(b"wrong-1").iter().map(|b| format!("{b:02x}")).collect()
    };
    let namespace = ws.state.join("namespaces/default");
    for path in walk(&namespace) {
        let text = String::from_utf8_lossy(&fs::read(&path).unwrap()).into_owned();
        assert!(!text.contains(&old_fingerprint) && !text.contains(&plain_hash), "{} holds a guessable hash", path.display());
    }
    let registry = fs::read_to_string(namespace.join("tokens/registry.yaml")).unwrap();
    assert!(registry.contains("lastFailedPasswordMac"), "the registry remembers the attempt: {registry}");
    let status = ws.token_status("token-primary");
    let hashes = status
        .as_mapping()
        .unwrap()
        .values()
        .filter_map(|v| v.as_str())
        .filter(|v| v.len() >= 32 && v.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(hashes.count(), 0, "the status shows no value derived from the password: {status:?}");

    for attempt in 2..=16 {
        set_password(&ws, &format!("wrong-{attempt}"));
        ws.build_exits(1);
    }
    let status = ws.token_status("token-primary");
    assert_eq!(status["consecutiveFailedLogins"].as_u64(), Some(16), "{status:?}");
    assert_eq!(status["locked"].as_bool(), Some(true), "the 16th consecutive failure locks the token (P.16-5)");

    // The right password no longer opens it: the remaining token of the published CTL signs, and the
    // locked one leaves the file (P.16-5, docs/wire-formats.md §3.9).
    // A CTL with one usable token is published, but it is not the two the spec asks for (P.3-13).
    set_password(&ws, right);
    let text = stdout(&ws.build_exits(1));
    assert!(text.contains("SecurityToken/token-primary: NotReady Locked"), "{text}");
    assert!(text.contains("CallControlCluster/quickstart: NotReady FewerThanTwoTokens"), "{text}");
    assert!(text.contains("the CTL is signed by \"token-backup\" instead"), "{text}");
    assert_eq!(ws.token_status("token-primary")["locked"].as_bool(), Some(true));
    let ctl = ws.tftp("CTLFile.tlv");
    let description = inspect_json(&ctl);
    let sast: Vec<String> = records(&description).into_iter().filter(|(role, _, _)| role == "SAST").map(|(_, s, _)| s).collect();
    assert_eq!(sast, ["CN=token-backup,O=Example,OU=Quickstart"]);
    let first = ws.state.join("first-CTLFile.tlv");
    fs::write(&first, &published).unwrap();
    assert_eq!(verify(&ctl, "--ctl", &first).status.code(), Some(0), "phones holding the first CTL accept it");
    assert!(!text.contains(key_pem.lines().find(|l| l.len() > 40 && !l.contains(' ')).unwrap_or("-----")), "no key material in output");
}

/// Every file below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

/// The TFTP root of the workspace's `default` namespace, built in process.
fn served(ws: &Workspace) -> callguard::core::build::served::ServedFiles {
    let mut built = callguard::core::build::build_paths(
        std::slice::from_ref(&ws.manifests),
        &ws.state,
        time::OffsetDateTime::now_utc(),
        &Default::default(),
    )
    .unwrap_or_else(|_| panic!("the workspace is valid"));
    built.remove("default").expect("namespace default").expect("the build succeeds").served
}

#[test]
fn phone_files_are_signed_on_demand_and_kept_while_their_content_is_unchanged() {
    use callguard::services::tftp::FileSource;
    let ws = Workspace::new();
    ws.build();
    let lobby = "SEP001122334455"; // encrypted: a fresh AES key would change its bytes on every render
    let keys = tempfile::tempdir().unwrap();
    let (_, lsc) = phone_certificate(&ws, lobby, keys.path());
    fs::create_dir_all(ws.state.join("namespaces/default/devices")).unwrap();
    fs::write(ws.state.join(format!("namespaces/default/devices/{lobby}.crt")), &lsc).unwrap();

    let first = served(&ws);
    assert_eq!(first.phones.cache().counters().renders, 0, "the build resolves phones but signs none of them");
    let encrypted = first.get(&format!("{lobby}.cnf.xml.enc.sgn")).expect("the encrypted file is served");
    let bob = first.get("SEP00AABBCCDD02.cnf.xml.sgn").expect("bob's signed file is served");
    assert_eq!(first.phones.cache().counters().renders, 2, "one render per phone asked for");
    assert_eq!(first.get(&format!("{lobby}.cnf.xml.enc.sgn")), Some(encrypted.clone()), "asked again: the same bytes");
    assert!(first.get(&format!("{lobby}.cnf.xml.sgn")).is_some(), "the stub comes from the same render");
    assert_eq!(first.phones.cache().counters().renders, 2, "and costs no signature");
    assert!(first.get("SEP00AABBCCDD02.cnf.xml.enc.sgn").is_none() && first.get("SEP0000000000FF.cnf.xml.sgn").is_none());
    // A per-phone trust list is public: the same answer for a provisioned MAC and an unknown one, so
    // that probing per-phone names does not list the cluster's phones.
    let ctl = first.get("CTLFile.tlv").expect("the CTL");
    assert_eq!(first.get("CTLSEP00AABBCCDD02.tlv"), Some(ctl.clone()));
    assert_eq!(first.get("CTLSEP0000000000FF.tlv"), Some(ctl), "an unknown MAC gets the same bytes");
    assert!(
        first.get("ITLSEP0000000000FF.tlv").is_some() && first.get("ITLSEP00000000ff.tlv").is_none() && first.get("ITLSEPX.tlv").is_none()
    );

    // Edit bob and rebuild: bob is signed again, the lobby phone keeps its encrypted bytes.
    ws.edit("phones.yaml", "directoryNumbers: [\"1002\"]", "directoryNumbers: [\"1012\"]");
    let mut second = served(&ws);
    second.phones.adopt_cache(&first.phones);
    assert_eq!(second.get(&format!("{lobby}.cnf.xml.enc.sgn")), Some(encrypted), "unchanged content, unchanged bytes");
    let bob_again = second.get("SEP00AABBCCDD02.cnf.xml.sgn").expect("bob's signed file is served");
    assert_ne!(bob_again, bob, "bob's edit is in his new file");
    assert!(String::from_utf8_lossy(&bob_again).contains("1012"), "the new directory number is rendered");
    assert_eq!(second.phones.cache().counters().renders, 3, "only bob was signed again");
}

/// A phone's files as built, by file name.
fn built_files(ws: &Workspace) -> std::collections::BTreeMap<String, Vec<u8>> {
    fs::read_dir(ws.state.join("tftp/default"))
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            (entry.file_name().to_string_lossy().into_owned(), fs::read(entry.path()).unwrap())
        })
        .collect()
}

#[test]
fn credentials_never_reach_a_file_less_protected_than_one_of_their_users_asked_for() {
    let ws = Workspace::new();
    // The attack: a Non Secure phone with digest on names alice, whose own phone is encrypted; its
    // profile even opts in to credentials in clear.
    let profiles = fs::read_to_string(ws.manifests.join("profiles.yaml")).unwrap();
    let thief_profile = "---\napiVersion: callguard.io/v1alpha1\nkind: PhoneSecurityProfile\nmetadata:\n  name: sip-open-digest\nspec:\n  protocol: SIP\n  deviceSecurityMode: NonSecure\n  sip:\n    transportType: TCP\n    enableDigestAuthentication: true\n    allowDigestCredentialsInClear: true\n";
    fs::write(ws.manifests.join("profiles.yaml"), profiles + thief_profile).unwrap();
    let phones = fs::read_to_string(ws.manifests.join("phones.yaml")).unwrap();
    let thief = "---\napiVersion: callguard.io/v1alpha1\nkind: Phone\nmetadata:\n  name: thief-7941\nspec:\n  macAddress: \"00AABBCCDD0F\"\n  model: \"7941\"\n  protocol: SIP\n  securityProfileRef: sip-open-digest\n  directoryNumbers: [\"1900\"]\n  digestUserRef: alice\n";
    fs::write(ws.manifests.join("phones.yaml"), phones + thief).unwrap();
    let output = ws.build();
    let text = stdout(&output);
    let files = built_files(&ws);
    for (name, bytes) in files.iter().filter(|(name, _)| !name.ends_with(".enc.sgn")) {
        let content = String::from_utf8_lossy(bytes);
        for secret in ["FakeAlice123", "FakeBob456", "FakeSbcApp789"] {
            assert!(!content.contains(secret), "{name} carries {secret} in a file that is not encrypted");
        }
    }
    let plain = String::from_utf8_lossy(&files["SEP00AABBCCDD0F.cnf.xml"]);
    assert!(plain.contains("<fullConfig>true</fullConfig>") && !plain.contains("authPassword>F"), "{plain}");
    assert!(text.contains("Phone/thief-7941: NotReady DigestCredentialsWithheld"), "{text}");
    assert!(text.contains("Phone/alice-7961 also uses EndUser/alice and asks for an encrypted configuration"), "{text}");
    // Bob's profile is Authenticated, his file signed but readable: withheld by default...
    assert!(text.contains("Phone/bob-7941: NotReady DigestCredentialsWithheld"), "{text}");
    assert!(text.contains("allowDigestCredentialsInClear"), "the message says how to opt in: {text}");
    // ...and in the file once his profile opts in, shown as a downgrade.
    ws.edit(
        "profiles.yaml",
        "    enableDigestAuthentication: true\n    nonceValiditySeconds: 600\n",
        "    enableDigestAuthentication: true\n    nonceValiditySeconds: 600\n    allowDigestCredentialsInClear: true\n",
    );
    let text = stdout(&ws.build());
    assert!(String::from_utf8_lossy(&built_files(&ws)["SEP00AABBCCDD02.cnf.xml.sgn"]).contains("FakeBob456"));
    assert!(text.contains("Phone/bob-7941: Ready; DigestCredentialsInCleartext"), "{text}");
}

#[test]
fn a_phone_whose_encrypted_file_cannot_be_made_gets_only_the_stub() {
    let ws = Workspace::new();
    let text = stdout(&ws.build());
    // lab-7960 asks for an encrypted configuration with manual keys, which Callguard cannot make.
    assert!(text.contains("Phone/lab-7960: NotReady ManualKeyEncryptionNotRendered"), "{text}");
    let files = built_files(&ws);
    let signed = String::from_utf8_lossy(&files["SEP00AABBCCDD03.cnf.xml.sgn"]);
    assert!(signed.contains("<fullConfig>false</fullConfig>") && !signed.contains("<fullConfig>true"), "{signed}");
    assert!(!signed.contains("sipProfile") && !signed.contains("devicePool"), "no configuration in the clear: {signed}");
}

/// The id a stalled build names for `--new-identity`.
fn named_identity(message: &str) -> String {
    let start = message.find("--new-identity ").expect("the message names the action") + "--new-identity ".len();
    message[start..].split(|c: char| !c.is_ascii_hexdigit()).next().unwrap().to_owned()
}

#[test]
fn a_lost_identity_stops_the_build_and_only_naming_it_replaces_it() {
    let ws = Workspace::new();
    ws.build();
    let namespace = ws.state.join("namespaces/default");
    let (ca_crt, ca_key) = (fs::read(namespace.join("ca/ca.crt")).unwrap(), fs::read(namespace.join("ca/ca.key")).unwrap());
    let build = |extra: &[&str]| {
        let mut args = vec!["build", ws.manifests.to_str().unwrap(), "--state-dir", ws.state.to_str().unwrap()];
        args.extend_from_slice(extra);
        callguard(&args)
    };

    // ca.crt gone, the key kept: before, a new CA was generated over the key.
    fs::remove_file(namespace.join("ca/ca.crt")).unwrap();
    let stopped = build(&[]);
    let message = String::from_utf8_lossy(&stopped.stderr).into_owned();
    assert_eq!(stopped.status.code(), Some(1), "{message}");
    assert!(message.contains("the cluster CA certificate (ca/ca.crt) is missing") && message.contains("P.3-18"), "{message}");
    assert_eq!(fs::read(namespace.join("ca/ca.key")).unwrap(), ca_key, "the key is untouched");
    assert!(!namespace.join("ca/ca.crt").exists(), "no new certificate");
    fs::write(namespace.join("ca/ca.crt"), &ca_crt).unwrap();
    ws.build();

    // The published CTL gone: the next one would skip the continuity check.
    fs::remove_file(namespace.join("published/CTLFile.tlv")).unwrap();
    let stopped = build(&[]);
    let message = String::from_utf8_lossy(&stopped.stderr).into_owned();
    assert!(message.contains("the published CTL (published/CTLFile.tlv) is missing"), "{message}");
    let id = named_identity(&message);

    // Another id changes nothing; this one sets the identity aside (kept under retired/) and issues a new one.
    assert_eq!(build(&["--new-identity", "0000000000000000"]).status.code(), Some(1));
    let replaced = build(&["--new-identity", &id]);
    assert_eq!(replaced.status.code(), Some(0), "{}", String::from_utf8_lossy(&replaced.stderr));
    assert!(stdout(&replaced).contains(&format!("set aside identity {id}")), "{}", stdout(&replaced));
    assert_ne!(fs::read(namespace.join("ca/ca.crt")).unwrap(), ca_crt, "a new CA");
    assert_eq!(fs::read(namespace.join(format!("retired/{id}/ca/ca.key"))).unwrap(), ca_key, "the old key is kept aside, not destroyed");
}

#[test]
fn what_the_build_writes_is_owner_only_and_the_ca_follows_the_clusters_settings() {
    use std::os::unix::fs::PermissionsExt;
    let ws = Workspace::new();
    ws.edit("cluster.yaml", "spec:\n", "spec:\n  certificateAuthority: {keySize: 3072, validityDays: 730}\n");
    ws.build();
    let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let out = ws.state.join("tftp/default");
    assert_eq!(mode(&out), 0o700);
    for entry in fs::read_dir(&out).unwrap() {
        assert_eq!(mode(&entry.unwrap().path()), 0o600, "configuration files may carry credentials");
    }
    let ca = ws.state.join("namespaces/default/ca/ca.crt");
    let text = Command::new("openssl").args(["x509", "-noout", "-text", "-in", ca.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("Public-Key: (3072 bit)"), "{text}");
    let dates = Command::new("openssl").args(["x509", "-noout", "-startdate", "-enddate", "-in", ca.to_str().unwrap()]).output().unwrap();
    let dates = String::from_utf8_lossy(&dates.stdout);
    let year = |prefix: &str| -> i32 {
        let line = dates.lines().find(|l| l.starts_with(prefix)).unwrap();
        line.split_whitespace().rev().nth(1).unwrap().parse().unwrap()
    };
    assert!((year("notAfter") - year("notBefore")) <= 2, "730 days: {dates}");

    // The plaintext `trust decrypt --out` writes is owner-only too, even over a file that was not.
    let device = "SEP001122334455";
    let keys = tempfile::tempdir().unwrap();
    let (key, lsc) = phone_certificate(&ws, device, keys.path());
    fs::create_dir_all(ws.state.join("namespaces/default/devices")).unwrap();
    fs::write(ws.state.join(format!("namespaces/default/devices/{device}.crt")), &lsc).unwrap();
    ws.build();
    let plain = keys.path().join("plain.xml");
    fs::write(&plain, "old").unwrap();
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o644)).unwrap();
    let encrypted = ws.tftp(&format!("{device}.cnf.xml.enc.sgn"));
    let decrypted =
        callguard(&["trust", "decrypt", encrypted.to_str().unwrap(), "--key", key.to_str().unwrap(), "--out", plain.to_str().unwrap()]);
    assert_eq!(decrypted.status.code(), Some(0), "{}", String::from_utf8_lossy(&decrypted.stderr));
    assert_eq!(mode(&plain), 0o600);
    assert!(fs::read_to_string(&plain).unwrap().contains("<fullConfig>true</fullConfig>"));
}

#[test]
fn trust_says_a_file_is_not_signed_instead_of_truncated() {
    let ws = Workspace::new();
    ws.build();
    let plain = ws.tftp("SEP00AABBCCDD05.cnf.xml");
    for command in ["inspect", "verify"] {
        let output = callguard(&["trust", command, plain.to_str().unwrap()]);
        let message = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(2), "{message}");
        assert!(message.contains("not a signed file: it is plain XML") && !message.contains("truncated"), "{message}");
    }
    let other = ws.state.join("other.bin");
    fs::write(&other, b"hello").unwrap();
    let message = String::from_utf8_lossy(&callguard(&["trust", "inspect", other.to_str().unwrap()]).stderr).into_owned();
    assert!(message.contains("starts with its VERSION element (0x01), this one with 0x68"), "{message}");
}

/// Issue 11, point 7: `callguard device add-cert` writes a phone's certificate where the build finds
/// it, after checking that it parses, has an RSA or EC key and names the device (an LSC of the
/// cluster CA by its CN, as CAPF issues it; any other certificate, a MIC, in its CN or
/// subjectAltName); the next build encrypts the phone's configuration for it.
#[test]
fn device_add_cert_checks_the_certificate_and_the_build_encrypts_for_it() {
    let ws = Workspace::new();
    ws.build();
    let keys = tempfile::tempdir().unwrap();
    let device = "SEP001122334455"; // lobby-7970, sccp-encrypted
    let target = ws.state.join(format!("namespaces/default/devices/{device}.crt"));
    let add = |device: &str, file: &Path| {
        callguard(&["device", "add-cert", "--state-dir", ws.state.to_str().unwrap(), "--device", device, file.to_str().unwrap()])
    };
    let stderr = |output: &Output| String::from_utf8_lossy(&output.stderr).into_owned();

    let junk = keys.path().join("junk.pem");
    fs::write(&junk, "not a certificate").unwrap();
    let output = add(device, &junk);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));

    let (_, other) = phone_certificate(&ws, "SEP00AABBCCDD06", keys.path());
    let other_file = keys.path().join("other.der");
    fs::write(&other_file, &other).unwrap();
    let output = add(device, &other_file);
    assert_eq!(output.status.code(), Some(1), "another phone's LSC is refused: {}", stderr(&output));
    assert!(stderr(&output).contains("SEP00AABBCCDD06") && stderr(&output).contains(device), "{}", stderr(&output));

    let ed25519 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, device);
    let ed_file = keys.path().join("ed25519.pem");
    fs::write(&ed_file, params.self_signed(&ed25519).unwrap().pem()).unwrap();
    let output = add(device, &ed_file);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("RSA or EC"), "{}", stderr(&output));

    let (key, lsc) = phone_certificate(&ws, device, keys.path());
    let lsc_file = keys.path().join("lsc.pem");
    fs::write(&lsc_file, callguard::core::pki::ca::certificate_pem(&lsc)).unwrap();
    let output = add("SEP0011223344", &lsc_file);
    assert_eq!(output.status.code(), Some(2), "not a device name: {}", stderr(&output));
    assert!(!target.exists(), "nothing refused was written");

    let output = add(device, &lsc_file);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stdout(&output).contains("LSC"), "{}", stdout(&output));
    assert_eq!(callguard::core::pki::inspect::certificate_der(&fs::read(&target).unwrap()).unwrap(), lsc);
    ws.build();
    let encrypted = ws.tftp(&format!("{device}.cnf.xml.enc.sgn"));
    let output = callguard(&["trust", "decrypt", encrypted.to_str().unwrap(), "--key", key.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));

    // A MIC: issued by the manufacturer, its CN names the device (an EC key, accepted for a phone
    // whose configuration is not encrypted).
    let maker_key = rcgen::KeyPair::generate().unwrap();
    let mut maker = rcgen::CertificateParams::new(vec![]).unwrap();
    maker.distinguished_name.push(rcgen::DnType::CommonName, "Manufacturing CA");
    maker.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let maker = rcgen::Issuer::new(maker, maker_key);
    let mic_key = rcgen::KeyPair::generate().unwrap();
    let mut mic = rcgen::CertificateParams::new(vec![]).unwrap();
    mic.distinguished_name.push(rcgen::DnType::CommonName, "CP-7911G-SEP00AABBCCDD04");
    let mic_file = keys.path().join("mic.pem");
    fs::write(&mic_file, mic.signed_by(&mic_key, &maker).unwrap().pem()).unwrap();
    let output = add("SEP00AABBCCDD04", &mic_file);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stdout(&output).contains("MIC"), "{}", stdout(&output));
    let output = add("SEP00AABBCCDD05", &mic_file);
    assert_eq!(output.status.code(), Some(1), "a MIC that names another phone: {}", stderr(&output));
}

#[test]
fn build_speaks_json_to_tools() {
    let ws = Workspace::new();
    let output = callguard(&["build", ws.manifests.to_str().unwrap(), "--state-dir", ws.state.to_str().unwrap(), "-o", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let document: Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
    assert_eq!(document["result"], "ready");
    let namespace = &document["namespaces"]["default"];
    assert!(namespace["files"].as_u64().unwrap() > 10);
    let statuses = namespace["statuses"].as_array().unwrap();
    let bob = statuses.iter().find(|s| s["name"] == "bob-7941").expect("bob's status");
    assert_eq!((bob["ready"].as_bool(), bob["reason"].as_str()), (Some(false), Some("DigestCredentialsWithheld")));
    assert!(namespace["changes"].as_array().unwrap().iter().any(|c| c["reason"] == "CertificateIssued"));
}
