//! NACKs as Events: adapts an [`EventSink`] to the xDS server's [`RejectionSink`].

use std::sync::Arc;

use traffic_translate::snapshot::ObjectRef;
use traffic_xds::RejectionSink;

use crate::events::{EventSink, EventType};

/// The Event reason for a configuration Envoy rejected.
pub const REJECTED_REASON: &str = "ProxyRejectedConfig";

/// A Warning Event on every origin object of a rejected push. The node is left out of the
/// message on purpose: when many proxies reject the same configuration, the object gets one
/// Event (deduplicated), not one per proxy; the xDS server's log line names each node.
#[derive(Debug, Clone)]
pub struct NackEvents<S>(pub S);

/// `type.googleapis.com/envoy.config.cluster.v3.Cluster` -> `Cluster`.
fn short_type(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

/// The Event message for a rejection (pure).
pub fn rejection_message(type_url: &str, message: &str) -> String {
    format!(
        "Envoy rejected the {} configuration derived from this object (the previous configuration stays in effect): {message}",
        short_type(type_url)
    )
}

impl<S: EventSink> RejectionSink for NackEvents<S> {
    fn rejected(&self, node: &str, type_url: &str, origins: &[ObjectRef], message: &str) {
        tracing::debug!(
            node,
            type_url,
            origins = origins.len(),
            "rejection reported as events"
        );
        let text = rejection_message(type_url, message);
        for origin in origins {
            self.0.report(origin, EventType::Warning, REJECTED_REASON, &text);
        }
    }
}

/// The xDS server's rejection sink, writing Events through `events`.
pub fn rejection_sink<S: EventSink>(events: S) -> Arc<dyn RejectionSink> {
    Arc::new(NackEvents(events))
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Recorded(Mutex<Vec<(ObjectRef, EventType, String, String)>>);

    impl EventSink for Recorded {
        fn report(&self, object: &ObjectRef, type_: EventType, reason: &str, message: &str) {
            self.0
                .lock()
                .unwrap()
                .push((object.clone(), type_, reason.into(), message.into()));
        }
    }

    #[test]
    fn a_rejection_becomes_one_warning_per_origin_object() {
        let rec = Arc::new(Recorded::default());
        let sink = rejection_sink(rec.clone());
        let origins = [
            ObjectRef {
                kind: "Service".into(),
                namespace: "default".into(),
                name: "reviews".into(),
            },
            ObjectRef {
                kind: "Pod".into(),
                namespace: "default".into(),
                name: "reviews-v1-abc".into(),
            },
        ];
        sink.rejected(
            "productpage-1.default",
            "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            &origins,
            "bad lb policy",
        );
        let got = rec.0.lock().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0.name, "reviews");
        assert_eq!(got[0].1, EventType::Warning);
        assert_eq!(got[0].2, REJECTED_REASON);
        assert!(got[0].3.contains("Cluster configuration"), "{}", got[0].3);
        assert!(got[0].3.ends_with("bad lb policy"));
        assert!(!got[0].3.contains("productpage-1"));
    }
}
