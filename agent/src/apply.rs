//! Applying plans: the I/O side of the reconciler. Each pod's plan runs its steps in order and
//! stops at the first failure (then runs `on_failure`); failures become a log line, a metric and a
//! Kubernetes Event on the pod. Plans of different pods run concurrently and independently.

use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::StreamExt;
use tracing::{debug, info, warn};
use traffic_kube_source::events::{EventSink, EventType};
use traffic_redirect::{Mode, PodKey, PodRedirect, RedirectError, Redirector};
use traffic_sidecar::bootstrap::{self, BootstrapOptions};
use traffic_sidecar::{ContainerRuntime, PodRef, RuntimeError, Sandbox, Sidecar, SidecarSpec};
use traffic_translate::snapshot::ObjectRef;

use crate::desired::{DesiredPod, PROXY_UID};
use crate::metrics::AgentMetrics;
use crate::reconcile::{Plan, Step};

/// Writes the agent's annotations on a pod (`proxy = None` and `mode = None` clear them).
pub trait Annotator: Send + Sync {
    fn annotate<'a>(
        &'a self,
        pod: &'a PodRef,
        proxy: &'a str,
        mode: Option<Mode>,
    ) -> BoxFuture<'a, Result<(), ApplyError>>;
}

/// How sidecars are started on this node.
#[derive(Debug, Clone)]
pub struct SidecarTemplate {
    pub image: String,
    pub bootstrap: BootstrapOptions,
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("pod {pod_uid} has no running sandbox yet")]
    NoSandbox { pod_uid: String },
    #[error("cannot render the Envoy bootstrap: {0}")]
    Bootstrap(#[from] bootstrap::BootstrapError),
    #[error("container runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("redirect: {0}")]
    Redirect(#[from] RedirectError),
    #[error("sidecar {container_id} has no cgroup v2 directory (is it running?); eBPF mode excludes the proxy by cgroup")]
    MissingProxyCgroup { container_id: String },
    #[error("no running sidecar to redirect to")]
    NoSidecar,
    #[error("step needs the pod, which is gone")]
    NoPod,
    #[error("pod uid {0:?} is not a valid redirect key")]
    Key(#[from] traffic_redirect::InvalidPodKey),
    #[error("annotating pod {namespace}/{name}: {source}")]
    Annotate {
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("redirector task panicked")]
    Join,
}

impl ApplyError {
    /// `Event` reason for a failed step.
    fn reason(&self, step: &Step) -> &'static str {
        match step {
            Step::StartSidecar { .. } => "SidecarStartFailed",
            Step::RemoveSidecar { .. } => "SidecarRemoveFailed",
            Step::EnableRedirect { .. } => "RedirectFailed",
            Step::DisableRedirect => "RedirectRemoveFailed",
            Step::Annotate { .. } | Step::ClearAnnotations => "AnnotateFailed",
        }
    }
}

/// Applies plans with a runtime, a redirector, an annotator and an Event sink.
pub struct Applier<R> {
    pub runtime: Arc<R>,
    pub redirector: Arc<dyn Redirector>,
    pub annotator: Arc<dyn Annotator>,
    pub events: Arc<dyn EventSink>,
    pub metrics: AgentMetrics,
    pub template: SidecarTemplate,
    /// Plans applied at once.
    pub concurrency: usize,
    /// Manage only this namespace's pods, sidecars and redirects (`None`: the whole node).
    pub namespace: Option<String>,
}

/// What happened to one plan.
#[derive(Debug)]
pub struct Outcome {
    pub pod_uid: String,
    pub result: Result<(), ApplyError>,
}

struct PodContext {
    sidecar: Option<Sidecar>,
    sandbox: Option<Sandbox>,
}

impl<R: ContainerRuntime + 'static> Applier<R> {
    /// Apply every plan; one failing pod never stops the others.
    pub async fn apply(&self, plans: &[Plan]) -> Vec<Outcome> {
        futures::stream::iter(plans)
            .map(|plan| async move {
                Outcome {
                    pod_uid: plan.pod_uid.clone(),
                    result: self.apply_plan(plan).await,
                }
            })
            .buffer_unordered(self.concurrency.max(1))
            .collect()
            .await
    }

    async fn apply_plan(&self, plan: &Plan) -> Result<(), ApplyError> {
        let mut ctx = PodContext {
            sidecar: plan.sidecar.clone(),
            sandbox: None,
        };
        for step in &plan.steps {
            if let Err(error) = self.step(plan, step, &mut ctx).await {
                self.failed(plan, step, &error);
                for undo in &plan.on_failure {
                    if let Err(e) = self.step(plan, undo, &mut ctx).await {
                        self.failed(plan, undo, &e);
                    }
                }
                return Err(error);
            }
        }
        Ok(())
    }

    fn failed(&self, plan: &Plan, step: &Step, error: &ApplyError) {
        let (namespace, name) = plan
            .pod
            .as_ref()
            .map(|p| (p.namespace.as_str(), p.name.as_str()))
            .unwrap_or(("", ""));
        if let ApplyError::NoSandbox { .. } = error {
            // A pod still being created: the next round retries.
            debug!(pod_uid = %plan.pod_uid, namespace, name, "no sandbox yet, sidecar start deferred");
            return;
        }
        warn!(pod_uid = %plan.pod_uid, namespace, name, step = ?step_name(step), %error, "reconcile step failed");
        if let Some(pod) = &plan.pod {
            self.events.report(
                &pod_object(pod),
                EventType::Warning,
                error.reason(step),
                &error.to_string(),
            );
        }
    }

    async fn sandbox(&self, plan: &Plan, ctx: &mut PodContext) -> Result<Sandbox, ApplyError> {
        if let Some(s) = &ctx.sandbox {
            return Ok(s.clone());
        }
        let s = self
            .runtime
            .sandbox(&plan.pod_uid)
            .await?
            .ok_or_else(|| ApplyError::NoSandbox {
                pod_uid: plan.pod_uid.clone(),
            })?;
        ctx.sandbox = Some(s.clone());
        Ok(s)
    }

    async fn step(&self, plan: &Plan, step: &Step, ctx: &mut PodContext) -> Result<(), ApplyError> {
        match step {
            Step::StartSidecar { restart } => {
                let pod = plan.pod.as_ref().ok_or(ApplyError::NoPod)?;
                let sandbox = self.sandbox(plan, ctx).await?;
                let spec = SidecarSpec {
                    pod: pod.clone(),
                    image: self.template.image.clone(),
                    bootstrap: bootstrap::render(pod, &self.template.bootstrap)?,
                    uid: PROXY_UID,
                    admin_port: self.template.bootstrap.admin_port,
                };
                let started = self.runtime.start(&spec, &sandbox).await.inspect_err(|_| {
                    self.metrics.sidecar_errors.inc();
                })?;
                if *restart {
                    self.metrics.sidecar_restarts.inc();
                }
                info!(pod_uid = %pod.uid, namespace = %pod.namespace, name = %pod.name,
                    container_id = %started.container_id, restart, "sidecar started");
                ctx.sidecar = Some(started);
            }
            Step::EnableRedirect { settings } => {
                let sidecar = ctx.sidecar.as_ref().ok_or(ApplyError::NoSidecar)?;
                let mode = self.redirector.mode();
                let proxy_cgroups: Vec<PathBuf> = match (&sidecar.cgroup, mode) {
                    (Some(cg), _) => vec![cg.clone()],
                    (None, Mode::Iptables) => vec![],
                    (None, Mode::Ebpf) => {
                        return Err(ApplyError::MissingProxyCgroup {
                            container_id: sidecar.container_id.clone(),
                        })
                    }
                };
                let sandbox = self.sandbox(plan, ctx).await?;
                let redirect = PodRedirect {
                    key: PodKey::new(plan.pod_uid.clone())?,
                    cgroup: sandbox.pod_cgroup.clone(),
                    netns: sandbox.netns(),
                    proxy_cgroups,
                    settings: settings.clone(),
                };
                let redirector = self.redirector.clone();
                tokio::task::spawn_blocking(move || redirector.enable(&redirect))
                    .await
                    .map_err(|_| ApplyError::Join)?
                    .inspect_err(|_| {
                        self.metrics.redirect_errors.inc();
                    })?;
                info!(pod_uid = %plan.pod_uid, %mode, direct_ports = ?settings.direct_ports, "redirect enabled");
            }
            Step::Annotate { mode } => {
                let pod = plan.pod.as_ref().ok_or(ApplyError::NoPod)?;
                let sidecar = ctx.sidecar.as_ref().ok_or(ApplyError::NoSidecar)?;
                self.annotator
                    .annotate(pod, &sidecar.container_id, Some(*mode))
                    .await
                    .inspect_err(|_| {
                        self.metrics.annotation_errors.inc();
                    })?;
            }
            Step::DisableRedirect => {
                let key = PodKey::new(plan.pod_uid.clone())?;
                let redirector = self.redirector.clone();
                tokio::task::spawn_blocking(move || redirector.disable(&key))
                    .await
                    .map_err(|_| ApplyError::Join)?
                    .inspect_err(|_| {
                        self.metrics.redirect_errors.inc();
                    })?;
                info!(pod_uid = %plan.pod_uid, "redirect removed");
            }
            Step::RemoveSidecar { container_id } => {
                self.runtime.remove(container_id).await.inspect_err(|_| {
                    self.metrics.sidecar_errors.inc();
                })?;
                info!(pod_uid = %plan.pod_uid, %container_id, "sidecar removed");
                if ctx.sidecar.as_ref().map(|s| &s.container_id) == Some(container_id) {
                    ctx.sidecar = None;
                }
            }
            Step::ClearAnnotations => {
                let pod = plan.pod.as_ref().ok_or(ApplyError::NoPod)?;
                self.annotator.annotate(pod, "", None).await.inspect_err(|_| {
                    self.metrics.annotation_errors.inc();
                })?;
            }
        }
        Ok(())
    }

    /// Events for label problems of the agent's own label and for refused pods (the sink
    /// deduplicates and logs each Event it writes, so this runs every round and logs at debug).
    pub fn report_problems(&self, desired: &[DesiredPod]) {
        for d in desired {
            for p in &d.problems {
                if p.error.label == traffic_labels::names::ENVOY_ENABLED {
                    debug!(kind = %p.object.kind, namespace = %p.object.namespace, name = %p.object.name,
                        error = %p.error, "invalid label");
                    self.events.report(
                        &p.object,
                        EventType::Warning,
                        "InvalidTrafficLabel",
                        &p.error.to_string(),
                    );
                }
            }
            if let Some(why) = &d.ineligible {
                self.events.report(
                    &pod_object(&d.pod),
                    EventType::Warning,
                    "SidecarRefused",
                    &why.to_string(),
                );
            }
        }
    }
}

