//! Oracles that are not the code under test.
//!
//! Files the real `callguard build` writes are taken apart here by a reader written from the documented
//! layout (docs/wire-formats.md §2, §3.2-§3.4, §3.6, §5.2), never by the crate's parser, and checked with the
//! `openssl` command-line tool: signatures with `openssl dgst -verify` over exactly the signed bytes, the
//! encrypted configuration with `openssl pkeyutl -decrypt` and `openssl enc -d`. In the other direction the
//! crate reads inputs made elsewhere: trust files assembled byte by byte in this file and signed with
//! `openssl dgst -sign`, and certificates, keys and requests made by `openssl req`, `openssl x509`,
//! `openssl genpkey` and `openssl pkcs8`. Fails, never skips, when `openssl` is missing.

#[path = "support/peers.rs"]
mod peers;
#[path = "support/process.rs"]
mod process;
use peers::require;
use process::copy_quickstart;

use std::collections::BTreeMap;
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use callguard::core::build::{BuildOptions, build_paths};
use callguard::core::pki::keys;
use callguard::core::trust::{
    EncryptedConfigBuilder, EncryptedFile, HashAlgorithm, Mode, Role, SignatureCheck, SignedFile, Signer, TrustList,
};

// ---------------------------------------------------------------------------------------------------------
// Peers

fn callguard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_callguard")).args(args).output().expect("the callguard binary runs")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// `openssl ARGS` run in `dir`; the test fails when openssl is not installed.
fn openssl(dir: &Path, args: &[&str]) -> Output {
    require("openssl", "openssl");
    Command::new("openssl").args(args).current_dir(dir).output().unwrap_or_else(|e| panic!("cannot run openssl {args:?}: {e}"))
}

/// `openssl ARGS` that must succeed; its standard output.
fn openssl_ok(dir: &Path, args: &[&str]) -> Vec<u8> {
    let output = openssl(dir, args);
    assert!(output.status.success(), "openssl {args:?} failed:\n{}", text(&output));
    output.stdout
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The serial openssl prints for a PEM certificate, upper-case hex as `serial=` shows it.
fn openssl_serial(dir: &Path, certificate_pem: &Path) -> String {
    let out = openssl_ok(dir, &["x509", "-in", certificate_pem.to_str().unwrap(), "-noout", "-serial"]);
    String::from_utf8(out).unwrap().trim().strip_prefix("serial=").expect("serial=HEX").to_owned()
}

fn openssl_der(dir: &Path, certificate_pem: &Path) -> Vec<u8> {
    openssl_ok(dir, &["x509", "-in", certificate_pem.to_str().unwrap(), "-outform", "DER"])
}

/// Whether `openssl dgst -DIGEST -verify` accepts `signature` over `data` with the key of `certificate_pem`.
/// openssl must answer one of its two verdicts; anything else fails the test.
fn openssl_verifies(dir: &Path, certificate_pem: &Path, digest: &str, data: &[u8], signature: &[u8]) -> bool {
    let public_key = openssl_ok(dir, &["x509", "-in", certificate_pem.to_str().unwrap(), "-noout", "-pubkey"]);
    fs::write(dir.join("verify-pubkey.pem"), public_key).unwrap();
    fs::write(dir.join("verify-data.bin"), data).unwrap();
    fs::write(dir.join("verify-sig.bin"), signature).unwrap();
    let output = openssl(dir, &["dgst", digest, "-verify", "verify-pubkey.pem", "-signature", "verify-sig.bin", "verify-data.bin"]);
    match (output.status.success(), String::from_utf8_lossy(&output.stdout).trim()) {
        (true, "Verified OK") => true,
        (false, "Verification failure") => false,
        _ => panic!("openssl dgst {digest} -verify gave no verdict:\n{}", text(&output)),
    }
}

// ---------------------------------------------------------------------------------------------------------
// The documented layout, read by hand

/// One element of docs/wire-formats.md §2.1: `tag: u8 | length: u16 big-endian | value`.
#[derive(Debug, Clone)]
struct Element {
    tag: u8,
    at: usize,
    value: Range<usize>,
}

fn element_at(bytes: &[u8], at: usize) -> Element {
    assert!(at + 3 <= bytes.len(), "an element at {at} runs past the end ({} bytes)", bytes.len());
    let length = usize::from(u16::from_be_bytes([bytes[at + 1], bytes[at + 2]]));
    let value = at + 3..at + 3 + length;
    assert!(value.end <= bytes.len(), "the element of tag {:#04x} at {at} runs past the end", bytes[at]);
    Element { tag: bytes[at], at, value }
}

/// The container tags of a header (docs/wire-formats.md §2.3): SIGNER_INFO, SIGNATURE_INFO,
/// SIGNATURE_ALGORITHM_INFO, and in `.enc.sgn` ENCRYPTION_INFO, its IV_INFO and KEY_INFO.
const CONTAINERS: [u8; 6] = [0x03, 0x07, 0x09, 0x10, 0x11, 0x15];

/// A header read by docs/wire-formats.md §3.2-§3.4 and §5.2: every element from offset 0 to HEADER_LENGTH,
/// containers opened, then 0 to 3 bare 0x0D pad bytes (§2.2).
#[derive(Debug)]
struct Header {
    version: [u8; 2],
    length: usize,
    /// Each non-container element's value, by tag; every header tag occurs once (§3.3).
    values: BTreeMap<u8, Range<usize>>,
    /// Top-level tags in file order.
    top: Vec<u8>,
    /// The SIGNATURE element (tag 0x0C), tag and length included.
    signature: Element,
}

fn collect(bytes: &[u8], element: &Element, values: &mut BTreeMap<u8, Range<usize>>) {
    if CONTAINERS.contains(&element.tag) {
        let mut at = element.value.start;
        while at < element.value.end {
            let child = element_at(bytes, at);
            assert!(child.value.end <= element.value.end, "a child of {:#04x} overruns it", element.tag);
            collect(bytes, &child, values);
            at = child.value.end;
        }
    } else {
        assert!(values.insert(element.tag, element.value.clone()).is_none(), "tag {:#04x} twice in the header", element.tag);
    }
}

fn read_header(bytes: &[u8]) -> Header {
    let version = element_at(bytes, 0);
    assert_eq!((version.tag, version.value.len()), (0x01, 2), "VERSION first (§3.3)");
    let length_element = element_at(bytes, 5);
    assert_eq!((length_element.tag, length_element.value.len()), (0x02, 2), "HEADER_LENGTH second (§3.3)");
    let length = usize::from(u16::from_be_bytes([bytes[8], bytes[9]]));
    assert!(length <= bytes.len(), "HEADER_LENGTH {length} beyond the file");
    assert_eq!(length % 4, 0, "HEADER_LENGTH is a multiple of 4 (§3.4)");
    let (mut values, mut top, mut pad, mut signature) = (BTreeMap::new(), Vec::new(), 0, None);
    let mut at = 0;
    while at < length {
        if bytes[at] == 0x0D {
            pad += 1;
            at += 1;
            continue;
        }
        assert_eq!(pad, 0, "pad bytes come only at the end of the header (§2.2)");
        let element = element_at(bytes, at);
        assert!(element.value.end <= length, "an element overruns HEADER_LENGTH");
        top.push(element.tag);
        if element.tag == 0x0C {
            signature = Some(element.clone());
        }
        collect(bytes, &element, &mut values);
        at = element.value.end;
    }
    assert!(pad <= 3, "{pad} pad bytes (§3.4 step 3)");
    Header { version: [bytes[3], bytes[4]], length, values, top, signature: signature.expect("a SIGNATURE element (§3.3)") }
}

impl Header {
    fn value<'b>(&self, bytes: &'b [u8], tag: u8) -> &'b [u8] {
        let range = self.values.get(&tag).unwrap_or_else(|| panic!("no element {tag:#04x} in the header"));
        &bytes[range.clone()]
    }

    /// What was signed: the whole file without the SIGNATURE element (§3.4 steps 6-7).
    fn signed_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        [&bytes[..self.signature.at], &bytes[self.signature.value.end..]].concat()
    }

    fn signature_value<'b>(&self, bytes: &'b [u8]) -> &'b [u8] {
        &bytes[self.signature.value.clone()]
    }
}

/// The records of a `.tlv` after its header (docs/wire-formats.md §3.6): RECORD_LENGTH (tag 0x01, u16, counting
/// the whole record) and then the record's elements, each by tag.
fn read_records(bytes: &[u8], header_length: usize) -> Vec<BTreeMap<u8, Vec<u8>>> {
    let mut records = Vec::new();
    let mut at = header_length;
    while at < bytes.len() {
        let length = element_at(bytes, at);
        assert_eq!((length.tag, length.value.len()), (0x01, 2), "a record starts with RECORD_LENGTH");
        let end = at + usize::from(u16::from_be_bytes([bytes[at + 3], bytes[at + 4]]));
        assert!(end <= bytes.len(), "RECORD_LENGTH runs past the end");
        let mut fields = BTreeMap::new();
        let mut inner = length.value.end;
        while inner < end {
            let element = element_at(bytes, inner);
            assert!(element.value.end <= end, "an element overruns its record");
            fields.insert(element.tag, bytes[element.value.clone()].to_vec());
            inner = element.value.end;
        }
        records.push(fields);
        at = end;
    }
    records
}

