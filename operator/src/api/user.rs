//! `EndUser` and `ApplicationUser`: digest credentials, CTI security groups, CAPF profiles and
//! per-method SIP authorization (Chapters 8, 11, 15).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{CertificateSummary, CommonStatus, KeySize, LscState, SecretKeyRef, SipMethodAcceptance};

/// The CTI security user groups (P.11-9).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
pub enum CtiGroup {
    /// "Standard CTI Enabled".
    StandardCtiEnabled,
    /// "Standard CTI Secure Connection".
    StandardCtiSecureConnection,
    /// "Standard CTI Allow Reception of SRTP Key Material".
    #[serde(rename = "StandardCtiAllowReceptionOfSrtpKeyMaterial")]
    StandardCtiAllowReceptionOfSrtpKeyMaterial,
}

/// Certificate operations of an application or end user CAPF profile (Table 11-2).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum CtiCertificateOperation {
    #[default]
    NoPendingOperation,
    InstallUpgrade,
}

/// Authentication mode of a CTI CAPF profile: only By Authentication String (Table 11-2).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum CtiAuthenticationMode {
    #[default]
    ByAuthenticationString,
}

/// An Application User CAPF Profile or End User CAPF Profile: one instance of a CTI application (Table 11-2).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.certificateOperation) || self.certificateOperation == 'NoPendingOperation' || (has(self.operationCompletesBy) && has(self.authenticationString))").message("certificate operation InstallUpgrade requires authenticationString and operationCompletesBy (Table 11-2)"))]
pub struct CapfProfile {
    /// Instance ID, unique for the user: letters, digits, `.`, `_`, `-` (Table 11-2; digits allowed, see README).
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9._-]+$"))]
    pub instance_id: String,
    /// Certificate Operation: NoPendingOperation or InstallUpgrade; default NoPendingOperation (Table 11-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_operation: Option<CtiCertificateOperation>,
    /// Authentication Mode; only ByAuthenticationString (Table 11-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_mode: Option<CtiAuthenticationMode>,
    /// Authentication String, 4 to 10 digits, single use (Table 11-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_string: Option<SecretKeyRef>,
    /// Key Size in bits; default 1024 (Table 11-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_size: Option<KeySize>,
    /// Operation Completes by (Table 11-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_completes_by: Option<Time>,
}

const SRTP_GROUP_RULE: &str = "!has(self.ctiGroups) || !('StandardCtiAllowReceptionOfSrtpKeyMaterial' in self.ctiGroups) || ('StandardCtiSecureConnection' in self.ctiGroups && 'StandardCtiEnabled' in self.ctiGroups)";
const SECURE_GROUP_RULE: &str =
    "!has(self.ctiGroups) || !('StandardCtiSecureConnection' in self.ctiGroups) || 'StandardCtiEnabled' in self.ctiGroups";

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "callguard.io",
    version = "v1alpha1",
    kind = "EndUser",
    namespaced,
    status = "UserStatus",
    shortname = "eu",
    category = "callguard",
    doc = "An end user: digest credentials for SIP phones, CTI groups and CAPF profiles (Chapters 8, 11)",
    printcolumn(name = "User ID", type_ = "string", json_path = ".spec.userId"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(SRTP_GROUP_RULE).message("Standard CTI Allow Reception of SRTP Key Material requires Standard CTI Enabled and Standard CTI Secure Connection (P.11-9)").field_path(".ctiGroups"))]
#[x_kube(validation = Rule::new(SECURE_GROUP_RULE).message("Standard CTI Secure Connection requires Standard CTI Enabled (P.11-9)").field_path(".ctiGroups"))]
pub struct EndUserSpec {
    /// User ID, the digest user name; default metadata.name (T8-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = super::USER_ID_PATTERN))]
    pub user_id: Option<String>,
    /// Digest Credentials, alphanumeric (T8-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_credentials: Option<SecretKeyRef>,
    /// CTI security user groups (P.11-9).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    pub cti_groups: Vec<CtiGroup>,
    /// End User CAPF Profiles, one per application instance (Table 11-2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["instanceId".into()]))]
    pub capf_profiles: Vec<CapfProfile>,
}

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "callguard.io",
    version = "v1alpha1",
    kind = "ApplicationUser",
    namespaced,
    status = "UserStatus",
    shortname = "au",
    category = "callguard",
    doc = "An application user: digest credentials for SIP trunks, CTI groups, CAPF profiles, per-method authorization (Chapters 11, 14, 15)",
    printcolumn(name = "User ID", type_ = "string", json_path = ".spec.userId"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(SRTP_GROUP_RULE).message("Standard CTI Allow Reception of SRTP Key Material requires Standard CTI Enabled and Standard CTI Secure Connection (P.11-9)").field_path(".ctiGroups"))]
#[x_kube(validation = Rule::new(SECURE_GROUP_RULE).message("Standard CTI Secure Connection requires Standard CTI Enabled (P.11-9)").field_path(".ctiGroups"))]
pub struct ApplicationUserSpec {
    /// User ID, the digest user name in challenges (P.15-3); default metadata.name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = super::USER_ID_PATTERN))]
    pub user_id: Option<String>,
    /// Digest Credentials, alphanumeric (T15-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_credentials: Option<SecretKeyRef>,
    /// CTI security user groups (P.11-9).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    pub cti_groups: Vec<CtiGroup>,
    /// Application User CAPF Profiles, one per application instance (Table 11-2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["instanceId".into()]))]
    pub capf_profiles: Vec<CapfProfile>,
    /// SIP methods this application may use through trunks with application level authorization (Table 14-1, P.1-18).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sip_authorization: Option<SipMethodAcceptance>,
}

/// Observed state of a user.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// The realm the stored digest checksum was computed for (P.1-17); never the credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_realm: Option<String>,
    /// Where each CAPF profile's operation and certificate stand, by instance ID (Table 11-2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capf_profiles: Vec<CapfProfileStatus>,
}

/// One application instance's certificate, as CAPF issued it (Table 11-2).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapfProfileStatus {
    pub instance_id: String,
    /// Pending, Installed, Failed, Expired or None.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsc_state: Option<LscState>,
    /// The operation and where it stands: `Pending`, `Completed`, `Failed` with the reason,
    /// `LockedOut` until a time, `Expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_status: Option<String>,
    /// The certificate the cluster CA issued to the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsc: Option<CertificateSummary>,
    /// Consecutive wrong authentication strings; ten lock the instance out for ten minutes (P.16-6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_auth_failures: Option<u32>,
}
