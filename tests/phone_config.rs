//! `SEP<MAC>.cnf.xml`: the typed model renders the docs/wire-formats.md §6.4 and §6.5 examples and the §5.5 stub
//! (W-13, compared after canonicalisation), the §6.3 refusals hold (N-10), every quickstart phone
//! resolves and renders, and rendering is deterministic.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, OnceLock};

use callguard::api::*;
use callguard::core::phone_config::*;
use callguard::validate::manifest::{collect_files, load_file};
use callguard::validate::{ObjectRef, Snapshot};
use quick_xml::Reader;
use quick_xml::events::Event;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the operator crate sits in the repository")
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(repo().join("tests/fixtures/cnf").join(name)).expect("fixture exists")
}

// ---------------------------------------------------------------------------------------------
// Canonical form: the event sequence with whitespace between elements dropped, empty elements
// expanded, attributes sorted, entity references resolved and adjacent text joined.

#[derive(Debug, PartialEq, Eq)]
enum Node {
    Decl(String),
    Start(String, Vec<(String, String)>),
    Text(String),
    End(String),
}

fn canonical(xml: &str) -> Vec<Node> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().trim_text(true);
    reader.config_mut().expand_empty_elements = true;
    let mut nodes = Vec::new();
    let mut text = String::new();
    let flush = |text: &mut String, nodes: &mut Vec<Node>| {
        if !text.trim().is_empty() {
            nodes.push(Node::Text(std::mem::take(text)));
        }
        text.clear();
    };
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Decl(d) => nodes.push(Node::Decl(String::from_utf8_lossy(&d).into_owned())),
            Event::Start(s) => {
                flush(&mut text, &mut nodes);
                let mut attributes: Vec<(String, String)> = s
                    .attributes()
                    .map(|a| {
                        let a = a.expect("attribute");
                        (String::from_utf8_lossy(a.key.as_ref()).into_owned(), a.unescape_value().expect("attribute value").into_owned())
                    })
                    .collect();
                attributes.sort();
                nodes.push(Node::Start(String::from_utf8_lossy(s.name().as_ref()).into_owned(), attributes));
            }
            Event::End(e) => {
                flush(&mut text, &mut nodes);
                nodes.push(Node::End(String::from_utf8_lossy(e.name().as_ref()).into_owned()));
            }
            Event::Text(t) => text.push_str(&t.xml_content().expect("text")),
            Event::GeneralRef(r) => {
                let reference = format!("&{};", r.decode().expect("reference"));
                text.push_str(&quick_xml::escape::unescape(&reference).expect("known entity"));
            }
            Event::Eof => break,
            other => panic!("unexpected XML event {other:?}"),
        }
    }
    nodes
}

fn utf8(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("rendered XML is UTF-8")
}

/// Every text value at a slash-separated element path, in document order.
fn values(xml: &[u8], path: &str) -> Vec<String> {
    let want: Vec<&str> = path.split('/').collect();
    let mut stack: Vec<String> = Vec::new();
    let mut found = Vec::new();
    for node in canonical(utf8(xml)) {
        match node {
            Node::Start(name, _) => {
                stack.push(name);
                if stack == want {
                    found.push(String::new());
                }
            }
            Node::Text(t) if stack == want => {
                if let Some(last) = found.last_mut() {
                    *last = t;
                }
            }
            Node::End(_) => {
                stack.pop();
            }
            _ => {}
        }
    }
    found
}

fn value(xml: &[u8], path: &str) -> Option<String> {
    let mut all = values(xml, path);
    assert!(all.len() <= 1, "{path} appears {} times", all.len());
    all.pop()
}

// ---------------------------------------------------------------------------------------------
// W-13: the examples of docs/wire-formats.md §6.4, §6.5 and §5.5 as typed models.

/// docs/wire-formats.md §6.4: SIP phone, Encrypted mode.
fn sip_encrypted_example() -> PhoneConfig {
    PhoneConfig {
        device_name: "SEP001122334455".into(),
        protocol: DeviceProtocol::Sip,
        ip_address_mode: IpAddressMode::Ipv4Only,
        call_managers: vec![CallManagerMember {
            priority: 0,
            ports: CallManagerPorts { ethernet_phone_port: 2000, sip: Some(SipPorts { sip_port: 5060, secured_sip_port: 5061 }) },
            process_node_name: "cm1.voice.example.net".into(),
        }],
        srst: SrstInfo::disabled(),
        tvs: vec![TvsMember { priority: 0, port: 2445, address: "tvs.voice.example.net".into() }],
        sip_profile: Some(SipProfile {
            register_with_proxy: true,
            lines: vec![SipLine {
                button: 1,
                line_index: 1,
                feature_id: 9,
                feature_label: "1001".into(),
                proxy: LineProxy::UseCallManager,
                port: 5060,
                name: "1001".into(),
                display_name: "Reception".into(),
                auth: Some(DigestAuth { name: "1001".into(), password: "s3cr3t-digest".into() }),
                contact: "1001".into(),
            }],
        }),
        phone_password: Some("4711".into()),
        load_information: "LOAD_ID".into(),
        security_mode: SecurityMode::Encrypted,
        secure_urls: SecureUrls { services: Some("https://svc.voice.example.net:8443/services".into()), ..Default::default() },
        phone_services: Some(PhoneServices { use_https: true, provisioning: 0 }),
        transport: Some(TransportLayerProtocol::Tls),
        tls_resumption_timer: Some(3600),
        capf_auth_mode: CapfAuthMode::NoPendingOperation,
        capf_list: vec![CapfEntry { phone_port: 3804, process_node_name: "capf.voice.example.net".into() }],
        cert_hash: CertHash::from_hex("5d41402abc4b2a76b9719d911017c592"),
        encr_config: true,
        vpn_group: None,
        ssh: Some(SshCredentials::default()),
        vendor_config: None,
    }
}

