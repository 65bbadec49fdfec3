//! Istio VirtualService / DestinationRule -> routing model -> Envoy fields, table-driven: each
//! case is a small YAML snippet and what the translated route configuration or cluster holds.
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use common::*;
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher, route, route_action, route_match, Route, RouteAction, RouteConfiguration,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher;
use traffic_translate::model::MeshModel;
use traffic_translate::snapshot::ROUTE;
use traffic_translate::translate::{Problem, Translation};

const RC: &str = "9080|default|reviews";

/// `reviews` (port 9080 named http) with pods v1, v2, v3, plus `ratings` (one port) and the Istio
/// objects in `istio` (the model file's `istio:` section).
fn model(istio: &str) -> MeshModel {
    let yaml = format!(
        r#"
services:
- name: reviews
  clusterIPs: [10.96.0.10]
  ports: [{{name: http, port: 9080, targetPort: 9080}}]
  selector: {{app: reviews}}
- name: ratings
  clusterIPs: [10.96.0.11]
  ports: [{{port: 9080, targetPort: 9080}}]
  selector: {{app: ratings}}
pods:
- {{name: reviews-v1, ip: 172.17.0.2, labels: {{app: reviews, version: v1}}}}
- {{name: reviews-v2, ip: 172.17.0.3, labels: {{app: reviews, version: v2}}}}
- {{name: reviews-v3, ip: 172.17.0.4, labels: {{app: reviews, version: v3}}}}
- {{name: ratings-v1, ip: 172.17.0.5, labels: {{app: ratings, version: v1}}}}
istio:
{istio}
"#
    );
    MeshModel::from_yaml_str(&yaml).unwrap()
}

const SUBSETS: &str = r#"
  destinationRules:
  - metadata: {name: reviews}
    spec:
      host: reviews
      subsets:
      - {name: v1, labels: {version: v1}}
      - {name: v2, labels: {version: v2}}
      - {name: v3, labels: {version: v3}}
"#;

/// The VirtualService `reviews` with `http` (YAML flow list) + the subsets.
fn vs(http: &str) -> MeshModel {
    model(&format!(
        "  virtualServices:\n  - metadata: {{name: reviews}}\n    spec: {{hosts: [reviews], http: {http}}}\n{SUBSETS}"
    ))
}

fn rc(t: &Translation) -> RouteConfiguration {
    route_config(&sidecar(t, "x.default"), RC)
}

fn routes(t: &Translation) -> Vec<Route> {
    rc(t).virtual_hosts[0].routes.clone()
}

fn action(r: &Route) -> RouteAction {
    match &r.action {
        Some(route::Action::Route(a)) => a.clone(),
        other => panic!("not a route action: {other:?}"),
    }
}

fn cluster_of(r: &Route) -> String {
    match action(r).cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) => c,
        other => panic!("not one cluster: {other:?}"),
    }
}

#[test]
fn no_istio_objects_leave_the_label_output_alone() {
    let t = run(&model("  {}"));
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    // Port 9080 has no protocol label and no VirtualService: no route configuration.
    assert!(!names(&sidecar(&t, "x.default"), ROUTE).contains(&RC.to_string()));
}

