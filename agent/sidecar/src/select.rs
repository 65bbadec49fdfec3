//! Which runtime a node's pods run on, and [`NodeRuntime`]: the one the agent connected to.
//!
//! The authority is the node's `status.nodeInfo.containerRuntimeVersion` (`docker://20.10.5`,
//! `containerd://1.6.20`), which kubelet reports. Without it (operator commands run without an
//! API client) the sockets decide: a Docker socket means dockershim (Docker nodes also run a
//! containerd, for Docker itself, so a containerd socket alone does not tell), else containerd.

use std::path::Path;

use tokio::io::AsyncWrite;

use crate::containerd::{ContainerdConfig, ContainerdRuntime};
use crate::docker::{DockerConfig, DockerRuntime};
use crate::operator::{OperatorError, ProxyRow};
use crate::{ContainerRuntime, RuntimeError, Sandbox, Sidecar, SidecarSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Docker,
    Containerd,
}

impl std::fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RuntimeKind::Docker => "docker",
            RuntimeKind::Containerd => "containerd",
        })
    }
}

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeChoice {
    Auto,
    Docker,
    Containerd,
}

/// What the node looks like to the agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// `status.nodeInfo.containerRuntimeVersion`, when known.
    pub runtime_version: Option<String>,
    pub docker_socket: bool,
    pub containerd_socket: bool,
}

impl NodeFacts {
    /// The sockets' presence (`docker_host` as in `DOCKER_HOST`; tcp hosts count as present). Only
    /// sockets count: a runtime may have created an empty directory at a missing mount's path.
    pub fn probe(docker_host: &str, containerd_socket: &Path, runtime_version: Option<String>) -> Self {
        NodeFacts {
            runtime_version,
            docker_socket: docker_host
                .strip_prefix("unix://")
                .is_none_or(|p| is_socket(Path::new(p))),
            containerd_socket: is_socket(containerd_socket),
        }
    }
}

fn is_socket(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("the node's runtime is {0:?}: neither Docker (dockershim) nor containerd")]
    Unsupported(String),
    #[error("neither a Docker nor a containerd socket was found")]
    NoSocket,
}

/// The runtime a `containerRuntimeVersion` names.
pub fn kind_of_version(v: &str) -> Option<RuntimeKind> {
    match v.split_once("://").map(|(scheme, _)| scheme) {
        Some("docker") => Some(RuntimeKind::Docker),
        Some("containerd") => Some(RuntimeKind::Containerd),
        _ => None,
    }
}

/// The runtime to use and why (see the module docs).
pub fn decide(choice: RuntimeChoice, facts: &NodeFacts) -> Result<(RuntimeKind, String), SelectError> {
    match choice {
        RuntimeChoice::Docker => return Ok((RuntimeKind::Docker, "--runtime docker".into())),
        RuntimeChoice::Containerd => return Ok((RuntimeKind::Containerd, "--runtime containerd".into())),
        RuntimeChoice::Auto => {}
    }
    if let Some(v) = &facts.runtime_version {
        return match kind_of_version(v) {
            Some(k) => Ok((k, format!("the node reports containerRuntimeVersion {v}"))),
            None => Err(SelectError::Unsupported(v.clone())),
        };
    }
    match (facts.docker_socket, facts.containerd_socket) {
        (true, _) => Ok((RuntimeKind::Docker, "a Docker socket is present".into())),
        (false, true) => Ok((
            RuntimeKind::Containerd,
            "a containerd socket is present and no Docker socket".into(),
        )),
        (false, false) => Err(SelectError::NoSocket),
    }
}

/// The runtime the agent uses on this node.
#[derive(Debug, Clone)]
pub enum NodeRuntime {
    Docker(DockerRuntime),
    Containerd(ContainerdRuntime),
}

impl NodeRuntime {
    pub async fn connect(
        kind: RuntimeKind,
        docker: DockerConfig,
        containerd: ContainerdConfig,
    ) -> Result<Self, RuntimeError> {
        Ok(match kind {
            RuntimeKind::Docker => NodeRuntime::Docker(DockerRuntime::connect(docker).await?),
            RuntimeKind::Containerd => NodeRuntime::Containerd(ContainerdRuntime::connect(containerd).await?),
        })
    }

    pub fn kind(&self) -> RuntimeKind {
        match self {
            NodeRuntime::Docker(_) => RuntimeKind::Docker,
            NodeRuntime::Containerd(_) => RuntimeKind::Containerd,
        }
    }

    pub async fn proxies(&self) -> Result<Vec<ProxyRow>, RuntimeError> {
        match self {
            NodeRuntime::Docker(d) => d.proxies().await,
            NodeRuntime::Containerd(c) => c.proxies().await,
        }
    }

    /// A sidecar's log (containerd's log file interleaves stdout and stderr: all goes to `out`).
    pub async fn logs<O, E>(
        &self,
        id_prefix: &str,
        follow: bool,
        tail: Option<usize>,
        out: &mut O,
        err: &mut E,
    ) -> Result<(), OperatorError>
    where
        O: AsyncWrite + Unpin + Send,
        E: AsyncWrite + Unpin + Send,
    {
        match self {
            NodeRuntime::Docker(d) => d.logs(id_prefix, follow, tail, out, err).await,
            NodeRuntime::Containerd(c) => c.logs(id_prefix, follow, tail, out).await,
        }
    }