fn u16_value(bytes: &[u8]) -> u16 {
    u16::from_be_bytes(bytes.try_into().expect("a u16 value"))
}

// ---------------------------------------------------------------------------------------------------------
// The quickstart, built by the real binary

/// A copy of examples/quickstart with its own state directory.
struct Quickstart {
    dir: tempfile::TempDir,
    manifests: PathBuf,
    state: PathBuf,
}

impl Quickstart {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let manifests = copy_quickstart(dir.path());
        let state = dir.path().join("state");
        Quickstart { dir, manifests, state }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn edit(&self, file: &str, from: &str, to: &str) {
        let path = self.manifests.join(file);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} does not contain {from:?}");
        fs::write(path, text.replacen(from, to, 1)).unwrap();
    }

    fn build(&self) {
        let output = callguard(&["build", self.manifests.to_str().unwrap(), "--state-dir", self.state.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(0), "callguard build:\n{}", text(&output));
    }

    fn served(&self, name: &str) -> Vec<u8> {
        fs::read(self.state.join("tftp/default").join(name)).unwrap_or_else(|e| panic!("{name} is not served: {e}"))
    }

    fn served_names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.state.join("tftp/default"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The TFTP certificate of the first node, which signs the ITL and every phone file (§3.1), as the build
    /// stored it: PEM.
    fn tftp_certificate(&self) -> PathBuf {
        self.state.join("namespaces/default/certs/cm1.callmanager-tftp.crt")
    }

    /// The certificate of a SecurityToken, as the quickstart's Secret holds it (not as the build read it).
    fn token_certificate(&self, token: &str) -> PathBuf {
        let secrets = fs::read_to_string(self.manifests.join("secrets.yaml")).unwrap();
        for document in serde_yaml::Deserializer::from_str(&secrets) {
            let secret: serde_yaml::Value = serde::Deserialize::deserialize(document).unwrap();
            if secret["metadata"]["name"].as_str() == Some(token) {
                let pem = secret["stringData"]["certificate.pem"].as_str().expect("a certificate.pem");
                let path = self.path(&format!("{token}.pem"));
                fs::write(&path, pem).unwrap();
                return path;
            }
        }
        panic!("no Secret {token} in the quickstart");
    }
}

/// Checks one signed file of the build against `signer_pem` with openssl, from the bytes alone: the
/// version, the header's hash and modulus codes, SIGNER_SERIAL against openssl's reading of the
/// certificate, FILENAME, and the signature over exactly the signed range. A flipped byte, and another
/// signer's key, must not verify: the control that shows the check can fail.
fn assert_signed_by(
    dir: &Path,
    bytes: &[u8],
    version: [u8; 2],
    filename: &str,
    signer_pem: &Path,
    other_pem: &Path,
    (hash_code, digest): (u8, &str),
) -> Header {
    let header = read_header(bytes);
    assert_eq!(header.version, version, "{filename}: VERSION");
    assert_eq!(header.value(bytes, 0x08), [hash_code], "{filename}: HASH_ALGORITHM (§1.6)");
    assert_eq!(header.value(bytes, 0x0A), [0], "{filename}: SIGNATURE_ALGORITHM");
    assert_eq!(header.value(bytes, 0x0B), [2], "{filename}: SIGNATURE_MODULUS, 2048 bits");
    assert_eq!(header.signature_value(bytes).len(), 256, "{filename}: a 2048-bit signature");
    assert_eq!(header.value(bytes, 0x0E), format!("{filename}\0").as_bytes(), "FILENAME + NUL (§3.3)");
    assert_eq!(
        hex(header.value(bytes, 0x05)).to_uppercase(),
        openssl_serial(dir, signer_pem),
        "{filename}: SIGNER_SERIAL is the signer's serial, no sign octet (§1.5)"
    );
    // SIGNATURE sits after SIGNATURE_INFO and before FILENAME (§3.3, row 6).
    let at = header.top.iter().position(|&t| t == 0x0C).unwrap();
    assert_eq!((header.top[at - 1], header.top[at + 1]), (0x07, 0x0E), "{filename}: {:02x?}", header.top);

    let signed = header.signed_bytes(bytes);
    let signature = header.signature_value(bytes);
    assert!(openssl_verifies(dir, signer_pem, digest, &signed, signature), "{filename}: openssl does not verify its signature");
    let mut flipped = signed.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    assert!(!openssl_verifies(dir, signer_pem, digest, &flipped, signature), "{filename}: a flipped byte still verifies");
    assert!(!openssl_verifies(dir, other_pem, digest, &signed, signature), "{filename}: another key verifies");
    header
}

/// docs/wire-formats.md §3.3-§3.6 and §4 on what `callguard build` writes for the quickstart, in SHA-1 (its
/// setting) and SHA-512: the ITL signed by the TFTP certificate, the CTL by the signing token, every
/// `SEP<MAC>.cnf.xml.sgn` by the TFTP certificate, each verified by `openssl dgst -verify`.
#[test]
fn quickstart_trust_lists_and_signed_files_verify_with_openssl() {
    for (hash_code, digest, setting) in [(1u8, "-sha1", "SHA1"), (3, "-sha512", "SHA512")] {
        let quickstart = Quickstart::new();
        if setting != "SHA1" {
            quickstart.edit("cluster.yaml", "hashAlgorithm: SHA1", &format!("hashAlgorithm: {setting}"));
        }
        quickstart.build();
        let dir = quickstart.dir.path();
        let tftp = quickstart.tftp_certificate();
        let token = quickstart.token_certificate("token-primary");
        let hash = (hash_code, digest);

        for (name, signer, other) in [("ITLFile.tlv", &tftp, &token), ("CTLFile.tlv", &token, &tftp)] {
            let bytes = quickstart.served(name);
            let header = assert_signed_by(dir, &bytes, [1, 2], name, signer, other, hash);
            assert_eq!(header.value(&bytes, 0x1C), [1, 0], "{name}: SIGNER_VERSION 1.0");
            // The signer is listed as a SAST record (role 0), the same certificate byte for byte (§3.6, §3.7).
            let records = read_records(&bytes, header.length);
            let signer_der = openssl_der(dir, signer);
            let sast: Vec<_> = records.iter().filter(|r| r.get(&0x04).map(|v| u16_value(v)) == Some(0)).collect();
            assert_eq!(sast[0][&0x09], signer_der, "{name}: the first SAST record is the signer (§3.6)");
            assert_eq!(sast[0][&0x06], header.value(&bytes, 0x05), "{name}: its SERIAL_NUMBER is SIGNER_SERIAL");
            let roles: Vec<u16> = records.iter().map(|r| u16_value(&r[&0x04])).collect();
            let expected: &[u16] = if name == "ITLFile.tlv" { &[0, 2, 2, 4, 21] } else { &[0, 0, 2, 2, 4] };
            assert_eq!(roles, expected, "{name}: SAST, CCM+TFTP, CCM+TFTP, CAPF, and TVS in the ITL only (§3.1, §8)");
        }

        let (mut signed, mut with_plain) = (0, 0);
        for name in quickstart.served_names().iter().filter(|n| n.ends_with(".cnf.xml.sgn")) {
            let bytes = quickstart.served(name);
            let header = assert_signed_by(dir, &bytes, [1, 0], name, &tftp, &token, hash);
            assert!(!header.values.contains_key(&0x1C), "{name}: no SIGNER_VERSION outside .tlv (§3.3)");
            // The payload is a phone configuration; where the plain name is served too (a non-secure profile, or
            // the stub of an encrypted phone), the same bytes (§4, §5.6).
            let payload = &bytes[header.length..];
            let document = roxmltree::Document::parse(std::str::from_utf8(payload).unwrap()).unwrap();
            assert_eq!(document.root_element().tag_name().name(), "device", "{name}");
            if quickstart.served_names().contains(&name.strip_suffix(".sgn").unwrap().to_owned()) {
                assert_eq!(payload, quickstart.served(name.strip_suffix(".sgn").unwrap()).as_slice(), "{name}: payload");
                with_plain += 1;
            }
            signed += 1;
        }
        assert_eq!(signed, 7, "one .sgn per quickstart phone");
        assert_eq!(with_plain, 5, "five quickstart phones are also served under the plain name");
    }
}

/// Opens an `.enc.sgn` by docs/wire-formats.md §5.2-§5.4 with openssl alone: the RSAES-PKCS1-v1_5 wrapped key
/// with `openssl pkeyutl -decrypt`, the body with `openssl enc -d -aes-128-cbc -nopad`; checks the 0x0D padding
/// and PAD_COUNT (§5.3 step 3), PLAINTEXT_HASH with `openssl dgst -binary`, and the header signature with
/// `openssl dgst -verify`. Returns the plaintext.
fn open_with_openssl(dir: &Path, bytes: &[u8], phone_key: &Path, signer_pem: &Path, digest: &str) -> Vec<u8> {
    let header = read_header(bytes);
    assert_eq!(header.version, [2, 0], "VERSION 2.0 (§3.3)");
    assert_eq!(header.value(bytes, 0x12), [0], "IV_INFO marker");
    assert_eq!(header.value(bytes, 0x16), [0], "KEY_INFO marker");
    assert_eq!(header.value(bytes, 0x18), [1], "KEY_ALGORITHM 1, AES-128");
    let wrapped = header.value(bytes, 0x19);
    assert_eq!(usize::from(u16_value(header.value(bytes, 0x17))), wrapped.len() * 8, "KEY_SIZE in bits is the wrapped key's");
    let iv = header.value(bytes, 0x13);
    assert_eq!(iv.len(), 16, "IV");
    let pad = usize::from(u16_value(header.value(bytes, 0x14)));
    let hash_code = header.value(bytes, 0x1A);
    assert_eq!(hash_code, header.value(bytes, 0x08), "PLAINTEXT_HASH_ALGORITHM is the header's");

    fs::write(dir.join("wrapped.bin"), wrapped).unwrap();
    let key = openssl_ok(
        dir,
        &["pkeyutl", "-decrypt", "-inkey", phone_key.to_str().unwrap(), "-pkeyopt", "rsa_padding_mode:pkcs1", "-in", "wrapped.bin"],
    );
    assert_eq!(key.len(), 16, "an AES-128 key is wrapped");
    let body = &bytes[header.length..];
    assert!(!body.is_empty() && body.len().is_multiple_of(16), "the body is whole AES blocks: {} bytes", body.len());
    fs::write(dir.join("body.bin"), body).unwrap();
    let padded = openssl_ok(dir, &["enc", "-d", "-aes-128-cbc", "-nopad", "-K", &hex(&key), "-iv", &hex(iv), "-in", "body.bin"]);
    assert_eq!(padded.len(), body.len());
    assert!((1..=16).contains(&pad), "PAD_COUNT {pad} is 1..=16 (§5.3 step 3)");
    let (plaintext, padding) = padded.split_at(padded.len() - pad);
    assert!(padding.iter().all(|&b| b == 0x0D), "the last {pad} bytes are 0x0D, not PKCS#7: {padding:02x?}");
    assert_eq!(pad, 16 - plaintext.len() % 16, "PAD_COUNT = 16 - (length mod 16)");

    fs::write(dir.join("plain.bin"), plaintext).unwrap();
    let (digest_flag, digest_len) = match hash_code {
        [1] => ("-sha1", 20),
        [3] => ("-sha512", 64),
        other => panic!("hash code {other:?}"),
    };
    assert_eq!(digest_flag, digest);
    let hash = openssl_ok(dir, &["dgst", digest_flag, "-binary", "plain.bin"]);
    assert_eq!(hash.len(), digest_len);
    assert_eq!(header.value(bytes, 0x1B), hash.as_slice(), "PLAINTEXT_HASH is the hash of the plaintext without padding");

    assert!(
        openssl_verifies(dir, signer_pem, digest, &header.signed_bytes(bytes), header.signature_value(bytes)),
        "openssl does not verify the .enc.sgn signature"
    );
    plaintext.to_vec()
}

/// A phone key made by openssl and its certificate issued by the state's cluster CA with `openssl x509 -req`:
/// an LSC that `callguard device add-cert` takes.
fn openssl_lsc(quickstart: &Quickstart, device: &str, bits: u32) -> (PathBuf, PathBuf) {
    let dir = quickstart.dir.path();
    let key = dir.join(format!("{device}.key"));
    let certificate = dir.join(format!("{device}.pem"));
    let ca = quickstart.state.join("namespaces/default/ca");
    openssl_ok(dir, &["genpkey", "-algorithm", "RSA", "-pkeyopt", &format!("rsa_keygen_bits:{bits}"), "-out", key.to_str().unwrap()]);
    openssl_ok(dir, &["req", "-new", "-key", key.to_str().unwrap(), "-subj", &format!("/CN={device}"), "-out", "phone.csr"]);
    fs::write(dir.join("lsc.ext"), "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n").unwrap();
    openssl_ok(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "phone.csr",
            "-CA",
            ca.join("ca.crt").to_str().unwrap(),
            "-CAkey",
            ca.join("ca.key").to_str().unwrap(),
            "-set_serial",
            "0x5A17",
            "-days",
            "30",
            "-extfile",
            "lsc.ext",
            "-out",
            certificate.to_str().unwrap(),
        ],
    );
    (key, certificate)
}

