//! `SipTrunk`: destination, security profile, digest and realm (Chapters 13, 14, 15).

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::CommonStatus;

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "callguard.io",
    version = "v1alpha1",
    kind = "SipTrunk",
    namespaced,
    status = "SipTrunkStatus",
    shortname = "trunk",
    category = "callguard",
    doc = "A SIP trunk: destinations, security profile, digest and realm (Chapters 13, 14, 15)",
    printcolumn(name = "Profile", type_ = "string", json_path = ".spec.securityProfileRef"),
    printcolumn(name = "TLS", type_ = "boolean", json_path = ".status.tlsConnected"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.srtpAllowed) || !self.srtpAllowed").message("SRTP Allowed cannot be set on a SIP trunk: SIP trunks carry RTP, and TLS protects signalling only (P.13-4)").field_path(".srtpAllowed"))]
pub struct SipTrunkSpec {
    /// The SipTrunkSecurityProfile; every SIP trunk has one (P.14-1).
    #[schemars(length(min = 1, max = 253))]
    pub security_profile_ref: String,
    /// Where the trunk sends SIP; several hosts when the peer is a cluster (Table 14-1).
    #[schemars(length(min = 1, max = 16))]
    pub destinations: Vec<TrunkDestination>,
    /// SRTP Allowed; SIP trunks have no SRTP in this release, so only false is accepted (P.13-4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srtp_allowed: Option<bool>,
    /// Application users whose digest credentials authenticate the peer when it sends requests (P.15-3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    pub application_user_refs: Vec<String>,
    /// The SipRealm whose credentials answer the peer's challenges (P.15-5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub sip_realm_ref: Option<String>,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200))]
    pub description: Option<String>,
}

/// A SIP peer address of a trunk.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrunkDestination {
    /// Hostname or IP address of the peer (Table 14-1).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = super::HOST_PATTERN)
    )]
    pub address: String,
    /// Port of the peer; default 5060 (Table 14-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
}

impl TrunkDestination {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(5060)
    }
}

/// Observed state of a trunk.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SipTrunkStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Signalling to the peer runs over TLS.
    #[serde(default)]
    pub tls_connected: bool,
}
