//! What the operator hands a data-plane service: exactly what it serves, as Secrets the operator
//! owns, which the service's Role names one by one.
//!
//! The TFTP service gets the namespace's [`TftpCatalog`]: the trust lists, the signing parameters and
//! every phone's resolved payloads. It is written only after validation and the build succeeded, so a
//! pod serves only what the operator validated; an invalid edit leaves the last good projection in
//! place. The pod reads no Callguard object and no Secret a user wrote, so taking it yields the TFTP
//! signing key and the configurations it serves, never the CA key, a token's key or password, or the
//! CAPF key (docs/security-model.md §2.3).
//!
//! Layout, sized for a CallManager cluster of 30 000 phones: an index Secret `<cluster>-tftp-files`
//! holds the trust lists and `catalog.json` (the signing parameters and each shard's name and
//! SHA-256); the phones are spread over shard Secrets `<cluster>-tftp-files-<n>` by a hash of their
//! device name, each a gzip-compressed JSON map kept well under the API's 1 MiB object limit. The
//! shard count doubles until every shard fits, and an edit rewrites only the shard of the phones it
//! touched. The operator writes the shards before the index, and a pod takes a shard only when its
//! SHA-256 is the index's, so it never serves half of an update.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::labels;
use crate::core::build::TvsIdentity;
use crate::core::build::catalog::{SigningParameters, TftpCatalog, trust_lists_only};
use crate::core::build::phone_files::PhonePayloads;
use crate::core::build::vouched::Vouched;
use crate::core::parallel::on_every_core;
use crate::core::pki::ca::certificate_pem;
use crate::core::pki::keys;
use crate::services::sip::directory::{SipDirectoryParts, SipPhone};

/// The index's key for the catalog description.
const CATALOG_KEY: &str = "catalog.json";
/// A shard's only key.
const SHARD_KEY: &str = "phones.json.gz";
/// The most compressed bytes a shard holds: the API refuses objects over 1 MiB, and base64 in etcd
/// plus metadata must fit beside it.
pub const MAX_SHARD_BYTES: usize = 512 * 1024;
/// The most a shard may inflate to when read: a Secret is written by whoever may write Secrets, and a
/// small one must not make a pod allocate without bound.
pub const MAX_SHARD_INFLATED_BYTES: u64 = 64 * 1024 * 1024;
/// Uncompressed bytes per shard to start from (configuration XML compresses about tenfold).
const START_SHARD_INFLATED_BYTES: usize = 2 * 1024 * 1024;
/// More shards than this means something is wrong with the input, not the cluster's size.
const MAX_SHARDS: usize = 4096;

/// The index's description of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CatalogIndex {
    signing: SigningParameters,
    phones: usize,
    shards: Vec<ShardRef>,
}

/// A shard by name and the SHA-256 of its compressed bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRef {
    pub name: String,
    pub sha256: String,
}

/// The Secrets that carry a catalog: the index, and the shards in order.
pub struct Projection {
    pub index: Secret,
    pub shards: Vec<Secret>,
}

impl Projection {
    /// Every Secret name, for the Role that lets the pod read them and nothing else.
    pub fn names(&self) -> Vec<String> {
        std::iter::once(&self.index).chain(&self.shards).filter_map(|s| s.metadata.name.clone()).collect()
    }
}

/// The index Secret of `cluster`'s TFTP projection.
pub fn index_name(cluster: &str) -> String {
    format!("{cluster}-tftp-files")
}

/// Which shard of `count` a device's payloads go to: a stable hash, so a device stays put.
fn shard_of(device: &str, count: usize) -> usize {
    let digest = Sha256::digest(device.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % count as u64) as usize
}

fn secret(name: String, cluster: &str, data: BTreeMap<String, ByteString>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name),
            labels: Some(labels::owned(cluster, labels::PROJECTION_COMPONENT)),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    }
}

fn compress(json: &[u8]) -> Result<Vec<u8>, String> {
    remembered(Sha256::digest(json).into(), || gzip(json))
}

