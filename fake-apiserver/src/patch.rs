//! The patch types of PATCH requests, chosen by `Content-Type` (API docs: "Patch operations").

use serde_json::Value;

use crate::fields;
use crate::resources::ResourceType;
use crate::status::{ApiError, Reason};

/// The kind of patch a request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    /// RFC 7386 JSON merge patch.
    Merge,
    /// RFC 6902 JSON patch.
    Json,
    /// Kubernetes strategic merge patch, approximated: a merge patch whose lists follow the list types of
    /// the resource (merged by key, by union for sets, replaced otherwise). Refused for custom resources,
    /// as the real server does.
    Strategic,
    /// Server-side apply (see [`crate::apply`]).
    Apply,
}

impl PatchKind {
    pub fn from_content_type(content_type: &str) -> Result<PatchKind, ApiError> {
        let media_type = content_type.split(';').next().unwrap_or_default().trim();
        match media_type {
            "application/merge-patch+json" => Ok(PatchKind::Merge),
            "application/json-patch+json" => Ok(PatchKind::Json),
            "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Ok(PatchKind::Apply),
            other => Err(ApiError::new(
                Reason::UnsupportedMediaType,
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml; got {other:?}"
                ),
            )),
        }
    }
}

/// `live` with a merge, JSON or strategic merge patch applied.
pub fn patch(kind: PatchKind, live: &Value, body: &[u8], resource: &ResourceType) -> Result<Value, ApiError> {
    let mut patched = live.clone();
    match kind {
        PatchKind::Merge => json_patch::merge(&mut patched, &parse(body)?),
        PatchKind::Json => {
            let operations: json_patch::Patch =
                serde_json::from_slice(body).map_err(|error| ApiError::bad_request(format!("invalid JSON patch: {error}")))?;
            json_patch::patch(&mut patched, &operations)
                .map_err(|error| ApiError::new(Reason::Invalid, format!("the JSON patch cannot be applied: {error}")))?;
        }
        PatchKind::Strategic => {
            if resource.custom {
                return Err(ApiError::new(
                    Reason::UnsupportedMediaType,
                    "strategic merge patch is not supported for custom resources; use a merge patch, a JSON patch or server-side apply",
                ));
            }
            fields::merge(&mut patched, &parse(body)?, &mut Vec::new(), resource);
        }
        PatchKind::Apply => return Err(ApiError::bad_request("server-side apply is handled by the apply module")),
    }
    Ok(patched)
}

fn parse(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|error| ApiError::bad_request(format!("the patch is not JSON: {error}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("a merge patch must be a JSON object"));
    }
    Ok(value)
}

/// The apply configuration of an apply request: JSON, or YAML as `kubectl` sends it.
pub fn parse_apply_config(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(_) => serde_yaml::from_slice(body)
            .map_err(|error| ApiError::bad_request(format!("the apply configuration is neither JSON nor YAML: {error}")))?,
    };
    if !value.is_object() {
        return Err(ApiError::bad_request("an apply configuration must be an object"));
    }
    Ok(value)
}
