//! The ITL signer's rotation in the two publications that a phone holding the ITL accepts (P.3-18,
//! docs/wire-formats.md §3.9): a phone accepts a new ITL only when a SAST record of the one it
//! holds signed it, so the incoming signer is first listed beside the current one, which still
//! signs; only once every phone had time to fetch that file does the incoming signer sign.
//!
//! Step 1 starts when the signer falls due (renewal, a new hostname or address, a new CA) or when
//! the cluster's `callguard.io/rotate-itl-signer` annotation takes a value not acted on before.
//! Step 2 waits for three facts, none of which a restart can lose: the published ITL lists the
//! incoming signer as SAST, the identity record names it (so that a crash halfway through step 2
//! is not taken for a replaced signer), and `spec.rotation.gracePeriodMinutes` has passed since
//! that ITL's timestamp, the time its records last changed.
//!
//! The decision is pure; `identity` acts on it.

use std::fmt;

use time::OffsetDateTime;

use super::identity::FunctionCertificate;
use super::identity_record::sha256_hex;
use crate::api::IdentityRecord;
use crate::core::trust::TrustList;

/// The annotation that asks for an ITL signer rotation: any value not acted on before starts one.
pub const ROTATE_ITL_SIGNER: &str = "callguard.io/rotate-itl-signer";

/// Why the incoming signer does not sign yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// The published ITL does not list it yet: this build publishes the ITL that does.
    Announcing,
    /// The identity record does not name it yet: it is written at the end of this build.
    Recording,
    /// Phones are given until then to fetch the ITL that announces it.
    GracePeriod { until: OffsetDateTime },
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Waiting::Announcing => f.write_str("the ITL that announces it is published now"),
            Waiting::Recording => f.write_str("the identity record names it once this build's status is written"),
            Waiting::GracePeriod { until } => write!(
                f,
                "it signs from {} on, once phones had spec.rotation.gracePeriodMinutes to fetch the ITL that announces it",
                super::capf::rfc3339(*until)
            ),
        }
    }
}

/// Whether the incoming signer (`incoming_der`) may sign the next ITL.
pub fn incoming_may_sign(
    published_itl: Option<&TrustList>,
    incoming_der: &[u8],
    record: Option<&IdentityRecord>,
    grace: time::Duration,
    now: OffsetDateTime,
) -> Result<(), Waiting> {
    let announcing =
        published_itl.filter(|itl| itl.sast_records().any(|r| r.certificate_der == incoming_der)).ok_or(Waiting::Announcing)?;
    if record.and_then(|r| r.incoming_itl_signer.as_deref()) != Some(sha256_hex(incoming_der).as_str()) {
        return Err(Waiting::Recording);
    }
    let until = OffsetDateTime::from_unix_timestamp(i64::from(announcing.header.timestamp)).unwrap_or(OffsetDateTime::UNIX_EPOCH) + grace;
    if now < until { Err(Waiting::GracePeriod { until }) } else { Ok(()) }
}

/// A rotation at its first step: the incoming signer is listed, the current one signs.
#[derive(Debug, Clone)]
pub struct SignerRotation {
    pub incoming: FunctionCertificate,
    pub waiting: Waiting,
}

impl SignerRotation {
    /// The cluster status's line about it.
    pub fn describe(&self) -> String {
        let facts =
            crate::core::pki::inspect::CertificateFacts::from_der(&self.incoming.certificate_der).map(|f| f.subject).unwrap_or_default();
        format!(
            "ITL signer rotation, step 1 of 2: the ITL lists the incoming signer {facts} (SHA-256 {}) beside the current one, which still signs; {} (P.3-18)",
            sha256_hex(&self.incoming.certificate_der),
            self.waiting
        )
    }
}

/// The request the record keeps as acted on: this build's annotation, else the one before.
pub fn handled_request(annotation: Option<&str>, record: Option<&IdentityRecord>) -> Option<String> {
    annotation.map(str::to_owned).or_else(|| record.and_then(|r| r.itl_signer_rotation_request.clone()))
}

/// Whether the annotation asks for a rotation not acted on before.
pub fn requested(annotation: Option<&str>, record: Option<&IdentityRecord>) -> bool {
    annotation.is_some_and(|value| record.and_then(|r| r.itl_signer_rotation_request.as_deref()) != Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::trust::{HashAlgorithm, Role, Signer, TrustFileBuilder, TrustListKind};

    fn certificate(name: &str) -> (Vec<u8>, rsa::RsaPrivateKey) {
        let ca = crate::core::pki::ca::ClusterCa::generate(&crate::core::pki::ca::CaSettings::new(name, "test"), OffsetDateTime::now_utc())
            .unwrap();
        (ca.certificate_der().to_vec(), ca.key().clone())
    }

    #[test]
    fn the_incoming_signer_signs_only_once_announced_recorded_and_after_the_grace_period() {
        let (current, key) = certificate("current");
        let (incoming, _) = certificate("incoming");
        let signer = Signer::new(current.clone(), key, false).unwrap();
        let announced_at = 1_800_000_000u32;
        let announcing = TrustFileBuilder::new(TrustListKind::Itl, &signer, announced_at)
            .hash(HashAlgorithm::Sha1)
            .record(&current, Role::Sast)
            .record(&incoming, Role::Sast)
            .build()
            .unwrap();
        let announcing = TrustList::parse(&announcing.bytes, crate::core::trust::Mode::Strict).unwrap();
        let record = IdentityRecord { incoming_itl_signer: Some(sha256_hex(&incoming)), ..Default::default() };
        let at = |seconds: i64| OffsetDateTime::from_unix_timestamp(i64::from(announced_at) + seconds).unwrap();
        let grace = time::Duration::hours(1);

        assert_eq!(incoming_may_sign(None, &incoming, Some(&record), grace, at(7200)), Err(Waiting::Announcing));
        assert_eq!(incoming_may_sign(Some(&announcing), &current, Some(&record), grace, at(7200)), Err(Waiting::Recording));
        assert_eq!(incoming_may_sign(Some(&announcing), &incoming, None, grace, at(7200)), Err(Waiting::Recording));
        assert_eq!(
            incoming_may_sign(Some(&announcing), &incoming, Some(&record), grace, at(3599)),
            Err(Waiting::GracePeriod { until: at(3600) })
        );
        assert_eq!(incoming_may_sign(Some(&announcing), &incoming, Some(&record), grace, at(3600)), Ok(()));
    }

    #[test]
    fn a_request_is_acted_on_once_per_value() {
        let record = IdentityRecord { itl_signer_rotation_request: Some("2026-12".into()), ..Default::default() };
        assert!(requested(Some("2026-12"), None));
        assert!(!requested(Some("2026-12"), Some(&record)));
        assert!(requested(Some("2027-01"), Some(&record)));
        assert!(!requested(None, Some(&record)));
        assert_eq!(handled_request(None, Some(&record)).as_deref(), Some("2026-12"));
        assert_eq!(handled_request(Some("2027-01"), Some(&record)).as_deref(), Some("2027-01"));
    }
}
