//! `callguard bench capf`: N phones enrol at once against the CAPF server in this process, on
//! loopback over TLS. The server runs on a runtime of its own, so the CPU time of its threads is its
//! work alone: from that comes its capacity in certificates per second, printed next to
//! `openssl speed rsa2048` on as many cores, and beside the wall-clock rate with the phones sharing
//! the cores. The phones make no key: each sends one of a few public keys made beforehand, since
//! what is measured is the server's work (TLS handshake, session, LSC issued and signed).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::api::{CapfAuthenticationMode, KeySize};
use crate::core::pki::ca::{CaSettings, ClusterCa};
use crate::core::pki::issue::{ServerCertificateRequest, ServerRole, issue_server_certificate_with_new_key};
use crate::core::pki::keys;
use crate::services::capf::frame::{FrameHeader, HEADER_LEN};
use crate::services::capf::server::tls_acceptor;
use crate::services::capf::{
    Body, CapfContext, CapfServer, Command, ConnectionReport, DeviceRecord, Frame, Outcome, Reason, RequestedKey, ScheduledOperation,
    SessionConfig, Timeouts, TrustAnchors,
};

const CAPF_HOST: &str = "capf.bench.example";

/// What one phone saw: the LSC stored and END_SESSION 1, or why not.
type Enrolment = Result<(), String>;

