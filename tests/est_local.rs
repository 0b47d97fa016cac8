//! EST (RFC 7030) inside `callguard local`, against a copy of the quickstart run as a subprocess on
//! free ports, with real peers: `curl` enrolls the lobby phone with a CSR made by `openssl req`, the
//! answer is read by `openssl pkcs7` and the certificate accepted by `openssl verify` under the
//! cluster CA; the same secret is refused the second time (Table 6-2, P.6-12); a CSR whose CN is not
//! the device name is refused and spends nothing; re-enrollment works with the issued certificate as
//! the TLS client certificate and no secret; ten wrong secrets lock the phone out (P.16-6); a string
//! spent by EST is spent for CAPF and the other way round. `callguard enroll` does the same end to
//! end. A missing peer (curl, openssl) fails the test, it does not skip.

#[path = "support/peers.rs"]
mod peers;
#[path = "support/process.rs"]
mod process;
use process::{Running, copy_quickstart, free_tcp_port, free_udp_port};
#[path = "support/capf_phone.rs"]
mod capf_phone;
use capf_phone::{read_frame, send};
use peers::require;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use callguard::services::capf::frame::{Body, Command as CapfCommand, Frame, Password, Reason};
use rsa::pkcs8::EncodePublicKey;
use std::time::Duration;

const LOBBY: &str = "SEP001122334455";
const LOBBY_STRING: &str = "12345678";
/// The quickstart's CAPF node, whose certificate CAPF and EST present.
const CAPF_HOST: &str = "cm1.quickstart.example";

/// A running `callguard local` on free ports.
struct Local {
    process: Running,
    capf_port: u16,
    est_port: u16,
}

crate::deref_to_running!(Local);

