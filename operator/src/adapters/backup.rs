//! `callguard backup` and `callguard restore` for a state directory (`callguard local` and `build`):
//! every namespace's state read into one encrypted file (`core::backup`), and written back into a
//! state directory that holds none of those namespaces yet, under the directory's lock.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::core::build::lock::StateLock;
use crate::core::build::state::{Sensitivity, StateDir, StateFiles};

/// Files of a state tree no one writes by hand: deeper than this is refused, not walked.
const MAX_DEPTH: usize = 8;

fn namespaces_root(state_root: &Path) -> PathBuf {
    state_root.join("namespaces")
}

/// Every namespace's files under `state_root`. Links are refused (a state directory holds none, and
/// following one could loop or leave the directory); a temporary file of an interrupted write is
/// left out.
pub fn read_state_root(state_root: &Path) -> Result<BTreeMap<String, StateFiles>, String> {
    let root = namespaces_root(state_root);
    let entries = std::fs::read_dir(&root).map_err(|e| format!("{}: {e} (no state to back up)", root.display()))?;
    let mut namespaces = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", root.display()))?;
        let namespace = entry.file_name().to_string_lossy().into_owned();
        let mut files = StateFiles::new();
        walk(&entry.path(), "", 0, &mut files)?;
        namespaces.insert(namespace, files);
    }
    if namespaces.is_empty() {
        return Err(format!("{}: no namespace: nothing to back up", root.display()));
    }
    Ok(namespaces)
}

fn walk(directory: &Path, prefix: &str, depth: usize, files: &mut StateFiles) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("{}: nested deeper than {MAX_DEPTH} levels: not a state directory", directory.display()));
    }
    let mut entries: Vec<_> = std::fs::read_dir(directory)
        .map_err(|e| format!("{}: {e}", directory.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", directory.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let metadata = std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let relative = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
        if metadata.file_type().is_symlink() {
            return Err(format!("{}: a link; a state directory holds none, and none is followed", path.display()));
        }
        if metadata.is_dir() {
            walk(&path, &relative, depth + 1, files)?;
        } else if !name.starts_with('.') {
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let private = metadata.permissions().mode() & 0o077 == 0;
            files.insert(relative, (bytes, if private { Sensitivity::Private } else { Sensitivity::Public }));
        }
    }
    Ok(())
}

/// Writes `namespaces` under `state_root`, which must hold none of them: a restore never mixes a
/// backup with a state that exists. How many files it wrote.
pub fn write_state_root(state_root: &Path, namespaces: &BTreeMap<String, StateFiles>) -> Result<usize, String> {
    std::fs::create_dir_all(state_root).map_err(|e| format!("{}: {e}", state_root.display()))?;
    let _lock = StateLock::acquire(state_root).map_err(|e| e.to_string())?;
    let root = namespaces_root(state_root);
    for namespace in namespaces.keys() {
        if !crate::core::backup::is_state_name(namespace) || namespace.contains('/') {
            return Err(format!("the backup names namespace {namespace:?}, which is not a directory name"));
        }
        let target = root.join(namespace);
        if std::fs::read_dir(&target).is_ok_and(|mut entries| entries.next().is_some()) {
            return Err(format!(
                "{} already holds a state: restore into a state directory without namespace {namespace} (nothing was written)",
                target.display()
            ));
        }
    }
    let mut written = 0;
    for (namespace, files) in namespaces {
        let state = StateDir::open(&root.join(namespace)).map_err(|e| format!("{}: {e}", root.join(namespace).display()))?;
        for (name, (bytes, sensitivity)) in files {
            state.write(name, bytes, *sensitivity).map_err(|e| format!("{namespace}/{name}: {e}"))?;
            written += 1;
        }
    }
    Ok(written)
}

/// A passphrase from its file, without the line end an editor adds.
pub fn read_passphrase(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_owned())
}

