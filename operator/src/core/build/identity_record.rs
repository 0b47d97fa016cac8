//! The cluster's identity is never made anew without an explicit action.
//!
//! Phones that hold the cluster's ITL accept new files only from a signer that ITL lists (P.3-18): a
//! new CA, a new ITL signer, or a CTL signed by a token the phones never trusted makes every such
//! phone refuse the cluster until its ITL is deleted by hand. So once an identity exists, the build
//! remembers what it consists of (the [`IdentityRecord`], kept apart from the state it describes: in
//! the cluster's status, or `identity.yaml` of the state directory), and when a piece of it is
//! missing or replaced, it stops with what was lost and how to restore it. A new identity takes the
//! explicit action of naming the lost one (`callguard.io/new-identity: <id>`, `--new-identity <id>`).
//!
//! Pure: the caller reads the state and acts on the verdict.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::api::IdentityRecord;

/// The state file that holds the record.
pub const RECORD_FILE: &str = "identity.yaml";

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The short name of an identity: the first 16 hex digits of the CA certificate's SHA-256.
pub fn identity_id(ca_fingerprint: &str) -> String {
    ca_fingerprint.chars().take(16).collect()
}

/// One piece of an identity, as the state holds it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    Missing,
    /// Present; the bytes are what its fingerprint is taken of (the certificate DER, or any file).
    Present(&'a [u8]),
}

impl<'a> Piece<'a> {
    pub fn of(bytes: Option<&'a [u8]>) -> Self {
        bytes.map_or(Piece::Missing, Piece::Present)
    }

    fn is_present(self) -> bool {
        matches!(self, Piece::Present(_))
    }

    fn fingerprint(self) -> Option<String> {
        match self {
            Piece::Missing => None,
            Piece::Present(bytes) => Some(sha256_hex(bytes)),
        }
    }
}

/// What the state holds of the identity now. `*_file` name where each piece lives, for messages.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    pub ca_certificate: Piece<'a>,
    pub ca_key: Piece<'a>,
    /// The CA a rotation replaced, trusted beside the current one until its leaves are gone.
    pub previous_ca: Piece<'a>,
    /// The ITL signer's certificate (DER) and key, when the cluster has a TFTP node.
    pub signer_certificate: Piece<'a>,
    pub signer_key: Piece<'a>,
    pub signer_files: (String, String),
    pub published_itl: Piece<'a>,
    pub published_ctl: Piece<'a>,
}

/// Names of the state files, for messages (the operator maps them to its Secrets and ConfigMap).
pub mod files {
    pub const CA_CERTIFICATE: &str = "ca/ca.crt";
    pub const CA_KEY: &str = "ca/ca.key";
    pub const PREVIOUS_CA: &str = "ca/previous.crt";
    pub const PUBLISHED_ITL: &str = "published/ITLFile.tlv";
    pub const PUBLISHED_CTL: &str = "published/CTLFile.tlv";
}

/// A piece of the identity that is gone or not what it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    /// The state file.
    pub file: String,
    pub what: &'static str,
    /// Replaced by something else rather than missing.
    pub replaced: bool,
}

/// Why the build stopped instead of issuing a new identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityLost {
    /// The identity's short name, to be given back to replace it.
    pub id: String,
    pub losses: Vec<Loss>,
}

impl IdentityLost {
    /// The message with each loss named by `place` (a state file, or a Kubernetes object).
    pub fn describe(&self, place: impl Fn(&str) -> String) -> String {
        let losses: Vec<String> = self
            .losses
            .iter()
            .map(|loss| {
                format!("{} ({}) is {}", loss.what, place(&loss.file), if loss.replaced { "not the one phones trust" } else { "missing" })
            })
            .collect();
        format!(
            "the cluster's identity {} is incomplete: {}. Nothing was issued in its place. Restore what is missing from a backup; \
             or, to start a new identity, which makes every phone holding the current ITL refuse the cluster until its ITL is \
             deleted by hand (P.3-18), name this identity explicitly: annotation callguard.io/new-identity={} on the \
             CallControlCluster, or --new-identity {} for callguard local and build",
            self.id,
            losses.join("; "),
            self.id,
            self.id
        )
    }
}

impl fmt::Display for IdentityLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(|file| file.to_owned()))
    }
}

impl IdentityRecord {
    /// The signer the record names, or the incoming one it announced: a rotation's second step
    /// that completed before its record was written is not a loss.
    fn signer_is_known(&self, fingerprint: Option<&str>) -> bool {
        fingerprint.is_some_and(|f| f == self.itl_signer || self.incoming_itl_signer.as_deref() == Some(f))
    }

    /// The CA the record names, or one that replaced it in a rotation whose record was not yet
    /// written: the state then keeps the recorded CA as the previous one.
    fn ca_is_known(&self, observed: &Observed<'_>) -> bool {
        observed.ca_certificate.fingerprint().as_deref() == Some(self.ca.as_str())
            || observed.previous_ca.fingerprint().as_deref() == Some(self.ca.as_str())
    }
}

