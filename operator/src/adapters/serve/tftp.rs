//! `callguard serve tftp`: the cluster's TFTP pods. They read exactly two kinds of Secret, by name:
//! the TFTP certificate's, whose key signs the files, and the projection the operator writes of what
//! it validated (`controller::projection`): the trust lists and every phone's resolved files. They
//! read no Callguard object and no Secret a user wrote, and they sign each phone's files the first
//! time they are asked for, caching them by content.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

use crate::adapters::controller::projection::{assemble, read_index, tls_pair};
use crate::core::build::catalog::TftpCatalog;
use crate::core::build::phone_files::PhonePayloads;
use crate::core::build::served::ServedFiles;
use crate::core::trust::{Signer, TrustListKind};
use crate::ops::http::Health;
use crate::ops::metrics::Metrics;
use crate::ops::shutdown::Shutdown;
use crate::services::tftp::{ServerConfig, SwappableSource, TftpServer, TransferPort};

#[derive(Debug, Clone)]
pub struct ServeTftpOptions {
    pub namespace: String,
    pub cluster: String,
    /// The TLS Secret of the TFTP certificate that signs the files.
    pub signer_secret: String,
    /// The index Secret of the operator's projection.
    pub files_secret: String,
    pub bind: IpAddr,
    pub port: u16,
    /// Where transfers send from: `Listening` (single-port mode) unless asked otherwise, because the
    /// pods sit behind a Service, a load balancer or NAT, which carries only the listening port's flow.
    pub transfer_port: TransferPort,
    /// Where `/metrics` (the TFTP counters), `/healthz` and `/readyz` are served.
    pub metrics_bind: Option<SocketAddr>,
}

/// Watches one Secret by name (the Role allows a watch only on a single named object) and bumps
/// `changed` on every event.
pub(crate) fn watch_secret(api: &Api<Secret>, name: &str, changed: &watch::Sender<u64>) -> Store<Secret> {
    let (reader, writer) = reflector::store();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = reflector::reflector(writer, watcher(api.clone(), config)).default_backoff().touched_objects();
    let (changed, name) = (changed.clone(), name.to_owned());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.send_modify(|n| *n += 1),
                Err(e) => tracing::warn!(secret = %name, "watch: {e}"),
            }
        }
    });
    reader
}

/// What the pod reads: the signer and index Secrets, watched, and the shards, fetched when the index
/// names a shard not yet held.
struct Sources {
    signer: Store<Secret>,
    index: Store<Secret>,
    shards: super::ShardCache<PhonePayloads>,
}

impl Sources {
    fn start(client: &Client, options: &ServeTftpOptions, changed: &watch::Sender<u64>) -> Self {
        let api: Api<Secret> = Api::namespaced(client.clone(), &options.namespace);
        Sources {
            signer: watch_secret(&api, &options.signer_secret, changed),
            index: watch_secret(&api, &options.files_secret, changed),
            shards: super::ShardCache::new(api),
        }
    }

    async fn ready(&self) -> Result<(), String> {
        self.signer.wait_until_ready().await.map_err(|e| format!("watch stopped before its first list: {e}"))?;
        self.index.wait_until_ready().await.map_err(|e| format!("watch stopped before its first list: {e}"))
    }

    /// The files to serve now: the catalog the index names, signed with the signer.
    async fn served(&mut self, options: &ServeTftpOptions) -> Result<ServedFiles, String> {
        let index = self
            .index
            .state()
            .into_iter()
            .next()
            .ok_or_else(|| format!("Secret/{} not found: the operator has not projected the files yet", options.files_secret))?;
        let view = read_index(&index)?;
        if !view.trust_lists.contains_key(TrustListKind::Itl.filename()) {
            return Err(format!("Secret/{} has no ITL", options.files_secret));
        }
        let shards = self.shards.fetch(&view.shards).await?.iter().map(|shard| (**shard).clone()).collect();
        let catalog: TftpCatalog = assemble(view, shards)?;
        let signer = signer(self.signer.state().into_iter().next().as_deref(), &options.signer_secret)?;
        Ok(ServedFiles::new(catalog, signer))
    }
}

/// The TFTP certificate and key from their TLS Secret.
fn signer(secret: Option<&Secret>, name: &str) -> Result<Signer, String> {
    let (certificate, key) = tls_pair(secret.ok_or_else(|| format!("Secret/{name} not found"))?)?;
    Signer::new(certificate, key, false).map_err(|e| format!("Secret/{name}: {e}"))
}

/// Serves until `shutdown`; a change is served within [`super::DEBOUNCE`], and an inconsistent moment (the
/// index naming a shard that is still being written, say) keeps the last good files.
pub async fn serve(client: Client, options: ServeTftpOptions, shutdown: Shutdown) -> Result<(), String> {
    let (changed, mut changes) = watch::channel(0u64);
    let mut sources = Sources::start(&client, &options, &changed);
    sources.ready().await?;
    let Some(first) = super::first_good(async || sources.served(&options).await, &mut changes, &shutdown).await? else { return Ok(()) };
    let files = Arc::new(SwappableSource::new(first));
    let address = SocketAddr::new(options.bind, options.port);
    let config = ServerConfig { bind: address, transfer_port: options.transfer_port, ..ServerConfig::default() };
    let server = TftpServer::bind(config, files.clone()).await.map_err(|e| e.to_string())?;
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
    let transfers = match options.transfer_port {
        TransferPort::Listening => "single-port: every transfer from this port",
        TransferPort::Ephemeral => "a port per transfer",
    };
    println!("serving TFTP on {bound} ({transfers}) for CallControlCluster {}/{}", options.namespace, options.cluster);
    let mut retry = false;
    while super::next_change(&mut changes, retry, &shutdown).await {
        match sources.served(&options).await {
            Ok(mut served) => {
                served.phones.adopt_cache(&files.current().phones);
                files.replace(served);
                retry = false;
            }
            Err(e) => {
                tracing::warn!("keeping the last good files: {e}");
                retry = true;
            }
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
