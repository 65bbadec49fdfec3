//! Kubernetes Events on the objects users label: invalid label values, configurations Envoy
//! rejected.
//!
//! [`EventSink::report`] is synchronous and cheap: it queues. [`KubeEvents`] owns a worker task
//! that deduplicates (the control plane reconciles on every change, and must not post the same
//! Event each time: see [`Deduper`]) and writes classic `core/v1` Events, which every Kubernetes
//! version serves and `kubectl get events` / `kubectl describe` show. A repeat after the dedup
//! window bumps `count` and `lastTimestamp` of the existing Event instead of creating a new one.

use std::collections::HashMap;
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

/// What makes two reports "the same Event".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventKey {
    pub object: ObjectRef,
    pub type_: EventType,
    pub reason: String,
    pub message: String,
}

/// What the worker should do with one report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// First time (or forgotten): create a new Event.
    Create,
    /// Seen before and the window has passed: bump the existing Event `name` to `count`.
    Update { name: String, count: i32 },
    /// Seen within the window: do nothing.
    Suppress,
}

#[derive(Debug, Clone)]
struct Seen {
    /// The Event's object name once created.
    name: Option<String>,
    count: i32,
    last_emitted: Instant,
}

/// Pure deduplication state: the same (object, type, reason, message) is written at most once per
/// `window`; after `forget_after` (Kubernetes' own Event TTL is 1 h) it starts a new Event.
/// Holds at most `capacity` keys, dropping the oldest first.
#[derive(Debug)]
pub struct Deduper {
    window: Duration,
    forget_after: Duration,
    capacity: usize,
    seen: HashMap<EventKey, Seen>,
}

impl Deduper {
    pub fn new(window: Duration, forget_after: Duration, capacity: usize) -> Self {
        Deduper {
            window,
            forget_after,
            capacity: capacity.max(1),
            seen: HashMap::new(),
        }
    }

    /// Decide what to do with a report at `now`, and record it.
    pub fn decide(&mut self, key: &EventKey, now: Instant) -> Action {
        if let Some(seen) = self.seen.get_mut(key) {
            let age = now.saturating_duration_since(seen.last_emitted);
            if age < self.window {
                return Action::Suppress;
            }
            if age < self.forget_after {
                if let Some(name) = &seen.name {
                    seen.count = seen.count.saturating_add(1);
                    seen.last_emitted = now;
                    return Action::Update {
                        name: name.clone(),
                        count: seen.count,
                    };
                }
            }
        }
        self.make_room(now);
        self.seen.insert(
            key.clone(),
            Seen {
                name: None,
                count: 1,
                last_emitted: now,
            },
        );
        Action::Create
    }

    /// The Event for `key` was created under `name`.
    pub fn created(&mut self, key: &EventKey, name: String) {
        if let Some(seen) = self.seen.get_mut(key) {
            seen.name = Some(name);
            seen.count = 1;
        }
    }

    /// The Event for `key` is gone (deleted or expired on the server): the next report creates
    /// a new one.
    pub fn forget(&mut self, key: &EventKey) {
        self.seen.remove(key);
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn make_room(&mut self, now: Instant) {
        let forget_after = self.forget_after;
        self.seen
            .retain(|_, s| now.saturating_duration_since(s.last_emitted) < forget_after);
        while self.seen.len() >= self.capacity {
            let Some(oldest) = self
                .seen
                .iter()
                .min_by_key(|(_, s)| s.last_emitted)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.seen.remove(&oldest);
        }
    }
}

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

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn the_same_event_is_written_once_per_window_then_its_count_is_bumped() {
        let mut d = Deduper::new(5 * MIN, 60 * MIN, 100);
        let t0 = Instant::now();
        let k = key("label traffic.request.timeout=\"abc\" ignored");
        assert_eq!(d.decide(&k, t0), Action::Create);
        d.created(&k, "reviews.1".into());
        for i in 1..10 {
            assert_eq!(d.decide(&k, t0 + Duration::from_secs(i)), Action::Suppress);
        }
        assert_eq!(
            d.decide(&k, t0 + 5 * MIN),
            Action::Update {
                name: "reviews.1".into(),
                count: 2
            }
        );
        assert_eq!(d.decide(&k, t0 + 6 * MIN), Action::Suppress);
        assert_eq!(
            d.decide(&k, t0 + 10 * MIN),
            Action::Update {
                name: "reviews.1".into(),
                count: 3
            }
        );
    }

    #[test]
    fn different_messages_on_the_same_object_are_different_events() {
        let mut d = Deduper::new(5 * MIN, 60 * MIN, 100);
        let t0 = Instant::now();
        assert_eq!(d.decide(&key("a"), t0), Action::Create);
        assert_eq!(d.decide(&key("b"), t0), Action::Create);
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn an_event_whose_creation_failed_is_retried_after_the_window_only() {
        let mut d = Deduper::new(5 * MIN, 60 * MIN, 100);
        let t0 = Instant::now();
        assert_eq!(d.decide(&key("a"), t0), Action::Create);
        assert_eq!(d.decide(&key("a"), t0 + MIN), Action::Suppress);
        assert_eq!(d.decide(&key("a"), t0 + 5 * MIN), Action::Create);
    }

    #[test]
    fn old_events_are_forgotten_and_a_new_event_is_started() {
        let mut d = Deduper::new(5 * MIN, 60 * MIN, 100);
        let t0 = Instant::now();
        assert_eq!(d.decide(&key("a"), t0), Action::Create);
        d.created(&key("a"), "reviews.1".into());
        assert_eq!(d.decide(&key("a"), t0 + 61 * MIN), Action::Create);
    }

    #[test]
    fn the_deduper_keeps_at_most_capacity_keys_dropping_the_oldest() {
        let mut d = Deduper::new(5 * MIN, 60 * MIN, 2);
        let t0 = Instant::now();
        d.decide(&key("a"), t0);
        d.decide(&key("b"), t0 + Duration::from_secs(1));
        d.decide(&key("c"), t0 + Duration::from_secs(2));
        assert_eq!(d.len(), 2);
        // "a" was dropped, so it is new again.
        assert_eq!(d.decide(&key("a"), t0 + Duration::from_secs(3)), Action::Create);
        assert_eq!(d.decide(&key("c"), t0 + Duration::from_secs(3)), Action::Suppress);
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let long = "é".repeat(1000);
        let cut = truncate_message(&long);
        assert!(cut.len() <= MAX_MESSAGE_BYTES);
        assert!(long.starts_with(cut));
        assert_eq!(truncate_message("short"), "short");
    }

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
