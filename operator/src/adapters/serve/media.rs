//! `callguard serve media`: the media relay as it runs in its pods, on their nodes' own network
//! (RTP does not cross Kubernetes NAT well), driven by the signaling pods over its control interface
//! (`services::media::control`). A pod reads one Secret, by name: its control certificate and key
//! (`<cluster>-media-relay`); the signaling service's certificate is pinned by the SHA-256 it is
//! given. It reads no CA key, no phone's credentials and no Callguard object: the port range and
//! timeouts come as options from the operator, which rolls the pods when they change.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use crate::api::MediaSettings;
use crate::ops::http::Health;
use crate::ops::metrics::Metrics;
use crate::ops::shutdown::Shutdown;
use crate::services::media::control;

#[derive(Debug, Clone)]
pub struct ServeMediaOptions {
    pub namespace: String,
    pub cluster: String,
    /// The TLS Secret of the relay's control certificate.
    pub control_secret: String,
    /// SHA-256 of the signaling service's control certificate, the only client taken.
    pub client_sha256: [u8; 32],
    /// Where the RTP and RTCP ports and the control port are bound.
    pub bind: IpAddr,
    /// The address phones are sent in the SDP: the node's.
    pub advertised: IpAddr,
    pub control_port: u16,
    /// The cluster's `spec.media`.
    pub media: MediaSettings,
    /// Where `/metrics` (packets, bytes, drops and calls by security class), `/healthz` and
    /// `/readyz` are served.
    pub metrics_bind: Option<SocketAddr>,
}

/// Serves until `shutdown`.
pub async fn serve(client: Client, options: ServeMediaOptions, shutdown: Shutdown) -> Result<(), String> {
    let api: Api<Secret> = Api::namespaced(client, &options.namespace);
    let Some(tls) = super::first_control_tls(&api, &options.control_secret, options.client_sha256, &shutdown).await? else {
        return Ok(());
    };

    let relay = crate::adapters::sip::media_relay(options.bind, options.advertised, &options.media)?;
    let control_address = SocketAddr::new(options.bind, options.control_port);
    let listener = crate::services::tcp_listener::bind(control_address)
        .map_err(|e| format!("the media control interface cannot listen on {control_address}: {e}"))?;
    let stop = CancellationToken::new();
    tokio::spawn(control::serve(listener, control::server_config(&tls)?, relay.clone(), stop.clone()));
    tokio::spawn(relay.clone().reap_inactive(stop.clone()));

    let health = Health::new();
    let http = options.metrics_bind.map(|bind| {
        let mut metrics = Metrics::new();
        metrics.register_media(relay.clone());
        tokio::spawn(crate::ops::http::serve(bind, Arc::new(metrics), health.clone(), shutdown.wait()))
    });
    health.set_ready(true);
    let ports = options.media.ports();
    println!(
        "relaying media on {} ports {}-{} (named {} in the SDP), controlled on {control_address}, for CallControlCluster {}/{}",
        options.bind,
        ports.start(),
        ports.end(),
        options.advertised,
        options.namespace,
        options.cluster
    );
    shutdown.wait().await;
    stop.cancel();
    match http {
        Some(http) => http.await.map_err(|e| e.to_string())?.map_err(|e| format!("metrics endpoint: {e}")),
        None => Ok(()),
    }
}
