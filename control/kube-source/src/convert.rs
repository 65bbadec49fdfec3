//! Pure conversion of Kubernetes API objects (k8s-openapi types) into the mesh model.
//!
//! No I/O here: the watch plumbing hands the current contents of its reflector stores to
//! [`build_model`], and tests hand it objects recorded from a real cluster.
//!
//! Rules (mirroring what Kubernetes itself does where it has a rule):
//! - a pod's owner chain is resolved through its *controller* owner reference: a ReplicaSet owned
//!   by a Deployment resolves to the Deployment; StatefulSets and DaemonSets are taken directly;
//!   an ownerless ReplicaSet is a workload of its own; other controllers (Jobs, static pods'
//!   Nodes) give no owner. Owner *labels* stay on the workload; the pod's own label wins when
//!   labels are layered (`traffic_labels::effective_*`), so both are kept raw here;
//! - finished pods (`Succeeded`/`Failed`) are left out; terminating pods are not ready, as the
//!   Kubernetes endpoints controller treats them; a pod only the node controller marked unready
//!   keeps serving for a grace ([`crate::readiness`]);
//! - only `kubernetes.io/tls` Secrets referenced by an Ingress `tls[].secretName` in the same
//!   namespace enter the model.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use traffic_translate::model::{
    Ingress, IngressBackend, IngressPath, IngressRule, IngressTls, Labels, MeshModel, OwnerRef, PathType,
    Pod, PortProtocol, Service, ServicePort, TargetPort, TlsSecret, Workload, WorkloadKind,
};

/// The Secret type Ingress TLS uses.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// Everything the model is built from: the current contents of the reflector stores.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub services: Vec<Arc<core::Service>>,
    pub pods: Vec<Arc<core::Pod>>,
    pub replica_sets: Vec<Arc<ReplicaSet>>,
    pub deployments: Vec<Arc<Deployment>>,
    pub stateful_sets: Vec<Arc<StatefulSet>>,
    pub daemon_sets: Vec<Arc<DaemonSet>>,
    pub ingresses: Vec<Arc<networking::Ingress>>,
    pub secrets: Vec<Arc<core::Secret>>,
    /// The time the stores were read, for [`crate::readiness`]: a pod only the node controller
    /// marked unready keeps serving for a grace after the mark. `None` takes `Ready` literally.
    pub now: Option<std::time::SystemTime>,
    /// The `networking.istio.io` objects (their Gateways' `credentialName` Secrets enter the model).
    pub istio: traffic_istio::IstioConfig,
}

/// Build the whole mesh model. Output lists are sorted by (namespace, name) so equal inputs give
/// equal models whatever order the stores return.
pub fn build_model(inputs: &Inputs) -> MeshModel {
    let owners = OwnerIndex::new(&inputs.replica_sets);

    let mut services: Vec<Service> = inputs.services.iter().filter_map(|s| service(s)).collect();
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    let mut pods: Vec<Pod> = inputs
        .pods
        .iter()
        .filter_map(|p| pod(p, &owners, inputs.now))
        .collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    let mut workloads: Vec<Workload> = Vec::new();
    workloads.extend(
        inputs
            .deployments
            .iter()
            .filter_map(|d| workload(WorkloadKind::Deployment, &d.metadata)),
    );
    workloads.extend(
        inputs
            .stateful_sets
            .iter()
            .filter_map(|s| workload(WorkloadKind::StatefulSet, &s.metadata)),
    );
    workloads.extend(
        inputs
            .daemon_sets
            .iter()
            .filter_map(|d| workload(WorkloadKind::DaemonSet, &d.metadata)),
    );
    workloads.extend(
        inputs
            .replica_sets
            .iter()
            .filter(|rs| deployment_of(&rs.metadata).is_none())
            .filter_map(|rs| workload(WorkloadKind::ReplicaSet, &rs.metadata)),
    );
    workloads.sort_by(|a, b| (&a.namespace, &a.name, a.kind).cmp(&(&b.namespace, &b.name, b.kind)));

    let mut ingresses: Vec<Ingress> = inputs.ingresses.iter().filter_map(|i| ingress(i)).collect();
    ingresses.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    let referenced: BTreeSet<(&str, &str)> = ingresses
        .iter()
        .flat_map(|i| {
            i.tls
                .iter()
                .map(move |t| (i.namespace.as_str(), t.secret_name.as_str()))
        })
        .chain(gateway_secret_refs(&inputs.istio))
        .collect();
    let mut secrets: Vec<TlsSecret> = inputs
        .secrets
        .iter()
        .filter_map(|s| tls_secret(s))
        .filter(|s| referenced.contains(&(s.namespace.as_str(), s.name.as_str())))
        .collect();
    secrets.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    MeshModel {
        services: services.into_iter().map(Arc::new).collect(),
        pods: pods.into_iter().map(Arc::new).collect(),
        workloads,
        ingresses,
        secrets,
        istio: std::sync::Arc::new(inputs.istio.clone()),
        outbound_traffic_policy: None,
    }
}

