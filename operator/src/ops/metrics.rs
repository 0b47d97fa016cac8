//! The operator's Prometheus metrics, encoded in the OpenMetrics text format.
//!
//! Reconciles are counted and timed by kind; failures carry the error's category as `reason`, never a
//! message (messages can name objects and would make the series unbounded). Certificate expiry and the
//! TFTP server's counters are read at scrape time, so nothing is copied or counted twice. No label ever
//! carries secret material (docs/architecture.md §8).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use time::OffsetDateTime;

use crate::services::tftp::server::{Counters, FailureKind};

/// The content type of `Metrics::encode`'s output, for the `/metrics` response.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the reconcile-duration buckets, in seconds: 1 ms to 60 s, roughly ×2.5 apart.
pub const RECONCILE_DURATION_BUCKETS: [f64; 15] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// The custom resource kinds a controller reconciles; the label value is the CRD's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    CallControlCluster,
    SecurityToken,
    PhoneSecurityProfile,
    Phone,
    SipTrunkSecurityProfile,
    SipTrunk,
    SrstReference,
    H323Gateway,
    MgcpGateway,
    EndUser,
    ApplicationUser,
    SipRealm,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Self::CallControlCluster,
        Self::SecurityToken,
        Self::PhoneSecurityProfile,
        Self::Phone,
        Self::SipTrunkSecurityProfile,
        Self::SipTrunk,
        Self::SrstReference,
        Self::H323Gateway,
        Self::MgcpGateway,
        Self::EndUser,
        Self::ApplicationUser,
        Self::SipRealm,
    ];

    /// The CRD kind name, as in `kind:` of a manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CallControlCluster => "CallControlCluster",
            Self::SecurityToken => "SecurityToken",
            Self::PhoneSecurityProfile => "PhoneSecurityProfile",
            Self::Phone => "Phone",
            Self::SipTrunkSecurityProfile => "SipTrunkSecurityProfile",
            Self::SipTrunk => "SipTrunk",
            Self::SrstReference => "SrstReference",
            Self::H323Gateway => "H323Gateway",
            Self::MgcpGateway => "MgcpGateway",
            Self::EndUser => "EndUser",
            Self::ApplicationUser => "ApplicationUser",
            Self::SipRealm => "SipRealm",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EncodeLabelValue for Kind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

/// One step of a cluster's reconcile (docs/architecture.md §1), for the time and memory each takes.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ReconcileStep {
    Dereference,
    Validate,
    Build,
    Desired,
    Apply,
    Status,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    step: ReconcileStep,
}

/// The process's resident memory now (`VmRSS` of `/proc/self/status`), in bytes; 0 where it
/// cannot be read.
pub fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status.lines().find_map(|line| line.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok());
    kib.unwrap_or(0) * 1024
}

/// How one reconcile ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    Success,
    /// The reconcile ran to its end but stopped short of applying, waiting for a change (the
    /// `Stalled` condition's reason): not a failure to retry, not a success either.
    Stalled {
        reason: &'a str,
    },
    /// `reason` is the error's category (a short fixed word such as `Conflict` or `InvalidSpec`), not
    /// its message: it becomes a label value, and every distinct value is a new series.
    Failure {
        reason: &'a str,
    },
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: Kind,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: Kind,
    reason: String,
}

/// One of the operator's watches: the kind it watches and in which namespace ("" for all).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatchLabels {
    resource: String,
    namespace: String,
}

/// Identifies one certificate of one cluster in the expiry gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct CertificateLabels {
    pub namespace: String,
    pub cluster: String,
    /// Which certificate of the cluster, e.g. `ca`, `tftp`, `capf`.
    pub certificate: String,
}

impl CertificateLabels {
    pub fn new(namespace: &str, cluster: &str, certificate: &str) -> Self {
        Self { namespace: namespace.to_owned(), cluster: cluster.to_owned(), certificate: certificate.to_owned() }
    }
}

/// The expiry gauge is a collector over a map rather than a `Family` because a whole cluster's series
/// must be removable at once, and `Family` can only remove one label set it is told.
#[derive(Debug, Default)]
struct CertificateExpiries {
    not_after_by_certificate: Mutex<BTreeMap<CertificateLabels, i64>>,
}

