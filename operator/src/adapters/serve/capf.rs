//! `callguard serve capf`: the cluster's CAPF pods (docs/wire-formats.md §7), the same service as in
//! `callguard local` (`adapters::capf`), fed from the Kubernetes API. They read three Secrets, by
//! name: the cluster CA's (its key issues LSCs: CAPF is the one data-plane service that holds it,
//! P.6-1), the CAPF certificate's (which TLS presents), and the projection the operator writes of the
//! phones CAPF may enroll (`controller::projection::project_capf`). What CAPF does (the records, the
//! LSCs it issues) goes into the record Secrets the operator creates for it
//! (`controller::capf_records`), one key at a time, before the phone hears that its operation
//! completed: a restarted pod, a second replica and the operator all read it back from there.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::watch;

use super::tftp::watch_secret;
use crate::adapters::capf::{Capf, Update, est::Est};
use crate::adapters::controller::capf_records;
use crate::adapters::controller::projection::{read_capf, tls_pair};
use crate::core::build::CapfIdentity;
use crate::core::build::identity::FunctionCertificate;
use crate::core::build::state::{Sensitivity, StateBackend, StateDir};
use crate::core::pki::ca::ClusterCa;
use crate::core::pki::issue::ServerRole;
use crate::ops::http::Health;
use crate::ops::metrics::Metrics;
use crate::ops::shutdown::Shutdown;

#[derive(Debug, Clone)]
pub struct ServeCapfOptions {
    pub namespace: String,
    pub cluster: String,
    /// The cluster CA's Secret (`ca.crt`, `ca.key`).
    pub ca_secret: String,
    /// The CAPF certificate's TLS Secret.
    pub certificate_secret: String,
    /// The projection Secret (`<cluster>-capf`).
    pub directory_secret: String,
    pub bind: IpAddr,
    pub port: u16,
    /// EST (RFC 7030) beside CAPF, under the same records, when set.
    pub est_port: Option<u16>,
    /// Where `/healthz` and `/readyz` are served.
    pub metrics_bind: Option<SocketAddr>,
}

/// CAPF's records in their Secrets, one key per read or write. A write is a merge patch of that key
/// alone, so that sessions of other devices, in this pod or another, are never overwritten.
#[derive(Debug)]
struct SecretRecords {
    api: Api<Secret>,
    cluster: String,
}

/// Runs an API call from the synchronous record store of a CAPF session (a multi-threaded runtime's
/// worker; the session waits for its record anyway).
fn block<F: std::future::Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

impl SecretRecords {
    fn home(&self, name: &str) -> io::Result<(String, String)> {
        capf_records::home(&self.cluster, name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, format!("CAPF keeps no {name} in its record Secrets")))
    }

    fn patch(&self, name: &str, value: serde_json::Value) -> io::Result<()> {
        let (secret, key) = self.home(name)?;
        let body = json!({ "data": { key: value } });
        match block(self.api.patch(&secret, &PatchParams::default(), &Patch::Merge(&body))) {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("Secret/{secret} does not exist: the operator creates it for every phone CAPF may enroll"),
            )),
            Err(e) => Err(io::Error::other(format!("Secret/{secret}: {e}"))),
        }
    }
}

/// How often an update is retried when another writer got in between.
const UPDATE_ATTEMPTS: usize = 8;

impl StateBackend for SecretRecords {
    /// Read, change and write with the Secret's resourceVersion as a precondition, again on a conflict:
    /// two replicas counting wrong strings for the same phone both count.
    fn update(
        &self,
        name: &str,
        _sensitivity: Sensitivity,
        change: &mut dyn FnMut(Option<Vec<u8>>) -> io::Result<Vec<u8>>,
    ) -> io::Result<()> {
        let (secret, key) = self.home(name)?;
        for _ in 0..UPDATE_ATTEMPTS {
            let live = block(self.api.get(&secret)).map_err(|e| io::Error::other(format!("Secret/{secret}: {e}")))?;
            let version = live.metadata.resource_version.clone();
            let bytes = change(live.data.and_then(|mut d| d.remove(&key)).map(|b| b.0))?;
            let body = json!({ "metadata": { "resourceVersion": version }, "data": { key.clone(): ByteString(bytes) } });
            match block(self.api.patch(&secret, &PatchParams::default(), &Patch::Merge(&body))) {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(io::Error::other(format!("Secret/{secret}: {e}"))),
            }
        }
        Err(io::Error::other(format!("Secret/{secret}: {UPDATE_ATTEMPTS} conflicting writes in a row")))
    }

    fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        let Ok((secret, key)) = self.home(name) else { return Ok(None) };
        let found = block(self.api.get_opt(&secret)).map_err(|e| io::Error::other(format!("Secret/{secret}: {e}")))?;
        Ok(found.and_then(|s| s.data?.remove(&key)).map(|b| b.0))
    }

    fn write(&self, name: &str, bytes: &[u8], _sensitivity: Sensitivity) -> io::Result<()> {
        self.patch(name, json!(ByteString(bytes.to_vec())))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.patch(name, serde_json::Value::Null)
    }
}

