//! `callguard capf report`: reads the phones' CAPF state from a state directory of `callguard build`
//! or `local`, or from the `Phone` objects of a cluster, and writes the report of
//! `core::capf_report` as CSV.

use std::collections::BTreeMap;
use std::path::Path;

use kube::api::ListParams;
use kube::{Api, ResourceExt};

use crate::api::{CapfAuthenticationMode, Phone, PhoneSecurityProfile};
use crate::core::build::capf::{CapfRecord, RECORD_DIR};
use crate::core::build::devices::choose_namespace;
use crate::core::build::namespace_state;
use crate::core::capf_report::{Row, rows_from_phones, rows_from_status};

/// The rows of namespace `namespace` (else the state's only one) of the state directory `root`: its
/// `status.yaml` and the CAPF records under `capf/`.
pub fn from_state_dir(root: &Path, namespace: Option<&str>) -> Result<Vec<Row>, String> {
    if !root.is_dir() {
        return Err(format!("no state directory {}: pass the --state-dir of callguard build or local", root.display()));
    }
    let namespace = choose_namespace(root, namespace)?;
    let dir = namespace_state(root, &namespace);
    let status_file = dir.join("status.yaml");
    let status = match std::fs::read(&status_file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "{}: not found: namespace {namespace} was never built in this state directory; run callguard build or local first",
                status_file.display()
            ));
        }
        Err(e) => return Err(format!("{}: {e}", status_file.display())),
    };
    let records = read_records(&dir.join(RECORD_DIR))?;
    rows_from_status(&status_file.display().to_string(), &status, &records)
}

/// The CAPF records of a namespace's `capf/` folder by device name; none when it does not exist.
fn read_records(dir: &Path) -> Result<BTreeMap<String, CapfRecord>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    let mut records = BTreeMap::new();
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        let Some(device) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".yaml")) else { continue };
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let record: CapfRecord = serde_yaml::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        records.insert(device.to_owned(), record);
    }
    Ok(records)
}

/// The rows of the `Phone` objects of `namespace` in the cluster `client` talks to, with the
/// authentication mode of their PhoneSecurityProfiles.
pub async fn from_cluster(client: kube::Client, namespace: &str) -> Result<Vec<Row>, String> {
    let phones: Api<Phone> = Api::namespaced(client.clone(), namespace);
    let profiles: Api<PhoneSecurityProfile> = Api::namespaced(client, namespace);
    let phones = phones.list(&ListParams::default()).await.map_err(|e| format!("listing Phones in namespace {namespace}: {e}"))?;
    let profiles =
        profiles.list(&ListParams::default()).await.map_err(|e| format!("listing PhoneSecurityProfiles in namespace {namespace}: {e}"))?;
    let modes: BTreeMap<String, CapfAuthenticationMode> =
        profiles.items.iter().map(|p| (p.name_any(), p.spec.authentication_mode())).collect();
    Ok(rows_from_phones(&phones.items, &modes))
}

/// A client from the kubeconfig file `path`, else from KUBECONFIG or the pod's service account; and
/// the namespace to read: `namespace`, else the configuration's.
pub async fn client(path: Option<&Path>, namespace: Option<&str>) -> Result<(kube::Client, String), String> {
    let config = match path {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| format!("no Kubernetes API (KUBECONFIG or in-cluster): {e}"))?,
    };
    let namespace = namespace.map_or_else(|| config.default_namespace.clone(), str::to_owned);
    let client = kube::Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))?;
    Ok((client, namespace))
}
