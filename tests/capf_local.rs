//! CAPF inside `callguard local`, against a copy of the quickstart run as a subprocess on free ports,
//! with a phone that speaks CAPF over real TCP and TLS (the crate's frame codec; the scripted phone of
//! tests/capf.rs is the model): the lobby phone installs an LSC by authentication string, and what
//! was issued flows on: `tftp` (tftp-hpa) fetches its `.enc.sgn`, `callguard trust decrypt` with the
//! phone's key gives its configuration, `openssl verify` accepts the LSC under the cluster CA, and
//! the status shows the LSC and the operation. The same string works once (Table 6-2, P.6-12); ten
//! wrong strings lock the phone out and the eleventh try is refused even with the right string
//! (P.16-6); a Delete removes the LSC; a restart in the middle loses nothing and issues nothing
//! twice. A missing peer (tftp, openssl) fails the test, it does not skip.

#[path = "support/peers.rs"]
mod peers;
#[path = "support/process.rs"]
mod process;
use process::{Running, copy_quickstart, edit_manifest as edit, free_tcp_port, free_udp_port};
#[path = "support/capf_phone.rs"]
mod capf_phone;
use capf_phone::Transcript;
use peers::{TftpGet, file_not_found, require, tftp_hpa_get};

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use callguard::core::pki::inspect::CertificateFacts;
use callguard::core::pki::keys;
use callguard::services::capf::frame::{CertificateType, Command as CapfCommand, Reason};
use rsa::RsaPrivateKey;

const LOBBY: &str = "SEP001122334455";
const HALLWAY: &str = "SEP00AABBCCDD04";
const LOBBY_STRING: &str = "12345678";
/// The quickstart's CAPF node, whose certificate the CAPF listener presents.
const CAPF_HOST: &str = "cm1.quickstart.example";

/// A running `callguard local` on free ports.
struct Local {
    process: Running,
    tftp_port: u16,
    capf_port: u16,
}

crate::deref_to_running!(Local);

