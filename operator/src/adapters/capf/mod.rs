//! CAPF in `callguard local` (docs/wire-formats.md §7): the TLS listener on the cluster's CAPF port,
//! presenting the CAPF function certificate of the build's identity and issuing LSCs with the cluster
//! CA; a device directory that follows the last good build; and what CAPF does, kept in the state so
//! that nothing is lost across restarts (`core::build::capf`).
//!
//! An issued LSC goes into `devices/SEP<MAC>.crt`, where `callguard device add-cert` puts one
//! (`core::build::devices`): `local` watches that folder, so the phone's encrypted configuration is
//! served within seconds; a completed Delete removes it. The records go into `capf/`, which `local`
//! watches too, so that the status table and `status.yaml` follow.

pub mod est;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use zeroize::Zeroizing;

use crate::api::{CapfAuthenticationMode, CertificateOperation, KeySize, LegacyTls as LegacyTlsSetting};
use crate::core::build::capf::{self as records, CapfRecord, CertificateNote, OperationId, rfc3339};
use crate::core::build::phone_files::secret_text;
use crate::core::build::state::{Sensitivity, StateDir};
use crate::core::build::{CapfIdentity, devices, identity};
use crate::core::pki::ca::certificate_pem;
use crate::core::pki::inspect::{self, CertificateFacts};
use crate::core::pki::issue::LSC_VALIDITY_DAYS;
use crate::core::pki::keys;
use crate::core::pki::serial::Serial;
use crate::services::capf::server::{ConnectionReport, Timeouts, serve_connection, serve_legacy_connection, tls_acceptor};
use crate::services::capf::session::FailureReason;
use crate::services::capf::{
    AuthError, CapfContext, DeviceDirectory, DeviceRecord, Outcome, RequestedKey, ScheduledOperation, SessionConfig, TrustAnchors,
};
use crate::services::legacy_tls::{LegacyTls, offers_only_legacy_tls};
use crate::validate::Snapshot;

/// What CAPF needs of one phone, or one application or end user CAPF profile (Chapter 11), of the last
/// good build. In a cluster the operator projects it into the CAPF pods' Secret
/// (`controller::projection::project_capf`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Entry {
    /// Whose it is, for messages: `Phone/lobby-7970`, `ApplicationUser/sbc-presence instance presence-1`.
    pub(super) subject: String,
    /// The operation its spec schedules; `None`: No Pending Operation.
    operation: Option<OperationId>,
    auth_mode: CapfAuthenticationMode,
    /// The authentication string, for a phone whose profile authenticates by string.
    string: Option<Zeroizing<String>>,
    /// The profile's key size, else the cluster's `spec.capf.keySize` (Table 5-1, P.6-7).
    key: KeySize,
}

impl Entry {
    pub(super) fn string(&self) -> Option<&str> {
        self.string.as_deref().map(String::as_str)
    }

    fn operation(&self) -> Option<OperationId> {
        self.operation.clone()
    }

    /// The operation with its deadline.
    fn scheduled(&self) -> Option<(OperationId, OffsetDateTime)> {
        let id = self.operation.clone()?;
        let deadline = id.deadline()?;
        Some((id, deadline))
    }

    /// Where its operation stands at `now`, given its record.
    pub(super) fn state(&self, record: &CapfRecord, now: OffsetDateTime) -> records::OperationState {
        records::operation_state_of(self.scheduled(), self.string(), record, now)
    }
}

/// What CAPF takes from a validated snapshot: its phones, by device name, the CAPF profiles of
/// application and end users, by instance ID (Table 11-2), and the cluster's CAPF parameters.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Update {
    phones: BTreeMap<String, Entry>,
    cluster: String,
    validity_years: u8,
    /// `spec.legacyTls: Enabled`: TLS 1.0 and 1.1 for the guide's phones too.
    #[serde(default)]
    legacy_tls: bool,
    /// `spec.capf.manufacturerCaCertificates`, DER: the CAs a MIC may be issued by (Table 5-1).
    #[serde(default)]
    manufacturer_cas: Vec<Vec<u8>>,
}

impl Update {
    /// When an operation of the directory next changes by itself (see [`Capf::next_change`]), given
    /// the records in `state`: the operator requeues for it.
    pub fn next_change(&self, state: &StateDir, now: OffsetDateTime) -> Option<OffsetDateTime> {
        next_change(&self.phones, state, now)
    }

    /// How many phones CAPF may enroll.
    pub fn len(&self) -> usize {
        self.phones.len()
    }

    pub fn is_empty(&self) -> bool {
        self.phones.is_empty()
    }