#[test]
fn jason_by_header_or_cookie_goes_to_v2_everyone_else_to_v1() {
    let t = run(&vs(r#"[
        {match: [{headers: {end-user: {exact: jason}}}, {headers: {cookie: {regex: "^(.*?;)?(user=jason)(;.*)?$"}}}],
         route: [{destination: {host: reviews, subset: v2}}]},
        {route: [{destination: {host: reviews, subset: v1}}]}]"#));
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let r = routes(&t);
    // Two matches -> two routes with the same action, then the catch-all (no label fallback).
    assert_eq!(r.len(), 3, "{r:#?}");
    assert_eq!(cluster_of(&r[0]), "9080|default|reviews|v2");
    assert_eq!(cluster_of(&r[1]), "9080|default|reviews|v2");
    assert_eq!(cluster_of(&r[2]), "9080|default|reviews|v1");
    let h0 = &r[0].r#match.as_ref().unwrap().headers[0];
    assert_eq!(h0.name, "end-user");
    let Some(header_matcher::HeaderMatchSpecifier::StringMatch(m)) = &h0.header_match_specifier else {
        panic!("{h0:?}")
    };
    assert_eq!(
        m.match_pattern,
        Some(string_matcher::MatchPattern::Exact("jason".into()))
    );
    let h1 = &r[1].r#match.as_ref().unwrap().headers[0];
    let Some(header_matcher::HeaderMatchSpecifier::StringMatch(m)) = &h1.header_match_specifier else {
        panic!("{h1:?}")
    };
    let Some(string_matcher::MatchPattern::SafeRegex(re)) = &m.match_pattern else {
        panic!("{m:?}")
    };
    assert_eq!(re.regex, "^(.*?;)?(user=jason)(;.*)?$");
    assert_eq!(
        r[2].r#match.as_ref().unwrap().path_specifier,
        Some(route_match::PathSpecifier::Prefix("/".into()))
    );
    // Subset clusters exist, their endpoints filtered by label.
    let view = sidecar(&t, "x.default");
    for (subset, ip) in [("v1", "172.17.0.2"), ("v2", "172.17.0.3"), ("v3", "172.17.0.4")] {
        let name = format!("{RC}|{subset}");
        let c: Cluster = cluster(&view, &name);
        assert_eq!(c.eds_cluster_config.unwrap().service_name, name);
        let eps = endpoints(&cla(&view, &name));
        assert_eq!(eps.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), [ip]);
    }
}

#[test]
fn uri_method_authority_query_and_without_headers_matches() {
    let cases: &[(&str, &str)] = &[
        ("{uri: {exact: /a}}", "path=/a"),
        ("{uri: {prefix: /p}}", "prefix=/p"),
        ("{uri: {regex: '/r/[0-9]+'}}", "regex=/r/[0-9]+"),
        ("{uri: {prefix: /P}, ignoreUriCase: true}", "prefix=/P nocase"),
        ("{method: {exact: POST}}", "hdr :method=POST"),
        ("{authority: {prefix: reviews}}", "hdr :authority^reviews"),
        ("{withoutHeaders: {x-debug: {exact: '1'}}}", "hdr !x-debug=1"),
        ("{headers: {x-present: {}}}", "hdr x-present?"),
        ("{queryParams: {q: {exact: v}}}", "query q=v"),
    ];
    for (m, want) in cases {
        let t = run(&vs(&format!(
            "[{{match: [{m}], route: [{{destination: {{host: reviews, subset: v1}}}}]}}]"
        )));
        assert!(t.problems.is_empty(), "{m}: {:?}", t.problems);
        let r = routes(&t);
        // The match, then the label-derived fallback to the whole Service.
        assert_eq!(r.len(), 2, "{m}");
        assert_eq!(cluster_of(&r[1]), RC);
        let rm = r[0].r#match.clone().unwrap();
        let mut got = match rm.path_specifier.unwrap() {
            route_match::PathSpecifier::Path(p) => format!("path={p}"),
            route_match::PathSpecifier::Prefix(p) if p == "/" => String::new(),
            route_match::PathSpecifier::Prefix(p) => format!("prefix={p}"),
            route_match::PathSpecifier::SafeRegex(re) => format!("regex={}", re.regex),
            other => format!("{other:?}"),
        };
        if rm.case_sensitive.is_some_and(|c| !c.value) {
            got += " nocase";
        }
        for h in &rm.headers {
            let bang = if h.invert_match { "!" } else { "" };
            got += &match &h.header_match_specifier {
                Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true)) => {
                    format!("hdr {bang}{}?", h.name)
                }
                Some(header_matcher::HeaderMatchSpecifier::StringMatch(s)) => match &s.match_pattern {
                    Some(string_matcher::MatchPattern::Exact(v)) => format!("hdr {bang}{}={v}", h.name),
                    Some(string_matcher::MatchPattern::Prefix(v)) => format!("hdr {bang}{}^{v}", h.name),
                    other => format!("{other:?}"),
                },
                other => format!("{other:?}"),
            };
        }
        for q in &rm.query_parameters {
            got += &format!("query {}={:?}", q.name, q.query_parameter_match_specifier).replace(
                "Some(StringMatch(StringMatcher { ignore_case: false, match_pattern: Some(Exact(\"v\")) }))",
                "v",
            );
        }
        assert_eq!(got.trim(), *want, "{m}");
    }
}

