//! The watch caches: each Callguard kind, and the Secrets labelled `callguard.io/watch`, as the
//! watches that trigger reconciles last saw them. A reconcile reads its namespace from here instead
//! of listing it, and the status writer compares with the statuses held here.
//!
//! Written by hand rather than with kube's `reflector::Store`: an entry is either the typed object
//! or, for an object its type cannot read, what validation needs to name its fault
//! ([`Untrusted`]); a `Store<K>` holds only objects that deserialize, and one that does not would
//! fail its kind's whole watch.
//!
//! A cache is used only while its watch is synced (listed, and not failing since). A reconcile
//! waits for a watch's first list rather than listing the kind a second time beside it; a kind
//! whose watch fails, or that no watch keeps, the reconcile lists itself.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::core::DynamicObject;
use kube::runtime::watcher::Event;

use super::namespace_objects::{Untrusted, typed_or_untrusted};
use crate::api::{
    ApplicationUser, EndUser, H323Gateway, MgcpGateway, Phone, PhoneSecurityProfile, SipRealm, SipTrunk, SipTrunkSecurityProfile,
    SrstReference,
};
use crate::ops::metrics::Kind;

/// An object as cached.
pub enum Entry<K> {
    Typed(Arc<K>),
    Untrusted(Arc<Untrusted>),
}

impl<K> Clone for Entry<K> {
    fn clone(&self) -> Self {
        match self {
            Entry::Typed(object) => Entry::Typed(Arc::clone(object)),
            Entry::Untrusted(odd) => Entry::Untrusted(Arc::clone(odd)),
        }
    }
}

type Key = (String, String);

/// Where a cache's watch is: none yet, its first list under way, synced (listed, and not failing
/// since), or failing.
#[derive(Default)]
pub struct WatchState(AtomicU8);

const UNWATCHED: u8 = 0;
const LISTING: u8 = 1;
const SYNCED: u8 = 2;
const FAILING: u8 = 3;

