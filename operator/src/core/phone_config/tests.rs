//! Unit tests of the model's checks, the renderer's escaping and order, and the resolver's mappings.
//! The golden files of docs/wire-formats.md §10.1 (W-13), the quickstart and the openssl cross-checks are in tests/phone_config.rs.

use super::resolve::{capf_auth_mode, transport};
use super::*;
use crate::api::{CapfAuthenticationMode, SipTransport};

/// A small valid SCCP configuration, the shape of docs/wire-formats.md §6.5.
fn sample() -> PhoneConfig {
    PhoneConfig {
        device_name: "SEP0011223344AA".into(),
        protocol: DeviceProtocol::Sccp,
        ip_address_mode: IpAddressMode::Ipv4Only,
        call_managers: vec![CallManagerMember {
            priority: 0,
            ports: CallManagerPorts { ethernet_phone_port: 2000, sip: None },
            process_node_name: "cm1.voice.example.net".into(),
        }],
        srst: SrstInfo::disabled(),
        tvs: Vec::new(),
        sip_profile: None,
        phone_password: None,
        load_information: String::new(),
        security_mode: SecurityMode::Authenticated,
        secure_urls: SecureUrls::default(),
        phone_services: None,
        transport: None,
        tls_resumption_timer: None,
        capf_auth_mode: CapfAuthMode::NoPendingOperation,
        capf_list: vec![CapfEntry { phone_port: 3804, process_node_name: "capf.voice.example.net".into() }],
        cert_hash: None,
        encr_config: false,
        vpn_group: None,
        ssh: None,
        vendor_config: None,
    }
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("UTF-8")
}

#[test]
fn codes_follow_the_value_tables() {
    // docs/wire-formats.md §6.1.
    assert_eq!([SecurityMode::NonSecure, SecurityMode::Authenticated, SecurityMode::Encrypted].map(SecurityMode::code), [1, 2, 3]);
    assert_eq!(
        [TransportLayerProtocol::Tcp, TransportLayerProtocol::Udp, TransportLayerProtocol::Tls].map(TransportLayerProtocol::code),
        [1, 2, 3]
    );
    let modes = [
        CapfAuthMode::NoPendingOperation,
        CapfAuthMode::AuthenticationString,
        CapfAuthMode::NullString,
        CapfAuthMode::LscThenMic,
        CapfAuthMode::Mic,
    ];
    assert_eq!(modes.map(CapfAuthMode::code), [0, 1, 2, 3, 4]);
}

#[test]
fn profile_authentication_modes_map_to_capf_auth_modes_1_to_4() {
    // docs/wire-formats.md §6.1: 1 string, 2 null string, 3 LSC then MIC, 4 MIC.
    assert_eq!(capf_auth_mode(CapfAuthenticationMode::ByAuthenticationString).code(), 1);
    assert_eq!(capf_auth_mode(CapfAuthenticationMode::ByNullString).code(), 2);
    assert_eq!(capf_auth_mode(CapfAuthenticationMode::ByExistingCertificatePrecedenceLsc).code(), 3);
    assert_eq!(capf_auth_mode(CapfAuthenticationMode::ByExistingCertificatePrecedenceMic).code(), 4);
    assert_eq!(transport(SipTransport::Tls), Some(TransportLayerProtocol::Tls));
    assert_eq!(transport(SipTransport::TcpAndUdp), None);
}

#[test]
fn cert_hash_hex_round_trips_in_lowercase() {
    // The §5.5 placeholder is MD5("hello").
    assert_eq!(CertHash::of_der(b"hello").to_hex(), "5d41402abc4b2a76b9719d911017c592");
    let upper = CertHash::from_hex("5D41402ABC4B2A76B9719D911017C592").expect("hex");
    assert_eq!(upper.to_hex(), "5d41402abc4b2a76b9719d911017c592");
    assert_eq!(CertHash::from_hex("5d41402abc4b2a76b9719d911017c59"), None);
    assert_eq!(CertHash::from_hex("zz41402abc4b2a76b9719d911017c592"), None);
}

#[test]
fn text_is_escaped_by_quick_xml() {
    let mut config = sample();
    config.phone_password = Some("a<b&c>\"d'".into());
    let rendered = render_full(&config).expect("renders");
    let xml = text(&rendered);
    assert!(xml.contains("<phonePassword>a&lt;b&amp;c&gt;&quot;d&apos;</phonePassword>"), "{xml}");
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut parses = true;
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(_) => {}
            Err(_) => {
                parses = false;
                break;
            }
        }
    }
    assert!(parses, "the escaped file parses");
}

