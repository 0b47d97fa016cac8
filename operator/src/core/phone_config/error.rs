//! Why a phone configuration is refused (docs/wire-formats.md §6.3). Each message names the device or resource,
//! the field, the rule and its section of docs/wire-formats.md, so that a Phone's condition explains itself.

use std::fmt;

use super::model::SecurityMode;

/// A list of the configuration whose size or priorities are limited (docs/wire-formats.md §6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberList {
    /// `devicePool/callManagerGroup/members`.
    CallManagerGroup,
    /// `TVS/members`.
    Tvs,
    /// `capfList`.
    CapfList,
    /// `vpnGroup/credentials/certHashN`.
    VpnCertHashes,
}

impl MemberList {
    /// The element path as written in the configuration file.
    pub fn element(self) -> &'static str {
        match self {
            MemberList::CallManagerGroup => "devicePool/callManagerGroup/members",
            MemberList::Tvs => "TVS/members",
            MemberList::CapfList => "capfList",
            MemberList::VpnCertHashes => "vpnGroup/credentials/certHashN",
        }
    }
}

/// The key of a device certificate, as far as configuration encryption cares (docs/wire-formats.md §5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKeyKind {
    Rsa,
    Ec,
    /// Any other public-key algorithm.
    Other,
}

/// A refusal to build or render a phone configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RenderError {
    /// `transportLayerProtocol` 3 (TLS) with `deviceSecurityMode` 1.
    TlsWithNonSecureMode { device: String, profile: Option<String> },
    /// `transportLayerProtocol` 4 (TCP + UDP): undefined publicly, and the API has no CUCM-mirroring opt-in.
    TcpAndUdpTransport { device: String, profile: String },
    /// Mode 2 or 3 while the device's effective trust list has no CCM or CCM+TFTP record.
    SecureModeWithoutCallManagerRecord { device: String, mode: SecurityMode },
    /// More than 5 members in a list (10 for VPN certificate hashes).
    TooManyMembers { device: String, list: MemberList, count: usize, max: usize },
    /// Two members of one list share a priority.
    DuplicatePriority { device: String, list: MemberList, priority: u8 },
    /// A priority outside 0–4.
    PriorityOutOfRange { device: String, list: MemberList, priority: u8 },
    /// `isSecure` true although no `secureSrstElement` is known (docs/wire-formats.md §9.3).
    SecureSrstWithoutElement { device: String },
    /// `encrConfig` true without an RSA device certificate; `found` is the key kind of the certificate there is.
    EncryptionNeedsRsaCertificate { device: String, found: Option<DeviceKeyKind> },
    /// A `certHash` while `encrConfig` is false: with encryption off the hash is empty (docs/wire-formats.md §5.6).
    CertHashWithoutEncryption { device: String },
    /// No node of the cluster runs the CallManager service, so the group would be empty.
    NoCallManagerNode { cluster: String },
    /// The phone's protocol differs from its security profile's (P.5-9).
    ProfileProtocolMismatch { phone: String, profile: String },
    /// `processNodeName` longer than 50 characters (docs/wire-formats.md §6.1).
    ProcessNodeNameTooLong { device: String, name: String },
    /// A secure URL that is not HTTPS or is longer than 255 characters (docs/wire-formats.md §6.1).
    InvalidSecureUrl { device: String, element: &'static str, reason: &'static str },
    /// A device certificate that does not parse as X.509 DER.
    InvalidDeviceCertificate { reason: String },
    /// The XML writer failed; writing to memory does not, so this reports a bug.
    Xml(String),
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenderError::TlsWithNonSecureMode { device, profile } => {
                let source = profile.as_ref().map(|p| format!(" (PhoneSecurityProfile/{p}: sip.transportType TLS)")).unwrap_or_default();
                write!(
                    f,
                    "{device}: transportLayerProtocol 3 (TLS) with deviceSecurityMode 1 (Non Secure){source}: TLS needs mode 2 or 3 (docs/wire-formats.md §6.3; Table 5-2)"
                )
            }
            RenderError::TcpAndUdpTransport { device, profile } => write!(
                f,
                "{device}: PhoneSecurityProfile/{profile}: sip.transportType TCPAndUDP would be transportLayerProtocol 4, which is undefined publicly and rendered only for devices that opt into CUCM mirroring; the API has no such opt-in (docs/wire-formats.md §6.1, §6.3)"
            ),
            RenderError::SecureModeWithoutCallManagerRecord { device, mode } => write!(
                f,
                "{device}: deviceSecurityMode {} ({}) needs a CCM or CCM+TFTP record in the device's effective trust list, and there is none (docs/wire-formats.md §6.3, §6.1)",
                mode.code(),
                mode.label()
            ),
            RenderError::TooManyMembers { device, list, count, max } => {
                write!(f, "{device}: {} has {count} entries; at most {max} are allowed (docs/wire-formats.md §6.3, §6.1)", list.element())
            }
            RenderError::DuplicatePriority { device, list, priority } => {
                write!(
                    f,
                    "{device}: two members of {} have priority {priority}; priorities must be distinct (docs/wire-formats.md §6.3)",
                    list.element()
                )
            }
            RenderError::PriorityOutOfRange { device, list, priority } => {
                write!(
                    f,
                    "{device}: a member of {} has priority {priority}; priorities are 0 to 4 (docs/wire-formats.md §6.1)",
                    list.element()
                )
            }
            RenderError::SecureSrstWithoutElement { device } => write!(
                f,
                "{device}: srstInfo/isSecure true needs the secureSrstElement, whose name and encoding are unknown; isSecure stays false (docs/wire-formats.md §6.3, §9.3)"
            ),
            RenderError::EncryptionNeedsRsaCertificate { device, found } => {
                let what = match found {
                    None => "no device certificate is known".to_string(),
                    Some(kind) => format!("the device certificate has a {kind:?} key"),
                };
                write!(
                    f,
                    "{device}: encrConfig true needs an RSA device certificate (LSC, or MIC without LSC), but {what} (docs/wire-formats.md §6.3, §5.3)"
                )
            }
            RenderError::CertHashWithoutEncryption { device } => {
                write!(
                    f,
                    "{device}: certHash is set while encrConfig is false; with encryption off certHash is empty (docs/wire-formats.md §5.6)"
                )
            }
            RenderError::NoCallManagerNode { cluster } => write!(
                f,
                "CallControlCluster/{cluster}: nodes: no node runs the CallManager service, so devicePool/callManagerGroup would be empty (docs/wire-formats.md §6.1)"
            ),
            RenderError::ProfileProtocolMismatch { phone, profile } => {
                write!(f, "Phone/{phone}: protocol differs from PhoneSecurityProfile/{profile}'s protocol (P.5-9)")
            }
            RenderError::ProcessNodeNameTooLong { device, name } => write!(
                f,
                "{device}: processNodeName {name:?} has {} characters; at most 50 are allowed (docs/wire-formats.md §6.1)",
                name.chars().count()
            ),
            RenderError::InvalidSecureUrl { device, element, reason } => {
                write!(f, "{device}: {element} {reason} (docs/wire-formats.md §6.1)")
            }
            RenderError::InvalidDeviceCertificate { reason } => {
                write!(f, "device certificate: not X.509 DER: {reason} (docs/wire-formats.md §5.5)")
            }
            RenderError::Xml(reason) => write!(f, "writing the configuration XML failed: {reason}"),
        }
    }
}

impl std::error::Error for RenderError {}