/// docs/wire-formats.md §6.5: SCCP phone, Authenticated mode.
fn sccp_authenticated_example() -> PhoneConfig {
    let member = |priority: u8, host: &str| CallManagerMember {
        priority,
        ports: CallManagerPorts { ethernet_phone_port: 2000, sip: None },
        process_node_name: host.into(),
    };
    let endpoint = |address: &str| SrstEndpoint { address: address.into(), port: 2000 };
    PhoneConfig {
        device_name: "SEP0011223344AA".into(),
        protocol: DeviceProtocol::Sccp,
        ip_address_mode: IpAddressMode::Ipv4Only,
        call_managers: vec![member(0, "cm1.voice.example.net"), member(1, "cm2.voice.example.net")],
        srst: SrstInfo {
            name: "Branch-A".into(),
            option: SrstOption::Enable,
            user_modifiable: false,
            sccp: Some([endpoint("192.0.2.254"), endpoint(""), endpoint("")]),
            sip: None,
            is_secure: false,
        },
        tvs: vec![TvsMember { priority: 0, port: 2445, address: "tvs.voice.example.net".into() }],
        sip_profile: None,
        phone_password: None,
        load_information: "LOAD_ID".into(),
        security_mode: SecurityMode::Authenticated,
        secure_urls: SecureUrls::default(),
        phone_services: None,
        transport: None,
        tls_resumption_timer: None,
        capf_auth_mode: CapfAuthMode::LscThenMic,
        capf_list: vec![CapfEntry { phone_port: 3804, process_node_name: "capf.voice.example.net".into() }],
        cert_hash: None,
        encr_config: false,
        vpn_group: None,
        ssh: None,
        vendor_config: None,
    }
}

#[test]
fn w13_sip_encrypted_example_renders() {
    let rendered = render_full(&sip_encrypted_example()).expect("renders");
    assert_eq!(canonical(utf8(&rendered)), canonical(&fixture("sip-encrypted.xml")));
}

#[test]
fn w13_sccp_authenticated_example_renders() {
    let rendered = render_full(&sccp_authenticated_example()).expect("renders");
    assert_eq!(canonical(utf8(&rendered)), canonical(&fixture("sccp-authenticated.xml")));
}

#[test]
fn stub_of_the_encrypted_example_is_the_spec_stub() {
    // §5.5: the four middle elements are copied from the full configuration; §5.6: same certHash.
    let rendered = render_stub(&sip_encrypted_example()).expect("renders");
    assert_eq!(canonical(utf8(&rendered)), canonical(&fixture("stub.xml")));
}

#[test]
fn canonical_form_sees_a_changed_value() {
    // The comparison above would be worthless if canonicalisation hid differences.
    let mut config = sccp_authenticated_example();
    config.capf_auth_mode = CapfAuthMode::Mic;
    let rendered = render_full(&config).expect("renders");
    assert_ne!(canonical(utf8(&rendered)), canonical(&fixture("sccp-authenticated.xml")));
}

#[test]
fn rendered_file_starts_with_the_declaration_and_uses_lowercase_booleans() {
    let rendered = render_full(&sip_encrypted_example()).expect("renders");
    let text = utf8(&rendered);
    assert!(text.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"), "{text}");
    assert!(!text.contains("True") && !text.contains("False"));
    assert!(text.contains("<certHash>5d41402abc4b2a76b9719d911017c592</certHash>"));
}

// ---------------------------------------------------------------------------------------------
// Certificates, with openssl as the independent check.

struct TestCertificates {
    rsa_der: Vec<u8>,
    ec_der: Vec<u8>,
}

fn certificates() -> &'static TestCertificates {
    static CERTS: OnceLock<TestCertificates> = OnceLock::new();
    CERTS.get_or_init(|| {
        let rsa = callguard::core::pki::keys::generate_rsa(2048);
        let rsa_pair = rcgen::KeyPair::try_from(callguard::core::pki::keys::pkcs8_der(&rsa).as_slice()).expect("rcgen loads the RSA key");
        let params = rcgen::CertificateParams::new(vec!["SEP001122334455".to_string()]).expect("params");
        let rsa_der = params.self_signed(&rsa_pair).expect("RSA certificate").der().to_vec();
        let ec_pair = rcgen::KeyPair::generate().expect("EC key");
        let ec_der = params.self_signed(&ec_pair).expect("EC certificate").der().to_vec();
        TestCertificates { rsa_der, ec_der }
    })
}

