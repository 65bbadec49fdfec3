//! What the agent wants for each pod on its node (pure): is the proxy enabled, with which redirect
//! settings, and which label problems to report.
//!
//! Inputs are plain Kubernetes objects (as the watches store them); nothing here talks to the API.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use traffic_labels::{LabelError, ObjectKind, PortProtocol};
use traffic_redirect::Settings;
use traffic_sidecar::PodRef;
use traffic_translate::snapshot::ObjectRef;

/// The Envoy outbound listener in the pod netns.
pub const PROXY_PORT: u16 = 15001;
/// The sidecar's uid and gid.
pub const PROXY_UID: u32 = 1337;

/// The owner objects and Services a pod's desired state depends on, indexed for lookup.
#[derive(Debug, Default, Clone)]
pub struct Cluster {
    /// (namespace, name) -> ReplicaSet metadata (labels + its own controller).
    pub replica_sets: HashMap<(String, String), ObjectMeta>,
    /// (kind, namespace, name) -> workload labels, for Deployment, StatefulSet, DaemonSet.
    pub workloads: HashMap<(&'static str, String, String), BTreeMap<String, String>>,
    /// Direct ports declared on any Service (`traffic.port.N=direct`), cluster-wide: the
    /// destination port is what the datapath sees, whichever Service it belongs to.
    pub service_direct_ports: BTreeSet<u16>,
}

impl Cluster {
    /// Index the watched objects.
    pub fn new(
        replica_sets: &[impl AsRef<ReplicaSet>],
        deployments: &[impl AsRef<Deployment>],
        stateful_sets: &[impl AsRef<StatefulSet>],
        daemon_sets: &[impl AsRef<DaemonSet>],
        services: &[impl AsRef<Service>],
    ) -> Self {
        let key = |m: &ObjectMeta| {
            (
                m.namespace.clone().unwrap_or_default(),
                m.name.clone().unwrap_or_default(),
            )
        };
        let mut cluster = Cluster::default();
        for rs in replica_sets {
            let m = &rs.as_ref().metadata;
            cluster.replica_sets.insert(key(m), m.clone());
        }
        let mut add = |kind: &'static str, m: &ObjectMeta| {
            let (ns, name) = key(m);
            cluster
                .workloads
                .insert((kind, ns, name), m.labels.clone().unwrap_or_default());
        };
        for d in deployments {
            add("Deployment", &d.as_ref().metadata);
        }
        for s in stateful_sets {
            add("StatefulSet", &s.as_ref().metadata);
        }
        for d in daemon_sets {
            add("DaemonSet", &d.as_ref().metadata);
        }
        for svc in services {
            let labels = svc.as_ref().metadata.labels.clone().unwrap_or_default();
            // Errors on Service labels are the control plane's to report.
            let parsed = traffic_labels::parse(ObjectKind::Service, &labels);
            cluster
                .service_direct_ports
                .extend(direct_ports(&parsed.settings));
        }
        cluster
    }

    /// The workload that owns a pod (through its ReplicaSet for Deployments) and its labels.
    pub fn owner(&self, pod: &Pod) -> Option<(ObjectRef, BTreeMap<String, String>)> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let controller = controller_of(&pod.metadata)?;
        let lookup = |kind: &str, name: &str| -> Option<(ObjectRef, BTreeMap<String, String>)> {
            let (kind, labels) = self
                .workloads
                .get_key_value(&(workload_kind(kind)?, namespace.clone(), name.to_string()))
                .map(|(k, v)| (k.0, v.clone()))?;
            Some((object(kind, &namespace, name), labels))
        };
        match controller.kind.as_str() {
            "ReplicaSet" => {
                let rs = self
                    .replica_sets
                    .get(&(namespace.clone(), controller.name.clone()))?;
                match controller_of(rs) {
                    Some(dep) if dep.kind == "Deployment" => lookup("Deployment", &dep.name),
                    // An ownerless ReplicaSet is a workload of its own.
                    _ => Some((
                        object("ReplicaSet", &namespace, &controller.name),
                        rs.labels.clone().unwrap_or_default(),
                    )),
                }
            }
            kind => lookup(kind, &controller.name),
        }
    }
}

fn workload_kind(kind: &str) -> Option<&'static str> {
    match kind {
        "Deployment" => Some("Deployment"),
        "StatefulSet" => Some("StatefulSet"),
        "DaemonSet" => Some("DaemonSet"),
        _ => None,
    }
}

fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
}

fn object(kind: &str, namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        kind: kind.to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

fn direct_ports(settings: &traffic_labels::Settings) -> impl Iterator<Item = u16> + '_ {
    settings
        .ports
        .iter()
        .filter(|(_, p)| **p == PortProtocol::Direct)
        .map(|(port, _)| *port)
}

