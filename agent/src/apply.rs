//! Applying plans: the I/O side of the reconciler. Each pod's plan runs its steps in order and
//! stops at the first failure (then runs `on_failure`); failures become a log line, a metric and a
//! Kubernetes Event on the pod. Plans of different pods run concurrently and independently.

use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::StreamExt;
use tracing::{debug, info, warn};
use traffic_kube_source::events::{EventSink, EventType};
use traffic_redirect::Settings;
use traffic_redirect::{Mode, PodKey, PodRedirect, RedirectError, Redirector};
use traffic_sidecar::admin::ProxyAdmin;
use traffic_sidecar::bootstrap::{self, BootstrapOptions};
use traffic_sidecar::listeners::{self, ListenerWait, WaitError};
use traffic_sidecar::{ContainerRuntime, PodRef, RuntimeError, Sandbox, Sidecar, SidecarSpec};
use traffic_translate::snapshot::ObjectRef;

use crate::desired::{DesiredPod, PROXY_UID};
use crate::metrics::AgentMetrics;
use crate::reconcile::{Plan, SidecarFailure, Step};
use crate::xds_token::{TokenError, TokenManager};

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
    /// TLS to the control plane: the CA certificate file (PEM) it must chain to, read at each
    /// start (a mounted ConfigMap the control plane may publish after the agent started), and
    /// the name it must carry. `None`: `bootstrap.tls` as it is.
    pub xds_ca_file: Option<(PathBuf, String)>,
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
    #[error("sidecar {container_id} is not configured: {source}")]
    Listeners {
        container_id: String,
        #[source]
        source: WaitError,
    },
    #[error("redirector task panicked")]
    Join,
    #[error("xds token: {0}")]
    Token(#[from] TokenError),
    #[error("the control plane's CA certificate {path} is not usable (not published yet?): {detail}")]
    XdsCa { path: PathBuf, detail: String },
}

impl ApplyError {
    /// `Event` reason for a failed step.
    fn reason(&self, step: &Step) -> &'static str {
        if let ApplyError::Token(_) = self {
            return crate::xds_token::EVENT_REASON;
        }
        match step {
            Step::PrepareSidecar { .. } | Step::StartSidecar { .. } => "SidecarStartFailed",
            Step::AwaitListeners { .. } => "SidecarNotConfigured",
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
    /// The sidecars' Envoy admin (is a sidecar configured yet?).
    pub admin: Arc<dyn ProxyAdmin>,
    /// How long and how often to ask it before a pod is redirected.
    pub listener_wait: ListenerWait,
    /// What a pod's connections do while its sidecar is replaced.
    pub sidecar_failure: SidecarFailure,
    /// Plans applied at once.
    pub concurrency: usize,
    /// Manage only this namespace's pods, sidecars and redirects (`None`: the whole node).
    pub namespace: Option<String>,
    /// The sidecars' xDS tokens (`None`: sidecars present none).
    pub tokens: Option<Arc<TokenManager>>,
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
            Step::PrepareSidecar { settings } => {
                let pod = plan.pod.as_ref().ok_or(ApplyError::NoPod)?;
                let sandbox = self.sandbox(plan, ctx).await?;
                let spec = self.spec(pod).await?;
                let prepared = self.runtime.prepare(&spec, &sandbox).await.inspect_err(|_| {
                    self.metrics.sidecar_errors.inc();
                })?;
                match prepared {
                    Some(sidecar) => {
                        debug!(pod_uid = %pod.uid, container_id = %sidecar.container_id, "replacement sidecar prepared");
                        ctx.sidecar = Some(sidecar);
                        // The redirect stays; its exclusion now names the replacement's cgroup.
                        self.enable(plan, ctx, settings).await?;
                    }
                    None => {
                        warn!(pod_uid = %pod.uid, "the container runtime cannot prepare a sidecar before starting it: the redirect is removed for this restart (fail-open)");
                        self.disable(plan).await?;
                    }
                }
            }
            Step::StartSidecar { restart } => {
                let pod = plan.pod.as_ref().ok_or(ApplyError::NoPod)?;
                let sandbox = self.sandbox(plan, ctx).await?;
                let spec = self.spec(pod).await?;
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
            Step::AwaitListeners { port } => {
                let container_id = ctx
                    .sidecar
                    .as_ref()
                    .ok_or(ApplyError::NoSidecar)?
                    .container_id
                    .clone();
                let sandbox = self.sandbox(plan, ctx).await?;
                match listeners::wait_for_listener(
                    self.admin.as_ref(),
                    &sandbox.netns(),
                    *port,
                    &self.listener_wait,
                )
                .await
                {
                    Ok(took) => {
                        self.metrics.listener_wait_seconds.observe(took.as_secs_f64());
                        debug!(pod_uid = %plan.pod_uid, %container_id, port, took_ms = took.as_millis() as u64, "sidecar listeners arrived");
                    }
                    Err(source) => {
                        self.metrics.listener_wait_failures.inc();
                        return Err(ApplyError::Listeners { container_id, source });
                    }
                }
            }
            Step::EnableRedirect { settings } => self.enable(plan, ctx, settings).await?,
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
            Step::DisableRedirect => self.disable(plan).await?,
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

    /// The sidecar to start; with tokens, only once the pod has one (else the step fails: no
    /// sidecar, and a sidecar being replaced keeps the pod's redirect, fail-closed).
    async fn spec(&self, pod: &PodRef) -> Result<SidecarSpec, ApplyError> {
        let token_dir = match &self.tokens {
            Some(tokens) => Some(tokens.ensure(pod).await?),
            None => None,
        };
        let mut options = self.template.bootstrap.clone();
        if let Some((path, server_name)) = &self.template.xds_ca_file {
            let ca_pem = std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|pem| {
                    if pem.contains("-----BEGIN CERTIFICATE-----") {
                        Ok(pem)
                    } else {
                        Err("no PEM certificate in it".to_string())
                    }
                })
                .map_err(|detail| ApplyError::XdsCa {
                    path: path.clone(),
                    detail,
                })?;
            options.tls = Some(bootstrap::XdsTls {
                ca_pem,
                server_name: server_name.clone(),
            });
        }
        Ok(SidecarSpec {
            pod: pod.clone(),
            image: self.template.image.clone(),
            bootstrap: bootstrap::render(pod, &options)?,
            uid: PROXY_UID,
            admin_port: self.template.bootstrap.admin_port,
            token_dir,
        })
    }

    /// Enables (or updates) the pod's redirect to `ctx`'s sidecar, excluding that sidecar's cgroup.
    async fn enable(&self, plan: &Plan, ctx: &mut PodContext, settings: &Settings) -> Result<(), ApplyError> {
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
        Ok(())
    }

    async fn disable(&self, plan: &Plan) -> Result<(), ApplyError> {
        let key = PodKey::new(plan.pod_uid.clone())?;
        let redirector = self.redirector.clone();
        tokio::task::spawn_blocking(move || redirector.disable(&key))
            .await
            .map_err(|_| ApplyError::Join)?
            .inspect_err(|_| {
                self.metrics.redirect_errors.inc();
            })?;
        info!(pod_uid = %plan.pod_uid, "redirect removed");
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
        Step::PrepareSidecar { .. } => "prepare_sidecar",
        Step::StartSidecar { .. } => "start_sidecar",
        Step::AwaitListeners { .. } => "await_listeners",
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
mod tests;
