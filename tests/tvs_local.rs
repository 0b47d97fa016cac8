//! TVS as a running service (docs/wire-formats.md §8): inside `callguard local examples/quickstart`,
//! and as `callguard serve tvs` against the in-process API server with a projection Secret the test
//! writes. The client speaks TVS over real TCP and TLS with the crate's frame codec, trusting only the
//! cluster CA and checking the host name, as a phone trusts its ITL; `openssl s_client` checks the
//! certificate TVS presents. A missing peer (openssl) fails the test, it does not skip.

#[path = "support/peers.rs"]
mod peers;
#[path = "support/process.rs"]
mod process;
use peers::require;
use process::{Running, copy_quickstart, free_tcp_port, free_udp_port};

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use callguard::core::pki::inspect::certificate_der;
use callguard::core::trust::Role;
use callguard::services::tvs::{Command as TvsCommand, Element, Frame, VerifyStatus};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const CM1: &str = "cm1.quickstart.example";
const ALICE: &str = "SEP00AABBCCDD01";

/// What TVS answered.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Valid { roles: Vec<u16>, ttl: u32 },
    Invalid,
}

/// One VERIFY_REQUEST over TCP and TLS, trusting `anchor` for `host` as a phone trusts its ITL.
async fn ask(address: SocketAddr, anchor: &[u8], host: &str, device: &str, certificate: &[u8]) -> Answer {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(anchor.to_vec())).expect("trust anchor");
    let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(address).await.expect("connect to TVS");
    let name = ServerName::try_from(host.to_owned()).unwrap();
    let mut tls = TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("TLS handshake with TVS");
    let request = Frame {
        command: TvsCommand::VerifyRequest,
        session_id: 0x2A,
        elements: vec![Element::DeviceName { lead: 1, name: format!("CP-7961-{device}") }, Element::Certificate(certificate.to_vec())],
    };
    tls.write_all(&request.encode().unwrap()).await.unwrap();
    let mut header = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut header)).await.expect("answer in time").expect("answer");
    let mut frame = header.to_vec();
    frame.resize(10 + usize::from(u16::from_be_bytes([header[8], header[9]])), 0);
    tls.read_exact(&mut frame[10..]).await.unwrap();
    let _ = tls.shutdown().await;
    let response = Frame::decode(&frame).expect("a TVS frame");
    assert_eq!((response.command, response.session_id), (TvsCommand::VerifyResponse, 0x2A), "{response:?}");
    match response.status() {
        Some(VerifyStatus::Valid) => {
            let roles = response.elements.iter().find_map(|e| match e {
                Element::Roles(roles) => Some(roles.iter().map(|r| r.code()).collect()),
                _ => None,
            });
            let ttl = response.elements.iter().find_map(|e| match e {
                Element::Ttl(ttl) => Some(*ttl),
                _ => None,
            });
            Answer::Valid { roles: roles.expect("ROLES"), ttl: ttl.expect("TTL") }
        }
        Some(VerifyStatus::Invalid) => {
            assert_eq!(response.elements.len(), 1, "an invalid answer is STATUS alone: {response:?}");
            Answer::Invalid
        }
        other => panic!("status {other:?}"),
    }
}

/// A phone certificate (LSC) issued by the state's cluster CA.
fn lsc_for(state: &Path, device: &str) -> Vec<u8> {
    process::lsc_from_state(state, device).1
}

fn state_der(state: &Path, file: &str) -> Vec<u8> {
    certificate_der(&fs::read(state.join("namespaces/default").join(file)).unwrap()).unwrap()
}

