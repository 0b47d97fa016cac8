//! The files one phone fetches over TFTP: its configuration, signed (`.sgn`), encrypted for its
//! certificate (`.enc.sgn`) with the signed stub in front, or plain where the profile allows
//! (P.1-16, P.7-3).
//!
//! Two steps, so that the TFTP service can sign on demand: [`resolve_phone`] checks and resolves the
//! configuration (cheap; it gives the phone's status), [`PhonePayloads::sign`] does the RSA work.

use std::collections::HashMap;
use std::sync::Arc;

use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api::{CallControlCluster, DeviceSecurityMode, Phone, PhoneSecurityProfile, SecretKeyRef};
use crate::core::phone_config::{
    ClearCredentials, ConfigCondition, DeviceCertificate, DigestAuth, PhoneConfigInput, ResolvedSecrets, TrustFacts, WithheldReason,
    render_full, render_stub, resolve,
};
use crate::core::trust::{EncryptedConfigBuilder, HashAlgorithm, Signer, signed};
use crate::validate::Snapshot;

/// What a phone's files are built from, besides the phone.
pub struct PhoneContext<'a> {
    pub snapshot: &'a Snapshot,
    pub cluster: &'a CallControlCluster,
    pub trust: TrustFacts,
    /// By EndUser: the phones using its digest credentials whose profile asks for an encrypted
    /// configuration (see [`encryption_asked`]).
    pub encryption_asked: &'a HashMap<String, Vec<String>>,
}

/// By EndUser, the phones that use its digest credentials and whose profile asks for an encrypted
/// configuration: the strongest protection any user of those credentials asked for (P.7-1).
pub fn encryption_asked(snapshot: &Snapshot) -> HashMap<String, Vec<String>> {
    let mut asked: HashMap<String, Vec<String>> = HashMap::new();
    for (name, phone) in &snapshot.phones {
        let asks = snapshot.phone_profiles.get(&phone.spec.security_profile_ref).is_some_and(|p| p.spec.tftp_encrypted_config());
        if let (Some(user), true) = (&phone.spec.digest_user_ref, asks) {
            asked.entry(user.clone()).or_default().push(name.clone());
        }
    }
    asked
}

/// Whether this phone's credentials may go into a file that is not encrypted: only by the profile's
/// explicit opt-in, and never when a phone using the same credentials asked for encryption.
fn clear_credentials(context: &PhoneContext<'_>, name: &str, phone: &Phone, profile: &PhoneSecurityProfile) -> ClearCredentials {
    if profile.spec.tftp_encrypted_config() {
        return ClearCredentials::Refused(WithheldReason::EncryptionAsked);
    }
    if !profile.spec.sip().allow_digest_credentials_in_clear() {
        return ClearCredentials::Refused(WithheldReason::NotOptedIn { profile: profile.name_any() });
    }
    let user = phone.spec.digest_user_ref.as_deref().unwrap_or_default();
    match context.encryption_asked.get(user).and_then(|phones| phones.iter().find(|p| *p != name)) {
        Some(other) => ClearCredentials::Refused(WithheldReason::SharedWithEncryptedPhone { user: user.to_owned(), phone: other.clone() }),
        None => ClearCredentials::Allowed,
    }
}

/// A phone's resolved configuration: the unsigned bytes its files carry. This is what the build
/// hands to the TFTP service (in memory, or projected into Secrets by the operator).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PhonePayloads {
    /// `SEP<MAC>.cnf.xml`.
    pub path: String,
    /// The full configuration, when it is served (in the clear, or encrypted for `certificate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    full: Option<String>,
    /// The §5.5 stub, for a phone whose configuration is encrypted (or cannot be).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stub: Option<String>,
    /// The plain name may be served: a non-secure profile, or the stub of an encrypted phone.
    plain_allowed: bool,
    /// The device certificate the full file is encrypted for, DER.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::core::build::catalog::base64_option")]
    certificate: Option<Vec<u8>>,
}

/// A resolved phone and what its status should say.
#[derive(Debug)]
pub struct ResolvedPhone {
    pub payloads: PhonePayloads,
    pub conditions: Vec<ConfigCondition>,
}

/// The files of one phone: TFTP file name and content.
pub type PhoneFiles = Vec<(String, Arc<[u8]>)>;

fn text(bytes: Vec<u8>) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|e| format!("the rendered XML is not UTF-8: {e}"))
}

