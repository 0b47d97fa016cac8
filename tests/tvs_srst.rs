//! TVS (docs/wire-formats.md §8) and secure-SRST certificate capture (docs/wire-formats.md §9.2): conformance tests W-16 (TVS part),
//! W-17, W-18, N-12 and N-13 (docs/wire-formats.md §10), over real TLS on 127.0.0.1 as docs/wire-formats.md §8 and §9 describe them.
//! The expected bytes are the worked frames of docs/wire-formats.md §8; fingerprints are checked against the `openssl` CLI,
//! and the tests fail (do not skip) when it is missing.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use callguard::core::trust::codes::Role;
use callguard::services::srst::{
    ApprovalState, GatewayCertificate, InvalidSrstCertificate, Observation, SrstError, capture_certificate, certificate_from_pem,
    certificate_from_secret,
};
use callguard::services::tvs::{
    CertificateDirectory, CloseReason, Command as TvsCommand, ConnectionEnd, ConnectionReport, DirectoryError, Element, Frame,
    InvalidReason, ServerLimits, SessionNote, TvsServer, TvsSession, Verdict, VerifyStatus, serve_connection, tls_server_config,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use rcgen::{CertificateParams, CertifiedKey, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::{TlsAcceptor, TlsConnector};

// ---------------------------------------------------------------------------------------------------------
// Fixtures

/// The worked VERIFY_RESPONSE: session 7, STATUS 0, ROLES 01 07, TTL 86 400 (docs/wire-formats.md §8).
const SPEC_VERIFY_RESPONSE: [u8; 26] = [
    0x57, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x07, 0x00, 0x10, 0x07, 0x00, 0x01, 0x00, 0x08, 0x00, 0x02, 0x01, 0x07, 0x09, 0x00, 0x04,
    0x00, 0x01, 0x51, 0x80,
];
/// The worked invalid VERIFY_RESPONSE: session 7, STATUS 1 only (docs/wire-formats.md §8).
const SPEC_INVALID_RESPONSE: [u8; 14] = [0x57, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x07, 0x00, 0x04, 0x07, 0x00, 0x01, 0x01];
const SPEC_DEVICE_NAME: &str = "CP-8841-SEP001122334455";

fn self_signed(names: &[&str]) -> CertifiedKey<KeyPair> {
    rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("rcgen certificate")
}

/// The certificate TVS vouches for as CCM + APP-SERVER.
fn known_certificate() -> &'static CertifiedKey<KeyPair> {
    static CERT: OnceLock<CertifiedKey<KeyPair>> = OnceLock::new();
    CERT.get_or_init(|| self_signed(&["cucm1.voice.example"]))
}

/// A certificate TVS knows nothing about.
fn unknown_certificate() -> &'static CertifiedKey<KeyPair> {
    static CERT: OnceLock<CertifiedKey<KeyPair>> = OnceLock::new();
    CERT.get_or_init(|| self_signed(&["stranger.example"]))
}

/// The TVS server's own certificate (the TVS role lives in the ITL, not in the certificate).
fn tvs_certificate() -> &'static CertifiedKey<KeyPair> {
    static CERT: OnceLock<CertifiedKey<KeyPair>> = OnceLock::new();
    CERT.get_or_init(|| self_signed(&["localhost"]))
}

fn der(cert: &CertifiedKey<KeyPair>) -> Vec<u8> {
    cert.cert.der().to_vec()
}

fn private_key(cert: &CertifiedKey<KeyPair>) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()))
}

/// A directory with the known certificate as CCM + APP-SERVER (given out of order), default TTL.
fn directory() -> CertificateDirectory {
    let mut directory = CertificateDirectory::new();
    directory.insert(&der(known_certificate()), &[Role::AppServer, Role::Ccm], None).expect("known certificate is accepted");
    directory
}

/// An instant well inside rcgen's default validity (1975–4096).
fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_750_000_000).expect("valid timestamp")
}

/// A VERIFY_REQUEST laid out by hand from docs/wire-formats.md §8, independently of the encoder:
/// `57 01 01 00 <session id> <LL LL> 01 <len> 01 "name" 02 <DD DD> <DER>`.
fn verify_request_bytes(session_id: u32, device_name: &str, certificate: &[u8]) -> Vec<u8> {
    let name_len = 1 + device_name.len();
    let body_len = 3 + name_len + 3 + certificate.len();
    let mut bytes = vec![0x57, 0x01, 0x01, 0x00];
    bytes.extend(session_id.to_be_bytes());
    bytes.extend((body_len as u16).to_be_bytes());
    bytes.push(0x01);
    bytes.extend((name_len as u16).to_be_bytes());
    bytes.push(0x01);
    bytes.extend(device_name.as_bytes());
    bytes.push(0x02);
    bytes.extend((certificate.len() as u16).to_be_bytes());
    bytes.extend(certificate);
    bytes
}

