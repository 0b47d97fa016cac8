//! What one namespace serves over TFTP: its trust lists, held in memory, and every phone's files,
//! signed the first time they are asked for and cached by content. A cluster of 30 000 phones is
//! ready to serve as soon as it is resolved, and an edit re-signs only the phones it changed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use sha2::{Digest, Sha256};

use super::catalog::{SigningParameters, TftpCatalog};
use super::phone_files::{PhoneFiles, PhonePayloads};
use crate::core::parallel::on_every_core;
use crate::core::trust::{Signer, TrustListKind};
use crate::services::tftp::FileSource;

/// The TFTP certificate and key (P.1-16) with the parameters of the namespace's files.
#[derive(Clone)]
pub struct Signing {
    pub signer: Signer,
    pub parameters: SigningParameters,
}

impl Signing {
    /// A digest of the signer's certificate and the parameters: part of every cache key.
    fn identity(&self) -> [u8; 32] {
        let mut digest = Sha256::new();
        digest.update(self.signer.certificate_der());
        digest.update([self.parameters.hash as u8]);
        digest.update(self.parameters.timestamp.to_be_bytes());
        digest.update([u8::from(self.parameters.has_call_manager_record)]);
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

/// Signs one namespace's phone files on demand, from the payloads the build resolved.
pub struct PhoneRenderer {
    /// By device name (`SEP<MAC>`).
    phones: Arc<BTreeMap<String, PhonePayloads>>,
    signing: Signing,
    signing_identity: [u8; 32],
    /// Each device's content key, computed on its first request: within one renderer its inputs
    /// never change, so a cached answer costs one map lookup.
    keys: HashMap<String, OnceLock<[u8; 32]>>,
    cache: Arc<RenderCache>,
}

impl PhoneRenderer {
    pub fn new(phones: Arc<BTreeMap<String, PhonePayloads>>, signing: Signing) -> Self {
        let keys = phones.keys().map(|device| (device.clone(), OnceLock::new())).collect();
        let signing_identity = signing.identity();
        PhoneRenderer { phones, signing, signing_identity, keys, cache: Arc::default() }
    }

    /// Takes over the cache of an earlier build, dropping the phones that are gone.
    pub fn adopt_cache(&mut self, previous: &PhoneRenderer) {
        previous.cache.retain(|device| self.phones.contains_key(device));
        self.cache = Arc::clone(&previous.cache);
    }

    pub fn cache(&self) -> &Arc<RenderCache> {
        &self.cache
    }

    pub fn device_count(&self) -> usize {
        self.phones.len()
    }

    pub fn contains_device(&self, device: &str) -> bool {
        self.phones.contains_key(device)
    }

    /// The phone's signed files, from the cache when its content has not changed.
    pub fn files(&self, device: &str) -> Result<PhoneFiles, String> {
        let (Some(payloads), Some(key)) = (self.phones.get(device), self.keys.get(device)) else {
            return Err(format!("no phone has device name {device}"));
        };
        let key = *key.get_or_init(|| payloads.content_key(&self.signing_identity));
        let cell = self.cache.cell(device, key);
        let mut signed_now = false;
        let files = cell.get_or_init(|| {
            signed_now = true;
            let parameters = &self.signing.parameters;
            payloads.sign(&self.signing.signer, parameters.hash, parameters.timestamp)
        });
        let counter = if signed_now { &self.cache.renders } else { &self.cache.hits };
        counter.fetch_add(1, Ordering::Relaxed);
        files.clone()
    }

    /// Every phone's files, signed on every core (for `callguard build` and the benchmarks). A phone
    /// whose files cannot be built has none, as its status says.
    pub fn render_all(&self) -> BTreeMap<String, Arc<[u8]>> {
        let devices: Vec<&String> = self.phones.keys().collect();
        on_every_core(&devices, |device| self.files(device).unwrap_or_default()).into_iter().flatten().collect()
    }

    /// The file `name` asks for, when it is a phone's configuration.
    fn file(&self, name: &str) -> Option<Arc<[u8]>> {
        let device = name
            .strip_suffix(".cnf.xml")
            .or_else(|| name.strip_suffix(".cnf.xml.sgn"))
            .or_else(|| name.strip_suffix(".cnf.xml.enc.sgn"))?;
        if !self.phones.contains_key(device) {
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

/// The namespace's TFTP root: the generic trust lists, per-phone copies of them, and the phones'
/// configuration files.
pub struct ServedFiles {
    /// `ITLFile.tlv` and, in mixed mode, `CTLFile.tlv`.
    trust_lists: BTreeMap<String, Arc<[u8]>>,
    pub phones: PhoneRenderer,
}

impl ServedFiles {
    /// Serves `catalog`, signing phone files with `signer` when they are first asked for.
    pub fn new(catalog: TftpCatalog, signer: Signer) -> Self {
        let signing = Signing { signer, parameters: catalog.signing };
        ServedFiles { trust_lists: catalog.trust_lists, phones: PhoneRenderer::new(catalog.phones, signing) }
    }

    pub fn trust_lists(&self) -> &BTreeMap<String, Arc<[u8]>> {
        &self.trust_lists
    }

    /// `ITLSEP<MAC>.tlv` / `CTLSEP<MAC>.tlv`. A per-MAC file carries the generic name in its header,
    /// so the generic list's bytes are a valid per-phone list (P.3-4). It is answered for every
    /// well-formed device name, provisioned or not: the content is public, and answering only for
    /// known MACs would let anyone enumerate the cluster's phones.
    fn per_phone_trust_list(&self, name: &str) -> Option<Arc<[u8]>> {
        for (kind, prefix) in [(TrustListKind::Itl, "ITL"), (TrustListKind::Ctl, "CTL")] {
            if let Some(device) = name.strip_prefix(prefix).and_then(|rest| rest.strip_suffix(".tlv"))
                && is_device_name(device)
            {
                return self.trust_lists.get(kind.filename()).cloned();
            }
        }
        None
    }

    /// Every file, rendered now (for `callguard build` and the benchmarks).
    pub fn render_all(&self) -> BTreeMap<String, Arc<[u8]>> {
        let mut files = self.trust_lists.clone();
        for device in self.phones.phones.keys() {
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

/// `SEP` and twelve upper-case hexadecimal digits, the device name phones ask their files by.
fn is_device_name(name: &str) -> bool {
    name.strip_prefix("SEP").is_some_and(|mac| mac.len() == 12 && mac.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)))
}

impl FileSource for ServedFiles {
    fn get(&self, name: &str) -> Option<Arc<[u8]>> {
        self.trust_lists.get(name).cloned().or_else(|| self.per_phone_trust_list(name)).or_else(|| self.phones.file(name))
    }
}
