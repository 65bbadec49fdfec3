//! Endpoint weights as every xDS client sees them: pods of different `traffic.endpoint.weight`
//! on one node become sub-localities of equal-weight endpoints weighted by their sum (gRPC applies
//! only locality weights), for a Service port and for a DestinationRule subset alike; hash-based
//! clusters keep one locality per node (gRPC's ring_hash multiplies locality by endpoint weight).
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use common::*;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use traffic_translate::model::MeshModel;

/// (sub_zone, locality weight, [endpoint weight]) per locality.
fn localities(cla: &ClusterLoadAssignment) -> Vec<(String, u32, Vec<u32>)> {
    cla.endpoints
        .iter()
        .map(|l| {
            (
                l.locality.clone().unwrap().sub_zone,
                l.load_balancing_weight.unwrap().value,
                l.lb_endpoints
                    .iter()
                    .map(|e| e.load_balancing_weight.unwrap().value)
                    .collect(),
            )
        })
        .collect()
}

fn model(svc_labels: &str, istio: &str) -> MeshModel {
    MeshModel::from_yaml_str(&format!(
        r#"
services:
- name: reviews
  clusterIPs: [10.96.0.10]
  ports: [{{name: http, port: 9080, targetPort: 9080}}]
  selector: {{app: reviews}}
  labels: {{traffic.port.9080: http{svc_labels}}}
pods:
- {{name: r1, ip: 172.17.0.2, node: n1, labels: {{app: reviews, version: v1, traffic.endpoint.weight: '80'}}}}
- {{name: r2, ip: 172.17.0.3, node: n1, labels: {{app: reviews, version: v1, traffic.endpoint.weight: '20'}}}}
- {{name: r3, ip: 172.17.0.4, node: n1, labels: {{app: reviews, version: v2, traffic.endpoint.weight: '20'}}}}
- {{name: r4, ip: 172.17.0.5, node: n2, labels: {{app: reviews, version: v2}}}}
- {{name: client, ip: 172.17.0.9, node: n1, labels: {{app: client, traffic.envoy.enabled: "true"}}}}
istio:
{istio}
"#
    ))
    .unwrap()
}

#[test]
fn different_weights_on_one_node_become_sub_localities_weighted_by_their_sum() {
    let t = run(&model("", "  {}"));
    let view = sidecar(&t, "client.default");
    assert_eq!(
        localities(&cla(&view, "9080|default|reviews")),
        [
            ("n1~w80".into(), 80, vec![80]),
            ("n1~w20".into(), 40, vec![20, 20]),
            ("n2".into(), 100, vec![100]),
        ]
    );
}

#[test]
fn a_destination_rule_subset_carries_its_weights_the_same_way() {
    let dr = "  destinationRules:\n  - metadata: {name: reviews}\n    spec:\n      host: reviews\n      subsets:\n      - {name: v1, labels: {version: v1}}\n      - {name: v2, labels: {version: v2}}\n";
    let t = run(&model("", dr));
    let view = sidecar(&t, "client.default");
    assert_eq!(
        localities(&cla(&view, "9080|default|reviews|v1")),
        [("n1~w80".into(), 80, vec![80]), ("n1~w20".into(), 20, vec![20])]
    );
    // One weight per node: nothing to split.
    assert_eq!(
        localities(&cla(&view, "9080|default|reviews|v2")),
        [("n1".into(), 20, vec![20]), ("n2".into(), 100, vec![100])]
    );
}

#[test]
fn ring_hash_and_maglev_clusters_keep_one_locality_per_node() {
    for labels in [
        ", traffic.lb.policy: ring_hash",
        ", traffic.lb.policy: maglev",
        ", traffic.hash.header.name: x-user",
    ] {
        let t = run(&model(labels, "  {}"));
        let view = sidecar(&t, "client.default");
        assert_eq!(
            localities(&cla(&view, "9080|default|reviews")),
            [
                ("n1".into(), 120, vec![80, 20, 20]),
                ("n2".into(), 100, vec![100])
            ],
            "{labels}"
        );
    }
    // A DestinationRule's consistentHash makes the subset clusters hash-based too.
    let dr = "  destinationRules:\n  - metadata: {name: reviews}\n    spec:\n      host: reviews\n      trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}\n      subsets:\n      - {name: v1, labels: {version: v1}}\n";
    let t = run(&model("", dr));
    let view = sidecar(&t, "client.default");
    assert_eq!(
        localities(&cla(&view, "9080|default|reviews|v1")),
        [("n1".into(), 100, vec![80, 20])]
    );
    assert_eq!(
        localities(&cla(&view, "9080|default|reviews")),
        [
            ("n1".into(), 120, vec![80, 20, 20]),
            ("n2".into(), 100, vec![100])
        ]
    );
}
