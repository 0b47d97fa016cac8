//! The SIP listeners and the registrar's policy (Table 5-2, P.8-1): which phone may register which
//! line, over which transport, with which certificate and digest answer. rsipstack parses the
//! messages and runs the transactions, but for phones' REGISTERs, answered before them
//! (`stateless`); connections are accepted here, so that TCP gets a deep accept queue and TLS asks
//! for, and keeps, the phone's certificate.
//! INVITE and the requests of a dialog go to `proxy`; a trunk's requests pass Table 14-1 here first.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rsipstack::EndpointBuilder;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{self, Header, Method, Param, StatusCode, Transport};
use rsipstack::transaction::transaction::Transaction;
use rsipstack::transport::tcp::TcpConnection;
use rsipstack::transport::tls::TlsConnection;
use rsipstack::transport::udp::UdpConnection;
use rsipstack::transport::{SipAddr, SipConnection, TransportLayer};
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::digest::{self, DigestAuthority, Refusal, Verdict};
use super::directory::{SipDirectory, SipPhone};
use super::identity::{self, IdentityRefusal, PhoneAnchors, PhoneCredentials};
use super::registrar::{self, Binding, Registrar};
use super::stateless::StatelessRegistrar;
use super::trunk::{self, SipTrunkEntry};
use crate::api::{DeviceSecurityMode, SipTransport};
use crate::core::phone_config::DigestAuth;
use crate::services::legacy_tls::{self, LegacyTls, offers_only_legacy_tls};

/// Requests handled at once; past it, REGISTER gets 503 with Retry-After (a registration storm).
pub const MAX_IN_FLIGHT: usize = 2_000;
/// Seconds a phone is told to wait when the service is overloaded.
pub const RETRY_AFTER_SECONDS: u32 = 30;
/// A TLS handshake that takes longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The sockets the service answers on.
pub struct Listeners {
    pub udp: Option<tokio::net::UdpSocket>,
    pub tcp: Option<TcpListener>,
    /// SIP-TLS: served with the configuration of the last [`SipService::follow`].
    pub tls: Option<TcpListener>,
    /// The incoming ports of trunk profiles that are not the phones' (Table 14-1).
    pub trunks: Vec<TrunkListener>,
}

/// A trunk profile's incoming port.
pub enum TrunkListener {
    /// Incoming Transport Type TCP+UDP: both, on one port.
    Plain(tokio::net::UdpSocket, TcpListener),
    Tls(TcpListener),
}

/// What the service has done, for metrics and tests.
#[derive(Debug, Default)]
pub struct Counters {
    pub registrations: AtomicU64,
    /// 401s sent to phones (the guide's `CCMSIPLineServerAuthChallenges`).
    pub challenges: AtomicU64,
    pub refusals: AtomicU64,
    pub overloaded: AtomicU64,
    /// Answered calls by their security: the lower of the two ends (`proxy::call_security`).
    pub calls_encrypted: AtomicU64,
    pub calls_authenticated: AtomicU64,
    pub calls_non_secure: AtomicU64,
}

pub struct SipService {
    directory: RwLock<Arc<SipDirectory>>,
    tls: RwLock<Option<SipTls>>,
    registrar: Registrar,
    /// One authority per nonce validity time; replaced when the realm changes.
    authorities: Mutex<HashMap<(String, u32), Arc<DigestAuthority>>>,
    /// What each TLS connection's peer presented and negotiated, by remote address.
    tls_peers: Mutex<TlsPeers>,
    /// Dialogs with a trunk whose INVITE was sent again with credentials, by Call-ID: the requests
    /// of the caller's side go with their CSeq moved up by as much (`proxy`).
    pub(super) renumbered: Mutex<Bounded<String, super::proxy::Renumbered>>,
    /// The relayed calls that were answered, by Call-ID, for their re-INVITEs.
    pub(super) relayed: Mutex<Bounded<String, Arc<super::media::RelayedCall>>>,
    in_flight: AtomicUsize,
    /// [`MAX_IN_FLIGHT`] unless a test lowers it.
    in_flight_limit: AtomicUsize,
    /// The address of each listener, for Via and Record-Route.
    listening: Mutex<Vec<SipAddr>>,
    /// The endpoint `serve` runs, whose transport layer dials trunks with [`SipTls::client`].
    endpoint: Mutex<Option<rsipstack::transaction::endpoint::EndpointInnerRef>>,
    /// The ports of the phones' listeners; the others are trunks' only.
    phone_ports: Mutex<Vec<u16>>,
    /// The relay calls' media goes through, when one runs beside the service.
    media: std::sync::OnceLock<Arc<crate::services::media::control::MediaClient>>,
    pub counters: Counters,
}