#[test]
fn carriage_returns_are_character_references_and_controls_are_refused() {
    let mut config = sample();
    config.phone_password = Some("a\r\nb\tc".into());
    let rendered = render_full(&config).expect("renders");
    assert!(text(&rendered).contains("<phonePassword>a&#13;\nb\tc</phonePassword>"), "{}", text(&rendered));
    for control in ['\0', '\u{1}', '\u{1B}', '\u{FFFE}'] {
        config.phone_password = Some(format!("secret{control}").as_str().into());
        let refused = render_full(&config).expect_err("a character XML 1.0 cannot carry");
        let message = refused.to_string();
        assert!(message.contains("<phonePassword>") && message.contains(&format!("U+{:04X}", u32::from(control))), "{message}");
        assert!(!message.contains("secret"), "the value is not quoted: {message}");
    }
    config.phone_password = None;
    config.load_information = "\u{7}".into();
    assert!(render_stub(&config).is_err(), "the stub too");
}

#[test]
fn stub_has_exactly_the_spec_elements_in_order() {
    // docs/wire-formats.md §5.5: fullConfig, loadInformation, ipAddressMode, capfAuthMode, capfList, certHash, encrConfig.
    let mut config = sample();
    config.cert_hash = Some(CertHash::of_der(b"device"));
    config.encr_config = true;
    let rendered = render_stub(&config).expect("renders");
    let xml = text(&rendered);
    let order =
        ["<fullConfig>false", "<loadInformation>", "<ipAddressMode>0", "<capfAuthMode>0", "<capfList>", "<certHash>", "<encrConfig>true"];
    let positions: Vec<usize> = order.iter().map(|tag| xml.find(tag).unwrap_or_else(|| panic!("{tag} missing in {xml}"))).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{xml}");
    assert!(!xml.contains("deviceSecurityMode") && !xml.contains("devicePool"));
}

#[test]
fn empty_values_render_as_empty_elements() {
    let rendered = render_full(&sample()).expect("renders");
    let xml = text(&rendered);
    assert!(xml.contains("<certHash></certHash>"), "{xml}");
    assert!(xml.contains("<loadInformation></loadInformation>"), "{xml}");
    assert!(!xml.contains("<TVS>"), "no TVS members, no TVS element");
}

#[test]
fn tls_in_mode_1_is_refused_by_the_model() {
    let mut config = sample();
    config.protocol = DeviceProtocol::Sip;
    config.security_mode = SecurityMode::NonSecure;
    config.transport = Some(TransportLayerProtocol::Tls);
    assert!(matches!(render_full(&config), Err(RenderError::TlsWithNonSecureMode { profile: None, .. })));
    config.transport = Some(TransportLayerProtocol::Tcp);
    assert!(render_full(&config).is_ok());
}

#[test]
fn priorities_outside_0_to_4_are_refused() {
    let mut config = sample();
    config.call_managers[0].priority = 5;
    assert!(matches!(render_full(&config), Err(RenderError::PriorityOutOfRange { list: MemberList::CallManagerGroup, priority: 5, .. })));
}

#[test]
fn cert_hash_and_encr_config_go_together() {
    let mut config = sample();
    config.cert_hash = Some(CertHash::of_der(b"device"));
    assert!(matches!(render_full(&config), Err(RenderError::CertHashWithoutEncryption { .. })));
    config.cert_hash = None;
    config.encr_config = true;
    assert!(matches!(render_full(&config), Err(RenderError::EncryptionNeedsRsaCertificate { found: None, .. })));
}

#[test]
fn long_process_node_names_and_bad_secure_urls_are_refused() {
    let mut config = sample();
    config.capf_list[0].process_node_name = "a".repeat(51);
    assert!(matches!(render_full(&config), Err(RenderError::ProcessNodeNameTooLong { .. })));
    config.capf_list[0].process_node_name = "a".repeat(50);
    assert!(render_full(&config).is_ok());

    let mut config = sample();
    config.secure_urls.directory = Some("http://dir.example/".into());
    let err = render_full(&config).expect_err("refused");
    assert!(err.to_string().contains("secureDirectoryURL is not an https:// URL"), "{err}");
    config.secure_urls.directory = Some(format!("https://{}", "d".repeat(248)));
    assert!(matches!(render_full(&config), Err(RenderError::InvalidSecureUrl { element: "secureDirectoryURL", .. })));
}

#[test]
fn more_than_ten_vpn_hashes_are_refused() {
    let mut config = sample();
    let hashes = (0u8..11).map(|i| VpnCertHash::of_der(&[i])).collect();
    config.vpn_group = Some(VpnGroup { hash_algorithm: VpnHashAlgorithm::Sha1, cert_hashes: hashes });
    assert!(matches!(render_full(&config), Err(RenderError::TooManyMembers { list: MemberList::VpnCertHashes, count: 11, max: 10, .. })));
}

#[test]
fn debug_output_hides_passwords() {
    let auth = DigestAuth { name: "alice".into(), password: "FakeAlice123".into() };
    assert!(!format!("{auth:?}").contains("FakeAlice123"));
    let password = SecretText::from("4711-secret");
    assert!(!format!("{password:?}").contains("4711-secret"));
    let ssh = SshCredentials { user_id: "admin".into(), password: "secret-ssh".into() };
    assert!(!format!("{ssh:?}").contains("secret-ssh"));
}