    /// The device names of the phones whose spec schedules an operation: those CAPF may write a
    /// record for.
    pub fn scheduled_devices(&self) -> impl Iterator<Item = &str> {
        self.phones.iter().filter(|(_, entry)| entry.operation().is_some()).map(|(device, _)| device.as_str())
    }

    pub fn of(snapshot: &Snapshot) -> Update {
        let cluster = snapshot.clusters.values().next();
        let parameters = cluster.map(|c| c.spec.capf()).unwrap_or_default();
        let mut phones = BTreeMap::new();
        for (name, phone) in &snapshot.phones {
            let profile = snapshot.phone_profiles.get(&phone.spec.security_profile_ref).map(|p| &p.spec);
            let auth_mode = profile.map(|p| p.authentication_mode()).unwrap_or_default();
            let string = match phone.spec.capf.as_ref().and_then(|c| c.authentication_string.as_ref()) {
                Some(reference) if auth_mode == CapfAuthenticationMode::ByAuthenticationString => secret_text(snapshot, reference).ok(),
                _ => None,
            };
            let key = profile.and_then(|p| p.key_size).or(parameters.key_size).unwrap_or_default();
            let operation = OperationId::of(phone).map(|(id, _)| id);
            let entry = Entry { subject: format!("Phone/{name}"), operation, auth_mode, string, key };
            phones.insert(phone.spec.device_name(), entry);
        }
        // CTI, JTAPI and TAPI clients enroll by instance ID, by authentication string only (Table 11-2);
        // validation keeps instance IDs apart from each other and from device names.
        let end_users = snapshot.end_users.iter().map(|(name, user)| ("EndUser", name, &user.spec.capf_profiles));
        let application_users = snapshot.application_users.iter().map(|(name, user)| ("ApplicationUser", name, &user.spec.capf_profiles));
        for (kind, name, profiles) in end_users.chain(application_users) {
            for profile in profiles {
                let entry = Entry {
                    subject: format!("{kind}/{name} instance {}", profile.instance_id),
                    operation: OperationId::of_profile(profile).map(|(id, _)| id),
                    auth_mode: CapfAuthenticationMode::ByAuthenticationString,
                    string: profile.authentication_string.as_ref().and_then(|reference| secret_text(snapshot, reference).ok()),
                    key: profile.key_size.or(parameters.key_size).unwrap_or_default(),
                };
                phones.insert(profile.instance_id.clone(), entry);
            }
        }
        Update {
            phones,
            cluster: cluster.and_then(|c| c.metadata.name.clone()).unwrap_or_default(),
            validity_years: parameters.certificate_validity_years(),
            legacy_tls: cluster.is_some_and(|c| c.spec.legacy_tls == Some(LegacyTlsSetting::Enabled)),
            // Validation refused a bundle that does not parse; none configured, no MIC authenticates.
            manufacturer_cas: parameters
                .manufacturer_ca_certificates
                .as_ref()
                .and_then(|reference| snapshot.secrets.get(&reference.name)?.0.get(&reference.key))
                .and_then(|pem| inspect::ca_bundle(pem).ok())
                .unwrap_or_default(),
        }
    }
}

fn next_change(entries: &BTreeMap<String, Entry>, state: &StateDir, now: OffsetDateTime) -> Option<OffsetDateTime> {
    entries
        .iter()
        .filter_map(|(device, entry)| {
            let (_, deadline) = entry.scheduled()?;
            let lockout = records::load(state, device).ok().and_then(|record| record.locked_until(now));
            let margin = time::Duration::seconds(1);
            [Some(deadline), lockout].into_iter().flatten().map(|at| at + margin).filter(|at| *at > now).min()
        })
        .min()
}

/// The device directory of the sessions: the phones of the last good build, with what the state
/// recorded of them.
pub struct Directory {
    pub(super) state: StateDir,
    phones: RwLock<Arc<BTreeMap<String, Entry>>>,
    /// One read-modify-write of a record at a time.
    writing: Mutex<()>,
}

impl Directory {
    pub(super) fn entry(&self, device: &str) -> Option<Entry> {
        self.phones.read().unwrap_or_else(|p| p.into_inner()).get(device).cloned()
    }

    /// `Phone/NAME (SEP<MAC>)`, or the device name alone when no phone has it.
    pub(super) fn who(&self, device: &str) -> String {
        match self.entry(device) {
            Some(entry) => format!("{} ({device})", entry.subject),
            None => device.to_owned(),
        }
    }

    pub(super) fn certificate(&self, device: &str) -> Option<Vec<u8>> {
        let bytes = self.state.read(&devices::certificate_file(device)).ok().flatten()?;
        inspect::certificate_der(&bytes).ok()
    }