fn openssl(args: &[&str], input: &Path) -> Vec<u8> {
    let output = Command::new("openssl").args(args).arg(input).output().expect("the openssl CLI is installed at /usr/bin/openssl");
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

/// MD5 of `der` in lowercase hex, by the openssl CLI.
fn openssl_md5_hex(der: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("certificate.der");
    std::fs::write(&file, der).expect("write DER");
    let output = String::from_utf8(openssl(&["dgst", "-md5", "-r"], &file)).expect("hex");
    output.split_whitespace().next().expect("digest").to_string()
}

#[test]
fn cert_hash_is_the_md5_of_the_der_as_openssl_computes_it() {
    let der = &certificates().rsa_der;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("device.der");
    std::fs::write(&file, der).expect("write DER");
    let expected = String::from_utf8(openssl(&["dgst", "-md5", "-r"], &file)).expect("hex");
    let expected = expected.split_whitespace().next().expect("digest").to_string();

    let certificate = DeviceCertificate::from_der(der).expect("parses");
    assert_eq!(certificate.key_kind, DeviceKeyKind::Rsa);
    assert_eq!(certificate.cert_hash.to_hex(), expected, "32 lowercase hex digits, as openssl prints them");
    let ec = DeviceCertificate::from_der(&certificates().ec_der).expect("parses");
    assert_eq!(ec.cert_hash.to_hex(), openssl_md5_hex(&certificates().ec_der), "the MD5 of the EC certificate's own DER");
    assert_eq!(ec.key_kind, DeviceKeyKind::Ec);
    assert!(DeviceCertificate::from_der(b"not a certificate").is_err());
}

#[test]
fn vpn_cert_hash_is_base64_sha1_of_the_der() {
    let der = &certificates().rsa_der;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("server.der");
    std::fs::write(&file, der).expect("write DER");
    let binary = dir.path().join("sha1.bin");
    std::fs::write(&binary, openssl(&["dgst", "-sha1", "-binary"], &file)).expect("write digest");
    let expected = String::from_utf8(openssl(&["base64", "-A", "-in"], &binary)).expect("base64").trim().to_string();

    let hash = VpnCertHash::of_der(der);
    assert_eq!(hash.to_base64(), expected, "base64 of the 20-byte SHA-1, as openssl computes it");

    let mut config = sip_encrypted_example();
    config.vpn_group = Some(VpnGroup { hash_algorithm: VpnHashAlgorithm::Sha1, cert_hashes: vec![hash] });
    let rendered = render_full(&config).expect("renders");
    assert_eq!(value(&rendered, "device/vpnGroup/credentials/hashAlg").as_deref(), Some("0"));
    assert_eq!(value(&rendered, "device/vpnGroup/credentials/certHash1"), Some(expected));
}

// ---------------------------------------------------------------------------------------------
// The quickstart.

fn quickstart() -> Snapshot {
    let files = collect_files(&[repo().join("examples/quickstart")]).expect("quickstart files");
    let mut snapshot = Snapshot::new("default");
    for file in files {
        for doc in load_file(&file).expect("quickstart parses") {
            let (kind, name, _) = doc.identity();
            let object =
                ObjectRef { kind: kind.expect("kind").to_string(), namespace: "default".into(), name: name.expect("name").to_string() };
            snapshot.insert(&object, &doc.value).expect("quickstart objects are typed");
        }
    }
    snapshot
}

/// The digest user's name and Secret value, read as the operator would.
fn secrets_for(snapshot: &Snapshot, phone: &Phone) -> ResolvedSecrets {
    let digest = phone.spec.digest_user_ref.as_ref().map(|user| {
        let user = &snapshot.end_users[user];
        let reference = user.spec.digest_credentials.as_ref().expect("digest credentials");
        let password = &snapshot.secrets[&reference.name].0[&reference.key];
        DigestAuth { name: user.spec.user_id.clone().expect("user id"), password: String::from_utf8(password.to_vec()).expect("text") }
    });
    ResolvedSecrets { digest, phone_password: None }
}

struct Rendered {
    full: Vec<u8>,
    stub: Vec<u8>,
    conditions: Vec<ConfigCondition>,
}

fn render_quickstart() -> BTreeMap<String, Rendered> {
    let snapshot = quickstart();
    let cluster = snapshot.clusters.values().next().expect("one cluster");
    let certificate = DeviceCertificate::from_der(&certificates().rsa_der).expect("parses");
    let mut out = BTreeMap::new();
    for (name, phone) in &snapshot.phones {
        let secrets = secrets_for(&snapshot, phone);
        let input = PhoneConfigInput {
            cluster,
            phone,
            profile: &snapshot.phone_profiles[&phone.spec.security_profile_ref],
            srst_reference: phone.spec.srst_reference_ref.as_ref().map(|r| &*snapshot.srst_references[r]),
            secrets: &secrets,
            device_certificate: Some(certificate),
            trust: TrustFacts { has_call_manager_record: true },
            load_information: Some("LOAD_ID"),
            // Rendering is what these tests check; the credential policy has its own.
            clear_credentials: &ClearCredentials::Allowed,
        };
        let resolved = resolve(&input).unwrap_or_else(|e| panic!("{name}: {e}"));
        let full = render_full(&resolved.config).expect("renders");
        let stub = render_stub(&resolved.config).expect("renders");
        out.insert(name.clone(), Rendered { full, stub, conditions: resolved.conditions });
    }
    out
}

fn reasons(rendered: &Rendered) -> Vec<&'static str> {
    rendered.conditions.iter().map(ConfigCondition::reason).collect()
}

#[test]
fn every_quickstart_phone_resolves_and_renders() {
    let all = render_quickstart();
    assert_eq!(all.len(), 7);
    // The certHash every encrypted phone carries: the MD5 of its certificate's DER (§5.6), by openssl.
    let expected_hash = openssl_md5_hex(&certificates().rsa_der);
    for (name, r) in &all {
        // Both nodes run CallManager, in order; only the first runs CAPF.
        assert_eq!(
            values(&r.full, "device/devicePool/callManagerGroup/members/member/callManager/processNodeName"),
            ["cm1.quickstart.example", "cm2.quickstart.example"]
        );
        assert_eq!(values(&r.full, "device/capfList/capf/processNodeName"), ["cm1.quickstart.example"], "{name}");
        assert_eq!(values(&r.full, "device/capfList/capf/phonePort"), ["3804"], "{name}");
        assert_eq!(value(&r.full, "device/fullConfig").as_deref(), Some("true"));
        assert_eq!(value(&r.stub, "device/fullConfig").as_deref(), Some("false"));
        assert_eq!(value(&r.full, "device/loadInformation").as_deref(), Some("LOAD_ID"));
        // §5.6: certHash set exactly when encryption is on, the same in the full file and the stub.
        let encrypted = value(&r.full, "device/encrConfig");
        let hash = value(&r.full, "device/certHash");
        match encrypted.as_deref() {
            Some("true") => assert_eq!(hash.as_ref(), Some(&expected_hash), "{name}"),
            Some("false") => assert_eq!(hash.as_deref(), Some(""), "{name}"),
            other => panic!("{name}: encrConfig {other:?}"),
        }
        assert_eq!(value(&r.stub, "device/certHash"), hash, "{name}");
        assert_eq!(value(&r.stub, "device/encrConfig"), encrypted, "{name}");
        assert_eq!(value(&r.stub, "device/capfAuthMode"), value(&r.full, "device/capfAuthMode"), "{name}");
        assert_eq!(value(&r.full, "device/devicePool/srstInfo/isSecure").as_deref(), Some("false"), "{name}");
        // Passwords never reach the stub.
        assert!(values(&r.stub, "device/sipProfile/sipLines/line/authPassword").is_empty());
    }
}

