//! What reconciles a cluster besides its own changes: a change to an object it owns, or to any
//! Callguard object (or Secret labelled `callguard.io/watch`) of its namespace.
//!
//! One watch per kind, each with its own backoff. kube-runtime backs off all of a controller's merged
//! triggers together when one of them fails, so a watch that keeps failing (a missing RBAC rule, a
//! broken API server) would hold back every reconcile of every kind. Here a failing watch backs off
//! alone; it is reported in `/readyz`, in `callguard_watch_failing` and in the log, and when it works
//! again every cluster it concerns is reconciled, for the changes it may have missed meanwhile.
//!
//! The watches of what a cluster owns read metadata only: a trigger needs no more. Those of the
//! Callguard kinds and the watched Secrets read whole objects and keep them in the watch caches
//! (`cache`), from which the reconcile reads its namespace; they read untyped, so that an object
//! whose spec the type cannot read does not break its kind's watch (the reconcile names it, see
//! `namespace_objects::Untrusted`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::{self, BoxStream};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Secret;
use kube::core::{ApiResource, DynamicObject, PartialObjectMeta};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::cache::{Cache, Caches, WatchState};
use super::labels;
use crate::api::CallControlCluster;
use crate::ops::http::Health;
use crate::ops::metrics::Metrics;

/// How long a watch that failed must run without an error, once retried, to count as working: a
/// refused watch or list fails within milliseconds of its retry.
const SETTLE: Duration = Duration::from_secs(5);

/// The wait before the first retry of a failed watch; it doubles with each failure in a row, up to
/// `MAX_BACKOFF` (client-go's numbers, as kube-runtime's default backoff).
const FIRST_BACKOFF: Duration = Duration::from_millis(800);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// 410 Gone answers in quick succession that are still taken for routine expiries.
const ROUTINE_EXPIRIES: u32 = 3;

/// Clusters to reconcile.
type Refs = Vec<ObjectRef<CallControlCluster>>;

/// The triggers of one controller: one scope (a namespace, or all) and its clusters.
pub struct Triggers {
    pub client: Client,
    pub clusters: Store<CallControlCluster>,
    /// The namespace watched; None for all.
    pub namespace: Option<String>,
    pub metrics: Arc<Metrics>,
    pub health: Health,
}

impl Triggers {
    /// Changes to the `K`s selected by `config` that a cluster owns (as their controller), read as
    /// metadata only.
    pub fn owned<K>(&self, config: watcher::Config) -> BoxStream<'static, ObjectRef<CallControlCluster>>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    {
        self.isolated(self.api::<PartialObjectMeta<K>>(), K::kind(&()).into_owned(), config, None, |event| match event {
            Event::Apply(object) | Event::InitApply(object) | Event::Delete(object) => controlling_clusters(&object),
            Event::Init | Event::InitDone => Vec::new(),
        })
    }

    /// Changes to the `K`s of the scope, read as metadata only (`PartialObjectMeta` asks for nothing
    /// else): every cluster of the object's
    /// namespace (see [`NewGenerations`]).
    pub fn in_namespace<K>(&self) -> BoxStream<'static, ObjectRef<CallControlCluster>>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    {
        let concerns = self.new_generations();
        self.isolated(self.api::<PartialObjectMeta<K>>(), K::kind(&()).into_owned(), watcher::Config::default(), None, move |event| {
            concerns.of(&event)
        })
    }

    /// `W`s in the scope: one namespace, or all.
    fn api<W: Resource<DynamicType = (), Scope = NamespaceResourceScope>>(&self) -> Api<W> {
        match &self.namespace {
            Some(namespace) => Api::namespaced(self.client.clone(), namespace),
            None => Api::all(self.client.clone()),
        }
    }

    /// Changes to the `K`s of the scope, each kept in `caches` before the reconcile it triggers
    /// reads them: every cluster of the object's namespace (see [`NewGenerations`]). Read untyped,
    /// so that an object whose spec the type cannot read does not break its kind's watch.
    pub fn cached<K>(&self, caches: Arc<Caches>, cache: fn(&Caches) -> &Cache<K>) -> BoxStream<'static, ObjectRef<CallControlCluster>>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + DeserializeOwned + Send + Sync + 'static,
    {
        let resource = ApiResource::erase::<K>(&());
        let api: Api<DynamicObject> = match &self.namespace {
            Some(namespace) => Api::namespaced_with(self.client.clone(), namespace, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        };
        let cache_watch = cache(&caches).watch_state();
        let concerns = self.new_generations();
        self.isolated(api, K::kind(&()).into_owned(), watcher::Config::default(), Some(cache_watch), move |event| {
            cache(&caches).apply_untyped(&event);
            concerns.of(&event)
        })
    }

    /// Changes to the Secrets labelled `callguard.io/watch`, kept in `caches` as [`Triggers::cached`].
    pub fn watched_secrets(&self, caches: Arc<Caches>) -> BoxStream<'static, ObjectRef<CallControlCluster>> {
        let api: Api<Secret> = self.api();
        let cache_watch = caches.watched_secrets.watch_state();
        let concerns = self.new_generations();
        let config = watcher::Config::default().labels(labels::WATCHED_SECRET);
        self.isolated(api, "Secret".to_owned(), config, Some(cache_watch), move |event| {
            caches.watched_secrets.apply_secret(&event);
            concerns.of(&event)
        })
    }

    fn new_generations(&self) -> NewGenerations {
        NewGenerations { clusters: self.clusters.clone(), seen: Mutex::default() }
    }

    fn isolated<W>(
        &self,
        api: Api<W>,
        kind: String,
        config: watcher::Config,
        cache_watch: Option<Arc<WatchState>>,
        map: impl Fn(Event<W>) -> Refs + Send + Sync + 'static,
    ) -> BoxStream<'static, ObjectRef<CallControlCluster>>
    where
        W: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        let clusters = self.clusters.clone();
        let namespace = self.namespace.clone();
        let watched = match &self.namespace {
            Some(namespace) => format!("{kind} in {namespace}"),
            None => format!("{kind} in all namespaces"),
        };
        if let Some(cache_watch) = &cache_watch {
            cache_watch.listing();
        }
        let watch = Watch {
            events: watcher::watcher(api, config).boxed(),
            kind,
            namespace: self.namespace.clone().unwrap_or_default(),
            watched,
            metrics: Arc::clone(&self.metrics),
            health: self.health.clone(),
            cache_watch,
            settle: None,
            backoff: FIRST_BACKOFF,
            expired_in_a_row: 0,
            last_expired: None,
        };
        let everything = move || clusters_in(&clusters, namespace.as_deref());
        stream::unfold((watch, map, everything), |(mut watch, map, everything)| async move {
            let refs = watch.next_refs(&map, &everything).await?;
            Some((stream::iter(refs), (watch, map, everything)))
        })
        .flatten()
        .boxed()
    }
}

