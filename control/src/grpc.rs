//! Proxyless gRPC clients (`xds:///<name>` targets) as a second kind of xDS client.
//!
//! gRPC's xDS resolver asks LDS for a Listener named like its target whose `api_listener` holds an
//! HTTP connection manager; Envoy sidecars must not get those (Envoy ignores API listeners from LDS
//! with a warning on every update). So they are served only to nodes whose id has the
//! [`PROXYLESS_PREFIX`] (`proxyless~<pod>.<namespace>`); everything else such a node gets is what
//! `<pod>.<namespace>` would get. Per Service port there is one Listener,
//! `<svc>.<ns>.svc.cluster.local:<port>`, routing everything to the port's cluster
//! `<port>|<ns>|<svc>` (clusters and endpoints come from translation unchanged). The listeners are
//! built once per snapshot and shared.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter,
};
use traffic_translate::envoy::{any, resource};
use traffic_translate::snapshot::{MeshSnapshot, NodeResources, ObjectRef, Resources, CLUSTER, LISTENER};
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

fn api_listener(name: &str, cluster: &str) -> Listener {
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
    let hcm = HttpConnectionManager {
        stat_prefix: name.to_string(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(routes)),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".to_string(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(&Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name: name.to_string(),
        api_listener: Some(ApiListener {
            api_listener: Some(any(&hcm)),
        }),
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
        // The shared sidecar view's clusters (what `for_node("")` gives), compared in place: an
        // endpoint change copies no map here.
        let empty = Resources::new();
        let clusters = snapshot
            .views()
            .next()
            .and_then(|(_, nr)| nr.by_type.get(CLUSTER))
            .unwrap_or(&empty);
        let same = clusters.len() == prev.clusters.len()
            && clusters
                .iter()
                .zip(prev.clusters.iter())
                .all(|((n, r), (pn, pr))| n == pn && (Arc::ptr_eq(r, pr) || r == pr));
        let inner: Arc<dyn MeshSnapshot> = Arc::new(snapshot);
        let mut w = if same {
            WithApiListeners {
                inner,
                clusters: prev.clusters.clone(),
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
        let clusters = inner.for_node("").by_type.remove(CLUSTER).unwrap_or_default();
        let mut listeners = BTreeMap::new();
        for (cluster, r) in &clusters {
            let Some(name) = target_name(cluster) else {
                continue;
            };
            let origin: Option<ObjectRef> = r.origin.clone();
            listeners.insert(
                name.clone(),
                Arc::new(resource(&name, &api_listener(&name, cluster), origin)),
            );
        }
        WithApiListeners {
            inner,
            clusters: Arc::new(clusters),
            listeners: Arc::new(listeners),
            own_views: None,
        }
    }
}

impl MeshSnapshot for WithApiListeners {
    fn for_node(&self, node_id: &str) -> NodeResources {
        match node_id.strip_prefix(PROXYLESS_PREFIX) {
            None => self.inner.for_node(node_id),
            Some(pod) => {
                let mut nr = self.inner.for_node(pod);
                nr.by_type.insert(LISTENER, (*self.listeners).clone());
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
}
