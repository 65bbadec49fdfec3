//! Parsing of the classic examples (tests/fixtures/bookinfo) and of `kubectl get -o yaml` output.

use std::time::Duration;

use crate::destination_rule::SimpleLb;
use crate::object::{parse_yaml_documents, IstioObject, Kind, Parsed};

fn fixture(name: &str) -> Vec<Parsed> {
    let path = format!("{}/tests/fixtures/bookinfo/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    parse_yaml_documents(&text)
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("{name}: {e}")))
        .collect()
}

#[test]
fn every_classic_example_parses_without_unknown_fields() {
    let dir = format!("{}/tests/fixtures/bookinfo", env!("CARGO_MANIFEST_DIR"));
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("fixtures") {
        let name = entry.expect("entry").file_name().into_string().expect("utf-8");
        for parsed in fixture(&name) {
            assert!(
                parsed.unknown_fields.is_empty(),
                "{name}: {:?}",
                parsed.unknown_fields
            );
            count += 1;
        }
    }
    assert!(count >= 15, "{count}");
}

#[test]
fn the_jason_rules_keep_header_and_cookie_regex_matches() {
    let [parsed] = fixture("virtual-service-reviews-test-v2.yaml")
        .try_into()
        .expect("one");
    let IstioObject::VirtualService(vs) = parsed.object else {
        panic!("kind")
    };
    assert_eq!(vs.metadata.name, "reviews");
    assert_eq!(vs.metadata.namespace, "default");
    let http = &vs.spec.http;
    assert_eq!(http.len(), 3);
    assert_eq!(
        http[0].matches[0].headers["end-user"].exact.as_deref(),
        Some("jason")
    );
    assert_eq!(
        http[1].matches[0].headers["cookie"].regex.as_deref(),
        Some("^(.*?;)?(user=jason)(;.*)?$")
    );
    assert_eq!(http[2].route[0].destination.subset.as_deref(), Some("v1"));
}

#[test]
fn old_fault_percentages_are_kept() {
    let [delay] = fixture("virtual-service-ratings-test-delay.yaml")
        .try_into()
        .expect("one");
    let IstioObject::VirtualService(vs) = delay.object else {
        panic!("kind")
    };
    let d = vs.spec.http[0]
        .fault
        .as_ref()
        .and_then(|f| f.delay.as_ref())
        .expect("delay");
    assert_eq!(d.percent, Some(100));
    assert_eq!(
        d.fixed_delay.as_ref().map(|d| d.to_std()),
        Some(Ok(Duration::from_secs(7)))
    );
    let [abort] = fixture("virtual-service-ratings-test-abort.yaml")
        .try_into()
        .expect("one");
    let IstioObject::VirtualService(vs) = abort.object else {
        panic!("kind")
    };
    let a = vs.spec.http[0]
        .fault
        .as_ref()
        .and_then(|f| f.abort.as_ref())
        .expect("abort");
    assert_eq!((a.percent, a.http_status), (Some(100), Some(500)));
}

#[test]
fn the_circuit_breaker_keeps_least_conn_and_consecutive_errors() {
    let [parsed] = fixture("destination-rule-circuit-breaker.yaml")
        .try_into()
        .expect("one");
    let IstioObject::DestinationRule(dr) = parsed.object else {
        panic!("kind")
    };
    let tp = dr.spec.traffic_policy.expect("policy");
    assert_eq!(tp.load_balancer.and_then(|l| l.simple), Some(SimpleLb::LeastConn));
    let od = tp.outlier_detection.expect("outlier");
    assert_eq!(od.consecutive_errors, Some(1));
    assert_eq!(
        od.base_ejection_time.map(|d| d.to_std()),
        Some(Ok(Duration::from_secs(180)))
    );
    let pool = tp.connection_pool.expect("pool");
    assert_eq!(pool.tcp.as_ref().and_then(|t| t.max_connections), Some(1));
    assert_eq!(
        pool.tcp.and_then(|t| t.connect_timeout).map(|d| d.to_std()),
        Some(Ok(Duration::from_millis(500)))
    );
    assert_eq!(pool.http.and_then(|h| h.http1_max_pending_requests), Some(1));
}

#[test]
fn mirror_forms_are_all_read() {
    let [parsed] = fixture("virtual-service-mirror.yaml").try_into().expect("one");
    let IstioObject::VirtualService(vs) = parsed.object else {
        panic!("kind")
    };
    let h = &vs.spec.http;
    assert_eq!(h[0].mirror_percent, Some(50));
    assert_eq!(h[1].mirror_percentage.map(|p| p.value), Some(50.0));
    assert_eq!(h[2].mirrors[0].percentage.map(|p| p.value), Some(25.0));
    assert_eq!(h[2].mirrors[0].destination.subset.as_deref(), Some("v2"));
}

