//! Garbage collection as kube-controller-manager does it with background propagation (API docs:
//! "Garbage Collection", "Owners and Dependents"), done at once inside the deleting write so tests need
//! not wait: when an owner is removed, each dependent that has no other live owner is deleted (its
//! finalizers respected); a dependent that still has a live owner only loses the dangling reference;
//! and a dependent written when none of its owners is left is deleted too.

use serde_json::{Value, json};

use crate::store::{DeleteRequest, Propagation, Store, owner_uids};
use crate::watch::EventType;

impl Store {
    /// Deletes or detaches the dependents of the removed object `owner_uid`; removals cascade.
    pub(crate) fn collect_dependents(&mut self, owner_uid: &str) {
        let Some(dependents) = self.dependents.remove(owner_uid) else { return };
        for (resource_key, key) in dependents {
            let Some(resource) = self.resource_of(&resource_key) else { continue };
            let Some(dependent) = self.object(&resource, &key) else { continue };
            let has_live_owner = owner_uids(&dependent).iter().any(|uid| uid != owner_uid && self.by_uid.contains_key(uid));
            if has_live_owner {
                let detached = without_owner(&dependent, owner_uid);
                self.commit(&resource, key, detached, EventType::Modified);
            } else {
                let request =
                    DeleteRequest { propagation: Propagation::Background, precondition_uid: None, precondition_resource_version: None };
                // The dependent exists (looked up above), so deleting it cannot fail.
                let _ = self.delete(&resource, &key, &request);
            }
        }
    }

    /// A dependent written after all its owners went (a controller's apply in flight when its owner
    /// was deleted) is deleted, as the garbage collector does when it finds an owner missing.
    pub(crate) fn collect_if_orphaned(&mut self, resource: &crate::resources::ResourceType, key: &crate::store::ObjectKey, object: &Value) {
        let owners = owner_uids(object);
        let deleting = object.pointer("/metadata/deletionTimestamp").is_some();
        if deleting || owners.is_empty() || owners.iter().any(|uid| self.by_uid.contains_key(uid)) {
            return;
        }
        let request = DeleteRequest { propagation: Propagation::Background, precondition_uid: None, precondition_resource_version: None };
        // The object was just stored, so deleting it cannot fail.
        let _ = self.delete(resource, key, &request);
    }

    /// `propagationPolicy=Orphan`: the dependents of `owner_uid` lose their reference to it and stay.
    pub(crate) fn orphan_dependents(&mut self, owner_uid: &str) {
        let Some(dependents) = self.dependents.get(owner_uid).cloned() else { return };
        for (resource_key, key) in dependents {
            let Some(resource) = self.resource_of(&resource_key) else { continue };
            if let Some(dependent) = self.object(&resource, &key) {
                self.commit(&resource, key, without_owner(&dependent, owner_uid), EventType::Modified);
            }
        }
    }
}

fn without_owner(object: &Value, owner_uid: &str) -> Value {
    let mut copy = object.clone();
    let references: Vec<Value> = copy
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|reference| reference.get("uid").and_then(Value::as_str) != Some(owner_uid))
        .cloned()
        .collect();
    if let Some(metadata) = copy.get_mut("metadata").and_then(Value::as_object_mut) {
        if references.is_empty() {
            metadata.remove("ownerReferences");
        } else {
            metadata.insert("ownerReferences".into(), json!(references));
        }
    }
    copy
}
