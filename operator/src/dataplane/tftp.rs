//! `callguard serve tftp`: the cluster's TFTP pods. They watch, read-only, the cluster, its phones,
//! profiles, SRST references, end users and Secrets, and the trust ConfigMap the operator publishes,
//! and render every phone's files on demand with the TFTP certificate from its Secret (DESIGN: data
//! plane reads, it does not copy; no per-phone ConfigMaps).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::api::{CallControlCluster, EndUser, Phone, PhoneSecurityProfile, SrstReference};
use crate::build::served::{PhoneRenderer, ServedFiles, Signing};
use crate::build::signature_hash;
use crate::controller::labels;
use crate::ops::http::Health;
use crate::ops::metrics::Metrics;
use crate::ops::shutdown::Shutdown;
use crate::tftp::{ServerConfig, SwappableSource, TftpServer};
use crate::trust::{Mode, Signer, TrustList, TrustListKind};
use crate::validate::{SecretData, Snapshot};

/// Changes come in bursts (the operator writes a namespace's statuses at once): wait this long.
const DEBOUNCE: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct ServeTftpOptions {
    pub namespace: String,
    pub cluster: String,
    /// The TLS Secret of the TFTP certificate that signs the files.
    pub signer_secret: String,
    pub bind: IpAddr,
    pub port: u16,
    /// Where `/metrics` (the TFTP counters), `/healthz` and `/readyz` are served.
    pub metrics_bind: Option<SocketAddr>,
}

/// What the pod watches, each as a reflector store.
struct Stores {
    clusters: Store<CallControlCluster>,
    phones: Store<Phone>,
    profiles: Store<PhoneSecurityProfile>,
    srst_references: Store<SrstReference>,
    end_users: Store<EndUser>,
    secrets: Store<Secret>,
    config_maps: Store<ConfigMap>,
}

/// Starts a reflector for `K` in `namespace` that bumps `changed` on every event.
fn reflect<K>(client: &Client, namespace: &str, changed: &watch::Sender<u64>) -> Store<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let changed = changed.clone();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff().touched_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.send_modify(|n| *n += 1),
                Err(e) => tracing::warn!(kind = %K::kind(&()), "watch: {e}"),
            }
        }
    });
    reader
}

impl Stores {
    fn start(client: &Client, namespace: &str, changed: &watch::Sender<u64>) -> Self {
        Stores {
            clusters: reflect(client, namespace, changed),
            phones: reflect(client, namespace, changed),
            profiles: reflect(client, namespace, changed),
            srst_references: reflect(client, namespace, changed),
            end_users: reflect(client, namespace, changed),
            secrets: reflect(client, namespace, changed),
            config_maps: reflect(client, namespace, changed),
        }
    }

    async fn ready(&self) -> Result<(), String> {
        let waits = [
            self.clusters.wait_until_ready().await,
            self.phones.wait_until_ready().await,
            self.profiles.wait_until_ready().await,
            self.srst_references.wait_until_ready().await,
            self.end_users.wait_until_ready().await,
            self.secrets.wait_until_ready().await,
            self.config_maps.wait_until_ready().await,
        ];
        waits.into_iter().collect::<Result<Vec<()>, _>>().map(|_| ()).map_err(|e| format!("watch stopped before its first list: {e}"))
    }

    /// The files to serve now, from what the stores hold.
    fn served(&self, options: &ServeTftpOptions) -> Result<ServedFiles, String> {
        fn by_name<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>) -> BTreeMap<String, K> {
            store.state().iter().map(|o| (o.name_any(), K::clone(o))).collect()
        }
        let secrets: BTreeMap<String, Secret> = by_name(&self.secrets);
        let snapshot = Snapshot {
            namespace: options.namespace.clone(),
            clusters: by_name(&self.clusters),
            phones: by_name(&self.phones),
            phone_profiles: by_name(&self.profiles),
            srst_references: by_name(&self.srst_references),
            end_users: by_name(&self.end_users),
            secrets: secrets
                .iter()
                .map(|(name, s)| (name.clone(), SecretData(s.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect())))
                .collect(),
            ..Snapshot::new(&options.namespace)
        };
        let cluster = snapshot.clusters.get(&options.cluster).ok_or_else(|| format!("CallControlCluster/{} not found", options.cluster))?;
        let trust_name = labels::trust_config_map(&options.cluster);
        let trust = self
            .config_maps
            .state()
            .into_iter()
            .find(|c| c.name_any() == trust_name)
            .ok_or_else(|| format!("ConfigMap/{trust_name} not found: the operator has not published the trust lists yet"))?;
        let trust_lists: BTreeMap<String, Arc<[u8]>> =
            trust.binary_data.iter().flatten().map(|(name, bytes)| (name.clone(), Arc::from(bytes.0.as_slice()))).collect();
        let itl_bytes = trust_lists.get(TrustListKind::Itl.filename()).ok_or_else(|| format!("ConfigMap/{trust_name} has no ITL"))?;
        let itl = TrustList::parse(itl_bytes, Mode::Strict).map_err(|e| format!("ConfigMap/{trust_name}: ITLFile.tlv: {e}"))?;
        let signer = signer(secrets.get(&options.signer_secret), &options.signer_secret)?;
        let signing = Signing::from_itl(signer, signature_hash(cluster), &itl);
        // Device certificates come with CAPF in the cluster; until then encrypted phones get their stub.
        let phones = PhoneRenderer::new(Arc::new(snapshot), options.cluster.clone(), signing, HashMap::new());
        Ok(ServedFiles::new(trust_lists, phones))
    }
}

