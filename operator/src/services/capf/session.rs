//! The server side of one CAPF session as a pure state machine (docs/wire-formats.md §7.5): frames in, frames out, and a final
//! [`Outcome`]. No IO and no clock: the caller supplies `now`, the device directory, and reports timeouts and
//! closed connections.

use std::sync::Arc;

use time::OffsetDateTime;

use super::auth::{self, AuthError, CertificateCheck, ClientCertificateKind, TrustAnchors};
use super::frame::{
    AuthType, Body, CertificateElement, CertificateType, Command, Curve, Frame, FrameError, KeyType, Reason, SERVER_VERSION,
};
use crate::api::{CapfAuthenticationMode, CertificateOperation, KeySize};
use crate::core::pki::ca::ClusterCa;
use crate::core::pki::inspect::{CertificateFacts, EcCurve, md5_hex, sha256_hex};
use crate::core::pki::issue::{self, DEFAULT_LSC_VALIDITY_DAYS, LscKeySource, LscRequest, PhoneKey};
use crate::core::pki::serial::Serial;

/// VERSION values accepted in AUTH_RESPONSE: phones answer 3, Jabber 2 (docs/wire-formats.md §7.4).
pub const ACCEPTED_VERSIONS: [u8; 2] = [2, 3];

/// The operation scheduled for a device (docs/wire-formats.md §7.5; CUCM's "troubleshoot" is a fetch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScheduledOperation {
    None,
    /// Install, or upgrade when the device already has an LSC: the same wire flow.
    InstallUpgrade,
    Delete,
    Fetch,
}

impl From<CertificateOperation> for ScheduledOperation {
    fn from(operation: CertificateOperation) -> ScheduledOperation {
        match operation {
            CertificateOperation::NoPendingOperation => ScheduledOperation::None,
            CertificateOperation::InstallUpgrade => ScheduledOperation::InstallUpgrade,
            CertificateOperation::Delete => ScheduledOperation::Delete,
            CertificateOperation::Troubleshoot => ScheduledOperation::Fetch,
        }
    }
}

/// The key a device is asked to generate (docs/wire-formats.md §7.3 KEY_GENERATE_REQUEST, §7.8 allowed sizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestedKey {
    Rsa(KeySize),
    Ec(EcCurve),
}

/// What the directory knows about one device.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub operation: ScheduledOperation,
    /// Configured capfAuthMode: 1 string, 2 null string, 3 LSC or MIC, 4 MIC.
    pub auth_mode: CapfAuthenticationMode,
    /// The 4–10 digit authentication string, for mode 1.
    pub authentication_string: Option<String>,
    pub key: RequestedKey,
    /// DER of the device's current LSC, if it has one: an install is then an upgrade.
    pub current_lsc: Option<Vec<u8>>,
}

impl std::fmt::Debug for DeviceRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceRecord")
            .field("operation", &self.operation)
            .field("auth_mode", &self.auth_mode)
            .field("authentication_string", &self.authentication_string.as_ref().map(|_| "<redacted>"))
            .field("key", &self.key)
            .field("current_lsc", &self.current_lsc.as_deref().map(md5_hex))
            .finish()
    }
}

/// Where sessions look devices up. Closures `Fn(&str) -> Option<DeviceRecord>` implement it.
pub trait DeviceDirectory: Send + Sync {
    /// The record of a device by its normalised name (`SEP` + uppercase MAC, docs/wire-formats.md §1.3), or `None` if unknown.
    fn lookup(&self, device_name: &str) -> Option<DeviceRecord>;

    /// The serial of a new LSC. Override to keep serials unique against those the CA already issued.
    fn fresh_serial(&self) -> Serial {
        Serial::random(&mut rand::thread_rng())
    }

    /// Asked once a device with a scheduled operation is found, before anything it sent is checked: `Err` refuses
    /// it with END_SESSION{7} and the reason, whatever its credentials (a lockout after wrong authentication
    /// strings, P.16-6; a spent authentication string, Table 6-2). `now` is the session's.
    fn admit(&self, _device_name: &str, _now: OffsetDateTime) -> Result<(), String> {
        Ok(())
    }

    /// Told the result of authenticating a device as soon as it is known, before the session goes on: where
    /// wrong strings are counted and a string that authenticated is spent.
    fn authenticated(&self, _device_name: &str, _result: Result<(), &AuthError>, _now: OffsetDateTime) {}

    /// Told how the session ended, before its last frame is sent: an issued LSC can be kept before the phone
    /// hears END_SESSION{1}.
    fn finished(&self, _outcome: &Outcome, _now: OffsetDateTime) {}
}

impl<F> DeviceDirectory for F
where
    F: Fn(&str) -> Option<DeviceRecord> + Send + Sync,
{
    fn lookup(&self, device_name: &str) -> Option<DeviceRecord> {
        self(device_name)
    }
}

