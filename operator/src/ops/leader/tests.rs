use super::*;

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

const ME: &str = "callguard-0_aaaa";
const RIVAL: &str = "callguard-1_bbbb";

/// 2030-01-01T00:00:00Z, a whole second so that MicroTime keeps it exactly.
fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000)
}

fn at(offset_millis: i64) -> SystemTime {
    let offset = Duration::from_millis(offset_millis.unsigned_abs());
    if offset_millis >= 0 { t0() + offset } else { t0() - offset }
}

fn held_by(holder: &str, renewed: SystemTime, seconds: Option<i32>) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(holder.to_owned()),
        acquire_time: Some(to_micro_time(at(-60_000))),
        renew_time: Some(to_micro_time(renewed)),
        lease_duration_seconds: seconds,
        lease_transitions: Some(3),
        ..LeaseSpec::default()
    }
}

fn follow(holder: &str, expires_at: SystemTime) -> Decision {
    Decision::Follow { holder: holder.to_owned(), expires_at }
}

#[test]
fn decide_table() {
    let fifteen = Duration::from_secs(15);
    let thirty = Duration::from_secs(30);
    let released = LeaseSpec { holder_identity: None, ..held_by(RIVAL, t0(), Some(15)) };
    let empty_holder = LeaseSpec { holder_identity: Some(String::new()), ..held_by(RIVAL, t0(), Some(15)) };
    let never_renewed = LeaseSpec { renew_time: None, acquire_time: Some(to_micro_time(t0())), ..held_by(RIVAL, t0(), Some(15)) };
    let no_times = LeaseSpec { renew_time: None, acquire_time: None, ..held_by(RIVAL, t0(), Some(15)) };

    let cases: Vec<(&str, Option<LeaseSpec>, SystemTime, Decision)> = vec![
        ("no lease", None, t0(), Decision::Acquire),
        ("empty spec", Some(LeaseSpec::default()), t0(), Decision::Acquire),
        ("released: no holder", Some(released), t0(), Decision::Acquire),
        ("released: empty holder", Some(empty_holder), t0(), Decision::Acquire),
        ("ours, fresh", Some(held_by(ME, t0(), Some(15))), at(1_000), Decision::Renew),
        ("ours, expired: still ours to renew", Some(held_by(ME, t0(), Some(15))), at(60_000), Decision::Renew),
        ("rival, fresh", Some(held_by(RIVAL, t0(), Some(15))), at(10_000), follow(RIVAL, at(15_000))),
        ("rival, exactly at expiry", Some(held_by(RIVAL, t0(), Some(15))), at(15_000), follow(RIVAL, at(15_000))),
        ("rival, 1 ms past expiry", Some(held_by(RIVAL, t0(), Some(15))), at(15_001), Decision::Acquire),
        ("rival renewed in our future (clock skew)", Some(held_by(RIVAL, at(5_000), Some(15))), t0(), follow(RIVAL, at(20_000))),
        ("rival's own duration wins over ours", Some(held_by(RIVAL, t0(), Some(40))), at(35_000), follow(RIVAL, at(40_000))),
        ("no duration: ours stands in", Some(held_by(RIVAL, t0(), None)), at(29_000), follow(RIVAL, at(30_000))),
        ("zero duration: ours stands in", Some(held_by(RIVAL, t0(), Some(0))), at(31_000), Decision::Acquire),
        ("negative duration: ours stands in", Some(held_by(RIVAL, t0(), Some(-5))), at(20_000), follow(RIVAL, at(30_000))),
        ("never renewed: acquireTime counts", Some(never_renewed.clone()), at(14_000), follow(RIVAL, at(15_000))),
        ("never renewed, expired", Some(never_renewed), at(16_000), Decision::Acquire),
        ("no times at all: nothing shows the holder alive", Some(no_times), t0(), Decision::Acquire),
    ];
    for (name, lease, now, expected) in cases {
        let default = if name.contains("ours stands in") { thirty } else { fifteen };
        assert_eq!(decide(lease.as_ref(), ME, now, default), expected, "{name}");
    }
}

