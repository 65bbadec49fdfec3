//! Proxyless gRPC clients (`xds:///<name>` targets) as a second kind of xDS client.
//!
//! gRPC's xDS resolver asks LDS for a Listener named like its target whose `api_listener` holds an
//! HTTP connection manager; Envoy sidecars must not get those (Envoy ignores API listeners from LDS
//! with a warning on every update). So they are served only to nodes whose id has the
//! [`PROXYLESS_PREFIX`] (`proxyless~<pod>.<namespace>`); everything else such a node gets is what
//! `<pod>.<namespace>` would get. Per Service port there is one Listener,
//! `<svc>.<ns>.svc.cluster.local:<port>`. For an `http` port its HTTP connection manager asks RDS
//! for the very route configuration the pod's sidecar gets for that port (`<port>|<ns>|<svc>`):
//! VirtualService rules (header and path matches, weighted subsets, retries, timeouts, faults)
//! and the label policy reach gRPC clients from the one translation, as they reach Envoy; gRPC
//! applies what it supports (A28 routing, A31 timeouts, A33 faults, A44 retries) and ignores the
//! rest (mirrors, query-parameter matches). For any other port there is no route configuration to
//! share: an inline one routes everything to the port's cluster. Clusters and endpoints come from
//! translation unchanged. The listeners are built once per snapshot and shared.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use traffic_translate::envoy::{ads, any, names, resource};
use traffic_translate::snapshot::{
    MeshSnapshot, NodeResources, ObjectRef, Resources, CLUSTER, LISTENER, ROUTE,
};
use traffic_translate::translate::{Snapshot, INGRESS_NODE_ID};

/// Node ids starting with this are proxyless gRPC clients.
pub const PROXYLESS_PREFIX: &str = "proxyless~";

/// The gRPC target name for a cluster `<port>|<ns>|<svc>`.
pub fn target_name(cluster: &str) -> Option<String> {
    let mut parts = cluster.split('|');
    let (port, ns, svc) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || port.parse::<u16>().is_err() {
        return None;
    }
    Some(format!("{svc}.{ns}.svc.cluster.local:{port}"))
}

/// The API listener of target `name` for `cluster`: RDS of the sidecar's route configuration of
/// the same name when `shared_routes`, else an inline route of everything to `cluster`.
fn api_listener(name: &str, cluster: &str, shared_routes: bool) -> Listener {
    let hcm = if shared_routes {
        HttpConnectionManager {
            stat_prefix: name.to_string(),
            route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
                config_source: Some(ads()),
                route_config_name: cluster.to_string(),
            })),
            // Routes may carry fault injection (gRPC A33); the router ends the chain.
            http_filters: vec![
                http_filter(names::FAULT, &HttpFault::default()),
                http_filter(names::ROUTER, &Router::default()),
            ],
            ..Default::default()
        }
    } else {
        inline_routes(name, cluster)
    };
    Listener {
        name: name.to_string(),
        api_listener: Some(ApiListener {
            api_listener: Some(any(&hcm)),
        }),
        ..Default::default()
    }
}

fn http_filter<M: prost::Message + prost::Name>(name: &str, config: &M) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(config))),
        ..Default::default()
    }
}

/// Everything to `cluster`, for a port without a sidecar route configuration.
fn inline_routes(name: &str, cluster: &str) -> HttpConnectionManager {
    let routes = RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: name.to_string(),
            domains: vec!["*".to_string()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix(String::new())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.to_string())),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    HttpConnectionManager {
        stat_prefix: name.to_string(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(routes)),
        http_filters: vec![http_filter(names::ROUTER, &Router::default())],
        ..Default::default()
    }
}

/// A snapshot that also serves API listeners to proxyless gRPC nodes, and tells the server which
/// nodes share a view.
#[derive(Debug)]
pub struct WithApiListeners {
    inner: Arc<dyn MeshSnapshot>,
    /// The clusters `listeners` were built from.
    clusters: Arc<Resources>,
    /// The names of the shared sidecar route configurations `listeners` were built from.
    routes: Arc<BTreeSet<String>>,
    listeners: Arc<Resources>,
    /// Nodes with their own view (from a translation); everyone else shares the sidecar view.
    own_views: Option<BTreeSet<String>>,
}

