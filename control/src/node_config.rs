//! `traffic-control config --node-id <pod>.<ns>`: what that node would receive, translated from a
//! model file, as proto3 JSON in the shape of Envoy's config dump (nested `Any`s decoded with their
//! `@type`, private keys redacted), or as YAML. Each resource names the Istio objects it came
//! from (`"from": ["VirtualService default/reviews"]`), see [`istio_sources`].

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use prost::Message;
use traffic_istio::IstioConfig;
use traffic_translate::render::{render_json, RenderError};
use traffic_translate::snapshot::{NodeResources, Resource, CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
use traffic_xds::type_name;

/// Whether `host` (a DestinationRule's, relative to `ns`) names Service `svc` in `svc_ns`.
fn names_service(host: &str, ns: &str, svc: &str, svc_ns: &str) -> bool {
    let host = host.trim_end_matches('.');
    let parts: Vec<&str> = host.split('.').collect();
    match parts.as_slice() {
        [name] => *name == svc && ns == svc_ns,
        [name, n] | [name, n, "svc"] | [name, n, "svc", "cluster", "local"] => *name == svc && *n == svc_ns,
        _ => false,
    }
}

/// The Istio objects resource `r` (of `type_url`) came from, as `Kind namespace/name`, sorted:
/// its origin when that is an Istio object; for a route configuration the VirtualServices of its
/// rules (route names `<ns>/<name>/<index>`); for a listener the Gateways of its filter chains
/// (`<ns>/<gateway>/servers[<i>]`); for a cluster or endpoint assignment
/// (`<port>|<ns>|<svc>[|<subset>]`) the DestinationRules for that Service; for a secret
/// (`<ns>/<name>`) the Gateways naming it as `credentialName`.
pub fn istio_sources(istio: &IstioConfig, type_url: &str, r: &Resource) -> Vec<String> {
    let mut out = BTreeSet::new();
    if let Some(o) = &r.origin {
        if traffic_istio::Kind::ALL.iter().any(|k| k.as_str() == o.kind) {
            out.insert(o.to_string());
        }
    }
    let vs = |ns: &str, name: &str| {
        istio
            .virtual_services
            .iter()
            .any(|v| v.metadata.namespace == ns && v.metadata.name == name)
    };
    let gateway = |ns: &str, name: &str| {
        istio
            .gateways
            .iter()
            .any(|g| g.metadata.namespace == ns && g.metadata.name == name)
    };
    match type_url {
        ROUTE => {
            let rc = RouteConfiguration::decode(r.body.value.as_slice()).unwrap_or_default();
            for route in rc.virtual_hosts.iter().flat_map(|v| &v.routes) {
                let mut parts = route.name.splitn(3, '/');
                if let (Some(ns), Some(name), Some(_)) = (parts.next(), parts.next(), parts.next()) {
                    if vs(ns, name) {
                        out.insert(format!("VirtualService {ns}/{name}"));
                    }
                }
            }
        }
        LISTENER => {
            let l = Listener::decode(r.body.value.as_slice()).unwrap_or_default();
            for c in &l.filter_chains {
                let mut parts = c.name.splitn(3, '/');
                if let (Some(ns), Some(name), Some(rest)) = (parts.next(), parts.next(), parts.next()) {
                    if rest.starts_with("servers[") && gateway(ns, name) {
                        out.insert(format!("Gateway {ns}/{name}"));
                    }
                }
            }
        }
        CLUSTER | ENDPOINT => {
            let parts: Vec<&str> = r.name.split('|').collect();
            if let [_, ns, svc, ..] = parts.as_slice() {
                for dr in &istio.destination_rules {
                    if names_service(&dr.spec.host, &dr.metadata.namespace, svc, ns) {
                        out.insert(format!(
                            "DestinationRule {}/{}",
                            dr.metadata.namespace, dr.metadata.name
                        ));
                    }
                }
            }
        }
        SECRET => {
            if let Some((ns, name)) = r.name.split_once('/') {
                for g in istio.gateways.iter().filter(|g| g.metadata.namespace == ns) {
                    let names = g
                        .spec
                        .servers
                        .iter()
                        .filter_map(|s| s.tls.as_ref()?.credential_name.as_deref());
                    if names.into_iter().any(|c| c == name) {
                        out.insert(format!("Gateway {ns}/{}", g.metadata.name));
                    }
                }
            }
        }
        _ => {}
    }
    out.into_iter().collect()
}

/// Output format of `config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    #[default]
    Json,
    Yaml,
}

