//! Leader election with a `coordination.k8s.io/v1` Lease, so that two operator replicas never write at
//! once.
//!
//! Written here rather than taken from a crate: `kube-leader-election` needs kube 4, and
//! `kube-lease-manager` (kube 5) renews with unconditional patches and detects rivals through
//! server-side-apply field ownership, where this needs a compare-and-swap on `resourceVersion`.
//!
//! The policy is the pure `decide`, and the Lease contents the pure `acquired`, `renewed` and
//! `released`; `LeaderElector` only reads and writes. Every write is a `replace` carrying the
//! `resourceVersion` it read, so of two candidates that read the same Lease, one gets 409 Conflict,
//! reads again, and follows: nobody overwrites another's claim.
//!
//! Timing (the defaults are client-go's): the leader renews every `retry_period`; if it has not renewed
//! for `renew_deadline` it steps down (the controllers must stop writing), which is before the Lease
//! runs out at `renewTime + lease_duration` and a standby may take over. Expiry is judged on the
//! `renewTime` the holder wrote, so the nodes' clocks must agree to within `lease_duration -
//! renew_deadline` (5 s by default).

use std::fmt;
use std::future::Future;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;

pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

/// What a candidate should do with the Lease it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The Lease is absent, released (no holder) or expired: take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds it until `expires_at`: wait.
    Follow { holder: String, expires_at: SystemTime },
}

fn to_system_time(time: &MicroTime) -> SystemTime {
    SystemTime::from(time.0)
}

fn to_micro_time(time: SystemTime) -> MicroTime {
    // Only a time outside years -9999..=9999 fails; the epoch then makes the Lease look expired,
    // which errs towards another candidate taking over, never towards a Lease that never ends.
    MicroTime(Timestamp::try_from(time).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn whole_seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs()).unwrap_or(i32::MAX).max(1)
}

/// When the holder's claim runs out: its last `renewTime` (or `acquireTime` if it never renewed)
/// plus the duration it announced (or `default_duration` if it announced none that is positive).
/// `None` when the Lease has neither time: nothing then shows that its holder is alive.
pub fn expiry(lease: &LeaseSpec, default_duration: Duration) -> Option<SystemTime> {
    let last_claim = lease.renew_time.as_ref().or(lease.acquire_time.as_ref()).map(to_system_time)?;
    let duration = match lease.lease_duration_seconds {
        Some(seconds) if seconds > 0 => Duration::from_secs(seconds.unsigned_abs().into()),
        _ => default_duration,
    };
    Some(last_claim + duration)
}

/// The election policy. `lease` is the Lease's spec as read (`None` when there is no Lease);
/// `lease_duration` stands in for a missing `leaseDurationSeconds`. Another holder's Lease is taken
/// over only once `now` is past its expiry; an empty `holderIdentity` means released, hence free.
pub fn decide(lease: Option<&LeaseSpec>, me: &str, now: SystemTime, lease_duration: Duration) -> Decision {
    let Some(lease) = lease else {
        return Decision::Acquire;
    };
    let holder = lease.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Decision::Acquire;
    }
    if holder == me {
        return Decision::Renew;
    }
    match expiry(lease, lease_duration) {
        Some(expires_at) if now <= expires_at => Decision::Follow { holder: holder.to_owned(), expires_at },
        _ => Decision::Acquire,
    }
}

/// The Lease spec after `me` takes it over from `previous` (`None`: creating the Lease). Fields this
/// module does not manage (`preferredHolder`, `strategy`) are kept; `leaseTransitions` counts the
/// changes of holder, starting at 0 on creation.
pub fn acquired(previous: Option<&LeaseSpec>, me: &str, now: SystemTime, lease_duration: Duration) -> LeaseSpec {
    let lease_transitions = previous.map_or(0, |previous| previous.lease_transitions.unwrap_or(0).saturating_add(1));
    LeaseSpec {
        holder_identity: Some(me.to_owned()),
        acquire_time: Some(to_micro_time(now)),
        renew_time: Some(to_micro_time(now)),
        lease_duration_seconds: Some(whole_seconds(lease_duration)),
        lease_transitions: Some(lease_transitions),
        ..previous.cloned().unwrap_or_default()
    }
}

/// The Lease spec after its holder renews it.
pub fn renewed(previous: &LeaseSpec, now: SystemTime, lease_duration: Duration) -> LeaseSpec {
    LeaseSpec { renew_time: Some(to_micro_time(now)), lease_duration_seconds: Some(whole_seconds(lease_duration)), ..previous.clone() }
}

/// The Lease spec after its holder lets it go at shutdown: no holder, so a standby takes it at once
/// (and an older candidate that ignores the empty holder still sees it expire within a second).
pub fn released(previous: &LeaseSpec, now: SystemTime) -> LeaseSpec {
    LeaseSpec { holder_identity: None, renew_time: Some(to_micro_time(now)), lease_duration_seconds: Some(1), ..previous.clone() }
}

