//! NACKs as Events: adapts an [`EventSink`] to the xDS server's [`RejectionSink`].

use std::collections::BTreeMap;
use std::sync::Arc;

use traffic_translate::snapshot::{ObjectRef, Resource};
use traffic_xds::RejectionSink;

use crate::events::{EventSink, EventType};

/// The Event reason for a configuration Envoy rejected.
pub const REJECTED_REASON: &str = "ProxyRejectedConfig";

/// A Warning Event on the origin object of every rejected resource, naming the resources. The
/// node is left out of the message on purpose: when many proxies reject the same resource, the
/// object gets one Event (deduplicated), not one per proxy; the xDS server's log line names each
/// node.
#[derive(Debug, Clone)]
pub struct NackEvents<S>(pub S);

/// `type.googleapis.com/envoy.config.cluster.v3.Cluster` -> `Cluster`.
fn short_type(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

/// The Event message for rejected resources `names` of one object (pure).
pub fn rejection_message(type_url: &str, names: &[&str], message: &str) -> String {
    format!(
        "Envoy rejected the {} {} derived from this object; it is kept out of the proxy's configuration (everything else is still sent) until the object changes: {message}",
        short_type(type_url),
        names.join(", ")
    )
}

impl<S: EventSink> RejectionSink for NackEvents<S> {
    fn rejected(&self, node: &str, type_url: &str, resources: &[Arc<Resource>], message: &str) {
        tracing::debug!(
            node,
            type_url,
            resources = resources.len(),
            "rejection reported as events"
        );
        let mut by_origin: BTreeMap<&ObjectRef, Vec<&str>> = BTreeMap::new();
        for r in resources {
            if let Some(origin) = &r.origin {
                by_origin.entry(origin).or_default().push(r.name.as_str());
            }
        }
        for (origin, names) in by_origin {
            let text = rejection_message(type_url, &names, message);
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

    fn resource(name: &str, origin: &ObjectRef) -> Arc<Resource> {
        Arc::new(Resource {
            name: name.into(),
            body: Default::default(),
            version: "1".into(),
            origin: Some(origin.clone()),
        })
    }

    #[test]
    fn a_rejection_becomes_one_warning_per_origin_object_naming_its_resources() {
        let rec = Arc::new(Recorded::default());
        let sink = rejection_sink(rec.clone());
        let reviews = ObjectRef {
            kind: "Service".into(),
            namespace: "default".into(),
            name: "reviews".into(),
        };
        let pod = ObjectRef {
            kind: "Pod".into(),
            namespace: "default".into(),
            name: "reviews-v1-abc".into(),
        };
        sink.rejected(
            "productpage-1.default",
            "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            &[
                resource("9080|default|reviews", &reviews),
                resource("9081|default|reviews", &reviews),
                resource("inbound|9080", &pod),
            ],
            "bad lb policy",
        );
        let got = rec.0.lock().unwrap();
        assert_eq!(got.len(), 2);
        let svc = got.iter().find(|e| e.0.name == "reviews").unwrap();
        assert_eq!(svc.1, EventType::Warning);
        assert_eq!(svc.2, REJECTED_REASON);
        assert!(
            svc.3
                .contains("Cluster 9080|default|reviews, 9081|default|reviews"),
            "{}",
            svc.3
        );
        assert!(svc.3.ends_with("bad lb policy"));
        assert!(!svc.3.contains("productpage-1"));
        assert!(got
            .iter()
            .any(|e| e.0.name == "reviews-v1-abc" && e.3.contains("inbound|9080")));
    }
}
