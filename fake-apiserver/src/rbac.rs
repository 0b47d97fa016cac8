//! Authorization of the identities bound to a ServiceAccount (`FakeApiServer::authenticate_as_service_account`)
//! against the Roles, ClusterRoles, RoleBindings and ClusterRoleBindings held in the store, as the API
//! server's RBAC authorizer decides (Kubernetes docs: "Using RBAC Authorization"):
//! - a request is described by its attributes, read from the URL as the API server's `RequestInfo` does:
//!   verb, API group, resource and subresource, namespace (for `namespaces/<name>`, the Namespace itself)
//!   and name; a list or watch takes its name from a `metadata.name=<name>` term of its `fieldSelector`;
//! - the ServiceAccount is the user `system:serviceaccount:<namespace>:<name>` in the groups
//!   `system:serviceaccounts`, `system:serviceaccounts:<namespace>` and `system:authenticated`; a binding
//!   applies when one of its subjects names that user (`User`), one of those groups (`Group`), or the
//!   ServiceAccount (`ServiceAccount`, whose namespace defaults to a RoleBinding's own);
//! - every ClusterRoleBinding that applies grants the rules of its ClusterRole everywhere; a RoleBinding
//!   grants the rules of its Role (in its namespace) or ClusterRole only to requests in its namespace;
//! - a rule allows a request when its `verbs`, `apiGroups` and `resources` match (`*` matches anything,
//!   a resource with a subresource is `plural/subresource`, and `*/subresource` matches it in any
//!   resource) and, when it has `resourceNames`, the request's name is one of them (so a create, which
//!   has no name yet, or a deletecollection never matches such a rule);
//! - a refusal is a 403 `Forbidden` with the API server's message.
//!
//! Not modelled: aggregated ClusterRoles (only `rules` count, `aggregationRule` is ignored); the checks on
//! writes of Roles and bindings that stop privilege escalation (`escalate`, `bind`); impersonation;
//! non-resource URLs (every request outside a resource, such as discovery, is allowed); the default
//! ClusterRoles and bindings of a real cluster; authorizers other than RBAC (Node, webhook).

use std::collections::HashMap;

use axum::http::Method;
use serde_json::{Value, json};

use crate::http::query_flag;
use crate::selectors::FieldSelector;
use crate::status::{ApiError, Reason};
use crate::store::Store;

/// The API group of the RBAC kinds.
const GROUP: &str = "rbac.authorization.k8s.io";

/// The ServiceAccount an identity authenticates as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

impl ServiceAccount {
    /// The user name the API server gives a ServiceAccount's token.
    pub fn user_name(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }

    /// The groups the API server puts a ServiceAccount's token in.
    pub fn groups(&self) -> [String; 3] {
        ["system:serviceaccounts".to_string(), format!("system:serviceaccounts:{}", self.namespace), "system:authenticated".to_string()]
    }
}

/// What the authorizer decides on: the attributes of a resource request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    /// Empty for the core group.
    pub api_group: String,
    pub resource: String,
    /// Empty for the main resource.
    pub subresource: String,
    /// Empty for a cluster-scoped request (including a list or watch across all namespaces).
    pub namespace: String,
    /// Empty when the request names no object.
    pub name: String,
}