/// The state of the one CallControlCluster of `namespace`, read from the Kubernetes API as the
/// operator reads it (its Secrets, the trust ConfigMap, the identity record in its status, the
/// CAPF records and the tokens' counters): the same files a state directory holds, so that a
/// backup moves between the two.
pub async fn read_namespace(client: &kube::Client, namespace: &str) -> Result<StateFiles, String> {
    use crate::adapters::controller::{namespace_objects::NamespaceObjects, state_objects::state_of};
    let objects = NamespaceObjects::read(client, namespace, None).await.map_err(|e| format!("namespace {namespace}: {e}"))?;
    let [cluster] = objects.clusters.as_slice() else {
        return Err(format!(
            "namespace {namespace} holds {} CallControlCluster(s); a backup takes the state of exactly one",
            objects.clusters.len()
        ));
    };
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let files = state_of(cluster, &objects);
    if files.is_empty() {
        return Err(format!("CallControlCluster {namespace}/{name} has no state yet: nothing to back up"));
    }
    Ok(files)
}

/// Writes `files` as the state of the one CallControlCluster of `namespace`: each Secret and the
/// trust ConfigMap the operator keeps them in, and the identity record into the cluster's status.
/// What exists with the same content is left alone; what exists with other content is refused,
/// naming it, with nothing written, unless `overwrite`. The cluster is then annotated, which makes
/// the operator reconcile it from the restored state. What it did, one line each.
pub async fn write_namespace(client: &kube::Client, namespace: &str, files: &StateFiles, overwrite: bool) -> Result<Vec<String>, String> {
    use crate::adapters::controller::state_objects::objects_from_state;
    use crate::api::CallControlCluster;
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use kube::api::{Api, ListParams, Patch, PatchParams};

    let clusters: Api<CallControlCluster> = Api::namespaced(client.clone(), namespace);
    let listed = clusters.list(&ListParams::default()).await.map_err(|e| format!("namespace {namespace}: {e}"))?;
    let [cluster] = listed.items.as_slice() else {
        return Err(format!("namespace {namespace} holds {} CallControlCluster(s); a restore needs exactly one", listed.items.len()));
    };
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let (secrets, trust) = objects_from_state(&name, files);
    let secret_api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let config_api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);

    // Everything is compared before anything is written.
    let mut writes: Vec<Write> = Vec::new();
    let mut conflicts = Vec::new();
    for secret in secrets {
        let how = to_write(&secret_api, &secret, |a, b| a.data == b.data, &mut conflicts).await?;
        writes.extend(how.map(|how| Write::Secret(secret, how)));
    }
    let how = to_write(&config_api, &trust, |a, b| a.binary_data == b.binary_data, &mut conflicts).await?;
    writes.extend(how.map(|how| Write::ConfigMap(trust, how)));
    // What CAPF issued (phone certificates and CAPF records) goes back into the record Secrets,
    // key by key, beside what they hold.
    let mut records: BTreeMap<String, BTreeMap<String, k8s_openapi::ByteString>> = BTreeMap::new();
    for (file, (bytes, _)) in files {
        if let Some((secret, key)) = crate::adapters::controller::capf_records::home(&name, file) {
            records.entry(secret).or_default().insert(key, k8s_openapi::ByteString(bytes.clone()));
        }
    }
    for (secret_name, keys) in &records {
        let existing = secret_api.get_opt(secret_name).await.map_err(|e| format!("Secret/{secret_name}: {e}"))?;
        let held = existing.as_ref().and_then(|s| s.data.clone()).unwrap_or_default();
        let missing: BTreeMap<String, k8s_openapi::ByteString> =
            keys.iter().filter(|(key, bytes)| held.get(*key) != Some(*bytes)).map(|(k, b)| (k.clone(), b.clone())).collect();
        conflicts.extend(missing.keys().filter(|key| held.contains_key(*key)).map(|key| format!("Secret/{secret_name} key {key}")));
        if !missing.is_empty() {
            writes.push(Write::Records(secret_name.clone(), missing, existing.is_none()));
        }
    }
    let record = files
        .get(crate::core::build::identity_record::RECORD_FILE)
        .map(|(bytes, _)| serde_yaml::from_slice::<crate::api::IdentityRecord>(bytes))
        .transpose()
        .map_err(|e| format!("the backup's identity record: {e}"))?;
    let current_record = cluster.status.as_ref().and_then(|s| s.identity.clone());
    if let (Some(record), Some(current)) = (&record, &current_record)
        && record != current
    {
        conflicts.push(format!("CallControlCluster/{name} status.identity"));
    }
    if !conflicts.is_empty() && !overwrite {
        return Err(format!(
            "{} differ from the backup: {} (nothing was written; --overwrite replaces them with the backup's)",
            conflicts.len(),
            conflicts.join(", ")
        ));
    }

    let apply = PatchParams::apply("callguard-restore").force();
    let mut done = Vec::new();
    for write in writes {
        match write {
            Write::Secret(secret, how) => done.push(format!("{} {how}", apply_restored(&secret_api, &secret, &apply).await?)),
            Write::Records(secret_name, keys, create) => {
                let count = keys.len();
                if create {
                    let secret = Secret {
                        metadata: kube::api::ObjectMeta {
                            name: Some(secret_name.clone()),
                            labels: Some(crate::adapters::controller::labels::owned(
                                &name,
                                crate::adapters::controller::capf_records::COMPONENT,
                            )),
                            ..Default::default()
                        },
                        type_: Some("Opaque".into()),
                        data: Some(keys),
                        ..Secret::default()
                    };
                    secret_api
                        .create(&kube::api::PostParams::default(), &secret)
                        .await
                        .map_err(|e| format!("Secret/{secret_name}: {e}"))?;
                } else {
                    let patch = serde_json::json!({"data": keys});
                    secret_api
                        .patch(&secret_name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map_err(|e| format!("Secret/{secret_name}: {e}"))?;
                }
                done.push(format!("Secret/{secret_name}: {count} CAPF record file(s) restored"));
            }
            Write::ConfigMap(map, how) => done.push(format!("{} {how}", apply_restored(&config_api, &map, &apply).await?)),
        }
    }
    if let Some(record) = record.filter(|r| Some(r) != current_record.as_ref()) {
        let patch = serde_json::json!({"status": {"identity": record}});
        clusters
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| format!("CallControlCluster/{name} status: {e}"))?;
        done.push(format!("CallControlCluster/{name} status.identity restored"));
    }
    // A change to the cluster's metadata wakes the operator, which reads the restored state.
    let stamp = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let touch = serde_json::json!({"metadata": {"annotations": {"callguard.io/restored-at": stamp}}});
    clusters.patch(&name, &PatchParams::default(), &Patch::Merge(&touch)).await.map_err(|e| format!("CallControlCluster/{name}: {e}"))?;
    Ok(done)
}

