//! Watches (API concepts: "Efficient detection of changes", "Watch bookmarks", "Streaming lists"): the
//! changes after a resourceVersion from the kept history, then live changes, through one unbounded
//! queue per watcher so that no event is ever dropped.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::resources::ResourceType;
use crate::selectors::Selection;
use crate::status::ApiError;
use crate::store::{Store, resource_key};

/// The type of a watch event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One stored change of one object.
pub struct Change {
    pub resource_version: u64,
    pub event_type: EventType,
    /// The object after the change (for DELETED: its last state).
    pub object: Arc<Value>,
    /// The object before the change, to tell when a selector starts or stops matching.
    pub previous: Option<Arc<Value>>,
}

/// What a watch stream sends, in order.
pub enum Frame {
    Event(EventType, Arc<Value>),
    /// A BOOKMARK at this resourceVersion; `initial_events_end` marks the end of a streaming list.
    Bookmark {
        resource_version: u64,
        initial_events_end: bool,
    },
    /// An ERROR event (such as 410 Expired); the stream ends after it.
    Error(Value),
}

/// A registered watch.
pub struct Watcher {
    selection: Selection,
    sender: UnboundedSender<Frame>,
}

impl Watcher {
    /// Queues the event `change` means for this watcher; false when the watcher has gone away.
    pub fn send_change(&self, change: &Change) -> bool {
        match event_for(change, &self.selection) {
            Some(frame) => self.sender.send(frame).is_ok(),
            None => !self.sender.is_closed(),
        }
    }
}

/// The event a watcher with `selection` sees for `change`: an object that starts matching is ADDED, one
/// that stops matching is DELETED (as the API server does for label-selected watches).
fn event_for(change: &Change, selection: &Selection) -> Option<Frame> {
    let now = selection.matches(&change.object);
    let before = change.previous.as_ref().is_some_and(|previous| selection.matches(previous));
    let event_type = match change.event_type {
        EventType::Added if now => EventType::Added,
        EventType::Deleted if before || now => EventType::Deleted,
        EventType::Modified => match (before, now) {
            (true, true) => EventType::Modified,
            (false, true) => EventType::Added,
            (true, false) => EventType::Deleted,
            (false, false) => return None,
        },
        _ => return None,
    };
    Some(Frame::Event(event_type, change.object.clone()))
}

/// Where a watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchStart {
    /// Every change after this resourceVersion.
    After(u64),
    /// The current objects as ADDED events, then changes; with a closing bookmark for a streaming list.
    CurrentState { initial_events_end: bool },
}

impl Store {
    /// Registers a watch. The replayed events and the registration happen under the store lock, so the
    /// stream has neither gaps nor duplicates. The sender is returned for bookmarks.
    pub(crate) fn watch(
        &mut self,
        resource: &ResourceType,
        selection: Selection,
        start: WatchStart,
    ) -> (UnboundedSender<Frame>, UnboundedReceiver<Frame>) {
        let (sender, receiver) = unbounded_channel();
        let revision = self.revision;
        let table = self.tables.entry(resource_key(resource)).or_default();
        match start {
            WatchStart::After(version) if version < table.compacted_through => {
                let _ = sender.send(Frame::Error(ApiError::expired(version, table.compacted_through).to_status()));
                return (sender, receiver);
            }
            WatchStart::After(version) => {
                let first = table.history.partition_point(|change| change.resource_version <= version);
                for change in table.history.range(first..) {
                    if let Some(frame) = event_for(change, &selection) {
                        let _ = sender.send(frame);
                    }
                }
            }
            WatchStart::CurrentState { initial_events_end } => {
                let in_scope = |namespace: &String| selection.namespace.as_ref().is_none_or(|wanted| wanted == namespace);
                for ((namespace, _), object) in &table.objects {
                    if in_scope(namespace) && selection.matches(object) {
                        let _ = sender.send(Frame::Event(EventType::Added, object.clone()));
                    }
                }
                if initial_events_end {
                    let _ = sender.send(Frame::Bookmark { resource_version: revision, initial_events_end: true });
                }
            }
        }
        table.watchers.push(Watcher { selection, sender: sender.clone() });
        (sender, receiver)
    }

    /// Queues a bookmark at the current resourceVersion: every earlier change is already queued.
    pub(crate) fn bookmark(&self, sender: &UnboundedSender<Frame>) {
        let _ = sender.send(Frame::Bookmark { resource_version: self.revision, initial_events_end: false });
    }
}

/// The JSON line a frame is sent as. Objects are written straight from the store (no copy) unless only
/// their metadata was asked for.
pub fn encode(frame: &Frame, resource: &ResourceType, metadata_only: bool) -> Vec<u8> {
    let mut line = Vec::new();
    match frame {
        Frame::Event(event_type, object) => {
            line.extend_from_slice(format!("{{\"type\":\"{}\",\"object\":", event_type.as_str()).as_bytes());
            write_object(&mut line, object, metadata_only);
            line.push(b'}');
        }
        Frame::Bookmark { resource_version, initial_events_end } => {
            let mut metadata = json!({"resourceVersion": resource_version.to_string()});
            if *initial_events_end {
                metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            let event =
                json!({"type": "BOOKMARK", "object": {"apiVersion": resource.api_version(), "kind": resource.kind, "metadata": metadata}});
            line.extend_from_slice(event.to_string().as_bytes());
        }
        Frame::Error(status) => line.extend_from_slice(json!({"type": "ERROR", "object": status}).to_string().as_bytes()),
    }
    line.push(b'\n');
    line
}

/// Writes an object as JSON, or as `PartialObjectMetadata` when only metadata was asked for
/// (`Accept: application/json;as=PartialObjectMetadata…`, kube's `metadata_watcher`).
pub fn write_object(out: &mut Vec<u8>, object: &Value, metadata_only: bool) {
    let written = if metadata_only {
        let partial = json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": object.get("metadata")});
        serde_json::to_writer(&mut *out, &partial)
    } else {
        serde_json::to_writer(&mut *out, object)
    };
    // Writing a `Value` into a Vec cannot fail.
    debug_assert!(written.is_ok());
}
