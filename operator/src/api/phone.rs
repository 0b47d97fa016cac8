//! `Phone`: a device, its profile, digest user, CAPF operation, encrypted configuration and
//! hardening (Chapters 4 to 9).

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{CertificateOperation, CertificateSummary, CommonStatus, DeviceSecurityMode, PhoneModel, PhoneProtocol, SecretKeyRef, Toggle};

/// A phone's MAC address: twelve hex digits, kept upper-case. The device name is `SEP<MAC>` (P.5-9).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddress(String);

impl MacAddress {
    /// The device name, `SEP` and the MAC, as in the TFTP file names (docs/wire-formats.md §3.1).
    pub fn device_name(&self) -> String {
        format!("SEP{}", self.0)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MacAddress {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.len() == 12 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(MacAddress(s.to_ascii_uppercase()))
        } else {
            Err(format!("MAC address {s:?} is not twelve hexadecimal digits"))
        }
    }
}

impl From<MacAddress> for String {
    fn from(m: MacAddress) -> String {
        m.0
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for MacAddress {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MacAddress".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9A-Fa-f]{12}$",
            "description": "MAC address, twelve hexadecimal digits; the device name is SEP<MAC> (P.5-9)"
        })
    }
    fn inline_schema() -> bool {
        true
    }
}

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "callguard.io",
    version = "v1alpha1",
    kind = "Phone",
    namespaced,
    status = "PhoneStatus",
    shortname = "ph",
    category = "callguard",
    doc = "A Cisco IP phone: profile, digest user, CAPF operation, encrypted configuration, hardening (Chapters 4 to 9)",
    printcolumn(name = "MAC", type_ = "string", json_path = ".spec.macAddress"),
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.model"),
    printcolumn(name = "Protocol", type_ = "string", json_path = ".spec.protocol"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".status.effectiveDeviceSecurityMode"),
    printcolumn(name = "LSC", type_ = "string", json_path = ".status.lscState"),
    printcolumn(name = "Downgraded", type_ = "string", json_path = ".status.conditions[?(@.type==\"Downgraded\")].reason"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.protocol == 'SIP' || !has(self.digestUserRef)").message("a digest user applies only to SIP phones (Chapter 8)").field_path(".digestUserRef"))]
#[x_kube(validation = Rule::new("!(self.model in ['7905', '7912']) || self.protocol == 'SIP'").message("models 7905 and 7912 run SIP only (P.7-4)").field_path(".protocol"))]
#[x_kube(validation = Rule::new(MANUAL_KEY_RULE).message("a manual symmetric key applies only to SIP phones of models 7905, 7912, 7940 and 7960 (Table 7-2)").field_path(".configEncryption"))]
#[x_kube(validation = Rule::new("self.model != '7912' || !has(self.hardening) || !has(self.hardening.pcVoiceVlanAccess) || self.hardening.pcVoiceVlanAccess == 'Enabled'").message("model 7912 cannot disable PC Voice VLAN Access (P.9-2)").field_path(".hardening.pcVoiceVlanAccess"))]
pub struct PhoneSpec {
    /// MAC address; the device name is SEP<MAC>. Immutable (P.5-9).
    #[x_kube(validation = Rule::new("self == oldSelf").message("macAddress is immutable: create a new Phone (P.5-9)"))]
    pub mac_address: MacAddress,
    /// Phone model (P.4-2, P.7-4).
    pub model: PhoneModel,
    /// SCCP or SIP; must match the profile's protocol (P.5-9).
    pub protocol: PhoneProtocol,
    /// The PhoneSecurityProfile of the phone's protocol; every phone has one (P.5-1).
    #[schemars(length(min = 1, max = 253))]
    pub security_profile_ref: String,
    /// Description (P.5-11).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200))]
    pub description: Option<String>,
    /// Digest User: the EndUser whose digest credentials the phone uses (P.8-5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub digest_user_ref: Option<String>,
    /// The SrstReference of the phone's device pool (T12-1 step 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub srst_reference_ref: Option<String>,
    /// Directory numbers of the phone's lines; a shared line joins phones (P.4-2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    pub directory_numbers: Vec<DirectoryNumber>,
    /// CAPF certificate operation (Table 6-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capf: Option<PhoneCapf>,
    /// Manual key distribution of an encrypted configuration (Table 7-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_encryption: Option<ManualKeyDistribution>,
    /// Phone hardening settings (Chapter 9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardening: Option<PhoneHardening>,
}

const MANUAL_KEY_RULE: &str = "!has(self.configEncryption) || (self.protocol == 'SIP' && self.model in ['7905', '7912', '7940', '7960'])";

/// A directory number: digits, `*`, `#` and a leading `+` (P.4-2).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[serde(transparent)]
pub struct DirectoryNumber(#[schemars(regex(pattern = r"^\+?[0-9*#]{1,24}$"))] pub String);

/// The CAPF settings of the Phone Configuration window (Table 6-2).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.certificateOperation) || self.certificateOperation == 'NoPendingOperation' || has(self.operationCompletesBy)").message("a certificate operation other than NoPendingOperation requires operationCompletesBy (Table 6-2)").field_path(".operationCompletesBy"))]
pub struct PhoneCapf {
    /// Certificate Operation; default NoPendingOperation (Table 6-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_operation: Option<CertificateOperation>,
    /// Authentication String, 4 to 10 digits, single use; only with By Authentication String (Table 6-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_string: Option<SecretKeyRef>,
    /// Operation Completes by: the deadline, read on the first node (Table 6-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_completes_by: Option<Time>,
}

impl PhoneCapf {
    pub fn certificate_operation(&self) -> CertificateOperation {
        self.certificate_operation.unwrap_or_default()
    }
}

/// Manual key distribution (Table 7-2): the symmetric key, hex, 128 bits (7940, 7960) or 256 bits
/// (7905, 7912). Immutable once set (P.7-6).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManualKeyDistribution {
    /// The Symmetric Key, hexadecimal (Table 7-2).
    pub symmetric_key: SecretKeyRef,
}

/// Phone hardening (Chapter 9): each setting Enabled by default.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhoneHardening {
    /// Gratuitous ARP: Disabled stops the phone accepting GARP (P.9-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gratuitous_arp: Option<Toggle>,
    /// Web Access: Disabled closes HTTP port 80 on the phone (P.9-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_access: Option<Toggle>,
    /// PC Voice VLAN Access: Disabled drops voice-VLAN packets from the PC port; not on 7912 (P.9-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pc_voice_vlan_access: Option<Toggle>,
    /// Settings Access: Disabled locks the Settings button (P.9-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings_access: Option<Toggle>,
    /// PC Port: Disabled turns off the phone's PC port (P.9-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pc_port: Option<Toggle>,
    /// Disable Speakerphone (P.9-3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_speakerphone: Option<bool>,
    /// Disable Speakerphone and Headset (P.9-3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_speakerphone_and_headset: Option<bool>,
}

