//! A phone speaking CAPF (docs/wire-formats.md §7.2, §7.5) over real TCP and TLS, with the crate's frame
//! codec: the tests that play a phone against `callguard local` or `callguard serve capf` share it.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use callguard::services::capf::frame::{
    Body, CertificateElement, CertificateType, Command, Frame, FrameHeader, HASH_CODE_SHA512, HEADER_LEN, Password, Reason, Sha2SignedData,
};
use rsa::pkcs8::EncodePublicKey;
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use sha1::Sha1;
use sha2::{Digest, Sha512};

/// The next frame, or `None` when the stream ends.
pub fn read_frame(stream: &mut impl Read) -> Option<Frame> {
    let mut header = [0u8; HEADER_LEN];
    stream.read_exact(&mut header).ok()?;
    let parsed = FrameHeader::decode(&header).expect("the server sends 0x55 frames");
    let mut bytes = header.to_vec();
    bytes.resize(HEADER_LEN + usize::from(parsed.body_len), 0);
    stream.read_exact(&mut bytes[HEADER_LEN..]).ok()?;
    Some(Frame::decode(&bytes).expect("the server sends well-formed frames"))
}

pub fn send(stream: &mut impl Write, frame: Frame) {
    stream.write_all(&frame.encode().unwrap()).unwrap();
    stream.flush().unwrap();
}

/// What the phone saw in one session.
#[derive(Debug, Default)]
pub struct Transcript {
    pub commands: Vec<Command>,
    pub end: Option<Reason>,
    /// KEY_SIZE of the KEY_GENERATE_REQUEST.
    pub key_size: Option<u16>,
    /// The LSC of STORE_CERTIFICATE_REQUEST, DER.
    pub stored: Option<Vec<u8>>,
}

/// One session of `device` against CAPF on 127.0.0.1:`port`, verifying the server's certificate
/// (for `host`) against the cluster CA `ca_der`; `password` is the authentication string the phone
/// enters, `key` the key it makes.
pub fn session(port: u16, ca_der: &[u8], host: &str, device: &str, password: Option<&str>, key: &RsaPrivateKey) -> Transcript {
    session_over(connect(port, ca_der, host), device, password, key)
}

/// One session of `device` over an established TLS stream (rustls, or OpenSSL for TLS 1.0).
pub fn session_over(stream: impl Read + Write, device: &str, password: Option<&str>, key: &RsaPrivateKey) -> Transcript {
    session_with(stream, device, Credentials::String(password), key)
}

/// How the phone authenticates (docs/wire-formats.md §7.5).
pub enum Credentials<'a> {
    /// An authentication string, or none (null string).
    String(Option<&'a str>),
    /// Its certificate (a MIC, or an LSC), DER, with SIGNED_DATA and SHA2_SIGNED_DATA made with `key`
    /// over `device name ‖ 00 ‖ certificate` (docs/wire-formats.md §7.7).
    Certificate { der: Vec<u8>, kind: CertificateType, key: &'a RsaPrivateKey },
}

/// A TLS connection to CAPF on 127.0.0.1:`port`, the server verified for `host` under `ca_der`.
pub fn connect(port: u16, ca_der: &[u8], host: &str) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from(ca_der.to_vec())).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(host.to_owned()).unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    rustls::StreamOwned::new(connection, tcp)
}

/// One session of `device` over an established TLS stream, authenticating with `credentials`; `key`
/// is the key it makes when asked to.
pub fn session_with(mut stream: impl Read + Write, device: &str, credentials: Credentials<'_>, key: &RsaPrivateKey) -> Transcript {
    let mut transcript = Transcript::default();
    let request = read_frame(&mut stream).expect("the server speaks first");
    assert_eq!(request.command, Command::AuthRequest);
    let id = request.session_id;
    transcript.commands.push(request.command);
    let mut body = Body { reason: Some(Reason::Success), version: Some(3), device_name: Some(device.into()), ..Body::default() };
    match credentials {
        Credentials::String(password) => body.password = password.map(Password::new),
        Credentials::Certificate { der, kind, key: signer } => {
            let mut data = device.as_bytes().to_vec();
            data.push(0);
            data.extend_from_slice(&der);
            body.signed_data = Some(signer.sign(Pkcs1v15Sign::new::<Sha1>(), &Sha1::digest(&data)).unwrap());
            let signature = signer.sign(Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(&data)).unwrap();
            body.sha2_signed_data = Some(Sha2SignedData { hash_code: HASH_CODE_SHA512, signature });
            body.certificate = Some(CertificateElement::new(kind, der));
        }
    }
    send(&mut stream, Frame::new(Command::AuthResponse, id, body));
    while let Some(frame) = read_frame(&mut stream) {
        transcript.commands.push(frame.command);
        let reply = |command, body| Frame::new(command, id, body);
        let success = || Body { reason: Some(Reason::Success), ..Body::default() };
        match frame.command {
            Command::KeyGenerateRequest => {
                transcript.key_size = frame.body.key_size;
                let spki = rsa::RsaPublicKey::from(key).to_public_key_der().unwrap().as_bytes().to_vec();
                send(&mut stream, reply(Command::KeyGenerateResponse, Body { public_key: Some(spki), ..Body::default() }));
            }
            Command::StoreCertificateRequest => {
                transcript.stored = frame.body.certificate.as_ref().map(|c| c.der.clone());
                send(&mut stream, reply(Command::StoreCertificateResponse, success()));
            }
            Command::DeleteCertificateRequest => send(&mut stream, reply(Command::DeleteCertificateResponse, success())),
            Command::EndSession => {
                transcript.end = frame.body.reason;
                break;
            }
            other => panic!("the server sent {other:?}"),
        }
    }
    transcript
}
