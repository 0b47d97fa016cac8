//! The files one phone fetches over TFTP: its configuration, signed (`.sgn`), encrypted for its
//! certificate (`.enc.sgn`) with the signed stub in front, or plain where the profile allows
//! (spec/04 §4, §5.6).

use kube::ResourceExt;

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

/// The files of one phone and what to report about them.
#[derive(Debug, Default)]
pub struct PhoneFiles {
    /// TFTP file name and content.
    pub files: Vec<(String, Vec<u8>)>,
    /// Condition type and message, for status.
    pub conditions: Vec<(&'static str, String)>,
}

/// Builds the phone's files. `device_certificate` is its LSC (or MIC), DER, when known: without it an
/// encrypted phone gets only the stub, which sends it to CAPF (spec/04 §5.1).
pub fn phone_files(context: &PhoneContext<'_>, phone: &Phone, certificate_der: Option<&[u8]>) -> Result<PhoneFiles, String> {
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
    let mut out =
        PhoneFiles { conditions: resolved.conditions.iter().map(|c| (c.reason(), c.to_string())).collect(), ..Default::default() };

    let path = format!("{}.cnf.xml", phone.spec.device_name());
    let sign = |payload: &[u8]| {
        signed::sign(payload, &path, context.signer, context.hash, context.timestamp).map_err(|e| format!("{path}.sgn: {e}"))
    };
    if config.encr_config {
        // Encryption on: the signed stub, the encrypted full file when a certificate is known, and the
        // unsigned stub for the plain name; the full plaintext is never served (spec/04 §5.6).
        let stub = render_stub(config).map_err(|e| e.to_string())?;
        out.files.push((format!("{path}.sgn"), sign(&stub)?));
        if let Some(certificate) = certificate_der {
            let full = render_full(config).map_err(|e| e.to_string())?;
            let encrypted = EncryptedConfigBuilder::new(context.signer, context.hash, context.timestamp)
                .encrypt(&path, &full, certificate)
                .map_err(|e| format!("{path}.enc.sgn: {e}"))?;
            out.files.push((format!("{path}.enc.sgn"), encrypted));
        }
        out.files.push((path, stub));
    } else {
        let full = render_full(config).map_err(|e| e.to_string())?;
        out.files.push((format!("{path}.sgn"), sign(&full)?));
        // A phone whose trust list names a TFTP certificate asks for the signed file (spec/04 §4); the
        // plain one is there only for a non-secure profile, whose file holds nothing to protect.
        if profile.spec.device_security_mode() == DeviceSecurityMode::NonSecure {
            out.files.push((path, full));
        }
    }
    Ok(out)
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