impl PhoneHardening {
    pub fn gratuitous_arp(&self) -> Toggle {
        self.gratuitous_arp.unwrap_or_default()
    }
    pub fn web_access(&self) -> Toggle {
        self.web_access.unwrap_or_default()
    }
    pub fn pc_voice_vlan_access(&self) -> Toggle {
        self.pc_voice_vlan_access.unwrap_or_default()
    }
    pub fn settings_access(&self) -> Toggle {
        self.settings_access.unwrap_or_default()
    }
    pub fn pc_port(&self) -> Toggle {
        self.pc_port.unwrap_or_default()
    }
    pub fn disable_speakerphone(&self) -> bool {
        self.disable_speakerphone.unwrap_or(false)
    }
    pub fn disable_speakerphone_and_headset(&self) -> bool {
        self.disable_speakerphone_and_headset.unwrap_or(false)
    }
}

impl PhoneSpec {
    pub fn device_name(&self) -> String {
        self.mac_address.device_name()
    }
    pub fn capf(&self) -> PhoneCapf {
        self.capf.clone().unwrap_or_default()
    }
    pub fn hardening(&self) -> PhoneHardening {
        self.hardening.clone().unwrap_or_default()
    }
}

/// Where a phone's locally significant certificate stands (Table 6-2 "Operation Status").
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum LscState {
    #[default]
    None,
    Pending,
    InProgress,
    Installed,
    Failed,
    Expired,
}

/// Observed state of a phone.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhoneStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// The mode written into the configuration file: NonSecure while the cluster is (P.1-9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_device_security_mode: Option<DeviceSecurityMode>,
    /// LSC state (Table 6-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsc_state: Option<LscState>,
    /// "Operation Status", e.g. `Install/Upgrade pending` (Table 6-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_status: Option<String>,
    /// The issued LSC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsc: Option<CertificateSummary>,
    /// Consecutive wrong authentication strings, absent when none; 10 lock CAPF out for 10 minutes
    /// (P.16-6).
    // Not defaulted to 0 in the schema: the operator writes none, and a 0 read back would make
    // every phone's status look changed at every reconcile.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub consecutive_auth_failures: u32,
    /// The configuration file served and its content hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_file: Option<ServedFile>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A file the TFTP service serves to a phone.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServedFile {
    pub name: String,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
    pub encrypted: bool,
    pub signed: bool,
}

impl fmt::Display for PhoneModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.number())
    }
}
