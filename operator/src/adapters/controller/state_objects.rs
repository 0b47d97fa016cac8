//! The build's state (CA, function certificates, serials, published trust lists, the token registry,
//! the identity record) kept in Kubernetes: Secrets the operator owns for what is private or must not
//! be tampered with, a ConfigMap for the published trust lists, and the cluster's status for the
//! identity record, apart from the state it describes. Pure functions, both ways, so that a state read
//! back from what was written is the same state.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::ObjectMeta;

use super::labels;
use crate::api::{CallControlCluster, SecurityToken, SecurityTokenStatus};
use crate::core::build::catalog::TRUST_LIST_FILES;
use crate::core::build::identity_record::{self, RECORD_FILE};
use crate::core::build::state::{RETIRED, Sensitivity, StateFiles};
use crate::core::build::tokens::{MAC_KEY_FILE, REGISTRY_FILE};

const CA_FILES: [(&str, &str); 4] =
    [("ca/ca.crt", "ca.crt"), ("ca/ca.key", "ca.key"), ("ca/serials", "serials"), ("ca/previous.crt", "previous.crt")];
const TOKEN_FILES: [(&str, &str); 2] = [(REGISTRY_FILE, "registry.yaml"), (MAC_KEY_FILE, "attempts.key")];
const PUBLISHED: &str = "published/";
const CERTS: &str = "certs/";
const TOKEN_STATUS: &str = "status/tokens/";

/// Where one state file lives in Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Home {
    /// A key of a Secret.
    Secret { name: String, key: String },
    /// A binaryData key of the trust ConfigMap.
    Trust { key: String },
    /// The status of a SecurityToken.
    TokenStatus { token: String },
}

/// `certs/<node>.<role>.crt|key` is the TLS Secret `<cluster>-<node>-<role>` (node names are DNS labels).
fn home(cluster: &str, name: &str) -> Option<Home> {
    if let Some((label, file)) = name.strip_prefix(RETIRED).and_then(|rest| rest.split_once('/')) {
        return Some(Home::Secret { name: retired_secret(cluster, label), key: retired_key(file) });
    }
    if let Some((_, key)) = CA_FILES.iter().find(|(file, _)| *file == name) {
        return Some(Home::Secret { name: labels::ca_secret(cluster), key: (*key).to_owned() });
    }
    if let Some((_, key)) = TOKEN_FILES.iter().find(|(file, _)| *file == name) {
        return Some(Home::Secret { name: labels::tokens_secret(cluster), key: (*key).to_owned() });
    }
    if let Some(file) = name.strip_prefix(PUBLISHED) {
        return Some(Home::Trust { key: file.to_owned() });
    }
    if let Some(file) = name.strip_prefix(CERTS) {
        let (base, extension) = file.rsplit_once('.')?;
        let key = match extension {
            "crt" => "tls.crt",
            "key" => "tls.key",
            _ => return None,
        };
        return Some(Home::Secret { name: function_secret(cluster, base), key: key.to_owned() });
    }
    let token = name.strip_prefix(TOKEN_STATUS)?.strip_suffix(".yaml")?;
    Some(Home::TokenStatus { token: token.to_owned() })
}

/// The Secret that keeps an identity set aside by `callguard.io/new-identity`, so that the explicit
/// action replaces the identity without destroying the old keys.
fn retired_secret(cluster: &str, label: &str) -> String {
    format!("{cluster}-retired-{label}")
}

/// A retired file's key in its Secret: `ca/ca.key` is `ca_ca.key`. Reversible, since no state file
/// name holds `_` (node names are DNS labels).
fn retired_key(file: &str) -> String {
    file.replace('/', "_")
}

/// The TLS Secret of a function certificate, from its state base name `<node>.<role>`.
fn function_secret(cluster: &str, base: &str) -> String {
    format!("{cluster}-{}", base.replace('.', "-"))
}

