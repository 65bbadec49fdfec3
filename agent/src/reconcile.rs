//! The reconciler (pure): from what the agent wants per pod and what it observes on the node,
//! compute one ordered plan per pod.
//!
//! Ordering rules (docs/architecture.md, "Sidecar lifecycle"):
//! - enable: sidecar started and ready -> its listeners arrived (first LDS update accepted) ->
//!   redirect enabled -> pod annotated. A pod is never redirected to a sidecar that has no
//!   listener yet;
//! - disable or pod gone: redirect removed FIRST -> sidecar removed -> annotations cleared;
//! - when the sidecar of a redirected pod exits, [`SidecarFailure`] decides:
//!   - `Closed` (default, as Istio): the redirect stays, so the pod's connections are refused
//!     (nothing listens on the proxy port) until the new sidecar has its listeners; a `block`
//!     policy or any other setting is never lifted. In eBPF mode the replacement is prepared
//!     first (created, not started) and the redirect's proxy exclusion re-pointed at its cgroup,
//!     so the new Envoy's own connections are not redirected and it may bind its ports;
//!   - `Open` (the previous behaviour): the redirect is removed, the sidecar restarted and the
//!     redirect enabled again; connections bypass the proxy for the restart;
//! - never two sidecars for one pod; orphans (sidecars or redirects of pods that no longer exist)
//!   are removed; changed settings are applied by enabling again (`enable` is update).
//!
//! The executor runs a plan's steps in order and stops at the first failure, then runs the plan's
//! `on_failure` steps; a later reconcile retries.

use std::collections::{BTreeMap, BTreeSet};

use traffic_redirect::{Mode, PodKey, Redirected, Settings};
use traffic_sidecar::{PodRef, Sidecar, SidecarState};

use crate::desired::DesiredPod;

/// What an enabled pod's connections do while its sidecar is dead and being replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SidecarFailure {
    /// The redirect stays: connections are refused until the new sidecar is configured.
    #[default]
    Closed,
    /// The redirect is removed: connections bypass the proxy (and every policy) meanwhile.
    Open,
}

impl std::str::FromStr for SidecarFailure {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "closed" => Ok(Self::Closed),
            "open" => Ok(Self::Open),
            _ => Err(format!("{s:?} is not a sidecar failure mode (closed | open)")),
        }
    }
}

impl std::fmt::Display for SidecarFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Closed => "closed",
            Self::Open => "open",
        })
    }
}

/// Annotation with the sidecar's container id (empty when removed).
pub const ANNOTATION_PROXY: &str = "traffic.envoy.proxy";
/// Annotation with the redirect mode (`ebpf` / `iptables`).
pub const ANNOTATION_MODE: &str = "traffic.redirect.mode";

/// The agent's annotations as currently set on a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Annotations {
    pub proxy: Option<String>,
    pub mode: Option<String>,
}

impl Annotations {
    /// Read them from a pod's annotation map.
    pub fn from_map(map: Option<&BTreeMap<String, String>>) -> Self {
        let get = |k: &str| map.and_then(|m| m.get(k)).cloned();
        Annotations {
            proxy: get(ANNOTATION_PROXY),
            mode: get(ANNOTATION_MODE),
        }
    }
    /// True when nothing of ours is left (absent or an empty proxy annotation).
    pub fn is_clear(&self) -> bool {
        self.proxy.as_deref().unwrap_or("").is_empty() && self.mode.is_none()
    }
}

/// What the node looks like now.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Every sidecar the runtime reports (any state).
    pub sidecars: Vec<Sidecar>,
    /// Every pod the redirector redirects.
    pub redirected: Vec<Redirected>,
    /// pod uid -> our annotations, for pods that exist.
    pub annotations: BTreeMap<String, Annotations>,
}

