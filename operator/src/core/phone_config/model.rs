//! The typed model of `SEP<MAC>.cnf.xml` (docs/wire-formats.md §6.1): every security element as a field, every
//! closed value set as an enum. `render` writes it; `resolve` builds it from the resources.
//!
//! Hardening (the guide's Chapter 9, P.9-2) goes in the product-specific `vendorConfig` element,
//! which neither spec describes. The element names are those of the configuration files phones are
//! provisioned with in public templates; their encodings agree there only for `settingsAccess`
//! (1 on), `pcPort` (0 on) and the speakerphone switches (`true`/`false`), so only those are
//! rendered. `garp`, `webAccess` and `voiceVlanAccess` appear with either value as the default, so
//! writing them could turn a setting the wrong way: `resolve` reports them as `HardeningNotRendered`
//! instead (a lab check on a phone settles them).
//! Likewise `mgcpPorts` (Callguard runs no MGCP) and `capf6` (docs/wire-formats.md §6.1: not emitted) are left out.

use base64::Engine;
use md5::{Digest, Md5};
use sha1::Sha1;

use super::error::{MemberList, RenderError};

/// At most this many members in the callManager group, TVS and capfList (docs/wire-formats.md §6.1).
pub const MAX_GROUP_MEMBERS: usize = 5;
/// Member priorities run 0–4, lowest tried first (docs/wire-formats.md §6.1).
pub const MAX_PRIORITY: u8 = 4;
/// `processNodeName` is at most 50 characters (docs/wire-formats.md §6.1).
pub const MAX_PROCESS_NODE_NAME: usize = 50;
/// Secure URLs are at most 255 characters (docs/wire-formats.md §6.1).
pub const MAX_SECURE_URL: usize = 255;
/// `vpnGroup/credentials` holds `certHash1` to `certHash10` (docs/wire-formats.md §6.1).
pub const MAX_VPN_CERT_HASHES: usize = 10;
/// `TLSResumptionTimer` default in seconds (docs/wire-formats.md §6.1).
pub const DEFAULT_TLS_RESUMPTION_SECONDS: u32 = 3600;
/// Port of `TVS/members/member/port` (docs/wire-formats.md §6.1).
pub const TVS_PORT: u16 = 2445;
/// SCCP port of an SRST gateway, `srstInfo/portN` (docs/wire-formats.md §6.1).
pub const SRST_SCCP_PORT: u16 = 2000;
/// SIP port of an SRST gateway, `srstInfo/sipPortN` (docs/wire-formats.md §6.1).
pub const SRST_SIP_PORT: u16 = 5060;

/// `deviceProtocol` (docs/wire-formats.md §6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceProtocol {
    Sccp,
    Sip,
}

impl DeviceProtocol {
    pub fn cnf_value(self) -> &'static str {
        match self {
            DeviceProtocol::Sccp => "SCCP",
            DeviceProtocol::Sip => "SIP",
        }
    }
}

/// `deviceSecurityMode`: 1, 2 or 3. Some third-party templates use 0; it is never emitted (docs/wire-formats.md §6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecurityMode {
    NonSecure,
    /// TLS with a NULL cipher.
    Authenticated,
    /// TLS with an AES cipher.
    Encrypted,
}

impl SecurityMode {
    pub fn code(self) -> u8 {
        match self {
            SecurityMode::NonSecure => 1,
            SecurityMode::Authenticated => 2,
            SecurityMode::Encrypted => 3,
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            SecurityMode::NonSecure => "Non Secure",
            SecurityMode::Authenticated => "Authenticated",
            SecurityMode::Encrypted => "Encrypted",
        }
    }
    pub fn is_secure(self) -> bool {
        !matches!(self, SecurityMode::NonSecure)
    }
}

/// `transportLayerProtocol` of a SIP phone (docs/wire-formats.md §6.1). CUCM's undocumented `4` is not modelled:
/// §6.3 allows it only for devices opting into CUCM mirroring, which the API cannot express.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportLayerProtocol {
    Tcp,
    Udp,
    Tls,
}

impl TransportLayerProtocol {
    pub fn code(self) -> u8 {
        match self {
            TransportLayerProtocol::Tcp => 1,
            TransportLayerProtocol::Udp => 2,
            TransportLayerProtocol::Tls => 3,
        }
    }
}

/// `ipAddressMode`. Only `0` appears in the examples (docs/wire-formats.md §5.5, §6.4); no other value is specified.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum IpAddressMode {
    #[default]
    Ipv4Only,
}

impl IpAddressMode {
    pub fn code(self) -> u8 {
        match self {
            IpAddressMode::Ipv4Only => 0,
        }
    }
}

