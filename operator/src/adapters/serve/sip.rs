//! `callguard serve sip`: the signaling pods, one per node that runs CallManager (a StatefulSet;
//! pod N serves as the N-th such node), the same service as in `callguard local`, fed from the
//! Kubernetes API. A pod reads, by name, the projection the operator writes of the SIP directory
//! (`controller::projection::project_sip`: realms, CAs, trunks, phones with their digest
//! credentials, sharded) and the TLS Secret of its node's CallManager certificate, which SIP-TLS
//! presents (P.1-11). It reads no CA key, no Callguard object and no Secret a user wrote.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::Store;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::tftp::watch_secret;
use crate::adapters::controller::projection::{assemble_sip, read_sip_index, tls_pair};
use crate::adapters::sip::{bind_free_udp_and_tcp, bind_trunks, bind_udp_and_tcp, moved_trunks, sip_tls};
use crate::ops::http::Health;
use crate::ops::metrics::Metrics;
use crate::ops::shutdown::Shutdown;
use crate::services::sip::directory::{SipDirectory, SipPhone};
use crate::services::sip::server::{Listeners, SipService, SipTls};
use crate::services::sip::trunk::incoming_ports;

#[derive(Debug, Clone)]
pub struct ServeSipOptions {
    pub namespace: String,
    pub cluster: String,
    /// The index Secret of the projection (`<cluster>-sip`).
    pub directory_secret: String,
    /// The TLS Secrets of the CallManager certificates, one per node that runs CallManager, in the
    /// cluster's order: pod N presents the N-th.
    pub certificate_secrets: Vec<String>,
    /// This pod's name (`<statefulset>-N`): N picks the certificate. None: the first.
    pub pod_name: Option<String>,
    pub bind: IpAddr,
    /// SIP over UDP and TCP; None: the cluster's (`spec.ports.sipPort`, 5060, P.3-5).
    pub port: Option<u16>,
    /// SIP over TLS; None: the cluster's (`spec.ports.sipSecurePort`, 5061, P.3-5).
    pub tls_port: Option<u16>,
    /// Where `/metrics` (the SIP counters and bindings), `/healthz` and `/readyz` are served.
    pub metrics_bind: Option<SocketAddr>,
    /// The media relays calls' media goes through; None: SDP passes untouched, media end to end.
    pub media: Option<MediaControlOptions>,
}

/// How the pod reaches the media relays.
#[derive(Debug, Clone)]
pub struct MediaControlOptions {
    /// `host:port` of their control interface: a headless Service's name resolves to every relay.
    pub target: String,
    /// The TLS Secret of the signaling service's control certificate (`<cluster>-media-client`).
    pub secret: String,
    /// SHA-256 of the relays' control certificate, the only one taken.
    pub relay_sha256: [u8; 32],
}

/// The ordinal of a StatefulSet pod, from its name's last `-N`.
pub fn ordinal(pod_name: Option<&str>) -> Result<usize, String> {
    let Some(name) = pod_name else { return Ok(0) };
    name.rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .ok_or_else(|| format!("pod name {name:?} does not end in -N: serve sip runs in a StatefulSet, whose pods do"))
}

/// What the pod reads: its node's certificate and the projection's index, watched, and the shards,
/// fetched when the index names new ones.
struct Sources {
    certificate: Store<Secret>,
    index: Store<Secret>,
    shards: super::ShardCache<SipPhone>,
}

/// What one moment of the Secrets makes: the cluster's SIP ports, the directory, and the TLS
/// configuration over the directory's anchors.
struct Current {
    spec_ports: (u16, u16),
    directory: SipDirectory,
    tls: SipTls,
}

impl Sources {
    async fn current(&mut self, options: &ServeSipOptions, certificate_secret: &str) -> Result<Current, String> {
        let index = self.index.state().into_iter().next().ok_or_else(|| {
            format!("Secret/{} not found: the operator has not projected the SIP directory yet", options.directory_secret)
        })?;
        let view = read_sip_index(&index)?;
        let shards = self.shards.fetch(&view.shards).await?.iter().map(|shard| (**shard).clone()).collect();
        let projection = assemble_sip(view, shards)?;
        let secret = self.certificate.state().into_iter().next().ok_or_else(|| format!("Secret/{certificate_secret} not found"))?;
        let (certificate_der, key) = tls_pair(&secret)?;
        let directory = projection.directory.into_directory();
        let tls = sip_tls(&certificate_der, &key, &directory.anchors, projection.legacy_tls)
            .map_err(|e| format!("Secret/{certificate_secret}: {e}"))?;
        Ok(Current { spec_ports: (projection.sip_port, projection.sip_tls_port), directory, tls })
    }
}