/// One step of a pod's plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create the replacement sidecar without starting it, and point the (kept) redirect's proxy
    /// exclusion at its cgroup with these settings (eBPF fail-closed restart).
    PrepareSidecar {
        settings: Settings,
    },
    /// Start a sidecar and wait until it is ready. `restart`: it replaces one that died.
    StartSidecar {
        restart: bool,
    },
    /// Wait until the sidecar's Envoy has an active listener on `port` (its first LDS update).
    AwaitListeners {
        port: u16,
    },
    /// Enable (or update) the redirect to the pod's running sidecar (the one kept or just started).
    EnableRedirect {
        settings: Settings,
    },
    /// Annotate the pod with its sidecar's container id and the redirect mode.
    Annotate {
        mode: Mode,
    },
    DisableRedirect,
    RemoveSidecar {
        container_id: String,
    },
    /// Set `traffic.envoy.proxy` to empty and remove `traffic.redirect.mode`.
    ClearAnnotations,
}

/// Ordered steps for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub pod_uid: String,
    /// Known when the pod exists (orphans have only a uid, or the sidecar's labels).
    pub pod: Option<PodRef>,
    /// The running sidecar kept for the pod, if any (EnableRedirect/Annotate use it unless a
    /// StartSidecar step replaced it).
    pub sidecar: Option<Sidecar>,
    pub steps: Vec<Step>,
    pub on_failure: Vec<Step>,
}

/// Compute the plans. `desired` holds every pod on the node (enabled or not); `mode` is the
/// redirector's. Pods with nothing to do get no plan. Plans are ordered by pod uid.
pub fn reconcile(
    desired: &[DesiredPod],
    observed: &Observed,
    mode: Mode,
    failure: SidecarFailure,
) -> Vec<Plan> {
    let desired: BTreeMap<&str, &DesiredPod> = desired.iter().map(|d| (d.pod.uid.as_str(), d)).collect();
    let mut sidecars: BTreeMap<&str, Vec<&Sidecar>> = BTreeMap::new();
    for s in &observed.sidecars {
        sidecars.entry(s.pod.uid.as_str()).or_default().push(s);
    }
    let redirected: BTreeMap<&str, &Redirected> =
        observed.redirected.iter().map(|r| (r.key.as_str(), r)).collect();
    let uids: BTreeSet<&str> = desired
        .keys()
        .chain(sidecars.keys())
        .chain(redirected.keys())
        .copied()
        .collect();

    let mut plans = Vec::new();
    for uid in uids {
        let want = desired.get(uid).copied();
        let pod_sidecars = sidecars.get(uid).map(Vec::as_slice).unwrap_or(&[]);
        let redirect = redirected.get(uid).copied();
        let annotations = observed.annotations.get(uid).cloned().unwrap_or_default();
        let plan = match want {
            Some(d) if d.enabled => plan_enabled(d, pod_sidecars, redirect, &annotations, mode, failure),
            _ => plan_disabled(uid, want, pod_sidecars, redirect, &annotations),
        };
        if !plan.steps.is_empty() {
            plans.push(plan);
        }
    }
    plans
}