/// `openssl s_client` against TVS, with the cluster CA and the host name: it must verify.
fn openssl_verifies(port: u16, ca: &Path, host: &str) -> String {
    require("openssl", "openssl");
    let output = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-CAfile", ca.to_str().unwrap(), "-verify_hostname", host])
        .args(["-verify_return_error"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(text.contains("Verify return code: 0 (ok)"), "openssl s_client: {text}{}", String::from_utf8_lossy(&output.stderr));
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_vouches_for_the_cluster_trust_state_and_follows_device_add_cert() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = copy_quickstart(dir.path());
    let state = dir.path().join("state");
    let tvs_port = free_tcp_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_callguard"));
    command.args(["local", manifests.to_str().unwrap(), "--state-dir", state.to_str().unwrap()]);
    command.args(["--tftp-port", &free_udp_port().to_string(), "--capf-port", &free_tcp_port().to_string()]);
    command.args(["--tvs-port", &tvs_port.to_string()]);
    let mut local = Running::spawn(command);
    let line = local.wait_for("serving TVS on");
    assert!(line.contains(&format!("127.0.0.1:{tvs_port}")) && line.contains("TVS certificate of node cm1"), "{line}");
    local.wait_for("serving TFTP on");

    // TLS with cm1's TVS certificate, which the ITL lists (role 21), issued by the cluster CA: TVS holds
    // no key of CallManager's or TFTP's.
    let ca_file = state.join("namespaces/default/ca/ca.crt");
    let shown = openssl_verifies(tvs_port, &ca_file, CM1);
    assert!(shown.contains(&format!("CN = {CM1}")) || shown.contains(&format!("CN={CM1}")), "{shown}");
    let ca = state_der(&state, "ca/ca.crt");
    let address: SocketAddr = format!("127.0.0.1:{tvs_port}").parse().unwrap();

    // The cluster's function certificates, with the roles their ITL records give.
    let tvs = state_der(&state, "certs/cm1.tvs.crt");
    assert_eq!(ask(address, &ca, CM1, ALICE, &tvs).await, Answer::Valid { roles: vec![Role::Tvs.code()], ttl: 86_400 });
    let capf = state_der(&state, "certs/cm1.capf.crt");
    let answer = ask(address, &ca, CM1, ALICE, &capf).await;
    assert!(matches!(&answer, Answer::Valid { roles, ttl } if *roles == [Role::Capf.code()] && *ttl > 0 && *ttl <= 86_400), "{answer:?}");
    // cm1's CallManager+TFTP certificate also signs the ITL: SAST and CCM+TFTP.
    let cm1 = state_der(&state, "certs/cm1.callmanager-tftp.crt");
    let answer = ask(address, &ca, CM1, ALICE, &cm1).await;
    assert_eq!(answer, Answer::Valid { roles: vec![Role::Sast.code(), Role::CcmTftp.code()], ttl: 86_400 });
    let cm2 = state_der(&state, "certs/cm2.callmanager-tftp.crt");
    assert_eq!(ask(address, &ca, CM1, ALICE, &cm2).await, Answer::Valid { roles: vec![Role::CcmTftp.code()], ttl: 86_400 });

    // A certificate of the cluster CA that is in no trust state: invalid.
    let lsc = lsc_for(&state, ALICE);
    assert_eq!(ask(address, &ca, CM1, ALICE, &lsc).await, Answer::Invalid);

    // After `device add-cert`, the same question gets another answer, without a restart.
    let lsc_file = dir.path().join("alice.der");
    fs::write(&lsc_file, &lsc).unwrap();
    let add = Command::new(env!("CARGO_BIN_EXE_callguard"))
        .args(["device", "add-cert", "--state-dir", state.to_str().unwrap(), "--device", ALICE, lsc_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(add.status.success(), "{}", String::from_utf8_lossy(&add.stderr));
    let started = Instant::now();
    let phone_role = callguard::core::build::vouched::PHONE_ROLE.code();
    loop {
        match ask(address, &ca, CM1, ALICE, &lsc).await {
            Answer::Valid { roles, .. } => {
                assert_eq!(roles, [phone_role], "a phone's certificate gets no server role");
                break;
            }
            Answer::Invalid => assert!(started.elapsed() < Duration::from_secs(15), "still invalid 15 s after device add-cert"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    local.wait_for(&format!("asked about SHA-256 {}", callguard::core::pki::inspect::sha256_hex(&lsc)));
}

/// An RSA certificate for `host` and its PKCS#8 key, made by `openssl req`: PEM of both.
fn openssl_certificate(dir: &Path, host: &str) -> (Vec<u8>, Vec<u8>) {
    require("openssl", "openssl");
    let (certificate, key) = (dir.join(format!("{host}.crt")), dir.join(format!("{host}.key")));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", &format!("/CN={host}")])
        .args(["-addext", &format!("subjectAltName=DNS:{host}"), "-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-keyout", key.to_str().unwrap(), "-out", certificate.to_str().unwrap()])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "openssl req makes a certificate for {host}");
    (fs::read(certificate).unwrap(), fs::read(key).unwrap())
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_tvs_answers_from_the_projection_secret_and_follows_it() {
    use fake_apiserver::FakeApiServer;
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let server = FakeApiServer::start().await;
    let (tvs_pem, tvs_key) = openssl_certificate(dir.path(), "tvs.example");
    let (ccm_pem, _) = openssl_certificate(dir.path(), "ccm.example");
    let (app_pem, _) = openssl_certificate(dir.path(), "app.example");
    let (tvs_der, ccm_der, app_der) =
        (certificate_der(&tvs_pem).unwrap(), certificate_der(&ccm_pem).unwrap(), certificate_der(&app_pem).unwrap());
    // The projection as the operator would write it: the TLS pair and the directory, by name.
    let directory = json!([{"name": "cm1.callmanager", "roles": [1], "certificate": base64(&ccm_der)}]);
    server
        .insert(json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": "quickstart-tvs", "namespace": "default"},
            "data": {
                "tls.crt": base64(&tvs_pem),
                "tls.key": base64(&tvs_key),
                "directory.json": base64(directory.to_string().as_bytes()),
            },
        }))
        .expect("the projection Secret is stored");
    let kubeconfig = dir.path().join("kubeconfig");
    fs::write(&kubeconfig, server.kubeconfig("tvs-pod")).unwrap();
    let port = free_tcp_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_callguard"));
    command.args(["serve", "tvs", "--cluster", "quickstart", "--namespace", "default", "--secret", "quickstart-tvs"]);
    command.args(["--bind", "127.0.0.1", "--port", &port.to_string()]).env("KUBECONFIG", &kubeconfig);
    let mut tvs = tokio::task::spawn_blocking(move || {
        let mut tvs = Running::spawn(command);
        tvs.wait_for("serving TVS on");
        tvs
    })
    .await
    .unwrap();
    let line = tvs.wait_for("serving TVS on");
    assert!(line.contains(&format!("127.0.0.1:{port}")) && line.contains("vouching for 1 certificate(s)"), "{line}");
    openssl_verifies(port, &dir.path().join("tvs.example.crt"), "tvs.example");

    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(ask(address, &tvs_der, "tvs.example", ALICE, &ccm_der).await, Answer::Valid { roles: vec![1], ttl: 86_400 });
    assert_eq!(ask(address, &tvs_der, "tvs.example", ALICE, &app_der).await, Answer::Invalid);

    // The operator rewrites the projection: the pod follows, without a restart.
    let directory = json!([
        {"name": "cm1.callmanager", "roles": [1], "certificate": base64(&ccm_der)},
        {"name": "app.example", "roles": [7], "certificate": base64(&app_der)},
    ]);
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(server.client(), "default");
    let patch = json!({"data": {"directory.json": base64(directory.to_string().as_bytes())}});
    secrets.patch("quickstart-tvs", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.expect("patched");
    let started = Instant::now();
    while ask(address, &tvs_der, "tvs.example", ALICE, &app_der).await == Answer::Invalid {
        assert!(started.elapsed() < Duration::from_secs(15), "serve tvs did not follow its Secret within 15 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(ask(address, &tvs_der, "tvs.example", ALICE, &app_der).await, Answer::Valid { roles: vec![7], ttl: 86_400 });
    drop(tvs);
}
