//! The real single-node Kubernetes the end-to-end suites run on: `cluster-up.sh` /
//! `cluster-down.sh` of the machine's shared e2e kit (`../shared/e2e` next to the repository, or
//! `TRAFFIC_E2E_KIT`). `cargo xtask test` brings it up when it is not running, runs the e2e
//! suites on it, and brings it down again (also on failure); a cluster that was already running
//! is used and left running.
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::cmd;

/// The API server address `cluster-up.sh` uses by default (`TRAFFIC_E2E_NODE_IP:TRAFFIC_E2E_API_PORT`).
const DEFAULT_API: &str = "10.201.0.1:6443";

/// The directory holding `cluster-up.sh`, if this machine has the kit.
pub fn kit() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("TRAFFIC_E2E_KIT") {
        candidates.push(PathBuf::from(dir));
    }
    let root = cmd::workspace_root();
    candidates.push(root.join("../shared/e2e"));
    if let Some(parent) = root.parent() {
        candidates.push(parent.join("shared/e2e"));
    }
    candidates.push(PathBuf::from("/work/shared/e2e"));
    candidates.into_iter().find(|d| d.join("cluster-up.sh").is_file())
}

fn api_reachable() -> bool {
    let addr = std::env::var("TRAFFIC_E2E_NODE_IP")
        .ok()
        .and_then(|ip| format!("{ip}:6443").parse::<SocketAddr>().ok())
        .or_else(|| DEFAULT_API.parse().ok());
    addr.is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
}

/// A running cluster; brought down on drop when this process brought it up.
pub struct Cluster {
    kit: PathBuf,
    owned: bool,
}

impl Cluster {
    /// Brings the cluster up (idempotent; a partly dead cluster is restarted by the script).
    pub fn up(kit: &Path) -> anyhow::Result<Self> {
        let was_up = api_reachable();
        let mut cluster = Self {
            kit: kit.to_path_buf(),
            owned: !was_up,
        };
        if let Err(e) = cmd::run(&mut Command::new(kit.join("cluster-up.sh"))) {
            // The script may have started part of it: take that down too.
            cluster.owned = true;
            return Err(e);
        }
        if was_up {
            eprintln!("e2e: using the cluster that was already running (left running afterwards)");
        }
        Ok(cluster)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.owned {
            if let Err(e) = cmd::run(&mut Command::new(self.kit.join("cluster-down.sh"))) {
                eprintln!("e2e: cluster-down failed: {e:#}");
            }
        }
    }
}
