//! Builds a phone's `PhoneConfig` from its resources. The caller reads Secrets and trust lists and
//! passes the values in (`ResolvedSecrets`, `TrustFacts`, `DeviceCertificate`): this module does no I/O.

use std::fmt;

use kube::ResourceExt;

use super::error::{DeviceKeyKind, MemberList, RenderError};
use super::model::*;
use crate::api::{
    CallControlCluster, CapfAuthenticationMode, CertificateOperation, ClusterSecurityMode, ConfigEncryptionMethod, DeviceSecurityMode,
    Phone, PhoneProtocol, PhoneSecurityProfile, SipTransport, SrstReference, Toggle,
};

/// Secret values the caller has read for this phone. The resolver never reads Secrets itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvedSecrets {
    /// The digest user's name and credentials (`EndUser.spec.userId`, `digestCredentials`).
    pub digest: Option<DigestAuth>,
    /// `commonProfile/phonePassword`; the API has no field for it yet.
    pub phone_password: Option<SecretText>,
}

/// What the configuration needs to know of the device's effective trust list (ITL/CTL).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrustFacts {
    /// The list has a CCM or CCM+TFTP record: required for modes 2 and 3 (docs/wire-formats.md §6.1, §6.3).
    pub has_call_manager_record: bool,
}

/// The device certificate configuration encryption uses: the LSC, or the MIC without an LSC (docs/wire-formats.md §5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceCertificate {
    pub cert_hash: CertHash,
    pub key_kind: DeviceKeyKind,
}

impl DeviceCertificate {
    /// MD5 of the DER and the kind of its public key.
    pub fn from_der(der: &[u8]) -> Result<Self, RenderError> {
        use x509_parser::public_key::PublicKey;
        let (_, certificate) =
            x509_parser::parse_x509_certificate(der).map_err(|e| RenderError::InvalidDeviceCertificate { reason: e.to_string() })?;
        let key_kind = match certificate.public_key().parsed() {
            Ok(PublicKey::RSA(_)) => DeviceKeyKind::Rsa,
            Ok(PublicKey::EC(_)) => DeviceKeyKind::Ec,
            _ => DeviceKeyKind::Other,
        };
        Ok(DeviceCertificate { cert_hash: CertHash::of_der(der), key_kind })
    }
}

/// Whether digest credentials may go into a configuration file that is not encrypted. The caller
/// decides, since it sees the other phones that use the same credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClearCredentials {
    /// The profile opted in, and no phone using the credentials asked for an encrypted file.
    Allowed,
    /// Only an encrypted file may carry them (P.7-1).
    Refused(WithheldReason),
}

/// Why digest credentials were kept out of a file that is not encrypted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WithheldReason {
    /// The profile has not opted in to credentials in clear (`sip.allowDigestCredentialsInClear`).
    NotOptedIn { profile: String },
    /// This phone's own profile asks for an encrypted configuration, which this file is not.
    EncryptionAsked,
    /// Another phone using the same end user asked for an encrypted configuration: its credentials
    /// never go where they would be less protected than that phone's.
    SharedWithEncryptedPhone { user: String, phone: String },
}

impl fmt::Display for WithheldReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WithheldReason::NotOptedIn { profile } => write!(
                f,
                "the file is not encrypted, and PhoneSecurityProfile/{profile} does not set sip.allowDigestCredentialsInClear (P.7-1, P.7-9)"
            ),
            WithheldReason::EncryptionAsked => {
                f.write_str("the profile asks for an encrypted configuration, and this file is not encrypted (P.7-1)")
            }
            WithheldReason::SharedWithEncryptedPhone { user, phone } => write!(
                f,
                "Phone/{phone} also uses EndUser/{user} and asks for an encrypted configuration: the credentials go into no file less protected than that (P.7-1)"
            ),
        }
    }
}