impl WatchState {
    /// A watch started, and lists first.
    pub fn listing(&self) {
        let _ = self.0.compare_exchange(UNWATCHED, LISTING, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The watch failed: its cache is stale until it lists again.
    pub fn failing(&self) {
        self.0.store(FAILING, Ordering::Release);
    }

    fn synced(&self) {
        self.0.store(SYNCED, Ordering::Release);
    }

    fn is_synced(&self) -> bool {
        self.0.load(Ordering::Acquire) == SYNCED
    }

    fn is_listing(&self) -> bool {
        self.0.load(Ordering::Acquire) == LISTING
    }
}

/// One kind's objects, by namespace and name.
pub struct Cache<K> {
    objects: RwLock<BTreeMap<Key, Entry<K>>>,
    /// A relist under way: its objects, swapped in whole when it ends (as kube's reflector does), so
    /// that a reader never sees half a list.
    relisting: RwLock<Option<BTreeMap<Key, Entry<K>>>>,
    /// Synced: the objects are the API server's.
    watch: Arc<WatchState>,
    /// The newest resourceVersion the watch delivered, and the newest one the operator's own status
    /// writes made: a reconcile reads the cache once it holds its own writes (see [`Caches::caught_up`]).
    seen: AtomicU64,
    written: AtomicU64,
}

impl<K> Default for Cache<K> {
    fn default() -> Self {
        Cache {
            objects: RwLock::default(),
            relisting: RwLock::default(),
            watch: Arc::default(),
            seen: AtomicU64::new(0),
            written: AtomicU64::new(0),
        }
    }
}

impl<K> Cache<K> {
    /// What its watch reports.
    pub fn watch_state(&self) -> Arc<WatchState> {
        Arc::clone(&self.watch)
    }

    /// The objects of `namespace`, in name order; None while the cache is not synced.
    pub fn snapshot(&self, namespace: &str) -> Option<Vec<Entry<K>>> {
        if !self.watch.is_synced() {
            return None;
        }
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        let entries = objects
            .range((namespace.to_owned(), String::new())..)
            .take_while(|((ns, _), _)| ns == namespace)
            .map(|(_, entry)| entry.clone())
            .collect();
        Some(entries)
    }

    /// Applies one watch event, before the reconcile it triggers reads the cache; `entry` makes an
    /// object's entry, only for what is kept (a deletion needs its key alone).
    fn apply<W: kube::Resource>(&self, event: &Event<W>, entry: impl Fn(&W) -> Entry<K>) {
        let key = |object: &W| {
            let meta = object.meta();
            (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
        };
        if let Event::Apply(object) | Event::InitApply(object) | Event::Delete(object) = event
            && let Some(version) = version_of(object.meta())
        {
            self.seen.fetch_max(version, Ordering::AcqRel);
        }
        match event {
            Event::Init => *self.relisting.write().unwrap_or_else(|e| e.into_inner()) = Some(BTreeMap::new()),
            Event::InitApply(object) => {
                if let Some(buffer) = self.relisting.write().unwrap_or_else(|e| e.into_inner()).as_mut() {
                    buffer.insert(key(object), entry(object));
                }
            }
            Event::InitDone => {
                if let Some(listed) = self.relisting.write().unwrap_or_else(|e| e.into_inner()).take() {
                    *self.objects.write().unwrap_or_else(|e| e.into_inner()) = listed;
                }
                self.watch.synced();
            }
            Event::Apply(object) => {
                let entry = entry(object);
                self.objects.write().unwrap_or_else(|e| e.into_inner()).insert(key(object), entry);
            }
            Event::Delete(object) => {
                self.objects.write().unwrap_or_else(|e| e.into_inner()).remove(&key(object));
            }
        }
    }
}

/// The resourceVersion of an object, when it is a number (as every API server's is, though clients
/// are told not to rely on it: when one is not, the cache does not wait for its own writes).
fn version_of(meta: &kube::api::ObjectMeta) -> Option<u64> {
    meta.resource_version.as_deref()?.parse().ok()
}

impl<K> Cache<K>
where
    K: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned,
{
    /// Applies a watch event on the kind read untyped: each object is typed once, here, or kept as
    /// [`Untrusted`]; its managed fields are not kept.
    pub fn apply_untyped(&self, event: &Event<DynamicObject>) {
        self.apply(event, |object| match typed_or_untrusted::<K>(object) {
            Ok(mut typed) => {
                typed.meta_mut().managed_fields = None;
                Entry::Typed(Arc::new(typed))
            }
            Err(odd) => Entry::Untrusted(Arc::new(odd)),
        });
    }
}

impl Cache<Secret> {
    pub fn apply_secret(&self, event: &Event<Secret>) {
        self.apply(event, |secret| {
            let mut secret = secret.clone();
            secret.metadata.managed_fields = None;
            Entry::Typed(Arc::new(secret))
        });
    }
}

/// What [`Caches::caught_up`] asks of a cache, whatever its kind.
trait OwnWrites {
    /// A status write of the operator's own made `resource_version`.
    fn wrote(&self, resource_version: u64);
    /// Holds the operator's own last status write, or is not read anyway (its kind is listed: no
    /// watch keeps it, or its watch fails, and a failing watch is not waited for). False during
    /// its watch's first list.
    fn holds_own_writes(&self) -> bool;
}

impl<K> OwnWrites for Cache<K> {
    fn wrote(&self, resource_version: u64) {
        self.written.fetch_max(resource_version, Ordering::AcqRel);
    }

    fn holds_own_writes(&self) -> bool {
        if self.watch.is_synced() {
            self.seen.load(Ordering::Acquire) >= self.written.load(Ordering::Acquire)
        } else {
            !self.watch.is_listing()
        }
    }
}

/// Every cache of one controller's scope.
///
/// Not the SecurityTokens: their status holds the failed-login counters (P.16-5), which the
/// reconcile reads fresh, since a copy one write behind would count a failure twice as one.
#[derive(Default)]
pub struct Caches {
    pub phone_profiles: Cache<PhoneSecurityProfile>,
    pub phones: Cache<Phone>,
    pub trunk_profiles: Cache<SipTrunkSecurityProfile>,
    pub trunks: Cache<SipTrunk>,
    pub srst_references: Cache<SrstReference>,
    pub h323_gateways: Cache<H323Gateway>,
    pub mgcp_gateways: Cache<MgcpGateway>,
    pub end_users: Cache<EndUser>,
    pub application_users: Cache<ApplicationUser>,
    pub realms: Cache<SipRealm>,
    /// The Secrets labelled `callguard.io/watch`.
    pub watched_secrets: Cache<Secret>,
}

impl Caches {
    /// The cache of `kind`'s objects; None for a kind read fresh at each reconcile.
    fn of_kind(&self, kind: Kind) -> Option<&dyn OwnWrites> {
        Some(match kind {
            Kind::PhoneSecurityProfile => &self.phone_profiles,
            Kind::Phone => &self.phones,
            Kind::SipTrunkSecurityProfile => &self.trunk_profiles,
            Kind::SipTrunk => &self.trunks,
            Kind::SrstReference => &self.srst_references,
            Kind::H323Gateway => &self.h323_gateways,
            Kind::MgcpGateway => &self.mgcp_gateways,
            Kind::EndUser => &self.end_users,
            Kind::ApplicationUser => &self.application_users,
            Kind::SipRealm => &self.realms,
            Kind::CallControlCluster | Kind::SecurityToken => return None,
        })
    }

    /// Notes a status write of the operator's own to an object of `kind`.
    pub fn wrote(&self, kind: Kind, resource_version: u64) {
        if let Some(cache) = self.of_kind(kind) {
            cache.wrote(resource_version);
        }
    }

    /// Waits until every cache holds the operator's own last status writes, so that a reconcile
    /// never compares its statuses with ones it has already replaced (it would write them again,
    /// with new transition times); false when they have not arrived within `patience`.
    pub async fn caught_up(&self, patience: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if Kind::ALL.into_iter().filter_map(|kind| self.of_kind(kind)).all(|cache| cache.holds_own_writes()) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn phone(name: &str, spec: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "callguard.io/v1alpha1", "kind": "Phone",
            "metadata": {"name": name, "namespace": "default", "generation": 1, "managedFields": [{"manager": "kubectl"}]},
            "spec": spec,
        }))
        .unwrap()
    }

    fn good(name: &str) -> DynamicObject {
        phone(name, json!({"macAddress": "00000000000A", "model": "7941", "protocol": "SIP", "securityProfileRef": "p"}))
    }

    fn names(cache: &Cache<Phone>) -> Vec<String> {
        cache
            .snapshot("default")
            .unwrap()
            .iter()
            .map(|entry| match entry {
                Entry::Typed(phone) => phone.metadata.name.clone().unwrap(),
                Entry::Untrusted(odd) => format!("untrusted {}", odd.name),
            })
            .collect()
    }

    #[test]
    fn a_relist_is_seen_whole_and_an_object_its_type_cannot_read_is_kept_untrusted() {
        let cache: Cache<Phone> = Cache::default();
        assert!(cache.snapshot("default").is_none(), "not synced before its first list");
        cache.apply_untyped(&Event::Init);
        cache.apply_untyped(&Event::InitApply(good("a")));
        cache.apply_untyped(&Event::InitApply(phone("b", json!({"directoryNumbers": "1002"}))));
        assert!(cache.snapshot("default").is_none(), "half a list is never read");
        cache.apply_untyped(&Event::InitDone);
        assert_eq!(names(&cache), ["a", "untrusted b"]);
        let Entry::Typed(a) = &cache.snapshot("default").unwrap()[0] else { panic!() };
        assert!(a.metadata.managed_fields.is_none(), "managed fields are not held");

        cache.apply_untyped(&Event::Apply(good("c")));
        cache.apply_untyped(&Event::Delete(good("a")));
        assert_eq!(names(&cache), ["untrusted b", "c"]);

        // A relist replaces everything once it ends: b was fixed, c deleted meanwhile.
        cache.apply_untyped(&Event::Init);
        cache.apply_untyped(&Event::InitApply(good("b")));
        assert_eq!(names(&cache), ["untrusted b", "c"]);
        cache.apply_untyped(&Event::InitDone);
        assert_eq!(names(&cache), ["b"]);

        // A failing watch makes the cache unusable until it lists again.
        cache.watch_state().failing();
        assert!(cache.snapshot("default").is_none());
    }

    /// A reconcile waits for a watch's first list and for the operator's own writes to come back
    /// through the watch, but not for a cache that is not read anyway.
    #[tokio::test(start_paused = true)]
    async fn a_reconcile_waits_for_its_own_writes_but_not_for_a_failing_watch() {
        let caches = Caches::default();
        assert!(caches.caught_up(Duration::ZERO).await, "no watch keeps them: listed");
        caches.phones.watch_state().listing();
        assert!(!caches.caught_up(Duration::from_secs(1)).await, "the first list is waited for");
        caches.phones.apply_untyped(&Event::Init);
        caches.phones.apply_untyped(&Event::InitDone);
        caches.wrote(Kind::Phone, 7);
        assert!(!caches.caught_up(Duration::from_secs(1)).await, "the write has not come back");
        let mut back = good("a");
        back.metadata.resource_version = Some("7".into());
        caches.phones.apply_untyped(&Event::Apply(back));
        assert!(caches.caught_up(Duration::ZERO).await);
        caches.wrote(Kind::Phone, 9);
        caches.phones.watch_state().failing();
        assert!(caches.caught_up(Duration::ZERO).await, "a failing watch's cache is not read, so not waited for");
        caches.wrote(Kind::SecurityToken, 100);
        assert!(caches.caught_up(Duration::ZERO).await, "tokens are not cached");
    }
}