    pub async fn exec<O, E>(
        &self,
        id_prefix: &str,
        cmd: &[String],
        out: &mut O,
        err: &mut E,
    ) -> Result<i64, OperatorError>
    where
        O: AsyncWrite + Unpin + Send,
        E: AsyncWrite + Unpin + Send,
    {
        match self {
            NodeRuntime::Docker(d) => d.exec(id_prefix, cmd, out, err).await,
            NodeRuntime::Containerd(c) => c.exec(id_prefix, cmd, out, err).await,
        }
    }
}

impl ContainerRuntime for NodeRuntime {
    async fn sandbox(&self, pod_uid: &str) -> Result<Option<Sandbox>, RuntimeError> {
        match self {
            NodeRuntime::Docker(d) => d.sandbox(pod_uid).await,
            NodeRuntime::Containerd(c) => c.sandbox(pod_uid).await,
        }
    }

    async fn sidecars(&self) -> Result<Vec<Sidecar>, RuntimeError> {
        match self {
            NodeRuntime::Docker(d) => d.sidecars().await,
            NodeRuntime::Containerd(c) => c.sidecars().await,
        }
    }

    // Delegated like every other method: the trait's default (`Ok(None)`) would silently turn the
    // Docker runtime's fail-closed restarts into fail-open ones.
    async fn prepare(&self, spec: &SidecarSpec, sandbox: &Sandbox) -> Result<Option<Sidecar>, RuntimeError> {
        match self {
            NodeRuntime::Docker(d) => d.prepare(spec, sandbox).await,
            NodeRuntime::Containerd(c) => c.prepare(spec, sandbox).await,
        }
    }

    async fn start(&self, spec: &SidecarSpec, sandbox: &Sandbox) -> Result<Sidecar, RuntimeError> {
        match self {
            NodeRuntime::Docker(d) => d.start(spec, sandbox).await,
            NodeRuntime::Containerd(c) => c.start(spec, sandbox).await,
        }
    }

    async fn remove(&self, container_id: &str) -> Result<(), RuntimeError> {
        match self {
            NodeRuntime::Docker(d) => d.remove(container_id).await,
            NodeRuntime::Containerd(c) => c.remove(container_id).await,
        }
    }

    fn exits(&self) -> futures_util::stream::BoxStream<'static, String> {
        match self {
            NodeRuntime::Docker(d) => d.exits(),
            NodeRuntime::Containerd(c) => c.exits(),
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn facts(v: Option<&str>, docker: bool, containerd: bool) -> NodeFacts {
        NodeFacts {
            runtime_version: v.map(str::to_string),
            docker_socket: docker,
            containerd_socket: containerd,
        }
    }

    #[test]
    fn the_node_reported_runtime_wins_over_sockets() {
        let (k, why) = decide(
            RuntimeChoice::Auto,
            &facts(Some("containerd://1.6.20"), true, true),
        )
        .unwrap();
        assert_eq!(k, RuntimeKind::Containerd);
        assert!(why.contains("containerd://1.6.20"));
        let (k, _) = decide(
            RuntimeChoice::Auto,
            &facts(Some("docker://20.10.24"), false, true),
        )
        .unwrap();
        assert_eq!(k, RuntimeKind::Docker);
        assert_eq!(
            decide(RuntimeChoice::Auto, &facts(Some("cri-o://1.28"), true, true)),
            Err(SelectError::Unsupported("cri-o://1.28".into()))
        );
    }

    #[test]
    fn without_node_info_a_docker_socket_means_docker_else_containerd() {
        assert_eq!(
            decide(RuntimeChoice::Auto, &facts(None, true, true)).unwrap().0,
            RuntimeKind::Docker
        );
        assert_eq!(
            decide(RuntimeChoice::Auto, &facts(None, false, true)).unwrap().0,
            RuntimeKind::Containerd
        );
        assert!(matches!(
            decide(RuntimeChoice::Auto, &facts(None, false, false)),
            Err(SelectError::NoSocket)
        ));
    }

    #[test]
    fn an_explicit_choice_is_taken_as_is() {
        let none = facts(Some("docker://20.10"), true, false);
        assert_eq!(
            decide(RuntimeChoice::Containerd, &none).unwrap().0,
            RuntimeKind::Containerd
        );
        assert_eq!(
            decide(RuntimeChoice::Docker, &facts(None, false, false))
                .unwrap()
                .0,
            RuntimeKind::Docker
        );
        assert_eq!(kind_of_version("containerd"), None);
        assert_eq!(RuntimeKind::Containerd.to_string(), "containerd");
    }

    #[test]
    fn sockets_are_probed_on_disk_and_tcp_docker_hosts_count_as_present() {
        let f = NodeFacts::probe(
            "unix:///nonexistent/docker.sock",
            Path::new("/nonexistent/c.sock"),
            None,
        );
        assert!(!f.docker_socket && !f.containerd_socket);
        assert!(NodeFacts::probe("tcp://10.0.0.1:2375", Path::new("/"), None).docker_socket);
    }
}
