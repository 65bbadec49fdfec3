//! Node-wide cleanup beyond single pods.
//!
//! - Mode switch: at start, redirect state of the mode the agent does *not* run (left by an agent
//!   that ran in the other mode) is removed, so a pod is never redirected twice; the reconciler
//!   then redirects it again in the current mode.
//! - Uninstall: `traffic-agent uninstall` (the chart's pre-delete hook) sets [`DRAIN_ANNOTATION`]
//!   on the agents' DaemonSet. Every agent then treats every pod as disabled (redirect off,
//!   sidecar removed, annotations cleared), removes its pinned programs and maps and the iptables
//!   state, marks its own pod with [`DRAINED_ANNOTATION`] and stays idle; the command waits for
//!   all of that. Only then are the agents deleted, so nothing is left on any node.
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use traffic_redirect::ebpf::EbpfRedirector;
use traffic_redirect::iptables::{Flavour, IptablesRedirector};
use traffic_redirect::{Mode, RedirectError, Redirector};

use crate::reconcile::{ANNOTATION_MODE, ANNOTATION_PROXY};

/// On the agents' DaemonSet: `"true"` tells every agent to drain its node.
pub const DRAIN_ANNOTATION: &str = "traffic.agent.drain";
/// On an agent's pod: `"true"` once its node holds nothing of ours any more.
pub const DRAINED_ANNOTATION: &str = "traffic.agent.drained";

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("--daemonset must be <namespace>/<name>, got {0:?}")]
    BadDaemonSet(String),
    #[error("redirect state of the other mode: {0}")]
    Redirect(#[from] RedirectError),
    #[error("removing the pinned eBPF objects under {path}: {source}")]
    Unpin {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The agents' DaemonSet, as `<namespace>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSetRef {
    pub namespace: String,
    pub name: String,
}

impl std::str::FromStr for DaemonSetRef {
    type Err = DrainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => Ok(Self {
                namespace: ns.to_string(),
                name: name.to_string(),
            }),
            _ => Err(DrainError::BadDaemonSet(s.to_string())),
        }
    }
}

impl std::fmt::Display for DaemonSetRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Whether `ds` (found among the watched DaemonSets) asks its agents to drain.
pub fn draining(daemon_sets: &[Arc<DaemonSet>], ds: &DaemonSetRef) -> bool {
    daemon_sets.iter().any(|d| {
        d.namespace().as_deref() == Some(ds.namespace.as_str())
            && d.name_any() == ds.name
            && d.annotations().get(DRAIN_ANNOTATION).map(String::as_str) == Some("true")
    })
}

/// Removes what the mode the agent does not run left on this node; returns how many pods had
/// iptables redirects, or whether eBPF pins were removed (as 1).
pub fn remove_other_mode(running: Mode, pin_root: &Path, iptables_state: &Path) -> Result<usize, DrainError> {
    match running {
        Mode::Ebpf => remove_iptables(iptables_state),
        Mode::Iptables => remove_pins(pin_root),
    }
}

/// Removes everything this project keeps on the node outside pods: pinned programs, maps and
/// links (any left pod links are detached first) and iptables redirects with their state files.
pub fn purge_node(pin_root: &Path, iptables_state: &Path) -> Result<(), DrainError> {
    remove_pins(pin_root)?;
    remove_iptables(iptables_state)?;
    // The state directory itself (empty now); absent is fine.
    let _ = std::fs::remove_dir(iptables_state);
    Ok(())
}

fn remove_pins(pin_root: &Path) -> Result<usize, DrainError> {
    if !pin_root.exists() {
        return Ok(0);
    }
    EbpfRedirector::purge_pin_root(pin_root).map_err(|source| DrainError::Unpin {
        path: pin_root.to_path_buf(),
        source,
    })?;
    tracing::info!(pin_root = %pin_root.display(), "removed pinned eBPF programs, maps and links");
    Ok(1)
}

fn remove_iptables(state: &Path) -> Result<usize, DrainError> {
    let has_records = std::fs::read_dir(state).is_ok_and(|rd| {
        rd.flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "json"))
    });
    if !has_records {
        // Nothing recorded: no iptables tools needed (an eBPF-only image may have none).
        return Ok(0);
    }
    // `disable` uses the flavour recorded per pod, so any flavour whose tools exist opens them.
    let ipt = IptablesRedirector::new(Flavour::Nft, state)
        .or_else(|_| IptablesRedirector::new(Flavour::Legacy, state))
        .map_err(RedirectError::from)?;
    let pods = ipt.list()?;
    for p in &pods {
        ipt.disable(&p.key)?;
        tracing::info!(pod = %p.key, "removed an iptables redirect left by the other mode");
    }
    Ok(pods.len())
}