/// How often and for how long leadership is claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimings {
    /// How long a claim lasts after its last renewal; a standby waits this long before taking over.
    pub lease_duration: Duration,
    /// How long the leader goes on without a successful renewal before it steps down.
    pub renew_deadline: Duration,
    /// The pause between attempts, for the leader and for standbys.
    pub retry_period: Duration,
}

impl Default for LeaseTimings {
    fn default() -> Self {
        Self { lease_duration: DEFAULT_LEASE_DURATION, renew_deadline: DEFAULT_RENEW_DEADLINE, retry_period: DEFAULT_RETRY_PERIOD }
    }
}

/// Timings that would let two leaders overlap or never renew in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTimings(LeaseTimings);

impl fmt::Display for InvalidTimings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let LeaseTimings { lease_duration, renew_deadline, retry_period } = self.0;
        write!(
            f,
            "leader election needs lease duration ({lease_duration:?}) > renew deadline ({renew_deadline:?}) > retry period \
             ({retry_period:?}) > 0, and a lease duration of at least one second"
        )
    }
}

impl std::error::Error for InvalidTimings {}

impl LeaseTimings {
    pub fn validate(self) -> Result<Self, InvalidTimings> {
        let ordered = self.lease_duration > self.renew_deadline && self.renew_deadline > self.retry_period && !self.retry_period.is_zero();
        if ordered && self.lease_duration >= Duration::from_secs(1) { Ok(self) } else { Err(InvalidTimings(self)) }
    }
}

/// A unique identity for this process: the pod name (`POD_NAME`, from the downward API) or host name,
/// and a random suffix so that a restarted container is a new candidate, not the old leader.
pub fn default_identity() -> String {
    let host = std::env::var("POD_NAME").or_else(|_| std::env::var("HOSTNAME")).unwrap_or_else(|_| "callguard".to_owned());
    format!("{host}_{:08x}", rand::random::<u32>())
}

/// Resolves once `is_leader` holds `true`; `Err` if the elector is gone.
pub async fn wait_for_leadership(is_leader: &mut watch::Receiver<bool>) -> Result<(), watch::error::RecvError> {
    is_leader.wait_for(|leading| *leading).await.map(|_| ())
}

/// Resolves once `is_leader` holds `false`: the moment to stop writing. `Err` if the elector is gone,
/// which also means: stop writing.
pub async fn leadership_lost(is_leader: &mut watch::Receiver<bool>) -> Result<(), watch::error::RecvError> {
    is_leader.wait_for(|leading| !*leading).await.map(|_| ())
}

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Leader,
    /// `holder` is `None` when a rival's write won a race and we have not read who it is.
    Follower {
        holder: Option<String>,
    },
}

enum Attempt {
    Done(Role),
    /// Someone else wrote the Lease between our read and our write.
    Conflict,
}

fn is_conflict(error: &kube::Error) -> bool {
    // 409 is both "Conflict" (stale resourceVersion) and "AlreadyExists" (a rival created it first).
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

/// Runs the election for one identity on one Lease. The `Api` decides the namespace; any `kube::Client`
/// works, including one over an in-process service (`kube::Client::new`), which is how it is tested.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: LeaseTimings,
    /// The wall clock the Lease's times are written and judged by: `SystemTime::now`, except in tests
    /// that run the elector on tokio's paused clock.
    wall_clock: std::sync::Arc<dyn Fn() -> SystemTime + Send + Sync>,
}

impl fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderElector").field("name", &self.name).field("identity", &self.identity).field("timings", &self.timings).finish()
    }
}

