//! What tests assert on besides the objects: every write with the identity that made it, and how many
//! requests of each verb arrived.

use std::collections::BTreeMap;

/// The Kubernetes verb of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
    /// `/api`, `/apis`, `/version` and the resource lists under them.
    Discovery,
}

impl Verb {
    pub fn is_write(self) -> bool {
        matches!(self, Verb::Create | Verb::Update | Verb::Patch | Verb::Delete | Verb::DeleteCollection)
    }
}

/// One write request and its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteRecord {
    pub verb: Verb,
    pub method: String,
    /// The request path and query.
    pub path: String,
    /// The bearer token of the request (`FakeApiServer::client_as`), if any.
    pub identity: Option<String>,
    /// `plural` or `plural.group`.
    pub resource: String,
    pub namespace: Option<String>,
    /// The object's name (for a create: the name the server gave it, when it succeeded).
    pub name: Option<String>,
    /// `status` for writes to the status subresource.
    pub subresource: Option<String>,
    /// The HTTP status code of the response.
    pub status: u16,
    /// The `fieldManager` query parameter.
    pub field_manager: Option<String>,
}

/// One read request (get, list or watch): who read what, and with which selectors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRecord {
    pub verb: Verb,
    /// The request path and query.
    pub path: String,
    pub identity: Option<String>,
    /// `plural` or `plural.group`.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    /// Refused by RBAC (answered 403).
    pub forbidden: bool,
}

#[derive(Default)]
pub(crate) struct Recorder {
    pub writes: Vec<WriteRecord>,
    pub reads: Vec<ReadRecord>,
    pub requests: BTreeMap<Verb, u64>,
}
