//! [`ContainerdRuntime`]: [`ContainerRuntime`] on containerd's own gRPC API (the runtime of
//! kubelets with a CRI: EKS, GKE, AKS, k3s, kubeadm).
//!
//! - Sidecars live in a containerd namespace of our own (default [`DEFAULT_NAMESPACE`]): the CRI
//!   plugin only handles `k8s.io`, so kubelet never sees (or garbage-collects) them — as Docker
//!   keeps its own containers in `moby`.
//! - A pod's sandbox is the container in `k8s.io` labelled `io.cri-containerd.kind=sandbox` and
//!   `io.kubernetes.pod.uid=<uid>` whose task runs; its stored OCI spec names the netns to join
//!   and the pod cgroup ([`sandbox`]).
//! - A sidecar is Envoy in a container whose spec ([`spec`]) joins that netns, sits in the pod
//!   cgroup (same cgroup driver as the sandbox, runc options mirrored), runs as `<uid>` without
//!   capabilities, reads its bootstrap from a host file bind-mounted read-only, and whose shim
//!   writes stdout/stderr to a host log file (so logs survive agent restarts). Both files live
//!   in `<state dir>/<container id>/`, which the agent must see at the same host path.
//! - The image comes from our namespace, or from one already on the node in `k8s.io`
//!   (its blobs are linked into our namespace; the store keeps one file per digest), and is
//!   unpacked into our snapshots ([`store`]). containerd 1.6 has no pull API (the Transfer
//!   service came in 1.7): an image on neither is an error.
//! - Task exits come from containerd's event stream ([`events`]); operator commands
//!   (`proxies`, `logs`, `exec`) are in [`ops`], prepare, start and stop in [`task`] (a prepared
//!   sidecar is a created, not started task: its cgroup exists before Envoy runs, for fail-closed
//!   restarts).

pub mod events;
pub mod image;
pub mod ops;
pub mod sandbox;
pub mod spec;
pub mod store;
pub mod task;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use containerd_client::services::v1::{
    Container, GetContainerRequest, GetRequest, ListContainersRequest, ListTasksRequest,
};
use containerd_client::tonic::{self, Code, Request, Status};
use containerd_client::types::v1::{Process, Status as TaskStatus};
use containerd_client::Client;
use tracing::{debug, warn};

use crate::cgroup::{self, Cgroup2};
use crate::{ContainerRuntime, PodRef, RuntimeError, Sandbox, Sidecar, SidecarSpec, SidecarState};
use crate::{LABEL_MANAGED_BY, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID};

/// Where containerd listens on most nodes (k3s: `/run/k3s/containerd/containerd.sock`).
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";
/// k3s's embedded containerd.
pub const K3S_SOCKET: &str = "/run/k3s/containerd/containerd.sock";
/// Our containerd namespace.
pub const DEFAULT_NAMESPACE: &str = "traffic-manager";
/// The CRI plugin's namespace (pods' sandboxes and containers).
pub const CRI_NAMESPACE: &str = "k8s.io";
/// Host directory of the sidecars' bootstrap and log files.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/traffic-manager/containerd";
/// The CRI plugin's root (`<root>/sandboxes/<id>/resolv.conf`, `hosts`).
pub const DEFAULT_CRI_ROOT: &str = "/var/lib/containerd/io.containerd.grpc.v1.cri";
/// Label with the sandbox container id a sidecar was started in (a recreated sandbox has a new
/// id and netns: the sidecar must be replaced).
pub const LABEL_SANDBOX_ID: &str = "traffic.envoy.sandbox-id";
/// Value of [`LABEL_MANAGED_BY`] on our containers (the same as Docker's).
pub use crate::docker::MANAGED_BY;

