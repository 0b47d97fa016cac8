//! What CAPF did for each phone, kept in the state so that nothing is lost when the service restarts,
//! and read by the build for the phone's status and configuration: `capf/SEP<MAC>.yaml`, private.
//!
//! - **Authentication strings work once** (Table 6-2, P.6-12): a string that authenticated a phone is
//!   spent, whether or not the operation then completes, and is refused ever after. Only a salted
//!   PBKDF2 hash of it is kept, never the string.
//! - **Ten consecutive wrong strings lock the phone out for ten minutes** (P.16-6): the eleventh try is
//!   refused before its string is looked at. A right string resets the count.
//! - **An operation is carried out once.** An operation is named by the spec's
//!   `capf.certificateOperation` and `capf.operationCompletesBy` ([`OperationId`]). Once it completed,
//!   the same spec never runs it again, across restarts; to run a new operation, set a new
//!   `operationCompletesBy` (and, by authentication string, a new string). Past its
//!   `operationCompletesBy` an operation expires and is not carried out (Table 6-2).
//!
//! Pure but for [`load`] and [`update`]: the adapter that runs CAPF applies the functions of
//! [`CapfRecord`] through [`update`]; the build reads the record through [`operation_state`].

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use super::state::{Sensitivity, StateDir};
use crate::api::{CapfProfile, CertificateOperation, CtiCertificateOperation, Phone};

/// The state folder of the records.
pub const RECORD_DIR: &str = "capf";
/// Consecutive wrong authentication strings that lock a phone out (P.16-6).
pub const LOCKOUT_AFTER: u32 = 10;
/// How long a lockout lasts (P.16-6).
pub const LOCKOUT: Duration = Duration::minutes(10);
/// PBKDF2-HMAC-SHA256 rounds of a spent string's hash.
const HASH_ITERATIONS: usize = 50_000;
/// Completed operations remembered per phone (the oldest go first).
const KEPT_COMPLETED: usize = 32;

/// Where the record of `device` is kept, relative to the namespace's state.
pub fn record_file(device: &str) -> String {
    format!("{RECORD_DIR}/{device}.yaml")
}

/// One operation of a phone's spec: what, and by when. A new operation needs a new
/// `operationCompletesBy`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OperationId {
    pub operation: CertificateOperation,
    /// The spec's `operationCompletesBy`, RFC 3339, UTC.
    pub completes_by: String,
}

impl OperationId {
    /// The operation a phone's spec asks for, with its deadline; `None` for No Pending Operation.
    pub fn of(phone: &Phone) -> Option<(OperationId, OffsetDateTime)> {
        let capf = phone.spec.capf.as_ref()?;
        let operation = capf.certificate_operation();
        if operation == CertificateOperation::NoPendingOperation {
            return None;
        }
        // CEL requires operationCompletesBy with any other operation (Table 6-2); without one the
        // operation never expires.
        let deadline = capf
            .operation_completes_by
            .as_ref()
            .and_then(|t| OffsetDateTime::from_unix_timestamp(t.0.as_second()).ok())
            .unwrap_or(OffsetDateTime::from_unix_timestamp(253_402_300_799).unwrap_or(OffsetDateTime::UNIX_EPOCH));
        Some((OperationId { operation, completes_by: rfc3339(deadline) }, deadline))
    }

    /// The operation an application or end user CAPF profile asks for, with its deadline; `None` for
    /// No Pending Operation (Table 11-2: Install/Upgrade is the one operation of a CTI profile).
    pub fn of_profile(profile: &CapfProfile) -> Option<(OperationId, OffsetDateTime)> {
        if profile.certificate_operation.unwrap_or_default() == CtiCertificateOperation::NoPendingOperation {
            return None;
        }
        // CEL requires operationCompletesBy with Install/Upgrade (Table 11-2).
        let deadline = profile
            .operation_completes_by
            .as_ref()
            .and_then(|t| OffsetDateTime::from_unix_timestamp(t.0.as_second()).ok())
            .unwrap_or(OffsetDateTime::from_unix_timestamp(253_402_300_799).unwrap_or(OffsetDateTime::UNIX_EPOCH));
        Some((OperationId { operation: CertificateOperation::InstallUpgrade, completes_by: rfc3339(deadline) }, deadline))
    }

