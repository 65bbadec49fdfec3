//! Feedback on Istio objects on the real cluster: the control plane (Kubernetes mode, started by
//! `cargo xtask e2e`) writes `status.conditions` through the status subresource and a Warning
//! Event per problem. A VirtualService naming a subset no DestinationRule defines gets
//! `ResolvedRefs=False` (`BackendNotFound`) and an Event; fixed, `ResolvedRefs=True` with the
//! new `observedGeneration`; a valid DestinationRule gets `Accepted=True` with
//! `observedGeneration` = its `metadata.generation`.
//! (`cargo xtask e2e --filter istio_status`.)

use std::time::Duration;

use serde_json::Value;
use traffic_tests::e2e::{wait_until, E2e};
use traffic_tests::istio_e2e::{apply_yaml, condition, IstioCrds};

/// CRD watch backoff (the CRDs may appear after the control plane started) + debounce + write.
const STATUS_TIMEOUT: Duration = Duration::from_secs(120);

const DR: &str = r#"apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

/// `reviews` has three ports (9080 http, 9081, 9082 direct): the rule is for the HTTP one.
fn vs(subset: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{{port: 9080}}]\n    route:\n    - destination: {{host: reviews, subset: {subset}, port: {{number: 9080}}}}\n"
    )
}

#[test]
fn istio_status_conditions_and_events_follow_the_objects() {
    let Some(e2e) = E2e::require() else { return };
    let _crds = IstioCrds::ensure(&e2e).expect("the chart's Istio CRDs");
    let ns = e2e.namespace("istio-status").expect("namespace");
    let n = ns.name.as_str();
    apply_yaml(&e2e, n, DR).expect("apply");
    apply_yaml(&e2e, n, &vs("v9")).expect("apply");
    let vs_res = "virtualservices.networking.istio.io/reviews";
    let dr_res = "destinationrules.networking.istio.io/reviews";

    let c = wait_until(
        "VirtualService ResolvedRefs=False",
        STATUS_TIMEOUT,
        Duration::from_millis(500),
        || Ok(condition(&e2e, n, vs_res, "ResolvedRefs").filter(|c| c.status == "False")),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "BackendNotFound")
    );
    assert_eq!(c.observed_generation, c.generation);
    let message = e2e
        .kubectl(&[
            "get",
            "-n",
            n,
            vs_res,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"ResolvedRefs\")].message}",
        ])
        .expect("message");
    assert!(message.contains("\"v9\""), "{message}");
    let accepted = condition(&e2e, n, vs_res, "Accepted").expect("Accepted");
    assert_eq!(
        accepted.status, "True",
        "nothing of the object is invalid: {accepted:?}"
    );

    let events = wait_until(
        "a Warning Event on the VirtualService",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let v: Value = e2e.kubectl_json(&[
                "get",
                "events",
                "-n",
                n,
                "--field-selector",
                "involvedObject.kind=VirtualService,involvedObject.name=reviews,type=Warning",
            ])?;
            let items = v["items"].as_array().cloned().unwrap_or_default();
            Ok((!items.is_empty()).then_some(items))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        events.iter().any(|e| e["reason"] == "BackendNotFound"
            && e["involvedObject"]["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("networking.istio.io/"))),
        "{events:?}"
    );

    // The DestinationRule is valid.
    let dr = wait_until(
        "DestinationRule Accepted",
        STATUS_TIMEOUT,
        Duration::from_millis(500),
        || Ok(condition(&e2e, n, dr_res, "Accepted")),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(dr.status, "True", "{dr:?}");
    assert_eq!(
        dr.observed_generation, dr.generation,
        "observedGeneration = metadata.generation: {dr:?}"
    );

    // Fixed: the subset exists now.
    apply_yaml(&e2e, n, &vs("v2")).expect("apply");
    let fixed = wait_until(
        "VirtualService ResolvedRefs=True",
        STATUS_TIMEOUT,
        Duration::from_millis(500),
        || Ok(condition(&e2e, n, vs_res, "ResolvedRefs").filter(|c| c.status == "True")),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(fixed.reason, "ResolvedRefs");
    assert!(fixed.is_true_now(), "{fixed:?}");
    assert!(fixed.generation >= 2, "the fix is a new generation: {fixed:?}");
}
