//! What the signaling service knows of the cluster: its realm, and for each SIP phone the lines it
//! may register, the transport and certificate its profile demands, and the digest credentials it
//! answers with. The operator and `callguard local` build it from the resources; the service only
//! looks things up.

use std::collections::{BTreeMap, HashMap};

use crate::api::{DeviceSecurityMode, SipTransport};
use crate::core::phone_config::DigestAuth;

/// One SIP phone.
#[derive(Clone, Debug)]
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

/// The phones, indexed by device name and by line.
#[derive(Clone, Debug, Default)]
pub struct SipDirectory {
    pub realm: String,
    pub cluster_ca: Vec<u8>,
    pub manufacturer_cas: Vec<Vec<u8>>,
    phones: BTreeMap<String, SipPhone>,
    by_line: HashMap<String, Vec<String>>,
}

impl SipDirectory {
    pub fn new(realm: String, cluster_ca: Vec<u8>, manufacturer_cas: Vec<Vec<u8>>, phones: impl IntoIterator<Item = SipPhone>) -> Self {
        let phones: BTreeMap<String, SipPhone> = phones.into_iter().map(|phone| (phone.device.clone(), phone)).collect();
        let mut by_line: HashMap<String, Vec<String>> = HashMap::new();
        for phone in phones.values() {
            for line in &phone.lines {
                by_line.entry(line.clone()).or_default().push(phone.device.clone());
            }
        }
        SipDirectory { realm, cluster_ca, manufacturer_cas, phones, by_line }
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