impl Attributes {
    /// The attributes of a request on `resource` (`plural` or `plural/subresource`); `namespaces/<name>` is
    /// in namespace `<name>`, as the API server reads its URL.
    pub fn new(verb: &str, api_group: &str, resource: &str, namespace: Option<&str>, name: Option<&str>) -> Attributes {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        let name = name.unwrap_or_default();
        let mut namespace = namespace.unwrap_or_default();
        if api_group.is_empty() && resource == "namespaces" && namespace.is_empty() {
            namespace = name;
        }
        Attributes {
            verb: verb.to_string(),
            api_group: api_group.to_string(),
            resource: resource.to_string(),
            subresource: subresource.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The attributes of an HTTP request, read from its URL as the API server's `RequestInfoFactory` does
    /// (whether or not this server serves the resource), or `None` for a non-resource request (`/api`,
    /// `/apis`, `/apis/<group>/<version>`, `/version`, …).
    pub fn of_request(method: &Method, path: &str, query: &HashMap<String, String>) -> Option<Attributes> {
        let segments: Vec<&str> = path.split('/').filter(|segment| !segment.is_empty()).collect();
        // After the prefix and the group version, at least a resource.
        let (api_group, mut parts) = match segments.as_slice() {
            ["api", _version, rest @ ..] if !rest.is_empty() => ("", rest),
            ["apis", group, _version, rest @ ..] if !rest.is_empty() => (*group, rest),
            _ => return None,
        };
        let mut verb = match *method {
            Method::POST => "create",
            Method::GET | Method::HEAD => "get",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "",
        };
        let mut namespace = "";
        if parts[0] == "namespaces"
            && let Some(named) = parts.get(1)
        {
            namespace = named;
            // `namespaces/x/status` and `namespaces/x/finalize` are subresources of the Namespace x; anything
            // else after `namespaces/x` is a resource in that namespace.
            if parts.len() > 2 && !matches!(parts[2], "status" | "finalize") {
                parts = &parts[2..];
            }
        }
        let resource = parts[0];
        let subresource = parts.get(2).copied().unwrap_or_default();
        let mut name = parts.get(1).copied().unwrap_or_default();
        let field_selector;
        if name.is_empty() && verb == "get" {
            verb = if query_flag(query, "watch") { "watch" } else { "list" };
            field_selector = FieldSelector::parse(query.get("fieldSelector").map(String::as_str).unwrap_or_default()).unwrap_or_default();
            if let Some(selected) = field_selector.requires_exact_match("metadata.name")
                && is_path_segment_name(selected)
            {
                name = selected;
            }
        }
        if name.is_empty() && verb == "delete" {
            verb = "deletecollection";
        }
        Some(Attributes {
            verb: verb.to_string(),
            api_group: api_group.to_string(),
            resource: resource.to_string(),
            subresource: subresource.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }

    /// `plural` or `plural/subresource`, as rules name it.
    fn combined_resource(&self) -> String {
        if self.subresource.is_empty() { self.resource.clone() } else { format!("{}/{}", self.resource, self.subresource) }
    }
}

/// Whether a name can be a URL path segment (`path.IsValidPathSegmentName`): only such a name from a field
/// selector becomes the request's name.
fn is_path_segment_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '%'])
}

/// Whether the RBAC objects in `store` allow `subject` the request `attributes` describe.
pub fn allows(store: &Store, subject: &ServiceAccount, attributes: &Attributes) -> bool {
    let user = subject.user_name();
    let groups = subject.groups();
    let applies = |binding: &Value, binding_namespace: &str| {
        let mut subjects = binding.get("subjects").and_then(Value::as_array).into_iter().flatten();
        subjects.any(|candidate| applies_to(candidate, subject, &user, &groups, binding_namespace))
    };
    let grants = |binding: &Value, binding_namespace: &str| {
        role_rules(store, binding, binding_namespace).iter().any(|rule| rule_allows(rule, attributes))
    };
    let cluster_bindings = objects(store, "clusterrolebindings", None);
    if cluster_bindings.into_iter().any(|binding| applies(binding, "") && grants(binding, "")) {
        return true;
    }
    if attributes.namespace.is_empty() {
        return false;
    }
    let bindings = objects(store, "rolebindings", Some(&attributes.namespace));
    bindings.into_iter().any(|binding| applies(binding, &attributes.namespace) && grants(binding, &attributes.namespace))
}

/// The objects of an RBAC resource, in one namespace or (with `None`) all.
fn objects<'a>(store: &'a Store, plural: &str, namespace: Option<&str>) -> Vec<&'a Value> {
    let Some(table) = store.tables.get(&(GROUP.to_string(), plural.to_string())) else { return Vec::new() };
    let in_scope = |key: &(String, String)| namespace.is_none_or(|namespace| key.0 == namespace);
    table.objects.iter().filter(|(key, _)| in_scope(key)).map(|(_, object)| &**object).collect()
}

/// The rules of the Role (in the binding's namespace) or ClusterRole a binding refers to; none when it is
/// missing (a ClusterRoleBinding's binding namespace is empty, so only a ClusterRole can be found for it).
fn role_rules<'a>(store: &'a Store, binding: &Value, binding_namespace: &str) -> &'a [Value] {
    let text = |pointer: &str| binding.pointer(pointer).and_then(Value::as_str).unwrap_or_default().to_string();
    let name = text("/roleRef/name");
    let key = match text("/roleRef/kind").as_str() {
        "Role" => ("roles", (binding_namespace.to_string(), name)),
        "ClusterRole" => ("clusterroles", (String::new(), name)),
        _ => return &[],
    };
    let role = store.tables.get(&(GROUP.to_string(), key.0.to_string())).and_then(|table| table.objects.get(&key.1));
    role.and_then(|role| role.get("rules")).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

