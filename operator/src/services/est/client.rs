//! `callguard enroll`: an EST client (RFC 7030) for a device that does not speak CAPF.
//!
//! The server is authenticated by `--ca-file` alone, which must come from the cluster out of band
//! (the state's `ca/ca.crt` of `callguard local`): the client never trusts what the server sends
//! first. `--cacerts` fetches the CA set over a TLS session already verified by that file, and
//! refuses a set that does not contain it (RFC 7030 §4.1.1).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::x509::{X509, X509NameBuilder, X509ReqBuilder};
use reqwest::{Method, StatusCode, Url};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

use super::{CACERTS, PKCS10, SIMPLE_ENROLL, SIMPLE_REENROLL, base64_lines, from_base64, read_certs_only};
use crate::core::pki::keys;

/// RSA size of a key `enroll` generates.
pub const GENERATED_KEY_BITS: usize = 2048;
/// How long one exchange with the server may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The most a response body may hold.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// What `callguard enroll` is to do.
#[derive(Debug, Clone)]
pub enum Action {
    /// Fetch the CA certificates into `--out`.
    CaCerts,
    /// First enrollment, with the device's one-time secret.
    Enroll { device: String, secret_file: PathBuf, key: PathBuf },
    /// Renewal, authenticated by the current certificate and its key.
    Reenroll { certificate: PathBuf, key: PathBuf },
}

#[derive(Debug, Clone)]
pub struct EnrollOptions {
    /// `https://HOST:PORT`.
    pub server: String,
    /// The cluster CA, PEM, obtained out of band.
    pub ca_file: PathBuf,
    pub out: PathBuf,
    pub action: Action,
}

/// Runs the action; returns what to print.
pub async fn run(options: &EnrollOptions) -> Result<String, String> {
    let server = Url::parse(&options.server).map_err(|e| format!("--server {:?}: not a URL: {e}", options.server))?;
    if server.scheme() != "https" || server.host_str().is_none() {
        return Err(format!("--server {}: EST runs over HTTPS only (RFC 7030 §3.2.1): use https://HOST:PORT", options.server));
    }
    let ca_pem = std::fs::read(&options.ca_file).map_err(|e| format!("--ca-file {}: {e}", options.ca_file.display()))?;
    let anchors = X509::stack_from_pem(&ca_pem)
        .ok()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("--ca-file {}: no PEM certificate in it", options.ca_file.display()))?;
    let anchors_der: Vec<Vec<u8>> = anchors.iter().map(|c| c.to_der()).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let connection = Connection { server, anchors: anchors_der.clone() };

    match &options.action {
        Action::CaCerts => {
            let body = connection.exchange(Method::GET, CACERTS, None, None, None).await?;
            let certificates = read_certs_only(&from_base64(&body, "the cacerts response")?)?;
            if !anchors_der.iter().all(|a| certificates.contains(a)) {
                return Err(format!(
                    "the server's CA certificates do not include the --ca-file CA ({}): refusing them (RFC 7030 §4.1.1)",
                    options.ca_file.display()
                ));
            }
            let pem: String = certificates.iter().map(|der| crate::core::pki::ca::certificate_pem(der)).collect();
            std::fs::write(&options.out, pem).map_err(|e| format!("--out {}: {e}", options.out.display()))?;
            Ok(format!("{} CA certificate(s) written to {}", certificates.len(), options.out.display()))
        }
        Action::Enroll { device, secret_file, key } => {
            let device = crate::core::build::devices::device_name(device).map_err(|e| format!("--device: {e}"))?;
            let secret = read_secret(secret_file)?;
            let (key, generated) = load_or_generate_key(key)?;
            let csr = csr(&device, &key)?;
            let credentials = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(format!("{device}:{}", secret.as_str())));
            let authorization = Zeroizing::new(format!("Basic {}", credentials.as_str()));
            let body = connection.exchange(Method::POST, SIMPLE_ENROLL, Some(csr), Some(authorization.as_str()), None).await?;
            let summary = keep_issued(&body, &key, &anchors, &options.out)?;
            Ok(format!("{summary}{generated}"))
        }
        Action::Reenroll { certificate, key: key_file } => {
            let (key, _) = load_key(key_file)?;
            let current = std::fs::read(certificate).map_err(|e| format!("--cert {}: {e}", certificate.display()))?;
            let current = X509::from_pem(&current).map_err(|e| format!("--cert {}: not a PEM certificate: {e}", certificate.display()))?;
            let device = current
                .subject_name()
                .entries_by_nid(openssl::nid::Nid::COMMONNAME)
                .next()
                .and_then(|cn| String::from_utf8(cn.data().as_slice().to_vec()).ok())
                .ok_or_else(|| format!("--cert {}: the certificate has no CN", certificate.display()))?;
            let csr = csr(&device, &key)?;
            let client = (current.to_der().map_err(|e| e.to_string())?, key.private_key_to_pkcs8().map_err(|e| e.to_string())?);
            let body = connection.exchange(Method::POST, SIMPLE_REENROLL, Some(csr), None, Some(client)).await?;
            keep_issued(&body, &key, &anchors, &options.out)
        }
    }
}