impl Local {
    fn start(manifests: &Path, state: &Path) -> Local {
        let (tftp_port, capf_port, est_port) = (free_udp_port(), free_tcp_port(), free_tcp_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_callguard"));
        command
            .args(["local", manifests.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
            .args(["--tftp-port", &tftp_port.to_string(), "--capf-port", &capf_port.to_string(), "--est-port", &est_port.to_string()])
            // TVS runs beside CallManager too; a port of its own, so that tests running at once do not meet on 2445.
            .args(["--tvs-port", &free_tcp_port().to_string()]);
        let mut local = Local { process: Running::spawn(command), capf_port, est_port };
        let line = local.wait_for("serving EST on");
        assert!(line.contains(&format!("https://127.0.0.1:{est_port}/.well-known/est/")), "{line}");
        local.wait_for("serving TFTP on");
        local
    }

    fn url(&self, operation: &str) -> String {
        format!("https://127.0.0.1:{}/.well-known/est/{operation}", self.est_port)
    }
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program} runs: {e}"))
}

fn ok(output: &Output, what: &str) -> String {
    assert!(output.status.success(), "{what}: {}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `openssl req`: a key (when `key` does not exist) and a CSR for `cn`, DER then base64 (`openssl base64`).
fn csr(dir: &Path, name: &str, key: &Path, cn: &str) -> PathBuf {
    let der = dir.join(format!("{name}.der"));
    let subject = format!("/CN={cn}");
    let mut args = vec!["req", "-new", "-subj", &subject, "-outform", "DER", "-out", der.to_str().unwrap()];
    if key.exists() {
        args.extend(["-key", key.to_str().unwrap()]);
    } else {
        args.extend(["-newkey", "rsa:2048", "-nodes", "-keyout", key.to_str().unwrap()]);
    }
    ok(&run("openssl", &args), "openssl req");
    let b64 = dir.join(format!("{name}.b64"));
    ok(&run("openssl", &["base64", "-in", der.to_str().unwrap(), "-out", b64.to_str().unwrap()]), "openssl base64");
    b64
}

/// `curl` POSTs a base64 CSR; returns the HTTP status and the body file.
fn curl_post(url: &str, ca: &Path, csr: &Path, extra: &[&str], body: &Path) -> u16 {
    let data = format!("@{}", csr.display());
    let mut args = vec!["-sS", "--cacert", ca.to_str().unwrap(), "--data-binary", &data, "-H", "Content-Type: application/pkcs10"];
    args.extend(extra);
    args.extend(["-o", body.to_str().unwrap(), "-w", "%{http_code}", url]);
    let code = ok(&run("curl", &args), "curl");
    code.trim().parse().unwrap_or_else(|_| panic!("curl printed no status: {code:?}"))
}

/// `openssl base64 -d | openssl pkcs7 -inform DER -print_certs`: the certificates of an EST answer, PEM.
fn print_certs(body: &Path, out: &Path) -> String {
    let script = format!("openssl base64 -d -in '{}' | openssl pkcs7 -inform DER -print_certs -out '{}'", body.display(), out.display());
    ok(&run("sh", &["-c", &script]), "openssl pkcs7 -print_certs");
    fs::read_to_string(out).unwrap()
}

fn verify(ca: &Path, certificate: &Path) {
    let output = run("openssl", &["verify", "-CAfile", ca.to_str().unwrap(), certificate.to_str().unwrap()]);
    assert!(ok(&output, "openssl verify").contains(": OK"), "openssl verify accepts {}", certificate.display());
}

fn subject(certificate: &Path) -> String {
    ok(&run("openssl", &["x509", "-noout", "-subject", "-in", certificate.to_str().unwrap()]), "openssl x509")
}

/// The DER of the first certificate of a PEM file.
fn der_of(pem: &Path) -> Vec<u8> {
    let output = run("openssl", &["x509", "-in", pem.to_str().unwrap(), "-outform", "DER"]);
    assert!(output.status.success());
    output.stdout
}

#[test]
fn curl_enrolls_the_lobby_phone_once_openssl_verifies_it_and_the_certificate_reenrolls_without_a_secret() {
    require("curl", "curl");
    require("openssl", "openssl");
    let dir = tempfile::tempdir().unwrap();
    let manifests = copy_quickstart(dir.path());
    let state = dir.path().join("state");
    let mut local = Local::start(&manifests, &state);
    let namespace = state.join("namespaces/default");
    let ca = namespace.join("ca/ca.crt");
    let user = format!("{LOBBY}:{LOBBY_STRING}");

    // cacerts: the cluster CA, a base64 certs-only PKCS#7.
    let cacerts = dir.path().join("cacerts.b64");
    let code = ok(
        &run(
            "curl",
            &["-sS", "--cacert", ca.to_str().unwrap(), "-o", cacerts.to_str().unwrap(), "-w", "%{http_code}", &local.url("cacerts")],
        ),
        "curl cacerts",
    );
    assert_eq!(code.trim(), "200");
    let ca_out = dir.path().join("cacerts.pem");
    print_certs(&cacerts, &ca_out);
    assert_eq!(der_of(&ca_out), der_of(&ca), "cacerts is the cluster CA");

    // A CSR naming another device is refused, with the right secret, and spends nothing.
    let key = dir.path().join("phone.key");
    let wrong = csr(dir.path(), "wrong", &key, "SEP000000000000");
    let body = dir.path().join("wrong.txt");
    let code = curl_post(&local.url("simpleenroll"), &ca, &wrong, &["--user", &user], &body);
    let text = fs::read_to_string(&body).unwrap();
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("subject CN is \"SEP000000000000\"") && text.contains(LOBBY) && text.contains("§7.8"), "{text}");

    // The right request: the certificate comes back, openssl verifies it under the cluster CA.
    let good = csr(dir.path(), "good", &key, LOBBY);
    let body = dir.path().join("issued.b64");
    let code = curl_post(&local.url("simpleenroll"), &ca, &good, &["--user", &user], &body);
    assert_eq!(code, 200, "{}", fs::read_to_string(&body).unwrap_or_default());
    let issued = dir.path().join("issued.pem");
    print_certs(&body, &issued);
    verify(&ca, &issued);
    assert!(subject(&issued).contains(&format!("CN = {LOBBY}")), "{}", subject(&issued));
    assert_eq!(der_of(&namespace.join(format!("devices/{LOBBY}.crt"))), der_of(&issued), "kept in devices/ like a CAPF LSC");
    local.wait_for("simpleenroll issued an LSC");
    let record = fs::read_to_string(namespace.join(format!("capf/{LOBBY}.yaml"))).unwrap();
    assert!(record.contains("spentStrings") && record.contains("InstallUpgrade"), "{record}");
    assert!(!record.contains(LOBBY_STRING), "only the hash of the string is kept: {record}");

    // The same secret again: refused, saying why.
    let again = csr(dir.path(), "again", &dir.path().join("other.key"), LOBBY);
    let body = dir.path().join("again.txt");
    let code = curl_post(&local.url("simpleenroll"), &ca, &again, &["--user", &user], &body);
    let text = fs::read_to_string(&body).unwrap();
    assert!(code == 401 || code == 403, "{code}: {text}");
    assert!(text.contains("Phone/lobby-7970") && text.contains("already used") && text.contains("Table 6-2"), "{text}");

    // Re-enroll with the issued certificate, no secret.
    let renew = csr(dir.path(), "renew", &key, LOBBY);
    let body = dir.path().join("renewed.b64");
    let client = ["--cert", issued.to_str().unwrap(), "--key", key.to_str().unwrap()];
    let code = curl_post(&local.url("simplereenroll"), &ca, &renew, &client, &body);
    assert_eq!(code, 200, "{}", fs::read_to_string(&body).unwrap_or_default());
    let renewed = dir.path().join("renewed.pem");
    print_certs(&body, &renewed);
    verify(&ca, &renewed);
    assert_ne!(der_of(&renewed), der_of(&issued));
    assert_eq!(der_of(&namespace.join(format!("devices/{LOBBY}.crt"))), der_of(&renewed));

    // The replaced certificate no longer re-enrolls; nor does a request without one.
    let body = dir.path().join("stale.txt");
    let code = curl_post(&local.url("simplereenroll"), &ca, &renew, &client, &body);
    let text = fs::read_to_string(&body).unwrap();
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("not the device's current certificate"), "{text}");
    let code = curl_post(&local.url("simplereenroll"), &ca, &renew, &[], &body);
    assert_eq!(code, 401, "{}", fs::read_to_string(&body).unwrap());

    // A wrong CN on re-enrollment too.
    let client = ["--cert", renewed.to_str().unwrap(), "--key", key.to_str().unwrap()];
    let code = curl_post(&local.url("simplereenroll"), &ca, &wrong, &client, &body);
    let text = fs::read_to_string(&body).unwrap();
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("must be the device name"), "{text}");
    let output = local.output();
    assert!(!output.contains(LOBBY_STRING), "no secret in the log:\n{output}");
}

fn enroll(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_callguard")).arg("enroll").args(args).output().unwrap()
}

#[test]
fn callguard_enroll_enrolls_once_with_a_generated_key_reenrolls_and_fetches_cacerts() {
    require("openssl", "openssl");
    let dir = tempfile::tempdir().unwrap();
    let manifests = copy_quickstart(dir.path());
    let state = dir.path().join("state");
    let local = Local::start(&manifests, &state);
    let namespace = state.join("namespaces/default");
    let ca = namespace.join("ca/ca.crt");
    let server = format!("https://127.0.0.1:{}", local.est_port);
    let secret = dir.path().join("secret");
    fs::write(&secret, format!("{LOBBY_STRING}\n")).unwrap();
    let (key, cert) = (dir.path().join("device.key"), dir.path().join("device.crt"));
    let p = |path: &Path| path.to_str().unwrap().to_owned();

    let first =
        ["--server", &server, "--ca-file", &p(&ca), "--device", LOBBY, "--secret-file", &p(&secret), "--key", &p(&key), "--out", &p(&cert)];
    let output = enroll(&first);
    ok(&output, "callguard enroll");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600, "the generated key is private");
    verify(&ca, &cert);
    let bits = ok(&run("openssl", &["rsa", "-in", &p(&key), "-noout", "-text"]), "openssl rsa");
    assert!(bits.contains("2048 bit"), "{bits}");
    assert_eq!(der_of(&namespace.join(format!("devices/{LOBBY}.crt"))), der_of(&cert));

