//! The mesh model: the few Kubernetes facts translation needs, in plain Rust types.
//!
//! `traffic-kube-source` fills it from the API server; tests and the local demo load it from a YAML
//! file (see `examples/bookinfo.yaml`). Field names follow Kubernetes spelling (`clusterIPs`,
//! `targetPort`, `pathType`, `secretName`) so a reader who knows manifests can read the file.
//! Labels stay raw `String -> String` maps: interpreting `traffic.*` labels is `traffic-labels`'
//! job, done during translation so every invalid value is reported in one place.
//!
//! Endpoints are computed here from Service selectors and pod IPs (no EndpointSlices), so the
//! control plane works on every Kubernetes version.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Raw Kubernetes labels (or annotations).
pub type Labels = BTreeMap<String, String>;

fn default_namespace() -> String {
    "default".to_string()
}

fn default_true() -> bool {
    true
}

fn is_default_namespace(ns: &str) -> bool {
    ns == "default"
}

fn istio_is_empty(istio: &std::sync::Arc<traffic_istio::IstioConfig>) -> bool {
    istio.is_empty()
}

/// (De)serializes the shared Istio objects as the plain [`traffic_istio::IstioConfig`].
mod shared_istio {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use traffic_istio::IstioConfig;

    pub fn serialize<S: Serializer>(istio: &Arc<IstioConfig>, s: S) -> Result<S::Ok, S::Error> {
        istio.as_ref().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<IstioConfig>, D::Error> {
        IstioConfig::deserialize(d).map(Arc::new)
    }
}

/// (De)serializes a list of shared objects as the plain list (the file format has no sharing).
mod shared_list {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[allow(clippy::ptr_arg)] // serde's `with` hands over the field itself
    pub fn serialize<S: Serializer, T: Serialize>(items: &Vec<Arc<T>>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(items.iter().map(|item| &**item))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Vec<Arc<T>>, D::Error> {
        Vec::<T>::deserialize(d).map(|items| items.into_iter().map(Arc::new).collect())
    }
}

/// Everything translation looks at.
///
/// Services and pods are shared (`Arc`): a model source that rebuilds the model after one pod
/// moved hands the unchanged objects over as the same allocations, so building, comparing
/// (`Arc`'s `==` of an `Eq` type checks the pointer first) and dropping a model of 10,000 pods
/// costs pointer operations, not deep copies. Change one with [`Arc::make_mut`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshModel {
    #[serde(default, with = "shared_list")]
    pub services: Vec<Arc<Service>>,
    #[serde(default, with = "shared_list")]
    pub pods: Vec<Arc<Pod>>,
    /// Deployments, StatefulSets, DaemonSets (and ReplicaSets without a Deployment): only their
    /// labels matter (`traffic.envoy.enabled`, `traffic.endpoint.weight`).
    #[serde(default)]
    pub workloads: Vec<Workload>,
    #[serde(default)]
    pub ingresses: Vec<Ingress>,
    /// `kubernetes.io/tls` Secrets referenced by Ingress `tls[].secretName`.
    #[serde(default)]
    pub secrets: Vec<TlsSecret>,
    /// `networking.istio.io` objects (VirtualService, DestinationRule, ...), lowered into the
    /// routing model by [`crate::istio_lower`].
    ///
    /// Shared: a model file re-read or an endpoint change keeps the same objects (one pointer
    /// instead of a deep copy and comparison of thousands of objects per change).
    #[serde(default, skip_serializing_if = "istio_is_empty", with = "shared_istio")]
    pub istio: std::sync::Arc<traffic_istio::IstioConfig>,
    /// Istio's `meshConfig.outboundTrafficPolicy`: what an enabled pod's connection to a
    /// destination nobody declared does. When present it wins over `--outbound-policy`.
    #[serde(
        default,
        rename = "outboundTrafficPolicy",
        skip_serializing_if = "Option::is_none"
    )]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

/// `outboundTrafficPolicy: {mode: ALLOW_ANY | REGISTRY_ONLY}`, as in Istio's meshConfig.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    pub mode: OutboundMode,
}

/// Istio's names for [`crate::translate::OutboundPolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutboundMode {
    /// `passthrough`: unknown destinations are reached through the `passthrough` cluster
    /// (Envoy `ORIGINAL_DST`; Istio's `PassthroughCluster`).
    #[serde(rename = "ALLOW_ANY")]
    AllowAny,
    /// `block`: unknown destinations go to the `blackhole` cluster (Istio's `BlackHoleCluster`),
    /// HTTP to a host no ServiceEntry declares gets 502.
    #[serde(rename = "REGISTRY_ONLY")]
    RegistryOnly,
}

impl OutboundMode {
    pub fn policy(self) -> crate::translate::OutboundPolicy {
        match self {
            OutboundMode::AllowAny => crate::translate::OutboundPolicy::Passthrough,
            OutboundMode::RegistryOnly => crate::translate::OutboundPolicy::Block,
        }
    }
}

/// A Kubernetes Service (ClusterIP; headless Services have no `clusterIPs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Service {
    #[serde(default = "default_namespace", skip_serializing_if = "is_default_namespace")]
    pub namespace: String,
    pub name: String,
    /// `spec.clusterIPs` (IPv4 and/or IPv6). Empty for headless Services.
    #[serde(default, rename = "clusterIPs")]
    pub cluster_ips: Vec<IpAddr>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// `spec.selector`; a Service without selector has no computed endpoints.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: Labels,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
}