impl CertificateExpiries {
    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<CertificateLabels, i64>> {
        // A panic elsewhere while holding the lock leaves a map that is still consistent.
        self.not_after_by_certificate.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Collector for CertificateExpiries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let entries = self.entries();
        if entries.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "certificate_expiry_timestamp",
            "End of validity (notAfter) of a certificate the operator issued, in Unix seconds.",
            Some(&Unit::Seconds),
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (labels, not_after) in entries.iter() {
            ConstGauge::new(*not_after).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TftpFailureLabels {
    kind: &'static str,
}

/// The label value of a TFTP failure kind. The match is exhaustive so that a new kind cannot be
/// added to the server without choosing its label here.
fn tftp_failure_label(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Malformed => "malformed",
        FailureKind::AccessViolation => "access_violation",
        FailureKind::WriteRefused => "write_refused",
        FailureKind::FileNotFound => "file_not_found",
        FailureKind::ClientLimit => "client_limit",
        FailureKind::ServerLimit => "server_limit",
        FailureKind::TimedOut => "timed_out",
        FailureKind::Deadline => "deadline",
        FailureKind::ClientAborted => "client_aborted",
        FailureKind::UnknownTransferId => "unknown_transfer_id",
        FailureKind::Superseded => "superseded",
        FailureKind::ReplyDropped => "reply_dropped",
        FailureKind::Io => "io",
    }
}

/// Reads a running TFTP server's counters at scrape time.
#[derive(Debug)]
struct TftpCollector {
    counters: Arc<Counters>,
}

impl TftpCollector {
    fn encode_counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
        let counter = ConstCounter::new(value);
        let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
        counter.encode(metric)
    }
}

impl Collector for TftpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let snapshot = self.counters.snapshot();
        Self::encode_counter(&mut encoder, "tftp_requests", "Well-formed TFTP read and write requests received.", snapshot.requests)?;
        Self::encode_counter(
            &mut encoder,
            "tftp_files_served",
            "TFTP transfers whose last block the client acknowledged.",
            snapshot.files_served,
        )?;
        Self::encode_counter(
            &mut encoder,
            "tftp_bytes_sent",
            "TFTP DATA payload bytes sent, retransmissions included.",
            snapshot.bytes_sent,
        )?;
        Self::encode_counter(
            &mut encoder,
            "tftp_retransmissions",
            "TFTP DATA and OACK packets sent again after a timeout.",
            snapshot.retransmissions,
        )?;
        let mut family = encoder.encode_descriptor(
            "tftp_errors",
            "TFTP requests refused and transfers that failed, by kind.",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for kind in FailureKind::ALL {
            let labels = TftpFailureLabels { kind: tftp_failure_label(kind) };
            ConstCounter::new(snapshot.failures_of(kind)).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The signaling service's counters and bindings, read at each scrape.
struct SipCollector {
    service: Arc<crate::services::sip::server::SipService>,
}

impl fmt::Debug for SipCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SipCollector")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SecurityLabels {
    security: &'static str,
}

impl Collector for SipCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        use std::sync::atomic::Ordering::Relaxed;
        let counters = &self.service.counters;
        for (name, help, value) in [
            ("sip_registrations", "REGISTER requests answered 200.", counters.registrations.load(Relaxed)),
            ("sip_challenges", "Digest challenges (401) sent.", counters.challenges.load(Relaxed)),
            ("sip_refusals", "Requests refused (4xx other than challenges, 5xx).", counters.refusals.load(Relaxed)),
            (
                "sip_overloaded",
                "Requests answered 503 with Retry-After because too many were in flight.",
                counters.overloaded.load(Relaxed),
            ),
        ] {
            TftpCollector::encode_counter(&mut encoder, name, help, value)?;
        }
        let mut family = encoder.encode_descriptor(
            "sip_calls",
            "Answered calls by their security, the lower of the two ends.",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (security, value) in [
            ("encrypted", counters.calls_encrypted.load(Relaxed)),
            ("authenticated", counters.calls_authenticated.load(Relaxed)),
            ("non_secure", counters.calls_non_secure.load(Relaxed)),
        ] {
            ConstCounter::new(value).encode(family.encode_family(&SecurityLabels { security })?)?;
        }
        let bindings = ConstGauge::new(i64::try_from(self.service.registrar().len()).unwrap_or(i64::MAX));
        let metric = encoder.encode_descriptor("sip_bindings", "Lines registered now.", None, bindings.metric_type())?;
        bindings.encode(metric)
    }
}

/// The media relay's counters by security class, and its calls and free port pairs now.
struct MediaCollector {
    relay: Arc<crate::services::media::relay::MediaRelay>,
}

impl fmt::Debug for MediaCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MediaCollector")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MediaDropLabels {
    security: &'static str,
    reason: &'static str,
}