fn step_name(step: &Step) -> &'static str {
    match step {
        Step::StartSidecar { .. } => "start_sidecar",
        Step::EnableRedirect { .. } => "enable_redirect",
        Step::Annotate { .. } => "annotate",
        Step::DisableRedirect => "disable_redirect",
        Step::RemoveSidecar { .. } => "remove_sidecar",
        Step::ClearAnnotations => "clear_annotations",
    }
}

fn pod_object(pod: &PodRef) -> ObjectRef {
    ObjectRef {
        kind: "Pod".into(),
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
    }
}

/// The Kubernetes [`Annotator`]: a JSON merge patch on the pod.
pub struct KubeAnnotator {
    pub client: kube::Client,
}

/// The merge patch that sets (or clears, with an empty proxy and no mode) our annotations.
pub fn annotation_patch(proxy: &str, mode: Option<Mode>) -> serde_json::Value {
    serde_json::json!({
        "metadata": {
            "annotations": {
                crate::reconcile::ANNOTATION_PROXY: proxy,
                crate::reconcile::ANNOTATION_MODE: mode.map(|m| m.to_string()),
            }
        }
    })
}

impl Annotator for KubeAnnotator {
    fn annotate<'a>(
        &'a self,
        pod: &'a PodRef,
        proxy: &'a str,
        mode: Option<Mode>,
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        Box::pin(async move {
            let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
                kube::Api::namespaced(self.client.clone(), &pod.namespace);
            let patch = annotation_patch(proxy, mode);
            match api
                .patch(
                    &pod.name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => Ok(()),
                // Gone meanwhile: nothing to annotate.
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(ApplyError::Annotate {
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                    source: Box::new(e),
                }),
            }
        })
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use crate::reconcile::Annotations;
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use traffic_redirect::{Redirected, Settings};
    use traffic_sidecar::fake::{FakeRuntime, StartFailure};
    use traffic_sidecar::Sandbox;

