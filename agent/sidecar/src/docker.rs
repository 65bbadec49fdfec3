//! [`DockerRuntime`]: [`ContainerRuntime`] on the Docker Engine API (bollard), as used with
//! kubelet's dockershim.
//!
//! - A pod's sandbox is its running `k8s_POD_…` container, found by the kubelet labels
//!   `io.kubernetes.pod.uid` and `io.kubernetes.container.name=POD`; the pod cgroup is the parent
//!   of the sandbox's own cgroup v2 directory (kubelet gives every container, pause included, its
//!   own cgroup under the pod's).
//! - A sidecar is Envoy in a container that joins the sandbox's network namespace
//!   (`network_mode: container:<sandbox>`), runs as `<uid>:<uid>` without capabilities, lives in
//!   the pod cgroup (`cgroup_parent`, as kubelet's cgroupfs driver passes it) and carries the
//!   [`LABEL_POD_UID`]/… labels. The bootstrap travels in the command line (`--config-yaml`), so
//!   no host file is involved. Docker never restarts it: the agent does.
//! - Readiness is Envoy's admin `GET /ready` answering `LIVE` on `127.0.0.1:<admin port>` inside
//!   the pod netns, probed from a thread that entered it (the agent needs the host pid namespace).
//! - A sidecar can be prepared (created, its cgroup made, not started) and started later; see
//!   [`lifecycle`].

use std::collections::HashMap;
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerSummary, ContainerSummaryStateEnum};
use bollard::query_parameters::{CreateImageOptions, EventsOptions, ListContainersOptions};
use bollard::Docker;
use futures_util::StreamExt;
use tracing::{debug, info, warn};

mod lifecycle;
mod operator;

use crate::cgroup::{self, Cgroup2};
use crate::{
    ContainerRuntime, PodRef, RuntimeError, Sandbox, Sidecar, SidecarSpec, SidecarState, LABEL_MANAGED_BY,
    LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID,
};

/// Value of [`LABEL_MANAGED_BY`] on our containers.
pub const MANAGED_BY: &str = "traffic-agent";
/// Kubelet (dockershim) labels of pod containers.
pub const KUBE_LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const KUBE_LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// `io.kubernetes.container.name` of a pod sandbox.
pub const KUBE_SANDBOX_CONTAINER_NAME: &str = "POD";
/// Where Docker listens unless `DOCKER_HOST` says otherwise.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// How the runtime talks to Docker and runs Envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfig {
    /// `unix:///path` or `tcp://host:port`.
    pub host: String,
    /// How long `start` waits for `/ready` before it removes the container (`NotReady`).
    pub ready_timeout: Duration,
    /// Grace period of `remove` (SIGTERM, then SIGKILL).
    pub stop_timeout: Duration,
    /// Envoy arguments after `--config-yaml <bootstrap>`.
    pub envoy_args: Vec<String>,
}

impl DockerConfig {
    /// `DOCKER_HOST` (default [`DEFAULT_DOCKER_HOST`]), 30 s to become ready, 2 s to stop, Envoy
    /// without hot restart (no shared memory, no abstract socket in the pod netns).
    pub fn from_env() -> Self {
        DockerConfig {
            host: std::env::var("DOCKER_HOST")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_string()),
            ready_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(2),
            envoy_args: vec!["--disable-hot-restart".into()],
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    cgroup: Cgroup2,
    config: DockerConfig,
    /// One `start` at a time per pod uid (a concurrent one would see the other's freshly created,
    /// not yet started container as stale).
    starting: crate::pod_locks::PodLocks,
}

fn runtime_err(what: &str, e: DockerError) -> RuntimeError {
    RuntimeError::Runtime(format!("{what}: {e}"))
}

fn status_of(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The Docker name of a pod's sidecar: `traffic-envoy_<pod>_<namespace>_<first 8 of uid>`.
pub fn container_name(pod: &PodRef) -> String {
    let uid8: String = pod
        .uid
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(8)
        .collect();
    format!("traffic-envoy_{}_{}_{}", pod.name, pod.namespace, uid8)
}

/// The labels of a pod's sidecar.
pub fn labels(pod: &PodRef) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_POD_UID.to_string(), pod.uid.clone()),
        (LABEL_POD_NAME.to_string(), pod.name.clone()),
        (LABEL_POD_NAMESPACE.to_string(), pod.namespace.clone()),
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
    ])
}

