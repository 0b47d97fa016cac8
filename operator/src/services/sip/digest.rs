//! SIP digest authentication as the server (RFC 3261 §22, RFC 7616, RFC 8760): the challenge, the
//! check of an `Authorization` answer, the nonce's validity time and nonce-count replays. The guide
//! gives the policy (P.8-1: the phone answers the challenge with an MD5 hash of its credentials;
//! Table 5-2 and Table 14-1: the nonce validity time, 600 s by default); the header grammar and the
//! hashes are the RFCs'. Written here rather than taken from the SIP stack: the stack parses the
//! message, but who may register, with which nonce and how often is this service's policy.
//!
//! Nonces are stateless: `base64url(issued-at ‖ random ‖ HMAC(issued-at ‖ random ‖ realm))`. A
//! nonce this process did not make (another replica, a restart) is answered like an expired one
//! when the answer is otherwise right, so the client retries with a fresh nonce without asking
//! its user again (`stale=true`, RFC 7616 §3.3).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::core::pki::inspect::lower_hex;

/// The hash of a challenge and its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DigestAlgorithm {
    /// What the guide's phones speak (P.8-1).
    Md5,
    /// RFC 8760; offered second (see [`OFFERED`]).
    Sha256,
}

impl DigestAlgorithm {
    pub fn token(self) -> &'static str {
        match self {
            DigestAlgorithm::Md5 => "MD5",
            DigestAlgorithm::Sha256 => "SHA-256",
        }
    }

    fn parse(token: &str) -> Option<DigestAlgorithm> {
        match token.to_ascii_uppercase().as_str() {
            "MD5" => Some(DigestAlgorithm::Md5),
            "SHA-256" => Some(DigestAlgorithm::Sha256),
            _ => None,
        }
    }

    fn hash(self, data: &[u8]) -> String {
        match self {
            DigestAlgorithm::Md5 => lower_hex(&Md5::digest(data)),
            DigestAlgorithm::Sha256 => lower_hex(&Sha256::digest(data)),
        }
    }
}

/// Longest `Authorization` value looked at; longer ones are refused unread.
pub const MAX_HEADER_LEN: usize = 4096;
/// Most parameters in one header.
const MAX_PARAMS: usize = 32;

/// The parameters of a `Digest` credentials header, as sent. Unknown parameters are ignored
/// (RFC 7616 §3.4).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DigestCredentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Option<String>,
    pub cnonce: Option<String>,
    pub qop: Option<String>,
    pub nc: Option<String>,
    pub opaque: Option<String>,
}

/// Why a header is not a digest answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("longer than {MAX_HEADER_LEN} bytes")]
    TooLong,
    #[error("the scheme is not Digest")]
    NotDigest,
    #[error("malformed parameter list at byte {0}")]
    Malformed(usize),
    #[error("more than {MAX_PARAMS} parameters")]
    TooManyParameters,
    #[error("parameter {0} appears twice")]
    Duplicate(String),
    #[error("parameter {0} is missing")]
    Missing(&'static str),
}

