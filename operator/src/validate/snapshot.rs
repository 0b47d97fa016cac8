//! A resolved snapshot of one namespace: the typed Callguard objects and the Secrets they refer
//! to. Built from manifests by `validate`, and from the API by the operator.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use base64::Engine;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde_json::Value;
use zeroize::Zeroizing;

use super::{ObjectRef, Violation};
use crate::api::*;

/// The decoded data of a Secret: key to bytes, wiped from memory when dropped and never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretData(pub BTreeMap<String, Zeroizing<Vec<u8>>>);

impl std::fmt::Debug for SecretData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl SecretData {
    /// Decodes a core/v1 Secret manifest: `data` is base64, `stringData` is plain and wins.
    pub fn from_manifest(value: &Value) -> Result<Self, Violation> {
        let mut data = BTreeMap::new();
        if let Some(map) = value.get("data").and_then(Value::as_object) {
            for (key, encoded) in map {
                let text = encoded.as_str().unwrap_or_default();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| Violation::new(format!("data.{key}"), format!("not base64: {e} (docs/architecture.md §3.2)")))?;
                data.insert(key.clone(), Zeroizing::new(bytes));
            }
        }
        if let Some(map) = value.get("stringData").and_then(Value::as_object) {
            for (key, text) in map {
                data.insert(key.clone(), Zeroizing::new(text.as_str().unwrap_or_default().as_bytes().to_vec()));
            }
        }
        Ok(SecretData(data))
    }
}

/// What to do with a reference to a Secret that is not in the snapshot. GitOps repositories often
/// keep Secrets sealed or in an external store, so `validate` can be told not to demand them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecretPolicy {
    /// Every referenced Secret and key must be present.
    #[default]
    Require,
    /// Missing Secrets are accepted; the keys of Secrets that are present are still checked.
    AllowMissing,
}

/// Every Callguard object of one namespace, by name. In the operator the objects are the watch
/// cache's own, shared: they carry what the API server added, and the rules and the build read only
/// their names, Callguard annotations and specs. A kind whose status a rule reads goes in as a copy
/// without it (see [`SnapshotKind::STATUS_READ`]).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub namespace: String,
    pub clusters: BTreeMap<String, Arc<CallControlCluster>>,
    pub tokens: BTreeMap<String, Arc<SecurityToken>>,
    pub phone_profiles: BTreeMap<String, Arc<PhoneSecurityProfile>>,
    pub phones: BTreeMap<String, Arc<Phone>>,
    pub trunk_profiles: BTreeMap<String, Arc<SipTrunkSecurityProfile>>,
    pub trunks: BTreeMap<String, Arc<SipTrunk>>,
    pub srst_references: BTreeMap<String, Arc<SrstReference>>,
    pub h323_gateways: BTreeMap<String, Arc<H323Gateway>>,
    pub mgcp_gateways: BTreeMap<String, Arc<MgcpGateway>>,
    pub end_users: BTreeMap<String, Arc<EndUser>>,
    pub application_users: BTreeMap<String, Arc<ApplicationUser>>,
    pub realms: BTreeMap<String, Arc<SipRealm>>,
    pub secrets: BTreeMap<String, SecretData>,
    /// Objects that are there but invalid, by kind and name: kept out of the maps above, so that
    /// no rule reads them, and known, so that what refers to them says they are invalid, not missing.
    pub invalid: BTreeSet<(String, String)>,
}

impl Snapshot {
    pub fn new(namespace: &str) -> Self {
        Snapshot { namespace: namespace.to_string(), ..Default::default() }
    }

