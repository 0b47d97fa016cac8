//! Writes a `PhoneConfig` as XML with quick-xml, which does the escaping. Element order follows the
//! examples of docs/wire-formats.md §6.4 and §6.5 (full file) and §5.5 (stub). Where an element appears in no
//! example (`vpnGroup`, the secure URLs other than `secureServicesURL`), its place is our choice [D].
//! Same model, same bytes: nothing here depends on time, randomness or hash-map order.

use std::io;

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesText, Event};

use super::error::RenderError;
use super::model::*;

type Xml = Writer<Vec<u8>>;

/// The full configuration: `fullConfig` true. With encryption on, this is the plaintext inside
/// `SEP<MAC>.cnf.xml.enc.sgn`; with it off, the payload of `SEP<MAC>.cnf.xml.sgn` (docs/wire-formats.md §5.6).
pub fn render_full(config: &PhoneConfig) -> Result<Vec<u8>, RenderError> {
    config.check()?;
    // The full file of an encrypted phone is only ever encrypted for its certificate (docs/wire-formats.md §5.3);
    // without one there is nothing to encrypt for. The stub needs no certificate.
    if config.encr_config && config.cert_hash.is_none() {
        return Err(RenderError::EncryptionNeedsRsaCertificate { device: config.device_name.clone(), found: None });
    }
    document(|w| write_full(w, config))
}

/// The companion stub of docs/wire-formats.md §5.5: `fullConfig` false and the elements a phone needs to decide
/// whether to fetch the encrypted file or start CAPF. Served as `.sgn` while encryption is on, and
/// unsigned as plain `SEP<MAC>.cnf.xml` (docs/wire-formats.md §5.6).
pub fn render_stub(config: &PhoneConfig) -> Result<Vec<u8>, RenderError> {
    config.check()?;
    document(|w| {
        text(w, "fullConfig", "false")?;
        text(w, "loadInformation", &config.load_information)?;
        text(w, "ipAddressMode", &config.ip_address_mode.code().to_string())?;
        write_capf(w, config)?;
        write_encryption(w, config)
    })
}

fn document(body: impl FnOnce(&mut Xml) -> io::Result<()>) -> Result<Vec<u8>, RenderError> {
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    let written = w
        .write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))
        .and_then(|()| w.create_element("device").write_inner_content(body).map(|_| ()));
    written.map_err(|e| RenderError::Xml(e.to_string()))?;
    let mut bytes = w.into_inner();
    bytes.push(b'\n');
    // Kept for every phone of a cluster until the files are projected: not with up to twice the
    // room its growth left.
    bytes.shrink_to_fit();
    Ok(bytes)
}

fn write_full(w: &mut Xml, c: &PhoneConfig) -> io::Result<()> {
    text(w, "fullConfig", "true")?;
    text(w, "deviceProtocol", c.protocol.cnf_value())?;
    text(w, "ipAddressMode", &c.ip_address_mode.code().to_string())?;
    w.create_element("devicePool").write_inner_content(|w| {
        write_call_manager_group(w, &c.call_managers)?;
        write_srst(w, &c.srst)
    })?;
    write_tvs(w, &c.tvs)?;
    if let Some(profile) = &c.sip_profile {
        write_sip_profile(w, profile)?;
    }
    if let Some(password) = &c.phone_password {
        w.create_element("commonProfile").write_inner_content(|w| text(w, "phonePassword", password.as_str()))?;
    }
    text(w, "loadInformation", &c.load_information)?;
    if let Some(vendor) = &c.vendor_config {
        w.create_element("vendorConfig").write_inner_content(|w| {
            text(w, "disableSpeaker", bool_text(vendor.disable_speaker))?;
            text(w, "disableSpeakerAndHeadset", bool_text(vendor.disable_speaker_and_headset))?;
            text(w, "pcPort", if vendor.pc_port_enabled { "0" } else { "1" })?;
            text(w, "settingsAccess", if vendor.settings_access_enabled { "1" } else { "0" })
        })?;
    }
    text(w, "deviceSecurityMode", &c.security_mode.code().to_string())?;
    for (element, url) in c.secure_urls.elements() {
        text(w, element, url)?;
    }
    if let Some(services) = &c.phone_services {
        w.create_element("phoneServices")
            .with_attribute(("useHTTPS", bool_text(services.use_https)))
            .write_inner_content(|w| text(w, "provisioning", &services.provisioning.to_string()))?;
    }
    if let Some(transport) = c.transport {
        text(w, "transportLayerProtocol", &transport.code().to_string())?;
    }
    if let Some(seconds) = c.tls_resumption_timer {
        text(w, "TLSResumptionTimer", &seconds.to_string())?;
    }
    write_capf(w, c)?;
    write_encryption(w, c)?;
    if let Some(vpn) = &c.vpn_group {
        write_vpn_group(w, vpn)?;
    }
    if let Some(ssh) = &c.ssh {
        text(w, "sshUserId", &ssh.user_id)?;
        text(w, "sshPassword", &ssh.password)?;
    }
    Ok(())
}

