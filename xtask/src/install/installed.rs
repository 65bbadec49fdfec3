//! The applied chart and its cleanup: the pre-delete hook, deletion, diagnostics.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use serde_json::Value;
use traffic_tests::install as fixtures;

use super::{delete_objects, kubectl};

/// The applied chart; deleted on drop (after a best-effort hook run when the uninstall did not
/// happen), with the suite's namespaces.
pub(super) struct Installed {
    pub(super) namespace: String,
    pub(super) main_file: PathBuf,
    pub(super) hooks_file: PathBuf,
    pub(super) hooks: Vec<Value>,
    pub(super) uninstalled: bool,
}

impl Installed {
    fn job_name(&self) -> Option<String> {
        self.hooks.iter().find_map(|o| {
            (o.get("kind").and_then(Value::as_str) == Some("Job"))
                .then(|| o.pointer("/metadata/name")?.as_str().map(str::to_string))
                .flatten()
        })
    }

    /// The chart's pre-delete hook: apply its objects, wait for the Job (`traffic-agent
    /// uninstall`: every agent drains its node) to complete.
    pub(super) fn run_uninstall_hook(&self, timeout: Duration) -> anyhow::Result<()> {
        let Some(job) = self.job_name() else {
            bail!("the chart renders no pre-delete hook Job (agent.uninstall.enabled?)");
        };
        kubectl(
            &["apply", "-f", &self.hooks_file.to_string_lossy()],
            Duration::from_secs(60),
        )?;
        let res = kubectl(
            &[
                "-n",
                &self.namespace,
                "wait",
                "--for=condition=complete",
                &format!("job/{job}"),
                &format!("--timeout={}s", timeout.as_secs()),
            ],
            timeout + Duration::from_secs(30),
        );
        if res.is_err() {
            let _ = kubectl(
                &["-n", &self.namespace, "logs", &format!("job/{job}"), "--tail=60"],
                Duration::from_secs(30),
            )
            .map(|l| eprintln!("=== uninstall Job log:\n{l}"));
        }
        res.map(drop)
    }

    pub(super) fn delete_chart(&self) -> anyhow::Result<()> {
        delete_objects(&self.main_file)
    }

    pub(super) fn dump_diagnostics(&self) {
        for args in [
            vec![
                "-n",
                &self.namespace,
                "get",
                "pods,svc,ds,deploy,jobs",
                "-o",
                "wide",
            ],
            vec![
                "-n",
                &self.namespace,
                "logs",
                "-l",
                "app.kubernetes.io/instance=traffic-manager",
                "--all-containers",
                "--prefix",
                "--tail=40",
                "--max-log-requests=10",
            ],
        ] {
            match kubectl(&args, Duration::from_secs(60)) {
                Ok(out) => eprintln!("{out}"),
                Err(e) => eprintln!("{e:#}"),
            }
        }
        let _ = kubectl(
            &["-n", &self.namespace, "get", "events", "--sort-by=.lastTimestamp"],
            Duration::from_secs(30),
        )
        .map(|e| eprintln!("{}", e.lines().rev().take(30).collect::<Vec<_>>().join("\n")));
    }
}

pub(super) fn sweep_suite_namespaces() {
    let _ = kubectl(
        &[
            "delete",
            "namespace",
            "-l",
            &format!("{}=true", fixtures::NAMESPACE_LABEL),
            "--wait=false",
        ],
        Duration::from_secs(60),
    );
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.uninstalled {
            eprintln!("e2e-install: cleaning up: running the uninstall hook first (best effort)");
            if let Err(e) = self.run_uninstall_hook(Duration::from_secs(90)) {
                eprintln!("e2e-install: uninstall hook failed: {e:#}");
            }
        }
        let _ = kubectl(
            &[
                "delete",
                "--ignore-not-found",
                "--wait=false",
                "-f",
                &self.hooks_file.to_string_lossy(),
            ],
            Duration::from_secs(60),
        );
        if let Err(e) = self.delete_chart() {
            eprintln!("e2e-install: deleting the chart: {e:#}");
        }
        sweep_suite_namespaces();
        let _ = kubectl(
            &[
                "delete",
                "namespace",
                &self.namespace,
                "--ignore-not-found",
                "--wait=false",
            ],
            Duration::from_secs(60),
        );
    }
}
