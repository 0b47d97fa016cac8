//! `callguard bench sip-tls`: full mutual-TLS handshakes per second, in one run, against Callguard's
//! SIP-TLS listener (the SIP service in this process, serving its TLS port as `callguard local`
//! does) and against `openssl s_server` with the same certificate, key and CA. One client driver
//! makes every handshake: a fresh TCP connection, no resumption, the phone's LSC presented, then
//! close_notify and the server's end read.
//!
//! Fairness: `openssl s_server` is one thread and serves one connection at a time, so Callguard's
//! service gets one worker thread too. The figure compared is handshakes per CPU-second of the
//! server itself (its threads' CPU clocks; s_server's from /proc/<pid>/stat): s_server idles
//! while a connection waits on the client, Callguard takes another meanwhile, which the wall
//! clock would count in its favour. The wall-clock rates are printed beside it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::core::pki::ca::{CaSettings, ClusterCa, certificate_pem};
use crate::core::pki::issue::{
    LscKeySource, LscRequest, ServerCertificateRequest, ServerRole, issue_lsc, issue_server_certificate_with_new_key,
};
use crate::core::pki::keys;
use crate::core::pki::serial::Serial;
use crate::services::sip::directory::SipDirectory;
use crate::services::sip::identity::PhoneAnchors;
use crate::services::sip::server::{Listeners, SipService, SipTls, tls_config};

const SERVER_HOST: &str = "cm1.bench.example";
const PHONE: &str = "SEP0000B0B0B0B0";
/// One handshake that takes longer counts as failed.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(30);

/// What a handshake negotiated, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Negotiated {
    version: String,
    cipher_suite: String,
    key_exchange: String,
}

impl std::fmt::Display for Negotiated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.version, self.cipher_suite, self.key_exchange)
    }
}

/// One server's run.
struct Driven {
    completed: usize,
    failed: usize,
    first_failure: Option<String>,
    elapsed: Duration,
    server_cpu: Duration,
    /// The client driver's, for the record: what the server's work leaves of the cores.
    client_cpu: Duration,
}

