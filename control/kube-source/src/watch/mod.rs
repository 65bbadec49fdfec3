//! Watches feeding reflector stores, and the loop that turns store contents into models.
//!
//! One task per resource kind runs a classic list+watch (`watcher::Config::default()`, which
//! Kubernetes 1.20 serves; no watch-list, no EndpointSlices) into a reflector store and pokes a
//! coalescing channel on every change. [`run_model_loop`] waits for a poke, lets a burst settle
//! (debounce), rebuilds the model from the stores with the pure [`build_model`], and publishes it
//! on a `tokio::sync::watch` channel when it differs from the last one. The first model is
//! published only when every store has completed its initial list, so consumers never see a
//! partial cluster (e.g. Services without their pods, which would empty every cluster).

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use kube::runtime::reflector;
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, Instrument};
use traffic_translate::model::MeshModel;

use crate::convert::{build_model, TLS_SECRET_TYPE};
use crate::events::EventSink;
use crate::istio_watch::{spawn_istio_watches, IstioStores, ISTIO_SYNC_WAIT};

mod list_watch;
mod model_loop;
mod stores;

pub use list_watch::{spawn_reflector, Change};
use model_loop::report_label_problems;
pub use model_loop::run_model_loop;
pub use stores::{stores, Stores, Writers};

/// The resource kinds watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Watched {
    Services,
    Pods,
    ReplicaSets,
    Deployments,
    StatefulSets,
    DaemonSets,
    Ingresses,
    Secrets,
    /// Any of the four networking.istio.io kinds.
    Istio,
}

impl Watched {
    pub fn as_str(self) -> &'static str {
        match self {
            Watched::Services => "services",
            Watched::Pods => "pods",
            Watched::ReplicaSets => "replicasets",
            Watched::Deployments => "deployments",
            Watched::StatefulSets => "statefulsets",
            Watched::DaemonSets => "daemonsets",
            Watched::Ingresses => "ingresses",
            Watched::Secrets => "secrets",
            Watched::Istio => "istio",
        }
    }
}

/// Why the source could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "the Kubernetes watches did not complete their initial list within {0:?}; check the API \
         server address and that the service account may list and watch services, pods, secrets, \
         replicasets, deployments, statefulsets, daemonsets and ingresses (see the logs for the \
         failing resource)"
    )]
    SyncTimeout(Duration),
    #[error("a watch task ended unexpectedly")]
    WatchEnded,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: &'static str,
}

/// Watch and model counters, registered under `kube_source_`.
#[derive(Debug, Clone, Default)]
pub struct SourceMetrics {
    pub watch_events: Family<ResourceLabels, Counter>,
    pub watch_errors: Family<ResourceLabels, Counter>,
    pub models: Counter,
    pub unchanged_models: Counter,
    pub label_errors: Counter,
}

impl SourceMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = SourceMetrics::default();
        let r = registry.sub_registry_with_prefix("kube_source");
        r.register(
            "watch_events",
            "Changes seen by the Kubernetes watches",
            m.watch_events.clone(),
        );
        r.register(
            "watch_errors",
            "Errors of the Kubernetes watches (each is retried with backoff)",
            m.watch_errors.clone(),
        );
        r.register("models", "Mesh models published", m.models.clone());
        r.register(
            "unchanged_models",
            "Rebuilds that produced the same model as before (not published)",
            m.unchanged_models.clone(),
        );
        r.register(
            "label_errors",
            "Invalid traffic.* label values found while publishing models",
            m.label_errors.clone(),
        );
        m
    }
}

/// What to watch and how to publish.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Watch one namespace only; `None` watches all.
    pub namespace: Option<String>,
    /// Quiet time after a change before the model is rebuilt (bursts become one model).
    pub debounce: Duration,
    /// Upper bound on the wait for a quiet moment, so constant churn still publishes.
    pub max_delay: Duration,
    /// How long [`KubeSource::start`] waits for the initial lists.
    pub sync_timeout: Duration,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            namespace: None,
            debounce: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            sync_timeout: Duration::from_secs(60),
        }
    }
}

/// A running source: the latest complete model, and the tasks producing it.
pub struct KubeSource {
    pub models: watch::Receiver<Arc<MeshModel>>,
    /// The watched Istio objects (their current status, for the status writer).
    pub istio: IstioStores,
    tasks: Vec<JoinHandle<()>>,
}

