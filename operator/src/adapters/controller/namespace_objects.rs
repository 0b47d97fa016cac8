//! Dereference: every Callguard object of a cluster's namespace, the Secrets the operator owns there
//! and the Secrets those objects name, from the watch caches where they are synced and from the API
//! otherwise; and the same objects as the documents
//! `callguard validate` checks, so that the operator and the offline check give the same verdict with
//! the same message. No other Secret of the namespace is ever read.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::core::object::{HasSpec, HasStatus};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::cache::{Cache, Caches, Entry};
use super::labels;
use crate::api::{
    ApplicationUser, CallControlCluster, EndUser, H323Gateway, MgcpGateway, Phone, PhoneSecurityProfile, SecurityToken, SipRealm, SipTrunk,
    SipTrunkSecurityProfile, SrstReference,
};
use crate::core::parallel::on_every_core;
use crate::ops::metrics::Kind;
use crate::validate::manifest::Document;
use crate::validate::{ObjectRef, PassedChecks, Prechecked, SecretData, Snapshot, SnapshotKind, ToCheck};
use zeroize::Zeroizing;

/// The namespace as the API server holds it.
#[derive(Default)]
pub struct NamespaceObjects {
    pub namespace: String,
    pub clusters: Vec<Arc<CallControlCluster>>,
    pub tokens: Vec<Arc<SecurityToken>>,
    pub phone_profiles: Vec<Arc<PhoneSecurityProfile>>,
    pub phones: Vec<Arc<Phone>>,
    pub trunk_profiles: Vec<Arc<SipTrunkSecurityProfile>>,
    pub trunks: Vec<Arc<SipTrunk>>,
    pub srst_references: Vec<Arc<SrstReference>>,
    pub h323_gateways: Vec<Arc<H323Gateway>>,
    pub mgcp_gateways: Vec<Arc<MgcpGateway>>,
    pub end_users: Vec<Arc<EndUser>>,
    pub application_users: Vec<Arc<ApplicationUser>>,
    pub realms: Vec<Arc<SipRealm>>,
    pub secrets: Vec<Secret>,
    pub config_maps: Vec<ConfigMap>,
    /// The objects the Rust types cannot read.
    pub untrusted: Vec<Arc<Untrusted>>,
}

/// A Callguard object the Rust types cannot read (stored under an older or looser schema, or
/// written past it): kept as the API server holds it, so that validation names it and its field
/// while the list of its kind is still read, instead of the whole read failing for ever.
#[derive(Clone)]
pub struct Untrusted {
    pub kind: Kind,
    pub name: String,
    pub generation: Option<i64>,
    pub status: Value,
    /// apiVersion, kind, metadata (name, namespace) and spec, as a manifest.
    pub document: Value,
}

/// The `K`s of the namespace, and those of them the type cannot read: from the watch cache while it
/// is synced, otherwise listed. Typed first; only when one object does not fit is the list read again
/// untyped and taken object by object.
async fn list<K>(client: &Client, namespace: &str, cache: Option<&Cache<K>>) -> Result<(Vec<Arc<K>>, Vec<Arc<Untrusted>>), kube::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
{
    if let Some(entries) = cache.and_then(|cache| cache.snapshot(namespace)) {
        let (mut typed, mut untrusted) = (Vec::with_capacity(entries.len()), Vec::new());
        for entry in entries {
            match entry {
                Entry::Typed(object) => typed.push(object),
                Entry::Untrusted(odd) => untrusted.push(odd),
            }
        }
        return Ok((typed, untrusted));
    }
    match Api::<K>::namespaced(client.clone(), namespace).list(&ListParams::default()).await {
        Ok(list) => return Ok((list.items.into_iter().map(Arc::new).collect(), Vec::new())),
        Err(kube::Error::SerdeError(_)) => {}
        Err(e) => return Err(e),
    }
    let resource = ApiResource::erase::<K>(&());
    let raw: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let (mut typed, mut untrusted) = (Vec::new(), Vec::new());
    for object in raw.list(&ListParams::default()).await?.items {
        match typed_or_untrusted::<K>(&object) {
            Ok(object) => typed.push(Arc::new(object)),
            Err(odd) => untrusted.push(Arc::new(odd)),
        }
    }
    Ok((typed, untrusted))
}

