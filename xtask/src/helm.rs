//! `cargo xtask helm`: checks the chart `helm/traffic-manager` with `helm/tests/check_chart.py`,
//! which uses the Helm v4 SDK from PyPI (`helm-python-sdk`; no helm binary): render and strict lint
//! for the default values and every documented option, values.schema.json refusing bad values,
//! every rendered object validated strictly against the Kubernetes v1.20.2 OpenAPI schema recorded
//! from the real cluster, the gateway's Envoy bootstrap through `envoy --mode validate`, and
//! optionally `kubectl apply --dry-run=server` against a reachable cluster.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::{cmd, setup};

/// The e2e cluster's environment file (`KUBECONFIG`, `PATH` with its kubectl).
const CLUSTER_ENV_SH: &str = "/run/traffic-e2e/env.sh";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ServerDryRun {
    /// When `KUBECONFIG` is set and the API server answers.
    #[default]
    Auto,
    /// Required: fail when no API server is reachable.
    On,
    Off,
}

impl ServerDryRun {
    fn as_arg(self) -> &'static str {
        match self {
            ServerDryRun::Auto => "auto",
            ServerDryRun::On => "on",
            ServerDryRun::Off => "off",
        }
    }
}

#[derive(clap::Args, Debug, Default)]
pub struct Options {
    /// Also send every rendering to the API server with `kubectl apply --dry-run=server`.
    #[arg(long, value_enum, default_value = "auto")]
    pub server_dry_run: ServerDryRun,
}

fn script() -> PathBuf {
    cmd::workspace_root().join("helm/tests/check_chart.py")
}

/// The whole chart check (installs the venv's packages first).
pub fn run(o: Options) -> anyhow::Result<()> {
    let envoy = setup::python_venv()?;
    cmd::run(
        Command::new(setup::venv_dir().join("bin/python"))
            .arg(script())
            .args(["--server-dry-run", o.server_dry_run.as_arg()])
            .env("ENVOY_BIN", envoy),
    )
}

/// Only `kubectl apply --dry-run=server` of every value set, against the running e2e cluster
/// (its `KUBECONFIG` and kubectl taken from its env.sh when `KUBECONFIG` is unset).
pub fn server_dry_run_on_cluster() -> anyhow::Result<()> {
    setup::python_venv()?;
    let mut check = Command::new(setup::venv_dir().join("bin/python"));
    check.arg(script()).arg("--server-dry-run-only");
    if std::env::var_os("KUBECONFIG").is_none() {
        for (k, v) in cluster_env(Path::new(CLUSTER_ENV_SH))? {
            check.env(k, v);
        }
    }
    cmd::run(&mut check)
}

/// `KUBECONFIG` and `PATH` as the cluster's env.sh sets them.
fn cluster_env(env_sh: &Path) -> anyhow::Result<Vec<(String, String)>> {
    anyhow::ensure!(
        env_sh.is_file(),
        "KUBECONFIG is unset and {} does not exist",
        env_sh.display()
    );
    let out = cmd::output(
        Command::new("bash").args(["-c", &format!(". '{}' >/dev/null && env -0", env_sh.display())]),
    )
    .with_context(|| format!("sourcing {}", env_sh.display()))?;
    Ok(parse_env(&out, &["KUBECONFIG", "PATH"]))
}

/// The `keys` of NUL-separated `k=v` pairs (`env -0`).
fn parse_env(out: &str, keys: &[&str]) -> Vec<(String, String)> {
    out.split('\0')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| keys.contains(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_asked_variables_are_taken_from_env_output() {
        let out = "HOME=/root\0KUBECONFIG=/run/x/kubeconfig\0PATH=/a:/b\0X=a=b\0";
        assert_eq!(
            parse_env(out, &["KUBECONFIG", "PATH"]),
            vec![
                ("KUBECONFIG".to_string(), "/run/x/kubeconfig".to_string()),
                ("PATH".to_string(), "/a:/b".to_string()),
            ]
        );
    }

    #[test]
    fn the_check_script_is_in_the_repository() {
        assert!(script().is_file(), "{}", script().display());
    }
}