fn openssl_fingerprint(der: &[u8], digest: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cert.der");
    std::fs::write(&path, der).expect("write certificate");
    let out = Command::new("openssl")
        .args(["x509", "-inform", "DER", "-noout", "-fingerprint", digest, "-in"])
        .arg(&path)
        .output()
        .expect("the openssl CLI must be installed for this test (/usr/bin/openssl)");
    assert!(out.status.success(), "openssl x509 failed: {}", String::from_utf8_lossy(&out.stderr));
    // "sha256 Fingerprint=AB:CD:..." (the prefix's case differs between OpenSSL versions).
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().split_once('=').map(|(_, value)| value.to_owned()).expect("openssl prints NAME=FINGERPRINT")
}

// ---------------------------------------------------------------------------------------------------------
// W-17: the protocol, without I/O

#[test]
fn w17_worked_verify_response_frames_encode_and_decode_byte_exact() {
    let valid = Frame {
        command: TvsCommand::VerifyResponse,
        session_id: 7,
        elements: vec![Element::Status(VerifyStatus::Valid), Element::Roles(vec![Role::Ccm, Role::AppServer]), Element::Ttl(86_400)],
    };
    assert_eq!(valid.encode().expect("encodes"), SPEC_VERIFY_RESPONSE);
    assert_eq!(Frame::decode(&SPEC_VERIFY_RESPONSE), Ok(valid));

    let invalid = Frame { command: TvsCommand::VerifyResponse, session_id: 7, elements: vec![Element::Status(VerifyStatus::Invalid)] };
    assert_eq!(invalid.encode().expect("encodes"), SPEC_INVALID_RESPONSE);
    assert_eq!(Frame::decode(&SPEC_INVALID_RESPONSE), Ok(invalid));
}

#[test]
fn w17_worked_verify_request_frame_encodes_and_decodes_byte_exact() {
    let certificate = der(known_certificate());
    let spec_bytes = verify_request_bytes(7, SPEC_DEVICE_NAME, &certificate);
    // The fixed prefix of docs/wire-formats.md §8: header up to the length, then DEVICE_NAME `01 00 18 01`.
    assert_eq!(&spec_bytes[..8], &[0x57, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x07]);
    assert_eq!(&spec_bytes[10..14], &[0x01, 0x00, 0x18, 0x01]);

    let frame = Frame {
        command: TvsCommand::VerifyRequest,
        session_id: 7,
        elements: vec![Element::device_name(SPEC_DEVICE_NAME), Element::Certificate(certificate.clone())],
    };
    assert_eq!(frame.encode().expect("encodes"), spec_bytes);
    let decoded = Frame::decode(&spec_bytes).expect("decodes");
    assert_eq!(decoded.device_name(), Some(SPEC_DEVICE_NAME));
    assert_eq!(decoded.certificates().collect::<Vec<_>>(), vec![certificate.as_slice()]);
    assert_eq!(decoded, frame);
}

#[test]
fn w17_known_certificate_gives_status_0_roles_01_07_and_ttl() {
    let mut session = TvsSession::new();
    let output = session.receive(&verify_request_bytes(7, SPEC_DEVICE_NAME, &der(known_certificate())), &directory(), now());
    assert_eq!(output.responses, vec![SPEC_VERIFY_RESPONSE.to_vec()]);
    assert_eq!(output.close, None);
    assert!(!output.notes.iter().any(|note| matches!(note, SessionNote::UnexpectedDeviceName { .. })));
}

#[test]
fn w17_unknown_certificate_gives_status_1_only() {
    let mut session = TvsSession::new();
    let output = session.receive(&verify_request_bytes(7, SPEC_DEVICE_NAME, &der(unknown_certificate())), &directory(), now());
    assert_eq!(output.responses, vec![SPEC_INVALID_RESPONSE.to_vec()]);
    let verdicts: Vec<&Verdict> = output
        .notes
        .iter()
        .filter_map(|note| match note {
            SessionNote::Answered { verdict, .. } => Some(verdict),
            _ => None,
        })
        .collect();
    assert_eq!(verdicts, vec![&Verdict::Invalid(InvalidReason::Unknown)]);
}