/// Item: `callguard build` encrypts the quickstart lobby phone's configuration for an LSC made by openssl, and
/// openssl alone opens it to exactly the configuration the build resolved for the phone.
#[test]
fn quickstart_encrypted_configuration_opens_with_openssl() {
    let quickstart = Quickstart::new();
    quickstart.build();
    let dir = quickstart.dir.path();
    let device = "SEP001122334455"; // lobby-7970, sccp-encrypted
    // The quickstart's CAPF issues 1024-bit keys; 2048 is the other size phones have.
    let (phone_key, phone_pem) = openssl_lsc(&quickstart, device, 1024);
    let added = callguard(&[
        "device",
        "add-cert",
        "--state-dir",
        quickstart.state.to_str().unwrap(),
        "--device",
        device,
        phone_pem.to_str().unwrap(),
    ]);
    assert_eq!(added.status.code(), Some(0), "{}", text(&added));
    quickstart.build();
    let encrypted = quickstart.served(&format!("{device}.cnf.xml.enc.sgn"));

    // What the build meant to encrypt: the full configuration in the catalog of the same build, run again
    // through the library on a copy of the state (a rebuild with unchanged input changes nothing).
    let state_copy = quickstart.path("state-copy");
    let copied = Command::new("cp").arg("-a").arg(&quickstart.state).arg(&state_copy).status().unwrap();
    assert!(copied.success());
    let outputs =
        build_paths(std::slice::from_ref(&quickstart.manifests), &state_copy, time::OffsetDateTime::now_utc(), &BuildOptions::default())
            .unwrap_or_else(|e| panic!("{e:?}"));
    let output = outputs["default"].as_ref().unwrap_or_else(|e| panic!("{e:?}"));
    let payloads = serde_json::to_value(&output.catalog.phones[device]).unwrap();
    let expected = payloads["full"].as_str().expect("the catalog holds the full configuration of a phone with a certificate");

    let header = read_header(&encrypted);
    assert_eq!(header.value(&encrypted, 0x0E), format!("{device}.cnf.xml.enc.sgn\0").as_bytes());
    assert_eq!(header.value(&encrypted, 0x17), [0x04, 0x00], "KEY_SIZE 1024: the phone's modulus");
    let plaintext = open_with_openssl(dir, &encrypted, &phone_key, &quickstart.tftp_certificate(), "-sha1");
    assert_eq!(String::from_utf8(plaintext.clone()).unwrap(), expected, "the decrypted configuration");
    // And from the plaintext itself: a full file whose certHash is the MD5 of the LSC's DER as openssl computes it
    // (docs/wire-formats.md §5.5).
    let fingerprint = openssl_ok(dir, &["x509", "-in", phone_pem.to_str().unwrap(), "-noout", "-fingerprint", "-md5"]);
    let md5 = String::from_utf8(fingerprint).unwrap().trim().rsplit('=').next().unwrap().replace(':', "").to_lowercase();
    let text = String::from_utf8(plaintext).unwrap();
    assert!(text.contains("<fullConfig>true</fullConfig>") && text.contains(&format!("<certHash>{md5}</certHash>")), "{text}");

    // The control: another key does not unwrap it.
    let other = dir.join("other.key");
    openssl_ok(dir, &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024", "-out", other.to_str().unwrap()]);
    let right = openssl_ok(dir, &["pkeyutl", "-decrypt", "-inkey", phone_key.to_str().unwrap(), "-in", "wrapped.bin"]);
    let wrong = openssl(dir, &["pkeyutl", "-decrypt", "-inkey", other.to_str().unwrap(), "-in", "wrapped.bin"]);
    assert!(!wrong.status.success() || wrong.stdout != right, "another phone's key unwrapped the AES key");
}

/// A key made by `openssl genpkey`, PKCS#8 PEM.
fn openssl_rsa_key(dir: &Path, name: &str, bits: u32) -> PathBuf {
    let key = dir.join(name);
    openssl_ok(dir, &["genpkey", "-algorithm", "RSA", "-pkeyopt", &format!("rsa_keygen_bits:{bits}"), "-out", key.to_str().unwrap()]);
    key
}

/// A self-signed certificate of `key` made by `openssl req -x509`, PEM.
fn openssl_self_signed(dir: &Path, key: &Path, subject: &str, serial: &str, name: &str) -> PathBuf {
    let certificate = dir.join(name);
    openssl_ok(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            key.to_str().unwrap(),
            "-subj",
            subject,
            "-set_serial",
            serial,
            "-days",
            "30",
            "-out",
            certificate.to_str().unwrap(),
        ],
    );
    certificate
}

