//! EST (RFC 7030) in `callguard local`, for SIP endpoints that do not speak CAPF: HTTPS on its own
//! port with the CAPF certificate of the build as its identity, issuing LSCs with the cluster CA as
//! CAPF does (docs/operations.md, "EST enrollment"; the wire in `services::est`).
//!
//! - `simpleenroll` is authorized by HTTP Basic (RFC 7030 §3.2.3): the device name of a `Phone` of
//!   the namespace and its `spec.capf.authenticationString`, which works once. The record is CAPF's
//!   (`core::build::capf`): a string spent by EST is spent for CAPF and the other way round, and ten
//!   wrong strings lock the phone out of both for ten minutes (P.16-6). The phone's operation must
//!   be an Install/Upgrade still pending (Table 6-2), which the enrollment completes. A request that
//!   is refused before anything is issued (a wrong CN, a refused key) spends nothing.
//! - `simplereenroll` is authorized by the TLS client certificate alone: it must chain to the
//!   cluster CA (rustls) and be the device's current certificate in `devices/`.
//! - What is issued goes into `devices/SEP<MAC>.crt`, as CAPF's LSCs do, so the phone's encrypted
//!   configuration follows.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::Digest;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use zeroize::Zeroizing;

use super::{Capf, note_of};
use crate::api::CertificateOperation;
use crate::core::build::capf::{self as records, rfc3339};
use crate::core::build::state::Sensitivity;
use crate::core::build::{CapfIdentity, devices};
use crate::core::pki::ca::{ClusterCa, certificate_pem};
use crate::core::pki::issue::{LscKeySource, LscRequest, issue_lsc};
use crate::core::pki::keys;
use crate::services::capf::DeviceDirectory;
use crate::services::est::{self, base64_lines, certs_only, csr_common_name, from_base64};

/// EST's port when `--est-port` is not given. RFC 7030 §3.2.2 uses HTTPS's 443, which needs root;
/// 8443 is HTTPS's usual unprivileged stand-in.
pub const DEFAULT_PORT: u16 = 8443;
/// How long a connection may take, handshake included.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(60);

/// What EST serves with, made from the build's CAPF identity.
pub struct EstIdentity {
    acceptor: TlsAcceptor,
    ca: ClusterCa,
    validity_days: u32,
}

impl EstIdentity {
    /// TLS with the CAPF certificate; a client certificate is optional and, when sent, must chain
    /// to the cluster CA.
    pub fn of(identity: &CapfIdentity, validity_days: u32) -> Result<EstIdentity, String> {
        let provider = crate::services::tls_provider::server_provider();
        let mut roots = rustls::RootCertStore::empty();
        // During a CA rotation an LSC of the previous CA still re-enrolls.
        for ca in std::iter::once(identity.ca.certificate_der()).chain(identity.previous_ca.as_deref()) {
            roots.add(CertificateDer::from(ca.to_vec())).map_err(|e| format!("EST: the cluster CA: {e}"))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("EST: client verifier: {e}"))?;
        let certificate = &identity.certificate;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(keys::pkcs8_der(&certificate.key)));
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("EST: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![CertificateDer::from(certificate.certificate_der.clone())], key)
            .map_err(|e| format!("EST: {e}"))?;
        Ok(EstIdentity { acceptor: TlsAcceptor::from(Arc::new(config)), ca: identity.ca.clone(), validity_days })
    }
}

/// What a request asks: its method and path, its `Authorization`, the TLS client certificate
/// (DER), and its body.
struct Asked<'a> {
    method: &'a Method,
    path: &'a str,
    authorization: Option<&'a str>,
    client: Option<Vec<u8>>,
    body: &'a [u8],
}

/// An answer: status, content type and body.
struct Reply {
    status: StatusCode,
    content_type: &'static str,
    body: String,
}

impl Reply {
    fn text(status: StatusCode, body: String) -> Reply {
        Reply { status, content_type: "text/plain; charset=utf-8", body: format!("{body}\n") }
    }