/// Listener settings that shape sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Send AUTH_REQUEST with VERSION alone, as CUCM was observed doing (docs/wire-formats.md §7.5 `omitAuthType`).
    pub omit_auth_type: bool,
    /// Send RSA KEY_GENERATE_REQUEST with KEY_SIZE alone (docs/wire-formats.md §7.5 `omitRsaKeyType`).
    pub omit_rsa_key_type: bool,
    /// Require a MIC's CN to end in `-<device name>` (docs/wire-formats.md §7.5; can be switched off).
    pub check_mic_common_name: bool,
    /// LSC lifetime, 1..=3650 days (docs/wire-formats.md §7.8).
    pub lsc_validity_days: u32,
}

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig {
            omit_auth_type: false,
            omit_rsa_key_type: false,
            check_mic_common_name: true,
            lsc_validity_days: DEFAULT_LSC_VALIDITY_DAYS,
        }
    }
}

/// Everything sessions share: the CA that issues LSCs, the allowed issuers, the directory and the settings.
pub struct CapfContext {
    pub ca: ClusterCa,
    pub trust: TrustAnchors,
    pub directory: Arc<dyn DeviceDirectory>,
    pub config: SessionConfig,
}

impl std::fmt::Debug for CapfContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapfContext").field("ca", &self.ca).field("trust", &self.trust).field("config", &self.config).finish()
    }
}

/// An LSC a session issued and the phone stored, with what the status records (docs/wire-formats.md §7.5 "After success").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    pub device_name: String,
    pub certificate_der: Vec<u8>,
    pub serial: Serial,
    pub not_after: OffsetDateTime,
    /// Lowercase hex MD5 of the DER (the certHash).
    pub md5: String,
    /// Lowercase hex SHA-256 of the DER.
    pub sha256: String,
    pub phone_key: PhoneKey,
    /// The device had an LSC before.
    pub upgrade: bool,
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Install/upgrade done: the phone stored the new LSC; END_SESSION{1}.
    Issued(IssuedCertificate),
    /// The phone deleted its LSC; END_SESSION{1}.
    Deleted { device_name: String },
    /// Fetch done; END_SESSION{0}. `certificate` is what the phone returned, if it returned one.
    Fetched { device_name: String, reason: Reason, certificate: Option<CertificateElement> },
    /// Nothing scheduled; END_SESSION{0}.
    NothingScheduled { device_name: String },
    /// Anything else; the session sent END_SESSION{7} or {9}, or could not send anything.
    Failed { device_name: Option<String>, reason: FailureReason },
}

/// Why a session failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureReason {
    /// A frame did not decode, or carried another protocol or session id (docs/wire-formats.md §7.2).
    Frame(FrameError),
    /// A command that is not valid in this state, or whose semantics are unknown (docs/wire-formats.md §7.3).
    UnexpectedCommand {
        command: Command,
        expected: &'static str,
    },
    /// A required element is missing.
    MissingElement {
        command: Command,
        element: &'static str,
    },
    /// VERSION is neither 2 nor 3 (docs/wire-formats.md §7.4).
    UnsupportedVersion(u8),
    /// END_SESSION{9} (docs/wire-formats.md §7.5).
    UnknownDevice,
    /// The directory refused the device before its credentials were checked ([`DeviceDirectory::admit`]).
    Refused(String),
    Authentication(AuthError),
    /// The configured key cannot be requested: RSA 512 is refused (docs/wire-formats.md §7.8) and P-521 cannot be issued.
    UnsupportedConfiguredKey(RequestedKey),
    /// PUBLIC_KEY fails the key checks of docs/wire-formats.md §7.8; nothing was issued.
    KeyRefused(String),
    /// The phone answered with a REASON other than success.
    PhoneReported {
        command: Command,
        reason: Reason,
    },
    /// The CA could not issue the LSC.
    Issue(String),
    /// The phone refused to store the LSC that was issued (the serial is for the audit trail).
    StoreRefused {
        reason: Reason,
        serial: Serial,
    },
    /// No message within the timeout; `key_generation` when waiting for KEY_GENERATE_RESPONSE.
    Timeout {
        key_generation: bool,
    },
    /// The peer closed the connection before the session ended.
    ConnectionClosed,
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailureReason::Frame(e) => write!(f, "{e}"),
            FailureReason::UnexpectedCommand { command, expected } => {
                write!(f, "unexpected CAPF command {} while waiting for {expected} (docs/wire-formats.md §7.3, §7.5)", command.code())
            }
            FailureReason::MissingElement { command, element } => {
                write!(f, "CAPF command {} lacks {element} (docs/wire-formats.md §7.5)", command.code())
            }
            FailureReason::UnsupportedVersion(v) => write!(f, "CAPF VERSION {v} is not 2 or 3 (docs/wire-formats.md §7.4)"),
            FailureReason::UnknownDevice => write!(f, "unknown device (docs/wire-formats.md §7.5)"),
            FailureReason::Refused(why) => write!(f, "refused before authentication: {why}"),
            FailureReason::Authentication(e) => write!(f, "authentication failed: {e}"),
            FailureReason::UnsupportedConfiguredKey(key) => {
                write!(f, "the configured key {key:?} cannot be requested: RSA 1024/2048, EC P-256/P-384 only (docs/wire-formats.md §7.8)")
            }
            FailureReason::KeyRefused(why) => write!(f, "PUBLIC_KEY refused: {why} (docs/wire-formats.md §7.8)"),
            FailureReason::PhoneReported { command, reason } => {
                write!(f, "the phone answered command {} with REASON {} (docs/wire-formats.md §7.9)", command.code(), reason.code())
            }
            FailureReason::Issue(why) => write!(f, "issuing the LSC failed: {why}"),
            FailureReason::StoreRefused { reason, serial } => {
                write!(f, "the phone refused to store LSC {serial}: REASON {} (docs/wire-formats.md §7.5)", reason.code())
            }
            FailureReason::Timeout { key_generation: true } => {
                write!(f, "no KEY_GENERATE_RESPONSE in time (docs/wire-formats.md §7.5 timeouts)")
            }
            FailureReason::Timeout { key_generation: false } => write!(f, "no CAPF message in time (docs/wire-formats.md §7.5 timeouts)"),
            FailureReason::ConnectionClosed => write!(f, "the phone closed the connection mid-session"),
        }
    }
}

