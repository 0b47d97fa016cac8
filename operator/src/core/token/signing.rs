//! Which tokens a CTL lists as SAST records and which one signs it, including the lost-token
//! procedure (P.16-5): add the new token, leave the lost one out, and
//! sign with a remaining token of the published CTL, since phones accept a new CTL only from a SAST
//! they already know (docs/wire-formats.md §3.9, §3.7 step 2).
//!
//! Pure: the caller reads the SecurityTokens, their certificates and the published CTL.

use super::registry::Revocation;
use crate::api::{CtlSettings, SecurityToken, TokenState};

/// Phones accept at most two SAST records in a trust file (docs/wire-formats.md §3.1, §1.7).
pub const MAX_SAST: usize = 2;
/// The CTL must always list at least two tokens (P.1-12, P.3-9, P.3-13).
pub const MIN_USABLE_TOKENS: usize = 2;

/// One SecurityToken and its certificate as read from its Secret (DER; `None` when unreadable).
#[derive(Debug, Clone, Copy)]
pub struct TokenInput<'a> {
    pub token: &'a SecurityToken,
    pub certificate_der: Option<&'a [u8]>,
    /// The certificate was once declared Lost or Compromised, by this or another object (the registry).
    pub revoked: Option<&'a Revocation>,
}

impl TokenInput<'_> {
    fn name(&self) -> &str {
        self.token.metadata.name.as_deref().unwrap_or_default()
    }
}

/// A SAST record of the published CTL. The certificate is compared by DER when present, else by
/// serial with leading zero bytes stripped (docs/wire-formats.md §1.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedSast {
    pub serial: Vec<u8>,
    pub certificate_der: Option<Vec<u8>>,
}

/// Why a token of `ctl.tokens` is not in the new CTL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaveReason {
    /// No SecurityToken of that name (P.3-9).
    NotFound,
    /// Lost, Compromised or Retired (P.16-5).
    State(TokenState),
    /// Locked for good by the 16th consecutive wrong password (P.16-5).
    Locked,
    /// Its certificate Secret is missing or not a certificate, so it cannot be a record.
    CertificateUnavailable,
    /// Listed twice, or its certificate is the one of another listed token (docs/wire-formats.md §3.7 step 1).
    Duplicate { of: String },
    /// Two SAST records are already chosen (docs/wire-formats.md §3.1).
    SastLimit,
    /// Its certificate is held, or was once declared, as a token that is not Active: a lock or a
    /// revocation follows the certificate, not the object's name (P.16-5).
    CertificateRefused { state: TokenState, by: String },
}

impl std::fmt::Display for LeaveReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeaveReason::NotFound => write!(f, "no SecurityToken of this name (P.3-9)"),
            LeaveReason::State(state) => write!(f, "the token is {state:?} and leaves the CTL (P.16-5)"),
            LeaveReason::Locked => write!(f, "the token is locked for good and leaves the CTL (P.16-5)"),
            LeaveReason::CertificateUnavailable => write!(f, "the token's certificate Secret holds no readable certificate (P.3-9)"),
            LeaveReason::Duplicate { of } => {
                write!(f, "the same certificate as token {of:?}; records are distinct (docs/wire-formats.md §3.7)")
            }
            LeaveReason::SastLimit => write!(f, "a CTL holds at most {MAX_SAST} SAST records (docs/wire-formats.md §3.1)"),
            LeaveReason::CertificateRefused { state, by } => write!(
                f,
                "its certificate is that of SecurityToken/{by}, which is {state:?}: a certificate is refused whatever object names it (P.16-5)"
            ),
        }
    }
}

/// Something the cluster's status should say about the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanCondition {
    /// Fewer than two usable tokens remain: add a token (P.3-13).
    FewerThanTwoTokens { usable: usize },
    /// `signingToken` cannot sign this publication; another token of the published CTL does.
    SignerSubstituted { requested: String, signer: String, why: SignerRefusal },
}

impl std::fmt::Display for PlanCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanCondition::FewerThanTwoTokens { usable } => write!(
                f,
                "only {usable} usable security token(s) remain; the CTL must always list {MIN_USABLE_TOKENS}: add a token (P.3-13)"
            ),
            PlanCondition::SignerSubstituted { requested, signer, why } => {
                write!(f, "signingToken {requested:?} {why}; the CTL is signed by {signer:?} instead")
            }
        }
    }
}

