//! What the agent leaves on the node, read by `cargo xtask e2e-install` after an uninstall (and
//! before it, to prove that the reading sees the agent's work): sidecar containers, pinned BPF
//! objects, our iptables rules in pod network namespaces, annotated pods; and the `traffic-agent
//! run` processes of other agents on the node.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::e2e::{netns_iptables_saves, run_timeout};
use crate::install::{IPTABLES_COMMENT, MODE_ANNOTATION, PROXY_ANNOTATION};

/// Pods (`<ns>/<name>`) of a `kubectl get pods -A -o json` list that still carry an agent
/// annotation: a non-empty `traffic.envoy.proxy` or any `traffic.redirect.mode` (the agent clears
/// the first to "" and removes the second).
pub fn annotated_pods(pods: &Value) -> Vec<String> {
    let Some(items) = pods.get("items").and_then(Value::as_array) else {
        return Vec::new();
    };
    items
        .iter()
        .filter(|p| {
            let a = p.pointer("/metadata/annotations");
            let proxy = a
                .and_then(|a| a.get(PROXY_ANNOTATION))
                .and_then(Value::as_str)
                .is_some_and(|v| !v.is_empty());
            let mode = a.and_then(|a| a.get(MODE_ANNOTATION)).is_some();
            proxy || mode
        })
        .map(|p| {
            let s = |k: &str| p.pointer(k).and_then(Value::as_str).unwrap_or("?").to_string();
            format!("{}/{}", s("/metadata/namespace"), s("/metadata/name"))
        })
        .collect()
}

/// The agent's rules in `iptables-save` output (lines with a `traffic-manager:` comment or our
/// chain; kube-proxy's comments name Services, e.g. `ns/traffic-manager-control:xds`, not this).
pub fn our_iptables_rules(save: &str) -> Vec<String> {
    save.lines()
        .filter(|l| l.contains(IPTABLES_COMMENT) || l.contains(crate::e2e::IPTABLES_CHAIN))
        .map(str::to_string)
        .collect()
}

/// Whether a `/proc/<pid>/cmdline` (NUL-separated) is a `traffic-agent run` process.
pub fn is_agent_run(cmdline: &[u8]) -> bool {
    let mut args = cmdline.split(|b| *b == 0).filter(|a| !a.is_empty());
    let Some(bin) = args.next() else { return false };
    let bin = String::from_utf8_lossy(bin);
    let is_agent = bin.rsplit('/').next() == Some("traffic-agent");
    is_agent && args.next() == Some(b"run".as_slice())
}

/// What an uninstall left on the node; [`Leftovers::is_empty`] when nothing.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// What of ours the runtime holds (containers with the sidecar label; on containerd also
    /// tasks, active snapshots and leases in our namespace), one line each.
    pub sidecars: Vec<String>,
    /// Entries under the pin root.
    pub bpf_pins: Vec<PathBuf>,
    /// `<pod sandbox>: <rule>` of our iptables rules in pod network namespaces.
    pub iptables: Vec<String>,
    /// Pods still carrying an agent annotation.
    pub annotated_pods: Vec<String>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.sidecars.is_empty()
            && self.bpf_pins.is_empty()
            && self.iptables.is_empty()
            && self.annotated_pods.is_empty()
    }
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = run_timeout(cmd, Duration::from_secs(60))?;
    anyhow::ensure!(out.ok, "{cmd:?}: {}", out.stderr.trim());
    Ok(out.stdout)
}

/// Reads the node (the runtime, bpffs, every pod sandbox's netns, the API) for what an agent
/// leaves: needs root, `KUBECONFIG` and the runtime's variables (`DOCKER_HOST`, or
/// `TRAFFIC_E2E_RUNTIME=containerd` and its socket) in the environment.
pub fn node_leftovers(pin_root: &Path) -> anyhow::Result<Leftovers> {
    let runtime = crate::node_runtime::NodeRuntime::from_env()?;
    let mut left = Leftovers {
        sidecars: runtime.ours()?,
        ..Leftovers::default()
    };
    if let Ok(entries) = std::fs::read_dir(pin_root) {
        left.bpf_pins = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    }
    for (pid, pod) in runtime.sandboxes()? {
        for (save, rules) in netns_iptables_saves(&pid.to_string(), &[])? {
            left.iptables.extend(
                our_iptables_rules(&rules)
                    .into_iter()
                    .map(|r| format!("{pod} ({save}): {r}")),
            );
        }
    }
    let pods: Value = serde_json::from_str(&output(
        Command::new("kubectl").args(["get", "pods", "-A", "-o", "json"]),
    )?)?;
    left.annotated_pods = annotated_pods(&pods);
    Ok(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pods_with_a_live_annotation_count_as_annotated() {
        let pods = serde_json::json!({"items": [
            {"metadata": {"namespace": "a", "name": "cleared", "annotations": {"traffic.envoy.proxy": ""}}},
            {"metadata": {"namespace": "a", "name": "proxy", "annotations": {"traffic.envoy.proxy": "abc"}}},
            {"metadata": {"namespace": "b", "name": "mode", "annotations": {"traffic.redirect.mode": "ebpf"}}},
            {"metadata": {"namespace": "b", "name": "none"}},
        ]});
        assert_eq!(annotated_pods(&pods), vec!["a/proxy", "b/mode"]);
    }

    #[test]
    fn our_iptables_rules_are_found_by_comment_or_chain() {
        let save = "*nat\n:TRAFFIC_OUTPUT - [0:0]\n-A OUTPUT -p tcp -m comment --comment \"traffic-manager:x:jump\" -j TRAFFIC_OUTPUT\n-A KUBE-X -j ACCEPT\nCOMMIT\n";
        assert_eq!(our_iptables_rules(save).len(), 2);
        assert!(our_iptables_rules("*nat\nCOMMIT\n").is_empty());
        let kube = "-A KUBE-SERVICES -d 10.96.0.9/32 -p tcp -m comment --comment \"traffic-install/traffic-manager-control:xds cluster IP\" -j KUBE-SVC-X\n";
        assert!(our_iptables_rules(kube).is_empty());
    }

    #[test]
    fn agent_run_processes_are_recognized_by_binary_and_subcommand() {
        assert!(is_agent_run(b"/usr/local/bin/traffic-agent\0run\0"));
        assert!(is_agent_run(
            b"target/debug/traffic-agent\0run\0--redirect-mode\0ebpf\0"
        ));
        assert!(!is_agent_run(b"/usr/local/bin/traffic-agent\0uninstall\0"));
        assert!(!is_agent_run(b"pgrep\0-f\0traffic-agent run\0"));
        assert!(!is_agent_run(b""));
    }
}
