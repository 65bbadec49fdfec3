//! `translate_endpoint_change`: a pod move re-translates only endpoint assignments and gives
//! exactly what a full translation gives.
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

use std::sync::Arc;

use traffic_translate::model::MeshModel;
use traffic_translate::snapshot::{MeshSnapshot, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use traffic_translate::translate::{translate, translate_endpoint_change, Options, INGRESS_NODE_ID};

fn bookinfo() -> MeshModel {
    MeshModel::from_yaml_file(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/bookinfo.yaml")).unwrap()
}

#[test]
fn moved_pods_give_the_same_snapshot_as_a_full_translation_sharing_everything_else() {
    let opts = Options::default();
    let before = bookinfo();
    let prev = translate(&before, &opts);
    let mut after = before.clone();
    Arc::make_mut(&mut after.pods[1]).ip = Some("10.9.9.9".parse().unwrap());
    Arc::make_mut(&mut after.pods[2]).ready = false;
    Arc::make_mut(&mut after.pods[3]).zone = Some("zone-b".into());
    let fast = translate_endpoint_change(&before, &prev, &after, &opts).expect("endpoint-only change");
    let full = translate(&after, &opts);
    assert_eq!(fast.snapshot, full.snapshot);
    assert_ne!(fast.snapshot, prev.snapshot);
    for node in ["productpage-v1-6b746f74dc-x7k2p.default", INGRESS_NODE_ID] {
        let (old, new) = (prev.snapshot.for_node(node), fast.snapshot.for_node(node));
        for t in [CLUSTER, LISTENER, ROUTE] {
            // Not even copied: the same map (the xDS server then keeps its version and encodings).
            assert!(Arc::ptr_eq(&new.by_type[t], &old.by_type[t]), "{t} map shared");
            for (name, r) in new.by_type[t].iter() {
                assert!(Arc::ptr_eq(r, &old.by_type[t][name]), "{t} {name} shared");
            }
        }
        let unchanged = new.by_type[ENDPOINT]
            .iter()
            .filter(|(n, r)| Arc::ptr_eq(r, &old.by_type[ENDPOINT][*n]))
            .count();
        assert!(unchanged < new.by_type[ENDPOINT].len() && unchanged > 0);
    }
    // No change at all: the previous translation.
    let same = translate_endpoint_change(&after, &full, &after, &opts).unwrap();
    assert_eq!(same.snapshot, full.snapshot);
}

#[test]
fn anything_but_a_pod_move_needs_a_full_translation() {
    let opts = Options::default();
    let before = bookinfo();
    let prev = translate(&before, &opts);
    let mut relabelled = before.clone();
    Arc::make_mut(&mut relabelled.pods[0])
        .labels
        .insert("traffic.timeout".into(), "2s".into());
    assert!(translate_endpoint_change(&before, &prev, &relabelled, &opts).is_none());
    let mut fewer = before.clone();
    fewer.pods.pop();
    assert!(translate_endpoint_change(&before, &prev, &fewer, &opts).is_none());
    let mut service = before.clone();
    Arc::make_mut(&mut service.services[0])
        .labels
        .insert("traffic.port.9080".into(), "tcp".into());
    assert!(translate_endpoint_change(&before, &prev, &service, &opts).is_none());
    let loopback = Options {
        local_endpoint_via_loopback: true,
        ..Options::default()
    };
    let mut moved = before.clone();
    Arc::make_mut(&mut moved.pods[0]).ip = Some("10.9.9.9".parse().unwrap());
    let prev = translate(&before, &loopback);
    assert!(translate_endpoint_change(&before, &prev, &moved, &loopback).is_none());
}

/// Bookinfo with a VirtualService and a DestinationRule of three subsets for `reviews`.
fn bookinfo_with_subsets() -> MeshModel {
    let mut m = bookinfo();
    let istio: MeshModel = MeshModel::from_yaml_str(
        r#"
services: []
pods: []
istio:
  virtualServices:
  - metadata: {name: reviews}
    spec:
      hosts: [reviews]
      http:
      - match: [{headers: {end-user: {exact: jason}}}]
        route: [{destination: {host: reviews, subset: v2}}]
      - route: [{destination: {host: reviews, subset: v1}}]
  destinationRules:
  - metadata: {name: reviews}
    spec:
      host: reviews.default.svc.cluster.local
      subsets:
      - {name: v1, labels: {version: v1}}
      - {name: v2, labels: {version: v2}}
      - {name: v3, labels: {version: v3}}
  - metadata: {name: ratings}
    spec:
      host: ratings
      trafficPolicy: {loadBalancer: {simple: RANDOM}}
"#,
    )
    .unwrap();
    m.istio = istio.istio;
    m
}

#[test]
fn a_moved_pod_of_a_destination_rule_subset_gives_what_a_full_translation_gives() {
    let opts = Options::default();
    let before = bookinfo_with_subsets();
    let prev = translate(&before, &opts);
    assert!(prev.problems.is_empty(), "{:?}", prev.problems);
    let mut after = before.clone();
    let i = after
        .pods
        .iter()
        .position(|p| {
            p.labels.get("version").map(String::as_str) == Some("v2") && p.name.starts_with("reviews")
        })
        .unwrap();
    Arc::make_mut(&mut after.pods[i]).ip = Some("10.9.9.9".parse().unwrap());
    let fast = translate_endpoint_change(&before, &prev, &after, &opts).expect("endpoint-only change");
    let full = translate(&after, &opts);
    assert_eq!(fast.snapshot, full.snapshot);
    assert_ne!(fast.snapshot, prev.snapshot);
    // A changed Istio object is not a pod move.
    let mut edited = after.clone();
    std::sync::Arc::make_mut(&mut edited.istio).destination_rules[0]
        .spec
        .subsets
        .pop();
    assert!(translate_endpoint_change(&after, &full, &edited, &opts).is_none());
}