#[test]
fn creating_the_lease_starts_at_zero_transitions() {
    let spec = acquired(None, ME, t0(), Duration::from_secs(15));
    assert_eq!(spec.holder_identity.as_deref(), Some(ME));
    assert_eq!(spec.acquire_time, Some(to_micro_time(t0())));
    assert_eq!(spec.renew_time, Some(to_micro_time(t0())));
    assert_eq!(spec.lease_duration_seconds, Some(15));
    assert_eq!(spec.lease_transitions, Some(0));
}

#[test]
fn taking_over_counts_a_transition_and_keeps_foreign_fields() {
    let previous = LeaseSpec { preferred_holder: Some("callguard-2".to_owned()), ..held_by(RIVAL, t0(), Some(15)) };
    let spec = acquired(Some(&previous), ME, at(20_000), Duration::from_secs(15));
    assert_eq!(spec.holder_identity.as_deref(), Some(ME));
    assert_eq!(spec.lease_transitions, Some(4));
    assert_eq!(spec.acquire_time, Some(to_micro_time(at(20_000))));
    assert_eq!(spec.renew_time, Some(to_micro_time(at(20_000))));
    assert_eq!(spec.preferred_holder.as_deref(), Some("callguard-2"));

    let released_without_count = LeaseSpec { holder_identity: None, lease_transitions: None, ..held_by(RIVAL, t0(), Some(15)) };
    assert_eq!(acquired(Some(&released_without_count), ME, t0(), Duration::from_secs(15)).lease_transitions, Some(1));
}

#[test]
fn renewing_moves_only_the_renew_time_and_duration() {
    let previous = held_by(ME, t0(), Some(30));
    let spec = renewed(&previous, at(2_000), Duration::from_secs(15));
    assert_eq!(spec, LeaseSpec { renew_time: Some(to_micro_time(at(2_000))), lease_duration_seconds: Some(15), ..previous });
}

#[test]
fn a_released_lease_is_free_at_once_and_keeps_its_count() {
    let spec = released(&held_by(ME, t0(), Some(15)), at(1_000));
    assert_eq!(spec.holder_identity, None);
    assert_eq!(spec.lease_transitions, Some(3));
    assert_eq!(spec.lease_duration_seconds, Some(1));
    assert_eq!(decide(Some(&spec), RIVAL, at(1_000), Duration::from_secs(15)), Decision::Acquire);
}

#[test]
fn micro_time_round_trips_microseconds() {
    let time = t0() + Duration::from_micros(123_456);
    assert_eq!(to_system_time(&to_micro_time(time)), time);
    let json = serde_json::to_value(to_micro_time(time)).expect("serialize");
    assert_eq!(json, serde_json::json!("2030-01-01T00:00:00.123456Z"));
}

#[test]
fn timings_must_be_ordered() {
    assert_eq!(LeaseTimings::default().validate(), Ok(LeaseTimings::default()));
    let overlapping = LeaseTimings { renew_deadline: Duration::from_secs(15), ..LeaseTimings::default() };
    let error = overlapping.validate().expect_err("deadline equal to the lease");
    assert!(error.to_string().contains("renew deadline (15s)"), "{error}");
    let sub_second = LeaseTimings {
        lease_duration: Duration::from_millis(900),
        renew_deadline: Duration::from_millis(500),
        retry_period: Duration::from_millis(100),
    };
    assert!(sub_second.validate().is_err());
    let no_pause = LeaseTimings { retry_period: Duration::ZERO, ..LeaseTimings::default() };
    assert!(no_pause.validate().is_err());
}

#[test]
fn default_identity_is_unique_per_process_start() {
    let (first, second) = (default_identity(), default_identity());
    assert_ne!(first, second);
    assert!(first.rsplit_once('_').is_some_and(|(_, suffix)| suffix.len() == 8), "{first}");
}

