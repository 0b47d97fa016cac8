//! The control interface through which the signaling service drives the relay: allocate a call's
//! legs, tell the relay what each end's SDP says (address, rtcp-mux, SRTP key), release the legs.
//! The relay runs apart from the signaling pods (on its nodes' own network), so the requests cross
//! the network, and they carry SRTP master keys: they travel only over mutually authenticated TLS,
//! each side pinning the other's certificate by its SHA-256. Nothing else may drive the relay: a
//! client that could would be able to point a call's media anywhere.
//!
//! The protocol is small enough to write here rather than take a crate: each request and each reply
//! is a JSON object behind a four-byte big-endian length, at most [`MAX_FRAME`] bytes; one request
//! at a time per connection, connections kept for the next request.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::relay::{LegOffer, MediaError, MediaRelay, Side};
use super::srtp::parse_crypto_line;

/// The relay's control port unless told otherwise.
pub const DEFAULT_CONTROL_PORT: u16 = 2233;
/// The largest request or reply: a request holds a call id, an address and one `a=crypto` line.
pub const MAX_FRAME: usize = 16 * 1024;
/// A connection, a handshake, or a frame once begun, must complete within this.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What the signaling service asks of the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    /// Two legs for call `call`; `encrypted`: only SRTP under each end's key is forwarded.
    Allocate {
        call: String,
        encrypted: bool,
    },
    /// What `side`'s SDP says.
    Update {
        call: String,
        side: Side,
        leg: LegDescription,
    },
    Release {
        call: String,
    },
}

/// An end's media as its SDP gives it; the key as its `a=crypto` line, parsed by the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LegDescription {
    pub address: SocketAddr,
    pub rtcp_mux: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crypto: Option<String>,
}

/// The relay's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "camelCase")]
pub enum Reply {
    /// The legs' ports (the caller's, then the callee's) on `address`, the one the SDP must name.
    Allocated {
        address: IpAddr,
        ports: [u16; 2],
    },
    Done,
    Refused {
        error: MediaError,
    },
}

/// Carries out `request` on `relay`: what the control server does for each request it reads.
pub async fn handle(relay: &Arc<MediaRelay>, request: Request) -> Reply {
    let outcome = match request {
        Request::Allocate { call, encrypted } => {
            relay.allocate(&call, encrypted).map(|ports| Reply::Allocated { address: relay.address(), ports })
        }
        Request::Update { call, side, leg } => {
            let key = match leg.crypto.as_deref().map(parse_crypto_line).transpose() {
                Ok(key) => key,
                Err(e) => return Reply::Refused { error: MediaError::Key { call, side, reason: format!("a=crypto: {e}") } },
            };
            relay.update(&call, side, LegOffer { address: leg.address, rtcp_mux: leg.rtcp_mux, key }).map(|()| Reply::Done)
        }
        Request::Release { call } => relay.release(&call).await.map(|()| Reply::Done),
    };
    outcome.unwrap_or_else(|error| Reply::Refused { error })
}

/// One side's TLS credentials: its certificate and PKCS#8 key (DER), and the SHA-256 of the only
/// certificate it accepts from the other side.
#[derive(Clone)]
pub struct ControlTls {
    pub certificate_der: Vec<u8>,
    pub key_der: Vec<u8>,
    pub peer_sha256: [u8; 32],
}

impl std::fmt::Debug for ControlTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlTls").field("peer_sha256", &hex(&self.peer_sha256)).finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A SHA-256 as the 64 hex digits an option or a log gives it.
pub fn parse_sha256(text: &str) -> Result<[u8; 32], String> {
    let digits = text.trim();
    if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{digits:?} is not a SHA-256 (64 hex digits)"));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

pub fn sha256(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// Accepts exactly one certificate, by its SHA-256, provided its holder signs the handshake with its
/// key. No name, chain or lifetime is consulted: the pin is the whole of the trust.
#[derive(Debug)]
struct Pinned {
    sha256: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl Pinned {
    fn check(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
        if intermediates.is_empty() && sha256(end_entity) == self.sha256 {
            Ok(())
        } else {
            Err(rustls::Error::General(format!(
                "the media control peer's certificate (SHA-256 {}) is not the pinned one",
                hex(&sha256(end_entity))
            )))
        }
    }

    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates).map(|()| ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates).map(|()| ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn chain_and_key(tls: &ControlTls) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    (vec![CertificateDer::from(tls.certificate_der.clone())], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(tls.key_der.clone())))
}

/// The relay's side: TLS 1.3 only, a client certificate required, and only the pinned one taken.
pub fn server_config(tls: &ControlTls) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = provider();
    let verifier = Arc::new(Pinned { sha256: tls.peer_sha256, provider: provider.clone() });
    let (chain, key) = chain_and_key(tls);
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("the media control certificate: {e}"))?;
    Ok(Arc::new(config))
}