/// Parses `Digest k=v, k="v", ...` (RFC 7235 §2.1 auth-param list, RFC 7616 §3.4). Total: never
/// panics, whatever the bytes (a property test says so).
pub fn parse_credentials(value: &str) -> Result<DigestCredentials, HeaderError> {
    if value.len() > MAX_HEADER_LEN {
        return Err(HeaderError::TooLong);
    }
    let value = value.trim();
    let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("digest") {
        return Err(HeaderError::NotDigest);
    }
    let mut params: HashMap<String, String> = HashMap::new();
    let bytes = rest.as_bytes();
    let mut i = 0;
    let skip_space = |i: &mut usize| {
        while *i < bytes.len() && matches!(bytes[*i], b' ' | b'\t' | b'\r' | b'\n') {
            *i += 1;
        }
    };
    loop {
        skip_space(&mut i);
        if i >= bytes.len() {
            break;
        }
        let start = i;
        while i < bytes.len() && is_token_char(bytes[i]) {
            i += 1;
        }
        if i == start {
            return Err(HeaderError::Malformed(i));
        }
        let name = rest[start..i].to_ascii_lowercase();
        skip_space(&mut i);
        if bytes.get(i) != Some(&b'=') {
            return Err(HeaderError::Malformed(i));
        }
        i += 1;
        skip_space(&mut i);
        let parsed = if bytes.get(i) == Some(&b'"') {
            i += 1;
            let mut text = Vec::new();
            loop {
                match bytes.get(i) {
                    None => return Err(HeaderError::Malformed(i)),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        let escaped = *bytes.get(i + 1).ok_or(HeaderError::Malformed(i))?;
                        text.push(escaped);
                        i += 2;
                    }
                    Some(&b) => {
                        text.push(b);
                        i += 1;
                    }
                }
            }
            String::from_utf8(text).map_err(|_| HeaderError::Malformed(i))?
        } else {
            let start = i;
            while i < bytes.len() && is_token_char(bytes[i]) {
                i += 1;
            }
            if i == start {
                return Err(HeaderError::Malformed(i));
            }
            rest[start..i].to_string()
        };
        if params.len() == MAX_PARAMS {
            return Err(HeaderError::TooManyParameters);
        }
        if params.insert(name.clone(), parsed).is_some() {
            return Err(HeaderError::Duplicate(name));
        }
        skip_space(&mut i);
        match bytes.get(i) {
            None => break,
            Some(b',') => i += 1,
            Some(_) => return Err(HeaderError::Malformed(i)),
        }
    }
    let mut take = |name: &'static str| params.remove(name);
    Ok(DigestCredentials {
        username: take("username").ok_or(HeaderError::Missing("username"))?,
        realm: take("realm").ok_or(HeaderError::Missing("realm"))?,
        nonce: take("nonce").ok_or(HeaderError::Missing("nonce"))?,
        uri: take("uri").ok_or(HeaderError::Missing("uri"))?,
        response: take("response").ok_or(HeaderError::Missing("response"))?,
        algorithm: take("algorithm"),
        cnonce: take("cnonce"),
        qop: take("qop"),
        nc: take("nc"),
        opaque: take("opaque"),
    })
}

/// RFC 7230 tchar.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What an answer amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Right credentials, fresh nonce, nonce count not seen before.
    Authenticated,
    /// Right credentials on a nonce that is past its validity time or not ours: challenge again
    /// with `stale=true`.
    Stale,
    /// Not authenticated; challenge again (401) or refuse (403), and say why in the log.
    Refused(Refusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The username is not the one this device or trunk authenticates as.
    UnknownUser,
    /// Realm other than the one challenged with.
    WrongRealm,
    /// `uri` differs from the Request-URI (RFC 3261 §22.4).
    UriMismatch,
    /// An algorithm or qop this server does not offer.
    Unsupported,
    /// The response hash is wrong: a wrong password.
    WrongResponse,
    /// A nonce count this nonce has already been answered with: a replay.
    ReplayedNonceCount,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::UnknownUser => "unknown digest user",
            Refusal::WrongRealm => "wrong realm",
            Refusal::UriMismatch => "digest uri differs from the Request-URI",
            Refusal::Unsupported => "unsupported digest algorithm or qop",
            Refusal::WrongResponse => "wrong digest response (password)",
            Refusal::ReplayedNonceCount => "replayed nonce count",
        }
    }
}

/// Nonces remembered for nonce-count checks, at most; past it the older half is forgotten, and
/// every nonce issued up to then is stale (`NonceCounts::forgotten_through`).
const MAX_TRACKED_NONCES: usize = 100_000;

/// What an answer is checked against: the request it came on, and the credentials of the device or
/// trunk it claims to be.
#[derive(Clone, Copy, Debug)]
pub struct Expected<'a> {
    pub method: &'a str,
    pub request_uri: &'a str,
    pub user: &'a str,
    pub password: &'a str,
    /// The request, when it may come again as itself (a UDP retransmission); None: each count once.
    pub request: Option<RequestId>,
}

/// One request as sent: its top Via (branch, sent-by, and the received and rport the transport
/// added) and the address it came from. A retransmission has the same; a replay of an overheard
/// request from elsewhere does not, and is refused by its nonce count like any other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestId(u64);

