//! The cluster CA and what it issues, checked by an independent implementation: `openssl verify` must accept
//! every chain, and `openssl x509 -text` must show the extensions docs/wire-formats.md §7.8 (LSCs) and the server profile ask for.
//! Fails, does not skip, when `openssl` is missing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use callguard::core::pki::ca::{CaSettings, ClusterCa, certificate_pem};
use callguard::core::pki::inspect::{CertificateFacts, EcCurve, md5_hex};
use callguard::core::pki::issue::{
    IssueError, LscKeySource, LscRequest, PhoneKey, ServerCertificateRequest, ServerRole, check_phone_key, issue_lsc,
    issue_server_certificate,
};
use callguard::core::pki::keys;
use callguard::core::pki::serial::Serial;
use time::{Duration, OffsetDateTime};

/// The issuing instant of every test, and the `-attime` openssl verifies at.
const NOW_UNIX: i64 = 1_750_000_000;

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(NOW_UNIX).unwrap()
}

fn ca() -> &'static ClusterCa {
    static CA: OnceLock<ClusterCa> = OnceLock::new();
    CA.get_or_init(|| ClusterCa::generate(&CaSettings::new("cucm-lab", "voice"), now()).unwrap())
}

fn server_key() -> &'static rsa::RsaPrivateKey {
    static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| keys::generate_rsa(2048))
}

fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl").args(args).output().expect("the openssl CLI must be installed for this test (/usr/bin/openssl)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn openssl_ok(args: &[&str]) -> String {
    let (ok, text) = openssl(args);
    assert!(ok, "openssl {args:?} failed:\n{text}");
    text
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn write_pem(dir: &Path, name: &str, der: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, certificate_pem(der)).unwrap();
    path
}

/// `openssl verify` at [`NOW_UNIX`] against the CA alone, for `purpose`; must print `<leaf>: OK`.
fn assert_verifies(dir: &Path, leaf_der: &[u8], purpose: &str) {
    let ca_path = write_pem(dir, "ca.pem", ca().certificate_der());
    let leaf_path = write_pem(dir, "leaf.pem", leaf_der);
    let attime = NOW_UNIX.to_string();
    let out = openssl_ok(&["verify", "-attime", &attime, "-purpose", purpose, "-CAfile", path_str(&ca_path), path_str(&leaf_path)]);
    assert!(out.trim_end().ends_with(&format!("{}: OK", path_str(&leaf_path))), "{out}");
}

fn x509_text(dir: &Path, der: &[u8]) -> String {
    let path = write_pem(dir, "shown.pem", der);
    openssl_ok(&["x509", "-in", path_str(&path), "-noout", "-text"])
}

/// The line after the one containing `header`, trimmed: where openssl prints an extension's value.
fn value_after(text: &str, header: &str) -> String {
    let mut lines = text.lines();
    lines.find(|line| line.contains(header)).unwrap_or_else(|| panic!("no \"{header}\" in:\n{text}"));
    lines.next().unwrap_or_default().trim().to_owned()
}

fn serial() -> Serial {
    Serial::random(&mut rand::thread_rng())
}

fn server_request(role: ServerRole) -> ServerCertificateRequest {
    ServerCertificateRequest {
        role,
        hostname: "cucm1.voice.example".into(),
        ip_address: Some("192.0.2.10".parse().unwrap()),
        validity_days: 730,
        serial: serial(),
        now: now(),
        legacy_signer_keys: false,
    }
}

/// DER SubjectPublicKeyInfo of a fresh openssl key made with `genpkey_args`.
fn openssl_spki(dir: &Path, genpkey_args: &[&str]) -> Vec<u8> {
    let key = dir.join("phone-key.pem");
    let spki = dir.join("phone-spki.der");
    let mut args = vec!["genpkey"];
    args.extend_from_slice(genpkey_args);
    args.extend_from_slice(&["-out", path_str(&key)]);
    openssl_ok(&args);
    openssl_ok(&["pkey", "-in", path_str(&key), "-pubout", "-outform", "DER", "-out", path_str(&spki)]);
    std::fs::read(spki).unwrap()
}

fn lsc_request<'a>(key: LscKeySource<'a>, serial: Serial) -> LscRequest<'a> {
    LscRequest { device_name: "SEP001122334455", key, validity_days: 365, serial, now: now() }
}

