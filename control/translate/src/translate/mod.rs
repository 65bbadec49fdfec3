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
//!   [`ObjectRef::from_cluster_name`](crate::snapshot::ObjectRef::from_cluster_name) maps that name back to the Service.
//!
//! Service routes and clusters come only from the routing model ([`crate::routing`]): the labels
//! are lowered into it by [`crate::label_lower`] (a default rule per Service port, a cluster
//! policy per Service), Istio objects by [`crate::istio_lower`], and [`crate::routing::merge`]
//! decides between the two per setting; a calling pod's own labels give it its own default rules
//! (see `routes::default_route`). The end-to-end mapping for the labels (all checked by
//! `tests/labels_to_envoy.rs`, behaviour by real Envoy in `tests/envoy_serves.rs` and
//! `tests/envoy_gateway.rs`):
//!
//! | label | Envoy |
//! |---|---|
//! | `traffic.port.<N>` `http`/`tcp`/`direct` | outbound filter chain (`clusterIP/32`, port N): HCM + RDS `<N>\|<ns>\|<svc>` / tcp_proxy / tcp_proxy to `passthrough`; none: default chain (`blackhole`, or `passthrough`) |
//! | `traffic.endpoint.weight` | `LbEndpoint.load_balancing_weight`; 0 = endpoint left out; locality weight = sum, pods of different weights on one node in sub-localities `<node>~w<weight>` (gRPC honours only locality weights; see `endpoints`) |
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

//!
//! Where each kind of output is built (one file per Envoy resource kind):
//!
//! | file | builds |
//! |---|---|
//! | `options.rs` | [`Options`], fixed resource names |
//! | `problems.rs` | [`Problem`], [`ObjectLabelError`] |
//! | `context.rs` | the model with labels parsed once (`Ctx`), cluster names |
//! | `listeners.rs` | LDS: outbound and stats listeners, HCM / tcp_proxy filters |
//! | `routes.rs` | RDS: sidecar route configurations (a port's merged rules, its rate limit), a caller's default rule |
//! | `mesh_routes.rs` | RDS: the routing model's rules (label defaults and Istio VirtualServices) as routes |
//! | `mesh_rules.rs` | the routing model's rules checked against what is pushed (no dangling routes), overridden labels |
//! | `clusters.rs` | CDS: a cluster policy as a service cluster; the fixed clusters |
//! | `cluster_policy.rs` | CDS: the clusters of a Service port and of its subsets, from the routing model |
//! | `endpoints.rs` | EDS: endpoint assignments (also per subset) |
//! | `external.rs` | ServiceEntry hosts: clusters, endpoints, filter chains, per-port HTTP routes, the outbound policy for unknown HTTP hosts |
//! | `gateway.rs`, `gateway_tls.rs` | the ingress gateway's view (Ingress routes, HTTP/HTTPS listeners, secrets) |
//! | `gateway_servers.rs` | the ingress gateway's Istio Gateway servers (per-port listeners, SNI filter chains) |
//! | `per_node.rs` | per-pod overrides of the shared sidecar view |

mod cluster_policy;
mod clusters;
mod context;
mod endpoints;
mod external;
mod gateway;
mod gateway_servers;
mod gateway_tls;
mod listeners;
mod mesh_routes;
mod mesh_rules;
mod options;
mod per_node;
mod problems;
mod routes;

use std::collections::BTreeMap;
use std::sync::Arc;

use traffic_labels::Settings;

pub use cluster_policy::subset_cluster_name;
pub use context::cluster_name;
pub use external::external_route_name;
pub use mesh_routes::destination_cluster;
use options::RATE_LIMIT_STAT_PREFIX;
pub use options::{
    default_ingress_labels, Collector, Options, OutboundPolicy, TlsDelivery, ADMIN_CLUSTER,
    BLACKHOLE_CLUSTER, INGRESS_HTTPS_LISTENER, INGRESS_HTTP_LISTENER, INGRESS_NODE_ID, INGRESS_ROUTE,
    OUTBOUND_LISTENER, PASSTHROUGH_CLUSTER, STATS_LISTENER, ZIPKIN_CLUSTER,
};
pub use problems::{ObjectLabelError, Problem};

use clusters::{admin_cluster, blackhole_cluster, passthrough_cluster, zipkin_cluster};
use context::Ctx;
use endpoints::{load_assignment, subset_load_assignment, Split};
use gateway::gateway;
use listeners::{outbound_listener, stats_listener};
use per_node::pod_override;
use routes::sidecar_routes;

