//! The files one phone fetches over TFTP: its configuration, signed (`.sgn`), encrypted for its
//! certificate (`.enc.sgn`) with the signed stub in front, or plain where the profile allows
//! (spec/04 §4, §5.6).
//!
//! Two steps, so that the TFTP service can sign on demand: [`resolve_phone`] checks and resolves the
//! configuration (cheap; it gives the phone's status), [`PhonePayloads::sign`] does the RSA work.

use std::sync::Arc;

use kube::ResourceExt;
use sha2::{Digest, Sha256};

use crate::api::{CallControlCluster, DeviceSecurityMode, Phone, SecretKeyRef};
use crate::phone_config::{
    DeviceCertificate, DigestAuth, PhoneConfigInput, ResolvedSecrets, TrustFacts, render_full, render_stub, resolve,
};
use crate::trust::{EncryptedConfigBuilder, HashAlgorithm, Signer, signed};
use crate::validate::Snapshot;

/// What a phone's files are built from, besides the phone.
pub struct PhoneContext<'a> {
    pub snapshot: &'a Snapshot,
    pub cluster: &'a CallControlCluster,
    /// The TFTP certificate and key that sign configuration files.
    pub signer: &'a Signer,
    pub hash: HashAlgorithm,
    /// Header timestamp of the signed files: the trust list's, so unchanged input gives unchanged files.
    pub timestamp: u32,
    pub trust: TrustFacts,
}

/// A phone's resolved configuration: the status it reports and the unsigned bytes its files carry.
#[derive(Debug)]
pub struct PhonePayloads {
    /// `SEP<MAC>.cnf.xml`.
    pub path: String,
    /// Condition type and message, for status.
    pub conditions: Vec<(&'static str, String)>,
    /// The full configuration, when it is served (in the clear or encrypted).
    full: Option<Vec<u8>>,
    /// The §5.5 stub, for a phone whose configuration is encrypted.
    stub: Option<Vec<u8>>,
    /// The plain name may be served: a non-secure profile, or the stub of an encrypted phone.
    plain_allowed: bool,
    /// The device certificate the full file is encrypted for, DER.
    certificate: Option<Vec<u8>>,
}

/// The files of one phone: TFTP file name and content.
pub type PhoneFiles = Vec<(String, Arc<[u8]>)>;

/// Resolves the phone's configuration and renders its unsigned files. `certificate_der` is its LSC
/// (or MIC) when known: without it an encrypted phone gets only the stub, which sends it to CAPF
/// (spec/04 §5.1).
pub fn resolve_phone(context: &PhoneContext<'_>, phone: &Phone, certificate_der: Option<&[u8]>) -> Result<PhonePayloads, String> {
    let snapshot = context.snapshot;
    let profile = snapshot
        .phone_profiles
        .get(&phone.spec.security_profile_ref)
        .ok_or_else(|| format!("securityProfileRef: PhoneSecurityProfile/{} not found (P.5-1)", phone.spec.security_profile_ref))?;
    let srst_reference = match &phone.spec.srst_reference_ref {
        Some(name) => {
            Some(snapshot.srst_references.get(name).ok_or_else(|| format!("srstReferenceRef: SrstReference/{name} not found (T12-1)"))?)
        }
        None => None,
    };
    let secrets = ResolvedSecrets { digest: digest_auth(snapshot, phone)?, phone_password: None };
    let device_certificate = certificate_der.map(DeviceCertificate::from_der).transpose().map_err(|e| e.to_string())?;
    let input = PhoneConfigInput {
        cluster: context.cluster,
        phone,
        profile,
        srst_reference,
        secrets: &secrets,
        device_certificate,
        trust: context.trust,
        load_information: None,
    };
    let resolved = resolve(&input).map_err(|e| e.to_string())?;
    let config = &resolved.config;
    let conditions = resolved.conditions.iter().map(|c| (c.reason(), c.to_string())).collect();
    let path = format!("{}.cnf.xml", phone.spec.device_name());
    let payloads = if config.encr_config {
        // Encryption on: the stub in the clear, the full file only for a known certificate (spec/04 §5.6).
        let full = certificate_der.map(|_| render_full(config)).transpose().map_err(|e| e.to_string())?;
        let stub = render_stub(config).map_err(|e| e.to_string())?;
        PhonePayloads {
            path,
            conditions,
            certificate: full.as_ref().and(certificate_der.map(<[u8]>::to_vec)),
            full,
            stub: Some(stub),
            plain_allowed: true,
        }
    } else {
        // A phone whose trust list names a TFTP certificate asks for the signed file (spec/04 §4); the
        // plain one is there only for a non-secure profile, whose file holds nothing to protect.
        let full = render_full(config).map_err(|e| e.to_string())?;
        let plain_allowed = profile.spec.device_security_mode() == DeviceSecurityMode::NonSecure;
        PhonePayloads { path, conditions, full: Some(full), stub: None, plain_allowed, certificate: None }
    };
    Ok(payloads)
}

impl PhonePayloads {
    /// A digest of everything the signed files depend on, `signing` being a digest of the signer,
    /// hash and timestamp: equal keys give equal files, so a cached signature (or encryption) can be
    /// reused.
    pub fn content_key(&self, signing: &[u8; 32]) -> [u8; 32] {
        let mut digest = Sha256::new();
        digest.update(signing);
        for part in [Some(self.path.as_bytes()), self.full.as_deref(), self.stub.as_deref(), self.certificate.as_deref()] {
            // Length-prefixed, so that no two different inputs run together into the same bytes.
            let part = part.unwrap_or_default();
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part);
        }
        digest.update([u8::from(self.plain_allowed), u8::from(self.full.is_some()), u8::from(self.stub.is_some())]);
        digest.finalize().into()
    }

