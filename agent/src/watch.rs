//! The controller loop: watches this node's pods plus the owners and Services their desired state
//! depends on, and reconciles on every change and periodically (which also notices sidecars that
//! died, since Docker changes do not show up in the watches).
//!
//! Restart safety: nothing is remembered in memory between rounds. Each round observes the runtime
//! (sidecars found by label) and the redirector (pinned / recorded state), so a restarted agent
//! adopts what the previous one left. The first round waits until every watch has listed, so a
//! half-filled store never looks like "every pod was deleted".

use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use traffic_kube_source::watch::{spawn_reflector, Change};
use traffic_sidecar::ContainerRuntime;

use crate::apply::Applier;
use crate::desired::{desired, Cluster, DesiredPod};
use crate::drain::{self, DaemonSetRef};
use crate::reconcile::{reconcile, scope_to_namespace, Annotations, Observed, Plan};

/// Controller settings.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub node_name: String,
    /// Watch only this namespace's pods (`None`: every pod of the node).
    pub namespace: Option<String>,
    /// Reconcile at least this often.
    pub resync: Duration,
    /// Wait this long after a change for more changes before reconciling.
    pub debounce: Duration,
    /// Give up starting if the watches have not listed within this time.
    pub sync_timeout: Duration,
    /// Drain the node when the agents' DaemonSet asks for it (uninstall).
    pub drain: Option<DrainConfig>,
}

/// Where the drain signal comes from and what a drained node must not keep.
#[derive(Debug, Clone)]
pub struct DrainConfig {
    pub daemonset: DaemonSetRef,
    /// This agent's pod (`namespace`, `name`), which gets [`drain::DRAINED_ANNOTATION`].
    pub own_pod: Option<(String, String)>,
    pub pin_root: PathBuf,
    pub iptables_state: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("the Kubernetes watches did not list within {0:?}; check the API server address and that the agent may list and watch pods, services, replicasets, deployments, statefulsets and daemonsets")]
    SyncTimeout(Duration),
    #[error("a watch task ended unexpectedly")]
    WatchEnded,
    #[error("the drain annotation was removed after this agent drained its node: exiting so that a fresh agent sets the node up again")]
    DrainCancelled,
}

/// Read halves of the watches.
#[derive(Clone)]
pub struct Stores {
    pub pods: Store<Pod>,
    pub services: Store<Service>,
    pub replica_sets: Store<ReplicaSet>,
    pub deployments: Store<Deployment>,
    pub stateful_sets: Store<StatefulSet>,
    pub daemon_sets: Store<DaemonSet>,
}

impl Stores {
    async fn wait_until_ready(&self) -> Result<(), WatchError> {
        let e = |_| WatchError::WatchEnded;
        self.pods.wait_until_ready().await.map_err(e)?;
        self.services.wait_until_ready().await.map_err(e)?;
        self.replica_sets.wait_until_ready().await.map_err(e)?;
        self.deployments.wait_until_ready().await.map_err(e)?;
        self.stateful_sets.wait_until_ready().await.map_err(e)?;
        self.daemon_sets.wait_until_ready().await.map_err(e)?;
        Ok(())
    }
}

/// Start the watches; every change pokes `poke`.
pub fn spawn_watches(
    client: &Client,
    node_name: &str,
    namespace: Option<&str>,
    poke: &mpsc::Sender<()>,
) -> (Stores, Vec<JoinHandle<()>>) {
    let all = watcher::Config::default();
    let node_pods = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let (pods, pods_w) = reflector::store();
    let (services, services_w) = reflector::store();
    let (replica_sets, rs_w) = reflector::store();
    let (deployments, dep_w) = reflector::store();
    let (stateful_sets, sts_w) = reflector::store();
    let (daemon_sets, ds_w) = reflector::store();
    let tasks = vec![
        spawn_watch(
            match namespace {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            },
            node_pods,
            pods_w,
            "pods",
            poke,
        ),
        spawn_watch(
            Api::all(client.clone()),
            all.clone(),
            services_w,
            "services",
            poke,
        ),
        spawn_watch(Api::all(client.clone()), all.clone(), rs_w, "replicasets", poke),
        spawn_watch(Api::all(client.clone()), all.clone(), dep_w, "deployments", poke),
        spawn_watch(Api::all(client.clone()), all.clone(), sts_w, "statefulsets", poke),
        spawn_watch(Api::all(client.clone()), all, ds_w, "daemonsets", poke),
    ];
    (
        Stores {
            pods,
            services,
            replica_sets,
            deployments,
            stateful_sets,
            daemon_sets,
        },
        tasks,
    )
}

