//! Pure translation: [`MeshModel`] + [`Options`] -> [`Snapshot`] of Envoy v3 resources.
//!
//! Every resource is computed and encoded once and shared (`Arc`) by all sidecars; a pod gets its
//! own copy of a resource only where its own labels change it (pod-level traffic policy or port
//! protocols; optionally the pod being an endpoint of a Service it calls, see [`Options`]). The ingress
//! gateway (`traffic-ingress`) gets the Ingress listeners plus the same clusters and endpoints.
//!
//! Choices worth knowing (see also the field docs of [`Options`]):
//! - The outbound listener restores the original destination with the `original_dst` *listener
//!   filter* and matches one filter chain per service `clusterIP:port`. It does not set
//!   `use_original_dst`: that hand-off would steer a connection for any `<ip>:8900` to the local
//!   stats listener bound on `0.0.0.0:8900`.
//! - `traffic.rate.limit` becomes Envoy's `bandwidth_limit` HTTP filter (request and response,
//!   `limit_kbps` = the label value, which Envoy counts in KiB/s) configured per virtual host, so
//!   its token bucket is shared by all requests of one client pod to one service: a real
//!   per-client limit. The fault filter's `response_rate_limit` would only slow each response.
//! - A route's timeout is always set (0 = none) because Envoy's default is 15 s, and the contract
//!   says "0 = none".
//! - Maps inside protobufs (`typed_per_filter_config`) hold at most one entry, so encoding is
//!   deterministic and content-hash versions only change when the config does.
//! - Resources built from many objects (the outbound and stats listeners, `admin`, `zipkin`,
//!   `blackhole`, `passthrough`, the ingress route/listeners when several Ingresses exist) have
//!   `origin: None`; an outbound filter chain is named like its cluster, and
//!   [`ObjectRef::from_cluster_name`] maps that name back to the Service.
//!
//! Label -> Envoy field (all checked by `tests/labels_to_envoy.rs`, behaviour by real Envoy in
//! `tests/envoy_serves.rs` and `tests/envoy_gateway.rs`):
//!
//! | label | Envoy |
//! |---|---|
//! | `traffic.port.<N>` `http`/`tcp`/`direct` | outbound filter chain (`clusterIP/32`, port N): HCM + RDS `<N>\|<ns>\|<svc>` / tcp_proxy / tcp_proxy to `passthrough`; none: default chain (`blackhole`, or `passthrough`) |
//! | `traffic.endpoint.weight` | `LbEndpoint.load_balancing_weight`; 0 = endpoint left out; locality weight = sum |
//! | `traffic.lb.policy` | `Cluster.lb_policy` |
//! | `traffic.hash.cookie.name`/`.ttl` | `RouteAction.hash_policy[].cookie{name, ttl, path "/"}` + `RING_HASH` (unless `maglev`) |
//! | `traffic.hash.header.name` | `RouteAction.hash_policy[].header` + `RING_HASH` (unless `maglev`) |
//! | `traffic.connection.timeout` | `Cluster.connect_timeout` (default 60 s) |
//! | `traffic.request.timeout` | `RouteAction.timeout` (0 = none, always set) |
//! | `traffic.retries.{5xx,connect-failure,gateway-error}` | `RetryPolicy.retry_on` (those > 0) + `num_retries` (the largest) |
//! | `traffic.retries.max`, `connection.max`, `request.max-pending`, `request.max` | `Cluster.circuit_breakers.thresholds[DEFAULT]` (0 = unset) |
//! | `traffic.fault.delay.*`, `traffic.fault.abort.*` | route `typed_per_filter_config["envoy.filters.http.fault"]` (sidecars only) |
//! | `traffic.rate.limit` | virtual host `typed_per_filter_config["envoy.filters.http.bandwidth_limit"]` (sidecars only) |
//! | `traffic.tracing.enabled`/`.sampling` | `Route.tracing.random_sampling` (HCM has the Zipkin provider at 0 %) |

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds, cluster, CircuitBreakers, Cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    data_source, transport_socket, DataSource, Locality, TrafficDirection, TransportSocket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint as PbEndpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, listener_filter, Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_action::hash_policy, route_match, DirectResponseAction, Route, RouteAction,
    RouteConfiguration, RouteMatch, Tracing as RouteTracing, VirtualHost,
};
use envoy_types::pb::envoy::config::trace::v3::{tracing, zipkin_config, ZipkinConfig};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{fault_delay, FaultDelay};
use envoy_types::pb::envoy::extensions::filters::http::bandwidth_limit::v3::{
    bandwidth_limit::EnableMode, BandwidthLimit,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{fault_abort, FaultAbort, HttpFault};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret, TlsCertificate,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{http_protocol_options, HttpProtocolOptions};
use envoy_types::pb::envoy::r#type::v3::Percent as PbPercent;
use envoy_types::pb::google::protobuf::{BoolValue, UInt64Value};
use traffic_labels::{
    effective_enabled, effective_weight, parse, ClusterPolicy, LabelError, LbPolicy, ObjectKind,
    PortProtocol, Settings, TrafficPolicy,
};

use crate::envoy::{self, names, resource};
use crate::model::{
    Ingress, IngressBackend, MeshModel, PathType, Pod, PortProtocol as L4, Service, ServicePort, TargetPort,
    WorkloadKind,
};
use crate::snapshot::{
    MeshSnapshot, NodeResources, ObjectRef, Resources, CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET,
};

/// The ingress gateway's Envoy node id.
pub const INGRESS_NODE_ID: &str = "traffic-ingress";
pub const OUTBOUND_LISTENER: &str = "outbound";
pub const STATS_LISTENER: &str = "prometheus_stats";
pub const INGRESS_HTTP_LISTENER: &str = "ingress_http";
pub const INGRESS_HTTPS_LISTENER: &str = "ingress_https";
/// The RouteConfiguration shared by both ingress listeners.
pub const INGRESS_ROUTE: &str = "ingress";
pub const ADMIN_CLUSTER: &str = "admin";
pub const ZIPKIN_CLUSTER: &str = "zipkin";
pub const PASSTHROUGH_CLUSTER: &str = "passthrough";
/// A cluster without endpoints: the default chain under [`OutboundPolicy::Block`] proxies to it,
/// so blocked connections are closed at once and counted
/// (`envoy_cluster_upstream_cx_none_healthy{envoy_cluster_name="blackhole"}`).
pub const BLACKHOLE_CLUSTER: &str = "blackhole";
/// `stat_prefix` of the bandwidth limit filter (`http.<hcm>.bandwidth_limit.*` stats... per route).
const RATE_LIMIT_STAT_PREFIX: &str = "rate_limit";

/// What happens to an enabled pod's outbound connection to a destination with no protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OutboundPolicy {
    /// The connection is accepted and closed at once (the original project's behaviour): the
    /// default chain proxies to [`BLACKHOLE_CLUSTER`]. (A listener without any chain is not an
    /// option: Envoy rejects it when no service has a protocol yet.)
    #[default]
    Block,
    /// A default filter chain proxies it as plain TCP to its original destination.
    Passthrough,
}

/// How the ingress gateway gets TLS certificates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TlsDelivery {
    /// Inline in the listener (Envoy redacts private keys in its config dump).
    #[default]
    Inline,
    /// As SDS `Secret` resources (named `<namespace>/<name>`) over the same ADS stream.
    Sds,
}

/// A Zipkin collector, e.g. `zipkin.default.svc.cluster.local:9411` or `10.96.0.50:9411`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collector {
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for Collector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("zipkin collector {s:?} must be host:port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("zipkin collector {s:?}: bad port"))?;
        if host.is_empty() {
            return Err(format!("zipkin collector {s:?}: empty host"));
        }
        Ok(Collector {
            host: host.to_string(),
            port,
        })
    }
}