/// The library's encryption (docs/wire-formats.md §5.3) for every padding case, both hashes and both phone key
/// sizes, opened by openssl alone: signer and phone keys and certificates are made by openssl too.
#[test]
fn library_encrypted_configuration_of_every_pad_length_opens_with_openssl() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let tftp_key = openssl_rsa_key(dir, "tftp.key", 2048);
    let tftp_pem = openssl_self_signed(dir, &tftp_key, "/CN=TFTP/O=Example/OU=Voice", "0x0101", "tftp.pem");
    let signer = Signer::new(openssl_der(dir, &tftp_pem), keys::from_pem(&fs::read_to_string(&tftp_key).unwrap()).unwrap(), false)
        .expect("an openssl RSA-2048 certificate signs");
    for (bits, hash, digest) in [(2048, HashAlgorithm::Sha1, "-sha1"), (1024, HashAlgorithm::Sha512, "-sha512")] {
        let phone_key = openssl_rsa_key(dir, &format!("phone-{bits}.key"), bits);
        let phone_pem = openssl_self_signed(dir, &phone_key, "/CN=SEP001122334455", "0x51", &format!("phone-{bits}.pem"));
        let builder = EncryptedConfigBuilder::new(&signer, hash, 1_767_225_600);
        // Every residue class that matters, and a text that itself ends in 0x0D bytes: only PAD_COUNT says
        // where the padding starts.
        for length in [0usize, 1, 15, 16, 17, 31, 32, 100] {
            let mut plaintext: Vec<u8> = (0..length).map(|i| b"<device>x</device>\n"[i % 19]).collect();
            if length >= 2 {
                plaintext[length - 2..].copy_from_slice(b"\r\r");
            }
            let file = builder.encrypt("SEP001122334455.cnf.xml", &plaintext, &openssl_der(dir, &phone_pem)).unwrap();
            let header = read_header(&file);
            assert_eq!(usize::from(u16_value(header.value(&file, 0x17))), bits as usize, "KEY_SIZE");
            let opened = open_with_openssl(dir, &file, &phone_key, &tftp_pem, digest);
            assert_eq!(opened, plaintext, "RSA-{bits}, {hash:?}, {length} bytes");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Trust files assembled here, signed by openssl, read by the crate

/// One element, docs/wire-formats.md §2.1.
fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let length = u16::try_from(value.len()).expect("a value of at most 65 535 bytes");
    [&[tag][..], &length.to_be_bytes(), value].concat()
}

fn with_nul(text: &str) -> Vec<u8> {
    [text.as_bytes(), &[0]].concat()
}

/// What a hand-assembled file's header says.
struct Assembly<'a> {
    version: [u8; 2],
    /// Tag 0x1C, `.tlv` only.
    signer_version: Option<[u8; 2]>,
    /// §1.4 strings, written here by hand.
    signer_name: &'a str,
    signer_issuer: &'a str,
    /// §1.5 magnitude.
    signer_serial: &'a [u8],
    /// §1.6 code and the matching openssl digest flag.
    hash: (u8, &'a str),
    filename: &'a str,
    timestamp: u32,
    /// Elements between TIMESTAMP and the pad: the §5.2 encryption elements of a `.enc.sgn`.
    extra: Vec<u8>,
}

/// A whole file by the seven steps of docs/wire-formats.md §3.4, with the signature made by
/// `openssl dgst -sign` with `signing_key` (2048 bits, so SIGNATURE_MODULUS 2 and 256 signature bytes).
fn assemble(dir: &Path, header: &Assembly<'_>, body: &[u8], signing_key: &Path) -> Vec<u8> {
    const SIGNATURE_LENGTH: usize = 256;
    // Step 1: elements 1-5 with HEADER_LENGTH 00 00.
    let mut p = [tlv(0x01, &header.version), tlv(0x02, &[0, 0])].concat();
    if let Some(version) = header.signer_version {
        p.extend(tlv(0x1C, &version));
    }
    let signer_info =
        [tlv(0x04, &with_nul(header.signer_name)), tlv(0x06, &with_nul(header.signer_issuer)), tlv(0x05, header.signer_serial)].concat();
    p.extend(tlv(0x03, &signer_info));
    let algorithm_info = [tlv(0x0A, &[0]), tlv(0x0B, &[2])].concat();
    p.extend(tlv(0x07, &[tlv(0x08, &[header.hash.0]), tlv(0x09, &algorithm_info)].concat()));
    let insertion_point = p.len();
    // Step 2: FILENAME, TIMESTAMP, the encryption elements.
    p.extend(tlv(0x0E, &with_nul(header.filename)));
    p.extend(tlv(0x0F, &header.timestamp.to_be_bytes()));
    p.extend(&header.extra);
    // Step 3: pad; step 4: HEADER_LENGTH.
    while !(p.len() + 3 + SIGNATURE_LENGTH).is_multiple_of(4) {
        p.push(0x0D);
    }
    let header_length = u16::try_from(p.len() + 3 + SIGNATURE_LENGTH).unwrap();
    p[8..10].copy_from_slice(&header_length.to_be_bytes());
    // Steps 5-6: sign P ‖ body with openssl.
    fs::write(dir.join("to-sign.bin"), [p.as_slice(), body].concat()).unwrap();
    openssl_ok(dir, &["dgst", header.hash.1, "-sign", signing_key.to_str().unwrap(), "-out", "signature.bin", "to-sign.bin"]);
    let signature = fs::read(dir.join("signature.bin")).unwrap();
    assert_eq!(signature.len(), SIGNATURE_LENGTH);
    // Step 7.
    [&p[..insertion_point], &tlv(0x0C, &signature), &p[insertion_point..], body].concat()
}

/// A certificate made by openssl, with what a trust list record needs of it.
struct OpensslCertificate {
    pem: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
    /// DER RSAPublicKey, `openssl rsa -RSAPublicKey_out`.
    public_key: Vec<u8>,
}

fn openssl_certificate(dir: &Path, name: &str, subject: &str, serial: &str) -> OpensslCertificate {
    let key = openssl_rsa_key(dir, &format!("{name}.key"), 2048);
    let pem = openssl_self_signed(dir, &key, subject, serial, &format!("{name}.pem"));
    let der = openssl_der(dir, &pem);
    let public_key = openssl_ok(dir, &["rsa", "-in", key.to_str().unwrap(), "-RSAPublicKey_out", "-outform", "DER"]);
    OpensslCertificate { pem, key, der, public_key }
}

/// A record by docs/wire-formats.md §3.6: tags 1, 3, 5, 6, 4, 7, 8, 9, RECORD_LENGTH counting the whole record.
/// SIGNATURE is the certificate's signatureValue: the last field of the DER (RFC 5280 §4.1), whose last 256 bytes
/// are the signature of a 2048-bit key.
fn record(certificate: &OpensslCertificate, subject: &str, serial: &[u8], role: u16) -> Vec<u8> {
    let der = &certificate.der;
    let elements = [
        tlv(0x03, &with_nul(subject)),
        tlv(0x05, &with_nul(subject)),
        tlv(0x06, serial),
        tlv(0x04, &role.to_be_bytes()),
        tlv(0x07, &certificate.public_key),
        tlv(0x08, &der[der.len() - 256..]),
        tlv(0x09, der),
    ]
    .concat();
    let length = u16::try_from(5 + elements.len()).unwrap();
    [tlv(0x01, &length.to_be_bytes()), elements].concat()
}

/// A CTL, a `.sgn` and an `.enc.sgn` assembled byte by byte in this test from docs/wire-formats.md §3.3-§3.6 and
/// §5.2-§5.3, with certificates, keys, signatures, the AES encryption and the key wrap all made by openssl; the
/// crate's parser and `callguard trust` read, verify and decrypt them. SHA-1 and SHA-512.
#[test]
fn trust_files_assembled_here_and_signed_by_openssl_are_read_verified_and_decrypted() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    // Made by openssl in this test. The §1.4 strings are written by hand below: encoded order, RFC 4514 escaping.
    let sast = openssl_certificate(dir, "sast", "/CN=SAST/O=Example, Inc./OU=Voice", "0x3A7F");
    let sast_dn = r"CN=SAST,O=Example\, Inc.,OU=Voice";
    // Serial 0xC102: DER content 00 C1 02, written C1 02 (§1.5).
    let tftp = openssl_certificate(dir, "tftp", "/CN=cucm1.voice.example/O=Example/OU=Voice", "0xC102");
    let tftp_dn = "CN=cucm1.voice.example,O=Example,OU=Voice";
    let capf = openssl_certificate(dir, "capf", "/CN=CAPF/O=Example/OU=Voice", "0x10");
    let capf_dn = "CN=CAPF,O=Example,OU=Voice";
    let phone_key = openssl_rsa_key(dir, "phone.key", 2048);
    openssl_ok(dir, &["pkey", "-in", phone_key.to_str().unwrap(), "-pubout", "-out", "phone-pub.pem"]);
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();

    for (hash_code, digest) in [(1u8, "-sha1"), (3, "-sha512")] {
        let records =
            [record(&sast, sast_dn, &[0x3A, 0x7F], 0), record(&tftp, tftp_dn, &[0xC1, 0x02], 2), record(&capf, capf_dn, &[0x10], 4)]
                .concat();
        let ctl_header = Assembly {
            version: [1, 2],
            signer_version: Some([1, 0]),
            signer_name: sast_dn,
            signer_issuer: sast_dn,
            signer_serial: &[0x3A, 0x7F],
            hash: (hash_code, digest),
            filename: "CTLFile.tlv",
            timestamp: 1_767_225_600,
            extra: Vec::new(),
        };
        let ctl = assemble(dir, &ctl_header, &records, &sast.key);
        fs::write(dir.join("CTLFile.tlv"), &ctl).unwrap();

        // The crate reads what was written.
        let list = TrustList::parse(&ctl, Mode::Strict).unwrap_or_else(|e| panic!("{digest}: {e}"));
        assert_eq!(list.header.signer_name, sast_dn);
        assert_eq!(list.header.signer_serial, [0x3A, 0x7F]);
        assert_eq!(list.header.hash, if hash_code == 1 { HashAlgorithm::Sha1 } else { HashAlgorithm::Sha512 });
        assert_eq!((list.header.filename.as_str(), list.header.timestamp), ("CTLFile.tlv", 1_767_225_600));
        let read: Vec<(Role, &str, &[u8], &[u8])> =
            list.records.iter().map(|r| (r.role, r.subject.as_str(), r.serial.as_slice(), r.certificate_der.as_slice())).collect();
        assert_eq!(
            read,
            [
                (Role::Sast, sast_dn, &[0x3A, 0x7F][..], sast.der.as_slice()),
                (Role::CcmTftp, tftp_dn, &[0xC1, 0x02][..], tftp.der.as_slice()),
                (Role::Capf, capf_dn, &[0x10][..], capf.der.as_slice()),
            ]
        );
        assert_eq!(list.verify().expect("openssl's signature verifies").certificate_der, sast.der);
        let verified = callguard(&["trust", "verify", &path("CTLFile.tlv")]);
        assert_eq!(verified.status.code(), Some(0), "{}", text(&verified));
        let inspected = callguard(&["trust", "inspect", &path("CTLFile.tlv"), "--json"]);
        assert_eq!(inspected.status.code(), Some(0), "{}", text(&inspected));
        let json: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
        assert_eq!(json["header"]["signer_serial_hex"], "3A7F");
        assert_eq!(json["header"]["hash_algorithm_code"], hash_code);
        let roles: Vec<&str> = json["records"].as_array().unwrap().iter().map(|r| r["role"].as_str().unwrap()).collect();
        assert_eq!(roles, ["SAST", "CCM+TFTP", "CAPF"]);
        assert_eq!(json["records"][1]["serial_hex"], "C102");

        // The controls: a flipped record byte, and the same bytes signed by a key the SAST record does not hold.
        let mut flipped = ctl.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x01;
        fs::write(dir.join("flipped.tlv"), &flipped).unwrap();
        assert_eq!(callguard(&["trust", "verify", &path("flipped.tlv")]).status.code(), Some(1));
        let forged = assemble(dir, &ctl_header, &records, &capf.key);
        assert!(TrustList::parse(&forged, Mode::Strict).unwrap().verify().is_err(), "signed by another key");

        // A .sgn signed by the CCM+TFTP record's key (§4).
        let payload = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<device>\n  <fullConfig>true</fullConfig>\n</device>\n";
        let sgn = assemble(
            dir,
            &Assembly {
                version: [1, 0],
                signer_version: None,
                signer_name: tftp_dn,
                signer_issuer: tftp_dn,
                signer_serial: &[0xC1, 0x02],
                hash: (hash_code, digest),
                filename: "SEP001122334455.cnf.xml.sgn",
                timestamp: 1_767_225_600,
                extra: Vec::new(),
            },
            payload,
            &tftp.key,
        );
        fs::write(dir.join("SEP001122334455.cnf.xml.sgn"), &sgn).unwrap();
        let parsed = SignedFile::parse(&sgn, Mode::Strict).unwrap();
        assert_eq!(parsed.payload(), payload);
        parsed.verify(SignatureCheck::TrustList(&list)).expect("the CTL's CCM+TFTP record verifies it");
        let verified = callguard(&["trust", "verify", &path("SEP001122334455.cnf.xml.sgn"), "--ctl", &path("CTLFile.tlv")]);
        assert_eq!(verified.status.code(), Some(0), "{}", text(&verified));

        // An .enc.sgn: AES-128-CBC by `openssl enc` over the text padded with 0x0D to whole blocks (§5.3), the key
        // wrapped by `openssl pkeyutl -encrypt` (RSAES-PKCS1-v1_5, §1.8), PLAINTEXT_HASH by `openssl dgst`.
        let plaintext = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<device><authPassword>s3cret</authPassword></device>\n";
        let pad = 16 - plaintext.len() % 16;
        let mut padded = plaintext.to_vec();
        padded.resize(plaintext.len() + pad, 0x0D);
        fs::write(dir.join("padded.bin"), &padded).unwrap();
        fs::write(dir.join("plain.bin"), plaintext).unwrap();
        let (aes_key, iv) = ([0x3Cu8; 16], [0xA5u8; 16]);
        fs::write(dir.join("aes.key"), aes_key).unwrap();
        let ciphertext = openssl_ok(dir, &["enc", "-aes-128-cbc", "-nopad", "-K", &hex(&aes_key), "-iv", &hex(&iv), "-in", "padded.bin"]);
        assert_eq!(ciphertext.len(), padded.len());
        let wrapped = openssl_ok(
            dir,
            &["pkeyutl", "-encrypt", "-pubin", "-inkey", "phone-pub.pem", "-pkeyopt", "rsa_padding_mode:pkcs1", "-in", "aes.key"],
        );
        let plaintext_hash = openssl_ok(dir, &["dgst", digest, "-binary", "plain.bin"]);
        let iv_info = [tlv(0x12, &[0]), tlv(0x13, &iv), tlv(0x14, &u16::try_from(pad).unwrap().to_be_bytes())].concat();
        let key_info = [tlv(0x16, &[0]), tlv(0x17, &2048u16.to_be_bytes()), tlv(0x18, &[1]), tlv(0x19, &wrapped)].concat();
        let extra = [tlv(0x10, &[tlv(0x11, &iv_info), tlv(0x15, &key_info)].concat()), tlv(0x1A, &[hash_code]), tlv(0x1B, &plaintext_hash)]
            .concat();
        let encrypted = assemble(
            dir,
            &Assembly {
                version: [2, 0],
                signer_version: None,
                signer_name: tftp_dn,
                signer_issuer: tftp_dn,
                signer_serial: &[0xC1, 0x02],
                hash: (hash_code, digest),
                filename: "SEP001122334455.cnf.xml.enc.sgn",
                timestamp: 1_767_225_600,
                extra,
            },
            &ciphertext,
            &tftp.key,
        );
        fs::write(dir.join("SEP001122334455.cnf.xml.enc.sgn"), &encrypted).unwrap();
        let parsed = EncryptedFile::parse(&encrypted, Mode::Strict).unwrap();
        assert_eq!((parsed.encryption.iv, usize::from(parsed.encryption.pad_count)), (iv, pad));
        let phone = keys::from_pem(&fs::read_to_string(&phone_key).unwrap()).unwrap();
        assert_eq!(parsed.decrypt(&phone, Some(SignatureCheck::TrustList(&list))).unwrap(), plaintext);
        let decrypted = callguard(&[
            "trust",
            "decrypt",
            &path("SEP001122334455.cnf.xml.enc.sgn"),
            "--key",
            phone_key.to_str().unwrap(),
            "--cert",
            tftp.pem.to_str().unwrap(),
        ]);
        assert_eq!(decrypted.status.code(), Some(0), "{}", text(&decrypted));
        assert_eq!(decrypted.stdout, plaintext);
    }
}