fn plan_enabled(
    d: &DesiredPod,
    sidecars: &[&Sidecar],
    redirect: Option<&Redirected>,
    annotations: &Annotations,
    mode: Mode,
    failure: SidecarFailure,
) -> Plan {
    let mut running: Vec<&Sidecar> = sidecars
        .iter()
        .copied()
        .filter(|s| s.state == SidecarState::Running)
        .collect();
    // Keep the one the pod is annotated with, else the lowest id (deterministic).
    running.sort_by_key(|s| {
        (
            Some(&s.container_id) != annotations.proxy.as_ref(),
            s.container_id.clone(),
        )
    });
    let kept = running.first().copied();
    let settings = &d.settings;
    let enable = || Step::EnableRedirect {
        settings: settings.clone(),
    };
    let listeners = Step::AwaitListeners {
        port: settings.proxy_port,
    };
    // The redirect stays while the sidecar is replaced.
    let closed = kept.is_none() && redirect.is_some() && failure == SidecarFailure::Closed;
    let mut steps = Vec::new();
    let mut on_failure = Vec::new();
    if kept.is_none() && redirect.is_some() && !closed {
        // Fail-open: take the redirect away first. Its proxy exclusion names the dead sidecar's
        // cgroup, so in eBPF mode the bind guard would also refuse the new Envoy its ports (found
        // live: "denied bind to guarded port 15000").
        steps.push(Step::DisableRedirect);
    }
    // Every other sidecar goes: the dead ones and any extra running one.
    for s in sidecars {
        if Some(s.container_id.as_str()) != kept.map(|k| k.container_id.as_str()) {
            steps.push(Step::RemoveSidecar {
                container_id: s.container_id.clone(),
            });
        }
    }
    match kept {
        None => {
            let restart = redirect.is_some() || !sidecars.is_empty();
            if closed && mode == Mode::Ebpf {
                // The exclusion must name the new sidecar's cgroup before its Envoy runs; iptables
                // mode exempts the proxy by uid and needs nothing.
                steps.push(Step::PrepareSidecar {
                    settings: settings.clone(),
                });
            }
            steps.push(Step::StartSidecar { restart });
            steps.push(listeners);
            let redirect_current = redirect.map(|r| (&r.settings, r.mode)) == Some((settings, mode));
            // eBPF closed: enabled again after the wait (a no-op unless the runtime could not
            // prepare and the redirect had to go for the restart).
            if !closed || mode == Mode::Ebpf || !redirect_current {
                steps.push(enable());
            }
            steps.push(Step::Annotate { mode });
            if !annotations.is_clear() {
                // The annotation names a sidecar that is gone.
                on_failure.push(Step::ClearAnnotations);
            }
        }
        Some(k) => {
            match redirect {
                // A sidecar without redirect (just started by an agent that died, or whose
                // listeners did not arrive in time): redirect only once they have.
                None => {
                    steps.push(listeners);
                    steps.push(enable());
                }
                Some(r) if (&r.settings, r.mode) != (settings, mode) => steps.push(enable()),
                Some(_) => {}
            }
            let want_mode = mode.to_string();
            if annotations.proxy.as_deref() != Some(k.container_id.as_str())
                || annotations.mode.as_deref() != Some(want_mode.as_str())
            {
                steps.push(Step::Annotate { mode });
            }
        }
    }
    Plan {
        pod_uid: d.pod.uid.clone(),
        pod: Some(d.pod.clone()),
        sidecar: kept.cloned(),
        steps,
        on_failure,
    }
}

fn plan_disabled(
    uid: &str,
    want: Option<&DesiredPod>,
    sidecars: &[&Sidecar],
    redirect: Option<&Redirected>,
    annotations: &Annotations,
) -> Plan {
    let mut steps = Vec::new();
    if redirect.is_some() {
        steps.push(Step::DisableRedirect);
    }
    for s in sidecars {
        steps.push(Step::RemoveSidecar {
            container_id: s.container_id.clone(),
        });
    }
    if want.is_some() && !annotations.is_clear() {
        steps.push(Step::ClearAnnotations);
    }
    Plan {
        pod_uid: uid.to_string(),
        pod: want
            .map(|d| d.pod.clone())
            .or_else(|| sidecars.first().map(|s| s.pod.clone())),
        sidecar: None,
        steps,
        on_failure: Vec::new(),
    }
}

/// Narrow `observed` to one namespace, for an agent that shares its node with others (tests on a
/// shared Docker daemon): sidecars of other namespaces are left alone, and so are redirects that
/// belong to no pod or sidecar of this namespace (a redirect records only the pod uid).
pub fn scope_to_namespace(observed: Observed, desired: &[DesiredPod], namespace: &str) -> Observed {
    let sidecars: Vec<Sidecar> = observed
        .sidecars
        .into_iter()
        .filter(|s| s.pod.namespace == namespace)
        .collect();
    let ours: BTreeSet<&str> = desired
        .iter()
        .filter(|d| d.pod.namespace == namespace)
        .map(|d| d.pod.uid.as_str())
        .chain(sidecars.iter().map(|s| s.pod.uid.as_str()))
        .collect();
    let redirected = observed
        .redirected
        .into_iter()
        .filter(|r| ours.contains(r.key.as_str()))
        .collect();
    Observed {
        sidecars,
        redirected,
        annotations: observed.annotations,
    }
}

/// The redirect key of a pod uid.
pub fn pod_key(uid: &str) -> Result<PodKey, traffic_redirect::InvalidPodKey> {
    PodKey::new(uid)
}

#[cfg(test)]
mod tests;