/// Knobs of the translation that are not labels (chart values / CLI flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub outbound_policy: OutboundPolicy,
    /// Where redirected outbound connections arrive (15001).
    pub outbound_port: u16,
    /// `Some(8900)`: every sidecar gets a listener on this port exposing only
    /// `/stats/prometheus` of its admin interface. `None` if the bootstrap already has it.
    pub stats_port: Option<u16>,
    /// Envoy's admin port on 127.0.0.1 (target of the stats listener).
    pub admin_port: u16,
    /// Tracing is configured only when a collector is known.
    pub zipkin: Option<Collector>,
    pub ingress_http_port: u16,
    pub ingress_https_port: u16,
    pub ingress_tls: TlsDelivery,
    /// When true, a sidecar reaches its *own* pod (when it calls a Service it is an endpoint of)
    /// on 127.0.0.1 unless the pod has `traffic.envoy.local.use_podip=true`. Off by default:
    /// every such pod then needs its own copy of its Service's endpoint assignment (no sharing),
    /// and the pod IP always works for a Service endpoint anyway. Sidecars have no inbound
    /// listener in this design, so this is the only place `use_podip` can matter.
    pub local_endpoint_via_loopback: bool,
    /// The time TLS certificates are checked against (expired: not served; within 14 days of
    /// expiry: a warning). `None`: the current time when [`translate`] runs, which is the one
    /// input that is not the model; tests pin it.
    pub now: Option<std::time::SystemTime>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            outbound_policy: OutboundPolicy::Block,
            outbound_port: 15001,
            stats_port: Some(8900),
            admin_port: 15000,
            zipkin: None,
            ingress_http_port: 8080,
            ingress_https_port: 8443,
            ingress_tls: TlsDelivery::Inline,
            local_endpoint_via_loopback: false,
            now: None,
        }
    }
}

/// An invalid label, with the object it sits on (for a log line and a Kubernetes Event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectLabelError {
    pub object: ObjectRef,
    pub error: LabelError,
}

impl fmt::Display for ObjectLabelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.error)
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

impl ObjectRef {
    pub fn new(kind: &str, namespace: &str, name: &str) -> Self {
        ObjectRef {
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The Service a cluster, route configuration, endpoint assignment or outbound filter chain
    /// named `<port>|<namespace>|<service>` belongs to.
    pub fn from_cluster_name(name: &str) -> Option<ObjectRef> {
        let mut parts = name.split('|');
        let (port, ns, svc) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || port.parse::<u16>().is_err() {
            return None;
        }
        Some(ObjectRef::new("Service", ns, svc))
    }
}

/// Something in the model that could not be translated (the rest still is).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("{ingress}: backend Service {service} not found")]
    MissingService { ingress: ObjectRef, service: String },
    #[error("{ingress}: Service {service} has no TCP port {port}")]
    MissingPort {
        ingress: ObjectRef,
        service: String,
        port: String,
    },
    #[error("{ingress}: TLS Secret {secret} not found; its hosts are not served over HTTPS")]
    MissingSecret { ingress: ObjectRef, secret: String },
    #[error("{ingress}: TLS host {host:?} is already served by another Ingress; ignored here")]
    DuplicateTlsHost { ingress: ObjectRef, host: String },
    #[error("{ingress}: TLS Secret {secret} is not usable, its hosts are not served over HTTPS: {error}")]
    InvalidTlsSecret {
        ingress: ObjectRef,
        secret: String,
        error: crate::tls::TlsError,
    },
    #[error("{ingress}: the certificate of TLS Secret {secret} expires on {not_after}")]
    TlsSecretExpiringSoon {
        ingress: ObjectRef,
        secret: String,
        not_after: String,
    },
    #[error("{ingress}: host {host:?} ignored: {error}")]
    InvalidHost {
        ingress: ObjectRef,
        host: String,
        error: crate::ingress_check::IngressValueError,
    },
    #[error("{ingress}: path {path:?} ignored: {error}")]
    InvalidPath {
        ingress: ObjectRef,
        path: String,
        error: crate::ingress_check::IngressValueError,
    },
}

impl Problem {
    /// The object to report the problem on.
    pub fn object(&self) -> &ObjectRef {
        match self {
            Problem::MissingService { ingress, .. }
            | Problem::MissingPort { ingress, .. }
            | Problem::MissingSecret { ingress, .. }
            | Problem::DuplicateTlsHost { ingress, .. }
            | Problem::InvalidTlsSecret { ingress, .. }
            | Problem::TlsSecretExpiringSoon { ingress, .. }
            | Problem::InvalidHost { ingress, .. }
            | Problem::InvalidPath { ingress, .. } => ingress,
        }
    }

    /// The TLS Secret (in the Ingress's namespace) the problem is about, if any: it is reported
    /// there too, where whoever renews the certificate looks.
    pub fn secret(&self) -> Option<ObjectRef> {
        match self {
            Problem::InvalidTlsSecret { ingress, secret, .. }
            | Problem::TlsSecretExpiringSoon { ingress, secret, .. } => {
                Some(ObjectRef::new("Secret", &ingress.namespace, secret))
            }
            _ => None,
        }
    }
}

/// The output of [`translate`].
#[derive(Debug, Clone)]
pub struct Translation {
    pub snapshot: Snapshot,
    pub label_errors: Vec<ObjectLabelError>,
    pub problems: Vec<Problem>,
}

/// The computed configuration of the whole mesh.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    sidecar: NodeResources,
    ingress: NodeResources,
    per_node: BTreeMap<String, NodeResources>,
}

impl MeshSnapshot for Snapshot {
    fn for_node(&self, node_id: &str) -> NodeResources {
        if node_id == INGRESS_NODE_ID {
            return self.ingress.clone();
        }
        self.per_node.get(node_id).unwrap_or(&self.sidecar).clone()
    }
}

impl Snapshot {
    /// Node ids (`<pod>.<namespace>`) whose configuration differs from the shared sidecar one.
    pub fn overridden_nodes(&self) -> impl Iterator<Item = &str> {
        self.per_node.keys().map(String::as_str)
    }

    /// Every distinct node view: ("sidecar default" | node id, resources).
    pub fn views(&self) -> impl Iterator<Item = (&str, &NodeResources)> {
        [("<sidecar>", &self.sidecar), (INGRESS_NODE_ID, &self.ingress)]
            .into_iter()
            .chain(self.per_node.iter().map(|(k, v)| (k.as_str(), v)))
    }

    /// Check that every route configuration, cluster, endpoint assignment and secret a node's
    /// resources refer to is also sent to that node (go-control-plane's `Consistent()`).
    pub fn validate(&self) -> Result<(), Vec<crate::consistency::Inconsistency>> {
        let mut all = Vec::new();
        for (node, resources) in self.views() {
            if let Err(errors) = crate::consistency::check(resources) {
                all.extend(errors.into_iter().map(|mut e| {
                    e.set_node(node);
                    e
                }));
            }
        }
        if all.is_empty() {
            Ok(())
        } else {
            Err(all)
        }
    }
}

fn service_ref(svc: &Service) -> ObjectRef {
    ObjectRef::new("Service", &svc.namespace, &svc.name)
}

fn pod_ref(pod: &Pod) -> ObjectRef {
    ObjectRef::new("Pod", &pod.namespace, &pod.name)
}

fn ingress_ref(ing: &Ingress) -> ObjectRef {
    ObjectRef::new("Ingress", &ing.namespace, &ing.name)
}

/// `<port>|<namespace>|<service>`.
pub fn cluster_name(svc: &Service, port: &ServicePort) -> String {
    format!("{}|{}|{}", port.port, svc.namespace, svc.name)
}