/// Gzip with no time in its header, so that equal input gives equal bytes and an unchanged shard is
/// an unchanged object.
fn gzip(json: &[u8]) -> Result<Vec<u8>, String> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(json).map_err(|e| e.to_string())?;
    encoder.finish().map_err(|e| e.to_string())
}

/// The compressed bytes made for `key` before, or `make`'s, remembered: an edit to one phone
/// changes one shard of many, and the others are not compressed again. `key` is a SHA-256 of all
/// that the bytes are made of.
fn remembered(key: [u8; 32], make: impl FnOnce() -> Result<Vec<u8>, String>) -> Result<Vec<u8>, String> {
    static COMPRESSED: std::sync::Mutex<BTreeMap<[u8; 32], Vec<u8>>> = std::sync::Mutex::new(BTreeMap::new());
    /// Compressed bytes remembered, at most (`cargo bench --bench reconcile` prints what a
    /// namespace of 30,000 phones projects).
    const REMEMBERED_BYTES: usize = 32 * 1024 * 1024;
    if let Some(known) = COMPRESSED.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(known.clone());
    }
    let compressed = make()?;
    let mut remembered = COMPRESSED.lock().unwrap_or_else(|e| e.into_inner());
    if remembered.values().map(Vec::len).sum::<usize>() + compressed.len() > REMEMBERED_BYTES {
        remembered.clear();
    }
    remembered.insert(key, compressed.clone());
    Ok(compressed)
}