/// Makes `handshakes` handshakes with each server, `concurrency` at a time, and prints the rates.
pub fn run(handshakes: usize, concurrency: usize) -> Result<(), String> {
    let found = Command::new("sh").args(["-c", "command -v openssl"]).output().is_ok_and(|o| o.status.success());
    if !found {
        return Err("openssl is missing: install the Debian package openssl".into());
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let now = OffsetDateTime::now_utc();
    let ca = ClusterCa::generate(&CaSettings::new("bench", "default"), now).map_err(|e| e.to_string())?;
    let request = ServerCertificateRequest::short_lived(ServerRole::CallManager, SERVER_HOST, None, now);
    let server = issue_server_certificate_with_new_key(&ca, &request).map_err(|e| e.to_string())?;
    // The phone: an RSA-2048 key and the LSC the cluster CA issued for it, as CAPF would.
    let phone_key = keys::generate_rsa(2048);
    let spki = super::phone_spki(&phone_key);
    let lsc_request = LscRequest {
        device_name: PHONE,
        key: LscKeySource::PublicKey(&spki),
        validity_days: 30,
        serial: Serial::random(&mut rand::thread_rng()),
        now,
    };
    let lsc = issue_lsc(&ca, &lsc_request).map_err(|e| e.to_string())?.certificate_der;
    let connector = phone_connector(ca.certificate_der(), lsc, &phone_key)?;

    // Callguard: the SIP service with only a TLS listener, on a runtime of one worker.
    let (server_runtime, callguard_cpu) = super::cpu_accounted_runtime("sip-tls-server", 1)?;
    let anchors = PhoneAnchors { cluster_cas: vec![ca.certificate_der().to_vec()], manufacturer_cas: Vec::new() };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(keys::pkcs8_der(&server.key)));
    let config = tls_config(vec![CertificateDer::from(server.certificate_der.clone())], key, &anchors)?;
    let directory = SipDirectory::new("ccmsipline".into(), vec![ca.certificate_der().to_vec()], Vec::new(), Vec::new());
    let service = SipService::new(directory, Some(SipTls { config, legacy: None, client: None }));
    let cancel = tokio_util::sync::CancellationToken::new();
    let listener = server_runtime
        .block_on(async { crate::services::tcp_listener::bind(SocketAddr::from(([127, 0, 0, 1], 0))) })
        .map_err(|e| e.to_string())?;
    let callguard = listener.local_addr().map_err(|e| e.to_string())?;
    let listeners = Listeners { udp: None, tcp: None, tls: Some(listener), trunks: Vec::new() };
    server_runtime.spawn(service.clone().serve(listeners, cancel.clone()));

    // openssl s_server with the same files.
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut s_server = start_s_server(dir.path(), &ca, &server.certificate_der, &server.key)?;
    let openssl = s_server.address;

    let (client_runtime, client_cpu) = super::cpu_accounted_runtime("sip-tls-phones", cores)?;
    let pid = s_server.child.id();
    let measured = client_runtime.block_on(async {
        // A first handshake with each, not counted: it proves the setup, tells what each
        // negotiates, and waits for s_server to listen.
        let with_callguard = first_handshake(callguard, &connector).await.map_err(|e| format!("Callguard: {e}"))?;
        let with_openssl = first_handshake(openssl, &connector).await.map_err(|e| format!("openssl s_server: {e}"))?;
        let (before, client_before) = (crate::bench::process_cpu(pid)?, client_cpu.spent());
        let mut openssl_run = drive(openssl, &connector, handshakes, concurrency).await;
        openssl_run.server_cpu = crate::bench::process_cpu(pid)?.saturating_sub(before);
        openssl_run.client_cpu = client_cpu.spent().saturating_sub(client_before);
        let (before, client_before) = (callguard_cpu.spent(), client_cpu.spent());
        let mut callguard_run = drive(callguard, &connector, handshakes, concurrency).await;
        callguard_run.server_cpu = callguard_cpu.spent().saturating_sub(before);
        callguard_run.client_cpu = client_cpu.spent().saturating_sub(client_before);
        Ok::<_, String>((with_callguard, with_openssl, callguard_run, openssl_run))
    });
    let s_server_errors = s_server.stop();
    cancel.cancel();
    server_runtime.shutdown_timeout(Duration::from_secs(10));
    let (with_callguard, with_openssl, callguard_run, openssl_run) =
        measured.map_err(|e| format!("{e}\nopenssl s_server said: {s_server_errors}"))?;
    let refused = service.counters.refusals.load(Ordering::Relaxed);

    println!(
        "bench sip-tls: {handshakes} full mutual-TLS handshakes per server, {concurrency} at once, a fresh TCP connection each, no resumption, on 127.0.0.1; {cores} core(s)"
    );
    println!(
        "  certificates: RSA-2048 server certificate and phone LSC, both from one RSA-2048 CA; the client certificate is asked and verified by both"
    );
    println!("  negotiated:   Callguard {with_callguard}; openssl s_server {with_openssl}");
    if with_callguard != with_openssl {
        println!("  WARNING: the two servers negotiated differently; the figures do not compare the same handshake");
    }
    println!("  fairness:     one server thread each (s_server is single-threaded; Callguard's SIP service runs on a one-worker runtime);");
    println!(
        "                the client driver (rustls, {cores} worker(s)) shares the cores with either; capacity = handshakes per CPU-second of the server's own thread(s)"
    );
    println!(
        "  {:<10} {:>10} {:>7} {:>9} {:>13} {:>13} {:>15} {:>13}",
        "peer", "handshakes", "failed", "seconds", "handshakes/s", "server CPU s", "per CPU-second", "client CPU s"
    );
    for (name, run) in [("openssl", &openssl_run), ("Callguard", &callguard_run)] {
        println!(
            "  {name:<10} {:>10} {:>7} {:>9.2} {:>13.0} {:>13.2} {:>15.0} {:>13.2}",
            run.completed,
            run.failed,
            run.elapsed.as_secs_f64(),
            wall_rate(run),
            run.server_cpu.as_secs_f64(),
            capacity(run),
            run.client_cpu.as_secs_f64()
        );
    }
    println!(
        "  ratio, capacity:   {:>6.2}  (Callguard over openssl s_server, handshakes per server CPU-second; target 0.80)",
        capacity(&callguard_run) / capacity(&openssl_run)
    );
    println!(
        "  ratio, wall clock: {:>6.2}  (handshakes/s; s_server serves one connection at a time and idles while it waits on the client)",
        wall_rate(&callguard_run) / wall_rate(&openssl_run)
    );
    println!("  Callguard refused {refused} handshake(s)");
    for (name, run) in [("openssl", &openssl_run), ("Callguard", &callguard_run)] {
        if let Some(first) = &run.first_failure {
            println!("  first failure with {name}: {first}");
        }
    }
    if callguard_run.completed == 0 || openssl_run.completed == 0 {
        return Err(format!("a server completed no handshake\nopenssl s_server said: {s_server_errors}"));
    }
    Ok(())
}

fn wall_rate(run: &Driven) -> f64 {
    run.completed as f64 / run.elapsed.as_secs_f64()
}

fn capacity(run: &Driven) -> f64 {
    run.completed as f64 / run.server_cpu.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// The phone's side: trusts the CA, presents its LSC, and keeps no session to resume. It signs
/// through the servers' provider (OpenSSL for the private key), so that the client's share of the
/// cores is no larger than it must be.
fn phone_connector(ca_der: &[u8], lsc: Vec<u8>, key: &rsa::RsaPrivateKey) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec())).map_err(|e| e.to_string())?;
    let mut config = rustls::ClientConfig::builder_with_provider(crate::services::tls_provider::server_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![CertificateDer::from(lsc)], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(keys::pkcs8_der(key))))
        .map_err(|e| e.to_string())?;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// One full handshake on a new connection, then close_notify, then the server's side read to its
