//! Conformance tests of docs/wire-formats.md §10.1 (W-1..W-12) and §10.2 (N-1..N-9) for the trust files, plus the
//! `callguard trust` CLI and a parser fuzz property. Each test's W-/N- entry there names where its expected bytes come from;
//! the `openssl` CLI is the independent verifier.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use aes::Aes128;
use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use callguard::core::pki::keys;
use callguard::core::trust::codes::header_tag;
use callguard::core::trust::header::check_filename;
use callguard::core::trust::tlv::{self, Mode};
use callguard::core::trust::{
    BuildWarning, EncryptedConfigBuilder, EncryptedFile, EncryptionElements, FileKind, HashAlgorithm, HeaderFields, Role, SignatureCheck,
    SignedFile, Signer, SignerVersion, TrustError, TrustFileBuilder, TrustList, TrustListKind, TrustRecord, assemble_signed, parse_header,
    signed,
};
use proptest::prelude::*;
use rcgen::{CertificateParams, DistinguishedName, DnType, Issuer, KeyPair, SerialNumber};
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::{Pkcs1v15Encrypt, RsaPrivateKey, RsaPublicKey};
use sha1::{Digest, Sha1};

/// 2026-01-01T00:00:00Z, the §3.5 timestamp (0x6955B900).
const T0: u32 = 1_767_225_600;

// ---------------------------------------------------------------------------------------------------------------
// Test support: keys generated once per binary, certificates made with rcgen.
// ---------------------------------------------------------------------------------------------------------------

fn cached_key(cell: &'static OnceLock<RsaPrivateKey>, bits: usize) -> &'static RsaPrivateKey {
    cell.get_or_init(|| keys::generate_rsa(bits))
}

fn sast_a_key() -> &'static RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    cached_key(&KEY, 2048)
}
fn sast_b_key() -> &'static RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    cached_key(&KEY, 2048)
}
fn tftp_key() -> &'static RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    cached_key(&KEY, 2048)
}
fn phone_key() -> &'static RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    cached_key(&KEY, 2048)
}
/// Shared by the CCM, CAPF, TVS and CA certificates: records need distinct certificates, not distinct keys.
fn other_key() -> &'static RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    cached_key(&KEY, 2048)
}

fn key_pair(key: &RsaPrivateKey) -> KeyPair {
    KeyPair::try_from(keys::pkcs8_der(key).as_slice()).expect("rcgen loads an RSA PKCS#8 key")
}

fn params(dn: &[(DnType, &str)], serial: &[u8], sans: Vec<String>) -> CertificateParams {
    let mut params = CertificateParams::new(sans).expect("valid SANs");
    let mut name = DistinguishedName::new();
    for (attribute, value) in dn {
        name.push(attribute.clone(), *value);
    }
    params.distinguished_name = name;
    params.serial_number = Some(SerialNumber::from_slice(serial));
    params
}

fn self_signed(key: &RsaPrivateKey, dn: &[(DnType, &str)], serial: &[u8], sans: Vec<String>) -> Vec<u8> {
    params(dn, serial, sans).self_signed(&key_pair(key)).expect("rcgen signs").der().to_vec()
}

/// A certificate for any RSA public key (ring cannot sign with keys under 2048 bits), issued by a test CA.
fn issued_for(public_key: &RsaPublicKey, dn: &[(DnType, &str)], serial: &[u8]) -> Vec<u8> {
    let issuer = Issuer::new(params(&[(DnType::CommonName, "Test CA")], &[0x01], vec![]), key_pair(other_key()));
    let spki_der = public_key.to_public_key_der().expect("SPKI encodes");
    let spki = rcgen::SubjectPublicKeyInfo::from_der(spki_der.as_bytes()).expect("rcgen reads the SPKI");
    params(dn, serial, vec![]).signed_by(&spki, &issuer).expect("rcgen signs").der().to_vec()
}

fn ec_certificate(dn: &[(DnType, &str)], serial: &[u8]) -> Vec<u8> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 keygen");
    params(dn, serial, vec![]).self_signed(&key).expect("rcgen signs").der().to_vec()
}

fn voice_dn(cn: &str) -> Vec<(DnType, &str)> {
    vec![(DnType::CommonName, cn), (DnType::OrganizationName, "Example"), (DnType::OrganizationalUnitName, "Voice")]
}

fn cached_certificate(cell: &'static OnceLock<Vec<u8>>, make: impl FnOnce() -> Vec<u8>) -> &'static [u8] {
    cell.get_or_init(make)
}

/// The §3.5 signer: CN=SAST,O=Example,OU=Voice, serial 0x3A7F, self-signed RSA-2048.
fn sast_a_cert() -> &'static [u8] {
    static CERT: OnceLock<Vec<u8>> = OnceLock::new();
    cached_certificate(&CERT, || self_signed(sast_a_key(), &voice_dn("SAST"), &[0x3A, 0x7F], vec![]))
}
fn sast_b_cert() -> &'static [u8] {
    static CERT: OnceLock<Vec<u8>> = OnceLock::new();
    cached_certificate(&CERT, || self_signed(sast_b_key(), &voice_dn("SAST-B"), &[0x3A, 0x80], vec![]))
}
/// CN=TFTP,O=Example,OU=Voice: 26 characters like the §5.2 example, serial 0x0101.
fn tftp_cert() -> &'static [u8] {
    static CERT: OnceLock<Vec<u8>> = OnceLock::new();
    cached_certificate(&CERT, || self_signed(tftp_key(), &voice_dn("TFTP"), &[0x01, 0x01], vec![]))
}
fn ccm_tftp_cert() -> &'static [u8] {
    static CERT: OnceLock<Vec<u8>> = OnceLock::new();
    cached_certificate(&CERT, || self_signed(other_key(), &voice_dn("cucm1.voice.example.net"), &[0x10], vec![]))
}
/// Serial 0xC102: DER writes `00 C1 02`, the file must write `C1 02` (§1.5).
fn capf_cert() -> &'static [u8] {
    static CERT: OnceLock<Vec<u8>> = OnceLock::new();
    cached_certificate(&CERT, || self_signed(other_key(), &voice_dn("CAPF"), &[0xC1, 0x02], vec![]))
}
fn tvs_cert() -> &'static [u8] {
    static CERT: OnceLock<Vec<u8>> = OnceLock::new();
    cached_certificate(&CERT, || self_signed(other_key(), &voice_dn("TVS"), &[0x30], vec![]))
}
fn phone_cert() -> &'static [u8] {
    static CERT: OnceLock<Vec<u8>> = OnceLock::new();
    cached_certificate(&CERT, || self_signed(phone_key(), &voice_dn("SEP001122334455"), &[0x50, 0x01], vec![]))
}

fn sast_a() -> Signer {
    Signer::new(sast_a_cert().to_vec(), sast_a_key().clone(), false).expect("RSA-2048 signer")
}
fn sast_b() -> Signer {
    Signer::new(sast_b_cert().to_vec(), sast_b_key().clone(), false).expect("RSA-2048 signer")
}
fn tftp() -> Signer {
    Signer::new(tftp_cert().to_vec(), tftp_key().clone(), false).expect("RSA-2048 signer")
}

/// The W-2 ITL: {SAST, CCM+TFTP, CAPF, TVS}, signed by SAST A.
fn itl_builder(signer: &Signer) -> TrustFileBuilder<'_> {
    TrustFileBuilder::new(TrustListKind::Itl, signer, T0)
        .record(sast_a_cert(), Role::Sast)
        .record(ccm_tftp_cert(), Role::CcmTftp)
        .record(capf_cert(), Role::Capf)
        .record(tvs_cert(), Role::Tvs)
}

/// A CTL that makes the TFTP certificate a configuration signer.
fn ctl_with_tftp() -> Vec<u8> {
    let signer = sast_a();
    TrustFileBuilder::new(TrustListKind::Ctl, &signer, T0)
        .record(sast_a_cert(), Role::Sast)
        .record(tftp_cert(), Role::Tftp)
        .record(capf_cert(), Role::Capf)
        .build()
        .expect("CTL builds")
        .bytes
}

fn u16_at(bytes: &[u8], offset: usize) -> usize {
    usize::from(u16::from_be_bytes([bytes[offset], bytes[offset + 1]]))
}

fn openssl(args: &[&str], dir: &Path) -> Output {
    Command::new("openssl").args(args).current_dir(dir).output().expect("the openssl CLI must be installed at /usr/bin/openssl")
}

