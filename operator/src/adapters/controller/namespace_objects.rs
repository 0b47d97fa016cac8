//! Dereference: every Callguard object of a cluster's namespace, the Secrets the operator owns there
//! and the Secrets those objects name, from the watch caches where they are synced and from the API
//! otherwise; and the same objects as the documents
//! `callguard validate` checks, so that the operator and the offline check give the same verdict with
//! the same message. No other Secret of the namespace is ever read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::core::object::HasSpec;
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
use crate::ops::metrics::Kind;
use crate::validate::manifest::Document;

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
    pub untrusted: Vec<Untrusted>,
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
async fn list<K>(client: &Client, namespace: &str, cache: Option<&Cache<K>>) -> Result<(Vec<Arc<K>>, Vec<Untrusted>), kube::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
{
    if let Some(entries) = cache.and_then(|cache| cache.snapshot(namespace)) {
        let (mut typed, mut untrusted) = (Vec::with_capacity(entries.len()), Vec::new());
        for entry in entries {
            match entry {
                Entry::Typed(object) => typed.push(object),
                Entry::Untrusted(odd) => untrusted.push(Untrusted::clone(&odd)),
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
            Err(odd) => untrusted.push(odd),
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
fn split<K>((typed, odd): (Vec<Arc<K>>, Vec<Untrusted>), untrusted: &mut Vec<Untrusted>) -> Vec<Arc<K>> {
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

    /// The objects as manifests: what a user applied (apiVersion, kind, name, spec), without what the
    /// API server or the operator added. Consumes the objects, which are not needed twice.
    pub fn into_documents(self) -> Vec<Document> {
        let mut documents = Vec::new();
        push_all(&mut documents, self.clusters);
        push_all(&mut documents, self.tokens);
        push_all(&mut documents, self.phone_profiles);
        push_all(&mut documents, self.phones);
        push_all(&mut documents, self.trunk_profiles);
        push_all(&mut documents, self.trunks);
        push_all(&mut documents, self.srst_references);
        push_all(&mut documents, self.h323_gateways);
        push_all(&mut documents, self.mgcp_gateways);
        push_all(&mut documents, self.end_users);
        push_all(&mut documents, self.application_users);
        push_all(&mut documents, self.realms);
        for odd in self.untrusted {
            let name = odd.name.clone();
            documents.push(document(odd.document, odd.kind.as_str(), &name));
        }
        for secret in self.secrets {
            let mut value = json!({"apiVersion": "v1", "kind": "Secret", "metadata": metadata(&secret)});
            if let Some(data) = &secret.data {
                value["data"] = serde_json::to_value(data).unwrap_or(Value::Null);
            }
            let name = secret.name_any();
            documents.push(document(value, "Secret", &name));
        }
        documents
    }
}

/// The prefix of the annotations the build reads.
const CALLGUARD_ANNOTATIONS: &str = "callguard.io/";

fn metadata<K: Resource>(object: &K) -> Value {
    let meta = object.meta();
    json!({"name": meta.name, "namespace": meta.namespace})
}

fn push_all<K>(documents: &mut Vec<Document>, objects: Vec<Arc<K>>)
where
    K: Resource<DynamicType = ()> + HasSpec,
    K::Spec: Serialize,
{
    for object in objects {
        let Ok(spec) = serde_json::to_value(object.spec()) else { continue };
        // Callguard's own annotations are requests to the build (a rotation): they go with the object.
        let mut metadata = metadata(&*object);
        let requests: BTreeMap<&String, &String> =
            object.meta().annotations.iter().flatten().filter(|(key, _)| key.starts_with(CALLGUARD_ANNOTATIONS)).collect();
        if !requests.is_empty() {
            metadata["annotations"] = json!(requests);
        }
        let value = json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "metadata": metadata,
            "spec": spec,
        });
        documents.push(document(value, &K::kind(&()), object.meta().name.as_deref().unwrap_or_default()));
    }
}

/// Messages name the object as `Kind/name`: there is no file or line.
fn document(value: Value, kind: &str, name: &str) -> Document {
    Document::new(Arc::from(Path::new(&format!("{kind}/{name}"))), 0, Arc::from(""), value)
}
