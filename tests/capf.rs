//! CAPF conformance (docs/wire-formats.md §7, §10): the worked frames (W-14), sessions over real TLS against a scripted phone
//! (W-15), one write per message (W-16) and the negative cases (N-11).
//! The LSC check runs `openssl verify`; it fails, does not skip, when `openssl` is missing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Command as Process;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use callguard::api::{CapfAuthenticationMode, KeySize};
use callguard::core::pki::ca::{CaSettings, ClusterCa, certificate_pem};
use callguard::core::pki::inspect::EcCurve;
use callguard::core::pki::issue::{
    IssuedServerCertificate, LscKeySource, LscRequest, PhoneKey, ServerCertificateRequest, ServerRole, issue_lsc,
    issue_server_certificate_with_new_key,
};
use callguard::core::pki::keys;
use callguard::core::pki::serial::Serial;
use callguard::services::capf::AuthError;
use callguard::services::capf::auth::TrustAnchors;
use callguard::services::capf::frame::{
    AuthType, Body, CertificateElement, CertificateType, Command, Curve, Frame, FrameHeader, HEADER_LEN, KeyType, Password, Reason,
    Sha2SignedData, SudiData,
};
use callguard::services::capf::server::{CapfServer, ConnectionReport, Timeouts, run_session, serve_connection, tls_acceptor};
use callguard::services::capf::session::{
    CapfContext, DeviceRecord, FailureReason, Outcome, RequestedKey, ScheduledOperation, Session, SessionConfig,
};
use md5::Md5;
use rsa::pkcs8::EncodePublicKey;
use rsa::{Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use sha1::{Digest, Sha1};
use sha2::Sha512;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const DEVICE: &str = "SEP001122334455";
const CAPF_HOST: &str = "capf.voice.example";
const PASSWORD: &str = "4711";

// ---------------------------------------------------------------------------------------------------------------
// Fixtures, made once per test binary.

fn ca() -> &'static ClusterCa {
    static CA: OnceLock<ClusterCa> = OnceLock::new();
    // Real time: the TLS client checks the CAPF certificate's validity against the clock.
    CA.get_or_init(|| ClusterCa::generate(&CaSettings::new("cucm-lab", "voice"), OffsetDateTime::now_utc()).unwrap())
}

/// The CAPF function certificate, RSA 2048, issued by the cluster CA.
fn capf_identity() -> &'static IssuedServerCertificate {
    static ID: OnceLock<IssuedServerCertificate> = OnceLock::new();
    ID.get_or_init(|| {
        let request = ServerCertificateRequest {
            role: ServerRole::Capf,
            hostname: CAPF_HOST.into(),
            ip_address: None,
            validity_days: 365,
            serial: Serial::random(&mut rand::thread_rng()),
            now: OffsetDateTime::now_utc(),
            legacy_signer_keys: false,
        };
        issue_server_certificate_with_new_key(ca(), &request).unwrap()
    })
}

fn rsa_key(bits: usize) -> &'static RsaPrivateKey {
    static KEYS: OnceLock<Mutex<HashMap<usize, &'static RsaPrivateKey>>> = OnceLock::new();
    let mut keys = KEYS.get_or_init(Default::default).lock().unwrap();
    keys.entry(bits).or_insert_with(|| Box::leak(Box::new(keys::generate_rsa(bits))))
}

fn p384_pkcs8() -> &'static Vec<u8> {
    static KEY: OnceLock<Vec<u8>> = OnceLock::new();
    KEY.get_or_init(|| rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap().serialize_der())
}

/// A self-made manufacturing CA standing in for Cisco's: the MIC bundle of mode 4.
struct MicCa {
    der: Vec<u8>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

fn make_mic_ca(name: &str) -> MicCa {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let der = params.self_signed(&key).unwrap().der().to_vec();
    MicCa { der, issuer: rcgen::Issuer::new(params, key) }
}

fn mic_ca() -> &'static MicCa {
    static CA: OnceLock<MicCa> = OnceLock::new();
    CA.get_or_init(|| make_mic_ca("Test Manufacturing CA"))
}

fn issue_mic(ca: &MicCa, common_name: &str, spki: &[u8]) -> Vec<u8> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    let key = rcgen::SubjectPublicKeyInfo::from_der(spki).unwrap();
    params.signed_by(&key, &ca.issuer).unwrap().der().to_vec()
}

fn issue_test_lsc(device_name: &str, spki: &[u8]) -> Vec<u8> {
    let request = LscRequest {
        device_name,
        key: LscKeySource::PublicKey(spki),
        validity_days: 365,
        serial: Serial::random(&mut rand::thread_rng()),
        now: OffsetDateTime::now_utc(),
    };
    issue_lsc(ca(), &request).unwrap().certificate_der
}

// ---------------------------------------------------------------------------------------------------------------
// The phone's key and signatures (docs/wire-formats.md §7.7), made independently of the server's verifier.

