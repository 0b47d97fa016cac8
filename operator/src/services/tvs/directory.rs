//! The certificates TVS vouches for, keyed by the SHA-256 of their DER (docs/wire-formats.md §8 "Verify").

use std::collections::HashMap;
use std::fmt;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::core::pki::inspect::{CertificateFacts, InspectError, lower_hex};
use crate::core::trust::codes::Role;

/// TTL when a certificate names none (docs/wire-formats.md §8).
pub const DEFAULT_TTL_SECONDS: u32 = 86_400;
/// Smallest configurable TTL (docs/wire-formats.md §8).
pub const MIN_TTL_SECONDS: u32 = 1;
/// Largest configurable TTL, 30 days (docs/wire-formats.md §8).
pub const MAX_TTL_SECONDS: u32 = 2_592_000;

/// What TVS knows about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryEntry {
    /// Ascending role codes, without repeats; each fits in one byte.
    pub roles: Vec<Role>,
    /// The configured TTL, before the notAfter cap.
    pub ttl_seconds: u32,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// The answer to one VERIFY_REQUEST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// STATUS 0 with ROLES and TTL.
    Valid { roles: Vec<Role>, ttl_seconds: u32 },
    /// STATUS 1 only.
    Invalid(InvalidReason),
}

/// Why a certificate got STATUS 1; only the reason code goes on the wire, the rest is for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidReason {
    /// No entry has this SHA-256.
    Unknown,
    /// Known, but notAfter has passed (less than the minimum TTL of one second is left) [D].
    Expired,
    /// Known, but notBefore is still in the future [D].
    NotYetValid,
}

/// SHA-256 of DER -> entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateDirectory {
    entries: HashMap<[u8; 32], DirectoryEntry>,
}

impl CertificateDirectory {
    pub fn new() -> CertificateDirectory {
        CertificateDirectory::default()
    }

    /// Adds (or replaces) a certificate with its roles and TTL (`None`: [`DEFAULT_TTL_SECONDS`]).
    /// Returns its SHA-256 fingerprint as lowercase hex.
    pub fn insert(&mut self, der: &[u8], roles: &[Role], ttl_seconds: Option<u32>) -> Result<String, DirectoryError> {
        let ttl_seconds = ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS);
        if !(MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(&ttl_seconds) {
            return Err(DirectoryError::TtlOutOfRange(ttl_seconds));
        }
        if roles.is_empty() {
            return Err(DirectoryError::NoRoles);
        }
        if let Some(role) = roles.iter().find(|role| u8::try_from(role.code()).is_err()) {
            return Err(DirectoryError::RoleNotEncodable(role.code()));
        }
        let facts = CertificateFacts::from_der(der).map_err(DirectoryError::NotACertificate)?;
        let mut roles = roles.to_vec();
        roles.sort_by_key(|role| role.code());
        roles.dedup();
        let fingerprint = sha256(der);
        self.entries.insert(fingerprint, DirectoryEntry { roles, ttl_seconds, not_before: facts.not_before, not_after: facts.not_after });
        Ok(lower_hex(&fingerprint))
    }

    /// The directory of a build's list (`core::build::vouched`), each certificate with the default
    /// TTL; the first entry refused is named.
    pub fn from_vouched(list: &[crate::core::build::vouched::Vouched]) -> Result<CertificateDirectory, String> {
        let mut directory = CertificateDirectory::new();
        for entry in list {
            let roles: Vec<Role> = entry.roles.iter().map(|code| Role::from_code(*code)).collect();
            directory.insert(&entry.certificate, &roles, None).map_err(|e| format!("{}: {e}", entry.name))?;
        }
        Ok(directory)
    }

    /// Removes a certificate; returns whether it was present.
    pub fn remove(&mut self, der: &[u8]) -> bool {
        self.entries.remove(&sha256(der)).is_some()
    }

    pub fn get(&self, der: &[u8]) -> Option<&DirectoryEntry> {
        self.entries.get(&sha256(der))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The verdict for `der` at `now`: exact SHA-256 match, TTL capped at the seconds left until notAfter.
    pub fn verify(&self, der: &[u8], now: OffsetDateTime) -> Verdict {
        let Some(entry) = self.entries.get(&sha256(der)) else {
            return Verdict::Invalid(InvalidReason::Unknown);
        };
        if now < entry.not_before {
            return Verdict::Invalid(InvalidReason::NotYetValid);
        }
        let seconds_left = (entry.not_after - now).whole_seconds();
        if seconds_left < i64::from(MIN_TTL_SECONDS) {
            return Verdict::Invalid(InvalidReason::Expired);
        }
        let ttl_seconds = u32::try_from(seconds_left).map_or(entry.ttl_seconds, |left| left.min(entry.ttl_seconds));
        Verdict::Valid { roles: entry.roles.clone(), ttl_seconds }
    }
}

fn sha256(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// Why a certificate could not be put in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryError {
    /// The TTL is outside 1..=2 592 000 seconds.
    TtlOutOfRange(u32),
    /// A certificate TVS vouches for needs at least one role.
    NoRoles,
    /// A role code above 255 cannot go in the one-byte ROLES element.
    RoleNotEncodable(u16),
    NotACertificate(InspectError),
}

impl fmt::Display for DirectoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirectoryError::TtlOutOfRange(ttl) => {
                write!(f, "TVS TTL {ttl} s is outside {MIN_TTL_SECONDS}..={MAX_TTL_SECONDS} (docs/wire-formats.md §8)")
            }
            DirectoryError::NoRoles => write!(f, "a TVS directory entry needs at least one role (docs/wire-formats.md §8 ROLES)"),
            DirectoryError::RoleNotEncodable(code) => {
                write!(f, "role code {code} does not fit the one-byte TVS ROLES element (docs/wire-formats.md §1.7, §8)")
            }
            DirectoryError::NotACertificate(why) => write!(f, "TVS directory entry refused: {why} (docs/wire-formats.md §8)"),
        }
    }
}

impl std::error::Error for DirectoryError {}