#[test]
fn quickstart_sccp_encrypted_phone_with_pending_capf() {
    let all = render_quickstart();
    let r = &all["lobby-7970"];
    assert_eq!(value(&r.full, "device/deviceProtocol").as_deref(), Some("SCCP"));
    assert_eq!(value(&r.full, "device/deviceSecurityMode").as_deref(), Some("3"));
    assert_eq!(value(&r.full, "device/transportLayerProtocol"), None, "SCCP has no transportLayerProtocol (§6.5)");
    assert_eq!(value(&r.full, "device/capfAuthMode").as_deref(), Some("1"), "InstallUpgrade by authentication string");
    assert_eq!(value(&r.full, "device/encrConfig").as_deref(), Some("true"));
    assert_eq!(value(&r.full, "device/devicePool/srstInfo/name").as_deref(), Some("branch-gateway"));
    assert_eq!(value(&r.full, "device/devicePool/srstInfo/srstOption").as_deref(), Some("Enable"));
    assert_eq!(value(&r.full, "device/devicePool/srstInfo/ipAddr1").as_deref(), Some("srst.branch.quickstart.example"));
    assert_eq!(value(&r.full, "device/devicePool/srstInfo/port1").as_deref(), Some("2000"));
    assert_eq!(value(&r.full, "device/devicePool/callManagerGroup/members/member/callManager/ports/sipPort"), None);
    assert_eq!(value(&r.full, "device/sipProfile"), None);
    // Install/Upgrade waits for a CAPF service (Table 6-2).
    assert_eq!(reasons(r), ["SecureSrstUnavailable", "CertificateOperationPending", "HardeningNotRendered"]);
    assert!(r.conditions.contains(&ConfigCondition::HardeningNotRendered { settings: vec!["webAccess"] }));
    // Settings Access has a known encoding and is written (P.9-2).
    assert_eq!(value(&r.full, "device/vendorConfig/settingsAccess").as_deref(), Some("0"));
    assert_eq!(value(&r.full, "device/vendorConfig/pcPort").as_deref(), Some("0"));
}

#[test]
fn quickstart_sip_encrypted_phone_with_digest_user() {
    let all = render_quickstart();
    let r = &all["alice-7961"];
    assert_eq!(value(&r.full, "device/deviceProtocol").as_deref(), Some("SIP"));
    assert_eq!(value(&r.full, "device/deviceSecurityMode").as_deref(), Some("3"));
    assert_eq!(value(&r.full, "device/transportLayerProtocol").as_deref(), Some("3"));
    assert_eq!(value(&r.full, "device/TLSResumptionTimer").as_deref(), Some("3600"));
    assert_eq!(value(&r.full, "device/capfAuthMode").as_deref(), Some("0"), "no CAPF operation pending");
    assert_eq!(value(&r.full, "device/encrConfig").as_deref(), Some("true"));
    assert_eq!(values(&r.full, "device/sipProfile/sipLines/line/name"), ["1001"]);
    assert_eq!(value(&r.full, "device/sipProfile/sipLines/line/authName").as_deref(), Some("alice"));
    assert_eq!(value(&r.full, "device/sipProfile/sipLines/line/authPassword").as_deref(), Some("FakeAlice123"));
    assert_eq!(values(&r.full, "device/devicePool/callManagerGroup/members/member/callManager/ports/securedSipPort"), ["5061", "5061"]);
    assert_eq!(value(&r.full, "device/devicePool/srstInfo/sipIpAddr1").as_deref(), Some("srst.branch.quickstart.example"));
    assert_eq!(value(&r.full, "device/devicePool/srstInfo/sipPort1").as_deref(), Some("5060"));
    assert_eq!(reasons(r), ["SecureSrstUnavailable"], "encrypted, so no cleartext warning");
}

#[test]
fn quickstart_sip_authenticated_phone_sends_digest_in_cleartext_only_when_allowed() {
    let all = render_quickstart();
    let r = &all["bob-7941"];
    assert_eq!(value(&r.full, "device/deviceSecurityMode").as_deref(), Some("2"));
    assert_eq!(value(&r.full, "device/transportLayerProtocol").as_deref(), Some("3"));
    assert_eq!(value(&r.full, "device/encrConfig").as_deref(), Some("false"));
    assert_eq!(value(&r.full, "device/sipProfile/sipLines/line/authName").as_deref(), Some("bob"));
    assert_eq!(value(&r.full, "device/devicePool/srstInfo/name").as_deref(), Some("Disable"));
    assert_eq!(reasons(r), ["DigestCredentialsInCleartext", "HardeningNotRendered"]);
}

#[test]
fn quickstart_manual_key_phone_is_not_encrypted() {
    let all = render_quickstart();
    let r = &all["lab-7960"];
    assert_eq!(value(&r.full, "device/deviceSecurityMode").as_deref(), Some("2"));
    assert_eq!(value(&r.full, "device/transportLayerProtocol").as_deref(), Some("3"));
    assert_eq!(value(&r.full, "device/encrConfig").as_deref(), Some("false"));
    assert!(values(&r.full, "device/sipProfile/sipLines/line").is_empty(), "no directory numbers");
    assert_eq!(reasons(r), ["ManualKeyEncryptionNotRendered"]);
}

#[test]
fn quickstart_sccp_authenticated_phone_with_null_string_capf() {
    let all = render_quickstart();
    let r = &all["hallway-7911"];
    assert_eq!(value(&r.full, "device/deviceSecurityMode").as_deref(), Some("2"));
    assert_eq!(value(&r.full, "device/capfAuthMode").as_deref(), Some("2"));
    assert_eq!(value(&r.full, "device/encrConfig").as_deref(), Some("false"));
    assert_eq!(reasons(r), ["CertificateOperationPending"], "the operation waits for a CAPF service");
}

