//! The real single-node Kubernetes the end-to-end suites run on: `cluster-up.sh` /
//! `cluster-down.sh` of the machine's shared e2e kit (`../shared/e2e` next to the repository, or
//! `TRAFFIC_E2E_KIT`). `cargo xtask test` brings it up when it is not running, runs the e2e
//! suites on it, and brings it down again (also on failure); a cluster that was already running
//! is used and left running.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use traffic_tests::e2e::{cluster_env, CLUSTER_ENV_SH as ENV_SH};

use crate::cmd;

/// The directory holding `cluster-up.sh`, if this machine has the kit.
pub fn kit() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("TRAFFIC_E2E_KIT") {
        candidates.push(PathBuf::from(dir));
    }
    let root = cmd::workspace_root();
    if let Some(parent) = root.parent() {
        candidates.push(parent.join("shared/e2e"));
    }
    candidates.push(PathBuf::from("/work/shared/e2e"));
    candidates.into_iter().find(|d| d.join("cluster-up.sh").is_file())
}

/// Whether a cluster of the kit is running: its `env.sh` exists and its API server answers
/// `/readyz` (a bare TCP connect is not enough: a sandbox proxy may accept any address).
fn cluster_running() -> bool {
    if !Path::new(ENV_SH).is_file() {
        return false;
    }
    Command::new("bash")
        .args([
            "-c",
            &format!(". {ENV_SH} >/dev/null 2>&1 && kubectl --request-timeout=5s get --raw /readyz"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The variables the running cluster's env.sh exports that the tasks use: `KUBECONFIG`,
/// `DOCKER_HOST`, `PATH` (kubectl, docker), `ENVOY_BIN` and every `TRAFFIC_E2E_*`.
pub fn env_vars() -> anyhow::Result<Vec<(String, String)>> {
    anyhow::ensure!(
        Path::new(ENV_SH).is_file(),
        "{ENV_SH} does not exist: bring the cluster up (cluster-up.sh of the e2e kit) or export \
         KUBECONFIG and DOCKER_HOST"
    );
    cluster_env(Path::new(ENV_SH))
}

/// Imports [`env_vars`] into this process unless every variable of `needed` is set already.
/// Call it before any thread starts.
pub fn import_env(needed: &[&str]) -> anyhow::Result<()> {
    if needed.iter().all(|k| std::env::var_os(k).is_some()) {
        return Ok(());
    }
    for (k, v) in env_vars()? {
        // Single-threaded at this point (the caller's contract).
        std::env::set_var(k, v);
    }
    Ok(())
}

/// A running cluster; brought down on drop when this process brought it up.
pub struct Cluster {
    kit: PathBuf,
    owned: bool,
}

impl Cluster {
    /// Brings the cluster up (idempotent; a partly dead cluster is restarted by the script).
    pub fn up(kit: &Path) -> anyhow::Result<Self> {
        let was_up = cluster_running();
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