impl RequestId {
    pub fn new(top_via: &str, source: Option<std::net::SocketAddr>) -> RequestId {
        use std::hash::{BuildHasher, Hash, Hasher};
        // Keyed per process: a sender cannot aim a collision at another phone's request.
        static KEYS: std::sync::LazyLock<std::hash::RandomState> = std::sync::LazyLock::new(std::hash::RandomState::new);
        let mut hasher = KEYS.build_hasher();
        top_via.hash(&mut hasher);
        source.hash(&mut hasher);
        RequestId(hasher.finish())
    }
}

/// The nonce counts in use, by nonce.
struct NonceCounts {
    seen: HashMap<String, CountSeen>,
    /// Nonces issued at or before this second may have been forgotten to keep the table bounded:
    /// they are stale, whatever their validity, or their spent counts would be accepted again.
    forgotten_through: u64,
    capacity: usize,
}

/// What a nonce count check concluded.
#[derive(Debug, PartialEq, Eq)]
enum CountCheck {
    New,
    Replayed,
    /// The nonce's counts may have been forgotten: a new challenge.
    Forgotten,
}

/// What is known of a nonce in use.
struct CountSeen {
    /// When it was issued, for pruning.
    issued: u64,
    /// The highest nonce count seen.
    count: u32,
    /// The request that used that count.
    by: Option<RequestId>,
}

/// Challenges and checks for one realm and one nonce validity time (a phone or trunk profile).
pub struct DigestAuthority {
    realm: String,
    validity: Duration,
    key: [u8; 32],
    counts: Mutex<NonceCounts>,
}

impl std::fmt::Debug for DigestAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestAuthority").field("realm", &self.realm).field("validity", &self.validity).finish_non_exhaustive()
    }
}

/// The challenge header values to send, in this order. MD5 first: RFC 8760 would have the preferred
/// algorithm first, but many clients answer the first challenge whatever its algorithm (sipp 3.6
/// fails on a SHA-256 one), and the guide's phones know only MD5 (P.8-1).
pub const OFFERED: [DigestAlgorithm; 2] = [DigestAlgorithm::Md5, DigestAlgorithm::Sha256];

