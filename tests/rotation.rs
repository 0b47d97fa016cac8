//! Rotations of the identity phones trust, watched by a simulated phone that keeps the trust
//! lists it fetched and applies the acceptance rule of docs/wire-formats.md §3.9 to each later
//! file (`support/trusting_phone.rs`): it must accept every file published at every step, and end
//! trusting only the new identity. A phone that missed a step must refuse, or the rule proves
//! nothing.
//!
//! The builds run in process with a clock the test moves, so that a grace period of an hour takes
//! no time.

#[path = "support/trusting_phone.rs"]
mod trusting_phone;

use std::path::{Path, PathBuf};
use std::process::Command;

use callguard::core::build::{BuildOutput, ChangeKind, build_paths};
use callguard::core::trust::{Mode, TrustList};
use time::{Duration, OffsetDateTime};
use trusting_phone::TrustingPhone;

/// Bob's phone: SIP, Authenticated, so its configuration is signed.
const BOB_CONFIG: &str = "SEP00AABBCCDD02.cnf.xml.sgn";

/// The quickstart copied to a directory the test edits, with its state directory.
struct Workspace {
    manifests: tempfile::TempDir,
    state: tempfile::TempDir,
    start: OffsetDateTime,
}

impl Workspace {
    fn new() -> Self {
        let manifests = tempfile::tempdir().unwrap();
        let quickstart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart");
        for entry in std::fs::read_dir(quickstart).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), manifests.path().join(entry.file_name())).unwrap();
        }
        Workspace { manifests, state: tempfile::tempdir().unwrap(), start: OffsetDateTime::now_utc() }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.manifests.path().join(name)
    }

    fn edit(&self, name: &str, from: &str, to: &str) {
        let path = self.file(name);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{from:?} in {name}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    }

    /// Sets `spec.rotation.gracePeriodMinutes` of the cluster.
    fn set_grace_minutes(&self, minutes: u32) {
        let grace = format!("  autoRegistration: false\n  rotation:\n    gracePeriodMinutes: {minutes}");
        self.edit("cluster.yaml", "  autoRegistration: false", &grace);
    }

    /// Gives the cluster its first annotation.
    fn annotate(&self, key: &str, value: &str) {
        self.edit("cluster.yaml", "  name: quickstart\n", &format!("  name: quickstart\n  annotations:\n    {key}: \"{value}\"\n"));
    }

    /// Builds the namespace as it would be `minutes` after the workspace was made.
    fn build_at(&self, minutes: i64) -> BuildOutput {
        let paths = [self.manifests.path().to_path_buf()];
        let at = self.start + Duration::minutes(minutes);
        let mut built = build_paths(&paths, self.state.path(), at, &Default::default()).unwrap_or_else(|e| panic!("valid: {e:?}"));
        built.remove("default").expect("namespace default").unwrap_or_else(|e| panic!("the build at +{minutes} min: {e}"))
    }

    /// The first build, and a phone that holds its trust lists and bob's configuration.
    fn first_build_and_phone(&self) -> (BuildOutput, TrustingPhone) {
        let first = self.build_at(0);
        let mut phone = TrustingPhone::default();
        phone.fetch(&first.served, Some(BOB_CONFIG)).unwrap();
        (first, phone)
    }

    /// Creates a software token with `callguard token create`, its manifests beside the others.
    fn create_token(&self, name: &str) {
        let password = self.manifests.path().join(format!("{name}.password"));
        std::fs::write(&password, format!("Rotate-{name}-42")).unwrap();
        let made = Command::new(env!("CARGO_BIN_EXE_callguard"))
            .args(["token", "create", "--name", name, "--password-file"])
            .arg(&password)
            .args(["--with-password-secret", "--out"])
            .arg(self.file(&format!("{name}.yaml")))
            .output()
            .unwrap();
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
        std::fs::remove_file(&password).unwrap();
    }
}

fn kinds(output: &BuildOutput) -> Vec<ChangeKind> {
    output.changes.iter().map(|c| c.kind).collect()
}

fn cluster_message(output: &BuildOutput) -> String {
    let status = output.statuses.iter().find(|s| s.kind == "CallControlCluster").expect("the cluster's status");
    assert!(status.ready, "{status}");
    status.message.clone()
}

fn common_name(der: &[u8]) -> String {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).unwrap();
    certificate.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or_default().to_owned()
}

