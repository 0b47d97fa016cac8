//! Dereference: every Callguard object and Secret of a cluster's namespace, read from the API, and
//! the same objects as the documents `callguard validate` checks, so that the operator and the
//! offline check give the same verdict with the same message.

use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::api::{
    ApplicationUser, CallControlCluster, EndUser, Phone, PhoneSecurityProfile, SecurityToken, SipRealm, SipTrunk, SipTrunkSecurityProfile,
    SrstReference,
};
use crate::manifest::Document;

/// The namespace as the API server holds it.
#[derive(Default)]
pub struct NamespaceObjects {
    pub namespace: String,
    pub clusters: Vec<CallControlCluster>,
    pub tokens: Vec<SecurityToken>,
    pub phone_profiles: Vec<PhoneSecurityProfile>,
    pub phones: Vec<Phone>,
    pub trunk_profiles: Vec<SipTrunkSecurityProfile>,
    pub trunks: Vec<SipTrunk>,
    pub srst_references: Vec<SrstReference>,
    pub end_users: Vec<EndUser>,
    pub application_users: Vec<ApplicationUser>,
    pub realms: Vec<SipRealm>,
    pub secrets: Vec<Secret>,
    pub config_maps: Vec<ConfigMap>,
}

async fn list<K>(client: &Client, namespace: &str) -> Result<Vec<K>, kube::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
{
    Ok(Api::<K>::namespaced(client.clone(), namespace).list(&ListParams::default()).await?.items)
}

impl NamespaceObjects {
    pub async fn read(client: &Client, namespace: &str) -> Result<Self, kube::Error> {
        let (clusters, tokens, phone_profiles, phones, trunk_profiles, trunks) = tokio::try_join!(
            list(client, namespace),
            list(client, namespace),
            list(client, namespace),
            list(client, namespace),
            list(client, namespace),
            list(client, namespace),
        )?;
        let (srst_references, end_users, application_users, realms, secrets, config_maps) = tokio::try_join!(
            list(client, namespace),
            list(client, namespace),
            list(client, namespace),
            list(client, namespace),
            list(client, namespace),
            list(client, namespace),
        )?;
        Ok(NamespaceObjects {
            namespace: namespace.to_owned(),
            clusters,
            tokens,
            phone_profiles,
            phones,
            trunk_profiles,
            trunks,
            srst_references,
            end_users,
            application_users,
            realms,
            secrets,
            config_maps,
        })
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
        push_all(&mut documents, self.end_users);
        push_all(&mut documents, self.application_users);
        push_all(&mut documents, self.realms);
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

fn metadata<K: Resource>(object: &K) -> Value {
    let meta = object.meta();
    json!({"name": meta.name, "namespace": meta.namespace})
}

fn push_all<K>(documents: &mut Vec<Document>, objects: Vec<K>)
where
    K: Resource<DynamicType = ()> + Serialize,
{
    for object in objects {
        let Ok(mut full) = serde_json::to_value(&object) else { continue };
        let value = json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "metadata": metadata(&object),
            "spec": full.get_mut("spec").map(Value::take).unwrap_or(Value::Null),
        });
        documents.push(document(value, &K::kind(&()), object.meta().name.as_deref().unwrap_or_default()));
    }
}

/// Messages name the object as `Kind/name`: there is no file or line.
fn document(value: Value, kind: &str, name: &str) -> Document {
    Document { file: Arc::from(Path::new(&format!("{kind}/{name}"))), first_line: 0, text: Arc::from(""), value }
}