/// The binary digest of `bytes` by the openssl CLI (`-sha1`, `-sha512`, `-md5` ...), independent of the
/// hash crates the code uses.
fn openssl_digest(flag: &str, bytes: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(["dgst", flag, "-binary"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the openssl CLI must be installed at /usr/bin/openssl");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), bytes).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "openssl dgst {flag}");
    output.stdout
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = text.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64 is ASCII")).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// An `.enc.sgn` assembled by the test itself, with its own AES and key wrap, so that malformed padding can be
/// signed correctly.
fn handmade_encrypted(padded_plaintext: &[u8], pad_count: u16, plaintext_hash: Vec<u8>) -> Vec<u8> {
    let key = [0x11u8; 16];
    let iv = [0x22u8; 16];
    let ciphertext = cbc::Encryptor::<Aes128>::new(&key.into(), &iv.into()).encrypt_padded_vec_mut::<NoPadding>(padded_plaintext);
    let wrapped_key = RsaPublicKey::from(phone_key()).encrypt(&mut rand::thread_rng(), Pkcs1v15Encrypt, &key).expect("wrap");
    let elements = EncryptionElements {
        iv_marker: 0,
        iv,
        pad_count,
        key_marker: 0,
        key_size_bits: 2048,
        key_algorithm: 1,
        wrapped_key,
        plaintext_hash_algorithm: HashAlgorithm::Sha1,
        plaintext_hash,
    };
    let extra = elements.encode().expect("elements encode");
    let fields = HeaderFields {
        kind: FileKind::Encrypted,
        signer_version: SignerVersion::V1_0,
        hash: HashAlgorithm::Sha1,
        filename: "SEP001122334455.cnf.xml.enc.sgn",
        timestamp: T0,
        extra_elements: &extra,
    };
    assemble_signed(&fields, &tftp(), &ciphertext).expect("assembles")
}

const CONFIG_XML: &[u8] = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<device>\n  <fullConfig>true</fullConfig>\n  <deviceSecurityMode>3</deviceSecurityMode>\n  <encrConfig>true</encrConfig>\n</device>\n";

// ---------------------------------------------------------------------------------------------------------------
// §10.1 Round-trip and golden tests
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn w01_tlv_limits() {
    for length in [0usize, 1, 65_535] {
        let value = vec![0xA5u8; length];
        let encoded = tlv::encode(0x09, &value).expect("encodes");
        assert_eq!(encoded.len(), 3 + length);
        assert_eq!(u16_at(&encoded, 1), length);
        let (element, rest) = tlv::decode(&encoded).expect("decodes");
        assert_eq!((element.tag, element.value), (0x09, value.as_slice()));
        assert!(rest.is_empty());
    }
    assert_eq!(tlv::encode(0x09, &vec![0u8; 65_536]), Err(TrustError::ValueTooLong { tag: 0x09, length: 65_536 }));
    let encoded = tlv::encode(0x0E, b"ITLFile.tlv\0").unwrap();
    for cut in 0..encoded.len() {
        assert!(matches!(tlv::decode(&encoded[..cut]), Err(TrustError::Truncated { .. })), "cut at {cut}");
    }
}

#[test]
fn w02_itl_round_trip() {
    let signer = sast_a();
    let built = itl_builder(&signer).build().expect("ITL builds");
    assert!(built.warnings.is_empty());
    let parsed = TrustList::parse(&built.bytes, Mode::Strict).expect("parses");
    assert_eq!(parsed.header.filename, "ITLFile.tlv");
    assert_eq!(parsed.kind(), Some(TrustListKind::Itl));
    let roles: Vec<Role> = parsed.records.iter().map(|r| r.role).collect();
    assert_eq!(roles, vec![Role::Sast, Role::CcmTftp, Role::Capf, Role::Tvs]);
    let ders: Vec<&[u8]> = parsed.records.iter().map(|r| r.certificate_der.as_slice()).collect();
    assert_eq!(ders, vec![sast_a_cert(), ccm_tftp_cert(), capf_cert(), tvs_cert()]);
    let serials: Vec<&[u8]> = parsed.records.iter().map(|r| r.serial.as_slice()).collect();
    assert_eq!(serials, vec![&[0x3A, 0x7F][..], &[0x10], &[0xC1, 0x02], &[0x30]]);
    assert_eq!(parsed.records, built.records);
    let signer_record = parsed.verify().expect("the signature verifies");
    assert_eq!(signer_record.certificate_der, sast_a_cert());
    assert_eq!(parsed.records[0].subject, "CN=SAST,O=Example,OU=Voice");
}

#[test]
fn w03_header_golden() {
    let signer = sast_a();
    let file = TrustFileBuilder::new(TrustListKind::Itl, &signer, T0).record(sast_a_cert(), Role::Sast).build().unwrap().bytes;
    let dn = b"CN=SAST,O=Example,OU=Voice\0";
    let mut expected = vec![0x01, 0x00, 0x02, 0x01, 0x02, 0x02, 0x00, 0x02, 0x01, 0x80, 0x1C, 0x00, 0x02, 0x01, 0x00, 0x03, 0x00, 0x41];
    expected.extend_from_slice(&[0x04, 0x00, 0x1B]);
    expected.extend_from_slice(dn);
    expected.extend_from_slice(&[0x06, 0x00, 0x1B]);
    expected.extend_from_slice(dn);
    expected.extend_from_slice(&[0x05, 0x00, 0x02, 0x3A, 0x7F]);
    expected
        .extend_from_slice(&[0x07, 0x00, 0x0F, 0x08, 0x00, 0x01, 0x01, 0x09, 0x00, 0x08, 0x0A, 0x00, 0x01, 0x00, 0x0B, 0x00, 0x01, 0x02]);
    assert_eq!(expected.len(), 101);
    assert_eq!(&file[..101], expected.as_slice(), "offsets 0-100");
    assert_eq!(&file[101..104], &[0x0C, 0x01, 0x00], "SIGNATURE inserted at 101 with 256 bytes");
    let mut tail = vec![0x0E, 0x00, 0x0C];
    tail.extend_from_slice(b"ITLFile.tlv\0");
    tail.extend_from_slice(&[0x0F, 0x00, 0x04, 0x69, 0x55, 0xB9, 0x00, 0x0D, 0x0D]);
    assert_eq!(&file[360..384], tail.as_slice(), "offsets 360-383");
    assert_eq!(u16_at(&file, 8), 384);
    // The first record starts at 384 and is the rest of the file.
    assert_eq!(&file[384..387], &[0x01, 0x00, 0x02]);
    assert_eq!(u16_at(&file, 387), file.len() - 384);
    assert_eq!(&file[384..], TrustRecord::new(sast_a_cert(), Role::Sast).unwrap().encode().unwrap().as_slice());
}

/// HEADER_LENGTH ≡ 0 mod 4, pad ∈ 0..=3 and HEADER_LENGTH = first body byte, for each file kind.
fn check_header_length(file: &[u8], body: &[u8]) {
    let header_length = u16_at(file, 8);
    assert_eq!(header_length % 4, 0, "HEADER_LENGTH {header_length}");
    assert_eq!(header_length, file.len() - body.len(), "HEADER_LENGTH is the offset of the first body byte");
    assert_eq!(&file[header_length..], body);
    // The timestamp 0x6955B900 and filenames of 'f' end in no 0x0D, so trailing 0x0D bytes are the pad.
    let pads = file[..header_length].iter().rev().take_while(|&&b| b == 0x0D).count();
    assert!(pads <= 3, "{pads} pad bytes");
    assert_eq!(parse_header(file, Mode::Strict).unwrap().pad_count, pads);
}

#[test]
fn w04_header_length_property() {
    let signer = sast_a();
    let tftp = tftp();
    let record = TrustRecord::new(sast_a_cert(), Role::Sast).unwrap().encode().unwrap();
    let mut pad_counts_seen = [false; 4];
    for filename_length in 1..=40 {
        let name = "f".repeat(filename_length);
        for hash in [HashAlgorithm::Sha1, HashAlgorithm::Sha512] {
            for version in [SignerVersion::V1_0, SignerVersion::V1_1] {
                let file = TrustFileBuilder::new(TrustListKind::Itl, &signer, T0)
                    .filename(&name)
                    .hash(hash)
                    .signer_version(version)
                    .record(sast_a_cert(), Role::Sast)
                    .build()
                    .unwrap()
                    .bytes;
                check_header_length(&file, &record);
                pad_counts_seen[parse_header(&file, Mode::Strict).unwrap().pad_count] = true;
            }
            let sgn = signed::sign(b"payload", &name, &tftp, hash, T0).unwrap();
            check_header_length(&sgn, b"payload");
        }
    }
    assert_eq!(pad_counts_seen, [true; 4], "every pad count 0..=3 occurs");
}

fn openssl_verifies(file: &[u8], key: &RsaPrivateKey, digest_flag: &str) -> Output {
    let header = parse_header(file, Mode::Strict).unwrap();
    let start = header.signature_offset;
    assert_eq!(file[start], 0x0C);
    let k = u16_at(file, start + 1);
    let mut rest = file[..start].to_vec();
    rest.extend_from_slice(&file[start + 3 + k..]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sig.bin"), &file[start + 3..start + 3 + k]).unwrap();
    std::fs::write(dir.path().join("rest.bin"), &rest).unwrap();
    let public_pem = RsaPublicKey::from(key).to_public_key_pem(LineEnding::LF).unwrap();
    std::fs::write(dir.path().join("pubkey.pem"), public_pem).unwrap();
    openssl(&["dgst", digest_flag, "-verify", "pubkey.pem", "-signature", "sig.bin", "rest.bin"], dir.path())
}

#[test]
fn w05_independent_check() {
    let signer = sast_a();
    for (hash, flag) in [(HashAlgorithm::Sha1, "-sha1"), (HashAlgorithm::Sha512, "-sha512")] {
        let file = itl_builder(&signer).hash(hash).build().unwrap().bytes;
        // In a .tlv, SIGNATURE follows 15 bytes of prefix, SIGNER_INFO and the 18-byte SIGNATURE_INFO.
        assert_eq!(parse_header(&file, Mode::Strict).unwrap().signature_offset, 15 + 3 + u16_at(&file, 16) + 18);
        let out = openssl_verifies(&file, sast_a_key(), flag);
        assert!(out.status.success(), "openssl {flag}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Verified OK");
        let sgn = signed::sign(b"<device/>", "SEP001122334455.cnf.xml", &tftp(), hash, T0).unwrap();
        assert!(openssl_verifies(&sgn, tftp_key(), flag).status.success(), ".sgn with {flag}");
    }
    // The control: a wrong key does not verify.
    let file = itl_builder(&signer).build().unwrap().bytes;
    assert!(!openssl_verifies(&file, sast_b_key(), "-sha1").status.success());
}

#[test]
fn w06_determinism() {
    let signer = sast_a();
    let first = itl_builder(&signer).build().unwrap().bytes;
    let second = itl_builder(&signer).build().unwrap().bytes;
    assert_eq!(first, second);
    // Input order does not matter: records are sorted.
    let shuffled = TrustFileBuilder::new(TrustListKind::Itl, &signer, T0)
        .record(tvs_cert(), Role::Tvs)
        .record(capf_cert(), Role::Capf)
        .record(sast_a_cert(), Role::Sast)
        .record(ccm_tftp_cert(), Role::CcmTftp)
        .build()
        .unwrap()
        .bytes;
    assert_eq!(first, shuffled);
    let changed = TrustFileBuilder::new(TrustListKind::Itl, &signer, T0)
        .record(sast_a_cert(), Role::Sast)
        .record(ccm_tftp_cert(), Role::CcmTftp)
        .record(capf_cert(), Role::Capf)
        .record(tftp_cert(), Role::Tvs)
        .build()
        .unwrap()
        .bytes;
    assert_ne!(first, changed);
    let later = itl_builder(&signer);
    let later = TrustFileBuilder { timestamp: T0 + 1, ..later }.build().unwrap().bytes;
    assert_ne!(first, later);
}

/// A self-signed RSA-2048 certificate for CN=SAST,O=Example,OU=Voice, serial 0x3A7F, grown with a SAN to exactly
/// `target` DER bytes.
fn certificate_of_size(target: usize) -> Vec<u8> {
    let mut san_length = 40;
    for _ in 0..20 {
        let san = format!("{}.example", "a".repeat(san_length));
        let der = self_signed(sast_a_key(), &voice_dn("SAST"), &[0x3A, 0x7F], vec![san]);
        if der.len() == target {
            return der;
        }
        san_length = (san_length as isize + target as isize - der.len() as isize).max(1) as usize;
    }
    panic!("no certificate of exactly {target} bytes");
}

#[test]
fn w07_records() {
    // §3.6 example: 27-byte names, 2-byte serial, RSA-2048 signed with RSA-2048, 800-byte certificate.
    let der = certificate_of_size(800);
    let record = TrustRecord::new(&der, Role::Sast).unwrap();
    assert_eq!(record.public_key.len(), 270);
    assert_eq!(record.signature.len(), 256);
    let encoded = record.encode().unwrap();
    assert_eq!(encoded.len(), 1_410);
    assert_eq!(&encoded[..5], &[0x01, 0x00, 0x02, 0x05, 0x82]);
    let tags: Vec<u8> = tlv::Elements::new(&encoded, 0, encoded.len()).map(|e| e.unwrap().tag).collect();
    assert_eq!(tags, vec![0x01, 0x03, 0x05, 0x06, 0x04, 0x07, 0x08, 0x09]);

    // Order: role ascending, the signing SAST first among SASTs, then DER ascending.
    let signer = sast_b();
    let built = TrustFileBuilder::new(TrustListKind::Ctl, &signer, T0)
        .record(tvs_cert(), Role::Tvs)
        .record(capf_cert(), Role::Capf)
        .record(sast_a_cert(), Role::Sast)
        .record(ccm_tftp_cert(), Role::CcmTftp)
        .record(sast_b_cert(), Role::Sast)
        .record(tftp_cert(), Role::Tftp)
        .record(phone_cert(), Role::Tftp)
        .build()
        .unwrap();
    let parsed = TrustList::parse(&built.bytes, Mode::Strict).unwrap();
    let codes: Vec<u16> = parsed.records.iter().map(|r| r.role.code()).collect();
    assert_eq!(codes, vec![0, 0, 2, 3, 3, 4, 21]);
    assert_eq!(parsed.records[0].certificate_der, sast_b_cert(), "the signing SAST comes first");
    assert!(parsed.records[3].certificate_der < parsed.records[4].certificate_der, "DER ascending within a role");

    // An EC P-256 record needs signer version 1.1 and carries the 65-byte uncompressed point.
    let ec = ec_certificate(&voice_dn("phone-https"), &[0x44]);
    let signer = sast_a();
    let built = TrustFileBuilder::new(TrustListKind::Itl, &signer, T0)
        .signer_version(SignerVersion::V1_1)
        .record(sast_a_cert(), Role::Sast)
        .record(&ec, Role::Tftp)
        .build()
        .unwrap();
    let parsed = TrustList::parse(&built.bytes, Mode::Strict).unwrap();
    let ec_record = parsed.records.iter().find(|r| r.role == Role::Tftp).unwrap();
    assert_eq!(ec_record.public_key.len(), 65);
    assert_eq!(ec_record.public_key[0], 0x04);
    assert_eq!(&built.bytes[10..15], &[0x1C, 0x00, 0x02, 0x01, 0x01]);
}

#[test]
fn w08_signed_file() {
    let signer = tftp();
    let payload = b"<List><ImageItem Image=\"TFTP:Desktops/320x196x4/a.png\"/></List>";
    let file = signed::sign(payload, "Desktops/320x196x4/List.xml", &signer, HashAlgorithm::Sha1, T0).unwrap();
    assert_eq!(&file[..5], &[0x01, 0x00, 0x02, 0x01, 0x00], "VERSION 1.0");
    assert_eq!(file[10], 0x03, "no 0x1C: SIGNER_INFO follows the 10-byte prefix");
    let parsed = SignedFile::parse(&file, Mode::Strict).unwrap();
    assert_eq!(parsed.header.signer_version, None);
    assert_eq!(parsed.header.filename, "Desktops/320x196x4/List.xml.sgn");
    assert_eq!(parsed.payload(), payload);
    assert_eq!(signed::strip(&file).unwrap(), payload);
    assert_eq!(&file[u16_at(&file, 8)..], payload);
    parsed.verify(SignatureCheck::Certificate(tftp_cert())).unwrap();

    let empty = signed::sign(b"", "SoftKeys.xml", &signer, HashAlgorithm::Sha1, T0).unwrap();
    let parsed = SignedFile::parse(&empty, Mode::Strict).unwrap();
    assert_eq!(parsed.payload(), b"");
    assert_eq!(u16_at(&empty, 8), empty.len());
    parsed.verify(SignatureCheck::Certificate(tftp_cert())).unwrap();
}

#[test]
fn w09_encrypted_round_trip() {
    let signer = tftp();
    let builder = EncryptedConfigBuilder::new(&signer, HashAlgorithm::Sha1, T0);
    let file = builder.encrypt("SEP001122334455.cnf.xml", CONFIG_XML, phone_cert()).unwrap();
    let parsed = EncryptedFile::parse(&file, Mode::Strict).unwrap();
    assert_eq!(parsed.header.filename, "SEP001122334455.cnf.xml.enc.sgn");
    // The hash of the plaintext before padding (docs/wire-formats.md §5.2-5.4), as openssl computes it.
    assert_eq!(parsed.encryption.plaintext_hash, openssl_digest("-sha1", CONFIG_XML));
    let ctl = TrustList::parse(&ctl_with_tftp(), Mode::Strict).unwrap();
    let plaintext = parsed.decrypt(phone_key(), Some(SignatureCheck::TrustList(&ctl))).unwrap();
    assert_eq!(plaintext, CONFIG_XML);
    assert_eq!(parsed.decrypt(phone_key(), None).unwrap(), CONFIG_XML);

    let sha512 =
        EncryptedConfigBuilder::new(&signer, HashAlgorithm::Sha512, T0).encrypt("SEP001122334455.cnf.xml", CONFIG_XML, phone_cert());
    let parsed = EncryptedFile::parse(&sha512.unwrap(), Mode::Strict).unwrap();
    assert_eq!(parsed.encryption.plaintext_hash, openssl_digest("-sha512", CONFIG_XML));
    assert_eq!(parsed.decrypt(phone_key(), Some(SignatureCheck::Certificate(tftp_cert()))).unwrap(), CONFIG_XML);
}

#[test]
fn w10_encrypted_layout() {
    let signer = tftp();
    let builder = EncryptedConfigBuilder::new(&signer, HashAlgorithm::Sha1, T0);
    let file = builder.encrypt("SEP001122334455.cnf.xml", CONFIG_XML, phone_cert()).unwrap();
    let after_signature = |offset_in_p: usize| offset_in_p + 259;
    // §5.2 worked example: SIGNER_INFO at 10 (68 bytes), SIGNATURE_INFO at 78, SIGNATURE at 96.
    assert_eq!(&file[..5], &[0x01, 0x00, 0x02, 0x02, 0x00]);
    assert_eq!(&file[10..13], &[0x03, 0x00, 0x41]);
    assert_eq!(&file[78..81], &[0x07, 0x00, 0x0F]);
    assert_eq!(&file[96..99], &[0x0C, 0x01, 0x00]);
    let filename = after_signature(96);
    assert_eq!(&file[filename..filename + 3], &[0x0E, 0x00, 0x20]);
    assert_eq!(&file[filename + 3..filename + 35], b"SEP001122334455.cnf.xml.enc.sgn\0");
    assert_eq!(file[after_signature(131)], 0x0F);
    let info = after_signature(138);
    assert_eq!(&file[info..info + 3], &[0x10, 0x01, 0x32], "0x10 = 50 + 256");
    assert_eq!(&file[info + 3..info + 6], &[0x11, 0x00, 0x1C], "0x11 = 28");
    assert_eq!(&file[info + 6..info + 10], &[0x12, 0x00, 0x01, 0x00]);
    assert_eq!(&file[info + 10..info + 13], &[0x13, 0x00, 0x10]);
    assert_eq!(&file[info + 29..info + 31], &[0x14, 0x00]);
    let key_info = info + 34;
    assert_eq!(&file[key_info..key_info + 3], &[0x15, 0x01, 0x10], "0x15 = 16 + 256");
    assert_eq!(&file[key_info + 3..key_info + 7], &[0x16, 0x00, 0x01, 0x00]);
    assert_eq!(&file[key_info + 7..key_info + 12], &[0x17, 0x00, 0x02, 0x08, 0x00], "KEY_SIZE 08 00");
    assert_eq!(&file[key_info + 12..key_info + 16], &[0x18, 0x00, 0x01, 0x01]);
    assert_eq!(&file[key_info + 16..key_info + 19], &[0x19, 0x01, 0x00]);
    assert_eq!(&file[after_signature(447)..after_signature(451)], &[0x1A, 0x00, 0x01, 0x01]);
    assert_eq!(&file[after_signature(451)..after_signature(454)], &[0x1B, 0x00, 0x14]);
    assert_eq!(&file[after_signature(474)..after_signature(477)], &[0x0D, 0x0D, 0x0D]);
    assert_eq!(u16_at(&file, 8), 736);
    assert_eq!(&file[8..10], &[0x02, 0xE0]);

    // Fresh key, IV and ciphertext on each encryption.
    let again = builder.encrypt("SEP001122334455.cnf.xml", CONFIG_XML, phone_cert()).unwrap();
    let (a, b) = (EncryptedFile::parse(&file, Mode::Strict).unwrap(), EncryptedFile::parse(&again, Mode::Strict).unwrap());
    assert_ne!(a.encryption.iv, b.encryption.iv);
    assert_ne!(a.ciphertext(), b.ciphertext());
    let unwrap = |f: &EncryptedFile| phone_key().decrypt(Pkcs1v15Encrypt, &f.encryption.wrapped_key).unwrap();
    assert_ne!(unwrap(&a), unwrap(&b));
    assert_eq!(unwrap(&a).len(), 16);
}

#[test]
fn w11_padding() {
    let signer = tftp();
    let builder = EncryptedConfigBuilder::new(&signer, HashAlgorithm::Sha1, T0);
    for (length, expected_pad) in [(32usize, 16u16), (31, 1), (0, 16), (17, 15)] {
        let plaintext = vec![b'x'; length];
        let file = builder.encrypt("SEP001122334455.cnf.xml", &plaintext, phone_cert()).unwrap();
        let parsed = EncryptedFile::parse(&file, Mode::Strict).unwrap();
        assert_eq!(parsed.encryption.pad_count, expected_pad, "plaintext length {length}");
        assert_eq!(parsed.ciphertext().len(), length + usize::from(expected_pad));
        // The pad is 0x0D bytes, not PKCS#7: decrypt by hand and look.
        let key: [u8; 16] = phone_key().decrypt(Pkcs1v15Encrypt, &parsed.encryption.wrapped_key).unwrap().try_into().unwrap();
        let padded = cbc::Decryptor::<Aes128>::new(&key.into(), &parsed.encryption.iv.into())
            .decrypt_padded_vec_mut::<NoPadding>(parsed.ciphertext())
            .unwrap();
        assert_eq!(&padded[..length], plaintext.as_slice());
        assert!(padded[length..].iter().all(|&b| b == 0x0D));
        assert_eq!(parsed.decrypt(phone_key(), None).unwrap(), plaintext);
    }
}

/// The §5.5 stub. The production renderer lives elsewhere; this test only fixes the container and certHash.
fn stub_xml(cert_hash: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<device>\n  <fullConfig>false</fullConfig>\n  <loadInformation>sip78xx.14-2-1-0001-14</loadInformation>\n  <ipAddressMode>0</ipAddressMode>\n  <capfAuthMode>0</capfAuthMode>\n  <capfList>\n    <capf><phonePort>3804</phonePort><processNodeName>capf.voice.example.net</processNodeName></capf>\n  </capfList>\n  <certHash>{cert_hash}</certHash>\n  <encrConfig>true</encrConfig>\n</device>\n"
    )
}

fn child_elements_of_device(xml: &str) -> Vec<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let (mut depth, mut names) = (0, Vec::new());
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(e) => {
                depth += 1;
                if depth == 2 {
                    names.push(String::from_utf8_lossy(e.name().as_ref()).into_owned());
                }
            }
            Event::End(_) => depth -= 1,
            Event::Eof => return names,
            _ => {}
        }
    }
}