#[test]
fn w17_session_id_is_echoed() {
    let directory = directory();
    let mut session = TvsSession::new();
    let ids = [0u32, 7, 0x0102_0304, 0xDEAD_BEEF, u32::MAX];
    let mut input = Vec::new();
    for (index, id) in ids.iter().enumerate() {
        let certificate = if index % 2 == 0 { der(known_certificate()) } else { der(unknown_certificate()) };
        input.extend(verify_request_bytes(*id, SPEC_DEVICE_NAME, &certificate));
    }
    let output = session.receive(&input, &directory, now());
    assert_eq!(output.responses.len(), ids.len());
    for (response, id) in output.responses.iter().zip(ids) {
        assert_eq!(&response[4..8], &id.to_be_bytes(), "session id bytes 4..8 echo the request");
        assert_eq!(Frame::decode(response).expect("decodes").session_id, id);
    }
}

#[test]
fn w17_ttl_is_capped_at_the_seconds_left_until_not_after() {
    let not_after = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("valid timestamp");
    let mut params = CertificateParams::new(vec!["short-lived.example".to_string()]).expect("params");
    params.not_before = not_after - time::Duration::days(30);
    params.not_after = not_after;
    let key = KeyPair::generate().expect("key");
    let certificate = params.self_signed(&key).expect("certificate").der().to_vec();

    let mut directory = CertificateDirectory::new();
    directory.insert(&certificate, &[Role::Tftp], None).expect("accepted");
    // One hour left: TTL 3 600 instead of the default 86 400.
    assert_eq!(
        directory.verify(&certificate, not_after - time::Duration::hours(1)),
        Verdict::Valid { roles: vec![Role::Tftp], ttl_seconds: 3_600 }
    );
    // Ten days left: the default applies.
    assert_eq!(
        directory.verify(&certificate, not_after - time::Duration::days(10)),
        Verdict::Valid { roles: vec![Role::Tftp], ttl_seconds: 86_400 }
    );
    // Expired, and not yet valid: STATUS 1.
    assert_eq!(directory.verify(&certificate, not_after + time::Duration::seconds(1)), Verdict::Invalid(InvalidReason::Expired));
    assert_eq!(directory.verify(&certificate, not_after), Verdict::Invalid(InvalidReason::Expired));
    assert_eq!(directory.verify(&certificate, not_after - time::Duration::days(31)), Verdict::Invalid(InvalidReason::NotYetValid));

    // The cap reaches the wire: TTL 00 00 0E 10.
    let mut session = TvsSession::new();
    let output =
        session.receive(&verify_request_bytes(9, SPEC_DEVICE_NAME, &certificate), &directory, not_after - time::Duration::hours(1));
    let response = Frame::decode(&output.responses[0]).expect("decodes");
    assert_eq!(response.elements.last(), Some(&Element::Ttl(3_600)));
    assert!(output.responses[0].ends_with(&[0x09, 0x00, 0x04, 0x00, 0x00, 0x0E, 0x10]));
}

#[test]
fn w17_ttl_range_is_1_to_2_592_000_seconds() {
    let certificate = der(known_certificate());
    let mut directory = CertificateDirectory::new();
    assert_eq!(directory.insert(&certificate, &[Role::Ccm], Some(0)), Err(DirectoryError::TtlOutOfRange(0)));
    assert_eq!(directory.insert(&certificate, &[Role::Ccm], Some(2_592_001)), Err(DirectoryError::TtlOutOfRange(2_592_001)));
    assert!(directory.is_empty());
    directory.insert(&certificate, &[Role::Ccm], Some(1)).expect("1 s is allowed");
    assert_eq!(directory.verify(&certificate, now()), Verdict::Valid { roles: vec![Role::Ccm], ttl_seconds: 1 });
    directory.insert(&certificate, &[Role::Ccm], Some(2_592_000)).expect("30 days is allowed");
    assert_eq!(directory.verify(&certificate, now()), Verdict::Valid { roles: vec![Role::Ccm], ttl_seconds: 2_592_000 });
    assert_eq!(directory.len(), 1, "inserting again replaces");
    assert_eq!(directory.insert(&certificate, &[Role::Unknown(300)], None), Err(DirectoryError::RoleNotEncodable(300)));
    assert_eq!(directory.insert(&certificate, &[], None), Err(DirectoryError::NoRoles));
}

