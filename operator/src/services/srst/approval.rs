//! Approval of a gateway certificate (docs/wire-formats.md §9.2 step 3): pending with its SHA-256 and SHA-1 fingerprints
//! shown; active only after an approval repeating the SHA-256; a changed certificate returns to pending.
//! Mirrors Cisco's "Update Certificate → accept" (P.12-4). Pure: no I/O, no clock.

use time::format_description::well_known::Rfc3339;

use super::error::SrstError;
use crate::api::CertificateSummary;
use crate::core::pki::inspect::{CertificateFacts, parse_certificate, sha1_hex, sha256_hex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalState {
    /// Shown to the administrator; not given to phones.
    Pending,
    /// Approved: may go into phone configurations (docs/wire-formats.md §9.3).
    Active,
}

/// What a newly obtained certificate did to the stored one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// Same DER: the approval state is kept.
    Unchanged,
    /// Different DER: stored and pending again.
    Replaced,
}

/// A gateway certificate and its approval state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayCertificate {
    der: Vec<u8>,
    sha256: String,
    sha1: String,
    state: ApprovalState,
}

impl GatewayCertificate {
    /// A newly obtained certificate: pending.
    pub fn pending(der: Vec<u8>) -> Result<GatewayCertificate, SrstError> {
        parse_certificate(&der).map_err(|e| SrstError::NotACertificate(e.to_string()))?;
        let sha256 = sha256_hex(&der);
        let sha1 = sha1_hex(&der);
        Ok(GatewayCertificate { der, sha256, sha1, state: ApprovalState::Pending })
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// Lowercase hex, 64 characters: what the approval must repeat.
    pub fn sha256_fingerprint(&self) -> &str {
        &self.sha256
    }

    /// Lowercase hex, 40 characters: shown for administrators who compare SHA-1 on the gateway.
    pub fn sha1_fingerprint(&self) -> &str {
        &self.sha1
    }

    pub fn state(&self) -> ApprovalState {
        self.state
    }

    pub fn is_active(&self) -> bool {
        self.state == ApprovalState::Active
    }

    /// Records a freshly captured or declared certificate: a different one replaces this one and is pending.
    pub fn observe(&mut self, der: Vec<u8>) -> Result<Observation, SrstError> {
        if der == self.der {
            return Ok(Observation::Unchanged);
        }
        *self = GatewayCertificate::pending(der)?;
        Ok(Observation::Replaced)
    }

    /// Approves the certificate if `sha256_fingerprint` (hex, any case, colons allowed) is its SHA-256.
    /// A malformed or different fingerprint is an error and leaves the state as it was.
    pub fn approve(&mut self, sha256_fingerprint: &str) -> Result<(), SrstError> {
        let given =
            normalise_fingerprint(sha256_fingerprint).ok_or_else(|| SrstError::MalformedFingerprint(sha256_fingerprint.to_owned()))?;
        if given != self.sha256 {
            return Err(SrstError::FingerprintMismatch { expected: self.sha256.clone(), given });
        }
        self.state = ApprovalState::Active;
        Ok(())
    }

    /// The status summary (`SrstReferenceStatus.fetched_certificate`).
    pub fn summary(&self) -> Result<CertificateSummary, SrstError> {
        let facts = CertificateFacts::from_der(&self.der).map_err(|e| SrstError::NotACertificate(e.to_string()))?;
        Ok(CertificateSummary {
            subject: facts.subject,
            issuer: facts.issuer,
            serial_number: facts.serial.to_hex(),
            not_after: facts.not_after.format(&Rfc3339).map_err(|e| SrstError::NotACertificate(e.to_string()))?,
            sha256: self.sha256.clone(),
        })
    }
}

/// A SHA-256 fingerprint as 64 lowercase hex digits: case is folded and `:` separators (as `openssl x509
/// -fingerprint` prints them) and surrounding spaces are dropped. `None` if anything else remains.
pub fn normalise_fingerprint(text: &str) -> Option<String> {
    let digits: String = text.trim().chars().filter(|c| *c != ':').map(|c| c.to_ascii_lowercase()).collect();
    (digits.len() == 64 && digits.chars().all(|c| c.is_ascii_hexdigit())).then_some(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_normalised() {
        let lower = "ab".repeat(32);
        assert_eq!(normalise_fingerprint(&"AB".repeat(32)), Some(lower.clone()));
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(normalise_fingerprint(&colons), Some(lower));
        assert_eq!(normalise_fingerprint(&"ab".repeat(31)), None);
        assert_eq!(normalise_fingerprint(&"zz".repeat(32)), None);
    }

    #[test]
    fn garbage_is_not_a_gateway_certificate() {
        assert!(matches!(GatewayCertificate::pending(b"junk".to_vec()), Err(SrstError::NotACertificate(_))));
    }
}