fn write_call_manager_group(w: &mut Xml, members: &[CallManagerMember]) -> io::Result<()> {
    w.create_element("callManagerGroup").write_inner_content(|w| {
        w.create_element("members").write_inner_content(|w| {
            for member in members {
                w.create_element("member").with_attribute(("priority", member.priority.to_string().as_str())).write_inner_content(|w| {
                    w.create_element("callManager").write_inner_content(|w| {
                        w.create_element("ports").write_inner_content(|w| {
                            text(w, "ethernetPhonePort", &member.ports.ethernet_phone_port.to_string())?;
                            if let Some(sip) = &member.ports.sip {
                                text(w, "sipPort", &sip.sip_port.to_string())?;
                                text(w, "securedSipPort", &sip.secured_sip_port.to_string())?;
                            }
                            Ok(())
                        })?;
                        text(w, "processNodeName", &member.process_node_name)
                    })?;
                    Ok(())
                })?;
            }
            Ok(())
        })?;
        Ok(())
    })?;
    Ok(())
}

fn write_srst(w: &mut Xml, srst: &SrstInfo) -> io::Result<()> {
    w.create_element("srstInfo").write_inner_content(|w| {
        text(w, "name", &srst.name)?;
        text(w, "srstOption", srst.option.cnf_value())?;
        text(w, "userModifiable", bool_text(srst.user_modifiable))?;
        if let Some(endpoints) = &srst.sccp {
            for (i, endpoint) in endpoints.iter().enumerate() {
                text(w, &format!("ipAddr{}", i + 1), &endpoint.address)?;
                text(w, &format!("port{}", i + 1), &endpoint.port.to_string())?;
            }
        }
        if let Some(endpoints) = &srst.sip {
            for (i, endpoint) in endpoints.iter().enumerate() {
                text(w, &format!("sipIpAddr{}", i + 1), &endpoint.address)?;
                text(w, &format!("sipPort{}", i + 1), &endpoint.port.to_string())?;
            }
        }
        text(w, "isSecure", bool_text(srst.is_secure))
    })?;
    Ok(())
}

fn write_tvs(w: &mut Xml, members: &[TvsMember]) -> io::Result<()> {
    if members.is_empty() {
        return Ok(());
    }
    w.create_element("TVS").write_inner_content(|w| {
        w.create_element("members").write_inner_content(|w| {
            for member in members {
                w.create_element("member").with_attribute(("priority", member.priority.to_string().as_str())).write_inner_content(|w| {
                    text(w, "port", &member.port.to_string())?;
                    text(w, "address", &member.address)
                })?;
            }
            Ok(())
        })?;
        Ok(())
    })?;
    Ok(())
}

