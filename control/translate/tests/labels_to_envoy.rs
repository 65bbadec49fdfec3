//! One test per label: which exact Envoy field it sets (decoded from the encoded resources).
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::sync::Arc;

use common::*;
use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::bandwidth_limit::v3::{
    bandwidth_limit::EnableMode, BandwidthLimit,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{fault_abort::ErrorType, HttpFault};
use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use envoy_types::pb::google::protobuf::Duration;
use traffic_translate::snapshot::{MeshSnapshot, ENDPOINT, LISTENER, ROUTE};
use traffic_translate::translate::{Collector, Options, OutboundPolicy, INGRESS_NODE_ID};

const WEB: &str = "80|default|web";
const CLIENT: &str = "client.default";

fn svc(labels: &[(&str, &str)]) -> traffic_translate::translate::Translation {
    let mut l = vec![("traffic.port.80", "http")];
    l.extend_from_slice(labels);
    run(&small_model(&l, &[], &[]))
}

fn secs(s: i64) -> Option<Duration> {
    Some(Duration { seconds: s, nanos: 0 })
}

fn pct(n: u32, d: DenominatorType) -> Option<FractionalPercent> {
    Some(FractionalPercent {
        numerator: n,
        denominator: d as i32,
    })
}

#[test]
fn port_http_gives_an_http_connection_manager_chain_with_rds() {
    let t = svc(&[]);
    let l = listener(&sidecar(&t, CLIENT), "outbound");
    assert_eq!(l.filter_chains.len(), 1);
    let hcm = hcm_of(&l.filter_chains[0].filters[0]);
    assert_eq!(hcm.stat_prefix, WEB);
    assert_eq!(names(&sidecar(&t, CLIENT), ROUTE), [WEB]);
}

#[test]
fn port_tcp_gives_a_tcp_proxy_chain_and_no_route() {
    let t = run(&small_model(&[("traffic.port.80", "tcp")], &[], &[]));
    let view = sidecar(&t, CLIENT);
    let l = listener(&view, "outbound");
    let tcp = tcp_of(&l.filter_chains[0].filters[0]);
    assert_eq!(
        tcp.cluster_specifier,
        Some(
            envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier::Cluster(
                WEB.into()
            )
        )
    );
    assert!(names(&view, ROUTE).is_empty());
}

#[test]
fn ports_without_protocol_are_blocked_or_passed_through() {
    let t = run(&small_model(&[], &[], &[]));
    let l = listener(&sidecar(&t, CLIENT), "outbound");
    assert!(l.filter_chains.is_empty());
    let d = l.default_filter_chain.unwrap();
    assert_eq!(d.name, "blackhole");
    assert_eq!(tcp_cluster(&tcp_of(&d.filters[0])), "blackhole");
    let pass = Options {
        outbound_policy: OutboundPolicy::Passthrough,
        ..Options::default()
    };
    let t = run_with(&small_model(&[], &[], &[]), &pass);
    let view = sidecar(&t, CLIENT);
    let l = listener(&view, "outbound");
    let d = l.default_filter_chain.unwrap();
    assert_eq!(tcp_cluster(&tcp_of(&d.filters[0])), "passthrough");
    let c = cluster(&view, "passthrough");
    assert_eq!(c.lb_policy, LbPolicy::ClusterProvided as i32);
}

#[test]
fn direct_ports_that_still_reach_envoy_go_to_their_original_destination() {
    let t = run(&small_model(&[("traffic.port.80", "direct")], &[], &[]));
    let l = listener(&sidecar(&t, CLIENT), "outbound");
    assert_eq!(l.filter_chains.len(), 1);
    assert_eq!(
        tcp_cluster(&tcp_of(&l.filter_chains[0].filters[0])),
        "passthrough"
    );
}

fn tcp_cluster(t: &envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy) -> String {
    match &t.cluster_specifier {
        Some(envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier::Cluster(c)) => {
            c.clone()
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_pods_own_port_label_overrides_the_services_for_its_sidecar_only() {
    let t = run(&small_model(
        &[("traffic.port.80", "http")],
        &[],
        &[("traffic.port.80", "tcp")],
    ));
    let mine = sidecar(&t, CLIENT);
    tcp_of(&listener(&mine, "outbound").filter_chains[0].filters[0]);
    assert!(names(&mine, ROUTE).is_empty());
    // Another (unlabelled) node keeps the shared HTTP chain.
    let other = sidecar(&t, "someone.default");
    hcm_of(&listener(&other, "outbound").filter_chains[0].filters[0]);
    assert_eq!(
        mine.by_type[LISTENER]["outbound"].origin.as_ref().unwrap().kind,
        "Pod"
    );
}

#[test]
fn endpoint_weight_sets_lb_endpoint_weight_and_0_removes_the_pod() {
    let t = run(&small_model(&[], &[("traffic.endpoint.weight", "7")], &[]));
    let e = endpoints(&cla(&sidecar(&t, CLIENT), WEB));
    // Different nodes: two localities, each weighted by its endpoints.
    assert_eq!(
        e,
        [
            ("172.17.0.2".into(), 8080, 7, 7),
            ("172.17.0.3".into(), 8080, 100, 100)
        ]
    );
    let t = run(&small_model(&[], &[("traffic.endpoint.weight", "0")], &[]));
    let e = endpoints(&cla(&sidecar(&t, CLIENT), WEB));
    assert_eq!(e, [("172.17.0.3".into(), 8080, 100, 100)]);
    let loc = cla(&sidecar(&t, CLIENT), WEB).endpoints[0]
        .locality
        .clone()
        .unwrap();
    assert_eq!((loc.zone.as_str(), loc.sub_zone.as_str()), ("z1", "n2"));
}

#[test]
fn endpoint_weight_on_the_owner_applies_unless_the_pod_has_its_own() {
    let mut m = small_model(&[], &[], &[]);
    m.workloads.push(
        serde_yaml::from_str("{kind: Deployment, name: web, labels: {traffic.endpoint.weight: '0'}}")
            .unwrap(),
    );
    for p in &mut m.pods[..2] {
        Arc::make_mut(p).owner = Some(serde_yaml::from_str("{kind: Deployment, name: web}").unwrap());
    }
    Arc::make_mut(&mut m.pods[1])
        .labels
        .insert("traffic.endpoint.weight".into(), "5".into());
    let t = run(&m);
    let e = endpoints(&cla(&sidecar(&t, CLIENT), WEB));
    assert_eq!(e, [("172.17.0.3".into(), 8080, 5, 5)]);
}

#[test]
fn lb_policy_sets_the_cluster_lb_policy() {
    for (label, want) in [
        ("round_robin", LbPolicy::RoundRobin),
        ("least_request", LbPolicy::LeastRequest),
        ("random", LbPolicy::Random),
        ("ring_hash", LbPolicy::RingHash),
        ("maglev", LbPolicy::Maglev),
    ] {
        let t = svc(&[("traffic.lb.policy", label)]);
        assert_eq!(
            cluster(&sidecar(&t, CLIENT), WEB).lb_policy,
            want as i32,
            "{label}"
        );
    }
}

#[test]
fn cookie_hash_sets_a_generated_cookie_with_ttl_and_ring_hash() {
    let t = svc(&[
        ("traffic.hash.cookie.name", "mycookie"),
        ("traffic.hash.cookie.ttl", "3600"),
    ]);
    let view = sidecar(&t, CLIENT);
    assert_eq!(cluster(&view, WEB).lb_policy, LbPolicy::RingHash as i32);
    let a = only_action(&route_config(&view, WEB));
    let Some(PolicySpecifier::Cookie(c)) = &a.hash_policy[0].policy_specifier else {
        panic!()
    };
    assert_eq!(c.name, "mycookie");
    assert_eq!(c.ttl, secs(3600));
    assert_eq!(c.path, "/");
    // Without TTL the cookie is only read, not generated.
    let t = svc(&[("traffic.hash.cookie.name", "mycookie")]);
    let a = only_action(&route_config(&sidecar(&t, CLIENT), WEB));
    let Some(PolicySpecifier::Cookie(c)) = &a.hash_policy[0].policy_specifier else {
        panic!()
    };
    assert_eq!(c.ttl, None);
}

#[test]
fn header_hash_sets_a_header_hash_policy_and_keeps_maglev_if_asked() {
    let t = svc(&[
        ("traffic.hash.header.name", "x-user"),
        ("traffic.lb.policy", "maglev"),
    ]);
    let view = sidecar(&t, CLIENT);
    assert_eq!(cluster(&view, WEB).lb_policy, LbPolicy::Maglev as i32);
    let a = only_action(&route_config(&view, WEB));
    let Some(PolicySpecifier::Header(h)) = &a.hash_policy[0].policy_specifier else {
        panic!()
    };
    assert_eq!(h.header_name, "x-user");
}

#[test]
fn connection_timeout_sets_connect_timeout() {
    let t = svc(&[("traffic.connection.timeout", "250ms")]);
    let c = cluster(&sidecar(&t, CLIENT), WEB);
    assert_eq!(
        c.connect_timeout,
        Some(Duration {
            seconds: 0,
            nanos: 250_000_000
        })
    );
}

#[test]
fn a_zero_connection_timeout_is_reported_and_the_cluster_keeps_the_default() {
    // Envoy rejects `connect_timeout: 0s`; in SotW that failed every cluster of every pod.
    let t = svc(&[("traffic.connection.timeout", "0"), ("traffic.retries.max", "3")]);
    let c = cluster(&sidecar(&t, CLIENT), WEB);
    assert_eq!(c.connect_timeout, secs(60));
    assert!(
        c.circuit_breakers.is_some(),
        "the rest of the Service's labels apply"
    );
    assert_eq!(t.label_errors.len(), 1);
    assert_eq!(t.label_errors[0].error.label, "traffic.connection.timeout");
    assert_eq!(t.label_errors[0].object.name, "web");
}

#[test]
fn request_timeout_sets_the_route_timeout() {
    let t = svc(&[("traffic.request.timeout", "3000")]);
    assert_eq!(
        only_action(&route_config(&sidecar(&t, CLIENT), WEB)).timeout,
        secs(3)
    );
}

#[test]
fn retries_set_retry_on_and_the_largest_count() {
    let t = svc(&[
        ("traffic.retries.5xx", "2"),
        ("traffic.retries.gateway-error", "4"),
    ]);
    let r = only_action(&route_config(&sidecar(&t, CLIENT), WEB))
        .retry_policy
        .unwrap();
    assert_eq!(r.retry_on, "5xx,gateway-error");
    assert_eq!(r.num_retries.unwrap().value, 4);
    let t = svc(&[("traffic.retries.connect-failure", "1")]);
    let r = only_action(&route_config(&sidecar(&t, CLIENT), WEB))
        .retry_policy
        .unwrap();
    assert_eq!(r.retry_on, "connect-failure");
}

#[test]
fn circuit_breaker_labels_set_the_default_priority_thresholds() {
    let t = svc(&[
        ("traffic.connection.max", "10"),
        ("traffic.request.max-pending", "20"),
        ("traffic.request.max", "30"),
        ("traffic.retries.max", "3"),
    ]);
    let cb = cluster(&sidecar(&t, CLIENT), WEB).circuit_breakers.unwrap();
    let th = &cb.thresholds[0];
    assert_eq!(th.priority, 0);
    assert_eq!(th.max_connections.unwrap().value, 10);
    assert_eq!(th.max_pending_requests.unwrap().value, 20);
    assert_eq!(th.max_requests.unwrap().value, 30);
    assert_eq!(th.max_retries.unwrap().value, 3);
    // Zero means "Envoy default": the field stays unset.
    let t = svc(&[("traffic.connection.max", "0")]);
    assert!(cluster(&sidecar(&t, CLIENT), WEB).circuit_breakers.is_none());
}

fn fault_of(t: &traffic_translate::translate::Translation, node: &str) -> Option<HttpFault> {
    let rc = route_config(&sidecar(t, node), WEB);
    rc.virtual_hosts[0].routes[0]
        .typed_per_filter_config
        .get("envoy.filters.http.fault")
        .map(decode)
}

#[test]
fn fault_delay_sets_a_fixed_delay_with_its_percentage() {
    let t = svc(&[
        ("traffic.fault.delay.time", "3000"),
        ("traffic.fault.delay.percentage", "100"),
    ]);
    let f = fault_of(&t, CLIENT).unwrap();
    let d = f.delay.unwrap();
    assert_eq!(
        d.fault_delay_secifier,
        Some(FaultDelaySecifier::FixedDelay(Duration { seconds: 3, nanos: 0 }))
    );
    assert_eq!(d.percentage, pct(100, DenominatorType::Hundred));
    assert!(f.abort.is_none());
}

#[test]
fn fault_abort_sets_the_status_with_fine_grained_percentages() {
    let t = svc(&[
        ("traffic.fault.abort.status", "505"),
        ("traffic.fault.abort.percentage", "12.5"),
    ]);
    let a = fault_of(&t, CLIENT).unwrap().abort.unwrap();
    assert_eq!(a.error_type, Some(ErrorType::HttpStatus(505)));
    assert_eq!(a.percentage, pct(1250, DenominatorType::TenThousand));
    let t = svc(&[
        ("traffic.fault.abort.status", "503"),
        ("traffic.fault.abort.percentage", "0.0001"),
    ]);
    let a = fault_of(&t, CLIENT).unwrap().abort.unwrap();
    assert_eq!(a.percentage, pct(1, DenominatorType::Million));
}

#[test]
fn fault_labels_without_percentage_or_at_zero_inject_nothing() {
    let t = svc(&[("traffic.fault.delay.time", "3000")]);
    assert!(fault_of(&t, CLIENT).is_none());
    let t = svc(&[
        ("traffic.fault.abort.status", "505"),
        ("traffic.fault.abort.percentage", "0"),
    ]);
    assert!(fault_of(&t, CLIENT).is_none());
}

#[test]
fn faults_are_never_applied_at_the_ingress_gateway() {
    let mut m = small_model(
        &[
            ("traffic.fault.abort.status", "505"),
            ("traffic.fault.abort.percentage", "100"),
            ("traffic.rate.limit", "8"),
        ],
        &[],
        &[],
    );
    m.ingresses.push(
        serde_yaml::from_str("{name: web, rules: [{paths: [{path: /, backend: {service: web, port: 80}}]}]}")
            .unwrap(),
    );
    let t = run(&m);
    let g = t.snapshot.for_node(INGRESS_NODE_ID);
    let rc = route_config(&g, "ingress");
    assert_eq!(rc.virtual_hosts[0].domains, ["*"]);
    assert!(rc.virtual_hosts[0].routes[0].typed_per_filter_config.is_empty());
    assert!(rc.virtual_hosts[0].typed_per_filter_config.is_empty());
    // ...but the sidecars get them, and the service counts as http because an Ingress names it.
    assert!(fault_of(&t, CLIENT).is_some());
}

#[test]
fn rate_limit_sets_a_bandwidth_limit_on_the_virtual_host() {
    let t = svc(&[("traffic.rate.limit", "64")]);
    let rc = route_config(&sidecar(&t, CLIENT), WEB);
    // Wrapped as optional, so proxyless gRPC clients (same route configuration) ignore it.
    let wrapper: envoy_types::pb::envoy::config::route::v3::FilterConfig =
        decode(&rc.virtual_hosts[0].typed_per_filter_config["envoy.filters.http.bandwidth_limit"]);
    assert!(wrapper.is_optional);
    let bw: BandwidthLimit = decode(&wrapper.config.unwrap());
    assert_eq!(bw.limit_kbps.unwrap().value, 64);
    assert_eq!(bw.enable_mode, EnableMode::RequestAndResponse as i32);
}

#[test]
fn tracing_sets_route_sampling_and_the_zipkin_provider() {
    let opts = Options {
        zipkin: Some("zipkin.default:9411".parse::<Collector>().unwrap()),
        ..Options::default()
    };
    let m = small_model(
        &[
            ("traffic.port.80", "http"),
            ("traffic.tracing.enabled", "true"),
            ("traffic.tracing.sampling", "50"),
        ],
        &[],
        &[],
    );
    let t = run_with(&m, &opts);
    let view = sidecar(&t, CLIENT);
    let rc = route_config(&view, WEB);
    let tr = rc.virtual_hosts[0].routes[0].tracing.clone().unwrap();
    assert_eq!(tr.random_sampling, pct(50, DenominatorType::Hundred));
    let hcm = hcm_of(&listener(&view, "outbound").filter_chains[0].filters[0]);
    let tracing = hcm.tracing.unwrap();
    assert_eq!(tracing.provider.unwrap().name, "envoy.tracers.zipkin");
    assert_eq!(tracing.random_sampling.unwrap().value, 0.0);
    let z = cluster(&view, "zipkin");
    assert_eq!(
        endpoints(z.load_assignment.as_ref().unwrap())[0].0,
        "zipkin.default"
    );

    // Not enabled: routes sample 0 % (requests arriving already sampled are still traced).
    let t = run_with(&small_model(&[("traffic.port.80", "http")], &[], &[]), &opts);
    let rc = route_config(&sidecar(&t, CLIENT), WEB);
    assert_eq!(
        rc.virtual_hosts[0].routes[0]
            .tracing
            .clone()
            .unwrap()
            .random_sampling,
        pct(0, DenominatorType::Hundred)
    );
    // Enabled without sampling label: 100 %.
    let t = run_with(
        &small_model(
            &[("traffic.port.80", "http"), ("traffic.tracing.enabled", "true")],
            &[],
            &[],
        ),
        &opts,
    );
    let rc = route_config(&sidecar(&t, CLIENT), WEB);
    assert_eq!(
        rc.virtual_hosts[0].routes[0]
            .tracing
            .clone()
            .unwrap()
            .random_sampling,
        pct(100, DenominatorType::Hundred)
    );
}

#[test]
fn pod_traffic_labels_override_the_service_for_that_sidecar_only() {
    let m = small_model(
        &[
            ("traffic.port.80", "http"),
            ("traffic.request.timeout", "1000"),
            ("traffic.retries.5xx", "2"),
        ],
        &[],
        &[("traffic.request.timeout", "5s")],
    );
    let t = run(&m);
    assert_eq!(t.snapshot.overridden_nodes().collect::<Vec<_>>(), [CLIENT]);
    let mine = sidecar(&t, CLIENT);
    let a = only_action(&route_config(&mine, WEB));
    assert_eq!(a.timeout, secs(5));
    assert_eq!(
        a.retry_policy.unwrap().num_retries.unwrap().value,
        2,
        "service setting still applies"
    );
    let other = sidecar(&t, "web-a.default");
    assert_eq!(only_action(&route_config(&other, WEB)).timeout, secs(1));
    // Everything else stays shared with the other sidecars.
    assert!(Arc::ptr_eq(
        &mine.by_type[LISTENER]["outbound"],
        &other.by_type[LISTENER]["outbound"]
    ));
    assert!(Arc::ptr_eq(
        &mine.by_type[ENDPOINT][WEB],
        &other.by_type[ENDPOINT][WEB]
    ));
    assert_eq!(mine.by_type[ROUTE][WEB].origin.as_ref().unwrap().name, "client");
}

#[test]
fn pods_that_are_not_enabled_get_no_override() {
    let m = small_model(
        &[("traffic.port.80", "http")],
        &[("traffic.request.timeout", "5s")],
        &[],
    );
    let t = run(&m);
    assert_eq!(t.snapshot.overridden_nodes().count(), 0);
}

#[test]
fn a_pod_not_on_use_podip_reaches_itself_on_loopback_when_asked() {
    let opts = Options {
        local_endpoint_via_loopback: true,
        ..Options::default()
    };
    let mut m = small_model(
        &[("traffic.port.80", "http")],
        &[("traffic.envoy.enabled", "true")],
        &[],
    );
    Arc::make_mut(&mut m.pods[1])
        .labels
        .insert("traffic.envoy.enabled".into(), "true".into());
    Arc::make_mut(&mut m.pods[1])
        .labels
        .insert("traffic.envoy.local.use_podip".into(), "true".into());
    let t = run_with(&m, &opts);
    let a = endpoints(&cla(&sidecar(&t, "web-a.default"), WEB));
    assert_eq!(a[0].0, "127.0.0.1");
    assert_eq!(a[1].0, "172.17.0.3");
    let b = endpoints(&cla(&sidecar(&t, "web-b.default"), WEB));
    assert_eq!(b[1].0, "172.17.0.3", "use_podip=true keeps the pod IP");
    // Off by default: no override at all.
    let t = run(&m);
    assert_eq!(t.snapshot.overridden_nodes().count(), 0);
}

#[test]
fn an_invalid_label_is_reported_and_only_that_setting_is_ignored() {
    let t = svc(&[
        ("traffic.request.timeout", "soon"),
        ("traffic.retries.5xx", "3"),
        ("traffic.endpoint.weight", "10"),
    ]);
    let errs: Vec<String> = t.label_errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0]
        .starts_with("Service default/web: label traffic.endpoint.weight=\"10\" ignored: only applies to"));
    assert!(errs[1].starts_with("Service default/web: label traffic.request.timeout=\"soon\" ignored"));
    let a = only_action(&route_config(&sidecar(&t, CLIENT), WEB));
    assert_eq!(a.timeout, secs(0), "invalid value falls back to the default");
    assert_eq!(
        a.retry_policy.unwrap().num_retries.unwrap().value,
        3,
        "the rest applies"
    );
}

#[test]
fn invalid_pod_and_workload_labels_name_their_object() {
    let mut m = small_model(&[], &[("traffic.endpoint.weight", "129")], &[]);
    m.workloads.push(
        serde_yaml::from_str("{kind: StatefulSet, name: db, labels: {traffic.envoy.enabled: maybe}}")
            .unwrap(),
    );
    let t = run(&m);
    let objs: Vec<String> = t.label_errors.iter().map(|e| e.object.to_string()).collect();
    assert_eq!(objs, ["StatefulSet default/db", "Pod default/web-a"]);
    // Weight 129 ignored -> default 100.
    assert_eq!(endpoints(&cla(&sidecar(&t, CLIENT), WEB))[0].2, 100);
}
