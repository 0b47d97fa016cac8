//! The CAPF TLS listener (docs/wire-formats.md §7.1): tokio + tokio-rustls, no client certificate, one session per connection,
//! the server speaks first, each frame in one write, timeouts per docs/wire-formats.md §7.5.
//!
//! rustls speaks TLS 1.2 and 1.3 only. 7900-series phones speak only TLS 1.0 (docs/wire-formats.md §7.1, `legacyTls`
//! listeners): they need an OpenSSL-backed listener, left for later.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::frame::{FrameHeader, HEADER_LEN, PROTOCOL_ID};
use super::session::{CapfContext, Outcome, Session, Step, Wait};

/// The well-known CAPF port (docs/wire-formats.md §7.1).
pub const CAPF_PORT: u16 = 3804;

/// Timeouts of docs/wire-formats.md §7.5; configurable so tests can shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TLS handshake: 10 s.
    pub handshake: Duration,
    /// Each message: 30 s.
    pub message: Duration,
    /// KEY_GENERATE_RESPONSE, from the request on, whatever REQUEST_IN_PROGRESS frames arrive: 60 min.
    pub key_generation: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts { handshake: Duration::from_secs(10), message: Duration::from_secs(30), key_generation: Duration::from_secs(60 * 60) }
    }
}

#[derive(Debug)]
pub enum ServerError {
    /// rustls refused the certificate chain or key.
    Tls(String),
    /// Binding or accepting failed.
    Io(std::io::Error),
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerError::Tls(why) => write!(f, "CAPF TLS configuration refused: {why} (docs/wire-formats.md §7.1)"),
            ServerError::Io(e) => write!(f, "CAPF listener: {e}"),
        }
    }
}

impl std::error::Error for ServerError {}

impl From<std::io::Error> for ServerError {
    fn from(e: std::io::Error) -> ServerError {
        ServerError::Io(e)
    }
}

/// What happened on one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionReport {
    /// A session ran (successfully or not).
    Session { peer: Option<SocketAddr>, session_id: u32, outcome: Outcome },
    /// No session: the TLS handshake failed or timed out.
    HandshakeFailed { peer: Option<SocketAddr>, error: String },
}

