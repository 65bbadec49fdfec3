//! The reconciler (pure): from what the agent wants per pod and what it observes on the node,
//! compute one ordered plan per pod.
//!
//! Ordering rules (docs/architecture.md, "Sidecar lifecycle"):
//! - enable: sidecar started and ready -> redirect enabled -> pod annotated;
//! - disable or pod gone: redirect removed FIRST -> sidecar removed -> annotations cleared;
//! - a pod is never left redirected to a sidecar that is not running: when its sidecar exited,
//!   the redirect is removed, the sidecar restarted, and the redirect enabled again (traffic
//!   bypasses the proxy for the restart, ~0.5 s, rather than fail);
//! - never two sidecars for one pod; orphans (sidecars or redirects of pods that no longer exist)
//!   are removed; changed settings are applied by enabling again (`enable` is update).
//!
//! The executor runs a plan's steps in order and stops at the first failure, then runs the plan's
//! `on_failure` steps; a later reconcile retries.

use std::collections::{BTreeMap, BTreeSet};

use traffic_redirect::{Mode, PodKey, Redirected, Settings};
use traffic_sidecar::{PodRef, Sidecar, SidecarState};

use crate::desired::DesiredPod;

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
    /// Start a sidecar and wait until it is ready. `restart`: it replaces one that died.
    StartSidecar {
        restart: bool,
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
pub fn reconcile(desired: &[DesiredPod], observed: &Observed, mode: Mode) -> Vec<Plan> {
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
            Some(d) if d.enabled => plan_enabled(d, pod_sidecars, redirect, &annotations, mode),
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
    let mut steps = Vec::new();
    let mut on_failure = Vec::new();
    if kept.is_none() && redirect.is_some() {
        // The redirect points at a sidecar that is not running: take it away first. Its proxy
        // exclusion names the dead sidecar's cgroup, so in eBPF mode the bind guard would also
        // refuse the new Envoy its ports (found live: "denied bind to guarded port 15000").
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
            steps.push(Step::StartSidecar { restart });
            steps.push(Step::EnableRedirect {
                settings: d.settings.clone(),
            });
            steps.push(Step::Annotate { mode });
            if !annotations.is_clear() {
                // The annotation names a sidecar that is gone.
                on_failure.push(Step::ClearAnnotations);
            }
        }
        Some(k) => {
            if redirect.map(|r| (&r.settings, r.mode)) != Some((&d.settings, mode)) {
                steps.push(Step::EnableRedirect {
                    settings: d.settings.clone(),
                });
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
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn pod(uid: &str) -> PodRef {
        PodRef {
            uid: uid.into(),
            namespace: "default".into(),
            name: format!("pod-{uid}"),
        }
    }

    fn settings() -> Settings {
        Settings::default()
    }

    fn want(uid: &str, enabled: bool) -> DesiredPod {
        DesiredPod {
            pod: pod(uid),
            enabled,
            settings: settings(),
            problems: vec![],
            ineligible: None,
        }
    }

    fn sidecar(uid: &str, id: &str, state: SidecarState) -> Sidecar {
        Sidecar {
            container_id: id.into(),
            pod: pod(uid),
            state,
            status: String::new(),
            cgroup: Some(PathBuf::from(format!("/cg/{id}"))),
        }
    }

    fn redirected(uid: &str, settings: Settings) -> Redirected {
        Redirected {
            key: PodKey::new(uid).unwrap_or_else(|e| panic!("{e}")),
            mode: Mode::Ebpf,
            settings,
        }
    }

    fn annotated(id: &str) -> Annotations {
        Annotations {
            proxy: Some(id.into()),
            mode: Some("ebpf".into()),
        }
    }

    use SidecarState::{Exited, Running};
    use Step::*;

    struct Case {
        name: &'static str,
        desired: Vec<DesiredPod>,
        observed: Observed,
        /// (pod uid, steps, on_failure)
        want: Vec<(&'static str, Vec<Step>, Vec<Step>)>,
    }

    fn obs(sidecars: Vec<Sidecar>, redirected: Vec<Redirected>, ann: Vec<(&str, Annotations)>) -> Observed {
        Observed {
            sidecars,
            redirected,
            annotations: ann.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        }
    }

    fn direct(ports: &[u16]) -> Settings {
        Settings {
            direct_ports: ports.iter().copied().collect(),
            ..Settings::default()
        }
    }

    #[test]
    fn plans_follow_the_lifecycle_rules() {
        let enable = |s| EnableRedirect { settings: s };
        let cases = vec![
            Case {
                name: "a newly enabled pod: start, then redirect, then annotate",
                desired: vec![want("a", true)],
                observed: obs(vec![], vec![], vec![("a", Annotations::default())]),
                want: vec![(
                    "a",
                    vec![
                        StartSidecar { restart: false },
                        enable(settings()),
                        Annotate { mode: Mode::Ebpf },
                    ],
                    vec![],
                )],
            },
            Case {
                name: "a converged pod needs nothing",
                desired: vec![want("a", true)],
                observed: obs(
                    vec![sidecar("a", "c1", Running)],
                    vec![redirected("a", settings())],
                    vec![("a", annotated("c1"))],
                ),
                want: vec![],
            },
            Case {
                name: "a pod that is not enabled and has nothing needs nothing",
                desired: vec![want("a", false)],
                observed: obs(
                    vec![],
                    vec![],
                    vec![(
                        "a",
                        Annotations {
                            proxy: Some(String::new()),
                            mode: None,
                        },
                    )],
                ),
                want: vec![],
            },
            Case {
                name: "disable: redirect off first, then sidecar, then annotations",
                desired: vec![want("a", false)],
                observed: obs(
                    vec![sidecar("a", "c1", Running)],
                    vec![redirected("a", settings())],
                    vec![("a", annotated("c1"))],
                ),
                want: vec![(
                    "a",
                    vec![
                        DisableRedirect,
                        RemoveSidecar {
                            container_id: "c1".into(),
                        },
                        ClearAnnotations,
                    ],
                    vec![],
                )],
            },
            Case {
                name: "a deleted pod: its redirect and sidecar are removed, no annotation to clear",
                desired: vec![],
                observed: obs(
                    vec![sidecar("a", "c1", Running)],
                    vec![redirected("a", settings())],
                    vec![],
                ),
                want: vec![(
                    "a",
                    vec![
                        DisableRedirect,
                        RemoveSidecar {
                            container_id: "c1".into(),
                        },
                    ],
                    vec![],
                )],
            },
            Case {
                name: "orphan redirect without sidecar is removed",
                desired: vec![],
                observed: obs(vec![], vec![redirected("z", settings())], vec![]),
                want: vec![("z", vec![DisableRedirect], vec![])],
            },
            Case {
                name: "exited sidecar of a redirected pod: redirect off, restart, redirect on, annotate",
                desired: vec![want("a", true)],
                observed: obs(
                    vec![sidecar("a", "c1", Exited)],
                    vec![redirected("a", settings())],
                    vec![("a", annotated("c1"))],
                ),
                want: vec![(
                    "a",
                    vec![
                        DisableRedirect,
                        RemoveSidecar {
                            container_id: "c1".into(),
                        },
                        StartSidecar { restart: true },
                        enable(settings()),
                        Annotate { mode: Mode::Ebpf },
                    ],
                    vec![ClearAnnotations],
                )],
            },
            Case {
                name: "two running sidecars: the annotated one is kept, the other removed",
                desired: vec![want("a", true)],
                observed: obs(
                    vec![sidecar("a", "c1", Running), sidecar("a", "c2", Running)],
                    vec![redirected("a", settings())],
                    vec![("a", annotated("c2"))],
                ),
                want: vec![(
                    "a",
                    vec![RemoveSidecar {
                        container_id: "c1".into(),
                    }],
                    vec![],
                )],
            },
            Case {
                name: "changed direct ports: enable again (update), nothing else",
                desired: vec![DesiredPod {
                    settings: direct(&[5432]),
                    ..want("a", true)
                }],
                observed: obs(
                    vec![sidecar("a", "c1", Running)],
                    vec![redirected("a", settings())],
                    vec![("a", annotated("c1"))],
                ),
                want: vec![("a", vec![enable(direct(&[5432]))], vec![])],
            },
            Case {
                name: "adopted sidecar without redirect or annotation (agent died mid-enable)",
                desired: vec![want("a", true)],
                observed: obs(
                    vec![sidecar("a", "c1", Running)],
                    vec![],
                    vec![("a", Annotations::default())],
                ),
                want: vec![(
                    "a",
                    vec![enable(settings()), Annotate { mode: Mode::Ebpf }],
                    vec![],
                )],
            },
            Case {
                name: "one pod's plan does not depend on another's",
                desired: vec![want("a", true), want("b", false)],
                observed: obs(
                    vec![sidecar("b", "c9", Running), sidecar("q", "c7", Exited)],
                    vec![],
                    vec![],
                ),
                want: vec![
                    (
                        "a",
                        vec![
                            StartSidecar { restart: false },
                            enable(settings()),
                            Annotate { mode: Mode::Ebpf },
                        ],
                        vec![],
                    ),
                    (
                        "b",
                        vec![RemoveSidecar {
                            container_id: "c9".into(),
                        }],
                        vec![],
                    ),
                    (
                        "q",
                        vec![RemoveSidecar {
                            container_id: "c7".into(),
                        }],
                        vec![],
                    ),
                ],
            },
        ];
        for c in cases {
            let got: Vec<_> = reconcile(&c.desired, &c.observed, Mode::Ebpf)
                .into_iter()
                .map(|p| (p.pod_uid, p.steps, p.on_failure))
                .collect();
            let want: Vec<_> = c
                .want
                .into_iter()
                .map(|(u, s, f)| (u.to_string(), s, f))
                .collect();
            assert_eq!(got, want, "{}", c.name);
        }
    }

    #[test]
    fn an_annotation_in_another_mode_is_rewritten() {
        let d = [want("a", true)];
        let o = obs(
            vec![sidecar("a", "c1", Running)],
            vec![redirected("a", settings())],
            vec![("a", annotated("c1"))],
        );
        let plans = reconcile(&d, &o, Mode::Iptables);
        // The redirect reports ebpf mode, the agent now runs iptables: enable again and re-annotate.
        assert_eq!(
            plans[0].steps,
            vec![
                EnableRedirect { settings: settings() },
                Annotate { mode: Mode::Iptables }
            ]
        );
    }

    #[test]
    fn a_namespace_scoped_agent_leaves_other_namespaces_sidecars_and_unknown_redirects_alone() {
        let mut other = sidecar("x", "c5", Running);
        other.pod.namespace = "elsewhere".into();
        let o = obs(
            vec![other, sidecar("gone", "c6", Running)],
            vec![
                redirected("x", settings()),
                redirected("gone", settings()),
                redirected("unknown", settings()),
            ],
            vec![],
        );
        let scoped = scope_to_namespace(o, &[want("a", true)], "default");
        let plans = reconcile(&[], &scoped, Mode::Ebpf);
        let got: Vec<_> = plans
            .iter()
            .map(|p| (p.pod_uid.as_str(), p.steps.clone()))
            .collect();
        assert_eq!(
            got,
            vec![(
                "gone",
                vec![
                    DisableRedirect,
                    RemoveSidecar {
                        container_id: "c6".into()
                    }
                ]
            )]
        );
    }

    #[test]
    fn the_kept_sidecar_is_handed_to_the_executor() {
        let d = [want("a", true)];
        let o = obs(vec![sidecar("a", "c1", Running)], vec![], vec![]);
        let plans = reconcile(&d, &o, Mode::Ebpf);
        assert_eq!(
            plans[0].sidecar.as_ref().map(|s| s.container_id.as_str()),
            Some("c1")
        );
    }
}