#[test]
fn w17_lookup_is_by_exact_sha256_of_the_der() {
    let mut certificate = der(known_certificate());
    let directory = directory();
    // The same certificate with one signature bit flipped is another certificate.
    let last = certificate.len() - 1;
    certificate[last] ^= 0x01;
    assert_eq!(directory.verify(&certificate, now()), Verdict::Invalid(InvalidReason::Unknown));
}

// ---------------------------------------------------------------------------------------------------------
// N-12: closes without a response (pure session; the TLS versions follow below)

#[test]
fn n12_header_version_2_closes_without_response() {
    let mut request = verify_request_bytes(7, SPEC_DEVICE_NAME, &der(known_certificate()));
    request[1] = 0x02;
    let mut session = TvsSession::new();
    let output = session.receive(&request, &directory(), now());
    assert!(output.responses.is_empty());
    assert_eq!(output.close, Some(CloseReason::UnsupportedVersion(2)));
}

#[test]
fn n12_truncated_body_closes_without_response() {
    let request = verify_request_bytes(7, SPEC_DEVICE_NAME, &der(known_certificate()));
    let mut session = TvsSession::new();
    assert!(session.receive(&request[..request.len() - 10], &directory(), now()).responses.is_empty());
    let output = session.end_of_input();
    assert!(output.responses.is_empty());
    assert_eq!(output.close, Some(CloseReason::Truncated { needed: request.len(), received: request.len() - 10 }));

    // A complete body whose CERTIFICATE element claims more bytes than the body holds.
    let mut request = verify_request_bytes(7, SPEC_DEVICE_NAME, b"0123456789");
    let certificate_length_at = request.len() - 12;
    request[certificate_length_at] = 0x7F;
    let output = TvsSession::new().receive(&request, &directory(), now());
    assert!(output.responses.is_empty());
    assert!(matches!(output.close, Some(CloseReason::MalformedBody(_))), "{:?}", output.close);
}

// ---------------------------------------------------------------------------------------------------------
// W-16: one write per response, on a transport that counts writes

/// Serves scripted reads (then EOF) and records every write call.
struct CountingTransport {
    reads: VecDeque<Vec<u8>>,
    writes: Arc<Mutex<Vec<Vec<u8>>>>,
    shut_down: Arc<Mutex<bool>>,
}