impl Collector for MediaCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        use crate::services::media::relay::ClassCounters;
        use prometheus_client::metrics::MetricType;
        use std::sync::atomic::Ordering::Relaxed;
        let counters = &self.relay.counters;
        let classes = [("encrypted", &counters.encrypted), ("unencrypted", &counters.unencrypted)];
        type Read = fn(&ClassCounters) -> u64;
        let by_class: [(&str, &str, Read); 3] = [
            ("media_calls", "Calls given media legs, by security class (encrypted: SRTP only).", |c| c.calls.load(Relaxed)),
            ("media_packets", "RTP and RTCP packets relayed, by security class.", |c| c.packets.load(Relaxed)),
            ("media_bytes", "Bytes relayed, by security class.", |c| c.bytes.load(Relaxed)),
        ];
        for (name, help, read) in by_class {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (security, class) in classes {
                ConstCounter::new(read(class)).encode(family.encode_family(&SecurityLabels { security })?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "media_dropped",
            "Packets not relayed, by security class and reason: not_srtp (plain RTP, or SRTP under another key, on an encrypted call), foreign (not from the leg's end), no_destination (the other end unknown yet), full (the send buffer).",
            None,
            MetricType::Counter,
        )?;
        for (security, class) in classes {
            for (reason, value) in [
                ("not_srtp", class.dropped_not_srtp.load(Relaxed)),
                ("foreign", class.dropped_foreign.load(Relaxed)),
                ("no_destination", class.dropped_no_destination.load(Relaxed)),
                ("full", class.dropped_full.load(Relaxed)),
            ] {
                ConstCounter::new(value).encode(family.encode_family(&MediaDropLabels { security, reason })?)?;
            }
        }
        for (name, help, value) in [
            (
                "media_calls_timed_out",
                "Calls released because no packet came for the inactivity time.",
                counters.calls_timed_out.load(Relaxed),
            ),
            ("media_refused_exhausted", "Calls refused because no port pair was free.", counters.refused_exhausted.load(Relaxed)),
        ] {
            TftpCollector::encode_counter(&mut encoder, name, help, value)?;
        }
        for (name, help, value) in [
            ("media_calls_active", "Calls holding legs now.", self.relay.calls()),
            ("media_free_pairs", "Port pairs free now.", self.relay.free_pairs()),
        ] {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// All of the operator's metrics and the registry that encodes them. Build it, register the optional
/// parts (`register_tftp`), then share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<KindLabels, Counter>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_stalls: Family<ErrorLabels, Counter>,
    reconcile_duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    certificate_expiries: Arc<CertificateExpiries>,
    leader: Gauge<i64, AtomicI64>,
    watch_failing: Family<WatchLabels, Gauge<i64, AtomicI64>>,
    watch_errors: Family<WatchLabels, Counter>,
    reconciles_in_flight: Gauge<i64, AtomicI64>,
    step_duration: Family<StepLabels, Histogram, fn() -> Histogram>,
    step_resident: Family<StepLabels, Gauge<i64, AtomicI64>>,
}

fn reconcile_duration_histogram() -> Histogram {
    Histogram::new(RECONCILE_DURATION_BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        // The registry ends each help text with a period itself; collectors write theirs whole.
        let mut registry = Registry::with_prefix("callguard");
        let reconciles = Family::<KindLabels, Counter>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_stalls = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(reconcile_duration_histogram);
        let certificate_expiries = Arc::new(CertificateExpiries::default());
        let leader = Gauge::<i64, AtomicI64>::default();

        registry.register("reconciles", "Reconciles run, by kind", reconciles.clone());
        registry.register("reconcile_errors", "Reconciles that failed, by kind and error category", reconcile_errors.clone());
        registry.register(
            "reconcile_stalls",
            "Reconciles that stopped short of applying until a change, by kind and the Stalled reason",
            reconcile_stalls.clone(),
        );
        registry.register_with_unit("reconcile_duration", "Time one reconcile took, by kind", Unit::Seconds, reconcile_duration.clone());
        registry.register_collector(Box::new(certificate_expiries.clone()));
        registry.register("leader", "1 while this instance holds the leader Lease, else 0", leader.clone());
        let watch_failing = Family::<WatchLabels, Gauge<i64, AtomicI64>>::default();
        let watch_errors = Family::<WatchLabels, Counter>::default();
        registry.register("watch_failing", "1 while the watch of a kind fails (its errors back off alone), else 0", watch_failing.clone());
        registry.register("watch_errors", "Errors of the watch of a kind", watch_errors.clone());
        let reconciles_in_flight = Gauge::<i64, AtomicI64>::default();
        registry.register("reconciles_in_flight", "Reconciles running now", reconciles_in_flight.clone());
        let step_duration = Family::<StepLabels, Histogram, fn() -> Histogram>::new_with_constructor(reconcile_duration_histogram);
        registry.register_with_unit(
            "reconcile_step_duration",
            "Time one step of a cluster's reconcile took: dereference, validate, build, desired, apply, status",
            Unit::Seconds,
            step_duration.clone(),
        );
        let step_resident = Family::<StepLabels, Gauge<i64, AtomicI64>>::default();
        registry.register_with_unit(
            "reconcile_step_resident",
            "The operator's resident memory at the end of the last run of each reconcile step",
            Unit::Bytes,
            step_resident.clone(),
        );

        // Every kind's series exists from the start, so that rate() sees the first reconcile.
        for kind in Kind::ALL {
            reconciles.get_or_create_owned(&KindLabels { kind });
            reconcile_duration.get_or_create_owned(&KindLabels { kind });
        }
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_stalls,
            reconcile_duration,
            certificate_expiries,
            leader,
            watch_failing,
            watch_errors,
            reconciles_in_flight,
            step_duration,
            step_resident,
        }
    }

    /// Records that `step` of a reconcile took `elapsed`, and the resident memory after it.
    pub fn observe_step(&self, step: ReconcileStep, elapsed: Duration) {
        let labels = StepLabels { step };
        self.step_duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
        self.step_resident.get_or_create(&labels).set(i64::try_from(resident_bytes()).unwrap_or(i64::MAX));
    }

    /// Exposes a TFTP server's counters (from `TftpServer::counters`), read at each scrape.
    pub fn register_tftp(&mut self, counters: Arc<Counters>) {
        self.registry.register_collector(Box::new(TftpCollector { counters }));
    }

    /// Exposes a SIP service's counters and the number of lines it holds bindings for.
    pub fn register_sip(&mut self, service: Arc<crate::services::sip::server::SipService>) {
        self.registry.register_collector(Box::new(SipCollector { service }));
    }

    /// Exposes a media relay's counters, calls and free port pairs.
    pub fn register_media(&mut self, relay: Arc<crate::services::media::relay::MediaRelay>) {
        self.registry.register_collector(Box::new(MediaCollector { relay }));
    }

    /// Records one reconcile of `kind` that took `elapsed` and ended with `outcome`.
    pub fn observe_reconcile(&self, kind: Kind, elapsed: Duration, outcome: Outcome<'_>) {
        let labels = KindLabels { kind };
        self.reconciles.get_or_create(&labels).inc();
        self.reconcile_duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
        match outcome {
            Outcome::Failure { reason } => self.reconcile_errors.get_or_create(&ErrorLabels { kind, reason: reason.to_owned() }).inc(),
            Outcome::Stalled { reason } => self.reconcile_stalls.get_or_create(&ErrorLabels { kind, reason: reason.to_owned() }).inc(),
            Outcome::Success => 0,
        };
    }

    /// Starts timing a reconcile; `ReconcileTimer::finish` records it.
    pub fn start_reconcile(&self, kind: Kind) -> ReconcileTimer<'_> {
        self.reconciles_in_flight.inc();
        ReconcileTimer { metrics: self, kind, started: Instant::now() }
    }

    /// Sets (or moves) the expiry of one certificate of a cluster.
    pub fn set_certificate_expiry(&self, certificate: CertificateLabels, not_after: OffsetDateTime) {
        self.certificate_expiries.entries().insert(certificate, not_after.unix_timestamp());
    }

    /// Removes one certificate's expiry series; returns whether it existed.
    pub fn remove_certificate_expiry(&self, certificate: &CertificateLabels) -> bool {
        self.certificate_expiries.entries().remove(certificate).is_some()
    }

    /// Removes every certificate series of a cluster (the cluster was deleted); returns how many.
    pub fn remove_cluster_certificates(&self, namespace: &str, cluster: &str) -> usize {
        let mut entries = self.certificate_expiries.entries();
        let before = entries.len();
        entries.retain(|labels, _| !(labels.namespace == namespace && labels.cluster == cluster));
        before - entries.len()
    }

    /// Sets `callguard_leader` to 1 or 0.
    pub fn set_leader(&self, is_leader: bool) {
        self.leader.set(i64::from(is_leader));
    }

    /// Sets `callguard_watch_failing` of the watch of `resource` in `namespace` ("" for all), and
    /// counts the error when it failed.
    pub fn set_watch_failing(&self, resource: &str, namespace: &str, failing: bool) {
        let labels = WatchLabels { resource: resource.to_owned(), namespace: namespace.to_owned() };
        if failing {
            self.watch_errors.get_or_create(&labels).inc();
        }
        self.watch_failing.get_or_create(&labels).set(i64::from(failing));
    }

    /// The registry in the OpenMetrics text format (`OPENMETRICS_CONTENT_TYPE`).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail, and our collectors only fail when the writer does; should
        // one fail anyway, the text lacks its `# EOF` line and the scraper rejects it, which is honest.
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(%error, "encoding the metrics failed");
        }
        text
    }
}