/// Why a token that is listed cannot sign this publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignerRefusal {
    /// It leaves the CTL (see the reason).
    Leaves(LeaveReason),
    /// It is not a SAST of the published CTL, so phones would refuse the file (docs/wire-formats.md §3.9, P.3-12).
    NotInPublishedCtl,
    /// Its password is still the factory default (Table 3-2).
    DefaultPassword,
}

impl std::fmt::Display for SignerRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignerRefusal::Leaves(reason) => write!(f, "cannot sign: {reason}"),
            SignerRefusal::NotInPublishedCtl => write!(
                f,
                "is not a SAST of the published CTL and cannot sign the update that adds it: phones accept a CTL only from a SAST they know (P.3-12, docs/wire-formats.md §3.9)"
            ),
            SignerRefusal::DefaultPassword => {
                write!(f, "still has the factory default password and may not sign (Table 3-2)")
            }
        }
    }
}

/// The tokens of the next CTL: the signer first, then the other SAST (docs/wire-formats.md §3.6 record order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtlSigningPlan {
    pub signer: String,
    /// At most [`MAX_SAST`] token names; `sast[0] == signer`.
    pub sast: Vec<String>,
    /// Tokens of `ctl.tokens` that are not in `sast`, with the reason.
    pub left_out: Vec<(String, LeaveReason)>,
    pub conditions: Vec<PlanCondition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// Every SAST of the published CTL is locked, lost, compromised or retired: only a manual erase of the CTL on each phone recovers (P.16-5).
    Unrecoverable,
    /// No listed token is usable, and there is no published CTL to continue (P.3-9).
    NoUsableToken,
    /// Usable tokens of the published CTL exist but none is in `ctl.tokens`, and the signer must be
    /// a record of the file it signs (docs/wire-formats.md §3.7 step 1).
    SignerNotListed { candidates: Vec<String> },
    /// The only tokens that could sign still have the factory password (Table 3-2).
    DefaultPassword { tokens: Vec<String> },
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanError::Unrecoverable => {
                write!(f, "all CTL signing tokens unavailable: vendor support + manual CTL erase on phones required (P.16-5)")
            }
            PlanError::NoUsableToken => write!(f, "no token of spec.ctl.tokens is usable: the CTL cannot be signed (P.3-9, P.16-5)"),
            PlanError::SignerNotListed { candidates } => write!(
                f,
                "only {candidates:?} of the published CTL can sign, and none is in spec.ctl.tokens: list one of them, since the signer is a record of the CTL it signs (P.3-12, docs/wire-formats.md §3.7)"
            ),
            PlanError::DefaultPassword { tokens } => {
                write!(f, "the tokens that could sign, {tokens:?}, still have the factory default password: change it first (Table 3-2)")
            }
        }
    }
}

impl std::error::Error for PlanError {}

