//! Redirection of an enabled pod's outbound TCP into its co-located proxy.
//!
//! Two implementations of one [`Redirector`] trait: eBPF (cgroup programs on the pod's cgroup v2
//! directory, state pinned under `/sys/fs/bpf/traffic-manager`) and iptables in the pod's network
//! namespace (the fallback). `probe` decides which one a node can use.
//!
//! The contract every implementation keeps:
//! - `enable` is idempotent and is also "update": calling it again with other settings replaces them.
//! - `enable` either fully applies or leaves nothing behind (no half-applied redirect).
//! - `disable` restores the pod exactly (no programs, links, map entries, chains or rules left) and is
//!   idempotent (disabling an unknown pod is `Ok`).
//! - state survives the agent process: a new `Redirector` adopts what a previous one left (`list`).

pub mod ebpf;
pub mod iptables;
pub mod mounts;
pub mod probe;

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;

/// Which datapath serves a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Ebpf,
    Iptables,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Ebpf => "ebpf",
            Mode::Iptables => "iptables",
        })
    }
}

/// Stable identity of a redirected pod (the pod uid in Kubernetes; any unique name in tests).
/// Used as a file name under the bpffs pin directory, which refuses dots, so it is restricted to
/// `[A-Za-z0-9_-]` (a Kubernetes pod uid fits).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct PodKey(String);

impl PodKey {
    pub fn new(key: impl Into<String>) -> Result<Self, InvalidPodKey> {
        let key = key.into();
        let ok = !key.is_empty()
            && key.len() <= 128
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(key))
        } else {
            Err(InvalidPodKey(key))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid pod key {0:?}: use 1-128 characters from [A-Za-z0-9_-] (bpffs pin names cannot hold dots)")]
pub struct InvalidPodKey(pub String);

/// Per-pod redirect settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    /// The proxy's outbound listener in the pod netns (Envoy: 15001).
    pub proxy_port: u16,
    /// Destination ports that bypass the proxy (`traffic.port.N=direct`).
    pub direct_ports: BTreeSet<u16>,
    /// The proxy's uid (Envoy sidecar: 1337). iptables mode exempts it; eBPF mode excludes the proxy
    /// by cgroup instead, so an app running with this uid is still redirected.
    pub proxy_uid: u32,
    /// The proxy's gid (1337). iptables mode exempts it as well, as Istio does; eBPF mode ignores it.
    pub proxy_gid: u32,
    /// Ports the pod's applications may not bind (eBPF bind guard): the proxy's listeners.
    pub guarded_ports: BTreeSet<u16>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            proxy_port: 15001,
            direct_ports: BTreeSet::new(),
            proxy_uid: 1337,
            proxy_gid: 1337,
            guarded_ports: [15000, 15001, 8900].into_iter().collect(),
        }
    }
}

/// One pod to redirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRedirect {
    pub key: PodKey,
    /// The pod-level cgroup v2 directory (absolute path under the cgroup2 mount). eBPF mode attaches here.
    pub cgroup: PathBuf,
    /// A path to the pod's network namespace (`/proc/<pause pid>/ns/net` or `/run/netns/<name>`).
    pub netns: PathBuf,
    /// Cgroup v2 directories of the proxy itself, excluded from redirection even if they are
    /// below `cgroup` (defence in depth; a sidecar normally lives outside the pod cgroup).
    pub proxy_cgroups: Vec<PathBuf>,
    pub settings: Settings,
}

/// What a redirector reports about a pod it manages.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Redirected {
    pub key: PodKey,
    pub mode: Mode,
    pub settings: Settings,
}

/// The datapath seam: the agent talks to the kernel only through this.
pub trait Redirector: Send + Sync {
    fn mode(&self) -> Mode;
    /// Apply (or update) redirection for one pod. Idempotent; all or nothing.
    fn enable(&self, pod: &PodRedirect) -> Result<(), RedirectError>;
    /// Remove all redirection state for one pod. Idempotent. `netns` is needed by iptables mode and
    /// may be gone (the pod died): then there is nothing left to remove there.
    fn disable(&self, key: &PodKey) -> Result<(), RedirectError>;
    /// Pods this node currently redirects (adopted from pinned / recorded state).
    fn list(&self) -> Result<Vec<Redirected>, RedirectError>;
}

/// Typed errors of the datapath. Variants are added by the implementations (keep them specific).
#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("cgroup {path} does not exist or is not a cgroup v2 directory")]
    CgroupMissing { path: PathBuf },
    #[error("network namespace {path} is gone")]
    NetnsGone {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    InvalidKey(#[from] InvalidPodKey),
    #[error(transparent)]
    Iptables(#[from] iptables::IptablesError),
    /// eBPF datapath failures (boxed: the error carries aya's sources).
    #[error(transparent)]
    Ebpf(Box<ebpf::EbpfError>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_key_takes_a_pod_uid_and_refuses_what_bpffs_cannot_pin() {
        assert!(PodKey::new("5f0c3d2e-7a41-4c5e-9b1a-0d6c2e8f9a10").is_ok());
        assert!(PodKey::new("default_client").is_ok());
        for bad in ["", "client.default", "a/b", "x y", &"k".repeat(129)] {
            assert!(PodKey::new(bad).is_err(), "{bad:?}");
        }
    }
}