/// The secret, without the line break an editor adds.
fn read_secret(path: &Path) -> Result<Zeroizing<String>, String> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| format!("--secret-file {}: {e}", path.display()))?);
    let secret = Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_owned());
    if secret.is_empty() {
        return Err(format!("--secret-file {}: empty", path.display()));
    }
    Ok(secret)
}

fn load_key(path: &Path) -> Result<(PKey<Private>, ()), String> {
    let pem = Zeroizing::new(std::fs::read(path).map_err(|e| format!("--key {}: {e}", path.display()))?);
    let key = PKey::private_key_from_pem(&pem).map_err(|e| format!("--key {}: not a PEM private key: {e}", path.display()))?;
    Ok((key, ()))
}

/// The key of `path`, or a new RSA 2048 key written there (0600) when there is none.
fn load_or_generate_key(path: &Path) -> Result<(PKey<Private>, String), String> {
    if path.exists() {
        return load_key(path).map(|(key, ())| (key, String::new()));
    }
    let pem = Zeroizing::new(keys::pkcs8_pem(&keys::generate_rsa(GENERATED_KEY_BITS)));
    crate::core::private_file::write(path, pem.as_bytes()).map_err(|e| format!("--key {}: {e}", path.display()))?;
    let key = PKey::private_key_from_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
    Ok((key, format!("; new RSA {GENERATED_KEY_BITS} key in {} (0600)", path.display())))
}

/// A PKCS#10 with subject CN = `device`, signed with SHA-256, base64.
fn csr(device: &str, key: &PKey<Private>) -> Result<Vec<u8>, String> {
    let made = (|| {
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_text("CN", device)?;
        let mut request = X509ReqBuilder::new()?;
        request.set_subject_name(&name.build())?;
        request.set_pubkey(key)?;
        request.sign(key, MessageDigest::sha256())?;
        request.build().to_der()
    })();
    made.map(|der| base64_lines(&der).into_bytes()).map_err(|e| format!("cannot make the certificate request: {e}"))
}

/// Checks the issued certificate (for our key, issued by the CA) and writes it to `out`.
fn keep_issued(body: &[u8], key: &PKey<Private>, anchors: &[X509], out: &Path) -> Result<String, String> {
    let certificates = read_certs_only(&from_base64(body, "the enrollment response")?)?;
    let issued = X509::from_der(&certificates[0]).map_err(|e| format!("the issued certificate does not parse: {e}"))?;
    let ours = issued.public_key().is_ok_and(|public| public.public_eq(key));
    if !ours {
        return Err("the server issued a certificate for another key than ours: refusing it".into());
    }
    let by_ca = anchors.iter().any(|ca| ca.public_key().is_ok_and(|public| issued.verify(&public).unwrap_or(false)));
    if !by_ca {
        return Err("the issued certificate is not signed by the --ca-file CA: refusing it".into());
    }
    let pem = issued.to_pem().map_err(|e| e.to_string())?;
    std::fs::write(out, pem).map_err(|e| format!("--out {}: {e}", out.display()))?;
    let serial = issued.serial_number().to_bn().and_then(|n| n.to_hex_str()).map(|s| s.to_string()).unwrap_or_default();
    Ok(format!("certificate serial {serial}, valid until {}, written to {}", issued.not_after(), out.display()))
}

struct Connection {
    /// `https://HOST:PORT`.
    server: Url,
    anchors: Vec<Vec<u8>>,
}

impl Connection {
    /// One request (reqwest over rustls, trusting `--ca-file` alone); the body of a 200 answer, else
    /// an error with the server's words.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        authorization: Option<&str>,
        client: Option<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Vec<u8>, String> {
        let url = self.server.join(path).map_err(|e| format!("--server {}: {e}", self.server))?;
        let mut roots = rustls::RootCertStore::empty();
        for anchor in &self.anchors {
            roots.add(CertificateDer::from(anchor.clone())).map_err(|e| format!("--ca-file: {e}"))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let tls = match client {
            Some((certificate, key)) => builder
                .with_client_auth_cert(vec![CertificateDer::from(certificate)], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)))
                .map_err(|e| format!("--cert/--key: {e}"))?,
            None => builder.with_no_client_auth(),
        };
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("{url}: {}", causes(&e)))?;
        let mut request = http.request(method, url.clone());
        if let Some(body) = body {
            request = request.header(reqwest::header::CONTENT_TYPE, PKCS10).header("content-transfer-encoding", "base64").body(body);
        }
        if let Some(authorization) = authorization {
            request = request.header(reqwest::header::AUTHORIZATION, authorization);
        }
        let mut response = request.send().await.map_err(|e| {
            let text = causes(&e);
            let hint =
                if text.contains("certificate") { " (TLS: is --ca-file the cluster CA that issued the server's certificate?)" } else { "" };
            format!("{url}: {text}{hint}")
        })?;
        let status = response.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| format!("{url}: reading the answer: {}", causes(&e)))? {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(format!("{url}: the answer is longer than {MAX_RESPONSE_BYTES} bytes"));
            }
            bytes.extend_from_slice(&chunk);
        }
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&bytes);
            return Err(format!("{url}: the server answered {status}: {}", text.trim()));
        }
        Ok(bytes)
    }
}

/// An error with its causes, which reqwest keeps out of its own message: `a: b: c`.
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