/// Whether a binding's subject is the ServiceAccount (`appliesToUser` of the RBAC authorizer).
fn applies_to(candidate: &Value, subject: &ServiceAccount, user: &str, groups: &[String], binding_namespace: &str) -> bool {
    let name = candidate.get("name").and_then(Value::as_str).unwrap_or_default();
    match candidate.get("kind").and_then(Value::as_str).unwrap_or_default() {
        "User" => name == user,
        "Group" => groups.iter().any(|group| group == name),
        "ServiceAccount" => {
            let namespace = candidate.get("namespace").and_then(Value::as_str).filter(|namespace| !namespace.is_empty());
            let namespace = namespace.unwrap_or(binding_namespace);
            !namespace.is_empty() && namespace == subject.namespace && name == subject.name
        }
        _ => false,
    }
}

/// Whether one `PolicyRule` allows the request (`RuleAllows` of the RBAC authorizer).
fn rule_allows(rule: &Value, attributes: &Attributes) -> bool {
    let values = |field: &str| rule.get(field).and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str);
    let combined = attributes.combined_resource();
    let resource_matches = |resource: &str| {
        resource == "*"
            || resource == combined
            || (!attributes.subresource.is_empty() && resource.strip_prefix("*/") == Some(attributes.subresource.as_str()))
    };
    let mut names = values("resourceNames").peekable();
    values("verbs").any(|verb| verb == "*" || verb == attributes.verb)
        && values("apiGroups").any(|group| group == "*" || group == attributes.api_group)
        && values("resources").any(resource_matches)
        && (names.peek().is_none() || names.any(|name| name == attributes.name))
}