    // Again with the same secret: refused, exit 1, the server's words.
    let output = enroll(&first);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("403") && stderr.contains("already used"), "{stderr}");

    // Re-enroll with the certificate and its key.
    let renewed = dir.path().join("renewed.crt");
    let output =
        enroll(&["--server", &server, "--ca-file", &p(&ca), "--reenroll", "--cert", &p(&cert), "--key", &p(&key), "--out", &p(&renewed)]);
    ok(&output, "callguard enroll --reenroll");
    verify(&ca, &renewed);
    assert_ne!(der_of(&renewed), der_of(&cert));

    // cacerts, authenticated by --ca-file; an unrelated CA file does not authenticate the server.
    let fetched = dir.path().join("cacerts.pem");
    ok(&enroll(&["--server", &server, "--ca-file", &p(&ca), "--cacerts", "--out", &p(&fetched)]), "callguard enroll --cacerts");
    assert_eq!(der_of(&fetched), der_of(&ca));
    let stranger = dir.path().join("stranger.pem");
    let stranger_key = dir.path().join("stranger.key");
    ok(
        &run(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=stranger",
                "-keyout",
                &p(&stranger_key),
                "-out",
                &p(&stranger),
            ],
        ),
        "openssl req -x509",
    );
    let output = enroll(&["--server", &server, "--ca-file", &p(&stranger), "--cacerts", "--out", &p(&dir.path().join("never.pem"))]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("TLS") && !dir.path().join("never.pem").exists(), "{stderr}");
}