/// The TFTP certificate and key from their TLS Secret.
fn signer(secret: Option<&Secret>, name: &str) -> Result<Signer, String> {
    let data = secret.and_then(|s| s.data.as_ref()).ok_or_else(|| format!("Secret/{name} not found"))?;
    let field = |key: &str| data.get(key).map(|b| b.0.as_slice()).ok_or_else(|| format!("Secret/{name} has no {key}"));
    let certificate = crate::pki::inspect::certificate_der(field("tls.crt")?).map_err(|e| format!("Secret/{name}: tls.crt: {e}"))?;
    let key_pem = std::str::from_utf8(field("tls.key")?).map_err(|_| format!("Secret/{name}: tls.key is not PEM"))?;
    let key = crate::pki::keys::from_pem(key_pem).map_err(|e| format!("Secret/{name}: tls.key: {e}"))?;
    Signer::new(certificate, key, false).map_err(|e| format!("Secret/{name}: {e}"))
}

/// Serves until `shutdown`; a change to anything watched is served within [`DEBOUNCE`], and an
/// inconsistent moment (the trust ConfigMap not yet written, say) keeps the last good files.
pub async fn serve(client: Client, options: ServeTftpOptions, shutdown: Shutdown) -> Result<(), String> {
    let (changed, mut changes) = watch::channel(0u64);
    let stores = Stores::start(&client, &options.namespace, &changed);
    stores.ready().await?;
    let first = loop {
        match stores.served(&options) {
            Ok(served) => break served,
            Err(e) => {
                tracing::warn!("not serving yet: {e}");
                tokio::select! {
                    result = changes.changed() => if result.is_err() { return Err("the watches stopped".into()) },
                    () = shutdown.wait() => return Ok(()),
                }
            }
        }
    };
    let files = Arc::new(SwappableSource::new(first));
    let address = SocketAddr::new(options.bind, options.port);
    let server =
        TftpServer::bind(ServerConfig { bind: address, ..ServerConfig::default() }, files.clone()).await.map_err(|e| e.to_string())?;
    let bound = server.local_addr().map_err(|e| e.to_string())?;
    let health = Health::new();
    let http = options.metrics_bind.map(|bind| {
        let mut metrics = Metrics::new();
        metrics.register_tftp(server.counters());
        tokio::spawn(crate::ops::http::serve(bind, Arc::new(metrics), health.clone(), shutdown.wait()))
    });
    health.set_ready(true);
    let (stop, stopped) = watch::channel(false);
    let serving = tokio::spawn(server.run(stopped));
    println!("serving TFTP on {bound} for CallControlCluster {}/{}", options.namespace, options.cluster);
    loop {
        tokio::select! {
            result = changes.changed() => {
                if result.is_err() { break }
                tokio::time::sleep(DEBOUNCE).await;
                changes.mark_unchanged();
                match stores.served(&options) {
                    Ok(mut served) => {
                        served.phones.adopt_cache(&files.current().phones);
                        files.replace(served);
                    }
                    Err(e) => tracing::warn!("keeping the last good files: {e}"),
                }
            }
            () = shutdown.wait() => break,
        }
    }
    let _ = stop.send(true);
    let _ = serving.await;
    shutdown.trigger();
    match http {
        Some(http) => http.await.map_err(|e| e.to_string())?.map_err(|e| format!("metrics endpoint: {e}")),
        None => Ok(()),
    }
}
