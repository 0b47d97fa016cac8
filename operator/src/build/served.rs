//! What one namespace serves over TFTP: its trust lists, held in memory, and every phone's files,
//! rendered and signed the first time they are asked for and cached by content (DESIGN: data plane
//! reads, it does not copy). A cluster of 30 000 phones is ready to serve as soon as it is resolved,
//! and an edit re-signs only the phones it changed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use sha2::{Digest, Sha256};

use super::phone_files::{PhoneContext, PhoneFiles, PhonePayloads, resolve_phone};
use super::{BLOCKING_PHONE_CONDITIONS, ResourceStatus};
use crate::api::CallControlCluster;
use crate::phone_config::TrustFacts;
use crate::tftp::FileSource;
use crate::trust::{HashAlgorithm, Signer, TrustListKind};
use crate::validate::Snapshot;

/// Everything a phone's files derive from, apart from the phone itself.
#[derive(Clone)]
pub struct Signing {
    /// The TFTP certificate and key (spec/04 §4).
    pub signer: Signer,
    pub hash: HashAlgorithm,
    /// The ITL's header timestamp, so unchanged input gives unchanged files.
    pub timestamp: u32,
    pub trust: TrustFacts,
}

impl Signing {
    /// Signing with `signer` under the cluster's `itl`: its timestamp, and whether it lists a
    /// CallManager (spec/04 §6.1).
    pub fn from_itl(signer: Signer, hash: HashAlgorithm, itl: &crate::trust::TrustList) -> Self {
        use crate::trust::Role;
        let has_call_manager_record = itl.records.iter().any(|r| matches!(r.role, Role::Ccm | Role::CcmTftp));
        Signing { signer, hash, timestamp: itl.header.timestamp, trust: TrustFacts { has_call_manager_record } }
    }

    /// A digest of the signer's certificate, the hash and the timestamp: part of every cache key.
    fn identity(&self) -> [u8; 32] {
        let mut digest = Sha256::new();
        digest.update(self.signer.certificate_der());
        digest.update([self.hash as u8]);
        digest.update(self.timestamp.to_be_bytes());
        digest.update([u8::from(self.trust.has_call_manager_record)]);
        digest.finalize().into()
    }
}

/// Signed phone files by device name, each with the key of the content it was signed from. Shared
/// from one build to the next, so that an unchanged phone keeps its bytes (an encrypted file would
/// otherwise change with every fresh AES key).
#[derive(Default)]
pub struct RenderCache {
    entries: Mutex<HashMap<String, CacheEntry>>,
    renders: AtomicU64,
    hits: AtomicU64,
}

struct CacheEntry {
    key: [u8; 32],
    /// Filled once; concurrent requests for the same phone wait for one signature, not several.
    files: Arc<OnceLock<Result<PhoneFiles, String>>>,
}

/// How often the cache signed and how often it answered from memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheCounters {
    pub renders: u64,
    pub hits: u64,
    pub entries: usize,
}