/// Resolves the phone's configuration and renders its unsigned files. `certificate_der` is its LSC
/// (or MIC) when known: without it an encrypted phone gets only the stub, whose blank certHash sends
/// it to CAPF (P.7-3).
pub fn resolve_phone(context: &PhoneContext<'_>, phone: &Phone, certificate_der: Option<&[u8]>) -> Result<ResolvedPhone, String> {
    let snapshot = context.snapshot;
    let name = phone.name_any();
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
    let clear_credentials = clear_credentials(context, &name, phone, profile);
    let input = PhoneConfigInput {
        cluster: context.cluster,
        phone,
        profile,
        srst_reference: srst_reference.map(|srst| &**srst),
        secrets: &secrets,
        device_certificate,
        trust: context.trust,
        load_information: None,
        clear_credentials: &clear_credentials,
    };
    let resolved = resolve(&input).map_err(|e| e.to_string())?;
    let config = &resolved.config;
    let path = format!("{}.cnf.xml", phone.spec.device_name());
    let stub_only = |path: String| -> Result<PhonePayloads, String> {
        let stub = text(render_stub(config).map_err(|e| e.to_string())?)?;
        Ok(PhonePayloads { path, full: None, stub: Some(stub), plain_allowed: true, certificate: None })
    };
    let payloads = if config.encr_config {
        // Encryption on: the stub in the clear, the full file only for a known certificate (§5.6).
        let full = certificate_der.map(|_| render_full(config)).transpose().map_err(|e| e.to_string())?.map(text).transpose()?;
        let certificate = full.as_ref().and(certificate_der.map(<[u8]>::to_vec));
        PhonePayloads { full, certificate, ..stub_only(path)? }
    } else if resolved.conditions.contains(&ConfigCondition::ManualKeyEncryptionNotRendered) {
        // The profile asks for encryption that cannot be made: the minimal stub, never the full file
        // in the clear (P.7-2: "minimal configuration").
        stub_only(path)?
    } else {
        // A phone whose trust list names a TFTP certificate asks for the signed file; the plain one is
        // there only for a non-secure profile.
        let full = text(render_full(config).map_err(|e| e.to_string())?)?;
        let plain_allowed = profile.spec.device_security_mode() == DeviceSecurityMode::NonSecure;
        PhonePayloads { path, full: Some(full), stub: None, plain_allowed, certificate: None }
    };
    Ok(ResolvedPhone { payloads, conditions: resolved.conditions })
}

impl PhonePayloads {
    /// A digest of everything the signed files depend on, `signing` being a digest of the signer,
    /// hash and timestamp: equal keys give equal files, so a cached signature (or encryption) can be
    /// reused.
    pub fn content_key(&self, signing: &[u8; 32]) -> [u8; 32] {
        // Every field, by name: a field added to the payloads and left out here does not compile.
        let PhonePayloads { path, full, stub, plain_allowed, certificate } = self;
        let mut digest = Sha256::new();
        digest.update(signing);
        for part in [Some(path.as_bytes()), full.as_deref().map(str::as_bytes), stub.as_deref().map(str::as_bytes), certificate.as_deref()]
        {
            // Length-prefixed, so that no two different inputs run together into the same bytes.
            let part = part.unwrap_or_default();
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part);
        }
        digest.update([u8::from(*plain_allowed), u8::from(full.is_some()), u8::from(stub.is_some()), u8::from(certificate.is_some())]);
        digest.finalize().into()
    }

    /// A digest of the payloads themselves: equal digests, equal payloads (and equal JSON).
    pub fn digest(&self) -> [u8; 32] {
        self.content_key(&[0; 32])
    }

    /// Signs (and encrypts) the files: one RSA signature for a clear configuration, two for an
    /// encrypted one. The full plaintext of an encrypted phone is never among them.
    pub fn sign(&self, signer: &Signer, hash: HashAlgorithm, timestamp: u32) -> Result<PhoneFiles, String> {
        let path = &self.path;
        let sign = |payload: &[u8]| -> Result<Arc<[u8]>, String> {
            signed::sign(payload, path, signer, hash, timestamp).map(Arc::from).map_err(|e| format!("{path}.sgn: {e}"))
        };
        let mut files = PhoneFiles::new();
        match (&self.stub, &self.full) {
            (Some(stub), full) => {
                files.push((format!("{path}.sgn"), sign(stub.as_bytes())?));
                if let (Some(full), Some(certificate)) = (full, &self.certificate) {
                    let encrypted = EncryptedConfigBuilder::new(signer, hash, timestamp)
                        .encrypt(path, full.as_bytes(), certificate)
                        .map_err(|e| format!("{path}.enc.sgn: {e}"))?;
                    files.push((format!("{path}.enc.sgn"), Arc::from(encrypted)));
                }
                files.push((path.clone(), Arc::from(stub.as_bytes())));
            }
            (None, Some(full)) => {
                files.push((format!("{path}.sgn"), sign(full.as_bytes())?));
                if self.plain_allowed {
                    files.push((path.clone(), Arc::from(full.as_bytes())));
                }
            }
            (None, None) => {}
        }
        Ok(files)
    }
}

/// The digest user's name and credentials from its Secret (P.8-5).
pub fn digest_auth(snapshot: &Snapshot, phone: &Phone) -> Result<Option<DigestAuth>, String> {
    let Some(user_ref) = &phone.spec.digest_user_ref else { return Ok(None) };
    let user = snapshot.end_users.get(user_ref).ok_or_else(|| format!("digestUserRef: EndUser/{user_ref} not found (P.8-5)"))?;
    let Some(reference) = &user.spec.digest_credentials else { return Ok(None) };
    let password = secret_text(snapshot, reference).map_err(|e| format!("EndUser/{user_ref}: digestCredentials: {e}"))?;
    let name = user.spec.user_id.clone().unwrap_or_else(|| user.name_any());
    Ok(Some(DigestAuth { name, password: password.to_string() }))
}

/// The UTF-8 value of a Secret key, wiped from memory when dropped.
pub fn secret_text(snapshot: &Snapshot, reference: &SecretKeyRef) -> Result<zeroize::Zeroizing<String>, String> {
    let bytes = snapshot
        .secrets
        .get(&reference.name)
        .and_then(|secret| secret.0.get(&reference.key))
        .ok_or_else(|| format!("Secret {}/{} not found", reference.name, reference.key))?;
    String::from_utf8(bytes.to_vec())
        .map(zeroize::Zeroizing::new)
        .map_err(|_| format!("Secret {}/{} is not UTF-8 text", reference.name, reference.key))
}