#[test]
fn the_ca_is_a_critical_ca_with_cert_and_crl_signing() {
    let dir = tempfile::tempdir().unwrap();
    let text = x509_text(dir.path(), ca().certificate_der());
    assert!(text.contains("X509v3 Basic Constraints: critical"), "{text}");
    assert_eq!(value_after(&text, "X509v3 Basic Constraints"), "CA:TRUE, pathlen:0");
    assert!(text.contains("X509v3 Key Usage: critical"), "{text}");
    assert_eq!(value_after(&text, "X509v3 Key Usage"), "Certificate Sign, CRL Sign");
    assert!(text.contains("Subject: CN = cucm-lab CA, O = Callguard, OU = voice"), "{text}");
    assert!(text.contains("Issuer: CN = cucm-lab CA, O = Callguard, OU = voice"), "{text}");
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
    // The CA verifies against itself.
    assert_verifies(dir.path(), ca().certificate_der(), "any");
}

#[test]
fn server_certificates_chain_to_the_ca_with_their_role_usages() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (ServerRole::CallManager, "TLS Web Server Authentication, TLS Web Client Authentication"),
        (ServerRole::CallManagerAndTftp, "TLS Web Server Authentication, TLS Web Client Authentication"),
        (ServerRole::Tftp, "TLS Web Server Authentication"),
        (ServerRole::Capf, "TLS Web Server Authentication"),
    ];
    for (role, eku) in cases {
        let der = issue_server_certificate(ca(), &server_request(role), server_key()).unwrap();
        assert_verifies(dir.path(), &der, "sslserver");
        let text = x509_text(dir.path(), &der);
        assert!(text.contains("Subject: CN = cucm1.voice.example, O = Callguard, OU = voice"), "{role:?}\n{text}");
        assert!(text.contains("X509v3 Basic Constraints: critical"), "{role:?}\n{text}");
        assert_eq!(value_after(&text, "X509v3 Basic Constraints"), "CA:FALSE");
        assert!(text.contains("X509v3 Key Usage: critical"), "{role:?}\n{text}");
        assert_eq!(value_after(&text, "X509v3 Key Usage"), "Digital Signature, Key Encipherment");
        assert_eq!(value_after(&text, "X509v3 Extended Key Usage"), eku, "{role:?}");
        assert_eq!(value_after(&text, "X509v3 Subject Alternative Name"), "DNS:cucm1.voice.example, IP Address:192.0.2.10");
        assert!(text.contains("Signature Algorithm: sha256WithRSAEncryption"), "{text}");
        assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
    }
    // CallManager certificates also serve as TLS clients (SIP-TLS mutual authentication).
    let ccm = issue_server_certificate(ca(), &server_request(ServerRole::CallManager), server_key()).unwrap();
    assert_verifies(dir.path(), &ccm, "sslclient");
}

/// Checks an LSC against the table of docs/wire-formats.md §7.8 as openssl shows it.
fn assert_lsc_profile(text: &str) {
    assert!(text.contains("Subject: CN = SEP001122334455, O = Callguard, OU = voice"), "{text}");
    assert!(text.contains("Issuer: CN = cucm-lab CA, O = Callguard, OU = voice"), "{text}");
    assert!(text.contains("X509v3 Basic Constraints: critical"), "{text}");
    assert_eq!(value_after(text, "X509v3 Basic Constraints"), "CA:FALSE");
    assert!(text.contains("X509v3 Key Usage: critical"), "{text}");
    assert_eq!(value_after(text, "X509v3 Key Usage"), "Digital Signature, Key Encipherment");
    assert_eq!(
        value_after(text, "X509v3 Extended Key Usage"),
        "TLS Web Server Authentication, TLS Web Client Authentication, IPSec End System"
    );
    assert_eq!(value_after(text, "X509v3 Subject Alternative Name"), "URI:SEP001122334455");
    assert!(!text.contains("Subject Key Identifier"), "LSCs carry no SKI (docs/wire-formats.md §7.8):\n{text}");
    assert!(!text.contains("Authority Key Identifier"), "LSCs carry no AKI (docs/wire-formats.md §7.8):\n{text}");
    assert!(text.contains("Signature Algorithm: sha256WithRSAEncryption"), "{text}");
    // Exactly the four extensions of the profile.
    let extensions = text.lines().filter(|line| line.trim_start().starts_with("X509v3 ") && !line.contains("X509v3 extensions")).count();
    assert_eq!(extensions, 4, "{text}");
}

