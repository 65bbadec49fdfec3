//! `cargo xtask helm`: checks the chart `helm/traffic-manager` with `helm/tests/check_chart.py`,
//! which uses the Helm v4 SDK from PyPI (`helm-python-sdk`; no helm binary): render and strict lint
//! for the default values and every documented option, values.schema.json refusing bad values,
//! every rendered object validated strictly against the Kubernetes v1.20.2 OpenAPI schema recorded
//! from the real cluster, the gateway's Envoy bootstrap through `envoy --mode validate`, and
//! optionally `kubectl apply --dry-run=server` against a reachable cluster.
use std::path::PathBuf;
use std::process::Command;

use crate::{cluster, cmd, setup};

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
        // `KUBECONFIG` and `PATH` (kubectl) as the cluster's env.sh sets them.
        for (k, v) in cluster::env_vars()? {
            if matches!(k.as_str(), "KUBECONFIG" | "PATH") {
                check.env(k, v);
            }
        }
    }
    cmd::run(&mut check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_script_is_in_the_repository() {
        assert!(script().is_file(), "{}", script().display());
    }
}