impl Service {
    /// Whether this Service selects `pod`: same namespace and a non-empty selector whose every
    /// label the pod carries.
    pub fn selects(&self, pod: &Pod) -> bool {
        !self.selector.is_empty()
            && pod.namespace == self.namespace
            && self.selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
    }
}

/// One entry of `spec.ports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    /// Defaults to `port` when absent, as in Kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<TargetPort>,
    #[serde(default)]
    pub protocol: PortProtocol,
}

/// L4 protocol of a Service port. Only TCP ports are proxied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PortProtocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

/// `targetPort`: a number, or the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// The top-level controller of a pod (ReplicaSet already resolved to its Deployment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
    /// A ReplicaSet not owned by a Deployment.
    ReplicaSet,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::ReplicaSet => "ReplicaSet",
        }
    }
}

/// A reference from a pod to its (resolved) owner, in the pod's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerRef {
    pub kind: WorkloadKind,
    pub name: String,
}

/// A Deployment, StatefulSet, DaemonSet or ownerless ReplicaSet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub kind: WorkloadKind,
    #[serde(default = "default_namespace", skip_serializing_if = "is_default_namespace")]
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
}

/// A pod, with its owner chain already resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pod {
    #[serde(default = "default_namespace", skip_serializing_if = "is_default_namespace")]
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// `status.podIP`; pods without an IP yet are not endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// `spec.nodeName`; used as the endpoint locality's sub-zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The node's `topology.kubernetes.io/zone`, if known; the endpoint locality's zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerRef>,
    /// The Ready condition; not-ready pods are not endpoints. Defaults to true in YAML.
    #[serde(default = "default_true")]
    pub ready: bool,
    /// Named container ports (`name -> containerPort`), to resolve a Service's named `targetPort`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub named_ports: BTreeMap<String, u16>,
}

impl Pod {
    /// The Envoy node id of this pod's sidecar: `<pod name>.<namespace>`.
    pub fn node_id(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }

    /// The port on this pod that a Service port targets, if it resolves.
    pub fn resolve_target_port(&self, port: &ServicePort) -> Option<u16> {
        match &port.target_port {
            None => Some(port.port),
            Some(TargetPort::Number(n)) => Some(*n),
            Some(TargetPort::Name(name)) => self.named_ports.get(name).copied(),
        }
    }
}

/// A `networking.k8s.io/v1` Ingress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Ingress {
    #[serde(default = "default_namespace", skip_serializing_if = "is_default_namespace")]
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_backend: Option<IngressBackend>,
    #[serde(default)]
    pub rules: Vec<IngressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<IngressTls>,
}

/// `spec.rules[]`. A rule without host matches every host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default)]
    pub paths: Vec<IngressPath>,
}

/// `spec.rules[].http.paths[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressPath {
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default)]
    pub path_type: PathType,
    pub backend: IngressBackend,
}

fn default_path() -> String {
    "/".to_string()
}

/// `pathType`. `ImplementationSpecific` is treated as `Prefix`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathType {
    Exact,
    #[default]
    Prefix,
    ImplementationSpecific,
}

/// `backend.service` (resource backends are not supported).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressBackend {
    /// Service name, in the Ingress's namespace.
    pub service: String,
    /// `port.number` or `port.name` of the Service.
    pub port: TargetPort,
}

/// `spec.tls[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressTls {
    #[serde(default)]
    pub hosts: Vec<String>,
    pub secret_name: String,
}

/// A `kubernetes.io/tls` Secret: PEM certificate chain and private key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsSecret {
    #[serde(default = "default_namespace", skip_serializing_if = "is_default_namespace")]
    pub namespace: String,
    pub name: String,
    /// `tls.crt`
    pub cert_pem: String,
    /// `tls.key`
    pub key_pem: String,
}

impl std::fmt::Debug for TlsSecret {
    // Never print private keys in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSecret")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("cert_pem_len", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl MeshModel {
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| s.namespace == namespace && s.name == name)
            .map(|s| &**s)
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
            .map(|p| &**p)
    }

    pub fn secret(&self, namespace: &str, name: &str) -> Option<&TlsSecret> {
        self.secrets
            .iter()
            .find(|s| s.namespace == namespace && s.name == name)
    }

    /// The resolved owner workload of a pod, if the model knows it.
    pub fn owner_of(&self, pod: &Pod) -> Option<&Workload> {
        let owner = pod.owner.as_ref()?;
        self.workloads
            .iter()
            .find(|w| w.kind == owner.kind && w.namespace == pod.namespace && w.name == owner.name)
    }
}

mod endpoints;
mod file;
mod share;

pub use endpoints::{endpoints_of, Endpoint, PodIndex};
pub use file::{read_model_file, ModelError};

/// A small model (three reviews pods, one ready with an IP) for the submodules' unit tests.
#[cfg(test)]
const SMALL: &str = r#"
services:
- name: reviews
  clusterIPs: [10.96.0.20]
  ports:
  - {name: http, port: 9080, targetPort: http}
  selector: {app: reviews}
  labels: {traffic.port.9080: http}
pods:
- name: reviews-v1-1
  ip: 172.17.0.5
  labels: {app: reviews}
  owner: {kind: Deployment, name: reviews-v1}
  namedPorts: {http: 9080}
- name: reviews-v2-1
  ip: 172.17.0.6
  labels: {app: reviews}
  ready: false
  namedPorts: {http: 9080}
- name: reviews-v3-1
  labels: {app: reviews}
workloads:
- kind: Deployment
  name: reviews-v1
  labels: {traffic.envoy.enabled: true, traffic.endpoint.weight: 10}
"#;