#[tokio::test]
async fn leadership_helpers_wait_for_the_right_value() {
    let (sender, mut receiver) = watch::channel(false);
    let (woke, mut woken) = watch::channel(false);
    let waiting = tokio::spawn(async move {
        wait_for_leadership(&mut receiver).await.expect("sender alive");
        woke.send_replace(true);
        leadership_lost(&mut receiver).await.expect("sender alive");
        receiver
    });
    sender.send_replace(true);
    // The first wait has ended: the task now waits for the loss, which has not come.
    woken.wait_for(|woke| *woke).await.expect("the task runs");
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "still leading: must keep waiting");
    sender.send_replace(false);
    let mut receiver = waiting.await.expect("join");
    drop(sender);
    assert!(wait_for_leadership(&mut receiver).await.is_err(), "a gone elector is reported");
}

// ---- The IO loop against an in-process Lease endpoint ----
//
// A minimal stand-in for the API server's Lease endpoints (get, create, replace with resourceVersion
// preconditions), served to a real `kube::Client` through `kube::Client::new` without a socket.

#[derive(Debug, Default)]
struct Store {
    lease: Option<Lease>,
    version: u64,
    /// Successful creates and replaces.
    writes: usize,
    /// Every request answers 500 while set.
    failing: bool,
    /// Applied by a "rival" just before the next replace is handled, so that replace is stale.
    rival_write_before_next_replace: Option<LeaseSpec>,
}

type Shared = Arc<Mutex<Store>>;

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()});
    (code, Json(body)).into_response()
}

fn stored(store: &mut Store, mut lease: Lease) -> Lease {
    store.version += 1;
    lease.metadata.resource_version = Some(store.version.to_string());
    store.lease = Some(lease.clone());
    lease
}

async fn read_lease(State(store): State<Shared>) -> Response {
    let store = store.lock().expect("store");
    match (&store.lease, store.failing) {
        (_, true) => status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "etcd is down"),
        (None, false) => status(StatusCode::NOT_FOUND, "NotFound", "leases.coordination.k8s.io not found"),
        (Some(lease), false) => Json(lease.clone()).into_response(),
    }
}

async fn create_lease(State(store): State<Shared>, Json(lease): Json<Lease>) -> Response {
    let mut store = store.lock().expect("store");
    if store.failing {
        return status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "etcd is down");
    }
    if store.lease.is_some() {
        return status(StatusCode::CONFLICT, "AlreadyExists", "leases.coordination.k8s.io already exists");
    }
    store.writes += 1;
    (StatusCode::CREATED, Json(stored(&mut store, lease))).into_response()
}

async fn replace_lease(State(store): State<Shared>, Json(lease): Json<Lease>) -> Response {
    let mut store = store.lock().expect("store");
    if store.failing {
        return status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "etcd is down");
    }
    if let Some(rival) = store.rival_write_before_next_replace.take() {
        let mut current = store.lease.clone().expect("a lease to overwrite");
        current.spec = Some(rival);
        stored(&mut store, current);
    }
    let Some(current) = &store.lease else {
        return status(StatusCode::NOT_FOUND, "NotFound", "leases.coordination.k8s.io not found");
    };
    if lease.metadata.resource_version != current.metadata.resource_version {
        return status(StatusCode::CONFLICT, "Conflict", "the object has been modified; please apply your changes to the latest version");
    }
    store.writes += 1;
    Json(stored(&mut store, lease)).into_response()
}

fn lease_api(store: &Shared) -> Api<Lease> {
    let router = Router::new()
        .route("/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases", post(create_lease))
        .route("/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}", get(read_lease).put(replace_lease))
        .with_state(store.clone());
    Api::namespaced(kube::Client::new(router, "callguard-system"), "callguard-system")
}

/// The wall clock of a test on tokio's paused clock: [`t0`] when the test starts, then moving with
/// tokio's (virtual) time, so that Lease times and expiry follow `tokio::time::advance` and sleeps.
fn paused_wall_clock() -> impl Fn() -> SystemTime + Clone + Send + Sync + 'static {
    let start = Instant::now();
    move || t0() + start.elapsed()
}

fn timings() -> LeaseTimings {
    LeaseTimings::default()
}

fn spec_of(store: &Shared) -> LeaseSpec {
    store.lock().expect("store").lease.as_ref().and_then(|lease| lease.spec.clone()).expect("a lease spec")
}

