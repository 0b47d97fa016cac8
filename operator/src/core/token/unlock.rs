//! Unlocking a token's key: the retry counter and the lock (P.16-5, Table 3-2).
//!
//! Pure: the caller passes the certificate's record (see `registry`), gets the new record back, and
//! stores it before doing anything else. Counting follows
//! docs/security-model.md: one failure per DISTINCT wrong password, so a reconcile loop that presents the
//! same wrong Secret again and again cannot lock a token.

use rsa::RsaPrivateKey;

use super::registry::{TokenRecord, wrong_password_mac};
use crate::api::{TOKEN_FACTORY_PASSWORD, TOKEN_LOCK_RULE, TOKEN_RETRY_COUNTER, TokenState};
use crate::core::pki::keys::{self, KeyError};

/// A decrypted token key. Debug never prints it.
pub struct UnlockedKey(RsaPrivateKey);

impl UnlockedKey {
    pub fn key(&self) -> &RsaPrivateKey {
        &self.0
    }

    pub fn into_key(self) -> RsaPrivateKey {
        self.0
    }
}

impl std::fmt::Debug for UnlockedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnlockedKey(..)")
    }
}

/// Why a token's key was not released. Nothing here holds the password or the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnlockError {
    /// Locked after more than [`TOKEN_RETRY_COUNTER`] consecutive failures; for good (P.16-5).
    Locked,
    /// Lost, Compromised or Retired: it may not sign (P.16-5).
    NotUsable(TokenState),
    /// The password does not decrypt the key. `failures` consecutive distinct wrong passwords so
    /// far; `remaining` more are tolerated, the one after them locks the token (P.16-5).
    WrongPassword { failures: u32, remaining: u32 },
    /// The password is right but is the factory default: no signing until it changes (Table 3-2).
    DefaultPassword,
    /// The key Secret does not hold an encrypted PKCS#8 key; no attempt was counted.
    Malformed(String),
}

impl std::fmt::Display for UnlockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnlockError::Locked => {
                write!(f, "the token is locked, and can never be used again: sign with another token; {TOKEN_LOCK_RULE}")
            }
            UnlockError::NotUsable(state) => write!(f, "the token is {state:?} and may not sign (P.16-5)"),
            UnlockError::WrongPassword { failures, .. } if *failures > TOKEN_RETRY_COUNTER => {
                write!(f, "wrong token password: {failures} consecutive failures, and the token is now locked: {TOKEN_LOCK_RULE}")
            }
            UnlockError::WrongPassword { failures, remaining } => write!(
                f,
                "wrong token password: {failures} consecutive failure(s), {remaining} more tolerated before the lock: {TOKEN_LOCK_RULE}"
            ),
            UnlockError::DefaultPassword => {
                write!(f, "the token password is still the factory default: change it before the token signs (Table 3-2, P.3-17)")
            }
            UnlockError::Malformed(why) => write!(f, "the token key is unreadable: {why} (P.3-17)"),
        }
    }
}

impl std::error::Error for UnlockError {}

/// What the caller knows of one attempt.
#[derive(Clone, Copy)]
pub struct UnlockAttempt<'a> {
    /// What the registry knows of this certificate.
    pub record: &'a TokenRecord,
    /// `spec.state` of the token.
    pub state: TokenState,
    /// The `ENCRYPTED PRIVATE KEY` PEM from the key Secret.
    pub encrypted_key_pem: &'a str,
    /// The token certificate, DER: it keys the wrong-password MAC to this token.
    pub certificate_der: &'a [u8],
    /// The content of the password Secret.
    pub password: &'a [u8],
    /// The registry's secret MAC key.
    pub mac_key: &'a [u8],
    /// RFC 3339 time of the attempt, for `lockedAt`.
    pub now: &'a str,
}

impl std::fmt::Debug for UnlockAttempt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnlockAttempt").field("state", &self.state).field("now", &self.now).finish_non_exhaustive()
    }
}

/// The result and the record to store, whatever the result.
#[derive(Debug)]
pub struct UnlockOutcome {
    pub result: Result<UnlockedKey, UnlockError>,
    pub record: TokenRecord,
}