impl DigestAuthority {
    pub fn new(realm: &str, validity: Duration) -> DigestAuthority {
        let counts = NonceCounts { seen: HashMap::new(), forgotten_through: 0, capacity: MAX_TRACKED_NONCES };
        DigestAuthority { realm: realm.to_string(), validity, key: rand::random(), counts: Mutex::new(counts) }
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// One `WWW-Authenticate` (or `Proxy-Authenticate`) value per offered algorithm, sharing one
    /// fresh nonce.
    pub fn challenge(&self, stale: bool) -> Vec<String> {
        self.challenge_at(SystemTime::now(), stale)
    }

    fn challenge_at(&self, now: SystemTime, stale: bool) -> Vec<String> {
        let nonce = self.nonce_at(now);
        let stale = if stale { ", stale=true" } else { "" };
        OFFERED
            .iter()
            .map(|algorithm| {
                format!(r#"Digest realm="{}", nonce="{nonce}", algorithm={}, qop="auth"{stale}"#, self.realm, algorithm.token())
            })
            .collect()
    }

    fn nonce_at(&self, now: SystemTime) -> String {
        let issued = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let random: [u8; 12] = rand::random();
        let mut body = Vec::with_capacity(8 + 12 + 16);
        body.extend_from_slice(&issued.to_be_bytes());
        body.extend_from_slice(&random);
        let tag = self.tag(&body);
        body.extend_from_slice(&tag[..16]);
        URL_SAFE_NO_PAD.encode(body)
    }

    fn tag(&self, body: &[u8]) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(body);
        mac.update(self.realm.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// When `nonce` was issued, if this authority issued it.
    fn issued_at(&self, nonce: &str) -> Option<u64> {
        let bytes = URL_SAFE_NO_PAD.decode(nonce).ok()?;
        if bytes.len() != 36 {
            return None;
        }
        let (body, tag) = bytes.split_at(20);
        bool::from(self.tag(body)[..16].ct_eq(tag)).then(|| u64::from_be_bytes(body[..8].try_into().expect("8 bytes")))
    }

    /// Checks an answer to a challenge against what `expected` says of the request it came on and
    /// the credentials this device or trunk authenticates with.
    pub fn verify(&self, credentials: &DigestCredentials, expected: &Expected) -> Verdict {
        self.verify_at(SystemTime::now(), credentials, expected)
    }

    fn verify_at(&self, now: SystemTime, c: &DigestCredentials, expected: &Expected) -> Verdict {
        if c.username != expected.user {
            return Verdict::Refused(Refusal::UnknownUser);
        }
        if c.realm != self.realm {
            return Verdict::Refused(Refusal::WrongRealm);
        }
        if c.uri != expected.request_uri {
            return Verdict::Refused(Refusal::UriMismatch);
        }
        let Some(algorithm) = c.algorithm.as_deref().map_or(Some(DigestAlgorithm::Md5), DigestAlgorithm::parse) else {
            return Verdict::Refused(Refusal::Unsupported);
        };
        let ha1 = algorithm.hash(format!("{}:{}:{}", c.username, c.realm, expected.password).as_bytes());
        let ha2 = algorithm.hash(format!("{}:{}", expected.method, c.uri).as_bytes());
        let (response, count) = match (c.qop.as_deref(), c.nc.as_deref(), c.cnonce.as_deref()) {
            (Some(qop), Some(nc), Some(cnonce)) if qop.eq_ignore_ascii_case("auth") => {
                let Some(count) = parse_nonce_count(nc) else { return Verdict::Refused(Refusal::Unsupported) };
                (algorithm.hash(format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", c.nonce).as_bytes()), Some(count))
            }
            (None, None, None) => (algorithm.hash(format!("{ha1}:{}:{ha2}", c.nonce).as_bytes()), None),
            _ => return Verdict::Refused(Refusal::Unsupported),
        };
        if !bool::from(response.as_bytes().ct_eq(c.response.to_ascii_lowercase().as_bytes())) {
            return Verdict::Refused(Refusal::WrongResponse);
        }
        let now_secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let Some(issued) = self.issued_at(&c.nonce) else { return Verdict::Stale };
        if now_secs.saturating_sub(issued) >= self.validity.as_secs() || issued > now_secs + 5 {
            return Verdict::Stale;
        }
        let Some(count) = count else { return Verdict::Authenticated };
        match self.check_count(&c.nonce, issued, count, expected.request, now_secs) {
            CountCheck::New => Verdict::Authenticated,
            CountCheck::Replayed => Verdict::Refused(Refusal::ReplayedNonceCount),
            CountCheck::Forgotten => Verdict::Stale,
        }
    }

    /// Records `count` for `nonce` if it is higher than any seen. The count seen last, again on
    /// the same `request`, is that request retransmitted: not a replay.
    fn check_count(&self, nonce: &str, issued: u64, count: u32, request: Option<RequestId>, now: u64) -> CountCheck {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(seen) = counts.seen.get_mut(nonce) {
            if count < seen.count || (count == seen.count && (request.is_none() || request != seen.by)) {
                return CountCheck::Replayed;
            }
            (seen.count, seen.by) = (count, request);
            return CountCheck::New;
        }
        if issued <= counts.forgotten_through {
            return CountCheck::Forgotten;
        }
        if counts.seen.len() >= counts.capacity {
            let validity = self.validity.as_secs();
            counts.seen.retain(|_, seen| now.saturating_sub(seen.issued) < validity);
            if counts.seen.len() >= counts.capacity {
                // The older half goes; a storm within one second may take it all, and that
                // second's nonces are then stale until the clock moves on.
                let mut ages: Vec<u64> = counts.seen.values().map(|seen| seen.issued).collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                counts.seen.retain(|_, seen| seen.issued > cut);
                counts.forgotten_through = counts.forgotten_through.max(cut);
                if issued <= cut {
                    return CountCheck::Forgotten;
                }
            }
        }
        counts.seen.insert(nonce.to_string(), CountSeen { issued, count, by: request });
        CountCheck::New
    }
}

/// `nc`: exactly 8 hex digits (RFC 7616 §3.4), not zero.
fn parse_nonce_count(nc: &str) -> Option<u32> {
    (nc.len() == 8).then(|| u32::from_str_radix(nc, 16).ok()).flatten().filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const URI: &str = "sip:cm1.example.com";

    fn answer(authority: &DigestAuthority, challenge: &str, algorithm: DigestAlgorithm, password: &str, nc: u32) -> DigestCredentials {
        let nonce = challenge.split("nonce=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
        let ha1 = algorithm.hash(format!("SEP001122334455:{}:{password}", authority.realm).as_bytes());
        let ha2 = algorithm.hash(format!("REGISTER:{URI}").as_bytes());
        let nc = format!("{nc:08x}");
        let response = algorithm.hash(format!("{ha1}:{nonce}:{nc}:0a4f113b:auth:{ha2}").as_bytes());
        DigestCredentials {
            username: "SEP001122334455".into(),
            realm: authority.realm.clone(),
            nonce,
            uri: URI.into(),
            response,
            algorithm: Some(algorithm.token().into()),
            cnonce: Some("0a4f113b".into()),
            qop: Some("auth".into()),
            nc: Some(nc),
            opaque: None,
        }
    }

    fn authority() -> DigestAuthority {
        DigestAuthority::new("ccmsipline", Duration::from_secs(600))
    }

    fn register(password: &str) -> Expected<'_> {
        Expected { method: "REGISTER", request_uri: URI, user: "SEP001122334455", password, request: None }
    }

    #[test]
    fn right_answers_with_md5_and_sha256_authenticate_and_a_wrong_password_does_not() {
        let authority = authority();
        let challenges = authority.challenge(false);
        assert_eq!(challenges.len(), 2);
        assert!(challenges[0].contains("algorithm=MD5") && challenges[1].contains("algorithm=SHA-256"), "{challenges:?}");
        // One nonce serves both challenges, so each answer counts up.
        for ((challenge, algorithm), nc) in challenges.iter().zip(OFFERED).zip(1..) {
            let good = answer(&authority, challenge, algorithm, "secret", nc);
            assert_eq!(authority.verify(&good, &register("secret")), Verdict::Authenticated);
            let bad = answer(&authority, challenge, algorithm, "guess", nc + 10);
            assert_eq!(authority.verify(&bad, &register("secret")), Verdict::Refused(Refusal::WrongResponse));
        }
    }

    /// The worked examples of RFC 2617 §3.5 (MD5) and RFC 7616 §3.9.1 (SHA-256), through `verify`: the
    /// answers are right, on nonces this authority did not make, so they are stale; one wrong
    /// character of the password and they are refused.
    #[test]
    fn the_rfc_worked_examples_check_out() {
        let examples = [
            ("testrealm@host.com", "dcd98b7102dd2f0e8b11d0f600bfb0c093", "0a4f113b", "MD5", "6629fae49393a05397450978507c4ef1"),
            (
                "http-auth@example.org",
                "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
                "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
                "SHA-256",
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
        ];
        for (realm, nonce, cnonce, algorithm, response) in examples {
            let authority = DigestAuthority::new(realm, Duration::from_secs(600));
            let credentials = DigestCredentials {
                username: "Mufasa".into(),
                realm: realm.into(),
                nonce: nonce.into(),
                uri: "/dir/index.html".into(),
                response: response.into(),
                algorithm: Some(algorithm.into()),
                cnonce: Some(cnonce.into()),
                qop: Some("auth".into()),
                nc: Some("00000001".into()),
                opaque: None,
            };
            let password = if algorithm == "MD5" { "Circle Of Life" } else { "Circle of Life" };
            let get = |password| Expected { method: "GET", request_uri: "/dir/index.html", user: "Mufasa", password, request: None };
            assert_eq!(authority.verify(&credentials, &get(password)), Verdict::Stale, "{algorithm}");
            assert_eq!(
                authority.verify(&credentials, &get(&password.to_uppercase())),
                Verdict::Refused(Refusal::WrongResponse),
                "{algorithm}"
            );
        }
    }

    #[test]
    fn an_answer_on_an_expired_nonce_is_stale_and_on_a_foreign_nonce_too() {
        let authority = authority();
        let then = SystemTime::now() - Duration::from_secs(601);
        let old = &authority.challenge_at(then, false)[1];
        let late = answer(&authority, old, DigestAlgorithm::Md5, "secret", 1);
        assert_eq!(authority.verify(&late, &register("secret")), Verdict::Stale);
        let other = DigestAuthority::new("ccmsipline", Duration::from_secs(600));
        let foreign = answer(&other, &other.challenge(false)[1], DigestAlgorithm::Md5, "secret", 1);
        assert_eq!(authority.verify(&foreign, &register("secret")), Verdict::Stale);
        // Stale is said only of a right answer: a wrong password on an old nonce is refused.
        let wrong = answer(&authority, old, DigestAlgorithm::Md5, "guess", 1);
        assert_eq!(authority.verify(&wrong, &register("secret")), Verdict::Refused(Refusal::WrongResponse));
        assert!(authority.challenge(true)[0].ends_with("stale=true"));
    }

    #[test]
    fn a_nonce_count_is_accepted_once_and_only_upwards() {
        let authority = authority();
        let challenge = &authority.challenge(false)[0];
        let first = answer(&authority, challenge, DigestAlgorithm::Sha256, "secret", 1);
        assert_eq!(authority.verify(&first, &register("secret")), Verdict::Authenticated);
        assert_eq!(authority.verify(&first, &register("secret")), Verdict::Refused(Refusal::ReplayedNonceCount));
        let third = answer(&authority, challenge, DigestAlgorithm::Sha256, "secret", 3);
        assert_eq!(authority.verify(&third, &register("secret")), Verdict::Authenticated);
        let second = answer(&authority, challenge, DigestAlgorithm::Sha256, "secret", 2);
        assert_eq!(authority.verify(&second, &register("secret")), Verdict::Refused(Refusal::ReplayedNonceCount));
    }

    /// A UDP request whose answer was lost comes again as itself: same Via, same source. It is
    /// answered again; the same count on another request, or from elsewhere, is a replay.
    #[test]
    fn the_request_that_used_a_count_may_come_again_and_no_other() {
        let authority = authority();
        let challenge = &authority.challenge(false)[0];
        let first = answer(&authority, challenge, DigestAlgorithm::Md5, "secret", 1);
        let via = "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK77;received=10.0.0.5;rport=5060";
        let phone = Some(std::net::SocketAddr::from(([10, 0, 0, 5], 5060)));
        let sent = |via: &str, source| Expected { request: Some(RequestId::new(via, source)), ..register("secret") };
        assert_eq!(authority.verify(&first, &sent(via, phone)), Verdict::Authenticated);
        assert_eq!(authority.verify(&first, &sent(via, phone)), Verdict::Authenticated, "the retransmission");
        let elsewhere = Some(std::net::SocketAddr::from(([10, 0, 0, 66], 5060)));
        assert_eq!(authority.verify(&first, &sent(via, elsewhere)), Verdict::Refused(Refusal::ReplayedNonceCount));
        let other_branch = via.replace("z9hG4bK77", "z9hG4bK78");
        assert_eq!(authority.verify(&first, &sent(&other_branch, phone)), Verdict::Refused(Refusal::ReplayedNonceCount));
        assert_eq!(authority.verify(&first, &register("secret")), Verdict::Refused(Refusal::ReplayedNonceCount));
        // Once a higher count is used, the earlier request is a replay too.
        let second = answer(&authority, challenge, DigestAlgorithm::Md5, "secret", 2);
        assert_eq!(authority.verify(&second, &sent(&other_branch, phone)), Verdict::Authenticated);
        assert_eq!(authority.verify(&first, &sent(via, phone)), Verdict::Refused(Refusal::ReplayedNonceCount));
    }

    /// The table of counts is bounded; a nonce whose counts may have been forgotten is stale, so an
    /// answer used on it before cannot be used again.
    #[test]
    fn a_nonce_whose_counts_were_forgotten_is_stale_not_fresh() {
        let authority = authority();
        authority.counts.lock().unwrap().capacity = 4;
        let now = SystemTime::now();
        // Four nonces from a minute ago, used once each, then four more from now: the older go.
        let old: Vec<DigestCredentials> = (0..4)
            .map(|_| {
                answer(&authority, &authority.challenge_at(now - Duration::from_secs(60), false)[0], DigestAlgorithm::Md5, "secret", 1)
            })
            .collect();
        for used in &old {
            assert_eq!(authority.verify(used, &register("secret")), Verdict::Authenticated);
        }
        let recent = answer(&authority, &authority.challenge(false)[0], DigestAlgorithm::Md5, "secret", 1);
        assert_eq!(authority.verify(&recent, &register("secret")), Verdict::Authenticated, "a new nonce still works");
        assert!(authority.counts.lock().unwrap().seen.len() <= 4);
        assert_eq!(authority.verify(&old[0], &register("secret")), Verdict::Stale, "not accepted again");
        assert_eq!(authority.verify(&recent, &register("secret")), Verdict::Refused(Refusal::ReplayedNonceCount), "still remembered");
    }

    #[test]
    fn user_realm_uri_and_algorithm_are_checked() {
        let authority = authority();
        let challenge = &authority.challenge(false)[1];
        let good = answer(&authority, challenge, DigestAlgorithm::Md5, "secret", 1);
        let verify = |c: &DigestCredentials| authority.verify(c, &register("secret"));
        assert_eq!(
            verify(&DigestCredentials { username: "SEP00112233445A".into(), ..good.clone() }),
            Verdict::Refused(Refusal::UnknownUser)
        );
        assert_eq!(verify(&DigestCredentials { realm: "other".into(), ..good.clone() }), Verdict::Refused(Refusal::WrongRealm));
        assert_eq!(verify(&DigestCredentials { uri: "sip:elsewhere".into(), ..good.clone() }), Verdict::Refused(Refusal::UriMismatch));
        assert_eq!(
            verify(&DigestCredentials { algorithm: Some("MD5-sess".into()), ..good.clone() }),
            Verdict::Refused(Refusal::Unsupported)
        );
        assert_eq!(verify(&DigestCredentials { nc: Some("1".into()), ..good.clone() }), Verdict::Refused(Refusal::Unsupported));
        assert_eq!(verify(&good), Verdict::Authenticated);
    }

    #[test]
    fn the_header_parser_reads_quoted_strings_escapes_and_tokens() {
        let parsed = parse_credentials(
            r#"Digest username="SEP00\"11", realm="ccmsipline",nonce="abc", uri="sip:a@b;transport=tls", response="0123",
               algorithm=MD5, cnonce="x y", qop=auth, nc=00000001, foo=bar"#,
        )
        .unwrap();
        assert_eq!(parsed.username, "SEP00\"11");
        assert_eq!(parsed.uri, "sip:a@b;transport=tls");
        assert_eq!(parsed.cnonce.as_deref(), Some("x y"));
        assert_eq!(parsed.qop.as_deref(), Some("auth"));
        assert_eq!(parse_credentials("Basic dXNlcg=="), Err(HeaderError::NotDigest));
        assert_eq!(parse_credentials(r#"Digest username="a", username="b""#), Err(HeaderError::Duplicate("username".into())));
        assert!(matches!(parse_credentials(r#"Digest username="a"#), Err(HeaderError::Malformed(_))));
        assert_eq!(parse_credentials(r#"Digest realm="r""#), Err(HeaderError::Missing("username")));
        assert_eq!(parse_credentials(&"x".repeat(MAX_HEADER_LEN + 1)), Err(HeaderError::TooLong));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Whatever arrives in the header, parsing returns: no panic, no hang.
        #[test]
        fn the_header_parser_never_panics(value in "\\PC{0,300}") {
            let _ = parse_credentials(&value);
        }

        /// Headers that look nearly right (digest scheme, parameter soup) are parsed or refused, never a panic.
        #[test]
        fn near_valid_headers_never_panic(
            params in proptest::collection::vec(("[a-z]{1,8}", "[=\" ,\\\\a-z0-9]{0,12}"), 0..40)
        ) {
            let value = format!("Digest {}", params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","));
            let _ = parse_credentials(&value);
        }
    }
}