#[test]
fn quickstart_non_secure_sip_phone_uses_udp() {
    let all = render_quickstart();
    let r = &all["conference-7912"];
    assert_eq!(value(&r.full, "device/deviceSecurityMode").as_deref(), Some("1"));
    assert_eq!(value(&r.full, "device/transportLayerProtocol").as_deref(), Some("2"));
    assert_eq!(value(&r.full, "device/capfAuthMode").as_deref(), Some("0"));
    assert_eq!(values(&r.full, "device/sipProfile/sipLines/line/contact"), ["1005"]);
    assert_eq!(value(&r.full, "device/sipProfile/sipLines/line/authName"), None);
    assert!(r.conditions.contains(&ConfigCondition::HardeningNotRendered { settings: vec!["webAccess"] }));
    // The conference phone's PC port is disabled: `pcPort` 1 (P.9-2).
    assert_eq!(value(&r.full, "device/vendorConfig/pcPort").as_deref(), Some("1"));
    assert_eq!(value(&r.full, "device/vendorConfig/settingsAccess").as_deref(), Some("1"));
    assert_eq!(value(&r.full, "device/vendorConfig/disableSpeaker").as_deref(), Some("false"));
}

#[test]
fn quickstart_sccp_phone_with_shared_line() {
    let all = render_quickstart();
    let r = &all["backoffice-7971"];
    assert_eq!(value(&r.full, "device/deviceSecurityMode").as_deref(), Some("3"));
    assert_eq!(value(&r.full, "device/capfAuthMode").as_deref(), Some("0"));
    assert_eq!(value(&r.full, "device/encrConfig").as_deref(), Some("true"));
    assert_eq!(value(&r.full, "device/devicePool/srstInfo/name").as_deref(), Some("Disable"));
}

// ---------------------------------------------------------------------------------------------
// N-10: the refusals of docs/wire-formats.md §6.3, through `resolve` where the resources can express them.

struct Case {
    snapshot: Snapshot,
    phone: String,
    secrets: ResolvedSecrets,
    certificate: Option<DeviceCertificate>,
    trust: TrustFacts,
    clear: ClearCredentials,
}

impl Case {
    fn new(phone: &str) -> Self {
        let snapshot = quickstart();
        let secrets = secrets_for(&snapshot, &snapshot.phones[phone]);
        let certificate = Some(DeviceCertificate::from_der(&certificates().rsa_der).expect("parses"));
        Case {
            snapshot,
            phone: phone.into(),
            secrets,
            certificate,
            trust: TrustFacts { has_call_manager_record: true },
            clear: ClearCredentials::Allowed,
        }
    }
    fn profile_mut(&mut self) -> &mut PhoneSecurityProfileSpec {
        let name = self.snapshot.phones[&self.phone].spec.security_profile_ref.clone();
        &mut Arc::make_mut(self.snapshot.phone_profiles.get_mut(&name).expect("profile")).spec
    }
    fn cluster_mut(&mut self) -> &mut CallControlClusterSpec {
        &mut Arc::make_mut(self.snapshot.clusters.values_mut().next().expect("cluster")).spec
    }
    fn resolve(&self) -> Result<Resolved, RenderError> {
        let phone = &self.snapshot.phones[&self.phone];
        resolve(&PhoneConfigInput {
            cluster: self.snapshot.clusters.values().next().expect("cluster"),
            phone,
            profile: &self.snapshot.phone_profiles[&phone.spec.security_profile_ref],
            srst_reference: phone.spec.srst_reference_ref.as_ref().map(|r| &*self.snapshot.srst_references[r]),
            secrets: &self.secrets,
            device_certificate: self.certificate,
            trust: self.trust,
            load_information: None,
            clear_credentials: &self.clear,
        })
    }
}

/// P.7-1: credentials go into an encrypted file, or into a clear one only when the caller allows it;
/// refused, they are withheld and the phone is told why.
#[test]
fn digest_credentials_stay_out_of_a_clear_file_unless_allowed() {
    let mut case = Case::new("bob-7941");
    case.clear = ClearCredentials::Refused(WithheldReason::NotOptedIn { profile: "sip-authenticated".into() });
    let resolved = case.resolve().expect("resolves");
    let full = render_full(&resolved.config).expect("renders");
    assert!(values(&full, "device/sipProfile/sipLines/line/authPassword").is_empty(), "{}", String::from_utf8_lossy(&full));
    let withheld = resolved.conditions.iter().find(|c| c.reason() == "DigestCredentialsWithheld").expect("the phone is told");
    assert!(withheld.is_blocking() && withheld.to_string().contains("allowDigestCredentialsInClear"), "{withheld}");
    // Allowed: in the file, and shown as a downgrade.
    case.clear = ClearCredentials::Allowed;
    let resolved = case.resolve().expect("resolves");
    let full = render_full(&resolved.config).expect("renders");
    assert_eq!(value(&full, "device/sipProfile/sipLines/line/authPassword").as_deref(), Some("FakeBob456"));
    let cleartext = resolved.conditions.iter().find(|c| c.reason() == "DigestCredentialsInCleartext").expect("said");
    assert!(cleartext.is_downgrade() && !cleartext.is_blocking());
    // An encrypted file carries them whatever the clear-file policy says.
    let mut encrypted = Case::new("alice-7961");
    encrypted.clear = ClearCredentials::Refused(WithheldReason::EncryptionAsked);
    let resolved = encrypted.resolve().expect("resolves");
    assert_eq!(
        value(&render_full(&resolved.config).unwrap(), "device/sipProfile/sipLines/line/authPassword").as_deref(),
        Some("FakeAlice123")
    );
}

#[test]
fn n10_tls_in_mode_1_is_refused() {
    let mut case = Case::new("bob-7941");
    case.profile_mut().device_security_mode = Some(DeviceSecurityMode::NonSecure);
    let err = case.resolve().expect_err("refused");
    assert!(matches!(&err, RenderError::TlsWithNonSecureMode { profile: Some(p), .. } if p == "sip-authenticated-digest"), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("SEP00AABBCCDD02") && message.contains("sip.transportType TLS") && message.contains("§6.3"), "{message}");
}