/// The `kubernetes.io/tls` Secrets Istio Gateways name (`servers[].tls.credentialName`), in the
/// Gateway's namespace.
fn gateway_secret_refs(istio: &traffic_istio::IstioConfig) -> impl Iterator<Item = (&str, &str)> {
    istio.gateways.iter().flat_map(|g| {
        g.spec.servers.iter().filter_map(move |s| {
            let name = s.tls.as_ref()?.credential_name.as_deref()?;
            Some((g.metadata.namespace.as_str(), name))
        })
    })
}

/// `(namespace, name)` of an object, when both are present (they always are on objects read
/// from the API server; a missing one means the object is unusable).
fn ns_name(meta: &ObjectMeta) -> Option<(String, String)> {
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

fn labels(meta: &ObjectMeta) -> Labels {
    meta.labels.clone().unwrap_or_default()
}

/// The controller owner reference of an object (the one with `controller: true`).
fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
}

/// The Deployment controlling a ReplicaSet, if any.
fn deployment_of(meta: &ObjectMeta) -> Option<&str> {
    controller_of(meta)
        .filter(|o| o.kind == "Deployment" && o.api_version.starts_with("apps/"))
        .map(|o| o.name.as_str())
}

/// ReplicaSet (namespace, name) -> its Deployment's name, for owner chain resolution.
#[derive(Debug, Default)]
pub struct OwnerIndex {
    replica_set_deployment: HashMap<(String, String), Option<String>>,
}

impl OwnerIndex {
    pub fn new(replica_sets: &[Arc<ReplicaSet>]) -> Self {
        let replica_set_deployment = replica_sets
            .iter()
            .filter_map(|rs| {
                Some((
                    ns_name(&rs.metadata)?,
                    deployment_of(&rs.metadata).map(str::to_string),
                ))
            })
            .collect();
        OwnerIndex {
            replica_set_deployment,
        }
    }

    /// The resolved top-level owner of a pod in `namespace` with this controller reference.
    pub fn resolve(&self, namespace: &str, controller: &OwnerReference) -> Option<OwnerRef> {
        if !controller.api_version.starts_with("apps/") {
            return None;
        }
        let kind = match controller.kind.as_str() {
            "ReplicaSet" => {
                let key = (namespace.to_string(), controller.name.clone());
                return Some(match self.replica_set_deployment.get(&key) {
                    Some(Some(deployment)) => OwnerRef {
                        kind: WorkloadKind::Deployment,
                        name: deployment.clone(),
                    },
                    // Ownerless, or not (yet) in the store: the ReplicaSet itself. The next model
                    // (the ReplicaSet watch fires too) corrects a not-yet-seen one.
                    Some(None) | None => OwnerRef {
                        kind: WorkloadKind::ReplicaSet,
                        name: controller.name.clone(),
                    },
                });
            }
            "StatefulSet" => WorkloadKind::StatefulSet,
            "DaemonSet" => WorkloadKind::DaemonSet,
            "Deployment" => WorkloadKind::Deployment,
            _ => return None,
        };
        Some(OwnerRef {
            kind,
            name: controller.name.clone(),
        })
    }
}

/// A Service. Headless Services (`clusterIP: None`) get no cluster IPs.
pub fn service(svc: &core::Service) -> Option<Service> {
    let (namespace, name) = ns_name(&svc.metadata)?;
    let spec = svc.spec.as_ref();
    let cluster_ips = {
        let many = spec.and_then(|s| s.cluster_ips.clone()).unwrap_or_default();
        // `clusterIPs` exists since 1.20; older servers only fill `clusterIP`.
        let ips = if many.is_empty() {
            spec.and_then(|s| s.cluster_ip.clone()).into_iter().collect()
        } else {
            many
        };
        ips.iter().filter_map(|ip| ip.parse::<IpAddr>().ok()).collect()
    };
    let ports = spec
        .and_then(|s| s.ports.as_ref())
        .map(|ports| ports.iter().filter_map(service_port).collect())
        .unwrap_or_default();
    let selector = spec
        .and_then(|s| s.selector.clone())
        .map(|s| s.into_iter().collect())
        .unwrap_or_default();
    Some(Service {
        namespace,
        name,
        cluster_ips,
        ports,
        selector,
        labels: labels(&svc.metadata),
    })
}