#[test]
fn lsc_from_an_rsa_public_key_follows_the_profile() {
    let dir = tempfile::tempdir().unwrap();
    for bits in ["1024", "2048"] {
        let spki = openssl_spki(dir.path(), &["-algorithm", "RSA", "-pkeyopt", &format!("rsa_keygen_bits:{bits}")]);
        let lsc = issue_lsc(ca(), &lsc_request(LscKeySource::PublicKey(&spki), serial())).unwrap();
        assert_eq!(lsc.phone_key, if bits == "1024" { PhoneKey::Rsa1024 } else { PhoneKey::Rsa2048 });
        assert_verifies(dir.path(), &lsc.certificate_der, "sslclient");
        let text = x509_text(dir.path(), &lsc.certificate_der);
        assert_lsc_profile(&text);
        assert!(text.contains(&format!("Public-Key: ({bits} bit)")), "{text}");
    }
}

#[test]
fn lsc_from_ec_public_keys_follows_the_profile() {
    let dir = tempfile::tempdir().unwrap();
    for (curve, shown) in [("P-256", "NIST CURVE: P-256"), ("P-384", "NIST CURVE: P-384")] {
        let spki = openssl_spki(dir.path(), &["-algorithm", "EC", "-pkeyopt", &format!("ec_paramgen_curve:{curve}")]);
        let lsc = issue_lsc(ca(), &lsc_request(LscKeySource::PublicKey(&spki), serial())).unwrap();
        assert_verifies(dir.path(), &lsc.certificate_der, "sslclient");
        let text = x509_text(dir.path(), &lsc.certificate_der);
        assert_lsc_profile(&text);
        assert!(text.contains(shown), "{text}");
    }
}

#[test]
fn lsc_from_a_csr_takes_only_the_public_key() {
    let dir = tempfile::tempdir().unwrap();
    for bits in ["1024", "2048"] {
        // The request asks for another subject, CA:TRUE and a DNS name: the CA ignores all of it.
        let key = dir.path().join("csr-key.pem");
        let csr = dir.path().join("request.der");
        openssl_ok(&[
            "req",
            "-new",
            "-newkey",
            &format!("rsa:{bits}"),
            "-sha256",
            "-nodes",
            "-keyout",
            path_str(&key),
            "-subj",
            "/CN=evil/O=Other",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "subjectAltName=DNS:evil.example",
            "-outform",
            "DER",
            "-out",
            path_str(&csr),
        ]);
        let csr_der = std::fs::read(&csr).unwrap();
        let lsc = issue_lsc(ca(), &lsc_request(LscKeySource::Csr(&csr_der), serial())).unwrap();
        assert_verifies(dir.path(), &lsc.certificate_der, "sslclient");
        let text = x509_text(dir.path(), &lsc.certificate_der);
        assert_lsc_profile(&text);
        assert!(!text.contains("evil"), "{text}");

        // The certificate holds the request's key.
        let cert_path = write_pem(dir.path(), "from-csr.pem", &lsc.certificate_der);
        let from_cert = openssl_ok(&["x509", "-in", path_str(&cert_path), "-noout", "-pubkey"]);
        let from_key = openssl_ok(&["pkey", "-in", path_str(&key), "-pubout"]);
        assert_eq!(from_cert, from_key);

        // A request whose signed content was altered (CN "evil" -> "evim") is refused.
        let mut tampered = csr_der.clone();
        let at = tampered.windows(4).position(|w| w == b"evil").unwrap();
        tampered[at + 3] = b'm';
        assert!(matches!(issue_lsc(ca(), &lsc_request(LscKeySource::Csr(&tampered), serial())), Err(IssueError::CsrRefused(_))));
        // So is one whose signature bytes were altered.
        let mut bad_signature = csr_der.clone();
        let last = bad_signature.len() - 1;
        bad_signature[last] ^= 0x01;
        assert!(matches!(issue_lsc(ca(), &lsc_request(LscKeySource::Csr(&bad_signature), serial())), Err(IssueError::CsrRefused(_))));
    }
}