#[test]
fn n10_secure_mode_without_a_ccm_record_is_refused() {
    for phone in ["bob-7941", "hallway-7911"] {
        let mut case = Case::new(phone);
        case.trust.has_call_manager_record = false;
        let err = case.resolve().expect_err("refused");
        assert!(
            matches!(err, RenderError::SecureModeWithoutCallManagerRecord { mode: SecurityMode::Authenticated, .. }),
            "{phone}: {err:?}"
        );
        assert!(err.to_string().contains("CCM or CCM+TFTP record"), "{err}");
    }
    // Mode 1 needs no CCM record.
    let mut case = Case::new("conference-7912");
    case.trust.has_call_manager_record = false;
    assert!(case.resolve().is_ok());
}

#[test]
fn n10_six_call_manager_nodes_are_refused() {
    let mut case = Case::new("alice-7961");
    let template = case.cluster_mut().nodes[1].clone();
    for i in 3..=6 {
        let mut node = template.clone();
        node.name = format!("cm{i}");
        node.hostname = format!("cm{i}.quickstart.example");
        case.cluster_mut().nodes.push(node);
    }
    let err = case.resolve().expect_err("refused");
    assert!(matches!(err, RenderError::TooManyMembers { list: MemberList::CallManagerGroup, count: 6, max: 5, .. }), "{err:?}");
    // Five are fine.
    case.cluster_mut().nodes.pop();
    let resolved = case.resolve().expect("five members");
    assert_eq!(resolved.config.call_managers.iter().map(|m| m.priority).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
}

#[test]
fn n10_six_capf_or_tvs_entries_are_refused() {
    let mut config = sccp_authenticated_example();
    config.capf_list = (0..6).map(|i| CapfEntry { phone_port: 3804, process_node_name: format!("capf{i}.example") }).collect();
    assert!(matches!(render_full(&config), Err(RenderError::TooManyMembers { list: MemberList::CapfList, count: 6, .. })));
    assert!(render_stub(&config).is_err(), "the stub carries capfList too");

    let mut config = sccp_authenticated_example();
    config.tvs = (0..6).map(|i| TvsMember { priority: i, port: 2445, address: format!("tvs{i}.example") }).collect();
    assert!(matches!(render_full(&config), Err(RenderError::TooManyMembers { list: MemberList::Tvs, count: 6, .. })));
}

#[test]
fn n10_duplicate_priorities_are_refused() {
    let mut config = sccp_authenticated_example();
    config.call_managers[1].priority = 0;
    assert!(matches!(render_full(&config), Err(RenderError::DuplicatePriority { list: MemberList::CallManagerGroup, priority: 0, .. })));
    let mut config = sccp_authenticated_example();
    config.tvs.push(TvsMember { priority: 0, port: 2445, address: "tvs2.voice.example.net".into() });
    assert!(matches!(render_full(&config), Err(RenderError::DuplicatePriority { list: MemberList::Tvs, .. })));
}

#[test]
fn n10_secure_srst_is_never_rendered() {
    let mut config = sccp_authenticated_example();
    config.srst.is_secure = true;
    let err = render_full(&config).expect_err("refused");
    assert!(matches!(err, RenderError::SecureSrstWithoutElement { .. }));
    assert!(err.to_string().contains("§9.3"));
    // A secure reference resolves with isSecure false and the condition (§9.3).
    let resolved = Case::new("alice-7961").resolve().expect("resolves");
    assert!(!resolved.config.srst.is_secure);
    assert!(resolved.conditions.contains(&ConfigCondition::SecureSrstUnavailable { srst_reference: "branch-gateway".into() }));
}

#[test]
fn n10_encryption_without_an_rsa_certificate_is_refused() {
    let mut case = Case::new("alice-7961");
    case.certificate = Some(DeviceCertificate::from_der(&certificates().ec_der).expect("parses"));
    let err = case.resolve().expect_err("refused");
    assert!(matches!(err, RenderError::EncryptionNeedsRsaCertificate { found: Some(DeviceKeyKind::Ec), .. }), "{err:?}");
    // No certificate yet: the stub goes out with a blank certHash so the phone starts CAPF (§5.1), and
    // the full file, which could only be encrypted for a certificate, is refused.
    case.certificate = None;
    let resolved = case.resolve().expect("resolves to a stub-only configuration");
    assert!(resolved.conditions.contains(&ConfigCondition::AwaitingDeviceCertificate));
    assert!(resolved.config.encr_config && resolved.config.cert_hash.is_none());
    let stub = String::from_utf8(render_stub(&resolved.config).expect("the stub renders")).unwrap();
    assert!(stub.contains("<certHash></certHash>") || stub.contains("<certHash/>"), "{stub}");
    assert!(stub.contains("<encrConfig>true</encrConfig>"), "{stub}");
    let err = render_full(&resolved.config).expect_err("refused");
    assert!(matches!(err, RenderError::EncryptionNeedsRsaCertificate { found: None, .. }), "{err:?}");
    assert!(err.to_string().contains("RSA device certificate"));
    // Without encryption no certificate is needed.
    let mut case = Case::new("bob-7941");
    case.certificate = None;
    assert!(case.resolve().is_ok());
}

#[test]
fn n10_transport_4_is_refused() {
    let mut case = Case::new("conference-7912");
    case.profile_mut().sip.as_mut().expect("sip settings").transport_type = Some(SipTransport::TcpAndUdp);
    let err = case.resolve().expect_err("refused");
    assert!(matches!(err, RenderError::TcpAndUdpTransport { .. }), "{err:?}");
    assert!(err.to_string().contains("transportLayerProtocol 4"));
}

#[test]
fn non_secure_cluster_writes_mode_1_without_tls() {
    let mut case = Case::new("alice-7961");
    case.cluster_mut().security_mode = Some(ClusterSecurityMode::NonSecure);
    case.trust.has_call_manager_record = false;
    let resolved = case.resolve().expect("resolves");
    assert_eq!(resolved.config.security_mode, SecurityMode::NonSecure);
    assert_eq!(resolved.config.transport, Some(TransportLayerProtocol::Tcp));
    assert!(!resolved.config.encr_config, "encryption needs mixed mode (P.7-2)");
    assert!(resolved.conditions.contains(&ConfigCondition::ClusterNonSecure { profile_mode: DeviceSecurityMode::Encrypted }));
}

#[test]
fn phone_password_comes_from_the_supplied_secrets() {
    let mut case = Case::new("alice-7961");
    case.secrets.phone_password = Some("4711".into());
    let rendered = render_full(&case.resolve().expect("resolves").config).expect("renders");
    assert_eq!(value(&rendered, "device/commonProfile/phonePassword").as_deref(), Some("4711"));
    let stub = render_stub(&case.resolve().expect("resolves").config).expect("renders");
    assert!(!utf8(&stub).contains("4711"), "the stub carries no secret");
}

#[test]
fn profile_of_the_other_protocol_is_refused() {
    let mut case = Case::new("alice-7961");
    case.profile_mut().protocol = PhoneProtocol::Sccp;
    assert!(matches!(case.resolve(), Err(RenderError::ProfileProtocolMismatch { .. })));
}

// ---------------------------------------------------------------------------------------------
// Determinism.

#[test]
fn rendering_is_deterministic_and_sensitive_to_every_change() {
    let first = render_quickstart();
    let second = render_quickstart();
    for (name, r) in &first {
        assert_eq!(r.full, second[name].full, "{name}");
        assert_eq!(r.stub, second[name].stub, "{name}");
    }
    let config = sip_encrypted_example();
    let base = render_full(&config).expect("renders");
    assert_eq!(base, render_full(&config.clone()).expect("renders"));
    let mut changed = config.clone();
    changed.phone_password = Some("4712".into());
    assert_ne!(base, render_full(&changed).expect("renders"));
    let mut changed = config;
    changed.call_managers[0].ports.ethernet_phone_port = 2001;
    assert_ne!(base, render_full(&changed).expect("renders"));
}

// ---------------------------------------------------------------------------------------------
// Free text, read back by an independent parser.

/// Text as a phone's resources may carry it, of the characters XML 1.0 can carry: any of them, or mostly those
/// XML gives a meaning (markup, entity and quote characters, the whitespace parsers normalise, `]]>`), with
/// non-ASCII. The others are the second property's.
fn free_text(max: usize) -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        proptest::collection::vec(any::<char>().prop_filter("an XML 1.0 Char", |c| xml_char(*c)), 0..=max)
            .prop_map(|chars| chars.into_iter().collect()),
        proptest::collection::vec(
            prop_oneof![
                Just("<"),
                Just(">"),
                Just("&"),
                Just("&amp;"),
                Just("'"),
                Just("\""),
                Just("]]>"),
                Just(" "),
                Just("\t"),
                Just("\r"),
                Just("\n"),
                Just("\r\n"),
                Just("é"),
                Just("☎"),
                Just("a"),
                Just("1"),
            ],
            0..=max
        )
        .prop_map(move |parts| parts.concat().chars().take(max).collect()),
    ]
}

