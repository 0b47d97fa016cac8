//! `PhoneSecurityProfile`: the SCCP or SIP phone security profile (Chapter 5, Table 5-1, Table 5-2).

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{CapfAuthenticationMode, CommonStatus, DeviceSecurityMode, KeySize, PhoneProtocol};

/// SIP phone transport (Table 5-2).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum SipTransport {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "TLS")]
    Tls,
    /// "TCP + UDP".
    #[serde(rename = "TCPAndUDP")]
    TcpAndUdp,
}

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "callguard.io",
    version = "v1alpha1",
    kind = "PhoneSecurityProfile",
    namespaced,
    status = "PhoneSecurityProfileStatus",
    shortname = "psp",
    category = "callguard",
    doc = "An SCCP or SIP phone security profile (Chapter 5, Table 5-1, Table 5-2)",
    printcolumn(name = "Protocol", type_ = "string", json_path = ".spec.protocol"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.deviceSecurityMode"),
    printcolumn(name = "Phones", type_ = "integer", json_path = ".status.phoneCount"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.protocol == 'SIP' || !has(self.sip)").message("sip settings (Table 5-2) apply only to SIP profiles; an SCCP profile has none (Table 5-1)").field_path(".sip"))]
#[x_kube(validation = Rule::new(SECURE_NEEDS_TLS_RULE).message("Authenticated or Encrypted device security mode requires transportType TLS on a SIP profile (Table 5-2)").field_path(".sip"))]
#[x_kube(validation = Rule::new(NON_SECURE_NO_TLS_RULE).message("transportType TLS requires device security mode Authenticated or Encrypted; Non Secure uses TCP, UDP or TCP + UDP (Table 5-2)").field_path(".sip"))]
pub struct PhoneSecurityProfileSpec {
    /// SCCP or SIP; chosen once (P.5-1, P.5-9).
    #[x_kube(validation = Rule::new("self == oldSelf").message("protocol is immutable (P.5-1)"))]
    pub protocol: PhoneProtocol,
    /// Description shown with the profile name (Table 5-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200))]
    pub description: Option<String>,
    /// Device Security Mode: NonSecure, Authenticated or Encrypted; default NonSecure (Table 5-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_security_mode: Option<DeviceSecurityMode>,
    /// Authentication Mode used by CAPF; default ByAuthenticationString (Table 5-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_mode: Option<CapfAuthenticationMode>,
    /// Key Size of the LSC in bits: 512, 1024 or 2048; default 1024 (Table 5-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_size: Option<KeySize>,
    /// Deliver the phone configuration file encrypted, where the model supports it (Chapter 7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tftp_encrypted_config: Option<bool>,
    /// SIP-only settings (Table 5-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sip: Option<SipPhoneSettings>,
}

const SECURE_NEEDS_TLS_RULE: &str = "!has(self.deviceSecurityMode) || self.deviceSecurityMode == 'NonSecure' || self.protocol != 'SIP' || !has(self.sip) || !has(self.sip.transportType) || self.sip.transportType == 'TLS'";
const NON_SECURE_NO_TLS_RULE: &str = "(has(self.deviceSecurityMode) && self.deviceSecurityMode != 'NonSecure') || !has(self.sip) || !has(self.sip.transportType) || self.sip.transportType != 'TLS'";

/// SIP phone security profile settings (Table 5-2).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SipPhoneSettings {
    /// Transport Type: TCP, UDP, TLS or TCPAndUDP; default TLS in a secure mode, TCP otherwise (Table 5-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_type: Option<SipTransport>,
    /// Enable Digest Authentication: challenge every SIP request of the phone; default false (Table 5-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_digest_authentication: Option<bool>,
    /// Nonce Validity Time in seconds; default 600 (Table 5-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub nonce_validity_seconds: Option<u32>,
    /// SIP Phone Port the phone listens on; default 5060 (Table 5-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 65535))]
    pub sip_phone_port: Option<u16>,
    /// Write the digest user's credentials into configuration files that are not encrypted, as
    /// CallManager 5.0 does with its warning (P.7-9): anyone who can fetch the file over TFTP reads
    /// them. Default false: credentials go only into encrypted files. Ignored for credentials that a
    /// phone asking for an encrypted configuration also uses (P.7-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_digest_credentials_in_clear: Option<bool>,
}

impl PhoneSecurityProfileSpec {
    pub fn device_security_mode(&self) -> DeviceSecurityMode {
        self.device_security_mode.unwrap_or_default()
    }
    pub fn authentication_mode(&self) -> CapfAuthenticationMode {
        self.authentication_mode.unwrap_or_default()
    }
    pub fn key_size(&self) -> KeySize {
        self.key_size.unwrap_or_default()
    }
    pub fn tftp_encrypted_config(&self) -> bool {
        self.tftp_encrypted_config.unwrap_or(false)
    }
    pub fn sip(&self) -> SipPhoneSettings {
        self.sip.clone().unwrap_or_default()
    }
    /// Transport of a SIP profile: TLS for a secure mode unless set (Table 5-2).
    pub fn transport(&self) -> SipTransport {
        self.sip.as_ref().and_then(|s| s.transport_type).unwrap_or(if self.device_security_mode().is_secure() {
            SipTransport::Tls
        } else {
            SipTransport::Tcp
        })
    }
    pub fn digest_enabled(&self) -> bool {
        self.protocol == PhoneProtocol::Sip && self.sip.as_ref().and_then(|s| s.enable_digest_authentication).unwrap_or(false)
    }
}

impl SipPhoneSettings {
    pub fn nonce_validity_seconds(&self) -> u32 {
        self.nonce_validity_seconds.unwrap_or(600)
    }
    pub fn sip_phone_port(&self) -> u16 {
        self.sip_phone_port.unwrap_or(5060)
    }
    pub fn allow_digest_credentials_in_clear(&self) -> bool {
        self.allow_digest_credentials_in_clear.unwrap_or(false)
    }
}

/// Observed state of a profile.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhoneSecurityProfileStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Phones that use this profile (P.5-11).
    #[serde(default)]
    pub phone_count: u32,
}