/// `capfAuthMode` (docs/wire-formats.md §6.1); the same numbering as the CAPF AUTH_TYPE element (§7.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CapfAuthMode {
    /// `0`: no CAPF operation pending [D]; its meaning in CUCM output is undocumented.
    #[default]
    NoPendingOperation,
    /// `1`: authentication string.
    AuthenticationString,
    /// `2`: null string.
    NullString,
    /// `3`: LSC, falling back to the MIC.
    LscThenMic,
    /// `4`: MIC.
    Mic,
}

impl CapfAuthMode {
    pub fn code(self) -> u8 {
        match self {
            CapfAuthMode::NoPendingOperation => 0,
            CapfAuthMode::AuthenticationString => 1,
            CapfAuthMode::NullString => 2,
            CapfAuthMode::LscThenMic => 3,
            CapfAuthMode::Mic => 4,
        }
    }
}

/// `…/callManager/ports`. SCCP-TLS is `ethernetPhonePort` + 443; no element carries it (docs/wire-formats.md §6.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallManagerPorts {
    pub ethernet_phone_port: u16,
    /// `sipPort` and `securedSipPort`, written for SIP phones (docs/wire-formats.md §6.4).
    pub sip: Option<SipPorts>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SipPorts {
    pub sip_port: u16,
    pub secured_sip_port: u16,
}

/// `devicePool/callManagerGroup/members/member`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallManagerMember {
    /// 0–4, lowest tried first.
    pub priority: u8,
    pub ports: CallManagerPorts,
    /// Host name or IP, at most 50 characters.
    pub process_node_name: String,
}

/// `srstInfo/srstOption`: the values observed in CUCM output (docs/wire-formats.md §6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SrstOption {
    Disable,
    Enable,
}

impl SrstOption {
    pub fn cnf_value(self) -> &'static str {
        match self {
            SrstOption::Disable => "Disable",
            SrstOption::Enable => "Enable",
        }
    }
}

/// One SRST gateway address and port; an empty address leaves the slot unused (docs/wire-formats.md §6.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrstEndpoint {
    pub address: String,
    pub port: u16,
}

/// `devicePool/srstInfo` (docs/wire-formats.md §6.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrstInfo {
    pub name: String,
    pub option: SrstOption,
    pub user_modifiable: bool,
    /// `ipAddr1..3` + `port1..3`.
    pub sccp: Option<[SrstEndpoint; 3]>,
    /// `sipIpAddr1..3` + `sipPort1..3`.
    pub sip: Option<[SrstEndpoint; 3]>,
    /// True only with a known `secureSrstElement`, which nothing defines yet (docs/wire-formats.md §9.3).
    pub is_secure: bool,
}

impl SrstInfo {
    /// No SRST: the form of the docs/wire-formats.md §6.4 example.
    pub fn disabled() -> Self {
        SrstInfo { name: "Disable".into(), option: SrstOption::Disable, user_modifiable: false, sccp: None, sip: None, is_secure: false }
    }
}

/// `TVS/members/member` (docs/wire-formats.md §6.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TvsMember {
    pub priority: u8,
    pub port: u16,
    pub address: String,
}

/// `capfList/capf` (docs/wire-formats.md §6.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapfEntry {
    pub phone_port: u16,
    pub process_node_name: String,
}

/// `authName` and `authPassword` of a SIP line: the digest user's credentials (P.8-1, Table 8-2).
/// Serialized only into the signaling pods' projection, a Secret.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DigestAuth {
    pub name: String,
    pub password: String,
}

impl Drop for DigestAuth {
    // The password leaves no copy in freed memory.
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.password);
    }
}

impl std::fmt::Debug for DigestAuth {
    // Keeps the password out of logs and test failure output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestAuth").field("name", &self.name).field("password", &"<redacted>").finish()
    }
}

/// `sipLines/line/proxy`: the only value the examples show (docs/wire-formats.md §6.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LineProxy {
    #[default]
    UseCallManager,
}

impl LineProxy {
    pub fn cnf_value(self) -> &'static str {
        match self {
            LineProxy::UseCallManager => "USECALLMANAGER",
        }
    }
}

/// `sipProfile/sipLines/line` (docs/wire-formats.md §6.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SipLine {
    /// `@button` and `@lineIndex`, from 1.
    pub button: u8,
    pub line_index: u8,
    /// `featureID`; the example line of docs/wire-formats.md §6.4 uses 9.
    pub feature_id: u16,
    pub feature_label: String,
    pub proxy: LineProxy,
    /// The line `<port>`; stays the SIP port under TLS, as in CUCM output (docs/wire-formats.md §6.4).
    pub port: u16,
    pub name: String,
    pub display_name: String,
    /// Omitted when the phone has no digest credentials in its file.
    pub auth: Option<DigestAuth>,
    pub contact: String,
}

