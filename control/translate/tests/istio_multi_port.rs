//! A VirtualService for a Service of several ports, as the bookinfo-style apps users have: the
//! rule applies to the HTTP port(s), a destination without `port` takes the port the request came
//! in on, and the non-HTTP ports are left alone without a problem (Istio's reading).
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use common::*;
use envoy_types::pb::envoy::config::route::v3::{route, route_action};
use traffic_translate::model::MeshModel;
use traffic_translate::translate::Problem;

fn model(vs_http: &str) -> MeshModel {
    MeshModel::from_yaml_str(&format!(
        r#"
services:
- name: reviews
  clusterIPs: [10.96.0.10]
  ports: [{{name: http, port: 9080}}, {{name: http-admin, port: 9081}}, {{name: tcp-db, port: 9082}}]
  selector: {{app: reviews}}
pods:
- {{name: reviews-v1, ip: 172.17.0.2, labels: {{app: reviews, version: v1}}}}
- {{name: reviews-v2, ip: 172.17.0.3, labels: {{app: reviews, version: v2}}}}
istio:
  virtualServices:
  - metadata: {{name: reviews}}
    spec: {{hosts: [reviews], http: {vs_http}}}
  destinationRules:
  - metadata: {{name: reviews}}
    spec:
      host: reviews
      subsets:
      - {{name: v1, labels: {{version: v1}}}}
      - {{name: v2, labels: {{version: v2}}}}
"#
    ))
    .unwrap()
}

fn first_cluster(t: &traffic_translate::translate::Translation, rc: &str) -> String {
    let config = route_config(&sidecar(t, "x.default"), rc);
    match &config.virtual_hosts[0].routes[0].action {
        Some(route::Action::Route(a)) => match &a.cluster_specifier {
            Some(route_action::ClusterSpecifier::Cluster(c)) => c.clone(),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_destination_without_port_takes_the_port_of_each_http_port_and_tcp_ports_are_not_problems() {
    let t = run(&model("[{route: [{destination: {host: reviews, subset: v2}}]}]"));
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    assert_eq!(
        first_cluster(&t, "9080|default|reviews"),
        "9080|default|reviews|v2"
    );
    assert_eq!(
        first_cluster(&t, "9081|default|reviews"),
        "9081|default|reviews|v2"
    );
}

#[test]
fn a_rule_only_for_a_tcp_port_is_still_reported() {
    let t = run(&model(
        "[{match: [{port: 9082}], route: [{destination: {host: reviews, subset: v2}}]}]",
    ));
    assert!(
        t.problems
            .iter()
            .any(|p| matches!(p, Problem::UnresolvedReference { message, .. } if message.contains("9082"))),
        "{:?}",
        t.problems
    );
}
