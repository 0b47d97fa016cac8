//! The status step's writer: every object of the namespace as the reconcile read it, and the
//! statuses it wants written through the status subresource, only those that change.
//!
//! An object is held as the watch cache holds it (shared, not copied): a namespace's statuses as
//! JSON were the largest thing a 30,000-phone reconcile held. A status is read, and compared, only
//! where a write may be due: what a reconcile found in place or wrote is remembered as a digest of
//! what it wanted, at the resource version it held at ([`Settled`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::core::object::HasStatus;
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::conditions::{Wanted, already_set, conditions};
use super::labels::FIELD_MANAGER;
use super::namespace_objects::{NamespaceObjects, Untrusted};
use super::reconcile::Context;
use crate::api::{
    ApplicationUser, CallControlCluster, EndUser, H323Gateway, HasCommonStatus, MgcpGateway, Phone, PhoneSecurityProfile, SecurityToken,
    SipRealm, SipTrunk, SipTrunkSecurityProfile, SrstReference,
};
use crate::ops::metrics::Kind;

/// A status to write: the kind, the object, and the fields of `status` the operator owns.
pub struct StatusUpdate {
    pub kind: Kind,
    pub name: String,
    pub wanted: Vec<Wanted>,
    /// Fields besides `conditions` and `observedGeneration`.
    pub extra: serde_json::Map<String, Value>,
}

/// An update that is not settled (see [`Observed::unsettled`]), with the digest it was judged by.
pub struct Unsettled {
    update: StatusUpdate,
    digest: [u8; 32],
}

impl std::ops::Deref for Unsettled {
    type Target = StatusUpdate;

    fn deref(&self) -> &StatusUpdate {
        &self.update
    }
}

/// What an update asks for at `generation`, as a digest: the same digest at the same resource
/// version is the same status.
fn digest(wanted: &[Wanted], extra: &serde_json::Map<String, Value>, generation: Option<i64>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(&generation.map_or([0xff; 8], i64::to_le_bytes));
    for wanted in wanted {
        field(wanted.type_.as_bytes());
        field(&[u8::from(wanted.status)]);
        field(wanted.reason.as_bytes());
        field(wanted.message.as_bytes());
    }
    // Last, so that it needs no length. A map of JSON values has one serialization (its keys are
    // sorted), written straight into the hash.
    let _ = serde_json::to_writer(&mut hasher, extra);
    hasher.finalize().into()
}

/// What the writer reads of an object's status.
pub trait ObservedStatus: Send + Sync {
    /// The status as JSON; made only where a write may be due.
    fn to_json(&self) -> Value;
    /// Whether the condition `type_` is True, when the status has it.
    fn condition(&self, type_: &str) -> Option<bool>;
}

impl<K> ObservedStatus for K
where
    K: HasStatus + Send + Sync,
    K::Status: Serialize + HasCommonStatus,
{
    fn to_json(&self) -> Value {
        self.status().and_then(|status| serde_json::to_value(status).ok()).unwrap_or(Value::Null)
    }

    fn condition(&self, type_: &str) -> Option<bool> {
        let conditions = &self.status()?.common().conditions;
        conditions.iter().find(|c| c.type_ == type_).map(|c| c.status == "True")
    }
}

impl ObservedStatus for Untrusted {
    fn to_json(&self) -> Value {
        self.status.clone()
    }

    fn condition(&self, type_: &str) -> Option<bool> {
        let conditions = self.status.get("conditions")?.as_array()?;
        conditions.iter().find(|c| c["type"] == type_).map(|c| c["status"] == "True")
    }
}

/// An object, by kind and name.
type Key = (Kind, String);

/// By object, the digest of the status a reconcile found in place or wrote, and the resource
/// version the object had then. Carried from one reconcile of a namespace to the next.
#[derive(Default)]
pub struct Settled(HashMap<Key, (String, [u8; 32])>);

/// Every Callguard object of the namespace as read: its generation and, through the cache's own
/// copy, its status; to keep transition times and skip writes that would change nothing.
pub struct Observed {
    pub namespace: String,
    objects: BTreeMap<Key, Seen>,
    settled: Settled,
}

/// One object as read.
pub struct Seen {
    pub generation: Option<i64>,
    version: Option<String>,
    pub object: Arc<dyn ObservedStatus>,
}