/// The key of a shard's compressed bytes: its entries' keys and digests, in order. Equal keys give
/// equal JSON, so an unchanged shard is found without writing its JSON again.
fn shard_key<T>(entries: &[(&str, &T, [u8; 32])]) -> [u8; 32] {
    let mut digest = Sha256::new();
    digest.update(b"callguard projection shard\0");
    for (key, _, entry) in entries {
        // Length-prefixed, so that no two different lists run together into the same bytes.
        digest.update((key.len() as u64).to_be_bytes());
        digest.update(key.as_bytes());
        digest.update(entry);
    }
    digest.finalize().into()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The entries of `map` spread over Secrets `<base>-<n>` by a hash of their key, as many as it takes
/// for each to fit [`MAX_SHARD_BYTES`] compressed; `estimate` guesses an entry's JSON size to start
/// from. Each shard with its reference, in order.
fn shard_secrets<T: Serialize + Sync>(
    cluster: &str,
    base: &str,
    map: &BTreeMap<String, T>,
    estimate: impl Fn(&T) -> usize,
    digest: impl Fn(&T) -> [u8; 32] + Sync,
    what: &str,
) -> Result<Vec<(ShardRef, Secret)>, String> {
    let inflated: usize = map.values().map(estimate).sum();
    let mut count = inflated.div_ceil(START_SHARD_INFLATED_BYTES).max(1).next_power_of_two();
    // Each entry's digest, on every core: the shards are then looked up by their entries' digests,
    // and only a shard that changed is written as JSON and compressed.
    let entries: Vec<(&String, &T)> = map.iter().collect();
    let digests = on_every_core(&entries, |(_, value)| digest(value));
    loop {
        let mut groups: Vec<Vec<(&str, &T, [u8; 32])>> = (0..count).map(|_| Vec::new()).collect();
        // In the map's order, so each group is in key order, as its JSON map is.
        for ((key, value), digest) in entries.iter().zip(&digests) {
            groups[shard_of(key, count)].push((key.as_str(), *value, *digest));
        }
        let mut compressed = Vec::with_capacity(count);
        for group in &groups {
            compressed.push(remembered(shard_key(group), || {
                let members: BTreeMap<&str, &T> = group.iter().map(|(key, value, _)| (*key, *value)).collect();
                gzip(&serde_json::to_vec(&members).map_err(|e| e.to_string())?)
            })?);
        }
        if compressed.iter().any(|bytes| bytes.len() > MAX_SHARD_BYTES) {
            count *= 2;
            if count > MAX_SHARDS {
                return Err(format!("{what} does not fit in {MAX_SHARDS} Secrets of {MAX_SHARD_BYTES} bytes"));
            }
            continue;
        }
        return Ok(compressed
            .into_iter()
            .enumerate()
            .map(|(i, bytes)| {
                let reference = ShardRef { name: format!("{base}-{i}"), sha256: sha256_hex(&bytes) };
                let secret = secret(reference.name.clone(), cluster, BTreeMap::from([(SHARD_KEY.to_owned(), ByteString(bytes))]));
                (reference, secret)
            })
            .collect());
    }
}

/// The catalog as Secrets, with as many shards as it takes for each to fit [`MAX_SHARD_BYTES`].
pub fn project(cluster: &str, catalog: &TftpCatalog) -> Result<Projection, String> {
    let estimate = |p: &PhonePayloads| p.path.len() * 4 + 2048;
    let shards = shard_secrets(cluster, &index_name(cluster), &catalog.phones, estimate, PhonePayloads::digest, "the TFTP catalog")?;
    let description = CatalogIndex {
        signing: catalog.signing,
        phones: catalog.phones.len(),
        shards: shards.iter().map(|(reference, _)| reference.clone()).collect(),
    };
    let mut data: BTreeMap<String, ByteString> =
        catalog.trust_lists.iter().map(|(name, bytes)| (name.clone(), ByteString(bytes.to_vec()))).collect();
    data.insert(CATALOG_KEY.to_owned(), ByteString(serde_json::to_vec(&description).map_err(|e| e.to_string())?));
    Ok(Projection { index: secret(index_name(cluster), cluster, data), shards: shards.into_iter().map(|(_, s)| s).collect() })
}

/// The key of the TVS projection that lists what TVS vouches for (`core::build::vouched`).
const TVS_DIRECTORY_KEY: &str = "directory.json";
/// Present, `Enabled`, when the cluster sets `spec.legacyTls: Enabled`.
const TVS_LEGACY_TLS_KEY: &str = "legacyTls";
/// The most `directory.json` may hold: what one Secret can (the API refuses objects over 1 MiB).
pub const MAX_TVS_DIRECTORY_BYTES: usize = 1024 * 1024;

/// The Secret of `cluster`'s TVS projection.
pub fn tvs_name(cluster: &str) -> String {
    format!("{cluster}-tvs")
}

/// What the TVS service needs, as one Secret: `tls.crt` and `tls.key`, the certificate it presents
/// and its key (the first node's TVS certificate, which the ITL lists), and `directory.json`, the certificates it
/// vouches for with their role codes, by name. No CA key, no token key, no other function's key.
pub fn project_tvs(cluster: &str, tvs: &TvsIdentity) -> Result<Secret, String> {
    let certificate = &tvs.certificate;
    let directory = serde_json::to_vec(&tvs.vouched).map_err(|e| e.to_string())?;
    if directory.len() > MAX_TVS_DIRECTORY_BYTES {
        return Err(format!("the TVS directory ({} certificates) does not fit in one Secret", tvs.vouched.len()));
    }
    let mut data = BTreeMap::from([
        ("tls.crt".to_owned(), ByteString(certificate_pem(&certificate.certificate_der).into_bytes())),
        ("tls.key".to_owned(), ByteString(keys::pkcs8_pem(&certificate.key).as_bytes().to_vec())),
        (TVS_DIRECTORY_KEY.to_owned(), ByteString(directory)),
    ]);
    if tvs.legacy_tls {
        data.insert(TVS_LEGACY_TLS_KEY.to_owned(), ByteString(b"Enabled".to_vec()));
    }
    let mut secret = secret(tvs_name(cluster), cluster, data);
    secret.type_ = Some("kubernetes.io/tls".into());
    Ok(secret)
}

/// The certificate (DER) and key of a TLS Secret (`tls.crt`, `tls.key`); every message names the
/// Secret and the key.
pub fn tls_pair(secret: &Secret) -> Result<(Vec<u8>, rsa::RsaPrivateKey), String> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let data = secret.data.as_ref().ok_or_else(|| format!("Secret/{name} has no data"))?;
    let field = |key: &str| data.get(key).map(|b| b.0.as_slice()).ok_or_else(|| format!("Secret/{name} has no {key}"));
    let certificate_der =
        crate::core::pki::inspect::certificate_der(field("tls.crt")?).map_err(|e| format!("Secret/{name}: tls.crt: {e}"))?;
    let key_pem = std::str::from_utf8(field("tls.key")?).map_err(|_| format!("Secret/{name}: tls.key is not PEM"))?;
    let key = keys::from_pem(key_pem).map_err(|e| format!("Secret/{name}: tls.key: {e}"))?;
    Ok((certificate_der, key))
}

