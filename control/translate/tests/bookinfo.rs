//! Golden-ish tests of the translated bookinfo model: decode every `Any` back and check fields.
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::sync::Arc;

use common::*;
use envoy_types::pb::envoy::config::cluster::v3::cluster;
use envoy_types::pb::envoy::config::core::v3::transport_socket;
use envoy_types::pb::envoy::config::route::v3::{route, route_match};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use envoy_types::pb::google::protobuf::Duration;
use traffic_translate::snapshot::{MeshSnapshot, CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
use traffic_translate::translate::{translate, Options, TlsDelivery, INGRESS_NODE_ID};

const SVCS: [&str; 4] = ["details", "productpage", "ratings", "reviews"];

#[test]
fn every_sidecar_gets_one_http_filter_chain_per_service_ip_and_port() {
    let t = run(&bookinfo());
    assert!(t.label_errors.is_empty(), "{:?}", t.label_errors);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let view = t.snapshot.for_node("productpage-v1-6b746f74dc-x7k2p.default");
    assert_eq!(names(&view, LISTENER), ["outbound", "prometheus_stats"]);

    let l = listener(&view, "outbound");
    assert_eq!(l.listener_filters[0].name, "envoy.filters.listener.original_dst");
    assert_eq!(l.use_original_dst, None);
    let d = l.default_filter_chain.clone().unwrap();
    assert_eq!(
        tcp_of(&d.filters[0]).cluster_specifier,
        Some(envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier::Cluster(
            "blackhole".into()
        )),
        "block policy: default chain to the endpoint-less cluster"
    );
    let chains: Vec<_> = l.filter_chains.iter().map(|c| c.name.clone()).collect();
    assert_eq!(
        chains,
        [
            "9080|default|productpage",
            "9080|default|details",
            "9080|default|ratings",
            "9080|default|reviews"
        ]
    );
    let reviews = &l.filter_chains[3];
    let m = reviews.filter_chain_match.as_ref().unwrap();
    assert_eq!(m.destination_port.unwrap().value, 9080);
    assert_eq!(m.prefix_ranges[0].address_prefix, "10.96.0.33");
    assert_eq!(m.prefix_ranges[0].prefix_len.unwrap().value, 32);
    let hcm = hcm_of(&reviews.filters[0]);
    let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier else {
        panic!("not RDS")
    };
    assert_eq!(rds.route_config_name, "9080|default|reviews");
    let filters: Vec<_> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        filters,
        [
            "envoy.filters.http.fault",
            "envoy.filters.http.bandwidth_limit",
            "envoy.filters.http.router"
        ]
    );
    assert!(hcm.tracing.is_none(), "no collector configured");
}

#[test]
fn clusters_are_eds_over_ads_named_port_namespace_service() {
    let t = run(&bookinfo());
    let view = t.snapshot.for_node("details-v1-5498c86cf5-4mz8w.default");
    let mut want: Vec<String> = SVCS.iter().map(|s| format!("9080|default|{s}")).collect();
    assert_eq!(names(&view, ENDPOINT), want);
    want.extend(["admin".into(), "blackhole".into(), "passthrough".into()]);
    assert_eq!(names(&view, CLUSTER), want);
    let c = cluster(&view, "9080|default|reviews");
    assert_eq!(
        c.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32
        ))
    );
    let eds = c.eds_cluster_config.unwrap();
    assert_eq!(eds.service_name, "9080|default|reviews");
    assert!(matches!(
        eds.eds_config.unwrap().config_source_specifier,
        Some(envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier::Ads(_))
    ));
    assert_eq!(
        c.connect_timeout,
        Some(Duration {
            seconds: 60,
            nanos: 0
        })
    );
    assert_eq!(c.lb_policy, cluster::LbPolicy::RoundRobin as i32);
    // -> envoy_cluster_outbound_upstream_rq_completed{envoy_cluster_name="9080|default|reviews"}
    assert_eq!(c.alt_stat_name, "9080|default|reviews.outbound");
    assert!(c.circuit_breakers.is_none());
    // Upstream speaks the client's protocol (h2c for gRPC stays h2c).
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
        http_protocol_options, HttpProtocolOptions,
    };
    let po: HttpProtocolOptions =
        decode(&c.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]);
    assert!(matches!(
        po.upstream_protocol_options,
        Some(http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(_))
    ));
    let admin = cluster(&view, "admin");
    assert_eq!(
        endpoints(admin.load_assignment.as_ref().unwrap()),
        [("127.0.0.1".into(), 15000, 0, 0)]
    );
}

