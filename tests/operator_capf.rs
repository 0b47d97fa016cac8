//! CAPF through the operator, against the in-process API server with RBAC enforced for the pods: the
//! operator writes the CAPF Deployment, its Role and projection; `callguard serve capf` runs with the
//! Deployment's own arguments under the CAPF ServiceAccount; a phone speaking CAPF over TCP and TLS
//! installs an LSC by authentication string. The LSC goes into the record Secret, the operator reads
//! it back: the phone goes from `AwaitingDeviceCertificate` to `Ready` with the LSC's serial, and the
//! TFTP pod serves its `.enc.sgn`, which decrypts with the phone's key. The operator and the CAPF
//! process are then each restarted: the LSC and the spent string survive, nothing is issued twice.
//! Two CAPF replicas share the records: ten wrong strings sent to both at once lock the phone out,
//! every one counted, and the eleventh try is refused even with the right string (P.16-6).

#[path = "support/capf_phone.rs"]
mod capf_phone;
#[path = "support/peers.rs"]
mod peers;
#[path = "support/process.rs"]
mod process;
#[path = "support/cluster.rs"]
mod support;
use peers::require;
use process::{Running, free_tcp_port};
use support::*;

use std::path::Path;
use std::process::Command;

use callguard::core::pki::inspect::{CertificateFacts, certificate_der};
use callguard::core::pki::keys;
use callguard::services::capf::frame::{Command as CapfCommand, Reason};
use fake_apiserver::FakeApiServer;
use serde_json::Value;

const LOBBY: &str = "lobby-7970";
const LOBBY_DEVICE: &str = "SEP001122334455";
const LOBBY_STRING: &str = "12345678";
const CAPF_HOST: &str = "cm1.quickstart.example";

/// `callguard serve capf` with the arguments the operator gave the CAPF pods, on loopback ports.
/// The arguments the operator gave the CAPF pods.
fn capf_pod_args(server: &FakeApiServer) -> Vec<String> {
    let deployment = server.get("apps/v1", "Deployment", Some(NAMESPACE), "quickstart-capf").expect("the CAPF Deployment");
    serde_json::from_value(deployment["spec"]["template"]["spec"]["containers"][0]["args"].clone()).unwrap()
}

struct ServeCapf {
    process: Running,
    port: u16,
}

crate::deref_to_running!(ServeCapf);

impl ServeCapf {
    fn start(kubeconfig: &Path, args: &[String]) -> ServeCapf {
        let arg = |name: &str| args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone()).unwrap_or_else(|| panic!("{name} in {args:?}"));
        assert_eq!(&args[..2], ["serve", "capf"]);
        assert_eq!(arg("--port"), "3804", "P.6-6");
        let port = free_tcp_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_callguard"));
        command
            .args(["serve", "capf", "--cluster", &arg("--cluster"), "--namespace", NAMESPACE])
            .args(["--ca-secret", &arg("--ca-secret"), "--certificate-secret", &arg("--certificate-secret")])
            .args(["--directory-secret", &arg("--directory-secret")])
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--est-port", &free_tcp_port().to_string()])
            .env("KUBECONFIG", kubeconfig);
        let mut capf = ServeCapf { process: Running::spawn(command), port };
        let line = capf.wait_for("serving CAPF on");
        assert!(line.contains("node cm1"), "{line}");
        capf
    }
}

fn lobby(server: &FakeApiServer) -> Value {
    object(server, "Phone", LOBBY)
}

fn ready_reason(phone: &Value) -> (String, String) {
    condition(phone, "Ready").map(|(status, reason, _)| (status, reason)).unwrap_or_default()
}

async fn capf_session(port: u16, ca: Vec<u8>, password: &'static str, key: rsa::RsaPrivateKey) -> capf_phone::Transcript {
    tokio::task::spawn_blocking(move || capf_phone::session(port, &ca, CAPF_HOST, LOBBY_DEVICE, Some(password), &key)).await.unwrap()
}

