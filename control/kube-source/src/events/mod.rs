//! Kubernetes Events on the objects users label: invalid label values, configurations Envoy
//! rejected.
//!
//! [`EventSink::report`] is synchronous and cheap: it queues. [`KubeEvents`] owns a worker task
//! that deduplicates (the control plane reconciles on every change, and must not post the same
//! Event each time: see [`Deduper`]) and writes classic `core/v1` Events, which every Kubernetes
//! version serves and `kubectl get events` / `kubectl describe` show. A repeat after the dedup
//! window bumps `count` and `lastTimestamp` of the existing Event instead of creating a new one.

use traffic_translate::snapshot::ObjectRef;

mod dedup;
mod writer;

pub use dedup::{Action, Deduper, EventKey};
pub use writer::{api_resource, new_event, EventError, EventMetrics, EventsConfig, KubeEvents};

/// `type` of an Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Where Events go. Implementations must return quickly (queue, don't call the API inline): it
/// is called from reconcile loops and xDS stream tasks.
pub trait EventSink: Send + Sync + 'static {
    /// Report `reason` (CamelCase, e.g. `InvalidTrafficLabel`) with a human `message` on `object`.
    fn report(&self, object: &ObjectRef, type_: EventType, reason: &str, message: &str);
}

impl<T: EventSink + ?Sized> EventSink for std::sync::Arc<T> {
    fn report(&self, object: &ObjectRef, type_: EventType, reason: &str, message: &str) {
        (**self).report(object, type_, reason, message)
    }
}

/// Longest message written (Kubernetes truncates Event notes at 1 KiB too).
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Cut `message` to at most [`MAX_MESSAGE_BYTES`] bytes on a character boundary.
pub fn truncate_message(message: &str) -> &str {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// A report on `default/reviews`, for the submodules' unit tests.
#[cfg(test)]
fn key(message: &str) -> EventKey {
    EventKey {
        object: ObjectRef {
            kind: "Service".into(),
            namespace: "default".into(),
            name: "reviews".into(),
        },
        type_: EventType::Warning,
        reason: "InvalidTrafficLabel".into(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let long = "é".repeat(1000);
        let cut = truncate_message(&long);
        assert!(cut.len() <= MAX_MESSAGE_BYTES);
        assert!(long.starts_with(cut));
        assert_eq!(truncate_message("short"), "short");
    }
}
