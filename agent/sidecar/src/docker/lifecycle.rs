//! Creating, starting, probing and removing a sidecar container ([`DockerRuntime`]'s lifecycle).
//!
//! A sidecar may be *prepared* first (created, not started, with its cgroup v2 directory made
//! ahead of runc: Docker's cgroupfs driver puts a container in `<cgroup_parent>/<container id>`,
//! known as soon as the container is created), so the agent can exclude that cgroup from the pod's
//! redirect before Envoy runs. `start` starts a prepared container instead of creating another.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, HostConfig, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions, StopContainerOptions};
use tracing::{debug, info, warn};

use super::{container_name, labels, runtime_err, status_of, CreateError, DockerRuntime};
use crate::cgroup;
use crate::netns;
use crate::{RuntimeError, Sandbox, Sidecar, SidecarSpec, SidecarState, LABEL_POD_UID};

/// The pod's container to keep, found among its sidecars.
enum Kept {
    /// Running in the pod's current sandbox.
    Running(String),
    /// Created (prepared) for the current sandbox, never started.
    Prepared(String),
}

impl DockerRuntime {
    /// Keeps the pod's running (else prepared) container of this sandbox and removes every other
    /// one of the pod (exited ones, ones joined to an older sandbox whose netns is gone).
    async fn keep_one(&self, spec: &SidecarSpec, sandbox: &Sandbox) -> Result<Option<Kept>, RuntimeError> {
        let pod = &spec.pod;
        let wanted_mode = format!("container:{}", sandbox.container_id);
        let mine = self.sidecars_of_pod(&pod.uid).await?;
        let in_sandbox = |c: &bollard::models::ContainerSummary, state: ContainerSummaryStateEnum| {
            c.state == Some(state)
                && c.host_config.as_ref().and_then(|h| h.network_mode.as_deref())
                    == Some(wanted_mode.as_str())
        };
        let kept = mine
            .iter()
            .find(|c| in_sandbox(c, ContainerSummaryStateEnum::RUNNING))
            .and_then(|c| c.id.clone().map(Kept::Running))
            .or_else(|| {
                mine.iter()
                    .find(|c| in_sandbox(c, ContainerSummaryStateEnum::CREATED))
                    .and_then(|c| c.id.clone().map(Kept::Prepared))
            });
        let kept_id = match &kept {
            Some(Kept::Running(id) | Kept::Prepared(id)) => Some(id.as_str()),
            None => None,
        };
        for c in &mine {
            let Some(id) = c.id.as_deref() else { continue };
            if Some(id) != kept_id {
                info!(container = %id, pod = %pod.node_id(), state = ?c.state, "removing stale sidecar");
                self.stop_and_remove(id).await?;
            }
        }
        Ok(kept)
    }

    /// The cgroup v2 directory a container of `sandbox`'s pod gets, made now (runc accepts it).
    fn make_cgroup(&self, sandbox: &Sandbox, id: &str) -> Result<PathBuf, RuntimeError> {
        let dir = sandbox.pod_cgroup.join(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(dir),
            Err(e) => Err(RuntimeError::Runtime(format!(
                "cannot create the sidecar's cgroup {}: {e}",
                dir.display()
            ))),
        }
    }

    pub(super) async fn prepare_locked(
        &self,
        spec: &SidecarSpec,
        sandbox: &Sandbox,
    ) -> Result<Sidecar, RuntimeError> {
        let id = match self.keep_one(spec, sandbox).await? {
            Some(Kept::Running(id)) => {
                return self
                    .by_id(&id)
                    .await?
                    .ok_or_else(|| RuntimeError::Runtime(format!("sidecar {id} vanished")))
            }
            Some(Kept::Prepared(id)) => id,
            None => match self.create(spec, sandbox).await {
                Ok(id) => id,
                Err(CreateError::NameInUse(name)) => {
                    return Err(RuntimeError::Runtime(format!(
                        "container name {name} was taken while preparing the sidecar; retrying next round"
                    )))
                }
                Err(CreateError::Other(e)) => return Err(RuntimeError::Runtime(e)),
            },
        };
        let cgroup = match self.make_cgroup(sandbox, &id) {
            Ok(c) => c,
            Err(e) => {
                self.discard(&id).await;
                return Err(e);
            }
        };
        debug!(container = %id, pod = %spec.pod.node_id(), cgroup = %cgroup.display(), "sidecar prepared");
        Ok(Sidecar {
            container_id: id,
            pod: spec.pod.clone(),
            state: SidecarState::Created,
            status: "Created".into(),
            cgroup: Some(cgroup),
        })
    }

