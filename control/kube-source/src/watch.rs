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

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::Backoff;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument};
use traffic_translate::model::MeshModel;

use crate::convert::{build_model, Inputs, TLS_SECRET_TYPE};
use crate::events::{EventSink, EventType};
use crate::istio_watch::{istio_stores, spawn_istio_watches, IstioStores, IstioWriters, ISTIO_SYNC_WAIT};
use crate::problems::{label_problems, INVALID_LABEL_REASON};

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

/// Readers of the reflector stores the model is built from.
#[derive(Clone)]
pub struct Stores {
    pub services: Store<Service>,
    pub pods: Store<Pod>,
    pub replica_sets: Store<ReplicaSet>,
    pub deployments: Store<Deployment>,
    pub stateful_sets: Store<StatefulSet>,
    pub daemon_sets: Store<DaemonSet>,
    pub ingresses: Store<Ingress>,
    pub secrets: Store<Secret>,
    /// Not waited for by [`Stores::wait_until_ready`] (the CRDs may be missing).
    pub istio: IstioStores,
}

/// The writing halves matching [`Stores`].
pub struct Writers {
    pub services: reflector::store::Writer<Service>,
    pub pods: reflector::store::Writer<Pod>,
    pub replica_sets: reflector::store::Writer<ReplicaSet>,
    pub deployments: reflector::store::Writer<Deployment>,
    pub stateful_sets: reflector::store::Writer<StatefulSet>,
    pub daemon_sets: reflector::store::Writer<DaemonSet>,
    pub ingresses: reflector::store::Writer<Ingress>,
    pub secrets: reflector::store::Writer<Secret>,
    pub istio: IstioWriters,
}

/// Fresh, empty (not yet ready) stores.
pub fn stores() -> (Stores, Writers) {
    let (services, services_w) = reflector::store();
    let (pods, pods_w) = reflector::store();
    let (replica_sets, replica_sets_w) = reflector::store();
    let (deployments, deployments_w) = reflector::store();
    let (stateful_sets, stateful_sets_w) = reflector::store();
    let (daemon_sets, daemon_sets_w) = reflector::store();
    let (ingresses, ingresses_w) = reflector::store();
    let (secrets, secrets_w) = reflector::store();
    let (istio, istio_w) = istio_stores();
    (
        Stores {
            services,
            pods,
            replica_sets,
            deployments,
            stateful_sets,
            daemon_sets,
            ingresses,
            secrets,
            istio,
        },
        Writers {
            services: services_w,
            pods: pods_w,
            replica_sets: replica_sets_w,
            deployments: deployments_w,
            stateful_sets: stateful_sets_w,
            daemon_sets: daemon_sets_w,
            ingresses: ingresses_w,
            secrets: secrets_w,
            istio: istio_w,
        },
    )
}

impl Stores {
    /// A consistent-enough copy of everything (each store is read once).
    pub fn inputs(&self) -> Inputs {
        Inputs {
            services: self.services.state(),
            pods: self.pods.state(),
            replica_sets: self.replica_sets.state(),
            deployments: self.deployments.state(),
            stateful_sets: self.stateful_sets.state(),
            daemon_sets: self.daemon_sets.state(),
            ingresses: self.ingresses.state(),
            secrets: self.secrets.state(),
            now: Some(std::time::SystemTime::now()),
            istio: self.istio.config(),
        }
    }

    /// Resolves once every store has completed its initial list.
    pub async fn wait_until_ready(&self) -> Result<(), SourceError> {
        let dropped = |_| SourceError::WatchEnded;
        self.services.wait_until_ready().await.map_err(dropped)?;
        self.pods.wait_until_ready().await.map_err(dropped)?;
        self.replica_sets.wait_until_ready().await.map_err(dropped)?;
        self.deployments.wait_until_ready().await.map_err(dropped)?;
        self.stateful_sets.wait_until_ready().await.map_err(dropped)?;
        self.daemon_sets.wait_until_ready().await.map_err(dropped)?;
        self.ingresses.wait_until_ready().await.map_err(dropped)?;
        self.secrets.wait_until_ready().await.map_err(dropped)?;
        Ok(())
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

/// What a reflector task saw (see [`spawn_reflector`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The initial list, or a relist after the watch expired, is complete: the store holds it.
    Listed,
    /// An object was created, changed or deleted; the store already has it.
    Object,
    /// The watch failed; it is retried with backoff.
    Failed,
}

/// Delays between retries of a failed watch: 0.5 s, doubling to at most 4 s, back to 0.5 s after
/// any successful event. kube's `DefaultBackoff` (client-go's: 0.8 s doubling to 30 s, reset only
/// 120 s after the last delay) left the control plane and the agent about 40 s behind after a 40 s
/// API server outage (issue 9, fault (c)): the first retry after the server was back came up to
/// 26 s late. A few watches per process retrying every 4 s cost an API server nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(4);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    /// Never `None`: a watch is retried for as long as the process runs.
    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(delay)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// A list+watch of `api` feeding the reflector store of `writer` on its own task (managedFields
/// dropped: nobody reads them and they are a large share of each object's memory). `on_change`
/// hears every completed list, object change and failure; changes and failures are also logged,
/// under `resource`.
pub fn spawn_reflector<K, F>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    resource: &'static str,
    mut on_change: F,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
    F: FnMut(Change) + Send + 'static,
{
    let stream = watcher(api, config)
        .backoff(WatchBackoff::default())
        .modify(|o: &mut K| o.managed_fields_mut().clear())
        .reflect(writer);
    let task = async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                // Pages of a (re)list: the store swaps in the new state at InitDone.
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(watcher::Event::InitDone) => {
                    debug!("list complete");
                    on_change(Change::Listed);
                }
                Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => {
                    debug!(
                        namespace = o.namespace().unwrap_or_default(),
                        name = o.name_any(),
                        "changed"
                    );
                    on_change(Change::Object);
                }
                Err(error) => {
                    warn!(%error, "watch failed, retrying with backoff");
                    on_change(Change::Failed);
                }
            }
        }
        warn!("watch stream ended");
    };
    tokio::spawn(task.instrument(tracing::info_span!("kube_watch", resource)))
}