#[derive(Clone)]
enum PhoneKeyPair {
    Rsa(&'static RsaPrivateKey),
    Ec { pkcs8: Vec<u8> },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SignatureForm {
    /// PKCS#1 v1.5 padding around the bare hash.
    RawHash,
    /// PKCS#1 v1.5 padding around DigestInfo(hash).
    DigestInfo,
}

#[derive(Clone, Copy)]
enum HashKind {
    Sha1,
    Sha512,
}

impl PhoneKeyPair {
    fn rsa(bits: usize) -> PhoneKeyPair {
        PhoneKeyPair::Rsa(rsa_key(bits))
    }

    fn p384() -> PhoneKeyPair {
        PhoneKeyPair::Ec { pkcs8: p384_pkcs8().clone() }
    }

    fn spki(&self) -> Vec<u8> {
        match self {
            PhoneKeyPair::Rsa(key) => RsaPublicKey::from(*key).to_public_key_der().unwrap().as_bytes().to_vec(),
            PhoneKeyPair::Ec { pkcs8 } => {
                let pkey = openssl::pkey::PKey::private_key_from_pkcs8(pkcs8).unwrap();
                pkey.public_key_to_der().unwrap()
            }
        }
    }

    fn sign(&self, hash: HashKind, form: SignatureForm, data: &[u8]) -> Vec<u8> {
        match self {
            PhoneKeyPair::Rsa(key) => {
                let (digest, prefixed) = match hash {
                    HashKind::Sha1 => (Sha1::digest(data).to_vec(), Pkcs1v15Sign::new::<Sha1>()),
                    HashKind::Sha512 => (Sha512::digest(data).to_vec(), Pkcs1v15Sign::new::<Sha512>()),
                };
                let scheme = if form == SignatureForm::RawHash { Pkcs1v15Sign::new_unprefixed() } else { prefixed };
                key.sign(scheme, &digest).unwrap()
            }
            PhoneKeyPair::Ec { pkcs8 } => {
                let pkey = openssl::pkey::PKey::private_key_from_pkcs8(pkcs8).unwrap();
                let md = match hash {
                    HashKind::Sha1 => openssl::hash::MessageDigest::sha1(),
                    HashKind::Sha512 => openssl::hash::MessageDigest::sha512(),
                };
                openssl::sign::Signer::new(md, &pkey).unwrap().sign_oneshot_to_vec(data).unwrap()
            }
        }
    }
}

/// `device name ‖ 00 ‖ certificate DER` (docs/wire-formats.md §7.7).
fn auth_data(device_name: &str, der: &[u8]) -> Vec<u8> {
    let mut data = device_name.as_bytes().to_vec();
    data.push(0);
    data.extend_from_slice(der);
    data
}

// ---------------------------------------------------------------------------------------------------------------
// The scripted phone.

#[derive(Clone)]
enum Credentials {
    Nothing,
    Password(String),
    Certificate {
        der: Vec<u8>,
        kind: CertificateType,
        /// The name the signatures cover; DEVICE unless a test forges it.
        signed_name: String,
        sha2_hash_code: u8,
        form: SignatureForm,
    },
}

#[derive(Clone)]
struct Phone {
    device_name: String,
    version: u8,
    credentials: Credentials,
    key: PhoneKeyPair,
    /// Returned instead of the key's own SPKI.
    returned_spki: Option<Vec<u8>>,
    requests_in_progress: usize,
    /// What FETCH returns.
    held_certificate: Option<Vec<u8>>,
    /// Added to the session id in AUTH_RESPONSE.
    session_id_offset: u32,
    protocol_id: u8,
    sudi: Option<SudiData>,
}

impl Phone {
    fn new(key: PhoneKeyPair, credentials: Credentials) -> Phone {
        Phone {
            device_name: DEVICE.into(),
            version: 3,
            credentials,
            key,
            returned_spki: None,
            requests_in_progress: 0,
            held_certificate: None,
            session_id_offset: 0,
            protocol_id: 0x55,
            sudi: None,
        }
    }

    fn auth_response(&self, session_id: u32) -> Frame {
        let mut body = Body {
            reason: Some(Reason::Success),
            version: Some(self.version),
            device_name: Some(self.device_name.clone()),
            ..Body::default()
        };
        match &self.credentials {
            Credentials::Nothing => {}
            Credentials::Password(text) => body.password = Some(Password::new(text)),
            Credentials::Certificate { der, kind, signed_name, sha2_hash_code, form } => {
                let data = auth_data(signed_name, der);
                body.certificate = Some(CertificateElement::new(*kind, der.clone()));
                body.signed_data = Some(self.key.sign(HashKind::Sha1, *form, &data));
                body.sha2_signed_data =
                    Some(Sha2SignedData { hash_code: *sha2_hash_code, signature: self.key.sign(HashKind::Sha512, *form, &data) });
            }
        }
        body.sudi_data = self.sudi.as_ref().map(|sudi| sudi.encode().unwrap());
        Frame::new(Command::AuthResponse, session_id.wrapping_add(self.session_id_offset), body)
    }
}

/// What the phone saw.
#[derive(Debug, Default)]
struct Transcript {
    received: Vec<Frame>,
    end_reason: Option<Reason>,
    /// The server closed the connection after END_SESSION.
    closed_after_end: bool,
    stored: Option<CertificateElement>,
    session_id: u32,
}

impl Transcript {
    fn commands(&self) -> Vec<Command> {
        self.received.iter().map(|f| f.command).collect()
    }
}

async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Frame> {
    let mut header = [0u8; HEADER_LEN];
    stream.read_exact(&mut header).await.ok()?;
    let parsed = FrameHeader::decode(&header).expect("the server sends 0x55 frames");
    let mut bytes = header.to_vec();
    bytes.resize(HEADER_LEN + usize::from(parsed.body_len), 0);
    stream.read_exact(&mut bytes[HEADER_LEN..]).await.ok()?;
    Some(Frame::decode(&bytes).expect("the server sends well-formed frames"))
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, frame: &Frame) {
    stream.write_all(&frame.encode().unwrap()).await.unwrap();
    stream.flush().await.unwrap();
}

async fn play<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, phone: &Phone) -> Transcript {
    let mut transcript = Transcript::default();
    let request = read_frame(stream).await.expect("the server speaks first (docs/wire-formats.md §7.1)");
    transcript.session_id = request.session_id;
    transcript.received.push(request);
    let mut bytes = phone.auth_response(transcript.session_id).encode().unwrap();
    bytes[0] = phone.protocol_id;
    stream.write_all(&bytes).await.unwrap();
    stream.flush().await.unwrap();
    while let Some(frame) = read_frame(stream).await {
        transcript.received.push(frame.clone());
        let reply = |command: Command, body: Body| Frame::new(command, transcript.session_id, body);
        match frame.command {
            Command::KeyGenerateRequest => {
                for _ in 0..phone.requests_in_progress {
                    send(stream, &reply(Command::RequestInProgress, Body::default())).await;
                }
                let spki = phone.returned_spki.clone().unwrap_or_else(|| phone.key.spki());
                send(stream, &reply(Command::KeyGenerateResponse, Body { public_key: Some(spki), ..Body::default() })).await;
            }
            Command::StoreCertificateRequest => {
                transcript.stored = frame.body.certificate.clone();
                send(stream, &reply(Command::StoreCertificateResponse, Body { reason: Some(Reason::Success), ..Body::default() })).await;
            }
            Command::FetchCertificateRequest => {
                let body = match &phone.held_certificate {
                    Some(der) => Body {
                        reason: Some(Reason::Success),
                        certificate: Some(CertificateElement::new(CertificateType::Lsc, der.clone())),
                        ..Body::default()
                    },
                    None => Body { reason: Some(Reason::Failure), ..Body::default() },
                };
                send(stream, &reply(Command::FetchCertificateResponse, body)).await;
            }
            Command::DeleteCertificateRequest => {
                send(stream, &reply(Command::DeleteCertificateResponse, Body { reason: Some(Reason::Success), ..Body::default() })).await;
            }
            Command::EndSession => {
                transcript.end_reason = frame.body.reason;
                let mut rest = Vec::new();
                transcript.closed_after_end = matches!(stream.read_to_end(&mut rest).await, Ok(0)) || rest.is_empty();
                break;
            }
            other => panic!("the server sent an unexpected command {other:?}"),
        }
    }
    transcript
}

// ---------------------------------------------------------------------------------------------------------------
// Server harness.

struct Setup {
    /// The one device the directory knows.
    device: String,
    record: DeviceRecord,
    trust: TrustAnchors,
    config: SessionConfig,
    timeouts: Timeouts,
}

impl Setup {
    fn new(operation: ScheduledOperation, auth_mode: CapfAuthenticationMode, key: RequestedKey) -> Setup {
        Setup {
            device: DEVICE.into(),
            record: DeviceRecord { operation, auth_mode, authentication_string: Some(PASSWORD.into()), key, current_lsc: None },
            trust: TrustAnchors { mic_bundle: vec![mic_ca().der.clone()], ..TrustAnchors::default() },
            config: SessionConfig::default(),
            timeouts: Timeouts::default(),
        }
    }