#[test]
fn other_kinds_in_a_manifest_are_skipped_and_every_version_is_read() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\n\
        apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: web}\nspec: {selector: {app: gw}}\n---\n\
        apiVersion: networking.istio.io/v1beta1\nkind: ServiceEntry\nmetadata: {name: s}\nspec: {hosts: [a.example], resolution: STATIC}\n---\n\
        apiVersion: networking.istio.io/v2\nkind: Gateway\nmetadata: {name: future}\n---\n";
    let parsed: Vec<_> = parse_yaml_documents(text)
        .into_iter()
        .map(|r| r.expect("parses"))
        .collect();
    let kinds: Vec<_> = parsed.iter().map(|p| p.object.kind()).collect();
    assert_eq!(kinds, [Kind::Gateway, Kind::ServiceEntry]);
    assert_eq!(parsed[0].object.metadata().namespace, "web");
}

#[test]
fn kubectl_output_reads_with_metadata_and_without_warnings_about_status_or_metadata() {
    let text = r#"
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: "{}"
  creationTimestamp: "2024-05-01T10:00:00Z"
  generation: 3
  name: reviews
  namespace: shop
  resourceVersion: "1234"
  uid: 0b5c6a53-8f3e-4c1e-9c55-0d6a3c3b7e11
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
status:
  conditions: []
"#;
    let [parsed] = parse_yaml_documents(text).try_into().expect("one");
    let parsed = parsed.expect("parses");
    let m = parsed.object.metadata();
    assert_eq!(
        (m.namespace.as_str(), m.name.as_str(), m.generation),
        ("shop", "reviews", Some(3))
    );
    assert_eq!(m.uid.as_deref(), Some("0b5c6a53-8f3e-4c1e-9c55-0d6a3c3b7e11"));
    assert_eq!(m.creation_timestamp.as_deref(), Some("2024-05-01T10:00:00Z"));
    assert!(parsed.unknown_fields.is_empty(), "{:?}", parsed.unknown_fields);
}

#[test]
fn unknown_fields_are_ignored_but_reported_with_their_path() {
    let text = r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: r}
spec:
  hosts: [r]
  futureField: 1
  http:
  - match:
    - uri: {prefix: /}
      sourceWorkload: x
    route:
    - destination: {host: r, subsett: v1}
    empty: []
"#;
    let [parsed] = parse_yaml_documents(text).try_into().expect("one");
    let parsed = parsed.expect("parses despite unknown fields");
    assert_eq!(
        parsed.unknown_fields,
        [
            "spec.futureField",
            "spec.http[0].match[0].sourceWorkload",
            "spec.http[0].route[0].destination.subsett",
        ]
    );
}

#[test]
fn unknown_enum_values_and_bad_durations_still_parse() {
    let text = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: d}
spec:
  host: d
  trafficPolicy:
    loadBalancer: {simple: FASTEST}
    connectionPool: {tcp: {connectTimeout: 10}}
"#;
    let [parsed] = parse_yaml_documents(text).try_into().expect("one");
    let IstioObject::DestinationRule(dr) = parsed.expect("parses").object else {
        panic!("kind")
    };
    let tp = dr.spec.traffic_policy.expect("policy");
    assert_eq!(
        tp.load_balancer.and_then(|l| l.simple),
        Some(SimpleLb::Other("FASTEST".into()))
    );
    let timeout = tp
        .connection_pool
        .and_then(|p| p.tcp)
        .and_then(|t| t.connect_timeout);
    assert!(timeout.expect("kept").to_std().is_err());
}

#[test]
fn a_wrongly_typed_field_fails_only_its_document() {
    let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec: {hosts: 3}\n---\n\
        apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: b}\nspec: {hosts: [b]}\n";
    let results = parse_yaml_documents(text);
    assert_eq!(results.len(), 2);
    assert!(results[0].is_err());
    assert!(results[1].is_ok());
}

#[test]
fn the_all_fields_fixture_uses_only_known_fields() {
    let path = format!("{}/tests/fixtures/all-fields.yaml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("fixture");
    let parsed: Vec<_> = parse_yaml_documents(&text)
        .into_iter()
        .map(|r| r.expect("parses"))
        .collect();
    assert_eq!(parsed.len(), 4);
    for p in parsed {
        assert!(p.unknown_fields.is_empty(), "{:?}", p.unknown_fields);
    }
}
