//! The TVS listener: TLS with the TVS-role certificate, no client certificate (docs/wire-formats.md §8).
//!
//! rustls speaks TLS 1.2 and 1.3 only. 7900-series phones need TLS 1.0 (docs/wire-formats.md §8): when the cluster
//! turns it on, [`serve_listener`] hands their connections to OpenSSL (`services::legacy_tls`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use std::{fmt, io};

use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use super::directory::CertificateDirectory;
use super::session::{CloseReason, SessionNote, TvsSession};

/// TVS's port on a CallManager node (docs/wire-formats.md §6.2, §8).
pub const DEFAULT_PORT: u16 = 2445;

/// The directory every connection reads at each request; send a new `Arc` to update it while serving.
pub type SharedDirectory = watch::Receiver<Arc<CertificateDirectory>>;

/// How a listener takes connections: rustls, and OpenSSL for clients that offer only TLS 1.0 or 1.1
/// when the cluster enables it.
#[derive(Clone, Debug)]
pub struct TvsTls {
    pub rustls: Arc<ServerConfig>,
    pub legacy: Option<crate::services::legacy_tls::LegacyTls>,
}

impl TvsTls {
    /// From the certificate TVS presents (DER) and its PKCS#8 key (DER).
    pub fn new(certificate_der: Vec<u8>, key_pkcs8_der: Vec<u8>, legacy_tls: bool) -> Result<TvsTls, TvsServerError> {
        let legacy = legacy_tls
            .then(|| crate::services::legacy_tls::LegacyTls::new(&certificate_der, &key_pkcs8_der))
            .transpose()
            .map_err(TvsServerError::TlsConfig)?;
        let rustls = tls_server_config(vec![certificate_der.into()], PrivateKeyDer::Pkcs8(key_pkcs8_der.into()))?;
        Ok(TvsTls { rustls, legacy })
    }

    /// The versions it takes, for the line a service prints.
    pub fn versions(&self) -> &'static str {
        if self.legacy.is_some() { "TLS 1.0 to 1.3 (spec.legacyTls: Enabled)" } else { "TLS 1.2 or 1.3" }
    }
}

/// Timeouts of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// TLS handshake; 10 s, as for CAPF (docs/wire-formats.md §7.5) [D].
    pub handshake_timeout: Duration,
    /// Longest wait for the phone's next bytes before closing; 30 s, as CAPF's per-message limit [D].
    pub idle_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> ServerLimits {
        ServerLimits { handshake_timeout: Duration::from_secs(10), idle_timeout: Duration::from_secs(30) }
    }
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// The session decided to close (end of input, or a protocol violation: docs/wire-formats.md §8).
    Session(CloseReason),
    HandshakeTimeout,
    HandshakeFailed(String),
    IdleTimeout,
    Io(String),
}

/// What happened on one connection, for logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionReport {
    pub peer: Option<SocketAddr>,
    pub responses_sent: usize,
    pub notes: Vec<SessionNote>,
    pub end: ConnectionEnd,
}

/// A TLS server config for TVS: the servers' provider (`services::tls_provider`), TLS 1.2 and 1.3, no client authentication (docs/wire-formats.md §8).
pub fn tls_server_config(
    certificate_chain: Vec<CertificateDer<'static>>,
    private_key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TvsServerError> {
    let config = ServerConfig::builder_with_provider(crate::services::tls_provider::server_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TvsServerError::TlsConfig(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certificate_chain, private_key)
        .map_err(|e| TvsServerError::TlsConfig(e.to_string()))?;
    Ok(Arc::new(config))
}

/// Serves one connection that has finished its TLS handshake (or any stream, in tests) until the session
/// closes. Each response frame goes out in ONE write call, then a flush (docs/wire-formats.md §10 W-16); on close the
/// stream is shut down, which sends close_notify over TLS.
pub async fn serve_connection<S>(mut stream: S, directory: &SharedDirectory, limits: &ServerLimits) -> ConnectionReport
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut session = TvsSession::new();
    let mut report = ConnectionReport { peer: None, responses_sent: 0, notes: Vec::new(), end: ConnectionEnd::IdleTimeout };
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match tokio::time::timeout(limits.idle_timeout, stream.read(&mut buffer)).await {
            Err(_) => {
                report.end = ConnectionEnd::IdleTimeout;
                break;
            }
            Ok(Err(e)) => {
                report.end = ConnectionEnd::Io(e.to_string());
                break;
            }
            Ok(Ok(read)) => read,
        };
        let output = match buffer.get(..read) {
            Some([]) | None => session.end_of_input(),
            Some(bytes) => {
                let current = directory.borrow().clone();
                session.receive(bytes, &current, OffsetDateTime::now_utc())
            }
        };
        report.notes.extend(output.notes);
        for response in &output.responses {
            // One write_all over the whole frame: header and body must not be split (docs/wire-formats.md §7.1, W-16).
            if let Err(e) = write_frame(&mut stream, response).await {
                report.end = ConnectionEnd::Io(e.to_string());
                return report;
            }
            report.responses_sent += 1;
        }
        if let Some(reason) = output.close {
            report.end = ConnectionEnd::Session(reason);
            break;
        }
    }
    // The connection is over either way; a failed close_notify changes nothing for the phone.
    let _ = stream.shutdown().await;
    report
}