fn client_config(tls: &ControlTls) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = provider();
    let verifier = Arc::new(Pinned { sha256: tls.peer_sha256, provider: provider.clone() });
    let (chain, key) = chain_and_key(tls);
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("the media control client certificate: {e}"))?;
    Ok(Arc::new(config))
}

async fn read_frame<T: serde::de::DeserializeOwned>(stream: &mut (impl AsyncRead + Unpin)) -> std::io::Result<T> {
    let length = stream.read_u32().await? as usize;
    if length > MAX_FRAME {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("a frame of {length} bytes (at most {MAX_FRAME})")));
    }
    let mut body = vec![0u8; length];
    tokio::time::timeout(IO_TIMEOUT, stream.read_exact(&mut body)).await??;
    serde_json::from_slice(&body).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

async fn write_frame(stream: &mut (impl AsyncWrite + Unpin), message: &impl Serialize) -> std::io::Result<()> {
    let body = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    let length = u32::try_from(body.len()).map_err(std::io::Error::other)?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(&body);
    tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(&frame).await?;
        stream.flush().await
    })
    .await?
}

/// Serves the control interface on `listener` until `stop`: each connection's requests in turn.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, relay: Arc<MediaRelay>, stop: CancellationToken) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (socket, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("media control: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (acceptor, relay, stop) = (acceptor.clone(), relay.clone(), stop.clone());
        tokio::spawn(async move {
            let mut stream = match tokio::time::timeout(IO_TIMEOUT, acceptor.accept(socket)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return tracing::warn!(%peer, "media control: refused: {e}"),
                Err(_) => return tracing::warn!(%peer, "media control: no handshake within {IO_TIMEOUT:?}"),
            };
            loop {
                let request = tokio::select! {
                    _ = stop.cancelled() => return,
                    request = read_frame::<Request>(&mut stream) => request,
                };
                let request = match request {
                    Ok(request) => request,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
                    Err(e) => return tracing::warn!(%peer, "media control: {e}"),
                };
                let reply = handle(&relay, request).await;
                if let Err(e) = write_frame(&mut stream, &reply).await {
                    return tracing::warn!(%peer, "media control: {e}");
                }
            }
        });
    }
}

type Connection = tokio_rustls::client::TlsStream<TcpStream>;

/// The signaling service's side: the relays behind one name (a headless Service names every relay
/// pod), a call's legs on one relay picked in turn, and connections kept for the next request.
pub struct MediaClient {
    /// `host:port`, resolved at each allocation so that relays coming and going are followed.
    target: String,
    connector: tokio_rustls::TlsConnector,
    idle: Mutex<HashMap<SocketAddr, Vec<Connection>>>,
    /// Which relay holds each call.
    calls: Mutex<HashMap<String, SocketAddr>>,
    turn: AtomicUsize,
}

impl MediaClient {
    pub fn new(target: impl Into<String>, tls: &ControlTls) -> Result<Arc<MediaClient>, String> {
        Ok(Arc::new(MediaClient {
            target: target.into(),
            connector: tokio_rustls::TlsConnector::from(client_config(tls)?),
            idle: Mutex::default(),
            calls: Mutex::default(),
            turn: AtomicUsize::new(0),
        }))
    }

