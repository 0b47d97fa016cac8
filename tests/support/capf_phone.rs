//! A phone speaking CAPF (docs/wire-formats.md §7.2, §7.5) over real TCP and TLS, with the crate's frame
//! codec: the tests that play a phone against `callguard local` or `callguard serve capf` share it.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use callguard::services::capf::frame::{Body, Command, Frame, FrameHeader, HEADER_LEN, Password, Reason};
use rsa::RsaPrivateKey;
use rsa::pkcs8::EncodePublicKey;

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
    let mut stream = rustls::StreamOwned::new(connection, tcp);

    let mut transcript = Transcript::default();
    let request = read_frame(&mut stream).expect("the server speaks first");
    assert_eq!(request.command, Command::AuthRequest);
    let id = request.session_id;
    transcript.commands.push(request.command);
    let body = Body {
        reason: Some(Reason::Success),
        version: Some(3),
        device_name: Some(device.into()),
        password: password.map(Password::new),
        ..Body::default()
    };
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
