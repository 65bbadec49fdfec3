//! The readable dump decodes nested `Any`s and never prints private keys.
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use common::*;
use traffic_translate::render::render_text;
use traffic_translate::snapshot::MeshSnapshot;
use traffic_translate::translate::{Options, TlsDelivery, INGRESS_NODE_ID};

#[test]
fn the_text_dump_decodes_nested_filters_and_hides_keys() {
    let t = run(&bookinfo());
    let text = render_text(&t.snapshot.for_node("p.default"));
    if std::env::var_os("PRINT_RENDER").is_some() {
        println!("{text}");
    }
    assert!(text.contains("### Listener \"outbound\" version="));
    assert!(
        text.contains("route_config_name: \"9080|default|reviews\""),
        "HCM decoded inside the listener"
    );
    assert!(text.contains("Router {"), "router filter decoded inside the HCM");
    assert!(!text.contains("value: [\n"), "no undecoded Any left");
    for tls in [TlsDelivery::Inline, TlsDelivery::Sds] {
        let t = run_with(
            &bookinfo(),
            &Options {
                ingress_tls: tls,
                ..Options::default()
            },
        );
        let text = render_text(&t.snapshot.for_node(INGRESS_NODE_ID));
        assert!(!text.contains("PRIVATE KEY"), "{tls:?}");
        assert!(text.contains("<redacted>"));
    }
    let _ = bookinfo().to_yaml().unwrap();
}

#[test]
fn the_json_dump_is_proto3_json_with_nested_anys_and_no_keys() {
    let t = run(&bookinfo());
    let v = traffic_translate::render::render_json(&t.snapshot.for_node("p.default")).unwrap();
    if std::env::var_os("PRINT_RENDER").is_some() {
        println!("{}", serde_json::to_string_pretty(&v).unwrap());
    }
    let outbound = &v["Listener"]["outbound"]["resource"];
    assert_eq!(outbound["address"]["socketAddress"]["portValue"], 15001);
    let hcm = &outbound["filterChains"][3]["filters"][0]["typedConfig"];
    assert_eq!(
        hcm["@type"],
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    );
    assert_eq!(hcm["rds"]["routeConfigName"], "9080|default|reviews");
    assert_eq!(
        v["Cluster"]["9080|default|reviews"]["resource"]["connectTimeout"],
        "60s"
    );
    assert_eq!(
        v["Cluster"]["9080|default|reviews"]["origin"],
        "Service default/reviews"
    );
    let eps = &v["ClusterLoadAssignment"]["9080|default|reviews"]["resource"]["endpoints"][0];
    // reviews-v1 (100) and v2 (10) on one node: the heavier weight's sub-locality first.
    assert_eq!(eps["loadBalancingWeight"], 100);
    for tls in [TlsDelivery::Inline, TlsDelivery::Sds] {
        let t = run_with(
            &bookinfo(),
            &Options {
                ingress_tls: tls,
                ..Options::default()
            },
        );
        let v = traffic_translate::render::render_json(&t.snapshot.for_node(INGRESS_NODE_ID)).unwrap();
        let text = serde_json::to_string(&v).unwrap();
        assert!(!text.contains("PRIVATE KEY"), "{tls:?}");
        assert!(text.contains("<redacted>"), "{tls:?}");
        assert!(text.contains("BEGIN CERTIFICATE"), "certificates are public");
    }
}

#[test]
fn the_vendored_descriptors_cover_every_type_translation_emits() {
    let mut m = small_model(
        &[
            ("traffic.port.80", "http"),
            ("traffic.fault.abort.status", "503"),
            ("traffic.fault.abort.percentage", "1"),
            ("traffic.rate.limit", "10"),
            ("traffic.tracing.enabled", "true"),
            ("traffic.hash.cookie.name", "c"),
            ("traffic.connection.max", "5"),
        ],
        &[],
        &[("traffic.request.timeout", "1s")],
    );
    m.services.push(bookinfo().services[0].clone());
    std::sync::Arc::make_mut(&mut m.services[1])
        .labels
        .insert("traffic.port.9080".into(), "tcp".into());
    m.ingresses = bookinfo().ingresses;
    m.ingresses[0].rules[0].paths[0].backend.service = "web".into();
    m.ingresses[0].rules[0].paths[0].backend.port = traffic_translate::model::TargetPort::Number(80);
    m.secrets = bookinfo().secrets;
    // The Istio front end's own types: retries (previous-hosts predicate), a DNS ServiceEntry
    // (the DNS cluster extension).
    m.istio = traffic_translate::model::MeshModel::from_yaml_str(
        r#"
services: []
pods: []
istio:
  virtualServices:
  - metadata: {name: web}
    spec:
      hosts: [web]
      http:
      - route: [{destination: {host: web}}]
        retries: {attempts: 2, retryOn: 5xx}
  serviceEntries:
  - metadata: {name: ext}
    spec:
      hosts: [httpbin.org]
      ports: [{number: 80, name: http, protocol: HTTP}]
      resolution: DNS
"#,
    )
    .unwrap()
    .istio;
    let opts = Options {
        outbound_policy: traffic_translate::translate::OutboundPolicy::Passthrough,
        zipkin: Some("zipkin:9411".parse().unwrap()),
        ingress_tls: TlsDelivery::Sds,
        ..Options::default()
    };
    let t = run_with(&m, &opts);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    for (node, res) in t.snapshot.views() {
        traffic_translate::render::render_json(res).unwrap_or_else(|e| panic!("{node}: {e}"));
    }
}