fn service_port(p: &core::ServicePort) -> Option<ServicePort> {
    let port = u16::try_from(p.port).ok()?;
    let target_port = p.target_port.as_ref().and_then(|t| match t {
        IntOrString::Int(n) => u16::try_from(*n).ok().map(TargetPort::Number),
        IntOrString::String(s) => Some(match s.parse::<u16>() {
            Ok(n) => TargetPort::Number(n),
            Err(_) => TargetPort::Name(s.clone()),
        }),
    });
    let protocol = match p.protocol.as_deref() {
        Some("UDP") => PortProtocol::Udp,
        Some("SCTP") => PortProtocol::Sctp,
        _ => PortProtocol::Tcp,
    };
    Some(ServicePort {
        name: p.name.clone().filter(|n| !n.is_empty()),
        port,
        target_port,
        protocol,
    })
}

/// A pod, with its owner resolved through `owners` and its readiness judged at `now` (see
/// [`crate::readiness`]). Finished pods give `None`.
pub fn pod(p: &core::Pod, owners: &OwnerIndex, now: Option<std::time::SystemTime>) -> Option<Pod> {
    let (namespace, name) = ns_name(&p.metadata)?;
    let status = p.status.as_ref();
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return None;
    }
    let ip = status
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse::<IpAddr>().ok());
    let ready_condition = crate::readiness::of(p, now).serves();
    let terminating = p.metadata.deletion_timestamp.is_some();
    let owner = controller_of(&p.metadata).and_then(|c| owners.resolve(&namespace, c));
    let named_ports: BTreeMap<String, u16> = p
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|port| Some((port.name.clone()?, u16::try_from(port.container_port).ok()?)))
        .collect();
    Some(Pod {
        namespace,
        name,
        uid: p.metadata.uid.clone().unwrap_or_default(),
        ip,
        node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
        zone: None,
        labels: labels(&p.metadata),
        owner,
        ready: ready_condition && !terminating,
        named_ports,
    })
}

/// A Deployment, StatefulSet, DaemonSet or ownerless ReplicaSet: only its identity and labels.
pub fn workload(kind: WorkloadKind, meta: &ObjectMeta) -> Option<Workload> {
    let (namespace, name) = ns_name(meta)?;
    Some(Workload {
        kind,
        namespace,
        name,
        labels: labels(meta),
    })
}

/// A `networking.k8s.io/v1` Ingress. Resource backends (not Services) are skipped.
pub fn ingress(i: &networking::Ingress) -> Option<Ingress> {
    let (namespace, name) = ns_name(&i.metadata)?;
    let spec = i.spec.as_ref();
    let default_backend = spec
        .and_then(|s| s.default_backend.as_ref())
        .and_then(ingress_backend);
    let rules = spec
        .and_then(|s| s.rules.as_ref())
        .map(|rules| {
            rules
                .iter()
                .map(|r| IngressRule {
                    host: r.host.clone().filter(|h| !h.is_empty()),
                    paths: r
                        .http
                        .iter()
                        .flat_map(|h| h.paths.iter())
                        .filter_map(|p| {
                            Some(IngressPath {
                                path: p
                                    .path
                                    .clone()
                                    .filter(|p| !p.is_empty())
                                    .unwrap_or_else(|| "/".into()),
                                path_type: match p.path_type.as_str() {
                                    "Exact" => PathType::Exact,
                                    "Prefix" => PathType::Prefix,
                                    _ => PathType::ImplementationSpecific,
                                },
                                backend: ingress_backend(&p.backend)?,
                            })
                        })
                        .collect(),
                })
                .collect()
        })
        .unwrap_or_default();
    let tls = spec
        .and_then(|s| s.tls.as_ref())
        .map(|tls| {
            tls.iter()
                .filter_map(|t| {
                    Some(IngressTls {
                        hosts: t.hosts.clone().unwrap_or_default(),
                        secret_name: t.secret_name.clone().filter(|s| !s.is_empty())?,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Ingress {
        namespace,
        name,
        labels: labels(&i.metadata),
        default_backend,
        rules,
        tls,
    })
}

fn ingress_backend(b: &networking::IngressBackend) -> Option<IngressBackend> {
    let svc = b.service.as_ref()?;
    let port = svc.port.as_ref()?;
    let port = match (port.number, &port.name) {
        (Some(n), _) => TargetPort::Number(u16::try_from(n).ok()?),
        (None, Some(name)) if !name.is_empty() => TargetPort::Name(name.clone()),
        _ => return None,
    };
    Some(IngressBackend {
        service: svc.name.clone(),
        port,
    })
}

/// A `kubernetes.io/tls` Secret with UTF-8 (PEM) `tls.crt` and `tls.key`; anything else is `None`.
pub fn tls_secret(s: &core::Secret) -> Option<TlsSecret> {
    if s.type_.as_deref() != Some(TLS_SECRET_TYPE) {
        return None;
    }
    let (namespace, name) = ns_name(&s.metadata)?;
    let data = s.data.as_ref()?;
    let text = |key: &str| String::from_utf8(data.get(key)?.0.clone()).ok();
    Some(TlsSecret {
        namespace,
        name,
        cert_pem: text("tls.crt")?,
        key_pem: text("tls.key")?,
    })
}