    /// Two legs for `call` on one of the relays: their address and ports.
    pub async fn allocate(&self, call: &str, encrypted: bool) -> Result<(IpAddr, [u16; 2]), MediaError> {
        let unreachable = |reason: String| MediaError::Unreachable { target: self.target.clone(), reason };
        let mut relays: Vec<SocketAddr> = tokio::net::lookup_host(&self.target).await.map_err(|e| unreachable(e.to_string()))?.collect();
        relays.sort();
        relays.dedup();
        if relays.is_empty() {
            return Err(unreachable("the name has no address".into()));
        }
        let first = self.turn.fetch_add(1, Relaxed);
        let mut last_error = None;
        // A relay that cannot be reached is passed over for the next.
        for i in 0..relays.len() {
            let relay = relays[(first + i) % relays.len()];
            match self.exchange(relay, &Request::Allocate { call: call.into(), encrypted }).await {
                Ok(Reply::Allocated { address, ports }) => {
                    self.calls.lock().unwrap_or_else(|e| e.into_inner()).insert(call.into(), relay);
                    return Ok((address, ports));
                }
                Ok(Reply::Refused { error: error @ MediaError::Unreachable { .. } }) | Err(error) => last_error = Some(error),
                Ok(Reply::Refused { error }) => return Err(error),
                Ok(other) => return Err(unreachable(format!("answered {other:?} to an allocation"))),
            }
        }
        Err(last_error.unwrap_or_else(|| unreachable("no relay answered".into())))
    }

    pub async fn update(&self, call: &str, side: Side, leg: LegDescription) -> Result<(), MediaError> {
        let relay = self.relay_of(call)?;
        self.done(relay, Request::Update { call: call.into(), side, leg }).await
    }