fn report_label_problems(model: &MeshModel, sink: Option<&dyn EventSink>, metrics: &SourceMetrics) {
    for problem in label_problems(model) {
        metrics.label_errors.inc();
        debug!(
            kind = %problem.object.kind,
            namespace = %problem.object.namespace,
            name = %problem.object.name,
            label = %problem.error.label,
            "invalid label"
        );
        if let Some(sink) = sink {
            sink.report(
                &problem.object,
                EventType::Warning,
                INVALID_LABEL_REASON,
                &problem.message(),
            );
        }
    }
}

/// When the earliest node-controller grace among the pods of `inputs` ends, as a Tokio instant
/// (a little after it, so the rebuild then sees it ended).
fn grace_expiry(inputs: &Inputs) -> Option<tokio::time::Instant> {
    let now = inputs.now?;
    let at = crate::readiness::next_expiry(inputs.pods.iter().map(|p| &**p), now)?;
    let wait = at.duration_since(now).unwrap_or_default() + Duration::from_millis(100);
    Some(tokio::time::Instant::now() + wait)
}

/// Rebuild and publish models until `pokes` closes (all watches ended) or every receiver of
/// `tx` is gone. Each poke (of any resource) means "something changed"; pokes arriving within
/// `debounce` of each other (up to `max_delay` in total) give one rebuild.
pub async fn run_model_loop(
    stores: Stores,
    mut pokes: mpsc::Receiver<Watched>,
    tx: watch::Sender<Arc<MeshModel>>,
    config: SourceConfig,
    metrics: SourceMetrics,
    label_events: Option<Arc<dyn EventSink>>,
) {
    // When a pod's node-controller grace (crate::readiness) ends, the model changes although no
    // watch event comes: rebuild then.
    let mut expiry: Option<tokio::time::Instant> = None;
    loop {
        let first = match expiry {
            Some(at) => tokio::select! {
                poke = pokes.recv() => poke,
                () = tokio::time::sleep_until(at) => Some(Watched::Pods),
            },
            None => pokes.recv().await,
        };
        let Some(first) = first else { break };
        let deadline = tokio::time::Instant::now() + config.max_delay;
        let mut burst = 1usize;
        loop {
            let quiet = tokio::time::Instant::now() + config.debounce;
            match tokio::time::timeout_at(quiet.min(deadline), pokes.recv()).await {
                Ok(Some(_)) => burst += 1,
                Ok(None) | Err(_) => break,
            }
        }
        let inputs = stores.inputs();
        let model = build_model(&inputs);
        expiry = grace_expiry(&inputs);
        if **tx.borrow() == model {
            metrics.unchanged_models.inc();
            debug!(first = first.as_str(), burst, "model unchanged");
            continue;
        }
        report_label_problems(&model, label_events.as_deref(), &metrics);
        metrics.models.inc();
        debug!(
            first = first.as_str(),
            burst,
            services = model.services.len(),
            pods = model.pods.len(),
            "model published"
        );
        if tx.send(Arc::new(model)).is_err() {
            info!("no model receivers left, stopping");
            return;
        }
    }
    warn!("all watches ended, model loop stops");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_retries_double_from_half_a_second_to_four_and_start_over_after_a_success() {
        let mut b = WatchBackoff::default();
        let delays: Vec<u64> = b.by_ref().take(6).map(|d| d.as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 4000, 4000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(500)));
    }
}