struct Running {
    is_leader: watch::Receiver<bool>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Runs an elector with the default timings (15 s lease, 10 s renew deadline, 2 s retry period) on
/// `clock`: the tests run on tokio's paused clock, where those seconds pass at once and exactly.
fn start(store: &Shared, identity: &str, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Running {
    let elector = LeaderElector::new(lease_api(store), "callguard-operator", identity)
        .with_timings(timings())
        .expect("valid timings")
        .with_wall_clock(clock);
    let (sender, is_leader) = watch::channel(false);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(elector.run(sender, async move {
        let _ = stopped.await;
    }));
    Running { is_leader, stop, task }
}

async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future).await.unwrap_or_else(|_| panic!("{what} took longer than {limit:?}"))
}

impl Running {
    async fn shut_down(self) {
        self.stop.send(()).expect("elector running");
        within(timings().renew_deadline, "shutdown", self.task).await.expect("join");
    }
}

/// Waits for leadership, which must come at once: in the first round, before any time passes.
async fn leads_at_once(is_leader: &mut watch::Receiver<bool>, what: &str) {
    let started = Instant::now();
    within(timings().retry_period, what, wait_for_leadership(is_leader)).await.expect("elector alive");
    assert_eq!(started.elapsed(), Duration::ZERO, "{what}");
}

fn at_offset(offset: Duration) -> Option<MicroTime> {
    Some(to_micro_time(t0() + offset))
}

#[tokio::test(start_paused = true)]
async fn a_lone_candidate_creates_the_lease_leads_and_releases_it_at_shutdown() {
    let store = Shared::default();
    let mut elector = start(&store, ME, paused_wall_clock());
    leads_at_once(&mut elector.is_leader, "leadership at the first attempt").await;
    let spec = spec_of(&store);
    assert_eq!(spec.holder_identity.as_deref(), Some(ME));
    assert_eq!(spec.lease_transitions, Some(0));
    assert_eq!(spec.lease_duration_seconds, Some(15));
    assert_eq!((spec.acquire_time, spec.renew_time), (at_offset(Duration::ZERO), at_offset(Duration::ZERO)));

    // It renews every retry period while it leads: at 2 s, 4 s, 6 s.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(spec_of(&store).renew_time, at_offset(Duration::from_secs(6)), "renewed every retry period");
    assert_eq!(store.lock().expect("store").writes, 4, "the create and three renewals");
    assert!(*elector.is_leader.borrow());

    let mut is_leader = elector.is_leader.clone();
    elector.shut_down().await;
    assert!(!*is_leader.borrow_and_update());
    let spec = spec_of(&store);
    assert_eq!(spec.holder_identity, None, "released for a standby");
    assert_eq!((spec.renew_time, spec.lease_duration_seconds), (at_offset(Duration::from_secs(7)), Some(1)), "at shutdown");
    assert_eq!(spec.lease_transitions, Some(0));
}

