//! When to renew, reissue, and rotate the CA: small pure functions over [`CertificateFacts`], in the manner of
//! cert-manager (renew before the end, reissue when the desired certificate changed).

use std::collections::BTreeSet;

use time::{Duration, OffsetDateTime};

use super::inspect::{CertificateFacts, SubjectAltName};
use super::serial::Serial;

/// Renew once less than `remaining_numerator / remaining_denominator` of the lifetime is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalPolicy {
    remaining_numerator: u32,
    remaining_denominator: u32,
}

impl RenewalPolicy {
    /// LSCs: CUCM renews after 2/3 of the lifetime, i.e. with 1/3 left (docs/wire-formats.md §7.8).
    pub const LSC: RenewalPolicy = RenewalPolicy { remaining_numerator: 1, remaining_denominator: 3 };

    /// Renew when less than `numerator / denominator` of the lifetime remains. `None` unless 0 < n/d < 1.
    pub fn remaining_fraction(numerator: u32, denominator: u32) -> Option<RenewalPolicy> {
        (numerator > 0 && numerator < denominator)
            .then_some(RenewalPolicy { remaining_numerator: numerator, remaining_denominator: denominator })
    }

    /// The instant from which the certificate is due: notAfter − lifetime × fraction. Exact to the second.
    pub fn renewal_time(&self, not_before: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
        let lifetime = (not_after - not_before).whole_seconds().max(0) as i128;
        let renew_before = lifetime * i128::from(self.remaining_numerator) / i128::from(self.remaining_denominator);
        not_after - Duration::seconds(renew_before as i64)
    }

    /// Whether the certificate is due for renewal at `now` (also true once it has expired).
    pub fn is_due(&self, facts: &CertificateFacts, now: OffsetDateTime) -> bool {
        now >= self.renewal_time(facts.not_before, facts.not_after)
    }
}

/// What the certificate should say, from the spec of the object it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredCertificate {
    pub common_name: String,
    pub subject_alt_names: BTreeSet<SubjectAltName>,
    /// RSA modulus bits or curve size.
    pub key_bits: u32,
}

/// Why a certificate must be issued again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReissueReason {
    CommonNameChanged {
        current: Option<String>,
        desired: String,
    },
    SubjectAltNamesChanged {
        missing: Vec<SubjectAltName>,
        unexpected: Vec<SubjectAltName>,
    },
    KeySizeChanged {
        current: u32,
        desired: u32,
    },
    /// Less than the policy's fraction of the lifetime is left.
    RenewalDue {
        since: OffsetDateTime,
    },
}

impl std::fmt::Display for ReissueReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReissueReason::CommonNameChanged { current, desired } => {
                write!(f, "subject CN is {:?}, wanted \"{desired}\"", current.as_deref().unwrap_or(""))
            }
            ReissueReason::SubjectAltNamesChanged { missing, unexpected } => {
                write!(f, "subjectAltName differs: missing {missing:?}, unexpected {unexpected:?}")
            }
            ReissueReason::KeySizeChanged { current, desired } => write!(f, "key has {current} bits, wanted {desired}"),
            ReissueReason::RenewalDue { since } => write!(f, "renewal due since {since}"),
        }
    }
}

/// Differences between the current certificate and the desired one (subject CN, SANs as a set, key size).
pub fn spec_differences(current: &CertificateFacts, desired: &DesiredCertificate) -> Vec<ReissueReason> {
    let mut reasons = Vec::new();
    if current.subject_common_name.as_deref() != Some(desired.common_name.as_str()) {
        reasons
            .push(ReissueReason::CommonNameChanged { current: current.subject_common_name.clone(), desired: desired.common_name.clone() });
    }
    let present: BTreeSet<SubjectAltName> = current.subject_alt_names.iter().cloned().collect();
    if present != desired.subject_alt_names {
        reasons.push(ReissueReason::SubjectAltNamesChanged {
            missing: desired.subject_alt_names.difference(&present).cloned().collect(),
            unexpected: present.difference(&desired.subject_alt_names).cloned().collect(),
        });
    }
    if current.public_key.bits() != desired.key_bits {
        reasons.push(ReissueReason::KeySizeChanged { current: current.public_key.bits(), desired: desired.key_bits });
    }
    reasons
}

/// Everything that calls for a new certificate now: spec differences plus renewal. Empty means keep it.
pub fn reissue_reasons(
    current: &CertificateFacts,
    desired: &DesiredCertificate,
    policy: RenewalPolicy,
    now: OffsetDateTime,
) -> Vec<ReissueReason> {
    let mut reasons = spec_differences(current, desired);
    if policy.is_due(current, now) {
        reasons.push(ReissueReason::RenewalDue { since: policy.renewal_time(current.not_before, current.not_after) });
    }
    reasons
}

/// One of the two CAs of a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RotationCa {
    Old,
    New,
}