    fn context(&self) -> Arc<CapfContext> {
        let (device, record) = (self.device.clone(), self.record.clone());
        let directory = move |name: &str| (name == device).then(|| record.clone());
        Arc::new(CapfContext { ca: ca().clone(), trust: self.trust.clone(), directory: Arc::new(directory), config: self.config.clone() })
    }
}

fn acceptor() -> tokio_rustls::TlsAcceptor {
    let identity = capf_identity();
    tls_acceptor(std::slice::from_ref(&identity.certificate_der), &keys::pkcs8_der(&identity.key)).unwrap()
}

fn tls_client(versions: &[&'static rustls::SupportedProtocolVersion]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from(ca().certificate_der().to_vec())).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn connect(address: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(address).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(CAPF_HOST).unwrap();
    tls_client(rustls::DEFAULT_VERSIONS).connect(name, tcp).await.unwrap()
}

/// Starts a listener on 127.0.0.1:0, runs the phone against it over TLS, and returns what both sides saw.
async fn run_over_tls(setup: &Setup, phone: &Phone) -> (Transcript, u32, Outcome) {
    let server = CapfServer::bind("127.0.0.1:0".parse().unwrap(), acceptor(), setup.context(), setup.timeouts).await.unwrap();
    let address = server.local_addr().unwrap();
    let (reports, mut received) = mpsc::unbounded_channel();
    let serving = tokio::spawn(server.serve(reports));
    let mut stream = connect(address).await;
    let transcript = play(&mut stream, phone).await;
    let report = tokio::time::timeout(Duration::from_secs(20), received.recv()).await.expect("a report").expect("a report");
    serving.abort();
    match report {
        ConnectionReport::Session { session_id, outcome, .. } => (transcript, session_id, outcome),
        other => panic!("expected a session, got {other:?}"),
    }
}

fn md5_of(der: &[u8]) -> String {
    Md5::digest(der).iter().map(|b| format!("{b:02x}")).collect()
}

fn certificate_credentials(der: Vec<u8>, kind: CertificateType) -> Credentials {
    Credentials::Certificate { der, kind, signed_name: DEVICE.into(), sha2_hash_code: 3, form: SignatureForm::RawHash }
}

// ---------------------------------------------------------------------------------------------------------------
// W-14: worked frames of docs/wire-formats.md §7.6, session id 0x0000002A.

fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace().map(|pair| u8::from_str_radix(pair, 16).unwrap()).collect()
}

fn assert_round_trip(frame: Frame, expected: &[u8]) {
    assert_eq!(frame.encode().unwrap(), expected, "{:?} encodes to the §7.6 bytes", frame.command);
    assert_eq!(Frame::decode(expected).unwrap(), frame, "the §7.6 bytes decode to {:?}", frame.command);
}

#[test]
fn w14_worked_frames_encode_and_decode_exactly() {
    let id = 0x2A;
    let end = |reason| Frame::new(Command::EndSession, id, Body { reason: Some(reason), ..Body::default() });
    let cases = [
        (
            Frame::new(Command::AuthRequest, id, Body { version: Some(3), auth_type: Some(AuthType::None), ..Body::default() }),
            "55 01 00 00 00 2A 00 08  07 00 01 03  08 00 01 00",
        ),
        (
            Frame::new(
                Command::AuthResponse,
                id,
                Body {
                    reason: Some(Reason::Success),
                    version: Some(3),
                    password: Some(Password::new("")),
                    device_name: Some(DEVICE.into()),
                    ..Body::default()
                },
            ),
            "55 02 00 00 00 2A 00 1F  01 00 01 01  07 00 01 03  0B 00 01 00 \
             0D 00 10 53 45 50 30 30 31 31 32 32 33 33 34 34 35 35 00",
        ),
        (
            Frame::new(Command::KeyGenerateRequest, id, Body { key_size: Some(2048), key_type: Some(KeyType::Rsa), ..Body::default() }),
            "55 03 00 00 00 2A 00 09  0A 00 02 08 00  11 00 01 00",
        ),
        (
            Frame::new(Command::KeyGenerateRequest, id, Body { key_type: Some(KeyType::Ec), curve: Some(Curve::P384), ..Body::default() }),
            "55 03 00 00 00 2A 00 08  11 00 01 01  12 00 01 01",
        ),
        (Frame::new(Command::RequestInProgress, id, Body::default()), "55 11 00 00 00 2A 00 00"),
        (
            Frame::new(Command::StoreCertificateResponse, id, Body { reason: Some(Reason::Success), ..Body::default() }),
            "55 0A 00 00 00 2A 00 04  01 00 01 01",
        ),
        (end(Reason::Success), "55 0F 00 00 00 2A 00 04  01 00 01 01"),
        (end(Reason::UnknownDevice), "55 0F 00 00 00 2A 00 04  01 00 01 09"),
    ];
    for (frame, bytes) in cases {
        assert_round_trip(frame, &hex(bytes));
    }

    // KEY_GENERATE_RESPONSE with a 294-byte RSA-2048 SPKI (docs/wire-formats.md §7.4, §7.6).
    let spki = PhoneKeyPair::rsa(2048).spki();
    assert_eq!(spki.len(), 294);
    let mut expected = hex("55 04 00 00 00 2A 01 29  09 01 26");
    expected.extend_from_slice(&spki);
    assert_round_trip(Frame::new(Command::KeyGenerateResponse, id, Body { public_key: Some(spki), ..Body::default() }), &expected);
}

#[test]
fn w14_store_lengths_for_979_bytes_equal_the_j4l_capture() {
    let der: Vec<u8> = (0..979u32).map(|i| (i % 251) as u8).collect();
    let frame = Frame::new(
        Command::StoreCertificateRequest,
        0x2A,
        Body {
            certificate_type: Some(CertificateType::Lsc),
            certificate: Some(CertificateElement::new(CertificateType::Lsc, der.clone())),
            ..Body::default()
        },
    );
    let bytes = frame.encode().unwrap();
    // Header, then CERTIFICATE_TYPE, then CERTIFICATE with its 5-byte prefix (docs/wire-formats.md §7.6).
    let mut expected = hex("55 09 00 00 00 2A 03 DF  03 00 01 01  04 03 D8 01 03 D5 00 01");
    expected.extend_from_slice(&der);
    assert_eq!(bytes, expected);
    assert_eq!(&bytes[6..8], &[0x03, 0xDF], "body length 12 + D");
    assert_eq!(&bytes[13..15], &[0x03, 0xD8], "outer element length 5 + D");
    assert_eq!(&bytes[16..18], &[0x03, 0xD5], "inner length 2 + D");
    assert_eq!(Frame::decode(&bytes).unwrap(), frame);
}

// ---------------------------------------------------------------------------------------------------------------
// W-15: sessions over real TLS.

/// The LSC profile of docs/wire-formats.md §7.8, checked with x509-parser and `openssl verify`.
fn assert_lsc_profile(der: &[u8], spki: &[u8]) {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let (_, ca_cert) = X509Certificate::from_der(ca().certificate_der()).unwrap();
    let cn: Vec<&str> = cert.subject().iter_common_name().map(|cn| cn.as_str().unwrap()).collect();
    assert_eq!(cn, [DEVICE]);
    assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw(), "issuer = the CA's subject");
    assert_eq!(cert.public_key().raw, spki, "the phone's key");
    assert_eq!(cert.signature_algorithm.algorithm.to_id_string(), "1.2.840.113549.1.1.11", "sha256WithRSAEncryption");
    let serial = cert.raw_serial();
    assert_eq!(serial.len(), 16, "16-byte serial");
    assert!(serial[0] & 0x80 == 0 && serial[0] != 0);
    let lifetime = cert.validity().not_after.to_datetime() - cert.validity().not_before.to_datetime();
    assert_eq!(lifetime, ::time::Duration::days(365) + ::time::Duration::minutes(5));
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && !bc.value.ca);
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.digital_signature() && ku.value.key_encipherment());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert_eq!(eku.other.iter().map(|oid| oid.to_id_string()).collect::<Vec<_>>(), ["1.3.6.1.5.5.7.3.5"]);
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names, vec![GeneralName::URI(DEVICE)]);
    assert_eq!(cert.extensions().len(), 4, "nothing but the profile's extensions");

    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    let lsc_path = dir.path().join("lsc.pem");
    std::fs::write(&ca_path, certificate_pem(ca().certificate_der())).unwrap();
    std::fs::write(&lsc_path, certificate_pem(der)).unwrap();
    let out = Process::new("openssl")
        .args(["verify", "-CAfile", ca_path.to_str().unwrap(), lsc_path.to_str().unwrap()])
        .output()
        .expect("the openssl CLI must be installed for this test (/usr/bin/openssl)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.trim_end().ends_with(": OK"), "openssl verify: {text}{}", String::from_utf8_lossy(&out.stderr));
}