/// The view key of every node that gets the shared sidecar resources.
const SIDECAR_VIEW: &str = "<sidecar>";

impl WithApiListeners {
    /// Wraps a translation's snapshot, whose shared view and per-node overrides are known.
    pub fn from_translation(snapshot: Snapshot) -> Self {
        let own: BTreeSet<String> = snapshot.overridden_nodes().map(str::to_string).collect();
        let mut w = Self::new(Arc::new(snapshot));
        w.own_views = Some(own);
        w
    }

    /// Like [`WithApiListeners::from_translation`], reusing `prev`'s API listeners when the
    /// clusters they are built from did not change (an endpoint change rebuilds nothing here).
    pub fn from_translation_reusing(snapshot: Snapshot, prev: &WithApiListeners) -> Self {
        let own: BTreeSet<String> = snapshot.overridden_nodes().map(str::to_string).collect();
        // The shared sidecar view's clusters and route names (what `for_node("")` gives),
        // compared in place: an endpoint change copies no map here.
        let empty = Resources::new();
        let shared = snapshot.sidecar_view();
        let of = |type_url: &str| shared.get(type_url).unwrap_or(&empty);
        let (clusters, routes) = (of(CLUSTER), of(ROUTE));
        let same_clusters = shared
            .by_type
            .get(CLUSTER)
            .is_some_and(|c| Arc::ptr_eq(c, &prev.clusters));
        let same = routes.keys().eq(prev.routes.iter())
            && (same_clusters
                || clusters.len() == prev.clusters.len()
                    && clusters
                        .iter()
                        .zip(prev.clusters.iter())
                        .all(|((n, r), (pn, pr))| n == pn && (Arc::ptr_eq(r, pr) || r == pr)));
        let inner: Arc<dyn MeshSnapshot> = Arc::new(snapshot);
        let mut w = if same {
            WithApiListeners {
                inner,
                clusters: prev.clusters.clone(),
                routes: prev.routes.clone(),
                listeners: prev.listeners.clone(),
                own_views: None,
            }
        } else {
            Self::new(inner)
        };
        w.own_views = Some(own);
        w
    }

    pub fn new(inner: Arc<dyn MeshSnapshot>) -> Self {
        let mut shared = inner.for_node("");
        let clusters = shared.by_type.remove(CLUSTER).unwrap_or_default();
        let routes = route_names(shared.get(ROUTE));
        let mut listeners = BTreeMap::new();
        for (cluster, r) in clusters.iter() {
            let Some(name) = target_name(cluster) else {
                continue;
            };
            let origin: Option<ObjectRef> = r.origin.clone();
            listeners.insert(
                name.clone(),
                Arc::new(resource(
                    &name,
                    &api_listener(&name, cluster, routes.contains(cluster)),
                    origin,
                )),
            );
        }
        WithApiListeners {
            inner,
            clusters,
            routes: Arc::new(routes),
            listeners: Arc::new(listeners),
            own_views: None,
        }
    }
}

fn route_names(routes: Option<&Resources>) -> BTreeSet<String> {
    routes.map(|r| r.keys().cloned().collect()).unwrap_or_default()
}

impl MeshSnapshot for WithApiListeners {
    fn for_node(&self, node_id: &str) -> NodeResources {
        match node_id.strip_prefix(PROXYLESS_PREFIX) {
            None => self.inner.for_node(node_id),
            Some(pod) => {
                let mut nr = self.inner.for_node(pod);
                nr.by_type.insert(LISTENER, self.listeners.clone());
                nr
            }
        }
    }