fn served_itl(output: &BuildOutput) -> TrustList {
    TrustList::parse(&output.catalog.trust_lists["ITLFile.tlv"], Mode::Strict).unwrap()
}

#[test]
fn renaming_the_tftp_host_rolls_the_itl_signer_in_two_steps_a_phone_accepts() {
    let ws = Workspace::new();
    let (_, mut phone) = ws.first_build_and_phone();
    let old_signer = phone.itl_sast();
    assert_eq!(old_signer.len(), 1);
    assert_eq!(common_name(&old_signer[0]), "cm1.quickstart.example");
    let straggler = phone.clone();

    ws.edit("cluster.yaml", "hostname: cm1.quickstart.example", "hostname: cm1-new.quickstart.example");
    ws.set_grace_minutes(60);

    // Step 1: the incoming signer is listed beside the current one, which signs.
    let announced = ws.build_at(1);
    assert!(kinds(&announced).contains(&ChangeKind::RotationStarted), "{:?}", announced.changes);
    assert!(!kinds(&announced).contains(&ChangeKind::RotationCompleted));
    assert!(cluster_message(&announced).contains("ITL signer rotation, step 1 of 2"), "{}", cluster_message(&announced));
    phone.fetch(&announced.served, Some(BOB_CONFIG)).unwrap();
    let sast = phone.itl_sast();
    assert_eq!(sast.len(), 2, "the current and the incoming signer");
    assert_eq!(sast[0], old_signer[0], "the current signer signs, so it comes first");
    assert_eq!(common_name(&sast[1]), "cm1-new.quickstart.example");
    let incoming = sast[1].clone();

    // Within the grace period: still step 1, the same ITL.
    let waiting = ws.build_at(30);
    assert!(!kinds(&waiting).contains(&ChangeKind::RotationCompleted), "{:?}", waiting.changes);
    assert!(cluster_message(&waiting).contains("gracePeriodMinutes"), "{}", cluster_message(&waiting));
    assert_eq!(served_itl(&waiting).as_bytes(), served_itl(&announced).as_bytes());
    let until = waiting.next_rotation_step.expect("the operator and local wake for step 2");
    assert!(until > ws.start + Duration::minutes(60) && until <= ws.start + Duration::minutes(61), "{until}");

    // Step 2, after the grace period: the incoming signer signs and is the only SAST.
    let rotated = ws.build_at(62);
    assert!(kinds(&rotated).contains(&ChangeKind::RotationCompleted), "{:?}", rotated.changes);
    phone.fetch(&rotated.served, Some(BOB_CONFIG)).unwrap();
    assert_eq!(phone.itl_sast(), std::slice::from_ref(&incoming), "the phone ends trusting only the new signer");
    assert_eq!(served_itl(&rotated).verify().unwrap().certificate_der, incoming);
    assert!(rotated.next_rotation_step.is_none());
    assert_eq!(rotated.identity.itl_signer, sha256_hex(&incoming));
    assert_eq!(rotated.identity.incoming_itl_signer, None);

    // A phone that never fetched the announcing ITL refuses the last one: the rule bites.
    let mut straggler = straggler;
    let refused = straggler.fetch(&rotated.served, None).unwrap_err();
    assert!(refused.contains("ITLFile.tlv refused"), "{refused}");

    // Done: nothing more happens.
    let settled = ws.build_at(63);
    assert!(settled.changes.is_empty(), "{:?}", settled.changes);
    assert_eq!(served_itl(&settled).as_bytes(), served_itl(&rotated).as_bytes());
    assert!(!cluster_message(&settled).contains("rotation"), "{}", cluster_message(&settled));
}

/// A stop between the two files of step 2 (the incoming key written over the current one, the
/// certificate not yet) is finished by the next build: the phone accepts what it publishes.
#[test]
fn a_second_step_stopped_halfway_is_finished_by_the_next_build() {
    let ws = Workspace::new();
    let (_, mut phone) = ws.first_build_and_phone();
    ws.edit("cluster.yaml", "hostname: cm1.quickstart.example", "hostname: cm1-new.quickstart.example");
    ws.set_grace_minutes(0);
    phone.fetch(&ws.build_at(1).served, Some(BOB_CONFIG)).unwrap();
    let state = state(&ws);
    let (current, incoming) = ("certs/cm1.callmanager-tftp", "certs/cm1.callmanager-tftp.next");
    let incoming_key = state.read(&format!("{incoming}.key")).unwrap().expect("the incoming signer waits");
    state.write(&format!("{current}.key"), &incoming_key, callguard::core::build::state::Sensitivity::Private).unwrap();

    let finished = ws.build_at(2);
    assert!(kinds(&finished).contains(&ChangeKind::RotationCompleted), "{:?}", finished.changes);
    phone.fetch(&finished.served, Some(BOB_CONFIG)).unwrap();
    assert_eq!(common_name(&phone.itl_sast()[0]), "cm1-new.quickstart.example");
    assert!(state.read(&format!("{incoming}.key")).unwrap().is_none(), "the incoming copy is gone");
}