fn state_of(s: Option<&ContainerSummaryStateEnum>) -> SidecarState {
    match s {
        Some(ContainerSummaryStateEnum::CREATED) => SidecarState::Created,
        Some(ContainerSummaryStateEnum::RUNNING) => SidecarState::Running,
        Some(ContainerSummaryStateEnum::EXITED) => SidecarState::Exited,
        _ => SidecarState::Other,
    }
}

/// A sidecar from a container listing entry (no cgroup yet); `None` without our pod labels.
fn sidecar_of(c: &ContainerSummary) -> Option<Sidecar> {
    let labels = c.labels.as_ref()?;
    Some(Sidecar {
        container_id: c.id.clone()?,
        pod: PodRef {
            uid: labels.get(LABEL_POD_UID)?.clone(),
            namespace: labels.get(LABEL_POD_NAMESPACE).cloned().unwrap_or_default(),
            name: labels.get(LABEL_POD_NAME).cloned().unwrap_or_default(),
        },
        state: state_of(c.state.as_ref()),
        status: c.status.clone().unwrap_or_default(),
        cgroup: None,
    })
}

fn filters(pairs: &[(&str, String)]) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in pairs {
        m.entry(k.to_string()).or_default().push(v.clone());
    }
    m
}

impl DockerRuntime {
    /// Connects to `config.host`, agrees on an API version with the daemon (Docker 20.10 speaks
    /// 1.41 at most) and detects the cgroup2 mount.
    pub async fn connect(config: DockerConfig) -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_host(&config.host).map_err(|e| runtime_err(&config.host, e))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| runtime_err(&format!("{}: negotiate API version", config.host), e))?;
        let cgroup = Cgroup2::detect().map_err(|e| RuntimeError::Runtime(e.to_string()))?;
        debug!(host = %config.host, api = %docker.client_version(), cgroup2 = %cgroup.mount.display(), "docker connected");
        Ok(DockerRuntime {
            docker,
            cgroup,
            config,
            starting: crate::pod_locks::PodLocks::default(),
        })
    }

    /// The bollard client (for tests and operator tools).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    pub fn config(&self) -> &DockerConfig {
        &self.config
    }

    async fn list(
        &self,
        all: bool,
        f: HashMap<String, Vec<String>>,
    ) -> Result<Vec<ContainerSummary>, RuntimeError> {
        self.docker
            .list_containers(Some(ListContainersOptions {
                all,
                filters: Some(f),
                ..Default::default()
            }))
            .await
            .map_err(|e| runtime_err("list containers", e))
    }

    /// Host pid of a running container, `None` if it does not run (or is gone).
    async fn pid_of(&self, id: &str) -> Result<Option<u32>, RuntimeError> {
        match self.docker.inspect_container(id, None).await {
            Ok(c) => Ok(c
                .state
                .filter(|s| s.running == Some(true))
                .and_then(|s| s.pid)
                .and_then(|p| u32::try_from(p).ok())
                .filter(|p| *p > 0)),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(runtime_err(&format!("inspect {id}"), e)),
        }
    }

    /// Fills `cgroup` of a running sidecar from its pid.
    async fn with_cgroup(&self, mut s: Sidecar) -> Result<Sidecar, RuntimeError> {
        if s.state == SidecarState::Running {
            if let Some(pid) = self.pid_of(&s.container_id).await? {
                s.cgroup = self.cgroup.of_pid(pid).ok();
            }
        }
        Ok(s)
    }

    /// Our containers for one pod uid (any state), newest first.
    async fn sidecars_of_pod(&self, pod_uid: &str) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let mut v = self
            .list(
                true,
                filters(&[
                    ("label", format!("{LABEL_MANAGED_BY}={MANAGED_BY}")),
                    ("label", format!("{LABEL_POD_UID}={pod_uid}")),
                ]),
            )
            .await?;
        v.sort_by_key(|c| std::cmp::Reverse(c.created));
        Ok(v)
    }

    async fn by_id(&self, id: &str) -> Result<Option<Sidecar>, RuntimeError> {
        let found = self.list(true, filters(&[("id", id.to_string())])).await?;
        match found
            .iter()
            .find(|c| c.id.as_deref() == Some(id))
            .and_then(sidecar_of)
        {
            Some(s) => Ok(Some(self.with_cgroup(s).await?)),
            None => Ok(None),
        }
    }

    /// Pulls `image` (registry credentials: none; private registries need the image pre-pulled).
    async fn pull(&self, image: &str) -> Result<(), String> {
        info!(%image, "sidecar image not on the node; pulling it");
        let mut progress = self.docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(image.to_string()),
                ..Default::default()
            }),
            None,
            None,
        );
        while let Some(step) = progress.next().await {
            step.map_err(|e| format!("pull {image}: {e}"))?;
        }
        Ok(())
    }
}

