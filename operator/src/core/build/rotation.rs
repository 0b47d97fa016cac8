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
//! The CA rotates with overlap: `callguard.io/rotate-ca` makes a new CA, which issues from then
//! on, and keeps the previous one trusted (for the phones' LSCs, by SIP, CAPF and EST) until no
//! certificate it issued remains in use: the function certificates are reissued at once, the ITL
//! signer through the two steps above, the LSCs when CAPF gives each phone a new one.
//!
//! The decisions are pure; `identity` and the build act on them.

use std::fmt;

use time::OffsetDateTime;

use super::identity::FunctionCertificate;
use super::identity_record::sha256_hex;
use crate::api::IdentityRecord;
use crate::core::trust::TrustList;

/// The annotation that asks for an ITL signer rotation: any value not acted on before starts one.
pub const ROTATE_ITL_SIGNER: &str = "callguard.io/rotate-itl-signer";
/// The annotation that asks for a CA rotation, the same way.
pub const ROTATE_CA: &str = "callguard.io/rotate-ca";

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

    /// When a build may take it further: at the end of the grace period, or at once when this build
    /// announced or recorded it.
    pub fn next_step(&self, now: OffsetDateTime) -> OffsetDateTime {
        match self.waiting {
            Waiting::GracePeriod { until } => until,
            Waiting::Announcing | Waiting::Recording => now,
        }
    }
}

/// The request the record keeps as acted on: this build's annotation, else the `last` one.
pub fn handled_request(annotation: Option<&str>, last: Option<&str>) -> Option<String> {
    annotation.or(last).map(str::to_owned)
}

/// Whether the annotation asks for a rotation: a value other than the `last` one acted on.
pub fn requested(annotation: Option<&str>, last: Option<&str>) -> bool {
    annotation.is_some_and(|value| last != Some(value))
}

/// What the CA a rotation replaced issued that is still in use: function certificates
/// (`node.role`) and the unexpired certificates of `devices` (by device name or instance ID). The
/// previous CA stays trusted until this is empty.
pub fn left_by_previous_ca(
    previous_ca: &[u8],
    functions: &[FunctionCertificate],
    devices: &[(String, Vec<u8>)],
    now: OffsetDateTime,
) -> Vec<String> {
    use crate::core::pki::inspect::{CertificateFacts, is_issued_by};
    let functions = functions
        .iter()
        .filter(|f| is_issued_by(&f.certificate_der, previous_ca))
        .map(|f| format!("{}.{}", f.node, super::identity::role_file_name(f.role)));
    let devices = devices
        .iter()
        .filter(|(_, der)| is_issued_by(der, previous_ca) && CertificateFacts::from_der(der).is_ok_and(|facts| facts.not_after > now))
        .map(|(device, _)| device.clone());
    functions.chain(devices).collect()
}

/// The cluster status's line about a CA rotation waiting for `left` (see [`left_by_previous_ca`]).
pub fn describe_ca_overlap(left: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut named = left.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if left.len() > SHOWN {
        named.push_str(&format!(" and {} more", left.len() - SHOWN));
    }
    format!(
        "CA rotation, step 1 of 2: the previous CA stays trusted while {} certificate(s) it issued remain ({named}); phones get an LSC of the new CA through CAPF (certificateOperation: Upgrade, P.6-1)",
        left.len()
    )
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
        let last = Some("2026-12");
        assert!(requested(Some("2026-12"), None));
        assert!(!requested(Some("2026-12"), last));
        assert!(requested(Some("2027-01"), last));
        assert!(!requested(None, last));
        assert_eq!(handled_request(None, last).as_deref(), Some("2026-12"));
        assert_eq!(handled_request(Some("2027-01"), last).as_deref(), Some("2027-01"));
    }
}
