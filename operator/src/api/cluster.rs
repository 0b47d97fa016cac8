//! `CallControlCluster`: the cluster security mode, its nodes and ports, the CTL's tokens, the CAPF,
//! digest and TFTP parameters (Chapters 1, 3, 6, 7, 8, 16).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{CertificateSummary, CommonStatus, KeySize, SecretKeyRef};

/// Cluster-wide security mode, NonSecure or Mixed; default NonSecure. The guide calls the secure mode
/// both "secure mode" and "mixed mode": authenticated, encrypted and non-secure devices register side
/// by side (Table 3-2, P.3-13).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum ClusterSecurityMode {
    /// Every device registers non-secure; only image authentication (Table 3-2).
    #[default]
    NonSecure,
    /// "Set CallManager Cluster to Secure Mode": the signed CTL is published (Table 3-2).
    Mixed,
}

impl ClusterSecurityMode {
    /// Value of the read-only enterprise parameter "Cluster Security Mode" (P.3-15).
    pub fn parameter_value(self) -> u8 {
        match self {
            ClusterSecurityMode::NonSecure => 0,
            ClusterSecurityMode::Mixed => 1,
        }
    }
}

/// Digest used to sign the CTL and ITL files (docs/wire-formats.md §3).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum SignatureHash {
    #[default]
    #[serde(rename = "SHA1")]
    Sha1,
    #[serde(rename = "SHA512")]
    Sha512,
}

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "callguard.io",
    version = "v1alpha1",
    kind = "CallControlCluster",
    namespaced,
    status = "CallControlClusterStatus",
    shortname = "ccc",
    category = "callguard",
    doc = "A CallManager cluster's security: mode, nodes, ports, CTL tokens, CAPF, digest and TFTP parameters (Chapters 1, 3, 6, 7, 8)",
    printcolumn(name = "Mode", type_ = "string", json_path = ".status.effectiveSecurityMode"),
    printcolumn(name = "CTL Serial", type_ = "string", json_path = ".status.ctl.serial"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(FIRST_NODE_RULE).message("exactly one node must be the first node (publisher): set firstNode: true on one node (Table 3-2)").field_path(".nodes"))]
#[x_kube(validation = Rule::new(CAPF_ON_FIRST_NODE_RULE).message("the CAPF service runs only on the first node (P.6-6)").field_path(".nodes"))]
#[x_kube(validation = Rule::new("self.nodes.all(a, self.nodes.exists_one(b, b.hostname == a.hostname))").message("node hostnames must be unique (Table 3-2)").field_path(".nodes"))]
#[x_kube(validation = Rule::new("!has(self.securityMode) || self.securityMode != 'Mixed' || !has(self.autoRegistration) || !self.autoRegistration").message("auto-registration is not allowed in mixed mode (Table 3-2, P.1-7)").field_path(".autoRegistration"))]
#[x_kube(validation = Rule::new("!has(self.securityMode) || self.securityMode != 'Mixed' || !has(self.signalingBehindNat) || !self.signalingBehindNat").message("NAT is not supported in mixed mode (P.1-7)").field_path(".signalingBehindNat"))]
#[x_kube(validation = Rule::new("!has(self.securityMode) || self.securityMode != 'Mixed' || (has(self.ctl) && size(self.ctl.tokens) >= 2)").message("mixed mode needs at least two security tokens in ctl.tokens (P.1-12, P.3-9)").field_path(".ctl"))]
pub struct CallControlClusterSpec {
    /// Cluster security mode, NonSecure or Mixed; default NonSecure (Table 3-2, P.3-13).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_mode: Option<ClusterSecurityMode>,
    /// The CallManager nodes: the first node (publisher) and subscribers (Table 3-2).
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["name".into()]))]
    pub nodes: Vec<ClusterNode>,
    /// Listening ports of the cluster's services (P.3-5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<ClusterPorts>,
    /// The certificate trust list: which security tokens it lists and which one signs it (Chapter 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctl: Option<CtlSettings>,
    /// CAPF service parameters and the "CAPF Operation Expires in (days)" enterprise parameter (P.6-7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capf: Option<CapfParameters>,
    /// Digest authentication parameters: SIP Station Realm and Cluster ID (P.8-3, P.15-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<DigestParameters>,
    /// Enterprise parameter "TFTP Encrypted Configuration"; default false (P.7-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tftp_encrypted_configuration: Option<bool>,
    /// Service parameter "Builtin Bridge Enable"; default true (P.1-7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin_bridge_enable: Option<bool>,
    /// Auto-registration of new phones; default false, never in mixed mode (Table 3-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_registration: Option<bool>,
    /// Whether signalling crosses NAT; mixed mode does not support NAT (P.1-7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signaling_behind_nat: Option<bool>,
    /// Where the data-plane pods run, and what they may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// The cluster CA's key and lifetime, used when the CA is created; changing them later does not
    /// replace an existing CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_authority: Option<CertificateAuthoritySettings>,
    /// TLS 1.0 and 1.1 on the CAPF, TVS and SIP-TLS ports, for 79x0 and 79x1 phones that speak
    /// nothing newer (on SIP-TLS with the NULL-SHA of Authenticated mode too); default Disabled
    /// (docs/wire-formats.md §7.1, §8). Clients offering TLS 1.2 or newer are served as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_tls: Option<LegacyTls>,
    /// The media relay: the ports it relays RTP and RTCP on, when a silent call's media is
    /// released, and how it recognises each end (docs/architecture.md, media).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<MediaSettings>,
    /// How an incoming ITL signer or CA is announced before it takes over (docs/operations.md §7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationSettings>,
}

