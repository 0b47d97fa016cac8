//! `callguard token create` as an administrator runs it: the manifests it writes are what the
//! SecurityToken API expects, OpenSSL opens the key with the password and only with it, the
//! certificate is a SAST certificate, and `callguard validate` accepts the result.

use std::path::Path;
use std::process::{Command, Output};

use serde::Deserialize;
use serde_json::Value;

const PASSWORD: &str = "correct horse battery staple";

fn callguard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_callguard")).args(args).output().expect("callguard runs")
}

fn openssl(args: &[&str]) -> Output {
    Command::new("openssl").args(args).output().expect("the openssl CLI is required by this test (/usr/bin/openssl)")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml).map(|d| Value::deserialize(d).expect("each document is YAML")).collect()
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.to_str().unwrap().to_string()
}

/// Runs `token create` and returns the parsed documents and the raw YAML.
fn create(dir: &Path, name: &str, extra: &[&str]) -> (Vec<Value>, String) {
    let password_file = write(dir, &format!("{name}.pw"), &format!("{PASSWORD}\n"));
    let mut args = vec!["token", "create", "--name", name, "--password-file", &password_file];
    args.extend(extra);
    let out = callguard(&args);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "no warning for a good password: {}", text(&out.stderr));
    let yaml = text(&out.stdout);
    (documents(&yaml), yaml)
}

fn string<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or_else(|| panic!("{pointer} missing in {value}"))
}