/// The TLS configuration of the SIP-TLS port: the node's CallManager certificate, and a client
/// certificate asked of every phone, verified against the cluster CA and the manufacturer CAs. A
/// phone without one still completes the handshake, so that its REGISTER is refused with a reason.
pub fn tls_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    anchors: &PhoneAnchors,
) -> Result<Arc<ServerConfig>, String> {
    let provider = crate::services::tls_provider::server_provider();
    let mut roots = rustls::RootCertStore::empty();
    for der in anchors.cluster_cas.iter().chain(&anchors.manufacturer_cas) {
        roots.add(CertificateDer::from(der.clone())).map_err(|e| format!("SIP-TLS trust anchor: {e}"))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("SIP-TLS client verifier: {e}"))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("SIP-TLS: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("SIP-TLS certificate: {e}"))?;
    Ok(Arc::new(config))
}

/// What SIP-TLS presents and accepts: rustls for TLS 1.2 and newer, and OpenSSL for the guide's
/// phones' TLS 1.0 and 1.1 when the cluster enables legacy TLS (`spec.legacyTls: Enabled`). The
/// identity rules after the handshake are the same code for both (`identity`).
#[derive(Clone)]
pub struct SipTls {
    pub config: Arc<ServerConfig>,
    pub legacy: Option<LegacyTls>,
    /// What calls to a TLS trunk present and trust: the node's certificate, the cluster CA (P.14-1).
    pub client: Option<rsipstack::transport::TlsConfig>,
}

impl SipService {
    pub fn new(directory: SipDirectory, tls: Option<SipTls>) -> Arc<SipService> {
        Arc::new(SipService {
            directory: RwLock::new(Arc::new(directory)),
            tls: RwLock::new(tls),
            registrar: Registrar::default(),
            authorities: Mutex::new(HashMap::new()),
            tls_peers: Mutex::new(Bounded::new(MAX_TLS_PEERS)),
            renumbered: Mutex::new(Bounded::new(MAX_RENUMBERED_DIALOGS)),
            relayed: Mutex::new(Bounded::new(MAX_RENUMBERED_DIALOGS)),
            in_flight: AtomicUsize::new(0),
            in_flight_limit: AtomicUsize::new(MAX_IN_FLIGHT),
            listening: Mutex::new(Vec::new()),
            phone_ports: Mutex::new(Vec::new()),
            endpoint: Mutex::new(None),
            media: std::sync::OnceLock::new(),
            counters: Counters::default(),
        })
    }

    /// Takes a new directory (phones, lines, credentials and certificates as the last build left
    /// them) and the TLS configuration new connections get.
    pub fn follow(&self, directory: SipDirectory, tls: Option<SipTls>) {
        self.dial_trunks_with(tls.as_ref());
        *self.tls.write().unwrap_or_else(|e| e.into_inner()) = tls;
        let mut current = self.directory.write().unwrap_or_else(|e| e.into_inner());
        *current = Arc::new(directory);
    }

    /// Whether what comes over `transport` from `source` was encrypted: TLS with a cipher that
    /// encrypts (the legacy listener's NULL-SHA does not).
    pub(super) fn confidential(&self, transport: Transport, source: Option<SocketAddr>) -> bool {
        transport == Transport::Tls && source.is_some_and(|peer| self.tls_peers.lock().unwrap_or_else(|e| e.into_inner()).encrypts(&peer))
    }

    /// New TLS connections to trunks present and trust what `tls` says.
    fn dial_trunks_with(&self, tls: Option<&SipTls>) {
        let Some(endpoint) = self.endpoint.lock().unwrap_or_else(|e| e.into_inner()).clone() else { return };
        match tls.and_then(|t| t.client.clone()) {
            Some(client) => endpoint.transport_layer.set_tls_config(client),
            None => endpoint.transport_layer.clear_tls_config(),
        }
    }

    /// Sends calls' media through `relay` from now on; a relay already set stays.
    pub fn relay_media_through(&self, relay: Arc<crate::services::media::control::MediaClient>) {
        let _ = self.media.set(relay);
    }

    pub(super) fn media_relay(&self) -> Option<Arc<crate::services::media::control::MediaClient>> {
        self.media.get().cloned()
    }

    pub fn registrar(&self) -> &Registrar {
        &self.registrar
    }

    pub(super) fn directory(&self) -> Arc<SipDirectory> {
        self.directory.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn authority(&self, realm: &str, validity_seconds: u32) -> Arc<DigestAuthority> {
        let mut authorities = self.authorities.lock().unwrap_or_else(|e| e.into_inner());
        authorities
            .entry((realm.to_string(), validity_seconds))
            .or_insert_with(|| Arc::new(DigestAuthority::new(realm, Duration::from_secs(u64::from(validity_seconds)))))
            .clone()
    }

    /// Our address for `transport`.
    pub(super) fn local_address(&self, transport: Transport) -> Option<SipAddr> {
        self.listening.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|a| a.r#type == Some(transport)).cloned()
    }

    /// Every address we listen on.
    pub(super) fn local_addresses(&self) -> Vec<SocketAddr> {
        self.listening.lock().unwrap_or_else(|e| e.into_inner()).iter().filter_map(|a| a.get_socketaddr().ok()).collect()
    }

    /// Sends `decision`, counting challenges and refusals.
    pub(super) async fn answer(&self, transaction: &mut Transaction, decision: Decision) -> rsipstack::Result<()> {
        let Decision::Reply(status, headers) = decision;
        self.count_answer(&status);
        transaction.reply_with(status, headers, None).await
    }

    fn count_answer(&self, status: &StatusCode) {
        if *status == StatusCode::Unauthorized {
            self.counters.challenges.fetch_add(1, Ordering::Relaxed);
        } else if status.kind() != sip::StatusCodeKind::Successful {
            self.counters.refusals.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether requests beyond those handled now are to be told to come back later.
    fn overloaded(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) >= self.in_flight_limit.load(Ordering::Relaxed)
    }

    /// A REGISTER from a phone, answered without a server transaction (`stateless`).
    pub(super) async fn register_statelessly(&self, mut request: sip::Request, connection: SipConnection) {
        let Some(endpoint) = self.endpoint.lock().unwrap_or_else(|e| e.into_inner()).clone() else { return };
        let Decision::Reply(status, headers) = if self.overloaded() {
            self.counters.overloaded.fetch_add(1, Ordering::Relaxed);
            Decision::come_back_later()
        } else {
            self.decide_register(&request, Some(&connection))
        };
        self.count_answer(&status);
        // As rsipstack's transaction would: a final answer carries a To tag.
        if let Ok(to) = request.to_header()
            && to.tag().ok().flatten().is_none()
        {
            let tagged = to.clone().with_tag(rsipstack::transaction::make_tag());
            request.headers.unique_push(tagged.into());
        }
        let mut response = endpoint.make_response(&request, status, None);
        response.headers.extend(headers);
        // Over UDP to where the top Via says (RFC 3261 §18.2.2: received and rport).
        let destination = if connection.is_reliable() { None } else { endpoint.get_destination_from_request(&request).await };
        if let Err(e) = connection.send(response.into(), destination.as_ref()).await {
            tracing::debug!(error = %e, "SIP answer to a REGISTER not sent");
        }
    }

    /// Serves until `cancel` fires.
    pub async fn serve(self: Arc<Self>, listeners: Listeners, cancel: CancellationToken) -> Result<(), String> {
        {
            let mut listening = self.listening.lock().unwrap_or_else(|e| e.into_inner());
            let udp = listeners.udp.as_ref().and_then(|s| s.local_addr().ok()).map(|a| (Transport::Udp, a));
            let tcp = listeners.tcp.as_ref().and_then(|l| l.local_addr().ok()).map(|a| (Transport::Tcp, a));
            let tls = listeners.tls.as_ref().and_then(|l| l.local_addr().ok()).map(|a| (Transport::Tls, a));
            *listening =
                [udp, tcp, tls].into_iter().flatten().map(|(kind, addr)| SipAddr { r#type: Some(kind), addr: addr.into() }).collect();
            *self.phone_ports.lock().unwrap_or_else(|e| e.into_inner()) =
                listening.iter().filter_map(|a| a.get_socketaddr().ok()).map(|a| a.port()).collect();
        }
        let (mut udp_sockets, mut tcp_listeners, mut tls_listeners) = (Vec::new(), Vec::new(), Vec::new());
        udp_sockets.extend(listeners.udp);
        tcp_listeners.extend(listeners.tcp);
        tls_listeners.extend(listeners.tls);
        for trunk in listeners.trunks {
            match trunk {
                TrunkListener::Plain(udp, tcp) => {
                    udp_sockets.push(udp);
                    tcp_listeners.push(tcp);
                }
                TrunkListener::Tls(tls) => tls_listeners.push(tls),
            }
        }
        let transport_layer = TransportLayer::new(cancel.child_token());
        for socket in udp_sockets {
            let udp = UdpConnection::from_socket(Arc::new(socket), None, Some(cancel.child_token()))
                .await
                .map_err(|e| format!("SIP over UDP: {e}"))?;
            transport_layer.add_transport(udp.into());
        }
        let endpoint = EndpointBuilder::new()
            .with_user_agent("Callguard")
            .with_cancel_token(cancel.clone())
            .with_transport_layer(transport_layer)
            .with_transport_inspector(Box::new(StatelessRegistrar::new(&self)))
            .build();
        let mut incoming = endpoint.incoming_transactions().map_err(|e| e.to_string())?;
        *self.endpoint.lock().unwrap_or_else(|e| e.into_inner()) = Some(endpoint.inner.clone());
        let tls = self.tls.read().unwrap_or_else(|e| e.into_inner()).clone();
        self.dial_trunks_with(tls.as_ref());
        let inner = endpoint.inner.clone();
        tokio::spawn(async move { inner.serve().await });
        for listener in tcp_listeners {
            tokio::spawn(accept_tcp(endpoint.inner.clone(), listener, cancel.clone()));
        }
        for listener in tls_listeners {
            tokio::spawn(self.clone().accept_tls(endpoint.inner.clone(), listener, cancel.clone()));
        }
        loop {
            let transaction = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                next = incoming.recv() => match next { Some(t) => t, None => return Ok(()) },
            };
            let service = self.clone();
            tokio::spawn(async move { service.handle(transaction).await });
        }
    }

    async fn accept_tls(
        self: Arc<Self>,
        endpoint: rsipstack::transaction::endpoint::EndpointInnerRef,
        listener: TcpListener,
        cancel: CancellationToken,
    ) {
        let Ok(local) = listener.local_addr() else { return };
        let local = SipAddr { r#type: Some(Transport::Tls), addr: local.into() };
        loop {
            let (tcp, peer) = tokio::select! {
                _ = cancel.cancelled() => return,
                accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
            };
            let Some(SipTls { config, legacy, .. }) = self.tls.read().unwrap_or_else(|e| e.into_inner()).clone() else {
                tracing::info!(%peer, "SIP-TLS connection dropped: the build gave SIP no certificate");
                continue;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let (service, endpoint, local, cancel) = (self.clone(), endpoint.clone(), local.clone(), cancel.clone());
            tokio::spawn(async move {
                if let Some(legacy) = legacy
                    && offers_only_legacy_tls(&tcp, HANDSHAKE_TIMEOUT).await
                {
                    service.accept_legacy(&endpoint, legacy, tcp, peer, cancel).await;
                    return;
                }
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        service.counters.refusals.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(%peer, error = %e, "SIP-TLS handshake refused");
                        return;
                    }
                    Err(_) => return,
                };
                let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().to_vec());
                // rustls offers no cipher that does not encrypt.
                service.tls_peers.lock().unwrap_or_else(|e| e.into_inner()).insert(peer, TlsPeer { leaf, encrypts: true });
                let remote = SipAddr { r#type: Some(Transport::Tls), addr: peer.into() };
                match TlsConnection::from_server_stream(tls, local, remote, Some(cancel.child_token())).await {
                    Ok(connection) => endpoint.transport_layer.add_connection(SipConnection::Tls(connection)),
                    Err(e) => tracing::info!(%peer, error = %e, "SIP-TLS connection dropped"),
                }
            });
        }
    }

    /// A connection whose ClientHello offers TLS 1.0 or 1.1 only: OpenSSL's, then rsipstack's.
    async fn accept_legacy(
        &self,
        endpoint: &rsipstack::transaction::endpoint::EndpointInnerRef,
        legacy: LegacyTls,
        tcp: tokio::net::TcpStream,
        peer: SocketAddr,
        cancel: CancellationToken,
    ) {
        let Ok(local) = tcp.local_addr() else { return };
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, legacy.accept(tcp)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                self.counters.refusals.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%peer, error = %e, "SIP-TLS (legacy) handshake refused");
                return;
            }
            Err(_) => return,
        };
        let peer_record = TlsPeer { leaf: legacy_tls::peer_certificate_der(stream.ssl()), encrypts: legacy_tls::encrypts(stream.ssl()) };
        tracing::info!(%peer, cipher = stream.ssl().current_cipher().map(|c| c.name()).unwrap_or("-"), "SIP-TLS (legacy) connection");
        self.tls_peers.lock().unwrap_or_else(|e| e.into_inner()).insert(peer, peer_record);
        match super::legacy::connection(stream, local, peer, cancel.child_token()).await {
            Ok(connection) => endpoint.transport_layer.add_connection(connection),
            Err(e) => tracing::info!(%peer, error = %e, "SIP-TLS (legacy) connection dropped"),
        }
    }

    async fn handle(&self, mut transaction: Transaction) {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.in_flight_limit.load(Ordering::Relaxed) {
            self.counters.overloaded.fetch_add(1, Ordering::Relaxed);
            let Decision::Reply(status, headers) = Decision::come_back_later();
            let _ = transaction.reply_with(status, headers, None).await;
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let in_dialog = transaction.original.to_header().is_ok_and(|to| to.value().contains("tag="));
        let result = match self.trunk_origin(transaction.connection.as_ref()) {
            TrunkOrigin::Trunk(trunk) if !in_dialog || trunk_checks_in_dialog(&transaction.original) => {
                self.trunk_request(transaction, *trunk, in_dialog).await
            }
            // The trunk is known by its connection: the rest of its dialog follows the route.
            TrunkOrigin::Trunk(_) => self.in_dialog(transaction).await,
            TrunkOrigin::Unknown(decision) => self.answer(&mut transaction, decision).await,
            _ => self.phone_request(transaction, in_dialog).await,
        };
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Err(e) = result {
            tracing::debug!(error = %e, "SIP request not handled to the end");
        }
    }

    /// Whether the request comes from a trunk: by its TLS certificate or its source address and the
    /// port it came to (Table 14-1); `Unknown` on a trunks-only port when it matches none.
    pub(super) fn trunk_origin(&self, connection: Option<&SipConnection>) -> TrunkOrigin {
        let Some(connection) = connection else { return TrunkOrigin::None };
        let Some(local_port) = connection.get_addr().get_socketaddr().ok().map(|a| a.port()) else { return TrunkOrigin::None };
        let directory = self.directory();
        if !directory.is_trunk_port(local_port) {
            // On a connection this service dialled to a trunk's destination (for TLS, whose
            // certificate was checked then): that trunk's requests in the dialogs of its calls.
            // A phone's UDP request, the most common, is settled by the transport alone.
            let dialled = matches!(connection.transport(), Transport::Tcp | Transport::Tls) && !self.is_phone_port(local_port);
            let remote = connection.get_remote_addr().and_then(|a| a.get_socketaddr().ok());
            return match remote.filter(|_| dialled).and_then(|remote| directory.trunk_dialled(remote)) {
                Some(trunk) => TrunkOrigin::Trunk(Box::new(trunk.clone())),
                None => TrunkOrigin::None,
            };
        }
        let tls = connection.transport() == Transport::Tls;
        let source = connection.get_remote_addr().and_then(|a| a.get_socketaddr().ok());
        let leaf = match (tls, source) {
            (true, Some(peer)) => self.tls_peers.lock().unwrap_or_else(|e| e.into_inner()).leaf(&peer),
            _ => None,
        };
        if let Some(trunk) = directory.trunk_for(local_port, tls, source.map(|s| s.ip()), leaf.as_deref()) {
            return TrunkOrigin::Trunk(Box::new(trunk.clone()));
        }
        if self.is_phone_port(local_port) {
            return TrunkOrigin::None;
        }
        let why = if tls {
            format!("the certificate's subject is not among the X.509 subject names of the trunks on port {local_port} (Table 14-1)")
        } else {
            format!(
                "{} is not a destination of a trunk on port {local_port} (Table 14-1)",
                source.map(|s| s.ip().to_string()).unwrap_or_default()
            )
        };
        tracing::info!(?source, "trunk request refused: {why}");
        TrunkOrigin::Unknown(Decision::refuse(StatusCode::Forbidden, &why))
    }

    async fn phone_request(&self, mut transaction: Transaction, in_dialog: bool) -> rsipstack::Result<()> {
        match transaction.original.method {
            Method::Register => self.register(&mut transaction).await,
            Method::Invite if !in_dialog => self.invite(transaction).await,
            Method::Options if !in_dialog => transaction.reply(StatusCode::OK).await,
            // Every request of a phone is its own (Table 5-2 challenges each); an ACK cannot be
            // challenged (RFC 3261 §22.1) and follows the dialog's route as it is.
            Method::Ack if in_dialog => self.in_dialog(transaction).await,
            _ if in_dialog => {
                let from_line = transaction.original.from_header().and_then(|f| f.uri()).ok().and_then(|u| u.user().map(str::to_owned));
                let Some(from_line) = from_line else {
                    return self.answer(&mut transaction, Decision::refuse(StatusCode::BadRequest, "the From URI names no line")).await;
                };
                match self.authenticate(&transaction.original, transaction.connection.as_ref(), &from_line) {
                    Ok(_) => self.in_dialog(transaction).await,
                    Err(decision) => self.answer(&mut transaction, decision).await,
                }
            }
            _ => transaction.reply(StatusCode::NotImplemented).await,
        }
    }

    /// A trunk's request, through the checks of P.1-6: the profile's access list, digest with the
    /// application users' credentials, their own flags. Past them, an INVITE is routed to the
    /// called line; the features themselves (presence, REFER, MWI) are not served yet: 501.
    async fn trunk_request(&self, mut transaction: Transaction, trunk: SipTrunkEntry, in_dialog: bool) -> rsipstack::Result<()> {
        let request = &transaction.original;
        let method = request.method.to_string().to_ascii_uppercase();
        let header = |name: &str| {
            request.headers.iter().find_map(|h| {
                let text = h.to_string();
                let (key, value) = text.split_once(':')?;
                key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_string())
            })
        };
        let replaces = header("Replaces").is_some() || header("Refer-To").is_some_and(|r| r.to_ascii_lowercase().contains("replaces="));
        let feature = trunk::feature_of(&method, in_dialog, header("Event").or_else(|| header("o")).as_deref(), replaces);
        let source = transaction.connection.as_ref().and_then(|c| c.get_remote_addr()).and_then(|a| a.get_socketaddr().ok());
        if let Err(refusal) = trunk.admits(feature) {
            let why = refusal.reason(&trunk.subject);
            tracing::info!(?source, "{method} refused: {why}");
            return self.answer(&mut transaction, Decision::refuse(StatusCode::Forbidden, &why)).await;
        }
        if let Some(validity) = trunk.digest_nonce_validity {
            let directory = self.directory();
            let authority = self.authority(&directory.trunk_realm, validity);
            let application_user = |user: &str| {
                trunk
                    .application_user(user)
                    .ok_or_else(|| format!("{}: {user} is not an application user of the trunk (Chapter 15)", trunk.subject))
            };
            let transport = transaction.connection.as_ref().map(|c| c.transport()).unwrap_or(Transport::Udp);
            let username = match check_digest(request, &authority, &trunk.subject, (transport, source), application_user) {
                Ok(username) => username,
                Err(decision) => return self.answer(&mut transaction, decision).await,
            };
            if let Err(refusal) = trunk.authorizes(&username, feature) {
                let why = refusal.reason(&trunk.subject);
                tracing::info!(?source, "{method} refused: {why}");
                return self.answer(&mut transaction, Decision::refuse(StatusCode::Forbidden, &why)).await;
            }
        }
        let transport = transaction.connection.as_ref().map(|c| c.transport()).unwrap_or(Transport::Udp);
        match transaction.original.method {
            Method::Invite if !in_dialog => {
                // A SIP trunk carries no SRTP in this release (SRTP Allowed is false, P.13-4): its keys
                // never reach a phone, whatever the transport.
                let origin = super::proxy::Origin { subject: trunk.subject.clone(), mode: trunk.mode, transport, confidential: false };
                self.route_invite(transaction, origin).await
            }
            _ if in_dialog => self.in_dialog(transaction).await,
            _ => {
                let why = format!("{method} from {} passed its checks, but this service does not serve it yet", trunk.subject);
                self.answer(&mut transaction, Decision::refuse(StatusCode::NotImplemented, &why)).await
            }
        }
    }

    /// Whether phones use `port`.
    fn is_phone_port(&self, port: u16) -> bool {
        self.phone_ports.lock().unwrap_or_else(|e| e.into_inner()).contains(&port)
    }

    async fn register(&self, transaction: &mut Transaction) -> rsipstack::Result<()> {
        let decision = self.decide_register(&transaction.original, transaction.connection.as_ref());
        self.answer(transaction, decision).await
    }

    /// The REGISTER policy: who the phone is (see [`Self::authenticate`]) and the binding.
    fn decide_register(&self, request: &sip::Request, connection: Option<&SipConnection>) -> Decision {
        let Ok(aor) = request.to_header().and_then(|to| to.uri()) else { return Decision::refuse(StatusCode::BadRequest, "no To URI") };
        let Some(line) = aor.user().map(str::to_owned) else { return Decision::refuse(StatusCode::NotFound, "the To URI names no line") };
        match self.authenticate(request, connection, &line) {
            Ok(caller) => self.bind(request, &line, &caller.phone, caller.transport, caller.source),
            Err(decision) => decision,
        }
    }

    /// Which phone sends this request as `line`: over TLS the one its certificate names, over UDP
    /// or TCP one whose profile allows that transport (Table 5-2); then its digest answer, when its
    /// profile asks one. The answer to send instead when there is none.
    pub(super) fn authenticate(&self, request: &sip::Request, connection: Option<&SipConnection>, line: &str) -> Result<Caller, Decision> {
        let method = request.method.to_string();
        let Some(connection) = connection else {
            return Err(Decision::refuse(StatusCode::ServerInternalError, "no connection"));
        };
        let transport = connection.transport();
        let source = connection.get_remote_addr().and_then(|a| a.get_socketaddr().ok());
        let directory = self.directory();
        let candidates: Vec<&SipPhone> = directory.phones_with_line(line).collect();
        if candidates.is_empty() {
            return Err(Decision::refuse(StatusCode::NotFound, &format!("no SIP phone has line {line}")));
        }
        let phone = match transport {
            Transport::Tls => {
                let leaf = source.and_then(|peer| self.tls_peers.lock().unwrap_or_else(|e| e.into_inner()).leaf(&peer));
                let lookup = |device: &str| {
                    directory.phone(device).map(|p| PhoneCredentials {
                        device: &p.device,
                        current_lsc_sha256: p.current_lsc_sha256.as_deref(),
                        mic_accepted: p.mic_accepted,
                    })
                };
                let identity = match identity::identify_phone(leaf.as_deref(), &directory.anchors, lookup, time::OffsetDateTime::now_utc())
                {
                    Ok(identity) => identity,
                    Err(refusal) => return Err(self.refuse_identity(&method, line, source, &refusal)),
                };
                match candidates.iter().find(|p| p.device == identity.device) {
                    Some(phone) => *phone,
                    None => {
                        let refusal = IdentityRefusal::OtherDevice {
                            presented: identity.device,
                            expected: candidates.iter().map(|p| p.device.as_str()).collect::<Vec<_>>().join(", "),
                        };
                        return Err(self.refuse_identity(&method, line, source, &refusal));
                    }
                }
            }
            other => {
                let Some(phone) = candidates.iter().find(|p| transport_allowed(p.transport, other)) else {
                    let why = format!(
                        "line {line} belongs to {}, whose profile does not allow SIP over {other} (Table 5-2)",
                        candidates.iter().map(|p| p.subject.as_str()).collect::<Vec<_>>().join(", ")
                    );
                    tracing::info!(?source, "{method} refused: {why}");
                    return Err(Decision::refuse(StatusCode::Forbidden, &why));
                };
                *phone
            }
        };
        if phone.mode == DeviceSecurityMode::Encrypted && transport == Transport::Tls && !self.confidential(transport, source) {
            let why = format!(
                "{} is Encrypted, but its TLS connection negotiated a cipher that does not encrypt (NULL-SHA): its signalling must be encrypted (P.1-6)",
                phone.subject
            );
            tracing::info!(?source, "{method} refused: {why}");
            return Err(Decision::refuse(StatusCode::Forbidden, &why));
        }
        if let Some(credentials) = &phone.digest {
            let authority = self.authority(&directory.realm, phone.nonce_validity_seconds);
            check_digest(request, &authority, &phone.subject, (transport, source), |_| Ok(credentials))?;
        }
        Ok(Caller { phone: phone.clone(), transport, source })
    }

    fn refuse_identity(&self, method: &str, line: &str, source: Option<SocketAddr>, refusal: &IdentityRefusal) -> Decision {
        tracing::info!(?source, line, reason = refusal.label(), "{method} over TLS refused: {refusal}");
        Decision::refuse(StatusCode::Forbidden, &refusal.to_string())
    }

    fn bind(&self, request: &sip::Request, line: &str, phone: &SipPhone, transport: Transport, source: Option<SocketAddr>) -> Decision {
        let Ok(contacts) = request.typed_contact_headers() else { return Decision::refuse(StatusCode::BadRequest, "unreadable Contact") };
        let asked_all = request.expires_header().and_then(|e| e.value().trim().parse::<u32>().ok());
        let source = source.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let wildcard = request.headers.iter().any(|h| matches!(h, Header::Contact(c) if c.value().trim() == "*"));
        if wildcard {
            self.registrar.unbind(line, &phone.device, None);
            return Decision::Reply(StatusCode::OK, vec![]);
        }
        let mut granted_headers = Vec::new();
        for contact in contacts {
            let uri = contact.uri.to_string();
            match contact.expires().or(asked_all) {
                Some(0) => self.registrar.unbind(line, &phone.device, Some(&uri)),
                asked => {
                    let seconds = registrar::granted(asked);
                    let binding =
                        Binding { device: phone.device.clone(), contact: uri, transport, source, expires_at: registrar::expiry(seconds) };
                    if self.registrar.bind(line, binding).is_err() {
                        self.counters.overloaded.fetch_add(1, Ordering::Relaxed);
                        return Decision::come_back_later();
                    }
                    let granted = sip::typed::Contact { params: vec![Param::Expires(seconds.to_string().into())], ..contact };
                    granted_headers.push(granted.into());
                }
            }
        }
        self.counters.registrations.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%source, phone = %phone.subject, line, %transport, "registered");
        Decision::Reply(StatusCode::OK, granted_headers)
    }
}