struct SvcCtx<'m> {
    svc: &'m Service,
    /// Pods the Service selects (ready or not).
    pods: Vec<&'m Pod>,
    settings: Settings,
    origin: ObjectRef,
    ports: Vec<PortCtx<'m>>,
}

struct PortCtx<'m> {
    port: &'m ServicePort,
    cluster: String,
    /// From the Service's `traffic.port.<N>`, or `http` when an Ingress names the port.
    protocol: Option<PortProtocol>,
}

struct PodCtx<'m> {
    pod: &'m Pod,
    settings: Settings,
    enabled: bool,
    weight: u8,
}

struct Ctx<'m> {
    model: &'m MeshModel,
    opts: &'m Options,
    services: Vec<SvcCtx<'m>>,
    pods: BTreeMap<(&'m str, &'m str), PodCtx<'m>>,
}

impl<'m> Ctx<'m> {
    fn new(model: &'m MeshModel, opts: &'m Options, errors: &mut Vec<ObjectLabelError>) -> Self {
        let mut report = |object: ObjectRef, errs: Vec<LabelError>| {
            errors.extend(errs.into_iter().map(|error| ObjectLabelError {
                object: object.clone(),
                error,
            }));
        };

        let mut workloads: BTreeMap<(WorkloadKind, &str, &str), Settings> = BTreeMap::new();
        for w in &model.workloads {
            let parsed = parse(ObjectKind::Workload, &w.labels);
            report(
                ObjectRef::new(w.kind.as_str(), &w.namespace, &w.name),
                parsed.errors,
            );
            workloads.insert((w.kind, &w.namespace, &w.name), parsed.settings);
        }

        let mut pods = BTreeMap::new();
        for pod in &model.pods {
            let parsed = parse(ObjectKind::Pod, &pod.labels);
            report(pod_ref(pod), parsed.errors);
            let owner = pod
                .owner
                .as_ref()
                .and_then(|o| workloads.get(&(o.kind, &*pod.namespace, &*o.name)));
            pods.insert(
                (&*pod.namespace, &*pod.name),
                PodCtx {
                    pod,
                    enabled: effective_enabled(&parsed.settings, owner),
                    weight: effective_weight(&parsed.settings, owner),
                    settings: parsed.settings,
                },
            );
        }

        // Service ports named by an Ingress are `http` unless labelled otherwise.
        let mut ingress_ports: BTreeSet<(&str, &str, u16)> = BTreeSet::new();
        for ing in &model.ingresses {
            for backend in ingress_backends(ing) {
                if let Some(svc) = model.service(&ing.namespace, &backend.service) {
                    if let Some(port) = resolve_service_port(svc, &backend.port) {
                        ingress_ports.insert((&svc.namespace, &svc.name, port.port));
                    }
                }
            }
        }

        let index = crate::model::PodIndex::new(&model.pods);
        let mut services = Vec::new();
        for svc in &model.services {
            let parsed = parse(ObjectKind::Service, &svc.labels);
            report(service_ref(svc), parsed.errors);
            let ports = svc
                .ports
                .iter()
                .filter(|p| p.protocol == L4::Tcp)
                .map(|port| PortCtx {
                    port,
                    cluster: cluster_name(svc, port),
                    protocol: parsed.settings.ports.get(&port.port).copied().or_else(|| {
                        ingress_ports
                            .contains(&(&*svc.namespace, &*svc.name, port.port))
                            .then_some(PortProtocol::Http)
                    }),
                })
                .collect();
            services.push(SvcCtx {
                svc,
                pods: index.selected(svc),
                settings: parsed.settings,
                origin: service_ref(svc),
                ports,
            });
        }
        Ctx {
            model,
            opts,
            services,
            pods,
        }
    }

    fn pod_ctx(&self, pod: &'m Pod) -> Option<&PodCtx<'m>> {
        self.pods.get(&(&*pod.namespace, &*pod.name))
    }
}

fn ingress_backends(ing: &Ingress) -> impl Iterator<Item = &IngressBackend> {
    ing.default_backend
        .iter()
        .chain(ing.rules.iter().flat_map(|r| r.paths.iter().map(|p| &p.backend)))
}

fn resolve_service_port<'s>(svc: &'s Service, port: &TargetPort) -> Option<&'s ServicePort> {
    svc.ports
        .iter()
        .filter(|p| p.protocol == L4::Tcp)
        .find(|p| match port {
            TargetPort::Number(n) => p.port == *n,
            TargetPort::Name(name) => p.name.as_deref() == Some(name.as_str()),
        })
}

/// Translate the whole model. Pure and deterministic: the same model and options always give
/// byte-identical resources (and so identical versions).
pub fn translate(model: &MeshModel, opts: &Options) -> Translation {
    let mut label_errors = Vec::new();
    let mut problems = Vec::new();
    let ctx = Ctx::new(model, opts, &mut label_errors);

    // Clusters and endpoint assignments: identical for every node.
    let mut clusters = Resources::new();
    let mut endpoints = Resources::new();
    for s in &ctx.services {
        for p in &s.ports {
            let c = service_cluster(&p.cluster, &s.settings.cluster);
            clusters.insert(
                p.cluster.clone(),
                Arc::new(resource(&p.cluster, &c, Some(s.origin.clone()))),
            );
            let cla = load_assignment(&ctx, s, p, None);
            endpoints.insert(
                p.cluster.clone(),
                Arc::new(resource(&p.cluster, &cla, Some(s.origin.clone()))),
            );
        }
    }
    if let Some(zipkin) = &opts.zipkin {
        let c = zipkin_cluster(zipkin);
        clusters.insert(
            ZIPKIN_CLUSTER.into(),
            Arc::new(resource(ZIPKIN_CLUSTER, &c, None)),
        );
    }
    let mut sidecar_clusters = clusters.clone();
    if opts.stats_port.is_some() {
        let c = admin_cluster(opts.admin_port);
        sidecar_clusters.insert(ADMIN_CLUSTER.into(), Arc::new(resource(ADMIN_CLUSTER, &c, None)));
    }
    // `passthrough` always: `direct` ports that still reach Envoy go to their original destination.
    let c = passthrough_cluster();
    sidecar_clusters.insert(
        PASSTHROUGH_CLUSTER.into(),
        Arc::new(resource(PASSTHROUGH_CLUSTER, &c, None)),
    );
    match opts.outbound_policy {
        OutboundPolicy::Passthrough => {}
        OutboundPolicy::Block => {
            let c = blackhole_cluster();
            sidecar_clusters.insert(
                BLACKHOLE_CLUSTER.into(),
                Arc::new(resource(BLACKHOLE_CLUSTER, &c, None)),
            );
        }
    }

    // The shared sidecar view.
    let no_override = Settings::default();
    let routes = sidecar_routes(&ctx, &no_override, None);
    let mut listeners = Resources::new();
    let outbound = outbound_listener(&ctx, &no_override);
    listeners.insert(
        OUTBOUND_LISTENER.into(),
        Arc::new(resource(OUTBOUND_LISTENER, &outbound, None)),
    );
    if let Some(port) = opts.stats_port {
        let l = stats_listener(port);
        listeners.insert(
            STATS_LISTENER.into(),
            Arc::new(resource(STATS_LISTENER, &l, None)),
        );
    }
    let sidecar = node_resources(listeners, routes, sidecar_clusters, endpoints.clone(), None);

    // Per-node overrides, only for enabled pods whose labels change something.
    let mut per_node = BTreeMap::new();
    for pc in ctx.pods.values().filter(|pc| pc.enabled) {
        if let Some(view) = pod_override(&ctx, pc, &sidecar) {
            per_node.insert(pc.pod.node_id(), view);
        }
    }

    let mut ingress = gateway(&ctx, clusters, endpoints, &mut problems);
    // The gateway exposes the same Prometheus stats listener as the sidecars (shared resources).
    for (type_url, name) in [(LISTENER, STATS_LISTENER), (CLUSTER, ADMIN_CLUSTER)] {
        if let Some(r) = sidecar.by_type.get(type_url).and_then(|m| m.get(name)) {
            ingress
                .by_type
                .entry(type_url)
                .or_default()
                .insert(name.to_string(), r.clone());
        }
    }

    Translation {
        snapshot: Snapshot {
            sidecar,
            ingress,
            per_node,
        },
        label_errors,
        problems,
    }
}