/// Everything one phone's configuration is built from.
#[derive(Clone, Copy, Debug)]
pub struct PhoneConfigInput<'a> {
    pub cluster: &'a CallControlCluster,
    pub phone: &'a Phone,
    /// The PhoneSecurityProfile the phone names.
    pub profile: &'a PhoneSecurityProfile,
    /// The SrstReference the phone names, if any.
    pub srst_reference: Option<&'a SrstReference>,
    pub secrets: &'a ResolvedSecrets,
    pub device_certificate: Option<DeviceCertificate>,
    pub trust: TrustFacts,
    /// The firmware load identifier. The model catalogue has none (the guide gives no load names),
    /// so the caller supplies it; `None` writes an empty `loadInformation`.
    pub load_information: Option<&'a str>,
    /// Whether the digest credentials may be written into a file that is not encrypted.
    pub clear_credentials: &'a ClearCredentials,
}

/// Something the caller should surface as a Phone condition; the configuration is still rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigCondition {
    /// The SRST reference is secure, but `isSecure` stays false until `secureSrstElement` is known (docs/wire-formats.md §9.3).
    SecureSrstUnavailable { srst_reference: String },
    /// The cluster is non-secure, so the file carries mode 1 and no TLS whatever the profile says (P.1-9).
    ClusterNonSecure { profile_mode: DeviceSecurityMode },
    /// The profile enables digest authentication but no credentials were supplied: the phone cannot register (PR5).
    DigestCredentialsMissing,
    /// Digest credentials are in a file that is not encrypted, as the profile opted in to (PR10).
    DigestCredentialsInCleartext,
    /// The credentials are not in the file, so the phone cannot register with digest (PR5).
    DigestCredentialsWithheld { reason: WithheldReason },
    /// The model takes digest credentials only by hand on the phone, so they are not in the file (T8-1 step 6).
    DigestCredentialsEnteredOnPhone,
    /// The profile asks for encryption, but the model uses manual key distribution, whose format is unknown (docs/wire-formats.md §5).
    ManualKeyEncryptionNotRendered,
    /// Hardening settings that differ from the default but have no known element (Chapter 9).
    HardeningNotRendered { settings: Vec<&'static str> },
    /// A certificate operation is asked for and not carried out yet: the file names the
    /// authentication mode, and the phone contacts CAPF (Table 6-2, P.6-6).
    CertificateOperationPending { operation: CertificateOperation },
    /// Encryption is on but the phone has no certificate yet: only the stub is served, with a blank
    /// certHash, until CAPF issues an LSC (docs/wire-formats.md §5.1).
    AwaitingDeviceCertificate,
}

impl ConfigCondition {
    /// The phone does not get the configuration its spec asks for: it is not Ready.
    pub fn is_blocking(&self) -> bool {
        matches!(
            self,
            ConfigCondition::AwaitingDeviceCertificate
                | ConfigCondition::ManualKeyEncryptionNotRendered
                | ConfigCondition::DigestCredentialsWithheld { .. }
                | ConfigCondition::CertificateOperationPending { .. }
        )
    }

    /// The phone works, but with less protection than its objects say: shown as `Downgraded`.
    pub fn is_downgrade(&self) -> bool {
        matches!(
            self,
            ConfigCondition::DigestCredentialsInCleartext
                | ConfigCondition::HardeningNotRendered { .. }
                | ConfigCondition::SecureSrstUnavailable { .. }
                | ConfigCondition::ClusterNonSecure { .. }
        )
    }

    /// The condition type, as written in status.
    pub fn reason(&self) -> &'static str {
        match self {
            ConfigCondition::SecureSrstUnavailable { .. } => "SecureSrstUnavailable",
            ConfigCondition::ClusterNonSecure { .. } => "ClusterNonSecure",
            ConfigCondition::DigestCredentialsMissing => "DigestCredentialsMissing",
            ConfigCondition::DigestCredentialsInCleartext => "DigestCredentialsInCleartext",
            ConfigCondition::DigestCredentialsWithheld { .. } => "DigestCredentialsWithheld",
            ConfigCondition::DigestCredentialsEnteredOnPhone => "DigestCredentialsEnteredOnPhone",
            ConfigCondition::ManualKeyEncryptionNotRendered => "ManualKeyEncryptionNotRendered",
            ConfigCondition::HardeningNotRendered { .. } => "HardeningNotRendered",
            ConfigCondition::AwaitingDeviceCertificate => "AwaitingDeviceCertificate",
            ConfigCondition::CertificateOperationPending { .. } => "CertificateOperationPending",
        }
    }
}

