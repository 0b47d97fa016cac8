//! The data-plane services as they run in their pods (`callguard serve ...`): the same code as in
//! `callguard local`, fed from the Kubernetes API instead of a directory.

pub mod capf;
pub mod media;
pub mod sip;
pub mod tftp;
pub mod tvs;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use crate::adapters::controller::projection::{ShardRef, read_shard};
use crate::ops::shutdown::Shutdown;

/// One side's media control credentials: the certificate and key of the TLS Secret `secret`, and
/// the other side's pinned SHA-256.
fn control_tls(secret: &Secret, peer_sha256: [u8; 32]) -> Result<crate::services::media::control::ControlTls, String> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let field = |key: &str| {
        secret.data.as_ref().and_then(|data| data.get(key)).map(|b| b.0.as_slice()).ok_or_else(|| format!("Secret/{name} has no {key}"))
    };
    let pair = crate::core::build::media_control::ControlPair::from_pem(field("tls.crt")?, field("tls.key")?)
        .map_err(|e| format!("Secret/{name}: {e}"))?;
    Ok(crate::services::media::control::ControlTls { certificate_der: pair.certificate_der, key_der: pair.key_der, peer_sha256 })
}

/// The media control credentials of the TLS Secret `name`, once the operator has written it
/// (watched, and said why not until then); None on shutdown.
pub(crate) async fn first_control_tls(
    api: &Api<Secret>,
    name: &str,
    peer_sha256: [u8; 32],
    shutdown: &Shutdown,
) -> Result<Option<crate::services::media::control::ControlTls>, String> {
    let (changed, mut changes) = tokio::sync::watch::channel(0u64);
    let store = tftp::watch_secret(api, name, &changed);
    store.wait_until_ready().await.map_err(|e| format!("watch stopped before its first list: {e}"))?;
    let read = async || {
        let secret = store
            .state()
            .into_iter()
            .next()
            .ok_or_else(|| format!("Secret/{name} not found: the operator has not written the media control credentials yet"))?;
        control_tls(&secret, peer_sha256)
    };
    first_good(read, &mut changes, shutdown).await
}

/// The first good value of `current` (what the watched Secrets make of it), tried again at every change
/// of them (`changes`) and every five seconds, saying why it is not served yet; `None` on shutdown.
pub(crate) async fn first_good<T>(
    mut current: impl AsyncFnMut() -> Result<T, String>,
    changes: &mut tokio::sync::watch::Receiver<u64>,
    shutdown: &Shutdown,
) -> Result<Option<T>, String> {
    loop {
        match current().await {
            Ok(first) => return Ok(Some(first)),
            Err(e) => {
                tracing::warn!("not serving yet: {e}");
                tokio::select! {
                    result = changes.changed() => if result.is_err() { return Err("the watch stopped".into()) },
                    () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                    () = shutdown.wait() => return Ok(None),
                }
            }
        }
    }
}

/// Waits for the watched Secrets to change (or, when `retry`, two seconds: a shard read mid-update
/// is tried again without another change), then for the burst to settle; false on shutdown or when
/// the watch stopped.
pub(crate) async fn next_change(changes: &mut tokio::sync::watch::Receiver<u64>, retry: bool, shutdown: &Shutdown) -> bool {
    tokio::select! {
        result = changes.changed() => if result.is_err() { return false },
        () = tokio::time::sleep(std::time::Duration::from_secs(2)), if retry => {}
        () = shutdown.wait() => return false,
    }
    tokio::time::sleep(DEBOUNCE).await;
    changes.mark_unchanged();
    true
}

/// Changes come in bursts (the operator writes the shards, then the index): wait this long after one.
pub(crate) const DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(250);

/// The shards of a projection the pod holds, by name, with the SHA-256 they were read at: a shard is
/// fetched again only when the index names other bytes.
pub(crate) struct ShardCache<T> {
    api: Api<Secret>,
    shards: HashMap<String, (String, Arc<BTreeMap<String, T>>)>,
}

impl<T: serde::de::DeserializeOwned> ShardCache<T> {
    pub(crate) fn new(api: Api<Secret>) -> Self {
        ShardCache { api, shards: HashMap::new() }
    }

    /// The shards `references` name, in order; those no longer named are forgotten.
    pub(crate) async fn fetch(&mut self, references: &[ShardRef]) -> Result<Vec<Arc<BTreeMap<String, T>>>, String> {
        let mut fetched = Vec::with_capacity(references.len());
        for reference in references {
            if let Some((sha256, entries)) = self.shards.get(&reference.name)
                && *sha256 == reference.sha256
            {
                fetched.push(Arc::clone(entries));
                continue;
            }
            let secret = self.api.get(&reference.name).await.map_err(|e| format!("Secret/{}: {e}", reference.name))?;
            let entries = Arc::new(read_shard(&secret, reference)?);
            self.shards.insert(reference.name.clone(), (reference.sha256.clone(), Arc::clone(&entries)));
            fetched.push(entries);
        }
        self.shards.retain(|name, _| references.iter().any(|r| r.name == *name));
        Ok(fetched)
    }
}