/// An object read untyped, as its type, or as what validation needs to name why it does not fit.
pub fn typed_or_untrusted<K>(object: &DynamicObject) -> Result<K, Untrusted>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    let kind = Kind::ALL.into_iter().find(|kind| kind.as_str() == K::kind(&())).expect("every cached or listed kind is a Callguard kind");
    let mut value = serde_json::to_value(object).unwrap_or(Value::Null);
    value["apiVersion"] = json!(K::api_version(&()));
    value["kind"] = json!(K::kind(&()));
    let error = match serde_json::from_value::<K>(value.clone()) {
        Ok(typed) => return Ok(typed),
        Err(error) => error,
    };
    let name = object.name_any();
    let namespace = object.namespace().unwrap_or_default();
    tracing::info!(%namespace, "{}/{name} does not fit its type ({error}): validation will name its fault", kind.as_str());
    let document = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"name": name, "namespace": namespace},
        "spec": value.get_mut("spec").map(Value::take).unwrap_or(Value::Null),
    });
    let status = value.get_mut("status").map(Value::take).unwrap_or(Value::Null);
    Err(Untrusted { kind, name, generation: object.metadata.generation, status, document })
}

/// The typed objects of a list; its untrusted ones join `untrusted`.
fn split<K>((typed, odd): (Vec<Arc<K>>, Vec<Arc<Untrusted>>), untrusted: &mut Vec<Arc<Untrusted>>) -> Vec<Arc<K>> {
    untrusted.extend(odd);
    typed
}

/// Every Secret the Callguard objects name.
fn referenced_secrets(objects: &NamespaceObjects) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for cluster in &objects.clusters {
        names.extend(cluster.spec.capf.as_ref().and_then(|c| c.manufacturer_ca_certificates.as_ref()).map(|r| r.name.clone()));
    }
    for token in &objects.tokens {
        names.extend([&token.spec.certificate, &token.spec.private_key, &token.spec.password].map(|r| r.name.clone()));
    }
    for phone in &objects.phones {
        names.extend(phone.spec.capf.as_ref().and_then(|c| c.authentication_string.as_ref()).map(|r| r.name.clone()));
        names.extend(phone.spec.config_encryption.as_ref().map(|c| c.symmetric_key.name.clone()));
    }
    for user in &objects.end_users {
        names.extend(user.spec.digest_credentials.iter().map(|r| r.name.clone()));
        names.extend(user.spec.capf_profiles.iter().filter_map(|p| p.authentication_string.as_ref()).map(|r| r.name.clone()));
    }
    for user in &objects.application_users {
        names.extend(user.spec.digest_credentials.iter().map(|r| r.name.clone()));
        names.extend(user.spec.capf_profiles.iter().filter_map(|p| p.authentication_string.as_ref()).map(|r| r.name.clone()));
    }
    for realm in &objects.realms {
        names.insert(realm.spec.password.name.clone());
    }
    names
}

/// The named Secrets that exist, read one by one (never a list of the namespace's Secrets).
async fn get_secrets(client: &Client, namespace: &str, names: BTreeSet<String>) -> Result<Vec<Secret>, kube::Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let found: Vec<Result<Option<Secret>, kube::Error>> = futures::stream::iter(names)
        .map(|name| {
            let api = api.clone();
            async move { api.get_opt(&name).await }
        })
        .buffered(16)
        .collect()
        .await;
    Ok(found.into_iter().collect::<Result<Vec<_>, _>>()?.into_iter().flatten().collect())
}

