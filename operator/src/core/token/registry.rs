//! What Callguard remembers of each token *certificate*, whatever SecurityToken object names it: the
//! wrong-password count, the lock, and whether the certificate was ever declared Lost or Compromised
//! (P.16-5).
//!
//! Keyed by the SHA-256 of the certificate's DER, not by the object's name: a second SecurityToken
//! pointing at a locked token's Secrets is the same locked token, and a Compromised token's
//! certificate stays refused when another object lists it, or when its own object is deleted or set
//! back to Active.
//!
//! The registry is state the operator alone writes (a Secret it owns, or the state directory), never
//! the objects' status, which anyone allowed to patch status could reset. Pure: the caller loads and
//! stores it.

use std::collections::{BTreeMap, BTreeSet};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api::{SecurityTokenStatus, TOKEN_RETRY_COUNTER, TokenState};

/// Lowercase hex SHA-256 of a token certificate's DER.
pub fn certificate_fingerprint(certificate_der: &[u8]) -> String {
    hex(&Sha256::digest(certificate_der))
}

/// A permanent refusal: the certificate was declared Lost or Compromised (P.16-5, Table 3-3).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Revocation {
    pub state: TokenState,
    /// RFC 3339.
    pub at: String,
    /// The SecurityToken that declared it.
    pub by: String,
}

/// What is known of one token certificate.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    /// Consecutive distinct wrong passwords; 0 after a correct one (P.16-5).
    #[serde(default)]
    pub consecutive_failed_logins: u32,
    /// Locked for good after more than [`TOKEN_RETRY_COUNTER`] consecutive failures (P.16-5).
    #[serde(default)]
    pub locked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_at: Option<String>,
    /// HMAC-SHA256 of the last wrong password under the registry's secret key, so that the same wrong
    /// Secret presented again counts once. Without the key (which never leaves the operator's own
    /// Secret) it cannot be used to test guesses offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_password_mac: Option<String>,
    /// The password is still the factory default (Table 3-2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_password_in_use: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revocation>,
    /// The SecurityTokens that have named this certificate, for messages.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub names: BTreeSet<String>,
}

impl TokenRecord {
    /// Locked, or counted past the limit (which locks all the same, T-1).
    pub fn is_locked(&self) -> bool {
        self.locked || self.consecutive_failed_logins > TOKEN_RETRY_COUNTER
    }

    /// What the token's status shows: the counters, never the MAC.
    pub fn status_view(&self) -> SecurityTokenStatus {
        SecurityTokenStatus {
            consecutive_failed_logins: self.consecutive_failed_logins,
            locked: self.is_locked(),
            locked_at: self.locked_at.clone(),
            default_password_in_use: self.default_password_in_use,
            ..SecurityTokenStatus::default()
        }
    }
}

/// Every token certificate the cluster has seen, by fingerprint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenRegistry {
    #[serde(default)]
    pub certificates: BTreeMap<String, TokenRecord>,
}

impl TokenRegistry {
    pub fn record(&self, certificate_der: &[u8]) -> TokenRecord {
        self.certificates.get(&certificate_fingerprint(certificate_der)).cloned().unwrap_or_default()
    }

    pub fn record_mut(&mut self, certificate_der: &[u8]) -> &mut TokenRecord {
        self.certificates.entry(certificate_fingerprint(certificate_der)).or_default()
    }

    /// Notes what a SecurityToken says of its certificate: its name, and a Lost or Compromised state,
    /// which is kept for good. A lock seen in an older status (before the registry existed) is taken
    /// over, since a lock never goes back (P.16-5). Returns true when something changed.
    pub fn observe(&mut self, name: &str, certificate_der: &[u8], state: TokenState, legacy_locked: Option<&str>, now: &str) -> bool {
        let record = self.record_mut(certificate_der);
        let before = record.clone();
        record.names.insert(name.to_owned());
        if matches!(state, TokenState::Lost | TokenState::Compromised) && record.revoked.is_none() {
            record.revoked = Some(Revocation { state, at: now.to_owned(), by: name.to_owned() });
        }
        if let Some(locked_at) = legacy_locked
            && !record.locked
        {
            record.locked = true;
            record.locked_at = Some(locked_at.to_owned());
        }
        *record != before
    }
}

/// HMAC-SHA256 over the certificate (length-prefixed) and the password, lowercase hex. Keyed by a
/// secret only the operator holds, so the stored value lets nobody test a guessed password faster
/// than by decrypting the key itself.
pub fn wrong_password_mac(key: &[u8], certificate_der: &[u8], password: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(b"callguard/token/wrong-password/v2\0");
    mac.update(&(certificate_der.len() as u64).to_be_bytes());
    mac.update(certificate_der);
    mac.update(password);
    hex(&mac.finalize().into_bytes())
}

/// A fresh key for [`wrong_password_mac`].
pub fn new_mac_key() -> Vec<u8> {
    use rand::RngCore;
    let mut key = vec![0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    key
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_follow_the_certificate_not_the_name() {
        let mut registry = TokenRegistry::default();
        registry.record_mut(b"cert A").locked = true;
        assert!(registry.record(b"cert A").is_locked());
        assert!(!registry.record(b"cert B").is_locked());
        assert!(registry.observe("copy-of-a", b"cert A", TokenState::Active, None, "now"));
        assert!(registry.record(b"cert A").is_locked(), "whatever object names it");
    }

    #[test]
    fn lost_and_compromised_are_kept_for_good_and_retired_is_not() {
        let mut registry = TokenRegistry::default();
        registry.observe("a", b"A", TokenState::Compromised, None, "t1");
        registry.observe("a", b"A", TokenState::Active, None, "t2");
        assert_eq!(registry.record(b"A").revoked, Some(Revocation { state: TokenState::Compromised, at: "t1".into(), by: "a".into() }));
        registry.observe("b", b"B", TokenState::Retired, None, "t1");
        assert_eq!(registry.record(b"B").revoked, None);
    }

    #[test]
    fn a_lock_from_an_older_status_is_taken_over_and_never_undone() {
        let mut registry = TokenRegistry::default();
        assert!(registry.observe("a", b"A", TokenState::Active, Some("2026-01-01T00:00:00Z"), "now"));
        assert!(registry.record(b"A").locked);
        assert!(!registry.observe("a", b"A", TokenState::Active, None, "later"), "nothing changes without a lock");
        assert!(registry.record(b"A").locked);
    }

    #[test]
    fn the_mac_needs_the_key() {
        let a = wrong_password_mac(b"key one", b"cert", b"pw");
        assert_eq!(a.len(), 64);
        assert_ne!(a, wrong_password_mac(b"key two", b"cert", b"pw"), "another key, another value");
        assert_ne!(a, wrong_password_mac(b"key one", b"other cert", b"pw"));
        assert_ne!(a, wrong_password_mac(b"key one", b"cert", b"pX"));
        assert_ne!(wrong_password_mac(b"k", b"ab", b"c"), wrong_password_mac(b"k", b"a", b"bc"));
        // Neither the unkeyed SHA-256 of the inputs nor the old label-only fingerprint.
        let unkeyed = hex(&Sha256::digest([&b"cert"[..], b"pw"].concat()));
        assert_ne!(a, unkeyed);
    }

    #[test]
    fn the_status_view_carries_no_mac() {
        let record = TokenRecord { consecutive_failed_logins: 3, last_failed_password_mac: Some("ab".repeat(32)), ..Default::default() };
        let view = serde_json::to_string(&record.status_view()).unwrap();
        assert!(!view.contains(&"ab".repeat(32)), "{view}");
        assert_eq!(record.status_view().consecutive_failed_logins, 3);
    }
}
