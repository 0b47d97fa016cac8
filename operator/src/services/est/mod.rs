//! EST, Enrollment over Secure Transport (RFC 7030), for SIP endpoints that do not speak CAPF: what
//! goes over the wire (docs/operations.md, "EST enrollment"). The server runs in `callguard local`
//! (`adapters::capf::est`); [`client`] is `callguard enroll`.
//!
//! - `GET /.well-known/est/cacerts`: the cluster CA, a base64 PKCS#7 certs-only (RFC 7030 §4.1.3).
//! - `POST /.well-known/est/simpleenroll`: a base64 PKCS#10 in, HTTP Basic (RFC 7030 §3.2.3) with the
//!   device name and its one-time secret; the issued certificate out as a base64 PKCS#7 certs-only
//!   (RFC 7030 §4.2.3).
//! - `POST /.well-known/est/simplereenroll`: the same, authorized by the TLS client certificate
//!   being the device's current certificate (RFC 7030 §4.2.2).

pub mod client;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// RFC 7030 §3.2.2.
pub const CACERTS: &str = "/.well-known/est/cacerts";
pub const SIMPLE_ENROLL: &str = "/.well-known/est/simpleenroll";
pub const SIMPLE_REENROLL: &str = "/.well-known/est/simplereenroll";
/// RFC 7030 §4.1.3, §4.2.3.
pub const PKCS7_CERTS_ONLY: &str = "application/pkcs7-mime; smime-type=certs-only";
pub const PKCS7: &str = "application/pkcs7-mime";
/// RFC 7030 §4.2.1.
pub const PKCS10: &str = "application/pkcs10";
/// The most a request body may hold: a PKCS#10 of an RSA 2048 key is about 1 KiB.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

const OID_SIGNED_DATA: &[u8] = &[0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x07, 0x02];
const OID_DATA: &[u8] = &[0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x07, 0x01];

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// A degenerate PKCS#7 SignedData holding `certificates` and no signer (RFC 7030 §4.1.3, RFC 5652
/// §5), DER, as `openssl crl2pkcs7 -nocrl` writes it. The openssl crate cannot make one without a
/// signer, so it is assembled here and then read back by OpenSSL, which must find every certificate.
pub fn certs_only(certificates: &[Vec<u8>]) -> Result<Vec<u8>, String> {
    let signed_data = [
        &[0x02, 0x01, 0x01][..],            // version 1
        &[0x31, 0x00],                      // digestAlgorithms: none
        &der(0x30, OID_DATA),               // encapContentInfo: data, absent
        &der(0xA0, &certificates.concat()), // certificates [0] IMPLICIT
        &[0x31, 0x00],                      // signerInfos: none
    ]
    .concat();
    let content_info = der(0x30, &[OID_SIGNED_DATA, &der(0xA0, &der(0x30, &signed_data))].concat());
    let read = read_certs_only(&content_info)?;
    if read != certificates {
        return Err("OpenSSL does not read back the certificates of the PKCS#7 made for them".into());
    }
    Ok(content_info)
}

/// The certificates of a PKCS#7 certs-only, DER each, read by OpenSSL.
pub fn read_certs_only(der: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let pkcs7 = openssl::pkcs7::Pkcs7::from_der(der).map_err(|e| format!("not a DER PKCS#7: {e} (RFC 7030 §4.1.3)"))?;
    let signed = pkcs7.signed().ok_or("the PKCS#7 is not a SignedData (RFC 7030 §4.1.3)")?;
    let certificates = signed.certificates().map(|stack| stack.iter().map(|c| c.to_der()).collect::<Result<Vec<_>, _>>());
    match certificates {
        Some(Ok(certificates)) if !certificates.is_empty() => Ok(certificates),
        Some(Err(e)) => Err(format!("a certificate of the PKCS#7 does not encode: {e}")),
        _ => Err("the PKCS#7 holds no certificate (RFC 7030 §4.1.3)".into()),
    }
}

/// Base64 with a line break every 64 characters, as `openssl base64` reads it (RFC 7030 §4: the
/// bodies are base64, "Content-Transfer-Encoding: base64").
pub fn base64_lines(bytes: &[u8]) -> String {
    let text = STANDARD.encode(bytes);
    let mut out = String::with_capacity(text.len() + text.len() / 64 + 1);
    for chunk in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out
}

/// A base64 body, line breaks and spaces allowed; `what` names it in the error.
pub fn from_base64(body: &[u8], what: &str) -> Result<Vec<u8>, String> {
    if body.starts_with(b"-----BEGIN") {
        return Err(format!("{what} is PEM; EST sends base64 DER without the PEM armour (RFC 7030 §4.2.1)"));
    }
    let text: Vec<u8> = body.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    STANDARD.decode(text).map_err(|e| format!("{what} is not base64: {e} (RFC 7030 §4.2.1)"))
}

/// The subject CN of a DER PKCS#10 request, when it has exactly one.
pub fn csr_common_name(csr_der: &[u8]) -> Result<String, String> {
    use x509_parser::prelude::FromDer;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
        .map_err(|e| format!("the request is not a DER PKCS#10: {e} (RFC 7030 §4.2.1)"))?;
    let names: Vec<_> = csr.certification_request_info.subject.iter_common_name().collect();
    match names.as_slice() {
        [one] => one.as_str().map(str::to_owned).map_err(|e| format!("the request's subject CN is not a string: {e}")),
        [] => Err("the request's subject has no CN; it must be the device name (docs/wire-formats.md §7.8)".into()),
        _ => Err("the request's subject has several CNs; it must have one, the device name (docs/wire-formats.md §7.8)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(cn: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![cn.to_owned()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn certs_only_is_read_back_by_openssl_with_every_certificate_in_order() {
        let certificates = vec![certificate("a.example"), certificate("b.example")];
        let der = certs_only(&certificates).unwrap();
        assert_eq!(read_certs_only(&der).unwrap(), certificates);
        assert_eq!(read_certs_only(&certs_only(&certificates[..1]).unwrap()).unwrap(), certificates[..1]);
    }

    #[test]
    fn base64_bodies_round_trip_with_line_breaks_and_pem_is_refused_by_name() {
        let bytes: Vec<u8> = (0..=255).collect();
        let text = base64_lines(&bytes);
        assert!(text.lines().all(|l| l.len() <= 64), "{text}");
        assert_eq!(from_base64(text.as_bytes(), "the request").unwrap(), bytes);
        let pem = from_base64(b"-----BEGIN CERTIFICATE REQUEST-----", "the request").unwrap_err();
        assert!(pem.contains("the request is PEM") && pem.contains("RFC 7030 §4.2.1"), "{pem}");
    }
}