/// Re-translation after a model change that only moved pods (IP, readiness, node, zone, named
/// ports; same pods with the same labels and owners, and the same Services, workloads, Ingresses and
/// Secrets): the endpoint assignments of the Services selecting a moved pod are translated again and
/// everything else is `prev`'s (the same `Arc`s). Gives exactly what [`translate`] gives for `model`,
/// in a fraction of the time; `None` when the change is anything else (or the options give pods
/// their own endpoint assignments), and then [`translate`] is needed. (Added for the xDS scale
/// benchmark: one endpoint change re-translated 1,000 Services.)
pub fn translate_endpoint_change(
    prev_model: &MeshModel,
    prev: &Translation,
    model: &MeshModel,
    opts: &Options,
) -> Option<Translation> {
    if opts.local_endpoint_via_loopback
        || prev_model.pods.len() != model.pods.len()
        || prev_model.services != model.services
        || prev_model.workloads != model.workloads
        || prev_model.ingresses != model.ingresses
        || prev_model.secrets != model.secrets
    {
        return None;
    }
    let mut moved = Vec::new();
    for (a, b) in prev_model.pods.iter().zip(&model.pods) {
        if a.namespace != b.namespace
            || a.name != b.name
            || a.uid != b.uid
            || a.labels != b.labels
            || a.owner != b.owner
        {
            return None;
        }
        if a != b {
            moved.push(b);
        }
    }
    if moved.is_empty() {
        return Some(prev.clone());
    }
    if moved.len() > 64 {
        return None; // a mass change: one full translation is as quick
    }
    // Labels did not change, so the same Services select the moved pods before and after.
    let services: Vec<Service> = model
        .services
        .iter()
        .filter(|s| moved.iter().any(|p| s.selects(p)))
        .cloned()
        .collect();
    // Those Services with their pods (in model order) and every workload (endpoint weights) are
    // all an endpoint assignment depends on.
    let pods: Vec<Pod> = model
        .pods
        .iter()
        .filter(|p| services.iter().any(|s| s.selects(p)))
        .cloned()
        .collect();
    let part = MeshModel {
        services,
        pods,
        workloads: model.workloads.clone(),
        ingresses: Vec::new(),
        secrets: Vec::new(),
    };
    let fresh = translate(&part, opts).snapshot.sidecar.by_type.remove(ENDPOINT)?;
    let mut snapshot = prev.snapshot.clone();
    let old = prev.snapshot.sidecar.by_type.get(ENDPOINT)?;
    for view in [&mut snapshot.sidecar, &mut snapshot.ingress]
        .into_iter()
        .chain(snapshot.per_node.values_mut())
    {
        let Some(endpoints) = view.by_type.get_mut(ENDPOINT) else {
            continue;
        };
        for (name, new) in &fresh {
            if let Some(r) = endpoints.get_mut(name) {
                // Only the shared assignment is replaced; a view with its own copy is not
                // something this shortcut knows how to update.
                if !old.get(name).is_some_and(|o| Arc::ptr_eq(o, r)) {
                    return None;
                }
                *r = new.clone();
            }
        }
    }
    Some(Translation {
        snapshot,
        label_errors: prev.label_errors.clone(),
        problems: prev.problems.clone(),
    })
}

fn node_resources(
    listeners: Resources,
    routes: Resources,
    clusters: Resources,
    endpoints: Resources,
    secrets: Option<Resources>,
) -> NodeResources {
    let mut by_type = BTreeMap::new();
    by_type.insert(LISTENER, listeners);
    by_type.insert(ROUTE, routes);
    by_type.insert(CLUSTER, clusters);
    by_type.insert(ENDPOINT, endpoints);
    if let Some(secrets) = secrets {
        by_type.insert(SECRET, secrets);
    }
    NodeResources { by_type }
}

/// The protocol a sidecar uses for a service port: the pod's own `traffic.port.<N>` wins.
fn protocol_at(pod: &Settings, p: &PortCtx<'_>) -> Option<PortProtocol> {
    pod.ports.get(&p.port.port).copied().or(p.protocol)
}

/// Route configurations of a sidecar: one per `http` service port, named like its cluster.
fn sidecar_routes(ctx: &Ctx<'_>, pod: &Settings, pod_origin: Option<&ObjectRef>) -> Resources {
    let mut out = Resources::new();
    for s in &ctx.services {
        let traffic = pod.traffic.overlay(&s.settings.traffic);
        for p in &s.ports {
            if protocol_at(pod, p) != Some(PortProtocol::Http) {
                continue;
            }
            let rc = service_route_config(&p.cluster, &s.settings.cluster, &traffic, Side::Sidecar, ctx.opts);
            let origin = pod_origin.cloned().unwrap_or_else(|| s.origin.clone());
            out.insert(
                p.cluster.clone(),
                Arc::new(resource(&p.cluster, &rc, Some(origin))),
            );
        }
    }
    out
}

/// A copy of the shared sidecar view with the resources this pod's labels change, or `None` when
/// nothing changes. Unchanged resources stay the shared `Arc`s.
fn pod_override(ctx: &Ctx<'_>, pc: &PodCtx<'_>, shared: &NodeResources) -> Option<NodeResources> {
    let labelled = !pc.settings.ports.is_empty() || !pc.settings.traffic.is_empty();
    let loopback = ctx.opts.local_endpoint_via_loopback
        && pc.settings.use_podip != Some(true)
        && pc.pod.ready
        && pc.pod.ip.is_some();
    if !labelled && !loopback {
        // The common case: cloning the shared view (thousands of `Arc`s) per pod would make
        // translation quadratic.
        return None;
    }
    let origin = pod_ref(pc.pod);
    let mut view = shared.clone();
    let mut changed = false;

    if !pc.settings.ports.is_empty() || !pc.settings.traffic.is_empty() {
        let routes = sidecar_routes(ctx, &pc.settings, Some(&origin));
        let shared_routes = shared.by_type.get(ROUTE).cloned().unwrap_or_default();
        let merged = share_identical(routes, &shared_routes);
        if merged != shared_routes {
            view.by_type.insert(ROUTE, merged);
            changed = true;
        }
        if !pc.settings.ports.is_empty() {
            let l = outbound_listener(ctx, &pc.settings);
            let r = Arc::new(resource(OUTBOUND_LISTENER, &l, Some(origin.clone())));
            let shared_l = shared
                .by_type
                .get(LISTENER)
                .and_then(|m| m.get(OUTBOUND_LISTENER));
            if shared_l.map(|s| s.body != r.body).unwrap_or(true) {
                view.by_type
                    .entry(LISTENER)
                    .or_default()
                    .insert(OUTBOUND_LISTENER.into(), r);
                changed = true;
            }
        }
    }

    // A pod calling a service it is itself an endpoint of reaches itself on 127.0.0.1 unless
    // `traffic.envoy.local.use_podip=true`.
    if loopback {
        for s in &ctx.services {
            if !s.pods.iter().any(|p| std::ptr::eq(*p, pc.pod)) {
                continue;
            }
            for p in &s.ports {
                let cla = load_assignment(ctx, s, p, Some(pc.pod));
                let r = resource(&p.cluster, &cla, Some(origin.clone()));
                let same = shared
                    .by_type
                    .get(ENDPOINT)
                    .and_then(|m| m.get(&p.cluster))
                    .map(|x| x.body == r.body)
                    .unwrap_or(false);
                if !same {
                    view.by_type
                        .entry(ENDPOINT)
                        .or_default()
                        .insert(p.cluster.clone(), Arc::new(r));
                    changed = true;
                }
            }
        }
    }
    changed.then_some(view)
}