/// A CA rotation whose start stopped after the new key but before the new certificate is undone
/// and started whole by the next build: the key always matches the certificate it is used with.
#[test]
fn a_ca_rotation_stopped_before_its_new_certificate_starts_again_whole() {
    use callguard::core::build::state::Sensitivity;
    let ws = Workspace::new();
    let (_, mut phone) = ws.first_build_and_phone();
    let old = current_ca(&ws);
    // What the start writes before the new certificate: the old CA aside, then a new key.
    let state = state(&ws);
    let label = format!("retired/ca-{}", &sha256_hex(old.certificate_der())[..16]);
    let pem = old.to_pem();
    state.write(&format!("{label}/ca/ca.key"), pem.private_key.as_bytes(), Sensitivity::Private).unwrap();
    state.write(&format!("{label}/ca/ca.crt"), pem.certificate.as_bytes(), Sensitivity::Public).unwrap();
    state.write("ca/previous.crt", pem.certificate.as_bytes(), Sensitivity::Public).unwrap();
    let stray = callguard::core::pki::keys::pkcs8_pem(&callguard::core::pki::keys::generate_rsa(2048));
    state.write("ca/ca.key", stray.as_bytes(), Sensitivity::Private).unwrap();

    ws.annotate("callguard.io/rotate-ca", "1");
    let started = ws.build_at(1);
    assert!(started.changes.iter().any(|c| c.message.starts_with("CA rotation, step 1 of 2")), "{:?}", started.changes);
    let new = current_ca(&ws);
    assert_ne!(new.certificate_der(), old.certificate_der());
    // Every certificate the new CA issued verifies under it: its key is the one of its certificate.
    for record in TrustList::parse(&started.catalog.trust_lists["ITLFile.tlv"], Mode::Strict).unwrap().records {
        let ours = callguard::core::pki::inspect::is_issued_by(&record.certificate_der, new.certificate_der())
            || callguard::core::pki::inspect::is_issued_by(&record.certificate_der, old.certificate_der());
        assert!(ours, "{} verifies under the new or the previous CA", record.subject);
    }
    phone.fetch(&started.served, Some(BOB_CONFIG)).unwrap();
}

#[test]
fn the_annotation_rotates_the_itl_signer_once_per_value() {
    let ws = Workspace::new();
    let (_, mut phone) = ws.first_build_and_phone();
    let original = phone.itl_sast();
    ws.annotate("callguard.io/rotate-itl-signer", "2026-12");
    ws.set_grace_minutes(0);

    let mut signers = vec![original[0].clone()];
    for (minute, value) in [(1, "2026-12"), (3, "2027-01")] {
        if value != "2026-12" {
            ws.edit("cluster.yaml", "rotate-itl-signer: \"2026-12\"", &format!("rotate-itl-signer: \"{value}\""));
        }
        let started = ws.build_at(minute);
        assert!(kinds(&started).contains(&ChangeKind::RotationStarted), "{value}: {:?}", started.changes);
        phone.fetch(&started.served, Some(BOB_CONFIG)).unwrap();
        // With no grace period the next build completes it.
        let completed = ws.build_at(minute + 1);
        assert!(kinds(&completed).contains(&ChangeKind::RotationCompleted), "{value}: {:?}", completed.changes);
        phone.fetch(&completed.served, Some(BOB_CONFIG)).unwrap();
        let now = phone.itl_sast();
        assert_eq!(now.len(), 1);
        assert!(!signers.contains(&now[0]), "{value}: a new signer");
        assert_eq!(common_name(&now[0]), "cm1.quickstart.example", "same host, new key");
        signers.push(now[0].clone());
        assert_eq!(completed.identity.itl_signer_rotation_request.as_deref(), Some(value));
        // The same value again does nothing.
        let again = ws.build_at(minute + 1);
        assert!(again.changes.is_empty(), "{value}: {:?}", again.changes);
    }
}

