//! `traffic-control config --node-id <pod>.<ns>`: what that node would receive, translated from a
//! model file. Each resource is printed with its name, version and origin, then its decoded
//! protobuf (Rust debug notation; nested `Any`s stay encoded).

use std::fmt::Write;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use traffic_translate::snapshot::{NodeResources, CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
use traffic_xds::type_name;

fn decoded(any: &Any) -> String {
    let v = any.value.as_slice();
    let r = match any.type_url.as_str() {
        LISTENER => Listener::decode(v).map(|m| format!("{m:#?}")),
        ROUTE => RouteConfiguration::decode(v).map(|m| format!("{m:#?}")),
        CLUSTER => Cluster::decode(v).map(|m| format!("{m:#?}")),
        ENDPOINT => ClusterLoadAssignment::decode(v).map(|m| format!("{m:#?}")),
        // Never print key material.
        SECRET => Secret::decode(v).map(|m| format!("Secret {{ name: {:?}, .. }}", m.name)),
        other => return format!("<{} bytes of {other}>", v.len()),
    };
    r.unwrap_or_else(|e| format!("<undecodable: {e}>"))
}

/// Renders `resources` (optionally one type, by short name such as `cluster`).
pub fn render(node_id: &str, resources: &NodeResources, only: Option<&str>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# node {node_id}");
    for (type_url, items) in &resources.by_type {
        if only.is_some_and(|o| o != type_name(type_url)) {
            continue;
        }
        let _ = writeln!(out, "\n## {} ({} resources)", type_name(type_url), items.len());
        for (name, r) in items {
            let origin = r
                .origin
                .as_ref()
                .map(|o| format!(" from {o}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "\n### {name} version {}{origin}\n{}",
                r.version,
                decoded(&r.body)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use traffic_translate::model::MeshModel;
    use traffic_translate::snapshot::MeshSnapshot;
    use traffic_translate::translate::{translate, Options};

    #[test]
    fn the_bookinfo_reviews_cluster_is_shown_with_its_origin() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/translate/examples/bookinfo.yaml");
        let model = MeshModel::from_yaml_file(path).expect("model");
        let t = translate(&model, &Options::default());
        let text = render("x.default", &t.snapshot.for_node("x.default"), Some("cluster"));
        assert!(text.contains("### 9080|default|reviews version"), "{text}");
        assert!(text.contains("from Service default/reviews"), "{text}");
        assert!(!text.contains("## listener"));
    }
}