#[test]
fn weights_timeout_retries_fault_mirror_rewrite_headers() {
    let t = run(&vs(r#"[{
        route: [{destination: {host: reviews, subset: v1}, weight: 75, headers: {request: {set: {x-w: a}}}},
                {destination: {host: reviews, subset: v2}, weight: 25},
                {destination: {host: reviews, subset: v3}, weight: 0}],
        timeout: 1.5s,
        retries: {attempts: 3, perTryTimeout: 2s, retryOn: "gateway-error,connect-failure,503"},
        fault: {delay: {fixedDelay: 2s, percentage: {value: 12.5}}, abort: {httpStatus: 500, percent: 50}},
        mirror: {host: reviews, subset: v3}, mirrorPercentage: {value: 50},
        rewrite: {uri: /new, authority: other},
        headers: {request: {set: {x-a: '1'}, add: {x-b: '2'}, remove: [x-c]}, response: {remove: [server]}}}]"#));
    // The integer `percent` of the abort is accepted with a deprecation warning.
    assert!(
        t.problems.iter().all(|p| p.to_string().contains("TM1015")),
        "{:?}",
        t.problems
    );
    let r = routes(&t);
    assert_eq!(r.len(), 1, "catch-all rule: no label fallback");
    let a = action(&r[0]);
    let Some(route_action::ClusterSpecifier::WeightedClusters(w)) = &a.cluster_specifier else {
        panic!("{a:?}")
    };
    let ws: Vec<(String, u32)> = w
        .clusters
        .iter()
        .map(|c| (c.name.clone(), c.weight.unwrap().value))
        .collect();
    assert_eq!(
        ws,
        [(format!("{RC}|v1"), 75), (format!("{RC}|v2"), 25)],
        "weight 0 dropped"
    );
    assert_eq!(
        w.clusters[0].request_headers_to_add[0]
            .header
            .as_ref()
            .unwrap()
            .key,
        "x-w"
    );
    assert_eq!(a.timeout.unwrap().nanos, 500_000_000);
    let rp = a.retry_policy.unwrap();
    assert_eq!(rp.num_retries.unwrap().value, 3);
    assert_eq!(rp.per_try_timeout.unwrap().seconds, 2);
    assert_eq!(
        rp.retry_on,
        "gateway-error,connect-failure,retriable-status-codes"
    );
    assert_eq!(rp.retriable_status_codes, [503]);
    assert_eq!(
        rp.retry_host_predicate[0].name,
        "envoy.retry_host_predicates.previous_hosts"
    );
    let fault: HttpFault = decode(&r[0].typed_per_filter_config["envoy.filters.http.fault"]);
    let d = fault.delay.unwrap().percentage.unwrap();
    assert_eq!((d.numerator, d.denominator), (1250, 1), "12.5 % = 1250/10000");
    let ab = fault.abort.unwrap().percentage.unwrap();
    assert_eq!((ab.numerator, ab.denominator), (50, 0));
    let m = &a.request_mirror_policies[0];
    assert_eq!(m.cluster, format!("{RC}|v3"));
    assert_eq!(
        m.runtime_fraction
            .as_ref()
            .unwrap()
            .default_value
            .unwrap()
            .numerator,
        50
    );
    assert_eq!(a.prefix_rewrite, "/new");
    assert_eq!(
        a.host_rewrite_specifier,
        Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(
            "other".into()
        ))
    );
    let keys: Vec<(String, i32)> = r[0]
        .request_headers_to_add
        .iter()
        .map(|h| (h.header.as_ref().unwrap().key.clone(), h.append_action))
        .collect();
    assert_eq!(
        keys,
        [("x-a".to_string(), 2), ("x-b".to_string(), 0)],
        "set overwrites, add appends"
    );
    assert_eq!(r[0].request_headers_to_remove, ["x-c"]);
    assert_eq!(r[0].response_headers_to_remove, ["server"]);
}