impl fmt::Display for ConfigCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigCondition::SecureSrstUnavailable { srst_reference } => write!(
                f,
                "SrstReference/{srst_reference} is secure, but the cnf.xml element that carries the gateway certificate is unknown: isSecure is written false (docs/wire-formats.md §9.3)"
            ),
            ConfigCondition::ClusterNonSecure { profile_mode } => write!(
                f,
                "the cluster is non-secure, so deviceSecurityMode is 1 and TLS is not used although the profile says {} (P.1-9)",
                profile_mode.label()
            ),
            ConfigCondition::DigestCredentialsMissing => {
                f.write_str("the profile enables digest authentication but the phone has no digest credentials: it cannot register (PR5, P.1-17)")
            }
            ConfigCondition::DigestCredentialsInCleartext => f.write_str(
                "digest credentials are in a configuration file that is not encrypted: anyone who can fetch it over TFTP reads them, as the profile's sip.allowDigestCredentialsInClear accepts (P.7-9)",
            ),
            ConfigCondition::DigestCredentialsWithheld { reason } => write!(
                f,
                "the digest credentials are not written into the file, so the phone cannot register with digest authentication (P.1-17): {reason}"
            ),
            ConfigCondition::DigestCredentialsEnteredOnPhone => {
                f.write_str("this model takes digest credentials only when entered on the phone; they are not in the file (T8-1 step 6)")
            }
            ConfigCondition::ManualKeyEncryptionNotRendered => f.write_str(
                "the profile asks for an encrypted configuration, but this model uses manual key distribution, which Callguard does not implement: only the minimal stub is served, never the full file in clear (P.7-2)",
            ),
            ConfigCondition::CertificateOperationPending { operation } => write!(
                f,
                "the certificate operation {} is pending: the configuration tells the phone to contact CAPF, which carries it out once (Table 6-2, P.6-6)",
                operation.label()
            ),
            ConfigCondition::AwaitingDeviceCertificate => f.write_str(
                "the configuration is to be encrypted but the phone has no certificate yet: only the stub is served, with a blank certHash, until CAPF issues an LSC (docs/wire-formats.md §5.1)",
            ),
            ConfigCondition::HardeningNotRendered { settings } => write!(
                f,
                "hardening settings {} have no known cnf.xml encoding and are not delivered (Chapter 9)",
                settings.join(", ")
            ),
        }
    }
}

/// A resolved configuration and what the caller should report about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// Renders as the full file (`render_full`) and as the stub (`render_stub`).
    pub config: PhoneConfig,
    pub conditions: Vec<ConfigCondition>,
}