impl NamespaceObjects {
    /// The namespace from the watch caches of `caches` where they are synced, from the API server
    /// otherwise (and always, without caches: `callguard backup`).
    pub async fn read(client: &Client, namespace: &str, caches: Option<&Caches>) -> Result<Self, kube::Error> {
        let (clusters, tokens, phone_profiles, phones, trunk_profiles, trunks) = tokio::try_join!(
            list::<CallControlCluster>(client, namespace, None),
            // Read fresh: see `Caches`.
            list::<SecurityToken>(client, namespace, None),
            list(client, namespace, caches.map(|c| &c.phone_profiles)),
            list(client, namespace, caches.map(|c| &c.phones)),
            list(client, namespace, caches.map(|c| &c.trunk_profiles)),
            list(client, namespace, caches.map(|c| &c.trunks)),
        )?;
        // The state the operator owns, but not the projections it writes for the data plane (large,
        // and derived from the rest).
        let owned = ListParams::default().labels(&format!(
            "{}={},{}!={}",
            labels::MANAGED_BY_KEY,
            labels::MANAGED_BY,
            labels::COMPONENT,
            labels::PROJECTION_COMPONENT
        ));
        let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
        let (srst_references, h323_gateways, mgcp_gateways, end_users, application_users, realms, owned_secrets, config_maps) = tokio::try_join!(
            list(client, namespace, caches.map(|c| &c.srst_references)),
            list(client, namespace, caches.map(|c| &c.h323_gateways)),
            list(client, namespace, caches.map(|c| &c.mgcp_gateways)),
            list(client, namespace, caches.map(|c| &c.end_users)),
            list(client, namespace, caches.map(|c| &c.application_users)),
            list(client, namespace, caches.map(|c| &c.realms)),
            async { Ok(secrets.list(&owned).await?.items) },
            async { Ok(Api::<ConfigMap>::namespaced(client.clone(), namespace).list(&owned).await?.items) },
        )?;
        let mut untrusted = Vec::new();
        let mut objects = NamespaceObjects {
            namespace: namespace.to_owned(),
            clusters: split(clusters, &mut untrusted),
            tokens: split(tokens, &mut untrusted),
            phone_profiles: split(phone_profiles, &mut untrusted),
            phones: split(phones, &mut untrusted),
            trunk_profiles: split(trunk_profiles, &mut untrusted),
            trunks: split(trunks, &mut untrusted),
            srst_references: split(srst_references, &mut untrusted),
            h323_gateways: split(h323_gateways, &mut untrusted),
            mgcp_gateways: split(mgcp_gateways, &mut untrusted),
            end_users: split(end_users, &mut untrusted),
            application_users: split(application_users, &mut untrusted),
            realms: split(realms, &mut untrusted),
            secrets: owned_secrets,
            config_maps,
            untrusted,
        };
        // The Secrets the objects name: those labelled `callguard.io/watch` in one list (a user's
        // explicit word that Callguard may read them), the others one by one. A labelled Secret no
        // object names is dropped at once.
        let mut wanted = referenced_secrets(&objects);
        for secret in &objects.secrets {
            wanted.remove(secret.metadata.name.as_deref().unwrap_or_default());
        }
        let cached = caches.and_then(|c| c.watched_secrets.snapshot(namespace));
        let labelled = match cached {
            Some(entries) => entries
                .into_iter()
                .filter_map(|entry| match entry {
                    Entry::Typed(secret) => Some(Secret::clone(&secret)),
                    Entry::Untrusted(_) => None,
                })
                .collect(),
            None => secrets.list(&ListParams::default().labels(labels::WATCHED_SECRET)).await?.items,
        };
        for secret in labelled {
            if wanted.remove(secret.metadata.name.as_deref().unwrap_or_default()) {
                objects.secrets.push(secret);
            }
        }
        objects.secrets.extend(get_secrets(client, namespace, wanted).await?);
        Ok(objects)
    }