/// What the session waits for, so the transport picks the timeout (docs/wire-formats.md §7.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Any message: the 30 s message timeout.
    Message,
    /// KEY_GENERATE_RESPONSE: the 60 min key-generation timeout, counted from the request.
    KeyGeneration,
    /// The session is over; close the connection.
    Finished,
}

/// The reaction to one input: frames to send, each in one write, then close if `close`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Step {
    pub send: Vec<Frame>,
    pub close: bool,
}

#[derive(Debug, Clone)]
enum State {
    Start,
    AwaitAuth,
    AwaitKey { device_name: String, key: RequestedKey, upgrade: bool },
    AwaitStore { issued: IssuedCertificate },
    AwaitFetch { device_name: String },
    AwaitDelete { device_name: String },
    Done,
}

/// One CAPF session, server side.
pub struct Session {
    context: Arc<CapfContext>,
    session_id: u32,
    now: OffsetDateTime,
    state: State,
    outcome: Option<Outcome>,
    requests_in_progress: u32,
    skipped_elements: usize,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("session_id", &self.session_id).field("state", &self.state).field("outcome", &self.outcome).finish()
    }
}

impl Session {
    /// A session with the id the server picked (random, non-zero: docs/wire-formats.md §7.2); `now` dates the LSC.
    pub fn new(context: Arc<CapfContext>, session_id: u32, now: OffsetDateTime) -> Session {
        Session { context, session_id, now, state: State::Start, outcome: None, requests_in_progress: 0, skipped_elements: 0 }
    }

    pub fn session_id(&self) -> u32 {
        self.session_id
    }

    /// The server speaks first: AUTH_REQUEST {VERSION=3, AUTH_TYPE=0} (docs/wire-formats.md §7.5).
    pub fn start(&mut self) -> Step {
        if !matches!(self.state, State::Start) {
            return Step::default();
        }
        self.state = State::AwaitAuth;
        let body = Body {
            version: Some(SERVER_VERSION),
            auth_type: (!self.context.config.omit_auth_type).then_some(AuthType::None),
            ..Body::default()
        };
        Step { send: vec![self.frame(Command::AuthRequest, body)], close: false }
    }

    pub fn wait(&self) -> Wait {
        match self.state {
            State::Done => Wait::Finished,
            State::AwaitKey { .. } => Wait::KeyGeneration,
            _ => Wait::Message,
        }
    }

    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    pub fn into_outcome(self) -> Option<Outcome> {
        self.outcome
    }

    /// REQUEST_IN_PROGRESS frames received so far.
    pub fn requests_in_progress(&self) -> u32 {
        self.requests_in_progress
    }

    /// Elements received and not interpreted (unknown tags, REASON_INFO, ...), for logging.
    pub fn skipped_elements(&self) -> usize {
        self.skipped_elements
    }

    /// Bytes of one whole frame (or what arrived of it before the connection ended).
    pub fn receive_bytes(&mut self, bytes: &[u8]) -> Step {
        match Frame::decode(bytes) {
            Ok(frame) => self.receive(frame),
            Err(e) => self.fail_protocol(e),
        }
    }