/// What a TVS projection says.
pub struct TvsView {
    pub certificate_der: Vec<u8>,
    pub key: rsa::RsaPrivateKey,
    pub vouched: Vec<Vouched>,
    pub legacy_tls: bool,
}

/// Reads a TVS projection Secret; every message names the Secret and the key.
pub fn read_tvs(secret: &Secret) -> Result<TvsView, String> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let (certificate_der, key) = tls_pair(secret)?;
    let directory = secret
        .data
        .as_ref()
        .and_then(|d| d.get(TVS_DIRECTORY_KEY))
        .map(|b| b.0.as_slice())
        .ok_or_else(|| format!("Secret/{name} has no {TVS_DIRECTORY_KEY}"))?;
    if directory.len() > MAX_TVS_DIRECTORY_BYTES {
        return Err(format!(
            "Secret/{name}: {TVS_DIRECTORY_KEY} is over {MAX_TVS_DIRECTORY_BYTES} bytes: refused (docs/security-model.md §4.6)"
        ));
    }
    let vouched = serde_json::from_slice(directory).map_err(|e| format!("Secret/{name}: {TVS_DIRECTORY_KEY}: {e}"))?;
    let legacy_tls = secret.data.as_ref().and_then(|d| d.get(TVS_LEGACY_TLS_KEY)).is_some_and(|v| v.0 == b"Enabled");
    Ok(TvsView { certificate_der, key, vouched, legacy_tls })
}

/// What an index Secret says: the trust lists, the signing parameters and the shards to fetch.
pub struct IndexView {
    pub trust_lists: BTreeMap<String, Arc<[u8]>>,
    pub signing: SigningParameters,
    pub phones: usize,
    pub shards: Vec<ShardRef>,
}

/// Reads an index Secret. Only the ITL and the CTL are taken of its keys.
pub fn read_index(index: &Secret) -> Result<IndexView, String> {
    let name = index.metadata.name.clone().unwrap_or_default();
    let data = index.data.as_ref().ok_or_else(|| format!("Secret/{name} has no data"))?;
    let description = data.get(CATALOG_KEY).ok_or_else(|| format!("Secret/{name} has no {CATALOG_KEY}"))?;
    let description: CatalogIndex = serde_json::from_slice(&description.0).map_err(|e| format!("Secret/{name}: {CATALOG_KEY}: {e}"))?;
    let trust_lists =
        trust_lists_only(data.iter().map(|(key, value)| (key.as_str(), value.0.as_slice()))).map_err(|e| format!("Secret/{name}: {e}"))?;
    Ok(IndexView { trust_lists, signing: description.signing, phones: description.phones, shards: description.shards })
}

/// Reads a shard Secret, checking it is the one the index names (by SHA-256) and inflating at most
/// [`MAX_SHARD_INFLATED_BYTES`].
pub fn read_shard<T: serde::de::DeserializeOwned>(shard: &Secret, expected: &ShardRef) -> Result<BTreeMap<String, T>, String> {
    let name = &expected.name;
    let bytes = shard.data.as_ref().and_then(|d| d.get(SHARD_KEY)).ok_or_else(|| format!("Secret/{name} has no {SHARD_KEY}"))?;
    if sha256_hex(&bytes.0) != expected.sha256 {
        return Err(format!("Secret/{name} is not the shard the index names (being updated?)"));
    }
    inflate_json(name, &bytes.0)
}

/// Gzip-compressed JSON, inflated no further than [`MAX_SHARD_INFLATED_BYTES`].
fn inflate_json<T: serde::de::DeserializeOwned>(name: &str, bytes: &[u8]) -> Result<T, String> {
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(MAX_SHARD_INFLATED_BYTES + 1)
        .read_to_end(&mut json)
        .map_err(|e| format!("Secret/{name}: {e}"))?;
    if json.len() as u64 > MAX_SHARD_INFLATED_BYTES {
        return Err(format!("Secret/{name} inflates to more than {MAX_SHARD_INFLATED_BYTES} bytes: refused"));
    }
    serde_json::from_slice(&json).map_err(|e| format!("Secret/{name}: {e}"))
}