impl AsyncRead for CountingTransport {
    fn poll_read(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some(mut chunk) = self.reads.pop_front() {
            let take = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..take]);
            if take < chunk.len() {
                let rest = chunk.split_off(take);
                self.reads.push_front(rest);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for CountingTransport {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.writes.lock().expect("writes").push(buf.to_vec());
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        *self.shut_down.lock().expect("shutdown flag") = true;
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn w16_tvs_each_response_is_one_write() {
    let known = der(known_certificate());
    let unknown = der(unknown_certificate());
    let mut input = verify_request_bytes(1, SPEC_DEVICE_NAME, &known);
    input.extend(verify_request_bytes(2, SPEC_DEVICE_NAME, &unknown));
    input.extend(verify_request_bytes(3, SPEC_DEVICE_NAME, &known));
    // Reads that split frames anywhere: the responses must still not be split.
    let reads: VecDeque<Vec<u8>> = input.chunks(7).map(<[u8]>::to_vec).collect();
    let writes = Arc::new(Mutex::new(Vec::new()));
    let shut_down = Arc::new(Mutex::new(false));
    let transport = CountingTransport { reads, writes: writes.clone(), shut_down: shut_down.clone() };
    let (_keep, directory) = watch::channel(Arc::new(directory()));

    let report = serve_connection(transport, &directory, &ServerLimits::default()).await;

    let writes = writes.lock().expect("writes").clone();
    assert_eq!(writes.len(), 3, "exactly one write per response");
    for (write, session_id) in writes.iter().zip([1u32, 2, 3]) {
        let frame = Frame::decode(write).expect("each write is one whole frame");
        assert_eq!(frame.session_id, session_id);
    }
    assert_eq!(writes[1], SPEC_INVALID_RESPONSE.iter().copied().enumerate().map(|(i, b)| if i == 7 { 2 } else { b }).collect::<Vec<u8>>());
    assert_eq!(report.responses_sent, 3);
    assert_eq!(report.end, ConnectionEnd::Session(CloseReason::EndOfInput));
    assert!(*shut_down.lock().expect("shutdown flag"), "the connection is shut down at the end");
}

// ---------------------------------------------------------------------------------------------------------
// Over real TLS (W-16, W-17, N-12)

struct RunningTvs {
    address: SocketAddr,
    reports: mpsc::UnboundedReceiver<ConnectionReport>,
    _directory: watch::Sender<Arc<CertificateDirectory>>,
}

async fn start_tvs() -> RunningTvs {
    let tls = tls_server_config(vec![tvs_certificate().cert.der().clone()], private_key(tvs_certificate())).expect("TLS config");
    let (directory_sender, directory) = watch::channel(Arc::new(directory()));
    let (report_sender, reports) = mpsc::unbounded_channel();
    let server = TvsServer::bind("127.0.0.1:0".parse().expect("address"), tls, directory).await.expect("bind").with_reports(report_sender);
    let address = server.local_addr().expect("local address");
    tokio::spawn(server.run());
    RunningTvs { address, reports, _directory: directory_sender }
}

/// A phone-like client that trusts the TVS certificate (as a phone trusts the ITL's TVS record).
async fn phone(address: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = RootCertStore::empty();
    roots.add(tvs_certificate().cert.der().clone()).expect("trust anchor");
    let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(address).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("server name");
    TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("TLS handshake with TVS")
}

async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut header = [0u8; 10];
    stream.read_exact(&mut header).await.expect("response header");
    let body_len = usize::from(u16::from_be_bytes([header[8], header[9]]));
    let mut frame = header.to_vec();
    frame.resize(10 + body_len, 0);
    stream.read_exact(&mut frame[10..]).await.expect("response body");
    frame
}

async fn next_report(tvs: &mut RunningTvs) -> ConnectionReport {
    tokio::time::timeout(Duration::from_secs(5), tvs.reports.recv()).await.expect("report in time").expect("server running")
}

#[tokio::test]
async fn w17_over_tls_known_then_unknown_certificate_in_one_connection() {
    let mut tvs = start_tvs().await;
    let mut stream = phone(tvs.address).await;
    stream.write_all(&verify_request_bytes(7, SPEC_DEVICE_NAME, &der(known_certificate()))).await.expect("send");
    assert_eq!(read_frame(&mut stream).await, SPEC_VERIFY_RESPONSE);
    stream.write_all(&verify_request_bytes(7, SPEC_DEVICE_NAME, &der(unknown_certificate()))).await.expect("send");
    assert_eq!(read_frame(&mut stream).await, SPEC_INVALID_RESPONSE);

    // EOF from the phone: the server closes cleanly (close_notify) and sends nothing more.
    stream.shutdown().await.expect("close_notify");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.expect("clean close from the server");
    assert!(rest.is_empty());
    let report = next_report(&mut tvs).await;
    assert_eq!(report.responses_sent, 2);
    assert_eq!(report.end, ConnectionEnd::Session(CloseReason::EndOfInput));
}

#[tokio::test]
async fn n12_over_tls_header_version_2_closes_without_response() {
    let mut tvs = start_tvs().await;
    let mut stream = phone(tvs.address).await;
    let mut request = verify_request_bytes(7, SPEC_DEVICE_NAME, &der(known_certificate()));
    request[1] = 0x02;
    stream.write_all(&request).await.expect("send");
    let mut received = Vec::new();
    stream.read_to_end(&mut received).await.expect("the server closes with close_notify");
    assert!(received.is_empty(), "no response to a version-2 header");
    let report = next_report(&mut tvs).await;
    assert_eq!((report.responses_sent, report.end), (0, ConnectionEnd::Session(CloseReason::UnsupportedVersion(2))));
}

#[tokio::test]
async fn n12_over_tls_truncated_body_closes_without_response() {
    let mut tvs = start_tvs().await;
    let mut stream = phone(tvs.address).await;
    let request = verify_request_bytes(7, SPEC_DEVICE_NAME, &der(known_certificate()));
    stream.write_all(&request[..request.len() / 2]).await.expect("send half");
    stream.shutdown().await.expect("close_notify after half a frame");
    let mut received = Vec::new();
    stream.read_to_end(&mut received).await.expect("the server closes with close_notify");
    assert!(received.is_empty(), "no response to a truncated body");
    let report = next_report(&mut tvs).await;
    assert_eq!(report.responses_sent, 0);
    assert_eq!(report.end, ConnectionEnd::Session(CloseReason::Truncated { needed: request.len(), received: request.len() / 2 }));
}

#[tokio::test]
async fn n12_over_tls_element_overrunning_the_body_closes_without_response() {
    let mut tvs = start_tvs().await;
    let mut stream = phone(tvs.address).await;
    // Header and body complete, but DEVICE_NAME announces 0x40 bytes inside a 10-byte body.
    let request = [0x57, 0x01, 0x01, 0x00, 0, 0, 0, 7, 0x00, 0x0A, 0x01, 0x00, 0x40, 0x01, b'C', b'P', b'-', b'8', b'8', b'4'];
    stream.write_all(&request).await.expect("send");
    let mut received = Vec::new();
    stream.read_to_end(&mut received).await.expect("the server closes with close_notify");
    assert!(received.is_empty());
    assert!(matches!(next_report(&mut tvs).await.end, ConnectionEnd::Session(CloseReason::MalformedBody(_))));
}

/// Counts the write calls a TLS stream makes on its TCP socket, from the moment `counting` is set.
struct CountingTcp {
    inner: TcpStream,
    writes: Arc<Mutex<usize>>,
    counting: Arc<Mutex<bool>>,
}

impl CountingTcp {
    fn count(&self) {
        if *self.counting.lock().expect("flag") {
            *self.writes.lock().expect("count") += 1;
        }
    }
}

impl AsyncRead for CountingTcp {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountingTcp {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if result.is_ready() {
            self.count();
        }
        result
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if result.is_ready() {
            self.count();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn w16_over_tls_each_response_is_one_socket_write() {
    // No TLS 1.3 session tickets: they would be socket writes of their own after the handshake.
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![tvs_certificate().cert.der().clone()], private_key(tvs_certificate()))
        .expect("server config");
    config.send_tls13_tickets = 0;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let writes = Arc::new(Mutex::new(0usize));
    let counting = Arc::new(Mutex::new(false));
    let (server_writes, server_counting) = (writes.clone(), counting.clone());
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let tcp = CountingTcp { inner: tcp, writes: server_writes, counting: server_counting.clone() };
        let tls = acceptor.accept(tcp).await.expect("handshake");
        *server_counting.lock().expect("flag") = true;
        let (_keep, directory) = watch::channel(Arc::new(directory()));
        serve_connection(tls, &directory, &ServerLimits::default()).await
    });

    let mut stream = phone(address).await;
    for session_id in 1..=3u32 {
        stream.write_all(&verify_request_bytes(session_id, SPEC_DEVICE_NAME, &der(known_certificate()))).await.expect("send");
        let response = read_frame(&mut stream).await;
        assert_eq!(Frame::decode(&response).expect("decodes").session_id, session_id);
        assert_eq!(*writes.lock().expect("count"), session_id as usize, "one socket write per response so far");
    }
    stream.shutdown().await.expect("close_notify");
    let report = server.await.expect("server task");
    assert_eq!(report.responses_sent, 3);
}

// ---------------------------------------------------------------------------------------------------------
// W-18 and N-13: secure SRST

/// A gateway's Certificate Provider: completes one TLS handshake, then waits for close_notify. Returns the SNI
/// the client sent and whether the close was clean.
async fn start_gateway(config: ServerConfig) -> (SocketAddr, tokio::task::JoinHandle<(Option<String>, bool)>) {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        match acceptor.accept(tcp).await {
            Ok(mut tls) => {
                let sni = tls.get_ref().1.server_name().map(str::to_owned);
                let mut rest = Vec::new();
                // Ok only when the client ended with close_notify.
                let clean = tls.read_to_end(&mut rest).await.is_ok() && rest.is_empty();
                (sni, clean)
            }
            Err(_) => (None, false),
        }
    });
    (address, task)
}