fn spawn_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    resource: &'static str,
    poke: &mpsc::Sender<()>,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    let poke = poke.clone();
    spawn_reflector(api, config, writer, resource, move |change| {
        if change != Change::Failed {
            // A full channel already means "reconcile soon".
            let _ = poke.try_send(());
        }
    })
}

/// Everything desired from the current store contents (pure).
pub fn desired_from(
    pods: &[Arc<Pod>],
    services: &[Arc<Service>],
    replica_sets: &[Arc<ReplicaSet>],
    deployments: &[Arc<Deployment>],
    stateful_sets: &[Arc<StatefulSet>],
    daemon_sets: &[Arc<DaemonSet>],
) -> (Vec<DesiredPod>, std::collections::BTreeMap<String, Annotations>) {
    let cluster = Cluster::new(replica_sets, deployments, stateful_sets, daemon_sets, services);
    let mut annotations = std::collections::BTreeMap::new();
    let desired = pods
        .iter()
        .filter_map(|p| {
            let d = desired(p, &cluster)?;
            annotations.insert(
                d.pod.uid.clone(),
                Annotations::from_map(p.metadata.annotations.as_ref()),
            );
            Some(d)
        })
        .collect();
    (desired, annotations)
}

impl<R: ContainerRuntime + 'static> Applier<R> {
    /// One round: observe the node, plan, apply. `Err` only when the node could not be observed
    /// (then nothing is changed: planning without knowing the sidecars could start a second one).
    pub async fn round(
        &self,
        desired: &[DesiredPod],
        annotations: std::collections::BTreeMap<String, Annotations>,
    ) -> Result<Vec<Plan>, String> {
        let started = Instant::now();
        self.report_problems(desired);
        let sidecars = self.runtime.sidecars().await.map_err(|e| {
            self.metrics.observe_errors.inc();
            format!("cannot list sidecars: {e}")
        })?;
        let redirector = self.redirector.clone();
        let redirected = tokio::task::spawn_blocking(move || redirector.list())
            .await
            .map_err(|_| "redirector task panicked".to_string())?
            .map_err(|e| {
                self.metrics.observe_errors.inc();
                format!("cannot list redirected pods: {e}")
            })?;
        let mut observed = Observed {
            sidecars,
            redirected,
            annotations,
        };
        if let Some(ns) = &self.namespace {
            observed = scope_to_namespace(observed, desired, ns);
        }
        let mode = self.redirector.mode();
        let plans = reconcile(desired, &observed, mode, self.sidecar_failure);
        if let Some(tokens) = &self.tokens {
            // Before the plans: a sidecar starts only with its pod's token. Pods no longer
            // enabled lose theirs (their sidecars are removed by these plans).
            let enabled: Vec<_> = desired
                .iter()
                .filter(|d| d.enabled)
                .map(|d| (d.pod.clone(), d.service_account.clone()))
                .collect();
            tokens.sync(&enabled).await;
        }
        if !plans.is_empty() {
            debug!(plans = plans.len(), "applying plans");
            self.apply(&plans).await;
        }
        let redirector = self.redirector.clone();
        if let Ok(Ok(now)) = tokio::task::spawn_blocking(move || redirector.list()).await {
            let labels = crate::metrics::ModeLabels {
                mode: mode.to_string(),
            };
            let n = now.iter().filter(|r| r.mode == mode).count();
            self.metrics
                .managed_pods
                .get_or_create(&labels)
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.metrics
            .reconcile_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(plans)
    }
}