/// What to do during a CA rotation at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationPlan {
    /// The CA that signs new certificates.
    pub issuing: RotationCa,
    /// The CAs to publish as trusted. Both during the overlap; the old one leaves once nothing it issued is in use.
    pub trusted: Vec<RotationCa>,
    /// Serials of the old CA's leaves still in use and unexpired, once the new CA issues: reissue them from it.
    pub reissue: Vec<Serial>,
    /// True once the old CA can be deleted: nothing it issued is in use and unexpired, or it has expired itself.
    pub old_ca_retired: bool,
}

/// The rotation state at `now`. `old_ca_leaves` are the certificates the old CA issued that are still deployed
/// (the caller knows them, e.g. with [`super::inspect::is_issued_by`]; a leaf already replaced is not listed).
///
/// The new CA issues as soon as it is valid; until then the old one does. Both are trusted while any listed leaf
/// of the old CA is unexpired and the old CA itself is still valid, and the new CA is trusted from the start, so
/// peers learn it before they meet a certificate it signed.
pub fn rotation_plan(
    old_ca: &CertificateFacts,
    new_ca: &CertificateFacts,
    old_ca_leaves: &[CertificateFacts],
    now: OffsetDateTime,
) -> RotationPlan {
    let new_ca_usable = new_ca.is_valid_at(now);
    let issuing = if new_ca_usable || !old_ca.is_valid_at(now) { RotationCa::New } else { RotationCa::Old };
    let old_ca_expired = now > old_ca.not_after;
    let live_old_leaves: Vec<&CertificateFacts> = old_ca_leaves.iter().filter(|leaf| now <= leaf.not_after).collect();
    let old_ca_retired = old_ca_expired || (issuing == RotationCa::New && live_old_leaves.is_empty());
    let trusted = if old_ca_retired { vec![RotationCa::New] } else { vec![RotationCa::Old, RotationCa::New] };
    let reissue = if issuing == RotationCa::New { live_old_leaves.iter().map(|leaf| leaf.serial.clone()).collect() } else { Vec::new() };
    RotationPlan { issuing, trusted, reissue, old_ca_retired }
}

