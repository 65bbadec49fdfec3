//! Whether a pod serves traffic: its `Ready` condition, with one exception for the node controller.
//!
//! Kubernetes' node lifecycle controller sets `Ready=False` on every pod of a node whose heartbeat
//! it has not seen for `--node-monitor-grace-period` (40 s). After an API server outage of about
//! that length it does so for every node, although the nodes and their pods never stopped: the
//! kubelets simply could not report. The kubelet then sets `Ready=True` again within about 10 s of
//! reconnecting. Following that mark literally turned a 30 s API server outage into a traffic
//! outage (issue 9, fault (c): 256 of 3,000 requests failed right after the API server was back,
//! once the control plane caught up fast enough to see the short-lived mark).
//!
//! The kubelet, which runs the readiness probes, writes `ContainersReady` and derives `Ready` from
//! it and the pod's readiness gates. So `Ready=False` with `ContainersReady=True` and no readiness
//! gates is a mark the kubelet did not make. Such a pod keeps serving for
//! [`NODE_MARK_GRACE`] after the mark (the `Ready` condition's `lastTransitionTime`), which is long
//! enough for a reconnecting kubelet to set it right and short enough that the pods of a node that
//! really died leave the endpoints within a minute of Kubernetes' own decision. Kubernetes' own
//! endpoints controller drops them at once; Envoy's retries and outlier detection cover what this
//! minute costs on a dead node.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1 as core;

/// How long a pod that only the node controller marked unready keeps serving.
pub const NODE_MARK_GRACE: Duration = Duration::from_secs(60);

/// A pod's serving state, derived from its status conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// `Ready=True`.
    Ready,
    /// `Ready=False` set by the node controller (the kubelet still says its containers are ready),
    /// within the grace: serving until the instant given.
    MarkedByNodeController { serves_until: SystemTime },
    /// Anything else: not an endpoint.
    NotReady,
}

impl Readiness {
    pub fn serves(self) -> bool {
        !matches!(self, Readiness::NotReady)
    }
}

/// The readiness of `pod` at `now`. Without a clock (`now = None`) the `Ready` condition is taken
/// literally.
pub fn of(pod: &core::Pod, now: Option<SystemTime>) -> Readiness {
    let Some(status) = pod.status.as_ref() else {
        return Readiness::NotReady;
    };
    let conditions = status.conditions.as_deref().unwrap_or_default();
    let find = |t: &str| conditions.iter().find(|c| c.type_ == t);
    let Some(ready) = find("Ready") else {
        return Readiness::NotReady;
    };
    if ready.status == "True" {
        return Readiness::Ready;
    }
    let Some(now) = now else {
        return Readiness::NotReady;
    };
    let containers_ready = find("ContainersReady").is_some_and(|c| c.status == "True");
    let has_gates = pod
        .spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .is_some_and(|g| !g.is_empty());
    if ready.status != "False" || !containers_ready || has_gates {
        return Readiness::NotReady;
    }
    let Some(since) = ready.last_transition_time.as_ref() else {
        return Readiness::NotReady;
    };
    let serves_until = SystemTime::from(since.0) + NODE_MARK_GRACE;
    if now < serves_until {
        Readiness::MarkedByNodeController { serves_until }
    } else {
        Readiness::NotReady
    }
}

/// The earliest instant at which one of `pods` stops serving because its grace ends: the model
/// must be rebuilt then, even if nothing else changes.
pub fn next_expiry<'p>(pods: impl Iterator<Item = &'p core::Pod>, now: SystemTime) -> Option<SystemTime> {
    pods.filter_map(|p| match of(p, Some(now)) {
        Readiness::MarkedByNodeController { serves_until } => Some(serves_until),
        _ => None,
    })
    .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn pod(ready: &str, containers_ready: Option<&str>, changed: u64, gates: bool) -> core::Pod {
        let cond = |t: &str, s: &str| core::PodCondition {
            type_: t.into(),
            status: s.into(),
            last_transition_time: Some(Time(
                k8s_openapi::jiff::Timestamp::try_from(at(changed)).expect("a time jiff can hold"),
            )),
            ..Default::default()
        };
        let mut conditions = vec![cond("Ready", ready)];
        if let Some(c) = containers_ready {
            conditions.push(cond("ContainersReady", c));
        }
        core::Pod {
            spec: Some(core::PodSpec {
                readiness_gates: gates.then(|| {
                    vec![core::PodReadinessGate {
                        condition_type: "example.com/gate".into(),
                    }]
                }),
                ..Default::default()
            }),
            status: Some(core::PodStatus {
                conditions: Some(conditions),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_ready_pod_serves_and_a_pod_whose_containers_are_not_ready_does_not() {
        assert_eq!(
            of(&pod("True", Some("True"), 0, false), Some(at(100))),
            Readiness::Ready
        );
        assert_eq!(
            of(&pod("False", Some("False"), 99, false), Some(at(100))),
            Readiness::NotReady
        );
        assert_eq!(
            of(&pod("False", None, 99, false), Some(at(100))),
            Readiness::NotReady
        );
        assert_eq!(of(&core::Pod::default(), Some(at(100))), Readiness::NotReady);
    }

    #[test]
    fn a_node_controller_mark_keeps_the_pod_serving_for_the_grace_only() {
        let marked = pod("False", Some("True"), 1000, false);
        let r = of(&marked, Some(at(1030)));
        assert_eq!(
            r,
            Readiness::MarkedByNodeController {
                serves_until: at(1060)
            }
        );
        assert!(r.serves());
        assert_eq!(of(&marked, Some(at(1060))), Readiness::NotReady);
        assert_eq!(next_expiry([&marked].into_iter(), at(1030)), Some(at(1060)));
        assert_eq!(next_expiry([&marked].into_iter(), at(1061)), None);
    }

    #[test]
    fn without_a_clock_or_with_readiness_gates_the_ready_condition_is_taken_literally() {
        assert_eq!(
            of(&pod("False", Some("True"), 1000, false), None),
            Readiness::NotReady
        );
        assert_eq!(
            of(&pod("False", Some("True"), 1000, true), Some(at(1001))),
            Readiness::NotReady
        );
        assert_eq!(
            of(&pod("Unknown", Some("True"), 1000, false), Some(at(1001))),
            Readiness::NotReady
        );
        assert!(next_expiry([pod("True", Some("True"), 0, false)].iter(), at(5)).is_none());
        assert!(Readiness::Ready.serves());
    }
}