#[test]
fn redirect_and_direct_response() {
    let t = run(&vs(r#"[
        {match: [{uri: {exact: /old}}], redirect: {uri: /new, authority: b, redirectCode: 302}},
        {match: [{uri: {exact: /gone}}], directResponse: {status: 410, body: {string: bye}}}]"#));
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let r = routes(&t);
    let Some(route::Action::Redirect(red)) = &r[0].action else {
        panic!("{:?}", r[0])
    };
    assert_eq!((red.host_redirect.as_str(), red.response_code), ("b", 1));
    let Some(route::Action::DirectResponse(dr)) = &r[1].action else {
        panic!("{:?}", r[1])
    };
    assert_eq!(dr.status, 410);
    assert_eq!(cluster_of(&r[2]), RC, "label fallback");
}

#[test]
fn a_route_to_an_undefined_subset_or_unknown_host_is_not_emitted_and_reported() {
    let cases = [
        (
            "[{route: [{destination: {host: reviews, subset: v9}}]}]",
            "subset \"v9\"",
        ),
        ("[{route: [{destination: {host: nope}}]}]", "not a Service"),
        (
            "[{route: [{destination: {host: reviews, port: {number: 1}}}]}]",
            "no port 1",
        ),
        (
            "[{route: [{destination: {host: reviews, subset: v1}}], mirror: {host: reviews, subset: v7}}]",
            "v7",
        ),
    ];
    for (http, why) in cases {
        // Labelled http, so the previous behaviour is the label-derived route.
        let mut m = vs(http);
        std::sync::Arc::make_mut(&mut m.services[0])
            .labels
            .insert("traffic.port.9080".into(), "http".into());
        let t = run(&m);
        assert!(
            t.problems.iter().any(|p| p.to_string().contains(why)),
            "{http}: {:?}",
            t.problems
        );
        // The previous behaviour stays: only the label-derived route to the whole Service.
        let r = routes(&t);
        assert_eq!(r.len(), 1, "{http}");
        assert_eq!(cluster_of(&r[0]), RC);
    }
}

#[test]
fn host_name_forms_all_reach_the_service() {
    for host in [
        "reviews",
        "reviews.default",
        "reviews.default.svc",
        "reviews.default.svc.cluster.local",
    ] {
        let t = run(&model(&format!(
            "  virtualServices:\n  - metadata: {{name: r}}\n    spec: {{hosts: [{host}], http: [{{route: [{{destination: {{host: {host}, subset: v2}}}}]}}]}}\n{SUBSETS}"
        )));
        assert!(t.problems.is_empty(), "{host}: {:?}", t.problems);
        assert_eq!(cluster_of(&routes(&t)[0]), format!("{RC}|v2"), "{host}");
    }
    // A VirtualService bound to a gateway only does not touch sidecars.
    let t = run(&model(&format!(
        "  virtualServices:\n  - metadata: {{name: r}}\n    spec: {{hosts: [reviews], gateways: [gw], http: [{{route: [{{destination: {{host: reviews, subset: v2}}}}]}}]}}\n{SUBSETS}"
    )));
    assert!(!names(&sidecar(&t, "x.default"), ROUTE).contains(&RC.to_string()));
}

#[test]
fn several_virtual_services_merge_by_creation_time_and_the_unreachable_one_is_reported() {
    let t = run(&model(&format!(
        r#"  virtualServices:
  - metadata: {{name: b-later, creationTimestamp: "2024-01-02T00:00:00Z"}}
    spec: {{hosts: [reviews], http: [{{route: [{{destination: {{host: reviews, subset: v3}}}}]}}]}}
  - metadata: {{name: a-first, creationTimestamp: "2024-01-01T00:00:00Z"}}
    spec: {{hosts: [reviews], http: [{{match: [{{uri: {{prefix: /x}}}}], route: [{{destination: {{host: reviews, subset: v1}}}}]}}]}}
  - metadata: {{name: c-last, creationTimestamp: "2024-01-03T00:00:00Z"}}
    spec: {{hosts: [reviews], http: [{{route: [{{destination: {{host: reviews, subset: v2}}}}]}}]}}
{SUBSETS}"#
    )));
    let r = routes(&t);
    let got: Vec<String> = r.iter().map(cluster_of).collect();
    assert_eq!(got, [format!("{RC}|v1"), format!("{RC}|v3")]);
    assert!(
        t.problems
            .iter()
            .any(|p| matches!(p, Problem::IstioConflict { object, .. } if object.name == "c-last")),
        "{:?}",
        t.problems
    );
}

#[test]
fn virtual_service_overrides_label_settings_and_reports_them() {
    let mut m = vs("[{route: [{destination: {host: reviews, subset: v1}}], timeout: 3s}]");
    std::sync::Arc::make_mut(&mut m.services[0])
        .labels
        .insert("traffic.request.timeout".into(), "7".into());
    std::sync::Arc::make_mut(&mut m.services[0])
        .labels
        .insert("traffic.retries.5xx".into(), "2".into());
    let t = run(&m);
    let a = action(&routes(&t)[0]);
    assert_eq!(a.timeout.unwrap().seconds, 3, "the rule's timeout wins");
    assert_eq!(
        a.retry_policy.unwrap().retry_on,
        "5xx",
        "the label's retries still apply"
    );
    let overridden: Vec<String> = t
        .problems
        .iter()
        .filter_map(|p| match p {
            Problem::LabelOverridden { setting, .. } => Some(setting.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(overridden, ["traffic.request.timeout"]);
}

#[test]
fn destination_rule_policy_becomes_cluster_fields() {
    let t = run(&model(
        r#"  destinationRules:
  - metadata: {name: reviews}
    spec:
      host: reviews
      trafficPolicy:
        loadBalancer: {simple: RANDOM}
        connectionPool:
          tcp: {maxConnections: 1, connectTimeout: 250ms}
          http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
        outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100}
      subsets:
      - {name: v1, labels: {version: v1}}
      - name: v2
        labels: {version: v2}
        trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: user, ttl: 0s}}}}
"#,
    ));
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let view = sidecar(&t, "x.default");
    let base: Cluster = cluster(&view, RC);
    assert_eq!(base.lb_policy, cluster::LbPolicy::Random as i32);
    let th = &base.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(th.max_connections.unwrap().value, 1);
    assert_eq!(th.max_pending_requests.unwrap().value, 1);
    assert_eq!(th.max_requests.unwrap().value, u32::MAX, "unset: Istio's 2^32-1");
    assert_eq!(th.max_retries.unwrap().value, u32::MAX);
    assert_eq!(base.connect_timeout.unwrap().nanos, 250_000_000);
    let od = base.outlier_detection.clone().unwrap();
    assert_eq!(od.consecutive_5xx.unwrap().value, 1);
    assert_eq!(od.enforcing_consecutive_5xx.unwrap().value, 100);
    assert_eq!(od.enforcing_success_rate.unwrap().value, 0);
    assert_eq!(od.max_ejection_percent.unwrap().value, 100);
    assert_eq!(od.base_ejection_time.unwrap().seconds, 180);
    assert_eq!(
        base.common_lb_config
            .unwrap()
            .healthy_panic_threshold
            .unwrap()
            .value,
        0.0
    );
    let opts: envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions = decode(
        &base.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"],
    );
    assert_eq!(
        opts.common_http_protocol_options
            .unwrap()
            .max_requests_per_connection
            .unwrap()
            .value,
        1
    );
    // v1 inherits the whole policy; v2 replaces only the load balancer (ring hash).
    let v1: Cluster = cluster(&view, &format!("{RC}|v1"));
    assert_eq!(v1.lb_policy, cluster::LbPolicy::Random as i32);
    let v2: Cluster = cluster(&view, &format!("{RC}|v2"));
    assert_eq!(v2.lb_policy, cluster::LbPolicy::RingHash as i32);
    assert!(v2.outlier_detection.is_some());
}