/// Builds and checks a phone's configuration, refusing what docs/wire-formats.md §6.3 refuses.
pub fn resolve(input: &PhoneConfigInput<'_>) -> Result<Resolved, RenderError> {
    let PhoneConfigInput {
        cluster,
        phone,
        profile,
        srst_reference,
        secrets,
        device_certificate,
        trust,
        load_information,
        clear_credentials,
    } = *input;
    let device = phone.spec.device_name();
    let cluster_spec = &cluster.spec;
    let profile_spec = &profile.spec;
    let mut conditions = Vec::new();

    if profile_spec.protocol != phone.spec.protocol {
        return Err(RenderError::ProfileProtocolMismatch { phone: phone.name_any(), profile: profile.name_any() });
    }
    let protocol = device_protocol(phone.spec.protocol);
    let mixed = match cluster_spec.security_mode() {
        ClusterSecurityMode::Mixed => true,
        ClusterSecurityMode::NonSecure => false,
    };

    // The profile's own consistency first: TLS with Non Secure is refused whatever the cluster does.
    let profile_transport = match protocol {
        DeviceProtocol::Sccp => None,
        DeviceProtocol::Sip => Some(
            transport(profile_spec.transport())
                .ok_or_else(|| RenderError::TcpAndUdpTransport { device: device.clone(), profile: profile.name_any() })?,
        ),
    };
    let profile_mode = security_mode(profile_spec.device_security_mode());
    if profile_transport == Some(TransportLayerProtocol::Tls) && !profile_mode.is_secure() {
        return Err(RenderError::TlsWithNonSecureMode { device, profile: Some(profile.name_any()) });
    }

    // A non-secure cluster writes mode 1 and falls back to TCP (P.1-9).
    let (security_mode, transport) = if mixed || !profile_mode.is_secure() {
        (profile_mode, profile_transport)
    } else {
        conditions.push(ConfigCondition::ClusterNonSecure { profile_mode: profile_spec.device_security_mode() });
        let downgraded = profile_transport.map(|t| if t == TransportLayerProtocol::Tls { TransportLayerProtocol::Tcp } else { t });
        (SecurityMode::NonSecure, downgraded)
    };
    if security_mode.is_secure() && !trust.has_call_manager_record {
        return Err(RenderError::SecureModeWithoutCallManagerRecord { device, mode: security_mode });
    }

    let ports = cluster_spec.ports();
    let call_manager_nodes: Vec<_> = cluster_spec.nodes.iter().filter(|n| n.services.as_ref().is_none_or(|s| s.call_manager())).collect();
    if call_manager_nodes.is_empty() {
        return Err(RenderError::NoCallManagerNode { cluster: cluster.name_any() });
    }
    if call_manager_nodes.len() > MAX_GROUP_MEMBERS {
        let (count, max) = (call_manager_nodes.len(), MAX_GROUP_MEMBERS);
        return Err(RenderError::TooManyMembers { device, list: MemberList::CallManagerGroup, count, max });
    }
    let call_managers = call_manager_nodes
        .iter()
        .enumerate()
        .map(|(i, node)| CallManagerMember {
            // At most 5 members, so the index fits the 0–4 priorities.
            priority: i as u8,
            ports: CallManagerPorts {
                ethernet_phone_port: ports.ethernet_phone_port(),
                sip: match protocol {
                    DeviceProtocol::Sip => Some(SipPorts { sip_port: ports.sip_port(), secured_sip_port: ports.sip_secure_port() }),
                    DeviceProtocol::Sccp => None,
                },
            },
            process_node_name: node.hostname.clone(),
        })
        .collect();
    let capf_list = cluster_spec
        .nodes
        .iter()
        .filter(|n| cluster_spec.runs_capf(n))
        .map(|n| CapfEntry { phone_port: ports.capf_port(), process_node_name: n.hostname.clone() })
        .collect();

    let srst = match srst_reference {
        None => SrstInfo::disabled(),
        Some(reference) => {
            if reference.spec.is_srst_secure() {
                conditions.push(ConfigCondition::SecureSrstUnavailable { srst_reference: reference.name_any() });
            }
            srst_info(reference, protocol)
        }
    };

    let capf_auth_mode = match phone.spec.capf().certificate_operation() {
        CertificateOperation::NoPendingOperation => CapfAuthMode::NoPendingOperation,
        operation @ (CertificateOperation::InstallUpgrade | CertificateOperation::Delete | CertificateOperation::Troubleshoot) => {
            conditions.push(ConfigCondition::CertificateOperationPending { operation });
            capf_auth_mode(profile_spec.authentication_mode())
        }
    };

    // Encryption: the profile asks, the cluster parameter allows it in mixed mode (P.7-2), and the
    // model uses the public-key method, the only one implemented (docs/wire-formats.md §5).
    let wants_encryption = profile_spec.tftp_encrypted_config() && cluster_spec.tftp_encrypted_configuration() && mixed;
    let public_key_method = match phone.spec.model.config_encryption(phone.spec.protocol) {
        Some(ConfigEncryptionMethod::PhonePublicKey) => true,
        Some(ConfigEncryptionMethod::ManualKey { .. }) => {
            if wants_encryption {
                conditions.push(ConfigCondition::ManualKeyEncryptionNotRendered);
            }
            false
        }
        None => false,
    };
    let encr_config = wants_encryption && public_key_method;
    let cert_hash = if encr_config {
        match device_certificate {
            Some(DeviceCertificate { cert_hash, key_kind: DeviceKeyKind::Rsa }) => Some(cert_hash),
            // No certificate yet: the stub goes out with a blank certHash, which makes the phone start
            // CAPF (docs/wire-formats.md §5.1 step 2); the full file waits for the LSC.
            None => {
                conditions.push(ConfigCondition::AwaitingDeviceCertificate);
                None
            }
            Some(other) => return Err(RenderError::EncryptionNeedsRsaCertificate { device, found: Some(other.key_kind) }),
        }
    } else {
        None
    };

    let sip_profile = match protocol {
        DeviceProtocol::Sccp => None,
        DeviceProtocol::Sip => {
            let auth = if phone.spec.model.digest_credentials_in_config() {
                match (&secrets.digest, encr_config, clear_credentials) {
                    (None, _, _) => {
                        if profile_spec.digest_enabled() {
                            conditions.push(ConfigCondition::DigestCredentialsMissing);
                        }
                        None
                    }
                    // Only the encrypted full file carries them (the stub never does).
                    (Some(digest), true, _) => Some(digest.clone()),
                    (Some(digest), false, ClearCredentials::Allowed) => {
                        conditions.push(ConfigCondition::DigestCredentialsInCleartext);
                        Some(digest.clone())
                    }
                    (Some(_), false, ClearCredentials::Refused(reason)) => {
                        conditions.push(ConfigCondition::DigestCredentialsWithheld { reason: reason.clone() });
                        None
                    }
                }
            } else {
                if profile_spec.digest_enabled() {
                    conditions.push(ConfigCondition::DigestCredentialsEnteredOnPhone);
                }
                None
            };
            Some(sip_profile(phone, ports.sip_port(), auth.as_ref()))
        }
    };

    let hardening = not_rendered_hardening(phone);
    if !hardening.is_empty() {
        conditions.push(ConfigCondition::HardeningNotRendered { settings: hardening });
    }

    let config = PhoneConfig {
        device_name: device,
        protocol,
        ip_address_mode: IpAddressMode::Ipv4Only,
        call_managers,
        srst,
        // TVS is not modelled in the API yet: no TVS element.
        tvs: Vec::new(),
        sip_profile,
        phone_password: secrets.phone_password.clone(),
        load_information: load_information.unwrap_or_default().to_string(),
        security_mode,
        secure_urls: SecureUrls::default(),
        phone_services: None,
        transport,
        // Written with transportLayerProtocol, as in the SIP example (docs/wire-formats.md §6.4).
        tls_resumption_timer: match protocol {
            DeviceProtocol::Sip => Some(DEFAULT_TLS_RESUMPTION_SECONDS),
            DeviceProtocol::Sccp => None,
        },
        capf_auth_mode,
        capf_list,
        cert_hash,
        encr_config,
        vpn_group: None,
        ssh: None,
        vendor_config: Some(vendor_config(phone)),
    };
    config.check()?;
    Ok(Resolved { config, conditions })
}