/// The `featureID` of a line in the example (docs/wire-formats.md §6.4).
pub const LINE_FEATURE_ID: u16 = 9;

/// `sipProfile` (docs/wire-formats.md §6.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SipProfile {
    pub register_with_proxy: bool,
    pub lines: Vec<SipLine>,
}

/// The secure URLs, HTTPS and at most 255 characters each (docs/wire-formats.md §6.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecureUrls {
    pub authentication: Option<String>,
    pub directory: Option<String>,
    pub services: Option<String>,
    pub idle: Option<String>,
    pub information: Option<String>,
    pub messages: Option<String>,
    pub uds_users_access: Option<String>,
}

impl SecureUrls {
    /// The set URLs with their element names, in the order docs/wire-formats.md §6.1 lists them.
    pub fn elements(&self) -> Vec<(&'static str, &str)> {
        [
            ("secureAuthenticationURL", &self.authentication),
            ("secureDirectoryURL", &self.directory),
            ("secureServicesURL", &self.services),
            ("secureIdleURL", &self.idle),
            ("secureInformationURL", &self.information),
            ("secureMessagesURL", &self.messages),
            ("secureUDSUsersAccessURL", &self.uds_users_access),
        ]
        .into_iter()
        .filter_map(|(element, url)| url.as_deref().map(|u| (element, u)))
        .collect()
    }
}

/// `phoneServices` (docs/wire-formats.md §6.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhoneServices {
    /// `@useHTTPS`.
    pub use_https: bool,
    /// `provisioning`; the example of docs/wire-formats.md §6.4 writes 0 and gives no other value.
    pub provisioning: u8,
}

/// `certHash`: MD5 of the device certificate DER, 32 lowercase hex characters (docs/wire-formats.md §5.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CertHash(pub [u8; 16]);

impl CertHash {
    /// Hashes the DER, never the PEM (docs/wire-formats.md §5.5).
    pub fn of_der(der: &[u8]) -> Self {
        CertHash(Md5::digest(der).into())
    }
    /// Parses 32 hex characters, either case.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let bytes = hex.as_bytes();
        if bytes.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let text = std::str::from_utf8(pair).ok()?;
            out[i] = u8::from_str_radix(text, 16).ok()?;
        }
        Some(CertHash(out))
    }
    /// Lowercase hex, as phones compare it (docs/wire-formats.md §5.5).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// `vpnGroup/credentials/hashAlg`: `0` = SHA-1, the only value specified (docs/wire-formats.md §6.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum VpnHashAlgorithm {
    #[default]
    Sha1,
}

impl VpnHashAlgorithm {
    pub fn code(self) -> u8 {
        match self {
            VpnHashAlgorithm::Sha1 => 0,
        }
    }
}

/// `certHashN` of a VPN server: base64(SHA-1(certificate DER)), 28 characters (docs/wire-formats.md §6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VpnCertHash(pub [u8; 20]);

impl VpnCertHash {
    pub fn of_der(der: &[u8]) -> Self {
        VpnCertHash(Sha1::digest(der).into())
    }
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }
}

/// `vpnGroup/credentials` (docs/wire-formats.md §6.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VpnGroup {
    pub hash_algorithm: VpnHashAlgorithm,
    /// Written as `certHash1`, `certHash2`, …; at most 10.
    pub cert_hashes: Vec<VpnCertHash>,
}

/// A secret value of the file (`phonePassword`), kept out of `Debug` output.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretText(pub String);

impl SecretText {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SecretText {
    fn from(text: &str) -> Self {
        SecretText(text.to_string())
    }
}

impl Drop for SecretText {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `sshUserId` and `sshPassword` (docs/wire-formats.md §6.1).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SshCredentials {
    pub user_id: String,
    pub password: String,
}

impl std::fmt::Debug for SshCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshCredentials").field("user_id", &self.user_id).field("password", &"<redacted>").finish()
    }
}