    fn pkcs7(content_type: &'static str, certificates: &[Vec<u8>]) -> Reply {
        match certs_only(certificates) {
            Ok(der) => Reply { status: StatusCode::OK, content_type, body: base64_lines(&der) },
            Err(e) => Reply::text(StatusCode::INTERNAL_SERVER_ERROR, format!("EST: {e}")),
        }
    }
}

/// The EST service: CAPF's directory and identity, and one enrollment at a time so that a string
/// is never spent twice by two requests at once.
pub struct Est {
    capf: Arc<Capf>,
    address: SocketAddr,
    enrolling: Mutex<()>,
}

impl Est {
    pub fn new(capf: Arc<Capf>, address: SocketAddr) -> Est {
        Est { capf, address, enrolling: Mutex::new(()) }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Accepts connections until `stop`.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        while let Some((tcp, peer)) = crate::ops::accept::next_connection(&listener, &mut stop, "EST").await {
            let identity = self.capf.est.read().unwrap_or_else(|p| p.into_inner()).clone();
            let Some(identity) = identity else { continue };
            let est = self.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(CONNECTION_DEADLINE, est.connection(tcp, peer, identity)).await;
            });
        }
    }

    async fn connection(self: Arc<Self>, tcp: tokio::net::TcpStream, peer: SocketAddr, identity: Arc<EstIdentity>) {
        let tls = match identity.acceptor.accept(tcp).await {
            Ok(tls) => tls,
            Err(e) => {
                tracing::info!(%peer, error = %e, "EST TLS handshake failed");
                return;
            }
        };
        let client = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let (est, identity, client) = (self.clone(), identity.clone(), client.clone());
            async move { Ok::<_, Infallible>(est.respond(request, peer, identity, client).await) }
        });
        let served = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .serve_connection(TokioIo::new(tls), service)
            .await;
        if let Err(e) = served {
            tracing::info!(%peer, error = %e, "EST connection ended");
        }
    }

    async fn respond(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
        identity: Arc<EstIdentity>,
        client: Option<Vec<u8>>,
    ) -> Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, est::MAX_REQUEST_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                let reply =
                    Reply::text(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body: {e} (at most {} bytes)", est::MAX_REQUEST_BYTES));
                return response(reply, false);
            }
        };
        let authorization =
            parts.headers.get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(|v| Zeroizing::new(v.to_owned()));
        let path = parts.uri.path().to_owned();
        let method = parts.method.clone();
        let est = self.clone();
        let reply = tokio::task::spawn_blocking(move || {
            let asked =
                Asked { method: &method, path: &path, authorization: authorization.as_deref().map(|s| s.as_str()), client, body: &body };
            est.handle(asked, &identity, peer)
        })
        .await
        .unwrap_or_else(|e| Reply::text(StatusCode::INTERNAL_SERVER_ERROR, format!("EST: {e}")));
        let challenge = reply.status == StatusCode::UNAUTHORIZED;
        response(reply, challenge)
    }

    fn handle(&self, asked: Asked<'_>, identity: &EstIdentity, peer: SocketAddr) -> Reply {
        let Asked { method, path, authorization, client, body } = asked;
        let expected = match path {
            est::CACERTS => Method::GET,
            est::SIMPLE_ENROLL | est::SIMPLE_REENROLL => Method::POST,
            _ => {
                return Reply::text(
                    StatusCode::NOT_FOUND,
                    format!(
                        "{path}: this EST server answers {}, {} and {} (RFC 7030 §3.2.2)",
                        est::CACERTS,
                        est::SIMPLE_ENROLL,
                        est::SIMPLE_REENROLL
                    ),
                );
            }
        };
        if *method != expected {
            return Reply::text(StatusCode::METHOD_NOT_ALLOWED, format!("{path} takes {expected} (RFC 7030 §3.2.2)"));
        }
        let result = match path {
            est::CACERTS => return Reply::pkcs7(est::PKCS7, &[identity.ca.certificate_der().to_vec()]),
            est::SIMPLE_ENROLL => self.enroll(authorization, body, identity),
            _ => self.reenroll(client, body, identity),
        };
        match result {
            Ok((who, der)) => {
                let note = note_of(&der);
                println!(
                    "{} EST {peer}: {who}: {} issued an LSC, serial {}, valid until {}",
                    crate::adapters::clock(),
                    path.rsplit('/').next().unwrap_or_default(),
                    note.as_ref().map(|n| n.serial.as_str()).unwrap_or_default(),
                    note.as_ref().map(|n| n.not_after.as_str()).unwrap_or_default()
                );
                Reply::pkcs7(est::PKCS7_CERTS_ONLY, &[der])
            }
            Err(reply) => {
                println!(
                    "{} EST {peer}: {} refused ({}): {}",
                    crate::adapters::clock(),
                    path.rsplit('/').next().unwrap_or_default(),
                    reply.status.as_u16(),
                    reply.body.trim()
                );
                reply
            }
        }
    }

    /// `simpleenroll`: Basic with the device name and its authentication string.
    fn enroll(&self, authorization: Option<&str>, body: &[u8], identity: &EstIdentity) -> Result<(String, Vec<u8>), Reply> {
        let unauthorized = |why: String| Reply::text(StatusCode::UNAUTHORIZED, why);
        let forbidden = |why: String| Reply::text(StatusCode::FORBIDDEN, why);
        let credentials = authorization
            .and_then(|value| value.strip_prefix("Basic "))
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok())
            .map(Zeroizing::new)
            .ok_or_else(|| {
                unauthorized("simpleenroll needs HTTP Basic: the device name as the user and its one-time enrollment secret (spec.capf.authenticationString) as the password (RFC 7030 §3.2.3)".into())
            })?;
        let text = std::str::from_utf8(&credentials).map_err(|_| unauthorized("the Basic credentials are not UTF-8 (RFC 7617)".into()))?;
        let (user, secret) = text.split_once(':').ok_or_else(|| unauthorized("the Basic credentials have no ':' (RFC 7617)".into()))?;
        let device = devices::device_name(user).map_err(|e| unauthorized(format!("the Basic user: {e}")))?;
        let directory = &self.capf.directory;
        let entry = directory
            .entry(&device)
            .ok_or_else(|| unauthorized(format!("{device}: no Phone of the namespace has this device name (P.5-9)")))?;
        let who = format!("{} ({device})", entry.subject);
        let Some(string) = entry.string() else {
            return Err(forbidden(format!(
                "{who}: has no enrollment secret: its profile must authenticate by string and spec.capf.authenticationString must be set (Table 6-2, P.6-12)"
            )));
        };

        let _one_at_a_time = self.enrolling.lock().unwrap_or_else(|p| p.into_inner());
        let now = OffsetDateTime::now_utc();
        let record =
            records::load(&directory.state, &device).map_err(|e| Reply::text(StatusCode::INTERNAL_SERVER_ERROR, format!("{who}: {e}")))?;
        record.admit(Some(string), now).map_err(|refusal| forbidden(format!("{who}: {refusal}")))?;
        let right = bool::from(subtle::ConstantTimeEq::ct_eq(
            sha2::Sha256::digest(secret.as_bytes()).as_slice(),
            sha2::Sha256::digest(string.as_bytes()).as_slice(),
        ));
        if !right {
            let mut locked = None;
            directory.update(&device, |record| locked = record.wrong_string(now));
            if let Some(until) = locked {
                println!(
                    "{} EST: {who} is locked out until {}: {} consecutive wrong authentication strings (P.16-6)",
                    crate::adapters::clock(),
                    rfc3339(until),
                    records::LOCKOUT_AFTER
                );
            }
            return Err(unauthorized(format!(
                "{who}: wrong enrollment secret (spec.capf.authenticationString, Table 6-2; ten in a row lock the phone out for ten minutes, P.16-6)"
            )));
        }
        let state = records::operation_state_of(entry.scheduled(), Some(string), &record, now);
        let operation = state.scheduled().filter(|id| id.operation == CertificateOperation::InstallUpgrade).cloned().ok_or_else(|| {
            forbidden(format!(
                "{who}: spec.capf.certificateOperation: enrollment needs a pending {}; the operation is {} (Table 6-2)",
                CertificateOperation::InstallUpgrade.label(),
                state.describe().unwrap_or_else(|| "No Pending Operation".into())
            ))
        })?;
        let der = self.issue(&device, &who, body, identity, now)?;
        let note = note_of(&der);
        directory.update(&device, |record| {
            record.authenticated(Some(string));
            record.complete(operation.clone(), now, note.clone());
        });
        Ok((who, der))
    }

    /// `simplereenroll`: the TLS client certificate is the device's current one.
    fn reenroll(&self, client: Option<Vec<u8>>, body: &[u8], identity: &EstIdentity) -> Result<(String, Vec<u8>), Reply> {
        let client = client.ok_or_else(|| {
            Reply::text(
                StatusCode::UNAUTHORIZED,
                "simplereenroll needs the device's current certificate as the TLS client certificate (RFC 7030 §3.3.2, §4.2.2)".into(),
            )
        })?;
        let forbidden = |why: String| Reply::text(StatusCode::FORBIDDEN, why);
        let cn = crate::core::pki::inspect::parse_certificate(&client)
            .ok()
            .and_then(|c| c.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned))
            .unwrap_or_default();
        let device = devices::device_name(&cn).map_err(|e| forbidden(format!("the client certificate's CN: {e}")))?;
        let directory = &self.capf.directory;
        let entry = directory
            .entry(&device)
            .ok_or_else(|| forbidden(format!("{device}: no Phone of the namespace has this device name (P.5-9)")))?;
        let who = format!("{} ({device})", entry.subject);
        if directory.certificate(&device).as_deref() != Some(client.as_slice()) {
            return Err(forbidden(format!(
                "{who}: the client certificate is not the device's current certificate ({}): re-enroll with the certificate last issued",
                devices::certificate_file(&device)
            )));
        }
        let _one_at_a_time = self.enrolling.lock().unwrap_or_else(|p| p.into_inner());
        let der = self.issue(&device, &who, body, identity, OffsetDateTime::now_utc())?;
        Ok((who, der))
    }

    /// Checks the request (subject CN, key) and issues; the certificate is kept in `devices/`.
    fn issue(&self, device: &str, who: &str, body: &[u8], identity: &EstIdentity, now: OffsetDateTime) -> Result<Vec<u8>, Reply> {
        let bad = |why: String| Reply::text(StatusCode::BAD_REQUEST, format!("{who}: {why}"));
        let csr = from_base64(body, "the request").map_err(bad)?;
        let cn = csr_common_name(&csr).map_err(bad)?;
        if cn != device {
            return Err(bad(format!(
                "the request's subject CN is \"{cn}\"; it must be the device name {device} (docs/wire-formats.md §7.8)"
            )));
        }
        let directory = &self.capf.directory;
        let request = LscRequest {
            device_name: device,
            key: LscKeySource::Csr(&csr),
            validity_days: identity.validity_days,
            serial: directory.fresh_serial(),
            now,
        };
        let issued = issue_lsc(&identity.ca, &request).map_err(|e| bad(format!("{e}")))?;
        let name = devices::certificate_file(device);
        directory.state.write(&name, certificate_pem(&issued.certificate_der).as_bytes(), Sensitivity::Public).map_err(|e| {
            Reply::text(StatusCode::INTERNAL_SERVER_ERROR, format!("{who}: the certificate could not be kept in {name}: {e}"))
        })?;
        Ok(issued.certificate_der)
    }
}

fn response(reply: Reply, challenge: bool) -> Response<Full<Bytes>> {
    let mut builder = Response::builder().status(reply.status).header(hyper::header::CONTENT_TYPE, reply.content_type);
    if reply.content_type.starts_with(est::PKCS7) {
        builder = builder.header("content-transfer-encoding", "base64");
    }
    if challenge {
        builder = builder.header(hyper::header::WWW_AUTHENTICATE, "Basic realm=\"callguard EST\"");
    }
    builder.body(Full::new(Bytes::from(reply.body))).unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}
