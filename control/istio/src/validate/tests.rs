//! Table-driven validation tests: each case is a manifest, the problems it must give (code and
//! path) and what must be kept.

use super::*;
use crate::object::parse_yaml_documents;

fn validated(yaml: &str) -> Validated {
    let [parsed] = parse_yaml_documents(yaml).try_into().expect("one object");
    validate_parsed(&parsed.expect("parses"))
}

/// (what, rule YAML, expected (code, path) problems).
type RuleCase<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
/// (what, spec YAML, expected (code, path) problems, subsets kept).
type SpecCase<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], usize);

fn codes(v: &Validated) -> Vec<(&'static str, String)> {
    v.problems
        .iter()
        .map(|p| (p.code.as_str(), p.path.clone()))
        .collect()
}

fn vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {{name: r}}\nspec:\n  hosts: [reviews]\n  http:\n{http}"
    )
}

/// A valid rule, always second, to prove only the bad one (first) is left out.
const GOOD: &str = "  - route:\n    - destination: {host: reviews, subset: v1}\n";

fn http_rules(v: &Validated) -> usize {
    match &v.object {
        Some(IstioObject::VirtualService(vs)) => vs.spec.http.len(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn invalid_http_rules_are_left_out_alone() {
    let cases: &[RuleCase] = &[
        (
            "bad RE2 regex (look-ahead)",
            "  - match:\n    - uri: {regex: \"/a(?=b)\"}\n    route:\n    - destination: {host: reviews}\n",
            &[("TM1001", "spec.http[0].match[0].uri.regex")],
        ),
        (
            "bad regex in a header match",
            "  - match:\n    - headers: {cookie: {regex: \"(\"}}\n    route:\n    - destination: {host: reviews}\n",
            &[("TM1001", "spec.http[0].match[0].headers.cookie.regex")],
        ),
        (
            "weights summing to 0",
            "  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 0\n    - destination: {host: reviews, subset: v2}\n",
            &[("TM1002", "spec.http[0].route")],
        ),
        (
            "a negative weight",
            "  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: -5\n    - destination: {host: reviews, subset: v2}\n      weight: 105\n",
            &[("TM1002", "spec.http[0].route[0].weight")],
        ),
        (
            "a negative timeout",
            "  - timeout: -1s\n    route:\n    - destination: {host: reviews}\n",
            &[("TM1003", "spec.http[0].timeout")],
        ),
        (
            "a timeout without unit",
            "  - timeout: 10\n    route:\n    - destination: {host: reviews}\n",
            &[("TM1003", "spec.http[0].timeout")],
        ),
        (
            "a zero fixed delay",
            "  - fault: {delay: {fixedDelay: 0s, percentage: {value: 10}}}\n    route:\n    - destination: {host: reviews}\n",
            &[("TM1004", "spec.http[0].fault.delay.fixedDelay")],
        ),
        (
            "a zero perTryTimeout",
            "  - retries: {attempts: 2, perTryTimeout: 0s}\n    route:\n    - destination: {host: reviews}\n",
            &[("TM1004", "spec.http[0].retries.perTryTimeout")],
        ),
        (
            "a percentage above 100",
            "  - fault: {abort: {httpStatus: 500, percentage: {value: 100.5}}}\n    route:\n    - destination: {host: reviews}\n",
            &[("TM1005", "spec.http[0].fault.abort.percentage.value")],
        ),
        (
            "a negative integer percent",
            "  - fault: {abort: {httpStatus: 500, percent: -1}}\n    route:\n    - destination: {host: reviews}\n",
            &[
                ("TM1005", "spec.http[0].fault.abort.percent"),
                ("TM1015", "spec.http[0].fault.abort.percent"),
            ],
        ),
        (
            "an abort status below 200",
            "  - fault: {abort: {httpStatus: 199}}\n    route:\n    - destination: {host: reviews}\n",
            &[("TM1006", "spec.http[0].fault.abort.httpStatus")],
        ),
        (
            "an abort status above 599",
            "  - fault: {abort: {httpStatus: 600}}\n    route:\n    - destination: {host: reviews}\n",
            &[("TM1006", "spec.http[0].fault.abort.httpStatus")],
        ),
        (
            "a header name with a space",
            "  - match:\n    - headers: {\"end user\": {exact: jason}}\n    route:\n    - destination: {host: reviews}\n",
            &[("TM1007", "spec.http[0].match[0].headers.end user")],
        ),
        (
            "a bad header name to set",
            "  - headers: {request: {set: {\"x(y)\": a}}}\n    route:\n    - destination: {host: reviews}\n",
            &[("TM1007", "spec.http[0].headers.request.set.x(y)")],
        ),
        (
            "a uri match with two kinds",
            "  - match:\n    - uri: {exact: /a, prefix: /a}\n    route:\n    - destination: {host: reviews}\n",
            &[("TM1008", "spec.http[0].match[0].uri")],
        ),
        (
            "a rule with no action",
            "  - match:\n    - uri: {prefix: /a}\n",
            &[("TM1009", "spec.http[0]")],
        ),
        (
            "a destination without host",
            "  - route:\n    - destination: {subset: v1}\n",
            &[("TM1010", "spec.http[0].route[0].destination.host")],
        ),
        (
            "a destination port out of range",
            "  - route:\n    - destination: {host: reviews, port: {number: 70000}}\n",
            &[("TM1011", "spec.http[0].route[0].destination.port.number")],
        ),
        (
            "an unknown retryOn",
            "  - retries: {attempts: 3, retryOn: \"5xx,sometimes\"}\n    route:\n    - destination: {host: reviews}\n",
            &[("TM1012", "spec.http[0].retries.retryOn")],
        ),
        (
            "a redirect code that is not 3xx",
            "  - redirect: {uri: /x, redirectCode: 200}\n",
            &[("TM1006", "spec.http[0].redirect.redirectCode")],
        ),
        (
            "a direct response status out of range",
            "  - directResponse: {status: 99}\n",
            &[("TM1006", "spec.http[0].directResponse.status")],
        ),
        (
            "a fault with nothing",
            "  - fault: {}\n    route:\n    - destination: {host: reviews}\n",
            &[("TM1017", "spec.http[0].fault")],
        ),
        (
            "a mirror percentage out of range",
            "  - route:\n    - destination: {host: reviews}\n    mirror: {host: reviews, subset: v2}\n    mirrorPercentage: {value: -3}\n",
            &[("TM1005", "spec.http[0].mirrorPercentage.value")],
        ),
    ];
    for (what, rule, want) in cases {
        let v = validated(&vs(&format!("{rule}{GOOD}")));
        let got = codes(&v);
        let want: Vec<_> = want.iter().map(|(c, p)| (*c, p.to_string())).collect();
        assert_eq!(got, want, "{what}");
        assert_eq!(http_rules(&v), 1, "{what}: only the bad rule is left out");
        assert!(
            v.problems
                .iter()
                .filter(|p| p.severity() == Severity::Error)
                .all(|p| p.dropped == Dropped::Part("spec.http[0]".into())),
            "{what}"
        );
    }
}

#[test]
fn valid_and_boundary_rules_are_kept_without_errors() {
    let cases: &[(&str, &str)] = &[
        ("the jason cookie regex", "  - match:\n    - headers: {cookie: {regex: \"^(.*?;)?(user=jason)(;.*)?$\"}}\n    route:\n    - destination: {host: reviews, subset: v2}\n"),
        ("header presence", "  - match:\n    - headers: {x-canary: {}}\n    route:\n    - destination: {host: reviews}\n"),
        ("75/25", "  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 75\n    - destination: {host: reviews, subset: v2}\n      weight: 25\n"),
        ("one weight 0 of two", "  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 0\n    - destination: {host: reviews, subset: v2}\n      weight: 100\n"),
        ("percentage 0 and 100", "  - fault: {delay: {fixedDelay: 1ms, percentage: {value: 0}}, abort: {httpStatus: 599, percentage: {value: 100}}}\n    route:\n    - destination: {host: reviews}\n"),
        ("status 200", "  - fault: {abort: {httpStatus: 200, percentage: {value: 1}}}\n    route:\n    - destination: {host: reviews}\n"),
        ("timeout 0 means none", "  - timeout: 0s\n    route:\n    - destination: {host: reviews}\n"),
        ("retries on reset and codes", "  - retries: {attempts: 2, perTryTimeout: 0.5s, retryOn: \"reset,connect-failure,503\"}\n    route:\n    - destination: {host: reviews}\n"),
        ("a redirect", "  - redirect: {uri: /v2, authority: new, redirectCode: 308}\n"),
        ("a direct response", "  - directResponse: {status: 503, body: {string: down}}\n"),
        ("rewrite", "  - rewrite: {uri: /, authority: x}\n    route:\n    - destination: {host: reviews, port: {number: 9080}}\n"),
        ("mirrors", "  - route:\n    - destination: {host: reviews}\n    mirrors:\n    - destination: {host: reviews, subset: v2}\n      percentage: {value: 50}\n"),
    ];
    for (what, rule) in cases {
        let v = validated(&vs(&format!("{rule}{GOOD}")));
        assert!(!v.has_errors(), "{what}: {:?}", v.problems);
        assert_eq!(http_rules(&v), 2, "{what}");
    }
}

#[test]
fn deprecated_fields_warn_and_are_mapped() {
    let v = validated(&vs("  - fault:\n      abort: {percent: 50, httpStatus: 500}\n      delay: {percent: 10, fixedDelay: 2s}\n    mirror: {host: reviews, subset: v2}\n    mirrorPercent: 30\n    appendHeaders: {x-a: b}\n    websocketUpgrade: true\n    route:\n    - destination: {host: reviews}\n"));
    assert!(!v.has_errors(), "{:?}", v.problems);
    assert!(
        v.problems.iter().all(|p| p.code == Code::Deprecated),
        "{:?}",
        v.problems
    );
    assert_eq!(v.problems.len(), 5, "{:?}", v.problems);
    let Some(IstioObject::VirtualService(out)) = v.object else {
        panic!("kept")
    };
    let r = &out.spec.http[0];
    let fault = r.fault.as_ref().expect("fault");
    let abort = fault.abort.as_ref().expect("abort");
    assert_eq!(
        (abort.percent, abort.percentage.map(|p| p.value)),
        (None, Some(50.0))
    );
    let delay = fault.delay.as_ref().expect("delay");
    assert_eq!(
        (delay.percent, delay.percentage.map(|p| p.value)),
        (None, Some(10.0))
    );
    assert_eq!(r.mirror, None);
    assert_eq!(r.mirror_percent, None);
    assert_eq!(r.mirrors.len(), 1);
    assert_eq!(r.mirrors[0].destination.subset.as_deref(), Some("v2"));
    assert_eq!(r.mirrors[0].percentage.map(|p| p.value), Some(30.0));
    let add = &r
        .headers
        .as_ref()
        .and_then(|h| h.request.as_ref())
        .expect("request")
        .add;
    assert_eq!(add.get("x-a").map(String::as_str), Some("b"));
    assert_eq!(r.append_headers, None);
}

#[test]
fn a_mirror_without_percentage_mirrors_everything() {
    let v = validated(&vs(
        "  - mirror: {host: reviews, subset: v2}\n    route:\n    - destination: {host: reviews}\n",
    ));
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    let Some(IstioObject::VirtualService(out)) = v.object else {
        panic!("kept")
    };
    assert_eq!(out.spec.http[0].mirrors[0].percentage, None);
}

#[test]
fn object_level_problems_leave_the_object_out() {
    for (what, yaml, code) in [
        ("no hosts", "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {http: []}\n", "TM0004"),
        ("no name", "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {}\nspec: {hosts: [a]}\n", "TM0003"),
        ("no DR host", "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec: {subsets: []}\n", "TM0004"),
        ("unknown resolution", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec: {hosts: [a.example], ports: [{number: 80, protocol: HTTP, name: http}], resolution: MAGIC}\n", "TM1013"),
        ("DNS for a wildcard", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec: {hosts: [\"*.example\"], ports: [{number: 80, protocol: HTTP, name: http}], resolution: DNS}\n", "TM3001"),
        ("STATIC without endpoints", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec: {hosts: [a.example], ports: [{number: 80, protocol: HTTP, name: http}], resolution: STATIC}\n", "TM3001"),
        ("DNS with a CIDR", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec: {hosts: [a.example], addresses: [10.0.0.0/8], ports: [{number: 80, protocol: HTTP, name: http}], resolution: DNS}\n", "TM3001"),
        ("DNS_ROUND_ROBIN with two endpoints", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec: {hosts: [a.example], ports: [{number: 80, protocol: HTTP, name: http}], resolution: DNS_ROUND_ROBIN, endpoints: [{address: a1.example}, {address: a2.example}]}\n", "TM3001"),
        ("host *", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec: {hosts: [\"*\"], ports: [{number: 80, protocol: HTTP, name: http}]}\n", "TM3003"),
        ("a namespace prefix", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec: {hosts: [ns/a.example], ports: [{number: 80, protocol: HTTP, name: http}]}\n", "TM3003"),
        ("a wildcard inside", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec: {hosts: [a.*.example], ports: [{number: 80, protocol: HTTP, name: http}]}\n", "TM3003"),
        ("a Gateway without servers", "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {selector: {app: gw}}\n", "TM0004"),
    ] {
        let v = validated(yaml);
        assert_eq!(v.object, None, "{what}");
        assert!(v.problems.iter().any(|p| p.code.as_str() == code && p.dropped == Dropped::Object), "{what}: {:?}", v.problems);
    }
}

fn dr(spec: &str) -> String {
    format!("apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {{name: d}}\nspec:\n  host: reviews\n{spec}")
}

#[test]
fn destination_rule_problems_drop_only_their_subset_or_setting() {
    let cases: &[SpecCase] = &[
        (
            "unknown simple LB in a subset",
            "  subsets:\n  - name: v1\n    labels: {version: v1}\n    trafficPolicy: {loadBalancer: {simple: FASTEST}}\n  - name: v2\n    labels: {version: v2}\n",
            &[("TM1013", "spec.subsets[0].trafficPolicy.loadBalancer.simple")],
            1,
        ),
        (
            "zero connectTimeout in a subset",
            "  subsets:\n  - name: v1\n    trafficPolicy: {connectionPool: {tcp: {connectTimeout: 0s}}}\n  - name: v2\n",
            &[("TM1004", "spec.subsets[0].trafficPolicy.connectionPool.tcp.connectTimeout")],
            1,
        ),
        (
            "a duplicate subset",
            "  subsets:\n  - name: v1\n  - name: v1\n",
            &[("TM2001", "spec.subsets[1].name")],
            1,
        ),
        (
            "a subset without name",
            "  subsets:\n  - labels: {version: v1}\n  - name: v2\n",
            &[("TM2001", "spec.subsets[0].name")],
            1,
        ),
        (
            "maxEjectionPercent above 100 at the top",
            "  trafficPolicy: {outlierDetection: {consecutive5xxErrors: 1, maxEjectionPercent: 101}}\n  subsets:\n  - name: v1\n",
            &[("TM1005", "spec.trafficPolicy.outlierDetection.maxEjectionPercent")],
            1,
        ),
        (
            "both simple and consistentHash",
            "  trafficPolicy: {loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}}\n",
            &[("TM2002", "spec.trafficPolicy.loadBalancer")],
            0,
        ),
        (
            "a hash with two keys",
            "  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user, httpCookie: {name: u, ttl: 0s}}}}\n",
            &[("TM2002", "spec.trafficPolicy.loadBalancer.consistentHash")],
            0,
        ),
        (
            "a negative maxConnections",
            "  trafficPolicy: {connectionPool: {tcp: {maxConnections: -1}}}\n",
            &[("TM1014", "spec.trafficPolicy.connectionPool.tcp.maxConnections")],
            0,
        ),
        (
            "a zero outlier interval",
            "  trafficPolicy: {outlierDetection: {interval: 0s}}\n",
            &[("TM1004", "spec.trafficPolicy.outlierDetection.interval")],
            0,
        ),
        (
            "a port-level entry without port",
            "  trafficPolicy:\n    portLevelSettings:\n    - loadBalancer: {simple: RANDOM}\n",
            &[("TM1011", "spec.trafficPolicy.portLevelSettings[0].port.number")],
            0,
        ),
    ];
    for (what, spec, want, subsets) in cases {
        let v = validated(&dr(spec));
        let want: Vec<_> = want.iter().map(|(c, p)| (*c, p.to_string())).collect();
        assert_eq!(codes(&v), want, "{what}");
        let Some(IstioObject::DestinationRule(out)) = &v.object else {
            panic!("{what}: object kept")
        };
        assert_eq!(out.spec.subsets.len(), *subsets, "{what}");
    }
}

#[test]
fn an_invalid_top_level_setting_is_left_out_and_the_others_kept() {
    let v = validated(&dr("  trafficPolicy:\n    loadBalancer: {simple: NOPE}\n    connectionPool: {tcp: {maxConnections: 1}}\n    outlierDetection: {consecutive5xxErrors: 2}\n"));
    let Some(IstioObject::DestinationRule(out)) = v.object else {
        panic!("kept")
    };
    let tp = out.spec.traffic_policy.expect("policy");
    assert_eq!(tp.load_balancer, None);
    assert!(tp.connection_pool.is_some() && tp.outlier_detection.is_some());
    assert_eq!(
        v.problems[0].dropped,
        Dropped::Part("spec.trafficPolicy.loadBalancer".into())
    );
}

#[test]
fn least_conn_and_consecutive_errors_are_mapped_with_warnings() {
    let v = validated(&dr("  trafficPolicy:\n    loadBalancer: {simple: LEAST_CONN}\n    outlierDetection: {consecutiveErrors: 7, interval: 1s, baseEjectionTime: 3m}\n"));
    assert!(!v.has_errors(), "{:?}", v.problems);
    assert_eq!(
        codes(&v),
        [
            ("TM1015", "spec.trafficPolicy.loadBalancer.simple".to_string()),
            (
                "TM1015",
                "spec.trafficPolicy.outlierDetection.consecutiveErrors".to_string()
            ),
        ]
    );
    assert!(v.problems[1].message.contains("consecutiveGatewayErrors: 7"));
    let Some(IstioObject::DestinationRule(out)) = v.object else {
        panic!("kept")
    };
    let tp = out.spec.traffic_policy.expect("policy");
    assert_eq!(
        tp.load_balancer.and_then(|l| l.simple),
        Some(crate::destination_rule::SimpleLb::LeastRequest)
    );
    let od = tp.outlier_detection.expect("od");
    assert_eq!(
        (od.consecutive_errors, od.consecutive_gateway_errors),
        (None, Some(7))
    );
}

#[test]
fn service_entry_ports_and_endpoints_are_checked_one_by_one() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s}\nspec:\n  hosts: [db.example]\n  resolution: STATIC\n  ports:\n  - {number: 5432, protocol: TCP, name: pg}\n  - {number: 0, protocol: TCP, name: bad}\n  - {number: 5432, protocol: TCP, name: twice}\n  - {number: 80, protocol: QUIC, name: q}\n  endpoints:\n  - address: 10.1.2.3\n  - address: db.internal\n";
    let v = validated(yaml);
    assert_eq!(
        codes(&v),
        [
            ("TM1011", "spec.ports[1].number".to_string()),
            ("TM3002", "spec.ports[2].number".to_string()),
            ("TM1013", "spec.ports[3].protocol".to_string()),
            ("TM3001", "spec.endpoints[1].address".to_string()),
        ]
    );
    let Some(IstioObject::ServiceEntry(out)) = v.object else {
        panic!("kept")
    };
    assert_eq!(out.spec.ports.len(), 1);
    assert_eq!(out.spec.endpoints.len(), 1);
}

#[test]
fn service_entry_boundaries_that_are_fine() {
    for spec in [
        "{hosts: [a.example], addresses: [10.0.0.1/32, 10.0.0.2], ports: [{number: 80, protocol: HTTP, name: http}], resolution: DNS}",
        "{hosts: [\"*.a.example\", A.Example.], ports: [{number: 1, protocol: tcp, name: t}, {number: 65535, protocol: Https, name: s}]}",
        "{hosts: [a.example], ports: [{number: 80, name: http}], resolution: DNS_ROUND_ROBIN, endpoints: [{address: lb.example}]}",
        "{hosts: [a.example], addresses: [10.0.0.0/8], ports: [{number: 80, protocol: GRPC, name: g}], resolution: STATIC, endpoints: [{address: 10.0.0.1, weight: 0}]}",
    ] {
        let v = validated(&format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: s}}\nspec: {spec}\n"
        ));
        assert!(v.problems.is_empty(), "{spec}: {:?}", v.problems);
    }
}

#[test]
fn gateway_servers_are_checked_one_by_one() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a.example]\n  - port: {number: 443, name: https2, protocol: HTTPS}\n    hosts: [b.example]\n    tls: {mode: SIMPLE}\n  - port: {number: 443, name: https3, protocol: HTTPS}\n    hosts: [c.example]\n    tls: {mode: PASSTHROUGH}\n  - port: {number: 443, name: https4, protocol: HTTPS}\n    hosts: [d.example]\n    tls: {mode: SIMPLE, credentialName: d-cert}\n  - port: {number: 8080, name: x, protocol: HTTP}\n";
    let v = validated(yaml);
    assert_eq!(
        codes(&v),
        [
            ("TM4001", "spec.servers[1].tls".to_string()),
            ("TM4001", "spec.servers[2].tls.credentialName".to_string()),
            ("TM4001", "spec.servers[3].tls.mode".to_string()),
            ("TM4002", "spec.servers[5].hosts".to_string()),
        ]
    );
    let Some(IstioObject::Gateway(out)) = v.object else {
        panic!("kept")
    };
    let names: Vec<_> = out
        .spec
        .servers
        .iter()
        .map(|s| s.port.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(names, ["http", "https4"]);
}

#[test]
fn unknown_fields_become_warnings() {
    let v = validated(&vs(
        "  - route:\n    - destination: {host: reviews}\n    retrys: {attempts: 3}\n",
    ));
    assert_eq!(codes(&v), [("TM0002", "spec.http[0].retrys".to_string())]);
    assert!(!v.has_errors());
}

#[test]
fn every_classic_example_validates_with_only_deprecation_warnings() {
    let dir = format!("{}/tests/fixtures/bookinfo", env!("CARGO_MANIFEST_DIR"));
    let mut parsed = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("fixtures") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
        parsed.extend(
            parse_yaml_documents(&text)
                .into_iter()
                .map(|r| r.expect("parses")),
        );
    }
    let v = validate_all_parsed(&parsed);
    assert_eq!(v.error_count(), 0, "{:?}", v.problems().collect::<Vec<_>>());
    assert!(v.reports.iter().all(|r| r.accepted));
    assert!(v.problems().all(|(_, p)| p.code == Code::Deprecated));
}

#[test]
fn every_code_is_in_the_documented_table_and_unique() {
    let doc = include_str!("../lib.rs");
    let readme = include_str!("../../../../README.md");
    let mut seen = std::collections::BTreeSet::new();
    for code in Code::ALL {
        assert!(seen.insert(code.as_str()), "{code} twice");
        let row = format!("| `{}` | {} |", code.as_str(), code.severity());
        assert!(doc.contains(&row), "{row} missing from the crate doc table");
        assert!(readme.contains(&row), "{row} missing from the README's table");
    }
}