    /// The names of the valid objects, kind by kind, in the order the guide introduces them.
    pub fn names_by_kind(&self) -> [(&'static str, Vec<&String>); 13] {
        [
            ("CallControlCluster", self.clusters.keys().collect()),
            ("SecurityToken", self.tokens.keys().collect()),
            ("PhoneSecurityProfile", self.phone_profiles.keys().collect()),
            ("Phone", self.phones.keys().collect()),
            ("SipTrunkSecurityProfile", self.trunk_profiles.keys().collect()),
            ("SipTrunk", self.trunks.keys().collect()),
            ("SrstReference", self.srst_references.keys().collect()),
            ("H323Gateway", self.h323_gateways.keys().collect()),
            ("MgcpGateway", self.mgcp_gateways.keys().collect()),
            ("EndUser", self.end_users.keys().collect()),
            ("ApplicationUser", self.application_users.keys().collect()),
            ("SipRealm", self.realms.keys().collect()),
            ("Secret", self.secrets.keys().collect()),
        ]
    }

    /// Adds one manifest, typed by its kind. A value the schema accepted but the types refuse
    /// (an IP address that does not parse, say) is a violation, never a panic.
    pub fn insert(&mut self, object: &ObjectRef, value: &Value) -> Result<(), Violation> {
        let name = object.name.clone();
        match object.kind.as_str() {
            "Secret" => {
                self.secrets.insert(name, SecretData::from_manifest(value)?);
            }
            "CallControlCluster" => insert(&mut self.clusters, name, value)?,
            "SecurityToken" => insert(&mut self.tokens, name, value)?,
            "PhoneSecurityProfile" => insert(&mut self.phone_profiles, name, value)?,
            "Phone" => insert(&mut self.phones, name, value)?,
            "SipTrunkSecurityProfile" => insert(&mut self.trunk_profiles, name, value)?,
            "SipTrunk" => insert(&mut self.trunks, name, value)?,
            "SrstReference" => insert(&mut self.srst_references, name, value)?,
            "H323Gateway" => insert(&mut self.h323_gateways, name, value)?,
            "MgcpGateway" => insert(&mut self.mgcp_gateways, name, value)?,
            "EndUser" => insert(&mut self.end_users, name, value)?,
            "ApplicationUser" => insert(&mut self.application_users, name, value)?,
            "SipRealm" => insert(&mut self.realms, name, value)?,
            other => return Err(Violation::new("kind", format!("{other:?} is not a Callguard kind (docs/architecture.md §3.1)"))),
        }
        Ok(())
    }

    /// Records an object that failed its own checks.
    pub fn mark_invalid(&mut self, object: &ObjectRef) {
        self.invalid.insert((object.kind.clone(), object.name.clone()));
    }

    /// Whether the object of this kind and name is there but invalid.
    pub fn is_invalid(&self, kind: &str, name: &str) -> bool {
        self.invalid.contains(&(kind.to_string(), name.to_string()))
    }

    /// Number of Callguard objects (Secrets not counted).
    pub fn len(&self) -> usize {
        self.clusters.len()
            + self.tokens.len()
            + self.phone_profiles.len()
            + self.phones.len()
            + self.trunk_profiles.len()
            + self.trunks.len()
            + self.srst_references.len()
            + self.h323_gateways.len()
            + self.mgcp_gateways.len()
            + self.end_users.len()
            + self.application_users.len()
            + self.realms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A Callguard kind, as a snapshot holds it.
pub trait SnapshotKind: Sized {
    /// Where a snapshot keeps the objects of this kind, by name.
    fn entries(snapshot: &mut Snapshot) -> &mut BTreeMap<String, Arc<Self>>;
    /// Whether a rule reads the status of this kind: an object read from the API server then goes
    /// into a snapshot without its status, as its manifest would, never with it.
    const STATUS_READ: bool = false;
}

macro_rules! snapshot_kinds {
    ($($kind:ty => $field:ident),* $(,)?) => {
        $(impl SnapshotKind for $kind {
            fn entries(snapshot: &mut Snapshot) -> &mut BTreeMap<String, Arc<Self>> {
                &mut snapshot.$field
            }
        })*
    };
}

// A token's lock is in its status (P.16-5); the lock a build obeys is the token registry's.
impl SnapshotKind for SecurityToken {
    fn entries(snapshot: &mut Snapshot) -> &mut BTreeMap<String, Arc<Self>> {
        &mut snapshot.tokens
    }
    const STATUS_READ: bool = true;
}

snapshot_kinds! {
    CallControlCluster => clusters,
    PhoneSecurityProfile => phone_profiles,
    Phone => phones,
    SipTrunkSecurityProfile => trunk_profiles,
    SipTrunk => trunks,
    SrstReference => srst_references,
    H323Gateway => h323_gateways,
    MgcpGateway => mgcp_gateways,
    EndUser => end_users,
    ApplicationUser => application_users,
    SipRealm => realms,
}

fn insert<K: Resource + DeserializeOwned>(map: &mut BTreeMap<String, Arc<K>>, name: String, value: &Value) -> Result<(), Violation> {
    let typed = K::deserialize(value).map_err(|e| Violation::new("spec", format!("{e} (docs/architecture.md §3.1)")))?;
    map.insert(name, Arc::new(typed));
    Ok(())
}

/// The shape of a core/v1 Secret manifest, as far as Callguard reads it.
pub fn check_secret_shape(value: &Value) -> Vec<Violation> {
    let mut violations = Vec::new();
    if value.pointer("/metadata/name").and_then(Value::as_str).is_none() {
        violations.push(Violation::new("metadata.name", "required field is missing (docs/architecture.md §3.2)"));
    }
    for field in ["data", "stringData"] {
        match value.get(field) {
            None => {}
            Some(Value::Object(map)) => {
                for (key, v) in map {
                    if !v.is_string() {
                        violations.push(Violation::new(format!("{field}.{key}"), "must be a string (docs/architecture.md §3.2)"));
                    }
                }
            }
            Some(_) => violations.push(Violation::new(field, "must be a mapping of key to string (docs/architecture.md §3.2)")),
        }
    }
    if violations.is_empty()
        && let Err(v) = SecretData::from_manifest(value)
    {
        violations.push(v);
    }
    violations
}