#[test]
fn tokens_are_replaced_one_at_a_time_by_a_token_the_phones_already_trust() {
    let ws = Workspace::new();
    let (_, mut phone) = ws.first_build_and_phone();
    let original = phone.ctl_sast();
    assert_eq!(original.len(), 2);
    ws.create_token("token-new");
    ws.create_token("token-newer");

    // Replacing both at once would need a CTL signed by a token no phone holds: refused, and the
    // published CTL stays served.
    ws.edit("cluster.yaml", "tokens: [token-primary, token-backup]", "tokens: [token-new, token-newer]");
    ws.edit("cluster.yaml", "signingToken: token-primary", "signingToken: token-new");
    let refused = ws.build_at(1);
    let status = refused.statuses.iter().find(|s| s.kind == "CallControlCluster").unwrap();
    assert!(!status.ready && status.reason == "CtlNotSigned", "{status}");
    phone.fetch(&refused.served, Some(BOB_CONFIG)).unwrap();
    assert_eq!(phone.ctl_sast(), original, "nothing new was published");

    // One at a time: the backup leaves, the new token joins, the primary signs.
    ws.edit("cluster.yaml", "tokens: [token-new, token-newer]", "tokens: [token-primary, token-new]");
    ws.edit("cluster.yaml", "signingToken: token-new", "signingToken: token-primary");
    let first = ws.build_at(2);
    phone.fetch(&first.served, Some(BOB_CONFIG)).unwrap();
    let step = phone.ctl_sast();
    assert_eq!(step[0], original[0], "signed by the primary, which phones hold");
    assert!(!step.contains(&original[1]), "the backup left");

    // Then the primary leaves, and the token phones now hold signs.
    ws.edit("cluster.yaml", "tokens: [token-primary, token-new]", "tokens: [token-new, token-newer]");
    ws.edit("cluster.yaml", "signingToken: token-primary", "signingToken: token-new");
    let second = ws.build_at(3);
    let status = second.statuses.iter().find(|s| s.kind == "CallControlCluster").unwrap();
    assert!(status.ready, "{status}");
    phone.fetch(&second.served, Some(BOB_CONFIG)).unwrap();
    let last = phone.ctl_sast();
    assert_eq!(last.len(), 2);
    assert!(last.iter().all(|token| !original.contains(token)), "the phone ends trusting only the new tokens");
    assert_eq!(last[0], step[1], "signed by token-new, which the previous CTL listed");
}

/// The state of the workspace's namespace.
fn state(ws: &Workspace) -> callguard::core::build::state::StateDir {
    callguard::core::build::state::StateDir::open(&ws.state.path().join("namespaces/default")).unwrap()
}

fn current_ca(ws: &Workspace) -> callguard::core::pki::ca::ClusterCa {
    callguard::core::build::identity::load_ca(&state(ws)).unwrap().expect("a CA")
}

/// Gives `device` an LSC of the cluster's current CA, as CAPF would.
fn give_lsc(ws: &Workspace, device: &str, minutes: i64) -> Vec<u8> {
    use callguard::core::pki::issue::{LscKeySource, LscRequest, issue_lsc};
    use rsa::pkcs8::EncodePublicKey;
    let key = callguard::core::pki::keys::generate_rsa(1024);
    let spki = key.to_public_key().to_public_key_der().unwrap();
    let request = LscRequest {
        device_name: device,
        key: LscKeySource::PublicKey(spki.as_bytes()),
        validity_days: 365,
        serial: callguard::core::pki::serial::Serial::random(&mut rand::thread_rng()),
        now: ws.start + Duration::minutes(minutes),
    };
    let lsc = issue_lsc(&current_ca(ws), &request).unwrap().certificate_der;
    let pem = callguard::core::pki::ca::certificate_pem(&lsc);
    state(ws).write(&format!("devices/{device}.crt"), pem.as_bytes(), callguard::core::build::state::Sensitivity::Public).unwrap();
    lsc
}

fn phone_status<'a>(output: &'a BuildOutput, name: &str) -> &'a callguard::core::build::ResourceStatus {
    output.statuses.iter().find(|s| s.kind == "Phone" && s.name == name).expect("the phone's status")
}