/// What the build may do with the identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing of an identity exists: issue the first one.
    Genesis,
    /// The identity is whole (or, with no record yet, its CA is): carry on with it.
    Continue,
    /// Pieces are lost and the administrator named this identity: set it aside and issue a new one.
    Replace { previous: String },
}

/// Decides from the record and the state. `new_identity` is the explicit action, if any.
pub fn verdict(record: Option<&IdentityRecord>, observed: &Observed<'_>, new_identity: Option<&str>) -> Result<Verdict, IdentityLost> {
    let (ca_file, key_file) = (files::CA_CERTIFICATE.to_owned(), files::CA_KEY.to_owned());
    let mut losses = Vec::new();
    let mut lose = |file: &str, what: &'static str, replaced: bool| losses.push(Loss { file: file.to_owned(), what, replaced });
    let id = match record {
        Some(record) => {
            // A replaced CA or signer that the administrator asked for is a replacement that
            // completed before its record was written: not a loss.
            let replacement_done = new_identity == Some(record.id.as_str());
            if !observed.ca_certificate.is_present() {
                lose(&ca_file, "the cluster CA certificate", false);
            } else if !record.ca_is_known(observed) && !replacement_done {
                lose(&ca_file, "the cluster CA certificate", true);
            }
            if !observed.ca_key.is_present() {
                lose(&key_file, "the cluster CA key", false);
            }
            let (signer_certificate, signer_key) = &observed.signer_files;
            if !observed.signer_certificate.is_present() {
                lose(signer_certificate, "the ITL signer's certificate", false);
            } else if !record.signer_is_known(observed.signer_certificate.fingerprint().as_deref()) && !replacement_done {
                lose(signer_certificate, "the ITL signer's certificate", true);
            }
            if !observed.signer_key.is_present() {
                lose(signer_key, "the ITL signer's key", false);
            }
            if !observed.published_itl.is_present() {
                lose(files::PUBLISHED_ITL, "the published ITL", false);
            }
            if record.ctl_published && !observed.published_ctl.is_present() {
                lose(files::PUBLISHED_CTL, "the published CTL", false);
            }
            record.id.clone()
        }
        None => {
            let anything = [
                observed.ca_certificate,
                observed.ca_key,
                observed.signer_certificate,
                observed.signer_key,
                observed.published_itl,
                observed.published_ctl,
            ]
            .iter()
            .any(|piece| piece.is_present());
            if !anything {
                return Ok(Verdict::Genesis);
            }
            // State from before records existed, or whose record was never written: the CA, whole,
            // carries the identity on; anything less is a loss.
            if observed.ca_certificate.is_present() && observed.ca_key.is_present() {
                return Ok(Verdict::Continue);
            }
            if !observed.ca_certificate.is_present() {
                lose(&ca_file, "the cluster CA certificate", false);
            }
            if !observed.ca_key.is_present() {
                lose(&key_file, "the cluster CA key", false);
            }
            let remaining = [observed.ca_certificate, observed.published_itl, observed.signer_certificate, observed.published_ctl];
            remaining.iter().find_map(|piece| piece.fingerprint()).map(|f| identity_id(&f)).unwrap_or_default()
        }
    };
    if losses.is_empty() {
        return Ok(Verdict::Continue);
    }
    if new_identity == Some(id.as_str()) {
        return Ok(Verdict::Replace { previous: id });
    }
    Err(IdentityLost { id, losses })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &[u8] = b"CA certificate";
    const SIGNER: &[u8] = b"signer certificate";

    fn whole() -> Observed<'static> {
        Observed {
            ca_certificate: Piece::Present(CA),
            ca_key: Piece::Present(b"key"),
            previous_ca: Piece::Missing,
            signer_certificate: Piece::Present(SIGNER),
            signer_key: Piece::Present(b"key"),
            signer_files: ("certs/cm1.tftp.crt".into(), "certs/cm1.tftp.key".into()),
            published_itl: Piece::Present(b"ITL"),
            published_ctl: Piece::Present(b"CTL"),
        }
    }

    /// Nothing of an identity.
    fn nothing() -> Observed<'static> {
        Observed {
            ca_certificate: Piece::Missing,
            ca_key: Piece::Missing,
            previous_ca: Piece::Missing,
            signer_certificate: Piece::Missing,
            signer_key: Piece::Missing,
            published_itl: Piece::Missing,
            published_ctl: Piece::Missing,
            ..whole()
        }
    }

    fn record() -> IdentityRecord {
        let ca = sha256_hex(CA);
        IdentityRecord { id: identity_id(&ca), ca, itl_signer: sha256_hex(SIGNER), ctl_published: true, ..Default::default() }
    }

    #[test]
    fn nothing_at_all_is_genesis_and_a_whole_identity_continues() {
        assert_eq!(verdict(None, &nothing(), None), Ok(Verdict::Genesis));
        assert_eq!(verdict(Some(&record()), &whole(), None), Ok(Verdict::Continue));
        assert_eq!(verdict(None, &whole(), None), Ok(Verdict::Continue), "state from before the record: adopted");
    }

    #[test]
    fn a_certificate_without_its_key_or_a_key_without_its_certificate_stops() {
        let no_certificate = Observed { ca_certificate: Piece::Missing, ..whole() };
        let lost = verdict(None, &no_certificate, None).unwrap_err();
        assert_eq!(lost.losses, [Loss { file: files::CA_CERTIFICATE.into(), what: "the cluster CA certificate", replaced: false }]);
        assert_eq!(lost.id, identity_id(&sha256_hex(b"ITL")), "named by what is left");
        let lost = verdict(Some(&record()), &Observed { ca_key: Piece::Missing, ..whole() }, None).unwrap_err();
        assert_eq!(lost.losses[0].file, files::CA_KEY);
    }

    #[test]
    fn once_recorded_every_piece_must_stay() {
        let lost = verdict(Some(&record()), &nothing(), None).unwrap_err();
        assert_eq!(lost.losses.len(), 6, "{lost}");
        let lost = verdict(Some(&record()), &Observed { published_ctl: Piece::Missing, ..whole() }, None).unwrap_err();
        assert_eq!(lost.losses[0].what, "the published CTL");
        let no_ctl_yet = IdentityRecord { ctl_published: false, ..record() };
        assert_eq!(verdict(Some(&no_ctl_yet), &Observed { published_ctl: Piece::Missing, ..whole() }, None), Ok(Verdict::Continue));
        let replaced = Observed { ca_certificate: Piece::Present(b"another CA"), ..whole() };
        assert!(verdict(Some(&record()), &replaced, None).unwrap_err().losses[0].replaced);
    }

    #[test]
    fn only_the_lost_identity_named_explicitly_is_replaced() {
        let gone = Observed { ca_certificate: Piece::Missing, ..whole() };
        let id = record().id;
        assert!(verdict(Some(&record()), &gone, Some("0123456789abcdef")).is_err(), "another name changes nothing");
        assert_eq!(verdict(Some(&record()), &gone, Some(&id)), Ok(Verdict::Replace { previous: id.clone() }));
        // A replacement whose new record was not yet written carries on.
        let new_ca = Observed { ca_certificate: Piece::Present(b"new CA"), signer_certificate: Piece::Present(b"new signer"), ..whole() };
        assert_eq!(verdict(Some(&record()), &new_ca, Some(&id)), Ok(Verdict::Continue));
    }

    #[test]
    fn the_announced_signer_may_take_over_and_no_other() {
        let rotating = IdentityRecord { incoming_itl_signer: Some(sha256_hex(b"incoming signer")), ..record() };
        let took_over = Observed { signer_certificate: Piece::Present(b"incoming signer"), ..whole() };
        assert_eq!(verdict(Some(&rotating), &took_over, None), Ok(Verdict::Continue), "step 2 done, its record not yet written");
        assert_eq!(verdict(Some(&rotating), &whole(), None), Ok(Verdict::Continue), "step 1: the current signer still signs");
        let stranger = Observed { signer_certificate: Piece::Present(b"another signer"), ..whole() };
        assert!(verdict(Some(&rotating), &stranger, None).unwrap_err().losses[0].replaced);
        assert!(verdict(Some(&record()), &took_over, None).is_err(), "never announced: a replacement");
    }

    #[test]
    fn a_rotated_ca_continues_only_when_it_replaced_the_recorded_one() {
        let rotated = Observed { ca_certificate: Piece::Present(b"new CA"), previous_ca: Piece::Present(CA), ..whole() };
        assert_eq!(verdict(Some(&record()), &rotated, None), Ok(Verdict::Continue), "rotation started, record not yet written");
        let stranger = Observed { ca_certificate: Piece::Present(b"new CA"), previous_ca: Piece::Present(b"some CA"), ..whole() };
        assert!(verdict(Some(&record()), &stranger, None).unwrap_err().losses[0].replaced);
    }

    #[test]
    fn the_message_says_what_was_lost_and_both_ways_out() {
        let lost = verdict(Some(&record()), &Observed { ca_certificate: Piece::Missing, ..whole() }, None).unwrap_err();
        let text = lost.describe(|file| format!("Secret lab-ca, {file}"));
        assert!(text.contains("the cluster CA certificate (Secret lab-ca, ca/ca.crt) is missing"), "{text}");
        assert!(text.contains("Restore") && text.contains(&format!("callguard.io/new-identity={}", lost.id)) && text.contains("P.3-18"));
    }
}