impl LeaderElector {
    /// An elector with the default timings (15 s lease, 10 s renew deadline, 2 s retry period).
    pub fn new(api: Api<Lease>, name: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
            timings: LeaseTimings::default(),
            wall_clock: std::sync::Arc::new(SystemTime::now),
        }
    }

    /// Reads the wall clock from `clock` instead of `SystemTime::now`.
    #[cfg(test)]
    fn with_wall_clock(self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        Self { wall_clock: std::sync::Arc::new(clock), ..self }
    }

    pub fn with_timings(self, timings: LeaseTimings) -> Result<Self, InvalidTimings> {
        Ok(Self { timings: timings.validate()?, ..self })
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Campaigns until `shutdown` resolves, publishing on `is_leader` whether this process may write.
    ///
    /// `is_leader` turns `true` after a successful acquire or renew, and `false` as soon as a rival is
    /// seen holding the Lease or `renew_deadline` passes without a successful renewal. API errors are
    /// logged and retried every `retry_period`; they never end the loop. At shutdown `is_leader` turns
    /// `false` first, then a held Lease is released (one attempt, bounded by `renew_deadline`) so that a
    /// standby takes over at once instead of after `lease_duration`.
    pub async fn run(self, is_leader: watch::Sender<bool>, shutdown: impl Future<Output = ()>) {
        let LeaseTimings { renew_deadline, retry_period, .. } = self.timings;
        let mut shutdown = std::pin::pin!(shutdown);
        // When the last successful claim was sent; `Some` exactly while we lead.
        let mut claimed_at: Option<Instant> = None;
        loop {
            let started = Instant::now();
            // While leading, an attempt that outlives the renew deadline is as good as a failed one.
            let budget = claimed_at.map_or(renew_deadline, |at| (at + renew_deadline).saturating_duration_since(started));
            let attempt = tokio::select! {
                () = &mut shutdown => break,
                attempt = tokio::time::timeout(budget, self.try_acquire_or_renew()) => attempt,
            };
            match attempt {
                Ok(Ok(Role::Leader)) => {
                    if claimed_at.is_none() {
                        tracing::info!(lease = %self.name, identity = %self.identity, "became the leader");
                    }
                    claimed_at = Some(started);
                    is_leader.send_replace(true);
                }
                Ok(Ok(Role::Follower { holder })) => {
                    if claimed_at.take().is_some() {
                        tracing::warn!(lease = %self.name, holder = ?holder, "another instance holds the lease: no longer the leader");
                    }
                    is_leader.send_replace(false);
                }
                Ok(Err(error)) => tracing::warn!(lease = %self.name, %error, "reading or writing the leader lease failed"),
                Err(_) => tracing::warn!(lease = %self.name, ?budget, "the leader lease request did not finish in time"),
            }
            if let Some(at) = claimed_at
                && at.elapsed() >= renew_deadline
            {
                tracing::warn!(lease = %self.name, ?renew_deadline, "could not renew the leader lease in time: stepping down");
                claimed_at = None;
                is_leader.send_replace(false);
            }
            // A leader that is failing to renew wakes up in time to step down at its deadline.
            let pause =
                claimed_at.map_or(retry_period, |at| retry_period.min((at + renew_deadline).saturating_duration_since(Instant::now())));
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        is_leader.send_replace(false);
        if claimed_at.is_some() {
            match tokio::time::timeout(renew_deadline, self.release()).await {
                Ok(Ok(true)) => tracing::info!(lease = %self.name, "released the leader lease"),
                Ok(Ok(false)) => tracing::info!(lease = %self.name, "the leader lease was no longer ours to release"),
                Ok(Err(error)) => tracing::warn!(lease = %self.name, %error, "releasing the leader lease failed; it expires on its own"),
                Err(_) => tracing::warn!(lease = %self.name, "releasing the leader lease timed out; it expires on its own"),
            }
        }
    }

    /// One round: read, decide, write. A conflict means a rival just wrote; it is read once more at
    /// once, and a second conflict in a row leaves us following until the next round.
    async fn try_acquire_or_renew(&self) -> Result<Role, kube::Error> {
        for _ in 0..2 {
            if let Attempt::Done(role) = self.attempt().await? {
                return Ok(role);
            }
        }
        Ok(Role::Follower { holder: None })
    }

    async fn attempt(&self) -> Result<Attempt, kube::Error> {
        let now = (self.wall_clock)();
        let lease_duration = self.timings.lease_duration;
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                spec: Some(acquired(None, &self.identity, now, lease_duration)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Done(Role::Leader)),
                Err(error) if is_conflict(&error) => Ok(Attempt::Conflict),
                Err(error) => Err(error),
            };
        };
        let spec = lease.spec.as_ref();
        let next = match decide(spec, &self.identity, now, lease_duration) {
            Decision::Follow { holder, .. } => return Ok(Attempt::Done(Role::Follower { holder: Some(holder) })),
            Decision::Acquire => acquired(spec, &self.identity, now, lease_duration),
            Decision::Renew => renewed(spec.unwrap_or(&LeaseSpec::default()), now, lease_duration),
        };
        // `lease.metadata` still carries the resourceVersion we read: the compare in compare-and-swap.
        lease.spec = Some(next);
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Done(Role::Leader)),
            Err(error) if is_conflict(&error) => Ok(Attempt::Conflict),
            Err(error) => Err(error),
        }
    }

    /// Clears the holder if it is still us; `Ok(false)` if the Lease is gone or someone else's.
    async fn release(&self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(false);
        };
        let Some(spec) = lease.spec.as_ref().filter(|spec| spec.holder_identity.as_deref() == Some(self.identity.as_str())) else {
            return Ok(false);
        };
        lease.spec = Some(released(spec, (self.wall_clock)()));
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(error) if is_conflict(&error) => Ok(false),
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests;