/// Applies the retry-counter policy to one attempt, decrypting with [`keys::decrypt_pem`].
pub fn unlock(attempt: UnlockAttempt<'_>) -> UnlockOutcome {
    unlock_with(attempt, keys::decrypt_pem)
}

/// [`unlock`] with another decryption (a PKCS#11 token, or a test double). `decrypt` is called at
/// most once, and never for a locked or unusable token.
pub fn unlock_with(attempt: UnlockAttempt<'_>, decrypt: impl FnOnce(&str, &[u8]) -> Result<RsaPrivateKey, KeyError>) -> UnlockOutcome {
    let mut status = attempt.record.clone();
    // A record that counted past the limit without the flag is locked all the same (T-1).
    if status.is_locked() {
        if !status.locked {
            status.locked = true;
            status.locked_at.get_or_insert_with(|| attempt.now.to_string());
        }
        return UnlockOutcome { result: Err(UnlockError::Locked), record: status };
    }
    if attempt.state != TokenState::Active {
        return UnlockOutcome { result: Err(UnlockError::NotUsable(attempt.state)), record: status };
    }
    if let Some(revoked) = &status.revoked {
        return UnlockOutcome { result: Err(UnlockError::NotUsable(revoked.state)), record: status };
    }
    let is_default = attempt.password == TOKEN_FACTORY_PASSWORD.as_bytes();
    status.default_password_in_use = Some(is_default);
    let result = match decrypt(attempt.encrypted_key_pem, attempt.password) {
        Ok(key) => {
            status.consecutive_failed_logins = 0;
            status.last_failed_password_mac = None;
            if is_default { Err(UnlockError::DefaultPassword) } else { Ok(UnlockedKey(key)) }
        }
        Err(KeyError::WrongPassword) => {
            let mac = wrong_password_mac(attempt.mac_key, attempt.certificate_der, attempt.password);
            if status.last_failed_password_mac.as_deref() != Some(mac.as_str()) {
                status.consecutive_failed_logins += 1;
                status.last_failed_password_mac = Some(mac);
            }
            let failures = status.consecutive_failed_logins;
            if failures > TOKEN_RETRY_COUNTER {
                status.locked = true;
                status.locked_at = Some(attempt.now.to_string());
            }
            Err(UnlockError::WrongPassword { failures, remaining: TOKEN_RETRY_COUNTER.saturating_sub(failures) })
        }
        Err(KeyError::Malformed(why) | KeyError::Unsupported(why)) => Err(UnlockError::Malformed(why)),
    };
    UnlockOutcome { result, record: status }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::sync::OnceLock;

    use super::*;

    const RIGHT: &[u8] = b"right-password";
    const CERT: &[u8] = b"certificate DER stand-in";
    const NOW: &str = "2030-01-02T03:04:05Z";
    const MAC_KEY: &[u8] = b"registry secret";

    /// One key for the whole module, and its PEM encrypted with RIGHT.
    fn material() -> &'static (RsaPrivateKey, String) {
        static MATERIAL: OnceLock<(RsaPrivateKey, String)> = OnceLock::new();
        MATERIAL.get_or_init(|| {
            let key = keys::generate_rsa(1024);
            let pem = keys::encrypt_pem(&key, RIGHT);
            (key, pem)
        })
    }

    fn attempt<'a>(record: &'a TokenRecord, password: &'a [u8]) -> UnlockAttempt<'a> {
        UnlockAttempt {
            record,
            state: TokenState::Active,
            encrypted_key_pem: "ENCRYPTED",
            certificate_der: CERT,
            password,
            mac_key: MAC_KEY,
            now: NOW,
        }
    }

    /// A stand-in for PBKDF2 with 600 000 rounds: RIGHT and the factory password open the key.
    fn fake_decrypt(pem: &str, password: &[u8]) -> Result<RsaPrivateKey, KeyError> {
        match (pem, password) {
            ("ENCRYPTED", RIGHT) => Ok(material().0.clone()),
            ("ENCRYPTED-DEFAULT", p) if p == TOKEN_FACTORY_PASSWORD.as_bytes() => Ok(material().0.clone()),
            ("ENCRYPTED" | "ENCRYPTED-DEFAULT", _) => Err(KeyError::WrongPassword),
            _ => Err(KeyError::Malformed("not an ENCRYPTED PRIVATE KEY".into())),
        }
    }

    fn try_unlock(attempt: UnlockAttempt<'_>) -> UnlockOutcome {
        unlock_with(attempt, fake_decrypt)
    }

    fn failed_n_times(n: u32) -> TokenRecord {
        let mut status = TokenRecord::default();
        for i in 0..n {
            status = try_unlock(attempt(&status, format!("wrong-{i}").as_bytes())).record;
        }
        status
    }

    #[test]
    fn the_real_decryption_opens_with_the_right_password_only() {
        let pem = &material().1;
        let status = TokenRecord::default();
        let wrong = unlock(UnlockAttempt { encrypted_key_pem: pem, ..attempt(&status, b"wrong") });
        assert_eq!(wrong.result.unwrap_err(), UnlockError::WrongPassword { failures: 1, remaining: 14 });
        let right = unlock(UnlockAttempt { encrypted_key_pem: pem, ..attempt(&wrong.record, RIGHT) });
        assert_eq!(right.result.unwrap().key(), &material().0);
        assert_eq!(right.record.consecutive_failed_logins, 0);
    }

    #[test]
    fn a_correct_password_releases_the_key_and_clears_the_counter() {
        let status = failed_n_times(3);
        assert_eq!(status.consecutive_failed_logins, 3);
        let outcome = try_unlock(attempt(&status, RIGHT));
        assert_eq!(outcome.result.unwrap().key(), &material().0);
        assert_eq!(outcome.record.consecutive_failed_logins, 0);
        assert_eq!(outcome.record.last_failed_password_mac, None);
        assert_eq!(outcome.record.default_password_in_use, Some(false));
    }

    #[test]
    fn each_distinct_wrong_password_counts_once() {
        let outcome = try_unlock(attempt(&TokenRecord::default(), b"wrong-a"));
        assert_eq!(outcome.result.unwrap_err(), UnlockError::WrongPassword { failures: 1, remaining: 14 });
        // A retry loop presenting the same Secret again.
        let again = try_unlock(attempt(&outcome.record, b"wrong-a"));
        assert_eq!(again.result.unwrap_err(), UnlockError::WrongPassword { failures: 1, remaining: 14 });
        assert_eq!(again.record, outcome.record);
        let other = try_unlock(attempt(&again.record, b"wrong-b"));
        assert_eq!(other.record.consecutive_failed_logins, 2);
        // Back to the first wrong one: it differs from the last, so it counts.
        assert_eq!(try_unlock(attempt(&other.record, b"wrong-a")).record.consecutive_failed_logins, 3);
    }

    #[test]
    fn the_sixteenth_consecutive_failure_locks() {
        let status = failed_n_times(TOKEN_RETRY_COUNTER);
        assert_eq!(status.consecutive_failed_logins, 15);
        assert!(!status.locked, "15 failures are tolerated (P.16-5)");
        let outcome = try_unlock(attempt(&status, b"the sixteenth"));
        assert_eq!(outcome.result.unwrap_err(), UnlockError::WrongPassword { failures: 16, remaining: 0 });
        assert!(outcome.record.locked);
        assert_eq!(outcome.record.locked_at.as_deref(), Some(NOW));
    }

    #[test]
    fn a_correct_password_after_fifteen_failures_resets() {
        let outcome = try_unlock(attempt(&failed_n_times(15), RIGHT));
        assert!(outcome.result.is_ok());
        assert_eq!(outcome.record.consecutive_failed_logins, 0);
        assert!(!outcome.record.locked);
        // And the count starts again from zero.
        let status = (0..15).fold(outcome.record, |s, i| try_unlock(attempt(&s, format!("again-{i}").as_bytes())).record);
        assert!(!status.locked);
    }

    #[test]
    fn a_locked_token_stays_locked_and_never_tries_the_key() {
        let locked = failed_n_times(16);
        assert!(locked.locked);
        let outcome = try_unlock(attempt(&locked, RIGHT));
        assert_eq!(outcome.result.unwrap_err(), UnlockError::Locked);
        assert_eq!(outcome.record, locked, "the right password changes nothing");
        let tried = Cell::new(false);
        let outcome = unlock_with(attempt(&locked, RIGHT), |pem, password| {
            tried.set(true);
            fake_decrypt(pem, password)
        });
        assert_eq!(outcome.result.unwrap_err(), UnlockError::Locked);
        assert!(!tried.get(), "a locked token's key is never tried");
    }

    #[test]
    fn a_counter_past_the_limit_is_locked_even_without_the_flag() {
        let status = TokenRecord { consecutive_failed_logins: 16, ..Default::default() };
        let outcome = try_unlock(attempt(&status, RIGHT));
        assert_eq!(outcome.result.unwrap_err(), UnlockError::Locked);
        assert!(outcome.record.locked);
        assert_eq!(outcome.record.locked_at.as_deref(), Some(NOW));
    }

    #[test]
    fn lost_compromised_and_retired_tokens_cannot_sign() {
        for state in [TokenState::Lost, TokenState::Compromised, TokenState::Retired] {
            let status = TokenRecord::default();
            let outcome = try_unlock(UnlockAttempt { state, ..attempt(&status, RIGHT) });
            assert_eq!(outcome.result.unwrap_err(), UnlockError::NotUsable(state));
            assert_eq!(outcome.record, status);
        }
    }

    #[test]
    fn the_factory_password_is_refused_even_when_right() {
        let status = failed_n_times(2);
        let outcome =
            try_unlock(UnlockAttempt { encrypted_key_pem: "ENCRYPTED-DEFAULT", ..attempt(&status, TOKEN_FACTORY_PASSWORD.as_bytes()) });
        assert_eq!(outcome.result.unwrap_err(), UnlockError::DefaultPassword);
        assert_eq!(outcome.record.default_password_in_use, Some(true));
        assert_eq!(outcome.record.consecutive_failed_logins, 0, "it is a correct login");
    }

    #[test]
    fn a_malformed_key_counts_nothing() {
        let status = TokenRecord::default();
        let outcome = try_unlock(UnlockAttempt { encrypted_key_pem: "FAKE-ENCRYPTED-KEY", ..attempt(&status, RIGHT) });
        assert!(matches!(outcome.result, Err(UnlockError::Malformed(_))));
        assert_eq!(outcome.record.consecutive_failed_logins, 0);
    }

    #[test]
    fn nothing_said_contains_the_password_or_the_key() {
        let secret = b"Hunter2-very-secret";
        let outcome = try_unlock(attempt(&TokenRecord::default(), secret));
        let error = outcome.result.unwrap_err();
        let status = serde_json::to_string(&outcome.record).unwrap();
        for text in [error.to_string(), format!("{error:?}"), status.clone(), format!("{:?}", attempt(&outcome.record, secret))] {
            assert!(!text.contains("Hunter2"), "{text}");
        }
        let locked = try_unlock(attempt(&failed_n_times(15), secret));
        assert!(!locked.result.unwrap_err().to_string().contains("Hunter2"));
        let opened = try_unlock(attempt(&TokenRecord::default(), RIGHT));
        assert_eq!(format!("{:?}", opened.result), "Ok(UnlockedKey(..))");
        assert!(!format!("{:?}", opened.record).contains("right-password"));
    }

    #[test]
    fn a_revoked_certificate_never_opens() {
        let record = TokenRecord {
            revoked: Some(crate::core::token::registry::Revocation { state: TokenState::Compromised, at: NOW.into(), by: "old".into() }),
            ..Default::default()
        };
        let outcome = try_unlock(attempt(&record, RIGHT));
        assert_eq!(outcome.result.unwrap_err(), UnlockError::NotUsable(TokenState::Compromised));
    }
}