#[test]
fn ten_wrong_secrets_lock_the_lobby_phone_out_of_est_and_the_eleventh_try_is_refused_even_with_the_right_secret() {
    require("curl", "curl");
    require("openssl", "openssl");
    let dir = tempfile::tempdir().unwrap();
    let manifests = copy_quickstart(dir.path());
    let state = dir.path().join("state");
    let mut local = Local::start(&manifests, &state);
    let namespace = state.join("namespaces/default");
    let ca = namespace.join("ca/ca.crt");
    let request = csr(dir.path(), "lobby", &dir.path().join("phone.key"), LOBBY);
    let body = dir.path().join("answer.txt");
    for attempt in 1..=10 {
        let code = curl_post(&local.url("simpleenroll"), &ca, &request, &["--user", &format!("{LOBBY}:8765432{attempt}")], &body);
        let text = fs::read_to_string(&body).unwrap();
        assert_eq!(code, 401, "attempt {attempt}: {text}");
        assert!(text.contains("wrong enrollment secret") && text.contains("P.16-6"), "{text}");
    }
    local.wait_for("is locked out until");
    let code = curl_post(&local.url("simpleenroll"), &ca, &request, &["--user", &format!("{LOBBY}:{LOBBY_STRING}")], &body);
    let text = fs::read_to_string(&body).unwrap();
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("locked out until") && text.contains("P.16-6"), "{text}");
    assert!(!namespace.join(format!("devices/{LOBBY}.crt")).exists(), "nothing issued");
}

// ---------------------------------------------------------------------------------------------------------------
// A phone speaking CAPF (docs/wire-formats.md §7.5), as in tests/capf_local.rs: the string is shared.