/// Enrols `phones` phones concurrently and prints certificates per second, `openssl speed rsa2048`
/// on as many cores as the server runs on, and their ratio.
pub fn run(phones: usize) -> Result<(), String> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let now = OffsetDateTime::now_utc();
    let ca = ClusterCa::generate(&CaSettings::new("bench", "default"), now).map_err(|e| e.to_string())?;
    let request = ServerCertificateRequest::short_lived(ServerRole::Capf, CAPF_HOST, None, now);
    let identity = issue_server_certificate_with_new_key(&ca, &request).map_err(|e| e.to_string())?;
    let acceptor =
        tls_acceptor(std::slice::from_ref(&identity.certificate_der), &keys::pkcs8_der(&identity.key)).map_err(|e| e.to_string())?;
    // Key generation is the phone's work: eight RSA-2048 public keys, made once, shared by all.
    let spkis: Arc<Vec<Vec<u8>>> = Arc::new((0..8).map(|_| super::phone_spki(&keys::generate_rsa(2048))).collect());
    // Every phone has an Install/Upgrade scheduled, by null string (no string to check).
    let record = DeviceRecord {
        operation: ScheduledOperation::InstallUpgrade,
        auth_mode: CapfAuthenticationMode::ByNullString,
        authentication_string: None,
        key: RequestedKey::Rsa(KeySize::Bits2048),
        current_lsc: None,
    };
    let directory = move |name: &str| name.starts_with("SEP").then(|| record.clone());
    let context = Arc::new(CapfContext {
        ca: ca.clone(),
        trust: TrustAnchors::default(),
        directory: Arc::new(directory),
        config: SessionConfig { lsc_validity_days: 365, ..SessionConfig::default() },
    });
    let connector = tls_connector(ca.certificate_der())?;

    // The server gets a runtime of its own, so that its threads' CPU time is the server's work
    // alone; the phones run on another, on the same cores.
    let (server_runtime, server_cpu) = super::cpu_accounted_runtime("capf-server", cores)?;
    let (address, serving, mut received) = server_runtime.block_on(async move {
        let server = CapfServer::bind("127.0.0.1:0".parse().expect("a socket address"), acceptor, context, Timeouts::default())
            .await
            .map_err(|e| e.to_string())?;
        let address = server.local_addr().map_err(|e| e.to_string())?;
        let (reports, received) = tokio::sync::mpsc::unbounded_channel();
        Ok::<_, String>((address, tokio::spawn(server.serve(reports)), received))
    })?;
    let phone_runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(cores).enable_all().build().map_err(|e| e.to_string())?;
    let (elapsed, enrolments, issued) = phone_runtime.block_on(async move {
        let started = Instant::now();
        let tasks: Vec<_> = (0..phones)
            .map(|i| {
                let (connector, spkis) = (connector.clone(), spkis.clone());
                tokio::spawn(async move {
                    let spki = &spkis[i % spkis.len()];
                    tokio::time::timeout(Duration::from_secs(120), enrol(address, &connector, &format!("SEP{i:012X}"), spki))
                        .await
                        .unwrap_or_else(|_| Err("no END_SESSION within 120 s".into()))
                })
            })
            .collect();
        let mut enrolments: Vec<Enrolment> = Vec::with_capacity(phones);
        for task in tasks {
            enrolments.push(task.await.unwrap_or_else(|e| Err(e.to_string())));
        }
        let elapsed = started.elapsed();
        // The server's own account: one report per connection.
        let mut issued = 0usize;
        for _ in 0..phones {
            match tokio::time::timeout(Duration::from_secs(10), received.recv()).await {
                Ok(Some(ConnectionReport::Session { outcome: Outcome::Issued(_), .. })) => issued += 1,
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        (elapsed, enrolments, issued)
    });
    serving.abort();
    server_runtime.shutdown_timeout(Duration::from_secs(10));
    let server_cpu = server_cpu.spent();

    let failed: Vec<&String> = enrolments.iter().filter_map(|e| e.as_ref().err()).collect();
    let enrolled = phones - failed.len();
    let (sign, _) = super::openssl_rsa_speed(2048, 3, cores)?;
    let per_second = enrolled as f64 / elapsed.as_secs_f64();
    let cpu_per_certificate = server_cpu / u32::try_from(issued.max(1)).unwrap_or(u32::MAX);
    let capacity = cores as f64 / cpu_per_certificate.as_secs_f64();
    println!(
        "bench capf: {phones} phones enrolling at once over TLS on loopback (RSA-2048 phone keys sent, RSA-2048 CA and CAPF certificate), {cores} core(s)"
    );
    println!("  enrolled:                        {enrolled:>8}  ({} failed; the server reports {issued} LSCs issued)", failed.len());
    println!("  time:                            {elapsed:>8.2?}");
    println!("  certificates per second:         {per_second:>8.0}  (the phones' TLS and protocol share the {cores} core(s))");
    println!("  server CPU per certificate:      {cpu_per_certificate:>8.2?}  (the server's threads only)");
    println!("  server capacity:                 {capacity:>8.0}  certificates/s on {cores} core(s) with no phone beside it");
    println!("  openssl speed rsa2048:           {sign:>8.0}  sign/s on {cores} core(s) (-multi {cores}, -seconds 3)");
    println!(
        "  ratio, capacity:                {:>9.2}  (target 0.80; at most 0.50, since each enrolment makes two RSA-2048 private-key operations, the TLS handshake's signature and the LSC's)",
        capacity / sign
    );
    println!("  ratio, wall clock:              {:>9.2}  (certificates per second over sign/s)", per_second / sign);
    if let Some(first) = failed.first() {
        println!("  first failure: {first}");
    }
    Ok(())
}

/// A TLS client that trusts the bench's cluster CA, as a phone trusts CAPF through its CTL.
fn tls_connector(ca_der: &[u8]) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from(ca_der.to_vec())).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// One phone: connect, authenticate by null string, send its public key, store the LSC, and hear
/// END_SESSION 1 (docs/wire-formats.md §7.5).
async fn enrol(address: SocketAddr, connector: &tokio_rustls::TlsConnector, device: &str, spki: &[u8]) -> Enrolment {
    let tcp = TcpStream::connect(address).await.map_err(|e| format!("connect: {e}"))?;
    let name = rustls_pki_types::ServerName::try_from(CAPF_HOST).map_err(|e| e.to_string())?;
    let mut stream = connector.connect(name, tcp).await.map_err(|e| format!("TLS handshake: {e}"))?;
    let request = read_frame(&mut stream).await?.ok_or("the server sent no AUTH_REQUEST")?;
    let id = request.session_id;
    let auth = Body { reason: Some(Reason::Success), version: Some(3), device_name: Some(device.into()), ..Body::default() };
    send(&mut stream, Frame::new(Command::AuthResponse, id, auth)).await?;
    let mut stored = false;
    while let Some(frame) = read_frame(&mut stream).await? {
        match frame.command {
            Command::KeyGenerateRequest => {
                let body = Body { public_key: Some(spki.to_vec()), ..Body::default() };
                send(&mut stream, Frame::new(Command::KeyGenerateResponse, id, body)).await?;
            }
            Command::StoreCertificateRequest => {
                stored = frame.body.certificate.is_some();
                let body = Body { reason: Some(Reason::Success), ..Body::default() };
                send(&mut stream, Frame::new(Command::StoreCertificateResponse, id, body)).await?;
            }
            Command::EndSession => {
                return match (frame.body.reason, stored) {
                    (Some(Reason::Success), true) => Ok(()),
                    (reason, _) => Err(format!("{device}: END_SESSION {reason:?}, LSC stored: {stored}")),
                };
            }
            other => return Err(format!("{device}: unexpected {other:?}")),
        }
    }
    Err(format!("{device}: the connection ended before END_SESSION"))
}

async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Option<Frame>, String> {
    let mut header = [0u8; HEADER_LEN];
    if stream.read_exact(&mut header).await.is_err() {
        return Ok(None);
    }
    let parsed = FrameHeader::decode(&header).map_err(|e| e.to_string())?;
    let mut bytes = header.to_vec();
    bytes.resize(HEADER_LEN + usize::from(parsed.body_len), 0);
    stream.read_exact(&mut bytes[HEADER_LEN..]).await.map_err(|e| format!("reading a frame: {e}"))?;
    Frame::decode(&bytes).map(Some).map_err(|e| e.to_string())
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, frame: Frame) -> Result<(), String> {
    let bytes = frame.encode().map_err(|e| e.to_string())?;
    stream.write_all(&bytes).await.map_err(|e| format!("sending: {e}"))?;
    stream.flush().await.map_err(|e| format!("sending: {e}"))
}
