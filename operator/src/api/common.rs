//! Types shared by several resources: references, closed value sets of the guide, status pieces.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A key of a Secret in the same namespace. Secrets never live in a spec (docs/architecture.md §3.2).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's `data` or `stringData`.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// Device security mode of a phone or trunk profile: "Non Secure", "Authenticated", "Encrypted"
/// (Table 5-1, Table 5-2, Table 14-1).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum DeviceSecurityMode {
    /// No security except image authentication; TCP or UDP signalling.
    #[default]
    NonSecure,
    /// TLS with NULL/SHA: integrity and authentication, no encryption.
    Authenticated,
    /// TLS with AES128/SHA for signalling and SRTP for media (phones).
    Encrypted,
}

impl DeviceSecurityMode {
    /// True for the two modes that need TLS and a certificate on the device.
    pub fn is_secure(self) -> bool {
        !matches!(self, DeviceSecurityMode::NonSecure)
    }
    /// The guide's label.
    pub fn label(self) -> &'static str {
        match self {
            DeviceSecurityMode::NonSecure => "Non Secure",
            DeviceSecurityMode::Authenticated => "Authenticated",
            DeviceSecurityMode::Encrypted => "Encrypted",
        }
    }
}

/// Signalling protocol of a phone and of its security profile (P.5-1).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum PhoneProtocol {
    #[serde(rename = "SCCP")]
    Sccp,
    #[serde(rename = "SIP")]
    Sip,
}

impl PhoneProtocol {
    pub fn label(self) -> &'static str {
        match self {
            PhoneProtocol::Sccp => "SCCP",
            PhoneProtocol::Sip => "SIP",
        }
    }
}

/// How a phone or application authenticates to CAPF (Table 5-1, Table 5-2, Table 11-2).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum CapfAuthenticationMode {
    /// "By Authentication String": the operation runs only when the string is entered on the device.
    #[default]
    ByAuthenticationString,
    /// "By Null String": no user intervention, and no security at all.
    ByNullString,
    /// "By Existing Certificate (Precedence to LSC)".
    #[serde(rename = "ByExistingCertificatePrecedenceLSC")]
    ByExistingCertificatePrecedenceLsc,
    /// "By Existing Certificate (Precedence to MIC)".
    #[serde(rename = "ByExistingCertificatePrecedenceMIC")]
    ByExistingCertificatePrecedenceMic,
}

/// RSA key size of a locally significant certificate: 512, 1024 or 2048 bits (Table 5-1, Table 11-2).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(try_from = "u16", into = "u16")]
pub enum KeySize {
    Bits512,
    #[default]
    Bits1024,
    Bits2048,
}

impl KeySize {
    pub fn bits(self) -> u16 {
        match self {
            KeySize::Bits512 => 512,
            KeySize::Bits1024 => 1024,
            KeySize::Bits2048 => 2048,
        }
    }
}

impl TryFrom<u16> for KeySize {
    type Error = String;
    fn try_from(bits: u16) -> Result<Self, String> {
        match bits {
            512 => Ok(KeySize::Bits512),
            1024 => Ok(KeySize::Bits1024),
            2048 => Ok(KeySize::Bits2048),
            other => Err(format!("key size {other} is not one of 512, 1024, 2048 (Table 5-1)")),
        }
    }
}

impl From<KeySize> for u16 {
    fn from(k: KeySize) -> u16 {
        k.bits()
    }
}

impl JsonSchema for KeySize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "KeySize".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "integer",
            "enum": [512, 1024, 2048],
            "description": "RSA key size in bits: 512, 1024 or 2048 (Table 5-1)"
        })
    }
    fn inline_schema() -> bool {
        true
    }
}

/// The certificate operation CAPF runs for a device (Table 6-2, Table 11-2).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum CertificateOperation {
    /// "No Pending Operation".
    #[default]
    NoPendingOperation,
    /// "Install/Upgrade": install a new LSC or upgrade the existing one.
    InstallUpgrade,
    /// "Delete": delete the LSC (never the MIC).
    Delete,
    /// "Troubleshoot": retrieve the LSC and the MIC into CAPF trace files.
    Troubleshoot,
}

impl CertificateOperation {
    /// As the guide writes it (Table 6-2).
    pub fn label(self) -> &'static str {
        match self {
            CertificateOperation::NoPendingOperation => "No Pending Operation",
            CertificateOperation::InstallUpgrade => "Install/Upgrade",
            CertificateOperation::Delete => "Delete",
            CertificateOperation::Troubleshoot => "Troubleshoot",
        }
    }
}

/// A phone setting that is "Enabled" or "Disabled" (Chapter 9).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Toggle {
    #[default]
    Enabled,
    Disabled,
}

// Which SIP requests are accepted: on a SIP trunk profile for the trunk, on an application user
// for what the application may send when application level authorization is on (Table 14-1, P.1-18).
// A plain comment, not a doc comment: flattened into a spec, a description would land on the spec.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SipMethodAcceptance {
    /// Accept Presence Subscription: SUBSCRIBE requests (Table 14-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_presence_subscription: Option<bool>,
    /// Accept Out-of-Dialog Refer: REFER outside a dialog (Table 14-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_out_of_dialog_refer: Option<bool>,
    /// Accept Unsolicited Notification: NOTIFY outside a subscription (Table 14-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_unsolicited_notification: Option<bool>,
    /// Accept Header Replacement: a dialog that replaces another (Replaces header) (Table 14-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_header_replacement: Option<bool>,
}

/// The standard status fields every Callguard resource carries.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommonStatus {
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling`, `Stalled` and domain conditions, one per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// A resource's status, by the fields every Callguard status has.
pub trait HasCommonStatus {
    fn common(&self) -> &CommonStatus;
}

macro_rules! common_status {
    ($($status:ty),* $(,)?) => {
        $(impl HasCommonStatus for $status {
            fn common(&self) -> &CommonStatus {
                &self.common
            }
        })*
    };
}

common_status!(
    super::CallControlClusterStatus,
    super::SecurityTokenStatus,
    super::PhoneSecurityProfileStatus,
    super::PhoneStatus,
    super::SipTrunkSecurityProfileStatus,
    super::SipTrunkStatus,
    super::SrstReferenceStatus,
    super::GatewayStatus,
    super::UserStatus,
    super::SipRealmStatus,
);

/// What status shows of a certificate; never the key.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSummary {
    pub subject: String,
    pub issuer: String,
    pub serial_number: String,
    pub not_after: String,
    /// SHA-256 fingerprint of the DER certificate, lowercase hex.
    pub sha256: String,
}

/// DNS-1123 label: what Kubernetes accepts as an object name.
pub const DNS1123_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// DNS-1123 subdomain: what Kubernetes accepts as a referenced object name.
pub const DNS1123_SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// Characters of a SIP realm: letters, digits, period, dash, underscore, space (Table 15-3).
pub const REALM_PATTERN: &str = r"^[A-Za-z0-9._\- ]+$";
/// A user ID or digest user name: letters, digits, `.`, `_`, `@`, `-` (T8-2, Table 15-3).
pub const USER_ID_PATTERN: &str = r"^[A-Za-z0-9._@-]+$";
/// Hostname or IPv4/IPv6 literal.
pub const HOST_PATTERN: &str = r"^([A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*$|^[0-9A-Fa-f:.]+$";