use crate::envoy::resource;
use crate::model::{MeshModel, Pod, Service};
use crate::snapshot::{
    MeshSnapshot, NodeResources, ObjectRef, Resources, CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET,
};

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

    /// The view every sidecar without a view of its own gets (what `for_node("")` returns).
    pub fn sidecar_view(&self) -> &NodeResources {
        &self.sidecar
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

/// Translate the whole model. Pure and deterministic: the same model and options always give
/// byte-identical resources (and so identical versions).
pub fn translate(model: &MeshModel, opts: &Options) -> Translation {
    let mut label_errors = Vec::new();
    let mut problems = Vec::new();
    // The model file's `outboundTrafficPolicy` (Istio's meshConfig field) wins over the option.
    let with_model_policy;
    let opts = match model.outbound_traffic_policy.as_ref().map(|p| p.mode.policy()) {
        Some(policy) if policy != opts.outbound_policy => {
            with_model_policy = Options {
                outbound_policy: policy,
                ..opts.clone()
            };
            &with_model_policy
        }
        _ => opts,
    };
    let routing = istio_routing(model, &mut problems);
    let external: Vec<Service> = routing.external.iter().map(context::external_service).collect();
    let mut ctx = Ctx::new(model, &external, opts, routing, &mut label_errors);
    // The labels front end: every Service's (and external host's) labels into the same model.
    for s in &ctx.services {
        let key = crate::routing::ServiceKey::new(&s.svc.namespace, &s.svc.name);
        let ports: Vec<u16> = s.ports.iter().map(|p| p.port.port).collect();
        crate::label_lower::lower_service(&mut ctx.routing, &key, &s.origin, &ports, &s.settings);
    }
    ctx.rules = mesh_rules::resolve(&ctx, &mut problems);
    ctx.gateway_servers = mesh_rules::resolve_gateway(&ctx, &mut problems);
    ctx.tcp_routes = mesh_rules::resolve_tcp(&ctx, &mut problems);

    // Clusters and endpoint assignments: identical for every node.
    let mut clusters = Resources::new();
    let mut endpoints = Resources::new();
    for s in &ctx.services {
        if let Some(e) = &s.external {
            external::insert_clusters(&ctx, s, e, &mut clusters, &mut endpoints);
            continue;
        }
        let policy = ctx
            .routing
            .policies
            .get(&crate::routing::ServiceKey::new(&s.svc.namespace, &s.svc.name));
        for p in &s.ports {
            let c = cluster_policy::port_cluster(&ctx.routing, s, p, None);
            clusters.insert(
                p.cluster.clone(),
                Arc::new(resource(&p.cluster, &c, Some(s.origin.clone()))),
            );
            let cla = load_assignment(&ctx, s, p, None, Split::for_lb_policy(c.lb_policy));
            endpoints.insert(
                p.cluster.clone(),
                Arc::new(resource(&p.cluster, &cla, Some(s.origin.clone()))),
            );
            // One cluster per subset and port, its endpoints the pods with the subset's labels.
            for subset in policy.map(|dp| dp.subsets.as_slice()).unwrap_or(&[]) {
                let name = subset_cluster_name(&p.cluster, &subset.name);
                let origin = policy.map(|dp| dp.origin.clone());
                let c = cluster_policy::port_cluster(&ctx.routing, s, p, Some((&subset.name, &name)));
                clusters.insert(name.clone(), Arc::new(resource(&name, &c, origin.clone())));
                let split = Split::for_lb_policy(c.lb_policy);
                let cla = subset_load_assignment(&ctx, s, p, &name, &subset.labels, split);
                endpoints.insert(name.clone(), Arc::new(resource(&name, &cla, origin)));
            }
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
    let routes = sidecar_routes(&ctx, &no_override, None, None);
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
        if let Some(r) = sidecar.get(type_url).and_then(|m| m.get(name)) {
            ingress.make_mut(type_url).insert(name.to_string(), r.clone());
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

/// The Istio objects of `model`, validated (their problems reported) and lowered.
fn istio_routing(model: &MeshModel, problems: &mut Vec<Problem>) -> crate::routing::RoutingModel {
    if model.istio.is_empty() {
        return Default::default();
    }
    let validated = traffic_istio::validate_config(&model.istio);
    for (object, p) in validated.problems() {
        problems.push(Problem::IstioValidation {
            object: ObjectRef::new(object.kind.as_str(), &object.namespace, &object.name),
            path: p.path.clone(),
            code: p.code,
            message: p.message.clone(),
        });
    }
    let (routing, lowering) = crate::istio_lower::lower(&validated, &model.services);
    problems.extend(lowering);
    routing
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
        || prev_model.istio != model.istio
        || prev_model.outbound_traffic_policy != model.outbound_traffic_policy
        || prev_model.pods.len() != model.pods.len()
        // `Arc<Service>`'s `==` checks the pointer first (`Service: Eq`): shared ones cost nothing.
        || prev_model.services != model.services
        || prev_model.workloads != model.workloads
        || prev_model.ingresses != model.ingresses
        || prev_model.secrets != model.secrets
    {
        return None;
    }
    let mut moved = Vec::new();
    for (a, b) in prev_model.pods.iter().zip(&model.pods) {
        // A model source shares unchanged pods: the same allocation, nothing to compare.
        if Arc::ptr_eq(a, b) {
            continue;
        }
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
    let services: Vec<Arc<Service>> = model
        .services
        .iter()
        .filter(|s| moved.iter().any(|p| s.selects(p)))
        .cloned()
        .collect();
    // Those Services with their pods (in model order) and every workload (endpoint weights) are
    // all an endpoint assignment depends on.
    let pods: Vec<Arc<Pod>> = model
        .pods
        .iter()
        .filter(|p| services.iter().any(|s| s.selects(p)))
        .cloned()
        .collect();
    // DestinationRule subsets are endpoint assignments too (VirtualServices shape only routes).
    let istio = Arc::new(destination_rules_for(&model.istio, &services));
    let part = MeshModel {
        services,
        pods,
        workloads: model.workloads.clone(),
        ingresses: Vec::new(),
        secrets: Vec::new(),
        istio,
        outbound_traffic_policy: model.outbound_traffic_policy.clone(),
    };
    let fresh = translate(&part, opts).snapshot.sidecar.by_type.remove(ENDPOINT)?;
    // Only the endpoint maps change: every other type stays the same allocation (copy on write),
    // and views sharing the sidecar's endpoint map share its replacement.
    let mut snapshot = prev.snapshot.clone();
    let old_shared = prev.snapshot.sidecar.by_type.get(ENDPOINT)?;
    let old = &**old_shared;
    let mut new_shared: Option<Arc<Resources>> = None;
    for view in [&mut snapshot.sidecar, &mut snapshot.ingress]
        .into_iter()
        .chain(snapshot.per_node.values_mut())
    {
        let Some(endpoints) = view.by_type.get_mut(ENDPOINT) else {
            continue;
        };
        let shared_map = Arc::ptr_eq(endpoints, old_shared);
        if let (true, Some(new)) = (shared_map, &new_shared) {
            *endpoints = new.clone();
            continue;
        }
        let map = Arc::make_mut(endpoints);
        for (name, new) in fresh.iter() {
            if let Some(r) = map.get_mut(name) {
                // Only the shared assignment is replaced; a view with its own copy is not
                // something this shortcut knows how to update.
                if !old.get(name).is_some_and(|o| Arc::ptr_eq(o, r)) {
                    return None;
                }
                *r = new.clone();
            }
        }
        if shared_map {
            new_shared = Some(endpoints.clone());
        }
    }
    Some(Translation {
        snapshot,
        label_errors: prev.label_errors.clone(),
        problems: prev.problems.clone(),
    })
}

/// The DestinationRules of `istio` whose host is one of `services`: what the subset clusters of
/// those services, and so their endpoint assignments, come from.
fn destination_rules_for(
    istio: &traffic_istio::IstioConfig,
    services: &[Arc<Service>],
) -> traffic_istio::IstioConfig {
    if istio.destination_rules.is_empty() {
        return traffic_istio::IstioConfig::default();
    }
    let hosts = crate::istio_lower::HostIndex::new(services, &[]);
    traffic_istio::IstioConfig {
        destination_rules: istio
            .destination_rules
            .iter()
            .filter(|dr| hosts.resolve(&dr.spec.host, &dr.metadata.namespace).is_some())
            .cloned()
            .collect(),
        ..Default::default()
    }
}

fn node_resources(
    listeners: Resources,
    routes: Resources,
    clusters: Resources,
    endpoints: Resources,
    secrets: Option<Resources>,
) -> NodeResources {
    let mut nr = NodeResources::default();
    nr.insert(LISTENER, listeners);
    nr.insert(ROUTE, routes);
    nr.insert(CLUSTER, clusters);
    nr.insert(ENDPOINT, endpoints);
    if let Some(secrets) = secrets {
        nr.insert(SECRET, secrets);
    }
    nr
}
