//! `--runtime` and where the runtimes listen (`run`, `proxies`, `logs`, `exec`, `check`): which
//! runtime the node's pods run on, and the connected [`NodeRuntime`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use tracing::info;
use traffic_sidecar::containerd::{self, ContainerdConfig};
use traffic_sidecar::docker::{DockerConfig, DEFAULT_DOCKER_HOST};
use traffic_sidecar::select::{self, NodeFacts, NodeRuntime, RuntimeChoice, RuntimeKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeFlag {
    /// The node's reported runtime (status.nodeInfo.containerRuntimeVersion), else the sockets.
    Auto,
    /// Docker Engine API (kubelet's dockershim).
    Docker,
    /// containerd's own API (kubelet on containerd's CRI: EKS, GKE, AKS, k3s, kubeadm).
    Containerd,
}

#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// Container runtime the node's pods run on.
    #[arg(long, env = "TRAFFIC_AGENT_RUNTIME", value_enum, default_value = "auto")]
    pub runtime: RuntimeFlag,
    /// Docker API endpoint (dockershim nodes).
    #[arg(long, env = "DOCKER_HOST", default_value = DEFAULT_DOCKER_HOST)]
    pub docker_host: String,
    /// containerd's socket (k3s: /run/k3s/containerd/containerd.sock).
    #[arg(long, env = "TRAFFIC_CONTAINERD_SOCKET", default_value = containerd::DEFAULT_SOCKET)]
    pub containerd_socket: PathBuf,
    /// containerd namespace of the sidecars (kubelet's CRI only looks at k8s.io).
    #[arg(long, env = "TRAFFIC_CONTAINERD_NAMESPACE", default_value = containerd::DEFAULT_NAMESPACE)]
    pub containerd_namespace: String,
    /// Host directory of the sidecars' bootstrap and log files (containerd's shim opens them:
    /// mount it into the agent at the same path).
    #[arg(long, env = "TRAFFIC_CONTAINERD_STATE_DIR", default_value = containerd::DEFAULT_STATE_DIR)]
    pub containerd_state_dir: PathBuf,
    /// The CRI plugin's root, whose sandboxes/<id>/resolv.conf and hosts the sidecars get
    /// (k3s: /var/lib/rancher/k3s/agent/containerd/io.containerd.grpc.v1.cri).
    #[arg(long, env = "TRAFFIC_CONTAINERD_CRI_ROOT", default_value = containerd::DEFAULT_CRI_ROOT)]
    pub containerd_cri_root: PathBuf,
}

impl RuntimeArgs {
    pub fn facts(&self, runtime_version: Option<String>) -> NodeFacts {
        NodeFacts::probe(&self.docker_host, &self.containerd_socket, runtime_version)
    }

    /// The runtime to use and why.
    pub fn decide(&self, runtime_version: Option<String>) -> anyhow::Result<(RuntimeKind, String)> {
        let choice = match self.runtime {
            RuntimeFlag::Auto => RuntimeChoice::Auto,
            RuntimeFlag::Docker => RuntimeChoice::Docker,
            RuntimeFlag::Containerd => RuntimeChoice::Containerd,
        };
        select::decide(choice, &self.facts(runtime_version)).with_context(|| {
            format!(
                "cannot tell the node's container runtime (Docker at {}, containerd at {}): set --runtime",
                self.docker_host,
                self.containerd_socket.display()
            )
        })
    }

    /// Connects to the runtime [`Self::decide`] picks.
    pub async fn connect(
        &self,
        runtime_version: Option<String>,
        ready_timeout: Option<Duration>,
    ) -> anyhow::Result<NodeRuntime> {
        let (kind, reason) = self.decide(runtime_version)?;
        info!(runtime = %kind, %reason, "container runtime");
        let mut docker = DockerConfig::from_env();
        docker.host = self.docker_host.clone();
        let mut containerd = ContainerdConfig {
            socket: self.containerd_socket.clone(),
            namespace: self.containerd_namespace.clone(),
            state_dir: self.containerd_state_dir.clone(),
            cri_root: Some(self.containerd_cri_root.clone()),
            ..ContainerdConfig::default()
        };
        if let Some(t) = ready_timeout {
            docker.ready_timeout = t;
            containerd.ready_timeout = t;
        }
        let at = match kind {
            RuntimeKind::Docker => self.docker_host.clone(),
            RuntimeKind::Containerd => self.containerd_socket.display().to_string(),
        };
        NodeRuntime::connect(kind, docker, containerd)
            .await
            .with_context(|| format!("cannot connect to {kind} at {at}"))
    }
}

/// The node's `status.nodeInfo.containerRuntimeVersion`; `None` (logged) when it cannot be read.
pub async fn node_runtime_version(client: &kube::Client, node: &str) -> Option<String> {
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    match nodes.get(node).await {
        Ok(n) => n
            .status
            .and_then(|s| s.node_info)
            .map(|i| i.container_runtime_version)
            .filter(|v| !v.is_empty()),
        Err(error) => {
            tracing::warn!(%error, %node, "cannot read the node's runtime; deciding by sockets");
            None
        }
    }
}