/// One invalid label, on the object that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelProblem {
    pub object: ObjectRef,
    pub error: LabelError,
}

/// Why an enabled pod cannot get a sidecar (reported, not retried until the pod changes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ineligible {
    #[error("traffic.envoy.enabled is ignored on a hostNetwork pod: redirecting would capture the node's own traffic")]
    HostNetwork,
}

/// The agent's wish for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPod {
    pub pod: PodRef,
    /// The pod's service account (`default` when unset): whose token its sidecar presents.
    pub service_account: String,
    /// Sidecar + redirect wanted.
    pub enabled: bool,
    pub settings: Settings,
    /// Invalid labels on the pod or its owner (for Events).
    pub problems: Vec<LabelProblem>,
    /// Enabled by labels but refused.
    pub ineligible: Option<Ineligible>,
}

/// The desired state of one pod, or `None` for an object without name/uid (never from the API).
pub fn desired(pod: &Pod, cluster: &Cluster) -> Option<DesiredPod> {
    let meta = &pod.metadata;
    let pod_ref = PodRef {
        uid: meta.uid.clone()?,
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone()?,
    };
    let pod_obj = object("Pod", &pod_ref.namespace, &pod_ref.name);
    let labels = meta.labels.clone().unwrap_or_default();
    let parsed = traffic_labels::parse(ObjectKind::Pod, &labels);
    let mut problems: Vec<LabelProblem> = parsed
        .errors
        .iter()
        .map(|e| LabelProblem {
            object: pod_obj.clone(),
            error: e.clone(),
        })
        .collect();
    let owner = cluster.owner(pod).map(|(obj, labels)| {
        let parsed = traffic_labels::parse(ObjectKind::Workload, &labels);
        problems.extend(parsed.errors.iter().map(|e| LabelProblem {
            object: obj.clone(),
            error: e.clone(),
        }));
        parsed.settings
    });
    let mut enabled = traffic_labels::effective_enabled(&parsed.settings, owner.as_ref());

    let mut ineligible = None;
    let spec = pod.spec.as_ref();
    if enabled && spec.and_then(|s| s.host_network) == Some(true) {
        ineligible = Some(Ineligible::HostNetwork);
        enabled = false;
    }
    // A pod on its way out (or finished) gets its sidecar and redirect removed first.
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if meta.deletion_timestamp.is_some() || matches!(phase, Some("Succeeded" | "Failed")) {
        enabled = false;
    }

    let mut settings = Settings {
        proxy_port: PROXY_PORT,
        proxy_uid: PROXY_UID,
        proxy_gid: PROXY_UID,
        ..Settings::default()
    };
    settings.direct_ports = cluster.service_direct_ports.clone();
    settings.direct_ports.extend(direct_ports(&parsed.settings));
    // The proxy's own ports can never be direct (the app would bypass the sidecar by binding them).
    for guarded in &settings.guarded_ports {
        settings.direct_ports.remove(guarded);
    }
    let service_account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string());
    Some(DesiredPod {
        pod: pod_ref,
        service_account,
        enabled,
        settings,
        problems,
        ineligible,
    })
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    use std::sync::Arc;

    fn meta(ns: &str, name: &str, labels: &[(&str, &str)], owner: Option<(&str, &str)>) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            owner_references: owner.map(|(kind, name)| {
                vec![OwnerReference {
                    kind: kind.into(),
                    name: name.into(),
                    controller: Some(true),
                    ..OwnerReference::default()
                }]
            }),
            ..ObjectMeta::default()
        }
    }

    fn pod(labels: &[(&str, &str)], owner: Option<(&str, &str)>) -> Pod {
        Pod {
            metadata: meta("default", "web-1", labels, owner),
            ..Pod::default()
        }
    }

    fn cluster(
        deployment: &[(&str, &str)],
        statefulset: &[(&str, &str)],
        services: &[&[(&str, &str)]],
    ) -> Cluster {
        let rs = vec![Arc::new(ReplicaSet {
            metadata: meta("default", "web-abc", &[], Some(("Deployment", "web"))),
            ..ReplicaSet::default()
        })];
        let deps = vec![Arc::new(Deployment {
            metadata: meta("default", "web", deployment, None),
            ..Deployment::default()
        })];
        let sts = vec![Arc::new(StatefulSet {
            metadata: meta("default", "db", statefulset, None),
            ..StatefulSet::default()
        })];
        let ds: Vec<Arc<DaemonSet>> = vec![];
        let svcs: Vec<Arc<Service>> = services
            .iter()
            .enumerate()
            .map(|(i, l)| {
                Arc::new(Service {
                    metadata: meta("other", &format!("svc{i}"), l, None),
                    ..Service::default()
                })
            })
            .collect();
        Cluster::new(&rs, &deps, &sts, &ds, &svcs)
    }

    const ON: (&str, &str) = ("traffic.envoy.enabled", "true");
    const OFF: (&str, &str) = ("traffic.envoy.enabled", "false");

    #[test]
    fn enabled_resolves_from_pod_then_owner_chain_with_the_pod_label_winning() {
        struct Case {
            name: &'static str,
            pod: Vec<(&'static str, &'static str)>,
            owner: Option<(&'static str, &'static str)>,
            deployment: Vec<(&'static str, &'static str)>,
            statefulset: Vec<(&'static str, &'static str)>,
            want: bool,
        }
        let cases = [
            Case {
                name: "no labels anywhere",
                pod: vec![],
                owner: Some(("ReplicaSet", "web-abc")),
                deployment: vec![],
                statefulset: vec![],
                want: false,
            },
            Case {
                name: "deployment via replicaset",
                pod: vec![],
                owner: Some(("ReplicaSet", "web-abc")),
                deployment: vec![ON],
                statefulset: vec![],
                want: true,
            },
            Case {
                name: "pod off beats deployment on",
                pod: vec![OFF],
                owner: Some(("ReplicaSet", "web-abc")),
                deployment: vec![ON],
                statefulset: vec![],
                want: false,
            },
            Case {
                name: "pod on beats deployment off",
                pod: vec![ON],
                owner: Some(("ReplicaSet", "web-abc")),
                deployment: vec![OFF],
                statefulset: vec![],
                want: true,
            },
            Case {
                name: "statefulset",
                pod: vec![],
                owner: Some(("StatefulSet", "db")),
                deployment: vec![],
                statefulset: vec![ON],
                want: true,
            },
            Case {
                name: "bare pod",
                pod: vec![ON],
                owner: None,
                deployment: vec![],
                statefulset: vec![],
                want: true,
            },
            Case {
                name: "unknown owner",
                pod: vec![],
                owner: Some(("ReplicaSet", "gone")),
                deployment: vec![ON],
                statefulset: vec![],
                want: false,
            },
        ];
        for c in cases {
            let cl = cluster(&c.deployment, &c.statefulset, &[]);
            let d = desired(&pod(&c.pod, c.owner), &cl).unwrap();
            assert_eq!(d.enabled, c.want, "{}", c.name);
            assert!(d.problems.is_empty(), "{}", c.name);
        }
    }

    #[test]
    fn direct_ports_come_from_the_pod_and_every_service_and_never_cover_proxy_ports() {
        let cl = cluster(
            &[ON],
            &[],
            &[
                &[("traffic.port.5432", "direct"), ("traffic.port.9080", "http")],
                &[("traffic.port.15001", "direct")],
            ],
        );
        let d = desired(
            &pod(
                &[("traffic.port.6379", "direct")],
                Some(("ReplicaSet", "web-abc")),
            ),
            &cl,
        )
        .unwrap();
        assert_eq!(d.settings.direct_ports, [5432, 6379].into_iter().collect());
        assert_eq!(d.settings.proxy_port, 15001);
        assert_eq!(d.settings.proxy_uid, 1337);
        assert!(d.settings.guarded_ports.contains(&15001));
    }

    #[test]
    fn invalid_labels_on_pod_and_owner_become_problems_on_the_right_object() {
        let cl = cluster(&[("traffic.envoy.enabled", "yes please")], &[], &[]);
        let d = desired(
            &pod(&[("traffic.port.x", "http"), ON], Some(("ReplicaSet", "web-abc"))),
            &cl,
        )
        .unwrap();
        assert!(d.enabled);
        let objs: Vec<_> = d
            .problems
            .iter()
            .map(|p| (p.object.kind.as_str(), p.error.label.as_str()))
            .collect();
        assert_eq!(
            objs,
            [("Pod", "traffic.port.x"), ("Deployment", "traffic.envoy.enabled")]
        );
    }

    #[test]
    fn a_deleting_finished_or_host_network_pod_is_not_enabled() {
        let cl = cluster(&[], &[], &[]);
        let mut p = pod(&[ON], None);
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        assert!(!desired(&p, &cl).unwrap().enabled);

        let mut p = pod(&[ON], None);
        p.status = Some(PodStatus {
            phase: Some("Succeeded".into()),
            ..PodStatus::default()
        });
        assert!(!desired(&p, &cl).unwrap().enabled);

        let mut p = pod(&[ON], None);
        p.spec = Some(PodSpec {
            host_network: Some(true),
            ..PodSpec::default()
        });
        let d = desired(&p, &cl).unwrap();
        assert!(!d.enabled);
        assert_eq!(d.ineligible, Some(Ineligible::HostNetwork));
    }
}