/// The key of the CAPF projection: its [`CapfProjection`], gzip-compressed JSON.
const CAPF_DIRECTORY_KEY: &str = "directory.json.gz";

/// The Secret of `cluster`'s CAPF projection.
pub fn capf_name(cluster: &str) -> String {
    format!("{cluster}-capf")
}

/// What the CAPF pods need besides the two Secrets they read by name (the cluster CA's, whose key
/// issues LSCs, and the CAPF certificate's, which TLS presents): the phones CAPF may enroll, with
/// their profile's mode, key size, operation and authentication string (P.6-6, Table 5-1), and the
/// cluster's CAPF parameters.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapfProjection {
    /// The node that runs CAPF, and its host name, as the CAPF certificate names them.
    pub node: String,
    pub hostname: String,
    pub directory: crate::adapters::capf::Update,
}

/// The CAPF projection as one Secret; a directory that does not fit one Secret is refused with its size.
pub fn project_capf(cluster: &str, projection: &CapfProjection) -> Result<Secret, String> {
    let json = serde_json::to_vec(projection).map_err(|e| e.to_string())?;
    let compressed = compress(&json)?;
    if compressed.len() > MAX_SHARD_BYTES {
        return Err(format!(
            "the CAPF directory ({} phones) compresses to {} bytes, more than the {MAX_SHARD_BYTES} one Secret holds",
            projection.directory.len(),
            compressed.len()
        ));
    }
    Ok(secret(capf_name(cluster), cluster, BTreeMap::from([(CAPF_DIRECTORY_KEY.to_owned(), ByteString(compressed))])))
}

/// Reads a CAPF projection Secret.
pub fn read_capf(secret: &Secret) -> Result<CapfProjection, String> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let bytes =
        secret.data.as_ref().and_then(|d| d.get(CAPF_DIRECTORY_KEY)).ok_or_else(|| format!("Secret/{name} has no {CAPF_DIRECTORY_KEY}"))?;
    inflate_json(&name, &bytes.0)
}

/// The key of the SIP projection's index: its [`SipIndex`], JSON.
const SIP_INDEX_KEY: &str = "sip.json";

/// The index Secret of `cluster`'s SIP projection; its phones are in `<cluster>-sip-<n>`.
pub fn sip_name(cluster: &str) -> String {
    format!("{cluster}-sip")
}

/// What the signaling pods need besides the node certificates they present: the cluster's SIP ports,
/// and the directory (realms, CAs, trunks with their application users' credentials, phones with
/// their digest credentials and current LSC's SHA-256). No key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SipProjection {
    /// `spec.ports.sipPort` and `sipSecurePort`: where the trunks that share the phones' ports arrive.
    pub sip_port: u16,
    pub sip_tls_port: u16,
    /// `spec.legacyTls: Enabled`: TLS 1.0 and 1.1 on the SIP-TLS ports too.
    #[serde(default)]
    pub legacy_tls: bool,
    pub directory: SipDirectoryParts,
}

/// The index: the projection without its phones, and the shards that hold them.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SipIndex {
    #[serde(flatten)]
    projection: SipProjection,
    phones: usize,
    shards: Vec<ShardRef>,
}

/// The SIP projection as Secrets: the phones in shards, written before the index that names them.
pub fn project_sip(cluster: &str, projection: &SipProjection) -> Result<Projection, String> {
    let phones = &projection.directory.phones;
    let digest = |phone: &SipPhone| Sha256::digest(serde_json::to_vec(phone).unwrap_or_default()).into();
    let shards = shard_secrets(cluster, &sip_name(cluster), phones, |_| 512, digest, "the SIP directory")?;
    let mut header = projection.clone();
    header.directory.phones.clear();
    let index = SipIndex { projection: header, phones: phones.len(), shards: shards.iter().map(|(r, _)| r.clone()).collect() };
    let json = serde_json::to_vec(&index).map_err(|e| e.to_string())?;
    if json.len() > MAX_TVS_DIRECTORY_BYTES {
        return Err(format!("the SIP trunks and CAs ({} bytes) do not fit in one Secret", json.len()));
    }
    let index = secret(sip_name(cluster), cluster, BTreeMap::from([(SIP_INDEX_KEY.to_owned(), ByteString(json))]));
    Ok(Projection { index, shards: shards.into_iter().map(|(_, s)| s).collect() })
}

