//! Handshake capture: connect to the gateway's Certificate Provider, complete a TLS handshake without
//! verifying the certificate, record the leaf it presents, send close_notify (docs/wire-formats.md §9.2 step 1).
//!
//! The spec asks for TLS 1.0–1.2; rustls offers only TLS 1.2 of those (with ECDHE key exchange), so
//! gateways that speak only TLS 1.0/1.1 or RSA key exchange need an OpenSSL-backed client, left for later.
//! The certificate is not verified (it is self-signed and unknown until approved), but the gateway must
//! still prove it holds the certificate's key: handshake signatures are checked with rustls' algorithms.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, DnsName, ServerName, UnixTime};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::error::SrstError;

/// The Certificate Provider's default port (docs/wire-formats.md §9.1).
pub const DEFAULT_PROVIDER_PORT: u16 = 2445;

/// What the handshake showed: the leaf, and whether the gateway signed with its key.
#[derive(Debug, Default)]
struct Observed {
    leaf: Option<Vec<u8>>,
    signature_verified: bool,
}

/// Accepts any certificate and records the leaf; still verifies the handshake signatures against it.
#[derive(Debug)]
struct RecordingVerifier {
    algorithms: WebPkiSupportedAlgorithms,
    observed: Mutex<Observed>,
}

impl RecordingVerifier {
    fn new(provider: &CryptoProvider) -> RecordingVerifier {
        RecordingVerifier { algorithms: provider.signature_verification_algorithms, observed: Mutex::new(Observed::default()) }
    }

    fn record_signature(&self, result: Result<HandshakeSignatureValid, rustls::Error>) -> Result<HandshakeSignatureValid, rustls::Error> {
        if result.is_ok()
            && let Ok(mut observed) = self.observed.lock()
        {
            observed.signature_verified = true;
        }
        result
    }

    /// The leaf, if the gateway presented one and proved it holds the key.
    fn proven_leaf(&self) -> Option<Vec<u8>> {
        let observed = self.observed.lock().ok()?;
        if observed.signature_verified { observed.leaf.clone() } else { None }
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut observed = self.observed.lock().map_err(|_| rustls::Error::General("certificate recorder poisoned".into()))?;
        observed.leaf = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.record_signature(verify_tls12_signature(message, cert, dss, &self.algorithms))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.record_signature(verify_tls13_signature(message, cert, dss, &self.algorithms))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Connects to `host:port`, captures the gateway's leaf certificate (DER) and closes with close_notify.
/// `timeout` bounds connection and handshake together. IP literals (IPv6 with or without brackets) are
/// sent no SNI; host names are.
///
/// If the handshake fails after the gateway has presented its certificate and signed with its key (a
/// gateway demanding a client certificate does this), the certificate is still returned: it is the one the
/// gateway holds, which is all the capture needs.
pub async fn capture_certificate(host: &str, port: u16, timeout: Duration) -> Result<Vec<u8>, SrstError> {
    let unbracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let (server_name, endpoint) = match unbracketed.parse::<IpAddr>() {
        Ok(ip) => (ServerName::IpAddress(ip.into()), Endpoint::Ip(SocketAddr::new(ip, port))),
        Err(_) => {
            let dns = DnsName::try_from(unbracketed.to_owned()).map_err(|_| SrstError::InvalidHost(host.to_owned()))?;
            (ServerName::DnsName(dns), Endpoint::Name(unbracketed.to_owned(), port))
        }
    };
    let shown = endpoint.to_string();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(RecordingVerifier::new(&provider));
    let config = ClientConfig::builder_with_provider(provider)
        // TLS 1.2 only: the 1.0–1.2 range of docs/wire-formats.md §9, as far as rustls goes (module comment).
        .with_protocol_versions(&[&rustls::version::TLS12])
        .map_err(|e| SrstError::Handshake { endpoint: shown.clone(), reason: e.to_string() })?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(config));

    let exchange = async {
        let tcp = match &endpoint {
            Endpoint::Ip(address) => TcpStream::connect(address).await,
            Endpoint::Name(name, port) => TcpStream::connect((name.as_str(), *port)).await,
        }
        .map_err(|e| SrstError::Connect { endpoint: shown.clone(), reason: e.to_string() })?;
        match connector.connect(server_name, tcp).await {
            Ok(mut tls) => {
                let leaf = verifier.proven_leaf().ok_or_else(|| SrstError::NoCertificate { endpoint: shown.clone() })?;
                // close_notify; the certificate is already in hand, so a gateway that hangs up first is fine.
                let _ = tls.shutdown().await;
                Ok(leaf)
            }
            Err(e) => verifier.proven_leaf().ok_or_else(|| SrstError::Handshake { endpoint: shown.clone(), reason: e.to_string() }),
        }
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| SrstError::Timeout { endpoint: shown.clone(), after: timeout })?
}

enum Endpoint {
    Ip(SocketAddr),
    Name(String, u16),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Ip(address) => write!(f, "{address}"),
            Endpoint::Name(name, port) => write!(f, "{name}:{port}"),
        }
    }
}