// ---------------------------------------------------------------------------------------------------------
// PEM, certificate, key and request checks on inputs openssl made

fn openssl_key(dir: &Path, name: &str, genpkey: &[&str]) -> PathBuf {
    let key = dir.join(name);
    let mut args = vec!["genpkey"];
    args.extend_from_slice(genpkey);
    args.extend_from_slice(&["-out", key.to_str().unwrap()]);
    openssl_ok(dir, &args);
    key
}

/// A token's certificate must be a PEM X.509 certificate with an RSA-2048 key and a positive serial
/// (docs/wire-formats.md §3.3, §1.5): openssl's well-formed ones are taken, whatever their line endings; those
/// with another key, a serial of zero or below, or broken armour are refused.
#[test]
fn token_certificate_checks_on_openssl_certificates() {
    use callguard::core::token::material::{MaterialError, check_certificate};
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let rsa = openssl_rsa_key(dir, "token.key", 2048);
    let good = openssl_self_signed(dir, &rsa, "/CN=token-a/O=Example/OU=Voice", "0x2A", "good.pem");
    let pem = fs::read_to_string(&good).unwrap();
    let der = openssl_der(dir, &good);
    assert_eq!(check_certificate(pem.as_bytes()), Ok(der.clone()));
    assert_eq!(check_certificate(pem.replace('\n', "\r\n").as_bytes()), Ok(der.clone()), "CRLF line endings");
    assert_eq!(check_certificate(format!("a comment line\n{pem}").as_bytes()), Ok(der.clone()), "text before the armour");

    for bits in [1024u32, 3072, 4096] {
        let key = openssl_rsa_key(dir, &format!("rsa{bits}.key"), bits);
        let certificate = openssl_self_signed(dir, &key, "/CN=token-b", "0x2B", &format!("rsa{bits}.pem"));
        assert_eq!(check_certificate(&fs::read(certificate).unwrap()), Err(MaterialError::KeySize { bits: bits as usize }), "RSA-{bits}");
    }
    for (name, genpkey) in [
        ("p256", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"][..]),
        ("p384", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"][..]),
        ("ed25519", &["-algorithm", "ED25519"][..]),
    ] {
        let key = openssl_key(dir, &format!("{name}.key"), genpkey);
        let certificate = openssl_self_signed(dir, &key, "/CN=token-c", "0x2C", &format!("{name}.pem"));
        assert_eq!(check_certificate(&fs::read(certificate).unwrap()), Err(MaterialError::KeyNotRsa), "{name}");
    }
    for serial in ["0", "-5", "-0x80"] {
        let certificate = openssl_self_signed(dir, &rsa, "/CN=token-d", serial, "serial.pem");
        assert_eq!(check_certificate(&fs::read(certificate).unwrap()), Err(MaterialError::SerialNotPositive), "serial {serial}");
    }

    // Broken armour, and PEM of other things.
    let body_start = pem.find('\n').unwrap() + 1;
    let end = pem.find("-----END").unwrap();
    let not_pem = |bytes: &[u8], what: &str| {
        assert!(matches!(check_certificate(bytes), Err(MaterialError::CertificateNotPem(_))), "{what}: {:?}", check_certificate(bytes));
    };
    not_pem(&pem.as_bytes()[..end], "no END line");
    not_pem(pem.replace("-----END CERTIFICATE-----", "-----END X509 CRL-----").as_bytes(), "END names another label");
    not_pem(pem.replacen("-----BEGIN CERTIFICATE-----", "-----BEGIN CERTIFICATE----", 1).as_bytes(), "BEGIN short of a dash");
    not_pem(format!("{}*{}", &pem[..body_start + 10], &pem[body_start + 10..]).as_bytes(), "a byte outside base64");
    not_pem(&der, "DER, not PEM");
    let trusted = openssl_ok(dir, &["x509", "-in", good.to_str().unwrap(), "-trustout"]);
    not_pem(&trusted, "TRUSTED CERTIFICATE");
    let request = openssl_ok(dir, &["req", "-new", "-key", rsa.to_str().unwrap(), "-subj", "/CN=token-a"]);
    not_pem(&request, "CERTIFICATE REQUEST");
    // The base64 of a CERTIFICATE armour that is not a certificate: the armour is right, the DER is not.
    let junk = "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n";
    assert!(
        matches!(check_certificate(junk.as_bytes()), Err(MaterialError::CertificateNotX509(_))),
        "{:?}",
        check_certificate(junk.as_bytes())
    );
}

/// A token's key must be PKCS#8 encrypted with PBES2, PBKDF2-HMAC-SHA256 in bounds and AES-CBC (P.3-17): the key
/// `openssl pkcs8` writes that way decrypts to openssl's key, with the right password only; openssl's other
/// encodings are refused before any decryption.
#[test]
fn token_key_checks_on_openssl_pkcs8() {
    use callguard::core::pki::keys::{KeyError, decrypt_pem};
    use callguard::core::token::material::{MaterialError, check_encrypted_key};
    use rsa::traits::PublicKeyParts;
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let key = openssl_rsa_key(dir, "token.key", 2048);
    let key_arg = key.to_str().unwrap();
    let modulus = String::from_utf8(openssl_ok(dir, &["rsa", "-in", key_arg, "-noout", "-modulus"])).unwrap();
    let modulus = modulus.trim().strip_prefix("Modulus=").unwrap().to_owned();
    let pkcs8 = |name: &str, options: &[&str]| -> String {
        let mut args = vec!["pkcs8", "-topk8", "-in", key_arg, "-passout", "pass:correct horse", "-out", name];
        args.extend_from_slice(options);
        openssl_ok(dir, &args);
        fs::read_to_string(dir.join(name)).unwrap()
    };

    let good = pkcs8("good.p8", &["-v2", "aes-256-cbc", "-v2prf", "hmacWithSHA256", "-iter", "600000"]);
    assert_eq!(check_encrypted_key(good.as_bytes()), Ok(()));
    let decrypted = decrypt_pem(&good, b"correct horse").expect("decrypts");
    assert_eq!(decrypted.n().to_bytes_be().iter().map(|b| format!("{b:02X}")).collect::<String>(), modulus, "openssl's key");
    assert_eq!(decrypt_pem(&good, b"wrong horse").unwrap_err(), KeyError::WrongPassword);
    let aes128 = pkcs8("aes128.p8", &["-v2", "aes-128-cbc", "-v2prf", "hmacWithSHA256", "-iter", "100000"]);
    assert_eq!(check_encrypted_key(aes128.as_bytes()), Ok(()), "AES-128-CBC at the lowest round count");
    assert!(decrypt_pem(&aes128, b"correct horse").is_ok());

    // PKCS#12's PBE-SHA1-3DES is an algorithm the PKCS#8 decoder does not know: refused as malformed, the
    // others by their parameters. None of them is decrypted.
    for (name, options) in [
        ("scrypt.p8", &["-scrypt"][..]),
        ("pbes1.p8", &["-v1", "PBE-SHA1-3DES"][..]),
        ("sha1-prf.p8", &["-v2", "aes-256-cbc", "-v2prf", "hmacWithSHA1", "-iter", "600000"][..]),
        ("few-rounds.p8", &["-v2", "aes-256-cbc", "-v2prf", "hmacWithSHA256", "-iter", "1000"][..]),
    ] {
        let pem = pkcs8(name, options);
        let checked = check_encrypted_key(pem.as_bytes());
        let pkcs12 = name == "pbes1.p8";
        assert!(
            matches!(&checked, Err(MaterialError::KeyParameters(_))) || pkcs12 && matches!(&checked, Err(MaterialError::KeyMalformed(_))),
            "{name}: {checked:?}"
        );
        let decrypted = decrypt_pem(&pem, b"correct horse").map(|_| ());
        assert!(
            matches!(&decrypted, Err(KeyError::Unsupported(_))) || pkcs12 && matches!(&decrypted, Err(KeyError::Malformed(_))),
            "{name} is not decrypted: {decrypted:?}"
        );
    }
    let plain = fs::read_to_string(&key).unwrap();
    assert_eq!(check_encrypted_key(plain.as_bytes()), Err(MaterialError::KeyNotEncryptedPem("found PEM PRIVATE KEY".into())));
    let traditional = openssl_ok(dir, &["rsa", "-in", key_arg, "-traditional", "-aes256", "-passout", "pass:correct horse"]);
    assert!(matches!(check_encrypted_key(&traditional), Err(MaterialError::KeyNotEncryptedPem(_))), "a traditional encrypted key");
    let truncated = &good[..good.len() / 2];
    assert!(check_encrypted_key(truncated.as_bytes()).is_err(), "half a key");
}

/// docs/wire-formats.md §7.8 on requests openssl makes: RSA 1024 and 2048 with each signature hash, EC P-256
/// and P-384 are read to the key openssl put in; other sizes, P-521, Ed25519 and PEM where DER is expected
/// are refused.
#[test]
fn phone_requests_made_by_openssl_are_read_or_refused() {
    use callguard::core::pki::ca::{CaSettings, ClusterCa};
    use callguard::core::pki::inspect::EcCurve;
    use callguard::core::pki::issue::{IssueError, LscKeySource, LscRequest, PhoneKey, check_phone_key, issue_lsc, public_key_from_csr};
    use callguard::core::pki::serial::Serial;
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let now = time::OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap();
    let ca = ClusterCa::generate(&CaSettings::new("lab", "voice"), now).unwrap();
    let request = |csr: &[u8]| {
        let request = LscRequest {
            device_name: "SEP001122334455",
            key: LscKeySource::Csr(csr),
            validity_days: 365,
            serial: Serial::random(&mut rand::thread_rng()),
            now,
        };
        issue_lsc(&ca, &request)
    };
    let csr = |name: &str, genpkey: &[&str], digest: &str| -> (Vec<u8>, Vec<u8>) {
        let key = openssl_key(dir, &format!("{name}.key"), genpkey);
        let mut args = vec!["req", "-new", "-key", key.to_str().unwrap(), "-subj", "/CN=SEP001122334455", "-outform", "DER"];
        if !digest.is_empty() {
            args.push(digest);
        }
        let der = openssl_ok(dir, &args);
        let spki = openssl_ok(dir, &["pkey", "-in", key.to_str().unwrap(), "-pubout", "-outform", "DER"]);
        (der, spki)
    };
    let rsa = |bits: u32| vec!["-algorithm".to_owned(), "RSA".to_owned(), "-pkeyopt".to_owned(), format!("rsa_keygen_bits:{bits}")];
    let ec = |curve: &str| vec!["-algorithm".to_owned(), "EC".to_owned(), "-pkeyopt".to_owned(), format!("ec_paramgen_curve:{curve}")];
    let accepted: [(&str, Vec<String>, &str, PhoneKey); 7] = [
        ("rsa1024-sha1", rsa(1024), "-sha1", PhoneKey::Rsa1024),
        ("rsa1024-sha256", rsa(1024), "-sha256", PhoneKey::Rsa1024),
        ("rsa2048-sha256", rsa(2048), "-sha256", PhoneKey::Rsa2048),
        ("rsa2048-sha384", rsa(2048), "-sha384", PhoneKey::Rsa2048),
        ("rsa2048-sha512", rsa(2048), "-sha512", PhoneKey::Rsa2048),
        ("p256", ec("P-256"), "-sha256", PhoneKey::Ec(EcCurve::P256)),
        ("p384", ec("P-384"), "-sha384", PhoneKey::Ec(EcCurve::P384)),
    ];
    for (name, genpkey, digest, kind) in accepted {
        let genpkey: Vec<&str> = genpkey.iter().map(String::as_str).collect();
        let (der, spki) = csr(name, &genpkey, digest);
        assert_eq!(public_key_from_csr(&der).unwrap_or_else(|e| panic!("{name}: {e:?}")), spki, "{name}: openssl's key");
        assert_eq!(check_phone_key(&spki), Ok(kind), "{name}");
        assert_eq!(request(&der).unwrap_or_else(|e| panic!("{name}: {e:?}")).phone_key, kind, "{name}");
    }
    for (name, genpkey) in [("rsa512", rsa(512)), ("rsa3072", rsa(3072)), ("rsa4096", rsa(4096)), ("p521", ec("P-521"))] {
        let genpkey: Vec<&str> = genpkey.iter().map(String::as_str).collect();
        let (der, _) = csr(name, &genpkey, "-sha256");
        assert!(matches!(request(&der), Err(IssueError::KeyRefused(_))), "{name}: {:?}", request(&der).map(|_| ()));
    }
    let (ed25519, _) = csr("ed25519", &["-algorithm", "ED25519"], "");
    assert!(matches!(request(&ed25519), Err(IssueError::KeyRefused(_))), "{:?}", request(&ed25519).map(|_| ()));
    let key = openssl_rsa_key(dir, "pem.key", 2048);
    let pem = openssl_ok(dir, &["req", "-new", "-key", key.to_str().unwrap(), "-subj", "/CN=SEP001122334455"]);
    assert!(matches!(public_key_from_csr(&pem), Err(IssueError::CsrRefused(_))), "PEM where DER is expected");
}

/// `callguard device add-cert`'s check (P.7-3) on certificates openssl made: an LSC of the state's CA and a MIC
/// naming the phone are taken, an EC one with a warning; a CA certificate, an Ed25519 key, an LSC of this CA for
/// another phone, one whose CA signature does not verify, and broken armour are refused.
#[test]
fn phone_certificate_checks_on_openssl_certificates() {
    use callguard::core::build::devices::{Origin, check};
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let now = time::OffsetDateTime::now_utc();
    let ca_key = openssl_rsa_key(dir, "ca.key", 2048);
    let ca = openssl_self_signed(dir, &ca_key, "/CN=lab CA/O=Callguard/OU=voice", "0x01", "ca.pem");
    let ca_der = openssl_der(dir, &ca);
    fs::write(dir.join("leaf.ext"), "basicConstraints=critical,CA:FALSE\n").unwrap();
    let issue = |name: &str, key: &Path, subject: &str, ca_pem: &Path, ca_key: &Path| -> Vec<u8> {
        openssl_ok(dir, &["req", "-new", "-key", key.to_str().unwrap(), "-subj", subject, "-out", "leaf.csr"]);
        let out = dir.join(name);
        let args = [
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            ca_pem.to_str().unwrap(),
            "-CAkey",
            ca_key.to_str().unwrap(),
            "-set_serial",
            "0x77",
            "-days",
            "30",
            "-extfile",
            "leaf.ext",
            "-out",
            out.to_str().unwrap(),
        ];
        openssl_ok(dir, &args);
        fs::read(out).unwrap()
    };
    let device = "SEP001122334455";
    let phone_key = openssl_rsa_key(dir, "phone.key", 1024);
    let lsc = issue("lsc.pem", &phone_key, "/CN=SEP001122334455/O=Callguard/OU=voice", &ca, &ca_key);
    let checked = check(device, &lsc, std::slice::from_ref(&ca_der), now).expect("an LSC of the CA");
    assert_eq!((checked.origin, checked.der), (Origin::Lsc, openssl_der(dir, &dir.join("lsc.pem"))));
    assert!(check("SEP00AABBCCDD06", &lsc, std::slice::from_ref(&ca_der), now).is_err(), "an LSC for another phone");

    // Same issuer name, another key: the CA's signature does not verify.
    let impostor_key = openssl_rsa_key(dir, "impostor.key", 2048);
    let impostor = openssl_self_signed(dir, &impostor_key, "/CN=lab CA/O=Callguard/OU=voice", "0x02", "impostor.pem");
    let forged = issue("forged.pem", &phone_key, "/CN=SEP001122334455", &impostor, &impostor_key);
    let refused = check(device, &forged, std::slice::from_ref(&ca_der), now).expect_err("not signed by the CA");
    assert!(refused.contains("does not verify"), "{refused}");

    // A MIC: another CA, its CN names the phone as CP-<model>-SEP<MAC>; an EC key is taken with a warning.
    let maker_key = openssl_key(dir, "maker.key", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let maker = openssl_self_signed(dir, &maker_key, "/CN=Manufacturing CA", "0x03", "maker.pem");
    let mic_key = openssl_key(dir, "mic.key", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let mic = issue("mic.pem", &mic_key, "/CN=CP-7975G-SEP001122334455", &maker, &maker_key);
    let checked = check(device, &mic, std::slice::from_ref(&ca_der), now).expect("a MIC naming the phone");
    assert!(matches!(checked.origin, Origin::Other { .. }) && checked.warnings.iter().any(|w| w.contains("EC")), "{checked:?}");
    assert!(check("SEP00AABBCCDD06", &mic, std::slice::from_ref(&ca_der), now).is_err(), "a MIC naming another phone");

    let refused = check(device, &fs::read(&ca).unwrap(), std::slice::from_ref(&ca_der), now).expect_err("a CA certificate");
    assert!(refused.contains("CA certificate"), "{refused}");
    let ed_key = openssl_key(dir, "ed.key", &["-algorithm", "ED25519"]);
    let ed = issue("ed.pem", &ed_key, "/CN=CP-7975G-SEP001122334455", &maker, &maker_key);
    assert!(check(device, &ed, std::slice::from_ref(&ca_der), now).is_err(), "an Ed25519 key");
    let lsc_text = String::from_utf8(lsc.clone()).unwrap();
    let no_end = &lsc_text[..lsc_text.find("-----END").unwrap()];
    assert!(check(device, no_end.as_bytes(), std::slice::from_ref(&ca_der), now).is_err(), "no END line");
    let relabelled = lsc_text.replace("CERTIFICATE-----", "CERTIFICATE REQUEST-----");
    assert!(check(device, relabelled.as_bytes(), std::slice::from_ref(&ca_der), now).is_err(), "another label");
}

// ---------------------------------------------------------------------------------------------------------
// Properties

/// An RFC 4514 / RFC 2253 string split into its attributes, each unescaped: `,` separates RDNs (this test's
/// names have one attribute each), `\` escapes the next character or, before two hex digits, gives that byte
/// (RFC 4514 §2.4, §3); the value's bytes are UTF-8.
fn parse_rfc4514(text: &str) -> Vec<(String, String)> {
    let mut attributes = Vec::new();
    let (mut key, mut value, mut in_value) = (String::new(), Vec::<u8>::new(), false);
    let mut chars = text.chars().peekable();
    let finish = |key: &mut String, value: &mut Vec<u8>, attributes: &mut Vec<(String, String)>| {
        let text = String::from_utf8(std::mem::take(value)).unwrap_or_else(|e| panic!("not UTF-8 in {text:?}: {e}"));
        // A separator may be followed by a space before the next type (`, `).
        attributes.push((std::mem::take(key).trim_start().to_owned(), text));
    };
    while let Some(c) = chars.next() {
        match (c, in_value) {
            ('=', false) => in_value = true,
            (c, false) => key.push(c),
            (',', true) => {
                finish(&mut key, &mut value, &mut attributes);
                in_value = false;
            }
            ('\\', true) => {
                let next = chars.next().expect("an escape at the end");
                match chars.peek().copied() {
                    Some(low) if next.is_ascii_hexdigit() && low.is_ascii_hexdigit() => {
                        chars.next();
                        value.push(u8::from_str_radix(&format!("{next}{low}"), 16).unwrap());
                    }
                    _ => value.extend(next.to_string().as_bytes()),
                }
            }
            (c, true) => value.extend(c.to_string().as_bytes()),
        }
    }
    if in_value {
        finish(&mut key, &mut value, &mut attributes);
    }
    attributes
}

#[test]
fn the_rfc4514_reader_of_these_tests_reads_escapes() {
    // RFC 4514 §2.4 escapes, written here.
    let read = parse_rfc4514(r"CN=a\,b\+c\2C\C3\A9\ ,O=\#x=y\\, OU=");
    assert_eq!(read, [("CN".into(), "a,b+c,é ".into()), ("O".into(), "#x=y\\".into()), ("OU".into(), String::new())]);
}

/// A name value as a user may give one: any text, or mostly the characters RFC 4514 escapes (`,+"\<>;`, `#` and
/// spaces at either end), with `=`, NUL and non-ASCII.
fn dn_value() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        "\\PC{1,24}",
        proptest::collection::vec(
            prop_oneof![
                Just(","),
                Just("+"),
                Just("\""),
                Just("\\"),
                Just("<"),
                Just(">"),
                Just(";"),
                Just("#"),
                Just(" "),
                Just("="),
                Just("\0"),
                Just("é"),
                Just("☎"),
                Just("a"),
                Just("Z"),
            ],
            1..16
        )
        .prop_map(|parts| parts.concat()),
    ]
}

fn shared_token_key() -> &'static rsa::RsaPrivateKey {
    static KEY: std::sync::OnceLock<rsa::RsaPrivateKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| keys::generate_rsa(2048))
}