/// What a SIP index Secret says: the projection without phones, and the shards to fetch.
pub struct SipIndexView {
    pub projection: SipProjection,
    pub phones: usize,
    pub shards: Vec<ShardRef>,
}

/// Reads a SIP index Secret.
pub fn read_sip_index(secret: &Secret) -> Result<SipIndexView, String> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let bytes = secret.data.as_ref().and_then(|d| d.get(SIP_INDEX_KEY)).ok_or_else(|| format!("Secret/{name} has no {SIP_INDEX_KEY}"))?;
    if bytes.0.len() > MAX_TVS_DIRECTORY_BYTES {
        return Err(format!("Secret/{name}: {SIP_INDEX_KEY} is over {MAX_TVS_DIRECTORY_BYTES} bytes: refused"));
    }
    let index: SipIndex = serde_json::from_slice(&bytes.0).map_err(|e| format!("Secret/{name}: {SIP_INDEX_KEY}: {e}"))?;
    Ok(SipIndexView { projection: index.projection, phones: index.phones, shards: index.shards })
}

/// The projection from its index and shards.
pub fn assemble_sip(index: SipIndexView, shards: Vec<BTreeMap<String, SipPhone>>) -> Result<SipProjection, String> {
    let mut projection = index.projection;
    projection.directory.phones = shards.into_iter().flatten().collect();
    if projection.directory.phones.len() != index.phones {
        return Err(format!("the shards hold {} phones, the index {}", projection.directory.phones.len(), index.phones));
    }
    Ok(projection)
}

