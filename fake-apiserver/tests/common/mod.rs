//! Helpers shared by the integration tests: the Phone kind as a `DynamicObject` (this crate must not
//! depend on `callguard`, which dev-depends on it).

#![allow(dead_code)]

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};

pub fn phone_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("callguard.io", "v1alpha1", "Phone"), "phones")
}

pub fn phones(client: kube::Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client, namespace, &phone_resource())
}

pub fn phone_json(name: &str, model: &str) -> Value {
    json!({
        "apiVersion": "callguard.io/v1alpha1",
        "kind": "Phone",
        "metadata": {"name": name},
        "spec": {"macAddress": "001122334455", "model": model, "protocol": "SIP", "securityProfileRef": "sip-non-secure", "directoryNumbers": ["1000"]},
    })
}

pub fn phone(name: &str, model: &str) -> DynamicObject {
    serde_json::from_value(phone_json(name, model)).expect("the phone fixture is a DynamicObject")
}

/// The `code` of a `kube::Error::Api`, or a panic naming the unexpected result.
pub fn api_code<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> u16 {
    match result {
        Err(kube::Error::Api(status)) => status.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

pub fn api_reason<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(status)) => status.reason.clone(),
        other => panic!("expected an API error, got {other:?}"),
    }
}
