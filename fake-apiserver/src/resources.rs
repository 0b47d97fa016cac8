//! The table of resources the server serves: which URL plural maps to which kind, its scope, whether it
//! has a status subresource, and how server-side apply treats its lists.

use std::collections::HashMap;

use serde_json::{Value, json};

/// How server-side apply and strategic merge treat a list (the `x-kubernetes-list-type` of the schema).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListType {
    /// The list is one value: whoever applies it owns all of it and replaces it.
    Atomic,
    /// A set of scalars: each value is owned separately.
    Set,
    /// A list of objects identified by the given key fields: each item is owned and merged separately.
    Map { keys: Vec<String> },
}

/// One served resource.
#[derive(Clone, Debug)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    /// Lower-case plural used in URLs.
    pub plural: String,
    pub namespaced: bool,
    /// Whether a `/status` subresource exists (then writes to the main resource ignore `status`).
    pub has_status: bool,
    /// A custom resource (defined by a CRD): PUT requires `metadata.resourceVersion`, and lists without a
    /// schema entry are atomic.
    pub custom: bool,
    /// List types by schema path (`spec.lines`, `spec.lines[].codecs`), beyond the ones every object has.
    pub list_types: HashMap<String, ListType>,
    /// A custom resource's schema and CEL rules, checked on every create and update.
    pub validation: Option<std::sync::Arc<crate::schema::SchemaValidation>>,
}

impl ResourceType {
    /// A resource with no list-type knowledge beyond the metadata lists every object has.
    pub fn new(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool, has_status: bool) -> ResourceType {
        ResourceType {
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
            plural: plural.to_string(),
            namespaced,
            has_status,
            custom: false,
            list_types: HashMap::new(),
            validation: None,
        }
    }

    /// `v1` for the core group, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// The list type of the list at `schema_path` (field names, `[]` for list items, joined by dots).
    pub fn list_type(&self, schema_path: &str) -> ListType {
        if let Some(list_type) = self.list_types.get(schema_path) {
            return list_type.clone();
        }
        match schema_path {
            "metadata.ownerReferences" => return ListType::Map { keys: vec!["uid".into()] },
            "metadata.finalizers" => return ListType::Set,
            _ => {}
        }
        if self.custom {
            // Lists without a schema entry are atomic, as in a CRD without list types.
            return ListType::Atomic;
        }
        // Built-in kinds: the patch-merge keys of the lists every pod template has (an approximation of
        // the built-in schemas, which this server does not carry).
        let last = schema_path.rsplit('.').next().unwrap_or_default();
        match last {
            "containers" | "initContainers" | "ephemeralContainers" | "env" | "volumes" | "imagePullSecrets" => {
                ListType::Map { keys: vec!["name".into()] }
            }
            "volumeMounts" => ListType::Map { keys: vec!["mountPath".into()] },
            "conditions" => ListType::Map { keys: vec!["type".into()] },
            "ports" if schema_path.contains("containers") => ListType::Map { keys: vec!["containerPort".into()] },
            "ports" => ListType::Map { keys: vec!["port".into()] },
            _ => ListType::Atomic,
        }
    }

    /// Reads a `CustomResourceDefinition` (its first served version): names, scope, status subresource and
    /// the list types of its schema.
    pub fn from_crd(crd: &Value) -> Result<ResourceType, String> {
        let spec = crd.get("spec").ok_or("the CRD has no spec")?;
        let text =
            |value: Option<&Value>, what: &str| value.and_then(Value::as_str).map(str::to_string).ok_or(format!("the CRD has no {what}"));
        let group = text(spec.get("group"), "spec.group")?;
        let kind = text(spec.pointer("/names/kind"), "spec.names.kind")?;
        let plural = text(spec.pointer("/names/plural"), "spec.names.plural")?;
        let namespaced = spec.get("scope").and_then(Value::as_str) != Some("Cluster");
        let versions = spec.get("versions").and_then(Value::as_array).ok_or("the CRD has no spec.versions")?;
        let version = versions
            .iter()
            .find(|version| version.get("served").and_then(Value::as_bool).unwrap_or(true))
            .ok_or("the CRD serves no version")?;
        let has_status = version.pointer("/subresources/status").is_some();
        let mut resource = ResourceType::new(&group, &text(version.get("name"), "version name")?, &kind, &plural, namespaced, has_status);
        resource.custom = true;
        if let Some(schema) = version.pointer("/schema/openAPIV3Schema") {
            collect_list_types(schema, "", &mut resource.list_types);
            resource.validation = Some(std::sync::Arc::new(crate::schema::SchemaValidation::of(schema)));
        }
        Ok(resource)
    }