/// The TLS Secret of the certificate whose state base name is `certs/<node>.<role>`.
pub fn certificate_secret(cluster: &str, state_base: &str) -> Option<String> {
    state_base.strip_prefix(CERTS).map(|base| function_secret(cluster, base))
}

/// Where a state file lives in Kubernetes, for messages: `Secret lab-ca, key ca.crt`.
pub fn place(cluster: &str, file: &str) -> String {
    match home(cluster, file) {
        Some(Home::Secret { name, key }) => format!("Secret {name}, key {key}"),
        Some(Home::Trust { key }) => format!("ConfigMap {}, key {key}", labels::trust_config_map(cluster)),
        Some(Home::TokenStatus { token }) => format!("SecurityToken {token}, status"),
        None if file == RECORD_FILE => format!("CallControlCluster {cluster}, status.identity"),
        None => file.to_owned(),
    }
}

/// The state a build starts from: the cluster's status (its identity record), its Secrets, its trust
/// ConfigMap and its tokens' status.
/// The state of `cluster` among a namespace's objects: its Secrets, its trust ConfigMap, its
/// status and its tokens' counters.
pub fn state_of(cluster: &CallControlCluster, objects: &super::namespace_objects::NamespaceObjects) -> StateFiles {
    let trust_name = labels::trust_config_map(cluster.metadata.name.as_deref().unwrap_or_default());
    let trust = objects.config_maps.iter().find(|c| c.metadata.name.as_deref() == Some(trust_name.as_str()));
    state_from_objects(cluster, &objects.secrets, trust, &objects.tokens)
}

pub fn state_from_objects(
    cluster: &CallControlCluster,
    secrets: &[Secret],
    trust: Option<&ConfigMap>,
    tokens: &[std::sync::Arc<SecurityToken>],
) -> StateFiles {
    let cluster_object = cluster;
    let cluster = cluster.metadata.name.as_deref().unwrap_or_default();
    let mut files = StateFiles::new();
    let by_name: BTreeMap<&str, &Secret> = secrets.iter().filter_map(|s| Some((s.metadata.name.as_deref()?, s))).collect();
    let secret_value = |name: &str, key: &str| by_name.get(name).and_then(|s| s.data.as_ref()?.get(key)).map(|b| b.0.clone());
    for (file, key) in CA_FILES {
        if let Some(bytes) = secret_value(&labels::ca_secret(cluster), key) {
            files.insert(file.to_owned(), (bytes, sensitivity(file)));
        }
    }
    for (file, key) in TOKEN_FILES {
        if let Some(bytes) = secret_value(&labels::tokens_secret(cluster), key) {
            files.insert(file.to_owned(), (bytes, Sensitivity::Private));
        }
    }
    if let Some(record) = cluster_object.status.as_ref().and_then(|s| s.identity.as_ref())
        && let Ok(yaml) = serde_yaml::to_string(record)
    {
        files.insert(RECORD_FILE.to_owned(), (yaml.into_bytes(), Sensitivity::Public));
    }
    let prefix = format!("{cluster}-");
    for secret in
        secrets.iter().filter(|s| s.metadata.labels.as_ref().and_then(|l| l.get(labels::COMPONENT)).is_some_and(|c| c == "certificate"))
    {
        let Some(base) = secret.metadata.annotations.as_ref().and_then(|a| a.get(STATE_BASE)) else { continue };
        if secret.metadata.name.as_deref().and_then(|n| n.strip_prefix(&prefix)).is_none() {
            continue;
        }
        for (extension, key) in [("crt", "tls.crt"), ("key", "tls.key")] {
            if let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(key)) {
                let file = format!("{CERTS}{base}.{extension}");
                let sensitivity = sensitivity(&file);
                files.insert(file, (bytes.0.clone(), sensitivity));
            }
        }
    }
    for secret in
        secrets.iter().filter(|s| s.metadata.labels.as_ref().and_then(|l| l.get(labels::COMPONENT)).is_some_and(|c| c == RETIRED_COMPONENT))
    {
        let Some(label) = secret.metadata.annotations.as_ref().and_then(|a| a.get(RETIRED_LABEL)) else { continue };
        if secret.metadata.name.as_deref() != Some(retired_secret(cluster, label).as_str()) {
            continue;
        }
        for (key, bytes) in secret.data.iter().flatten() {
            let file = format!("{RETIRED}{label}/{}", key.replace('_', "/"));
            let sensitivity = sensitivity(&file);
            files.insert(file, (bytes.0.clone(), sensitivity));
        }
    }
    // Only the trust lists are read back: whoever may write ConfigMaps must not be able to slip a
    // file into the state, or into what is served, by adding a key.
    if let Some(binary) = trust.and_then(|c| c.binary_data.as_ref()) {
        for kind in TRUST_LIST_FILES {
            if let Some(bytes) = binary.get(kind.filename()) {
                files.insert(format!("{PUBLISHED}{}", kind.filename()), (bytes.0.clone(), Sensitivity::Public));
            }
        }
    }
    // The cluster CA, and during a CA rotation the previous one: the LSCs either issued are kept.
    let cas: Vec<Vec<u8>> = [identity_record::files::CA_CERTIFICATE, identity_record::files::PREVIOUS_CA]
        .iter()
        .filter_map(|file| files.get(*file).and_then(|(pem, _)| crate::core::pki::inspect::certificate_der(pem).ok()))
        .collect();
    super::capf_records::read_into(cluster, secrets, &cas, &mut files);
    for token in tokens {
        let (Some(name), Some(status)) = (token.metadata.name.as_deref(), token.status.as_ref()) else { continue };
        let counters = SecurityTokenStatus { common: Default::default(), ..status.clone() };
        if let Ok(yaml) = serde_yaml::to_string(&counters) {
            files.insert(format!("{TOKEN_STATUS}{name}.yaml"), (yaml.into_bytes(), Sensitivity::Public));
        }
    }
    files
}