/// Reuse the shared `Arc` wherever the per-node resource has the same body.
fn share_identical(mine: Resources, shared: &Resources) -> Resources {
    mine.into_iter()
        .map(|(name, r)| match shared.get(&name) {
            Some(s) if s.body == r.body => (name, s.clone()),
            _ => (name, r),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Clusters and endpoints

fn service_cluster(name: &str, policy: &ClusterPolicy) -> Cluster {
    let hashing = policy.hash_cookie_name.is_some() || policy.hash_header_name.is_some();
    let lb = match (policy.lb_policy.unwrap_or_default(), hashing) {
        (LbPolicy::Maglev, _) => cluster::LbPolicy::Maglev,
        (LbPolicy::RingHash, _) | (_, true) => cluster::LbPolicy::RingHash,
        (LbPolicy::RoundRobin, false) => cluster::LbPolicy::RoundRobin,
        (LbPolicy::LeastRequest, false) => cluster::LbPolicy::LeastRequest,
        (LbPolicy::Random, false) => cluster::LbPolicy::Random,
    };
    let nonzero = |v: Option<u32>| v.filter(|n| *n > 0).map(envoy::u32_value);
    let thresholds = Thresholds {
        max_connections: nonzero(policy.connection_max),
        max_pending_requests: nonzero(policy.request_max_pending),
        max_requests: nonzero(policy.request_max),
        max_retries: nonzero(policy.retries_max),
        ..Default::default()
    };
    let circuit_breakers = (thresholds != Thresholds::default()).then(|| CircuitBreakers {
        thresholds: vec![thresholds],
        ..Default::default()
    });
    // Speak to the upstream in the protocol the client used (h2c stays h2c: gRPC keeps working
    // through an `http` port); Envoy's default would downgrade everything to HTTP/1.1.
    let protocol = HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(
                http_protocol_options::UseDownstreamHttpConfig {
                    http_protocol_options: Some(Default::default()),
                    http2_protocol_options: Some(Default::default()),
                    ..Default::default()
                },
            ),
        ),
        ..Default::default()
    };
    Cluster {
        name: name.to_string(),
        // One entry only, so the encoding stays deterministic.
        typed_extension_protocol_options: [(names::HTTP_PROTOCOL_OPTIONS.to_string(), envoy::any(&protocol))]
            .into_iter()
            .collect(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(envoy::ads()),
            service_name: name.to_string(),
        }),
        connect_timeout: Some(envoy::duration(
            policy
                .connection_timeout
                .unwrap_or(traffic_labels::defaults::CONNECTION_TIMEOUT),
        )),
        lb_policy: lb as i32,
        // Stats become `cluster.<name>.outbound.*`; Envoy's cluster-name tag extractor takes the
        // text up to the first dot, so Prometheus sees exactly what users of the original know:
        // `envoy_cluster_outbound_upstream_rq_completed{envoy_cluster_name="9080|default|reviews"}`
        // (checked against Envoy 1.39.3).
        alt_stat_name: format!("{name}.outbound"),
        circuit_breakers,
        ..Default::default()
    }
}

fn static_cluster(name: &str, host: &str, port: u16, dns: bool) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(if dns {
            cluster::DiscoveryType::StrictDns as i32
        } else {
            cluster::DiscoveryType::Static as i32
        })),
        connect_timeout: Some(envoy::duration(Duration::from_secs(1))),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![lb_endpoint(host, port, None)],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn admin_cluster(admin_port: u16) -> Cluster {
    static_cluster(ADMIN_CLUSTER, "127.0.0.1", admin_port, false)
}

fn zipkin_cluster(c: &Collector) -> Cluster {
    let dns = c.host.parse::<IpAddr>().is_err();
    static_cluster(ZIPKIN_CLUSTER, &c.host, c.port, dns)
}

fn blackhole_cluster() -> Cluster {
    Cluster {
        name: BLACKHOLE_CLUSTER.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(envoy::duration(Duration::from_secs(1))),
        ..Default::default()
    }
}

fn passthrough_cluster() -> Cluster {
    Cluster {
        name: PASSTHROUGH_CLUSTER.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: cluster::LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(envoy::duration(traffic_labels::defaults::CONNECTION_TIMEOUT)),
        ..Default::default()
    }
}

fn lb_endpoint(host: &str, port: u16, weight: Option<u32>) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(PbEndpoint {
            address: Some(envoy::socket_address(host, port)),
            ..Default::default()
        })),
        load_balancing_weight: weight.map(envoy::u32_value),
        ..Default::default()
    }
}

/// Endpoints of one service port, grouped by locality (zone, node), weighted; weight-0 pods are
/// left out (Envoy rejects weight 0). Locality weights are the sum of their endpoints' weights
/// (gRPC's xDS client requires them). `local`: the pod whose sidecar this is for, which reaches
/// itself on 127.0.0.1.
fn load_assignment(
    ctx: &Ctx<'_>,
    s: &SvcCtx<'_>,
    p: &PortCtx<'_>,
    local: Option<&Pod>,
) -> ClusterLoadAssignment {
    let mut by_locality: BTreeMap<(String, String), Vec<LbEndpoint>> = BTreeMap::new();
    let mut weights: BTreeMap<(String, String), u32> = BTreeMap::new();
    for ep in crate::model::endpoints_of(s.pods.iter().copied(), p.port) {
        let weight = ctx
            .pod_ctx(ep.pod)
            .map(|pc| pc.weight)
            .unwrap_or(traffic_labels::defaults::ENDPOINT_WEIGHT);
        if weight == 0 {
            continue;
        }
        let is_local = local.is_some_and(|l| std::ptr::eq(l, ep.pod));
        let host = if is_local {
            match ep.ip {
                IpAddr::V4(_) => "127.0.0.1".to_string(),
                IpAddr::V6(_) => "::1".to_string(),
            }
        } else {
            ep.ip.to_string()
        };
        let key = (
            ep.pod.zone.clone().unwrap_or_default(),
            ep.pod.node.clone().unwrap_or_default(),
        );
        *weights.entry(key.clone()).or_default() += u32::from(weight);
        by_locality
            .entry(key)
            .or_default()
            .push(lb_endpoint(&host, ep.port, Some(u32::from(weight))));
    }
    ClusterLoadAssignment {
        cluster_name: p.cluster.clone(),
        endpoints: by_locality
            .into_iter()
            .map(|(key, lb_endpoints)| LocalityLbEndpoints {
                load_balancing_weight: weights.get(&key).copied().map(envoy::u32_value),
                locality: Some(Locality {
                    region: String::new(),
                    zone: key.0,
                    sub_zone: key.1,
                }),
                lb_endpoints,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Routes

/// Where a route is used: sidecars get fault injection and rate limits, the gateway does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Sidecar,
    Gateway,
}

/// The per-service part of a route: action (timeout, retries, hashing), tracing and faults.
fn route_to_service(
    cluster: &str,
    match_: route_match::PathSpecifier,
    policy: &ClusterPolicy,
    traffic: &TrafficPolicy,
    side: Side,
    opts: &Options,
) -> Route {
    let mut action = RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.to_string())),
        // Always set: Envoy's default is 15 s, the contract's default is "none" (0).
        timeout: Some(envoy::duration(traffic.request_timeout.unwrap_or_default())),
        ..Default::default()
    };

    let conditions = [
        ("5xx", traffic.retries.on_5xx),
        ("connect-failure", traffic.retries.on_connect_failure),
        ("gateway-error", traffic.retries.on_gateway_error),
    ];
    let active: Vec<(&str, u32)> = conditions
        .iter()
        .filter_map(|(name, n)| n.filter(|n| *n > 0).map(|n| (*name, n)))
        .collect();
    if !active.is_empty() {
        // Envoy has one retry budget per route: the largest count, on any of the conditions.
        action.retry_policy = Some(envoy_types::pb::envoy::config::route::v3::RetryPolicy {
            retry_on: active.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(","),
            num_retries: active.iter().map(|(_, n)| *n).max().map(envoy::u32_value),
            ..Default::default()
        });
    }

    if let Some(cookie) = &policy.hash_cookie_name {
        action.hash_policy.push(route_action::HashPolicy {
            policy_specifier: Some(hash_policy::PolicySpecifier::Cookie(hash_policy::Cookie {
                name: cookie.clone(),
                // With a TTL Envoy generates the cookie (set-cookie ...; Max-Age=<ttl>).
                ttl: policy
                    .hash_cookie_ttl
                    .filter(|d| !d.is_zero())
                    .map(envoy::duration),
                path: "/".to_string(),
                ..Default::default()
            })),
            ..Default::default()
        });
    }
    if let Some(header) = &policy.hash_header_name {
        action.hash_policy.push(route_action::HashPolicy {
            policy_specifier: Some(hash_policy::PolicySpecifier::Header(hash_policy::Header {
                header_name: header.clone(),
                ..Default::default()
            })),
            ..Default::default()
        });
    }

    let mut route = Route {
        name: cluster.to_string(),
        r#match: Some(RouteMatch {
            path_specifier: Some(match_),
            ..Default::default()
        }),
        action: Some(route::Action::Route(action)),
        ..Default::default()
    };

    if opts.zipkin.is_some() {
        let sampling = if traffic.tracing_enabled == Some(true) {
            traffic
                .tracing_sampling
                .unwrap_or(traffic_labels::defaults::TRACING_SAMPLING)
        } else {
            traffic_labels::Percent::ZERO
        };
        route.tracing = Some(RouteTracing {
            random_sampling: Some(envoy::fractional_percent(sampling)),
            ..Default::default()
        });
    }

    if side == Side::Sidecar {
        if let Some(fault) = http_fault(traffic) {
            route
                .typed_per_filter_config
                .insert(names::FAULT.to_string(), envoy::any(&fault));
        }
    }
    route
}

