//! Where what CAPF did lives in Kubernetes: each phone's record (`capf/SEP<MAC>.yaml`) and the LSC
//! it issued (`devices/SEP<MAC>.crt`) are two keys of one of up to 256 Secrets,
//! `<cluster>-capf-records-<xx>`, chosen by the device name's SHA-256 (`xx`, its first byte), so that
//! no Secret outgrows the API server's 1 MiB at CallManager scale and a device never moves.
//!
//! Who writes what: the CAPF pods write the keys of a device as it enrolls (a merge patch of those keys
//! alone, so that concurrent sessions of other devices are kept); the operator creates the Secrets,
//! with its labels and owner and no data, by server-side apply, which leaves the keys the pods wrote
//! alone, and reads them back into the build's state, where the phone's status and its encrypted
//! configuration come from. A Secret that holds a record stays even after its phones are gone:
//! nothing CAPF issued is dropped by an edit of the manifests. Only what CAPF could have issued is
//! read back as a phone's certificate: one the cluster CA signed, so that whoever may write a record
//! Secret cannot have a phone's configuration encrypted for a key of their own. Pure functions.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use sha2::{Digest, Sha256};

use super::labels;
use crate::core::build::capf::RECORD_DIR;
use crate::core::build::state::{Sensitivity, StateFiles};

/// The component label of the record Secrets.
pub const COMPONENT: &str = "capf-records";
const DEVICES: &str = "devices/";

/// The record Secret of `device`.
pub fn secret_name(cluster: &str, device: &str) -> String {
    let digest = Sha256::digest(device.as_bytes());
    format!("{cluster}-capf-records-{:02x}", digest[0])
}

/// The Secret and key of a state file CAPF writes: `capf/<device>.yaml` or `devices/<device>.crt`.
pub fn home(cluster: &str, file: &str) -> Option<(String, String)> {
    let key = file.strip_prefix(RECORD_DIR).and_then(|f| f.strip_prefix('/')).filter(|k| k.ends_with(".yaml"));
    let key = key.or_else(|| file.strip_prefix(DEVICES).filter(|k| k.ends_with(".crt")))?;
    let device = key.rsplit_once('.').map(|(device, _)| device)?;
    (!device.is_empty() && !device.contains('/')).then(|| (secret_name(cluster, device), key.to_owned()))
}

/// The state file a key of a record Secret holds, when it is one and lives in the right Secret.
fn file_of(cluster: &str, secret: &str, key: &str) -> Option<(String, Sensitivity)> {
    let (device, extension) = key.rsplit_once('.')?;
    if secret_name(cluster, device) != secret {
        return None;
    }
    match extension {
        "yaml" => Some((format!("{RECORD_DIR}/{key}"), Sensitivity::Private)),
        "crt" => Some((format!("{DEVICES}{key}"), Sensitivity::Public)),
        _ => None,
    }
}

fn is_record_secret(cluster: &str, secret: &Secret) -> bool {
    let component = secret.metadata.labels.as_ref().and_then(|l| l.get(labels::COMPONENT));
    let prefix = format!("{cluster}-capf-records-");
    component.is_some_and(|c| c == COMPONENT) && secret.metadata.name.as_deref().is_some_and(|n| n.starts_with(&prefix))
}

/// The names of the record Secrets among `secrets` that hold a record: the ones that stay whatever the
/// manifests say. Names only: at CallManager scale the Secrets themselves are tens of megabytes.
pub fn holding_records(cluster: &str, secrets: &[Secret]) -> BTreeSet<String> {
    secrets
        .iter()
        .filter(|s| is_record_secret(cluster, s) && s.data.as_ref().is_some_and(|d| !d.is_empty()))
        .filter_map(|s| s.metadata.name.clone())
        .collect()
}

/// Whether `pem` is a certificate a cluster CA (`cas`) issued to `device`, as CAPF issues them:
/// its CN is the device name (or instance ID).
fn issued_to(pem: &[u8], device: &str, cas: &[Vec<u8>]) -> bool {
    use crate::core::pki::inspect::{CertificateFacts, certificate_der, is_issued_by_any};
    let Ok(der) = certificate_der(pem) else { return false };
    is_issued_by_any(&der, cas) && CertificateFacts::from_der(&der).is_ok_and(|f| f.subject_common_name.as_deref() == Some(device))
}

/// Adds what the record Secrets hold to a build's state: the records, and the certificates the
/// cluster CA (`cas`: the current one, and during a rotation the previous one) issued to the device
/// whose key they are under; any other certificate is left out, and said so.
pub fn read_into(cluster: &str, secrets: &[Secret], cas: &[Vec<u8>], files: &mut StateFiles) {
    for secret in secrets.iter().filter(|s| is_record_secret(cluster, s)) {
        let name = secret.metadata.name.as_deref().unwrap_or_default();
        for (key, bytes) in secret.data.iter().flatten() {
            let Some((file, sensitivity)) = file_of(cluster, name, key) else { continue };
            let device = key.rsplit_once('.').map(|(device, _)| device).unwrap_or_default();
            if file.starts_with(DEVICES) && !issued_to(&bytes.0, device, cas) {
                tracing::warn!(secret = %name, %key, "not a certificate the cluster CA issued to {device}: not taken for its own");
                continue;
            }
            files.insert(file, (bytes.0.clone(), sensitivity));
        }
    }
}