#[test]
fn w12_stub() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("phone.pem"), pem("CERTIFICATE", phone_cert())).unwrap();
    let der = openssl(&["x509", "-in", "phone.pem", "-outform", "DER"], dir.path());
    assert!(der.status.success());
    // certHash is the MD5 of the DER (docs/wire-formats.md §5.6): the phone-config model's, checked
    // against openssl's over the DER openssl itself decoded from the PEM.
    let openssl_hash: String = openssl_digest("-md5", &der.stdout).iter().map(|b| format!("{b:02x}")).collect();
    let cert_hash = callguard::core::phone_config::DeviceCertificate::from_der(phone_cert()).expect("parses").cert_hash.to_hex();
    assert_eq!(cert_hash, openssl_hash, "certHash = MD5 of the DER, 32 lowercase hex");

    let stub = stub_xml(&cert_hash);
    let file = signed::sign(stub.as_bytes(), "SEP001122334455.cnf.xml", &tftp(), HashAlgorithm::Sha1, T0).unwrap();
    assert_eq!(&file[..5], &[0x01, 0x00, 0x02, 0x01, 0x00]);
    let parsed = SignedFile::parse(&file, Mode::Strict).unwrap();
    assert_eq!(parsed.header.filename, "SEP001122334455.cnf.xml.sgn");
    parsed.verify(SignatureCheck::Certificate(tftp_cert())).unwrap();
    let payload = std::str::from_utf8(parsed.payload()).unwrap();
    assert_eq!(
        child_elements_of_device(payload),
        ["fullConfig", "loadInformation", "ipAddressMode", "capfAuthMode", "capfList", "certHash", "encrConfig"]
    );
    assert!(payload.contains(&format!("<certHash>{openssl_hash}</certHash>")));
}