/// The pace of the identity's rotations (P.3-18).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationSettings {
    /// Minutes between the publication that announces an incoming ITL signer and the one it signs:
    /// time for every phone to fetch the announcing ITL, since a phone that missed it refuses the
    /// next (P.3-18). 0 to 525600 (a year); default 1440 (a day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 525600))]
    pub grace_period_minutes: Option<u32>,
}

impl RotationSettings {
    pub const DEFAULT_GRACE_MINUTES: u32 = 1440;

    pub fn grace_period(&self) -> time::Duration {
        time::Duration::minutes(i64::from(self.grace_period_minutes.unwrap_or(Self::DEFAULT_GRACE_MINUTES)))
    }
}

/// The media relay of the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.firstPort) ? self.firstPort : 16384) < (has(self.lastPort) ? self.lastPort : 32766)").message("media.firstPort must be below media.lastPort: the range holds the relay's RTP and RTCP port pairs"))]
pub struct MediaSettings {
    /// First port of the relay's RTP and RTCP pairs; default 16384, the phones' own first media port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 65534))]
    pub first_port: Option<u16>,
    /// Last port; default 32766.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1025, max = 65535))]
    pub last_port: Option<u16>,
    /// Seconds without a packet on any of a call's ports after which its media is released and its
    /// ports return to the range; default 60, 5 to 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 5, max = 3600))]
    pub inactivity_seconds: Option<u32>,
    /// How the relay recognises each end of a call; default FirstPacket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latching: Option<MediaLatching>,
    /// The relay pods use their node's network, so that phones reach the relay ports on the node's
    /// own address, with no NAT between; default true. One relay pod per node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_network: Option<bool>,
    /// Node labels the relay pods require (nodes whose addresses phones can reach); default the
    /// cluster's `placement.nodeSelector`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the relay pods tolerate; default the cluster's `placement.tolerations`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,
    /// Relay pods; default 2. Calls are spread over them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub replicas: Option<u8>,
    /// The TCP port of the relay's control interface, through which the SIP pods drive it over
    /// mutually authenticated TLS; default 2233.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 65535))]
    pub control_port: Option<u16>,
}

/// How the media relay recognises each end of a call.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum MediaLatching {
    /// The source of the first packet on a port, whatever the SDP said (symmetric RTP): phones
    /// behind NAT.
    #[default]
    FirstPacket,
    /// Only the address and port the end's SDP gave.
    SdpOnly,
}

impl MediaSettings {
    pub const DEFAULT_FIRST_PORT: u16 = 16384;
    pub const DEFAULT_LAST_PORT: u16 = 32766;
    pub const DEFAULT_INACTIVITY_SECONDS: u32 = 60;

    pub fn ports(&self) -> std::ops::RangeInclusive<u16> {
        self.first_port.unwrap_or(Self::DEFAULT_FIRST_PORT)..=self.last_port.unwrap_or(Self::DEFAULT_LAST_PORT)
    }