fn device_protocol(protocol: PhoneProtocol) -> DeviceProtocol {
    match protocol {
        PhoneProtocol::Sccp => DeviceProtocol::Sccp,
        PhoneProtocol::Sip => DeviceProtocol::Sip,
    }
}

fn security_mode(mode: DeviceSecurityMode) -> SecurityMode {
    match mode {
        DeviceSecurityMode::NonSecure => SecurityMode::NonSecure,
        DeviceSecurityMode::Authenticated => SecurityMode::Authenticated,
        DeviceSecurityMode::Encrypted => SecurityMode::Encrypted,
    }
}

/// `None` for TCP + UDP, whose code 4 docs/wire-formats.md §6.3 refuses.
pub(super) fn transport(transport: SipTransport) -> Option<TransportLayerProtocol> {
    match transport {
        SipTransport::Tcp => Some(TransportLayerProtocol::Tcp),
        SipTransport::Udp => Some(TransportLayerProtocol::Udp),
        SipTransport::Tls => Some(TransportLayerProtocol::Tls),
        SipTransport::TcpAndUdp => None,
    }
}

/// The profile's Authentication Mode as `capfAuthMode` 1–4 (docs/wire-formats.md §6.1; Table 5-1, Table 5-2).
pub(super) fn capf_auth_mode(mode: CapfAuthenticationMode) -> CapfAuthMode {
    match mode {
        CapfAuthenticationMode::ByAuthenticationString => CapfAuthMode::AuthenticationString,
        CapfAuthenticationMode::ByNullString => CapfAuthMode::NullString,
        CapfAuthenticationMode::ByExistingCertificatePrecedenceLsc => CapfAuthMode::LscThenMic,
        CapfAuthenticationMode::ByExistingCertificatePrecedenceMic => CapfAuthMode::Mic,
    }
}