// ---------------------------------------------------------------------------------------------------------------
// §10.2 Negative tests
// ---------------------------------------------------------------------------------------------------------------

fn third_sast_cert() -> Vec<u8> {
    self_signed(other_key(), &voice_dn("SAST-C"), &[0x3A, 0x81], vec![])
}

#[test]
fn n01_sast_limit() {
    let signer = sast_a();
    let third = third_sast_cert();
    let result = TrustFileBuilder::new(TrustListKind::Ctl, &signer, T0)
        .record(sast_a_cert(), Role::Sast)
        .record(sast_b_cert(), Role::Sast)
        .record(&third, Role::Sast)
        .build();
    assert_eq!(result.unwrap_err(), TrustError::TooManySast(3));

    // A well-formed, correctly signed CTL with 3 SAST records, assembled by hand.
    let mut body = Vec::new();
    for der in [sast_a_cert(), sast_b_cert(), third.as_slice()] {
        body.extend_from_slice(&TrustRecord::new(der, Role::Sast).unwrap().encode().unwrap());
    }
    let fields = HeaderFields {
        kind: FileKind::TrustList,
        signer_version: SignerVersion::V1_0,
        hash: HashAlgorithm::Sha1,
        filename: "CTLFile.tlv",
        timestamp: T0,
        extra_elements: &[],
    };
    let file = assemble_signed(&fields, &signer, &body).unwrap();
    assert_eq!(TrustList::parse(&file, Mode::Strict).unwrap_err(), TrustError::TooManySast(3));
    let lenient = TrustList::parse(&file, Mode::Lenient).unwrap();
    assert_eq!(lenient.sast_records().count(), 3);
    lenient.verify().unwrap();
}