/// A TLS acceptor presenting the CAPF-role certificate (`chain_der[0]`, then intermediates) with its PKCS#8 key.
/// No client certificate is requested: authentication happens inside the protocol (docs/wire-formats.md §7.1).
pub fn tls_acceptor(chain_der: &[Vec<u8>], key_pkcs8_der: &[u8]) -> Result<TlsAcceptor, ServerError> {
    let chain: Vec<CertificateDer<'static>> = chain_der.iter().map(|der| CertificateDer::from(der.clone())).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8_der.to_vec()));
    let config = rustls::ServerConfig::builder_with_provider(crate::services::tls_provider::server_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A random non-zero session id (docs/wire-formats.md §7.2).
pub fn random_session_id() -> u32 {
    loop {
        let id: u32 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

/// The CAPF listener.
pub struct CapfServer {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    context: Arc<CapfContext>,
    timeouts: Timeouts,
}

impl CapfServer {
    /// Binds `address` (port 0 picks a free port).
    pub async fn bind(
        address: SocketAddr,
        acceptor: TlsAcceptor,
        context: Arc<CapfContext>,
        timeouts: Timeouts,
    ) -> Result<CapfServer, ServerError> {
        let listener = crate::services::tcp_listener::bind(address)?;
        Ok(CapfServer { listener, acceptor, context, timeouts })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, ServerError> {
        Ok(self.listener.local_addr()?)
    }

    /// Accepts connections until accepting fails or `reports` is closed; one task per connection.
    pub async fn serve(self, reports: mpsc::UnboundedSender<ConnectionReport>) -> Result<(), ServerError> {
        loop {
            let (tcp, peer) = self.listener.accept().await?;
            if reports.is_closed() {
                return Ok(());
            }
            let (acceptor, context, timeouts, reports) = (self.acceptor.clone(), self.context.clone(), self.timeouts, reports.clone());
            tokio::spawn(async move {
                let report = serve_connection(tcp, Some(peer), &acceptor, context, &timeouts).await;
                let _ = reports.send(report);
            });
        }
    }
}

/// One connection: the TLS handshake, then one session over it. Generic over the transport so tests can watch
/// the bytes (docs/wire-formats.md §10 W-16).
pub async fn serve_connection<IO>(
    io: IO,
    peer: Option<SocketAddr>,
    acceptor: &TlsAcceptor,
    context: Arc<CapfContext>,
    timeouts: &Timeouts,
) -> ConnectionReport
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(timeouts.handshake, acceptor.accept(io)).await {
        Ok(Ok(tls)) => serve_established(tls, peer, context, timeouts).await,
        Ok(Err(e)) => ConnectionReport::HandshakeFailed { peer, error: e.to_string() },
        Err(_) => ConnectionReport::HandshakeFailed { peer, error: format!("no TLS handshake within {:?}", timeouts.handshake) },
    }
}

/// One connection of a phone that offers only TLS 1.0 or 1.1, through OpenSSL
/// (`services::legacy_tls`), then one session over it.
pub async fn serve_legacy_connection(
    tcp: tokio::net::TcpStream,
    peer: Option<SocketAddr>,
    legacy: &crate::services::legacy_tls::LegacyTls,
    context: Arc<CapfContext>,
    timeouts: &Timeouts,
) -> ConnectionReport {
    match tokio::time::timeout(timeouts.handshake, legacy.accept(tcp)).await {
        Ok(Ok(tls)) => serve_established(tls, peer, context, timeouts).await,
        Ok(Err(error)) => ConnectionReport::HandshakeFailed { peer, error },
        Err(_) => ConnectionReport::HandshakeFailed { peer, error: format!("no TLS handshake within {:?}", timeouts.handshake) },
    }
}

/// One session over an established TLS stream, which it then closes.
async fn serve_established<S>(mut tls: S, peer: Option<SocketAddr>, context: Arc<CapfContext>, timeouts: &Timeouts) -> ConnectionReport
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let session = Session::new(context, random_session_id(), OffsetDateTime::now_utc());
    let session_id = session.session_id();
    let outcome = run_session(&mut tls, session, timeouts).await;
    let _ = tls.shutdown().await;
    ConnectionReport::Session { peer, session_id, outcome }
}

/// Drives `session` over an established stream until it finishes. Each frame goes out in one `write_all` of header
/// and body together, then a flush, so TLS puts it in one record (docs/wire-formats.md §7.1).
pub async fn run_session<S>(stream: &mut S, mut session: Session, timeouts: &Timeouts) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut step = session.start();
    let mut key_deadline: Option<Instant> = None;
    loop {
        if write_step(stream, &step).await.is_err() {
            session.connection_closed();
            break;
        }
        if step.close {
            break;
        }
        let wait = match session.wait() {
            Wait::Finished => break,
            Wait::Message => {
                key_deadline = None;
                timeouts.message
            }
            Wait::KeyGeneration => {
                let deadline = *key_deadline.get_or_insert_with(|| Instant::now() + timeouts.key_generation);
                deadline.saturating_duration_since(Instant::now())
            }
        };
        step = match tokio::time::timeout(wait, read_frame(stream)).await {
            Err(_) => session.time_out(),
            Ok(Ok(Received::Frame(bytes))) => session.receive_bytes(&bytes),
            // What arrived before the end of the stream: decodes as truncated, END_SESSION{7} (docs/wire-formats.md §7.2).
            Ok(Ok(Received::Partial(bytes))) => session.receive_bytes(&bytes),
            Ok(Ok(Received::Closed)) | Ok(Err(_)) => {
                session.connection_closed();
                break;
            }
        };
    }
    session.into_outcome().unwrap_or(Outcome::Failed { device_name: None, reason: super::session::FailureReason::ConnectionClosed })
}

enum Received {
    /// Header and body of one frame, or a header with a foreign protocol id (the body is not read then).
    Frame(Vec<u8>),
    /// The stream ended inside a frame.
    Partial(Vec<u8>),
    /// The stream ended between frames.
    Closed,
}

async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Received> {
    let mut bytes = vec![0u8; HEADER_LEN];
    let got = read_up_to(stream, &mut bytes).await?;
    if got == 0 {
        return Ok(Received::Closed);
    }
    if got < HEADER_LEN {
        bytes.truncate(got);
        return Ok(Received::Partial(bytes));
    }
    if bytes[0] != PROTOCOL_ID {
        return Ok(Received::Frame(bytes));
    }
    let header = FrameHeader::decode(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    let body_len = usize::from(header.body_len);
    bytes.resize(HEADER_LEN + body_len, 0);
    let got = read_up_to(stream, &mut bytes[HEADER_LEN..]).await?;
    if got < body_len {
        bytes.truncate(HEADER_LEN + got);
        return Ok(Received::Partial(bytes));
    }
    Ok(Received::Frame(bytes))
}

/// Fills `buffer` unless the stream ends first; returns how many bytes arrived.
async fn read_up_to<S: AsyncRead + Unpin>(stream: &mut S, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        let n = stream.read(&mut buffer[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

async fn write_step<S: AsyncWrite + Unpin>(stream: &mut S, step: &Step) -> std::io::Result<()> {
    for frame in &step.send {
        let bytes = frame.encode().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        stream.write_all(&bytes).await?;
        stream.flush().await?;
    }
    Ok(())
}
