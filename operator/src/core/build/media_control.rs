//! The credentials of the media control interface (docs/architecture.md, media): a self-signed
//! certificate and key for the relay, another for the signaling service, each side pinning the
//! other's by its SHA-256. They are made once, kept in the state like every key, and made anew only
//! when missing or unreadable: no phone or peer outside the cluster knows them, so a new pair costs
//! no more than a roll of the relay and signaling pods, which the content hash does.

use super::BuildError;
use super::state::{Sensitivity, StateDir};

/// The relay's pair in the state (its Secret: `<cluster>-media-relay`).
pub const RELAY: &str = "certs/media.relay";
/// The signaling service's pair (`<cluster>-media-client`).
pub const CLIENT: &str = "certs/media.client";

/// A certificate and its PKCS#8 key, both DER.
#[derive(Clone, PartialEq, Eq)]
pub struct ControlPair {
    pub certificate_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

impl std::fmt::Debug for ControlPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPair").field("certificate_der", &self.certificate_der.len()).finish_non_exhaustive()
    }
}

/// The relay's pair and the signaling service's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaControlIdentity {
    pub relay: ControlPair,
    pub client: ControlPair,
}

/// A self-signed P-256 certificate named `callguard media <role>`, and its key: (certificate, key).
pub fn generate_pair(role: &str) -> (Vec<u8>, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key generation");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("no names to check");
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("callguard media {role}"));
    // Pinned, never checked for a lifetime; a long one keeps other tools from calling it expired.
    params.not_after = rcgen::date_time_ymd(2099, 12, 31);
    let certificate = params.self_signed(&key).expect("self-signing with a fresh key");
    (certificate.der().to_vec(), key.serialize_der())
}

impl ControlPair {
    /// A pair from its PEM: a certificate, and an unencrypted PKCS#8 key the TLS side can load.
    pub fn from_pem(certificate: &[u8], key: &[u8]) -> Result<ControlPair, String> {
        use rustls_pki_types::pem::PemObject;
        let certificate_der =
            rustls_pki_types::CertificateDer::from_pem_slice(certificate).map_err(|e| format!("the certificate: {e}"))?.to_vec();
        let key_der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(key)
            .map_err(|e| format!("the key (PKCS#8): {e}"))?
            .secret_pkcs8_der()
            .to_vec();
        rcgen::KeyPair::try_from(key_der.as_slice()).map_err(|e| format!("the key: {e}"))?;
        Ok(ControlPair { certificate_der, key_der })
    }
}

/// The pair the state holds; None when it is missing or unreadable.
fn load(state: &StateDir, base: &str) -> Result<Option<ControlPair>, BuildError> {
    let (Some(certificate), Some(key)) = (state.read(&format!("{base}.crt"))?, state.read(&format!("{base}.key"))?) else {
        return Ok(None);
    };
    Ok(ControlPair::from_pem(&certificate, &key).ok())
}

fn store(state: &StateDir, base: &str, pair: &ControlPair) -> Result<(), BuildError> {
    let text = |label: &str, der: &[u8]| pkcs8::der::pem::encode_string(label, pkcs8::der::pem::LineEnding::LF, der).unwrap_or_default();
    state.write(&format!("{base}.key"), text("PRIVATE KEY", &pair.key_der).as_bytes(), Sensitivity::Private)?;
    state.write(&format!("{base}.crt"), text("CERTIFICATE", &pair.certificate_der).as_bytes(), Sensitivity::Public)?;
    Ok(())
}

/// The pairs the state holds; a missing or unreadable one made anew, alone. Each side's pin of the
/// other is taken from the pairs at every build, so a new pair is pinned at once; keeping the other
/// matters when a reconcile stopped between writing the two (a kill, a failed apply).
pub fn load_or_create(state: &StateDir, changes: &mut Vec<String>) -> Result<MediaControlIdentity, BuildError> {
    let mut pair = |base: &str, role: &str, whose: &str| -> Result<ControlPair, BuildError> {
        if let Some(pair) = load(state, base)? {
            return Ok(pair);
        }
        let (certificate_der, key_der) = generate_pair(role);
        let pair = ControlPair { certificate_der, key_der };
        store(state, base, &pair)?;
        changes.push(format!("created the media control credentials of {whose} (each side pins the other's)"));
        Ok(pair)
    };
    let relay = pair(RELAY, "relay", "the relay")?;
    let client = pair(CLIENT, "control", "the signaling service")?;
    Ok(MediaControlIdentity { relay, client })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_read_back_and_made_anew_only_when_unreadable() {
        let state = StateDir::in_memory(Default::default());
        let mut changes = Vec::new();
        let first = load_or_create(&state, &mut changes).unwrap();
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_ne!(first.relay, first.client);
        assert_eq!(load_or_create(&state, &mut changes).unwrap(), first, "kept");
        assert_eq!(changes.len(), 2);
        state.write("certs/media.client.key", b"not a key", Sensitivity::Private).unwrap();
        let second = load_or_create(&state, &mut changes).unwrap();
        assert_ne!(second.client, first.client, "the unreadable one anew");
        assert_eq!(second.relay, first.relay, "the other kept");
        assert_eq!(changes.len(), 3);
        let parsed = x509_parser::parse_x509_certificate(&second.relay.certificate_der).unwrap().1;
        assert_eq!(parsed.subject().to_string(), "CN=callguard media relay");
    }
}