impl Observed {
    /// The objects of `objects`; `settled` is what the last reconcile of the namespace settled.
    pub fn of(objects: &NamespaceObjects, settled: Settled) -> Self {
        let mut observed = Observed { namespace: objects.namespace.clone(), objects: BTreeMap::new(), settled };
        observed.add(Kind::CallControlCluster, &objects.clusters);
        observed.add(Kind::SecurityToken, &objects.tokens);
        observed.add(Kind::PhoneSecurityProfile, &objects.phone_profiles);
        observed.add(Kind::Phone, &objects.phones);
        observed.add(Kind::SipTrunkSecurityProfile, &objects.trunk_profiles);
        observed.add(Kind::SipTrunk, &objects.trunks);
        observed.add(Kind::SrstReference, &objects.srst_references);
        observed.add(Kind::H323Gateway, &objects.h323_gateways);
        observed.add(Kind::MgcpGateway, &objects.mgcp_gateways);
        observed.add(Kind::EndUser, &objects.end_users);
        observed.add(Kind::ApplicationUser, &objects.application_users);
        observed.add(Kind::SipRealm, &objects.realms);
        // Validation names what is wrong with them, in their own status too.
        for odd in &objects.untrusted {
            let seen = Seen { generation: odd.generation, version: None, object: Arc::clone(odd) as _ };
            observed.objects.insert((odd.kind, odd.name.clone()), seen);
        }
        let present = &observed.objects;
        observed.settled.0.retain(|key, _| present.contains_key(key));
        observed
    }

    fn add<K>(&mut self, kind: Kind, list: &[Arc<K>])
    where
        K: Resource + ObservedStatus + 'static,
    {
        for object in list {
            let meta = object.meta();
            let key = (kind, meta.name.clone().unwrap_or_default());
            let seen = Seen { generation: meta.generation, version: meta.resource_version.clone(), object: Arc::clone(object) as _ };
            self.objects.insert(key, seen);
        }
    }

    pub fn get(&self, kind: Kind, name: &str) -> Option<&Seen> {
        self.objects.get(&(kind, name.to_owned()))
    }

    /// Every object by kind and name, in that order.
    pub fn names(&self) -> impl Iterator<Item = Key> + '_ {
        self.objects.keys().cloned()
    }

    /// What to carry to the namespace's next reconcile.
    pub fn into_settled(self) -> Settled {
        self.settled
    }

    /// The statuses of `updates` that a write would change, each with its key and the digest of
    /// what it asks for; those it would not change are settled.
    #[cfg(test)]
    fn due(&mut self, updates: Vec<StatusUpdate>, now: &Time) -> Vec<Write> {
        let unsettled: Vec<Unsettled> = updates.into_iter().filter_map(|update| self.unsettled(update)).collect();
        let mut in_place = Vec::new();
        let writes = self.writes(unsettled, now, &mut in_place).collect();
        self.settle_all(in_place);
        writes
    }

    /// The writes `updates` need, each made only when it is pulled; what is found in place goes to
    /// `in_place`, to be settled once the writes are done.
    fn writes<'a>(
        &'a self,
        updates: Vec<Unsettled>,
        now: &'a Time,
        in_place: &'a mut Vec<(Key, (String, [u8; 32]))>,
    ) -> impl Iterator<Item = Write> + 'a {
        updates.into_iter().filter_map(move |update| match self.due_one(update, now) {
            Due::Write(write) => Some(write),
            Due::InPlace(key, settled) => {
                in_place.push((key, settled));
                None
            }
            Due::Nothing => None,
        })
    }

    /// What `update` needs: nothing (its object is gone), nothing but to be settled (found in
    /// place), or a write.
    fn due_one(&self, update: Unsettled, now: &Time) -> Due {
        let Unsettled { update: StatusUpdate { kind, name, wanted, extra }, digest } = update;
        let key = (kind, name);
        let Some(Seen { generation, version, object }) = self.objects.get(&key) else { return Due::Nothing };
        let in_place = |key| version.clone().map_or(Due::Nothing, |version| Due::InPlace(key, (version, digest)));
        let previous = object.to_json();
        let unchanged = |field: &String, value: &Value| match previous.get(field) {
            None => value.is_null(),
            Some(old) => old == value,
        };
        if already_set(&wanted, previous.get("conditions"), *generation)
            && previous.get("observedGeneration").and_then(Value::as_i64) == *generation
            && extra.iter().all(|(field, value)| unchanged(field, value))
        {
            return in_place(key);
        }
        let previous_conditions: Vec<Condition> =
            previous.get("conditions").and_then(|c| serde_json::from_value(c.clone()).ok()).unwrap_or_default();
        let mut status = extra;
        status.insert("observedGeneration".into(), json!(generation));
        status.insert("conditions".into(), json!(conditions(&wanted, &previous_conditions, *generation, now)));
        if status.iter().all(|(field, value)| unchanged(field, value)) {
            return in_place(key);
        }
        Due::Write(Write { key, digest, status: Value::Object(status) })
    }

    fn settle_all(&mut self, settled: impl IntoIterator<Item = (Key, (String, [u8; 32]))>) {
        self.settled.0.extend(settled);
    }

    /// `update`, unless it is settled or its object is gone: a namespace's worth of updates is not
    /// held at once when nearly all of them would change nothing. (What is settled is in place, so
    /// nothing announces a change of it either.)
    pub fn unsettled(&self, update: StatusUpdate) -> Option<Unsettled> {
        let key = (update.kind, update.name);
        let seen = self.objects.get(&key)?;
        let digest = digest(&update.wanted, &update.extra, seen.generation);
        if self.is_settled(&key, seen.version.as_ref(), &digest) {
            return None;
        }
        let update = StatusUpdate { kind: key.0, name: key.1, wanted: update.wanted, extra: update.extra };
        Some(Unsettled { update, digest })
    }

    /// Whether `update` is what this reconcile or an earlier one settled, at the version read.
    fn is_settled(&self, key: &Key, version: Option<&String>, digest: &[u8; 32]) -> bool {
        let Some(version) = version else { return false };
        self.settled.0.get(key).is_some_and(|(at, settled)| at == version && settled == digest)
    }
}