#[test]
fn reviews_weights_100_10_0_give_two_members() {
    let t = run(&bookinfo());
    let view = t.snapshot.for_node("ratings-v1-b6994bb9-9gq5t.default");
    let reviews = cla(&view, "9080|default|reviews");
    assert_eq!(reviews.cluster_name, "9080|default|reviews");
    assert_eq!(
        endpoints(&reviews),
        [
            ("172.17.0.13".into(), 9080, 100, 100),
            ("172.17.0.14".into(), 9080, 10, 10)
        ]
    );
    // One node, two weights: a sub-locality per weight, so gRPC (locality weights only) splits
    // 100:10 like Envoy (endpoint weights).
    let subs: Vec<&str> = reviews
        .endpoints
        .iter()
        .map(|l| l.locality.as_ref().unwrap().sub_zone.as_str())
        .collect();
    assert_eq!(subs, ["traffic-e2e-node~w100", "traffic-e2e-node~w10"]);
}

#[test]
fn sidecar_routes_have_no_timeout_and_nothing_else_by_default() {
    let t = run(&bookinfo());
    let view = t.snapshot.for_node("x.default");
    assert_eq!(names(&view, ROUTE), SVCS.map(|s| format!("9080|default|{s}")));
    let rc = route_config(&view, "9080|default|ratings");
    assert_eq!(rc.virtual_hosts[0].domains, ["*"]);
    let r = &rc.virtual_hosts[0].routes[0];
    assert_eq!(
        r.r#match.as_ref().unwrap().path_specifier,
        Some(route_match::PathSpecifier::Prefix("/".into()))
    );
    assert!(r.typed_per_filter_config.is_empty());
    assert!(rc.virtual_hosts[0].typed_per_filter_config.is_empty());
    let a = only_action(&rc);
    assert_eq!(
        a.timeout,
        Some(Duration { seconds: 0, nanos: 0 }),
        "0 = none, not Envoy's 15 s"
    );
    assert!(a.retry_policy.is_none());
    assert!(a.hash_policy.is_empty());
}

#[test]
fn all_sidecars_share_the_same_encoded_resources() {
    let t = run(&bookinfo());
    let a = t.snapshot.for_node("productpage-v1-6b746f74dc-x7k2p.default");
    let b = t.snapshot.for_node("reviews-v2-7bf8c9648f-2xw7d.default");
    assert_eq!(t.snapshot.overridden_nodes().count(), 0);
    for (ty, ra) in &a.by_type {
        for (name, r) in ra.iter() {
            assert!(Arc::ptr_eq(r, &b.by_type[ty][name]), "{ty} {name} not shared");
        }
    }
    // The gateway shares clusters and endpoints with the sidecars.
    let g = t.snapshot.for_node(INGRESS_NODE_ID);
    assert!(Arc::ptr_eq(
        &g.by_type[ENDPOINT]["9080|default|reviews"],
        &a.by_type[ENDPOINT]["9080|default|reviews"]
    ));
    assert!(Arc::ptr_eq(
        &g.by_type[CLUSTER]["9080|default|reviews"],
        &a.by_type[CLUSTER]["9080|default|reviews"]
    ));
}

#[test]
fn translation_is_deterministic_and_versions_are_content_hashes() {
    let model = bookinfo();
    let a = translate(&model, &Options::default()).snapshot;
    let b = translate(&model, &Options::default()).snapshot;
    assert_eq!(a, b);
    let mut changed = model.clone();
    changed
        .workloads
        .iter_mut()
        .find(|w| w.name == "reviews-v2")
        .unwrap()
        .labels
        .insert("traffic.endpoint.weight".into(), "20".into());
    let c = translate(&changed, &Options::default()).snapshot;
    let (va, vc) = (a.for_node("p.default"), c.for_node("p.default"));
    for (ty, res) in &va.by_type {
        for (name, r) in res.iter() {
            let same = r.version == vc.by_type[ty][name].version;
            let expect_same = !(ty == &ENDPOINT && name == "9080|default|reviews");
            assert_eq!(same, expect_same, "{ty} {name}");
        }
    }
}