/// The most TLS connections whose certificate is remembered: well above the connections a node's
/// phones and trunks keep open. Past it the oldest is forgotten, and its next request is refused as
/// one without a certificate, which makes the phone reconnect.
const MAX_TLS_PEERS: usize = 100_000;
/// The most dialogs with a trunk remembered as renumbered; past it the oldest's later requests keep
/// the caller's numbers.
const MAX_RENUMBERED_DIALOGS: usize = 100_000;

/// What a TLS connection's peer presented and negotiated.
struct TlsPeer {
    /// Its certificate (None: none).
    leaf: Option<Vec<u8>>,
    /// Whether the cipher encrypts (the legacy listener's NULL-SHA only authenticates).
    encrypts: bool,
}

/// A map that forgets its oldest entry past `capacity`: what it remembers comes and goes (connections
/// by ephemeral port, dialogs) and the end of each is not always reported to us.
pub(super) struct Bounded<K, V> {
    entries: HashMap<K, V>,
    order: std::collections::VecDeque<K>,
    capacity: usize,
}

impl<K: std::hash::Hash + Eq + Clone, V> Bounded<K, V> {
    pub(super) fn new(capacity: usize) -> Self {
        Bounded { entries: HashMap::new(), order: std::collections::VecDeque::new(), capacity }
    }

