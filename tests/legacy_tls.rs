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
use process::{Running, copy_quickstart, edit_manifest, free_tcp_port, free_udp_port};

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use callguard::services::capf::frame::Reason;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};

/// `callguard local` on a copy of the quickstart, `legacy` saying whether the cluster enables TLS 1.0.
fn start(dir: &Path, legacy: bool) -> (Running, u16, u16) {
    let manifests = copy_quickstart(dir);
    if legacy {
        edit_manifest(&manifests, "cluster.yaml", "spec:\n", "spec:\n  legacyTls: Enabled\n", 0);
    }
    let (capf_port, tvs_port) = (free_tcp_port(), free_tcp_port());
    let mut command = Command::new(env!("CARGO_BIN_EXE_callguard"));
    command
        .args(["local", manifests.to_str().unwrap(), "--state-dir", dir.join("state").to_str().unwrap()])
        .args(["--tftp-port", &free_udp_port().to_string(), "--capf-port", &capf_port.to_string()])
        .args(["--tvs-port", &tvs_port.to_string()]);
    let mut local = Running::spawn(command);
    let line = local.wait_for("serving CAPF on");
    let versions = if legacy { "TLS 1.0 to 1.3" } else { "TLS 1.2 or 1.3" };
    assert!(line.contains(versions), "{line}");
    let line = local.wait_for("serving TVS on");
    assert!(line.contains(versions), "{line}");
    local.wait_for("serving TFTP on");
    (local, capf_port, tvs_port)
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

    let (mut enabled, port, tvs_port) = start(&on, true);
    let ca = on.join("state/namespaces/default/ca/ca.crt");
    for (service, port) in [("CAPF", port), ("TVS", tvs_port)] {
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

    let (mut disabled, port, tvs_port) = start(&off, false);
    let ca = off.join("state/namespaces/default/ca/ca.crt");
    for (service, port) in [("CAPF", port), ("TVS", tvs_port)] {
        let (ok, output) = s_client(port, "-tls1", &ca);
        assert!(!ok && negotiated(&output).is_none(), "{service}: TLS 1.0 refused by default:\n{output}");
        let (ok, output) = s_client(port, "-tls1_2", &ca);
        assert!(ok && negotiated(&output) == Some("TLSv1.2"), "{service}: the same port serves TLS 1.2:\n{output}");
    }
    disabled.stop();
}