/// The gateway in the first slot of the phone's protocol, the other two slots empty (docs/wire-formats.md §6.5).
fn srst_info(reference: &SrstReference, protocol: DeviceProtocol) -> SrstInfo {
    let slots = |port: u16| {
        let endpoint = |address: &str| SrstEndpoint { address: address.to_string(), port };
        [endpoint(&reference.spec.gateway_address), endpoint(""), endpoint("")]
    };
    let (sccp, sip) = match protocol {
        DeviceProtocol::Sccp => (Some(slots(SRST_SCCP_PORT)), None),
        DeviceProtocol::Sip => (None, Some(slots(SRST_SIP_PORT))),
    };
    SrstInfo { name: reference.name_any(), option: SrstOption::Enable, user_modifiable: false, sccp, sip, is_secure: false }
}

/// One line per directory number, in order. The API has no line label, so the display name is the number.
fn sip_profile(phone: &Phone, sip_port: u16, auth: Option<&DigestAuth>) -> SipProfile {
    let lines = phone
        .spec
        .directory_numbers
        .iter()
        .enumerate()
        .map(|(i, number)| {
            // The schema allows at most 16 directory numbers.
            let index = u8::try_from(i + 1).unwrap_or(u8::MAX);
            SipLine {
                button: index,
                line_index: index,
                feature_id: LINE_FEATURE_ID,
                feature_label: number.0.clone(),
                proxy: LineProxy::UseCallManager,
                port: sip_port,
                name: number.0.clone(),
                display_name: number.0.clone(),
                auth: auth.cloned(),
                contact: number.0.clone(),
            }
        })
        .collect();
    SipProfile { register_with_proxy: true, lines }
}

/// The hardening settings with a known `vendorConfig` encoding (P.9-2, P.9-3).
fn vendor_config(phone: &Phone) -> VendorConfig {
    let h = phone.spec.hardening();
    VendorConfig {
        disable_speaker: h.disable_speakerphone(),
        disable_speaker_and_headset: h.disable_speakerphone_and_headset(),
        pc_port_enabled: h.pc_port() == Toggle::Enabled,
        settings_access_enabled: h.settings_access() == Toggle::Enabled,
    }
}

/// The hardening settings that differ from their defaults but whose encoding is not known, so they
/// are not written (see `model`'s module comment).
fn not_rendered_hardening(phone: &Phone) -> Vec<&'static str> {
    let h = phone.spec.hardening();
    [("gratuitousArp", h.gratuitous_arp()), ("webAccess", h.web_access()), ("pcVoiceVlanAccess", h.pc_voice_vlan_access())]
        .into_iter()
        .filter_map(|(name, toggle)| (toggle == Toggle::Disabled).then_some(name))
        .collect()
}