/// Whether XML 1.0 can carry `c` at all (its `Char` production).
fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// The text content of every element at `path` (slash-separated element names from the root), read by
/// roxmltree, an XML parser that shares no code with the quick-xml the renderer uses.
fn read_back(document: &roxmltree::Document<'_>, path: &str) -> Vec<String> {
    let mut names = path.split('/');
    assert_eq!(document.root_element().tag_name().name(), names.next().unwrap());
    let mut nodes = vec![document.root_element()];
    for name in names {
        nodes = nodes.iter().flat_map(|n| n.children().filter(|c| c.is_element() && c.tag_name().name() == name)).collect();
    }
    nodes.iter().map(|n| n.children().filter(|c| c.is_text()).filter_map(|c| c.text()).collect()).collect()
}

/// The free-text fields of a configuration, by the element paths that carry them (docs/wire-formats.md §6.1,
/// §6.4, §6.5).
#[derive(Debug, Clone)]
struct FreeText {
    call_manager: String,
    srst_name: String,
    srst_address: String,
    tvs_address: String,
    feature_label: String,
    line_name: String,
    display_name: String,
    auth_name: String,
    auth_password: String,
    contact: String,
    phone_password: String,
    load_information: String,
    url: String,
    capf: String,
    ssh_user: String,
    ssh_password: String,
}

impl FreeText {
    /// Every field, in declaration order; the stub carries only `load_information` (11) and `capf` (13).
    fn fields_mut(&mut self) -> [&mut String; 16] {
        [
            &mut self.call_manager,
            &mut self.srst_name,
            &mut self.srst_address,
            &mut self.tvs_address,
            &mut self.feature_label,
            &mut self.line_name,
            &mut self.display_name,
            &mut self.auth_name,
            &mut self.auth_password,
            &mut self.contact,
            &mut self.phone_password,
            &mut self.load_information,
            &mut self.url,
            &mut self.capf,
            &mut self.ssh_user,
            &mut self.ssh_password,
        ]
    }
}

fn free_text_fields() -> impl proptest::strategy::Strategy<Value = FreeText> {
    use proptest::prelude::*;
    (
        (free_text(49), free_text(40), free_text(40), free_text(40), free_text(40), free_text(40), free_text(40), free_text(40)),
        (free_text(40), free_text(40), free_text(40), free_text(40), free_text(200), free_text(49), free_text(40), free_text(40)),
    )
        .prop_map(|((a, b, c, d, e, f, g, h), (i, j, k, l, m, n, o, p))| FreeText {
            call_manager: a,
            srst_name: b,
            srst_address: c,
            tvs_address: d,
            feature_label: e,
            line_name: f,
            display_name: g,
            auth_name: h,
            auth_password: i,
            contact: j,
            phone_password: k,
            load_information: l,
            url: format!("https://{m}"),
            capf: n,
            ssh_user: o,
            ssh_password: p,
        })
}