    pub fn inactivity(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.inactivity_seconds.unwrap_or(Self::DEFAULT_INACTIVITY_SECONDS)))
    }

    pub fn host_network(&self) -> bool {
        self.host_network.unwrap_or(true)
    }

    pub fn replicas(&self) -> u8 {
        self.replicas.unwrap_or(2)
    }

    pub fn control_port(&self) -> u16 {
        self.control_port.unwrap_or(crate::services::media::control::DEFAULT_CONTROL_PORT)
    }
}

/// Whether CAPF, TVS and SIP-TLS accept the TLS 1.0 and 1.1 of the guide's phones.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum LegacyTls {
    /// TLS 1.2 and 1.3 only.
    #[default]
    Disabled,
    /// TLS 1.0 and 1.1 too, through OpenSSL, with the same certificate.
    Enabled,
}

/// The cluster CA that issues the function certificates and LSCs (P.6-1).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateAuthoritySettings {
    /// RSA key size in bits: 2048, 3072 or 4096; default 2048.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_size: Option<CaKeyBits>,
    /// Lifetime in days, 365 to 10950; default 3650.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 365, max = 10950))]
    pub validity_days: Option<u32>,
}

/// The RSA size of the cluster CA's key.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(try_from = "u16", into = "u16")]
pub enum CaKeyBits {
    #[default]
    Bits2048,
    Bits3072,
    Bits4096,
}

impl CaKeyBits {
    pub fn bits(self) -> u16 {
        match self {
            CaKeyBits::Bits2048 => 2048,
            CaKeyBits::Bits3072 => 3072,
            CaKeyBits::Bits4096 => 4096,
        }
    }
}

impl TryFrom<u16> for CaKeyBits {
    type Error = String;
    fn try_from(bits: u16) -> Result<Self, String> {
        [CaKeyBits::Bits2048, CaKeyBits::Bits3072, CaKeyBits::Bits4096]
            .into_iter()
            .find(|size| size.bits() == bits)
            .ok_or_else(|| format!("CA key size {bits} is not one of 2048, 3072, 4096"))
    }
}

impl From<CaKeyBits> for u16 {
    fn from(bits: CaKeyBits) -> u16 {
        bits.bits()
    }
}

impl JsonSchema for CaKeyBits {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "CaKeyBits".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "integer", "enum": [2048, 3072, 4096], "description": "RSA key size in bits: 2048, 3072 or 4096"})
    }
    fn inline_schema() -> bool {
        true
    }
}

const FIRST_NODE_RULE: &str =
    "self.nodes.exists_one(n, has(n.firstNode) && n.firstNode) || (size(self.nodes) == 1 && !has(self.nodes[0].firstNode))";
const CAPF_ON_FIRST_NODE_RULE: &str = "size(self.nodes) == 1 || self.nodes.all(n, !has(n.services) || !has(n.services.capf) || !n.services.capf || (has(n.firstNode) && n.firstNode))";

/// One CallManager server of the cluster (Table 3-2).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNode {
    /// Node name, a DNS-1123 label (Table 3-2).
    #[schemars(length(min = 1, max = 63), regex(pattern = super::DNS1123_LABEL))]
    pub name: String,
    /// Hostname the phones and the CTL use for this node (Table 3-2, P.3-2).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*$")
    )]
    pub hostname: String,
    /// IP address of the node, listed in its CTL records (P.3-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<IpAddr>,
    /// The first node (publisher); exactly one. A single node is the first node (Table 3-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_node: Option<bool>,
    /// Services activated on the node (P.3-4, P.6-6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<NodeServices>,
}

/// Which Cisco services run on a node (P.3-4, P.6-6). Defaults: CallManager, TFTP and CTL Provider on;
/// CAPF on the first node only.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeServices {
    /// Cisco CallManager (signalling); default true (P.3-4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_manager: Option<bool>,
    /// Cisco TFTP; default true (P.1-16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tftp: Option<bool>,
    /// Cisco CTL Provider; default true, needed on every CallManager and TFTP node (P.3-4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctl_provider: Option<bool>,
    /// Cisco Certificate Authority Proxy Function; first node only, default on there (P.6-6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capf: Option<bool>,
}