impl KubeSource {
    /// Start the watches and wait (at most `config.sync_timeout`) for the first complete model.
    /// Invalid labels are reported on `label_events`, if given, every time a model is published
    /// (the sink deduplicates).
    pub async fn start(
        client: Client,
        config: SourceConfig,
        metrics: SourceMetrics,
        label_events: Option<Arc<dyn EventSink>>,
    ) -> Result<KubeSource, SourceError> {
        let (stores, writers) = stores();
        let (poke, pokes) = mpsc::channel(1);
        let mut tasks = spawn_watches(&client, config.namespace.as_deref(), writers, &poke, &metrics);
        drop(poke);
        let ready = tokio::time::timeout(config.sync_timeout, stores.wait_until_ready()).await;
        if !matches!(ready, Ok(Ok(()))) {
            for t in &tasks {
                t.abort();
            }
            return Err(match ready {
                Ok(Err(e)) => e,
                _ => SourceError::SyncTimeout(config.sync_timeout),
            });
        }
        if !stores.istio.wait_until_ready(ISTIO_SYNC_WAIT).await {
            info!("networking.istio.io objects not listed yet (CRDs missing?); starting without them");
        }
        let first = build_model(&stores.inputs());
        info!(
            services = first.services.len(),
            pods = first.pods.len(),
            workloads = first.workloads.len(),
            ingresses = first.ingresses.len(),
            secrets = first.secrets.len(),
            istio_objects = stores.istio.config().objects().count(),
            "initial Kubernetes state loaded"
        );
        report_label_problems(&first, label_events.as_deref(), &metrics);
        metrics.models.inc();
        let (tx, models) = watch::channel(Arc::new(first));
        let istio = stores.istio.clone();
        let looped = run_model_loop(stores, pokes, tx, config, metrics, label_events);
        tasks.push(tokio::spawn(looped.instrument(tracing::info_span!("kube_model"))));
        Ok(KubeSource { models, istio, tasks })
    }

    /// A receiver of models (the current value is always a complete model).
    pub fn subscribe(&self) -> watch::Receiver<Arc<MeshModel>> {
        self.models.clone()
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn spawn_watches(
    client: &Client,
    namespace: Option<&str>,
    w: Writers,
    poke: &mpsc::Sender<Watched>,
    metrics: &SourceMetrics,
) -> Vec<JoinHandle<()>> {
    let all = watcher::Config::default();
    let tls = watcher::Config::default().fields(&format!("type={TLS_SECRET_TYPE}"));
    let mut tasks = spawn_istio_watches(client, namespace, w.istio, poke, metrics);
    tasks.extend([
        spawn_watch(
            api(client, namespace),
            all.clone(),
            w.services,
            Watched::Services,
            poke,
            metrics,
        ),
        spawn_watch(
            api(client, namespace),
            all.clone(),
            w.pods,
            Watched::Pods,
            poke,
            metrics,
        ),
        spawn_watch(
            api(client, namespace),
            all.clone(),
            w.replica_sets,
            Watched::ReplicaSets,
            poke,
            metrics,
        ),
        spawn_watch(
            api(client, namespace),
            all.clone(),
            w.deployments,
            Watched::Deployments,
            poke,
            metrics,
        ),
        spawn_watch(
            api(client, namespace),
            all.clone(),
            w.stateful_sets,
            Watched::StatefulSets,
            poke,
            metrics,
        ),
        spawn_watch(
            api(client, namespace),
            all.clone(),
            w.daemon_sets,
            Watched::DaemonSets,
            poke,
            metrics,
        ),
        spawn_watch(
            api(client, namespace),
            all,
            w.ingresses,
            Watched::Ingresses,
            poke,
            metrics,
        ),
        spawn_watch(
            api(client, namespace),
            tls,
            w.secrets,
            Watched::Secrets,
            poke,
            metrics,
        ),
    ]);
    tasks
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// One list+watch into a store; pokes `poke` on every change after (and including) the initial
/// list. A full `poke` channel already means "rebuild", so extra pokes are dropped.
fn spawn_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    kind: Watched,
    poke: &mpsc::Sender<Watched>,
    metrics: &SourceMetrics,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    let poke = poke.clone();
    let labels = ResourceLabels {
        resource: kind.as_str(),
    };
    let events = metrics.watch_events.get_or_create(&labels).clone();
    let errors = metrics.watch_errors.get_or_create(&labels).clone();
    spawn_reflector(api, config, writer, kind.as_str(), move |change| {
        match change {
            Change::Listed => {}
            Change::Object => {
                events.inc();
            }
            Change::Failed => {
                errors.inc();
                return;
            }
        }
        let _ = poke.try_send(kind);
    })
}
