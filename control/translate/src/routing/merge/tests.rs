use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::routing::{DestinationPolicy, Fault, ServiceKey, Subset};

fn svc() -> ServiceKey {
    ServiceKey::new("ns", "web")
}

fn default_rule() -> HttpRule {
    let labels: BTreeMap<String, String> = [
        ("traffic.request.timeout", "7000"),
        ("traffic.retries.5xx", "2"),
        ("traffic.tracing.enabled", "true"),
        ("traffic.hash.header.name", "x-label"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let s = traffic_labels::parse(traffic_labels::ObjectKind::Service, &labels).settings;
    let origin = ObjectRef::new("Service", "ns", "web");
    crate::label_lower::default_route(&svc(), 9080, &origin, &s.traffic, &s.cluster).rule
}

fn istio_rule(subset: Option<&str>, catch_all: bool) -> HttpRule {
    let mut r = default_rule();
    r.origin = ObjectRef::new("VirtualService", "ns", "web");
    r.name = "ns/web/0".into();
    r.timeout = Some(Duration::from_secs(3));
    r.retries = None;
    r.fault = Some(Fault::default());
    r.tracing = None;
    r.hash = Vec::new();
    if !catch_all {
        r.matches = vec![crate::routing::RequestMatch {
            headers: vec![crate::routing::HeaderMatch {
                name: "end-user".into(),
                value: Some(crate::routing::StringMatch::Exact("jason".into())),
                invert: false,
            }],
            ..Default::default()
        }];
    }
    if let HttpAction::Route(ds) = &mut r.action {
        ds[0].destination.subset = subset.map(String::from);
    }
    r
}

fn hashed_policy() -> RoutingModel {
    let mut routing = RoutingModel::default();
    routing.policies.insert(
        svc(),
        DestinationPolicy {
            origin: ObjectRef::new("DestinationRule", "ns", "web"),
            policy: ClusterPolicy {
                load_balancer: Some(LoadBalancer::ConsistentHash(HashKey::Header("x-dr".into()))),
                ..Default::default()
            },
            ports: BTreeMap::new(),
            subsets: vec![Subset {
                name: "v2".into(),
                labels: BTreeMap::new(),
                policy: ClusterPolicy {
                    load_balancer: Some(LoadBalancer::Random),
                    ..Default::default()
                },
            }],
        },
    );
    routing
}

#[test]
fn rule_settings_win_and_labels_fill_the_rest() {
    let d = default_rule();
    let rules = port_rules(&[istio_rule(None, false)], &d, &RoutingModel::default());
    assert_eq!(rules.len(), 2, "the rule, then the label default");
    let r = &rules[0];
    assert_eq!(r.timeout, Some(Duration::from_secs(3)), "the rule's timeout");
    assert_eq!(r.retries, d.retries, "the labels' retries");
    assert_eq!(r.fault, Some(Fault::default()), "an explicit no-fault stays");
    assert_eq!(r.tracing, d.tracing);
    assert_eq!(r.hash, [HashKey::Header("x-label".into())]);
    assert_eq!(rules[1], d);
}

#[test]
fn a_catch_all_rule_replaces_the_default() {
    let d = default_rule();
    let rules = port_rules(&[istio_rule(None, true)], &d, &RoutingModel::default());
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].name, "ns/web/0");
}

#[test]
fn destination_rule_hash_wins_for_a_single_destination() {
    let d = default_rule();
    let routing = hashed_policy();
    let rules = port_rules(&[istio_rule(None, false)], &d, &routing);
    assert_eq!(rules[0].hash, [HashKey::Header("x-dr".into())]);
    assert_eq!(
        rules[1].hash,
        [HashKey::Header("x-dr".into())],
        "the default route too"
    );
    // The subset's own balancer (not hashing) wins over the top level's.
    let rules = port_rules(&[istio_rule(Some("v2"), false)], &d, &routing);
    assert_eq!(rules[0].hash, [HashKey::Header("x-label".into())]);
}

#[test]
fn overridden_labels_are_named_with_the_winner() {
    let d = default_rule();
    let rules = [istio_rule(None, false)];
    let lost = overridden(&d, &rules);
    let names: Vec<&str> = lost.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        ["traffic.request.timeout"],
        "fault is not labelled, retries not set"
    );
    assert_eq!(lost[0].1.kind, "VirtualService");
}

#[test]
fn cluster_policy_precedence() {
    let labels = ClusterPolicy {
        load_balancer: Some(LoadBalancer::LeastRequest),
        connection_pool: Some(ConnectionPool {
            max_connections: Some(10),
            connect_timeout: Some(Duration::from_secs(2)),
            ..Default::default()
        }),
        outlier_detection: None,
    };
    assert_eq!(cluster_policy(None, &labels), labels, "labels alone");
    let dr = ClusterPolicy {
        connection_pool: Some(ConnectionPool {
            max_pending_requests: Some(1),
            connect_timeout: Some(Duration::ZERO),
            max_requests_per_connection: Some(1),
            ..Default::default()
        }),
        ..Default::default()
    };
    let p = cluster_policy(Some(&dr), &labels);
    assert_eq!(p.load_balancer, Some(LoadBalancer::LeastRequest));
    let pool = p.connection_pool.expect("pool");
    assert_eq!(pool.max_connections, Some(10), "the label's");
    assert_eq!(pool.max_pending_requests, Some(1), "the DestinationRule's");
    assert_eq!(pool.max_requests, Some(u32::MAX), "Istio's default");
    assert_eq!(
        pool.connect_timeout,
        Some(Duration::from_secs(2)),
        "0 is not a timeout"
    );
    assert_eq!(pool.max_requests_per_connection, Some(1));
}
