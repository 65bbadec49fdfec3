//! Helpers shared by the translation tests: build small models, decode resources back.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod certs;
pub mod live;

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, Listener};
use envoy_types::pb::envoy::config::route::v3::{route, RouteAction, RouteConfiguration};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use traffic_translate::model::MeshModel;
use traffic_translate::snapshot::{MeshSnapshot, NodeResources, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use traffic_translate::translate::{translate, Options, Translation};

pub fn bookinfo() -> MeshModel {
    MeshModel::from_yaml_file(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/bookinfo.yaml")).unwrap()
}

/// One service `web` (10.96.0.9:80 -> 8080, labels `svc_labels`), two server pods `web-a`/`web-b`
/// (the first labelled `server_labels`), and an enabled client pod `client` with `client_labels`.
pub fn small_model(
    svc_labels: &[(&str, &str)],
    server_labels: &[(&str, &str)],
    client_labels: &[(&str, &str)],
) -> MeshModel {
    let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let mut m = MeshModel::from_yaml_str(
        r#"
services:
- name: web
  clusterIPs: [10.96.0.9]
  ports: [{name: http, port: 80, targetPort: 8080}]
  selector: {app: web}
pods:
- {name: web-a, ip: 172.17.0.2, node: n1, zone: z1, labels: {app: web}}
- {name: web-b, ip: 172.17.0.3, node: n2, zone: z1, labels: {app: web}}
- {name: client, ip: 172.17.0.4, node: n1, labels: {app: client, traffic.envoy.enabled: "true"}}
"#,
    )
    .unwrap();
    std::sync::Arc::make_mut(&mut m.services[0]).labels = map(svc_labels);
    std::sync::Arc::make_mut(&mut m.pods[0])
        .labels
        .extend(map(server_labels));
    std::sync::Arc::make_mut(&mut m.pods[2])
        .labels
        .extend(map(client_labels));
    m
}

pub fn run(model: &MeshModel) -> Translation {
    run_with(model, &Options::default())
}

pub fn run_with(model: &MeshModel, opts: &Options) -> Translation {
    let t = translate(model, opts);
    t.snapshot.validate().expect("snapshot is consistent");
    t
}

pub fn decode<M: Message + Name + Default>(any: &Any) -> M {
    assert_eq!(any.type_url, M::type_url());
    M::decode(any.value.as_slice()).unwrap()
}

pub fn get<M: Message + Name + Default>(view: &NodeResources, type_url: &str, name: &str) -> M {
    let r = view
        .get(type_url)
        .and_then(|m| m.get(name))
        .unwrap_or_else(|| panic!("{type_url} {name} missing"));
    decode(&r.body)
}

pub fn names(view: &NodeResources, type_url: &str) -> Vec<String> {
    view.get(type_url)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

pub fn listener(view: &NodeResources, name: &str) -> Listener {
    get(view, LISTENER, name)
}
pub fn cluster(view: &NodeResources, name: &str) -> Cluster {
    get(view, CLUSTER, name)
}
pub fn cla(view: &NodeResources, name: &str) -> ClusterLoadAssignment {
    get(view, ENDPOINT, name)
}
pub fn route_config(view: &NodeResources, name: &str) -> RouteConfiguration {
    get(view, ROUTE, name)
}

/// The route action of the only route of a sidecar route configuration.
pub fn only_action(rc: &RouteConfiguration) -> RouteAction {
    assert_eq!(rc.virtual_hosts.len(), 1);
    assert_eq!(rc.virtual_hosts[0].routes.len(), 1);
    match &rc.virtual_hosts[0].routes[0].action {
        Some(route::Action::Route(a)) => a.clone(),
        other => panic!("not a route action: {other:?}"),
    }
}

pub fn typed(f: &Filter) -> &Any {
    match &f.config_type {
        Some(filter::ConfigType::TypedConfig(a)) => a,
        other => panic!("no typed config: {other:?}"),
    }
}

pub fn hcm_of(f: &Filter) -> HttpConnectionManager {
    assert_eq!(f.name, "envoy.filters.network.http_connection_manager");
    decode(typed(f))
}

pub fn tcp_of(f: &Filter) -> TcpProxy {
    assert_eq!(f.name, "envoy.filters.network.tcp_proxy");
    decode(typed(f))
}

/// (address, port, weight) of every endpoint, with the locality weight of its group.
pub fn endpoints(cla: &ClusterLoadAssignment) -> Vec<(String, u32, u32, u32)> {
    let mut out = Vec::new();
    for loc in &cla.endpoints {
        let lw = loc.load_balancing_weight.map(|w| w.value).unwrap_or(0);
        for e in &loc.lb_endpoints {
            let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                panic!("no endpoint")
            };
            let Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(sa)) =
                ep.address.as_ref().and_then(|a| a.address.clone())
            else {
                panic!("no socket address")
            };
            let Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p)) =
                sa.port_specifier
            else {
                panic!("no port")
            };
            out.push((
                sa.address,
                p,
                e.load_balancing_weight.map(|w| w.value).unwrap_or(0),
                lw,
            ));
        }
    }
    out
}

pub fn sidecar(t: &Translation, node: &str) -> NodeResources {
    t.snapshot.for_node(node)
}