    pub async fn release(&self, call: &str) -> Result<(), MediaError> {
        let relay = self.relay_of(call)?;
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).remove(call);
        self.done(relay, Request::Release { call: call.into() }).await
    }

    /// Calls this client has legs for.
    pub fn calls(&self) -> usize {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn relay_of(&self, call: &str) -> Result<SocketAddr, MediaError> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).get(call).copied().ok_or_else(|| MediaError::NoCall(call.into()))
    }

    async fn done(&self, relay: SocketAddr, request: Request) -> Result<(), MediaError> {
        match self.exchange(relay, &request).await? {
            Reply::Done => Ok(()),
            Reply::Refused { error } => Err(error),
            other => Err(MediaError::Unreachable { target: relay.to_string(), reason: format!("answered {other:?}") }),
        }
    }

    /// One request and its reply, on a kept connection if there is one. A kept connection the relay
    /// has closed fails before the request is read, so the request goes once more on a new one.
    async fn exchange(&self, relay: SocketAddr, request: &Request) -> Result<Reply, MediaError> {
        let kept = self.idle.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&relay).and_then(Vec::pop);
        if let Some(mut connection) = kept
            && let Ok(reply) = Self::round_trip(&mut connection, request).await
        {
            self.keep(relay, connection);
            return Ok(reply);
        }
        let unreachable = |reason: String| MediaError::Unreachable { target: relay.to_string(), reason };
        let mut connection = self.connect(relay).await.map_err(|e| unreachable(e.to_string()))?;
        let reply = Self::round_trip(&mut connection, request).await.map_err(|e| unreachable(e.to_string()))?;
        self.keep(relay, connection);
        Ok(reply)
    }

    async fn round_trip(connection: &mut Connection, request: &Request) -> std::io::Result<Reply> {
        write_frame(connection, request).await?;
        tokio::time::timeout(IO_TIMEOUT, read_frame(connection)).await?
    }

    async fn connect(&self, relay: SocketAddr) -> std::io::Result<Connection> {
        tokio::time::timeout(IO_TIMEOUT, async {
            let socket = TcpStream::connect(relay).await?;
            socket.set_nodelay(true)?;
            // The pin is the trust; the name only fills the handshake.
            self.connector.connect(ServerName::IpAddress(relay.ip().into()), socket).await
        })
        .await?
    }

    fn keep(&self, relay: SocketAddr, connection: Connection) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).entry(relay).or_default().push(connection);
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::core::build::media_control::generate_pair;
    use crate::services::media::relay::{Latching, RelaySettings};
    use crate::services::media::srtp::tests::KEY_LINE;

    /// A relay's and a client's credentials, each pinning the other.
    pub fn pinned_pair() -> (ControlTls, ControlTls) {
        let (relay, client) = (generate_pair("relay"), generate_pair("client"));
        (
            ControlTls { peer_sha256: sha256(&client.0), certificate_der: relay.0.clone(), key_der: relay.1 },
            ControlTls { peer_sha256: sha256(&relay.0), certificate_der: client.0, key_der: client.1 },
        )
    }

    /// A relay on `ports` served on a loopback control port, and a client of it.
    pub async fn controlled_relay(ports: std::ops::RangeInclusive<u16>) -> (Arc<MediaRelay>, Arc<MediaClient>) {
        let relay = MediaRelay::new(RelaySettings {
            bind: [127, 0, 0, 1].into(),
            advertised: [127, 0, 0, 1].into(),
            ports,
            inactivity: Duration::from_secs(30),
            latching: Latching::FirstPacket,
        })
        .unwrap();
        let (server_tls, client_tls) = pinned_pair();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap().to_string();
        tokio::spawn(serve(listener, server_config(&server_tls).unwrap(), relay.clone(), CancellationToken::new()));
        (relay, MediaClient::new(target, &client_tls).unwrap())
    }

    #[tokio::test]
    async fn the_signaling_side_allocates_updates_and_releases_over_pinned_tls() {
        let (relay, client) = controlled_relay(32000..=32099).await;
        let (address, ports) = client.allocate("c1", true).await.unwrap();
        assert_eq!(address, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(relay.calls(), 1);
        assert_eq!(ports[0] % 2, 0);
        let leg = |crypto: Option<&str>| LegDescription {
            address: "127.0.0.1:40000".parse().unwrap(),
            rtcp_mux: false,
            crypto: crypto.map(str::to_owned),
        };
        assert_eq!(client.update("c1", Side::Caller, leg(None)).await, Err(MediaError::NoKey { call: "c1".into(), side: Side::Caller }));
        let refused = client.update("c1", Side::Caller, leg(Some("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:short"))).await.unwrap_err();
        assert!(matches!(refused, MediaError::Key { .. }), "{refused:?}");
        client.update("c1", Side::Caller, leg(Some(KEY_LINE))).await.unwrap();
        client.release("c1").await.unwrap();
        assert_eq!(relay.calls(), 0);
        assert_eq!(client.calls(), 0);
        assert_eq!(client.release("c1").await, Err(MediaError::NoCall("c1".into())));
    }

    #[tokio::test]
    async fn a_client_without_the_pinned_certificate_is_refused_and_drives_nothing() {
        let (relay, _) = controlled_relay(32100..=32199).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap().to_string();
        let (server_tls, _) = pinned_pair();
        tokio::spawn(serve(listener, server_config(&server_tls).unwrap(), relay.clone(), CancellationToken::new()));
        // A client with credentials of its own: the relay pins another certificate, and so does it.
        let (_, stranger) = pinned_pair();
        let client = MediaClient::new(target, &stranger).unwrap();
        let refused = client.allocate("c2", false).await.unwrap_err();
        assert!(matches!(refused, MediaError::Unreachable { .. }), "{refused:?}");
        assert_eq!(relay.calls(), 0);
    }

    #[tokio::test]
    async fn an_oversized_or_malformed_frame_closes_the_connection() {
        let (length, garbage) = ((MAX_FRAME as u32 + 1).to_be_bytes(), b"{\"op\":\"explode\"}");
        let mut oversized = &length[..];
        let error = read_frame::<Request>(&mut oversized).await.unwrap_err();
        assert!(error.to_string().contains("at most 16384"), "{error}");
        let mut frame = (garbage.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(garbage);
        assert_eq!(read_frame::<Request>(&mut &frame[..]).await.unwrap_err().kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_pin_is_64_hex_digits() {
        let pin = sha256(b"x");
        assert_eq!(parse_sha256(&hex(&pin)), Ok(pin));
        assert!(parse_sha256("abc").is_err());
        assert!(parse_sha256(&"g".repeat(64)).is_err());
    }
}