/// How the runtime talks to containerd and runs Envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdConfig {
    pub socket: PathBuf,
    /// Our containerd namespace.
    pub namespace: String,
    /// Where the pods' sandboxes are (the CRI's namespace).
    pub cri_namespace: String,
    pub snapshotter: String,
    /// Host directory for each sidecar's bootstrap and log file.
    pub state_dir: PathBuf,
    /// The CRI root, for the pod's `resolv.conf` and `hosts`; `None`: none mounted.
    pub cri_root: Option<PathBuf>,
    pub ready_timeout: Duration,
    pub stop_timeout: Duration,
    /// Envoy arguments after `-c <bootstrap>`.
    pub envoy_args: Vec<String>,
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        ContainerdConfig {
            socket: PathBuf::from(DEFAULT_SOCKET),
            namespace: DEFAULT_NAMESPACE.into(),
            cri_namespace: CRI_NAMESPACE.into(),
            snapshotter: "overlayfs".into(),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            cri_root: Some(PathBuf::from(DEFAULT_CRI_ROOT)),
            ready_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(2),
            envoy_args: vec!["--disable-hot-restart".into()],
        }
    }
}

/// A containerd namespace name must be a DNS-label-like word (containerd's own rule), so it is
/// safe as a gRPC header and in paths.
pub fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 76
        && ns.starts_with(|c: char| c.is_ascii_alphanumeric())
        && ns
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// See the module docs.
#[derive(Clone)]
pub struct ContainerdRuntime {
    channel: tonic::transport::Channel,
    cgroup: Cgroup2,
    config: ContainerdConfig,
    /// One `prepare`/`start` at a time per pod uid.
    starting: crate::pod_locks::PodLocks,
}

impl std::fmt::Debug for ContainerdRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerdRuntime")
            .field("config", &self.config)
            .finish()
    }
}

pub(crate) fn rpc_err(what: &str, s: Status) -> RuntimeError {
    RuntimeError::Runtime(format!("containerd {what}: {} ({:?})", s.message(), s.code()))
}

pub(crate) fn not_found(s: &Status) -> bool {
    s.code() == Code::NotFound
}

/// A request in containerd namespace `ns`, optionally under lease `lease`. Both were validated
/// ([`valid_namespace`], our own lease ids), so the header values always parse.
pub(crate) fn req<T>(msg: T, ns: &str, lease: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Ok(v) = ns.parse() {
        r.metadata_mut().insert("containerd-namespace", v);
    }
    if let Some(Ok(v)) = lease.map(str::parse) {
        r.metadata_mut().insert("containerd-lease", v);
    }
    r
}

