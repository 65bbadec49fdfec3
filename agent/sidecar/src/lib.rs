//! Envoy sidecars next to running pods, through the container runtime.
//!
//! [`ContainerRuntime`] is the agent's only seam to the runtime: the Docker implementation (bollard)
//! lives in `docker`, the containerd one (gRPC) in `containerd`, a fake for the reconciler's unit tests in `fake`. `bootstrap` renders the Envoy
//! bootstrap (pure).
//!
//! Modules: [`bootstrap`] (Envoy bootstrap, pure), [`docker`] ([`docker::DockerRuntime`]),
//! [`containerd`] ([`containerd::ContainerdRuntime`], containerd's gRPC API),
//! [`cgroup`] (cgroup v2 paths of containers), [`netns`] (HTTP GETs inside a pod netns),
//! [`admin`] (the [`admin::ProxyAdmin`] seam to a sidecar's Envoy admin), [`listeners`] (whether a
//! sidecar's listeners have arrived, so that it may be redirected to),
//! [`operator`] (container-id prefixes and the `proxies` table), [`select`] (which runtime a node
//! runs, [`select::NodeRuntime`]), [`fake`] (an in-memory
//! [`ContainerRuntime`] for other crates' tests; always compiled, it is small and dependency-free).

pub mod admin;
pub mod bootstrap;
pub mod cgroup;
pub mod containerd;
pub mod docker;
pub mod fake;
pub mod listeners;
pub mod netns;
pub mod operator;
mod pod_locks;
pub mod select;

use std::future::Future;
use std::path::PathBuf;

/// Docker label that ties a sidecar container to its pod (the pod uid).
pub const LABEL_POD_UID: &str = "traffic.envoy.pod-uid";
/// Docker labels carrying the pod's name and namespace (for `traffic-agent proxies`).
pub const LABEL_POD_NAME: &str = "traffic.envoy.pod-name";
pub const LABEL_POD_NAMESPACE: &str = "traffic.envoy.pod-namespace";
/// Marks every container this project starts.
pub const LABEL_MANAGED_BY: &str = "traffic.envoy.managed-by";

/// Which pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct PodRef {
    pub uid: String,
    pub namespace: String,
    pub name: String,
}

impl PodRef {
    /// The Envoy node id users see: `<pod name>.<namespace>`.
    pub fn node_id(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }
}

/// The pod's sandbox (pause) container as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub container_id: String,
    /// The sandbox's init pid on the host; `/proc/<pid>/ns/net` is the pod netns.
    pub pid: u32,
    /// The pod-level cgroup v2 directory (absolute path), parent of every container of the pod.
    pub pod_cgroup: PathBuf,
}

impl Sandbox {
    pub fn netns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SidecarState {
    Created,
    Running,
    Exited,
    Other,
}

/// A sidecar container found in the runtime (by [`LABEL_POD_UID`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sidecar {
    pub container_id: String,
    pub pod: PodRef,
    pub state: SidecarState,
    /// Human status from the runtime, e.g. "Up 3 minutes".
    pub status: String,
    /// The sidecar's own cgroup v2 directory while it runs (excluded from redirection).
    pub cgroup: Option<PathBuf>,
}

/// What to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarSpec {
    pub pod: PodRef,
    pub image: String,
    /// Rendered Envoy bootstrap (YAML or JSON).
    pub bootstrap: String,
    pub uid: u32,
    /// Envoy admin port on 127.0.0.1 in the pod netns (readiness: GET /ready).
    pub admin_port: u16,
    /// A host directory mounted read-only at [`TOKEN_DIR_IN_CONTAINER`]: the pod's xDS token
    /// file, which the agent replaces (rename) when it renews the token. A directory, not the
    /// file, so that the sidecar sees each replacement. `None`: no token.
    pub token_dir: Option<PathBuf>,
}

/// Where a sidecar sees its [`SidecarSpec::token_dir`].
pub const TOKEN_DIR_IN_CONTAINER: &str = "/var/run/traffic-xds";

/// The container-runtime seam. Every method is idempotent where it can be.
pub trait ContainerRuntime: Send + Sync {
    /// The running sandbox of a pod, `Ok(None)` when there is none (yet).
    fn sandbox(&self, pod_uid: &str) -> impl Future<Output = Result<Option<Sandbox>, RuntimeError>> + Send;
    /// Every sidecar this project started on this node (any state).
    fn sidecars(&self) -> impl Future<Output = Result<Vec<Sidecar>, RuntimeError>> + Send;
    /// Create the pod's sidecar container *without starting it* and return it (state
    /// [`SidecarState::Created`]) with its cgroup v2 directory, which already exists; a running
    /// sidecar of the pod is returned as it is. `start` then starts this very container in that
    /// cgroup.
    ///
    /// Why: a pod whose redirect stays in place while its sidecar is replaced (fail-closed) must
    /// have the new sidecar's cgroup excluded from redirection before Envoy runs, or Envoy's own
    /// connections (xDS) would be steered to itself and the eBPF bind guard would refuse it its
    /// ports. `Ok(None)`: this runtime cannot (the default); the agent then takes the redirect
    /// away for the restart.
    fn prepare(
        &self,
        spec: &SidecarSpec,
        sandbox: &Sandbox,
    ) -> impl Future<Output = Result<Option<Sidecar>, RuntimeError>> + Send {
        let _ = (spec, sandbox);
        async { Ok(None) }
    }
    /// Start a sidecar in the sandbox's network namespace (the one `prepare` created, if any) and
    /// return it once Envoy is ready.
    fn start(
        &self,
        spec: &SidecarSpec,
        sandbox: &Sandbox,
    ) -> impl Future<Output = Result<Sidecar, RuntimeError>> + Send;
    /// Stop and remove a sidecar. Removing an unknown container is `Ok`.
    fn remove(&self, container_id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Container ids of this project's sidecars as they exit, so the agent restarts them (or takes
    /// the redirect away) at once instead of at its next resync. The default never yields.
    fn exits(&self) -> futures_util::stream::BoxStream<'static, String> {
        Box::pin(futures_util::stream::pending())
    }
}

/// Typed runtime errors (implementations add variants).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no sandbox container for pod {pod_uid}")]
    NoSandbox { pod_uid: String },
    #[error("sidecar {container_id} did not become ready within {seconds}s: {detail}")]
    NotReady {
        container_id: String,
        seconds: u64,
        detail: String,
    },
    #[error("container runtime: {0}")]
    Runtime(String),
}
