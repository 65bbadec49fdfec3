//! The model loop driven by in-memory stores and pokes (no API server): debouncing, publishing
//! only changed models, reporting invalid labels through the sink.
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher;
use tokio::sync::{mpsc, watch};
use traffic_kube_source::events::{EventSink, EventType};
use traffic_kube_source::watch::{run_model_loop, stores, Watched, Writers};
use traffic_kube_source::{SourceConfig, SourceMetrics};
use traffic_translate::model::MeshModel;
use traffic_translate::snapshot::ObjectRef;

#[derive(Default)]
struct Recorded(Mutex<Vec<(ObjectRef, String, String)>>);

impl EventSink for Recorded {
    fn report(&self, object: &ObjectRef, _type: EventType, reason: &str, message: &str) {
        self.0
            .lock()
            .unwrap()
            .push((object.clone(), reason.to_string(), message.to_string()));
    }
}

fn service(name: &str, labels: &[(&str, &str)]) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.96.0.20".into()),
            selector: Some(BTreeMap::from([("app".to_string(), name.to_string())])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Every store listed (empty) and ready.
fn init_all(w: &mut Writers) {
    macro_rules! init {
        ($($f:ident),*) => {$(
            w.$f.apply_watcher_event(&watcher::Event::Init);
            w.$f.apply_watcher_event(&watcher::Event::InitDone);
        )*};
    }
    init!(
        services,
        pods,
        replica_sets,
        deployments,
        stateful_sets,
        daemon_sets,
        ingresses,
        secrets
    );
}

struct Harness {
    writers: Writers,
    poke: mpsc::Sender<Watched>,
    models: watch::Receiver<Arc<MeshModel>>,
    events: Arc<Recorded>,
    metrics: SourceMetrics,
}

fn start(config: SourceConfig) -> Harness {
    let (stores, mut writers) = stores();
    init_all(&mut writers);
    let (poke, pokes) = mpsc::channel(1);
    let (tx, models) = watch::channel(Arc::new(MeshModel::default()));
    let events = Arc::new(Recorded::default());
    let metrics = SourceMetrics::default();
    let sink: Arc<dyn EventSink> = events.clone();
    tokio::spawn(run_model_loop(
        stores,
        pokes,
        tx,
        config,
        metrics.clone(),
        Some(sink),
    ));
    Harness {
        writers,
        poke,
        models,
        events,
        metrics,
    }
}

#[tokio::test(start_paused = true)]
async fn a_change_in_a_store_is_published_as_a_new_model_after_the_debounce() {
    let mut h = start(SourceConfig::default());
    h.writers
        .services
        .apply_watcher_event(&watcher::Event::Apply(service(
            "reviews",
            &[("traffic.port.9080", "http")],
        )));
    h.poke.send(Watched::Services).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), h.models.changed())
        .await
        .unwrap()
        .unwrap();
    let model = h.models.borrow_and_update().clone();
    assert_eq!(model.services.len(), 1);
    assert_eq!(model.services[0].name, "reviews");
    assert_eq!(model.services[0].selector["app"], "reviews");
    assert!(h.events.0.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_changes_gives_one_model_and_an_unchanged_rebuild_gives_none() {
    let mut h = start(SourceConfig {
        debounce: Duration::from_millis(100),
        max_delay: Duration::from_secs(1),
        ..SourceConfig::default()
    });
    for i in 0..5 {
        h.writers
            .services
            .apply_watcher_event(&watcher::Event::Apply(service(&format!("s{i}"), &[])));
        h.poke.send(Watched::Services).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.models.changed().await.unwrap();
    assert_eq!(h.models.borrow_and_update().services.len(), 5);
    assert_eq!(h.metrics.models.get(), 1);

    // A poke without a change in the stores: rebuilt, compared, not published.
    h.poke.send(Watched::Pods).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!h.models.has_changed().unwrap());
    assert_eq!(h.metrics.unchanged_models.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_invalid_label_is_reported_on_its_object_and_the_rest_still_applies() {
    let mut h = start(SourceConfig::default());
    h.writers
        .services
        .apply_watcher_event(&watcher::Event::Apply(service(
            "ratings",
            &[("traffic.request.timeout", "abc"), ("traffic.port.9080", "http")],
        )));
    h.poke.send(Watched::Services).await.unwrap();
    h.models.changed().await.unwrap();
    assert_eq!(h.models.borrow().services[0].labels["traffic.port.9080"], "http");
    let events = h.events.0.lock().unwrap();
    assert_eq!(events.len(), 1);
    let (object, reason, message) = &events[0];
    assert_eq!(
        object,
        &ObjectRef {
            kind: "Service".into(),
            namespace: "default".into(),
            name: "ratings".into()
        }
    );
    assert_eq!(reason, "InvalidTrafficLabel");
    assert!(message.contains("traffic.request.timeout"), "{message}");
    assert_eq!(h.metrics.label_errors.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_loop_stops_when_every_watch_is_gone() {
    let (stores, _writers) = stores();
    let (poke, pokes) = mpsc::channel(1);
    let (tx, _models) = watch::channel(Arc::new(MeshModel::default()));
    let task = tokio::spawn(run_model_loop(
        stores,
        pokes,
        tx,
        SourceConfig::default(),
        SourceMetrics::default(),
        None,
    ));
    drop(poke);
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .unwrap()
        .unwrap();
}