/// What an update needs.
enum Due {
    Nothing,
    InPlace(Key, (String, [u8; 32])),
    Write(Write),
}

/// A status to write, and the digest of what it asks for.
struct Write {
    key: Key,
    digest: [u8; 32],
    status: Value,
}

/// Writes the statuses that changed, through the status subresource, a bounded number at a time.
/// Each status is made as it is written, not all before: a cold start's 45,000 would be held at once.
pub async fn write_statuses(context: &Context, observed: &mut Observed, updates: Vec<Unsettled>) -> Result<(), kube::Error> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let namespace = observed.namespace.clone();
    let caches = context.caches_of(Some(&namespace));
    let mut in_place = Vec::new();
    let results: Vec<_> = futures::stream::iter(observed.writes(updates, &now, &mut in_place))
        .map(|Write { key, digest, status }| {
            let caches = &caches;
            let client = &context.client;
            let namespace = &namespace;
            async move {
                let written = patch_status(client, namespace, key.0, &key.1, status).await?;
                Ok::<_, kube::Error>(written.map(|version| {
                    caches.wrote(key.0, version);
                    (key, (version.to_string(), digest))
                }))
            }
        })
        .buffer_unordered(context.status_concurrency.max(1))
        .collect()
        .await;
    observed.settle_all(in_place);
    let mut failed = None;
    let mut written = Vec::new();
    for result in results {
        match result {
            Ok(settled) => written.extend(settled),
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    observed.settle_all(written);
    failed.map_or(Ok(()), Err)
}

/// Of the object a write answers with, only the resourceVersion it made is read.
#[derive(serde::Deserialize)]
struct Written {
    metadata: WrittenMetadata,
}

#[derive(serde::Deserialize)]
struct WrittenMetadata {
    #[serde(rename = "resourceVersion")]
    resource_version: Option<String>,
}

/// The resourceVersion the write made, when it is a number.
async fn patch_status(client: &Client, namespace: &str, kind: Kind, name: &str, status: Value) -> Result<Option<u64>, kube::Error> {
    match kind {
        Kind::CallControlCluster => patch_status_of::<CallControlCluster>(client, namespace, name, status).await,
        Kind::SecurityToken => patch_status_of::<SecurityToken>(client, namespace, name, status).await,
        Kind::PhoneSecurityProfile => patch_status_of::<PhoneSecurityProfile>(client, namespace, name, status).await,
        Kind::Phone => patch_status_of::<Phone>(client, namespace, name, status).await,
        Kind::SipTrunkSecurityProfile => patch_status_of::<SipTrunkSecurityProfile>(client, namespace, name, status).await,
        Kind::SipTrunk => patch_status_of::<SipTrunk>(client, namespace, name, status).await,
        Kind::SrstReference => patch_status_of::<SrstReference>(client, namespace, name, status).await,
        Kind::H323Gateway => patch_status_of::<H323Gateway>(client, namespace, name, status).await,
        Kind::MgcpGateway => patch_status_of::<MgcpGateway>(client, namespace, name, status).await,
        Kind::EndUser => patch_status_of::<EndUser>(client, namespace, name, status).await,
        Kind::ApplicationUser => patch_status_of::<ApplicationUser>(client, namespace, name, status).await,
        Kind::SipRealm => patch_status_of::<SipRealm>(client, namespace, name, status).await,
    }
}

/// Server-side apply on the status subresource: `spec` is never written.
async fn patch_status_of<K>(client: &Client, namespace: &str, name: &str, status: Value) -> Result<Option<u64>, kube::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let body = json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status});
    let request = kube::core::Request::new(K::url_path(&(), Some(namespace)))
        .patch_subresource("status", name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
        .map_err(kube::Error::BuildRequest)?;
    // Of the object the server answers with, only its version is read: a namespace's worth of them
    // would be parsed for nothing.
    match client.request::<Written>(request).await {
        Ok(written) => Ok(written.metadata.resource_version.and_then(|v| v.parse().ok())),
        // Deleted since it was read: nothing to report on.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::controller::conditions::finished;

    fn phone(version: &str, reason: &str) -> Arc<Phone> {
        let value = json!({
            "apiVersion": "callguard.io/v1alpha1", "kind": "Phone",
            "metadata": {"name": "lobby", "namespace": "voice", "resourceVersion": version, "generation": 2},
            "spec": {"macAddress": "001122334455", "model": "7970", "protocol": "SCCP", "securityProfileRef": "p"},
            "status": {"observedGeneration": 2, "conditions": serde_json::to_value(conditions(&wanted(reason), &[], Some(2), &at())).unwrap()},
        });
        Arc::new(serde_json::from_value(value).expect("a phone"))
    }

    fn wanted(reason: &str) -> Vec<Wanted> {
        finished(Wanted::new("Ready", true, reason, ""), None, vec![])
    }

    fn at() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap())
    }

    fn update(reason: &str) -> Vec<StatusUpdate> {
        vec![StatusUpdate { kind: Kind::Phone, name: "lobby".into(), wanted: wanted(reason), extra: serde_json::Map::new() }]
    }

    fn observed(phone: Arc<Phone>, settled: Settled) -> Observed {
        Observed::of(&NamespaceObjects { namespace: "voice".into(), phones: vec![phone], ..NamespaceObjects::default() }, settled)
    }

    /// A status found in place is settled at its resource version: at that version the same wish
    /// is not compared again (here the status read differs, and no write is due: it was not
    /// read); a new version or a new wish is compared again.
    #[test]
    fn a_status_is_compared_again_only_when_its_version_or_its_wish_changed() {
        let mut first = observed(phone("7", "Built"), Settled::default());
        assert!(first.due(update("Built"), &at()).is_empty(), "in place already");
        assert!(first.is_settled(
            &(Kind::Phone, "lobby".into()),
            Some(&"7".into()),
            &digest(&wanted("Built"), &serde_json::Map::new(), Some(2))
        ));

        let mut same = observed(phone("7", "Other"), first.into_settled());
        assert!(same.due(update("Built"), &at()).is_empty(), "settled at version 7: not read");

        let mut newer = observed(phone("8", "Other"), same.into_settled());
        let due = newer.due(update("Built"), &at());
        assert_eq!(due.len(), 1, "a new version is read");
        assert_eq!(due[0].status["conditions"][0]["reason"], "Built");

        let mut wished = observed(phone("7", "Built"), newer.into_settled());
        assert_eq!(wished.due(update("Moved"), &at()).len(), 1, "a new wish is compared");
    }

    /// A settled update is not even kept for the writer; any other is.
    #[test]
    fn only_unsettled_updates_are_kept() {
        let mut first = observed(phone("7", "Built"), Settled::default());
        assert!(first.due(update("Built"), &at()).is_empty());
        assert!(first.unsettled(update("Built").remove(0)).is_none(), "settled at version 7");
        assert!(first.unsettled(update("Moved").remove(0)).is_some(), "a new wish");
        let newer = observed(phone("8", "Built"), first.into_settled());
        assert!(newer.unsettled(update("Built").remove(0)).is_some(), "a new version");
    }

    /// An object gone from the namespace leaves nothing settled behind.
    #[test]
    fn what_is_settled_goes_with_its_object() {
        let mut first = observed(phone("7", "Built"), Settled::default());
        assert!(first.due(update("Built"), &at()).is_empty());
        let empty = NamespaceObjects { namespace: "voice".into(), ..NamespaceObjects::default() };
        assert!(Observed::of(&empty, first.into_settled()).into_settled().0.is_empty());
    }
}