#[test]
fn invalid_values_reject_only_their_rule() {
    let cases = [
        "{match: [{uri: {regex: '(?=x)'}}], route: [{destination: {host: reviews, subset: v2}}]}",
        "{route: [{destination: {host: reviews, subset: v2}, weight: 0}, {destination: {host: reviews, subset: v1}, weight: 0}]}",
        "{route: [{destination: {host: reviews, subset: v2}}], timeout: -1s}",
        "{route: [{destination: {host: reviews, subset: v2}}], fault: {abort: {httpStatus: 503, percentage: {value: 101}}}}",
    ];
    for bad in cases {
        let t = run(&vs(&format!(
            "[{bad}, {{match: [{{uri: {{prefix: /ok}}}}], route: [{{destination: {{host: reviews, subset: v1}}}}]}}]"
        )));
        assert!(!t.problems.is_empty(), "{bad}");
        let r = routes(&t);
        let got: Vec<String> = r.iter().map(cluster_of).collect();
        assert_eq!(got, [format!("{RC}|v1"), RC.to_string()], "{bad}");
    }
}

#[test]
fn every_snapshot_with_istio_objects_is_consistent() {
    // `run` validates: every route's cluster and every cluster's endpoints are in the snapshot.
    let _ = Route::default();
    let _ = run(&vs(
        r#"[{route: [{destination: {host: reviews, subset: v1}, weight: 50},
                                 {destination: {host: ratings}, weight: 50}]}]"#,
    ));
}