/// Ports of the cluster's services (P.3-5). The SCCP TLS port is always the Ethernet Phone Port + 443.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(ports_distinct_rule()).message("ports must be distinct, counting the SCCP TLS port ethernetPhonePort + 443 (P.3-5)"))]
pub struct ClusterPorts {
    /// "Ethernet Phone Port" for SCCP; default 2000, at most 65092 so that the TLS port fits (P.3-5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 65092))]
    pub ethernet_phone_port: Option<u16>,
    /// SIP over TCP and UDP; default 5060 (P.3-5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 65535))]
    pub sip_port: Option<u16>,
    /// "SIP Phone Secure Port" for SIP over TLS; default 5061 (P.3-5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 65535))]
    pub sip_secure_port: Option<u16>,
    /// Cisco CTL Provider port; default 2444 (Table 3-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 65535))]
    pub ctl_provider_port: Option<u16>,
    /// CAPF port; default 3804 (P.6-7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 65535))]
    pub capf_port: Option<u16>,
    /// TFTP port; default 69 (P.1-16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub tftp_port: Option<u16>,
}

/// Port defaults of the seed (P.3-5, Table 3-2, P.6-7).
pub mod default_ports {
    pub const ETHERNET_PHONE: u16 = 2000;
    pub const SCCP_TLS_OFFSET: u16 = 443;
    pub const SIP: u16 = 5060;
    pub const SIP_SECURE: u16 = 5061;
    pub const CTL_PROVIDER: u16 = 2444;
    pub const CAPF: u16 = 3804;
    pub const TFTP: u16 = 69;
}

/// The CEL rule that no two of the cluster's ports coincide, with the seed's defaults in place.
/// Written as pairwise comparisons: a comprehension over a list literal costs more in the API
/// server's static estimate than these 20 comparisons do.
fn ports_distinct_rule() -> String {
    use default_ports::*;
    let port = |field: &str, default: u16| format!("(has(self.{field}) ? self.{field} : {default})");
    let eth = port("ethernetPhonePort", ETHERNET_PHONE);
    let ports = [
        eth.clone(),
        format!("{eth} + {SCCP_TLS_OFFSET}"),
        port("sipPort", SIP),
        port("sipSecurePort", SIP_SECURE),
        port("ctlProviderPort", CTL_PROVIDER),
        port("capfPort", CAPF),
        port("tftpPort", TFTP),
    ];
    let mut pairs = Vec::new();
    for (i, a) in ports.iter().enumerate() {
        // The first two always differ by 443.
        for b in ports.iter().skip((i + 1).max(2)) {
            pairs.push(format!("{a} != {b}"));
        }
    }
    pairs.join(" && ")
}

impl ClusterPorts {
    pub fn ethernet_phone_port(&self) -> u16 {
        self.ethernet_phone_port.unwrap_or(default_ports::ETHERNET_PHONE)
    }
    /// SCCP over TLS: Ethernet Phone Port + 443 (P.3-5).
    pub fn sccp_tls_port(&self) -> u16 {
        self.ethernet_phone_port() + default_ports::SCCP_TLS_OFFSET
    }
    pub fn sip_port(&self) -> u16 {
        self.sip_port.unwrap_or(default_ports::SIP)
    }
    pub fn sip_secure_port(&self) -> u16 {
        self.sip_secure_port.unwrap_or(default_ports::SIP_SECURE)
    }
    pub fn ctl_provider_port(&self) -> u16 {
        self.ctl_provider_port.unwrap_or(default_ports::CTL_PROVIDER)
    }
    pub fn capf_port(&self) -> u16 {
        self.capf_port.unwrap_or(default_ports::CAPF)
    }
    pub fn tftp_port(&self) -> u16 {
        self.tftp_port.unwrap_or(default_ports::TFTP)
    }
}

/// The CTL's security tokens (Chapter 3). Phones accept at most two SAST records (docs/wire-formats.md §3.6).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.signingToken in self.tokens").message("signingToken must be one of ctl.tokens (P.3-12)").field_path(".signingToken"))]
pub struct CtlSettings {
    /// Names of the SecurityTokens listed as SAST records; at most two (P.3-13, docs/wire-formats.md §3.6).
    #[schemars(length(min = 1, max = 2))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    pub tokens: Vec<String>,
    /// The SecurityToken that signs the CTL; a token of the published CTL (P.3-12).
    #[schemars(length(min = 1, max = 253))]
    pub signing_token: String,
    /// Signature digest of the CTL and ITL; default SHA1 (docs/wire-formats.md §3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_algorithm: Option<SignatureHash>,
}