    fn view_key(&self, node_id: &str) -> String {
        let (prefix, pod) = match node_id.strip_prefix(PROXYLESS_PREFIX) {
            Some(pod) => (PROXYLESS_PREFIX, pod),
            None => ("", node_id),
        };
        let base = match &self.own_views {
            Some(own) if pod != INGRESS_NODE_ID && !own.contains(pod) => SIDECAR_VIEW.to_string(),
            Some(_) => pod.to_string(),
            None => self.inner.view_key(pod),
        };
        format!("{prefix}{base}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use traffic_translate::model::MeshModel;
    use traffic_translate::translate::{translate, Options};

    #[test]
    fn only_proxyless_nodes_get_one_api_listener_per_service_port() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/translate/examples/bookinfo.yaml");
        let model = MeshModel::from_yaml_file(path).expect("model");
        let snap = WithApiListeners::from_translation(translate(&model, &Options::default()).snapshot);
        assert_eq!(snap.view_key("a.default"), snap.view_key("b.default"));
        assert_ne!(snap.view_key("a.default"), snap.view_key("traffic-ingress"));
        assert_ne!(snap.view_key("a.default"), snap.view_key("proxyless~a.default"));
        let sidecar = snap.for_node("a.default");
        assert!(!sidecar.by_type[LISTENER].contains_key("reviews.default.svc.cluster.local:9080"));
        let grpc = snap.for_node("proxyless~a.default");
        let l = &grpc.by_type[LISTENER]["reviews.default.svc.cluster.local:9080"];
        let decoded = Listener::decode(l.body.value.as_slice()).expect("listener");
        assert!(decoded.api_listener.is_some());
        assert_eq!(grpc.by_type[CLUSTER].len(), sidecar.by_type[CLUSTER].len());
        assert_eq!(
            target_name("9080|default|reviews").as_deref(),
            Some("reviews.default.svc.cluster.local:9080")
        );
        assert_eq!(target_name("zipkin"), None);
    }

    /// An endpoint change (one pod moved) keeps the API listeners of the previous snapshot: the
    /// clusters and route names they are built from are the same, so nothing is rebuilt.
    #[test]
    fn an_endpoint_change_reuses_the_api_listeners() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/translate/examples/bookinfo.yaml");
        let model = MeshModel::from_yaml_file(path).expect("model");
        let opts = Options::default();
        let first = translate(&model, &opts);
        let prev = WithApiListeners::from_translation(first.snapshot.clone());
        let mut moved = model.clone();
        Arc::make_mut(&mut moved.pods[0]).ip = Some("172.17.9.9".parse().expect("ip"));
        let next = traffic_translate::translate::translate_endpoint_change(&model, &first, &moved, &opts)
            .expect("an endpoint-only change");
        let reused = WithApiListeners::from_translation_reusing(next.snapshot, &prev);
        assert!(Arc::ptr_eq(&reused.listeners, &prev.listeners));
        assert!(!reused.listeners.is_empty());
    }

    /// An `http` port's API listener asks RDS for the sidecar's route configuration of the port;
    /// another port's routes everything inline to its cluster.
    #[test]
    fn http_ports_share_the_sidecar_route_configuration_over_rds() {
        let model = MeshModel::from_yaml_str(
            "services:\n- name: greeter\n  clusterIPs: [10.96.0.1]\n  ports: [{name: grpc, port: 50051}, {name: raw, port: 50052}]\n  selector: {app: greeter}\n  labels: {traffic.port.50051: http, traffic.port.50052: tcp}\npods:\n- {name: g, ip: 10.1.0.1, labels: {app: greeter}}\n",
        )
        .expect("model");
        let snap = WithApiListeners::from_translation(translate(&model, &Options::default()).snapshot);
        let grpc = snap.for_node("proxyless~a.default");
        let hcm = |name: &str| {
            let l = Listener::decode(grpc.by_type[LISTENER][name].body.value.as_slice()).expect("listener");
            let any = l.api_listener.and_then(|a| a.api_listener).expect("api listener");
            HttpConnectionManager::decode(any.value.as_slice()).expect("hcm")
        };
        match hcm("greeter.default.svc.cluster.local:50051").route_specifier {
            Some(http_connection_manager::RouteSpecifier::Rds(rds)) => {
                assert_eq!(rds.route_config_name, "50051|default|greeter");
                assert!(grpc.by_type[ROUTE].contains_key("50051|default|greeter"));
            }
            other => panic!("RDS expected: {other:?}"),
        }
        assert!(matches!(
            hcm("greeter.default.svc.cluster.local:50052").route_specifier,
            Some(http_connection_manager::RouteSpecifier::RouteConfig(_))
        ));
    }
}
