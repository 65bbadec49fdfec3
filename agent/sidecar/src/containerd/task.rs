//! Starting and stopping sidecars: container record, snapshot, task (I/O).
//!
//! Start: image ready ([`super::store`]) → host files (bootstrap, log) → lease → snapshot on
//! the image's top layer → container (spec, labels, the sandbox's runtime and runc options) →
//! task (rootfs mounts, stdout/stderr to the log file, written by the shim) → start → Envoy's
//! `/ready`. *Prepare* stops before the start: a created task is runc's created container, its
//! cgroup made and its init process waiting in it, so the agent can exclude that cgroup from the
//! pod's redirect before Envoy runs; `start` then starts that task instead of creating another. Any failure undoes every step, so a failed start leaves no container, task,
//! snapshot, lease or file. Stop: SIGTERM, the grace period, SIGKILL to all, then task,
//! container, snapshot and files; NotFound at any step is fine.

use std::path::Path;
use std::time::{Duration, Instant};

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest, DeleteTaskRequest,
    KillRequest, StartRequest,
};
use containerd_client::types::v1::Status as TaskStatus;
use containerd_client::Client;
use tracing::{debug, info, warn};

use super::sandbox::{parse_sandbox_spec, sidecar_runc_options, SandboxSpec};
use super::spec::{sidecar_spec, to_json, SpecInput};
use super::store::Lease;
use super::{
    labels, not_found, random_id, req, rpc_err, valid_container_id, ContainerdRuntime, LABEL_SANDBOX_ID,
};
use crate::{netns, RuntimeError, Sandbox, Sidecar, SidecarSpec, SidecarState};

/// Type URL of an OCI runtime spec in `Container.spec`.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// Type URL of an OCI process spec (exec).
pub const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// The shim every sidecar runs under.
pub const RUNC_V2: &str = "io.containerd.runc.v2";

/// The pod's sidecar to keep, found among its sidecars.
enum Kept {
    /// Its task runs in the pod's current sandbox.
    Running(Sidecar),
    /// Its task was created for the current sandbox (prepared), never started.
    Prepared(Sidecar),
}

impl Kept {
    fn sidecar(&self) -> &Sidecar {
        match self {
            Kept::Running(s) | Kept::Prepared(s) => s,
        }
    }
}

impl ContainerdRuntime {
    /// The sandbox container's stored spec and runtime, for a sandbox [`Self::sandbox`] found.
    async fn sandbox_details(
        &self,
        sandbox: &Sandbox,
    ) -> Result<(SandboxSpec, Option<Runtime>), RuntimeError> {
        let c = self
            .container(&self.config.cri_namespace, &sandbox.container_id)
            .await?
            .ok_or_else(|| RuntimeError::Runtime(format!("sandbox {} is gone", sandbox.container_id)))?;
        let spec = c
            .spec
            .as_ref()
            .ok_or_else(|| RuntimeError::Runtime(format!("sandbox {} has no stored spec", c.id)))?;
        let parsed = parse_sandbox_spec(&spec.value)
            .map_err(|e| RuntimeError::Runtime(format!("sandbox {}: {e}", c.id)))?;
        Ok((parsed, c.runtime))
    }