    type Log = Arc<Mutex<Vec<String>>>;

    /// The fake runtime, logging into the shared log so the order across seams is visible.
    struct Logged {
        inner: FakeRuntime,
        log: Log,
    }

    impl ContainerRuntime for Logged {
        async fn sandbox(&self, pod_uid: &str) -> Result<Option<Sandbox>, RuntimeError> {
            self.inner.sandbox(pod_uid).await
        }
        async fn sidecars(&self) -> Result<Vec<Sidecar>, RuntimeError> {
            self.inner.sidecars().await
        }
        async fn start(&self, spec: &SidecarSpec, sandbox: &Sandbox) -> Result<Sidecar, RuntimeError> {
            let r = self.inner.start(spec, sandbox).await;
            self.log.lock().unwrap().push(format!(
                "start {}{}",
                spec.pod.uid,
                if r.is_ok() { "" } else { " failed" }
            ));
            r
        }
        async fn remove(&self, container_id: &str) -> Result<(), RuntimeError> {
            let pod = self
                .inner
                .current()
                .into_iter()
                .find(|s| s.container_id == container_id)
                .map(|s| s.pod.uid);
            self.log
                .lock()
                .unwrap()
                .push(format!("remove {}", pod.unwrap_or_default()));
            self.inner.remove(container_id).await
        }
    }

