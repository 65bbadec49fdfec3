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
        service_account: "default".into(),
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
                    AwaitListeners { port: 15001 },
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
            name: "exited sidecar of a redirected pod (fail-closed): the redirect stays, the replacement is prepared and the exclusion re-pointed before it starts",
            desired: vec![want("a", true)],
            observed: obs(
                vec![sidecar("a", "c1", Exited)],
                vec![redirected("a", settings())],
                vec![("a", annotated("c1"))],
            ),
            want: vec![(
                "a",
                vec![
                    RemoveSidecar {
                        container_id: "c1".into(),
                    },
                    PrepareSidecar { settings: settings() },
                    StartSidecar { restart: true },
                    AwaitListeners { port: 15001 },
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
            name: "adopted sidecar without redirect or annotation (agent died mid-enable): redirected once its listeners are there",
            desired: vec![want("a", true)],
            observed: obs(
                vec![sidecar("a", "c1", Running)],
                vec![],
                vec![("a", Annotations::default())],
            ),
            want: vec![(
                "a",
                vec![
                    AwaitListeners { port: 15001 },
                    enable(settings()),
                    Annotate { mode: Mode::Ebpf },
                ],
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
                        AwaitListeners { port: 15001 },
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
        let got: Vec<_> = reconcile(&c.desired, &c.observed, Mode::Ebpf, SidecarFailure::Closed)
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
    let plans = reconcile(&d, &o, Mode::Iptables, SidecarFailure::Closed);
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
    let plans = reconcile(&[], &scoped, Mode::Ebpf, SidecarFailure::Closed);
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
    let plans = reconcile(&d, &o, Mode::Ebpf, SidecarFailure::Closed);
    assert_eq!(
        plans[0].sidecar.as_ref().map(|s| s.container_id.as_str()),
        Some("c1")
    );
}

fn steps(mode: Mode, failure: SidecarFailure, observed: &Observed, desired: &[DesiredPod]) -> Vec<Step> {
    let plans = reconcile(desired, observed, mode, failure);
    assert_eq!(plans.len(), 1, "{plans:?}");
    plans[0].steps.clone()
}

fn crashed() -> Observed {
    obs(
        vec![sidecar("a", "c1", Exited)],
        vec![redirected("a", settings())],
        vec![("a", annotated("c1"))],
    )
}

#[test]
fn a_fail_closed_restart_in_iptables_mode_keeps_the_rules_and_only_replaces_the_sidecar() {
    let mut o = crashed();
    o.redirected[0].mode = Mode::Iptables;
    assert_eq!(
        steps(Mode::Iptables, SidecarFailure::Closed, &o, &[want("a", true)]),
        vec![
            RemoveSidecar {
                container_id: "c1".into()
            },
            StartSidecar { restart: true },
            AwaitListeners { port: 15001 },
            Annotate { mode: Mode::Iptables },
        ]
    );
    // Settings changed while the sidecar was dead: enabled again once the new one is configured.
    let changed = DesiredPod {
        settings: direct(&[5432]),
        ..want("a", true)
    };
    let s = steps(Mode::Iptables, SidecarFailure::Closed, &o, &[changed]);
    assert_eq!(
        &s[2..4],
        &[
            AwaitListeners { port: 15001 },
            EnableRedirect {
                settings: direct(&[5432])
            }
        ]
    );
}

#[test]
fn a_fail_open_restart_takes_the_redirect_away_first_as_before() {
    for mode in [Mode::Ebpf, Mode::Iptables] {
        let mut o = crashed();
        o.redirected[0].mode = mode;
        assert_eq!(
            steps(mode, SidecarFailure::Open, &o, &[want("a", true)]),
            vec![
                DisableRedirect,
                RemoveSidecar {
                    container_id: "c1".into()
                },
                StartSidecar { restart: true },
                AwaitListeners { port: 15001 },
                EnableRedirect { settings: settings() },
                Annotate { mode },
            ],
            "{mode}"
        );
    }
}

#[test]
fn disabling_a_pod_with_a_dead_sidecar_removes_the_redirect_in_either_failure_mode() {
    for failure in [SidecarFailure::Closed, SidecarFailure::Open] {
        assert_eq!(
            steps(Mode::Ebpf, failure, &crashed(), &[want("a", false)]),
            vec![
                DisableRedirect,
                RemoveSidecar {
                    container_id: "c1".into()
                },
                ClearAnnotations,
            ]
        );
    }
}

#[test]
fn the_listener_wait_uses_the_pods_proxy_port() {
    let mut d = want("a", true);
    d.settings.proxy_port = 15006;
    let s = steps(
        Mode::Ebpf,
        SidecarFailure::Closed,
        &obs(vec![], vec![], vec![]),
        &[d],
    );
    assert!(s.contains(&AwaitListeners { port: 15006 }), "{s:?}");
}

#[test]
fn the_failure_mode_reads_closed_or_open_and_refuses_anything_else() {
    assert_eq!("closed".parse(), Ok(SidecarFailure::Closed));
    assert_eq!("open".parse(), Ok(SidecarFailure::Open));
    assert!("Closed".parse::<SidecarFailure>().is_err());
    assert_eq!(SidecarFailure::default(), SidecarFailure::Closed);
    assert_eq!(SidecarFailure::Open.to_string(), "open");
}