fn gateway_config(cert: &CertifiedKey<KeyPair>) -> ServerConfig {
    ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], private_key(cert))
        .expect("gateway config")
}

fn gateway_certificate() -> &'static CertifiedKey<KeyPair> {
    static CERT: OnceLock<CertifiedKey<KeyPair>> = OnceLock::new();
    CERT.get_or_init(|| self_signed(&["srst-gw1.branch.example", "localhost"]))
}

#[tokio::test]
async fn w18_capture_records_the_gateway_certificate_without_sni_for_an_ip_literal() {
    let (address, gateway) = start_gateway(gateway_config(gateway_certificate())).await;
    let captured = capture_certificate("127.0.0.1", address.port(), Duration::from_secs(5)).await.expect("capture");
    assert_eq!(captured, der(gateway_certificate()), "the captured DER is the gateway's certificate");
    let (sni, clean_close) = gateway.await.expect("gateway task");
    assert_eq!(sni, None, "no SNI for an IP literal");
    assert!(clean_close, "the capture ends with close_notify");
}

#[tokio::test]
async fn w18_capture_by_host_name_sends_sni() {
    let (address, gateway) = start_gateway(gateway_config(gateway_certificate())).await;
    let captured = capture_certificate("localhost", address.port(), Duration::from_secs(5)).await.expect("capture");
    assert_eq!(captured, der(gateway_certificate()));
    assert_eq!(gateway.await.expect("gateway task").0.as_deref(), Some("localhost"));
}

