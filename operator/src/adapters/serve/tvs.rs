//! `callguard serve tvs`: the Trust Verification Service as it runs in a pod (docs/wire-formats.md §8).
//! It reads one Secret, by name: the projection the operator would write of a good build
//! (`controller::projection::project_tvs`): the certificate TLS presents and its key, and the
//! certificates TVS vouches for with their roles. It reads no Callguard object, no CA key and no
//! token key; a change of the Secret is served without a restart.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};

use super::tftp::watch_secret;
use crate::adapters::controller::projection::read_tvs;
use crate::core::pki::keys;
use crate::ops::shutdown::Shutdown;
use crate::services::tvs::{
    CertificateDirectory, ConnectionEnd, ConnectionReport, ServerLimits, SessionNote, TvsTls, Verdict, serve_listener,
};

#[derive(Debug, Clone)]
pub struct ServeTvsOptions {
    pub namespace: String,
    pub cluster: String,
    /// The projection Secret (`<cluster>-tvs`).
    pub secret: String,
    pub bind: IpAddr,
    pub port: u16,
    /// Where `/healthz` and `/readyz` are served.
    pub metrics_bind: Option<SocketAddr>,
}

/// The TLS configuration and directory of the projection, or why it cannot be served.
fn current(secret: Option<&Secret>, name: &str) -> Result<(TvsTls, CertificateDirectory), String> {
    let secret = secret.ok_or_else(|| format!("Secret/{name} not found: the operator has not projected TVS yet"))?;
    let view = read_tvs(secret)?;
    let directory = CertificateDirectory::from_vouched(&view.vouched).map_err(|e| format!("Secret/{name}: directory.json: {e}"))?;
    let tls = TvsTls::new(view.certificate_der, keys::pkcs8_der(&view.key), view.legacy_tls).map_err(|e| format!("Secret/{name}: {e}"))?;
    Ok((tls, directory))
}

/// Serves until `shutdown`; an unreadable projection keeps the last good one.
pub async fn serve(client: Client, options: ServeTvsOptions, shutdown: Shutdown) -> Result<(), String> {
    let api: Api<Secret> = Api::namespaced(client, &options.namespace);
    let (changed, mut changes) = watch::channel(0u64);
    let store = watch_secret(&api, &options.secret, &changed);
    store.wait_until_ready().await.map_err(|e| format!("watch stopped before its first list: {e}"))?;
    let first =
        super::first_good(async || current(store.state().first().map(AsRef::as_ref), &options.secret), &mut changes, &shutdown).await?;
    let Some((tls, directory)) = first else { return Ok(()) };
    let address = SocketAddr::new(options.bind, options.port);
    let listener = crate::services::tcp_listener::bind(address)
        .map_err(|e| format!("TVS cannot listen on {address}: {e} (docs/wire-formats.md §8, TCP 2445)"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let (count, versions) = (directory.len(), tls.versions());
    let (tls_sender, tls_receiver) = watch::channel(Some(tls));
    let (directory_sender, directory_receiver) = watch::channel(Arc::new(directory));
    let (reports, mut finished) = mpsc::unbounded_channel();
    let (stop, stopped) = watch::channel(false);
    let serving = tokio::spawn(serve_listener(listener, tls_receiver, directory_receiver, ServerLimits::default(), reports, stopped));
    let health = crate::ops::http::Health::new();
    let http = options.metrics_bind.map(|bind| {
        tokio::spawn(crate::ops::http::serve(bind, Arc::new(crate::ops::metrics::Metrics::new()), health.clone(), shutdown.wait()))
    });
    health.set_ready(true);
    println!(
        "serving TVS on {bound} for CallControlCluster {}/{}: {versions}; vouching for {count} certificate(s)",
        options.namespace, options.cluster
    );
    loop {
        tokio::select! {
            result = changes.changed() => {
                if result.is_err() { break }
                tokio::time::sleep(super::DEBOUNCE).await;
                changes.mark_unchanged();
                match current(store.state().first().map(AsRef::as_ref), &options.secret) {
                    Ok((tls, directory)) => {
                        let count = directory.len();
                        tls_sender.send_replace(Some(tls));
                        directory_sender.send_replace(Arc::new(directory));
                        println!("TVS: Secret/{} changed: vouching for {count} certificate(s)", options.secret);
                    }
                    Err(e) => tracing::warn!("keeping the last good directory: {e}"),
                }
            }
            Some(report) = finished.recv() => say(&report),
            () = shutdown.wait() => break,
        }
    }
    let _ = stop.send(true);
    let _ = serving.await;
    if let Some(http) = http {
        http.abort();
    }
    Ok(())
}

/// One line per answer; never a certificate, only its SHA-256.
pub fn say(report: &ConnectionReport) {
    let peer = report.peer.map(|p| p.to_string()).unwrap_or_default();
    for note in &report.notes {
        if let SessionNote::Answered { device_name, certificate_sha256, verdict, .. } = note {
            let answer = match verdict {
                Verdict::Valid { roles, ttl_seconds } => {
                    let roles: Vec<String> = roles.iter().map(|r| r.name()).collect();
                    format!("valid, roles {}, TTL {ttl_seconds} s", roles.join(","))
                }
                Verdict::Invalid(reason) => format!("invalid ({reason:?})"),
            };
            println!(
                "TVS {peer}: {} asked about SHA-256 {}: {answer}",
                device_name.as_deref().unwrap_or("a device without a name"),
                certificate_sha256.as_deref().unwrap_or("-")
            );
        }
    }
    match &report.end {
        ConnectionEnd::Session(_) => {}
        end => tracing::info!(peer = %peer, "TVS connection ended: {end:?}"),
    }
}
