//! The real single-node Kubernetes the end-to-end suites run on: `cluster-up.sh` /
//! `cluster-down.sh` of the machine's shared e2e kit (`../shared/e2e` next to the repository, or
//! `TRAFFIC_E2E_KIT`). `cargo xtask test` brings it up when it is not running, runs the e2e
//! suites on it, and brings it down again (also on failure); a cluster that was already running
//! is used and left running, in the runtime mode it had (`TRAFFIC_E2E_RUNTIME`: docker or
//! containerd; a `cluster-up` in the other mode replaces the running cluster).
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use traffic_tests::e2e::{cluster_env, CLUSTER_ENV_SH as ENV_SH};
use traffic_tests::node_runtime::{RuntimeKind, ENV_RUNTIME};

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

/// Variables of env.sh that depend on the cluster's runtime mode: always taken from the running
/// cluster's env.sh (an environment sourced before a mode switch would name the other mode).
const RUNTIME_VARS: [&str; 3] = [
    ENV_RUNTIME,
    "TRAFFIC_E2E_CONTAINERD_SOCK",
    "TRAFFIC_E2E_CONTAINERD_NAMESPACE",
];

/// The running cluster's runtime mode, with its runtime variables imported into this process
/// (set, or removed when the mode has none). Call it before any thread starts.
pub fn runtime() -> anyhow::Result<RuntimeKind> {
    let vars = env_vars()?;
    for k in RUNTIME_VARS {
        match vars.iter().find(|(n, _)| n == k) {
            // Single-threaded at this point (the caller's contract).
            Some((_, v)) => std::env::set_var(k, v),
            None => std::env::remove_var(k),
        }
    }
    match vars.iter().find(|(n, _)| n == ENV_RUNTIME) {
        Some((_, v)) => RuntimeKind::parse(v),
        None => Ok(RuntimeKind::Docker),
    }
}

/// The running cluster's runtime; fails when `wanted` names another one (the e2e tasks use the
/// cluster as it is: bring it up in the mode wanted first).
pub fn require_runtime(wanted: Option<RuntimeKind>) -> anyhow::Result<RuntimeKind> {
    let running = runtime()?;
    if let Some(w) = wanted {
        anyhow::ensure!(
            w == running,
            "--runtime {w} but the running cluster's runtime is {running}: bring it up with \
             `TRAFFIC_E2E_RUNTIME={w} cluster-up.sh` first"
        );
    }
    eprintln!("e2e: the cluster's runtime is {running}");
    Ok(running)
}

/// The cluster across the runtime passes of `cargo xtask test`: each [`Session::up`] brings it up
/// in one mode (replacing a cluster of the other mode); on drop the machine gets back what it had:
/// the cluster in the mode it was running in, or none.
pub struct Session {
    kit: PathBuf,
    /// The mode of the cluster that was running before, if any.
    before: Option<RuntimeKind>,
    current: Option<RuntimeKind>,
}

impl Session {
    pub fn new(kit: &Path) -> Self {
        let before = cluster_running().then(|| runtime().ok()).flatten();
        Session {
            kit: kit.to_path_buf(),
            before,
            current: before,
        }
    }

    /// `cluster-up.sh` in mode `kind` (idempotent when that mode runs), its env imported.
    pub fn up(&mut self, kind: RuntimeKind) -> anyhow::Result<()> {
        // Whatever happens now, the cluster may be in any state: drop restores or downs it.
        self.current = Some(kind);
        cmd::run(Command::new(self.kit.join("cluster-up.sh")).env(ENV_RUNTIME, kind.as_str()))?;
        for (k, v) in env_vars()? {
            // Single-threaded between the passes (the caller's contract).
            std::env::set_var(k, v);
        }
        let running = runtime()?;
        anyhow::ensure!(running == kind, "cluster-up.sh brought up {running}, not {kind}");
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let result = match self.before {
            Some(kind) if self.current == Some(kind) => Ok(()),
            Some(kind) => {
                eprintln!("e2e: bringing the cluster back to its {kind} mode");
                cmd::run(Command::new(self.kit.join("cluster-up.sh")).env(ENV_RUNTIME, kind.as_str()))
            }
            None if self.current.is_some() => cmd::run(&mut Command::new(self.kit.join("cluster-down.sh"))),
            None => Ok(()),
        };
        if let Err(e) = result {
            eprintln!("e2e: restoring the cluster failed: {e:#}");
        }
    }
}
