//! The CTL's signer: which tokens it lists, and unlocking the signing token's key with the password
//! from its Secret, counting failures against the token's certificate in the registry (P.3-17,
//! P.16-5).

use std::collections::BTreeMap;

use super::BuildError;
use super::phone_files::secret_text;
use super::state::{Sensitivity, StateDir};
use crate::api::{CtlSettings, SecurityToken, SecurityTokenStatus};
use crate::core::token::material;
use crate::core::token::registry::{TokenRegistry, new_mac_key};
use crate::core::token::signing::{CtlSigningPlan, LeaveReason, PublishedSast, TokenInput, plan};
use crate::core::token::unlock::{UnlockAttempt, unlock};
use crate::core::trust::{Signer, TrustList};
use crate::validate::Snapshot;

/// The registry of token certificates: failure counts, locks and revocations, by fingerprint. It
/// survives every restart; the operator keeps it in a Secret of its own.
pub const REGISTRY_FILE: &str = "tokens/registry.yaml";
/// The secret key of the wrong-password MACs in the registry.
pub const MAC_KEY_FILE: &str = "tokens/attempts.key";

/// What each token's status shows, derived from the registry (and, from older versions, where a lock
/// was recorded before the registry existed).
fn status_file(name: &str) -> String {
    format!("status/tokens/{name}.yaml")
}

pub fn load_status(state: &StateDir, name: &str) -> Result<SecurityTokenStatus, BuildError> {
    match state.read_string(&status_file(name))? {
        Some(text) => serde_yaml::from_str(&text).map_err(|e| BuildError::State(format!("{}: {e}", status_file(name)))),
        None => Ok(SecurityTokenStatus::default()),
    }
}

fn save_status(state: &StateDir, name: &str, status: &SecurityTokenStatus) -> Result<(), BuildError> {
    let text = serde_yaml::to_string(status).map_err(|e| BuildError::State(e.to_string()))?;
    Ok(state.write(&status_file(name), text.as_bytes(), Sensitivity::Public)?)
}

fn load_registry(state: &StateDir) -> Result<TokenRegistry, BuildError> {
    match state.read(REGISTRY_FILE)? {
        Some(bytes) => serde_yaml::from_slice(&bytes).map_err(|e| BuildError::State(format!("{REGISTRY_FILE}: {e}"))),
        None => Ok(TokenRegistry::default()),
    }
}

fn save_registry(state: &StateDir, registry: &TokenRegistry) -> Result<(), BuildError> {
    let text = serde_yaml::to_string(registry).map_err(|e| BuildError::State(e.to_string()))?;
    Ok(state.write(REGISTRY_FILE, text.as_bytes(), Sensitivity::Private)?)
}

/// The MAC key, made on first use. Losing it costs one extra count for a wrong password presented
/// again, nothing more, so it is not an identity.
fn mac_key(state: &StateDir) -> Result<Vec<u8>, BuildError> {
    if let Some(bytes) = state.read(MAC_KEY_FILE)?
        && bytes.len() >= 32
    {
        return Ok(bytes);
    }
    let key = new_mac_key();
    state.write(MAC_KEY_FILE, &key, Sensitivity::Private)?;
    Ok(key)
}

/// The tokens of the snapshot with their certificate, and the registry that speaks for their keys.
pub struct Tokens {
    pub tokens: BTreeMap<String, (SecurityToken, Option<Vec<u8>>)>,
    registry: TokenRegistry,
    mac_key: Vec<u8>,
}

impl Tokens {
    /// Reads the registry, notes what each SecurityToken says of its certificate (a Lost or
    /// Compromised state is kept for good), and gives each token the status its certificate has.
    pub fn load(snapshot: &Snapshot, state: &StateDir, now: &str) -> Result<Self, BuildError> {
        let mut registry = load_registry(state)?;
        let mut changed = false;
        let mut tokens = BTreeMap::new();
        for (name, token) in &snapshot.tokens {
            let mut token = SecurityToken::clone(token);
            let certificate =
                secret_text(snapshot, &token.spec.certificate).ok().and_then(|pem| material::certificate_der(pem.as_bytes()).ok());
            if let Some(der) = &certificate {
                let legacy = load_status(state, name)?;
                let legacy_lock = legacy.locked.then(|| legacy.locked_at.clone().unwrap_or_else(|| now.to_owned()));
                changed |= registry.observe(name, der, token.spec.state(), legacy_lock.as_deref(), now);
                token.status = Some(registry.record(der).status_view());
            } else {
                token.status = Some(SecurityTokenStatus::default());
            }
            tokens.insert(name.clone(), (token, certificate));
        }
        if changed {
            save_registry(state, &registry)?;
        }
        Ok(Tokens { tokens, registry, mac_key: mac_key(state)? })
    }

