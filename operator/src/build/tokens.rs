//! The CTL's signer: which tokens it lists, and unlocking the signing token's key with the password
//! from its Secret, counting failures in the token's status (P.3-17, P.16-5).

use std::collections::BTreeMap;

use super::BuildError;
use super::phone_files::secret_text;
use super::state::{Sensitivity, StateDir};
use crate::api::{CtlSettings, SecurityToken, SecurityTokenStatus};
use crate::token::material;
use crate::token::signing::{CtlSigningPlan, PublishedSast, TokenInput, plan};
use crate::token::unlock::{UnlockAttempt, unlock};
use crate::trust::{Signer, TrustList};
use crate::validate::Snapshot;

/// Token status survives between runs: the failure count and the lock are never reset by a restart.
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

/// The tokens of the snapshot with their persisted status and certificate.
pub struct Tokens {
    pub tokens: BTreeMap<String, (SecurityToken, Option<Vec<u8>>)>,
}

impl Tokens {
    pub fn load(snapshot: &Snapshot, state: &StateDir) -> Result<Self, BuildError> {
        let mut tokens = BTreeMap::new();
        for (name, token) in &snapshot.tokens {
            let mut token = token.clone();
            token.status = Some(load_status(state, name)?);
            let certificate =
                secret_text(snapshot, &token.spec.certificate).ok().and_then(|pem| material::certificate_der(pem.as_bytes()).ok());
            tokens.insert(name.clone(), (token, certificate));
        }
        Ok(Tokens { tokens })
    }

    /// Which tokens the CTL lists and which signs it, continuing from the published CTL (spec/04 §3.9).
    pub fn plan(&self, ctl: &CtlSettings, published: Option<&TrustList>) -> Result<CtlSigningPlan, BuildError> {
        let inputs: Vec<TokenInput<'_>> =
            self.tokens.values().map(|(token, certificate)| TokenInput { token, certificate_der: certificate.as_deref() }).collect();
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

    /// Unlocks the token's key with the password in its Secret. Every attempt's outcome is saved to
    /// the token's status before anything else happens, so a crash cannot forget a failure.
    pub fn unlock_signer(&self, snapshot: &Snapshot, state: &StateDir, name: &str, now: &str) -> Result<Signer, BuildError> {
        let (token, certificate) =
            self.tokens.get(name).ok_or_else(|| BuildError::Token(format!("SecurityToken/{name} not found (P.3-12)")))?;
        let certificate = certificate
            .as_deref()
            .ok_or_else(|| BuildError::Token(format!("SecurityToken/{name}: certificate: not a PEM certificate (P.3-9)")))?;
        let key_pem = secret_text(snapshot, &token.spec.private_key)
            .map_err(|e| BuildError::Token(format!("SecurityToken/{name}: privateKey: {e}")))?;
        let password =
            secret_text(snapshot, &token.spec.password).map_err(|e| BuildError::Token(format!("SecurityToken/{name}: password: {e}")))?;
        let status = token.status.clone().unwrap_or_default();
        let outcome = unlock(UnlockAttempt {
            status: &status,
            state: token.spec.state(),
            encrypted_key_pem: &key_pem,
            certificate_der: certificate,
            password: password.as_bytes(),
            now,
        });
        if outcome.status != status {
            save_status(state, name, &outcome.status)?;
        }
        let key = outcome.result.map_err(|e| BuildError::Token(format!("SecurityToken/{name}: {e}")))?;
        Signer::new(certificate.to_vec(), key.into_key(), false).map_err(|e| BuildError::Token(format!("SecurityToken/{name}: {e}")))
    }
}