/// The 403 the API server answers a refused request with.
pub fn forbidden(subject: &ServiceAccount, attributes: &Attributes) -> ApiError {
    let scope = if attributes.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace \"{}\"", attributes.namespace)
    };
    let reason = format!(
        "User \"{}\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
        subject.user_name(),
        attributes.verb,
        attributes.combined_resource(),
        attributes.api_group
    );
    let group_resource = if attributes.api_group.is_empty() {
        attributes.resource.clone()
    } else {
        format!("{}.{}", attributes.resource, attributes.api_group)
    };
    let message = if attributes.name.is_empty() {
        format!("{group_resource} is forbidden: {reason}")
    } else {
        format!("{group_resource} \"{}\" is forbidden: {reason}", attributes.name)
    };
    let mut details = json!({"group": attributes.api_group, "kind": attributes.resource});
    if !attributes.name.is_empty() {
        details["name"] = json!(attributes.name);
    }
    ApiError { reason: Reason::Forbidden, message, details: Some(details) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attributes(method: Method, path: &str, query: &[(&str, &str)]) -> Option<Attributes> {
        let query = query.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect();
        Attributes::of_request(&method, path, &query)
    }

    fn expected(verb: &str, api_group: &str, resource: &str, namespace: &str, name: &str) -> Option<Attributes> {
        Some(Attributes::new(verb, api_group, resource, Some(namespace).filter(|n| !n.is_empty()), Some(name).filter(|n| !n.is_empty())))
    }

    #[test]
    fn request_attributes_from_urls() {
        for discovery in ["/api", "/api/v1", "/apis", "/apis/apps", "/apis/apps/v1", "/version", "/healthz"] {
            assert_eq!(attributes(Method::GET, discovery, &[]), None, "{discovery}");
        }
        assert_eq!(attributes(Method::GET, "/api/v1/namespaces/voice/secrets/a", &[]), expected("get", "", "secrets", "voice", "a"));
        assert_eq!(attributes(Method::GET, "/api/v1/namespaces/voice/secrets", &[]), expected("list", "", "secrets", "voice", ""));
        assert_eq!(attributes(Method::GET, "/api/v1/secrets", &[("watch", "true")]), expected("watch", "", "secrets", "", ""));
        assert_eq!(
            attributes(Method::GET, "/api/v1/namespaces/voice/secrets", &[("watch", "1"), ("fieldSelector", "metadata.name=a")]),
            expected("watch", "", "secrets", "voice", "a")
        );
        assert_eq!(
            attributes(Method::GET, "/api/v1/namespaces/voice/secrets", &[("fieldSelector", "metadata.name!=a")]),
            expected("list", "", "secrets", "voice", "")
        );
        assert_eq!(attributes(Method::POST, "/api/v1/namespaces/voice/configmaps", &[]), expected("create", "", "configmaps", "voice", ""));
        assert_eq!(
            attributes(Method::PUT, "/apis/callguard.io/v1alpha1/namespaces/voice/phones/p/status", &[]),
            expected("update", "callguard.io", "phones/status", "voice", "p")
        );
        assert_eq!(
            attributes(Method::PATCH, "/apis/apps/v1/namespaces/x/deployments/d", &[]),
            expected("patch", "apps", "deployments", "x", "d")
        );
        assert_eq!(attributes(Method::DELETE, "/api/v1/namespaces/x/pods/p", &[]), expected("delete", "", "pods", "x", "p"));
        assert_eq!(
            attributes(Method::DELETE, "/api/v1/namespaces/x/pods", &[("fieldSelector", "metadata.name=p")]),
            expected("deletecollection", "", "pods", "x", "")
        );
        // A Namespace is inside itself; its status is a subresource, not a resource inside it.
        assert_eq!(attributes(Method::GET, "/api/v1/namespaces/voice", &[]), expected("get", "", "namespaces", "voice", "voice"));
        assert_eq!(
            attributes(Method::PUT, "/api/v1/namespaces/voice/status", &[]),
            expected("update", "", "namespaces/status", "voice", "voice")
        );
        assert_eq!(attributes(Method::GET, "/api/v1/namespaces", &[]), expected("list", "", "namespaces", "", ""));
        assert_eq!(
            attributes(Method::GET, "/apis/rbac.authorization.k8s.io/v1/clusterroles/view", &[]),
            expected("get", GROUP, "clusterroles", "", "view")
        );
    }

    #[test]
    fn rule_matching() {
        let request = Attributes::new("update", "callguard.io", "phones/status", Some("voice"), Some("p"));
        let allows = |rule: Value| rule_allows(&rule, &request);
        assert!(allows(json!({"apiGroups": ["callguard.io"], "resources": ["phones/status"], "verbs": ["update"]})));
        assert!(!allows(json!({"apiGroups": ["callguard.io"], "resources": ["phones"], "verbs": ["update"]})));
        assert!(allows(json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]})));
        assert!(allows(json!({"apiGroups": ["callguard.io"], "resources": ["*/status"], "verbs": ["update"]})));
        assert!(!allows(json!({"apiGroups": ["callguard.io"], "resources": ["*/scale"], "verbs": ["update"]})));
        assert!(!allows(json!({"apiGroups": [""], "resources": ["phones/status"], "verbs": ["update"]})));
        assert!(!allows(json!({"apiGroups": ["callguard.io"], "resources": ["phones/status"], "verbs": ["patch"]})));
        assert!(allows(
            json!({"apiGroups": ["callguard.io"], "resources": ["phones/status"], "verbs": ["update"], "resourceNames": ["q", "p"]})
        ));
        assert!(!allows(
            json!({"apiGroups": ["callguard.io"], "resources": ["phones/status"], "verbs": ["update"], "resourceNames": ["q"]})
        ));
        assert!(!allows(json!({"resources": ["*"], "verbs": ["*"]})), "a rule without apiGroups matches no group");
        let create = Attributes::new("create", "", "secrets", Some("voice"), None);
        assert!(!rule_allows(&json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"], "resourceNames": ["a"]}), &create));
    }

    #[test]
    fn forbidden_messages() {
        let subject = ServiceAccount { namespace: "voice".into(), name: "lab-tftp".into() };
        let message = |attributes: Attributes| forbidden(&subject, &attributes).message;
        assert_eq!(
            message(Attributes::new("get", "", "secrets", Some("voice"), Some("lab-ca"))),
            "secrets \"lab-ca\" is forbidden: User \"system:serviceaccount:voice:lab-tftp\" cannot get resource \"secrets\" in API group \"\" in the namespace \"voice\""
        );
        assert_eq!(
            message(Attributes::new("list", "apiextensions.k8s.io", "customresourcedefinitions", None, None)),
            "customresourcedefinitions.apiextensions.k8s.io is forbidden: User \"system:serviceaccount:voice:lab-tftp\" cannot list resource \"customresourcedefinitions\" in API group \"apiextensions.k8s.io\" at the cluster scope"
        );
        assert_eq!(
            message(Attributes::new("patch", "callguard.io", "phones/status", Some("voice"), Some("p"))),
            "phones.callguard.io \"p\" is forbidden: User \"system:serviceaccount:voice:lab-tftp\" cannot patch resource \"phones/status\" in API group \"callguard.io\" in the namespace \"voice\""
        );
    }
}
