//! [`KubeEvents`]: the worker writing `core/v1` Events to the API server (create, or bump the
//! count of a repeat), and the pure [`new_event`].
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::Client;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};
use traffic_translate::snapshot::ObjectRef;

use super::{truncate_message, Action, Deduper, EventKey, EventSink, EventType};

/// The `apiVersion` and resource of the kinds we put Events on; `None` for unknown kinds. The
/// Istio kinds are named in the version the control plane watches (`networking.istio.io/v1beta1`).
pub fn api_resource(kind: &str) -> Option<ApiResource> {
    if let Some(k) = traffic_istio::Kind::ALL.into_iter().find(|k| k.as_str() == kind) {
        return Some(crate::istio_watch::api_resource(k));
    }
    Some(match kind {
        "Service" => ApiResource::erase::<Service>(&()),
        "Pod" => ApiResource::erase::<Pod>(&()),
        "Secret" => ApiResource::erase::<Secret>(&()),
        "Deployment" => ApiResource::erase::<Deployment>(&()),
        "StatefulSet" => ApiResource::erase::<StatefulSet>(&()),
        "DaemonSet" => ApiResource::erase::<DaemonSet>(&()),
        "ReplicaSet" => ApiResource::erase::<ReplicaSet>(&()),
        "Ingress" => ApiResource::erase::<Ingress>(&()),
        _ => return None,
    })
}

/// Who writes the Events, and how often.
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// `source.component` / `reportingComponent`.
    pub component: String,
    /// `reportingInstance` (e.g. the control plane's pod name).
    pub instance: String,
    /// Minimum time between two writes of the same Event.
    pub dedup_window: Duration,
    /// Reports waiting for the worker; more are dropped (and counted).
    pub queue: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            component: "traffic-control".to_string(),
            instance: "traffic-control".to_string(),
            dedup_window: Duration::from_secs(300),
            queue: 1024,
        }
    }
}

/// How long an Event is remembered for `count` bumps (the API server's default Event TTL).
const FORGET_AFTER: Duration = Duration::from_secs(3600);
const DEDUP_CAPACITY: usize = 4096;

/// Event counters, registered under `kube_events_`.
#[derive(Debug, Clone, Default)]
pub struct EventMetrics {
    pub created: Counter,
    pub updated: Counter,
    pub suppressed: Counter,
    pub failed: Counter,
    pub dropped: Counter,
}

impl EventMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = EventMetrics::default();
        let r = registry.sub_registry_with_prefix("kube_events");
        r.register("created", "Kubernetes Events created", m.created.clone());
        r.register(
            "updated",
            "Kubernetes Events whose count was bumped by a repeat after the dedup window",
            m.updated.clone(),
        );
        r.register(
            "suppressed",
            "Event reports not written because the same Event was written within the dedup window",
            m.suppressed.clone(),
        );
        r.register(
            "failed",
            "Event writes the API server refused or that could not be sent",
            m.failed.clone(),
        );
        r.register(
            "dropped",
            "Event reports dropped because the Event queue was full",
            m.dropped.clone(),
        );
        m
    }
}

/// Errors writing one Event.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("cannot create Event for {kind} {namespace}/{name}: {source}")]
    Create {
        kind: String,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot update Event {namespace}/{event}: {source}")]
    Update {
        namespace: String,
        event: String,
        #[source]
        source: kube::Error,
    },
}

/// The [`EventSink`] writing to the API server through a background worker.
#[derive(Debug, Clone)]
pub struct KubeEvents {
    tx: mpsc::Sender<EventKey>,
    metrics: EventMetrics,
}

impl KubeEvents {
    /// Start the worker on the current Tokio runtime. It ends when every `KubeEvents` clone is
    /// dropped.
    pub fn spawn(
        client: Client,
        config: EventsConfig,
        metrics: EventMetrics,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let worker = Worker {
            client,
            deduper: Deduper::new(config.dedup_window, FORGET_AFTER, DEDUP_CAPACITY),
            config,
            metrics: metrics.clone(),
        };
        let task = tokio::spawn(worker.run(rx).instrument(tracing::info_span!("kube_events")));
        (KubeEvents { tx, metrics }, task)
    }
}

impl EventSink for KubeEvents {
    fn report(&self, object: &ObjectRef, type_: EventType, reason: &str, message: &str) {
        let key = EventKey {
            object: object.clone(),
            type_,
            reason: reason.to_string(),
            message: truncate_message(message).to_string(),
        };
        if self.tx.try_send(key).is_err() {
            self.metrics.dropped.inc();
            warn!(
                kind = %object.kind,
                namespace = %object.namespace,
                name = %object.name,
                reason,
                "event queue full, event dropped"
            );
        }
    }
}