/// Renders `resources` (optionally one type, by short name such as `cluster`).
/// Renders `resources` (optionally one type, by short name such as `cluster`), each with the
/// objects of `istio` it came from.
pub fn render(
    node_id: &str,
    resources: &NodeResources,
    only: Option<&str>,
    format: Format,
    istio: &IstioConfig,
) -> Result<String, RenderError> {
    let mut selected = NodeResources::default();
    for (type_url, items) in &resources.by_type {
        if only.is_none_or(|o| o == type_name(type_url)) {
            selected.by_type.insert(type_url, items.clone());
        }
    }
    let mut rendered = render_json(&selected)?;
    for (type_url, items) in &selected.by_type {
        let short = type_url.rsplit('.').next().unwrap_or(type_url);
        for (name, r) in items.iter() {
            let from = istio_sources(istio, type_url, r);
            if from.is_empty() {
                continue;
            }
            if let Some(entry) = rendered.get_mut(short).and_then(|t| t.get_mut(name.as_str())) {
                entry["from"] = serde_json::json!(from);
            }
        }
    }
    let doc = serde_json::json!({ "node": node_id, "resources": rendered });
    Ok(match format {
        Format::Json => serde_json::to_string_pretty(&doc).unwrap_or_default(),
        Format::Yaml => serde_yaml::to_string(&doc).unwrap_or_default(),
    })
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
        let text = render(
            "x.default",
            &t.snapshot.for_node("x.default"),
            Some("cluster"),
            Format::Json,
            &model.istio,
        )
        .expect("render");
        let doc: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(doc["node"], "x.default");
        let types: Vec<&String> = doc["resources"].as_object().expect("by type").keys().collect();
        assert_eq!(types, ["Cluster"], "only clusters: {text}");
        assert!(text.contains("9080|default|reviews"), "{text}");
        assert!(text.contains("Service default/reviews"), "{text}");
    }

    #[test]
    fn resources_name_the_istio_objects_they_came_from() {
        let yaml = r#"
services:
- {name: reviews, clusterIPs: [10.96.0.10], ports: [{name: http, port: 9080, targetPort: 9080}], selector: {app: reviews}}
pods:
- {name: reviews-v1, ip: 172.17.0.2, labels: {app: reviews, version: v1}}
istio:
  virtualServices:
  - metadata: {name: reviews}
    spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: v1}}]}]}
  - metadata: {name: front}
    spec: {hosts: [a.example.com], gateways: [gw], http: [{route: [{destination: {host: reviews}}]}]}
  destinationRules:
  - metadata: {name: reviews-dr}
    spec: {host: reviews.default.svc.cluster.local, subsets: [{name: v1, labels: {version: v1}}]}
  gateways:
  - metadata: {name: gw}
    spec:
      selector: {istio: ingressgateway}
      servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [a.example.com]}]
"#;
        let model = MeshModel::from_yaml_str(yaml).expect("model");
        let t = translate(&model, &Options::default());
        let from = |node: &str, type_url: &str, name: &str| {
            let view = t.snapshot.for_node(node);
            let r = view.by_type[type_url][name].clone();
            istio_sources(&model.istio, type_url, &r)
        };
        use traffic_translate::snapshot::{CLUSTER, ROUTE};
        assert_eq!(
            from("x.default", ROUTE, "9080|default|reviews"),
            ["VirtualService default/reviews"]
        );
        assert_eq!(
            from("x.default", CLUSTER, "9080|default|reviews|v1"),
            ["DestinationRule default/reviews-dr"]
        );
        assert_eq!(
            from("x.default", CLUSTER, "9080|default|reviews"),
            ["DestinationRule default/reviews-dr"]
        );
        assert_eq!(
            from("traffic-ingress", ROUTE, "ingress"),
            ["VirtualService default/front"]
        );
        let text = render(
            "x.default",
            &t.snapshot.for_node("x.default"),
            Some("route"),
            Format::Yaml,
            &model.istio,
        )
        .expect("render");
        assert!(text.contains("- VirtualService default/reviews"), "{text}");
    }
}