    /// One decoded frame.
    pub fn receive(&mut self, frame: Frame) -> Step {
        if matches!(self.state, State::Done) {
            return Step { send: Vec::new(), close: true };
        }
        if frame.session_id != self.session_id {
            return self.fail_protocol(FrameError::SessionMismatch { expected: self.session_id, found: frame.session_id });
        }
        self.skipped_elements += frame.body.skipped.len();
        let state = std::mem::replace(&mut self.state, State::Done);
        match (state, frame.command) {
            (State::AwaitAuth, Command::AuthResponse) => self.on_auth_response(&frame.body),
            (State::AwaitKey { device_name, key, upgrade }, Command::RequestInProgress) => {
                self.requests_in_progress = self.requests_in_progress.saturating_add(1);
                self.state = State::AwaitKey { device_name, key, upgrade };
                Step::default()
            }
            (State::AwaitKey { device_name, key, upgrade }, Command::KeyGenerateResponse) => {
                self.on_key(&frame.body, device_name, key, upgrade)
            }
            (State::AwaitStore { issued }, Command::StoreCertificateResponse) => match frame.body.reason {
                Some(Reason::Success) => self.finish(Reason::Success, Outcome::Issued(issued)),
                reason => {
                    let reason = reason.unwrap_or(Reason::Unknown(u8::MAX));
                    let device_name = Some(issued.device_name.clone());
                    self.finish(
                        Reason::Failure,
                        Outcome::Failed { device_name, reason: FailureReason::StoreRefused { reason, serial: issued.serial } },
                    )
                }
            },
            (State::AwaitFetch { device_name }, Command::FetchCertificateResponse) => {
                let reason = frame.body.reason.unwrap_or(Reason::Unknown(u8::MAX));
                let certificate = if reason == Reason::Success { frame.body.certificate } else { None };
                self.finish(Reason::NoAction, Outcome::Fetched { device_name, reason, certificate })
            }
            (State::AwaitDelete { device_name }, Command::DeleteCertificateResponse) => {
                // END_SESSION{1} whatever the phone answered (docs/wire-formats.md §7.5 delete flow).
                let outcome = match frame.body.reason {
                    Some(Reason::Success) => Outcome::Deleted { device_name },
                    reason => Outcome::Failed {
                        device_name: Some(device_name),
                        reason: FailureReason::PhoneReported { command: frame.command, reason: reason.unwrap_or(Reason::Unknown(u8::MAX)) },
                    },
                };
                self.finish(Reason::Success, outcome)
            }
            (state, command) => {
                let expected = expected_command(&state);
                let device_name = device_of(&state);
                self.fail(device_name, FailureReason::UnexpectedCommand { command, expected })
            }
        }
    }

    /// The transport's timeout for the current [`Wait`] expired: END_SESSION{7}.
    pub fn time_out(&mut self) -> Step {
        if matches!(self.state, State::Done) {
            return Step { send: Vec::new(), close: true };
        }
        let key_generation = matches!(self.state, State::AwaitKey { .. });
        let device_name = device_of(&self.state);
        self.fail(device_name, FailureReason::Timeout { key_generation })
    }

    /// The peer closed the connection: nothing more can be sent.
    pub fn connection_closed(&mut self) {
        if !matches!(self.state, State::Done) {
            let device_name = device_of(&self.state);
            self.state = State::Done;
            self.conclude(Outcome::Failed { device_name, reason: FailureReason::ConnectionClosed });
        }
    }

    fn on_auth_response(&mut self, body: &Body) -> Step {
        let command = Command::AuthResponse;
        if let Some(reason) = body.reason.filter(|r| *r != Reason::Success) {
            return self.fail(None, FailureReason::PhoneReported { command, reason });
        }
        match body.version {
            Some(version) if ACCEPTED_VERSIONS.contains(&version) => {}
            Some(version) => return self.fail(None, FailureReason::UnsupportedVersion(version)),
            None => return self.fail(None, FailureReason::MissingElement { command, element: "VERSION" }),
        }
        let Some(raw_device_name) = body.device_name.as_deref() else {
            return self.fail(None, FailureReason::MissingElement { command, element: "DEVICE_NAME" });
        };
        let device_name = normalise_device_name(raw_device_name);
        let Some(record) = self.context.directory.lookup(&device_name) else {
            return self
                .finish(Reason::UnknownDevice, Outcome::Failed { device_name: Some(device_name), reason: FailureReason::UnknownDevice });
        };
        // Nothing scheduled is answered before authenticating: END_SESSION{0} changes nothing and reveals no more
        // than END_SESSION{9} already does, and a phone in mode 1 has no string to offer when nothing is pending.
        if record.operation == ScheduledOperation::None {
            return self.finish(Reason::NoAction, Outcome::NothingScheduled { device_name });
        }
        if let Err(why) = self.context.directory.admit(&device_name, self.now) {
            return self.fail(Some(device_name), FailureReason::Refused(why));
        }
        let authenticated = self.authenticate(body, raw_device_name, &device_name, &record);
        self.context.directory.authenticated(&device_name, authenticated.as_ref().map(|_| ()), self.now);
        if let Err(e) = authenticated {
            return self.fail(Some(device_name), FailureReason::Authentication(e));
        }
        match record.operation {
            ScheduledOperation::InstallUpgrade => self.request_key(device_name, &record),
            ScheduledOperation::Fetch => {
                self.state = State::AwaitFetch { device_name };
                Step { send: vec![self.frame(Command::FetchCertificateRequest, Body::default())], close: false }
            }
            ScheduledOperation::Delete => {
                self.state = State::AwaitDelete { device_name };
                Step { send: vec![self.frame(Command::DeleteCertificateRequest, Body::default())], close: false }
            }
            ScheduledOperation::None => self.finish(Reason::NoAction, Outcome::NothingScheduled { device_name }),
        }
    }