/// Whether to start a CA rotation: once the CA's remaining life no longer covers a leaf of `longest_leaf_validity`
/// issued now plus `overlap` for the reissue of the old leaves, a new CA is needed.
pub fn ca_rotation_due(ca: &CertificateFacts, longest_leaf_validity: Duration, overlap: Duration, now: OffsetDateTime) -> bool {
    now + longest_leaf_validity + overlap > ca.not_after
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::pki::inspect::PublicKeyKind;

    fn t(days: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap() + Duration::days(days)
    }

    fn facts(cn: &str, not_before: OffsetDateTime, not_after: OffsetDateTime, serial: u8) -> CertificateFacts {
        CertificateFacts {
            subject_common_name: Some(cn.to_owned()),
            subject: format!("CN={cn}"),
            issuer: "CN=lab CA".into(),
            subject_alt_names: vec![SubjectAltName::Dns(cn.to_owned())],
            public_key: PublicKeyKind::Rsa { bits: 2048 },
            not_before,
            not_after,
            serial: Serial::from_magnitude(&[serial]).unwrap(),
            is_ca: false,
        }
    }

    fn desired(cn: &str, bits: u32) -> DesiredCertificate {
        DesiredCertificate {
            common_name: cn.to_owned(),
            subject_alt_names: BTreeSet::from([SubjectAltName::Dns(cn.to_owned())]),
            key_bits: bits,
        }
    }

    #[test]
    fn lsc_renews_after_two_thirds_of_the_lifetime() {
        // 300-day LSC: due from day 200 (docs/wire-formats.md §7.8).
        let lsc = facts("SEP001122334455", t(0), t(300), 1);
        assert_eq!(RenewalPolicy::LSC.renewal_time(lsc.not_before, lsc.not_after), t(200));
        assert!(!RenewalPolicy::LSC.is_due(&lsc, t(199)));
        assert!(!RenewalPolicy::LSC.is_due(&lsc, t(200) - Duration::seconds(1)));
        assert!(RenewalPolicy::LSC.is_due(&lsc, t(200)));
        assert!(RenewalPolicy::LSC.is_due(&lsc, t(301)), "expired is due");
    }

    #[test]
    fn other_fractions_and_invalid_fractions() {
        let quarter = RenewalPolicy::remaining_fraction(1, 4).unwrap();
        assert_eq!(quarter.renewal_time(t(0), t(400)), t(300));
        assert_eq!(RenewalPolicy::remaining_fraction(0, 3), None);
        assert_eq!(RenewalPolicy::remaining_fraction(3, 3), None);
        assert_eq!(RenewalPolicy::remaining_fraction(1, 0), None);
    }

    #[test]
    fn an_unchanged_certificate_is_kept() {
        let current = facts("cucm1", t(0), t(300), 1);
        assert!(reissue_reasons(&current, &desired("cucm1", 2048), RenewalPolicy::LSC, t(10)).is_empty());
    }

    #[test]
    fn a_changed_name_san_or_key_size_reissues() {
        let current = facts("cucm1", t(0), t(300), 1);
        assert_eq!(
            spec_differences(&current, &desired("cucm2", 2048)),
            vec![
                ReissueReason::CommonNameChanged { current: Some("cucm1".into()), desired: "cucm2".into() },
                ReissueReason::SubjectAltNamesChanged {
                    missing: vec![SubjectAltName::Dns("cucm2".into())],
                    unexpected: vec![SubjectAltName::Dns("cucm1".into())]
                },
            ]
        );
        assert_eq!(
            spec_differences(&current, &desired("cucm1", 1024)),
            vec![ReissueReason::KeySizeChanged { current: 2048, desired: 1024 }]
        );
        let mut with_ip = desired("cucm1", 2048);
        with_ip.subject_alt_names.insert(SubjectAltName::Ip("192.0.2.1".parse().unwrap()));
        assert!(
            matches!(spec_differences(&current, &with_ip).as_slice(), [ReissueReason::SubjectAltNamesChanged { unexpected, .. }] if unexpected.is_empty())
        );
    }

    #[test]
    fn san_order_does_not_matter() {
        let mut current = facts("cucm1", t(0), t(300), 1);
        current.subject_alt_names = vec![SubjectAltName::Ip("192.0.2.1".parse().unwrap()), SubjectAltName::Dns("cucm1".into())];
        let mut want = desired("cucm1", 2048);
        want.subject_alt_names.insert(SubjectAltName::Ip("192.0.2.1".parse().unwrap()));
        assert!(spec_differences(&current, &want).is_empty());
    }

    #[test]
    fn renewal_is_a_reissue_reason() {
        let current = facts("cucm1", t(0), t(300), 1);
        assert_eq!(
            reissue_reasons(&current, &desired("cucm1", 2048), RenewalPolicy::LSC, t(250)),
            vec![ReissueReason::RenewalDue { since: t(200) }]
        );
    }

    #[test]
    fn rotation_overlaps_until_the_old_leaves_are_gone() {
        let old_ca = facts("lab CA", t(0), t(3650), 10);
        let new_ca = facts("lab CA", t(3000), t(6650), 11);
        let leaves = vec![facts("SEP1", t(2900), t(3265), 1), facts("SEP2", t(2500), t(2865), 2)];

        // Before the new CA is valid: the old one issues; both are trusted already.
        let before = rotation_plan(&old_ca, &new_ca, &leaves, t(2999));
        assert_eq!(before.issuing, RotationCa::Old);
        assert_eq!(before.trusted, vec![RotationCa::Old, RotationCa::New]);
        assert!(before.reissue.is_empty());
        assert!(!before.old_ca_retired);

        // The new CA is valid: it issues, both trusted, the unexpired old leaf (SEP1) is to be reissued; SEP2 has expired.
        let during = rotation_plan(&old_ca, &new_ca, &leaves, t(3001));
        assert_eq!(during.issuing, RotationCa::New);
        assert_eq!(during.trusted, vec![RotationCa::Old, RotationCa::New]);
        assert_eq!(during.reissue, vec![Serial::from_magnitude(&[1]).unwrap()]);
        assert!(!during.old_ca_retired);

        // Every old leaf replaced (the caller no longer lists it): the old CA leaves the trust set.
        let replaced = rotation_plan(&old_ca, &new_ca, &[], t(3001));
        assert_eq!(replaced.trusted, vec![RotationCa::New]);
        assert!(replaced.old_ca_retired);

        // Or every old leaf expired.
        let expired = rotation_plan(&old_ca, &new_ca, &leaves, t(3266));
        assert_eq!(expired.trusted, vec![RotationCa::New]);
        assert!(expired.reissue.is_empty());
    }

    #[test]
    fn an_expired_old_ca_is_never_trusted() {
        let old_ca = facts("lab CA", t(0), t(100), 10);
        let new_ca = facts("lab CA", t(50), t(500), 11);
        let leaf = vec![facts("SEP1", t(90), t(400), 1)];
        let plan = rotation_plan(&old_ca, &new_ca, &leaf, t(101));
        assert_eq!(plan.trusted, vec![RotationCa::New]);
        assert_eq!(plan.issuing, RotationCa::New);
        assert!(plan.old_ca_retired);
        // The leaf no longer chains once its CA has expired: it must be reissued from the new CA.
        assert_eq!(plan.reissue, vec![Serial::from_magnitude(&[1]).unwrap()]);
    }

    #[test]
    fn rotation_starts_when_the_ca_cannot_cover_a_full_leaf_lifetime() {
        let ca = facts("lab CA", t(0), t(3650), 10);
        let five_years = Duration::days(1825);
        let overlap = Duration::days(30);
        assert!(!ca_rotation_due(&ca, five_years, overlap, t(1794)));
        assert!(ca_rotation_due(&ca, five_years, overlap, t(1796)));
    }
}