/// One CAPF session of the lobby phone with `password`; the commands it heard and how it ended.
fn capf_session(port: u16, ca: &Path, password: &str) -> (Vec<CapfCommand>, Option<Reason>) {
    let ca = fs::read(ca).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from(callguard::core::pki::inspect::certificate_der(&ca).unwrap())).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connection = rustls::ClientConnection::new(Arc::new(config), rustls_pki_types::ServerName::try_from(CAPF_HOST).unwrap()).unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    let key = callguard::core::pki::keys::generate_rsa(2048);
    let request = read_frame(&mut stream).expect("the server speaks first");
    let id = request.session_id;
    let mut commands = vec![request.command];
    let body = Body {
        reason: Some(Reason::Success),
        version: Some(3),
        device_name: Some(LOBBY.into()),
        password: Some(Password::new(password)),
        ..Body::default()
    };
    send(&mut stream, Frame::new(CapfCommand::AuthResponse, id, body));
    while let Some(frame) = read_frame(&mut stream) {
        commands.push(frame.command);
        match frame.command {
            CapfCommand::KeyGenerateRequest => {
                let spki = rsa::RsaPublicKey::from(&key).to_public_key_der().unwrap().as_bytes().to_vec();
                send(&mut stream, Frame::new(CapfCommand::KeyGenerateResponse, id, Body { public_key: Some(spki), ..Body::default() }));
            }
            CapfCommand::StoreCertificateRequest => send(
                &mut stream,
                Frame::new(CapfCommand::StoreCertificateResponse, id, Body { reason: Some(Reason::Success), ..Body::default() }),
            ),
            CapfCommand::EndSession => return (commands, frame.body.reason),
            other => panic!("the server sent {other:?}"),
        }
    }
    (commands, None)
}

#[test]
fn a_string_spent_by_est_is_refused_by_capf_and_one_spent_by_capf_is_refused_by_est() {
    require("curl", "curl");
    require("openssl", "openssl");
    let user = format!("{LOBBY}:{LOBBY_STRING}");

    // EST first: it completed the Install/Upgrade and spent the string, so CAPF has nothing to do
    // for the phone (END_SESSION 0) and generates no key.
    let dir = tempfile::tempdir().unwrap();
    let manifests = copy_quickstart(dir.path());
    let state = dir.path().join("state");
    let local = Local::start(&manifests, &state);
    let ca = state.join("namespaces/default/ca/ca.crt");
    let request = csr(dir.path(), "lobby", &dir.path().join("phone.key"), LOBBY);
    let body = dir.path().join("answer");
    assert_eq!(curl_post(&local.url("simpleenroll"), &ca, &request, &["--user", &user], &body), 200);
    let issued = fs::read(state.join(format!("namespaces/default/devices/{LOBBY}.crt"))).unwrap();
    let (commands, end) = capf_session(local.capf_port, &ca, LOBBY_STRING);
    assert_eq!(end, Some(Reason::NoAction), "{commands:?}");
    let record = fs::read_to_string(state.join(format!("namespaces/default/capf/{LOBBY}.yaml"))).unwrap();
    assert!(record.contains("spentStrings") && record.contains("completed"), "{record}");
    assert!(!commands.contains(&CapfCommand::KeyGenerateRequest), "{commands:?}");
    assert_eq!(fs::read(state.join(format!("namespaces/default/devices/{LOBBY}.crt"))).unwrap(), issued, "CAPF issued nothing");
    drop(local);

    // CAPF first: EST then refuses the string.
    let dir = tempfile::tempdir().unwrap();
    let manifests = copy_quickstart(dir.path());
    let state = dir.path().join("state");
    let local = Local::start(&manifests, &state);
    let ca = state.join("namespaces/default/ca/ca.crt");
    let (commands, end) = capf_session(local.capf_port, &ca, LOBBY_STRING);
    assert_eq!(end, Some(Reason::Success), "{commands:?}");
    assert!(commands.contains(&CapfCommand::StoreCertificateRequest), "{commands:?}");
    let request = csr(dir.path(), "lobby", &dir.path().join("phone.key"), LOBBY);
    let body = dir.path().join("answer");
    let code = curl_post(&local.url("simpleenroll"), &ca, &request, &["--user", &user], &body);
    let text = fs::read_to_string(&body).unwrap();
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("already used") && text.contains("P.6-12"), "{text}");
}