fn http_fault(traffic: &TrafficPolicy) -> Option<HttpFault> {
    let f = &traffic.fault;
    let delay = match (f.delay_time, f.delay_percentage) {
        (Some(t), Some(p)) if !t.is_zero() && p.ppm() > 0 => Some(FaultDelay {
            percentage: Some(envoy::fractional_percent(p)),
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(envoy::duration(t))),
        }),
        _ => None,
    };
    let abort = match (f.abort_status, f.abort_percentage) {
        (Some(status), Some(p)) if status > 0 && p.ppm() > 0 => Some(FaultAbort {
            percentage: Some(envoy::fractional_percent(p)),
            error_type: Some(fault_abort::ErrorType::HttpStatus(u32::from(status))),
            ..Default::default()
        }),
        _ => None,
    };
    (delay.is_some() || abort.is_some()).then(|| HttpFault {
        delay,
        abort,
        ..Default::default()
    })
}

fn bandwidth_limit(traffic: &TrafficPolicy) -> Option<BandwidthLimit> {
    let kbps = traffic.rate_limit_kbps.filter(|k| *k > 0)?;
    Some(BandwidthLimit {
        stat_prefix: RATE_LIMIT_STAT_PREFIX.to_string(),
        enable_mode: EnableMode::RequestAndResponse as i32,
        limit_kbps: Some(UInt64Value { value: kbps }),
        ..Default::default()
    })
}

/// A sidecar's (or the gateway's) route configuration for one service port: every path to the
/// service's cluster.
fn service_route_config(
    cluster: &str,
    policy: &ClusterPolicy,
    traffic: &TrafficPolicy,
    side: Side,
    opts: &Options,
) -> RouteConfiguration {
    let route = route_to_service(
        cluster,
        route_match::PathSpecifier::Prefix("/".into()),
        policy,
        traffic,
        side,
        opts,
    );
    let mut vhost = VirtualHost {
        name: cluster.to_string(),
        domains: vec!["*".to_string()],
        routes: vec![route],
        ..Default::default()
    };
    if side == Side::Sidecar {
        if let Some(bw) = bandwidth_limit(traffic) {
            vhost
                .typed_per_filter_config
                .insert(names::BANDWIDTH_LIMIT.to_string(), envoy::any(&bw));
        }
    }
    RouteConfiguration {
        name: cluster.to_string(),
        virtual_hosts: vec![vhost],
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Listeners

fn http_filter<M: prost::Message + prost::Name>(name: &str, config: &M) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(envoy::any(config))),
        ..Default::default()
    }
}

fn zipkin_tracing() -> http_connection_manager::Tracing {
    let zipkin = ZipkinConfig {
        collector_cluster: ZIPKIN_CLUSTER.to_string(),
        collector_endpoint: "/api/v2/spans".to_string(),
        collector_endpoint_version: zipkin_config::CollectorEndpointVersion::HttpJson as i32,
        shared_span_context: Some(BoolValue { value: false }),
        ..Default::default()
    };
    http_connection_manager::Tracing {
        // Routes decide (their `tracing.random_sampling`); requests that already carry a sampled
        // trace context are traced regardless.
        random_sampling: Some(PbPercent { value: 0.0 }),
        provider: Some(tracing::Http {
            name: names::ZIPKIN.to_string(),
            config_type: Some(tracing::http::ConfigType::TypedConfig(envoy::any(&zipkin))),
        }),
        ..Default::default()
    }
}

fn http_connection_manager(
    stat_prefix: &str,
    rds_name: String,
    side: Side,
    opts: &Options,
    tracing: bool,
) -> HttpConnectionManager {
    let mut http_filters = Vec::new();
    if side == Side::Sidecar {
        // Empty at listener level; routes (fault) and virtual hosts (rate limit) configure them.
        http_filters.push(http_filter(names::FAULT, &HttpFault::default()));
        http_filters.push(http_filter(
            names::BANDWIDTH_LIMIT,
            &BandwidthLimit {
                stat_prefix: RATE_LIMIT_STAT_PREFIX.to_string(),
                ..Default::default()
            },
        ));
    }
    http_filters.push(http_filter(names::ROUTER, &Router::default()));
    HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(envoy::ads()),
            route_config_name: rds_name,
        })),
        http_filters,
        tracing: (tracing && opts.zipkin.is_some()).then(zipkin_tracing),
        use_remote_address: (side == Side::Gateway).then_some(BoolValue { value: true }),
        ..Default::default()
    }
}

fn network_filter<M: prost::Message + prost::Name>(name: &str, config: &M) -> Filter {
    Filter {
        name: name.to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(envoy::any(config))),
    }
}

fn tcp_proxy(stat_prefix: &str, cluster: &str) -> Filter {
    network_filter(
        names::TCP_PROXY,
        &TcpProxy {
            stat_prefix: stat_prefix.to_string(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_string())),
            ..Default::default()
        },
    )
}

fn listener_filter<M: prost::Message + prost::Name>(name: &str, config: &M) -> ListenerFilter {
    ListenerFilter {
        name: name.to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(envoy::any(config))),
        ..Default::default()
    }
}