/// The record Secrets the cluster needs: one for each device CAPF may enroll, and every one that
/// already holds a record (`holding`, from [`holding_records`]). Metadata only: their data is the
/// CAPF pods'.
pub fn desired<'a>(cluster: &str, devices: impl IntoIterator<Item = &'a str>, holding: BTreeSet<String>) -> Vec<Secret> {
    let mut names = holding;
    names.extend(devices.into_iter().map(|device| secret_name(cluster, device)));
    names
        .into_iter()
        .map(|name| Secret {
            metadata: ObjectMeta { name: Some(name), labels: Some(labels::owned(cluster, COMPONENT)), ..ObjectMeta::default() },
            type_: Some("Opaque".into()),
            ..Secret::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    fn cluster_ca() -> crate::core::pki::ca::ClusterCa {
        use crate::core::pki::ca;
        ca::ClusterCa::generate(&ca::CaSettings::new("lab", "voice"), time::OffsetDateTime::now_utc()).unwrap()
    }

    /// An LSC `ca` issues to `device`, PEM.
    fn lsc(ca: &crate::core::pki::ca::ClusterCa, device: &str) -> Vec<u8> {
        use crate::core::pki::{issue, keys, serial::Serial};
        let now = time::OffsetDateTime::now_utc();
        let spki = rsa::pkcs8::EncodePublicKey::to_public_key_der(&rsa::RsaPublicKey::from(keys::generate_rsa(1024))).unwrap();
        let request = issue::LscRequest {
            device_name: device,
            key: issue::LscKeySource::PublicKey(spki.as_bytes()),
            validity_days: 365,
            serial: Serial::random(&mut rand::thread_rng()),
            now,
        };
        crate::core::pki::ca::certificate_pem(&issue::issue_lsc(ca, &request).unwrap().certificate_der).into_bytes()
    }

    #[test]
    fn a_devices_record_and_lsc_share_one_stable_secret_and_read_back_into_the_state() {
        let (cluster, elsewhere) = (cluster_ca(), cluster_ca());
        let ca = cluster.certificate_der().to_vec();
        let (own, stranger, anothers) =
            (lsc(&cluster, "SEP001122334455"), lsc(&elsewhere, "SEP001122334455"), lsc(&cluster, "SEP00AABBCCDD04"));
        let (secret, key) = home("lab", "capf/SEP001122334455.yaml").unwrap();
        assert_eq!(key, "SEP001122334455.yaml");
        assert_eq!(home("lab", "devices/SEP001122334455.crt"), Some((secret.clone(), "SEP001122334455.crt".into())));
        assert!(secret.starts_with("lab-capf-records-") && secret.len() == "lab-capf-records-".len() + 2);
        assert_eq!(home("lab", "ca/ca.key"), None);
        assert_eq!(home("lab", "capf/../ca.key"), None, "no path out of the records");

        let mut shard = desired("lab", ["SEP001122334455"], BTreeSet::new()).remove(0);
        assert_eq!(shard.metadata.name.as_deref(), Some(secret.as_str()));
        assert!(shard.data.is_none(), "the operator writes no data into a record Secret");
        shard.data = Some(BTreeMap::from([
            ("SEP001122334455.yaml".into(), ByteString(b"spentStrings: []\n".to_vec())),
            ("SEP001122334455.crt".into(), ByteString(own)),
            // A record under another device's Secret is not read: each device has exactly one home.
            ("SEP00AABBCCDD04.crt".into(), ByteString(b"MISPLACED".to_vec())),
            ("notes.txt".into(), ByteString(b"?".to_vec())),
        ]));
        let mut files = StateFiles::new();
        read_into("lab", std::slice::from_ref(&shard), std::slice::from_ref(&ca), &mut files);
        assert_ne!(secret_name("lab", "SEP00AABBCCDD04"), secret, "the misplaced device lives elsewhere");
        let names: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(names, ["capf/SEP001122334455.yaml", "devices/SEP001122334455.crt"]);
        assert_eq!(files["capf/SEP001122334455.yaml"].1, Sensitivity::Private);

        // A certificate another CA issued, or the cluster CA issued to another device, is not taken for
        // the phone's, nor anything when the CA is not known.
        let mut forged = shard.clone();
        forged.data.as_mut().unwrap().insert("SEP001122334455.crt".into(), ByteString(stranger));
        let mut borrowed = shard.clone();
        borrowed.data.as_mut().unwrap().insert("SEP001122334455.crt".into(), ByteString(anothers));
        for (secret, cas) in [(&forged, std::slice::from_ref(&ca)), (&borrowed, std::slice::from_ref(&ca)), (&shard, &[][..])] {
            let mut files = StateFiles::new();
            read_into("lab", std::slice::from_ref(secret), cas, &mut files);
            assert!(!files.contains_key("devices/SEP001122334455.crt") && files.contains_key("capf/SEP001122334455.yaml"));
        }

        // A Secret holding records stays when its phones are gone; an empty one goes.
        assert_eq!(desired("lab", [], holding_records("lab", std::slice::from_ref(&shard))).len(), 1);
        shard.data = Some(BTreeMap::new());
        assert!(desired("lab", [], holding_records("lab", &[shard])).is_empty());
    }
}