fn write_sip_profile(w: &mut Xml, profile: &SipProfile) -> io::Result<()> {
    w.create_element("sipProfile").write_inner_content(|w| {
        w.create_element("sipProxies").write_inner_content(|w| text(w, "registerWithProxy", bool_text(profile.register_with_proxy)))?;
        w.create_element("sipLines").write_inner_content(|w| {
            for line in &profile.lines {
                w.create_element("line")
                    .with_attribute(("button", line.button.to_string().as_str()))
                    .with_attribute(("lineIndex", line.line_index.to_string().as_str()))
                    .write_inner_content(|w| write_line(w, line))?;
            }
            Ok(())
        })?;
        Ok(())
    })?;
    Ok(())
}

fn write_line(w: &mut Xml, line: &SipLine) -> io::Result<()> {
    text(w, "featureID", &line.feature_id.to_string())?;
    text(w, "featureLabel", &line.feature_label)?;
    text(w, "proxy", line.proxy.cnf_value())?;
    text(w, "port", &line.port.to_string())?;
    text(w, "name", &line.name)?;
    text(w, "displayName", &line.display_name)?;
    if let Some(auth) = &line.auth {
        text(w, "authName", &auth.name)?;
        text(w, "authPassword", &auth.password)?;
    }
    text(w, "contact", &line.contact)
}

/// `capfAuthMode` and `capfList`, shared by the full file and the stub.
fn write_capf(w: &mut Xml, c: &PhoneConfig) -> io::Result<()> {
    text(w, "capfAuthMode", &c.capf_auth_mode.code().to_string())?;
    if c.capf_list.is_empty() {
        return Ok(());
    }
    w.create_element("capfList").write_inner_content(|w| {
        for capf in &c.capf_list {
            w.create_element("capf").write_inner_content(|w| {
                text(w, "phonePort", &capf.phone_port.to_string())?;
                text(w, "processNodeName", &capf.process_node_name)
            })?;
        }
        Ok(())
    })?;
    Ok(())
}

/// `certHash` and `encrConfig`, shared by the full file and the stub (docs/wire-formats.md §5.6).
fn write_encryption(w: &mut Xml, c: &PhoneConfig) -> io::Result<()> {
    let hash = c.cert_hash.map(|h| h.to_hex()).unwrap_or_default();
    text(w, "certHash", &hash)?;
    text(w, "encrConfig", bool_text(c.encr_config))
}

fn write_vpn_group(w: &mut Xml, vpn: &VpnGroup) -> io::Result<()> {
    w.create_element("vpnGroup").write_inner_content(|w| {
        w.create_element("credentials").write_inner_content(|w| {
            text(w, "hashAlg", &vpn.hash_algorithm.code().to_string())?;
            for (i, hash) in vpn.cert_hashes.iter().enumerate() {
                text(w, &format!("certHash{}", i + 1), &hash.to_base64())?;
            }
            Ok(())
        })?;
        Ok(())
    })?;
    Ok(())
}

/// `<name>value</name>`; an empty value gives `<name></name>`. quick-xml escapes the markup characters. A
/// carriage return is written `&#13;`: a parser reads a raw one as a line feed (end-of-line handling), so a password
/// holding one would reach the phone changed. A character XML 1.0 cannot carry at all (the C0 controls
/// other than tab, line feed and carriage return, U+FFFE, U+FFFF) is refused rather than written into a file
/// no phone parses; the message names the element and the code point, never the value (a password, say).
fn text(w: &mut Xml, name: &str, value: &str) -> io::Result<()> {
    if let Some(c) = value.chars().find(|&c| !is_xml_char(c)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("<{name}> holds U+{:04X}, a character XML 1.0 cannot carry", u32::from(c)),
        ));
    }
    let escaped = quick_xml::escape::escape(value);
    let escaped = if escaped.contains('\r') { escaped.replace('\r', "&#13;").into() } else { escaped };
    w.create_element(name).write_text_content(BytesText::from_escaped(escaped))?;
    Ok(())
}

/// The characters XML 1.0 allows in a document (its `Char` production).
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// Lowercase booleans, where CUCM writes `False` (docs/wire-formats.md §5.5) [D].
fn bool_text(value: bool) -> &'static str {
    if value { "true" } else { "false" }
}