impl RenderCache {
    pub fn counters(&self) -> CacheCounters {
        CacheCounters { renders: self.renders.load(Ordering::Relaxed), hits: self.hits.load(Ordering::Relaxed), entries: self.lock().len() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CacheEntry>> {
        // A poisoned map still holds whole entries (each insert is one statement): keep using it.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cell for `device` signed from `key`, replacing one signed from other content.
    fn cell(&self, device: &str, key: [u8; 32]) -> Arc<OnceLock<Result<PhoneFiles, String>>> {
        let mut entries = self.lock();
        match entries.get(device) {
            Some(entry) if entry.key == key => Arc::clone(&entry.files),
            _ => {
                let files = Arc::new(OnceLock::new());
                entries.insert(device.to_owned(), CacheEntry { key, files: Arc::clone(&files) });
                files
            }
        }
    }

    fn retain(&self, mut keep: impl FnMut(&str) -> bool) {
        self.lock().retain(|device, _| keep(device));
    }
}

/// Renders one namespace's phone files on demand.
pub struct PhoneRenderer {
    snapshot: Arc<Snapshot>,
    cluster: String,
    signing: Signing,
    signing_identity: [u8; 32],
    /// Device name (`SEP<MAC>`) to the Phone's object name.
    devices: HashMap<String, String>,
    /// Device name to its certificate (LSC or MIC), DER.
    certificates: HashMap<String, Vec<u8>>,
    /// Each device's content key, computed on its first request: within one renderer its inputs
    /// never change, so a cached answer costs no resolving and no rendering.
    keys: HashMap<String, OnceLock<Result<[u8; 32], String>>>,
    cache: Arc<RenderCache>,
}

impl PhoneRenderer {
    /// `cluster` names the snapshot's CallControlCluster; `certificates` maps device names to DER.
    pub fn new(snapshot: Arc<Snapshot>, cluster: String, signing: Signing, certificates: HashMap<String, Vec<u8>>) -> Self {
        let devices: HashMap<String, String> =
            snapshot.phones.iter().map(|(name, phone)| (phone.spec.device_name(), name.clone())).collect();
        let keys = devices.keys().map(|device| (device.clone(), OnceLock::new())).collect();
        let signing_identity = signing.identity();
        PhoneRenderer { snapshot, cluster, signing, signing_identity, devices, certificates, keys, cache: Arc::default() }
    }

    /// Takes over the cache of an earlier build, dropping the phones that are gone.
    pub fn adopt_cache(&mut self, previous: &PhoneRenderer) {
        previous.cache.retain(|device| self.devices.contains_key(device));
        self.cache = Arc::clone(&previous.cache);
    }

    pub fn cache(&self) -> &Arc<RenderCache> {
        &self.cache
    }

    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    pub fn contains_device(&self, device: &str) -> bool {
        self.devices.contains_key(device)
    }

    fn cluster(&self) -> Result<&CallControlCluster, String> {
        self.snapshot.clusters.get(&self.cluster).ok_or_else(|| format!("CallControlCluster/{} is gone", self.cluster))
    }

    fn payloads(&self, device: &str) -> Result<PhonePayloads, String> {
        let phone_name = self.devices.get(device).ok_or_else(|| format!("no phone has device name {device}"))?;
        let phone = self.snapshot.phones.get(phone_name).ok_or_else(|| format!("Phone/{phone_name} is gone"))?;
        let context = PhoneContext {
            snapshot: &self.snapshot,
            cluster: self.cluster()?,
            signer: &self.signing.signer,
            hash: self.signing.hash,
            timestamp: self.signing.timestamp,
            trust: self.signing.trust,
        };
        resolve_phone(&context, phone, self.certificates.get(device).map(Vec::as_slice))
    }

    /// The phone's signed files, from the cache when its content has not changed.
    pub fn files(&self, device: &str) -> Result<PhoneFiles, String> {
        let key = self.keys.get(device).ok_or_else(|| format!("no phone has device name {device}"))?;
        let key = key.get_or_init(|| self.payloads(device).map(|p| p.content_key(&self.signing_identity))).clone()?;
        let cell = self.cache.cell(device, key);
        let mut signed_now = false;
        let files = cell.get_or_init(|| {
            signed_now = true;
            self.payloads(device)?.sign(&self.signing.signer, self.signing.hash, self.signing.timestamp)
        });
        let counter = if signed_now { &self.cache.renders } else { &self.cache.hits };
        counter.fetch_add(1, Ordering::Relaxed);
        files.clone()
    }

    /// One status per phone: Ready, or why its configuration is not what its spec asks. Resolving is
    /// cheap next to signing, but 30 000 phones still go faster on every core.
    pub fn statuses(&self) -> Vec<ResourceStatus> {
        let names: Vec<(&String, &String)> = self.devices.iter().collect();
        let statuses = on_every_core(&names, |(device, name)| match self.payloads(device) {
            Ok(payloads) => phone_status(name, &payloads.conditions),
            Err(message) => ResourceStatus::not_ready("Phone", name, "ConfigurationRefused", message),
        });
        let mut statuses: Vec<ResourceStatus> = statuses;
        statuses.sort_by(|a, b| a.name.cmp(&b.name));
        statuses
    }

    /// Every phone's files, signed on every core (for `callguard build` and the benchmarks). A phone
    /// whose files cannot be built has none, as its status says.
    pub fn render_all(&self) -> BTreeMap<String, Arc<[u8]>> {
        let devices: Vec<&String> = self.devices.keys().collect();
        on_every_core(&devices, |device| self.files(device).unwrap_or_default()).into_iter().flatten().collect()
    }

    /// The file `name` asks for, when it is a phone's configuration.
    fn file(&self, name: &str) -> Option<Arc<[u8]>> {
        let device = name
            .strip_suffix(".cnf.xml")
            .or_else(|| name.strip_suffix(".cnf.xml.sgn"))
            .or_else(|| name.strip_suffix(".cnf.xml.enc.sgn"))?;
        if !self.devices.contains_key(device) {
            return None;
        }
        match self.files(device) {
            Ok(files) => files.into_iter().find(|(file, _)| file == name).map(|(_, bytes)| bytes),
            Err(message) => {
                tracing::warn!(file = name, "cannot render: {message}");
                None
            }
        }
    }
}

/// Runs `job` over `items` on every core, keeping the order.
fn on_every_core<T: Sync, R: Send>(items: &[T], job: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let chunk = items.len().div_ceil(workers).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items.chunks(chunk).map(|items| scope.spawn(|| items.iter().map(&job).collect::<Vec<_>>())).collect();
        // A panic in a job is a bug in this crate, not bad input: let it surface.
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    })
}

fn phone_status(name: &str, conditions: &[(&'static str, String)]) -> ResourceStatus {
    let blocking = conditions.iter().find(|(reason, _)| BLOCKING_PHONE_CONDITIONS.contains(reason));
    let others = conditions.iter().filter(|c| Some(*c) != blocking).map(|(reason, message)| format!("{reason}: {message}"));
    match blocking {
        Some((reason, message)) => {
            let message = std::iter::once(message.clone()).chain(others).collect::<Vec<_>>().join("; ");
            ResourceStatus::not_ready("Phone", name, reason, message)
        }
        None => ResourceStatus { message: others.collect::<Vec<_>>().join("; "), ..ResourceStatus::ready("Phone", name) },
    }
}

/// The namespace's TFTP root: the generic trust lists, per-phone copies of them, and the phones'
/// configuration files.
pub struct ServedFiles {
    /// `ITLFile.tlv` and, in mixed mode, `CTLFile.tlv`.
    trust_lists: BTreeMap<String, Arc<[u8]>>,
    pub phones: PhoneRenderer,
}

impl ServedFiles {
    pub fn new(trust_lists: BTreeMap<String, Arc<[u8]>>, phones: PhoneRenderer) -> Self {
        ServedFiles { trust_lists, phones }
    }

    pub fn trust_lists(&self) -> &BTreeMap<String, Arc<[u8]>> {
        &self.trust_lists
    }

    /// `ITLSEP<MAC>.tlv` / `CTLSEP<MAC>.tlv` of a known phone. A per-MAC file carries the generic name
    /// in its header, so the generic list's bytes are a valid per-phone list (spec/04 §3.1). Per-phone
    /// lists with extra records are not modelled yet, so every phone gets the cluster's.
    fn per_phone_trust_list(&self, name: &str) -> Option<Arc<[u8]>> {
        for (kind, prefix) in [(TrustListKind::Itl, "ITL"), (TrustListKind::Ctl, "CTL")] {
            if let Some(device) = name.strip_prefix(prefix).and_then(|rest| rest.strip_suffix(".tlv"))
                && self.phones.contains_device(device)
            {
                return self.trust_lists.get(kind.filename()).cloned();
            }
        }
        None
    }

    /// Every file, rendered now (for `callguard build` and the benchmarks).
    pub fn render_all(&self) -> BTreeMap<String, Arc<[u8]>> {
        let mut files = self.trust_lists.clone();
        for device in self.phones.devices.keys() {
            for prefix in ["ITL", "CTL"] {
                let name = format!("{prefix}{device}.tlv");
                if let Some(bytes) = self.per_phone_trust_list(&name) {
                    files.insert(name, bytes);
                }
            }
        }
        files.extend(self.phones.render_all());
        files
    }
}

impl FileSource for ServedFiles {
    fn get(&self, name: &str) -> Option<Arc<[u8]>> {
        self.trust_lists.get(name).cloned().or_else(|| self.per_phone_trust_list(name)).or_else(|| self.phones.file(name))
    }
}