    fn authenticate(&self, body: &Body, raw_device_name: &str, device_name: &str, record: &DeviceRecord) -> Result<(), AuthError> {
        match record.auth_mode {
            CapfAuthenticationMode::ByAuthenticationString => auth::check_password(body, record.authentication_string.as_deref())?,
            CapfAuthenticationMode::ByNullString => {}
            mode @ (CapfAuthenticationMode::ByExistingCertificatePrecedenceLsc
            | CapfAuthenticationMode::ByExistingCertificatePrecedenceMic) => {
                let check = CertificateCheck {
                    raw_device_name,
                    device_name,
                    mode,
                    lsc_ca_der: self.context.ca.certificate_der(),
                    trust: &self.context.trust,
                    check_mic_common_name: self.context.config.check_mic_common_name,
                };
                let _kind: ClientCertificateKind = auth::check_certificate(body, &check)?;
            }
        }
        auth::check_sudi(body, self.session_id, &self.context.trust)
    }

    fn request_key(&mut self, device_name: String, record: &DeviceRecord) -> Step {
        let body = match record.key {
            RequestedKey::Rsa(size @ (KeySize::Bits1024 | KeySize::Bits2048)) => Body {
                key_size: Some(size.bits()),
                key_type: (!self.context.config.omit_rsa_key_type).then_some(KeyType::Rsa),
                ..Body::default()
            },
            RequestedKey::Ec(curve @ (EcCurve::P256 | EcCurve::P384)) => {
                Body { key_type: Some(KeyType::Ec), curve: Some(wire_curve(curve)), ..Body::default() }
            }
            other => return self.fail(Some(device_name), FailureReason::UnsupportedConfiguredKey(other)),
        };
        let upgrade = record.current_lsc.is_some();
        self.state = State::AwaitKey { device_name, key: record.key, upgrade };
        Step { send: vec![self.frame(Command::KeyGenerateRequest, body)], close: false }
    }

    fn on_key(&mut self, body: &Body, device_name: String, requested: RequestedKey, upgrade: bool) -> Step {
        let command = Command::KeyGenerateResponse;
        if let Some(reason) = body.reason.filter(|r| *r != Reason::Success) {
            return self.fail(Some(device_name), FailureReason::PhoneReported { command, reason });
        }
        let Some(spki) = body.public_key.as_deref() else {
            return self.fail(Some(device_name), FailureReason::MissingElement { command, element: "PUBLIC_KEY" });
        };
        let phone_key = match issue::check_phone_key(spki) {
            Ok(key) => key,
            Err(e) => return self.fail(Some(device_name), FailureReason::KeyRefused(e.to_string())),
        };
        if !key_matches(phone_key, requested) {
            let why = format!("the phone returned {phone_key:?}, but {requested:?} was requested");
            return self.fail(Some(device_name), FailureReason::KeyRefused(why));
        }
        let request = LscRequest {
            device_name: &device_name,
            key: LscKeySource::PublicKey(spki),
            validity_days: self.context.config.lsc_validity_days,
            serial: self.context.directory.fresh_serial(),
            now: self.now,
        };
        let issued = match issue::issue_lsc(&self.context.ca, &request).map_err(|e| e.to_string()).and_then(|lsc| {
            let facts = CertificateFacts::from_der(&lsc.certificate_der).map_err(|e| e.to_string())?;
            Ok(IssuedCertificate {
                device_name: device_name.clone(),
                md5: md5_hex(&lsc.certificate_der),
                sha256: sha256_hex(&lsc.certificate_der),
                serial: facts.serial,
                not_after: facts.not_after,
                certificate_der: lsc.certificate_der,
                phone_key: lsc.phone_key,
                upgrade,
            })
        }) {
            Ok(issued) => issued,
            Err(why) => return self.fail(Some(device_name), FailureReason::Issue(why)),
        };
        let body = Body {
            certificate_type: Some(CertificateType::Lsc),
            certificate: Some(CertificateElement::new(CertificateType::Lsc, issued.certificate_der.clone())),
            ..Body::default()
        };
        let frame = self.frame(Command::StoreCertificateRequest, body);
        self.state = State::AwaitStore { issued };
        Step { send: vec![frame], close: false }
    }