    pub(super) fn insert(&mut self, key: K, value: V) {
        if self.entries.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.entries.remove(&oldest);
            }
        }
    }

    pub(super) fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key)
    }
}

/// Each TLS connection's [`TlsPeer`], by remote address.
type TlsPeers = Bounded<SocketAddr, TlsPeer>;

impl TlsPeers {
    fn leaf(&self, peer: &SocketAddr) -> Option<Vec<u8>> {
        self.get(peer).and_then(|record| record.leaf.clone())
    }

    /// False for a peer forgotten or never seen: keys are then kept from it.
    fn encrypts(&self, peer: &SocketAddr) -> bool {
        self.get(peer).is_some_and(|record| record.encrypts)
    }
}

/// Whether a request comes from a trunk.
pub(super) enum TrunkOrigin {
    /// Not from a trunk: a phone's request.
    None,
    Trunk(Box<SipTrunkEntry>),
    /// On a port only trunks use, from no trunk.
    Unknown(Decision),
}

/// Requests inside a dialog are checked again when they carry what Table 14-1 gates (a REFER with
/// Replaces); the rest follow the dialog's route.
fn trunk_checks_in_dialog(request: &sip::Request) -> bool {
    request.method == Method::Refer
}

/// A phone that sent a request, authenticated.
pub(super) struct Caller {
    pub phone: SipPhone,
    pub transport: Transport,
    pub source: Option<SocketAddr>,
}

/// What to answer a request.
pub(super) enum Decision {
    Reply(StatusCode, Vec<Header>),
}

impl Decision {
    pub(super) fn refuse(status: StatusCode, why: &str) -> Decision {
        Decision::Reply(status, vec![Header::Warning(format!("399 callguard \"{}\"", why.replace('"', "'")).into())])
    }

    /// 503 with Retry-After: the service is overloaded.
    fn come_back_later() -> Decision {
        Decision::Reply(StatusCode::ServiceUnavailable, vec![Header::RetryAfter(RETRY_AFTER_SECONDS.to_string().into())])
    }

    fn challenge(authority: &DigestAuthority, stale: bool) -> Decision {
        Decision::Reply(
            StatusCode::Unauthorized,
            authority.challenge(stale).into_iter().map(|c| Header::WwwAuthenticate(c.into())).collect(),
        )
    }
}

/// The digest answer of `request`, which came over `transport` from `source`, checked against
/// `authority`: `credentials(username)` gives the credentials of the user it names, or why that
/// user may not answer here. The username that authenticated, or what to send instead (a challenge,
/// `stale=true`, a refusal).
fn check_digest<'a>(
    request: &sip::Request,
    authority: &DigestAuthority,
    subject: &str,
    (transport, source): (Transport, Option<SocketAddr>),
    credentials: impl Fn(&str) -> Result<&'a DigestAuth, String>,
) -> Result<String, Decision> {
    let method = request.method.to_string();
    let Some(header) = request.authorization_header() else { return Err(Decision::challenge(authority, false)) };
    let answer =
        digest::parse_credentials(header.value()).map_err(|e| Decision::refuse(StatusCode::BadRequest, &format!("Authorization: {e}")))?;
    let expected = credentials(&answer.username).map_err(|why| {
        tracing::info!(?source, "{method} refused: {why}");
        Decision::refuse(StatusCode::Forbidden, &why)
    })?;
    // Without qop, the digest uri must be the Request-URI (compared as a SIP URI: rsipstack does not
    // keep the request line's text), or an answer overheard could be replayed to another URI while
    // its nonce lives. With qop=auth the nonce count makes every answer single-use, and clients
    // differ in what they put there (sipp: the server's address), so the uri is only hashed, as
    // RFC 2617 §3.2.2.5 allows.
    let uri_matches = sip::Uri::try_from(answer.uri.as_str()).is_ok_and(|uri| uri == request.uri);
    let request_uri = if uri_matches || answer.qop.is_some() { answer.uri.clone() } else { request.uri.to_string() };
    // Only UDP retransmits a request (RFC 3261 §17.1.2.2): there the same request may come again.
    let retransmittable = (transport == Transport::Udp).then(|| request.via_header().ok()).flatten();
    let checked = digest::Expected {
        method: &method,
        request_uri: &request_uri,
        user: &expected.name,
        password: &expected.password,
        request: retransmittable.map(|via| digest::RequestId::new(via.value(), source)),
    };
    match authority.verify(&answer, &checked) {
        Verdict::Authenticated => Ok(answer.username),
        Verdict::Stale => {
            tracing::info!(?source, %subject, "{method}: the nonce expired: challenged again with stale=true");
            Err(Decision::challenge(authority, true))
        }
        Verdict::Refused(refusal) => {
            tracing::info!(?source, %subject, "{method} refused: {}", refusal.reason());
            let status = if refusal == Refusal::Unsupported { StatusCode::BadRequest } else { StatusCode::Forbidden };
            Err(Decision::refuse(status, refusal.reason()))
        }
    }
}

/// Whether a profile's transport type lets a phone use `transport` (Table 5-2).
fn transport_allowed(profile: SipTransport, transport: Transport) -> bool {
    matches!(
        (profile, transport),
        (SipTransport::Udp | SipTransport::TcpAndUdp, Transport::Udp) | (SipTransport::Tcp | SipTransport::TcpAndUdp, Transport::Tcp)
    )
}