/// Times one reconcile. `finish` records it; a timer dropped without `finish` (the reconcile future
/// was cancelled, e.g. at shutdown) records nothing, since the reconcile neither succeeded nor failed.
#[derive(Debug)]
#[must_use = "a reconcile is recorded only by `finish`"]
pub struct ReconcileTimer<'m> {
    metrics: &'m Metrics,
    kind: Kind,
    started: Instant,
}

impl ReconcileTimer<'_> {
    pub fn finish(self, outcome: Outcome<'_>) {
        self.metrics.observe_reconcile(self.kind, self.started.elapsed(), outcome);
    }
}

impl Drop for ReconcileTimer<'_> {
    /// Finished or cancelled, the reconcile is no longer running.
    fn drop(&mut self) {
        self.metrics.reconciles_in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;

    /// The value of the one sample line that starts with `series` (name and labels), if any.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).and_then(|value| value.parse().ok()))
    }

    #[test]
    fn kind_names_are_the_crd_kinds() {
        use crate::api::*;
        let crd_kinds = [
            CallControlCluster::kind(&()),
            SecurityToken::kind(&()),
            PhoneSecurityProfile::kind(&()),
            Phone::kind(&()),
            SipTrunkSecurityProfile::kind(&()),
            SipTrunk::kind(&()),
            SrstReference::kind(&()),
            H323Gateway::kind(&()),
            MgcpGateway::kind(&()),
            EndUser::kind(&()),
            ApplicationUser::kind(&()),
            SipRealm::kind(&()),
        ];
        let ours: Vec<&str> = Kind::ALL.iter().map(|kind| kind.as_str()).collect();
        assert_eq!(ours, crd_kinds.iter().map(|kind| kind.as_ref()).collect::<Vec<&str>>());
    }

    #[test]
    fn every_kind_starts_at_zero_and_the_text_is_openmetrics() {
        let text = Metrics::new().encode();
        for kind in Kind::ALL {
            assert_eq!(sample(&text, &format!("callguard_reconciles_total{{kind=\"{kind}\"}}")), Some(0.0), "{text}");
        }
        assert!(text.contains("# TYPE callguard_reconcile_duration_seconds histogram"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# HELP callguard_reconciles Reconciles run, by kind.\n"), "one period: {text}");
        assert_eq!(sample(&text, "callguard_leader"), Some(0.0), "{text}");
    }

    #[test]
    fn observe_counts_times_and_labels_failures_by_reason() {
        let metrics = Metrics::new();
        metrics.observe_reconcile(Kind::Phone, Duration::from_millis(3), Outcome::Success);
        metrics.observe_reconcile(Kind::Phone, Duration::from_millis(40), Outcome::Failure { reason: "Conflict" });
        metrics.start_reconcile(Kind::CallControlCluster).finish(Outcome::Failure { reason: "InvalidSpec" });
        let text = metrics.encode();

        assert_eq!(sample(&text, "callguard_reconciles_total{kind=\"Phone\"}"), Some(2.0), "{text}");
        assert_eq!(sample(&text, "callguard_reconciles_total{kind=\"CallControlCluster\"}"), Some(1.0), "{text}");
        assert_eq!(sample(&text, "callguard_reconcile_errors_total{kind=\"Phone\",reason=\"Conflict\"}"), Some(1.0), "{text}");
        assert_eq!(
            sample(&text, "callguard_reconcile_errors_total{kind=\"CallControlCluster\",reason=\"InvalidSpec\"}"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(sample(&text, "callguard_reconcile_duration_seconds_count{kind=\"Phone\"}"), Some(2.0), "{text}");
        // 3 ms falls in the 5 ms bucket, 40 ms does not; both fall in the 50 ms bucket.
        assert_eq!(sample(&text, "callguard_reconcile_duration_seconds_bucket{le=\"0.005\",kind=\"Phone\"}"), Some(1.0), "{text}");
        assert_eq!(sample(&text, "callguard_reconcile_duration_seconds_bucket{le=\"0.05\",kind=\"Phone\"}"), Some(2.0), "{text}");
        let sum = sample(&text, "callguard_reconcile_duration_seconds_sum{kind=\"Phone\"}").expect("sum line");
        assert!((sum - 0.043).abs() < 1e-9, "{sum}");
    }

    /// A stalled reconcile is neither a success nor an error to retry: it counts under its reason.
    #[test]
    fn a_stall_is_counted_by_its_reason_and_not_as_an_error() {
        let metrics = Metrics::new();
        metrics.start_reconcile(Kind::CallControlCluster).finish(Outcome::Stalled { reason: "InvalidConfiguration" });
        let text = metrics.encode();
        assert_eq!(sample(&text, "callguard_reconciles_total{kind=\"CallControlCluster\"}"), Some(1.0), "{text}");
        let series = "callguard_reconcile_stalls_total{kind=\"CallControlCluster\",reason=\"InvalidConfiguration\"}";
        assert_eq!(sample(&text, series), Some(1.0), "{text}");
        assert!(!text.contains("callguard_reconcile_errors_total{"), "no error: {text}");
    }

    #[test]
    fn a_dropped_timer_records_nothing() {
        let metrics = Metrics::new();
        drop(metrics.start_reconcile(Kind::SipTrunk));
        assert_eq!(sample(&metrics.encode(), "callguard_reconciles_total{kind=\"SipTrunk\"}"), Some(0.0));
    }

    #[test]
    fn certificate_expiry_series_are_set_moved_and_removed() {
        let metrics = Metrics::new();
        let ca = CertificateLabels::new("voice", "cucm", "ca");
        let tftp = CertificateLabels::new("voice", "cucm", "tftp");
        let other = CertificateLabels::new("voice", "lab", "ca");
        let at = |unix: i64| OffsetDateTime::from_unix_timestamp(unix).expect("valid timestamp");
        metrics.set_certificate_expiry(ca.clone(), at(1_900_000_000));
        metrics.set_certificate_expiry(ca.clone(), at(1_950_000_000));
        metrics.set_certificate_expiry(tftp.clone(), at(1_800_000_000));
        metrics.set_certificate_expiry(other.clone(), at(1_700_000_000));

        let series = |labels: &CertificateLabels| {
            format!(
                "callguard_certificate_expiry_timestamp_seconds{{namespace=\"{}\",cluster=\"{}\",certificate=\"{}\"}}",
                labels.namespace, labels.cluster, labels.certificate
            )
        };
        let text = metrics.encode();
        assert!(text.contains("# UNIT callguard_certificate_expiry_timestamp_seconds seconds"), "{text}");
        assert_eq!(sample(&text, &series(&ca)), Some(1_950_000_000.0), "{text}");
        assert_eq!(sample(&text, &series(&tftp)), Some(1_800_000_000.0), "{text}");

        assert!(metrics.remove_certificate_expiry(&tftp));
        assert!(!metrics.remove_certificate_expiry(&tftp));
        let text = metrics.encode();
        assert_eq!(sample(&text, &series(&tftp)), None, "{text}");
        assert_eq!(sample(&text, &series(&ca)), Some(1_950_000_000.0), "{text}");

        assert_eq!(metrics.remove_cluster_certificates("voice", "cucm"), 1);
        let text = metrics.encode();
        assert_eq!(sample(&text, &series(&ca)), None, "{text}");
        assert_eq!(sample(&text, &series(&other)), Some(1_700_000_000.0), "{text}");

        assert_eq!(metrics.remove_cluster_certificates("voice", "lab"), 1);
        assert!(!metrics.encode().contains("certificate_expiry"));
    }

    #[test]
    fn leader_gauge_follows_set_leader() {
        let metrics = Metrics::new();
        metrics.set_leader(true);
        assert_eq!(sample(&metrics.encode(), "callguard_leader"), Some(1.0));
        metrics.set_leader(false);
        assert_eq!(sample(&metrics.encode(), "callguard_leader"), Some(0.0));
    }

    #[tokio::test]
    async fn tftp_collector_reads_the_servers_counters_at_scrape_time() {
        use crate::services::tftp::server::{ServerConfig, TftpServer};
        use crate::services::tftp::source::MemoryFiles;

        let config = ServerConfig { bind: "127.0.0.1:0".parse().expect("address"), ..ServerConfig::default() };
        let server = TftpServer::bind(config, Arc::new(MemoryFiles::new(BTreeMap::new()))).await.expect("bind");
        let address = server.local_addr().expect("address");
        let mut metrics = Metrics::new();
        metrics.register_tftp(server.counters());

        let text = metrics.encode();
        assert_eq!(sample(&text, "callguard_tftp_requests_total"), Some(0.0), "{text}");
        assert_eq!(sample(&text, "callguard_tftp_errors_total{kind=\"file_not_found\"}"), Some(0.0), "{text}");

        let (stop, stopped) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(server.run(stopped));
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("client socket");
        client.send_to(b"\x00\x01missing.cnf.xml\x00octet\x00", address).await.expect("send request");
        let mut reply = [0u8; 516];
        let (len, _) =
            tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut reply)).await.expect("reply in time").expect("recv");
        assert_eq!(&reply[..2], b"\x00\x05", "an ERROR packet: {:?}", &reply[..len]);

        // The same registry, scraped again, sees the request without anything copied in between.
        let text = metrics.encode();
        assert_eq!(sample(&text, "callguard_tftp_requests_total"), Some(1.0), "{text}");
        assert_eq!(sample(&text, "callguard_tftp_errors_total{kind=\"file_not_found\"}"), Some(1.0), "{text}");
        assert_eq!(sample(&text, "callguard_tftp_bytes_sent_total"), Some(0.0), "{text}");
        stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(10), running).await.expect("server stops").expect("join");
    }

    /// Plain RTP on an encrypted call is counted as dropped under its class and reason, and the
    /// relay's calls and free pairs are read at the scrape.
    #[tokio::test]
    async fn media_collector_counts_by_security_class_and_drop_reason() {
        use crate::services::media::relay::{Latching, LegOffer, MediaRelay, RelaySettings, Side};
        use crate::services::media::srtp::{
            parse_crypto_line,
            tests::{KEY_LINE, rtp},
        };
        let bind = std::net::IpAddr::from([127, 0, 0, 1]);
        let settings = RelaySettings {
            bind,
            advertised: bind,
            ports: 31600..=31609,
            inactivity: Duration::from_secs(30),
            latching: Latching::FirstPacket,
        };
        let relay = MediaRelay::new(settings).expect("relay");
        let mut metrics = Metrics::new();
        metrics.register_media(relay.clone());
        let [caller_port, _] = relay.allocate("m1", true).expect("legs");
        let phone = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("phone");
        let key = parse_crypto_line(KEY_LINE).expect("key");
        for side in [Side::Caller, Side::Callee] {
            let offer = LegOffer { address: phone.local_addr().expect("address"), rtcp_mux: false, key: Some(key.clone()) };
            relay.update("m1", side, offer).expect("update");
        }
        phone.send_to(&rtp(1, 7), (bind, caller_port)).await.expect("send");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let dropped = "callguard_media_dropped_total{security=\"encrypted\",reason=\"not_srtp\"}";
        while sample(&metrics.encode(), dropped) != Some(1.0) {
            assert!(std::time::Instant::now() < deadline, "{}", metrics.encode());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let text = metrics.encode();
        assert_eq!(sample(&text, "callguard_media_calls_total{security=\"encrypted\"}"), Some(1.0), "{text}");
        assert_eq!(sample(&text, "callguard_media_packets_total{security=\"encrypted\"}"), Some(0.0), "{text}");
        assert_eq!(sample(&text, "callguard_media_calls_active"), Some(1.0), "{text}");
        assert_eq!(sample(&text, "callguard_media_free_pairs"), Some(3.0), "{text}");
    }
}