enum CreateError {
    NameInUse(String),
    Other(String),
}

/// The Docker event filter for "one of our sidecars exited".
fn exit_filters() -> HashMap<String, Vec<String>> {
    filters(&[
        ("type", "container".to_string()),
        ("event", "die".to_string()),
        ("label", format!("{LABEL_MANAGED_BY}={MANAGED_BY}")),
    ])
}

/// Forwards the ids of exiting sidecars from Docker's event stream into `tx`, subscribing again
/// (after a second) when the stream fails or ends, until the receiver is gone.
async fn forward_exits(docker: Docker, tx: tokio::sync::mpsc::Sender<String>) {
    loop {
        let mut events = docker.events(Some(EventsOptions {
            filters: Some(exit_filters()),
            ..Default::default()
        }));
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    let Some(id) = event.actor.and_then(|a| a.id) else {
                        continue;
                    };
                    debug!(container = %id, "sidecar exited");
                    if tx.send(id).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    warn!(%error, "docker event stream failed; subscribing again");
                    break;
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl ContainerRuntime for DockerRuntime {
    fn exits(&self) -> futures_util::stream::BoxStream<'static, String> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(forward_exits(self.docker.clone(), tx));
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|id| (id, rx))
        }))
    }

    async fn sandbox(&self, pod_uid: &str) -> Result<Option<Sandbox>, RuntimeError> {
        let mut found = self
            .list(
                false,
                filters(&[
                    ("label", format!("{KUBE_LABEL_POD_UID}={pod_uid}")),
                    (
                        "label",
                        format!("{KUBE_LABEL_CONTAINER_NAME}={KUBE_SANDBOX_CONTAINER_NAME}"),
                    ),
                ]),
            )
            .await?;
        found.sort_by_key(|c| std::cmp::Reverse(c.created));
        for c in found {
            let Some(id) = c.id else { continue };
            let Some(pid) = self.pid_of(&id).await? else {
                continue;
            };
            match self.cgroup.parent_of_pid(pid) {
                Ok(pod_cgroup) => {
                    return Ok(Some(Sandbox {
                        container_id: id,
                        pid,
                        pod_cgroup,
                    }))
                }
                // Either the sandbox exited between inspect and /proc, or its pid is not in our pid
                // namespace (an agent container without hostPID): tell them apart.
                Err(cgroup::CgroupError::Read { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    if self.pid_of(&id).await? == Some(pid) {
                        return Err(RuntimeError::Runtime(format!(
                            "sandbox {id} runs as pid {pid} but /proc/{pid} is missing: \
                             the agent needs the host pid namespace"
                        )));
                    }
                    continue;
                }
                Err(e) => {
                    return Err(RuntimeError::Runtime(format!(
                        "sandbox {id} of pod {pod_uid}: {e}"
                    )))
                }
            }
        }
        Ok(None)
    }

    async fn sidecars(&self) -> Result<Vec<Sidecar>, RuntimeError> {
        let found = self
            .list(
                true,
                filters(&[("label", format!("{LABEL_MANAGED_BY}={MANAGED_BY}"))]),
            )
            .await?;
        let mut out = Vec::with_capacity(found.len());
        for c in &found {
            match sidecar_of(c) {
                Some(s) => out.push(self.with_cgroup(s).await?),
                None => warn!(container = ?c.id, "managed container without pod labels ignored"),
            }
        }
        Ok(out)
    }

    async fn prepare(&self, spec: &SidecarSpec, sandbox: &Sandbox) -> Result<Option<Sidecar>, RuntimeError> {
        let prepared = self
            .starting
            .run(&spec.pod.uid, self.prepare_locked(spec, sandbox));
        prepared.await.map(Some)
    }

    async fn start(&self, spec: &SidecarSpec, sandbox: &Sandbox) -> Result<Sidecar, RuntimeError> {
        self.starting
            .run(&spec.pod.uid, self.start_locked(spec, sandbox))
            .await
    }

    async fn remove(&self, container_id: &str) -> Result<(), RuntimeError> {
        self.stop_and_remove(container_id).await
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn pod() -> PodRef {
        PodRef {
            uid: "3859d687-9149-4bc2-9f5d-f115c0506b70".into(),
            namespace: "shop".into(),
            name: "reviews-v1-55cbf59466-mwxj5".into(),
        }
    }

    #[test]
    fn the_container_name_carries_pod_namespace_and_a_uid_prefix() {
        assert_eq!(
            container_name(&pod()),
            "traffic-envoy_reviews-v1-55cbf59466-mwxj5_shop_3859d687"
        );
    }

    #[test]
    fn labels_tie_the_container_to_the_pod_and_mark_it_ours() {
        let l = labels(&pod());
        assert_eq!(l[LABEL_POD_UID], pod().uid);
        assert_eq!(l[LABEL_POD_NAME], pod().name);
        assert_eq!(l[LABEL_POD_NAMESPACE], "shop");
        assert_eq!(l[LABEL_MANAGED_BY], MANAGED_BY);
        assert!(
            l.keys().all(|k| !k.starts_with("io.kubernetes")),
            "kubelet must not adopt it"
        );
    }

    #[test]
    fn a_listing_entry_becomes_a_sidecar_only_with_our_labels() {
        let c = ContainerSummary {
            id: Some("abc".into()),
            labels: Some(labels(&pod())),
            state: Some(ContainerSummaryStateEnum::EXITED),
            status: Some("Exited (0) 3 seconds ago".into()),
            ..Default::default()
        };
        let s = sidecar_of(&c).unwrap();
        assert_eq!(s.pod, pod());
        assert_eq!(s.state, SidecarState::Exited);
        assert_eq!(s.status, "Exited (0) 3 seconds ago");
        let foreign = ContainerSummary {
            labels: Some(HashMap::new()),
            ..c
        };
        assert_eq!(sidecar_of(&foreign), None);
    }

    #[test]
    fn container_states_map_to_sidecar_states() {
        assert_eq!(
            state_of(Some(&ContainerSummaryStateEnum::RUNNING)),
            SidecarState::Running
        );
        assert_eq!(
            state_of(Some(&ContainerSummaryStateEnum::CREATED)),
            SidecarState::Created
        );
        assert_eq!(
            state_of(Some(&ContainerSummaryStateEnum::DEAD)),
            SidecarState::Other
        );
        assert_eq!(state_of(None), SidecarState::Other);
    }
}