    /// Applies `change` to the record of `device` and writes it: one update at a time in this
    /// process, and against other CAPF processes sharing the records, retried on the newest record.
    pub(super) fn update(&self, device: &str, change: impl FnMut(&mut CapfRecord)) {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = records::update(&self.state, device, change) {
            eprintln!("callguard local: CAPF could not record what it did for {}: {e}", self.who(device));
        }
    }

    /// The operation of `device` completed.
    fn complete(&self, device: &str, now: OffsetDateTime, note: Option<CertificateNote>) {
        if let Some(id) = self.entry(device).and_then(|e| e.operation()) {
            self.update(device, |record| record.complete(id.clone(), now, note.clone()));
        }
    }
}

pub(super) fn note_of(der: &[u8]) -> Option<CertificateNote> {
    let facts = CertificateFacts::from_der(der).ok()?;
    Some(CertificateNote { serial: facts.serial.to_hex(), not_after: rfc3339(facts.not_after), sha256: inspect::sha256_hex(der) })
}

impl DeviceDirectory for Directory {
    fn lookup(&self, device_name: &str) -> Option<DeviceRecord> {
        let entry = self.entry(device_name)?;
        // An unreadable record refuses the phone in `admit`, which says why.
        let record = records::load(&self.state, device_name).unwrap_or_default();
        let state = entry.state(&record, OffsetDateTime::now_utc());
        let operation = state.scheduled().map_or(ScheduledOperation::None, |id| ScheduledOperation::from(id.operation));
        Some(DeviceRecord {
            operation,
            auth_mode: entry.auth_mode,
            authentication_string: entry.string().map(str::to_owned),
            key: RequestedKey::Rsa(entry.key),
            current_lsc: self.certificate(device_name),
        })
    }

    fn fresh_serial(&self) -> Serial {
        let issued = identity::issued_serials(&self.state).unwrap_or_default();
        Serial::unique(&mut rand::thread_rng(), &issued).unwrap_or_else(|_| Serial::random(&mut rand::thread_rng()))
    }

    fn admit(&self, device_name: &str, now: OffsetDateTime) -> Result<(), String> {
        let entry = self.entry(device_name).ok_or_else(|| format!("{device_name} is no longer in the manifests"))?;
        let record = records::load(&self.state, device_name)?;
        record.admit(entry.string(), now).map_err(|refusal| format!("{}: {refusal}", entry.subject))
    }

    fn authenticated(&self, device_name: &str, result: Result<(), &AuthError>, now: OffsetDateTime) {
        let Some(entry) = self.entry(device_name) else { return };
        match result {
            Ok(()) => self.update(device_name, |record| record.authenticated(entry.string())),
            Err(AuthError::WrongPassword) => self.update(device_name, |record| {
                if let Some(until) = record.wrong_string(now) {
                    println!(
                        "{} CAPF: {} ({device_name}) is locked out until {}: {} consecutive wrong authentication strings (P.16-6)",
                        crate::adapters::clock(),
                        entry.subject,
                        rfc3339(until),
                        records::LOCKOUT_AFTER
                    );
                }
            }),
            Err(_) => {}
        }
    }

    fn finished(&self, outcome: &Outcome, now: OffsetDateTime) {
        match outcome {
            Outcome::Issued(issued) => {
                let name = devices::certificate_file(&issued.device_name);
                if let Err(e) = self.state.write(&name, certificate_pem(&issued.certificate_der).as_bytes(), Sensitivity::Public) {
                    eprintln!(
                        "callguard local: CAPF issued {} LSC {} but could not keep it: {}: {e}",
                        self.who(&issued.device_name),
                        issued.serial,
                        self.state.path(&name).display()
                    );
                }
                let note =
                    CertificateNote { serial: issued.serial.to_hex(), not_after: rfc3339(issued.not_after), sha256: issued.sha256.clone() };
                self.complete(&issued.device_name, now, Some(note));
            }
            Outcome::Deleted { device_name } => {
                let note = self.certificate(device_name).as_deref().and_then(note_of);
                let name = devices::certificate_file(device_name);
                if let Err(e) = self.state.remove(&name) {
                    eprintln!(
                        "callguard local: CAPF: {} deleted its LSC, but {} stays: {e}",
                        self.who(device_name),
                        self.state.path(&name).display()
                    );
                }
                self.complete(device_name, now, note);
            }
            Outcome::Fetched { device_name, certificate, .. } => {
                let note = certificate.as_ref().and_then(|c| note_of(&c.der));
                self.complete(device_name, now, note);
            }
            Outcome::Failed { device_name: Some(device_name), reason } => match reason {
                // Nothing to record of a phone that is not known, or was refused before it was heard.
                FailureReason::UnknownDevice | FailureReason::Refused(_) => {}
                reason => {
                    if let Some(id) = self.entry(device_name).and_then(|e| e.operation()) {
                        self.update(device_name, |record| record.fail(id.clone(), now, reason.to_string()));
                    }
                }
            },
            Outcome::Failed { device_name: None, .. } | Outcome::NothingScheduled { .. } => {}
        }
    }
}

