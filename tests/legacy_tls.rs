//! TLS 1.0 for the guide's phones (79x0, 79x1) on the CAPF and TVS ports of `callguard local`, which a
//! cluster turns on with `spec.legacyTls: Enabled`: `openssl s_client -tls1` completes a handshake with
//! the legacy listener when it is on, and is refused when it is off, where `-tls1_2` still succeeds
//! (the port is live, only the version is refused). With it on, a phone speaking CAPF over TLS 1.0
//! (OpenSSL as the client) installs its LSC. A missing `openssl` fails the test, it does not skip.

#[path = "support/capf_phone.rs"]
mod capf_phone;
#[path = "support/peers.rs"]
mod peers;
#[path = "support/process.rs"]
mod process;
use peers::require;
use process::{Running, copy_quickstart, edit_manifest, free_tcp_port, free_udp_and_tcp_port, free_udp_port};

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use callguard::services::capf::frame::Reason;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};

/// A running `callguard local` and its TLS ports.
struct Local {
    process: Running,
    capf_port: u16,
    tvs_port: u16,
    sip_tls_port: u16,
    est_port: u16,
}

crate::deref_to_running!(Local);

/// `callguard local` on a copy of the quickstart and the manifests of `extra`, `legacy` saying
/// whether the cluster enables TLS 1.0.
fn start(dir: &Path, legacy: bool, extra: &[&str]) -> Local {
    let manifests = copy_quickstart(dir);
    if legacy {
        edit_manifest(&manifests, "cluster.yaml", "spec:\n", "spec:\n  legacyTls: Enabled\n", 0);
    }
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let (capf_port, tvs_port, sip_tls_port, est_port) = (free_tcp_port(), free_tcp_port(), free_tcp_port(), free_tcp_port());
    let mut command = Command::new(env!("CARGO_BIN_EXE_callguard"));
    command
        .arg("local")
        .arg(&manifests)
        .args(extra.iter().map(|name| fixtures.join(name)))
        .args(["--state-dir", dir.join("state").to_str().unwrap()])
        .args(["--tftp-port", &free_udp_port().to_string(), "--capf-port", &capf_port.to_string()])
        .args(["--tvs-port", &tvs_port.to_string(), "--est-port", &est_port.to_string()])
        .args(["--sip-port", &free_udp_and_tcp_port().to_string(), "--sip-tls-port", &sip_tls_port.to_string()]);
    let mut local = Local { process: Running::spawn(command), capf_port, tvs_port, sip_tls_port, est_port };
    let versions = if legacy { "TLS 1.0 to 1.3" } else { "TLS 1.2 or 1.3" };
    for service in ["serving CAPF on", "serving TVS on", "serving SIP on"] {
        let line = local.wait_for(service);
        assert!(line.contains(versions), "{line}");
    }
    local.wait_for("serving TFTP on");
    local
}

/// `openssl s_client` at `version` (`-tls1`, `-tls1_2`) against the port, verifying the CAPF
/// certificate under the cluster CA; its exit status and output.
fn s_client(port: u16, version: &str, ca: &Path) -> (bool, String) {
    let output = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), version, "-cipher", "DEFAULT@SECLEVEL=0"])
        .args(["-CAfile", ca.to_str().unwrap(), "-verify_return_error"])
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// The version s_client says it negotiated (`New, TLSv1.0, Cipher is ...`); `None` for `New, (NONE)`.
fn negotiated(output: &str) -> Option<&str> {
    let version = output.lines().find_map(|line| line.strip_prefix("New, "))?.split(',').next()?;
    (version != "(NONE)").then_some(version)
}