impl Local {
    fn start(manifests: &Path, state: &Path) -> Local {
        let (tftp_port, capf_port) = (free_udp_port(), free_tcp_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_callguard"));
        command
            .args(["local", manifests.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
            .args(["--tftp-port", &tftp_port.to_string(), "--capf-port", &capf_port.to_string()])
            .args(["--tvs-port", &free_tcp_port().to_string()]);
        let mut local = Local { process: Running::spawn(command), tftp_port, capf_port };
        let line = local.wait_for("serving CAPF on");
        assert!(line.contains(&format!("127.0.0.1:{capf_port}")) && line.contains("node cm1"), "{line}");
        local.wait_for("serving TFTP on");
        local
    }

    fn fetch(&self, name: &str, out: &Path) -> TftpGet {
        let _ = fs::remove_file(out);
        tftp_hpa_get(self.tftp_port, name, out)
    }
}

/// One session of `device` against CAPF on `port`, verifying the server's certificate against the
/// cluster CA of `state`.
fn session(port: u16, state: &Path, device: &str, password: Option<&str>, key: &RsaPrivateKey) -> Transcript {
    let ca = fs::read(state.join("namespaces/default/ca/ca.crt")).unwrap();
    capf_phone::session(port, &callguard::core::pki::inspect::certificate_der(&ca).unwrap(), CAPF_HOST, device, password, key)
}

// ---------------------------------------------------------------------------------------------------------------
// What `local` writes.

/// The entry of `phone` in the state's status.yaml.
fn status_of(state: &Path, phone: &str) -> serde_yaml::Value {
    let text = fs::read_to_string(state.join("namespaces/default/status.yaml")).unwrap_or_default();
    let statuses: Vec<serde_yaml::Value> = serde_yaml::from_str(&text).unwrap_or_default();
    statuses.into_iter().find(|s| s["kind"] == "Phone" && s["name"] == phone).unwrap_or(serde_yaml::Value::Null)
}

fn text(value: &serde_yaml::Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// Polls the phone's status until `accept` holds, for up to 20 s; returns it.
fn status_until(state: &Path, phone: &str, what: &str, accept: impl Fn(&serde_yaml::Value) -> bool) -> serde_yaml::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = status_of(state, phone);
        if accept(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "Phone/{phone}: never {what}: {status:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn operation(status: &serde_yaml::Value) -> String {
    text(&status["operation_status"])
}

fn callguard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_callguard")).args(args).output().unwrap()
}

/// Fetches the lobby's `.enc.sgn` and the CTL, and decrypts the file with `key`: its configuration.
fn decrypted_configuration(local: &Local, dir: &Path, key: &Path) -> String {
    let (encrypted, ctl) = (dir.join("lobby.enc.sgn"), dir.join("ctl.tlv"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while local.fetch(&format!("{LOBBY}.cnf.xml.enc.sgn"), &encrypted) != TftpGet::Fetched {
        assert!(Instant::now() < deadline, "the lobby's .enc.sgn was not served within 10 s of its LSC");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(local.fetch("CTLFile.tlv", &ctl), TftpGet::Fetched);
    let output =
        callguard(&["trust", "decrypt", encrypted.to_str().unwrap(), "--key", key.to_str().unwrap(), "--ctl", ctl.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_lobby_phone_installs_an_lsc_that_flows_into_its_encrypted_configuration_once_across_a_restart_and_deletes_it() {
    require("tftp", "tftp-hpa");
    require("openssl", "openssl");
    let dir = tempfile::tempdir().unwrap();
    let manifests = copy_quickstart(dir.path());
    let state = dir.path().join("state");
    let namespace = state.join("namespaces/default");
    let mut local = Local::start(&manifests, &state);
    let status = status_of(&state, "lobby-7970");
    assert_eq!(text(&status["lsc_state"]), "Pending");
    assert!(operation(&status).starts_with("Pending: Install/Upgrade until 2036-06-30T17:00:00Z"), "{status:?}");
    assert_eq!(
        local.fetch(&format!("{LOBBY}.cnf.xml.enc.sgn"), &dir.path().join("none")),
        file_not_found(),
        "no LSC yet: no encrypted file"
    );

    // The phone's key, made as the phone would (its profile asks for RSA 2048).
    let key = keys::generate_rsa(2048);
    let key_file = dir.path().join("lobby.key");
    fs::write(&key_file, keys::pkcs8_pem(&key)).unwrap();

    // Install by authentication string.
    let installed = session(local.capf_port, &state, LOBBY, Some(LOBBY_STRING), &key);
    assert_eq!(installed.end, Some(Reason::Success), "{installed:?}\n{}", local.output());
    assert_eq!(installed.key_size, Some(2048), "the key size of the phone's profile (Table 5-1)");
    let lsc = installed.stored.clone().expect("an LSC to store");
    let facts = CertificateFacts::from_der(&lsc).unwrap();
    assert_eq!(facts.subject_common_name.as_deref(), Some(LOBBY));
    let lifetime = (facts.not_after - facts.not_before).whole_days();
    assert!((1824..=1826).contains(&lifetime), "spec.capf.certificateValidityYears 5: {lifetime} days");
    let lsc_pem = dir.path().join("lsc.pem");
    fs::write(&lsc_pem, callguard::core::pki::ca::certificate_pem(&lsc)).unwrap();
    let verified = Command::new("openssl")
        .args(["verify", "-CAfile", namespace.join("ca/ca.crt").to_str().unwrap(), lsc_pem.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(verified.status.success(), "openssl verify: {}", String::from_utf8_lossy(&verified.stdout));
    let kept = fs::read(namespace.join(format!("devices/{LOBBY}.crt"))).unwrap();
    assert_eq!(callguard::core::pki::inspect::certificate_der(&kept).unwrap(), lsc, "kept where device add-cert writes");
    local.wait_for(&format!("Phone/lobby-7970 ({LOBBY}): Install/Upgrade completed: installed LSC serial {}", facts.serial));

    // Within seconds, without a restart, the phone's configuration is encrypted for that LSC.
    let configuration = decrypted_configuration(&local, dir.path(), &key_file);
    assert!(configuration.contains("<fullConfig>true</fullConfig>"), "{configuration}");
    assert!(configuration.contains("<capfAuthMode>0</capfAuthMode>"), "the operation is no longer pending: {configuration}");

    // The status shows the LSC and the operation.
    let status = status_until(&state, "lobby-7970", "Completed", |s| operation(s).starts_with("Completed"));
    assert_eq!(text(&status["lsc_state"]), "Installed");
    assert_eq!(text(&status["lsc"]["serialNumber"]), facts.serial.to_hex(), "{status:?}");
    assert_eq!(text(&status["lsc"]["notAfter"]), callguard::core::build::capf::rfc3339(facts.not_after));
    assert!(text(&status["lsc"]["issuer"]).contains("quickstart CA"), "{status:?}");
    assert!(operation(&status).contains("Completed: Install/Upgrade at 20"), "{status:?}");
    assert_eq!(status["reason"], "Ready", "no certificate awaited, no operation pending: {status:?}");
    let table = local.wait_for("capf: Phone/lobby-7970: Completed: Install/Upgrade");
    assert!(table.contains(&format!("LSC serial {}", facts.serial)), "{table}");

    // What CAPF keeps of the phone is owner-only and holds no authentication string.
    let record = namespace.join(format!("capf/{LOBBY}.yaml"));
    assert_eq!(mode(&record), 0o600);
    assert!(!fs::read_to_string(&record).unwrap().contains(LOBBY_STRING));

    // The same spec again: nothing is scheduled, nothing issued.
    let again = session(local.capf_port, &state, LOBBY, Some(LOBBY_STRING), &key);
    assert_eq!(again.end, Some(Reason::NoAction), "{again:?}");
    assert!(again.stored.is_none() && !again.commands.contains(&CapfCommand::KeyGenerateRequest));

    // A restart in the middle: the LSC, the record and the encrypted file are all still there, and
    // nothing is issued again.
    local.stop();
    let mut local = Local::start(&manifests, &state);
    let started = local.output();
    assert!(!started.contains("installed LSC") && !started.contains("issued the"), "{started}");
    let status = status_of(&state, "lobby-7970");
    assert_eq!(text(&status["lsc"]["serialNumber"]), facts.serial.to_hex(), "{status:?}");
    assert!(operation(&status).starts_with("Completed: Install/Upgrade"), "{status:?}");
    let again = session(local.capf_port, &state, LOBBY, Some(LOBBY_STRING), &key);
    assert_eq!(again.end, Some(Reason::NoAction), "{again:?}");
    assert!(decrypted_configuration(&local, dir.path(), &key_file).contains("<fullConfig>true</fullConfig>"));

    // A new operation (a new operationCompletesBy) with the same string: the string is spent
    // (Table 6-2), so the phone is refused and nothing is issued.
    edit(&manifests, "phones.yaml", "operationCompletesBy: \"2036-06-30T17:00:00Z\"", "operationCompletesBy: \"2036-07-31T17:00:00Z\"", 0);
    let status = status_until(&state, "lobby-7970", "refused for its spent string", |s| operation(s).starts_with("Failed"));
    assert!(operation(&status).contains("already used") && operation(&status).contains("Table 6-2, P.6-12"), "{status:?}");
    let spent = session(local.capf_port, &state, LOBBY, Some(LOBBY_STRING), &key);
    assert_eq!(spent.end, Some(Reason::Failure), "{spent:?}");
    assert!(!spent.commands.contains(&CapfCommand::KeyGenerateRequest));
    local.wait_for("refused before authentication: Phone/lobby-7970: spec.capf.authenticationString was already used");
    assert_eq!(fs::read(namespace.join(format!("devices/{LOBBY}.crt"))).unwrap(), kept, "nothing issued");

    // Delete, with a new string: the LSC goes, and with it the encrypted file.
    edit(&manifests, "phones.yaml", "certificateOperation: InstallUpgrade", "certificateOperation: Delete", 0);
    edit(&manifests, "phones.yaml", "2036-07-31T17:00:00Z", "2036-08-31T17:00:00Z", 0);
    edit(&manifests, "secrets.yaml", &format!("authenticationString: \"{LOBBY_STRING}\""), "authenticationString: \"24681357\"", 0);
    status_until(&state, "lobby-7970", "pending a Delete", |s| operation(s).starts_with("Pending: Delete"));
    let deleted = session(local.capf_port, &state, LOBBY, Some("24681357"), &key);
    assert_eq!(deleted.end, Some(Reason::Success), "{deleted:?}");
    assert!(deleted.commands.contains(&CapfCommand::DeleteCertificateRequest));
    assert!(!namespace.join(format!("devices/{LOBBY}.crt")).exists(), "a completed Delete removes the LSC");
    let status = status_until(&state, "lobby-7970", "Completed: Delete", |s| operation(s).starts_with("Completed: Delete"));
    assert_eq!(text(&status["lsc_state"]), "None");
    assert!(status["lsc"].is_null(), "{status:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while local.fetch(&format!("{LOBBY}.cnf.xml.enc.sgn"), &dir.path().join("gone")) != file_not_found() {
        assert!(Instant::now() < deadline, "the .enc.sgn is still served after the Delete");
        std::thread::sleep(Duration::from_millis(200));
    }
    let output = local.stop();
    for string in [LOBBY_STRING, "24681357"] {
        assert!(!output.contains(string), "an authentication string in the output:\n{output}");
    }
}

#[test]
fn ten_wrong_strings_lock_the_lobby_phone_out_and_the_eleventh_try_is_refused_even_with_the_right_string() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = copy_quickstart(dir.path());
    // The hallway phone's operation is past its deadline.
    edit(&manifests, "phones.yaml", "operationCompletesBy: \"2036-06-30T17:00:00Z\"", "operationCompletesBy: \"2026-01-01T00:00:00Z\"", 1);
    let state = dir.path().join("state");
    let mut local = Local::start(&manifests, &state);
    let key = keys::generate_rsa(2048);

    // Expired: not carried out, and said so.
    let hallway = status_of(&state, "hallway-7911");
    assert!(operation(&hallway).starts_with("Expired: Install/Upgrade was to complete by 2026-01-01T00:00:00Z"), "{hallway:?}");
    let expired = session(local.capf_port, &state, HALLWAY, None, &key);
    assert_eq!(expired.end, Some(Reason::NoAction), "{expired:?}");
    // A deadline that passes while `local` runs: the status follows without an edit.
    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(8);
    let soon = callguard::core::build::capf::rfc3339(soon);
    edit(&manifests, "phones.yaml", "2026-01-01T00:00:00Z", &soon, 0);
    status_until(&state, "hallway-7911", "pending until soon", |s| operation(s).starts_with("Pending"));
    let hallway = status_until(&state, "hallway-7911", "expired by itself", |s| operation(s).starts_with("Expired"));
    assert!(operation(&hallway).contains(&soon), "{hallway:?}");
    assert_eq!(session(local.capf_port, &state, HALLWAY, None, &key).end, Some(Reason::NoAction));

    for n in 1..=10 {
        let wrong = session(local.capf_port, &state, LOBBY, Some(&format!("1000000{n}")), &key);
        assert_eq!(wrong.end, Some(Reason::Failure), "wrong string {n}: {wrong:?}");
        assert!(!wrong.commands.contains(&CapfCommand::KeyGenerateRequest));
    }
    let locked = local.wait_for("CAPF: Phone/lobby-7970 (SEP001122334455) is locked out until");
    assert!(locked.contains("10 consecutive wrong authentication strings (P.16-6)"), "{locked}");

    // The eleventh, with the right string, is refused before the string is looked at: the string is
    // not spent.
    let eleventh = session(local.capf_port, &state, LOBBY, Some(LOBBY_STRING), &key);
    assert_eq!(eleventh.end, Some(Reason::Failure), "{eleventh:?}");
    assert!(!eleventh.commands.contains(&CapfCommand::KeyGenerateRequest) && eleventh.stored.is_none());
    local.wait_for("refused before authentication: Phone/lobby-7970: locked out until");
    let record = fs::read_to_string(state.join(format!("namespaces/default/capf/{LOBBY}.yaml"))).unwrap();
    assert!(!record.contains("spentStrings"), "{record}");
    assert!(!state.join(format!("namespaces/default/devices/{LOBBY}.crt")).exists());

    // The status says until when: at least ten minutes.
    let status = status_until(&state, "lobby-7970", "LockedOut", |s| operation(s).starts_with("LockedOut"));
    assert_eq!(text(&status["lsc_state"]), "Failed");
    assert_eq!(status["consecutive_auth_failures"].as_u64(), Some(10));
    let until =
        operation(&status).split(" until ").nth(1).and_then(|rest| rest.split(':').take(3).collect::<Vec<_>>().join(":").into()).unwrap();
    let until = time::OffsetDateTime::parse(&until, &time::format_description::well_known::Rfc3339).unwrap();
    let left = until - time::OffsetDateTime::now_utc();
    assert!(left > time::Duration::minutes(9), "locked for at least ten minutes: {left}");
    local.stop();
}

/// The CAPF port in use: `local` names the holder, exits 1, and has written nothing.
#[test]
fn with_its_capf_port_taken_local_names_the_holder_and_writes_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let manifests = copy_quickstart(dir.path());
    let state = dir.path().join("state");
    let tftp = free_udp_port().to_string();
    let output = callguard(&[
        "local",
        manifests.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--tftp-port",
        &tftp,
        "--capf-port",
        &port,
        "--tvs-port",
        &free_tcp_port().to_string(),
    ]);
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("cannot serve CAPF: 127.0.0.1:{port} is in use by PID {}", std::process::id())), "{text}");
    assert!(text.contains("pass another --capf-port"), "{text}");
    assert!(!state.exists(), "nothing written before the ports are bound");
    drop(taken);
}

/// A manufacturing CA, self-signed, and a MIC it issues to `common_name` for `key`.
fn manufacturer(name: &str) -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let pem = params.self_signed(&key).unwrap().pem();
    (rcgen::Issuer::new(params, key), pem)
}

fn mic(issuer: &rcgen::Issuer<'static, rcgen::KeyPair>, common_name: &str, key: &RsaPrivateKey) -> Vec<u8> {
    use rsa::pkcs8::EncodePublicKey;
    let spki = rsa::RsaPublicKey::from(key).to_public_key_der().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    let public = rcgen::SubjectPublicKeyInfo::from_der(spki.as_bytes()).unwrap();
    params.signed_by(&public, issuer).unwrap().der().to_vec()
}

#[test]
fn a_mic_from_a_configured_manufacturer_ca_installs_an_lsc_and_one_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = copy_quickstart(dir.path());
    let (configured, configured_pem) = manufacturer("Test Manufacturing CA");
    let (stranger, _) = manufacturer("Some Other Manufacturing CA");
    // The cluster names the configured CA; alice's 7961, whose profile authenticates by MIC
    // (Table 5-1), gets an Install/Upgrade.
    edit(&manifests, "cluster.yaml", "  capf:\n", "  capf:\n    manufacturerCaCertificates: {name: manufacturer-cas, key: ca.pem}\n", 0);
    let secret = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: manufacturer-cas\nstringData:\n  ca.pem: |\n{}",
        configured_pem.lines().map(|line| format!("    {line}\n")).collect::<String>()
    );
    fs::write(manifests.join("manufacturer.yaml"), secret).unwrap();
    edit(
        &manifests,
        "phones.yaml",
        "  digestUserRef: alice\n",
        "  digestUserRef: alice\n  capf:\n    certificateOperation: InstallUpgrade\n    operationCompletesBy: \"2036-06-30T17:00:00Z\"\n",
        0,
    );
    let state = dir.path().join("state");
    let mut local = Local::start(&manifests, &state);
    let alice = "SEP00AABBCCDD01";
    let key = keys::generate_rsa(2048);
    let ca = callguard::core::pki::inspect::certificate_der(&fs::read(state.join("namespaces/default/ca/ca.crt")).unwrap()).unwrap();
    // The key CAPF asks for is the profile's size (spec.capf.keySize 1024 in the quickstart, Table 5-1).
    let new_key = keys::generate_rsa(1024);
    let port = local.capf_port;
    let run = |der: Vec<u8>| {
        let credentials = capf_phone::Credentials::Certificate { der, kind: CertificateType::Mic, key: &key };
        capf_phone::session_with(capf_phone::connect(port, &ca, CAPF_HOST), alice, credentials, &new_key)
    };

    let refused = run(mic(&stranger, &format!("CP-7961-{alice}"), &key));
    assert_eq!(refused.end, Some(Reason::Failure), "{refused:?}");
    assert!(refused.stored.is_none() && !refused.commands.contains(&CapfCommand::KeyGenerateRequest), "{refused:?}");
    local.wait_for("CERTIFICATE does not chain to an allowed issuer");
    assert!(!state.join(format!("namespaces/default/devices/{alice}.crt")).exists());

    let installed = run(mic(&configured, &format!("CP-7961-{alice}"), &key));
    assert_eq!(installed.end, Some(Reason::Success), "{installed:?}");
    let lsc = installed.stored.expect("an LSC");
    assert_eq!(CertificateFacts::from_der(&lsc).unwrap().subject_common_name.as_deref(), Some(alice));
    let status = status_until(&state, "alice-7961", "Completed", |s| operation(s).starts_with("Completed: Install/Upgrade"));
    assert_eq!(text(&status["lsc"]["serialNumber"]), CertificateFacts::from_der(&lsc).unwrap().serial.to_hex());
    local.stop();
}

#[test]
fn a_cti_application_instance_enrolls_by_instance_id_and_its_user_carries_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = copy_quickstart(dir.path());
    let state = dir.path().join("state");
    let mut local = Local::start(&manifests, &state);
    // ApplicationUser sbc-presence has the CAPF profile of instance presence-1, string 4711 (Table 11-2).
    let user_status = || {
        let text = fs::read_to_string(state.join("namespaces/default/status.yaml")).unwrap_or_default();
        let statuses: Vec<serde_yaml::Value> = serde_yaml::from_str(&text).unwrap_or_default();
        statuses.into_iter().find(|s| s["kind"] == "ApplicationUser" && s["name"] == "sbc-presence").unwrap_or_default()
    };
    let pending = user_status();
    assert!(text(&pending["capf_profiles"][0]["operationStatus"]).starts_with("Pending: Install/Upgrade"), "{pending:?}");
    assert_eq!(text(&pending["capf_profiles"][0]["instanceId"]), "presence-1");

    let key = keys::generate_rsa(1024);
    let wrong = session(local.capf_port, &state, "presence-1", Some("4712"), &key);
    assert_eq!(wrong.end, Some(Reason::Failure), "{wrong:?}");
    let installed = session(local.capf_port, &state, "presence-1", Some("4711"), &key);
    assert_eq!(installed.end, Some(Reason::Success), "{installed:?}");
    let facts = CertificateFacts::from_der(&installed.stored.expect("an LSC for the instance")).unwrap();
    assert_eq!(facts.subject_common_name.as_deref(), Some("presence-1"), "the instance ID is the certificate's CN");
    local.wait_for("capf: ApplicationUser/sbc-presence instance presence-1: Completed: Install/Upgrade");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = user_status();
        if text(&status["capf_profiles"][0]["operationStatus"]).starts_with("Completed") {
            break status;
        }
        assert!(Instant::now() < deadline, "the user's status never showed the enrollment: {status:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let profile = &status["capf_profiles"][0];
    assert_eq!(text(&profile["lsc"]["serialNumber"]), facts.serial.to_hex(), "{profile:?}");
    assert_eq!(text(&profile["lscState"]), "Installed");
    // Phones are untouched: the lobby phone still waits for its own certificate.
    assert_eq!(status_of(&state, "lobby-7970")["reason"], "AwaitingDeviceCertificate");
    // The string works once (Table 11-2).
    let again = session(local.capf_port, &state, "presence-1", Some("4711"), &key);
    assert_eq!(again.end, Some(Reason::NoAction), "completed: nothing scheduled: {again:?}");
    local.stop();
}