/// The catalog from its index and shards (in the index's order).
pub fn assemble(index: IndexView, shards: Vec<BTreeMap<String, PhonePayloads>>) -> Result<TftpCatalog, String> {
    let phones: BTreeMap<String, PhonePayloads> = shards.into_iter().flatten().collect();
    if phones.len() != index.phones {
        return Err(format!("the shards hold {} phones, the index {}", phones.len(), index.phones));
    }
    Ok(TftpCatalog { trust_lists: index.trust_lists, signing: index.signing, phones: Arc::new(phones) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::trust::HashAlgorithm;

    fn payloads(device: &str, filler: usize) -> PhonePayloads {
        // Random-looking text does not compress: it forces shards to split.
        let mut state = device.len() as u64 + filler as u64;
        let noise: String = (0..filler)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                char::from(b'a' + (state >> 59) as u8)
            })
            .collect();
        serde_json::from_value(serde_json::json!({"path": format!("{device}.cnf.xml"), "full": noise, "plainAllowed": false})).unwrap()
    }

    fn catalog(phones: usize, filler: usize) -> TftpCatalog {
        TftpCatalog {
            trust_lists: BTreeMap::new(),
            signing: SigningParameters { hash: HashAlgorithm::Sha1, timestamp: 7, has_call_manager_record: true },
            phones: Arc::new((0..phones).map(|i| format!("SEP{i:012X}")).map(|d| (d.clone(), payloads(&d, filler))).collect()),
        }
    }

    fn round_trip(projection: &Projection) -> TftpCatalog {
        let index = read_index(&projection.index).unwrap();
        let shards = index.shards.iter().zip(&projection.shards).map(|(reference, shard)| read_shard(shard, reference).unwrap()).collect();
        assemble(index, shards).unwrap()
    }

    #[test]
    fn a_catalog_survives_projection_and_every_shard_fits() {
        let small = catalog(10, 100);
        let projection = project("lab", &small).unwrap();
        assert_eq!(projection.shards.len(), 1);
        assert_eq!(round_trip(&projection), small);
        // 3000 phones of 2 KiB of incompressible text: several shards, each under the limit.
        let large = catalog(3000, 2048);
        let projection = project("lab", &large).unwrap();
        assert!(projection.shards.len() >= 2, "{}", projection.shards.len());
        for shard in &projection.shards {
            assert!(shard.data.as_ref().unwrap()[SHARD_KEY].0.len() <= MAX_SHARD_BYTES);
        }
        assert_eq!(round_trip(&projection), large);
        assert_eq!(projection.names()[0], "lab-tftp-files");
    }

    #[test]
    fn the_same_catalog_gives_the_same_secrets_and_an_edit_touches_one_shard() {
        let before = catalog(3000, 2048);
        let (a, b) = (project("lab", &before).unwrap(), project("lab", &before).unwrap());
        assert_eq!(a.shards, b.shards);
        assert_eq!(a.index, b.index);
        let mut phones = (*before.phones).clone();
        phones.insert("SEP000000000005".into(), payloads("edited", 2048));
        let edited = TftpCatalog { phones: Arc::new(phones), ..before.clone() };
        let after = project("lab", &edited).unwrap();
        let changed = a.shards.iter().zip(&after.shards).filter(|(x, y)| x != y).count();
        assert_eq!(changed, 1);
        assert_eq!(round_trip(&after), edited, "the edited shard carries the edit, not what was remembered");

        // Shards are found again by their phones' digests: a change to any one field is a new shard.
        let mut value = serde_json::to_value(&before.phones["SEP000000000007"]).unwrap();
        value["plainAllowed"] = serde_json::json!(true);
        let mut phones = (*before.phones).clone();
        phones.insert("SEP000000000007".into(), serde_json::from_value(value).unwrap());
        let flag = TftpCatalog { phones: Arc::new(phones), ..before.clone() };
        assert_eq!(round_trip(&project("lab", &flag).unwrap()), flag);
        assert_eq!(round_trip(&project("lab", &before).unwrap()), before, "and the catalog before it is found again");
    }

    #[test]
    fn a_shard_that_is_not_the_indexed_one_or_inflates_too_far_is_refused() {
        let projection = project("lab", &catalog(10, 100)).unwrap();
        let index = read_index(&projection.index).unwrap();
        let mut other = projection.shards[0].clone();
        other.data.as_mut().unwrap().insert(SHARD_KEY.into(), ByteString(compress(b"{}").unwrap()));
        assert!(read_shard::<PhonePayloads>(&other, &index.shards[0]).unwrap_err().contains("not the shard the index names"));
        // A gzip bomb: 100 MiB of zeros in a few hundred KiB.
        let bomb = compress(&vec![b'0'; 100 * 1024 * 1024]).unwrap();
        let reference = ShardRef { name: "lab-tftp-files-0".into(), sha256: sha256_hex(&bomb) };
        let mut shard = projection.shards[0].clone();
        shard.data.as_mut().unwrap().insert(SHARD_KEY.into(), ByteString(bomb));
        assert!(read_shard::<PhonePayloads>(&shard, &reference).unwrap_err().contains("inflates to more than"));
    }

    #[test]
    fn only_the_trust_lists_are_taken_from_the_index() {
        let projection = project("lab", &catalog(1, 10)).unwrap();
        let mut index = projection.index.clone();
        index.data.as_mut().unwrap().insert("SEP000000000000.cnf.xml".into(), ByteString(b"<device/>".to_vec()));
        let view = read_index(&index).unwrap();
        assert!(view.trust_lists.is_empty(), "{:?}", view.trust_lists.keys());
    }

    fn sip_phone(i: usize) -> SipPhone {
        SipPhone {
            subject: format!("Phone/p{i}"),
            device: format!("SEP{i:012X}"),
            lines: vec![format!("{}", 10_000 + i)],
            mode: crate::api::DeviceSecurityMode::Encrypted,
            transport: crate::api::SipTransport::Tls,
            // Random-looking passwords and hashes, as real ones are: they do not compress.
            digest: Some(crate::core::phone_config::DigestAuth {
                name: format!("user{i}"),
                password: sha256_hex(&i.to_be_bytes())[..20].into(),
            }),
            nonce_validity_seconds: 600,
            mic_accepted: false,
            current_lsc_sha256: Some(sha256_hex(format!("lsc{i}").as_bytes())),
        }
    }

    #[test]
    fn the_sip_projection_shards_30000_phones_and_reads_back_whole() {
        let projection = SipProjection {
            sip_port: 5060,
            sip_tls_port: 5061,
            legacy_tls: true,
            directory: SipDirectoryParts {
                realm: "ccmsipline".into(),
                trunk_realm: "Lab".into(),
                cluster_cas: vec![vec![1, 2, 3]],
                manufacturer_cas: vec![vec![4, 5], vec![6]],
                trunks: Vec::new(),
                phones: (0..30_000).map(|i| (format!("SEP{i:012X}"), sip_phone(i))).collect(),
            },
        };
        let secrets = project_sip("lab", &projection).unwrap();
        assert!(secrets.shards.len() >= 2, "{} shard(s)", secrets.shards.len());
        assert!(secrets.shards.iter().all(|s| s.data.as_ref().unwrap()[SHARD_KEY].0.len() <= MAX_SHARD_BYTES));
        assert_eq!(secrets.names()[..2], ["lab-sip".to_owned(), "lab-sip-0".to_owned()]);
        let index = read_sip_index(&secrets.index).unwrap();
        assert!(index.projection.directory.phones.is_empty(), "the index holds no phone");
        let shards: Vec<BTreeMap<String, SipPhone>> =
            index.shards.iter().zip(&secrets.shards).map(|(reference, shard)| read_shard(shard, reference).unwrap()).collect();
        assert_eq!(assemble_sip(index, shards).unwrap(), projection);

        // A shard missing its phones is noticed, not served as a smaller directory.
        let index = read_sip_index(&secrets.index).unwrap();
        let first: BTreeMap<String, SipPhone> = read_shard(&secrets.shards[0], &index.shards[0]).unwrap();
        assert!(assemble_sip(index, vec![first]).unwrap_err().starts_with("the shards hold"));
    }

    #[test]
    fn the_tvs_projection_holds_its_pair_and_directory_and_reads_back() {
        use crate::core::build::identity::FunctionCertificate;
        use crate::core::pki::ca::{CaSettings, ClusterCa};
        use crate::core::pki::issue::{ServerCertificateRequest, ServerRole, issue_server_certificate_with_new_key};
        let now = time::OffsetDateTime::now_utc();
        let ca = ClusterCa::generate(&CaSettings::new("quickstart", "default"), now).unwrap();
        let request = ServerCertificateRequest::short_lived(ServerRole::CallManager, "cm1.example", None, now);
        let issued = issue_server_certificate_with_new_key(&ca, &request).unwrap();
        let vouched = vec![Vouched { name: "cm1.callmanager".into(), roles: vec![1], certificate: issued.certificate_der.clone() }];
        let certificate = FunctionCertificate {
            node: "cm1".into(),
            hostname: "cm1.example".into(),
            role: ServerRole::CallManager,
            certificate_der: issued.certificate_der.clone(),
            key: issued.key.clone(),
        };
        let secret = project_tvs("quickstart", &TvsIdentity { certificate, vouched: vouched.clone(), legacy_tls: false }).unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("quickstart-tvs"));
        let keys: Vec<&String> = secret.data.as_ref().unwrap().keys().collect();
        assert_eq!(keys, ["directory.json", "tls.crt", "tls.key"], "the pair and the directory, nothing else");
        let ca_key = ca.to_pem().private_key;
        assert!(secret.data.as_ref().unwrap().values().all(|v| v.0 != ca_key.as_bytes()), "no CA key");
        let view = read_tvs(&secret).unwrap();
        assert_eq!((view.certificate_der, view.vouched), (issued.certificate_der, vouched));
        assert_eq!(view.key, issued.key);

        let mut missing = secret.clone();
        missing.data.as_mut().unwrap().remove("directory.json");
        assert_eq!(read_tvs(&missing).err().unwrap(), "Secret/quickstart-tvs has no directory.json");
    }
}