    /// The status a token shows, from its certificate's record.
    pub fn status(&self, name: &str) -> SecurityTokenStatus {
        match self.tokens.get(name) {
            Some((_, Some(der))) => self.registry.record(der).status_view(),
            _ => SecurityTokenStatus::default(),
        }
    }

    /// Writes each token's status view, for the adapters to show: its counters, and whether the CTL
    /// served lists it and was signed by it.
    pub fn save_statuses(&self, state: &StateDir, served_ctl: Option<&TrustList>) -> Result<(), BuildError> {
        let signer = served_ctl.and_then(|ctl| ctl.verify().ok()).map(|record| record.certificate_der.as_slice());
        for (name, (_, certificate)) in &self.tokens {
            let mut status = self.status(name);
            if let (Some(ctl), Some(der)) = (served_ctl, certificate.as_deref()) {
                status.in_current_ctl = ctl.sast_records().any(|record| record.certificate_der == der);
                status.signed_current_ctl = signer == Some(der);
            }
            save_status(state, name, &status)?;
        }
        Ok(())
    }

    /// Which tokens the CTL lists and which signs it, continuing from the published CTL (docs/wire-formats.md §3.9).
    pub fn plan(&self, ctl: &CtlSettings, published: Option<&TrustList>) -> Result<CtlSigningPlan, BuildError> {
        let revocations: Vec<_> =
            self.tokens.values().map(|(_, certificate)| certificate.as_deref().and_then(|der| self.revocation(der))).collect();
        let inputs: Vec<TokenInput<'_>> = self
            .tokens
            .values()
            .zip(&revocations)
            .map(|((token, certificate), revoked)| TokenInput { token, certificate_der: certificate.as_deref(), revoked: revoked.as_ref() })
            .collect();
        let published: Option<Vec<PublishedSast>> = published.map(|list| {
            list.sast_records()
                .map(|r| PublishedSast { serial: r.serial.clone(), certificate_der: Some(r.certificate_der.clone()) })
                .collect()
        });
        plan(ctl, &inputs, published.as_deref()).map_err(|e| BuildError::Token(e.to_string()))
    }

    pub fn certificate(&self, name: &str) -> Option<&[u8]> {
        self.tokens.get(name).and_then(|(_, certificate)| certificate.as_deref())
    }

    /// Why `name` may not sign whatever its own spec says: its certificate was declared Lost or
    /// Compromised by another object, or another object holds it in a state other than Active.
    pub fn refusal(&self, name: &str) -> Option<LeaveReason> {
        let der = self.tokens.get(name)?.1.as_deref()?;
        if let Some(revocation) = self.revocation(der).filter(|r| r.by != name) {
            return Some(LeaveReason::CertificateRefused { state: revocation.state, by: revocation.by });
        }
        self.tokens.iter().find_map(|(other, (token, certificate))| {
            let state = token.spec.state();
            (other != name && certificate.as_deref() == Some(der) && state != crate::api::TokenState::Active)
                .then(|| LeaveReason::CertificateRefused { state, by: other.clone() })
        })
    }

    fn revocation(&self, certificate_der: &[u8]) -> Option<crate::core::token::registry::Revocation> {
        self.registry.record(certificate_der).revoked
    }

    /// Unlocks the token's key with the password in its Secret. Every attempt's outcome is saved to
    /// the registry before anything else happens, so a crash, or a failure later in the build or the
    /// apply, cannot forget a failure.
    pub fn unlock_signer(&mut self, snapshot: &Snapshot, state: &StateDir, name: &str, now: &str) -> Result<Signer, BuildError> {
        let (token, certificate) =
            self.tokens.get(name).ok_or_else(|| BuildError::Token(format!("SecurityToken/{name} not found (P.3-12)")))?;
        let certificate = certificate
            .as_deref()
            .ok_or_else(|| BuildError::Token(format!("SecurityToken/{name}: certificate: not a PEM certificate (P.3-9)")))?;
        let key_pem = secret_text(snapshot, &token.spec.private_key)
            .map_err(|e| BuildError::Token(format!("SecurityToken/{name}: privateKey: {e}")))?;
        let password =
            secret_text(snapshot, &token.spec.password).map_err(|e| BuildError::Token(format!("SecurityToken/{name}: password: {e}")))?;
        let record = self.registry.record(certificate);
        let outcome = unlock(UnlockAttempt {
            record: &record,
            state: token.spec.state(),
            encrypted_key_pem: &key_pem,
            certificate_der: certificate,
            password: password.as_bytes(),
            mac_key: &self.mac_key,
            now,
        });
        if outcome.record != record {
            let certificate = certificate.to_vec();
            *self.registry.record_mut(&certificate) = outcome.record;
            save_registry(state, &self.registry)?;
        }
        let key = outcome.result.map_err(|e| BuildError::Token(format!("SecurityToken/{name}: {e}")))?;
        Signer::new(certificate.to_vec(), key.into_key(), false).map_err(|e| BuildError::Token(format!("SecurityToken/{name}: {e}")))
    }
}