/// The §6.4 example with every free-text field replaced, an SCCP SRST block added and every secure URL set.
fn with_free_text(text: &FreeText) -> PhoneConfig {
    let mut config = sip_encrypted_example();
    config.call_managers[0].process_node_name = text.call_manager.clone();
    let endpoint = |address: &str| SrstEndpoint { address: address.into(), port: 2000 };
    config.srst = SrstInfo {
        name: text.srst_name.clone(),
        option: SrstOption::Enable,
        user_modifiable: false,
        sccp: Some([endpoint(&text.srst_address), endpoint(""), endpoint("")]),
        sip: None,
        is_secure: false,
    };
    config.tvs[0].address = text.tvs_address.clone();
    let line = &mut config.sip_profile.as_mut().unwrap().lines[0];
    line.feature_label = text.feature_label.clone();
    line.name = text.line_name.clone();
    line.display_name = text.display_name.clone();
    line.auth = Some(DigestAuth { name: text.auth_name.clone(), password: text.auth_password.clone() });
    line.contact = text.contact.clone();
    config.phone_password = Some(text.phone_password.as_str().into());
    config.load_information = text.load_information.clone();
    let url = Some(text.url.clone());
    config.secure_urls = SecureUrls {
        authentication: url.clone(),
        directory: url.clone(),
        services: url.clone(),
        idle: url.clone(),
        information: url.clone(),
        messages: url.clone(),
        uds_users_access: url,
    };
    config.capf_list[0].process_node_name = text.capf.clone();
    config.ssh = Some(SshCredentials { user_id: text.ssh_user.clone(), password: text.ssh_password.clone() });
    config
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

    /// Any text XML 1.0 can carry, in every free-text field at once, comes back from an independent XML parser
    /// exactly as given, in the full file and in the stub: never a file a phone's parser would reject or read
    /// differently (a carriage return in a password read as a line feed, say).
    #[test]
    fn free_text_reads_back_equal_with_an_independent_parser(text in free_text_fields()) {
        let config = with_free_text(&text);
        let (full, stub) = (render_full(&config), render_stub(&config));
        let full = full.expect("renders");
        let full = std::str::from_utf8(&full).expect("UTF-8");
        let document = roxmltree::Document::parse(full).unwrap_or_else(|e| panic!("not XML ({e}):\n{full}"));
        let one = |path: &str| {
            let found = read_back(&document, path);
            assert_eq!(found.len(), 1, "{path}: {found:?}\n{full}");
            found.into_iter().next().unwrap()
        };
        let line = "device/sipProfile/sipLines/line";
        let expected = [
            ("device/devicePool/callManagerGroup/members/member/callManager/processNodeName", &text.call_manager),
            ("device/devicePool/srstInfo/name", &text.srst_name),
            ("device/devicePool/srstInfo/ipAddr1", &text.srst_address),
            ("device/TVS/members/member/address", &text.tvs_address),
            (&format!("{line}/featureLabel"), &text.feature_label),
            (&format!("{line}/name"), &text.line_name),
            (&format!("{line}/displayName"), &text.display_name),
            (&format!("{line}/authName"), &text.auth_name),
            (&format!("{line}/authPassword"), &text.auth_password),
            (&format!("{line}/contact"), &text.contact),
            ("device/commonProfile/phonePassword", &text.phone_password),
            ("device/loadInformation", &text.load_information),
            ("device/capfList/capf/processNodeName", &text.capf),
            ("device/sshUserId", &text.ssh_user),
            ("device/sshPassword", &text.ssh_password),
        ];
        for (path, value) in expected {
            proptest::prop_assert_eq!(&one(path), value, "{}", path);
        }
        for element in ["secureAuthenticationURL", "secureDirectoryURL", "secureServicesURL", "secureIdleURL",
            "secureInformationURL", "secureMessagesURL", "secureUDSUsersAccessURL"] {
            proptest::prop_assert_eq!(&one(&format!("device/{element}")), &text.url, "{}", element);
        }

        let stub = stub.expect("the stub renders");
        let stub = std::str::from_utf8(&stub).expect("UTF-8");
        let document = roxmltree::Document::parse(stub).unwrap_or_else(|e| panic!("the stub is not XML ({e}):\n{stub}"));
        proptest::prop_assert_eq!(read_back(&document, "device/loadInformation"), vec![text.load_information.clone()]);
        proptest::prop_assert_eq!(read_back(&document, "device/capfList/capf/processNodeName"), vec![text.capf.clone()]);
    }

    /// A character XML 1.0 cannot carry, in any one free-text field, is refused, naming the
    /// element and not quoting the value; the stub only when it is one of the stub's two fields.
    #[test]
    fn text_xml_cannot_carry_is_refused(
        mut text in free_text_fields(),
        field in 0usize..16,
        at in proptest::prelude::any::<proptest::sample::Index>(),
        bad in proptest::prelude::prop_oneof![
            proptest::prelude::Just('\u{0}'),
            proptest::char::range('\u{1}', '\u{8}'),
            proptest::prelude::Just('\u{B}'),
            proptest::prelude::Just('\u{C}'),
            proptest::char::range('\u{E}', '\u{1F}'),
            proptest::prelude::Just('\u{FFFE}'),
            proptest::prelude::Just('\u{FFFF}'),
        ],
    ) {
        proptest::prop_assert!(!xml_char(bad));
        let value = &mut text.fields_mut()[field];
        let chars: Vec<char> = value.chars().collect();
        // Secure URLs keep their https:// prefix, which the model checks first.
        let position = if field == 12 { 8 + at.index(chars.len() - 7) } else { at.index(chars.len() + 1) };
        **value = chars[..position].iter().chain(std::iter::once(&bad)).chain(&chars[position..]).collect();
        let config = with_free_text(&text);
        let refused = render_full(&config).map(|_| ()).expect_err("rendered a character XML cannot carry");
        let message = refused.to_string();
        proptest::prop_assert!(message.contains("XML 1.0 cannot carry") && message.contains(&format!("U+{:04X}", u32::from(bad))), "{}", message);
        proptest::prop_assert_eq!(render_stub(&config).is_err(), field == 11 || field == 13);
    }
}