    /// Signs (and encrypts) the files: one RSA signature for a clear configuration, two for an
    /// encrypted one. The full plaintext of an encrypted phone is never among them (spec/04 §5.6).
    pub fn sign(&self, signer: &Signer, hash: HashAlgorithm, timestamp: u32) -> Result<PhoneFiles, String> {
        let path = &self.path;
        let sign = |payload: &[u8]| -> Result<Arc<[u8]>, String> {
            signed::sign(payload, path, signer, hash, timestamp).map(Arc::from).map_err(|e| format!("{path}.sgn: {e}"))
        };
        let mut files = PhoneFiles::new();
        match (&self.stub, &self.full) {
            (Some(stub), full) => {
                files.push((format!("{path}.sgn"), sign(stub)?));
                if let (Some(full), Some(certificate)) = (full, &self.certificate) {
                    let encrypted = EncryptedConfigBuilder::new(signer, hash, timestamp)
                        .encrypt(path, full, certificate)
                        .map_err(|e| format!("{path}.enc.sgn: {e}"))?;
                    files.push((format!("{path}.enc.sgn"), Arc::from(encrypted)));
                }
                files.push((path.clone(), Arc::from(stub.as_slice())));
            }
            (None, Some(full)) => {
                files.push((format!("{path}.sgn"), sign(full)?));
                if self.plain_allowed {
                    files.push((path.clone(), Arc::from(full.as_slice())));
                }
            }
            (None, None) => {}
        }
        Ok(files)
    }
}

/// The digest user's name and credentials from its Secret (P.8-5).
fn digest_auth(snapshot: &Snapshot, phone: &Phone) -> Result<Option<DigestAuth>, String> {
    let Some(user_ref) = &phone.spec.digest_user_ref else { return Ok(None) };
    let user = snapshot.end_users.get(user_ref).ok_or_else(|| format!("digestUserRef: EndUser/{user_ref} not found (P.8-5)"))?;
    let Some(reference) = &user.spec.digest_credentials else { return Ok(None) };
    let password = secret_text(snapshot, reference).map_err(|e| format!("EndUser/{user_ref}: digestCredentials: {e}"))?;
    let name = user.spec.user_id.clone().unwrap_or_else(|| user.name_any());
    Ok(Some(DigestAuth { name, password }))
}

/// The UTF-8 value of a Secret key.
pub fn secret_text(snapshot: &Snapshot, reference: &SecretKeyRef) -> Result<String, String> {
    let bytes = snapshot
        .secrets
        .get(&reference.name)
        .and_then(|secret| secret.0.get(&reference.key))
        .ok_or_else(|| format!("Secret {}/{} not found (DESIGN: secrets)", reference.name, reference.key))?;
    String::from_utf8(bytes.clone()).map_err(|_| format!("Secret {}/{} is not UTF-8 text", reference.name, reference.key))
}