/// Which changes reconcile the clusters of an object's namespace: of an object with a `generation`
/// (a Callguard object), only a new generation or its deletion, since a status the operator wrote
/// itself must not start another reconcile of the whole namespace; of a Secret, every change.
struct NewGenerations {
    clusters: Store<CallControlCluster>,
    seen: Mutex<HashMap<(String, String), i64>>,
}

impl NewGenerations {
    fn of<W: Resource>(&self, event: &Event<W>) -> Refs {
        let (meta, deleted) = match event {
            Event::Apply(object) | Event::InitApply(object) => (object.meta(), false),
            Event::Delete(object) => (object.meta(), true),
            Event::Init | Event::InitDone => return Vec::new(),
        };
        let key = (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default());
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let changed = match (deleted, meta.generation) {
            (true, _) => {
                seen.remove(&key);
                true
            }
            (false, Some(generation)) => seen.insert(key, generation) != Some(generation),
            (false, None) => true,
        };
        if changed { clusters_in(&self.clusters, meta.namespace.as_deref()) } else { Vec::new() }
    }
}

/// One kind's watch, and whether it fails.
struct Watch<K> {
    events: BoxStream<'static, Result<Event<K>, watcher::Error>>,
    kind: String,
    /// "" for every namespace.
    namespace: String,
    /// The kind and where, as `/readyz` and the log name it.
    watched: String,
    metrics: Arc<Metrics>,
    health: Health,
    /// The state of the cache the watch keeps: listing at the start, failing while it fails.
    cache_watch: Option<Arc<WatchState>>,
    /// Failing: when the watch counts as working again, if no error comes first (None while it
    /// waits out its backoff inside `next_refs`, and when it works).
    settle: Option<tokio::time::Instant>,
    /// The wait before the next retry. The backoff is this watch's own, and known here: kube-runtime's
    /// watcher retries a refused watch with no event to say that it now works, so it counts as
    /// working once it ran `SETTLE` past a retry without an error.
    backoff: Duration,
    /// 410 Gone answers in a row, each within `SETTLE` of the one before, and when the last came.
    expired_in_a_row: u32,
    last_expired: Option<tokio::time::Instant>,
}

impl<K> Watch<K> {
    /// The clusters the next change (or the recovery) concerns; None when the watch ends.
    async fn next_refs(&mut self, map: &impl Fn(Event<K>) -> Refs, everything: &impl Fn() -> Refs) -> Option<Refs> {
        loop {
            let next = match self.settle {
                Some(at) => tokio::select! {
                    next = self.events.next() => next,
                    () = tokio::time::sleep_until(at) => {
                        self.recovered();
                        return Some(everything());
                    }
                },
                None => self.events.next().await,
            };
            match next? {
                Ok(event) => {
                    let refs = map(event);
                    if !refs.is_empty() {
                        return Some(refs);
                    }
                }
                // 410 Gone: the resourceVersion expired, as it routinely does; the watcher lists
                // again by itself, and the objects it lists are mapped like any change. Only a
                // run of them, each within SETTLE of the last (a server that answers nothing
                // else), is a failing watch.
                Err(watcher::Error::WatchError(status)) if status.code == 410 && self.routine_expiry() => {
                    tracing::debug!("watch of {} expired (410 Gone): listing again", self.watched);
                }
                Err(error) => {
                    self.failed(&error);
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    self.settle = Some(tokio::time::Instant::now() + SETTLE);
                }
            }
        }
    }