#[tokio::test]
async fn w18_captured_certificate_stays_pending_until_approved_with_its_sha256() {
    let (address, _gateway) = start_gateway(gateway_config(gateway_certificate())).await;
    let captured = capture_certificate("127.0.0.1", address.port(), Duration::from_secs(5)).await.expect("capture");
    let mut certificate = GatewayCertificate::pending(captured.clone()).expect("a certificate");
    assert_eq!(certificate.state(), ApprovalState::Pending);

    // The fingerprints shown are the ones openssl computes.
    let openssl_sha256 = openssl_fingerprint(&captured, "-sha256");
    let openssl_sha1 = openssl_fingerprint(&captured, "-sha1");
    assert_eq!(certificate.sha256_fingerprint(), openssl_sha256.replace(':', "").to_lowercase());
    assert_eq!(certificate.sha1_fingerprint(), openssl_sha1.replace(':', "").to_lowercase());

    // Seeing the same certificate again approves nothing.
    assert_eq!(certificate.observe(captured.clone()), Ok(Observation::Unchanged));
    assert!(!certificate.is_active());

    // The administrator pastes openssl's fingerprint, colons and upper case included.
    certificate.approve(&openssl_sha256).expect("matching fingerprint approves");
    assert_eq!(certificate.state(), ApprovalState::Active);
    assert_eq!(certificate.observe(captured), Ok(Observation::Unchanged));
    assert!(certificate.is_active(), "the same certificate stays active");

    // A changed certificate on the gateway returns to pending.
    let (address, _gateway) = start_gateway(gateway_config(unknown_certificate())).await;
    let changed = capture_certificate("127.0.0.1", address.port(), Duration::from_secs(5)).await.expect("capture");
    assert_eq!(certificate.observe(changed.clone()), Ok(Observation::Replaced));
    assert_eq!(certificate.state(), ApprovalState::Pending);
    assert_eq!(certificate.der(), changed.as_slice());
    // The old approval does not carry over.
    assert!(matches!(certificate.approve(&openssl_sha256), Err(SrstError::FingerprintMismatch { .. })));
    assert_eq!(certificate.state(), ApprovalState::Pending);

    let summary = certificate.summary().expect("summary");
    assert_eq!(summary.sha256, certificate.sha256_fingerprint());
}