/// Whether the backup's `object` must be written: "created" when none exists, "replaced" (and a
/// conflict named) when what exists differs in what `same` compares, None when it is the same.
async fn to_write<K>(
    api: &kube::Api<K>,
    object: &K,
    same: impl Fn(&K, &K) -> bool,
    conflicts: &mut Vec<String>,
) -> Result<Option<&'static str>, String>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let named = format!("{}/{}", K::kind(&()), object.meta().name.clone().unwrap_or_default());
    let name = object.meta().name.clone().unwrap_or_default();
    Ok(match api.get_opt(&name).await.map_err(|e| format!("{named}: {e}"))? {
        None => Some("created"),
        Some(existing) if same(&existing, object) => None,
        Some(_) => {
            conflicts.push(named);
            Some("replaced")
        }
    })
}

/// Server-side apply of `object` as the restore's field manager; `Kind/name`.
async fn apply_restored<K>(api: &kube::Api<K>, object: &K, params: &kube::api::PatchParams) -> Result<String, String>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let named = format!("{}/{}", K::kind(&()), object.meta().name.clone().unwrap_or_default());
    let mut value = serde_json::to_value(object).map_err(|e| format!("{named}: {e}"))?;
    value["apiVersion"] = K::api_version(&()).into();
    value["kind"] = K::kind(&()).into();
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(&name, params, &kube::api::Patch::Apply(&value)).await.map_err(|e| format!("{named}: {e}"))?;
    Ok(named)
}

enum Write {
    Secret(k8s_openapi::api::core::v1::Secret, &'static str),
    ConfigMap(k8s_openapi::api::core::v1::ConfigMap, &'static str),
    /// A record Secret's keys to add, and whether the Secret must be created.
    Records(String, BTreeMap<String, k8s_openapi::ByteString>, bool),
}
