//! `SecurityToken`: a signing token (SAST) whose certificate and password-protected key live in
//! Secrets (Chapter 3, P.16-5).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{CertificateSummary, CommonStatus, SecretKeyRef};

/// Consecutive wrong passwords a token tolerates; the 16th locks it for good (P.16-5).
pub const TOKEN_RETRY_COUNTER: u32 = 15;
/// The lockout rule in the words every message uses.
pub const TOKEN_LOCK_RULE: &str = "15 consecutive wrong passwords are tolerated, the 16th locks the token for good (P.16-5)";
/// The factory password of a token, case-sensitive (Table 3-2).
pub const TOKEN_FACTORY_PASSWORD: &str = "Cisco123";

/// What the administrator says of a token (P.16-5). `Locked` is never set here: only status knows it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum TokenState {
    /// In use: may sign the CTL.
    #[default]
    Active,
    /// Lost: re-sign the CTL with a remaining token and leave this one out (P.16-5).
    Lost,
    /// Its key may be known to others: as Lost, and phones need their CTL erased (Table 3-3).
    Compromised,
    /// Taken out of service on purpose.
    Retired,
}

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "callguard.io",
    version = "v1alpha1",
    kind = "SecurityToken",
    namespaced,
    status = "SecurityTokenStatus",
    shortname = "sast",
    category = "callguard",
    doc = "A security token (SAST) that signs the CTL: certificate and encrypted key in Secrets (Chapter 3, P.16-5)",
    printcolumn(name = "State", type_ = "string", json_path = ".spec.state"),
    printcolumn(name = "Locked", type_ = "boolean", json_path = ".status.locked"),
    printcolumn(name = "Failures", type_ = "integer", json_path = ".status.consecutiveFailedLogins"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct SecurityTokenSpec {
    /// The token's X.509 certificate, PEM (P.3-9).
    pub certificate: SecretKeyRef,
    /// The token's private key as password-encrypted PKCS#8, PEM (P.3-17).
    pub private_key: SecretKeyRef,
    /// The token's user password; the factory value `Cisco123` must be changed before signing (Table 3-2, P.3-17).
    pub password: SecretKeyRef,
    /// Active, Lost, Compromised or Retired; default Active (P.16-5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<TokenState>,
    /// Free text, for example where the token is kept (P.3-11).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200))]
    pub description: Option<String>,
}

impl SecurityTokenSpec {
    pub fn state(&self) -> TokenState {
        self.state.unwrap_or_default()
    }
}

/// Observed state of a token. `locked` never goes back to false (P.16-5).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecurityTokenStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Consecutive distinct wrong passwords; 0 after a correct one (P.16-5).
    #[serde(default)]
    #[schemars(range(min = 0, max = 16))]
    pub consecutive_failed_logins: u32,
    /// Locked for good by the 16th consecutive wrong password (P.16-5).
    #[serde(default)]
    pub locked: bool,
    /// When the token locked (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_at: Option<String>,
    /// The password is still the factory default (Table 3-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_password_in_use: Option<bool>,
    /// Listed as a SAST record in the published CTL.
    #[serde(default)]
    pub in_current_ctl: bool,
    /// Signed the published CTL.
    #[serde(default)]
    pub signed_current_ctl: bool,
    /// The token's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateSummary>,
}