#[test]
fn openssl_s_client_tls1_is_served_when_the_cluster_enables_it_and_refused_when_not() {
    require("openssl", "openssl");
    let dir = tempfile::tempdir().unwrap();
    let (on, off) = (dir.path().join("on"), dir.path().join("off"));
    std::fs::create_dir_all(&on).unwrap();
    std::fs::create_dir_all(&off).unwrap();

    let mut enabled = start(&on, true, &[]);
    let (port, tvs_port, sip_tls_port) = (enabled.capf_port, enabled.tvs_port, enabled.sip_tls_port);
    let ca = on.join("state/namespaces/default/ca/ca.crt");
    for (service, port) in [("CAPF", port), ("TVS", tvs_port), ("SIP-TLS", sip_tls_port)] {
        let (ok, output) = s_client(port, "-tls1", &ca);
        assert!(ok && negotiated(&output) == Some("TLSv1.0"), "{service}: TLS 1.0 handshake with the legacy listener:\n{output}");
        assert!(output.contains("Verify return code: 0 (ok)"), "{service}: its certificate, verified under the cluster CA:\n{output}");
        let (ok, output) = s_client(port, "-tls1_2", &ca);
        assert!(ok && negotiated(&output) == Some("TLSv1.2"), "{service}: newer clients still go to rustls:\n{output}");
    }

    // A phone speaking CAPF over TLS 1.0 installs its LSC.
    let mut connector = SslConnector::builder(SslMethod::tls_client()).unwrap();
    connector.set_security_level(0);
    connector.set_cipher_list("DEFAULT:@SECLEVEL=0").unwrap();
    connector.set_min_proto_version(Some(SslVersion::TLS1)).unwrap();
    connector.set_max_proto_version(Some(SslVersion::TLS1)).unwrap();
    connector.set_ca_file(&ca).unwrap();
    connector.set_verify(SslVerifyMode::PEER);
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let stream = connector.build().connect("cm1.quickstart.example", tcp).expect("a TLS 1.0 handshake");
    assert_eq!(stream.ssl().version_str(), "TLSv1");
    let key = callguard::core::pki::keys::generate_rsa(2048);
    let transcript = capf_phone::session_over(stream, "SEP001122334455", Some("12345678"), &key);
    assert_eq!(transcript.end, Some(Reason::Success), "{transcript:?}");
    assert!(transcript.stored.is_some(), "an LSC over TLS 1.0: {transcript:?}");
    enabled.stop();

    let mut disabled = start(&off, false, &[]);
    let (port, tvs_port, sip_tls_port) = (disabled.capf_port, disabled.tvs_port, disabled.sip_tls_port);
    let ca = off.join("state/namespaces/default/ca/ca.crt");
    for (service, port) in [("CAPF", port), ("TVS", tvs_port), ("SIP-TLS", sip_tls_port)] {
        let (ok, output) = s_client(port, "-tls1", &ca);
        assert!(!ok && negotiated(&output).is_none(), "{service}: TLS 1.0 refused by default:\n{output}");
        let (ok, output) = s_client(port, "-tls1_2", &ca);
        assert!(ok && negotiated(&output) == Some("TLSv1.2"), "{service}: the same port serves TLS 1.2:\n{output}");
    }
    disabled.stop();
}

/// A phone of the guide's era speaking SIP over TLS 1.0: OpenSSL as the client, offering only
/// `ciphers`, with an LSC and its key.
struct LegacyPhone<'a> {
    local: &'a Local,
    ca: std::path::PathBuf,
    line: &'static str,
    user: &'static str,
    password: &'static str,
    certificate: std::path::PathBuf,
    key: std::path::PathBuf,
}

/// A SIP response: its status and whole text.
struct Answer {
    status: u16,
    text: String,
}

impl LegacyPhone<'_> {
    /// REGISTER over one new TLS 1.0 connection offering `ciphers`; answers the challenge with the
    /// phone's digest credentials. The answers, and the cipher the connection negotiated.
    fn register(&self, ciphers: &str) -> (Vec<Answer>, String) {
        use std::io::{Read, Write};
        let mut connector = SslConnector::builder(SslMethod::tls_client()).unwrap();
        connector.set_security_level(0);
        connector.set_cipher_list(&format!("{ciphers}:@SECLEVEL=0")).unwrap();
        connector.set_min_proto_version(Some(SslVersion::TLS1)).unwrap();
        connector.set_max_proto_version(Some(SslVersion::TLS1)).unwrap();
        connector.set_ca_file(&self.ca).unwrap();
        connector.set_verify(SslVerifyMode::PEER);
        connector.set_certificate_file(&self.certificate, openssl::ssl::SslFiletype::PEM).unwrap();
        connector.set_private_key_file(&self.key, openssl::ssl::SslFiletype::PEM).unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", self.local.sip_tls_port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let local = tcp.local_addr().unwrap();
        let mut stream = connector.build().connect("cm1.quickstart.example", tcp).expect("a TLS 1.0 handshake");
        assert_eq!(stream.ssl().version_str(), "TLSv1");
        let cipher = stream.ssl().current_cipher().map(|c| c.name().to_owned()).unwrap_or_default();
        let uri = format!("sip:127.0.0.1:{};transport=tls", self.local.sip_tls_port);
        let mut answers = Vec::new();
        let mut authorization = String::new();
        for cseq in 1..=2 {
            let request = format!(
                "REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bK-{port}-{cseq}\r\nFrom: <sip:{line}@127.0.0.1>;tag={port}\r\n\
                 To: <sip:{line}@127.0.0.1>\r\nCall-ID: {port}-{line}@127.0.0.1\r\nCSeq: {cseq} REGISTER\r\n\
                 Contact: <sip:{line}@{local};transport=tls>\r\n{authorization}Max-Forwards: 70\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n",
                line = self.line,
                // Each attempt its own transaction and dialog: a repeated branch would be answered as
                // a retransmission.
                port = local.port()
            );
            stream.write_all(request.as_bytes()).unwrap();
            let mut text = Vec::new();
            let mut byte = [0u8; 1];
            while !text.ends_with(b"\r\n\r\n") {
                assert_eq!(stream.read(&mut byte).unwrap(), 1, "the connection closed mid-response: {}", String::from_utf8_lossy(&text));
                text.push(byte[0]);
            }
            let text = String::from_utf8(text).unwrap();
            let length: usize = header(&text, "Content-Length").and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut body = vec![0u8; length];
            stream.read_exact(&mut body).unwrap();
            let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            let challenge = header(&text, "WWW-Authenticate");
            answers.push(Answer { status, text });
            let Some(challenge) = challenge.filter(|_| status == 401) else { break };
            authorization = format!("Authorization: {}\r\n", digest_answer(&challenge, self.user, self.password, &uri));
        }
        (answers, cipher)
    }

    /// Registers until the SIP directory knows the phone's new LSC (`local` rebuilds once EST
    /// wrote it); the answers of the first attempt that is not refused for that.
    fn register_when_known(&self, ciphers: &str) -> (Vec<Answer>, String) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (answers, cipher) = self.register(ciphers);
            if !answers[0].text.contains("not its current one") {
                return (answers, cipher);
            }
            assert!(std::time::Instant::now() < deadline, "the SIP directory never took {}'s LSC: {}", self.line, answers[0].text);
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// The value of the first `name` header of a SIP message.
fn header(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
    })
}