async fn install(mode: CapfAuthenticationMode, key: PhoneKeyPair, requested: RequestedKey, credentials: Credentials) {
    let setup = Setup::new(ScheduledOperation::InstallUpgrade, mode, requested);
    let mut phone = Phone::new(key.clone(), credentials);
    phone.requests_in_progress = 3;
    let (transcript, session_id, outcome) = run_over_tls(&setup, &phone).await;

    assert_ne!(session_id, 0, "random non-zero session id (docs/wire-formats.md §7.2)");
    assert!(transcript.received.iter().all(|f| f.session_id == session_id), "every frame carries the session id");
    let expected_commands = [Command::AuthRequest, Command::KeyGenerateRequest, Command::StoreCertificateRequest, Command::EndSession];
    assert_eq!(transcript.commands(), expected_commands);
    assert_eq!(transcript.received[0].body, Body { version: Some(3), auth_type: Some(AuthType::None), ..Body::default() });
    let key_request = &transcript.received[1].body;
    match requested {
        RequestedKey::Rsa(size) => {
            assert_eq!((key_request.key_size, key_request.key_type, key_request.curve), (Some(size.bits()), Some(KeyType::Rsa), None))
        }
        RequestedKey::Ec(_) => {
            assert_eq!((key_request.key_size, key_request.key_type, key_request.curve), (None, Some(KeyType::Ec), Some(Curve::P384)))
        }
    }
    assert_eq!(transcript.received[2].body.certificate_type, Some(CertificateType::Lsc));
    assert_eq!(transcript.end_reason, Some(Reason::Success));
    assert!(transcript.closed_after_end, "the server closes after END_SESSION");

    let stored = transcript.stored.expect("STORE_CERTIFICATE_REQUEST carried a certificate");
    assert_eq!(stored.certificate_type, CertificateType::Lsc);
    assert_eq!(stored.inner_length_mismatch, None);
    assert_lsc_profile(&stored.der, &key.spki());
    let Outcome::Issued(issued) = outcome else { panic!("expected an issued LSC, got {outcome:?}") };
    assert_eq!(issued.certificate_der, stored.der);
    assert_eq!(issued.md5, md5_of(&stored.der), "the MD5 reaches the outcome");
    assert_eq!(issued.device_name, DEVICE);
    assert!(!issued.upgrade);
    let expected_key = match requested {
        RequestedKey::Rsa(_) => PhoneKey::Rsa2048,
        RequestedKey::Ec(curve) => PhoneKey::Ec(curve),
    };
    assert_eq!(issued.phone_key, expected_key);
    let facts = callguard::core::pki::inspect::CertificateFacts::from_der(&stored.der).unwrap();
    assert_eq!((issued.serial, issued.not_after), (facts.serial, facts.not_after));
}

const RSA2048: RequestedKey = RequestedKey::Rsa(KeySize::Bits2048);
const P384: RequestedKey = RequestedKey::Ec(EcCurve::P384);

#[tokio::test]
async fn w15_install_mode1_authentication_string_rsa2048_and_p384() {
    install(CapfAuthenticationMode::ByAuthenticationString, PhoneKeyPair::rsa(2048), RSA2048, Credentials::Password(PASSWORD.into())).await;
    install(CapfAuthenticationMode::ByAuthenticationString, PhoneKeyPair::p384(), P384, Credentials::Password(PASSWORD.into())).await;
}