#[test]
fn source_labels_and_namespace_give_only_matching_callers_the_rule() {
    let mut m = vs(r#"[
        {match: [{sourceLabels: {app: productpage}}], route: [{destination: {host: reviews, subset: v2}}]},
        {match: [{sourceNamespace: other, uri: {prefix: /o}}], route: [{destination: {host: reviews, subset: v3}}]},
        {route: [{destination: {host: reviews, subset: v1}}]}]"#);
    let pods = MeshModel::from_yaml_str(
        r#"
pods:
- {name: pp, ip: 172.17.0.9, labels: {app: productpage, traffic.envoy.enabled: "true"}}
- {name: other-client, namespace: other, ip: 172.17.0.10, labels: {app: x, traffic.envoy.enabled: "true"}}
- {name: plain, ip: 172.17.0.11, labels: {app: x, traffic.envoy.enabled: "true"}}
"#,
    )
    .unwrap();
    m.pods.extend(pods.pods);
    let t = run(&m);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let clusters = |node: &str| -> Vec<String> {
        route_config(&sidecar(&t, node), RC).virtual_hosts[0]
            .routes
            .iter()
            .map(cluster_of)
            .collect()
    };
    assert_eq!(clusters("pp.default"), [format!("{RC}|v2"), format!("{RC}|v1")]);
    assert_eq!(
        clusters("other-client.other"),
        [format!("{RC}|v3"), format!("{RC}|v1")]
    );
    assert_eq!(clusters("plain.default"), [format!("{RC}|v1")]);
    // Callers the conditions do not pick share the default view.
    let overridden: Vec<&str> = t.snapshot.overridden_nodes().collect();
    assert_eq!(overridden, ["other-client.other", "pp.default"]);
}