/// Serves until `shutdown`; a change of a Secret is served within [`super::DEBOUNCE`], and a moment that
/// cannot be read (a shard being rewritten) keeps the last good directory.
pub async fn serve(client: Client, options: ServeSipOptions, shutdown: Shutdown) -> Result<(), String> {
    let ordinal = ordinal(options.pod_name.as_deref())?;
    let certificate_secret = options.certificate_secrets.get(ordinal).cloned().ok_or_else(|| {
        format!(
            "pod {ordinal} has no CallManager node: the cluster names {} (spec.nodes[].services.callManager, P.3-4)",
            options.certificate_secrets.len()
        )
    })?;
    let api: Api<Secret> = Api::namespaced(client, &options.namespace);
    let (changed, mut changes) = watch::channel(0u64);
    let mut sources = Sources {
        certificate: watch_secret(&api, &certificate_secret, &changed),
        index: watch_secret(&api, &options.directory_secret, &changed),
        shards: super::ShardCache::new(api.clone()),
    };
    for store in [&sources.certificate, &sources.index] {
        store.wait_until_ready().await.map_err(|e| format!("watch stopped before its first list: {e}"))?;
    }
    let first = super::first_good(async || sources.current(&options, &certificate_secret).await, &mut changes, &shutdown).await?;
    let Some(Current { spec_ports: (spec_port, spec_tls_port), directory, tls }) = first else { return Ok(()) };

    let udp_address = SocketAddr::new(options.bind, options.port.unwrap_or(spec_port));
    let bound = if udp_address.port() == 0 { bind_free_udp_and_tcp(options.bind).await } else { bind_udp_and_tcp(udp_address).await };
    let (udp, tcp) = bound.map_err(|e| format!("SIP cannot listen on {udp_address} (UDP and TCP, P.3-5): {e}"))?;
    let tls_address = SocketAddr::new(options.bind, options.tls_port.unwrap_or(spec_tls_port));
    let tls_listener =
        crate::services::tcp_listener::bind(tls_address).map_err(|e| format!("SIP-TLS cannot listen on {tls_address} (P.3-5): {e}"))?;
    let (udp_address, tls_address) = (udp.local_addr().map_err(|e| e.to_string())?, tls_listener.local_addr().map_err(|e| e.to_string())?);
    let served_trunk_ports = incoming_ports(&directory.trunks);
    let (trunks, trunk_lines) = bind_trunks(options.bind, &served_trunk_ports, [spec_port, spec_tls_port]).await?;
    let phones = directory.len();
    // Trunks on the phones' ports share their listeners, wherever those were bound.
    let moved = BTreeMap::from([(spec_port, udp_address.port()), (spec_tls_port, tls_address.port())]);
    let service = SipService::new(moved_trunks(directory, &moved), Some(tls));
    let mut media_line = String::new();
    if let Some(media) = &options.media {
        let Some(tls) = super::first_control_tls(&api, &media.secret, media.relay_sha256, &shutdown).await? else { return Ok(()) };
        service.relay_media_through(crate::services::media::control::MediaClient::new(media.target.clone(), &tls)?);
        media_line = format!("; media through the relays at {}", media.target);
    }

    let health = Health::new();
    let http = options.metrics_bind.map(|bind| {
        let mut metrics = Metrics::new();
        metrics.register_sip(service.clone());
        tokio::spawn(crate::ops::http::serve(bind, Arc::new(metrics), health.clone(), shutdown.wait()))
    });
    let cancel = CancellationToken::new();
    let listeners = Listeners { udp: Some(udp), tcp: Some(tcp), tls: Some(tls_listener), trunks };
    let serving = tokio::spawn(service.clone().serve(listeners, cancel.clone()));
    match crate::adapters::sip::registrations_listener() {
        Ok(listener) => {
            let (registrar, stop) = (service.clone(), shutdown.wait());
            let rows = move || crate::adapters::sip::registration_rows(registrar.registrar());
            tokio::spawn(crate::adapters::sip::answer_registrations(listener, rows, stop));
        }
        Err(e) => tracing::warn!(error = %e, "callguard sip registrations --serving will not reach this process"),
    }
    health.set_ready(true);
    let trunk_text = if trunk_lines.is_empty() { String::new() } else { format!("; trunks on {}", trunk_lines.join(", ")) };
    println!(
        "serving SIP on {udp_address} (UDP and TCP) and {tls_address} (TLS) as pod {ordinal} with Secret/{certificate_secret}, \
         for CallControlCluster {}/{}: {phones} phone(s){trunk_text}{media_line}",
        options.namespace, options.cluster,
    );
    let mut retry = false;
    while super::next_change(&mut changes, retry, &shutdown).await {
        match sources.current(&options, &certificate_secret).await {
            Ok(Current { directory, tls, .. }) => {
                let added: Vec<u16> =
                    incoming_ports(&directory.trunks).into_keys().filter(|port| !served_trunk_ports.contains_key(port)).collect();
                if !added.is_empty() {
                    // The operator rolls the pods when the ports change: the new pod binds them.
                    tracing::warn!("trunk incoming port(s) {added:?} are new: served after this pod restarts");
                }
                let count = directory.len();
                service.follow(moved_trunks(directory, &moved), Some(tls));
                println!("SIP: the operator's Secrets changed: serving {count} phone(s)");
                retry = false;
            }
            Err(e) => {
                tracing::warn!("keeping the last good directory: {e}");
                retry = true;
            }
        }
    }
    cancel.cancel();
    let _ = serving.await;
    shutdown.trigger();
    match http {
        Some(http) => http.await.map_err(|e| e.to_string())?.map_err(|e| format!("metrics endpoint: {e}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_knows_its_node_by_its_ordinal() {
        assert_eq!(ordinal(None), Ok(0));
        assert_eq!(ordinal(Some("lab-sip-0")), Ok(0));
        assert_eq!(ordinal(Some("lab-sip-12")), Ok(12));
        assert!(ordinal(Some("lab-sip-7d9f")).unwrap_err().contains("does not end in -N"));
        assert!(ordinal(Some("sip")).is_err());
    }
}