/// An RSA-2048 certificate request made by openssl, DER, and the key it holds.
fn openssl_csr() -> &'static (Vec<u8>, Vec<u8>) {
    static CSR: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
    CSR.get_or_init(|| {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let key = openssl_rsa_key(dir, "csr.key", 2048);
        let der =
            openssl_ok(dir, &["req", "-new", "-key", key.to_str().unwrap(), "-subj", "/CN=SEP001122334455/O=Example", "-outform", "DER"]);
        let spki = openssl_ok(dir, &["pkey", "-in", key.to_str().unwrap(), "-pubout", "-outform", "DER"]);
        (der, spki)
    })
}

/// A certificate made by openssl, PEM.
fn openssl_certificate_pem() -> &'static String {
    static PEM: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PEM.get_or_init(|| {
        let temp = tempfile::tempdir().unwrap();
        let key = openssl_rsa_key(temp.path(), "cert.key", 2048);
        let pem = openssl_self_signed(temp.path(), &key, "/CN=token-a/O=Example", "0x2A", "cert.pem");
        fs::read_to_string(pem).unwrap()
    })
}

/// The content range of the DER element (tag, length, content) at `at`: X.690 §8.1 definite lengths.
fn der_content(der: &[u8], at: usize) -> Range<usize> {
    let first = der[at + 1];
    if first < 0x80 {
        return at + 2..at + 2 + usize::from(first);
    }
    let count = usize::from(first & 0x7F);
    let length = der[at + 2..at + 2 + count].iter().fold(0usize, |n, &b| n << 8 | usize::from(b));
    at + 2 + count..at + 2 + count + length
}