#[test]
fn create_writes_a_secret_and_a_token_that_openssl_and_validate_accept() {
    let dir = tempfile::tempdir().unwrap();
    let (docs, yaml) =
        create(dir.path(), "token-lab", &["--namespace", "lab", "--organization", "Example", "--organizational-unit", "Voice"]);
    assert!(!yaml.contains(PASSWORD), "the password is not written without --with-password-secret");
    assert_eq!(docs.len(), 2, "a Secret and a SecurityToken: {yaml}");

    let secret = &docs[0];
    assert_eq!(string(secret, "/apiVersion"), "v1");
    assert_eq!(string(secret, "/kind"), "Secret");
    assert_eq!(string(secret, "/metadata/name"), "token-lab");
    assert_eq!(string(secret, "/metadata/namespace"), "lab");
    let certificate = string(secret, "/stringData/certificate.pem");
    let key = string(secret, "/stringData/key.p8");
    assert!(certificate.starts_with("-----BEGIN CERTIFICATE-----\n"), "{certificate}");
    assert!(key.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----\n"), "{key}");

    let token = &docs[1];
    assert_eq!(string(token, "/apiVersion"), "callguard.io/v1alpha1");
    assert_eq!(string(token, "/kind"), "SecurityToken");
    assert_eq!(string(token, "/metadata/name"), "token-lab");
    assert_eq!(string(token, "/metadata/namespace"), "lab");
    assert_eq!(token["spec"]["certificate"], serde_json::json!({"name": "token-lab", "key": "certificate.pem"}));
    assert_eq!(token["spec"]["privateKey"], serde_json::json!({"name": "token-lab", "key": "key.p8"}));
    assert_eq!(token["spec"]["password"], serde_json::json!({"name": "token-lab-password", "key": "password"}));
    assert!(token.get("status").is_none());

    // OpenSSL opens the key with the password, and refuses another.
    let key_file = write(dir.path(), "key.p8", key);
    let right = write(dir.path(), "right.pw", &format!("{PASSWORD}\n"));
    let wrong = write(dir.path(), "wrong.pw", "correct horse battery stapler\n");
    let out = openssl(&["pkey", "-in", &key_file, "-passin", &format!("file:{right}"), "-noout"]);
    assert!(out.status.success(), "openssl pkey with the right password: {}", text(&out.stderr));
    let out = openssl(&["pkey", "-in", &key_file, "-passin", &format!("file:{wrong}"), "-noout"]);
    assert!(!out.status.success(), "openssl pkey must refuse a wrong password");

    // The certificate: subject CN, O, OU in that order; a positive 16-byte serial; a SAST's extensions.
    let cert_file = write(dir.path(), "certificate.pem", certificate);
    let out = openssl(&["x509", "-in", &cert_file, "-noout", "-subject", "-serial", "-nameopt", "RFC2253"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    // RFC 2253 prints the last RDN first: the encoded order is CN, O, OU (docs/wire-formats.md §1.4).
    assert!(shown.contains("subject=OU=Voice,O=Example,CN=token-lab\n"), "{shown}");
    let serial = shown.lines().find_map(|l| l.strip_prefix("serial=")).expect("a serial line");
    assert_eq!(serial.len(), 32, "16 bytes: {serial}");
    assert!(u8::from_str_radix(&serial[..2], 16).unwrap() < 0x80, "top bit clear: {serial}");
    let out = openssl(&["x509", "-in", &cert_file, "-noout", "-text"]);
    let details = text(&out.stdout);
    for expected in ["Public-Key: (2048 bit)", "CA:FALSE", "X509v3 Key Usage: critical", "Digital Signature"] {
        assert!(details.contains(expected), "{expected:?} not in\n{details}");
    }
    let out = openssl(&["verify", "-CAfile", &cert_file, &cert_file]);
    assert!(out.status.success(), "self-signed: {}{}", text(&out.stdout), text(&out.stderr));

    // validate, with the password Secret sealed elsewhere.
    let cluster = "apiVersion: callguard.io/v1alpha1\nkind: CallControlCluster\nmetadata: {name: lab, namespace: lab}\nspec:\n  nodes:\n  - {name: cm1, hostname: cm1.lab.example}\n  ctl: {tokens: [token-lab], signingToken: token-lab}\n";
    let manifests = write(dir.path(), "token.yaml", &yaml);
    let cluster_file = write(dir.path(), "cluster.yaml", cluster);
    let out = callguard(&["validate", "--allow-missing-secrets", &manifests, &cluster_file]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    let out = callguard(&["validate", &manifests, &cluster_file]);
    assert_eq!(out.status.code(), Some(1), "without the password Secret: {}", text(&out.stdout));
    assert!(text(&out.stdout).contains("Secret \"token-lab-password\" not found"), "{}", text(&out.stdout));
}

#[test]
fn two_tokens_with_password_secrets_make_a_valid_mixed_mode_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut all = String::from(
        "apiVersion: callguard.io/v1alpha1\nkind: CallControlCluster\nmetadata: {name: lab}\nspec:\n  securityMode: Mixed\n  nodes:\n  - {name: cm1, hostname: cm1.lab.example}\n  ctl: {tokens: [token-a, token-b], signingToken: token-a}\n",
    );
    for name in ["token-a", "token-b"] {
        let (docs, yaml) = create(dir.path(), name, &["--with-password-secret"]);
        assert_eq!(docs.len(), 3);
        assert_eq!(string(&docs[2], "/metadata/name"), format!("{name}-password"));
        assert_eq!(string(&docs[2], "/stringData/password"), PASSWORD, "one trailing newline of the file is dropped");
        all.push_str(&yaml);
    }
    let file = write(dir.path(), "all.yaml", &all);
    let out = callguard(&["validate", &file]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).starts_with("valid: 3 objects and 4 secrets"), "{}", text(&out.stdout));
}

#[test]
fn out_file_is_private_and_bad_passwords_are_handled() {
    let dir = tempfile::tempdir().unwrap();
    let factory = write(dir.path(), "factory.pw", "Cisco123\n");
    let out_file = dir.path().join("token.yaml");
    let out = callguard(&["token", "create", "--name", "t", "--password-file", &factory, "--out", out_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "--out writes nothing to stdout");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("warning: the token password is the factory default"), "{stderr}");
    assert!(stderr.contains("(Table 3-2, P.3-17)"), "{stderr}");
    assert!(!stderr.contains("Cisco123"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    assert_eq!(documents(&std::fs::read_to_string(&out_file).unwrap()).len(), 2);

    let empty = write(dir.path(), "empty.pw", "\n");
    let out = callguard(&["token", "create", "--name", "t", "--password-file", &empty]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("the password file is empty"), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());

    let out = callguard(&["token", "create", "--name", "Not_A_Name", "--password-file", &factory]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("DNS-1123"), "{}", text(&out.stderr));

    let out = callguard(&["token", "create", "--name", "t", "--password-file", dir.path().join("absent").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));

    let help = text(&callguard(&["token", "create", "--help"]).stdout);
    assert!(help.contains("--with-password-secret") && help.contains("sealed or external secret"), "{help}");
}

/// The quickstart's tokens are real: each key opens with its example password Secret.
#[test]
fn quickstart_token_keys_open_with_their_example_passwords() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let secrets = std::fs::read_to_string(repo.join("examples/quickstart/secrets.yaml")).unwrap();
    let docs = documents(&secrets);
    let find = |name: &str| docs.iter().find(|d| d.pointer("/metadata/name").and_then(Value::as_str) == Some(name)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for name in ["token-primary", "token-backup"] {
        let key = write(dir.path(), &format!("{name}.p8"), string(find(name), "/stringData/key.p8"));
        let password = string(find(&format!("{name}-password")), "/stringData/password");
        assert_ne!(password, "Cisco123", "example passwords are not the factory default");
        let pw = write(dir.path(), &format!("{name}.pw"), password);
        let out = openssl(&["pkey", "-in", &key, "-passin", &format!("file:{pw}"), "-noout"]);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        let cert = write(dir.path(), &format!("{name}.pem"), string(find(name), "/stringData/certificate.pem"));
        let out = openssl(&["x509", "-in", &cert, "-noout", "-subject", "-nameopt", "RFC2253"]);
        assert!(text(&out.stdout).contains(&format!("CN={name}")), "{}", text(&out.stdout));
    }
}