    /// The objects as validation takes them. An object whose digest is among `passed` (it passed the
    /// schema and CEL checks in the last reconcile, and has not changed since) goes into the
    /// snapshot as it is; every other one becomes a manifest: what a user applied (apiVersion, kind,
    /// name, spec), without what the API server or the operator added, with the digest it is
    /// remembered by when it passes. Consumes the objects, which are not needed twice.
    pub fn into_validation(self, passed: &HashSet<[u8; 32]>) -> (Vec<Document>, Vec<[u8; 32]>, Prechecked) {
        let mut out = Validation { passed, documents: Vec::new(), digests: Vec::new(), prechecked: Prechecked::default() };
        out.prechecked.snapshot = Snapshot::new(&self.namespace);
        out.take_all(self.clusters);
        out.take_all(self.tokens);
        out.take_all(self.phone_profiles);
        out.take_all(self.phones);
        out.take_all(self.trunk_profiles);
        out.take_all(self.trunks);
        out.take_all(self.srst_references);
        out.take_all(self.h323_gateways);
        out.take_all(self.mgcp_gateways);
        out.take_all(self.end_users);
        out.take_all(self.application_users);
        out.take_all(self.realms);
        for odd in self.untrusted {
            let odd = Arc::unwrap_or_clone(odd);
            out.push_document(document(odd.document, odd.kind.as_str(), &odd.name), None);
        }
        out.take_secrets(self.secrets);
        (out.documents, out.digests, out.prechecked)
    }
}

/// What [`NamespaceObjects::into_validation`] makes.
struct Validation<'p> {
    passed: &'p HashSet<[u8; 32]>,
    documents: Vec<Document>,
    digests: Vec<[u8; 32]>,
    prechecked: Prechecked,
}

impl Validation<'_> {
    fn push_document(&mut self, document: Document, digest: Option<[u8; 32]>) {
        self.digests.push(digest.unwrap_or_else(|| PassedChecks::digest(&document.value)));
        self.documents.push(document);
    }

    fn take_all<K>(&mut self, objects: Vec<Arc<K>>)
    where
        K: Resource<DynamicType = ()> + HasSpec + HasStatus + SnapshotKind + Clone + Send + Sync + 'static,
        K::Spec: Serialize,
    {
        // Digests are most of what an unchanged namespace costs to validate: on every core.
        let digested = on_every_core(&objects, |object| {
            let meta = object.meta();
            let requests = build_requests(meta);
            (PassedChecks::digest(&(K::api_version(&()), K::kind(&()), &meta.name, &meta.namespace, &requests, object.spec())), requests)
        });
        for (object, (digest, requests)) in objects.into_iter().zip(digested) {
            let name = object.meta().name.clone().unwrap_or_default();
            let namespace = object.meta().namespace.clone();
            let reference =
                ObjectRef { kind: K::kind(&()).into_owned(), namespace: namespace.clone().unwrap_or_default(), name: name.clone() };
            // The cached object itself, shared, not copied: the rules and the build read its name,
            // its Callguard annotations and its spec, which are what its digest covers.
            let typed = if K::STATUS_READ {
                // As its manifest would be typed: its name and requests, and no status.
                let mut typed = K::clone(&object);
                *typed.meta_mut() = ObjectMeta {
                    name: Some(name.clone()),
                    namespace: namespace.clone(),
                    annotations: (!requests.is_empty()).then(|| requests.clone()),
                    ..ObjectMeta::default()
                };
                *typed.status_mut() = None;
                Arc::new(typed)
            } else {
                object
            };
            if self.passed.contains(&digest) {
                K::entries(&mut self.prechecked.snapshot).insert(name, typed);
                self.prechecked.objects.push((reference, false));
                self.prechecked.digests.push(digest);
                continue;
            }
            let manifest = Arc::clone(&typed);
            let manifest_name = name.clone();
            let document = move || {
                let mut metadata = json!({"name": manifest_name, "namespace": namespace});
                if !requests.is_empty() {
                    metadata["annotations"] = json!(requests);
                }
                // A spec that cannot be written as JSON fails the schema's checks, by name.
                let spec = serde_json::to_value(manifest.spec()).unwrap_or(Value::Null);
                json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "metadata": metadata, "spec": spec})
            };
            let put = move |snapshot: &mut Snapshot| drop(K::entries(snapshot).insert(name, typed));
            self.prechecked.to_check.push(ToCheck { object: reference, digest, document: Box::new(document), put: Box::new(put) });
        }
    }

    /// A Secret's data is bytes from the API server, always of the shape validation asks: what
    /// it checks is the manifest made of it, and its digest is of the name and the bytes.
    fn take_secrets(&mut self, secrets: Vec<Secret>) {
        fn data(secret: &Secret) -> BTreeMap<&String, &[u8]> {
            secret.data.iter().flatten().map(|(key, bytes)| (key, bytes.0.as_slice())).collect()
        }
        let digests = on_every_core(&secrets, |secret| {
            PassedChecks::digest(&("v1", "Secret", &secret.metadata.name, &secret.metadata.namespace, data(secret)))
        });
        for (secret, digest) in secrets.into_iter().zip(digests) {
            let name = secret.name_any();
            if self.passed.contains(&digest) {
                let decoded = secret.data.into_iter().flatten().map(|(key, bytes)| (key, Zeroizing::new(bytes.0))).collect();
                self.prechecked.snapshot.secrets.insert(name.clone(), SecretData(decoded));
                let object = ObjectRef { kind: "Secret".into(), namespace: secret.metadata.namespace.unwrap_or_default(), name };
                self.prechecked.objects.push((object, true));
                self.prechecked.digests.push(digest);
                continue;
            }
            let mut value =
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": secret.metadata.namespace}});
            if let Some(data) = &secret.data {
                value["data"] = serde_json::to_value(data).unwrap_or(Value::Null);
            }
            self.push_document(document(value, "Secret", &name), Some(digest));
        }
    }
}