/// Every check that takes PEM, DER or request bytes from outside, on `bytes`; none may panic.
fn check_everything(bytes: &[u8]) {
    use callguard::core::pki::{inspect, issue};
    use callguard::core::token::material;
    let now = time::OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap();
    let _ = material::check_certificate(bytes);
    let _ = material::check_encrypted_key(bytes);
    let _ = inspect::certificate_der(bytes);
    let _ = inspect::CertificateFacts::from_der(bytes);
    let _ = callguard::core::build::devices::check("SEP001122334455", bytes, &[], now);
    let _ = issue::public_key_from_csr(bytes);
    let _ = issue::check_phone_key(bytes);
    let text = String::from_utf8_lossy(bytes);
    let _ = keys::from_pem(&text);
    let _ = keys::decrypt_pem(&text, b"password");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]

    /// Names with any text in CN, O and OU, made into a token certificate by `callguard token create`'s code
    /// (core::token::create), read back through openssl's RFC 2253 rendering (`openssl x509 -subject -nameopt
    /// RFC2253`, last RDN first) and through the crate's two renderings: the §1.4 string the trust files carry
    /// (docs/wire-formats.md §1.4) and core::pki's subject and issuer text, first RDN first. Each, unescaped,
    /// gives exactly the names put in.
    #[test]
    fn certificate_names_round_trip_through_openssl_and_both_renderings(cn in dn_value(), o in dn_value(), ou in dn_value()) {
        use callguard::core::token::create::{TokenRequest, sast_certificate};
        let request = TokenRequest { name: cn.clone(), organization: Some(o.clone()), organizational_unit: Some(ou.clone()), ..Default::default() };
        let pem = sast_certificate(&request, shared_token_key(), time::OffsetDateTime::now_utc()).expect("the certificate is made");
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("name.pem");
        fs::write(&path, &pem).unwrap();
        let shown = openssl_ok(temp.path(), &["x509", "-in", path.to_str().unwrap(), "-noout", "-subject", "-nameopt", "RFC2253"]);
        let shown = String::from_utf8(shown).unwrap();
        let shown = shown.trim_end_matches('\n').strip_prefix("subject=").expect("subject=");
        let mut from_openssl = parse_rfc4514(shown);
        from_openssl.reverse();
        let expected = vec![("CN".to_owned(), cn), ("O".to_owned(), o), ("OU".to_owned(), ou)];
        proptest::prop_assert_eq!(&from_openssl, &expected, "openssl shows {}", shown);
        let der = openssl_der(temp.path(), &path);
        let record = callguard::core::trust::TrustRecord::new(&der, Role::Sast).expect("a record of the certificate");
        proptest::prop_assert_eq!(&parse_rfc4514(&record.subject), &expected, "the §1.4 string {}", record.subject);
        // And the text core::pki shows of a subject and issuer (status, messages, SRST approval): encoded order.
        let facts = callguard::core::pki::inspect::CertificateFacts::from_der(&der).expect("facts");
        proptest::prop_assert_eq!(&parse_rfc4514(&facts.subject), &expected, "core::pki's subject {}", facts.subject);
        proptest::prop_assert_eq!(&parse_rfc4514(&facts.issuer), &expected, "core::pki's issuer {}", facts.issuer);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

    /// Arbitrary bytes, bare or inside a PEM armour, make every check return, never panic.
    #[test]
    fn pem_and_request_checks_never_panic(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1500),
        label in proptest::sample::select(vec!["CERTIFICATE", "ENCRYPTED PRIVATE KEY", "PRIVATE KEY", "RSA PRIVATE KEY", "CERTIFICATE REQUEST"]),
    ) {
        use base64::Engine;
        check_everything(&bytes);
        let body = base64::engine::general_purpose::STANDARD.encode(&bytes);
        check_everything(format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n").as_bytes());
    }

    /// openssl's request with one to three bytes changed in what it signs (CertificationRequestInfo, RFC 2986
    /// §4.2) or in its signature is refused, never read to a key.
    #[test]
    fn mutated_openssl_requests_are_refused(edits in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), 1u8..=255), 1..4)) {
        let (der, spki) = openssl_csr();
        proptest::prop_assert_eq!(&callguard::core::pki::issue::public_key_from_csr(der).expect("the unchanged request"), spki);
        // CertificationRequest ::= SEQUENCE { certificationRequestInfo, signatureAlgorithm, signature BIT STRING }.
        let outer = der_content(der, 0);
        let info = der_content(der, outer.start);
        let signature = der.len() - 256..der.len();
        let mut changed = der.clone();
        for (index, xor) in &edits {
            let i = index.index(info.end - outer.start + 256);
            let at = if i < info.end - outer.start { outer.start + i } else { signature.start + i - (info.end - outer.start) };
            changed[at] ^= xor;
        }
        check_everything(&changed);
        proptest::prop_assert!(callguard::core::pki::issue::public_key_from_csr(&changed).is_err(), "a changed request was read");
    }

    /// openssl's certificate PEM with a letter of its armour's label changed, or cut anywhere before the end of
    /// its END line, is refused by the token certificate check.
    #[test]
    fn mutated_pem_armour_is_refused(which in 0usize..2, letter in proptest::prelude::any::<proptest::sample::Index>(), replacement in b'A'..=b'Z', cut in proptest::prelude::any::<proptest::sample::Index>()) {
        use callguard::core::token::material::check_certificate;
        let pem = openssl_certificate_pem();
        proptest::prop_assert!(check_certificate(pem.as_bytes()).is_ok());
        let marker = if which == 0 { "-----BEGIN CERTIFICATE-----" } else { "-----END CERTIFICATE-----" };
        let label = pem.find(marker).unwrap() + marker.find("CERTIFICATE").unwrap();
        let at = label + letter.index("CERTIFICATE".len());
        let mut relabelled = pem.clone().into_bytes();
        proptest::prop_assume!(relabelled[at] != replacement);
        relabelled[at] = replacement;
        proptest::prop_assert!(check_certificate(&relabelled).is_err(), "{}", String::from_utf8_lossy(&relabelled));
        let end = pem.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
        let cut = cut.index(end);
        proptest::prop_assert!(check_certificate(&pem.as_bytes()[..cut]).is_err(), "cut at {}", cut);
    }
}