/// CAPF service parameters (P.6-7) and the enterprise parameter "CAPF Operation Expires in (days)" (Table 11-2).
/// The seed names these parameters without values; the defaults are the project's choice.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapfParameters {
    /// Validity of issued LSCs in years; default 5 (P.6-7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 20))]
    pub certificate_validity_years: Option<u8>,
    /// Maximum retries for key generation; default 3 (P.6-7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub max_key_generation_retries: Option<u8>,
    /// Key size when a profile does not set one; default 1024 (P.6-7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_size: Option<KeySize>,
    /// Default days in which a certificate operation must complete; default 10 (Table 11-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 365))]
    pub operation_expires_in_days: Option<u16>,
    /// The certificates of the manufacturers' CAs that issue phones' MICs (for Cisco phones, the
    /// Cisco Manufacturing CA), PEM, one or more in one key of a Secret. A phone whose profile
    /// authenticates to CAPF by existing certificate with precedence to the MIC needs them: a MIC
    /// from a CA not listed here is refused (Table 5-1, docs/wire-formats.md §7.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer_ca_certificates: Option<SecretKeyRef>,
}

impl CapfParameters {
    pub fn certificate_validity_years(&self) -> u8 {
        self.certificate_validity_years.unwrap_or(5)
    }
    pub fn max_key_generation_retries(&self) -> u8 {
        self.max_key_generation_retries.unwrap_or(3)
    }
    pub fn key_size(&self) -> KeySize {
        self.key_size.unwrap_or_default()
    }
    pub fn operation_expires_in_days(&self) -> u16 {
        self.operation_expires_in_days.unwrap_or(10)
    }
}

/// Digest parameters (P.8-3, P.15-2).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DigestParameters {
    /// Service parameter "SIP Station Realm": the realm of 401 challenges to phones; default `ccmsipline` (P.8-3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = super::REALM_PATTERN))]
    pub sip_station_realm: Option<String>,
    /// Enterprise parameter "Cluster ID", used when the cluster challenges as UAS; default `StandAloneCluster` (P.15-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 50), regex(pattern = r"^[A-Za-z0-9._-]+$"))]
    pub cluster_id: Option<String>,
}

impl DigestParameters {
    pub fn sip_station_realm(&self) -> &str {
        self.sip_station_realm.as_deref().unwrap_or("ccmsipline")
    }
    pub fn cluster_id(&self) -> &str {
        self.cluster_id.as_deref().unwrap_or("StandAloneCluster")
    }
}

/// Placement of the data-plane pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Node labels the data-plane pods require.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the data-plane pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,
    /// CPU and memory of each data-plane container; default: requests 50m CPU and 64Mi, limit 512Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// How phones reach the data-plane services; default ClusterIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposure: Option<Exposure>,
    /// Annotations on the data-plane Services (a load balancer's settings, say).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_annotations: BTreeMap<String, String>,
    /// Replicas of each data-plane service that can run several; default 2, with a
    /// PodDisruptionBudget keeping one up through voluntary disruptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16))]
    pub replicas: Option<u8>,
}

/// How phones reach a data-plane service. Phones answer to the address they sent to, and the
/// services tell clients apart by source address, so every choice here keeps the client's address:
/// NodePort and LoadBalancer Services get `externalTrafficPolicy: Local`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Exposure {
    /// A ClusterIP Service: reachable inside the Kubernetes cluster, or through routing you provide.
    #[default]
    ClusterIP,
    /// A NodePort Service on every node.
    NodePort,
    /// A LoadBalancer Service: the usual way for phones outside the Kubernetes cluster.
    LoadBalancer,
    /// The pods use their node's network (ports bound on the node itself), and a headless ClusterIP
    /// Service names them; one pod per node.
    HostNetwork,
}

impl Placement {
    pub fn exposure(&self) -> Exposure {
        self.exposure.unwrap_or_default()
    }
    pub fn replicas(&self) -> u8 {
        self.replicas.unwrap_or(2)
    }
}