    /// Counts a 410 Gone; whether it is routine (not yet [`ROUTINE_EXPIRIES`] in quick succession).
    fn routine_expiry(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        let quick = self.last_expired.is_some_and(|last| now - last < SETTLE);
        self.expired_in_a_row = if quick { self.expired_in_a_row + 1 } else { 1 };
        self.last_expired = Some(now);
        self.expired_in_a_row <= ROUTINE_EXPIRIES
    }

    /// An error: the first of a run (no retry of it settling yet) is logged at warn.
    fn failed(&mut self, error: &watcher::Error) {
        let watched = &self.watched;
        if self.settle.is_none() {
            tracing::warn!(
                "watch of {watched} failing, retried with its own backoff; reconciles of its changes wait, the other watches go on: {error}"
            );
        } else {
            tracing::debug!("watch of {watched} still failing: {error}");
        }
        self.settle = None;
        if let Some(cache_watch) = &self.cache_watch {
            cache_watch.failing();
        }
        self.metrics.set_watch_failing(&self.kind, &self.namespace, true);
        self.health.set_watch_failing(watched, Some(error.to_string()));
    }

    fn recovered(&mut self) {
        tracing::info!("watch of {} works again: reconciling the clusters it concerns", self.watched);
        self.settle = None;
        self.backoff = FIRST_BACKOFF;
        self.metrics.set_watch_failing(&self.kind, &self.namespace, false);
        self.health.set_watch_failing(&self.watched, None);
    }
}

/// The clusters whose ownerReferences make them `object`'s controller.
fn controlling_clusters<K: Resource>(object: &K) -> Refs {
    let namespace = object.meta().namespace.clone().unwrap_or_default();
    object
        .owner_references()
        .iter()
        .filter(|owner| owner.controller == Some(true) && owner.kind == CallControlCluster::kind(&()))
        .map(|owner| ObjectRef::new(&owner.name).within(&namespace))
        .collect()
}

/// The clusters of `namespace` in the store; every cluster when None.
fn clusters_in(clusters: &Store<CallControlCluster>, namespace: Option<&str>) -> Refs {
    clusters
        .state()
        .into_iter()
        .filter(|cluster| namespace.is_none() || cluster.namespace().as_deref() == namespace)
        .map(|cluster| ObjectRef::from_obj(&*cluster))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn gone() -> watcher::Error {
        let mut status = Status::failure("too old resource version", "Expired");
        status.code = 410;
        watcher::Error::WatchError(Box::new(status))
    }

    fn watch(events: Vec<Result<Event<u32>, watcher::Error>>) -> (Watch<u32>, Health) {
        let health = Health::new();
        health.set_ready(true);
        let watch = Watch {
            // Then nothing more, as a watch that idles.
            events: stream::iter(events).chain(stream::pending()).boxed(),
            kind: "Phone".into(),
            namespace: "default".into(),
            watched: "Phone in default".into(),
            metrics: Arc::new(Metrics::new()),
            health: health.clone(),
            cache_watch: None,
            settle: None,
            backoff: FIRST_BACKOFF,
            expired_in_a_row: 0,
            last_expired: None,
        };
        (watch, health)
    }

    #[tokio::test(start_paused = true)]
    async fn a_routine_410_is_not_a_failing_watch_but_a_run_of_them_is() {
        let map = |event: Event<u32>| match event {
            Event::Apply(n) => vec![ObjectRef::new(&n.to_string()).within("default")],
            _ => Vec::new(),
        };
        let everything = || vec![ObjectRef::new("all").within("default")];

        // Expired now and then, between changes: never failing, and the next change goes through.
        let (mut routine, health) = watch(vec![Err(gone()), Ok(Event::Apply(1)), Err(gone()), Ok(Event::Apply(2))]);
        assert_eq!(routine.next_refs(&map, &everything).await, Some(vec![ObjectRef::new("1").within("default")]));
        assert_eq!(health.readiness(), Ok(()));
        tokio::time::advance(SETTLE * 2).await;
        assert_eq!(routine.next_refs(&map, &everything).await, Some(vec![ObjectRef::new("2").within("default")]));
        assert_eq!(health.readiness(), Ok(()));

        // Answered nothing but 410, one right after the other: failing, and said so.
        let (mut broken, health) = watch((0..=ROUTINE_EXPIRIES).map(|_| Err(gone())).collect());
        let waiting = tokio::time::timeout(Duration::from_millis(100), broken.next_refs(&map, &everything)).await;
        assert!(waiting.is_err(), "no change to report yet");
        let refused = health.readiness().unwrap_err();
        assert!(refused.contains("Phone in default") && refused.contains("too old resource version"), "{refused}");
    }
}