/// Verification of a .tlv by its own SAST, which must fail after tampering (parse errors count as failures).
fn tlv_verifies(file: &[u8]) -> bool {
    TrustList::parse(file, Mode::Strict).and_then(|list| list.verify().map(|_| ())).is_ok()
}

fn sgn_verifies(file: &[u8]) -> bool {
    SignedFile::parse(file, Mode::Strict).and_then(|f| f.verify(SignatureCheck::Certificate(tftp_cert()))).is_ok()
}

#[test]
fn n02_tamper_detection() {
    let signer = sast_a();
    let file = itl_builder(&signer).build().unwrap().bytes;
    assert!(tlv_verifies(&file));
    let header = parse_header(&file, Mode::Strict).unwrap();
    let flip = |offset: usize| {
        let mut copy = file.clone();
        copy[offset] ^= 0x01;
        copy
    };
    let signature_byte = header.signature_offset + 3 + 100;
    let record_byte = header.header_length + 200;
    let filename_byte = header.signature_offset + 3 + 256 + 3 + 2;
    assert_eq!(file[filename_byte], b'L', "inside \"ITLFile.tlv\"");
    let timestamp_byte = filename_byte - 2 + 12 + 3 + 3;
    assert_eq!(file[timestamp_byte], 0x00, "last TIMESTAMP byte");
    for (what, offset) in
        [("signature", signature_byte), ("record", record_byte), ("filename", filename_byte), ("timestamp", timestamp_byte)]
    {
        assert!(!tlv_verifies(&flip(offset)), "a flipped {what} byte must fail");
    }
    // Every single-byte flip of the whole file fails (parse or verify).
    for offset in 0..file.len() {
        assert!(!tlv_verifies(&flip(offset)), "flipped byte {offset}");
    }
    // A pad byte changed to 0x00 fails to parse or to verify, in both modes.
    assert!(header.pad_count > 0);
    let mut padless = file.clone();
    padless[header.header_length - 1] = 0x00;
    assert!(!tlv_verifies(&padless));
    assert!(TrustList::parse(&padless, Mode::Lenient).and_then(|l| l.verify().map(|_| ())).is_err());

    let sgn = signed::sign(b"<device>payload</device>", "SEP001122334455.cnf.xml", &tftp(), HashAlgorithm::Sha1, T0).unwrap();
    assert!(sgn_verifies(&sgn));
    let mut payload_flipped = sgn.clone();
    let last = payload_flipped.len() - 3;
    payload_flipped[last] ^= 0x20;
    assert!(!sgn_verifies(&payload_flipped), "a flipped payload byte must fail");
}

#[test]
fn n03_unknown_signer() {
    // Signed by SAST A, but the only SAST record is B: SIGNER_SERIAL 3A7F matches nothing.
    let body = TrustRecord::new(sast_b_cert(), Role::Sast).unwrap().encode().unwrap();
    let fields = HeaderFields {
        kind: FileKind::TrustList,
        signer_version: SignerVersion::V1_0,
        hash: HashAlgorithm::Sha1,
        filename: "ITLFile.tlv",
        timestamp: T0,
        extra_elements: &[],
    };
    let file = assemble_signed(&fields, &sast_a(), &body).unwrap();
    let list = TrustList::parse(&file, Mode::Strict).unwrap();
    assert_eq!(list.verify().unwrap_err(), TrustError::SignerNotFound);
    // And the builder refuses a signer that is not a SAST record.
    let result = TrustFileBuilder::new(TrustListKind::Itl, &sast_a(), T0).record(sast_b_cert(), Role::Sast).build();
    assert_eq!(result.unwrap_err(), TrustError::SignerNotInRecords);
}

#[test]
fn n04_signer_keys() {
    let refused = |bits: usize, legacy: bool| {
        let key = keys::generate_rsa(bits);
        let der = issued_for(&RsaPublicKey::from(&key), &voice_dn("SAST"), &[0x3A, 0x7F]);
        Signer::new(der, key, legacy)
    };
    for bits in [512, 3072, 4096] {
        assert!(matches!(refused(bits, true), Err(TrustError::SignerKeyRefused(_))), "RSA-{bits}");
    }
    assert!(matches!(refused(1024, false), Err(TrustError::SignerKeyRefused(_))), "RSA-1024 without legacySignerKeys");

    let key = keys::generate_rsa(1024);
    let der = issued_for(&RsaPublicKey::from(&key), &voice_dn("SAST"), &[0x3A, 0x7F]);
    let legacy = Signer::new(der.clone(), key, true).expect("RSA-1024 with legacySignerKeys");
    let sha1 = TrustFileBuilder::new(TrustListKind::Itl, &legacy, T0).record(&der, Role::Sast).build();
    assert!(sha1.is_ok(), "{sha1:?}");
    let sha512 = TrustFileBuilder::new(TrustListKind::Itl, &legacy, T0).hash(HashAlgorithm::Sha512).record(&der, Role::Sast).build();
    assert_eq!(sha512.unwrap_err(), TrustError::Sha512NeedsRsa2048);

    // An EC signer certificate is refused whatever RSA key comes with it.
    let ec = ec_certificate(&voice_dn("SAST"), &[0x3A, 0x7F]);
    assert!(matches!(Signer::new(ec.clone(), sast_a_key().clone(), false), Err(TrustError::SignerKeyRefused(_))));
    // A key that does not belong to the certificate is refused.
    assert!(matches!(Signer::new(sast_a_cert().to_vec(), sast_b_key().clone(), false), Err(TrustError::SignerKeyRefused(_))));

    // An EC record certificate with signer version 1.0.
    let signer = sast_a();
    let result = TrustFileBuilder::new(TrustListKind::Itl, &signer, T0).record(sast_a_cert(), Role::Sast).record(&ec, Role::Tftp).build();
    assert_eq!(result.unwrap_err(), TrustError::EcRecordNeedsSignerVersion11);
}

