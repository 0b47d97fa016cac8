//! `SipTrunkSecurityProfile`: every setting of Table 14-1 (Chapter 14).

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{CommonStatus, DeviceSecurityMode, SipMethodAcceptance};

/// Incoming Transport Type of a SIP trunk (Table 14-1, and the value set of later releases).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum IncomingTransport {
    /// "TCP+UDP".
    #[serde(rename = "TCPAndUDP")]
    TcpAndUdp,
    #[serde(rename = "TLS")]
    Tls,
}

/// Outgoing Transport Type of a SIP trunk (Table 14-1, and the value set of later releases).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum OutgoingTransport {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "TLS")]
    Tls,
}

/// Characters that separate X.509 subject names (Table 14-1).
pub const SUBJECT_NAME_SEPARATORS: [char; 4] = [' ', ',', ';', ':'];

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "callguard.io",
    version = "v1alpha1",
    kind = "SipTrunkSecurityProfile",
    namespaced,
    status = "SipTrunkSecurityProfileStatus",
    shortname = "stsp",
    category = "callguard",
    doc = "A SIP trunk security profile: every setting of Table 14-1 (Chapter 14)",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.deviceSecurityMode"),
    printcolumn(name = "Incoming", type_ = "string", json_path = ".spec.incomingTransportType"),
    printcolumn(name = "Port", type_ = "integer", json_path = ".spec.incomingPort"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.incomingTransportType) || self.incomingTransportType != 'TLS' || (has(self.outgoingTransportType) && self.outgoingTransportType == 'TLS')").message("Incoming Transport Type TLS requires Outgoing Transport Type TLS (Table 14-1)").field_path(".outgoingTransportType"))]
#[x_kube(validation = Rule::new(SECURE_NEEDS_TLS_RULE).message("Authenticated or Encrypted device security mode requires incoming and outgoing transport TLS (Table 14-1)").field_path(".deviceSecurityMode"))]
#[x_kube(validation = Rule::new("!has(self.x509SubjectName) || (has(self.incomingTransportType) && self.incomingTransportType == 'TLS' && has(self.outgoingTransportType) && self.outgoingTransportType == 'TLS')").message("X.509 Subject Name applies only when incoming and outgoing transport are TLS (Table 14-1)").field_path(".x509SubjectName"))]
#[x_kube(validation = Rule::new("!has(self.enableApplicationLevelAuthorization) || !self.enableApplicationLevelAuthorization || (has(self.enableDigestAuthentication) && self.enableDigestAuthentication)").message("Enable Application Level Authorization requires Enable Digest Authentication (Table 14-1)").field_path(".enableApplicationLevelAuthorization"))]
pub struct SipTrunkSecurityProfileSpec {
    /// Description; at most 50 characters, none of `" % & \ < >` (Table 14-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 50), regex(pattern = r#"^[^"%&\\<>]*$"#))]
    pub description: Option<String>,
    /// Device Security Mode; default NonSecure. SIP trunks never carry SRTP (Table 14-1, P.13-4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_security_mode: Option<DeviceSecurityMode>,
    /// Incoming Transport Type: TCPAndUDP or TLS; default TCPAndUDP (Table 14-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incoming_transport_type: Option<IncomingTransport>,
    /// Outgoing Transport Type: TCP, UDP or TLS; default TCP (Table 14-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outgoing_transport_type: Option<OutgoingTransport>,
    /// Enable Digest Authentication of the user agent behind the trunk; default false (Table 14-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_digest_authentication: Option<bool>,
    /// Nonce Validity Time in seconds; default 600 (Table 14-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub nonce_validity_seconds: Option<u32>,
    /// X.509 Subject Name(s) of the TLS peers, separated by space, comma, semicolon or colon; at most 4096 characters (Table 14-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096), regex(pattern = r"^[ ,;:]*[^ ,;:]+([ ,;:]+[^ ,;:]+)*[ ,;:]*$"))]
    pub x509_subject_name: Option<String>,
    /// Incoming Port for every trunk using the profile; default 5060 (Table 14-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 65535))]
    pub incoming_port: Option<u16>,
    /// Enable Application Level Authorization; needs digest authentication (Table 14-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_application_level_authorization: Option<bool>,
    /// Which out-of-dialog SIP requests the trunk accepts (Table 14-1).
    #[serde(flatten)]
    pub accept: SipMethodAcceptance,
}

const SECURE_NEEDS_TLS_RULE: &str = "!has(self.deviceSecurityMode) || self.deviceSecurityMode == 'NonSecure' || (has(self.incomingTransportType) && self.incomingTransportType == 'TLS' && has(self.outgoingTransportType) && self.outgoingTransportType == 'TLS')";

impl SipTrunkSecurityProfileSpec {
    pub fn device_security_mode(&self) -> DeviceSecurityMode {
        self.device_security_mode.unwrap_or_default()
    }
    pub fn incoming_transport(&self) -> IncomingTransport {
        self.incoming_transport_type.unwrap_or(IncomingTransport::TcpAndUdp)
    }
    pub fn outgoing_transport(&self) -> OutgoingTransport {
        self.outgoing_transport_type.unwrap_or(OutgoingTransport::Tcp)
    }
    pub fn digest_enabled(&self) -> bool {
        self.enable_digest_authentication.unwrap_or(false)
    }
    pub fn nonce_validity_seconds(&self) -> u32 {
        self.nonce_validity_seconds.unwrap_or(600)
    }
    pub fn incoming_port(&self) -> u16 {
        self.incoming_port.unwrap_or(5060)
    }
    /// The subject names, split on the separators of Table 14-1.
    pub fn subject_names(&self) -> Vec<&str> {
        self.x509_subject_name.as_deref().map(|s| s.split(SUBJECT_NAME_SEPARATORS).filter(|n| !n.is_empty()).collect()).unwrap_or_default()
    }
    pub fn application_level_authorization(&self) -> bool {
        self.enable_application_level_authorization.unwrap_or(false)
    }
}

/// Observed state of a trunk profile.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SipTrunkSecurityProfileStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Trunks that use this profile (P.14-8).
    #[serde(default)]
    pub trunk_count: u32,
}