    pub(super) async fn start_locked(
        &self,
        spec: &SidecarSpec,
        sandbox: &Sandbox,
    ) -> Result<Sidecar, RuntimeError> {
        let pod = &spec.pod;
        let id = match self.keep_one(spec, sandbox).await? {
            Some(Kept::Running(id)) => {
                debug!(container = %id, pod = %pod.node_id(), "sidecar already running");
                return self.ready_sidecar(&id, sandbox, spec.admin_port).await;
            }
            Some(Kept::Prepared(id)) => id,
            None => match self.create(spec, sandbox).await {
                Ok(id) => id,
                // A concurrent start won the name: use its container if it is this pod's.
                Err(CreateError::NameInUse(name)) => {
                    let id = self.ours_by_name(&name, &pod.uid).await?;
                    // Someone else's (or an earlier) container: wait, but leave removal to the caller.
                    return self.ready_sidecar(&id, sandbox, spec.admin_port).await;
                }
                Err(CreateError::Other(e)) => return Err(RuntimeError::Runtime(e)),
            },
        };
        if let Err(e) = self.docker.start_container(&id, None).await {
            self.discard(&id).await;
            return Err(RuntimeError::Runtime(format!(
                "start {}: {e}",
                container_name(pod)
            )));
        }
        info!(container = %id, pod = %pod.node_id(), "sidecar started");
        if let Err(e) = self.wait_ready(&id, sandbox, spec.admin_port).await {
            self.discard(&id).await;
            return Err(e);
        }
        self.by_id(&id)
            .await?
            .ok_or_else(|| RuntimeError::Runtime(format!("sidecar {id} vanished after start")))
    }

    async fn ready_sidecar(
        &self,
        id: &str,
        sandbox: &Sandbox,
        admin_port: u16,
    ) -> Result<Sidecar, RuntimeError> {
        self.wait_ready(id, sandbox, admin_port).await?;
        self.by_id(id)
            .await?
            .ok_or_else(|| RuntimeError::Runtime(format!("sidecar {id} vanished")))
    }

    /// The id of the container named `name` if it is a sidecar of pod `pod_uid`.
    async fn ours_by_name(&self, name: &str, pod_uid: &str) -> Result<String, RuntimeError> {
        let c = self
            .docker
            .inspect_container(name, None)
            .await
            .map_err(|e| runtime_err(&format!("inspect {name}"), e))?;
        let ours = c
            .config
            .as_ref()
            .and_then(|cfg| cfg.labels.as_ref())
            .and_then(|l| l.get(LABEL_POD_UID))
            .map(String::as_str)
            == Some(pod_uid);
        match c.id {
            Some(id) if ours => Ok(id),
            _ => Err(RuntimeError::Runtime(format!(
                "container name {name} is taken by another container"
            ))),
        }
    }