/// Accepts SIP over TCP on a listener with a deep queue (`services::tcp_listener`).
async fn accept_tcp(endpoint: rsipstack::transaction::endpoint::EndpointInnerRef, listener: TcpListener, cancel: CancellationToken) {
    let Ok(local) = listener.local_addr() else { return };
    let local = SipAddr { r#type: Some(Transport::Tcp), addr: local.into() };
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted { Ok((stream, _)) => stream, Err(_) => continue },
        };
        match TcpConnection::from_stream(stream, local.clone(), Some(cancel.child_token())) {
            Ok(connection) => endpoint.transport_layer.add_connection(SipConnection::Tcp(connection)),
            Err(e) => tracing::info!(error = %e, "SIP-TCP connection dropped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DeviceSecurityMode;
    use crate::core::phone_config::DigestAuth;
    use crate::core::pki::ca::{CaSettings, ClusterCa};
    use crate::core::pki::issue::{ServerCertificateRequest, ServerRole, issue_server_certificate_with_new_key};
    use crate::core::pki::{inspect, keys};
    use rsa::pkcs8::EncodePublicKey;
    use rsipstack::sip::SipMessage;
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const UDP_PHONE: &str = "SEP000000001005";
    const TLS_PHONE: &str = "SEP000000001002";
    /// Two Encrypted phones, without digest, for calls over TLS.
    const CALLER: &str = "SEP000000001003";
    const CALLEE: &str = "SEP000000001004";

    struct Lab {
        udp: SocketAddr,
        tls: SocketAddr,
        ca: ClusterCa,
        phone_key: rsa::RsaPrivateKey,
        lsc: Vec<u8>,
        caller_lsc: Vec<u8>,
        callee_lsc: Vec<u8>,
        service: Arc<SipService>,
        /// The node's certificate: what SIP-TLS presents, and what calls to TLS trunks present.
        node_certificate: Vec<u8>,
        _cancel: tokio_util::sync::DropGuard,
    }

    fn phone(device: &str, line: &str, mode: DeviceSecurityMode, transport: SipTransport, lsc: Option<&[u8]>) -> SipPhone {
        SipPhone {
            subject: format!("Phone/{line}"),
            device: device.into(),
            lines: vec![line.into()],
            mode,
            transport,
            digest: Some(DigestAuth { name: format!("user{line}"), password: "secret".into() }),
            nonce_validity_seconds: 600,
            mic_accepted: false,
            current_lsc_sha256: lsc.map(inspect::sha256_hex),
        }
    }

    async fn lab() -> Lab {
        lab_with_trunks(|_| Vec::new(), Vec::new()).await
    }

    /// A lab with trunk-only TLS listeners `trunk_listeners`, and the trunks `trunks` makes of their ports.
    async fn lab_with_trunks(trunks: impl FnOnce(&[u16]) -> Vec<SipTrunkEntry>, trunk_listeners: Vec<TcpListener>) -> Lab {
        let now = time::OffsetDateTime::now_utc();
        let ca = ClusterCa::generate(&CaSettings::new("sip", "default"), now).unwrap();
        // 2048 bits: rustls (ring) neither signs nor verifies TLS client signatures with 1024-bit RSA.
        let phone_key = keys::generate_rsa(2048);
        let spki = rsa::RsaPublicKey::from(&phone_key).to_public_key_der().unwrap().as_bytes().to_vec();
        let lsc = identity::lsc_for(&ca, TLS_PHONE, &spki);
        let (caller_lsc, callee_lsc) = (identity::lsc_for(&ca, CALLER, &spki), identity::lsc_for(&ca, CALLEE, &spki));
        let server = ServerCertificateRequest::short_lived(ServerRole::CallManager, "cm1.example.com", None, now);
        let identity = issue_server_certificate_with_new_key(&ca, &server).unwrap();
        let phones = [
            phone(UDP_PHONE, "1005", DeviceSecurityMode::NonSecure, SipTransport::Udp, None),
            phone(TLS_PHONE, "1002", DeviceSecurityMode::Authenticated, SipTransport::Tls, Some(&lsc)),
            SipPhone { digest: None, ..phone(CALLER, "1003", DeviceSecurityMode::Encrypted, SipTransport::Tls, Some(&caller_lsc)) },
            SipPhone { digest: None, ..phone(CALLEE, "1004", DeviceSecurityMode::Encrypted, SipTransport::Tls, Some(&callee_lsc)) },
        ];
        let ports: Vec<u16> = trunk_listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
        let directory = SipDirectory::new("ccmsipline".into(), vec![ca.certificate_der().to_vec()], vec![], phones)
            .with_trunks("Lab".into(), trunks(&ports));
        let anchors = PhoneAnchors { cluster_cas: vec![ca.certificate_der().to_vec()], manufacturer_cas: vec![] };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(keys::pkcs8_der(&identity.key)));
        let config = tls_config(vec![CertificateDer::from(identity.certificate_der.clone())], key, &anchors).unwrap();
        let udp_socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let udp = udp_socket.local_addr().unwrap();
        let tls_listener = crate::services::tcp_listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let tls = tls_listener.local_addr().unwrap();
        let client = rsipstack::transport::TlsConfig {
            client_cert: Some(crate::core::pki::ca::certificate_pem(&identity.certificate_der).into_bytes()),
            client_key: Some(keys::pkcs8_pem(&identity.key).as_bytes().to_vec()),
            ca_certs: Some(crate::core::pki::ca::certificate_pem(ca.certificate_der()).into_bytes()),
            ..Default::default()
        };
        let service = SipService::new(directory, Some(SipTls { config, legacy: None, client: Some(client) }));
        let cancel = CancellationToken::new();
        let trunks = trunk_listeners.into_iter().map(TrunkListener::Tls).collect();
        let listeners = Listeners { udp: Some(udp_socket), tcp: None, tls: Some(tls_listener), trunks };
        tokio::spawn(service.clone().serve(listeners, cancel.clone()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let node_certificate = identity.certificate_der.clone();
        Lab { udp, tls, ca, phone_key, lsc, caller_lsc, callee_lsc, service, node_certificate, _cancel: cancel.drop_guard() }
    }

    /// A trunk on TLS port `port` whose peers present `subject` (Table 14-1), sending nowhere.
    fn tls_trunk(name: &str, port: u16, subject: &str) -> SipTrunkEntry {
        SipTrunkEntry {
            subject: format!("SipTrunk/{name}"),
            mode: DeviceSecurityMode::Encrypted,
            incoming_port: port,
            tls: true,
            subject_names: vec![subject.into()],
            peer_addresses: vec![],
            digest_nonce_validity: None,
            application_level_authorization: false,
            accept: Default::default(),
            application_users: vec![],
            destinations: vec![],
            outgoing: crate::api::OutgoingTransport::Tls,
            realm: None,
        }
    }

    /// A certificate of `ca` for `hostname` (and `ip`), with a new key: a trunk peer's.
    fn peer_certificate(ca: &ClusterCa, hostname: &str, ip: Option<std::net::IpAddr>) -> crate::core::pki::issue::IssuedServerCertificate {
        let request = ServerCertificateRequest::short_lived(ServerRole::CallManager, hostname, ip, time::OffsetDateTime::now_utc());
        issue_server_certificate_with_new_key(ca, &request).unwrap()
    }

    fn register(transport: &str, local: SocketAddr, server: SocketAddr, line: &str, cseq: u32, authorization: Option<String>) -> String {
        let authorization = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        format!(
            "REGISTER sip:{server} SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch=z9hG4bK{line}{cseq}x{}{};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:{line}@{server}>;tag=t{line}\r\nTo: <sip:{line}@{server}>\r\nCall-ID: c{line}@test\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{line}@{local};transport={}>\r\nExpires: 600\r\n{authorization}Content-Length: 0\r\n\r\n",
            // rsipstack matches transactions by branch, Call-ID and From tag only: a branch per client.
            transport.to_ascii_lowercase(),
            local.port(),
            transport.to_ascii_lowercase(),
        )
    }

    fn status_and_headers(bytes: &[u8]) -> (u16, String) {
        let SipMessage::Response(response) = SipMessage::try_from(bytes).unwrap() else { panic!("a response") };
        (u16::from(response.status_code.clone()), String::from_utf8_lossy(bytes).into_owned())
    }

    /// The MD5 answer to the MD5 challenge of `response`, for a REGISTER.
    fn md5_answer(response: &str, user: &str, password: &str, uri: &str, nc: u32) -> String {
        md5_answer_for("REGISTER", response, user, password, uri, nc)
    }

    fn md5_answer_for(method: &str, response: &str, user: &str, password: &str, uri: &str, nc: u32) -> String {
        let challenge = response.lines().find(|l| l.starts_with("WWW-Authenticate") && l.contains("MD5")).expect("an MD5 challenge");
        let nonce = challenge.split("nonce=\"").nth(1).unwrap().split('"').next().unwrap();
        let hash = |s: String| inspect::md5_hex(s.as_bytes());
        let (ha1, ha2) = (hash(format!("{user}:ccmsipline:{password}")), hash(format!("{method}:{uri}")));
        let nc = format!("{nc:08x}");
        let response = hash(format!("{ha1}:{nonce}:{nc}:abc:auth:{ha2}"));
        format!(
            r#"Digest username="{user}", realm="ccmsipline", nonce="{nonce}", uri="{uri}", response="{response}", algorithm=MD5, cnonce="abc", qop=auth, nc={nc}"#
        )
    }

    async fn udp_exchange(socket: &tokio::net::UdpSocket, server: SocketAddr, message: String) -> (u16, String) {
        socket.send_to(message.as_bytes(), server).await.unwrap();
        status_and_headers(udp_receive(socket).await.0.as_bytes())
    }

    /// The next datagram on `socket`, as text, and where it came from.
    async fn udp_receive(socket: &tokio::net::UdpSocket) -> (String, SocketAddr) {
        let mut buffer = vec![0u8; 8192];
        let (n, from) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buffer)).await.expect("a message").unwrap();
        (String::from_utf8_lossy(&buffer[..n]).into_owned(), from)
    }

    /// The first final (not 1xx) answer on `socket`.
    async fn udp_final_answer(socket: &tokio::net::UdpSocket) -> String {
        loop {
            let (text, _) = udp_receive(socket).await;
            if !text.starts_with("SIP/2.0 1") {
                return text;
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_udp_phone_registers_with_digest_and_a_wrong_password_or_a_tls_only_line_is_refused() {
        let lab = lab().await;
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = socket.local_addr().unwrap();
        let uri = format!("sip:{}", lab.udp);
        let (status, challenge) = udp_exchange(&socket, lab.udp, register("UDP", local, lab.udp, "1005", 1, None)).await;
        assert_eq!(status, 401, "{challenge}");
        assert_eq!(challenge.matches("WWW-Authenticate").count(), 2, "SHA-256 and MD5: {challenge}");
        let wrong = md5_answer(&challenge, "user1005", "guess", &uri, 1);
        let (status, text) = udp_exchange(&socket, lab.udp, register("UDP", local, lab.udp, "1005", 2, Some(wrong))).await;
        assert_eq!(status, 403, "{text}");
        let right = md5_answer(&challenge, "user1005", "secret", &uri, 2);
        let (status, text) = udp_exchange(&socket, lab.udp, register("UDP", local, lab.udp, "1005", 3, Some(right.clone()))).await;
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("expires=600"), "{text}");
        assert_eq!(lab.service.registrar().lookup("1005").len(), 1);
        let to = text.lines().find(|l| l.starts_with("To:")).unwrap_or_default();
        assert!(to.contains(";tag="), "a final answer tags the To: {text}");
        // Its 200 lost, the phone sends the same request again: answered as before, not a replay.
        let (status, text) = udp_exchange(&socket, lab.udp, register("UDP", local, lab.udp, "1005", 3, Some(right.clone()))).await;
        assert_eq!(status, 200, "the retransmission: {text}");
        // The same answer on another request: its nonce count is spent.
        let (status, text) = udp_exchange(&socket, lab.udp, register("UDP", local, lab.udp, "1005", 4, Some(right))).await;
        assert_eq!(status, 403, "{text}");
        assert!(text.contains("replayed nonce count"), "{text}");
        // Line 1002 belongs to an Authenticated phone: TLS only.
        let (status, text) = udp_exchange(&socket, lab.udp, register("UDP", local, lab.udp, "1002", 1, None)).await;
        assert_eq!(status, 403, "{text}");
        let (status, _) = udp_exchange(&socket, lab.udp, register("UDP", local, lab.udp, "4242", 1, None)).await;
        assert_eq!(status, 404);
    }

    type TlsPhone = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

    /// A TLS connection to the SIP-TLS port, presenting `client_certificate`; its local address.
    async fn tls_connect(lab: &Lab, client_certificate: Option<(Vec<u8>, &rsa::RsaPrivateKey)>) -> (TlsPhone, SocketAddr) {
        tls_connect_to(&lab.ca, lab.tls, client_certificate).await
    }

    /// A TLS connection to `address`, trusting `ca`, presenting `client_certificate`.
    async fn tls_connect_to(
        ca: &ClusterCa,
        address: SocketAddr,
        client_certificate: Option<(Vec<u8>, &rsa::RsaPrivateKey)>,
    ) -> (TlsPhone, SocketAddr) {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(ca.certificate_der().to_vec())).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match client_certificate {
            Some((der, key)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from(der)],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(keys::pkcs8_der(key))),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let local = tcp.local_addr().unwrap();
        let name = rustls_pki_types::ServerName::try_from("cm1.example.com").unwrap();
        (tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap(), local)
    }

    /// One whole message from a stream: the headers, then Content-Length bytes of body.
    async fn read_message<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, pending: &mut Vec<u8>) -> String {
        loop {
            if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length:").or_else(|| l.strip_prefix("content-length:")))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if pending.len() >= end + 4 + length {
                    let message: Vec<u8> = pending.drain(..end + 4 + length).collect();
                    return String::from_utf8_lossy(&message).into_owned();
                }
            }
            let mut buffer = vec![0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await.expect("a message").unwrap();
            assert!(n > 0, "the connection closed");
            pending.extend_from_slice(&buffer[..n]);
        }
    }

    async fn tls_register(lab: &Lab, client_certificate: Option<(Vec<u8>, &rsa::RsaPrivateKey)>) -> (u16, String) {
        let (mut stream, local) = tls_connect(lab, client_certificate).await;
        stream.write_all(register("TLS", local, lab.tls, "1002", 1, None).as_bytes()).await.unwrap();
        let text = read_message(&mut stream, &mut Vec::new()).await;
        status_and_headers(text.as_bytes())
    }

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0\r\n\
                         a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n";

    /// An INVITE from `line` at `local` over `transport` to line `to`, with an SRTP offer.
    fn invite(
        transport: &str,
        local: SocketAddr,
        server: SocketAddr,
        line: &str,
        to: &str,
        cseq: u32,
        authorization: Option<String>,
    ) -> String {
        let authorization = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        format!(
            "INVITE sip:{to}@{server} SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch=z9hG4bKcall{line}{cseq}{}\r\nMax-Forwards: 70\r\n\
             From: <sip:{line}@{server}>;tag=caller{line}\r\nTo: <sip:{to}@{server}>\r\nCall-ID: call{line}to{to}@test\r\n\
             CSeq: {cseq} INVITE\r\nContact: <sip:{line}@{local};transport={}>\r\n{authorization}\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{OFFER}",
            local.port(),
            transport.to_ascii_lowercase(),
            OFFER.len()
        )
    }

    /// The callee's 200 to `request` (an INVITE it received), with an SRTP answer.
    fn answer_ok(request: &str, contact: SocketAddr) -> String {
        let copy = |name: &str| request.lines().filter(|l| l.starts_with(name)).map(|l| format!("{l}\r\n")).collect::<String>();
        let to = request.lines().find(|l| l.starts_with("To:")).unwrap();
        format!(
            "SIP/2.0 200 OK\r\n{}{}{to};tag=callee\r\n{}{}{}Contact: <sip:1004@{contact};transport=tls>\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{OFFER}",
            copy("Via:"),
            copy("From:"),
            copy("Call-ID:"),
            copy("CSeq:"),
            copy("Record-Route:"),
            OFFER.len()
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_tls_only_the_phones_current_lsc_gets_to_the_digest_challenge() {
        let lab = lab().await;
        let (status, text) = tls_register(&lab, Some((lab.lsc.clone(), &lab.phone_key))).await;
        assert_eq!(status, 401, "the phone is known; digest next: {text}");
        let (status, text) = tls_register(&lab, None).await;
        assert_eq!(status, 403, "{text}");
        assert!(text.contains("no client certificate"), "{text}");
        // A certificate of the same CA for another phone.
        let spki = rsa::RsaPublicKey::from(&lab.phone_key).to_public_key_der().unwrap().as_bytes().to_vec();
        let other = identity::lsc_for(&lab.ca, UDP_PHONE, &spki);
        let (status, text) = tls_register(&lab, Some((other, &lab.phone_key))).await;
        assert_eq!(status, 403, "{text}");
        assert!(text.contains("not its current one"), "{text}");
        assert!(lab.service.counters.refusals.load(Ordering::Relaxed) >= 2);
    }

    /// Two Encrypted phones register over TLS with their LSCs and call: the INVITE reaches the callee
    /// over its own TLS connection with the SRTP offer and the proxy's Record-Route, the answer
    /// reaches the caller with its keys, and the call counts as Encrypted. Then a Non Secure phone over
    /// UDP calls the same Encrypted phone: the keys are removed both ways and the call is Non Secure.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_between_encrypted_phones_keeps_its_keys_and_one_with_a_udp_phone_loses_them() {
        let lab = lab().await;
        let (mut callee, callee_local) = tls_connect(&lab, Some((lab.callee_lsc.clone(), &lab.phone_key))).await;
        let mut callee_pending = Vec::new();
        callee.write_all(register("TLS", callee_local, lab.tls, "1004", 1, None).as_bytes()).await.unwrap();
        let registered = read_message(&mut callee, &mut callee_pending).await;
        assert!(registered.starts_with("SIP/2.0 200"), "{registered}");

        let (mut caller, caller_local) = tls_connect(&lab, Some((lab.caller_lsc.clone(), &lab.phone_key))).await;
        let mut caller_pending = Vec::new();
        caller.write_all(invite("TLS", caller_local, lab.tls, "1003", "1004", 1, None).as_bytes()).await.unwrap();
        let offered = read_message(&mut callee, &mut callee_pending).await;
        assert!(offered.starts_with("INVITE sip:1004@"), "{offered}");
        assert!(offered.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80"), "keys pass between TLS legs: {offered}");
        assert!(offered.contains("Record-Route:"), "{offered}");
        callee.write_all(answer_ok(&offered, callee_local).as_bytes()).await.unwrap();
        let answered = loop {
            let message = read_message(&mut caller, &mut caller_pending).await;
            if !message.starts_with("SIP/2.0 1") {
                break message;
            }
        };
        assert!(answered.starts_with("SIP/2.0 200"), "{answered}");
        assert!(answered.contains("a=crypto:1"), "{answered}");
        assert_eq!(lab.service.counters.calls_encrypted.load(Ordering::Relaxed), 1);

        // A Non Secure phone over UDP, with digest, calls the Encrypted phone.
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = socket.local_addr().unwrap();
        let uri = format!("sip:1004@{}", lab.udp);
        let (status, challenge) = udp_exchange(&socket, lab.udp, invite("UDP", local, lab.udp, "1005", "1004", 1, None)).await;
        assert_eq!(status, 401, "{challenge}");
        let answer = md5_answer_for("INVITE", &challenge, "user1005", "secret", &uri, 1);
        socket.send_to(invite("UDP", local, lab.udp, "1005", "1004", 2, Some(answer)).as_bytes(), lab.udp).await.unwrap();
        let offered = read_message(&mut callee, &mut callee_pending).await;
        assert!(offered.starts_with("INVITE sip:1004@"), "{offered}");
        assert!(!offered.contains("a=crypto"), "no keys toward a leg that came over UDP: {offered}");
        callee.write_all(answer_ok(&offered, callee_local).as_bytes()).await.unwrap();
        let answered = udp_final_answer(&socket).await;
        assert!(answered.starts_with("SIP/2.0 200"), "{answered}");
        assert!(!answered.contains("a=crypto"), "no keys toward UDP: {answered}");
        assert_eq!(lab.service.counters.calls_non_secure.load(Ordering::Relaxed), 1);
        assert_eq!(lab.service.counters.calls_encrypted.load(Ordering::Relaxed), 1);
    }

    /// Table 14-1's subject names over TLS: two trunk-only ports, one trunk each. A peer whose
    /// certificate names the port's trunk gets past the checks (its OPTIONS is then not served: 501);
    /// one named by no trunk, and one named by the other port's trunk, are refused with 403.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_trunk_port_takes_only_the_subject_names_listed_for_it() {
        let bind = || crate::services::tcp_listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let lab = lab_with_trunks(
            |ports| vec![tls_trunk("a", ports[0], "gw-a.example"), tls_trunk("b", ports[1], "gw-b.example")],
            vec![bind(), bind()],
        )
        .await;
        let ports: Vec<u16> = lab.service.directory().trunks.iter().map(|t| t.incoming_port).collect();
        let peer = |hostname: &str| peer_certificate(&lab.ca, hostname, None);
        let options = |local: SocketAddr, port: u16| {
            format!(
                "OPTIONS sip:cm1@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bKopt{}\r\nMax-Forwards: 70\r\n\
                 From: <sip:gw@{local}>;tag=gw\r\nTo: <sip:cm1@127.0.0.1>\r\nCall-ID: opt{}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
                local.port(),
                local.port()
            )
        };
        for (hostname, expected) in [("gw-a.example", 501), ("gw-c.example", 403), ("gw-b.example", 403)] {
            let issued = peer(hostname);
            let address = SocketAddr::from(([127, 0, 0, 1], ports[0]));
            let (mut stream, local) = tls_connect_to(&lab.ca, address, Some((issued.certificate_der.clone(), &issued.key))).await;
            stream.write_all(options(local, ports[0]).as_bytes()).await.unwrap();
            let answer = read_message(&mut stream, &mut Vec::new()).await;
            let (status, _) = status_and_headers(answer.as_bytes());
            assert_eq!(status, expected, "{hostname} on SipTrunk/a's port: {answer}");
            if expected == 403 {
                assert!(answer.contains("X.509 subject names"), "{answer}");
            }
        }
    }

    /// A trunk's INVITE over TLS to an Encrypted phone over TLS: both legs encrypt, but a SIP trunk
    /// carries no SRTP (P.13-4), so its keys do not reach the phone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_trunks_srtp_keys_do_not_reach_a_phone_even_over_tls() {
        let bind = || crate::services::tcp_listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let lab = lab_with_trunks(|ports| vec![tls_trunk("gw", ports[0], "gw.example")], vec![bind()]).await;
        let (mut callee, callee_local) = tls_connect(&lab, Some((lab.callee_lsc.clone(), &lab.phone_key))).await;
        let mut callee_pending = Vec::new();
        callee.write_all(register("TLS", callee_local, lab.tls, "1004", 1, None).as_bytes()).await.unwrap();
        assert!(read_message(&mut callee, &mut callee_pending).await.starts_with("SIP/2.0 200"));

        let gateway = peer_certificate(&lab.ca, "gw.example", None);
        let port = lab.service.directory().trunks[0].incoming_port;
        let trunk_port = SocketAddr::from(([127, 0, 0, 1], port));
        let (mut peer, peer_local) = tls_connect_to(&lab.ca, trunk_port, Some((gateway.certificate_der.clone(), &gateway.key))).await;
        peer.write_all(invite("TLS", peer_local, trunk_port, "5551234", "1004", 1, None).as_bytes()).await.unwrap();
        let offered = read_message(&mut callee, &mut callee_pending).await;
        assert!(offered.starts_with("INVITE sip:1004@"), "{offered}");
        assert!(offered.contains("m=audio") && !offered.contains("a=crypto"), "no trunk keys to the phone: {offered}");
    }

    /// A call from a phone to a TLS trunk: the proxy dials the trunk's destination presenting the
    /// node's certificate (checked by the gateway against the cluster CA), answers the gateway's
    /// challenge with the trunk's SipRealm (P.15-5) one CSeq further, and keeps the caller's numbers
    /// on the caller's side and the gateway's on the gateway's, for the ACK and a BYE too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_to_a_tls_trunk_presents_the_nodes_certificate_and_answers_its_challenge_with_the_realm() {
        use crate::services::sip::trunk::{RealmCredentials, TrunkDestinationEntry};
        let md5 = |text: String| -> String {
            openssl::hash::hash(openssl::hash::MessageDigest::md5(), text.as_bytes()).unwrap().iter().map(|b| format!("{b:02x}")).collect()
        };
        let gateway_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = gateway_listener.local_addr().unwrap();
        let trunk = |port: u16| SipTrunkEntry {
            destinations: vec![TrunkDestinationEntry { host: "127.0.0.1".into(), port: gateway.port() }],
            realm: Some(RealmCredentials {
                realm: "gw.example".into(),
                credentials: DigestAuth { name: "cluster".into(), password: "realm-secret".into() },
            }),
            ..tls_trunk("gw", port, "gw.example")
        };
        let bind = || crate::services::tcp_listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let lab = lab_with_trunks(|ports| vec![trunk(ports[0])], vec![bind()]).await;

        // The gateway: its certificate names 127.0.0.1, it asks for the cluster's.
        let issued = peer_certificate(&lab.ca, "gw.example", Some("127.0.0.1".parse().unwrap()));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(lab.ca.certificate_der().to_vec())).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().unwrap();
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from(issued.certificate_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(keys::pkcs8_der(&issued.key))),
            )
            .unwrap();
        let node_certificate = lab.node_certificate.clone();
        let uri = format!("sip:5551234@{gateway}");
        let gateway_side = tokio::spawn({
            let uri = uri.clone();
            async move {
                let (tcp, _) = gateway_listener.accept().await.unwrap();
                let mut stream = tokio_rustls::TlsAcceptor::from(Arc::new(config)).accept(tcp).await.unwrap();
                let presented = stream.get_ref().1.peer_certificates().unwrap()[0].as_ref().to_vec();
                assert_eq!(presented, node_certificate, "the proxy presents the node's certificate");
                let mut pending = Vec::new();
                let header = |message: &str, name: &str| {
                    message
                        .lines()
                        .find(|l| l.to_ascii_lowercase().starts_with(&format!("{}:", name.to_ascii_lowercase())))
                        .unwrap_or("")
                        .to_owned()
                };
                let reply = |message: &str, status: &str, extra: &str| {
                    let vias: String = message.lines().filter(|l| l.starts_with("Via:")).map(|l| format!("{l}\r\n")).collect();
                    format!(
                        "SIP/2.0 {status}\r\n{vias}{}\r\n{};tag=gw\r\n{}\r\n{}\r\n{extra}Content-Length: 0\r\n\r\n",
                        header(message, "From"),
                        header(message, "To"),
                        header(message, "Call-ID"),
                        header(message, "CSeq")
                    )
                };
                let first = read_message(&mut stream, &mut pending).await;
                assert!(first.starts_with(&format!("INVITE {uri} SIP/2.0")), "{first}");
                assert_eq!(header(&first, "CSeq"), "CSeq: 2 INVITE", "the caller's number: {first}");
                assert!(!first.contains("Authorization") && !first.contains("a=crypto"), "no credentials, no keys: {first}");
                let challenge = "WWW-Authenticate: Digest realm=\"gw.example\", nonce=\"gwnonce\", qop=\"auth\", algorithm=MD5\r\n";
                stream.write_all(reply(&first, "401 Unauthorized", challenge).as_bytes()).await.unwrap();
                let ack = read_message(&mut stream, &mut pending).await;
                assert!(ack.starts_with("ACK ") && ack.contains("CSeq: 2 ACK"), "{ack}");
                let second = read_message(&mut stream, &mut pending).await;
                assert_eq!(header(&second, "CSeq"), "CSeq: 3 INVITE", "one further: {second}");
                let authorization = header(&second, "Authorization");
                let field = |name: &str| {
                    authorization
                        .split([',', ' '])
                        .find_map(|p| p.strip_prefix(&format!("{name}=")))
                        .unwrap_or("")
                        .trim_matches('"')
                        .to_owned()
                };
                assert_eq!(
                    (field("username").as_str(), field("realm").as_str(), field("nonce").as_str()),
                    ("cluster", "gw.example", "gwnonce")
                );
                let expected = md5(format!(
                    "{}:gwnonce:{}:{}:auth:{}",
                    md5("cluster:gw.example:realm-secret".into()),
                    field("nc"),
                    field("cnonce"),
                    md5(format!("INVITE:{}", field("uri")))
                ));
                assert_eq!(field("response"), expected, "the realm's password answers: {authorization}");
                let contact = format!("Contact: <sip:gw@{gateway};transport=tls>\r\n");
                let routes: String = second.lines().filter(|l| l.starts_with("Record-Route:")).map(|l| format!("{l}\r\n")).collect();
                stream.write_all(reply(&second, "200 OK", &format!("{routes}{contact}")).as_bytes()).await.unwrap();
                // The ACK and the BYE are separate transactions of the proxy: either may come first.
                let (one, two) = (read_message(&mut stream, &mut pending).await, read_message(&mut stream, &mut pending).await);
                let (ack, bye) = if one.starts_with("ACK ") { (one, two) } else { (two, one) };
                assert!(ack.starts_with("ACK ") && ack.contains("CSeq: 3 ACK"), "the ACK of the 2xx takes the INVITE's number: {ack}");
                assert!(bye.starts_with("BYE ") && bye.contains("CSeq: 5 BYE"), "the caller's 4, moved up by one: {bye}");
                stream.write_all(reply(&bye, "200 OK", "").as_bytes()).await.unwrap();
                // The gateway's own request in the dialog, on the connection the proxy dialled, with
                // the route it recorded: its numbers are its own.
                let caller_contact = header(&second, "Contact").trim_start_matches("Contact:").trim().trim_matches(['<', '>']).to_owned();
                let route: String = routes.replace("Record-Route:", "Route:");
                let local = stream.get_ref().0.local_addr().unwrap();
                let info = format!(
                    "INFO {caller_contact} SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bKgwinfo\r\nMax-Forwards: 70\r\n{route}\
                     From: <sip:5551234@{gateway}>;tag=gw\r\nTo: <sip:1005@{gateway}>;tag=caller1005\r\nCall-ID: call1005to5551234@test\r\n\
                     CSeq: 7 INFO\r\nContent-Length: 0\r\n\r\n"
                );
                stream.write_all(info.as_bytes()).await.unwrap();
                let answered = read_message(&mut stream, &mut pending).await;
                assert!(answered.starts_with("SIP/2.0 200") && answered.contains("CSeq: 7 INFO"), "{answered}");
            }
        });

        // The caller: 1005, Non Secure over UDP with digest.
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = socket.local_addr().unwrap();
        let (status, challenge) = udp_exchange(&socket, lab.udp, invite("UDP", local, gateway, "1005", "5551234", 1, None)).await;
        assert_eq!(status, 401, "{challenge}");
        let answer = md5_answer_for("INVITE", &challenge, "user1005", "secret", &uri, 1);
        socket.send_to(invite("UDP", local, gateway, "1005", "5551234", 2, Some(answer)).as_bytes(), lab.udp).await.unwrap();
        let answered = udp_final_answer(&socket).await;
        assert!(answered.starts_with("SIP/2.0 200"), "{answered}");
        assert!(answered.contains("CSeq: 2 INVITE"), "the caller sees its own number: {answered}");
        let routes: Vec<&str> = answered.lines().filter_map(|l| l.strip_prefix("Record-Route:")).map(str::trim).collect();
        let route: String = routes.iter().map(|r| format!("Route: {r}\r\n")).collect();
        let in_dialog = |method: &str, cseq: u32, authorization: Option<String>| {
            let authorization = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
            format!(
                "{method} sip:gw@{gateway};transport=tls SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{method}{cseq}\r\nMax-Forwards: 70\r\n\
                 {route}From: <sip:1005@{gateway}>;tag=caller1005\r\nTo: <sip:5551234@{gateway}>;tag=gw\r\nCall-ID: call1005to5551234@test\r\n\
                 CSeq: {cseq} {method}\r\n{authorization}Content-Length: 0\r\n\r\n"
            )
        };
        socket.send_to(in_dialog("ACK", 2, None).as_bytes(), lab.udp).await.unwrap();
        let bye_uri = format!("sip:gw@{gateway};transport=tls");
        let (status, challenge) = udp_exchange(&socket, lab.udp, in_dialog("BYE", 3, None)).await;
        assert_eq!(status, 401, "the caller's BYE is its own, challenged: {challenge}");
        let answer = md5_answer_for("BYE", &challenge, "user1005", "secret", &bye_uri, 1);
        let (status, ended) = udp_exchange(&socket, lab.udp, in_dialog("BYE", 4, Some(answer))).await;
        assert_eq!(status, 200, "{ended}");
        assert!(ended.contains("CSeq: 4 BYE"), "back to the caller's number: {ended}");
        // The gateway's INFO reaches the caller as the trunk's request, numbered as the gateway sent it.
        let (info, proxy) = udp_receive(&socket).await;
        assert!(info.starts_with("INFO sip:1005@") && info.contains("CSeq: 7 INFO"), "{info}");
        let vias: String = info.lines().filter(|l| l.starts_with("Via:")).map(|l| format!("{l}\r\n")).collect();
        let copy = |name: &str| info.lines().find(|l| l.starts_with(name)).map(|l| format!("{l}\r\n")).unwrap_or_default();
        let ok = format!(
            "SIP/2.0 200 OK\r\n{vias}{}{}{}{}Content-Length: 0\r\n\r\n",
            copy("From:"),
            copy("To:"),
            copy("Call-ID:"),
            copy("CSeq:")
        );
        socket.send_to(ok.as_bytes(), proxy).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), gateway_side).await.expect("the gateway saw the whole call").unwrap();
    }

    /// A registration storm meets 503 with Retry-After: with room for one request at a time, a call
    /// that rings (its INVITE held until answered) leaves none, and a REGISTER is told to come back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_requests_in_flight_a_register_gets_503_with_retry_after() {
        let lab = lab().await;
        let (mut callee, callee_local) = tls_connect(&lab, Some((lab.callee_lsc.clone(), &lab.phone_key))).await;
        callee.write_all(register("TLS", callee_local, lab.tls, "1004", 1, None).as_bytes()).await.unwrap();
        assert!(read_message(&mut callee, &mut Vec::new()).await.starts_with("SIP/2.0 200"));
        // A handler counts itself out just after its reply: wait for it before each step.
        let settled = || async {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while lab.service.in_flight.load(Ordering::Acquire) != 0 {
                assert!(std::time::Instant::now() < deadline, "requests still in flight");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        settled().await;
        lab.service.in_flight_limit.store(1, Ordering::Relaxed);

        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = socket.local_addr().unwrap();
        let (status, challenge) = udp_exchange(&socket, lab.udp, invite("UDP", local, lab.udp, "1005", "1004", 1, None)).await;
        assert_eq!(status, 401, "{challenge}");
        settled().await;
        let answer = md5_answer_for("INVITE", &challenge, "user1005", "secret", &format!("sip:1004@{}", lab.udp), 1);
        let (status, _) = udp_exchange(&socket, lab.udp, invite("UDP", local, lab.udp, "1005", "1004", 2, Some(answer))).await;
        assert_eq!(status, 100, "the INVITE is forwarded, and rings");
        let storm = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let storm_local = storm.local_addr().unwrap();
        let (status, text) = udp_exchange(&storm, lab.udp, register("UDP", storm_local, lab.udp, "1005", 1, None)).await;
        assert_eq!(status, 503, "{text}");
        assert!(text.contains(&format!("Retry-After: {RETRY_AFTER_SECONDS}")), "{text}");
        assert_eq!(lab.service.counters.overloaded.load(Ordering::Relaxed), 1);
    }

    /// The relay needs two port pairs a call; with one, the call is refused at the signaling layer,
    /// with the range in the Warning, and nothing is left allocated.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_the_media_relay_has_no_ports_for_is_refused_with_503_naming_the_range() {
        let lab = lab().await;
        let (relay, client) = crate::services::media::control::tests::controlled_relay(31500..=31501).await;
        lab.service.relay_media_through(client);
        let (mut callee, callee_local) = tls_connect(&lab, Some((lab.callee_lsc.clone(), &lab.phone_key))).await;
        callee.write_all(register("TLS", callee_local, lab.tls, "1004", 1, None).as_bytes()).await.unwrap();
        assert!(read_message(&mut callee, &mut Vec::new()).await.starts_with("SIP/2.0 200"));

        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = socket.local_addr().unwrap();
        let (status, challenge) = udp_exchange(&socket, lab.udp, invite("UDP", local, lab.udp, "1005", "1004", 1, None)).await;
        assert_eq!(status, 401, "{challenge}");
        let answer = md5_answer_for("INVITE", &challenge, "user1005", "secret", &format!("sip:1004@{}", lab.udp), 1);
        socket.send_to(invite("UDP", local, lab.udp, "1005", "1004", 2, Some(answer)).as_bytes(), lab.udp).await.unwrap();
        let answered = udp_final_answer(&socket).await;
        assert!(answered.starts_with("SIP/2.0 503"), "{answered}");
        assert!(answered.contains("no media port pair free in 31500-31501"), "{answered}");
        assert_eq!((relay.calls(), relay.free_pairs()), (0, 1), "the pair taken for the first leg is back");
        assert_eq!(relay.counters.refused_exhausted.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_remembered_tls_peers_are_bounded_and_the_oldest_goes_first() {
        let mut peers = TlsPeers::new(MAX_TLS_PEERS);
        let address = |n: usize| SocketAddr::from(([10, (n >> 16) as u8, (n >> 8) as u8, n as u8], 5061));
        for n in 0..=MAX_TLS_PEERS {
            peers.insert(address(n), TlsPeer { leaf: Some(vec![1]), encrypts: true });
        }
        assert_eq!(peers.entries.len(), MAX_TLS_PEERS);
        assert_eq!(peers.leaf(&address(0)), None, "the oldest is forgotten");
        assert_eq!(peers.leaf(&address(MAX_TLS_PEERS)), Some(vec![1]));
        // The same address again replaces, it does not count twice.
        peers.insert(address(MAX_TLS_PEERS), TlsPeer { leaf: None, encrypts: false });
        assert_eq!((peers.entries.len(), peers.order.len()), (MAX_TLS_PEERS, MAX_TLS_PEERS));
        // Keys go only where the cipher encrypts: not over NULL-SHA, not to a peer forgotten.
        assert!(!peers.encrypts(&address(MAX_TLS_PEERS)) && !peers.encrypts(&address(0)));
        assert!(peers.encrypts(&address(MAX_TLS_PEERS - 1)));
    }
}