    /// A frame that did not decode or belongs to another session: END_SESSION{7} and close (docs/wire-formats.md §7.2).
    fn fail_protocol(&mut self, error: FrameError) -> Step {
        if matches!(self.state, State::Done) {
            return Step { send: Vec::new(), close: true };
        }
        let device_name = device_of(&self.state);
        self.fail(device_name, FailureReason::Frame(error))
    }

    fn fail(&mut self, device_name: Option<String>, reason: FailureReason) -> Step {
        self.finish(Reason::Failure, Outcome::Failed { device_name, reason })
    }

    fn finish(&mut self, end_reason: Reason, outcome: Outcome) -> Step {
        self.state = State::Done;
        self.conclude(outcome);
        let end = self.frame(Command::EndSession, Body { reason: Some(end_reason), ..Body::default() });
        Step { send: vec![end], close: true }
    }

    /// The outcome is known: the directory hears of it first.
    fn conclude(&mut self, outcome: Outcome) {
        self.context.directory.finished(&outcome, self.now);
        self.outcome = Some(outcome);
    }

    fn frame(&self, command: Command, body: Body) -> Frame {
        Frame::new(command, self.session_id, body)
    }
}

/// `SEP` + lowercase hex becomes `SEP` + uppercase (docs/wire-formats.md §1.3); other names (`CSF<user>`, ...) are kept.
pub fn normalise_device_name(raw: &str) -> String {
    match raw.strip_prefix("SEP") {
        Some(mac) if mac.len() == 12 && mac.bytes().all(|b| b.is_ascii_hexdigit()) => format!("SEP{}", mac.to_ascii_uppercase()),
        _ => raw.to_owned(),
    }
}

fn wire_curve(curve: EcCurve) -> Curve {
    match curve {
        EcCurve::P256 => Curve::P256,
        EcCurve::P384 => Curve::P384,
        EcCurve::P521 => Curve::P521,
    }
}

fn key_matches(phone_key: PhoneKey, requested: RequestedKey) -> bool {
    match (phone_key, requested) {
        (PhoneKey::Rsa1024, RequestedKey::Rsa(KeySize::Bits1024)) | (PhoneKey::Rsa2048, RequestedKey::Rsa(KeySize::Bits2048)) => true,
        (PhoneKey::Ec(got), RequestedKey::Ec(wanted)) => got == wanted,
        _ => false,
    }
}

fn expected_command(state: &State) -> &'static str {
    match state {
        State::Start => "nothing (the server speaks first)",
        State::AwaitAuth => "AUTH_RESPONSE",
        State::AwaitKey { .. } => "KEY_GENERATE_RESPONSE or REQUEST_IN_PROGRESS",
        State::AwaitStore { .. } => "STORE_CERTIFICATE_RESPONSE",
        State::AwaitFetch { .. } => "FETCH_CERTIFICATE_RESPONSE",
        State::AwaitDelete { .. } => "DELETE_CERTIFICATE_RESPONSE",
        State::Done => "nothing (the session is over)",
    }
}