    /// Keeps the pod's sidecar of this sandbox whose task runs (else one whose task is created,
    /// not started: a prepared one) and removes every other one of the pod (exited ones, ones
    /// without a task after a reboot, ones in an older sandbox).
    async fn keep_one(&self, spec: &SidecarSpec, sandbox: &Sandbox) -> Result<Option<Kept>, RuntimeError> {
        let pod = &spec.pod;
        let mine = self.ours(Some(&pod.uid)).await?;
        let in_sandbox = |c: &Container, s: &Sidecar, state: SidecarState| {
            s.state == state && c.labels.get(LABEL_SANDBOX_ID) == Some(&sandbox.container_id)
        };
        let kept = mine
            .iter()
            .find(|(c, s)| in_sandbox(c, s, SidecarState::Running))
            .map(|(_, s)| Kept::Running(s.clone()))
            .or_else(|| {
                mine.iter()
                    .find(|(c, s)| in_sandbox(c, s, SidecarState::Created))
                    .map(|(_, s)| Kept::Prepared(s.clone()))
            });
        let kept_id = kept.as_ref().map(|k| k.sidecar().container_id.clone());
        for (c, s) in &mine {
            if Some(&c.id) != kept_id.as_ref() {
                info!(container = %c.id, pod = %pod.node_id(), state = ?s.state, "removing stale sidecar");
                self.stop_and_remove(&c.id).await?;
            }
        }
        Ok(kept)
    }

    /// Creates the pod's sidecar with its task *created, not started* (runc has made the
    /// container's cgroup and holds its init process there), or returns the one that runs or was
    /// prepared before. See [`crate::ContainerRuntime::prepare`].
    pub(crate) async fn prepare_locked(
        &self,
        spec: &SidecarSpec,
        sandbox: &Sandbox,
    ) -> Result<Sidecar, RuntimeError> {
        let sidecar = match self.keep_one(spec, sandbox).await? {
            Some(Kept::Running(s) | Kept::Prepared(s)) => s,
            None => {
                let id = random_id()?;
                if let Err(e) = self.create(&id, spec, sandbox).await {
                    self.discard(&id).await;
                    return Err(e);
                }
                match self.find(&spec.pod.uid, &id).await {
                    Ok(s) => s,
                    Err(e) => {
                        self.discard(&id).await;
                        return Err(e);
                    }
                }
            }
        };
        if sidecar.cgroup.is_none() {
            let id = sidecar.container_id.clone();
            self.discard(&id).await;
            return Err(RuntimeError::Runtime(format!(
                "the cgroup of prepared sidecar {id} is not known (its task has no pid in /proc)"
            )));
        }
        debug!(container = %sidecar.container_id, pod = %spec.pod.node_id(), state = ?sidecar.state, cgroup = ?sidecar.cgroup, "sidecar prepared");
        Ok(sidecar)
    }

    pub(crate) async fn start_locked(
        &self,
        spec: &SidecarSpec,
        sandbox: &Sandbox,
    ) -> Result<Sidecar, RuntimeError> {
        let pod = &spec.pod;
        let id = match self.keep_one(spec, sandbox).await? {
            Some(Kept::Running(s)) => {
                debug!(container = %s.container_id, pod = %pod.node_id(), "sidecar already running");
                self.wait_ready(&s.container_id, sandbox, spec.admin_port).await?;
                return Ok(s);
            }
            Some(Kept::Prepared(s)) => s.container_id,
            None => {
                let id = random_id()?;
                if let Err(e) = self.create(&id, spec, sandbox).await {
                    self.discard(&id).await;
                    return Err(e);
                }
                id
            }
        };
        if let Err(e) = self.start_task(&id).await {
            self.discard(&id).await;
            return Err(e);
        }
        info!(container = %id, pod = %pod.node_id(), "sidecar started");
        if let Err(e) = self.wait_ready(&id, sandbox, spec.admin_port).await {
            self.discard(&id).await;
            return Err(e);
        }
        self.find(&pod.uid, &id).await
    }

    /// Our sidecar `id` of pod `pod_uid`, as listed now.
    async fn find(&self, pod_uid: &str, id: &str) -> Result<Sidecar, RuntimeError> {
        self.ours(Some(pod_uid))
            .await?
            .into_iter()
            .map(|(_, s)| s)
            .find(|s| s.container_id == id)
            .ok_or_else(|| RuntimeError::Runtime(format!("sidecar {id} vanished")))
    }