/// The three Secrets the pod reads, watched.
struct Sources {
    ca: Store<Secret>,
    certificate: Store<Secret>,
    directory: Store<Secret>,
}

impl Sources {
    /// The phones and the identity to serve with, or why there are none yet.
    fn current(&self, options: &ServeCapfOptions) -> Result<(Update, CapfIdentity), String> {
        let first = |store: &Store<Secret>, name: &str| {
            store.state().first().cloned().ok_or_else(|| format!("Secret/{name} not found: the operator has not written it yet"))
        };
        let projection = read_capf(&*first(&self.directory, &options.directory_secret)?)?;
        let ca_secret = first(&self.ca, &options.ca_secret)?;
        let field = |key: &str| {
            ca_secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .ok_or_else(|| format!("Secret/{} has no PEM {key}", options.ca_secret))
        };
        let ca = ClusterCa::from_pem(&field("ca.crt")?, &field("ca.key")?).map_err(|e| format!("Secret/{}: {e}", options.ca_secret))?;
        let (certificate_der, key) = tls_pair(&*first(&self.certificate, &options.certificate_secret)?)?;
        let certificate =
            FunctionCertificate { node: projection.node, hostname: projection.hostname, role: ServerRole::Capf, certificate_der, key };
        // During a CA rotation the Secret also holds the previous CA, whose LSCs still authenticate.
        let previous_ca = match field("previous.crt") {
            Ok(pem) => Some(
                crate::core::pki::inspect::certificate_der(pem.as_bytes())
                    .map_err(|e| format!("Secret/{}: previous.crt: {e}", options.ca_secret))?,
            ),
            Err(_) => None,
        };
        Ok((projection.directory, CapfIdentity { ca, certificate, previous_ca }))
    }
}

/// Serves until `shutdown`; a change of a Secret is served within [`super::DEBOUNCE`], and one that cannot be
/// read keeps the last good directory and identity.
pub async fn serve(client: Client, options: ServeCapfOptions, shutdown: Shutdown) -> Result<(), String> {
    let api: Api<Secret> = Api::namespaced(client, &options.namespace);
    let (changed, mut changes) = watch::channel(0u64);
    let sources = Sources {
        ca: watch_secret(&api, &options.ca_secret, &changed),
        certificate: watch_secret(&api, &options.certificate_secret, &changed),
        directory: watch_secret(&api, &options.directory_secret, &changed),
    };
    for store in [&sources.ca, &sources.certificate, &sources.directory] {
        store.wait_until_ready().await.map_err(|e| format!("watch stopped before its first list: {e}"))?;
    }
    let Some((update, identity)) = super::first_good(async || sources.current(&options), &mut changes, &shutdown).await? else {
        return Ok(());
    };
    let address = SocketAddr::new(options.bind, options.port);
    let listener = crate::services::tcp_listener::bind(address)
        .map_err(|e| format!("CAPF cannot listen on {address}: {e} (P.6-6, TCP 3804 unless spec.ports.capfPort says otherwise)"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let records = SecretRecords { api: api.clone(), cluster: options.cluster.clone() };
    let capf = Arc::new(Capf::new(bound, StateDir::remote(Arc::new(records))));
    let line = capf.follow(update, Some(&identity))?.unwrap_or_default();

    let health = Health::new();
    let http = options
        .metrics_bind
        .map(|bind| tokio::spawn(crate::ops::http::serve(bind, Arc::new(Metrics::new()), health.clone(), shutdown.wait())));
    let (stop, stopped) = watch::channel(false);
    let mut tasks = vec![tokio::spawn(capf.clone().serve(listener, stopped.clone()))];
    println!("{line} (CallControlCluster {}/{})", options.namespace, options.cluster);
    if let Some(port) = options.est_port {
        let address = SocketAddr::new(options.bind, port);
        let listener = crate::services::tcp_listener::bind(address).map_err(|e| format!("EST cannot listen on {address}: {e}"))?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        tasks.push(tokio::spawn(Arc::new(Est::new(capf.clone(), bound)).serve(listener, stopped)));
        println!("serving EST on https://{bound}/.well-known/est/: TLS with the CAPF certificate");
    }
    health.set_ready(true);
    while super::next_change(&mut changes, false, &shutdown).await {
        match sources.current(&options).and_then(|(update, identity)| capf.follow(update, Some(&identity))) {
            Ok(_) => println!("CAPF: the operator's Secrets changed: serving the new directory"),
            Err(e) => tracing::warn!("keeping the last good directory: {e}"),
        }
    }
    let _ = stop.send(true);
    for task in tasks {
        let _ = task.await;
    }
    if let Some(http) = http {
        http.abort();
    }
    Ok(())
}