#[test]
fn the_gateway_serves_ingress_rules_over_http_and_https() {
    let t = run(&bookinfo());
    let g = t.snapshot.for_node(INGRESS_NODE_ID);
    assert_eq!(
        names(&g, LISTENER),
        ["ingress_http", "ingress_https", "prometheus_stats"]
    );
    assert_eq!(names(&g, ROUTE), ["ingress"]);
    assert!(names(&g, CLUSTER).contains(&"admin".to_string()));
    assert!(!names(&g, CLUSTER).contains(&"blackhole".to_string()));

    let rc = route_config(&g, "ingress");
    assert!(rc.ignore_port_in_host_matching);
    assert_eq!(rc.virtual_hosts.len(), 1);
    let vh = &rc.virtual_hosts[0];
    assert_eq!(vh.domains, ["bookinfo.example.com"]);
    let matches: Vec<_> = vh
        .routes
        .iter()
        .map(|r| r.r#match.as_ref().unwrap().path_specifier.clone().unwrap())
        .collect();
    assert_eq!(
        matches,
        [
            route_match::PathSpecifier::Path("/productpage".into()),
            route_match::PathSpecifier::PathSeparatedPrefix("/api/v1/products".into()),
            route_match::PathSpecifier::PathSeparatedPrefix("/static".into()),
        ]
    );
    for r in &vh.routes {
        assert!(r.typed_per_filter_config.is_empty(), "no faults at the gateway");
        let Some(route::Action::Route(a)) = &r.action else {
            panic!()
        };
        assert_eq!(
            a.cluster_specifier,
            Some(
                envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier::Cluster(
                    "9080|default|productpage".into()
                )
            )
        );
    }

    let http = listener(&g, "ingress_http");
    assert_eq!(http.filter_chains.len(), 1);
    let hcm = hcm_of(&http.filter_chains[0].filters[0]);
    let filters: Vec<_> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(filters, ["envoy.filters.http.router"]);
    assert_eq!(hcm.use_remote_address.map(|b| b.value), Some(true));

    let https = listener(&g, "ingress_https");
    assert_eq!(
        https.listener_filters[0].name,
        "envoy.filters.listener.tls_inspector"
    );
    let chain = &https.filter_chains[0];
    assert_eq!(
        chain.filter_chain_match.as_ref().unwrap().server_names,
        ["bookinfo.example.com"]
    );
    let ts = chain.transport_socket.as_ref().unwrap();
    assert_eq!(ts.name, "envoy.transport_sockets.tls");
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &ts.config_type else {
        panic!()
    };
    let tls: DownstreamTlsContext = decode(any);
    let common = tls.common_tls_context.unwrap();
    assert_eq!(common.tls_certificates.len(), 1, "inline by default");
    assert!(!g.by_type.contains_key(SECRET));
}

#[test]
fn the_gateway_can_take_certificates_over_sds() {
    let opts = Options {
        ingress_tls: TlsDelivery::Sds,
        ..Options::default()
    };
    let t = run_with(&bookinfo(), &opts);
    let g = t.snapshot.for_node(INGRESS_NODE_ID);
    assert_eq!(names(&g, SECRET), ["default/bookinfo-tls"]);
    let r = &g.by_type[SECRET]["default/bookinfo-tls"];
    assert_eq!(r.origin.as_ref().unwrap().kind, "Secret");
}

#[test]
fn every_resource_names_its_origin_when_it_has_a_single_one() {
    let t = run(&bookinfo());
    let view = t.snapshot.for_node("p.default");
    for ty in [CLUSTER, ENDPOINT, ROUTE] {
        for (name, r) in view.by_type[ty].iter() {
            if ["admin", "blackhole", "passthrough"].contains(&name.as_str()) {
                assert!(r.origin.is_none());
                continue;
            }
            let o = r.origin.as_ref().unwrap();
            assert_eq!(
                (o.kind.as_str(), o.namespace.as_str()),
                ("Service", "default"),
                "{name}"
            );
            assert!(name.ends_with(&format!("|{}", o.name)));
        }
    }
    let g = t.snapshot.for_node(INGRESS_NODE_ID);
    assert_eq!(
        g.by_type[ROUTE]["ingress"].origin.as_ref().unwrap().name,
        "bookinfo"
    );
}