/// The outbound listener: original destination restored by the listener filter, one filter chain
/// per service `clusterIP:port` with a protocol (`http` -> HTTP connection manager with RDS,
/// `tcp` -> tcp_proxy, `direct` -> tcp_proxy to the original destination). Ports with no protocol
/// get no chain: the default chain blocks them, or proxies them to their original destination
/// under [`OutboundPolicy::Passthrough`].
fn outbound_listener(ctx: &Ctx<'_>, pod: &Settings) -> Listener {
    let mut filter_chains = Vec::new();
    for s in &ctx.services {
        if s.svc.cluster_ips.is_empty() {
            continue;
        }
        for p in &s.ports {
            let filter = match protocol_at(pod, p) {
                Some(PortProtocol::Http) => network_filter(
                    names::HTTP_CONNECTION_MANAGER,
                    &http_connection_manager(&p.cluster, p.cluster.clone(), Side::Sidecar, ctx.opts, true),
                ),
                Some(PortProtocol::Tcp) => tcp_proxy(&p.cluster, &p.cluster),
                // `direct` is not redirected by the agent; if a connection arrives anyway (e.g. the
                // label is only on the Service), forward it untouched rather than block it.
                Some(PortProtocol::Direct) => tcp_proxy(&p.cluster, PASSTHROUGH_CLUSTER),
                None => continue,
            };
            filter_chains.push(FilterChain {
                name: p.cluster.clone(),
                filter_chain_match: Some(FilterChainMatch {
                    destination_port: Some(envoy::u32_value(u32::from(p.port.port))),
                    prefix_ranges: s.svc.cluster_ips.iter().map(|ip| envoy::cidr(*ip)).collect(),
                    ..Default::default()
                }),
                filters: vec![filter],
                ..Default::default()
            });
        }
    }
    let default_cluster = match ctx.opts.outbound_policy {
        OutboundPolicy::Passthrough => PASSTHROUGH_CLUSTER,
        OutboundPolicy::Block => BLACKHOLE_CLUSTER,
    };
    let default_filter_chain = Some(FilterChain {
        name: default_cluster.to_string(),
        filters: vec![tcp_proxy(default_cluster, default_cluster)],
        ..Default::default()
    });
    Listener {
        name: OUTBOUND_LISTENER.to_string(),
        address: Some(envoy::socket_address("0.0.0.0", ctx.opts.outbound_port)),
        listener_filters: vec![listener_filter(names::ORIGINAL_DST, &OriginalDst {})],
        filter_chains,
        default_filter_chain,
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Default::default()
    }
}

