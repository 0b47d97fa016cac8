//! Names and labels of what the operator creates for a cluster. Everything it owns carries
//! [`MANAGED_BY`] and [`CLUSTER`], which is how it finds what no longer belongs.

use std::collections::BTreeMap;

pub const MANAGED_BY_KEY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "callguard";
pub const CLUSTER: &str = "callguard.io/cluster";
pub const COMPONENT: &str = "app.kubernetes.io/component";
/// The server-side-apply field manager of every write.
pub const FIELD_MANAGER: &str = "callguard";
/// Pod-template annotation: a digest of the certificates and trust lists the pods use, so that a
/// change rolls them.
pub const CONTENT_HASH: &str = "callguard.io/content-hash";

/// The labels of an object the cluster owns.
pub fn owned(cluster: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_KEY.to_owned(), MANAGED_BY.to_owned()),
        (CLUSTER.to_owned(), cluster.to_owned()),
        (COMPONENT.to_owned(), component.to_owned()),
    ])
}

/// The label selector of everything the cluster owns.
pub fn owned_selector(cluster: &str) -> String {
    format!("{MANAGED_BY_KEY}={MANAGED_BY},{CLUSTER}={cluster}")
}

/// Secret with the cluster CA.
pub fn ca_secret(cluster: &str) -> String {
    format!("{cluster}-ca")
}

/// ConfigMap with the published ITL and CTL: public, and small (a trust list is at most 64 KiB).
pub fn trust_config_map(cluster: &str) -> String {
    format!("{cluster}-trust")
}

/// Name of a data-plane service's workload, Service, ServiceAccount, Role and RoleBinding.
pub fn service_name(cluster: &str, service: &str) -> String {
    format!("{cluster}-{service}")
}

/// Secret with the token registry: failure counts, locks and revocations by certificate.
pub fn tokens_secret(cluster: &str) -> String {
    format!("{cluster}-tokens")
}

/// Label a user puts on a Secret that Callguard objects name, so that an edit to it reconciles at
/// once; unlabelled ones are read at each reconcile all the same.
pub const WATCHED_SECRET: &str = "callguard.io/watch";

/// Annotation on a CallControlCluster naming the identity to replace when pieces of it are lost.
pub const NEW_IDENTITY: &str = "callguard.io/new-identity";

/// The component label of the Secrets that project a service's files (`projection`).
pub const PROJECTION_COMPONENT: &str = "tftp-files";