#[tokio::test]
async fn w18_capture_survives_a_gateway_that_demands_a_client_certificate() {
    // The gateway signs with its key, then refuses the handshake because the client sent no certificate.
    let mut roots = RootCertStore::empty();
    roots.add(unknown_certificate().cert.der().clone()).expect("client CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().expect("verifier");
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(vec![gateway_certificate().cert.der().clone()], private_key(gateway_certificate()))
        .expect("gateway config");
    let (address, _gateway) = start_gateway(config).await;
    let captured = capture_certificate("127.0.0.1", address.port(), Duration::from_secs(5)).await.expect("capture");
    assert_eq!(captured, der(gateway_certificate()));
}

#[tokio::test]
async fn w18_silent_gateway_times_out_and_closed_port_fails_to_connect() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    // Accepts TCP, reads the first bytes of the ClientHello and never answers; it holds the connection
    // until the test has seen the outcome, however long that takes.
    let (hello, heard) = tokio::sync::oneshot::channel();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let silent = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        let mut record_header = [0u8; 3];
        let read = tcp.read_exact(&mut record_header).await.map(|_| record_header);
        let _ = hello.send(read.ok());
        let _ = released.await;
    });
    let timeout = Duration::from_secs(1);
    let started = tokio::time::Instant::now();
    let capture = tokio::time::timeout(timeout * 10, capture_certificate("127.0.0.1", port, timeout));
    let result = capture.await.expect("the capture gives up by itself");
    assert!(matches!(&result, Err(SrstError::Timeout { after, .. }) if *after == timeout), "{result:?}");
    assert!(started.elapsed() >= timeout, "not before the timeout: {:?}", started.elapsed());
    // The capture reached the gateway and sent its ClientHello: a TLS 1.x handshake record (type 22).
    let record = heard.await.expect("the gateway ran");
    assert!(record.is_some_and(|[kind, major, _]| kind == 0x16 && major == 0x03), "a handshake record from the capture: {record:?}");
    let _ = release.send(());
    silent.await.expect("the gateway task");

    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let closed_port = closed.local_addr().expect("address").port();
    drop(closed);
    let result = capture_certificate("127.0.0.1", closed_port, Duration::from_secs(5)).await;
    assert!(matches!(result, Err(SrstError::Connect { .. })), "{result:?}");
    assert!(matches!(capture_certificate("not a host!", 2445, Duration::from_secs(1)).await, Err(SrstError::InvalidHost(_))));
}

fn secret_with(entries: &[(&str, String)]) -> Secret {
    let data: BTreeMap<String, ByteString> =
        entries.iter().map(|(key, value)| (key.to_string(), ByteString(value.as_bytes().to_vec()))).collect();
    Secret { data: Some(data), ..Secret::default() }
}

#[test]
fn n13_secret_with_two_certificates_is_invalid_srst_certificate() {
    let two = format!("{}{}", gateway_certificate().cert.pem(), unknown_certificate().cert.pem());
    let expected = Err(SrstError::InvalidSrstCertificate(InvalidSrstCertificate::SeveralCertificates(2)));
    assert_eq!(certificate_from_secret(&secret_with(&[("tls.crt", two.clone())])), expected);
    assert_eq!(certificate_from_pem(&two), expected);
}

#[test]
fn n13_secret_with_a_private_key_is_invalid_srst_certificate() {
    let certificate = gateway_certificate().cert.pem();
    let key = gateway_certificate().signing_key.serialize_pem();
    let expected = Err(SrstError::InvalidSrstCertificate(InvalidSrstCertificate::PrivateKey));
    // The key in tls.crt, or beside it as a kubernetes.io/tls Secret's tls.key.
    assert_eq!(certificate_from_secret(&secret_with(&[("tls.crt", format!("{certificate}{key}"))])), expected);
    assert_eq!(certificate_from_secret(&secret_with(&[("tls.crt", certificate.clone()), ("tls.key", key)])), expected);
}

#[test]
fn n13_secret_with_exactly_one_certificate_is_accepted_and_pending() {
    let secret = secret_with(&[("tls.crt", gateway_certificate().cert.pem())]);
    let der_from_secret = certificate_from_secret(&secret).expect("one certificate");
    assert_eq!(der_from_secret, der(gateway_certificate()));
    let certificate = GatewayCertificate::pending(der_from_secret).expect("certificate");
    assert_eq!(certificate.state(), ApprovalState::Pending);
}

#[test]
fn n13_wrong_fingerprint_approval_leaves_the_certificate_pending() {
    let mut certificate = GatewayCertificate::pending(der(gateway_certificate())).expect("certificate");
    // The SHA-256 of another certificate: well formed, wrong.
    let other = GatewayCertificate::pending(der(unknown_certificate())).expect("certificate");
    let result = certificate.approve(other.sha256_fingerprint());
    assert_eq!(
        result,
        Err(SrstError::FingerprintMismatch {
            expected: certificate.sha256_fingerprint().to_owned(),
            given: other.sha256_fingerprint().to_owned()
        })
    );
    assert_eq!(certificate.state(), ApprovalState::Pending);
    // The SHA-1 fingerprint is not an approval either.
    let sha1 = certificate.sha1_fingerprint().to_owned();
    assert_eq!(certificate.approve(&sha1), Err(SrstError::MalformedFingerprint(sha1.clone())));
    assert_eq!(certificate.state(), ApprovalState::Pending);
    let message = result.expect_err("mismatch").to_string();
    assert!(message.contains("docs/wire-formats.md §9.2"), "{message}");
}