impl CallControlClusterSpec {
    pub fn security_mode(&self) -> ClusterSecurityMode {
        self.security_mode.unwrap_or_default()
    }
    /// The media relay's settings, defaults where `spec.media` sets none.
    pub fn media(&self) -> MediaSettings {
        self.media.clone().unwrap_or_default()
    }
    pub fn ports(&self) -> ClusterPorts {
        self.ports.clone().unwrap_or_default()
    }
    pub fn capf(&self) -> CapfParameters {
        self.capf.clone().unwrap_or_default()
    }
    pub fn digest(&self) -> DigestParameters {
        self.digest.clone().unwrap_or_default()
    }
    pub fn tftp_encrypted_configuration(&self) -> bool {
        self.tftp_encrypted_configuration.unwrap_or(false)
    }
    pub fn builtin_bridge_enable(&self) -> bool {
        self.builtin_bridge_enable.unwrap_or(true)
    }
    pub fn auto_registration(&self) -> bool {
        self.auto_registration.unwrap_or(false)
    }
    /// The publisher: the node marked `firstNode`, or the only node (Table 3-2).
    pub fn first_node(&self) -> Option<&ClusterNode> {
        match self.nodes.as_slice() {
            [only] if only.first_node != Some(false) => Some(only),
            nodes => nodes.iter().find(|n| n.first_node == Some(true)),
        }
    }
    /// Whether a node runs CAPF: only the first node can, and there it is on by default (P.6-6).
    pub fn runs_capf(&self, node: &ClusterNode) -> bool {
        let is_first = self.first_node().is_some_and(|f| f.name == node.name);
        is_first && node.services.as_ref().and_then(|s| s.capf).unwrap_or(true)
    }
    /// Whether any node runs the CAPF service.
    pub fn capf_enabled(&self) -> bool {
        self.nodes.iter().any(|n| self.runs_capf(n))
    }
}

impl NodeServices {
    pub fn call_manager(&self) -> bool {
        self.call_manager.unwrap_or(true)
    }
    pub fn tftp(&self) -> bool {
        self.tftp.unwrap_or(true)
    }
    pub fn ctl_provider(&self) -> bool {
        self.ctl_provider.unwrap_or(true)
    }
}

/// Observed state of a cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallControlClusterStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// The security mode in force: set from the spec once the CTL is published (P.3-13).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_security_mode: Option<ClusterSecurityMode>,
    /// Enterprise parameter "Cluster Security Mode": 1 in mixed mode, 0 otherwise (P.3-15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_security_mode_parameter: Option<u8>,
    /// The published CTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctl: Option<PublishedTrustList>,
    /// Certificates of the cluster's functions (CallManager, TFTP, CAPF).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<FunctionCertificate>,
    /// The identity phones trust, as last published. Once set, a missing or different CA, ITL signer
    /// or published trust list stalls the cluster instead of being made anew (P.3-18).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityRecord>,
}

/// What must exist for as long as an identity does.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentityRecord {
    /// Short name of the identity: the first 16 hex digits of [`Self::ca`]. The annotation
    /// `callguard.io/new-identity` must name it to replace the identity.
    pub id: String,
    /// SHA-256 of the cluster CA certificate (DER), lowercase hex.
    pub ca: String,
    /// SHA-256 of the certificate that signs the ITL and the configuration files.
    pub itl_signer: String,
    /// A CTL has been published: phones hold it, so it must not vanish.
    #[serde(default)]
    pub ctl_published: bool,
    /// SHA-256 of the ITL signer announced beside the current one (a rotation's first step): it
    /// signs once the grace period after the announcing ITL has passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incoming_itl_signer: Option<String>,
    /// The last `callguard.io/rotate-itl-signer` value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub itl_signer_rotation_request: Option<String>,
    /// SHA-256 of the CA that [`Self::ca`] replaced, trusted beside it while certificates it issued
    /// remain (a CA rotation under way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_ca: Option<String>,
    /// The last `callguard.io/rotate-ca` value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_rotation_request: Option<String>,
}

/// What status shows of the published CTL.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishedTrustList {
    /// Serial of the published CTL; increases with every re-signing.
    pub serial: u64,
    /// The SecurityToken that signed it.
    pub signed_by: String,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
    /// When it was signed (RFC 3339).
    pub published_at: String,
}

/// A certificate of one function of one node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionCertificate {
    pub node: String,
    /// CallManager, TFTP or CAPF.
    pub function: String,
    #[serde(flatten)]
    pub certificate: CertificateSummary,
}
