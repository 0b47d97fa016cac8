//! `SipRealm`: the credentials the cluster answers a trunk peer's challenge with (Chapter 15, Table 15-3).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{CommonStatus, SecretKeyRef};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "callguard.io",
    version = "v1alpha1",
    kind = "SipRealm",
    namespaced,
    status = "SipRealmStatus",
    shortname = "realm",
    category = "callguard",
    doc = "A SIP realm: user and password the cluster sends when a trunk peer challenges it (Chapter 15, Table 15-3)",
    printcolumn(name = "Realm", type_ = "string", json_path = ".spec.realm"),
    printcolumn(name = "User", type_ = "string", json_path = ".spec.user"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct SipRealmSpec {
    /// Realm: letters, digits, period, dash, underscore, space (Table 15-3).
    #[schemars(length(min = 1, max = 128), regex(pattern = super::REALM_PATTERN))]
    pub realm: String,
    /// User that represents the cluster toward the peer (Table 15-3).
    #[schemars(length(min = 1, max = 128), regex(pattern = super::USER_ID_PATTERN))]
    pub user: String,
    /// Password that represents the cluster toward the peer (Table 15-3).
    pub password: SecretKeyRef,
}

/// Observed state of a realm.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SipRealmStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
}