async fn write_frame<S: AsyncWrite + Unpin>(stream: &mut S, frame: &[u8]) -> io::Result<()> {
    stream.write_all(frame).await?;
    stream.flush().await
}

/// The TVS TCP listener.
pub struct TvsServer {
    listener: TcpListener,
    tls: TvsTls,
    directory: SharedDirectory,
    limits: ServerLimits,
    reports: Option<mpsc::UnboundedSender<ConnectionReport>>,
}

impl TvsServer {
    /// Binds `address` (port 0 picks a free port; production uses 2445).
    pub async fn bind(address: SocketAddr, tls: Arc<ServerConfig>, directory: SharedDirectory) -> Result<TvsServer, TvsServerError> {
        let listener = crate::services::tcp_listener::bind(address).map_err(|e| TvsServerError::Bind { address, reason: e.to_string() })?;
        let tls = TvsTls { rustls: tls, legacy: None };
        Ok(TvsServer { listener, tls, directory, limits: ServerLimits::default(), reports: None })
    }

    pub fn with_limits(mut self, limits: ServerLimits) -> TvsServer {
        self.limits = limits;
        self
    }

    /// Sends a report for every finished connection (the caller logs them).
    pub fn with_reports(mut self, reports: mpsc::UnboundedSender<ConnectionReport>) -> TvsServer {
        self.reports = Some(reports);
        self
    }

    pub fn local_addr(&self) -> Result<SocketAddr, TvsServerError> {
        self.listener.local_addr().map_err(|e| TvsServerError::Io(e.to_string()))
    }

    /// Accepts connections forever, one task each.
    pub async fn run(self) {
        // A stop that never comes: the sender lives as long as the loop.
        let (_never, mut stop) = watch::channel(false);
        while let Some((tcp, peer)) = crate::ops::accept::next_connection(&self.listener, &mut stop, "TVS").await {
            let (tls, directory, limits, reports) = (self.tls.clone(), self.directory.clone(), self.limits, self.reports.clone());
            tokio::spawn(async move {
                let report = connection(tcp, peer, tls, &directory, &limits).await;
                if let Some(reports) = reports {
                    // The receiver may be gone; reports are informational.
                    let _ = reports.send(report);
                }
            });
        }
    }
}

/// One connection: the TLS handshake within its limit, then the session; how it ended.
async fn connection(tcp: TcpStream, peer: SocketAddr, tls: TvsTls, directory: &SharedDirectory, limits: &ServerLimits) -> ConnectionReport {
    let failed = |end| ConnectionReport { peer: None, responses_sent: 0, notes: Vec::new(), end };
    let mut report = match tls.legacy {
        Some(legacy) if crate::services::legacy_tls::offers_only_legacy_tls(&tcp, limits.handshake_timeout).await => {
            match tokio::time::timeout(limits.handshake_timeout, legacy.accept(tcp)).await {
                Err(_) => failed(ConnectionEnd::HandshakeTimeout),
                Ok(Err(e)) => failed(ConnectionEnd::HandshakeFailed(e)),
                Ok(Ok(stream)) => serve_connection(stream, directory, limits).await,
            }
        }
        _ => match tokio::time::timeout(limits.handshake_timeout, TlsAcceptor::from(tls.rustls).accept(tcp)).await {
            Err(_) => failed(ConnectionEnd::HandshakeTimeout),
            Ok(Err(e)) => failed(ConnectionEnd::HandshakeFailed(e.to_string())),
            Ok(Ok(stream)) => serve_connection(stream, directory, limits).await,
        },
    };
    report.peer = Some(peer);
    report
}

/// The TLS configuration connections get; `None` closes them at once. Send a new one to follow a
/// rebuild without touching connections in flight.
pub type SharedTls = watch::Receiver<Option<TvsTls>>;

/// Accepts on `listener` until `stop` turns true, one task per connection, with the TLS configuration
/// and the directory current when the connection arrives; each finished connection goes to `reports`.
/// For adapters whose certificate may change while serving (`callguard local`, `callguard serve tvs`).
pub async fn serve_listener(
    listener: TcpListener,
    tls: SharedTls,
    directory: SharedDirectory,
    limits: ServerLimits,
    reports: mpsc::UnboundedSender<ConnectionReport>,
    mut stop: watch::Receiver<bool>,
) {
    while let Some((tcp, peer)) = crate::ops::accept::next_connection(&listener, &mut stop, "TVS").await {
        let Some(tls) = tls.borrow().clone() else { continue };
        let (directory, reports) = (directory.clone(), reports.clone());
        tokio::spawn(async move {
            // The receiver may be gone; reports are informational.
            let _ = reports.send(connection(tcp, peer, tls, &directory, &limits).await);
        });
    }
}

/// Why the TVS server could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TvsServerError {
    /// The certificate, key or protocol versions were refused by rustls.
    TlsConfig(String),
    Bind {
        address: SocketAddr,
        reason: String,
    },
    Io(String),
}

impl fmt::Display for TvsServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TvsServerError::TlsConfig(why) => write!(f, "TVS TLS configuration refused: {why} (docs/wire-formats.md §8 transport)"),
            TvsServerError::Bind { address, reason } => {
                write!(f, "TVS cannot listen on {address}: {reason} (docs/wire-formats.md §8, TCP 2445)")
            }
            TvsServerError::Io(why) => write!(f, "TVS listener: {why} (docs/wire-formats.md §8)"),
        }
    }
}

impl std::error::Error for TvsServerError {}