#[test]
fn destination_rule_boundaries_and_invalid_settings() {
    let dr = |policy: &str| {
        run(&model(&format!(
            "  destinationRules:\n  - metadata: {{name: reviews}}\n    spec: {{host: reviews, trafficPolicy: {policy}}}\n"
        )))
    };
    let base = |t: &Translation| -> Cluster { cluster(&sidecar(t, "x.default"), RC) };
    // Boundaries that are valid.
    let t = dr("{outlierDetection: {maxEjectionPercent: 100, minHealthPercent: 0}}");
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    assert_eq!(
        base(&t)
            .outlier_detection
            .unwrap()
            .max_ejection_percent
            .unwrap()
            .value,
        100
    );
    let t = dr("{connectionPool: {tcp: {maxConnections: 4294967295}}}");
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let th = base(&t).circuit_breakers.unwrap().thresholds[0];
    assert_eq!(th.max_connections.unwrap().value, u32::MAX);
    // LEAST_CONN is LEAST_REQUEST (with a deprecation warning).
    let t = dr("{loadBalancer: {simple: LEAST_CONN}}");
    assert_eq!(base(&t).lb_policy, cluster::LbPolicy::LeastRequest as i32);
    assert!(
        t.problems.iter().all(|p| p.to_string().contains("warning")),
        "{:?}",
        t.problems
    );
    // PASSTHROUGH: the original destination.
    let t = dr("{loadBalancer: {simple: PASSTHROUGH}}");
    let c = base(&t);
    assert_eq!(c.lb_policy, cluster::LbPolicy::ClusterProvided as i32);
    assert!(c.eds_cluster_config.is_none());
    // Invalid: reported, the setting left out, the cluster still there with Envoy-valid values.
    for bad in [
        "{loadBalancer: {simple: FASTEST}}",
        "{connectionPool: {tcp: {connectTimeout: 0s}}}",
        "{connectionPool: {tcp: {maxConnections: -1}}}",
        "{outlierDetection: {maxEjectionPercent: 101}}",
        "{outlierDetection: {interval: -1s}}",
    ] {
        let t = dr(bad);
        assert!(
            t.problems.iter().any(|p| p.to_string().contains("error")),
            "{bad}: {:?}",
            t.problems
        );
        let c = base(&t);
        assert!(
            c.connect_timeout.unwrap().seconds > 0 || c.connect_timeout.unwrap().nanos > 0,
            "{bad}"
        );
        assert!(c
            .outlier_detection
            .is_none_or(|o| o.max_ejection_percent.is_none_or(|p| p.value <= 100)));
    }
    // A subset defined twice: the second is reported, the first kept.
    let t = run(&model(
        "  destinationRules:\n  - metadata: {name: reviews}\n    spec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}, {name: v1, labels: {version: v2}}]}\n",
    ));
    assert!(!t.problems.is_empty());
    let eps = endpoints(&cla(&sidecar(&t, "x.default"), &format!("{RC}|v1")));
    assert_eq!(
        eps.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
        ["172.17.0.2"]
    );
    // A second DestinationRule for the host: its policy loses (reported), new subsets are added.
    let t = run(&model(
        r#"  destinationRules:
  - metadata: {name: a, creationTimestamp: "2024-01-01T00:00:00Z"}
    spec: {host: reviews, trafficPolicy: {loadBalancer: {simple: RANDOM}}, subsets: [{name: v1, labels: {version: v1}}]}
  - metadata: {name: b, creationTimestamp: "2024-01-02T00:00:00Z"}
    spec: {host: reviews.default.svc.cluster.local, trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}, subsets: [{name: v2, labels: {version: v2}}]}
"#,
    ));
    assert_eq!(base(&t).lb_policy, cluster::LbPolicy::Random as i32);
    assert!(
        t.problems
            .iter()
            .any(|p| matches!(p, Problem::IstioConflict { object, .. } if object.name == "b")),
        "{:?}",
        t.problems
    );
    assert!(
        names(&sidecar(&t, "x.default"), traffic_translate::snapshot::CLUSTER).contains(&format!("{RC}|v2"))
    );
}

#[test]
fn virtual_services_bound_to_a_gateway_become_ingress_virtual_hosts() {
    let t = run(&model(&format!(
        r#"  gateways:
  - metadata: {{name: bookinfo-gateway}}
    spec:
      selector: {{istio: ingressgateway}}
      servers:
      - port: {{number: 80, name: http, protocol: HTTP}}
        hosts: ["*.example.com"]
      - port: {{number: 443, name: https, protocol: HTTPS}}
        hosts: ["*"]
        tls: {{mode: SIMPLE, credentialName: cert}}
  virtualServices:
  - metadata: {{name: front}}
    spec:
      hosts: [reviews.example.com, other.org]
      gateways: [bookinfo-gateway]
      http:
      - match: [{{uri: {{exact: /productpage}}}}]
        route: [{{destination: {{host: reviews, subset: v1}}}}]
      - route: [{{destination: {{host: ratings}}}}]
{SUBSETS}"#
    )));
    let rc: RouteConfiguration = route_config(&sidecar(&t, "traffic-ingress"), "ingress");
    let vh: Vec<(&str, Vec<String>)> = rc
        .virtual_hosts
        .iter()
        .map(|v| (v.name.as_str(), v.routes.iter().map(cluster_of).collect()))
        .collect();
    assert_eq!(
        vh,
        [(
            "reviews.example.com",
            vec![format!("{RC}|v1"), "9080|default|ratings".to_string()]
        )],
        "only the host an HTTP server accepts"
    );
    // The HTTPS server's missing Secret is reported, not silently ignored; sidecars are
    // untouched (no `mesh`).
    assert!(
        t.problems
            .iter()
            .any(|p| matches!(p, Problem::MissingSecret { ingress, secret }
            if ingress.kind == "Gateway" && secret == "cert")),
        "{:?}",
        t.problems
    );
    assert!(!names(&sidecar(&t, "x.default"), ROUTE).contains(&RC.to_string()));
}