fn record_secret(server: &FakeApiServer) -> Value {
    let name = callguard::adapters::controller::capf_records::secret_name("quickstart", LOBBY_DEVICE);
    server.get("v1", "Secret", Some(NAMESPACE), &name).unwrap_or_else(|| panic!("Secret/{name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_lsc_issued_by_the_capf_pod_makes_the_phone_ready_and_survives_restarts_of_the_operator_and_of_capf() {
    require("tftp", "tftp-hpa");
    let server = FakeApiServer::start().await;
    load(&server, quickstart());
    let (shutdown, operator) = start_operator(&server, "operator", false);
    until("the CAPF projection", || server.get("v1", "Secret", Some(NAMESPACE), "quickstart-capf").is_some()).await;
    until("the lobby phone's status", || !ready_reason(&lobby(&server)).0.is_empty()).await;
    assert_eq!(ready_reason(&lobby(&server)), ("False".into(), "AwaitingDeviceCertificate".into()), "encrypted, no LSC yet");
    let ca = certificate_der(&decoded(&server.get("v1", "Secret", Some(NAMESPACE), "quickstart-ca").unwrap(), "data", "ca.crt")).unwrap();
    // A CTI instance's CAPF profile carries its own status on its user (Table 11-2).
    until("the CTI instance's status", || {
        let user = object(&server, "ApplicationUser", "sbc-presence");
        user["status"]["capfProfiles"][0]["operationStatus"].as_str().is_some_and(|s| s.starts_with("Pending: Install/Upgrade"))
    })
    .await;

    // The CAPF pod, under its own ServiceAccount: RBAC as the operator wrote it.
    server.authenticate_as_service_account("capf-pod", NAMESPACE, "quickstart-capf");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig("capf-pod")).unwrap();
    let args = capf_pod_args(&server);
    let capf = tokio::task::spawn_blocking({
        let (kubeconfig, args) = (kubeconfig.clone(), args.clone());
        move || ServeCapf::start(&kubeconfig, &args)
    })
    .await
    .unwrap();

    let content_hashes = || -> Vec<Value> {
        ["quickstart-tftp", "quickstart-capf", "quickstart-tvs"]
            .map(|name| {
                server.get("apps/v1", "Deployment", Some(NAMESPACE), name).unwrap()["spec"]["template"]["metadata"]["annotations"].clone()
            })
            .to_vec()
    };
    let hashes_before = content_hashes();
    let key = keys::generate_rsa(2048);
    let installed = capf_session(capf.port, ca.clone(), LOBBY_STRING, key.clone()).await;
    assert_eq!(installed.end, Some(Reason::Success), "{installed:?}");
    let lsc = installed.stored.clone().expect("the phone stored an LSC");
    let serial = CertificateFacts::from_der(&lsc).unwrap().serial.to_hex();

    until("the lobby phone to be Ready with its LSC", || {
        let phone = lobby(&server);
        ready_reason(&phone).0 == "True" && phone["status"]["lsc"]["serialNumber"].as_str() == Some(serial.as_str())
    })
    .await;
    let status = lobby(&server)["status"].clone();
    assert_eq!(status["lscState"], "Installed", "{status}");
    assert!(status["operationStatus"].as_str().unwrap_or_default().starts_with("Completed"), "{status}");
    let kept = decoded(&record_secret(&server), "data", &format!("{LOBBY_DEVICE}.crt"));
    assert_eq!(certificate_der(&kept).unwrap(), lsc, "the record Secret keeps the LSC the phone stored");
    assert_eq!(content_hashes(), hashes_before, "an enrollment rolls no pod: the LSC reaches TFTP through its projection");

    // The TFTP pod serves the phone's configuration encrypted for the new LSC, which its key opens.
    server.authenticate_as_service_account("tftp-pod", NAMESPACE, "quickstart-tftp");
    let tftp_kubeconfig = dir.path().join("tftp-kubeconfig");
    std::fs::write(&tftp_kubeconfig, server.kubeconfig("tftp-pod")).unwrap();
    let pod_args = tftp_pod_args(&server);
    let key_file = dir.path().join("lobby.key");
    std::fs::write(&key_file, keys::pkcs8_pem(&key)).unwrap();
    let configuration = tokio::task::spawn_blocking({
        let (dir, key_file) = (dir.path().to_owned(), key_file.clone());
        move || {
            let tftp = ServeTftp::start(&tftp_kubeconfig, &pod_args);
            let (encrypted, ctl) = (dir.join("lobby.enc.sgn"), dir.join("ctl.tlv"));
            std::fs::write(&encrypted, tftp.bytes(&format!("{LOBBY_DEVICE}.cnf.xml.enc.sgn")).expect("the .enc.sgn is served")).unwrap();
            std::fs::write(&ctl, tftp.bytes("CTLFile.tlv").unwrap()).unwrap();
            trust(&["decrypt", encrypted.to_str().unwrap(), "--key", key_file.to_str().unwrap(), "--ctl", ctl.to_str().unwrap()])
        }
    })
    .await
    .unwrap();
    assert!(configuration.status.success(), "{}", String::from_utf8_lossy(&configuration.stderr));
    assert!(String::from_utf8_lossy(&configuration.stdout).contains("<device"), "the phone's configuration");

    // Restart the operator and CAPF: nothing is lost, and the spent string issues nothing again.
    shutdown.trigger();
    operator.await.unwrap().unwrap();
    let mut capf = capf;
    capf.stop();
    let (shutdown, operator) = start_operator(&server, "operator-2", false);
    let capf = tokio::task::spawn_blocking(move || ServeCapf::start(&kubeconfig, &args)).await.unwrap();
    let again = capf_session(capf.port, ca.clone(), LOBBY_STRING, keys::generate_rsa(2048)).await;
    assert!(again.stored.is_none(), "a spent string issues nothing: {again:?}");
    assert!(!again.commands.contains(&CapfCommand::KeyGenerateRequest), "refused before any key is asked for: {again:?}");
    // A new generation of the phone, reconciled by the restarted operator from what it read back: the
    // same LSC, still Ready.
    edit(&server, "Phone", "phones", LOBBY, |phone| phone["spec"]["description"] = "reception desk, after the restarts".into()).await;
    let generation = lobby(&server)["metadata"]["generation"].clone();
    until("the restarted operator to reconcile the new generation", || lobby(&server)["status"]["observedGeneration"] == generation).await;
    let phone = lobby(&server);
    assert_eq!(ready_reason(&phone).0, "True", "{phone}");
    assert_eq!(phone["status"]["lsc"]["serialNumber"].as_str(), Some(serial.as_str()), "the same LSC after both restarts");
    let kept = decoded(&record_secret(&server), "data", &format!("{LOBBY_DEVICE}.crt"));
    assert_eq!(certificate_der(&kept).unwrap(), lsc, "issued once");

    // A Delete, with a new deadline and a new string (the first is spent): the LSC goes from the
    // record Secret, and the phone waits for a certificate again.
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(server.client(), NAMESPACE);
    let new_string = serde_json::json!({"data": {"authenticationString": k8s_openapi::ByteString(b"24681357".to_vec())}});
    secrets.patch("lobby-7970-capf", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&new_string)).await.unwrap();
    edit(&server, "Phone", "phones", LOBBY, |phone| {
        phone["spec"]["capf"]["certificateOperation"] = "Delete".into();
        phone["spec"]["capf"]["operationCompletesBy"] = "2036-08-31T17:00:00Z".into();
    })
    .await;
    until("the Delete pending", || lobby(&server)["status"]["operationStatus"].as_str().is_some_and(|s| s.starts_with("Pending: Delete")))
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let deleted = loop {
        // The pod serves the operator's new projection within moments; until then nothing is scheduled.
        let session = capf_session(capf.port, ca.clone(), "24681357", keys::generate_rsa(2048)).await;
        if session.commands.contains(&CapfCommand::DeleteCertificateRequest) || std::time::Instant::now() > deadline {
            break session;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(deleted.end, Some(Reason::Success), "{deleted:?}");
    until("the LSC gone from its record Secret", || record_secret(&server)["data"].get(format!("{LOBBY_DEVICE}.crt")).is_none()).await;
    until("the Delete completed in the status", || {
        lobby(&server)["status"]["operationStatus"].as_str().is_some_and(|s| s.starts_with("Completed: Delete"))
    })
    .await;
    assert_eq!(
        ready_reason(&lobby(&server)),
        ("False".into(), "AwaitingDeviceCertificate".into()),
        "the phone waits for a certificate again"
    );
    let status = lobby(&server)["status"].clone();
    assert!(status["lsc"].is_null() && status["operationStatus"].as_str().unwrap_or_default().starts_with("Completed: Delete"), "{status}");
    drop(capf);
    shutdown.trigger();
    operator.await.unwrap().unwrap();
}

/// The operator and a CAPF pod under its own ServiceAccount, `replicas` times, against a fresh
/// quickstart; the cluster CA's certificate (DER).
async fn quickstart_with_capf(
    server: &FakeApiServer,
    dir: &Path,
    replicas: usize,
) -> (callguard::ops::shutdown::Shutdown, tokio::task::JoinHandle<Result<(), String>>, Vec<ServeCapf>, Vec<u8>) {
    load(server, quickstart());
    let (shutdown, operator) = start_operator(server, "operator", false);
    until("the CAPF projection", || server.get("v1", "Secret", Some(NAMESPACE), "quickstart-capf").is_some()).await;
    // The projection can land before the Deployment that reads it.
    until("the CAPF Deployment", || server.get("apps/v1", "Deployment", Some(NAMESPACE), "quickstart-capf").is_some()).await;
    let ca = certificate_der(&decoded(&server.get("v1", "Secret", Some(NAMESPACE), "quickstart-ca").unwrap(), "data", "ca.crt")).unwrap();
    server.authenticate_as_service_account("capf-pod", NAMESPACE, "quickstart-capf");
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig("capf-pod")).unwrap();
    let args = capf_pod_args(server);
    let pods = tokio::task::spawn_blocking(move || (0..replicas).map(|_| ServeCapf::start(&kubeconfig, &args)).collect()).await.unwrap();
    (shutdown, operator, pods, ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_wrong_strings_sent_to_two_capf_replicas_at_once_all_count_and_lock_the_phone_out() {
    let server = FakeApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (shutdown, operator, pods, ca) = quickstart_with_capf(&server, dir.path(), 2).await;
    let key = keys::generate_rsa(1024);
    let ports: Vec<u16> = pods.iter().map(|pod| pod.port).collect();
    let wrong: Vec<_> = (0..10)
        .map(|n| {
            let (ca, key, port) = (ca.clone(), key.clone(), ports[n % 2]);
            std::thread::spawn(move || capf_phone::session(port, &ca, CAPF_HOST, LOBBY_DEVICE, Some(&format!("1000000{n}")), &key))
        })
        .collect();
    for (n, session) in wrong.into_iter().enumerate() {
        let transcript = session.join().unwrap();
        assert_eq!(transcript.end, Some(Reason::Failure), "wrong string {n}: {transcript:?}");
    }
    let record = decoded(&record_secret(&server), "data", &format!("{LOBBY_DEVICE}.yaml"));
    let record: callguard::core::build::capf::CapfRecord = serde_yaml::from_slice(&record).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let until_time = record.locked_until(now).expect("ten wrong strings across both replicas lock the phone out");
    assert!(until_time - now > time::Duration::minutes(9), "for ten minutes (P.16-6): {until_time}");
    for port in ports {
        let eleventh = capf_session(port, ca.clone(), LOBBY_STRING, key.clone()).await;
        assert_eq!(eleventh.end, Some(Reason::Failure), "the right string, refused while locked out: {eleventh:?}");
        assert!(!eleventh.commands.contains(&CapfCommand::KeyGenerateRequest), "{eleventh:?}");
    }
    until("the lockout in the phone's status", || {
        lobby(&server)["status"]["operationStatus"].as_str().is_some_and(|s| s.starts_with("LockedOut"))
    })
    .await;
    drop(pods);
    shutdown.trigger();
    operator.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_passes_expires_the_operation_in_the_status_without_an_edit() {
    let server = FakeApiServer::start().await;
    let mut objects = quickstart();
    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(5);
    let soon = callguard::core::build::capf::rfc3339(soon);
    let lobby_object = objects.iter_mut().find(|o| o["kind"] == "Phone" && o["metadata"]["name"] == LOBBY).unwrap();
    lobby_object["spec"]["capf"]["operationCompletesBy"] = Value::from(soon.clone());
    load(&server, objects);
    let (shutdown, operator) = start_operator(&server, "operator", false);
    let operation = |server: &FakeApiServer| lobby(server)["status"]["operationStatus"].as_str().unwrap_or_default().to_owned();
    until("the operation pending", || operation(&server).starts_with("Pending")).await;
    // No edit: the operator reconciles when the deadline passes (Table 6-2), not at its 15-minute resync.
    until("the operation expired", || operation(&server).starts_with("Expired")).await;
    assert!(operation(&server).contains(&soon), "{}", operation(&server));
    shutdown.trigger();
    operator.await.unwrap().unwrap();
}