    /// The discovery entries (`APIResource`) of this resource and its status subresource.
    pub(crate) fn discovery_entries(&self) -> Vec<Value> {
        let verbs = json!(["create", "delete", "get", "list", "patch", "update", "watch"]);
        let singular = self.kind.to_lowercase();
        let mut entries = vec![json!({
            "name": self.plural, "singularName": singular, "namespaced": self.namespaced, "kind": self.kind, "verbs": verbs,
        })];
        if self.has_status {
            entries.push(json!({
                "name": format!("{}/status", self.plural), "singularName": "", "namespaced": self.namespaced,
                "kind": self.kind, "verbs": ["get", "patch", "update"],
            }));
        }
        entries
    }
}

fn collect_list_types(schema: &Value, path: &str, out: &mut HashMap<String, ListType>) {
    let join = |name: &str| if path.is_empty() { name.to_string() } else { format!("{path}.{name}") };
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (name, property) in properties {
            collect_list_types(property, &join(name), out);
        }
    }
    if schema.get("type").and_then(Value::as_str) == Some("array") {
        let list_type = match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => ListType::Set,
            Some("map") => {
                let keys = schema.get("x-kubernetes-list-map-keys").and_then(Value::as_array).into_iter().flatten();
                ListType::Map { keys: keys.filter_map(Value::as_str).map(str::to_string).collect() }
            }
            _ => ListType::Atomic,
        };
        out.insert(path.to_string(), list_type);
        if let Some(items) = schema.get("items") {
            collect_list_types(items, &format!("{path}[]"), out);
        }
    }
}

/// The CRDs of the operator, generated from its API types (`callguard crdgen`).
const CALLGUARD_CRDS: [&str; 12] = [
    include_str!("../../crds/callcontrolclusters.callguard.io.yaml"),
    include_str!("../../crds/securitytokens.callguard.io.yaml"),
    include_str!("../../crds/phonesecurityprofiles.callguard.io.yaml"),
    include_str!("../../crds/phones.callguard.io.yaml"),
    include_str!("../../crds/siptrunksecurityprofiles.callguard.io.yaml"),
    include_str!("../../crds/siptrunks.callguard.io.yaml"),
    include_str!("../../crds/srstreferences.callguard.io.yaml"),
    include_str!("../../crds/h323gateways.callguard.io.yaml"),
    include_str!("../../crds/mgcpgateways.callguard.io.yaml"),
    include_str!("../../crds/endusers.callguard.io.yaml"),
    include_str!("../../crds/applicationusers.callguard.io.yaml"),
    include_str!("../../crds/siprealms.callguard.io.yaml"),
];

/// The resources served from the start: the callguard.io kinds and the built-in kinds the operator uses.
pub(crate) fn default_resources() -> Vec<ResourceType> {
    let mut resources: Vec<ResourceType> = CALLGUARD_CRDS
        .iter()
        .map(|text| {
            let crd: Value = serde_yaml::from_str(text).expect("the committed CRD YAML parses");
            ResourceType::from_crd(&crd).expect("the committed CRD YAML is a CRD")
        })
        .collect();
    let builtin = [
        ("", "v1", "Secret", "secrets", true, false),
        ("", "v1", "ConfigMap", "configmaps", true, false),
        ("", "v1", "Service", "services", true, true),
        ("", "v1", "ServiceAccount", "serviceaccounts", true, false),
        ("", "v1", "Namespace", "namespaces", false, true),
        ("", "v1", "Pod", "pods", true, true),
        ("", "v1", "Event", "events", true, false),
        ("events.k8s.io", "v1", "Event", "events", true, false),
        ("apps", "v1", "Deployment", "deployments", true, true),
        ("apps", "v1", "StatefulSet", "statefulsets", true, true),
        ("rbac.authorization.k8s.io", "v1", "Role", "roles", true, false),
        ("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", true, false),
        ("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", false, false),
        ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", false, false),
        ("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", true, false),
        ("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", true, true),
        ("coordination.k8s.io", "v1", "Lease", "leases", true, false),
        ("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", false, true),
    ];
    resources.extend(builtin.into_iter().map(|(group, version, kind, plural, namespaced, has_status)| {
        ResourceType::new(group, version, kind, plural, namespaced, has_status)
    }));
    resources
}

/// Lookup of resources by URL and by `apiVersion` + `kind`.
#[derive(Default)]
pub(crate) struct Registry {
    resources: Vec<ResourceType>,
}

impl Registry {
    pub(crate) fn with_defaults() -> Registry {
        let mut registry = Registry::default();
        for resource in default_resources() {
            registry.register(resource);
        }
        registry
    }

    /// Adds a resource, replacing one with the same group and plural.
    pub(crate) fn register(&mut self, resource: ResourceType) {
        self.resources.retain(|known| !(known.group == resource.group && known.plural == resource.plural));
        self.resources.push(resource);
    }

    pub(crate) fn by_plural(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.resources.iter().find(|resource| resource.group == group && resource.version == version && resource.plural == plural)
    }

    pub(crate) fn by_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceType> {
        self.resources.iter().find(|resource| resource.api_version() == api_version && resource.kind == kind)
    }

    pub(crate) fn all(&self) -> &[ResourceType] {
        &self.resources
    }
}