/// A fresh 64-hex-digit id (as Docker's), from the kernel's random source.
pub(crate) fn random_id() -> Result<String, RuntimeError> {
    use std::io::Read as _;
    let mut buf = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| RuntimeError::Runtime(format!("random id: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `id` could be one of our container ids (we only ever make 64 lowercase hex digits),
/// so an id from outside never reaches paths or RPCs unchecked.
pub fn valid_container_id(id: &str) -> bool {
    id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The labels of a pod's sidecar started in sandbox `sandbox_id`.
pub fn labels(pod: &PodRef, sandbox_id: &str) -> HashMap<String, String> {
    let mut l = crate::docker::labels(pod);
    l.insert(LABEL_SANDBOX_ID.to_string(), sandbox_id.to_string());
    l
}

/// Sidecar state and a human status from a container's task (`None`: no task, e.g. after a
/// node reboot — containers survive it, tasks do not).
pub fn state_of(task: Option<&Process>) -> (SidecarState, String) {
    let Some(t) = task else {
        return (SidecarState::Exited, "no task".into());
    };
    match TaskStatus::try_from(t.status).unwrap_or(TaskStatus::Unknown) {
        TaskStatus::Running => (SidecarState::Running, format!("Up (pid {})", t.pid)),
        TaskStatus::Created => (SidecarState::Created, "Created".into()),
        TaskStatus::Stopped => (SidecarState::Exited, format!("Exited ({})", t.exit_status)),
        other => (SidecarState::Other, format!("{other:?}")),
    }
}

/// A sidecar from a container record (no cgroup yet); `None` without our pod labels.
pub fn sidecar_of(c: &Container, task: Option<&Process>) -> Option<Sidecar> {
    let uid = c.labels.get(LABEL_POD_UID)?;
    let (state, status) = state_of(task);
    Some(Sidecar {
        container_id: c.id.clone(),
        pod: PodRef {
            uid: uid.clone(),
            namespace: c.labels.get(LABEL_POD_NAMESPACE).cloned().unwrap_or_default(),
            name: c.labels.get(LABEL_POD_NAME).cloned().unwrap_or_default(),
        },
        state,
        status,
        cgroup: None,
    })
}

/// The filter for our containers (optionally of one pod).
pub fn managed_filter(pod_uid: Option<&str>) -> String {
    let mut f = format!("labels.\"{LABEL_MANAGED_BY}\"==\"{MANAGED_BY}\"");
    if let Some(uid) = pod_uid {
        f.push_str(&format!(
            ",labels.\"{LABEL_POD_UID}\"==\"{}\"",
            sandbox::quote_filter_value(uid)
        ));
    }
    f
}

impl ContainerdRuntime {
    /// Connects to the socket, checks the daemon answers and detects the cgroup2 mount.
    pub async fn connect(config: ContainerdConfig) -> Result<Self, RuntimeError> {
        for ns in [&config.namespace, &config.cri_namespace] {
            if !valid_namespace(ns) {
                return Err(RuntimeError::Runtime(format!(
                    "invalid containerd namespace {ns:?}"
                )));
            }
        }
        let client = Client::from_path(&config.socket)
            .await
            .map_err(|e| RuntimeError::Runtime(format!("containerd {}: {e}", config.socket.display())))?;
        let version = client
            .version()
            .version(())
            .await
            .map_err(|e| rpc_err(&format!("{}: version", config.socket.display()), e))?
            .into_inner();
        let cgroup = Cgroup2::detect().map_err(|e| RuntimeError::Runtime(e.to_string()))?;
        debug!(socket = %config.socket.display(), version = %version.version, cgroup2 = %cgroup.mount.display(), "containerd connected");
        Ok(ContainerdRuntime {
            channel: client.channel(),
            cgroup,
            config,
            starting: crate::pod_locks::PodLocks::default(),
        })
    }

    pub fn config(&self) -> &ContainerdConfig {
        &self.config
    }

    pub(crate) fn channel(&self) -> tonic::transport::Channel {
        self.channel.clone()
    }

    /// containerd's version string.
    pub async fn version(&self) -> Result<String, RuntimeError> {
        let v = Client::from(self.channel())
            .version()
            .version(())
            .await
            .map_err(|e| rpc_err("version", e))?;
        Ok(v.into_inner().version)
    }

    pub(crate) fn ns(&self) -> &str {
        &self.config.namespace
    }

    /// The host directory of one sidecar's files.
    pub fn sidecar_dir(&self, id: &str) -> PathBuf {
        self.config.state_dir.join(id)
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.sidecar_dir(id).join("envoy.log")
    }

    pub(crate) async fn list_containers(
        &self,
        ns: &str,
        filter: String,
    ) -> Result<Vec<Container>, RuntimeError> {
        let mut c = Client::from(self.channel()).containers();
        let r = c
            .list(req(
                ListContainersRequest {
                    filters: vec![filter],
                },
                ns,
                None,
            ))
            .await
            .map_err(|e| rpc_err(&format!("list containers in {ns}"), e))?;
        Ok(r.into_inner().containers)
    }

    pub(crate) async fn container(&self, ns: &str, id: &str) -> Result<Option<Container>, RuntimeError> {
        let mut c = Client::from(self.channel()).containers();
        match c
            .get(req(GetContainerRequest { id: id.to_string() }, ns, None))
            .await
        {
            Ok(r) => Ok(r.into_inner().container),
            Err(s) if not_found(&s) => Ok(None),
            Err(s) => Err(rpc_err(&format!("get container {id}"), s)),
        }
    }

    /// The task of a container, `None` without one.
    pub(crate) async fn task(&self, ns: &str, id: &str) -> Result<Option<Process>, RuntimeError> {
        let mut t = Client::from(self.channel()).tasks();
        match t
            .get(req(
                GetRequest {
                    container_id: id.to_string(),
                    exec_id: String::new(),
                },
                ns,
                None,
            ))
            .await
        {
            Ok(r) => Ok(r.into_inner().process),
            Err(s) if not_found(&s) => Ok(None),
            Err(s) => Err(rpc_err(&format!("get task {id}"), s)),
        }
    }

    /// Fills `cgroup` of a running or prepared sidecar from its task's pid (a created task's pid
    /// is runc's init process, already in the container's cgroup).
    fn with_cgroup(&self, mut s: Sidecar, task: Option<&Process>) -> Sidecar {
        let has_cgroup = matches!(s.state, SidecarState::Running | SidecarState::Created);
        if let Some(t) = task.filter(|t| has_cgroup && t.pid != 0) {
            s.cgroup = self.cgroup.of_pid(t.pid).ok();
        }
        s
    }

    /// Our sidecars (optionally of one pod) with their container records.
    pub(crate) async fn ours(
        &self,
        pod_uid: Option<&str>,
    ) -> Result<Vec<(Container, Sidecar)>, RuntimeError> {
        let containers = self.list_containers(self.ns(), managed_filter(pod_uid)).await?;
        let mut t = Client::from(self.channel()).tasks();
        let tasks = t
            .list(req(
                ListTasksRequest {
                    filter: String::new(),
                },
                self.ns(),
                None,
            ))
            .await
            .map_err(|e| rpc_err("list tasks", e))?
            .into_inner()
            .tasks;
        let by_id: HashMap<&str, &Process> = tasks.iter().map(|p| (p.id.as_str(), p)).collect();
        let mut out = Vec::with_capacity(containers.len());
        for c in containers {
            let task = by_id.get(c.id.as_str()).copied();
            match sidecar_of(&c, task) {
                Some(s) => {
                    let s = self.with_cgroup(s, task);
                    out.push((c, s));
                }
                None => warn!(container = %c.id, "managed container without pod labels ignored"),
            }
        }
        out.sort_by_key(|(c, _)| std::cmp::Reverse(c.created_at.map(|t| (t.seconds, t.nanos))));
        Ok(out)
    }

    /// The files under the CRI root that give a sandbox's DNS to its containers.
    fn dns_files(&self, sandbox_id: &str) -> Vec<PathBuf> {
        let Some(root) = &self.config.cri_root else {
            return Vec::new();
        };
        ["resolv.conf", "hosts"]
            .iter()
            .map(|f| root.join("sandboxes").join(sandbox_id).join(f))
            .filter(|p| p.is_file())
            .collect()
    }
}

/// A sandbox's pod cgroup from its pause pid; `None` when `/proc/<pid>` is missing (the sandbox
/// exited meanwhile, or the agent does not see host pids: the caller tells them apart).
fn pod_cgroup_of(cg: &Cgroup2, id: &str, pid: u32) -> Result<Option<PathBuf>, RuntimeError> {
    match cg.parent_of_pid(pid) {
        Ok(p) => Ok(Some(p)),
        Err(cgroup::CgroupError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(RuntimeError::Runtime(format!("sandbox {id}: {e}"))),
    }
}

impl ContainerRuntime for ContainerdRuntime {
    fn exits(&self) -> futures_util::stream::BoxStream<'static, String> {
        events::exits(self.channel(), self.config.namespace.clone())
    }

    async fn sandbox(&self, pod_uid: &str) -> Result<Option<Sandbox>, RuntimeError> {
        let ns = &self.config.cri_namespace;
        let mut found = self.list_containers(ns, sandbox::sandbox_filter(pod_uid)).await?;
        found.sort_by_key(|c| std::cmp::Reverse(c.created_at.map(|t| (t.seconds, t.nanos))));
        for c in found {
            let Some(t) = self.task(ns, &c.id).await? else {
                continue;
            };
            if TaskStatus::try_from(t.status) != Ok(TaskStatus::Running) || t.pid == 0 {
                continue;
            }
            match pod_cgroup_of(&self.cgroup, &c.id, t.pid)? {
                Some(pod_cgroup) => {
                    return Ok(Some(Sandbox {
                        container_id: c.id,
                        pid: t.pid,
                        pod_cgroup,
                    }))
                }
                None => {
                    if self
                        .task(ns, &c.id)
                        .await?
                        .is_some_and(|now| now.pid == t.pid && now.status == t.status)
                    {
                        return Err(RuntimeError::Runtime(format!(
                            "sandbox {} runs as pid {} but /proc has no such pid: the agent needs the host pid namespace",
                            c.id, t.pid
                        )));
                    }
                }
            }
        }
        Ok(None)
    }

    async fn sidecars(&self) -> Result<Vec<Sidecar>, RuntimeError> {
        Ok(self.ours(None).await?.into_iter().map(|(_, s)| s).collect())
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
            name: "reviews-v1".into(),
        }
    }

    #[test]
    fn namespaces_are_dns_label_like_words() {
        assert!(valid_namespace("traffic-manager"));
        assert!(valid_namespace("k8s.io"));
        for bad in ["", "-x", "a b", "a\n", "ns/x", &"n".repeat(77)] {
            assert!(!valid_namespace(bad), "{bad:?}");
        }
    }

    #[test]
    fn our_ids_are_64_hex_digits_and_nothing_else_passes() {
        let id = random_id().unwrap();
        assert!(valid_container_id(&id));
        assert_ne!(id, random_id().unwrap());
        assert!(!valid_container_id("../../etc"));
        assert!(!valid_container_id(&"A".repeat(64)));
        assert!(!valid_container_id("abc"));
    }

    #[test]
    fn sidecar_records_carry_pod_and_sandbox_labels_and_their_task_state() {
        let c = Container {
            id: "c1".into(),
            labels: labels(&pod(), "sb1"),
            ..Default::default()
        };
        assert_eq!(c.labels[LABEL_SANDBOX_ID], "sb1");
        assert_eq!(c.labels[LABEL_MANAGED_BY], MANAGED_BY);
        let s = sidecar_of(&c, None).unwrap();
        assert_eq!(s.pod, pod());
        assert_eq!((s.state, s.status.as_str()), (SidecarState::Exited, "no task"));
        let running = Process {
            id: "c1".into(),
            pid: 42,
            status: TaskStatus::Running as i32,
            ..Default::default()
        };
        assert_eq!(
            sidecar_of(&c, Some(&running)).unwrap().state,
            SidecarState::Running
        );
        let stopped = Process {
            status: TaskStatus::Stopped as i32,
            exit_status: 137,
            ..running
        };
        assert_eq!(
            state_of(Some(&stopped)),
            (SidecarState::Exited, "Exited (137)".into())
        );
        let foreign = Container {
            labels: HashMap::new(),
            ..c
        };
        assert_eq!(sidecar_of(&foreign, None), None);
    }

    #[test]
    fn the_managed_filter_selects_ours_and_quotes_the_pod_uid() {
        assert_eq!(
            managed_filter(None),
            r#"labels."traffic.envoy.managed-by"=="traffic-agent""#
        );
        assert_eq!(
            managed_filter(Some("u\"1")),
            r#"labels."traffic.envoy.managed-by"=="traffic-agent",labels."traffic.envoy.pod-uid"=="u\"1""#
        );
    }
}
