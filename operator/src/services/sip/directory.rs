//! What the signaling service knows of the cluster: its realm, and for each SIP phone the lines it
//! may register, the transport and certificate its profile demands, and the digest credentials it
//! answers with. The operator and `callguard local` build it from the resources; the service only
//! looks things up.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::identity::{self, PhoneAnchors};
use super::trunk::{SipTrunkEntry, TrunkDestinationEntry};
use crate::api::{DeviceSecurityMode, SipTransport};
use crate::core::phone_config::DigestAuth;
use crate::core::pki::inspect;

/// One SIP phone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SipPhone {
    /// `Phone/<name>`, for log lines.
    pub subject: String,
    pub device: String,
    /// Directory numbers: what the phone registers (its address-of-record user parts).
    pub lines: Vec<String>,
    pub mode: DeviceSecurityMode,
    pub transport: SipTransport,
    /// The digest user and password when the profile enables digest authentication (Table 5-2).
    pub digest: Option<DigestAuth>,
    pub nonce_validity_seconds: u32,
    /// Whether its MIC may stand for it on TLS (see `identity::PhoneCredentials`).
    pub mic_accepted: bool,
    /// SHA-256 of its current LSC, lowercase hex.
    pub current_lsc_sha256: Option<String>,
}

/// The phones, indexed by device name and by line, and the trunks.
#[derive(Clone, Debug, Default)]
pub struct SipDirectory {
    /// The realm of phones' challenges ("SIP Station Realm", P.8-3).
    pub realm: String,
    /// The realm of trunks' challenges: the cluster ID (Table 15-1).
    pub trunk_realm: String,
    /// The CAs phones' certificates chain to; trunk peers' chain to the cluster CA.
    pub anchors: PhoneAnchors,
    phones: BTreeMap<String, SipPhone>,
    by_line: HashMap<String, Vec<String>>,
    pub trunks: Vec<SipTrunkEntry>,
}

/// What a [`SipDirectory`] is made of, as the operator projects it for the signaling pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SipDirectoryParts {
    pub realm: String,
    pub trunk_realm: String,
    /// The cluster CA, and during a CA rotation the previous one too.
    #[serde(with = "crate::core::pki::der_base64::list")]
    pub cluster_cas: Vec<Vec<u8>>,
    #[serde(with = "crate::core::pki::der_base64::list")]
    pub manufacturer_cas: Vec<Vec<u8>>,
    pub trunks: Vec<SipTrunkEntry>,
    /// By device name.
    pub phones: BTreeMap<String, SipPhone>,
}

impl SipDirectoryParts {
    pub fn into_directory(self) -> SipDirectory {
        SipDirectory::new(self.realm, self.cluster_cas, self.manufacturer_cas, self.phones.into_values())
            .with_trunks(self.trunk_realm, self.trunks)
    }
}

impl SipDirectory {
    pub fn new(
        realm: String,
        cluster_cas: Vec<Vec<u8>>,
        manufacturer_cas: Vec<Vec<u8>>,
        phones: impl IntoIterator<Item = SipPhone>,
    ) -> Self {
        let phones: BTreeMap<String, SipPhone> = phones.into_iter().map(|phone| (phone.device.clone(), phone)).collect();
        let mut by_line: HashMap<String, Vec<String>> = HashMap::new();
        for phone in phones.values() {
            for line in &phone.lines {
                by_line.entry(line.clone()).or_default().push(phone.device.clone());
            }
        }
        let anchors = PhoneAnchors { cluster_cas, manufacturer_cas };
        SipDirectory { realm, trunk_realm: String::new(), anchors, phones, by_line, trunks: Vec::new() }
    }

    /// The same, with trunks whose challenges carry `trunk_realm`.
    pub fn with_trunks(mut self, trunk_realm: String, trunks: Vec<SipTrunkEntry>) -> Self {
        self.trunk_realm = trunk_realm;
        self.trunks = trunks;
        self
    }

    /// The trunk a request arriving on `local_port` comes from: over TLS the one whose profile lists
    /// the subject of `leaf` (issued by the cluster CA) for that port (Table 14-1), over TCP or UDP
    /// the one with a destination at `source`.
    pub fn trunk_for(&self, local_port: u16, tls: bool, source: Option<IpAddr>, leaf: Option<&[u8]>) -> Option<&SipTrunkEntry> {
        let on_port = self.trunks.iter().filter(|t| t.incoming_port == local_port && t.tls == tls);
        if tls {
            let leaf = leaf.filter(|der| inspect::is_issued_by_any(der, &self.anchors.cluster_cas))?;
            on_port.into_iter().find(|t| {
                let names: Vec<&str> = t.subject_names.iter().map(String::as_str).collect();
                identity::trunk_subject_matches(leaf, &names)
            })
        } else {
            let source = source?;
            on_port.into_iter().find(|t| t.peer_addresses.contains(&source))
        }
    }

    /// The trunk a call to `host` (and `port`, when the URI names one) goes to, and that destination:
    /// the first trunk with it (Table 14-1).
    pub fn trunk_toward(&self, host: &str, port: Option<u16>) -> Option<(&SipTrunkEntry, &TrunkDestinationEntry)> {
        self.trunks.iter().find_map(|trunk| {
            let destination =
                trunk.destinations.iter().find(|d| d.host.eq_ignore_ascii_case(host) && port.is_none_or(|port| port == d.port))?;
            Some((trunk, destination))
        })
    }

    /// The trunk with a destination at `address` (an IP address and port): the peer of a connection
    /// this service dialled.
    pub fn trunk_dialled(&self, address: std::net::SocketAddr) -> Option<&SipTrunkEntry> {
        self.trunks.iter().find(|t| {
            t.destinations.iter().any(|d| d.port == address.port() && d.host.parse::<IpAddr>().is_ok_and(|ip| ip == address.ip()))
        })
    }

    /// Whether some trunk listens on `port`.
    pub fn is_trunk_port(&self, port: u16) -> bool {
        self.trunks.iter().any(|t| t.incoming_port == port)
    }

    pub fn phone(&self, device: &str) -> Option<&SipPhone> {
        self.phones.get(device)
    }

    /// The phones that have `line` among their directory numbers (a shared line has several).
    pub fn phones_with_line(&self, line: &str) -> impl Iterator<Item = &SipPhone> {
        self.by_line.get(line).into_iter().flatten().filter_map(|device| self.phones.get(device))
    }

    pub fn len(&self) -> usize {
        self.phones.len()
    }

    pub fn is_empty(&self) -> bool {
        self.phones.is_empty()
    }
}