    #[derive(Default)]
    struct FakeRedirector {
        pods: Mutex<BTreeMap<PodKey, PodRedirect>>,
        log: Log,
    }

    impl Redirector for FakeRedirector {
        fn mode(&self) -> Mode {
            Mode::Ebpf
        }
        fn enable(&self, pod: &PodRedirect) -> Result<(), RedirectError> {
            self.log.lock().unwrap().push(format!("enable {}", pod.key));
            self.pods.lock().unwrap().insert(pod.key.clone(), pod.clone());
            Ok(())
        }
        fn disable(&self, key: &PodKey) -> Result<(), RedirectError> {
            self.log.lock().unwrap().push(format!("disable {key}"));
            self.pods.lock().unwrap().remove(key);
            Ok(())
        }
        fn list(&self) -> Result<Vec<Redirected>, RedirectError> {
            Ok(self
                .pods
                .lock()
                .unwrap()
                .values()
                .map(|p| Redirected {
                    key: p.key.clone(),
                    mode: Mode::Ebpf,
                    settings: p.settings.clone(),
                })
                .collect())
        }
    }

    #[derive(Default)]
    struct FakeAnnotator {
        pods: Mutex<BTreeMap<String, Annotations>>,
        log: Log,
    }

    impl Annotator for FakeAnnotator {
        fn annotate<'a>(
            &'a self,
            pod: &'a PodRef,
            proxy: &'a str,
            mode: Option<Mode>,
        ) -> BoxFuture<'a, Result<(), ApplyError>> {
            self.log.lock().unwrap().push(format!(
                "{} {}",
                if proxy.is_empty() { "clear" } else { "annotate" },
                pod.uid
            ));
            self.pods.lock().unwrap().insert(
                pod.uid.clone(),
                Annotations {
                    proxy: Some(proxy.to_string()),
                    mode: mode.map(|m| m.to_string()),
                },
            );
            Box::pin(async { Ok(()) })
        }
    }

    #[derive(Default)]
    struct FakeEvents(Mutex<Vec<(String, String)>>);

    impl EventSink for FakeEvents {
        fn report(&self, object: &ObjectRef, _: EventType, reason: &str, _: &str) {
            self.0
                .lock()
                .unwrap()
                .push((object.name.clone(), reason.to_string()));
        }
    }

    struct World {
        applier: Applier<Logged>,
        redirector: Arc<FakeRedirector>,
        annotator: Arc<FakeAnnotator>,
        events: Arc<FakeEvents>,
        log: Log,
    }

    fn world() -> World {
        let log: Log = Arc::default();
        let runtime = Arc::new(Logged {
            inner: FakeRuntime::new(),
            log: log.clone(),
        });
        let redirector = Arc::new(FakeRedirector {
            log: log.clone(),
            ..Default::default()
        });
        let annotator = Arc::new(FakeAnnotator {
            log: log.clone(),
            ..Default::default()
        });
        let events = Arc::new(FakeEvents::default());
        let mut registry = prometheus_client::registry::Registry::default();
        let applier = Applier {
            runtime,
            redirector: redirector.clone(),
            annotator: annotator.clone(),
            events: events.clone(),
            metrics: AgentMetrics::register(&mut registry),
            template: SidecarTemplate {
                image: "envoy:test".into(),
                bootstrap: BootstrapOptions::new("10.201.0.1:18000"),
            },
            concurrency: 4,
            namespace: None,
        };
        World {
            applier,
            redirector,
            annotator,
            events,
            log,
        }
    }

    fn want(uid: &str, enabled: bool) -> DesiredPod {
        DesiredPod {
            pod: PodRef {
                uid: uid.into(),
                namespace: "default".into(),
                name: format!("pod-{uid}"),
            },
            enabled,
            settings: Settings::default(),
            problems: vec![],
            ineligible: None,
        }
    }

    impl World {
        async fn round(&self, desired: &[DesiredPod]) -> Vec<String> {
            self.log.lock().unwrap().clear();
            let ann = self.annotator.pods.lock().unwrap().clone();
            self.applier.round(desired, ann).await.unwrap();
            self.log.lock().unwrap().clone()
        }
        fn runtime(&self) -> &FakeRuntime {
            &self.applier.runtime.inner
        }
        fn sidecar_of(&self, uid: &str) -> Option<Sidecar> {
            self.runtime().current().into_iter().find(|s| s.pod.uid == uid)
        }
    }

    #[tokio::test]
    async fn enabling_starts_then_redirects_then_annotates_and_a_second_round_does_nothing() {
        let w = world();
        w.runtime().add_sandbox("a");
        assert_eq!(
            w.round(&[want("a", true)]).await,
            ["start a", "enable a", "annotate a"]
        );
        let sidecar = w.sidecar_of("a").unwrap();
        let ann = w.annotator.pods.lock().unwrap()["a"].clone();
        assert_eq!(ann.proxy.as_deref(), Some(sidecar.container_id.as_str()));
        assert_eq!(ann.mode.as_deref(), Some("ebpf"));
        let redirect = w.redirector.pods.lock().unwrap()[&PodKey::new("a").unwrap()].clone();
        assert_eq!(redirect.proxy_cgroups, vec![sidecar.cgroup.clone().unwrap()]);
        assert!(redirect.cgroup.ends_with("poda"));
        let spec = &w.runtime().started_specs()[0];
        assert_eq!((spec.uid, spec.image.as_str()), (1337, "envoy:test"));
        assert!(spec.bootstrap.contains("pod-a.default"), "node id in bootstrap");
        assert!(w.round(&[want("a", true)]).await.is_empty());
    }

    #[tokio::test]
    async fn disabling_removes_the_redirect_before_the_sidecar_and_then_clears_annotations() {
        let w = world();
        w.runtime().add_sandbox("a");
        w.round(&[want("a", true)]).await;
        assert_eq!(
            w.round(&[want("a", false)]).await,
            ["disable a", "remove a", "clear a"]
        );
        assert!(w.runtime().current().is_empty());
        assert!(w.redirector.pods.lock().unwrap().is_empty());
        assert!(w.annotator.pods.lock().unwrap()["a"].is_clear());
    }

    #[tokio::test]
    async fn a_crashed_sidecar_is_restarted_and_counted() {
        let w = world();
        w.runtime().add_sandbox("a");
        w.round(&[want("a", true)]).await;
        let old = w.sidecar_of("a").unwrap();
        w.runtime().crash(&old.container_id);
        assert_eq!(
            w.round(&[want("a", true)]).await,
            ["disable a", "remove a", "start a", "enable a", "annotate a"]
        );
        let new = w.sidecar_of("a").unwrap();
        assert_ne!(new.container_id, old.container_id);
        assert_eq!(
            w.annotator.pods.lock().unwrap()["a"].proxy.as_deref(),
            Some(new.container_id.as_str())
        );
        assert_eq!(w.applier.metrics.sidecar_restarts.get(), 1);
    }

    #[tokio::test]
    async fn a_failed_restart_takes_the_redirect_away_and_reports_an_event() {
        let w = world();
        w.runtime().add_sandbox("a");
        w.round(&[want("a", true)]).await;
        w.runtime().crash(&w.sidecar_of("a").unwrap().container_id);
        w.runtime().fail_start("a", Some(StartFailure::NotReady));
        assert_eq!(
            w.round(&[want("a", true)]).await,
            ["disable a", "remove a", "start a failed", "clear a"]
        );
        assert!(
            w.redirector.pods.lock().unwrap().is_empty(),
            "never redirected to a dead sidecar"
        );
        assert!(w
            .events
            .0
            .lock()
            .unwrap()
            .contains(&("pod-a".into(), "SidecarStartFailed".into())));
        // Once starting works again, the next round converges.
        w.runtime().fail_start("a", None);
        assert_eq!(
            w.round(&[want("a", true)]).await,
            ["start a", "enable a", "annotate a"]
        );
    }

    #[tokio::test]
    async fn one_failing_pod_does_not_block_the_others() {
        let w = world();
        w.runtime().add_sandbox("a");
        w.runtime().add_sandbox("b");
        w.runtime().fail_start("a", Some(StartFailure::Fails));
        let mut log = w.round(&[want("a", true), want("b", true)]).await;
        log.sort();
        assert_eq!(log, ["annotate b", "enable b", "start a failed", "start b"]);
        assert_eq!(w.applier.metrics.sidecar_errors.get(), 1);
    }

    #[tokio::test]
    async fn a_pod_without_sandbox_waits_quietly() {
        let w = world();
        assert!(w.round(&[want("a", true)]).await.is_empty());
        assert!(w.events.0.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_restarted_agent_adopts_what_it_finds_and_removes_orphans() {
        let w = world();
        w.runtime().add_sandbox("a");
        w.runtime().add_sandbox("gone");
        w.round(&[want("a", true), want("gone", true)]).await;
        // A new agent (same node state, fresh memory): "gone" was deleted while it was down.
        let log = w.round(&[want("a", true)]).await;
        assert_eq!(log, ["disable gone", "remove gone"]);
        assert!(w.sidecar_of("a").is_some());
    }

    #[tokio::test]
    async fn a_down_runtime_skips_the_round_without_touching_anything() {
        let w = world();
        w.runtime().add_sandbox("a");
        w.round(&[want("a", true)]).await;
        w.runtime().set_down(true);
        let ann = w.annotator.pods.lock().unwrap().clone();
        assert!(w.applier.round(&[want("a", false)], ann).await.is_err());
        assert_eq!(w.redirector.pods.lock().unwrap().len(), 1);
        assert_eq!(w.applier.metrics.observe_errors.get(), 1);
    }

    #[test]
    fn the_annotation_patch_sets_or_clears_both_annotations() {
        assert_eq!(
            annotation_patch("abc", Some(Mode::Iptables)),
            serde_json::json!({"metadata": {"annotations": {"traffic.envoy.proxy": "abc", "traffic.redirect.mode": "iptables"}}})
        );
        assert_eq!(
            annotation_patch("", None),
            serde_json::json!({"metadata": {"annotations": {"traffic.envoy.proxy": "", "traffic.redirect.mode": null}}})
        );
    }
}