    /// Its `completes_by` as a time.
    pub fn deadline(&self) -> Option<OffsetDateTime> {
        parse_rfc3339(&self.completes_by)
    }
}

/// The salted hash of a spent authentication string.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SpentString {
    /// 16 random bytes, hex.
    pub salt: String,
    /// PBKDF2-HMAC-SHA256 of the string with the salt, hex.
    pub pbkdf2_sha256: String,
}

impl SpentString {
    fn new(string: &str) -> SpentString {
        let salt: [u8; 16] = rand::random();
        SpentString { salt: hex(&salt), pbkdf2_sha256: hex(&derive(string, &salt)) }
    }

    fn matches(&self, string: &str) -> bool {
        match (unhex(&self.salt), unhex(&self.pbkdf2_sha256)) {
            (Some(salt), Some(hash)) => bool::from(derive(string, &salt).as_slice().ct_eq(&hash)),
            _ => false,
        }
    }
}

fn derive(string: &str, salt: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    // PBKDF2 fails only on an unusable digest or length, neither of which happens here.
    let _ = openssl::pkcs5::pbkdf2_hmac(string.as_bytes(), salt, HASH_ITERATIONS, openssl::hash::MessageDigest::sha256(), &mut out);
    out
}

/// What is recorded of a certificate CAPF issued or deleted.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateNote {
    pub serial: String,
    pub not_after: String,
    pub sha256: String,
}

/// An operation CAPF carried out.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CompletedOperation {
    #[serde(flatten)]
    pub id: OperationId,
    /// When, RFC 3339.
    pub at: String,
    /// The LSC issued (Install/Upgrade) or deleted (Delete), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateNote>,
}

/// Why the last attempt at an operation failed.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OperationFailure {
    #[serde(flatten)]
    pub id: OperationId,
    pub at: String,
    pub reason: String,
}

/// Everything CAPF keeps of one phone.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CapfRecord {
    /// Authentication strings that authenticated this phone once (Table 6-2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spent_strings: Vec<SpentString>,
    /// Consecutive wrong authentication strings (P.16-6).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub consecutive_wrong_strings: u32,
    /// RFC 3339: no string is looked at before then (P.16-6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_until: Option<String>,
    /// Operations carried out, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub completed: Vec<CompletedOperation>,
    /// The last failed attempt, kept until the operation completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<OperationFailure>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Why CAPF refuses a phone before looking at what it sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    LockedOut { until: OffsetDateTime },
    StringSpent,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::LockedOut { until } => {
                write!(f, "locked out until {} after {LOCKOUT_AFTER} consecutive wrong authentication strings (P.16-6)", rfc3339(*until))
            }
            Refusal::StringSpent => f.write_str(
                "spec.capf.authenticationString was already used: an authentication string works once; set a new one (Table 6-2, P.6-12)",
            ),
        }
    }
}

impl CapfRecord {
    /// The end of the lockout in force at `now`, if any.
    pub fn locked_until(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        self.locked_until.as_deref().and_then(parse_rfc3339).filter(|until| *until > now)
    }

    /// Consecutive wrong strings that count at `now`: none once a lockout has run out.
    pub fn wrong_strings(&self, now: OffsetDateTime) -> u32 {
        match self.locked_until.as_deref().and_then(parse_rfc3339) {
            Some(until) if until <= now => 0,
            _ => self.consecutive_wrong_strings,
        }
    }

    /// Whether `string` authenticated this phone before.
    pub fn is_spent(&self, string: &str) -> bool {
        self.spent_strings.iter().any(|spent| spent.matches(string))
    }

    /// Before a phone's credentials are looked at: a lockout in force refuses it (P.16-6), and so does
    /// an authentication string that is spent (Table 6-2). `string` is the configured one, for a
    /// phone authenticated by string.
    pub fn admit(&self, string: Option<&str>, now: OffsetDateTime) -> Result<(), Refusal> {
        if let Some(until) = self.locked_until(now) {
            return Err(Refusal::LockedOut { until });
        }
        if string.is_some_and(|s| self.is_spent(s)) {
            return Err(Refusal::StringSpent);
        }
        Ok(())
    }