/// end: in TLS 1.3 the client is done before the server has checked its certificate and Finished,
/// and reading to the end makes the server's whole share of the work part of every handshake (a
/// refusal arrives as an alert here).
async fn handshake(address: SocketAddr, connector: &tokio_rustls::TlsConnector) -> Result<Negotiated, String> {
    let tcp = TcpStream::connect(address).await.map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from(SERVER_HOST).map_err(|e| e.to_string())?;
    let mut tls = connector.connect(name, tcp).await.map_err(|e| format!("TLS handshake: {e}"))?;
    let connection = tls.get_ref().1;
    let negotiated = Negotiated {
        version: connection.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default(),
        cipher_suite: connection.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())).unwrap_or_default(),
        key_exchange: connection.negotiated_key_exchange_group().map(|g| format!("{:?}", g.name())).unwrap_or_default(),
    };
    tls.shutdown().await.map_err(|e| format!("close_notify: {e}"))?;
    let mut rest = Vec::new();
    match tls.read_to_end(&mut rest).await {
        // A server may close without its own close_notify: the handshake was still whole.
        Ok(_) => Ok(negotiated),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(negotiated),
        Err(e) => Err(format!("after the handshake: {e}")),
    }
}

/// The uncounted first handshake, retried while the server does not listen yet.
async fn first_handshake(address: SocketAddr, connector: &tokio_rustls::TlsConnector) -> Result<Negotiated, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout(HANDSHAKE_LIMIT, handshake(address, connector)).await {
            Ok(Ok(negotiated)) => return Ok(negotiated),
            Ok(Err(e)) if e.starts_with("connect:") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(format!("no handshake within {HANDSHAKE_LIMIT:?}")),
        }
    }
}

/// `handshakes` handshakes with `address`, `concurrency` connections at a time.
async fn drive(address: SocketAddr, connector: &tokio_rustls::TlsConnector, handshakes: usize, concurrency: usize) -> Driven {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency.clamp(1, handshakes.max(1)))
        .map(|_| {
            let (next, connector) = (next.clone(), connector.clone());
            tokio::spawn(async move {
                let (mut completed, mut failures) = (0usize, Vec::new());
                while next.fetch_add(1, Ordering::Relaxed) < handshakes {
                    match tokio::time::timeout(HANDSHAKE_LIMIT, handshake(address, &connector)).await {
                        Ok(Ok(_)) => completed += 1,
                        Ok(Err(e)) => failures.push(e),
                        Err(_) => failures.push(format!("no handshake within {HANDSHAKE_LIMIT:?}")),
                    }
                }
                (completed, failures)
            })
        })
        .collect();
    let mut run = Driven {
        completed: 0,
        failed: 0,
        first_failure: None,
        elapsed: Duration::ZERO,
        server_cpu: Duration::ZERO,
        client_cpu: Duration::ZERO,
    };
    for worker in workers {
        let (completed, failures) = worker.await.unwrap_or_else(|e| (0, vec![e.to_string()]));
        run.completed += completed;
        run.failed += failures.len();
        run.first_failure = run.first_failure.or(failures.into_iter().next());
    }
    run.elapsed = started.elapsed();
    run
}

/// `openssl s_server`, started on a free port of 127.0.0.1.
struct SServer {
    child: Child,
    address: SocketAddr,
    /// Kept open: s_server also reads its standard input, and a closed one would end it or make it spin.
    _stdin: Option<std::process::ChildStdin>,
    errors: std::path::PathBuf,
}

impl SServer {
    /// Kills it (it serves until then) and returns what it wrote to standard error.
    fn stop(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.errors).unwrap_or_default().lines().take(12).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// s_server as Callguard's listener is set up: the server certificate and key, the client's
/// certificate asked and verified against the CA (`-Verify 1`: the phone's LSC, issued by the CA),
/// TLS 1.2 and 1.3 as OpenSSL offers by default.
fn start_s_server(dir: &Path, ca: &ClusterCa, certificate_der: &[u8], key: &rsa::RsaPrivateKey) -> Result<SServer, String> {
    let (ca_file, certificate_file, key_file) = (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&ca_file, ca.certificate_pem()).map_err(|e| e.to_string())?;
    std::fs::write(&certificate_file, certificate_pem(certificate_der)).map_err(|e| e.to_string())?;
    std::fs::write(&key_file, keys::pkcs8_pem(key)).map_err(|e| e.to_string())?;
    let errors = dir.join("s_server.err");
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).map_err(|e| e.to_string())?;
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let path = |p: &Path| p.to_str().unwrap_or_default().to_string();
    let mut child = Command::new("openssl")
        // -quiet and -verify_quiet: no line printed per connection, as Callguard logs none.
        .args(["s_server", "-accept", &address.to_string(), "-quiet", "-verify_quiet"])
        .args(["-cert", &path(&certificate_file), "-key", &path(&key_file), "-CAfile", &path(&ca_file), "-Verify", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&errors).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("cannot start openssl s_server: {e}"))?;
    let stdin = child.stdin.take();
    Ok(SServer { child, address, _stdin: stdin, errors })
}