/// `count` distinct RSA-2048 certificates (one shared key) of at least `min_der` DER bytes, grown with SANs.
fn grown_certificates(count: usize, min_der: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let mut sans = Vec::new();
            loop {
                let cn = format!("tvs{i:02}.voice.example.net");
                let der = self_signed(other_key(), &voice_dn(&cn), &[0x40, i as u8 + 1], sans.clone());
                if der.len() >= min_der {
                    return der;
                }
                sans.push(format!("{}-{i}.voice.example.net", "s".repeat(20 + sans.len())));
            }
        })
        .collect()
}

#[test]
fn n05_itl_over_64k_refused() {
    let signer = sast_a();
    let others = grown_certificates(39, 1_100);
    let mut builder = TrustFileBuilder::new(TrustListKind::Itl, &signer, T0).record(sast_a_cert(), Role::Sast);
    for der in &others {
        assert!(der.len() >= 1_100);
        builder = builder.record(der, Role::Tvs);
    }
    assert_eq!(builder.records.len(), 40);
    match builder.build() {
        Err(TrustError::FileTooLarge { size, limit }) => {
            assert!(size > 65_536);
            assert_eq!(limit, 65_536);
        }
        other => panic!("expected FileTooLarge, got {other:?}"),
    }

    // Control: 39 certificates of about 1 000 bytes. With one certificate in two roles (SAST and TVS) that is
    // 40 records, above the 39-record warning threshold of §3.7, yet under 64 KiB.
    let others = grown_certificates(38, 940);
    let mut builder =
        TrustFileBuilder::new(TrustListKind::Itl, &signer, T0).record(sast_a_cert(), Role::Sast).record(sast_a_cert(), Role::Tvs);
    for der in &others {
        builder = builder.record(der, Role::Tvs);
    }
    let built = builder.build().expect("39 certificates fit");
    assert!(built.bytes.len() <= 65_536 && built.bytes.len() > 60_000, "{} bytes", built.bytes.len());
    assert_eq!(built.warnings, vec![BuildWarning::ManyRecords { count: 40 }]);
    TrustList::parse(&built.bytes, Mode::Strict).unwrap().verify().unwrap();
    // Exactly 39 records is not "above 39": no warning.
    builder.records.pop();
    assert!(builder.build().unwrap().warnings.is_empty());
}

#[test]
fn n06_continuity() {
    let (a, b) = (sast_a(), sast_b());
    let genesis = TrustFileBuilder::new(TrustListKind::Itl, &a, T0).record(sast_a_cert(), Role::Sast).build().unwrap().bytes;
    let genesis = TrustList::parse(&genesis, Mode::Strict).unwrap();

    let skipped = TrustFileBuilder::new(TrustListKind::Itl, &b, T0 + 1).previous(&genesis).record(sast_b_cert(), Role::Sast).build();
    assert_eq!(skipped.unwrap_err(), TrustError::BrokenTrustChain);

    // Step 1: file N, signed by A, holds {A, B}.
    let step1 = TrustFileBuilder::new(TrustListKind::Itl, &a, T0 + 1)
        .previous(&genesis)
        .record(sast_a_cert(), Role::Sast)
        .record(sast_b_cert(), Role::Sast)
        .build()
        .unwrap()
        .bytes;
    let step1 = TrustList::parse(&step1, Mode::Strict).unwrap();
    assert_eq!(step1.verify_against(&genesis).unwrap().certificate_der, sast_a_cert());
    // Step 2: file N+1, signed by B, holds {B}.
    let step2 =
        TrustFileBuilder::new(TrustListKind::Itl, &b, T0 + 2).previous(&step1).record(sast_b_cert(), Role::Sast).build().unwrap().bytes;
    let step2 = TrustList::parse(&step2, Mode::Strict).unwrap();
    assert_eq!(step2.verify_against(&step1).unwrap().certificate_der, sast_b_cert());
    // A phone still on the genesis file cannot take file N+1 directly.
    assert_eq!(step2.verify_against(&genesis).unwrap_err(), TrustError::SignerNotFound);
}

#[test]
fn n07_header_errors() {
    let signer = sast_a();
    let file = itl_builder(&signer).build().unwrap().bytes;
    let patched = |offset: usize, bytes: &[u8]| {
        let mut copy = file.clone();
        copy[offset..offset + bytes.len()].copy_from_slice(bytes);
        copy
    };
    // HASH_ALGORITHM value at 89 (element at 86), SIGNATURE_MODULUS value at 100.
    assert_eq!(TrustList::parse(&patched(89, &[2]), Mode::Strict).unwrap_err(), TrustError::UnsupportedHashAlgorithm(2));
    assert_eq!(TrustList::parse(&patched(89, &[2]), Mode::Lenient).unwrap_err(), TrustError::UnsupportedHashAlgorithm(2));
    assert_eq!(
        TrustList::parse(&patched(100, &[1]), Mode::Strict).unwrap_err(),
        TrustError::SignatureLengthMismatch { modulus_bytes: 128, signature_bytes: 256 }
    );
    let beyond = u16::try_from(file.len() + 4).unwrap_or(0xFFFC).to_be_bytes();
    assert!(matches!(TrustList::parse(&patched(8, &beyond), Mode::Strict), Err(TrustError::BadHeaderLength { .. })));
    assert!(matches!(TrustList::parse(&patched(8, &[0x01, 0x81]), Mode::Strict), Err(TrustError::BadHeaderLength { .. })));
    assert!(matches!(TrustList::parse(&patched(8, &[0x00, 0x08]), Mode::Lenient), Err(TrustError::BadHeaderLength { .. })));

    let header_length = u16_at(&file, 8);
    let overrun = u16::try_from(file.len() - header_length + 1).unwrap().to_be_bytes();
    assert!(matches!(TrustList::parse(&patched(header_length + 3, &overrun), Mode::Strict), Err(TrustError::BadRecordLength { .. })));

    // A record without CERTIFICATE.
    let full = TrustRecord::new(sast_a_cert(), Role::Sast).unwrap().encode().unwrap();
    let certificate_element = 3 + sast_a_cert().len();
    let mut record = full[..full.len() - certificate_element].to_vec();
    let length = u16::try_from(record.len()).unwrap().to_be_bytes();
    record[3..5].copy_from_slice(&length);
    let fields = HeaderFields {
        kind: FileKind::TrustList,
        signer_version: SignerVersion::V1_0,
        hash: HashAlgorithm::Sha1,
        filename: "ITLFile.tlv",
        timestamp: T0,
        extra_elements: &[],
    };
    let no_certificate = assemble_signed(&fields, &signer, &record).unwrap();
    assert_eq!(TrustList::parse(&no_certificate, Mode::Strict).unwrap_err(), TrustError::MissingElement { tag: 0x09, name: "CERTIFICATE" });

    // An unknown header tag: Strict refuses it, Lenient records and skips it, and the signature still verifies.
    let unknown = tlv::encode(0x30, b"vendor").unwrap();
    let fields = HeaderFields {
        kind: FileKind::Signed,
        signer_version: SignerVersion::V1_0,
        hash: HashAlgorithm::Sha1,
        filename: "SoftKeys.xml.sgn",
        timestamp: T0,
        extra_elements: &unknown,
    };
    let sgn = assemble_signed(&fields, &tftp(), b"<softKeyCfg/>").unwrap();
    assert!(matches!(SignedFile::parse(&sgn, Mode::Strict), Err(TrustError::UnknownTag { tag: 0x30, .. })));
    let lenient = SignedFile::parse(&sgn, Mode::Lenient).unwrap();
    assert_eq!(lenient.header.unknown_tags, vec![0x30]);
    assert_eq!(lenient.payload(), b"<softKeyCfg/>");
    lenient.verify(SignatureCheck::Certificate(tftp_cert())).unwrap();

    // A repeated header tag.
    let repeated = tlv::encode(header_tag::TIMESTAMP, &T0.to_be_bytes()).unwrap();
    let fields = HeaderFields { extra_elements: &repeated, ..fields };
    let sgn = assemble_signed(&fields, &tftp(), b"").unwrap();
    assert!(matches!(SignedFile::parse(&sgn, Mode::Lenient), Err(TrustError::DuplicateTag { tag: 0x0F, .. })));
}