/// How far an uninstall has got, from the agents' pods and every pod of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Progress {
    /// Agent pods that have not reported drained (name).
    pub agents_pending: Vec<String>,
    /// Pods still carrying our annotations (`namespace/name`).
    pub pods_annotated: Vec<String>,
}

impl Progress {
    pub fn done(&self) -> bool {
        self.agents_pending.is_empty() && self.pods_annotated.is_empty()
    }
}

fn has(annotations: &BTreeMap<String, String>, key: &str) -> bool {
    annotations.get(key).is_some_and(|v| !v.is_empty())
}

/// Pure: which agents still work and which pods are still annotated. Agent pods that are not
/// running (pending, failed) hold nothing and are not waited for.
pub fn progress(agent_pods: &[Pod], all_pods: &[Pod]) -> Progress {
    let agents_pending = agent_pods
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter(|p| p.annotations().get(DRAINED_ANNOTATION).map(String::as_str) != Some("true"))
        .map(|p| p.name_any())
        .collect();
    let pods_annotated = all_pods
        .iter()
        .filter(|p| has(p.annotations(), ANNOTATION_PROXY) || has(p.annotations(), ANNOTATION_MODE))
        .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
        .collect();
    Progress {
        agents_pending,
        pods_annotated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;
    use kube::api::ObjectMeta;

    fn meta(ns: &str, name: &str, annotations: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn pod(name: &str, phase: &str, annotations: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: meta("ns", name, annotations),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ds(ns: &str, name: &str, annotations: &[(&str, &str)]) -> Arc<DaemonSet> {
        Arc::new(DaemonSet {
            metadata: meta(ns, name, annotations),
            ..Default::default()
        })
    }

    #[test]
    fn a_daemonset_reference_is_namespace_slash_name() {
        let r: DaemonSetRef = "traffic-system/tm-agent".parse().expect("valid");
        assert_eq!(
            (r.namespace.as_str(), r.name.as_str()),
            ("traffic-system", "tm-agent")
        );
        for bad in ["", "agent", "/agent", "ns/", "a/b/c"] {
            assert!(bad.parse::<DaemonSetRef>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_the_agents_own_daemonset_with_the_annotation_true_drains() {
        let me: DaemonSetRef = "sys/agent".parse().expect("valid");
        assert!(draining(
            &[ds("sys", "agent", &[(DRAIN_ANNOTATION, "true")])],
            &me
        ));
        assert!(!draining(
            &[ds("sys", "agent", &[(DRAIN_ANNOTATION, "false")])],
            &me
        ));
        assert!(!draining(&[ds("sys", "agent", &[])], &me));
        assert!(!draining(
            &[ds("other", "agent", &[(DRAIN_ANNOTATION, "true")])],
            &me
        ));
        assert!(!draining(&[], &me));
    }

    #[test]
    fn uninstall_waits_for_running_agents_and_annotated_pods_only() {
        let agents = [
            pod("agent-a", "Running", &[(DRAINED_ANNOTATION, "true")]),
            pod("agent-b", "Running", &[]),
            pod("agent-c", "Pending", &[]),
        ];
        let pods = [
            pod(
                "app-1",
                "Running",
                &[(ANNOTATION_PROXY, "abc"), (ANNOTATION_MODE, "ebpf")],
            ),
            pod("app-2", "Running", &[(ANNOTATION_PROXY, "")]),
            pod("app-3", "Running", &[]),
        ];
        let p = progress(&agents, &pods);
        assert_eq!(p.agents_pending, vec!["agent-b".to_string()]);
        assert_eq!(p.pods_annotated, vec!["ns/app-1".to_string()]);
        assert!(!p.done());
        let agents = [pod("agent-a", "Running", &[(DRAINED_ANNOTATION, "true")])];
        assert!(progress(&agents, &[pods[1].clone(), pods[2].clone()]).done());
    }

    #[test]
    fn an_iptables_state_directory_without_records_needs_no_iptables_tools() {
        let dir = std::env::temp_dir().join(format!("traffic-drain-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("notes.txt"), "not a record").expect("write");
        assert_eq!(remove_iptables(&dir).ok(), Some(0));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn purging_a_node_without_any_state_is_fine() {
        let dir = std::env::temp_dir().join(format!("traffic-drain-test-{}", std::process::id()));
        purge_node(&dir.join("pins"), &dir.join("state")).expect("nothing to remove");
        assert_eq!(
            remove_other_mode(Mode::Iptables, &dir.join("pins"), &dir.join("state")).ok(),
            Some(0)
        );
        assert_eq!(
            remove_other_mode(Mode::Ebpf, &dir.join("pins"), &dir.join("state")).ok(),
            Some(0)
        );
    }
}