/// How connections are taken: TLS 1.2 and 1.3 by rustls, TLS 1.0 and 1.1 by OpenSSL when the
/// cluster asks for it, and the session context.
#[derive(Clone)]
struct Listening {
    acceptor: TlsAcceptor,
    legacy: Option<LegacyTls>,
    context: Arc<CapfContext>,
}

/// The CAPF service of `local`: the listener's address, the directory, and the TLS acceptor and
/// session context of the last good build, which a rebuild replaces without touching sessions in
/// flight.
pub struct Capf {
    address: SocketAddr,
    pub(super) directory: Arc<Directory>,
    current: RwLock<Option<Listening>>,
    /// What EST serves with, from the same build (`adapters::capf::est`).
    pub(super) est: RwLock<Option<Arc<est::EstIdentity>>>,
    /// What was last said about the LSC lifetime, so that it is said once.
    noted: Mutex<String>,
}

impl Capf {
    /// Whether EST has an identity to serve with.
    pub fn est_ready(&self) -> bool {
        self.est.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `state` is the served namespace's.
    pub fn new(address: SocketAddr, state: StateDir) -> Capf {
        let directory = Directory { state, phones: RwLock::default(), writing: Mutex::new(()) };
        Capf {
            address,
            directory: Arc::new(directory),
            current: RwLock::new(None),
            est: RwLock::new(None),
            noted: Mutex::new(String::new()),
        }
    }

    /// Follows a good build: its phones, and its CAPF identity. Returns how it serves, for the line
    /// `local` prints; `None` when the build has no CAPF identity (the cluster stopped running CAPF),
    /// and then connections are closed at once.
    pub fn follow(&self, update: Update, identity: Option<&CapfIdentity>) -> Result<Option<String>, String> {
        let Update { phones, cluster, validity_years, legacy_tls, manufacturer_cas } = update;
        *self.directory.phones.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(phones);
        let Some(identity) = identity else {
            *self.current.write().unwrap_or_else(|p| p.into_inner()) = None;
            *self.est.write().unwrap_or_else(|p| p.into_inner()) = None;
            return Ok(None);
        };
        let days = self.validity_days(&cluster, validity_years, identity)?;
        let certificate = &identity.certificate;
        let acceptor = tls_acceptor(std::slice::from_ref(&certificate.certificate_der), &keys::pkcs8_der(&certificate.key))
            .map_err(|e| format!("CAPF: {e}"))?;
        let context = CapfContext {
            ca: identity.ca.clone(),
            // Without `spec.capf.manufacturerCaCertificates` no MIC authenticates: phones do so by
            // string, null string, or an LSC of this CA.
            trust: TrustAnchors {
                mic_bundle: manufacturer_cas,
                previous_cluster_ca: identity.previous_ca.clone(),
                ..TrustAnchors::default()
            },
            directory: self.directory.clone(),
            config: SessionConfig { lsc_validity_days: days, ..SessionConfig::default() },
        };
        let est = est::EstIdentity::of(identity, days)?;
        let legacy = legacy_tls
            .then(|| LegacyTls::new(&certificate.certificate_der, &keys::pkcs8_der(&certificate.key)))
            .transpose()
            .map_err(|e| format!("CAPF: {e}"))?;
        let versions = if legacy.is_some() { "TLS 1.0 to 1.3 (spec.legacyTls: Enabled)" } else { "TLS 1.2 or 1.3" };
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Listening { acceptor, legacy, context: Arc::new(context) });
        *self.est.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(est));
        Ok(Some(format!(
            "serving CAPF on {}: {versions} with the CAPF certificate of node {} ({}); LSCs signed by the cluster CA, valid {days} days",
            self.address, certificate.node, certificate.hostname
        )))
    }

    /// When a phone's operation next changes by itself, so that its status can follow: a deadline
    /// passing (Expired, Table 6-2) or a lockout ending (P.16-6); a second after, so that the build
    /// that follows sees it past.
    pub fn next_change(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let phones = self.directory.phones.read().unwrap_or_else(|p| p.into_inner()).clone();
        next_change(&phones, &self.directory.state, now)
    }

    /// `spec.capf.certificateValidityYears` in days, within the ten years an LSC may live
    /// (docs/wire-formats.md §7.8) and the CA's own lifetime; saying so when it is cut.
    fn validity_days(&self, cluster: &str, years: u8, identity: &CapfIdentity) -> Result<u32, String> {
        let asked = u32::from(years) * 365;
        let ca_end = identity.ca.facts().map_err(|e| format!("the cluster CA: {e}"))?.not_after;
        let ca_days = u32::try_from((ca_end - OffsetDateTime::now_utc()).whole_days() - 1).unwrap_or(0);
        let days = asked.min(*LSC_VALIDITY_DAYS.end()).min(ca_days);
        if days < *LSC_VALIDITY_DAYS.start() {
            return Err(format!("CAPF: the cluster CA expires on {}: no LSC can be issued under it", rfc3339(ca_end)));
        }
        let note = if asked > *LSC_VALIDITY_DAYS.end() && days == *LSC_VALIDITY_DAYS.end() {
            format!(
                "CallControlCluster/{cluster}: spec.capf.certificateValidityYears: {years} years is more than the {} days an LSC may live (docs/wire-formats.md §7.8): LSCs are issued for {days} days",
                LSC_VALIDITY_DAYS.end()
            )
        } else if days < asked {
            format!(
                "CallControlCluster/{cluster}: spec.capf.certificateValidityYears: {years} years would outlive the cluster CA ({}): LSCs are issued for {days} days",
                rfc3339(ca_end)
            )
        } else {
            String::new()
        };
        let mut noted = self.noted.lock().unwrap_or_else(|p| p.into_inner());
        if !note.is_empty() && *noted != note {
            println!("{note}");
        }
        *noted = note;
        Ok(days)
    }

    /// Accepts connections until `stop`; one task per connection, each ending in one line.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        while let Some((tcp, peer)) = crate::ops::accept::next_connection(&listener, &mut stop, "CAPF").await {
            let current = self.current.read().unwrap_or_else(|p| p.into_inner()).clone();
            let Some(Listening { acceptor, legacy, context }) = current else { continue };
            let capf = self.clone();
            tokio::spawn(async move {
                let timeouts = Timeouts::default();
                let report = match legacy {
                    Some(legacy) if offers_only_legacy_tls(&tcp, timeouts.handshake).await => {
                        serve_legacy_connection(tcp, Some(peer), &legacy, context, &timeouts).await
                    }
                    _ => serve_connection(tcp, Some(peer), &acceptor, context, &timeouts).await,
                };
                capf.say(report);
            });
        }
    }

    /// One line per session; never a string, a key or a certificate.
    fn say(&self, report: ConnectionReport) {
        let (peer, outcome) = match report {
            ConnectionReport::HandshakeFailed { peer, error } => {
                tracing::info!(peer = ?peer, %error, "CAPF TLS handshake failed");
                return;
            }
            ConnectionReport::Session { peer, outcome, .. } => (peer, outcome),
        };
        let directory = &self.directory;
        let line = match &outcome {
            Outcome::Issued(issued) => format!(
                "{}: {} completed: {} LSC serial {}, valid until {}",
                directory.who(&issued.device_name),
                CertificateOperation::InstallUpgrade.label(),
                if issued.upgrade { "upgraded to" } else { "installed" },
                issued.serial,
                rfc3339(issued.not_after)
            ),
            Outcome::Deleted { device_name } => {
                format!("{}: {} completed: the phone deleted its LSC", directory.who(device_name), CertificateOperation::Delete.label())
            }
            Outcome::Fetched { device_name, reason, certificate } => format!(
                "{}: {} completed: the phone returned {} (REASON {})",
                directory.who(device_name),
                CertificateOperation::Troubleshoot.label(),
                certificate
                    .as_ref()
                    .and_then(|c| note_of(&c.der))
                    .map_or("no certificate".into(), |n| format!("certificate serial {}", n.serial)),
                reason.code()
            ),
            Outcome::NothingScheduled { device_name } => format!("{}: nothing scheduled", directory.who(device_name)),
            Outcome::Failed { device_name: Some(device_name), reason } => format!("{}: failed: {reason}", directory.who(device_name)),
            Outcome::Failed { device_name: None, reason } => format!("failed: {reason}"),
        };
        let peer = peer.map(|p| p.to_string()).unwrap_or_default();
        println!("{} CAPF {peer}: {line}", crate::adapters::clock());
    }
}