#[test]
fn n08_wrong_sgn_signer() {
    let sgn = signed::sign(b"<device/>", "SEP001122334455.cnf.xml", &tftp(), HashAlgorithm::Sha1, T0).unwrap();
    let parsed = SignedFile::parse(&sgn, Mode::Strict).unwrap();
    // The TFTP certificate listed only as CAPF: not a configuration signer.
    let signer = sast_a();
    let wrong_role = TrustFileBuilder::new(TrustListKind::Ctl, &signer, T0)
        .record(sast_a_cert(), Role::Sast)
        .record(tftp_cert(), Role::Capf)
        .build()
        .unwrap();
    let wrong_role = TrustList::parse(&wrong_role.bytes, Mode::Strict).unwrap();
    assert_eq!(parsed.verify(SignatureCheck::TrustList(&wrong_role)).unwrap_err(), TrustError::SignerNotFound);
    // Listed as TFTP: verifies. Checked against another certificate: fails.
    let right = TrustList::parse(&ctl_with_tftp(), Mode::Strict).unwrap();
    parsed.verify(SignatureCheck::TrustList(&right)).unwrap();
    assert_eq!(parsed.verify(SignatureCheck::Certificate(sast_a_cert())).unwrap_err(), TrustError::SignerNotFound);
    // Signed by a key other than the TFTP record's, under the TFTP certificate's serial.
    let impostor = Signer::new(self_signed(other_key(), &voice_dn("TFTP"), &[0x01, 0x01], vec![]), other_key().clone(), false).unwrap();
    let forged = signed::sign(b"<device/>", "SEP001122334455.cnf.xml", &impostor, HashAlgorithm::Sha1, T0).unwrap();
    let forged = SignedFile::parse(&forged, Mode::Strict).unwrap();
    assert_eq!(forged.verify(SignatureCheck::TrustList(&right)).unwrap_err(), TrustError::BadSignature);
}

#[test]
fn n09_encrypted_errors() {
    let signer = tftp();
    let builder = EncryptedConfigBuilder::new(&signer, HashAlgorithm::Sha1, T0);
    let file = builder.encrypt("SEP001122334455.cnf.xml", CONFIG_XML, phone_cert()).unwrap();
    let check = SignatureCheck::Certificate(tftp_cert());

    // Tampered ciphertext: the signature check fails first. With the wrong device key, an attempted decryption
    // would have reported KeyUnwrapFailed instead.
    let mut tampered = file.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let tampered = EncryptedFile::parse(&tampered, Mode::Strict).unwrap();
    assert_eq!(tampered.decrypt(phone_key(), Some(check)).unwrap_err(), TrustError::BadSignature);
    assert_eq!(tampered.decrypt(other_key(), Some(check)).unwrap_err(), TrustError::BadSignature);

    let parsed = EncryptedFile::parse(&file, Mode::Strict).unwrap();
    assert_eq!(parsed.decrypt(other_key(), Some(check)).unwrap_err(), TrustError::KeyUnwrapFailed);
    assert_eq!(parsed.decrypt(other_key(), None).unwrap_err(), TrustError::KeyUnwrapFailed);

    // Hand-made files, correctly signed, with bad padding.
    let text = b"<device>0123456789</device>".to_vec(); // 27 bytes: p = 5
    let hash = Sha1::digest(&text).to_vec();
    let padded = |fill: u8, count: usize| {
        let mut padded = text.clone();
        padded.resize(text.len() + count, fill);
        padded
    };
    let good = EncryptedFile::parse(&handmade_encrypted(&padded(0x0D, 5), 5, hash.clone()), Mode::Strict).unwrap();
    assert_eq!(good.decrypt(phone_key(), Some(check)).unwrap(), text, "the hand-made control decrypts");
    let zero = EncryptedFile::parse(&handmade_encrypted(&padded(0x0D, 5), 0, hash.clone()), Mode::Strict).unwrap();
    assert_eq!(zero.decrypt(phone_key(), Some(check)).unwrap_err(), TrustError::BadPadCount(0));
    let seventeen = EncryptedFile::parse(&handmade_encrypted(&padded(0x0D, 21), 17, hash.clone()), Mode::Strict).unwrap();
    assert_eq!(seventeen.decrypt(phone_key(), Some(check)).unwrap_err(), TrustError::BadPadCount(17));
    let pkcs7 = EncryptedFile::parse(&handmade_encrypted(&padded(0x05, 5), 5, hash.clone()), Mode::Strict).unwrap();
    assert_eq!(pkcs7.decrypt(phone_key(), Some(check)).unwrap_err(), TrustError::BadPadding);
    let wrong_hash = EncryptedFile::parse(&handmade_encrypted(&padded(0x0D, 5), 5, vec![0u8; 20]), Mode::Strict).unwrap();
    assert_eq!(wrong_hash.decrypt(phone_key(), Some(check)).unwrap_err(), TrustError::PlaintextHashMismatch);

    // An EC device certificate.
    let ec = ec_certificate(&voice_dn("SEP0011223344AA"), &[0x51]);
    assert!(matches!(builder.encrypt("SEP0011223344AA.cnf.xml", CONFIG_XML, &ec), Err(TrustError::EncryptUnsupportedKeyType(_))));
}

// ---------------------------------------------------------------------------------------------------------------
// DN strings (§1.4) on real certificates
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn dn_strings_keep_encoded_order_and_escape() {
    let dn = vec![
        (DnType::CountryName, "NZ"),
        (DnType::OrganizationName, "Example, Inc."),
        (DnType::CommonName, " sast#1 "),
        (DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]), "pki@example.net"),
    ];
    let der = self_signed(other_key(), &dn, &[0x77], vec![]);
    let record = TrustRecord::new(&der, Role::Sast).unwrap();
    let email_hex: String = [&[0x0C, 15][..], b"pki@example.net"].concat().iter().map(|b| format!("{b:02X}")).collect();
    assert_eq!(record.subject, format!("C=NZ,O=Example\\, Inc.,CN=\\ sast#1\\ ,1.2.840.113549.1.9.1=#{email_hex}"));
    assert_eq!(record.issuer, record.subject);
    let encoded = record.encode().unwrap();
    let subject = tlv::Elements::new(&encoded, 5, encoded.len()).next().unwrap().unwrap();
    assert_eq!(subject.tag, 0x03);
    assert_eq!(subject.value.last(), Some(&0), "NUL appended");
    assert!(check_filename("ITLFile.tlv").is_ok());
}

// ---------------------------------------------------------------------------------------------------------------
// The parser never panics
// ---------------------------------------------------------------------------------------------------------------

fn parse_everything(bytes: &[u8]) {
    for mode in [Mode::Strict, Mode::Lenient] {
        let _ = parse_header(bytes, mode);
        if let Ok(list) = TrustList::parse(bytes, mode) {
            let _ = list.verify();
        }
        if let Ok(file) = SignedFile::parse(bytes, mode) {
            let _ = file.verify(SignatureCheck::Certificate(tftp_cert()));
        }
        if let Ok(file) = EncryptedFile::parse(bytes, mode) {
            let _ = file.decrypt(phone_key(), None);
        }
    }
    if let Ok(description) = callguard::core::trust::describe(bytes) {
        let _ = description.to_string();
        let _ = serde_json::to_string(&description);
    }
    let _ = signed::strip(bytes);
}