    /// A wrong string: one more in a row; the tenth locks the phone out for [`LOCKOUT`], whose end
    /// is returned.
    pub fn wrong_string(&mut self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        self.consecutive_wrong_strings = self.wrong_strings(now) + 1;
        if self.consecutive_wrong_strings >= LOCKOUT_AFTER {
            let until = now + LOCKOUT;
            self.locked_until = Some(rfc3339(until));
            return Some(until);
        }
        self.locked_until = None;
        None
    }

    /// The phone authenticated: the count starts again, and `string`, when it authenticated by one,
    /// is spent.
    pub fn authenticated(&mut self, string: Option<&str>) {
        self.consecutive_wrong_strings = 0;
        self.locked_until = None;
        if let Some(string) = string
            && !self.is_spent(string)
        {
            self.spent_strings.push(SpentString::new(string));
        }
    }

    /// The operation completed.
    pub fn complete(&mut self, id: OperationId, now: OffsetDateTime, certificate: Option<CertificateNote>) {
        self.last_failure = None;
        self.completed.retain(|c| c.id != id);
        self.completed.push(CompletedOperation { id, at: rfc3339(now), certificate });
        let excess = self.completed.len().saturating_sub(KEPT_COMPLETED);
        self.completed.drain(..excess);
    }

    /// An attempt at the operation failed; it stays pending until its deadline.
    pub fn fail(&mut self, id: OperationId, now: OffsetDateTime, reason: String) {
        self.last_failure = Some(OperationFailure { id, at: rfc3339(now), reason });
    }

    /// The completion of `id`, if it completed.
    pub fn completion(&self, id: &OperationId) -> Option<&CompletedOperation> {
        self.completed.iter().rev().find(|c| c.id == *id)
    }

    /// Serials of the certificates CAPF issued this phone.
    pub fn issued_serials(&self) -> impl Iterator<Item = &str> {
        self.completed
            .iter()
            .filter(|c| c.id.operation == CertificateOperation::InstallUpgrade)
            .filter_map(|c| c.certificate.as_ref().map(|n| n.serial.as_str()))
    }
}

/// Where a phone's operation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperationState {
    /// No Pending Operation.
    None,
    /// To be carried out when the phone contacts CAPF.
    Pending { id: OperationId },
    /// Still to be carried out, but the last attempt failed, or cannot succeed as configured.
    Failed { id: OperationId, reason: String },
    /// Still to be carried out, but the phone is refused until `until` (P.16-6).
    LockedOut { id: OperationId, until: OffsetDateTime },
    /// Carried out: the same spec never runs it again.
    Completed { completed: CompletedOperation },
    /// Its `operationCompletesBy` went by first (Table 6-2).
    Expired { id: OperationId },
}

impl OperationState {
    /// Whether CAPF is to carry the operation out (or refuse the phone while it cannot).
    pub fn scheduled(&self) -> Option<&OperationId> {
        match self {
            OperationState::Pending { id } | OperationState::Failed { id, .. } | OperationState::LockedOut { id, .. } => Some(id),
            OperationState::None | OperationState::Completed { .. } | OperationState::Expired { .. } => None,
        }
    }

    /// One word: Pending, Failed, LockedOut, Completed or Expired.
    pub fn word(&self) -> &'static str {
        match self {
            OperationState::None => "None",
            OperationState::Pending { .. } => "Pending",
            OperationState::Failed { .. } => "Failed",
            OperationState::LockedOut { .. } => "LockedOut",
            OperationState::Completed { .. } => "Completed",
            OperationState::Expired { .. } => "Expired",
        }
    }

    /// The status's `operationStatus`: the state, the operation and what the state says of it.
    pub fn describe(&self) -> Option<String> {
        let label = |id: &OperationId| id.operation.label();
        Some(match self {
            OperationState::None => return None,
            OperationState::Pending { id } => format!("Pending: {} until {} (Table 6-2)", label(id), id.completes_by),
            OperationState::Failed { id, reason } => {
                format!("Failed: {}: {reason}; pending until {}", label(id), id.completes_by)
            }
            OperationState::LockedOut { id, until } => format!(
                "LockedOut: {} until {}: {LOCKOUT_AFTER} consecutive wrong authentication strings (P.16-6)",
                label(id),
                rfc3339(*until)
            ),
            OperationState::Completed { completed } => {
                let serial = completed.certificate.as_ref().map(|c| format!(", LSC serial {}", c.serial)).unwrap_or_default();
                format!("Completed: {} at {}{serial}", label(&completed.id), completed.at)
            }
            OperationState::Expired { id } => {
                format!("Expired: {} was to complete by {} and was not carried out (Table 6-2)", label(id), id.completes_by)
            }
        })
    }
}