#[tokio::test]
async fn w15_install_mode2_null_string_rsa2048_and_p384() {
    install(CapfAuthenticationMode::ByNullString, PhoneKeyPair::rsa(2048), RSA2048, Credentials::Password(String::new())).await;
    install(CapfAuthenticationMode::ByNullString, PhoneKeyPair::p384(), P384, Credentials::Nothing).await;
}

#[tokio::test]
async fn w15_install_mode3_existing_lsc_rsa2048_and_p384() {
    for (key, requested) in [(PhoneKeyPair::rsa(2048), RSA2048), (PhoneKeyPair::p384(), P384)] {
        let lsc = issue_test_lsc(DEVICE, &key.spki());
        install(
            CapfAuthenticationMode::ByExistingCertificatePrecedenceLsc,
            key,
            requested,
            certificate_credentials(lsc, CertificateType::Lsc),
        )
        .await;
    }
    // Mode 3 accepts a MIC too, and the DigestInfo form of the RSA signatures (docs/wire-formats.md §7.7).
    let key = PhoneKeyPair::rsa(2048);
    let mic = issue_mic(mic_ca(), &format!("CP-8865-{DEVICE}"), &key.spki());
    let credentials = Credentials::Certificate {
        der: mic,
        kind: CertificateType::Mic,
        signed_name: DEVICE.into(),
        sha2_hash_code: 3,
        form: SignatureForm::DigestInfo,
    };
    install(CapfAuthenticationMode::ByExistingCertificatePrecedenceLsc, key, RSA2048, credentials).await;
}

#[tokio::test]
async fn w15_install_mode4_mic_rsa2048_and_p384() {
    for (key, requested) in [(PhoneKeyPair::rsa(2048), RSA2048), (PhoneKeyPair::p384(), P384)] {
        let mic = issue_mic(mic_ca(), &format!("CP-8865-{DEVICE}"), &key.spki());
        install(
            CapfAuthenticationMode::ByExistingCertificatePrecedenceMic,
            key,
            requested,
            certificate_credentials(mic, CertificateType::Mic),
        )
        .await;
    }
}

#[tokio::test]
async fn w15_fetch_returns_the_phone_certificate_and_ends_with_reason_0() {
    let setup = Setup::new(ScheduledOperation::Fetch, CapfAuthenticationMode::ByNullString, RSA2048);
    let key = PhoneKeyPair::rsa(2048);
    let held = issue_test_lsc(DEVICE, &key.spki());
    let mut phone = Phone::new(key, Credentials::Nothing);
    phone.held_certificate = Some(held.clone());
    let (transcript, _, outcome) = run_over_tls(&setup, &phone).await;
    assert_eq!(transcript.commands(), [Command::AuthRequest, Command::FetchCertificateRequest, Command::EndSession]);
    assert_eq!(transcript.received[1].body, Body::default(), "FETCH_CERTIFICATE_REQUEST is empty");
    assert_eq!(transcript.end_reason, Some(Reason::NoAction));
    let Outcome::Fetched { device_name, reason, certificate } = outcome else { panic!("{outcome:?}") };
    assert_eq!((device_name.as_str(), reason), (DEVICE, Reason::Success));
    assert_eq!(certificate.map(|c| c.der), Some(held));
}

#[tokio::test]
async fn w15_delete_ends_with_reason_1() {
    let setup = Setup::new(ScheduledOperation::Delete, CapfAuthenticationMode::ByAuthenticationString, RSA2048);
    let phone = Phone::new(PhoneKeyPair::rsa(2048), Credentials::Password(PASSWORD.into()));
    let (transcript, _, outcome) = run_over_tls(&setup, &phone).await;
    assert_eq!(transcript.commands(), [Command::AuthRequest, Command::DeleteCertificateRequest, Command::EndSession]);
    assert_eq!(transcript.end_reason, Some(Reason::Success));
    assert_eq!(outcome, Outcome::Deleted { device_name: DEVICE.into() });
}

#[tokio::test]
async fn w15_nothing_scheduled_ends_with_reason_0() {
    let setup = Setup::new(ScheduledOperation::None, CapfAuthenticationMode::ByAuthenticationString, RSA2048);
    let phone = Phone::new(PhoneKeyPair::rsa(2048), Credentials::Nothing);
    let (transcript, _, outcome) = run_over_tls(&setup, &phone).await;
    assert_eq!(transcript.commands(), [Command::AuthRequest, Command::EndSession]);
    assert_eq!(transcript.end_reason, Some(Reason::NoAction));
    assert!(transcript.closed_after_end);
    assert_eq!(outcome, Outcome::NothingScheduled { device_name: DEVICE.into() });
}

#[tokio::test]
async fn w15_unknown_device_ends_with_reason_9() {
    let setup = Setup::new(ScheduledOperation::InstallUpgrade, CapfAuthenticationMode::ByNullString, RSA2048);
    let mut phone = Phone::new(PhoneKeyPair::rsa(2048), Credentials::Nothing);
    phone.device_name = "SEP00000000BEEF".into();
    let (transcript, _, outcome) = run_over_tls(&setup, &phone).await;
    assert_eq!(transcript.end_reason, Some(Reason::UnknownDevice));
    assert!(transcript.closed_after_end);
    assert!(matches!(outcome, Outcome::Failed { reason: FailureReason::UnknownDevice, .. }), "{outcome:?}");
}

#[tokio::test]
async fn w15_lowercase_mac_is_normalised_and_compatibility_flags_omit_elements() {
    let mut setup = Setup::new(ScheduledOperation::InstallUpgrade, CapfAuthenticationMode::ByNullString, RSA2048);
    setup.config.omit_auth_type = true;
    setup.config.omit_rsa_key_type = true;
    setup.device = "SEP00AABBCCDDEE".into();
    let mut phone = Phone::new(PhoneKeyPair::rsa(2048), Credentials::Nothing);
    phone.device_name = "SEP00aabbccddee".into();
    let (transcript, _, outcome) = run_over_tls(&setup, &phone).await;
    assert_eq!(transcript.received[0].body, Body { version: Some(3), ..Body::default() }, "VERSION alone");
    assert_eq!(transcript.received[1].body, Body { key_size: Some(2048), ..Body::default() }, "KEY_SIZE alone");
    let Outcome::Issued(issued) = outcome else { panic!("{outcome:?}") };
    assert_eq!(issued.device_name, "SEP00AABBCCDDEE", "docs/wire-formats.md §1.3: lowercase hex is normalised");
    let facts = callguard::core::pki::inspect::CertificateFacts::from_der(&issued.certificate_der).unwrap();
    assert_eq!(facts.subject_common_name.as_deref(), Some("SEP00AABBCCDDEE"));
}