fn valid_files() -> &'static [Vec<u8>] {
    static FILES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FILES.get_or_init(|| {
        let signer = sast_a();
        let itl = itl_builder(&signer).build().unwrap().bytes;
        let sgn = signed::sign(b"<device/>", "SEP001122334455.cnf.xml", &tftp(), HashAlgorithm::Sha1, T0).unwrap();
        let enc =
            EncryptedConfigBuilder::new(&tftp(), HashAlgorithm::Sha1, T0).encrypt("SEP001122334455.cnf.xml", CONFIG_XML, phone_cert());
        vec![itl, sgn, enc.unwrap()]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        parse_everything(&bytes);
    }

    #[test]
    fn arbitrary_headers_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..400), version in 0usize..3, length in 0u16..512) {
        // A plausible preamble so that the scan runs deep.
        let versions = [[1u8, 2], [1, 0], [2, 0]];
        let mut bytes = vec![0x01, 0x00, 0x02, versions[version][0], versions[version][1], 0x02, 0x00, 0x02];
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.extend_from_slice(&tail);
        parse_everything(&bytes);
    }

    #[test]
    fn mutated_files_never_panic_nor_verify(which in 0usize..3, edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        let mut bytes = valid_files()[which].clone();
        let mut changed = false;
        for (index, value) in &edits {
            let offset = index.index(bytes.len());
            changed |= bytes[offset] != *value;
            bytes[offset] = *value;
        }
        parse_everything(&bytes);
        if changed {
            let verified = match which {
                0 => tlv_verifies(&bytes),
                1 => sgn_verifies(&bytes),
                _ => EncryptedFile::parse(&bytes, Mode::Strict).and_then(|f| f.verify(SignatureCheck::Certificate(tftp_cert()))).is_ok(),
            };
            prop_assert!(!verified, "a changed file verified");
        }
    }

    /// W-4 as a property over .enc.sgn as well: any plaintext length and file name.
    #[test]
    fn w04_header_length_property_enc_sgn(name_length in 1usize..=40, plaintext_length in 0usize..100, sha512 in any::<bool>()) {
        let hash = if sha512 { HashAlgorithm::Sha512 } else { HashAlgorithm::Sha1 };
        let name = "f".repeat(name_length);
        let file = EncryptedConfigBuilder::new(&tftp(), hash, T0).encrypt(&name, &vec![b'x'; plaintext_length], phone_cert()).unwrap();
        let header_length = u16_at(&file, 8);
        prop_assert_eq!(header_length % 4, 0);
        let body = file.len() - header_length;
        prop_assert_eq!(body, plaintext_length + usize::from(callguard::core::trust::encrypted::pad_count(plaintext_length)));
        prop_assert!(parse_header(&file, Mode::Strict).unwrap().pad_count <= 3);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------------------------------------------

fn callguard(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_callguard")).args(args).output().expect("callguard runs")
}

struct CliFiles {
    dir: tempfile::TempDir,
}

impl CliFiles {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let signer = sast_a();
        let write = |name: &str, bytes: &[u8]| std::fs::write(dir.path().join(name), bytes).unwrap();
        write("ITLFile.tlv", &itl_builder(&signer).build().unwrap().bytes);
        write("CTLFile.tlv", &ctl_with_tftp());
        write(
            "SEP001122334455.cnf.xml.sgn",
            &signed::sign(CONFIG_XML, "SEP001122334455.cnf.xml", &tftp(), HashAlgorithm::Sha1, T0).unwrap(),
        );
        let enc =
            EncryptedConfigBuilder::new(&tftp(), HashAlgorithm::Sha1, T0).encrypt("SEP001122334455.cnf.xml", CONFIG_XML, phone_cert());
        write("SEP001122334455.cnf.xml.enc.sgn", &enc.unwrap());
        write("tftp.pem", pem("CERTIFICATE", tftp_cert()).as_bytes());
        write("phone-key.pem", keys::pkcs8_pem(phone_key()).as_bytes());
        write("garbage.bin", b"this is not a trust file");
        CliFiles { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, args: &[&str]) -> Output {
        let args: Vec<std::ffi::OsString> = args
            .iter()
            .map(|a| if a.starts_with('-') || *a == "trust" || !a.contains('.') { (*a).into() } else { self.path(a).into_os_string() })
            .collect();
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        callguard(&refs)
    }

    fn flipped(&self, name: &str, from_end: usize) -> String {
        let mut bytes = std::fs::read(self.path(name)).unwrap();
        let offset = bytes.len() - from_end;
        bytes[offset] ^= 0x01;
        let flipped = format!("flipped-{name}");
        std::fs::write(self.path(&flipped), bytes).unwrap();
        flipped
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn cli_inspect_text_and_json() {
    let files = CliFiles::new();
    let out = files.run(&["trust", "inspect", "ITLFile.tlv"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for expected in ["ITLFile.tlv", "1.2", "CN=SAST,O=Example,OU=Voice", "3A7F", "2026-01-01T00:00:00Z", "CCM+TFTP", "C102", "RSA-2048"] {
        assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
    }

    let out = files.run(&["trust", "inspect", "ITLFile.tlv", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(json["kind"], ".tlv");
    assert_eq!(json["header"]["filename"], "ITLFile.tlv");
    assert_eq!(json["header"]["timestamp"], T0);
    assert_eq!(json["header"]["timestamp_rfc3339"], "2026-01-01T00:00:00Z");
    assert_eq!(json["header"]["hash_algorithm_code"], 1);
    assert_eq!(json["header"]["signer_serial_hex"], "3A7F");
    let roles: Vec<&str> = json["records"].as_array().unwrap().iter().map(|r| r["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["SAST", "CCM+TFTP", "CAPF", "TVS"]);
    let expected_fingerprint: String = sha2::Sha256::digest(sast_a_cert()).iter().map(|b| format!("{b:02X}")).collect();
    assert_eq!(json["records"][0]["certificate_sha256"], expected_fingerprint.as_str());
    assert_eq!(json["records"][0]["public_key"]["bits"], 2048);

    let out = files.run(&["trust", "inspect", "SEP001122334455.cnf.xml.enc.sgn", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["kind"], ".enc.sgn");
    assert_eq!(json["header"]["encryption"]["key_size_bits"], 2048);
    assert_eq!(json["header"]["header_length"], 736);

    let out = files.run(&["trust", "inspect", "garbage.bin"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not a signed file"), "{}", stderr(&out));
}

#[test]
fn cli_verify() {
    let files = CliFiles::new();
    let ok = files.run(&["trust", "verify", "ITLFile.tlv"]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    let ok = files.run(&["trust", "verify", "CTLFile.tlv", "--ctl", "ITLFile.tlv"]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    let ok = files.run(&["trust", "verify", "SEP001122334455.cnf.xml.sgn", "--ctl", "CTLFile.tlv"]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    let ok = files.run(&["trust", "verify", "SEP001122334455.cnf.xml.enc.sgn", "--cert", "tftp.pem"]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));

    let flipped = files.flipped("ITLFile.tlv", 40);
    let bad = files.run(&["trust", "verify", &flipped]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("§"), "the reason cites its section: {}", stderr(&bad));
    let flipped = files.flipped("SEP001122334455.cnf.xml.sgn", 5);
    let bad = files.run(&["trust", "verify", &flipped, "--cert", "tftp.pem"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("does not verify"), "{}", stderr(&bad));
    // The ITL holds CCM+TFTP with another key, so the TFTP-signed file has no signer there.
    let bad = files.run(&["trust", "verify", "SEP001122334455.cnf.xml.sgn", "--ctl", "ITLFile.tlv"]);
    assert_eq!(bad.status.code(), Some(1));
}

#[test]
fn cli_decrypt() {
    let files = CliFiles::new();
    let out = files.run(&["trust", "decrypt", "SEP001122334455.cnf.xml.enc.sgn", "--key", "phone-key.pem", "--cert", "tftp.pem"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out.stdout, CONFIG_XML);
    assert!(!stderr(&out).contains("NOT checked"));

    let out = files.run(&["trust", "decrypt", "SEP001122334455.cnf.xml.enc.sgn", "--key", "phone-key.pem"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, CONFIG_XML);
    assert!(stderr(&out).contains("signature was NOT checked"), "{}", stderr(&out));

    let out = files.run(&[
        "trust",
        "decrypt",
        "SEP001122334455.cnf.xml.enc.sgn",
        "--key",
        "phone-key.pem",
        "--ctl",
        "CTLFile.tlv",
        "--out",
        "plain.xml",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read(files.path("plain.xml")).unwrap(), CONFIG_XML);

    let flipped = files.flipped("SEP001122334455.cnf.xml.enc.sgn", 3);
    let out = files.run(&["trust", "decrypt", &flipped, "--key", "phone-key.pem", "--cert", "tftp.pem"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "nothing is decrypted when the signature fails");
}