/// The prefix of the annotations the build reads.
const CALLGUARD_ANNOTATIONS: &str = "callguard.io/";

/// Callguard's own annotations of an object: requests to the build (a rotation), which go with it
/// into validation and the build; nobody else's do.
fn build_requests(meta: &ObjectMeta) -> BTreeMap<String, String> {
    let annotations = meta.annotations.iter().flatten();
    annotations.filter(|(key, _)| key.starts_with(CALLGUARD_ANNOTATIONS)).map(|(key, value)| (key.clone(), value.clone())).collect()
}

/// Messages name the object as `Kind/name`: there is no file or line.
fn document(value: Value, kind: &str, name: &str) -> Document {
    Document::new(Arc::from(Path::new(&format!("{kind}/{name}"))), 0, Arc::from(""), value)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::validate::{Report, SecretPolicy, validate_documents, validate_remembering};

    /// The quickstart's objects as the API server would hand them over: in a namespace, with a uid,
    /// a resource version, labels, others' annotations and a status, and Secrets' `stringData`
    /// moved into `data`.
    fn quickstart() -> NamespaceObjects {
        let mut objects = NamespaceObjects { namespace: "voice".into(), ..NamespaceObjects::default() };
        let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart");
        let mut files: Vec<_> = std::fs::read_dir(directory).unwrap().map(|entry| entry.unwrap().path()).collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for document in serde_yaml::Deserializer::from_str(&text) {
                let mut value = Value::deserialize(document).unwrap();
                let kind = value["kind"].as_str().unwrap().to_string();
                let metadata = &mut value["metadata"];
                metadata["namespace"] = json!("voice");
                metadata["uid"] = json!(format!("uid-{kind}-{}", metadata["name"].as_str().unwrap()));
                metadata["resourceVersion"] = json!("41");
                metadata["labels"] = json!({"team": "voice"});
                metadata["annotations"] = json!({"example.com/note": "not the build's", "callguard.io/rotate-ca": "r1"});
                if kind != "Secret" {
                    value["status"] = json!({});
                }
                fn typed<K: DeserializeOwned>(value: Value) -> Arc<K> {
                    Arc::new(serde_json::from_value(value).unwrap())
                }
                match kind.as_str() {
                    "CallControlCluster" => objects.clusters.push(typed(value)),
                    "SecurityToken" => objects.tokens.push(typed(value)),
                    "PhoneSecurityProfile" => objects.phone_profiles.push(typed(value)),
                    "Phone" => objects.phones.push(typed(value)),
                    "SipTrunkSecurityProfile" => objects.trunk_profiles.push(typed(value)),
                    "SipTrunk" => objects.trunks.push(typed(value)),
                    "SrstReference" => objects.srst_references.push(typed(value)),
                    "H323Gateway" => objects.h323_gateways.push(typed(value)),
                    "MgcpGateway" => objects.mgcp_gateways.push(typed(value)),
                    "EndUser" => objects.end_users.push(typed(value)),
                    "ApplicationUser" => objects.application_users.push(typed(value)),
                    "SipRealm" => objects.realms.push(typed(value)),
                    "Secret" => {
                        use base64::Engine;
                        let plain = value.get_mut("stringData").map(Value::take).unwrap_or(json!({}));
                        for (key, text) in plain.as_object().unwrap() {
                            let encoded = base64::engine::general_purpose::STANDARD.encode(text.as_str().unwrap());
                            value["data"][key] = json!(encoded);
                        }
                        objects.secrets.push(serde_json::from_value(value).unwrap());
                    }
                    other => panic!("a kind the quickstart should not hold: {other}"),
                }
            }
        }
        objects
    }

    /// Runs the operator's validation of `objects` with `memory`; the documents made (or to be
    /// made, of typed objects, as they are checked), and the report.
    fn validate(objects: NamespaceObjects, memory: &PassedChecks) -> (usize, Report) {
        let before = memory.take();
        let (documents, digests, prechecked) = objects.into_validation(&before);
        let made = documents.len() + prechecked.to_check.len();
        (made, validate_remembering(&documents, &digests, prechecked, SecretPolicy::Require, &before, memory))
    }

    /// Every document the operator's validation checks, typed objects' included, made at once.
    fn all_documents(objects: NamespaceObjects) -> Vec<Document> {
        let (mut documents, _, prechecked) = objects.into_validation(&HashSet::new());
        documents.extend(prechecked.to_check.iter().map(|item| document((item.document)(), &item.object.kind, &item.object.name)));
        documents
    }

    /// Everything a snapshot holds that a rule or the build reads, comparable: each typed object's
    /// name, Callguard annotations, spec and (where a rule reads it) status as JSON; the Secrets'
    /// bytes.
    fn contents(report: &Report) -> Value {
        fn read<K>(objects: &BTreeMap<String, Arc<K>>) -> Value
        where
            K: Resource + HasSpec + HasStatus + SnapshotKind,
            K::Spec: Serialize,
            K::Status: Serialize,
        {
            let read = objects.iter().map(|(name, object)| {
                let meta = object.meta();
                let status = if K::STATUS_READ { json!(object.status()) } else { Value::Null };
                let metadata = json!({"name": meta.name, "namespace": meta.namespace, "requests": build_requests(meta)});
                (name.clone(), json!({"metadata": metadata, "spec": object.spec(), "status": status}))
            });
            Value::Object(read.collect())
        }
        let snapshot = &report.snapshots["voice"];
        let secrets: BTreeMap<&String, Vec<&[u8]>> =
            snapshot.secrets.iter().map(|(name, data)| (name, data.0.values().map(|bytes| bytes.as_slice()).collect())).collect();
        json!({
            "clusters": read(&snapshot.clusters), "tokens": read(&snapshot.tokens), "phoneProfiles": read(&snapshot.phone_profiles),
            "phones": read(&snapshot.phones), "trunkProfiles": read(&snapshot.trunk_profiles), "trunks": read(&snapshot.trunks),
            "srst": read(&snapshot.srst_references), "h323": read(&snapshot.h323_gateways), "mgcp": read(&snapshot.mgcp_gateways),
            "endUsers": read(&snapshot.end_users), "applicationUsers": read(&snapshot.application_users), "realms": read(&snapshot.realms),
            "secrets": secrets, "invalid": snapshot.invalid,
        })
    }

    /// An unchanged object that passed its checks goes into the snapshot as it is, with no document
    /// made; the snapshot is the one its documents would make, and an edit makes one document.
    #[test]
    fn what_passed_unchanged_is_taken_typed_and_makes_the_same_snapshot_as_its_documents() {
        let memory = PassedChecks::default();
        let objects = quickstart();
        let cached = Arc::clone(&objects.phones[0]);
        let (documents, first) = validate(objects, &memory);
        assert!(first.violations.is_empty(), "{:?}", first.violations);
        assert_eq!(documents, first.objects + first.secrets);
        let expected = contents(&first);
        assert_eq!(expected["phones"].as_object().map(|phones| phones.len()), Some(7));
        // Checked through its document, and then the cached phone itself, not a copy; the snapshot
        // the documents alone make.
        assert!(Arc::ptr_eq(&first.snapshots["voice"].phones[cached.metadata.name.as_ref().unwrap()], &cached));
        assert_eq!(contents(&validate_documents(&all_documents(quickstart()), SecretPolicy::Require)), expected);

        let objects = quickstart();
        let cached = Arc::clone(&objects.phones[0]);
        let (documents, second) = validate(objects, &memory);
        assert_eq!(documents, 0, "nothing changed: no document is made");
        assert!(second.violations.is_empty(), "{:?}", second.violations);
        assert_eq!((second.objects, second.secrets), (first.objects, first.secrets));
        assert_eq!(contents(&second), expected);
        // The cached phone itself, not a copy; a token as its manifest, without the status it has.
        let snapshot = &second.snapshots["voice"];
        assert!(Arc::ptr_eq(&snapshot.phones[cached.metadata.name.as_ref().unwrap()], &cached));
        let token = snapshot.tokens.values().next().unwrap();
        assert_eq!((token.metadata.uid.as_ref(), token.status.as_ref()), (None, None));
        assert_eq!(token.metadata.annotations, Some([("callguard.io/rotate-ca".to_string(), "r1".to_string())].into()));

        // One phone edited: one document, and the snapshot a fresh validation makes.
        let edited = || {
            let mut objects = quickstart();
            let mut phone = Phone::clone(&objects.phones[0]);
            phone.spec.description = Some("edited".into());
            objects.phones[0] = Arc::new(phone);
            objects
        };
        let (documents, third) = validate(edited(), &memory);
        assert_eq!(documents, 1);
        let (_, fresh) = validate(edited(), &PassedChecks::default());
        assert_eq!(contents(&third), contents(&fresh));
        assert_ne!(contents(&third), expected);
    }

    /// A changed object that breaks a CEL rule is named, and kept out of the snapshot, as its
    /// document would be: the same violations, in the same places.
    #[test]
    fn a_changed_object_that_breaks_a_rule_reads_as_it_would_from_its_document() {
        let breaking = || {
            let mut objects = quickstart();
            let mut phone = Phone::clone(&objects.phones[0]);
            phone.spec.model = serde_json::from_value(json!("7905")).unwrap();
            phone.spec.protocol = serde_json::from_value(json!("SCCP")).unwrap();
            objects.phones[0] = Arc::new(phone);
            objects
        };
        let (made, report) = validate(breaking(), &PassedChecks::default());
        assert!(made > 0);
        let from_documents = validate_documents(&all_documents(breaking()), SecretPolicy::Require);
        assert!(report.violations.iter().any(|v| v.violation.message.contains("P.7-4")), "{:?}", report.violations);
        assert_eq!(report.violations, from_documents.violations);
        assert_eq!(contents(&report), contents(&from_documents));
    }

    /// A rule across objects that an unchanged object now breaks (the profile it names is gone)
    /// names it as its document would: the same message, the same place.
    #[test]
    fn a_cross_object_fault_of_an_unchanged_object_reads_as_it_would_from_its_document() {
        let memory = PassedChecks::default();
        assert!(validate(quickstart(), &memory).1.violations.is_empty());
        let without_profile = || {
            let mut objects = quickstart();
            let profile = objects.phones[0].spec.security_profile_ref.clone();
            objects.phone_profiles.retain(|p| p.metadata.name.as_deref() != Some(profile.as_str()));
            objects
        };
        let (documents, remembered) = validate(without_profile(), &memory);
        assert_eq!(documents, 0);
        let (_, fresh) = validate(without_profile(), &PassedChecks::default());
        assert!(!fresh.violations.is_empty());
        assert_eq!(remembered.violations, fresh.violations);
    }
}