#[test]
fn lsc_from_an_ec_csr_made_with_rcgen() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::new(vec!["ignored.example".to_string()]).unwrap().serialize_request(&key).unwrap();
    let lsc = issue_lsc(ca(), &lsc_request(LscKeySource::Csr(csr.der()), serial())).unwrap();
    assert_eq!(lsc.phone_key, PhoneKey::Ec(EcCurve::P256));
    assert_verifies(dir.path(), &lsc.certificate_der, "sslclient");
    assert_lsc_profile(&x509_text(dir.path(), &lsc.certificate_der));
}

#[test]
fn rsa_512_phone_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spki = openssl_spki(dir.path(), &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:512"]);
    let refused = issue_lsc(ca(), &lsc_request(LscKeySource::PublicKey(&spki), serial()));
    assert!(matches!(&refused, Err(IssueError::KeyRefused(why)) if why.contains("512")), "{refused:?}");
}

#[test]
fn p521_keys_pass_the_spec_check_but_this_build_cannot_issue_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let spki = openssl_spki(dir.path(), &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"]);
    assert_eq!(check_phone_key(&spki), Ok(PhoneKey::Ec(EcCurve::P521)));
    let refused = issue_lsc(ca(), &lsc_request(LscKeySource::PublicKey(&spki), serial()));
    assert!(matches!(&refused, Err(IssueError::KeyRefused(why)) if why.contains("P-521")), "{refused:?}");
}

#[test]
fn lsc_validity_starts_five_minutes_before_now() {
    let dir = tempfile::tempdir().unwrap();
    let spki = openssl_spki(dir.path(), &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let mut request = lsc_request(LscKeySource::PublicKey(&spki), serial());
    request.validity_days = 1825;
    let lsc = issue_lsc(ca(), &request).unwrap();
    let path = write_pem(dir.path(), "dates.pem", &lsc.certificate_der);
    let dates = openssl_ok(&["x509", "-in", path_str(&path), "-noout", "-dates", "-dateopt", "iso_8601"]);
    // NOW_UNIX is 2025-06-15 15:06:40 UTC; minus 5 min, and plus 1825 days.
    assert!(dates.contains("notBefore=2025-06-15 15:01:40Z"), "{dates}");
    assert!(dates.contains("notAfter=2030-06-14 15:06:40Z"), "{dates}");
    let facts = CertificateFacts::from_der(&lsc.certificate_der).unwrap();
    assert_eq!(facts.not_before, now() - Duration::minutes(5));
    assert_eq!(facts.not_after, now() + Duration::days(1825));
    // certHash: MD5 of the DER, 32 lowercase hex characters, as openssl computes it.
    let md5 = openssl_ok(&["x509", "-in", path_str(&path), "-noout", "-fingerprint", "-md5"]);
    let openssl_md5 = md5.trim().rsplit('=').next().unwrap().replace(':', "").to_lowercase();
    assert_eq!(md5_hex(&lsc.certificate_der), openssl_md5);
}

#[test]
fn serials_are_16_bytes_and_distinct_across_100_issues() {
    let dir = tempfile::tempdir().unwrap();
    let spki = openssl_spki(dir.path(), &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let mut issued = BTreeSet::new();
    let mut shown = BTreeSet::new();
    for i in 0..100 {
        let serial = Serial::unique(&mut rand::thread_rng(), &issued).unwrap();
        issued.insert(serial.clone());
        let lsc = issue_lsc(ca(), &lsc_request(LscKeySource::PublicKey(&spki), serial)).unwrap();
        let path = write_pem(dir.path(), &format!("lsc{i}.pem"), &lsc.certificate_der);
        let out = openssl_ok(&["x509", "-in", path_str(&path), "-noout", "-serial"]);
        let hex = out.trim().strip_prefix("serial=").unwrap().to_owned();
        assert_eq!(hex.len(), 32, "16 bytes (docs/wire-formats.md §7.8): {hex}");
        assert!(u8::from_str_radix(&hex[..2], 16).unwrap() < 0x80, "top bit clear: {hex}");
        shown.insert(hex);
    }
    assert_eq!(shown.len(), 100);
}