    async fn start_task(&self, id: &str) -> Result<(), RuntimeError> {
        let mut t = Client::from(self.channel()).tasks();
        t.start(req(
            StartRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            },
            self.ns(),
            None,
        ))
        .await
        .map_err(|e| rpc_err(&format!("start task {id}"), e))?;
        Ok(())
    }

    async fn create(&self, id: &str, spec: &SidecarSpec, sandbox: &Sandbox) -> Result<(), RuntimeError> {
        let (sb, sb_runtime) = self.sandbox_details(sandbox).await?;
        let lease = self.lease().await?;
        let result = self
            .create_leased(id, spec, sandbox, &sb, sb_runtime, &lease)
            .await;
        self.end_lease(lease).await;
        result
    }

    async fn create_leased(
        &self,
        id: &str,
        spec: &SidecarSpec,
        sandbox: &Sandbox,
        sb: &SandboxSpec,
        sb_runtime: Option<Runtime>,
        lease: &Lease,
    ) -> Result<(), RuntimeError> {
        let image = self.ensure_image(&spec.image, lease).await?;
        let dir = self.sidecar_dir(id);
        let io =
            |e: std::io::Error| RuntimeError::Runtime(format!("sidecar files in {}: {e}", dir.display()));
        std::fs::create_dir_all(&dir).map_err(io)?;
        let bootstrap = dir.join("bootstrap.yaml");
        write_file(&bootstrap, spec.bootstrap.as_bytes()).map_err(io)?;
        let log = self.log_path(id);
        write_file(&log, b"").map_err(io)?;
        let cgroups_path = sb.cgroup.sidecar_cgroups_path(id);
        let etc_files = self.dns_files(&sandbox.container_id);
        let oci = sidecar_spec(&SpecInput {
            image: &image.config,
            uid: spec.uid,
            bootstrap: &bootstrap,
            envoy_args: &self.config.envoy_args,
            netns: &sb.netns,
            cgroups_path: &cgroups_path,
            hostname: sb.hostname.as_deref(),
            etc_files: &etc_files,
            token_dir: spec.token_dir.as_deref(),
        })
        .and_then(|s| to_json(&s))
        .map_err(|e| RuntimeError::Runtime(e.to_string()))?;
        let mounts = self.prepare_snapshot(id, &image.top_chain_id, lease).await?;
        // The sidecar always runs on runc (it joins the netns by path), with the sandbox's runc
        // options when it has them.
        let sb_options = sb_runtime.filter(|r| r.name == RUNC_V2).and_then(|r| r.options);
        let options = sidecar_runc_options(sb_options.as_ref(), &sb.cgroup)
            .map_err(|e| RuntimeError::Runtime(format!("sandbox {}: {e}", sandbox.container_id)))?;
        let runtime = Runtime {
            name: RUNC_V2.into(),
            options: Some(options),
        };
        let container = Container {
            id: id.to_string(),
            labels: labels(&spec.pod, &sandbox.container_id),
            image: image.name.clone(),
            runtime: Some(runtime),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.into(),
                value: oci,
            }),
            snapshotter: self.config.snapshotter.clone(),
            snapshot_key: id.to_string(),
            ..Default::default()
        };
        let mut cc = Client::from(self.channel()).containers();
        cc.create(req(
            CreateContainerRequest {
                container: Some(container),
            },
            self.ns(),
            Some(&lease.0),
        ))
        .await
        .map_err(|e| rpc_err(&format!("create container {id}"), e))?;
        let log_uri = format!("file://{}", log.display());
        let mut t = Client::from(self.channel()).tasks();
        t.create(req(
            CreateTaskRequest {
                container_id: id.to_string(),
                rootfs: mounts,
                stdout: log_uri.clone(),
                stderr: log_uri,
                ..Default::default()
            },
            self.ns(),
            None,
        ))
        .await
        .map_err(|e| rpc_err(&format!("create task {id}"), e))?;
        Ok(())
    }

    /// Removes a sidecar we just tried to create, logging (not returning) a failure.
    async fn discard(&self, id: &str) {
        if let Err(e) = self.stop_and_remove(id).await {
            warn!(container = %id, error = %e, "could not remove a failed sidecar");
        }
    }

    /// Waits until Envoy answers `/ready` with `LIVE` in the sandbox netns; fails early when the
    /// task stops.
    async fn wait_ready(&self, id: &str, sandbox: &Sandbox, admin_port: u16) -> Result<(), RuntimeError> {
        let timeout = self.config.ready_timeout;
        let deadline = Instant::now() + timeout;
        let not_ready = |detail: String| RuntimeError::NotReady {
            container_id: id.to_string(),
            seconds: timeout.as_secs(),
            detail,
        };
        loop {
            let last = match netns::envoy_ready(sandbox.netns(), admin_port).await {
                Ok(()) => return Ok(()),
                Err(last) => last,
            };
            let running = self
                .task(self.ns(), id)
                .await?
                .is_some_and(|t| TaskStatus::try_from(t.status) == Ok(TaskStatus::Running));
            if !running {
                return Err(not_ready(format!(
                    "container stopped before it was ready; last output:\n{}",
                    self.tail(id, 20)
                )));
            }
            if Instant::now() >= deadline {
                return Err(not_ready(format!("{last}; last output:\n{}", self.tail(id, 20))));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<bool, RuntimeError> {
        let mut t = Client::from(self.channel()).tasks();
        match t
            .kill(req(
                KillRequest {
                    container_id: id.to_string(),
                    exec_id: String::new(),
                    signal,
                    all,
                },
                self.ns(),
                None,
            ))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(rpc_err(&format!("kill {id}"), e)),
        }
    }

    /// Whether the task is gone or stopped within `within`.
    async fn stopped_within(&self, id: &str, within: Duration) -> Result<bool, RuntimeError> {
        let deadline = Instant::now() + within;
        loop {
            match self.task(self.ns(), id).await? {
                None => return Ok(true),
                Some(t) if TaskStatus::try_from(t.status) == Ok(TaskStatus::Stopped) => return Ok(true),
                Some(_) if Instant::now() >= deadline => return Ok(false),
                Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    pub(crate) async fn stop_and_remove(&self, id: &str) -> Result<(), RuntimeError> {
        if !valid_container_id(id) {
            // Never one of ours: nothing to remove (and never a path or RPC argument).
            return Ok(());
        }
        if self.task(self.ns(), id).await?.is_some() {
            if self.kill(id, libc::SIGTERM as u32, false).await?
                && !self.stopped_within(id, self.config.stop_timeout).await?
            {
                self.kill(id, libc::SIGKILL as u32, true).await?;
                if !self.stopped_within(id, Duration::from_secs(10)).await? {
                    warn!(container = %id, "task did not stop after SIGKILL");
                }
            }
            let mut t = Client::from(self.channel()).tasks();
            match t
                .delete(req(
                    DeleteTaskRequest {
                        container_id: id.to_string(),
                    },
                    self.ns(),
                    None,
                ))
                .await
            {
                Ok(_) => {}
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(rpc_err(&format!("delete task {id}"), e)),
            }
        }
        let mut c = Client::from(self.channel()).containers();
        match c
            .delete(req(
                DeleteContainerRequest { id: id.to_string() },
                self.ns(),
                None,
            ))
            .await
        {
            Ok(_) => {}
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(rpc_err(&format!("delete container {id}"), e)),
        }
        self.remove_snapshot(id).await?;
        let dir = self.sidecar_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RuntimeError::Runtime(format!("remove {}: {e}", dir.display()))),
        }
    }

    /// The last `lines` lines of a sidecar's log (for error details).
    pub(crate) fn tail(&self, id: &str, lines: usize) -> String {
        let text = std::fs::read(self.log_path(id)).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Writes a file readable by the sidecar's user (the bootstrap holds no secret).
fn write_file(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, content)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
}