/// `:<port>` serving only `GET /stats/prometheus` from the admin interface on 127.0.0.1.
fn stats_listener(port: u16) -> Listener {
    let routes = RouteConfiguration {
        name: STATS_LISTENER.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: STATS_LISTENER.to_string(),
            domains: vec!["*".to_string()],
            routes: vec![
                Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Path("/stats/prometheus".into())),
                        ..Default::default()
                    }),
                    action: Some(route::Action::Route(RouteAction {
                        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                            ADMIN_CLUSTER.into(),
                        )),
                        ..Default::default()
                    })),
                    ..Default::default()
                },
                Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(route::Action::DirectResponse(DirectResponseAction {
                        status: 404,
                        ..Default::default()
                    })),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
        ..Default::default()
    };
    let hcm = HttpConnectionManager {
        stat_prefix: STATS_LISTENER.to_string(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(routes)),
        http_filters: vec![http_filter(names::ROUTER, &Router::default())],
        ..Default::default()
    };
    Listener {
        name: STATS_LISTENER.to_string(),
        address: Some(envoy::socket_address("0.0.0.0", port)),
        filter_chains: vec![FilterChain {
            filters: vec![network_filter(names::HTTP_CONNECTION_MANAGER, &hcm)],
            ..Default::default()
        }],
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Ingress gateway

struct IngressPathRoute {
    exact: bool,
    path: String,
    route: Route,
}

fn ingress_route(
    ctx: &Ctx<'_>,
    ing: &Ingress,
    backend: &IngressBackend,
    path_type: PathType,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<IngressPathRoute> {
    if let Err(error) = crate::ingress_check::check_path(path) {
        problems.push(Problem::InvalidPath {
            ingress: ingress_ref(ing),
            path: path.to_string(),
            error,
        });
        return None;
    }
    let Some(s) = ctx
        .services
        .iter()
        .find(|s| s.svc.namespace == ing.namespace && s.svc.name == backend.service)
    else {
        problems.push(Problem::MissingService {
            ingress: ingress_ref(ing),
            service: backend.service.clone(),
        });
        return None;
    };
    let Some(port) = resolve_service_port(s.svc, &backend.port) else {
        problems.push(Problem::MissingPort {
            ingress: ingress_ref(ing),
            service: backend.service.clone(),
            port: match &backend.port {
                TargetPort::Number(n) => n.to_string(),
                TargetPort::Name(n) => n.clone(),
            },
        });
        return None;
    };
    let cluster = cluster_name(s.svc, port);
    let exact = path_type == PathType::Exact;
    let (specifier, path) = if exact {
        (
            route_match::PathSpecifier::Path(path.to_string()),
            path.to_string(),
        )
    } else {
        // Kubernetes `Prefix` matches whole path elements (`/foo` matches `/foo/bar`, not
        // `/foobar`) and ignores a trailing slash: exactly Envoy's path_separated_prefix.
        let trimmed = path.trim_end_matches('/');
        if trimmed.is_empty() {
            (route_match::PathSpecifier::Prefix("/".into()), "/".to_string())
        } else {
            (
                route_match::PathSpecifier::PathSeparatedPrefix(trimmed.to_string()),
                trimmed.to_string(),
            )
        }
    };
    let route = route_to_service(
        &cluster,
        specifier,
        &s.settings.cluster,
        &s.settings.traffic,
        Side::Gateway,
        ctx.opts,
    );
    Some(IngressPathRoute { exact, path, route })
}

/// The ingress gateway's view: HTTP (and HTTPS if any Ingress has TLS) listeners sharing the
/// `ingress` route configuration, plus every service cluster and endpoint assignment.
fn gateway(
    ctx: &Ctx<'_>,
    clusters: Resources,
    endpoints: Resources,
    problems: &mut Vec<Problem>,
) -> NodeResources {
    let opts = ctx.opts;
    let mut ingresses: Vec<&Ingress> = ctx.model.ingresses.iter().collect();
    ingresses.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    // host ("*" for rules without host) -> routes, merged across Ingresses.
    let mut hosts: BTreeMap<String, Vec<IngressPathRoute>> = BTreeMap::new();
    let mut defaults: Vec<IngressPathRoute> = Vec::new();
    for ing in &ingresses {
        for rule in &ing.rules {
            let host = match &rule.host {
                None => "*".to_string(),
                Some(host) => match crate::ingress_check::check_host(host) {
                    Ok(host) => host,
                    Err(error) => {
                        problems.push(Problem::InvalidHost {
                            ingress: ingress_ref(ing),
                            host: host.clone(),
                            error,
                        });
                        continue;
                    }
                },
            };
            for p in &rule.paths {
                if let Some(r) = ingress_route(ctx, ing, &p.backend, p.path_type, &p.path, problems) {
                    hosts.entry(host.clone()).or_default().push(r);
                }
            }
        }
        if let Some(backend) = &ing.default_backend {
            if let Some(r) = ingress_route(ctx, ing, backend, PathType::Prefix, "/", problems) {
                defaults.push(r);
            }
        }
    }
    hosts.entry("*".to_string()).or_default();
    let default_route = defaults.into_iter().next();

    let mut virtual_hosts = Vec::new();
    for (host, mut routes) in hosts {
        // Exact paths first, then longer prefixes before shorter ones (Kubernetes precedence).
        routes.sort_by(|a, b| {
            b.exact
                .cmp(&a.exact)
                .then(b.path.len().cmp(&a.path.len()))
                .then(a.path.cmp(&b.path))
        });
        let mut seen = BTreeSet::new();
        let mut routes: Vec<Route> = routes
            .into_iter()
            .filter(|r| seen.insert((r.exact, r.path.clone())))
            .map(|r| r.route)
            .collect();
        if let Some(d) = &default_route {
            routes.push(d.route.clone());
        }
        if routes.is_empty() {
            continue;
        }
        virtual_hosts.push(VirtualHost {
            name: host.clone(),
            domains: vec![host],
            routes,
            ..Default::default()
        });
    }
    let route_config = RouteConfiguration {
        name: INGRESS_ROUTE.to_string(),
        virtual_hosts,
        ignore_port_in_host_matching: true,
        ..Default::default()
    };
    let only_ingress = (ingresses.len() == 1).then(|| ingress_ref(ingresses[0]));
    let mut routes = Resources::new();
    routes.insert(
        INGRESS_ROUTE.into(),
        Arc::new(resource(INGRESS_ROUTE, &route_config, only_ingress.clone())),
    );

    let mut listeners = Resources::new();
    let http = Listener {
        name: INGRESS_HTTP_LISTENER.to_string(),
        address: Some(envoy::socket_address("0.0.0.0", opts.ingress_http_port)),
        filter_chains: vec![FilterChain {
            filters: vec![network_filter(
                names::HTTP_CONNECTION_MANAGER,
                &http_connection_manager(
                    INGRESS_HTTP_LISTENER,
                    INGRESS_ROUTE.into(),
                    Side::Gateway,
                    opts,
                    true,
                ),
            )],
            ..Default::default()
        }],
        traffic_direction: TrafficDirection::Inbound as i32,
        ..Default::default()
    };
    listeners.insert(
        INGRESS_HTTP_LISTENER.into(),
        Arc::new(resource(INGRESS_HTTP_LISTENER, &http, only_ingress.clone())),
    );

    // HTTPS: one filter chain per TLS entry, matched by SNI; the first Ingress (by namespace/name)
    // to claim a host keeps it (Envoy rejects duplicate matches).
    let mut secrets = Resources::new();
    let mut chains = Vec::new();
    let mut claimed: BTreeSet<String> = BTreeSet::new();
    let now = opts.now.unwrap_or_else(std::time::SystemTime::now);
    // Each Secret is checked once, however many Ingresses use it.
    let mut verdicts: BTreeMap<(&str, &str), Result<crate::tls::CheckedSecret, crate::tls::TlsError>> =
        BTreeMap::new();
    for ing in &ingresses {
        for tls in &ing.tls {
            let Some(secret) = ctx.model.secret(&ing.namespace, &tls.secret_name) else {
                problems.push(Problem::MissingSecret {
                    ingress: ingress_ref(ing),
                    secret: tls.secret_name.clone(),
                });
                continue;
            };
            let verdict = verdicts
                .entry((&secret.namespace, &secret.name))
                .or_insert_with(|| crate::tls::check(&secret.cert_pem, &secret.key_pem, now));
            match verdict {
                Err(error) => {
                    problems.push(Problem::InvalidTlsSecret {
                        ingress: ingress_ref(ing),
                        secret: tls.secret_name.clone(),
                        error: error.clone(),
                    });
                    continue;
                }
                Ok(checked) if checked.expires_soon => problems.push(Problem::TlsSecretExpiringSoon {
                    ingress: ingress_ref(ing),
                    secret: tls.secret_name.clone(),
                    not_after: checked.not_after.clone(),
                }),
                Ok(_) => {}
            }
            let mut server_names = Vec::new();
            for host in &tls.hosts {
                let host = match crate::ingress_check::check_host(host) {
                    Ok(host) => host,
                    Err(error) => {
                        problems.push(Problem::InvalidHost {
                            ingress: ingress_ref(ing),
                            host: host.clone(),
                            error,
                        });
                        continue;
                    }
                };
                if claimed.insert(host.clone()) {
                    server_names.push(host.clone());
                } else {
                    problems.push(Problem::DuplicateTlsHost {
                        ingress: ingress_ref(ing),
                        host: host.clone(),
                    });
                }
            }
            // An entry without hosts serves any SNI (at most one such chain).
            if tls.hosts.is_empty() {
                if !claimed.insert(String::new()) {
                    problems.push(Problem::DuplicateTlsHost {
                        ingress: ingress_ref(ing),
                        host: "*".into(),
                    });
                    continue;
                }
            } else if server_names.is_empty() {
                continue;
            }
            let secret_name = format!("{}/{}", secret.namespace, secret.name);
            let certificate = TlsCertificate {
                certificate_chain: Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineString(secret.cert_pem.clone())),
                    ..Default::default()
                }),
                private_key: Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineString(secret.key_pem.clone())),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let mut common = CommonTlsContext {
                // HTTP/1.1 only: service clusters forward in the client's protocol (transparent
                // for sidecars), and an edge client's h2 would otherwise reach HTTP/1.1 backends.
                alpn_protocols: vec!["http/1.1".into()],
                ..Default::default()
            };
            match opts.ingress_tls {
                TlsDelivery::Inline => common.tls_certificates.push(certificate),
                TlsDelivery::Sds => {
                    let s = Secret {
                        name: secret_name.clone(),
                        r#type: Some(secret::Type::TlsCertificate(certificate)),
                    };
                    secrets.insert(
                        secret_name.clone(),
                        Arc::new(resource(
                            &secret_name,
                            &s,
                            Some(ObjectRef::new("Secret", &secret.namespace, &secret.name)),
                        )),
                    );
                    common.tls_certificate_sds_secret_configs.push(SdsSecretConfig {
                        name: secret_name.clone(),
                        sds_config: Some(envoy::ads()),
                    });
                }
            }
            let tls_context = DownstreamTlsContext {
                common_tls_context: Some(common),
                ..Default::default()
            };
            chains.push(FilterChain {
                name: format!("{}/{}/{}", ing.namespace, ing.name, tls.secret_name),
                filter_chain_match: Some(FilterChainMatch {
                    server_names,
                    ..Default::default()
                }),
                transport_socket: Some(TransportSocket {
                    name: names::TLS_TRANSPORT_SOCKET.to_string(),
                    config_type: Some(transport_socket::ConfigType::TypedConfig(envoy::any(
                        &tls_context,
                    ))),
                }),
                filters: vec![network_filter(
                    names::HTTP_CONNECTION_MANAGER,
                    &http_connection_manager(
                        INGRESS_HTTPS_LISTENER,
                        INGRESS_ROUTE.into(),
                        Side::Gateway,
                        opts,
                        true,
                    ),
                )],
                ..Default::default()
            });
        }
    }
    if !chains.is_empty() {
        let https = Listener {
            name: INGRESS_HTTPS_LISTENER.to_string(),
            address: Some(envoy::socket_address("0.0.0.0", opts.ingress_https_port)),
            listener_filters: vec![listener_filter(names::TLS_INSPECTOR, &TlsInspector::default())],
            filter_chains: chains,
            traffic_direction: TrafficDirection::Inbound as i32,
            ..Default::default()
        };
        listeners.insert(
            INGRESS_HTTPS_LISTENER.into(),
            Arc::new(resource(INGRESS_HTTPS_LISTENER, &https, only_ingress)),
        );
    }
    let secrets = (opts.ingress_tls == TlsDelivery::Sds).then_some(secrets);
    node_resources(listeners, routes, clusters, endpoints, secrets)
}