/// Annotation on a function certificate's Secret: its state base name `<node>.<role>`, since the
/// Secret's name loses the dot.
const STATE_BASE: &str = "callguard.io/state-name";
/// Component label and annotation of a retired identity's Secret: the identity it kept.
const RETIRED_COMPONENT: &str = "retired-identity";
const RETIRED_LABEL: &str = "callguard.io/retired-identity";

fn sensitivity(file: &str) -> Sensitivity {
    if file.ends_with(".key") { Sensitivity::Private } else { Sensitivity::Public }
}

/// What the state asks to exist: the Secrets (CA, one TLS Secret per function certificate) and the
/// trust ConfigMap, labelled as the cluster's. Owner references are the caller's.
pub fn objects_from_state(cluster: &str, files: &StateFiles) -> (Vec<Secret>, ConfigMap) {
    let mut secrets: BTreeMap<String, Secret> = BTreeMap::new();
    let mut trust = BTreeMap::new();
    for (file, (bytes, _)) in files {
        match home(cluster, file) {
            Some(Home::Secret { name, key }) => {
                let secret = secrets.entry(name.clone()).or_insert_with(|| {
                    let retired = file.strip_prefix(RETIRED).and_then(|rest| rest.split_once('/')).map(|(label, _)| label.to_owned());
                    let component = if retired.is_some() {
                        RETIRED_COMPONENT
                    } else if name == labels::ca_secret(cluster) {
                        "ca"
                    } else if name == labels::tokens_secret(cluster) {
                        "tokens"
                    } else {
                        "certificate"
                    };
                    let is_opaque = component != "certificate";
                    let mut metadata =
                        ObjectMeta { name: Some(name.clone()), labels: Some(labels::owned(cluster, component)), ..ObjectMeta::default() };
                    if let Some(label) = retired {
                        metadata.annotations = Some(BTreeMap::from([(RETIRED_LABEL.to_owned(), label)]));
                    } else if !is_opaque {
                        let base = file.strip_prefix(CERTS).and_then(|f| f.rsplit_once('.')).map(|(base, _)| base.to_owned());
                        metadata.annotations = base.map(|base| BTreeMap::from([(STATE_BASE.to_owned(), base)]));
                    }
                    Secret { metadata, type_: Some(if is_opaque { "Opaque" } else { "kubernetes.io/tls" }.to_owned()), ..Secret::default() }
                });
                secret.data.get_or_insert_with(BTreeMap::new).insert(key, ByteString(bytes.clone()));
            }
            Some(Home::Trust { key }) => {
                trust.insert(key, ByteString(bytes.clone()));
            }
            Some(Home::TokenStatus { .. }) | None => {}
        }
    }
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some(labels::trust_config_map(cluster)),
            labels: Some(labels::owned(cluster, "trust")),
            ..ObjectMeta::default()
        },
        binary_data: Some(trust),
        ..ConfigMap::default()
    };
    (secrets.into_values().collect(), config_map)
}