/// Run the controller until a watch ends.
pub async fn run<R: ContainerRuntime + 'static>(
    client: Client,
    applier: Arc<Applier<R>>,
    config: ControllerConfig,
) -> Result<(), WatchError> {
    let (poke, mut pokes) = mpsc::channel(1);
    let (stores, mut tasks) = spawn_watches(&client, &config.node_name, config.namespace.as_deref(), &poke);
    tasks.push(tokio::spawn(poke_on_sidecar_exit(
        applier.runtime.exits(),
        poke.downgrade(),
    )));
    drop(poke);
    let guard = AbortOnDrop(tasks);
    match tokio::time::timeout(config.sync_timeout, stores.wait_until_ready()).await {
        Ok(r) => r?,
        Err(_) => return Err(WatchError::SyncTimeout(config.sync_timeout)),
    }
    info!(pods = stores.pods.state().len(), node = %config.node_name, "watches listed; adopting existing sidecars and redirects");
    let mut tick = tokio::time::interval(config.resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drained = false;
    let mut again = false;
    loop {
        if !again {
            tokio::select! {
                got = pokes.recv() => {
                    if got.is_none() {
                        drop(guard);
                        return Err(WatchError::WatchEnded);
                    }
                    tokio::time::sleep(config.debounce).await;
                    while pokes.try_recv().is_ok() {}
                }
                _ = tick.tick() => {}
            }
        }
        again = false;
        let draining = config
            .drain
            .as_ref()
            .is_some_and(|d| drain::draining(&stores.daemon_sets.state(), &d.daemonset));
        if drained {
            if !draining {
                return Err(WatchError::DrainCancelled);
            }
            continue;
        }
        let (mut desired, annotations) = desired_from(
            &stores.pods.state(),
            &stores.services.state(),
            &stores.replica_sets.state(),
            &stores.deployments.state(),
            &stores.stateful_sets.state(),
            &stores.daemon_sets.state(),
        );
        if draining {
            for d in &mut desired {
                d.enabled = false;
            }
        }
        match applier.round(&desired, annotations).await {
            Ok(plans) if draining => {
                if plans.is_empty() {
                    if let Some(d) = &config.drain {
                        match finish_drain(&client, applier.as_ref(), d).await {
                            Ok(()) => drained = true,
                            Err(error) => warn!(%error, "drain not finished; retrying"),
                        }
                    }
                } else {
                    // Confirm at once that the plans left nothing behind.
                    again = true;
                }
            }
            Ok(_) => {}
            Err(error) => warn!(%error, "reconcile round skipped"),
        }
    }
}

/// Every pod is disabled and nothing is planned: remove the node-wide state and report.
async fn finish_drain<R: ContainerRuntime + 'static>(
    client: &Client,
    applier: &Applier<R>,
    d: &DrainConfig,
) -> Result<(), String> {
    let left = applier
        .runtime
        .sidecars()
        .await
        .map_err(|e| format!("cannot list sidecars: {e}"))?;
    if !left.is_empty() {
        return Err(format!("{} sidecar(s) still present", left.len()));
    }
    let (pins, state) = (d.pin_root.clone(), d.iptables_state.clone());
    tokio::task::spawn_blocking(move || drain::purge_node(&pins, &state))
        .await
        .map_err(|_| "purge task panicked".to_string())?
        .map_err(|e| e.to_string())?;
    if let Some((ns, name)) = &d.own_pod {
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        let patch = serde_json::json!({"metadata": {"annotations": {drain::DRAINED_ANNOTATION: "true"}}});
        api.patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .map_err(|e| format!("cannot annotate the agent pod {ns}/{name}: {e}"))?;
    }
    info!(daemonset = %d.daemonset, "node drained: no redirect, sidecar, annotation or pinned object left; idle until deleted");
    Ok(())
}

/// A sidecar that exits is acted on at once (restart, or redirect off), not at the next resync:
/// until then the pod's connections would be steered to a proxy that is not there.
/// Holds the poke channel weakly: the watches alone keep the controller alive.
async fn poke_on_sidecar_exit(mut exits: BoxStream<'static, String>, poke: mpsc::WeakSender<()>) {
    while let Some(container) = exits.next().await {
        let Some(poke) = poke.upgrade() else { return };
        info!(%container, "sidecar exited; reconciling now");
        // A full channel already holds a poke: the round it triggers sees this exit too.
        let _ = poke.try_send(());
    }
}

struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}
