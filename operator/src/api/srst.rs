//! `SrstReference`: a survivable remote site telephony gateway and its certificate (Chapter 12).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{CertificateSummary, CommonStatus};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "callguard.io",
    version = "v1alpha1",
    kind = "SrstReference",
    namespaced,
    status = "SrstReferenceStatus",
    shortname = "srst",
    category = "callguard",
    doc = "An SRST reference: the gateway, whether it is secure, and its certificate (Chapter 12, Table 12-2)",
    printcolumn(name = "Gateway", type_ = "string", json_path = ".spec.gatewayAddress"),
    printcolumn(name = "Secure", type_ = "boolean", json_path = ".spec.isSrstSecure"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct SrstReferenceSpec {
    /// The SRST gateway, hostname or IP; one gateway, since HSRP is not supported (P.12-2).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = super::HOST_PATTERN)
    )]
    pub gateway_address: String,
    /// "Is SRST Secure?": fetch the gateway certificate and give it to secure phones; default false (Table 12-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_srst_secure: Option<bool>,
    /// "SRST Certificate Provider Port" on the gateway; default 2445 (Table 12-2, P.12-7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 49151))]
    pub srst_certificate_provider_port: Option<u16>,
    /// SHA-256 fingerprint of the gateway certificate the administrator accepted (P.12-4 step 7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{64}$"))]
    pub accepted_certificate_fingerprint: Option<String>,
    /// Bump to press "Update Certificate": fetch the gateway certificate again (Table 12-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub certificate_update_generation: Option<i64>,
}

impl SrstReferenceSpec {
    pub fn is_srst_secure(&self) -> bool {
        self.is_srst_secure.unwrap_or(false)
    }
    pub fn srst_certificate_provider_port(&self) -> u16 {
        self.srst_certificate_provider_port.unwrap_or(2445)
    }
}

/// Observed state of an SRST reference.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SrstReferenceStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// The certificate fetched from the gateway's Certificate Provider (P.12-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched_certificate: Option<CertificateSummary>,
    /// When it was fetched (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fetch_time: Option<String>,
    /// Phones whose configuration carries this reference.
    #[serde(default)]
    pub dependent_device_count: u32,
}