/// The failure counters the build left for `token`, to go into its status.
pub fn token_counters(files: &StateFiles, token: &str) -> Option<SecurityTokenStatus> {
    let (bytes, _) = files.get(&format!("{TOKEN_STATUS}{token}.yaml"))?;
    serde_yaml::from_slice(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> StateFiles {
        StateFiles::from([
            ("ca/ca.crt".into(), (b"CA CERT".to_vec(), Sensitivity::Public)),
            ("ca/ca.key".into(), (b"CA KEY".to_vec(), Sensitivity::Private)),
            ("ca/serials".into(), (b"01\n".to_vec(), Sensitivity::Public)),
            ("ca/previous.crt".into(), (b"PREVIOUS CA".to_vec(), Sensitivity::Public)),
            ("certs/cm1.callmanager-tftp.next.crt".into(), (b"INCOMING CM1".to_vec(), Sensitivity::Public)),
            ("certs/cm1.callmanager-tftp.next.key".into(), (b"INCOMING KEY".to_vec(), Sensitivity::Private)),
            ("retired/ca-0011223344556677/ca/ca.key".into(), (b"ROTATED CA KEY".to_vec(), Sensitivity::Private)),
            ("certs/cm1.callmanager-tftp.crt".into(), (b"CM1 CERT".to_vec(), Sensitivity::Public)),
            ("certs/cm1.callmanager-tftp.key".into(), (b"CM1 KEY".to_vec(), Sensitivity::Private)),
            ("published/ITLFile.tlv".into(), (vec![1, 2, 3], Sensitivity::Public)),
            ("status/tokens/primary.yaml".into(), (b"consecutiveFailedLogins: 3\nlocked: false\n".to_vec(), Sensitivity::Public)),
            ("tokens/registry.yaml".into(), (b"certificates: {}\n".to_vec(), Sensitivity::Private)),
            ("tokens/attempts.key".into(), (vec![9; 32], Sensitivity::Private)),
            ("status.yaml".into(), (b"- ignored".to_vec(), Sensitivity::Public)),
            ("retired/00aa11bb22cc33dd/ca/ca.key".into(), (b"OLD CA KEY".to_vec(), Sensitivity::Private)),
            ("retired/00aa11bb22cc33dd/certs/cm1.callmanager-tftp.crt".into(), (b"OLD CM1".to_vec(), Sensitivity::Public)),
            ("retired/00aa11bb22cc33dd/identity.yaml".into(), (b"id: 00aa11bb22cc33dd\n".to_vec(), Sensitivity::Public)),
        ])
    }

    #[test]
    fn state_written_as_objects_reads_back_the_same() {
        let (secrets, trust) = objects_from_state("lab", &files());
        let names: Vec<_> = secrets.iter().map(|s| s.metadata.name.clone().unwrap()).collect();
        assert_eq!(
            names,
            [
                "lab-ca",
                "lab-cm1-callmanager-tftp",
                "lab-cm1-callmanager-tftp-next",
                "lab-retired-00aa11bb22cc33dd",
                "lab-retired-ca-0011223344556677",
                "lab-tokens"
            ]
        );
        assert_eq!(secrets[3].data.as_ref().unwrap()["ca_ca.key"].0, b"OLD CA KEY", "a retired identity keeps its keys");
        assert_eq!(secrets[0].data.as_ref().unwrap()["previous.crt"].0, b"PREVIOUS CA", "a rotation's previous CA beside the CA");
        assert_eq!(secrets[2].data.as_ref().unwrap()["tls.key"].0, b"INCOMING KEY", "an incoming signer in a Secret of its own");
        assert_eq!(secrets[1].type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(secrets[1].data.as_ref().unwrap()["tls.key"].0, b"CM1 KEY");
        assert_eq!(trust.binary_data.as_ref().unwrap()["ITLFile.tlv"].0, vec![1, 2, 3]);
        let token = SecurityToken {
            metadata: ObjectMeta { name: Some("primary".into()), ..Default::default() },
            spec: serde_json::from_value(serde_json::json!({
                "certificate": {"name": "t", "key": "c"}, "privateKey": {"name": "t", "key": "k"}, "password": {"name": "p", "key": "p"}
            }))
            .unwrap_or_else(|e| panic!("token spec: {e}")),
            status: token_counters(&files(), "primary"),
        };
        let back = state_from_objects(&cluster("lab"), &secrets, Some(&trust), &[std::sync::Arc::new(token)]);
        let mut expected = files();
        expected.remove("status.yaml");
        let strip = |f: &StateFiles| f.keys().cloned().collect::<Vec<_>>();
        assert_eq!(strip(&back), strip(&expected));
        for (name, (bytes, sensitivity)) in &expected {
            if !name.starts_with("status/") {
                assert_eq!(&back[name], &(bytes.clone(), *sensitivity), "{name}");
            }
        }
        assert_eq!(token_counters(&back, "primary").map(|s| s.consecutive_failed_logins), Some(3));
    }

    #[test]
    fn another_clusters_secrets_are_not_read() {
        let (secrets, _) = objects_from_state("lab", &files());
        let back = state_from_objects(&cluster("prod"), &secrets, None, &[]);
        assert!(back.is_empty(), "{back:?}");
    }

    fn cluster(name: &str) -> CallControlCluster {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "callguard.io/v1alpha1", "kind": "CallControlCluster",
            "metadata": {"name": name}, "spec": {"nodes": [{"name": "cm1", "hostname": "cm1.example"}]}
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn only_the_trust_lists_are_read_back_from_the_trust_config_map() {
        let (_, mut trust) = objects_from_state("lab", &files());
        let binary = trust.binary_data.as_mut().unwrap();
        binary.insert("SEP001122334455.cnf.xml".into(), ByteString(b"<device>attacker</device>".to_vec()));
        binary.insert("../ca/ca.key".into(), ByteString(b"attacker key".to_vec()));
        let back = state_from_objects(&cluster("lab"), &[], Some(&trust), &[]);
        assert_eq!(back.keys().collect::<Vec<_>>(), ["published/ITLFile.tlv"]);
    }

    #[test]
    fn the_identity_record_lives_in_the_clusters_status() {
        let mut object = cluster("lab");
        let record = crate::api::IdentityRecord {
            id: "0123".into(),
            ca: "ab".into(),
            itl_signer: "cd".into(),
            ctl_published: true,
            ..Default::default()
        };
        object.status = Some(crate::api::CallControlClusterStatus { identity: Some(record.clone()), ..Default::default() });
        let back = state_from_objects(&object, &[], None, &[]);
        let read: crate::api::IdentityRecord = serde_yaml::from_slice(&back[RECORD_FILE].0).unwrap();
        assert_eq!(read, record);
        assert_eq!(place("lab", "ca/ca.crt"), "Secret lab-ca, key ca.crt");
        assert_eq!(place("lab", RECORD_FILE), "CallControlCluster lab, status.identity");
    }
}