// ---------------------------------------------------------------------------------------------------------------
// W-16: exactly one write per message.

/// Records every buffer handed to `poll_write`.
struct RecordingIo<S> {
    inner: S,
    writes: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for RecordingIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for RecordingIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &result {
            self.writes.lock().unwrap().push(buf[..*n].to_vec());
        }
        result
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn w16_each_message_is_one_write_of_one_whole_frame() {
    let setup = Setup::new(ScheduledOperation::InstallUpgrade, CapfAuthenticationMode::ByNullString, RSA2048);
    let (server_end, mut phone_end) = tokio::io::duplex(64 * 1024);
    let writes = Arc::new(Mutex::new(Vec::new()));
    let mut recorded = RecordingIo { inner: server_end, writes: writes.clone() };
    let session = Session::new(setup.context(), 0x2A, OffsetDateTime::now_utc());
    let mut phone = Phone::new(PhoneKeyPair::rsa(2048), Credentials::Nothing);
    phone.requests_in_progress = 3;
    let server = async move {
        let outcome = run_session(&mut recorded, session, &Timeouts::default()).await;
        drop(recorded);
        outcome
    };
    let (outcome, transcript) = tokio::join!(server, play(&mut phone_end, &phone));
    assert!(matches!(outcome, Outcome::Issued(_)), "{outcome:?}");
    let writes = writes.lock().unwrap();
    assert_eq!(writes.len(), transcript.received.len(), "one write per message");
    for (write, frame) in writes.iter().zip(&transcript.received) {
        assert_eq!(write, &frame.encode().unwrap(), "each write is exactly one whole frame, header and body together");
    }
}

#[tokio::test]
async fn w16_each_message_is_one_tls_record() {
    // TLS 1.2, so application data is told apart from the handshake by the record type (23).
    let setup = Setup::new(ScheduledOperation::InstallUpgrade, CapfAuthenticationMode::ByNullString, RSA2048);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let writes = Arc::new(Mutex::new(Vec::new()));
    let server_writes = writes.clone();
    let context = setup.context();
    let server = tokio::spawn(async move {
        let (tcp, peer) = listener.accept().await.unwrap();
        let io = RecordingIo { inner: tcp, writes: server_writes };
        serve_connection(io, Some(peer), &acceptor(), context, &Timeouts::default()).await
    });
    let tcp = TcpStream::connect(address).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(CAPF_HOST).unwrap();
    let mut stream = tls_client(&[&rustls::version::TLS12]).connect(name, tcp).await.unwrap();
    let transcript = play(&mut stream, &Phone::new(PhoneKeyPair::rsa(2048), Credentials::Nothing)).await;
    let report = server.await.unwrap();
    assert!(matches!(report, ConnectionReport::Session { outcome: Outcome::Issued(_), .. }), "{report:?}");

    let mut application_records = 0;
    for write in writes.lock().unwrap().iter() {
        let mut offset = 0;
        let mut in_this_write = 0;
        while offset + 5 <= write.len() {
            let length = usize::from(u16::from_be_bytes([write[offset + 3], write[offset + 4]]));
            if write[offset] == 23 {
                in_this_write += 1;
            }
            offset += 5 + length;
        }
        assert_eq!(offset, write.len(), "writes hold whole TLS records");
        assert!(in_this_write <= 1, "one application-data record per write");
        application_records += in_this_write;
    }
    assert_eq!(application_records, transcript.received.len(), "one TLS record per CAPF message");
}

// ---------------------------------------------------------------------------------------------------------------
// N-11: each case ends in END_SESSION{7}.

async fn assert_refused(setup: &Setup, phone: &Phone, expected: impl Fn(&FailureReason) -> bool) -> Transcript {
    let (transcript, _, outcome) = run_over_tls(setup, phone).await;
    assert_eq!(transcript.end_reason, Some(Reason::Failure), "END_SESSION{{7}}");
    assert!(transcript.closed_after_end, "the server closes after END_SESSION");
    assert!(transcript.stored.is_none(), "no certificate issued");
    match &outcome {
        Outcome::Failed { reason, .. } => assert!(expected(reason), "unexpected failure {reason:?}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    transcript
}

#[tokio::test]
async fn n11_wrong_password() {
    let setup = Setup::new(ScheduledOperation::InstallUpgrade, CapfAuthenticationMode::ByAuthenticationString, RSA2048);
    for given in [Credentials::Password("4712".into()), Credentials::Password("47110".into()), Credentials::Nothing] {
        let phone = Phone::new(PhoneKeyPair::rsa(2048), given);
        let transcript = assert_refused(&setup, &phone, |r| *r == FailureReason::Authentication(AuthError::WrongPassword)).await;
        assert_eq!(transcript.commands(), [Command::AuthRequest, Command::EndSession]);
    }
}

#[tokio::test]
async fn n11_signed_data_over_another_device_name() {
    let setup = Setup::new(ScheduledOperation::InstallUpgrade, CapfAuthenticationMode::ByExistingCertificatePrecedenceLsc, RSA2048);
    let key = PhoneKeyPair::rsa(2048);
    let lsc = issue_test_lsc(DEVICE, &key.spki());
    let credentials = Credentials::Certificate {
        der: lsc,
        kind: CertificateType::Lsc,
        signed_name: "SEP0011223344AA".into(),
        sha2_hash_code: 3,
        form: SignatureForm::RawHash,
    };
    let phone = Phone::new(key, credentials);
    assert_refused(&setup, &phone, |r| *r == FailureReason::Authentication(AuthError::BadSignature("SIGNED_DATA"))).await;
}

#[tokio::test]
async fn n11_certificate_from_an_unknown_issuer() {
    let setup = Setup::new(ScheduledOperation::InstallUpgrade, CapfAuthenticationMode::ByExistingCertificatePrecedenceMic, P384);
    let key = PhoneKeyPair::p384();
    let foreign = make_mic_ca("Someone Else's CA");
    let mic = issue_mic(&foreign, &format!("CP-8865-{DEVICE}"), &key.spki());
    let phone = Phone::new(key.clone(), certificate_credentials(mic, CertificateType::Mic));
    assert_refused(&setup, &phone, |r| *r == FailureReason::Authentication(AuthError::UnknownIssuer)).await;

    // Mode 4 accepts only MIC chains: our own LSC is an unknown issuer there (docs/wire-formats.md §7.5).
    let lsc = issue_test_lsc(DEVICE, &key.spki());
    let phone = Phone::new(key, certificate_credentials(lsc, CertificateType::Lsc));
    assert_refused(&setup, &phone, |r| *r == FailureReason::Authentication(AuthError::UnknownIssuer)).await;
}

#[tokio::test]
async fn n11_lsc_of_another_device_and_mic_with_a_foreign_name() {
    let setup = Setup::new(ScheduledOperation::InstallUpgrade, CapfAuthenticationMode::ByExistingCertificatePrecedenceLsc, RSA2048);
    let key = PhoneKeyPair::rsa(2048);
    let other_lsc = issue_test_lsc("SEP0011223344AA", &key.spki());
    let phone = Phone::new(key.clone(), certificate_credentials(other_lsc, CertificateType::Lsc));
    assert_refused(&setup, &phone, |r| matches!(r, FailureReason::Authentication(AuthError::CommonNameMismatch { .. }))).await;

    let mic = issue_mic(mic_ca(), "CP-8865-SEP0011223344AA", &key.spki());
    let phone = Phone::new(key, certificate_credentials(mic, CertificateType::Mic));
    assert_refused(&setup, &phone, |r| matches!(r, FailureReason::Authentication(AuthError::CommonNameMismatch { .. }))).await;
}

#[tokio::test]
async fn n11_sha2_hash_code_1() {
    let setup = Setup::new(ScheduledOperation::InstallUpgrade, CapfAuthenticationMode::ByExistingCertificatePrecedenceMic, RSA2048);
    let key = PhoneKeyPair::rsa(2048);
    let mic = issue_mic(mic_ca(), &format!("CP-8865-{DEVICE}"), &key.spki());
    let credentials = Credentials::Certificate {
        der: mic,
        kind: CertificateType::Mic,
        signed_name: DEVICE.into(),
        sha2_hash_code: 1,
        form: SignatureForm::RawHash,
    };
    let phone = Phone::new(key, credentials);
    assert_refused(&setup, &phone, |r| *r == FailureReason::Authentication(AuthError::UnsupportedHashCode(1))).await;
}

#[tokio::test]
async fn n11_session_id_mismatch_then_close() {
    let setup = Setup::new(ScheduledOperation::InstallUpgrade, CapfAuthenticationMode::ByNullString, RSA2048);
    let mut phone = Phone::new(PhoneKeyPair::rsa(2048), Credentials::Nothing);
    phone.session_id_offset = 1;
    let transcript = assert_refused(&setup, &phone, |r| {
        matches!(r, FailureReason::Frame(callguard::services::capf::FrameError::SessionMismatch { expected, found }) if found.wrapping_sub(*expected) == 1)
    })
    .await;
    assert_eq!(transcript.received.last().unwrap().session_id, transcript.session_id, "END_SESSION carries the server's id");
}

#[tokio::test]
async fn n11_protocol_id_mismatch_then_close() {
    let setup = Setup::new(ScheduledOperation::InstallUpgrade, CapfAuthenticationMode::ByNullString, RSA2048);
    let mut phone = Phone::new(PhoneKeyPair::rsa(2048), Credentials::Nothing);
    phone.protocol_id = 0x56;
    assert_refused(&setup, &phone, |r| *r == FailureReason::Frame(callguard::services::capf::FrameError::BadProtocolId(0x56))).await;
}

#[tokio::test]
async fn n11_spki_size_different_from_key_size_issues_nothing() {
    let setup = Setup::new(ScheduledOperation::InstallUpgrade, CapfAuthenticationMode::ByNullString, RSA2048);
    let mut phone = Phone::new(PhoneKeyPair::rsa(2048), Credentials::Nothing);
    phone.returned_spki = Some(PhoneKeyPair::rsa(1024).spki());
    let transcript = assert_refused(&setup, &phone, |r| matches!(r, FailureReason::KeyRefused(_))).await;
    assert_eq!(transcript.commands(), [Command::AuthRequest, Command::KeyGenerateRequest, Command::EndSession]);

    // An EC key where RSA was asked for, and an SPKI that does not parse.
    for spki in [PhoneKeyPair::p384().spki(), vec![0x30, 0x03, 0x02, 0x01, 0x00]] {
        phone.returned_spki = Some(spki);
        assert_refused(&setup, &phone, |r| matches!(r, FailureReason::KeyRefused(_))).await;
    }
}

#[tokio::test]
async fn n11_version_4() {
    let setup = Setup::new(ScheduledOperation::InstallUpgrade, CapfAuthenticationMode::ByNullString, RSA2048);
    let mut phone = Phone::new(PhoneKeyPair::rsa(2048), Credentials::Nothing);
    phone.version = 4;
    assert_refused(&setup, &phone, |r| *r == FailureReason::UnsupportedVersion(4)).await;
    // Jabber's VERSION 2 is accepted (docs/wire-formats.md §7.4).
    phone.version = 2;
    let (transcript, _, _) = run_over_tls(&setup, &phone).await;
    assert_eq!(transcript.end_reason, Some(Reason::Success));
}

/// A phone that completes the TLS handshake, reads AUTH_REQUEST and then says nothing: END_SESSION{7} when
/// the 30 s message timeout (docs/wire-formats.md §7.5) runs out, to the instant, on tokio's paused clock
/// over an in-memory stream.
#[tokio::test(start_paused = true)]
async fn n11_silent_phone_times_out_with_reason_7_at_the_message_timeout() {
    let setup = Setup::new(ScheduledOperation::InstallUpgrade, CapfAuthenticationMode::ByNullString, RSA2048);
    let timeouts = Timeouts::default();
    let (server_end, phone_end) = tokio::io::duplex(64 * 1024);
    let context = setup.context();
    let server = tokio::spawn(async move { serve_connection(server_end, None, &acceptor(), context, &timeouts).await });
    let name = rustls_pki_types::ServerName::try_from(CAPF_HOST).unwrap();
    let mut stream = tls_client(rustls::DEFAULT_VERSIONS).connect(name, phone_end).await.unwrap();
    let request = read_frame(&mut stream).await.expect("the server speaks first (docs/wire-formats.md §7.1)");
    assert_eq!(request.command, Command::AuthRequest);
    let asked = tokio::time::Instant::now();
    let end = tokio::time::timeout(timeouts.message * 2, read_frame(&mut stream)).await.expect("the session ends").expect("END_SESSION");
    assert_eq!(asked.elapsed(), timeouts.message, "ended by the message timeout, not before or after");
    assert_eq!((end.command, end.body.reason, end.session_id), (Command::EndSession, Some(Reason::Failure), request.session_id));
    let mut rest = Vec::new();
    assert!(matches!(stream.read_to_end(&mut rest).await, Ok(0)) || rest.is_empty(), "the server closes after END_SESSION");
    match server.await.unwrap() {
        ConnectionReport::Session { outcome: Outcome::Failed { reason, .. }, .. } => {
            assert_eq!(reason, FailureReason::Timeout { key_generation: false })
        }
        other => panic!("expected a failed session, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// SUDI (docs/wire-formats.md §7.7): checked on the pure session with the asymmetric id 0x0000002A.

struct Sudi {
    ca_der: Vec<u8>,
    certificate_der: Vec<u8>,
}

fn sudi() -> &'static Sudi {
    static SUDI: OnceLock<Sudi> = OnceLock::new();
    SUDI.get_or_init(|| {
        let ca = make_mic_ca("Test SUDI CA");
        let spki = PhoneKeyPair::rsa(2048).spki();
        Sudi { ca_der: ca.der.clone(), certificate_der: issue_mic(&ca, "SUDI device", &spki) }
    })
}

fn sudi_data(session_id_bytes: [u8; 4]) -> SudiData {
    let key = PhoneKeyPair::rsa(2048);
    let mut signed = session_id_bytes.to_vec();
    signed.extend_from_slice(&sudi().certificate_der);
    SudiData {
        certificate_der: sudi().certificate_der.clone(),
        sha1_signature: key.sign(HashKind::Sha1, SignatureForm::RawHash, &signed),
        sha512_signature: key.sign(HashKind::Sha512, SignatureForm::RawHash, &signed),
    }
}

fn run_session_directly(setup: &Setup, phone: &Phone, session_id: u32) -> (Vec<Frame>, Option<Outcome>) {
    let mut session = Session::new(setup.context(), session_id, OffsetDateTime::now_utc());
    let mut sent = session.start().send;
    let step = session.receive(phone.auth_response(session_id));
    sent.extend(step.send);
    (sent, session.into_outcome())
}

#[test]
fn n11_sudi_signed_over_the_big_endian_session_id() {
    let session_id: u32 = 0x0000_002A;
    assert_ne!(session_id.to_le_bytes(), session_id.to_be_bytes(), "an asymmetric id");
    let mut setup = Setup::new(ScheduledOperation::InstallUpgrade, CapfAuthenticationMode::ByNullString, RSA2048);
    setup.trust.sudi_bundle = vec![sudi().ca_der.clone()];
    let mut phone = Phone::new(PhoneKeyPair::rsa(2048), Credentials::Nothing);

    phone.sudi = Some(sudi_data(session_id.to_le_bytes()));
    let (sent, outcome) = run_session_directly(&setup, &phone, session_id);
    assert_eq!(sent.last().unwrap().command, Command::KeyGenerateRequest, "little-endian SUDI passes: {outcome:?}");

    phone.sudi = Some(sudi_data(session_id.to_be_bytes()));
    let (sent, outcome) = run_session_directly(&setup, &phone, session_id);
    assert_eq!(sent.last().unwrap().body.reason, Some(Reason::Failure));
    assert!(matches!(outcome, Some(Outcome::Failed { reason: FailureReason::Authentication(AuthError::Sudi(_)), .. })), "{outcome:?}");

    // Without a SUDI bundle the block is not verified (docs/wire-formats.md §7.7).
    setup.trust.sudi_bundle.clear();
    let (sent, _) = run_session_directly(&setup, &phone, session_id);
    assert_eq!(sent.last().unwrap().command, Command::KeyGenerateRequest);
}

// ---------------------------------------------------------------------------------------------------------------
// Timeouts (docs/wire-formats.md §7.5), on tokio's paused clock.

#[tokio::test(start_paused = true)]
async fn key_generation_timeout_counts_from_the_request_whatever_requests_in_progress_arrive() {
    let setup = Setup::new(ScheduledOperation::InstallUpgrade, CapfAuthenticationMode::ByNullString, RSA2048);
    // The timeouts of docs/wire-formats.md §7.5 as they are (30 s per message, 60 min for the key), on tokio's paused clock.
    let timeouts = Timeouts::default();
    let (server_end, phone_end) = tokio::io::duplex(64 * 1024);
    let mut server_end = server_end;
    let session = Session::new(setup.context(), 0x2A, OffsetDateTime::now_utc());
    let server = tokio::spawn(async move { run_session(&mut server_end, session, &timeouts).await });

    let (mut reader, mut writer) = tokio::io::split(phone_end);
    let phone = Phone::new(PhoneKeyPair::rsa(2048), Credentials::Nothing);
    assert_eq!(read_frame(&mut reader).await.unwrap().command, Command::AuthRequest);
    send(&mut writer, &phone.auth_response(0x2A)).await;
    assert_eq!(read_frame(&mut reader).await.unwrap().command, Command::KeyGenerateRequest);
    let started = tokio::time::Instant::now();
    // REQUEST_IN_PROGRESS every half message timeout, so no message timeout ever runs out, for ever.
    let spam = tokio::spawn(async move {
        loop {
            send(&mut writer, &Frame::new(Command::RequestInProgress, 0x2A, Body::default())).await;
            tokio::time::sleep(timeouts.message / 2).await;
        }
    });
    let end =
        tokio::time::timeout(timeouts.key_generation * 2, read_frame(&mut reader)).await.expect("the session ends").expect("END_SESSION");
    let waited = started.elapsed();
    spam.abort();
    assert_eq!((end.command, end.body.reason), (Command::EndSession, Some(Reason::Failure)));
    assert_eq!(waited, timeouts.key_generation, "60 minutes from KEY_GENERATE_REQUEST, whatever arrived meanwhile");
    let outcome = server.await.unwrap();
    assert!(matches!(outcome, Outcome::Failed { reason: FailureReason::Timeout { key_generation: true }, .. }), "{outcome:?}");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_completes_the_handshake_is_dropped() {
    let setup = Setup::new(ScheduledOperation::InstallUpgrade, CapfAuthenticationMode::ByNullString, RSA2048);
    let timeouts = Timeouts::default();
    let (server_end, _idle_client) = tokio::io::duplex(1024);
    let started = tokio::time::Instant::now();
    let report = tokio::time::timeout(timeouts.handshake * 2, serve_connection(server_end, None, &acceptor(), setup.context(), &timeouts))
        .await
        .expect("the handshake timeout fires");
    assert_eq!(started.elapsed(), timeouts.handshake, "dropped after the 10 s handshake timeout (docs/wire-formats.md §7.5)");
    assert!(
        matches!(report, ConnectionReport::HandshakeFailed { ref error, .. } if error.contains("no TLS handshake within")),
        "{report:?}"
    );
}