/// Where `phone`'s operation stands at `now`, given its record. `string` is its configured
/// authentication string when its profile authenticates by string.
pub fn operation_state(phone: &Phone, string: Option<&str>, record: &CapfRecord, now: OffsetDateTime) -> OperationState {
    operation_state_of(OperationId::of(phone), string, record, now)
}

/// Where an operation (with its deadline; `None`: No Pending Operation) stands at `now`, given the
/// record of whoever it is scheduled for.
pub fn operation_state_of(
    scheduled: Option<(OperationId, OffsetDateTime)>,
    string: Option<&str>,
    record: &CapfRecord,
    now: OffsetDateTime,
) -> OperationState {
    let Some((id, deadline)) = scheduled else { return OperationState::None };
    if let Some(completed) = record.completion(&id) {
        return OperationState::Completed { completed: completed.clone() };
    }
    if now > deadline {
        return OperationState::Expired { id };
    }
    match record.admit(string, now) {
        Err(Refusal::LockedOut { until }) => OperationState::LockedOut { id, until },
        Err(refusal @ Refusal::StringSpent) => OperationState::Failed { id, reason: refusal.to_string() },
        Ok(()) => match &record.last_failure {
            Some(failure) if failure.id == id => OperationState::Failed { id, reason: format!("{} (at {})", failure.reason, failure.at) },
            _ => OperationState::Pending { id },
        },
    }
}

/// The record of `device`; empty when there is none yet.
pub fn load(state: &StateDir, device: &str) -> Result<CapfRecord, String> {
    let name = record_file(device);
    match state.read(&name).map_err(|e| format!("{name}: {e}"))? {
        None => Ok(CapfRecord::default()),
        Some(bytes) => serde_yaml::from_slice(&bytes).map_err(|e| format!("{name}: {e}")),
    }
}

/// Applies `change` to the record of `device` and writes it, owner-only, as one step against other
/// writers of a shared state (`change` may then run more than once, each time on the newest record).
pub fn update(state: &StateDir, device: &str, mut change: impl FnMut(&mut CapfRecord)) -> Result<(), String> {
    let name = record_file(device);
    state
        .update(&name, Sensitivity::Private, |bytes| {
            let mut record: CapfRecord = match bytes {
                None => CapfRecord::default(),
                Some(bytes) => serde_yaml::from_slice(&bytes).map_err(std::io::Error::other)?,
            };
            change(&mut record);
            serde_yaml::to_string(&record).map(String::into_bytes).map_err(std::io::Error::other)
        })
        .map_err(|e| format!("{name}: {e}"))
}

/// RFC 3339 in UTC, to the second.
pub fn rfc3339(time: OffsetDateTime) -> String {
    let time = time.to_offset(time::UtcOffset::UTC).replace_nanosecond(0).unwrap_or(time);
    time.format(&Rfc3339).unwrap_or_default()
}