fn device_of(state: &State) -> Option<String> {
    match state {
        State::AwaitKey { device_name, .. } | State::AwaitFetch { device_name } | State::AwaitDelete { device_name } => {
            Some(device_name.clone())
        }
        State::AwaitStore { issued } => Some(issued.device_name.clone()),
        State::Start | State::AwaitAuth | State::Done => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::pki::ca::CaSettings;
    use crate::core::pki::keys;
    use rsa::RsaPublicKey;
    use rsa::pkcs8::EncodePublicKey;
    use std::sync::OnceLock;

    const DEVICE: &str = "SEP001122334455";
    const ID: u32 = 0x2A;

    fn ca() -> &'static ClusterCa {
        static CA: OnceLock<ClusterCa> = OnceLock::new();
        CA.get_or_init(|| ClusterCa::generate(&CaSettings::new("cucm-lab", "voice"), OffsetDateTime::now_utc()).unwrap())
    }

    fn spki_1024() -> &'static Vec<u8> {
        static SPKI: OnceLock<Vec<u8>> = OnceLock::new();
        SPKI.get_or_init(|| RsaPublicKey::from(&keys::generate_rsa(1024)).to_public_key_der().unwrap().as_bytes().to_vec())
    }

    fn session(operation: ScheduledOperation, key: RequestedKey) -> Session {
        let record = DeviceRecord {
            operation,
            auth_mode: CapfAuthenticationMode::ByNullString,
            authentication_string: None,
            key,
            current_lsc: Some(vec![1, 2, 3]),
        };
        let directory = move |name: &str| (name == DEVICE).then(|| record.clone());
        let context = CapfContext {
            ca: ca().clone(),
            trust: TrustAnchors::default(),
            directory: Arc::new(directory),
            config: SessionConfig::default(),
        };
        let mut session = Session::new(Arc::new(context), ID, OffsetDateTime::now_utc());
        assert_eq!(session.start().send[0].command, Command::AuthRequest);
        session
    }

    fn auth_response() -> Frame {
        let body = Body { reason: Some(Reason::Success), version: Some(3), device_name: Some(DEVICE.into()), ..Body::default() };
        Frame::new(Command::AuthResponse, ID, body)
    }

    fn end_reason(step: &Step) -> Option<Reason> {
        assert!(step.close, "the session closes");
        assert_eq!(step.send.len(), 1);
        assert_eq!(step.send[0].command, Command::EndSession);
        step.send[0].body.reason
    }

    fn failure(session: &Session) -> FailureReason {
        match session.outcome() {
            Some(Outcome::Failed { reason, .. }) => reason.clone(),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    const RSA1024: RequestedKey = RequestedKey::Rsa(KeySize::Bits1024);

    #[test]
    fn commands_of_unknown_semantics_and_out_of_order_get_reason_7() {
        let mut s = session(ScheduledOperation::InstallUpgrade, RSA1024);
        let step = s.receive(Frame::new(Command::Unknown(5), ID, Body::default()));
        assert_eq!(end_reason(&step), Some(Reason::Failure));
        assert_eq!(failure(&s), FailureReason::UnexpectedCommand { command: Command::Unknown(5), expected: "AUTH_RESPONSE" });
        // After the end, nothing more is sent.
        assert_eq!(s.receive(auth_response()), Step { send: vec![], close: true });

        let mut s = session(ScheduledOperation::InstallUpgrade, RSA1024);
        let step = s.receive(Frame::new(Command::RequestInProgress, ID, Body::default()));
        assert_eq!(end_reason(&step), Some(Reason::Failure));
    }

    #[test]
    fn install_tolerates_requests_in_progress_and_waits_for_the_key() {
        let mut s = session(ScheduledOperation::InstallUpgrade, RSA1024);
        let step = s.receive(auth_response());
        assert_eq!(step.send[0].body.key_size, Some(1024));
        assert_eq!(s.wait(), Wait::KeyGeneration);
        for _ in 0..5 {
            assert_eq!(s.receive(Frame::new(Command::RequestInProgress, ID, Body::default())), Step::default());
        }
        assert_eq!(s.requests_in_progress(), 5);
        let key = Frame::new(Command::KeyGenerateResponse, ID, Body { public_key: Some(spki_1024().clone()), ..Body::default() });
        let step = s.receive(key);
        assert_eq!(step.send[0].command, Command::StoreCertificateRequest);
        assert_eq!(s.wait(), Wait::Message);
        // The phone refuses to store: END_SESSION{7}, and the serial of the LSC is reported.
        let refused = Frame::new(Command::StoreCertificateResponse, ID, Body { reason: Some(Reason::Failure), ..Body::default() });
        assert_eq!(end_reason(&s.receive(refused)), Some(Reason::Failure));
        assert!(matches!(failure(&s), FailureReason::StoreRefused { reason: Reason::Failure, .. }));
    }

    #[test]
    fn upgrade_is_reported_when_the_device_had_an_lsc() {
        let mut s = session(ScheduledOperation::InstallUpgrade, RSA1024);
        s.receive(auth_response());
        s.receive(Frame::new(Command::KeyGenerateResponse, ID, Body { public_key: Some(spki_1024().clone()), ..Body::default() }));
        let stored = Frame::new(Command::StoreCertificateResponse, ID, Body { reason: Some(Reason::Success), ..Body::default() });
        assert_eq!(end_reason(&s.receive(stored)), Some(Reason::Success));
        let Some(Outcome::Issued(issued)) = s.outcome() else { panic!("{:?}", s.outcome()) };
        assert!(issued.upgrade);
        assert_eq!(issued.phone_key, PhoneKey::Rsa1024);
    }

    #[test]
    fn phone_key_failure_and_timeouts_get_reason_7() {
        let mut s = session(ScheduledOperation::InstallUpgrade, RSA1024);
        s.receive(auth_response());
        let failed = Frame::new(Command::KeyGenerateResponse, ID, Body { reason: Some(Reason::Failure), ..Body::default() });
        assert_eq!(end_reason(&s.receive(failed)), Some(Reason::Failure));
        assert_eq!(failure(&s), FailureReason::PhoneReported { command: Command::KeyGenerateResponse, reason: Reason::Failure });

        let mut s = session(ScheduledOperation::InstallUpgrade, RSA1024);
        s.receive(auth_response());
        assert_eq!(end_reason(&s.time_out()), Some(Reason::Failure));
        assert_eq!(failure(&s), FailureReason::Timeout { key_generation: true });
        assert_eq!(s.wait(), Wait::Finished);
    }

    #[test]
    fn keys_outside_the_allowed_set_are_never_requested() {
        for key in [RequestedKey::Rsa(KeySize::Bits512), RequestedKey::Ec(EcCurve::P521)] {
            let mut s = session(ScheduledOperation::InstallUpgrade, key);
            assert_eq!(end_reason(&s.receive(auth_response())), Some(Reason::Failure));
            assert_eq!(failure(&s), FailureReason::UnsupportedConfiguredKey(key));
        }
    }

    #[test]
    fn undecodable_bytes_and_missing_elements_get_reason_7() {
        let mut s = session(ScheduledOperation::Delete, RSA1024);
        assert_eq!(end_reason(&s.receive_bytes(&[0x55, 2, 0, 0])), Some(Reason::Failure));
        assert!(matches!(failure(&s), FailureReason::Frame(FrameError::Truncated { .. })));

        let mut s = session(ScheduledOperation::Delete, RSA1024);
        let mut frame = auth_response();
        frame.body.device_name = None;
        assert_eq!(end_reason(&s.receive(frame)), Some(Reason::Failure));
        assert_eq!(failure(&s), FailureReason::MissingElement { command: Command::AuthResponse, element: "DEVICE_NAME" });
    }

    #[test]
    fn a_closed_connection_is_reported() {
        let mut s = session(ScheduledOperation::Delete, RSA1024);
        s.receive(auth_response());
        s.connection_closed();
        assert_eq!(s.outcome(), Some(&Outcome::Failed { device_name: Some(DEVICE.into()), reason: FailureReason::ConnectionClosed }));
    }

    /// A directory of one device in mode 1 that refuses while `locked` and notes what it is told.
    struct Watching {
        locked: bool,
        events: std::sync::Mutex<Vec<String>>,
    }

    impl DeviceDirectory for Watching {
        fn lookup(&self, device_name: &str) -> Option<DeviceRecord> {
            (device_name == DEVICE).then(|| DeviceRecord {
                operation: ScheduledOperation::Delete,
                auth_mode: CapfAuthenticationMode::ByAuthenticationString,
                authentication_string: Some("12345678".into()),
                key: RSA1024,
                current_lsc: None,
            })
        }
        fn admit(&self, _: &str, _: OffsetDateTime) -> Result<(), String> {
            self.events.lock().unwrap().push("admit".into());
            if self.locked { Err("locked out (P.16-6)".into()) } else { Ok(()) }
        }
        fn authenticated(&self, _: &str, result: Result<(), &AuthError>, _: OffsetDateTime) {
            self.events.lock().unwrap().push(format!("authenticated {:?}", result.err()));
        }
        fn finished(&self, outcome: &Outcome, _: OffsetDateTime) {
            let word = match outcome {
                Outcome::Deleted { .. } => "deleted",
                Outcome::Failed { .. } => "failed",
                _ => "other",
            };
            self.events.lock().unwrap().push(format!("finished {word}"));
        }
    }

    fn watched(locked: bool, password: &str) -> (Arc<Watching>, Session, Step) {
        let directory = Arc::new(Watching { locked, events: Default::default() });
        let context = CapfContext {
            ca: ca().clone(),
            trust: TrustAnchors::default(),
            directory: directory.clone(),
            config: SessionConfig::default(),
        };
        let mut session = Session::new(Arc::new(context), ID, OffsetDateTime::now_utc());
        session.start();
        let mut frame = auth_response();
        frame.body.password = Some(crate::services::capf::frame::Password::new(password));
        let step = session.receive(frame);
        (directory, session, step)
    }

    #[test]
    fn the_directory_can_refuse_before_the_string_is_checked_and_hears_every_result() {
        // Refused: the right string is never looked at.
        let (directory, session, step) = watched(true, "12345678");
        assert_eq!(end_reason(&step), Some(Reason::Failure));
        assert_eq!(failure(&session), FailureReason::Refused("locked out (P.16-6)".into()));
        assert_eq!(*directory.events.lock().unwrap(), ["admit", "finished failed"]);
        // A wrong string is reported as such.
        let (directory, _, step) = watched(false, "11111111");
        assert_eq!(end_reason(&step), Some(Reason::Failure));
        assert_eq!(*directory.events.lock().unwrap(), ["admit", "authenticated Some(WrongPassword)", "finished failed"]);
        // A right one, then the outcome before the last frame goes out.
        let (directory, mut session, step) = watched(false, "12345678");
        assert_eq!(step.send[0].command, Command::DeleteCertificateRequest);
        let deleted = Frame::new(Command::DeleteCertificateResponse, ID, Body { reason: Some(Reason::Success), ..Body::default() });
        assert_eq!(end_reason(&session.receive(deleted)), Some(Reason::Success));
        assert_eq!(*directory.events.lock().unwrap(), ["admit", "authenticated None", "finished deleted"]);
    }

    #[test]
    fn device_names_are_normalised_only_for_sep_macs() {
        assert_eq!(normalise_device_name("SEP00aabbccddee"), "SEP00AABBCCDDEE");
        assert_eq!(normalise_device_name("CSFalice"), "CSFalice");
        assert_eq!(normalise_device_name("SEP00aabbccdde"), "SEP00aabbccdde");
        assert_eq!(ScheduledOperation::from(CertificateOperation::Troubleshoot), ScheduledOperation::Fetch);
    }
}