/// Chooses the SAST records and the signer of the next CTL. `published` is the SAST records of the
/// CTL the phones hold, or `None` before the first CTL (genesis, docs/wire-formats.md §3.7 step 2).
pub fn plan(ctl: &CtlSettings, tokens: &[TokenInput<'_>], published: Option<&[PublishedSast]>) -> Result<CtlSigningPlan, PlanError> {
    let mut usable: Vec<TokenInput<'_>> = Vec::new();
    let mut left_out: Vec<(String, LeaveReason)> = Vec::new();
    for name in &ctl.tokens {
        match admit(name, tokens, &usable) {
            Ok(token) => usable.push(token),
            Err(reason) => left_out.push((name.clone(), reason)),
        }
    }
    let known = |token: &TokenInput<'_>| published.is_none_or(|records| in_published(token, records));
    let default_password = |token: &TokenInput<'_>| token.token.status.as_ref().and_then(|s| s.default_password_in_use) == Some(true);

    let requested = usable.iter().find(|t| t.name() == ctl.signing_token);
    let signer = match requested {
        Some(token) if known(token) && !default_password(token) => *token,
        _ => {
            let candidates: Vec<&TokenInput<'_>> = usable.iter().filter(|t| known(t)).collect();
            match candidates.iter().find(|t| !default_password(t)) {
                Some(token) => **token,
                None if !candidates.is_empty() => {
                    return Err(PlanError::DefaultPassword { tokens: candidates.iter().map(|t| t.name().to_string()).collect() });
                }
                None => return Err(no_signer(tokens, published)),
            }
        }
    };
    let mut conditions = Vec::new();
    if signer.name() != ctl.signing_token {
        let why = match (requested, left_out.iter().find(|(n, _)| *n == ctl.signing_token)) {
            (Some(token), _) if !known(token) => SignerRefusal::NotInPublishedCtl,
            (Some(_), _) => SignerRefusal::DefaultPassword,
            (None, Some((_, reason))) => SignerRefusal::Leaves(reason.clone()),
            (None, None) => SignerRefusal::Leaves(LeaveReason::NotFound),
        };
        conditions.push(PlanCondition::SignerSubstituted { requested: ctl.signing_token.clone(), signer: signer.name().to_string(), why });
    }

    // The signer first; then tokens the phones already know, to keep a second known signer; then the rest.
    let mut others: Vec<&TokenInput<'_>> = usable.iter().filter(|t| t.name() != signer.name()).collect();
    others.sort_by_key(|t| !known(t));
    let mut sast = vec![signer.name().to_string()];
    for token in others {
        if sast.len() < MAX_SAST {
            sast.push(token.name().to_string());
        } else {
            left_out.push((token.name().to_string(), LeaveReason::SastLimit));
        }
    }
    if usable.len() < MIN_USABLE_TOKENS {
        conditions.insert(0, PlanCondition::FewerThanTwoTokens { usable: usable.len() });
    }
    Ok(CtlSigningPlan { signer: signer.name().to_string(), sast, left_out, conditions })
}

/// Whether a token listed in `ctl.tokens` may be a record: it exists, is Active, is not locked, has a
/// certificate, and is not a repeat of one already admitted.
fn admit<'a>(name: &str, tokens: &[TokenInput<'a>], admitted: &[TokenInput<'a>]) -> Result<TokenInput<'a>, LeaveReason> {
    let token = *tokens.iter().find(|t| t.name() == name).ok_or(LeaveReason::NotFound)?;
    if token.token.status.as_ref().is_some_and(|s| s.locked) {
        return Err(LeaveReason::Locked);
    }
    match token.token.spec.state() {
        TokenState::Active => {}
        state => return Err(LeaveReason::State(state)),
    }
    let der = token.certificate_der.ok_or(LeaveReason::CertificateUnavailable)?;
    if let Some(revocation) = token.revoked {
        return Err(LeaveReason::CertificateRefused { state: revocation.state, by: revocation.by.clone() });
    }
    // Another object holding the same certificate in another state speaks for the key (P.16-5).
    if let Some(other) = tokens.iter().find(|t| t.certificate_der == Some(der) && t.token.spec.state() != TokenState::Active) {
        return Err(LeaveReason::CertificateRefused { state: other.token.spec.state(), by: other.name().to_owned() });
    }
    if let Some(other) = tokens.iter().find(|t| t.certificate_der == Some(der) && t.token.status.as_ref().is_some_and(|s| s.locked)) {
        return Err(LeaveReason::CertificateRefused { state: TokenState::Active, by: format!("{} (locked)", other.name()) });
    }
    if let Some(other) = admitted.iter().find(|t| t.name() == name || t.certificate_der == Some(der)) {
        return Err(LeaveReason::Duplicate { of: other.name().to_string() });
    }
    Ok(token)
}

/// Whether a token's certificate is one of the published SAST records.
fn in_published(token: &TokenInput<'_>, records: &[PublishedSast]) -> bool {
    let Some(der) = token.certificate_der else { return false };
    let serial = certificate_serial(der);
    records.iter().any(|record| match &record.certificate_der {
        Some(published) => published.as_slice() == der,
        None => serial.as_deref().is_some_and(|s| strip_zeros(s) == strip_zeros(&record.serial)),
    })
}

/// No listed token can sign with continuity: either a usable token of the published CTL exists but
/// is not listed, or none is left at all (P.16-5).
fn no_signer(tokens: &[TokenInput<'_>], published: Option<&[PublishedSast]>) -> PlanError {
    let Some(records) = published else { return PlanError::NoUsableToken };
    let candidates: Vec<String> = tokens
        .iter()
        .filter(|t| {
            let status = t.token.status.as_ref();
            t.token.spec.state() == TokenState::Active
                && !status.is_some_and(|s| s.locked)
                && t.revoked.is_none()
                && in_published(t, records)
        })
        .map(|t| t.name().to_string())
        .collect();
    if candidates.is_empty() { PlanError::Unrecoverable } else { PlanError::SignerNotListed { candidates } }
}

fn certificate_serial(der: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    X509Certificate::from_der(der).ok().map(|(_, c)| c.raw_serial().to_vec())
}

/// Serials compare without leading zero bytes (docs/wire-formats.md §1.5).
fn strip_zeros(serial: &[u8]) -> &[u8] {
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    &serial[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{SecretKeyRef, SecurityTokenSpec, SecurityTokenStatus};

    fn token(name: &str, state: TokenState, locked: bool) -> SecurityToken {
        let reference = |key: &str| SecretKeyRef { name: name.into(), key: key.into() };
        let spec = SecurityTokenSpec {
            certificate: reference("certificate.pem"),
            private_key: reference("key.p8"),
            password: reference("password"),
            state: Some(state),
            description: None,
        };
        let mut token = SecurityToken::new(name, spec);
        token.status = Some(SecurityTokenStatus { locked, ..Default::default() });
        token
    }

    /// Stand-in DER per token: continuity compares DER bytes when the published CTL has them.
    fn der(name: &str) -> Vec<u8> {
        format!("DER of {name}").into_bytes()
    }

    fn ctl(tokens: &[&str], signing: &str) -> CtlSettings {
        CtlSettings { tokens: tokens.iter().map(|t| t.to_string()).collect(), signing_token: signing.into(), hash_algorithm: None }
    }

    fn published(names: &[&str]) -> Vec<PublishedSast> {
        names.iter().map(|n| PublishedSast { serial: vec![1], certificate_der: Some(der(n)) }).collect()
    }

    struct World {
        tokens: Vec<SecurityToken>,
        ders: Vec<Vec<u8>>,
    }

    impl World {
        fn new(tokens: Vec<SecurityToken>) -> Self {
            let ders = tokens.iter().map(|t| der(t.metadata.name.as_deref().unwrap())).collect();
            World { tokens, ders }
        }

        fn inputs(&self) -> Vec<TokenInput<'_>> {
            self.tokens.iter().zip(&self.ders).map(|(token, der)| TokenInput { token, certificate_der: Some(der), revoked: None }).collect()
        }
    }

    fn active(name: &str) -> SecurityToken {
        token(name, TokenState::Active, false)
    }

    #[test]
    fn both_tokens_usable_signing_token_signs_first() {
        let world = World::new(vec![active("a"), active("b")]);
        let outcome = plan(&ctl(&["a", "b"], "b"), &world.inputs(), Some(&published(&["a", "b"]))).unwrap();
        assert_eq!(outcome.signer, "b");
        assert_eq!(outcome.sast, ["b", "a"], "the signing SAST first (docs/wire-formats.md §3.6)");
        assert!(outcome.left_out.is_empty() && outcome.conditions.is_empty(), "{outcome:?}");
    }

    #[test]
    fn lost_token_leaves_and_the_remaining_one_signs_adding_the_new_token() {
        // P.16-5: buy a new token c; with a token that signed the CTL (b), add c and delete a.
        let world = World::new(vec![token("a", TokenState::Lost, false), active("b"), active("c")]);
        let outcome = plan(&ctl(&["b", "c"], "b"), &world.inputs(), Some(&published(&["a", "b"]))).unwrap();
        assert_eq!(outcome.signer, "b");
        assert_eq!(outcome.sast, ["b", "c"]);
        assert!(outcome.conditions.is_empty());
        // Same with the lost token still listed and still named as signer.
        let outcome = plan_for(&world, &["a", "b"], "a", &["a", "b"]).unwrap();
        assert_eq!(outcome.signer, "b");
        assert_eq!(outcome.sast, ["b"]);
        assert_eq!(outcome.left_out, [("a".to_string(), LeaveReason::State(TokenState::Lost))]);
        assert_eq!(outcome.conditions[0], PlanCondition::FewerThanTwoTokens { usable: 1 });
        assert_eq!(
            outcome.conditions[1],
            PlanCondition::SignerSubstituted {
                requested: "a".into(),
                signer: "b".into(),
                why: SignerRefusal::Leaves(LeaveReason::State(TokenState::Lost))
            }
        );
    }

    fn plan_for(world: &World, tokens: &[&str], signing: &str, previous: &[&str]) -> Result<CtlSigningPlan, PlanError> {
        plan(&ctl(tokens, signing), &world.inputs(), Some(&published(previous)))
    }

    #[test]
    fn locked_compromised_and_retired_tokens_leave() {
        for (leaving, reason) in [
            (token("a", TokenState::Active, true), LeaveReason::Locked),
            (token("a", TokenState::Compromised, false), LeaveReason::State(TokenState::Compromised)),
            (token("a", TokenState::Retired, false), LeaveReason::State(TokenState::Retired)),
        ] {
            let world = World::new(vec![leaving, active("b")]);
            let outcome = plan_for(&world, &["a", "b"], "b", &["a", "b"]).unwrap();
            assert_eq!(outcome.sast, ["b"]);
            assert_eq!(outcome.left_out, [("a".to_string(), reason)]);
        }
    }

    #[test]
    fn a_signer_not_in_the_published_ctl_is_refused() {
        // c is new: it cannot sign the update that adds it (P.3-12, docs/wire-formats.md §3.9); b signs instead.
        let world = World::new(vec![token("a", TokenState::Lost, false), active("b"), active("c")]);
        let outcome = plan_for(&world, &["b", "c"], "c", &["a", "b"]).unwrap();
        assert_eq!(outcome.signer, "b");
        assert_eq!(outcome.sast, ["b", "c"]);
        assert_eq!(
            outcome.conditions,
            [PlanCondition::SignerSubstituted { requested: "c".into(), signer: "b".into(), why: SignerRefusal::NotInPublishedCtl }]
        );
        // With b gone too, nothing the phones know can sign: c alone is refused.
        let world = World::new(vec![token("a", TokenState::Lost, false), token("b", TokenState::Active, true), active("c")]);
        assert_eq!(plan_for(&world, &["c"], "c", &["a", "b"]), Err(PlanError::Unrecoverable));
    }

    #[test]
    fn all_tokens_lost_is_unrecoverable_with_the_spec_message() {
        let world = World::new(vec![token("a", TokenState::Lost, false), token("b", TokenState::Compromised, false)]);
        let error = plan_for(&world, &["a", "b"], "a", &["a", "b"]).unwrap_err();
        assert_eq!(error, PlanError::Unrecoverable);
        assert!(
            error.to_string().starts_with("all CTL signing tokens unavailable: vendor support + manual CTL erase on phones required"),
            "no token left to sign: {error}"
        );
    }

    #[test]
    fn a_third_token_never_makes_three_sast() {
        let world = World::new(vec![active("a"), active("b"), active("c")]);
        let outcome = plan_for(&world, &["c", "a", "b"], "a", &["a", "b"]).unwrap();
        assert_eq!(outcome.sast.len(), 2);
        assert_eq!(outcome.sast, ["a", "b"], "the signer, then the token the phones already know");
        assert_eq!(outcome.left_out, [("c".to_string(), LeaveReason::SastLimit)]);
    }

    #[test]
    fn genesis_signs_with_the_signing_token_and_reports_a_lone_token() {
        let world = World::new(vec![active("a")]);
        let outcome = plan(&ctl(&["a", "x"], "a"), &world.inputs(), None).unwrap();
        assert_eq!(outcome.signer, "a");
        assert_eq!(outcome.left_out, [("x".to_string(), LeaveReason::NotFound)]);
        assert_eq!(outcome.conditions, [PlanCondition::FewerThanTwoTokens { usable: 1 }]);
        let world = World::new(vec![token("a", TokenState::Retired, false)]);
        assert_eq!(plan_for_genesis(&world, &["a"], "a"), Err(PlanError::NoUsableToken));
    }

    fn plan_for_genesis(world: &World, tokens: &[&str], signing: &str) -> Result<CtlSigningPlan, PlanError> {
        plan(&ctl(tokens, signing), &world.inputs(), None)
    }

    #[test]
    fn a_usable_published_token_that_is_not_listed_is_named() {
        let world = World::new(vec![token("a", TokenState::Lost, false), active("b"), active("c")]);
        assert_eq!(plan_for(&world, &["c"], "c", &["a", "b"]), Err(PlanError::SignerNotListed { candidates: vec!["b".into()] }));
    }

    #[test]
    fn the_factory_password_does_not_sign() {
        let mut b = active("b");
        b.status.as_mut().unwrap().default_password_in_use = Some(true);
        let world = World::new(vec![active("a"), b.clone()]);
        let outcome = plan_for(&world, &["a", "b"], "b", &["a", "b"]).unwrap();
        assert_eq!(outcome.signer, "a");
        assert_eq!(outcome.sast, ["a", "b"]);
        let world = World::new(vec![token("a", TokenState::Lost, false), b]);
        assert_eq!(plan_for(&world, &["a", "b"], "b", &["a", "b"]), Err(PlanError::DefaultPassword { tokens: vec!["b".into()] }));
    }

    #[test]
    fn a_refused_certificate_stays_refused_under_another_name() {
        // "b2" names the same certificate as the compromised "b": it neither signs nor is listed.
        let world = World::new(vec![active("a"), token("b", TokenState::Compromised, false), active("b2")]);
        let mut inputs = world.inputs();
        inputs[2].certificate_der = inputs[1].certificate_der;
        let outcome = plan(&ctl(&["a", "b2"], "b2"), &inputs, Some(&published(&["a", "b"]))).unwrap();
        assert_eq!(outcome.signer, "a");
        assert_eq!(outcome.sast, ["a"]);
        assert_eq!(outcome.left_out, [("b2".into(), LeaveReason::CertificateRefused { state: TokenState::Compromised, by: "b".into() })]);
        // The same with a locked token copied under a new name.
        let world = World::new(vec![active("a"), token("b", TokenState::Active, true), active("b2")]);
        let mut inputs = world.inputs();
        inputs[2].certificate_der = inputs[1].certificate_der;
        let outcome = plan(&ctl(&["a", "b2"], "b2"), &inputs, Some(&published(&["a", "b"]))).unwrap();
        assert!(matches!(&outcome.left_out[..], [(name, LeaveReason::CertificateRefused { .. })] if name == "b2"), "{outcome:?}");
        // And a certificate the registry remembers as Lost, with no object left saying so.
        let revocation = Revocation { state: TokenState::Lost, at: "2026-01-01T00:00:00Z".into(), by: "gone".into() };
        let world = World::new(vec![active("a"), active("c")]);
        let mut inputs = world.inputs();
        inputs[1].revoked = Some(&revocation);
        let outcome = plan(&ctl(&["a", "c"], "c"), &inputs, Some(&published(&["a", "c"]))).unwrap();
        assert_eq!(outcome.signer, "a");
        assert_eq!(outcome.left_out, [("c".into(), LeaveReason::CertificateRefused { state: TokenState::Lost, by: "gone".into() })]);
    }

    #[test]
    fn duplicates_and_missing_certificates_leave() {
        let world = World::new(vec![active("a"), active("b")]);
        let mut inputs = world.inputs();
        inputs[1].certificate_der = inputs[0].certificate_der;
        let outcome = plan(&ctl(&["a", "b", "a"], "a"), &inputs, None).unwrap();
        assert_eq!(outcome.sast, ["a"]);
        assert_eq!(
            outcome.left_out,
            [("b".to_string(), LeaveReason::Duplicate { of: "a".into() }), ("a".to_string(), LeaveReason::Duplicate { of: "a".into() })]
        );
        inputs[1].certificate_der = None;
        let outcome = plan(&ctl(&["a", "b"], "a"), &inputs, None).unwrap();
        assert_eq!(outcome.left_out, [("b".to_string(), LeaveReason::CertificateUnavailable)]);
    }

    #[test]
    fn continuity_by_serial_when_the_published_ctl_has_no_der() {
        let key = crate::core::pki::keys::generate_rsa(2048);
        let request = crate::core::token::create::TokenRequest { name: "a".into(), ..Default::default() };
        let pem = crate::core::token::create::sast_certificate(&request, &key, time::OffsetDateTime::now_utc()).unwrap();
        let der_a = crate::core::token::material::certificate_der(pem.as_bytes()).unwrap();
        let serial = certificate_serial(&der_a).unwrap();
        let (a, b) = (active("a"), active("b"));
        let der_b = der("b");
        let inputs = [
            TokenInput { token: &a, certificate_der: Some(&der_a), revoked: None },
            TokenInput { token: &b, certificate_der: Some(&der_b), revoked: None },
        ];
        // The published serial with a sign octet still matches (docs/wire-formats.md §1.5).
        let mut with_zero = vec![0u8];
        with_zero.extend(&serial);
        let records = [PublishedSast { serial: with_zero, certificate_der: None }];
        let outcome = plan(&ctl(&["a", "b"], "b"), &inputs, Some(&records)).unwrap();
        assert_eq!(outcome.signer, "a");
        let records = [PublishedSast { serial: vec![0x01, 0x02], certificate_der: None }];
        assert_eq!(plan_with(&inputs, &records), Err(PlanError::Unrecoverable));
    }

    fn plan_with(inputs: &[TokenInput<'_>], records: &[PublishedSast]) -> Result<CtlSigningPlan, PlanError> {
        plan(&ctl(&["a", "b"], "b"), inputs, Some(records))
    }
}