fn parse_rfc3339(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phone(operation: &str, completes_by: &str) -> Phone {
        let yaml = format!(
            "apiVersion: callguard.io/v1alpha1\nkind: Phone\nmetadata: {{name: lobby}}\nspec:\n  macAddress: \"001122334455\"\n  model: \"7970\"\n  protocol: SCCP\n  securityProfileRef: p\n  capf: {{certificateOperation: {operation}, operationCompletesBy: \"{completes_by}\"}}\n"
        );
        serde_yaml::from_str(&yaml).unwrap()
    }

    fn at(text: &str) -> OffsetDateTime {
        parse_rfc3339(text).unwrap()
    }

    #[test]
    fn ten_wrong_strings_lock_for_ten_minutes_and_the_eleventh_is_refused_unread() {
        let now = at("2026-12-06T12:00:00Z");
        let mut record = CapfRecord::default();
        for n in 1..LOCKOUT_AFTER {
            assert_eq!(record.wrong_string(now), None, "try {n}");
            assert_eq!(record.admit(Some("12345678"), now), Ok(()));
        }
        let until = record.wrong_string(now).expect("the tenth locks");
        assert_eq!(until, at("2026-12-06T12:10:00Z"));
        assert_eq!(record.admit(Some("12345678"), now + Duration::minutes(9)), Err(Refusal::LockedOut { until }));
        assert!(Refusal::LockedOut { until }.to_string().contains("P.16-6"));
        // Once it ran out, the count starts again.
        let later = now + Duration::minutes(10);
        assert_eq!(record.admit(Some("12345678"), later), Ok(()));
        assert_eq!(record.wrong_strings(later), 0);
        assert_eq!(record.wrong_string(later), None);
        assert_eq!(record.consecutive_wrong_strings, 1);
        // A right string resets it.
        record.authenticated(None);
        assert_eq!(record.consecutive_wrong_strings, 0);
    }

    #[test]
    fn a_string_works_once_and_only_its_salted_hash_is_kept() {
        let mut record = CapfRecord::default();
        record.authenticated(Some("12345678"));
        assert!(record.is_spent("12345678") && !record.is_spent("12345679"));
        assert_eq!(record.admit(Some("12345678"), OffsetDateTime::now_utc()), Err(Refusal::StringSpent));
        let text = serde_yaml::to_string(&record).unwrap();
        assert!(!text.contains("12345678"), "{text}");
        let mut again = CapfRecord::default();
        again.authenticated(Some("12345678"));
        assert_ne!(again.spent_strings[0], record.spent_strings[0], "salted");
        let read: CapfRecord = serde_yaml::from_str(&text).unwrap();
        assert!(read.is_spent("12345678"));
    }

    #[test]
    fn an_operation_is_named_by_its_deadline_and_runs_once() {
        let now = at("2026-12-06T12:00:00Z");
        let lobby = phone("InstallUpgrade", "2036-06-30T17:00:00Z");
        let mut record = CapfRecord::default();
        let state = operation_state(&lobby, Some("12345678"), &record, now);
        let OperationState::Pending { id } = state.clone() else { panic!("{state:?}") };
        assert_eq!(id.completes_by, "2036-06-30T17:00:00Z");
        record.fail(id.clone(), now, "no KEY_GENERATE_RESPONSE in time".into());
        assert!(operation_state(&lobby, Some("12345678"), &record, now).describe().unwrap().starts_with("Failed: Install/Upgrade: no KEY"));
        record.authenticated(Some("12345678"));
        record.complete(id, now, None);
        let state = operation_state(&lobby, Some("12345678"), &record, now);
        assert_eq!(state.word(), "Completed");
        assert_eq!(state.scheduled(), None);
        // A new deadline is a new operation; with the same string it cannot authenticate.
        let again = phone("InstallUpgrade", "2027-07-01T00:00:00Z");
        let state = operation_state(&again, Some("12345678"), &record, now);
        assert!(matches!(&state, OperationState::Failed { reason, .. } if reason.contains("Table 6-2")), "{state:?}");
        assert_eq!(operation_state(&again, Some("87654321"), &record, now).word(), "Pending");
        // Past its deadline it expires; a delete is another operation.
        assert_eq!(operation_state(&again, Some("87654321"), &record, at("2027-07-02T00:00:00Z")).word(), "Expired");
        assert_eq!(operation_state(&phone("Delete", "2036-06-30T17:00:00Z"), None, &record, now).word(), "Pending");
        assert_eq!(operation_state(&phone("NoPendingOperation", "2036-06-30T17:00:00Z"), None, &record, now), OperationState::None);
    }
}