#[tokio::test(start_paused = true)]
async fn a_standby_follows_without_writing_then_takes_over_on_release() {
    let store = Shared::default();
    let clock = paused_wall_clock();
    let mut first = start(&store, ME, clock.clone());
    leads_at_once(&mut first.is_leader, "first leadership").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut second = start(&store, RIVAL, clock);

    // Over two lease durations both run, half a second off each other's rounds: exactly one leads,
    // the first, which renews; the standby writes nothing.
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(*first.is_leader.borrow() && !*second.is_leader.borrow(), "only the first leads");
    }
    let spec = spec_of(&store);
    assert_eq!(spec.holder_identity.as_deref(), Some(ME), "the standby never overwrote the holder");
    assert_eq!(spec.renew_time, at_offset(Duration::from_secs(30)), "the leader kept renewing");
    assert_eq!(store.lock().expect("store").writes, 16, "the create and the leader's fifteen renewals, none of the standby's");

    let released_at = Instant::now();
    first.shut_down().await;
    wait_for_leadership(&mut second.is_leader).await.expect("alive");
    // Its next round after the release, not the lease's expiry.
    assert!(released_at.elapsed() <= timings().retry_period, "took over after {:?}", released_at.elapsed());
    let spec = spec_of(&store);
    assert_eq!(spec.holder_identity.as_deref(), Some(RIVAL));
    assert_eq!(spec.lease_transitions, Some(1));
    second.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn an_unexpired_foreign_lease_is_followed_and_taken_only_after_it_expires() {
    let store = Shared::default();
    let clock = paused_wall_clock();
    {
        let mut store = store.lock().expect("store");
        let lease = Lease {
            metadata: ObjectMeta { name: Some("callguard-operator".to_owned()), ..ObjectMeta::default() },
            spec: Some(acquired(None, RIVAL, clock(), timings().lease_duration)),
        };
        stored(&mut store, lease);
    }
    let started = Instant::now();
    let mut elector = start(&store, ME, clock);
    // A whole lease duration, to the instant it expires: followed, nothing written.
    tokio::time::sleep(timings().lease_duration).await;
    assert!(!*elector.is_leader.borrow(), "the rival's lease runs to its expiry");
    assert_eq!(store.lock().expect("store").writes, 0, "a follower writes nothing");

    wait_for_leadership(&mut elector.is_leader).await.expect("alive");
    // At the first round past the expiry: the rounds fall every 2 s, the lease ends at 15 s.
    assert_eq!(started.elapsed(), Duration::from_secs(16));
    let spec = spec_of(&store);
    assert_eq!(spec.holder_identity.as_deref(), Some(ME));
    assert_eq!(spec.lease_transitions, Some(1));
    assert_eq!(spec.acquire_time, at_offset(Duration::from_secs(16)));
    elector.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn a_write_that_lost_a_race_is_never_forced() {
    let store = Shared::default();
    let clock = paused_wall_clock();
    {
        let mut store = store.lock().expect("store");
        let lease = Lease {
            metadata: ObjectMeta { name: Some("callguard-operator".to_owned()), ..ObjectMeta::default() },
            spec: Some(released(&acquired(None, "callguard-old", clock(), timings().lease_duration), clock())),
        };
        stored(&mut store, lease);
        // The rival claims the free lease between our read and our write.
        store.rival_write_before_next_replace = Some(acquired(None, RIVAL, clock() + Duration::from_secs(60), timings().lease_duration));
    }
    let elector = start(&store, ME, clock);
    // Several rounds: the rival's claim (renewed in our future) is followed in each.
    tokio::time::sleep(timings().retry_period * 3).await;
    assert!(!*elector.is_leader.borrow(), "the conflict made us re-read and follow");
    let spec = spec_of(&store);
    assert_eq!(spec.holder_identity.as_deref(), Some(RIVAL), "our stale write was rejected, not retried over the rival");
    assert_eq!(store.lock().expect("store").writes, 0);
    elector.shut_down().await;
    assert_eq!(spec_of(&store).holder_identity.as_deref(), Some(RIVAL), "shutdown releases only our own lease");
}

#[tokio::test(start_paused = true)]
async fn the_leader_steps_down_when_it_cannot_renew_within_the_deadline() {
    let store = Shared::default();
    let clock = paused_wall_clock();
    let mut elector = start(&store, ME, clock.clone());
    leads_at_once(&mut elector.is_leader, "leadership").await;
    // Between two renewals (at 2 s and 4 s) the API server starts failing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    store.lock().expect("store").failing = true;
    let last_renewal = to_system_time(spec_of(&store).renew_time.as_ref().expect("renewed"));
    assert_eq!(last_renewal, t0() + Duration::from_secs(2));

    leadership_lost(&mut elector.is_leader).await.expect("alive");
    // The deadline counts from the last successful renewal, and falls before the lease expires,
    // when a standby could take over.
    assert_eq!(clock(), last_renewal + timings().renew_deadline, "stepped down at the renew deadline");
    assert!(clock() < last_renewal + timings().lease_duration);

    // When the API server is back, it leads again (the lease is still its own), at its next round.
    let stepped_down = clock();
    store.lock().expect("store").failing = false;
    within(timings().retry_period * 2, "leadership again", wait_for_leadership(&mut elector.is_leader)).await.expect("alive");
    assert_eq!(clock(), stepped_down + timings().retry_period, "at the next round");
    assert_eq!(spec_of(&store).holder_identity.as_deref(), Some(ME));
    elector.shut_down().await;
}