struct Worker {
    client: Client,
    config: EventsConfig,
    deduper: Deduper,
    metrics: EventMetrics,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<EventKey>) {
        while let Some(key) = rx.recv().await {
            match self.deduper.decide(&key, Instant::now()) {
                Action::Suppress => {
                    self.metrics.suppressed.inc();
                }
                Action::Create => self.create(&key).await,
                Action::Update { name, count } => self.update(&key, &name, count).await,
            }
        }
        debug!("event sinks dropped, worker ends");
    }

    async fn create(&mut self, key: &EventKey) {
        match self.try_create(key).await {
            Ok(Some(name)) => {
                self.metrics.created.inc();
                info!(
                    kind = %key.object.kind,
                    namespace = %key.object.namespace,
                    name = %key.object.name,
                    reason = %key.reason,
                    event = %name,
                    "event created"
                );
                self.deduper.created(key, name);
            }
            Ok(None) => {
                // The object is gone: nothing to attach the Event to.
                debug!(kind = %key.object.kind, namespace = %key.object.namespace, name = %key.object.name,
                    "object not found, event skipped");
                self.deduper.forget(key);
            }
            Err(error) => {
                self.metrics.failed.inc();
                warn!(%error, "event not written");
            }
        }
    }

    async fn update(&mut self, key: &EventKey, event: &str, count: i32) {
        let namespace = event_namespace(&key.object);
        let events: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        let patch = serde_json::json!({
            "count": count,
            "lastTimestamp": Time(Timestamp::now()),
        });
        match events
            .patch(event, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                self.metrics.updated.inc();
                debug!(event, count, "event count bumped");
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {
                // Expired or deleted: start over.
                self.deduper.forget(key);
                let _ = self.deduper.decide(key, Instant::now());
                self.create(key).await;
            }
            Err(source) => {
                self.metrics.failed.inc();
                let error = EventError::Update {
                    namespace: namespace.to_string(),
                    event: event.to_string(),
                    source,
                };
                warn!(%error, "event not updated");
            }
        }
    }

    /// Create the Event; `Ok(None)` when the object does not exist.
    async fn try_create(&self, key: &EventKey) -> Result<Option<String>, EventError> {
        let object = &key.object;
        let namespace = event_namespace(object);
        let resource = api_resource(&object.kind);
        let mut uid = None;
        if let Some(ar) = &resource {
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, ar);
            match api.get_metadata_opt(&object.name).await {
                Ok(Some(meta)) => uid = meta.metadata.uid,
                Ok(None) => return Ok(None),
                // Still worth an Event without uid (`kubectl get events` shows it).
                Err(error) => debug!(%error, "cannot look up the object's uid"),
            }
        }
        let now = Timestamp::now();
        let event = new_event(&self.config, key, resource.as_ref(), uid, now);
        let name = event.metadata.name.clone().unwrap_or_default();
        let events: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        events
            .create(&PostParams::default(), &event)
            .await
            .map_err(|source| EventError::Create {
                kind: object.kind.clone(),
                namespace: namespace.to_string(),
                name: object.name.clone(),
                source,
            })?;
        Ok(Some(name))
    }
}

/// Events live in their object's namespace.
fn event_namespace(object: &ObjectRef) -> &str {
    if object.namespace.is_empty() {
        "default"
    } else {
        &object.namespace
    }
}

/// The `core/v1` Event for a report (pure).
pub fn new_event(
    config: &EventsConfig,
    key: &EventKey,
    resource: Option<&ApiResource>,
    uid: Option<String>,
    now: Timestamp,
) -> Event {
    let object = &key.object;
    Event {
        metadata: ObjectMeta {
            // The client-go convention: `<object>.<unix nanos in hex>`.
            name: Some(format!("{}.{:x}", object.name, now.as_nanosecond())),
            namespace: Some(event_namespace(object).to_string()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: resource.map(|r| r.api_version.clone()),
            kind: Some(object.kind.clone()),
            namespace: Some(event_namespace(object).to_string()),
            name: Some(object.name.clone()),
            uid,
            ..ObjectReference::default()
        },
        reason: Some(key.reason.clone()),
        message: Some(key.message.clone()),
        type_: Some(key.type_.as_str().to_string()),
        count: Some(1),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        source: Some(EventSource {
            component: Some(config.component.clone()),
            host: None,
        }),
        reporting_component: Some(config.component.clone()),
        reporting_instance: Some(config.instance.clone()),
        ..Event::default()
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use crate::events::key;

    #[test]
    fn a_new_event_names_its_object_with_api_version_and_uid() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let ar = api_resource("Deployment").unwrap();
        let e = new_event(
            &EventsConfig::default(),
            &key("m"),
            Some(&ar),
            Some("u-1".into()),
            now,
        );
        assert_eq!(e.involved_object.api_version.as_deref(), Some("apps/v1"));
        assert_eq!(e.involved_object.uid.as_deref(), Some("u-1"));
        assert_eq!(e.involved_object.kind.as_deref(), Some("Service"));
        assert_eq!(e.metadata.namespace.as_deref(), Some("default"));
        assert!(e.metadata.name.unwrap().starts_with("reviews."));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.count, Some(1));
        assert_eq!(e.source.unwrap().component.as_deref(), Some("traffic-control"));
        assert_eq!(
            api_resource("Ingress").unwrap().api_version,
            "networking.k8s.io/v1"
        );
        let vs = api_resource("VirtualService").unwrap();
        assert_eq!(
            (vs.api_version.as_str(), vs.plural.as_str()),
            ("networking.istio.io/v1beta1", "virtualservices")
        );
        assert!(api_resource("HTTPRoute").is_none());
    }
}