    /// Waits until Envoy answers `/ready` with `LIVE` inside the sandbox netns; fails early when
    /// the container stops running.
    async fn wait_ready(&self, id: &str, sandbox: &Sandbox, admin_port: u16) -> Result<(), RuntimeError> {
        let timeout = self.config.ready_timeout;
        let deadline = Instant::now() + timeout;
        let started = Instant::now();
        let not_ready = |detail: String| RuntimeError::NotReady {
            container_id: id.to_string(),
            seconds: timeout.as_secs(),
            detail,
        };
        loop {
            let last = match netns::envoy_ready(sandbox.netns(), admin_port).await {
                Ok(()) => {
                    debug!(container = %id, elapsed_ms = started.elapsed().as_millis() as u64, "envoy ready");
                    return Ok(());
                }
                Err(last) => last,
            };
            if self.pid_of(id).await?.is_none() {
                let logs = self.tail(id, 20).await;
                return Err(not_ready(format!(
                    "container stopped before it was ready; last output:\n{logs}"
                )));
            }
            if Instant::now() >= deadline {
                let logs = self.tail(id, 20).await;
                return Err(not_ready(format!("{last}; last output:\n{logs}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Removes a container we just created, logging (not returning) a failure.
    async fn discard(&self, id: &str) {
        if let Err(e) = self.stop_and_remove(id).await {
            warn!(container = %id, error = %e, "could not remove a failed sidecar");
        }
    }

    /// Creates the container (not started); returns its id.
    async fn create(&self, spec: &SidecarSpec, sandbox: &Sandbox) -> Result<String, CreateError> {
        let cgroup_parent = cgroup::relative(&self.cgroup.mount, &sandbox.pod_cgroup)
            .map_err(|e| CreateError::Other(e.to_string()))?;
        let mut cmd = vec!["--config-yaml".to_string(), spec.bootstrap.clone()];
        cmd.extend(self.config.envoy_args.iter().cloned());
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(cmd),
            user: Some(format!("{0}:{0}", spec.uid)),
            labels: Some(labels(&spec.pod)),
            host_config: Some(HostConfig {
                network_mode: Some(format!("container:{}", sandbox.container_id)),
                cgroup_parent: Some(cgroup_parent),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                binds: spec.token_dir.as_ref().map(|d| vec![token_bind(d)]),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let name = container_name(&spec.pod);
        let options = || {
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            })
        };
        let mut created = self.docker.create_container(options(), body.clone()).await;
        if matches!(&created, Err(e) if status_of(e) == Some(404)) {
            // The image is not on the node: pull it once (like kubelet's IfNotPresent), retry.
            self.pull(&spec.image).await.map_err(CreateError::Other)?;
            created = self.docker.create_container(options(), body).await;
        }
        match created {
            Ok(r) => Ok(r.id),
            Err(e) if status_of(&e) == Some(409) => Err(CreateError::NameInUse(name)),
            Err(e) => Err(CreateError::Other(format!("create {name}: {e}"))),
        }
    }

    /// Stops and removes a container, and its cgroup v2 directory when that is left (a prepared
    /// container that never ran has one runc did not make, so runc does not remove it either).
    pub(super) async fn stop_and_remove(&self, container_id: &str) -> Result<(), RuntimeError> {
        let cgroup_dir = match self.docker.inspect_container(container_id, None).await {
            Ok(c) => c
                .host_config
                .and_then(|h| h.cgroup_parent)
                .filter(|p| !p.is_empty())
                .map(|p| cgroup::absolute(&self.cgroup.mount, &p).join(container_id)),
            Err(e) if status_of(&e) == Some(404) => return Ok(()),
            Err(e) => return Err(runtime_err(&format!("inspect {container_id}"), e)),
        };
        let t = i32::try_from(self.config.stop_timeout.as_secs()).unwrap_or(i32::MAX);
        match self
            .docker
            .stop_container(
                container_id,
                Some(StopContainerOptions {
                    t: Some(t),
                    signal: None,
                }),
            )
            .await
        {
            Ok(()) => {}
            Err(e) if status_of(&e) == Some(404) => return Ok(()),
            // 304: not running.
            Err(e) if status_of(&e) == Some(304) => {}
            Err(e) => warn!(container = %container_id, error = %e, "stop failed; removing by force"),
        }
        let removed = match self
            .docker
            .remove_container(
                container_id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    link: false,
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            // 404: gone; 409: removal already in progress.
            Err(e) if matches!(status_of(&e), Some(404 | 409)) => Ok(()),
            Err(e) => Err(runtime_err(&format!("remove {container_id}"), e)),
        };
        if let Some(dir) = cgroup_dir.filter(|_| removed.is_ok()) {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {
                    debug!(container = %container_id, cgroup = %dir.display(), "removed the sidecar's cgroup")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(container = %container_id, cgroup = %dir.display(), error = %e, "cannot remove the sidecar's cgroup")
                }
            }
        }
        removed
    }
}

/// The read-only bind of the pod's token directory (a directory, so renewals, made by rename,
/// show in the sidecar).
fn token_bind(dir: &std::path::Path) -> String {
    format!("{}:{}:ro", dir.display(), crate::TOKEN_DIR_IN_CONTAINER)
}