/// The `Authorization` value answering a Digest `challenge` with qop=auth and MD5 (RFC 2617 §3.2.2).
fn digest_answer(challenge: &str, user: &str, password: &str, uri: &str) -> String {
    let parameter = |name: &str| {
        challenge.split(',').find_map(|part| {
            let (key, value) = part.trim().trim_start_matches("Digest ").split_once('=')?;
            (key.trim() == name).then(|| value.trim().trim_matches('"').to_owned())
        })
    };
    let (realm, nonce) = (parameter("realm").expect("a realm"), parameter("nonce").expect("a nonce"));
    let md5 = |text: String| -> String {
        openssl::hash::hash(openssl::hash::MessageDigest::md5(), text.as_bytes()).unwrap().iter().map(|b| format!("{b:02x}")).collect()
    };
    let (ha1, ha2) = (md5(format!("{user}:{realm}:{password}")), md5(format!("REGISTER:{uri}")));
    let response = md5(format!("{ha1}:{nonce}:00000001:0a4f113b:auth:{ha2}"));
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", \
         algorithm=MD5, qop=auth, nc=00000001, cnonce=\"0a4f113b\""
    )
}

#[test]
fn over_tls_1_0_an_authenticated_7961_registers_with_null_sha_and_an_encrypted_phone_needs_a_cipher_that_encrypts() {
    require("openssl", "openssl");
    let dir = tempfile::tempdir().unwrap();
    let local = start(dir.path(), true, &["pjsua2-lab", "legacy-sip"]);
    let ca = dir.path().join("state/namespaces/default/ca/ca.crt");
    let enroll = |device: &str, secret: &str, name: &str| {
        let secret_file = dir.path().join(format!("{name}.secret"));
        std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
        let (certificate, key) = (dir.path().join(format!("{name}.crt")), dir.path().join(format!("{name}.key")));
        process::enroll(local.est_port, &ca, &["--device", device, "--secret-file", secret_file.to_str().unwrap()], &key, &certificate);
        (certificate, key)
    };
    // Authenticated: NULL-SHA carries its signalling with integrity, as the guide's phones do.
    let (certificate, key) = enroll("SEP0000000B3101", "11223344", "hank");
    let hank = LegacyPhone { local: &local, ca: ca.clone(), line: "3101", user: "hank", password: "FakeHank123", certificate, key };
    let (answers, cipher) = hank.register_when_known("NULL-SHA");
    assert_eq!(cipher, "NULL-SHA");
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [401, 200], "challenged, then bound: {}", answers.iter().map(|a| a.text.as_str()).collect::<String>());
    assert!(answers[1].text.contains("expires=600"), "{}", answers[1].text);

    // Encrypted: refused over NULL-SHA, whose signalling (and SRTP keys) would travel in the clear.
    let (certificate, key) = enroll("SEP0000000F3001", "13572468", "frank");
    let frank = LegacyPhone { local: &local, ca, line: "3001", user: "frank", password: "FakeFrank123", certificate, key };
    let (answers, _) = frank.register_when_known("NULL-SHA");
    assert_eq!(answers[0].status, 403, "{}", answers[0].text);
    assert!(answers[0].text.contains("does not encrypt"), "{}", answers[0].text);
    // Over AES, the same phone on the same TLS 1.0 listener registers.
    let (answers, cipher) = frank.register("AES128-SHA");
    assert_eq!(cipher, "AES128-SHA");
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [401, 200], "{}", answers.iter().map(|a| a.text.as_str()).collect::<String>());
}