#[test]
fn the_ca_rotates_with_overlap_until_nothing_it_issued_is_in_use() {
    use callguard::core::pki::inspect::is_issued_by;
    let ws = Workspace::new();
    let (first, mut phone) = ws.first_build_and_phone();
    let old_ca = current_ca(&ws).certificate_der().to_vec();
    let old_lsc = give_lsc(&ws, "SEP00AABBCCDD02", 0);
    assert!(phone_status(&ws.build_at(1), "bob-7941").lsc.is_some(), "bob's LSC is the cluster CA's");

    ws.annotate("callguard.io/rotate-ca", "2026-12");
    ws.set_grace_minutes(60);

    // Step 1: a new CA issues; the old one stays trusted for what it issued.
    let started = ws.build_at(2);
    let new_ca = current_ca(&ws).certificate_der().to_vec();
    assert_ne!(new_ca, old_ca);
    let messages: Vec<&str> =
        started.changes.iter().filter(|c| c.kind == ChangeKind::RotationStarted).map(|c| c.message.as_str()).collect();
    assert!(messages.iter().any(|m| m.starts_with("CA rotation, step 1 of 2")), "{messages:?}");
    assert!(messages.iter().any(|m| m.starts_with("ITL signer rotation, step 1 of 2")), "the signer is not the new CA's: {messages:?}");
    phone.fetch(&started.served, Some(BOB_CONFIG)).unwrap();
    assert_eq!(started.sip.as_ref().unwrap().trusted_cas, [new_ca.clone(), old_ca.clone()], "SIP accepts LSCs of both");
    assert!(started.capf.as_ref().unwrap().previous_ca.as_deref() == Some(old_ca.as_slice()), "so does CAPF");
    assert!(phone_status(&started, "bob-7941").lsc.is_some(), "bob's LSC of the old CA is still his");
    let message = cluster_message(&started);
    assert!(message.contains("CA rotation, step 1 of 2") && message.contains("SEP00AABBCCDD02"), "{message}");
    assert_eq!(started.identity.id, first.identity.id, "the identity keeps its name");
    assert_eq!(started.identity.previous_ca.as_deref(), Some(sha256_hex(&old_ca).as_str()));
    // Put back by hand (`callguard device add-cert`), bob's LSC of the previous CA is still his.
    let added = callguard::core::build::devices::add(ws.state.path(), Some("default"), "SEP00AABBCCDD02", &old_lsc, ws.start)
        .unwrap_or_else(|e| panic!("an LSC of the previous CA: {e:?}"));
    assert!(matches!(added.checked.origin, callguard::core::build::devices::Origin::Lsc));
    let retired = format!("retired/ca-{}/ca/ca.key", &sha256_hex(&old_ca)[..16]);
    assert!(state(&ws).read(&retired).unwrap().is_some(), "the old CA's key is set aside, not destroyed");

    // The signer's rotation completes after its grace period; the old CA still waits for bob.
    let signed = ws.build_at(63);
    assert!(kinds(&signed).contains(&ChangeKind::RotationCompleted), "{:?}", signed.changes);
    phone.fetch(&signed.served, Some(BOB_CONFIG)).unwrap();
    let message = cluster_message(&signed);
    assert!(message.contains("1 certificate(s) it issued remain (SEP00AABBCCDD02)"), "{message}");

    // Bob gets an LSC of the new CA: nothing of the old one is in use, and it is trusted no more.
    let new_lsc = give_lsc(&ws, "SEP00AABBCCDD02", 64);
    assert!(is_issued_by(&old_lsc, &old_ca) && is_issued_by(&new_lsc, &new_ca));
    let done = ws.build_at(65);
    let completed: Vec<&str> =
        done.changes.iter().filter(|c| c.kind == ChangeKind::RotationCompleted).map(|c| c.message.as_str()).collect();
    assert!(completed.iter().any(|m| m.starts_with("CA rotation, step 2 of 2")), "{:?}", done.changes);
    assert_eq!(done.sip.as_ref().unwrap().trusted_cas, std::slice::from_ref(&new_ca));
    assert_eq!(done.identity.previous_ca, None);
    phone.fetch(&done.served, Some(BOB_CONFIG)).unwrap();
    // The phone ends trusting only what the new CA issued (tokens aside, which no CA issues).
    for record in phone.itl.as_ref().unwrap().records.iter() {
        assert!(is_issued_by(&record.certificate_der, &new_ca), "{} {:?} is the new CA's", record.subject, record.role);
    }
    let settled = ws.build_at(66);
    assert!(settled.changes.is_empty(), "{:?}", settled.changes);
}

fn sha256_hex(bytes: &[u8]) -> String {
    callguard::core::build::identity_record::sha256_hex(bytes)
}
