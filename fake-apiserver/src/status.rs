//! Errors as the API server reports them: `Status` objects, which kube turns into `kube::Error::Api`.

use std::fmt;

use serde_json::{Value, json};

use crate::resources::ResourceType;

/// The `reason` of a failure `Status` (the subset of `metav1.StatusReason` this server produces).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    NotFound,
    AlreadyExists,
    Conflict,
    Invalid,
    BadRequest,
    /// The authorizer refused the request (code 403).
    Forbidden,
    /// A watch or list asked for a resourceVersion older than the kept history (code 410).
    Expired,
    MethodNotAllowed,
    UnsupportedMediaType,
    /// The server failed (code 500); only injected (`Faults`).
    InternalError,
    /// No answer in time (code 504); only injected.
    Timeout,
}

impl Reason {
    pub fn code(self) -> u16 {
        match self {
            Reason::NotFound => 404,
            Reason::AlreadyExists | Reason::Conflict => 409,
            Reason::Invalid => 422,
            Reason::BadRequest => 400,
            Reason::Forbidden => 403,
            Reason::Expired => 410,
            Reason::MethodNotAllowed => 405,
            Reason::UnsupportedMediaType => 415,
            Reason::InternalError => 500,
            Reason::Timeout => 504,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Reason::NotFound => "NotFound",
            Reason::AlreadyExists => "AlreadyExists",
            Reason::Conflict => "Conflict",
            Reason::Invalid => "Invalid",
            Reason::BadRequest => "BadRequest",
            Reason::Forbidden => "Forbidden",
            Reason::Expired => "Expired",
            Reason::MethodNotAllowed => "MethodNotAllowed",
            Reason::UnsupportedMediaType => "UnsupportedMediaType",
            Reason::InternalError => "InternalError",
            Reason::Timeout => "Timeout",
        }
    }
}

/// A failed request.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub reason: Reason,
    pub message: String,
    /// `details` of the Status: name, group, kind and `causes`.
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(reason: Reason, message: impl Into<String>) -> ApiError {
        ApiError { reason, message: message.into(), details: None }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(Reason::BadRequest, message)
    }

    pub fn not_found(resource: &ResourceType, name: &str) -> ApiError {
        ApiError::about(Reason::NotFound, resource, name, format!("{} \"{name}\" not found", qualified(resource)))
    }

    pub fn already_exists(resource: &ResourceType, name: &str) -> ApiError {
        ApiError::about(Reason::AlreadyExists, resource, name, format!("{} \"{name}\" already exists", qualified(resource)))
    }

    /// An optimistic-concurrency failure: the request's resourceVersion is not the stored one.
    pub fn stale(resource: &ResourceType, name: &str) -> ApiError {
        ApiError::about(
            Reason::Conflict,
            resource,
            name,
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                qualified(resource)
            ),
        )
    }

    pub fn invalid(resource: &ResourceType, name: &str, field: &str, problem: &str) -> ApiError {
        let mut error = ApiError::about(
            Reason::Invalid,
            resource,
            name,
            format!("{}.{} \"{name}\" is invalid: {field}: {problem}", resource.kind, resource.group),
        );
        if let Some(details) = error.details.as_mut() {
            details["causes"] = json!([{"reason": "FieldValueInvalid", "message": problem, "field": field}]);
        }
        error
    }

    pub fn expired(requested: u64, oldest: u64) -> ApiError {
        ApiError::new(Reason::Expired, format!("too old resource version: {requested} ({oldest})"))
    }

    pub fn about(reason: Reason, resource: &ResourceType, name: &str, message: String) -> ApiError {
        let details = json!({"name": name, "group": resource.group, "kind": resource.plural});
        ApiError { reason, message, details: Some(details) }
    }

    pub fn code(&self) -> u16 {
        self.reason.code()
    }

    /// The `Status` object sent as the response body (or as the object of a watch `ERROR` event).
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason.as_str(), "code": self.code(),
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.reason.as_str(), self.code(), self.message)
    }
}

impl std::error::Error for ApiError {}

/// `plural.group`, or `plural` for the core group, as the API server names a resource in messages.
pub fn qualified(resource: &ResourceType) -> String {
    if resource.group.is_empty() { resource.plural.clone() } else { format!("{}.{}", resource.plural, resource.group) }
}

/// The `Status` a successful immediate delete returns.
pub fn deleted(resource: &ResourceType, name: &str, uid: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        "details": {"name": name, "group": resource.group, "kind": resource.plural, "uid": uid},
    })
}
