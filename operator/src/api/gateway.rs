//! `H323Gateway` and `MgcpGateway`: gateways and H.323 trunks whose media may be encrypted with
//! SRTP, and the IPSec association that must protect the keys on their signalling path
//! (Chapter 13, P.13-2 to P.13-7).

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::CommonStatus;

/// Which configuration window of CallManager the device is: the four windows that carry the
/// "SRTP Allowed" check box (P.13-3, P.13-7).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum H323DeviceKind {
    /// H.323 Gateway.
    #[default]
    H323Gateway,
    /// H.225 Trunk (Gatekeeper Controlled).
    H225TrunkGatekeeperControlled,
    /// Inter-Cluster Trunk (Gatekeeper Controlled).
    InterClusterTrunkGatekeeperControlled,
    /// Inter-Cluster Trunk (Non-Gatekeeper Controlled).
    InterClusterTrunkNonGatekeeperControlled,
}

impl H323DeviceKind {
    /// The window's name as CallManager Administration shows it (P.13-7).
    pub fn window(self) -> &'static str {
        match self {
            H323DeviceKind::H323Gateway => "H.323 Gateway",
            H323DeviceKind::H225TrunkGatekeeperControlled => "H.225 Trunk (Gatekeeper Controlled)",
            H323DeviceKind::InterClusterTrunkGatekeeperControlled => "Inter-Cluster Trunk (Gatekeeper Controlled)",
            H323DeviceKind::InterClusterTrunkNonGatekeeperControlled => "Inter-Cluster Trunk (Non-Gatekeeper Controlled)",
        }
    }
}

/// Where the IPSec association that protects the signalling path is declared to be (P.13-6, P.13-7).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum IpsecMode {
    /// In the network infrastructure, between the gateway and a device of the trusted zone; what
    /// Cisco recommends (P.13-6).
    Infrastructure,
    /// An association configured in Cisco IPT Platform Administration, on CallManager itself (P.13-3, P.13-7).
    PlatformAssociation,
    /// No IPSec: keys would cross the signalling path in clear (P.13-2, P.13-3).
    #[default]
    None,
}

/// The IPSec association of a gateway or trunk, as the administrator declares it. CallManager does
/// not know whether IPSec is in place, and neither does the operator (P.13-2, P.13-3).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayIpsec {
    /// Infrastructure, PlatformAssociation or None; default None (P.13-6, P.13-7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<IpsecMode>,
    /// The administrator's word that IPSec was verified active; recorded, never checked (P.13-6, P.13-7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_by_admin: Option<bool>,
}

impl GatewayIpsec {
    pub fn mode(&self) -> IpsecMode {
        self.mode.unwrap_or_default()
    }
    pub fn verified_by_admin(&self) -> bool {
        self.verified_by_admin.unwrap_or(false)
    }
    /// Whether an association is declared (mode other than None).
    pub fn is_declared(&self) -> bool {
        self.mode() != IpsecMode::None
    }
}

/// The media security CallManager can give calls through the device (P.13-2, P.13-3).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum MediaSecurity {
    /// SRTP keys may go to the device: a call is encrypted when SRTP is negotiated for it.
    Encrypted,
    /// No SRTP keys go to the device: its calls use RTP.
    NotSecure,
}

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "callguard.io",
    version = "v1alpha1",
    kind = "H323Gateway",
    namespaced,
    status = "GatewayStatus",
    shortname = "h323gw",
    category = "callguard",
    doc = "An H.323 gateway, H.225 trunk or inter-cluster trunk: SRTP Allowed, FastStart, MTP and IPSec (Chapter 13, P.13-3)",
    printcolumn(name = "Kind", type_ = "string", json_path = ".spec.kind"),
    printcolumn(name = "Address", type_ = "string", json_path = ".spec.address"),
    printcolumn(name = "SRTP", type_ = "boolean", json_path = ".spec.srtpAllowed"),
    printcolumn(name = "IPSec", type_ = "string", json_path = ".spec.ipsec.mode"),
    printcolumn(name = "Media", type_ = "string", json_path = ".status.mediaSecurity"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.srtpAllowed) || !self.srtpAllowed || !has(self.enableOutboundFastStart) || !self.enableOutboundFastStart").message("srtpAllowed and enableOutboundFastStart cannot both be true: SRTP Allowed disables Enable Outbound FastStart (P.13-3)").field_path(".enableOutboundFastStart"))]
pub struct H323GatewaySpec {
    /// Which window the device is: H323Gateway, H225TrunkGatekeeperControlled,
    /// InterClusterTrunkGatekeeperControlled or InterClusterTrunkNonGatekeeperControlled; default H323Gateway (P.13-7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<H323DeviceKind>,
    /// The gateway or the trunk's peer, hostname or IP (P.13-3).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = super::HOST_PATTERN)
    )]
    pub address: String,
    /// SRTP Allowed; default false, and then CallManager always uses RTP with the device (P.13-3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srtp_allowed: Option<bool>,
    /// Enable Outbound FastStart; default false. Outbound FastStart calls are always non-secure, and SRTP Allowed disables it (P.13-3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_outbound_fast_start: Option<bool>,
    /// MTP Required; default false. Calls through the device are then non-secure: audio pass-through is disabled (P.13-3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtp_required: Option<bool>,
    /// The IPSec association that protects the signalling path, as declared (P.13-3, P.13-6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipsec: Option<GatewayIpsec>,
}

impl H323GatewaySpec {
    pub fn kind(&self) -> H323DeviceKind {
        self.kind.unwrap_or_default()
    }
    pub fn srtp_allowed(&self) -> bool {
        self.srtp_allowed.unwrap_or(false)
    }
    pub fn enable_outbound_fast_start(&self) -> bool {
        self.enable_outbound_fast_start.unwrap_or(false)
    }
    pub fn mtp_required(&self) -> bool {
        self.mtp_required.unwrap_or(false)
    }
    pub fn ipsec(&self) -> GatewayIpsec {
        self.ipsec.clone().unwrap_or_default()
    }
}

/// Observed state of a gateway or H.323 trunk, of either kind.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Encrypted when SRTP keys may go to the device, NotSecure otherwise (P.13-2, P.13-3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_security: Option<MediaSecurity>,
    /// Why, in words, with the pages of the guide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_security_reason: Option<String>,
}

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "callguard.io",
    version = "v1alpha1",
    kind = "MgcpGateway",
    namespaced,
    status = "GatewayStatus",
    shortname = "mgcpgw",
    category = "callguard",
    doc = "A Cisco IOS MGCP gateway: the MGCP SRTP package and IPSec (Chapter 13, P.13-2)",
    printcolumn(name = "Address", type_ = "string", json_path = ".spec.address"),
    printcolumn(name = "SRTP", type_ = "boolean", json_path = ".spec.srtp"),
    printcolumn(name = "IPSec", type_ = "string", json_path = ".spec.ipsec.mode"),
    printcolumn(name = "Media", type_ = "string", json_path = ".status.mediaSecurity"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct MgcpGatewaySpec {
    /// The gateway, hostname or IP (P.13-2).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = super::HOST_PATTERN)
    )]
    pub address: String,
    /// The gateway supports the MGCP SRTP package; default false (P.13-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srtp: Option<bool>,
    /// The IPSec association that protects the MGCP signalling path, as declared (P.13-2, P.13-6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipsec: Option<GatewayIpsec>,
}

impl MgcpGatewaySpec {
    pub fn srtp(&self) -> bool {
        self.srtp.unwrap_or(false)
    }
    pub fn ipsec(&self) -> GatewayIpsec {
        self.ipsec.clone().unwrap_or_default()
    }
}