/// A phone's whole configuration file. `render::render_full` writes it with `fullConfig` true,
/// `render::render_stub` writes the §5.5 companion stub from the same model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhoneConfig {
    /// `SEP<MAC>`: names the file and the messages; not an element.
    pub device_name: String,
    pub protocol: DeviceProtocol,
    pub ip_address_mode: IpAddressMode,
    pub call_managers: Vec<CallManagerMember>,
    pub srst: SrstInfo,
    /// Empty: no `TVS` element.
    pub tvs: Vec<TvsMember>,
    /// SIP phones only.
    pub sip_profile: Option<SipProfile>,
    /// `commonProfile/phonePassword`.
    pub phone_password: Option<SecretText>,
    /// The firmware load identifier; empty writes an empty element.
    pub load_information: String,
    pub security_mode: SecurityMode,
    pub secure_urls: SecureUrls,
    pub phone_services: Option<PhoneServices>,
    /// SIP only; SCCP has no `transportLayerProtocol` (docs/wire-formats.md §6.5).
    pub transport: Option<TransportLayerProtocol>,
    /// `TLSResumptionTimer` in seconds.
    pub tls_resumption_timer: Option<u32>,
    pub capf_auth_mode: CapfAuthMode,
    /// Empty: no `capfList` element.
    pub capf_list: Vec<CapfEntry>,
    /// `None` writes an empty `certHash` (encryption off, docs/wire-formats.md §5.6).
    pub cert_hash: Option<CertHash>,
    pub encr_config: bool,
    pub vpn_group: Option<VpnGroup>,
    pub ssh: Option<SshCredentials>,
    /// `vendorConfig`: the hardening settings with a known encoding; `None` writes no element.
    pub vendor_config: Option<VendorConfig>,
}

/// The hardening settings of `vendorConfig` whose encoding is known (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VendorConfig {
    /// `disableSpeaker` (P.9-3).
    pub disable_speaker: bool,
    /// `disableSpeakerAndHeadset` (P.9-3).
    pub disable_speaker_and_headset: bool,
    /// `pcPort`: 0 enabled, 1 disabled (P.9-2).
    pub pc_port_enabled: bool,
    /// `settingsAccess`: 1 enabled, 0 disabled (P.9-2).
    pub settings_access_enabled: bool,
}

impl PhoneConfig {
    /// The refusals of docs/wire-formats.md §6.3 that the model alone decides; `resolve` adds those that need
    /// the trust list and the device certificate.
    pub fn check(&self) -> Result<(), RenderError> {
        let device = || self.device_name.clone();
        if self.transport == Some(TransportLayerProtocol::Tls) && !self.security_mode.is_secure() {
            return Err(RenderError::TlsWithNonSecureMode { device: device(), profile: None });
        }
        check_priorities(&self.device_name, MemberList::CallManagerGroup, self.call_managers.iter().map(|m| m.priority))?;
        check_priorities(&self.device_name, MemberList::Tvs, self.tvs.iter().map(|m| m.priority))?;
        check_count(&self.device_name, MemberList::CapfList, self.capf_list.len(), MAX_GROUP_MEMBERS)?;
        if let Some(vpn) = &self.vpn_group {
            check_count(&self.device_name, MemberList::VpnCertHashes, vpn.cert_hashes.len(), MAX_VPN_CERT_HASHES)?;
        }
        let node_names = self.call_managers.iter().map(|m| &m.process_node_name).chain(self.capf_list.iter().map(|c| &c.process_node_name));
        for name in node_names {
            if name.chars().count() > MAX_PROCESS_NODE_NAME {
                return Err(RenderError::ProcessNodeNameTooLong { device: device(), name: name.clone() });
            }
        }
        if self.srst.is_secure {
            return Err(RenderError::SecureSrstWithoutElement { device: device() });
        }
        if !self.encr_config && self.cert_hash.is_some() {
            return Err(RenderError::CertHashWithoutEncryption { device: device() });
        }
        for (element, url) in self.secure_urls.elements() {
            let reason = if url.chars().count() > MAX_SECURE_URL {
                Some("is longer than 255 characters")
            } else if !url.starts_with("https://") {
                Some("is not an https:// URL")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(RenderError::InvalidSecureUrl { device: device(), element, reason });
            }
        }
        Ok(())
    }
}

fn check_count(device: &str, list: MemberList, count: usize, max: usize) -> Result<(), RenderError> {
    if count > max {
        return Err(RenderError::TooManyMembers { device: device.to_string(), list, count, max });
    }
    Ok(())
}

fn check_priorities(device: &str, list: MemberList, priorities: impl ExactSizeIterator<Item = u8>) -> Result<(), RenderError> {
    check_count(device, list, priorities.len(), MAX_GROUP_MEMBERS)?;
    let mut seen = [false; MAX_PRIORITY as usize + 1];
    for priority in priorities {
        let slot = seen.get_mut(usize::from(priority)).ok_or_else(|| RenderError::PriorityOutOfRange {
            device: device.to_string(),
            list,
            priority,
        })?;
        if *slot {
            return Err(RenderError::DuplicatePriority { device: device.to_string(), list, priority });
        }
        *slot = true;
    }
    Ok(())
}
