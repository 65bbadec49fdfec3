//! Feedback on Istio objects on the real cluster: the control plane (Kubernetes mode, started by
//! `cargo xtask e2e`) writes `status.conditions` through the status subresource and a Warning
//! Event per problem. A VirtualService naming a subset no DestinationRule defines gets
//! `ResolvedRefs=False` (`BackendNotFound`) and an Event; fixed, `ResolvedRefs=True` with the
//! new `observedGeneration`; a valid DestinationRule gets `Accepted=True` with
//! `observedGeneration` = its `metadata.generation`.
//! (`cargo xtask e2e --filter istio_status`.)

use std::time::Duration;

use serde_json::Value;
use traffic_tests::e2e::{random_suffix, wait_until, E2e};

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

/// Deletes the CRDs when this test installed them, even on failure.
struct Crds<'a> {
    e2e: &'a E2e,
    file: std::path::PathBuf,
    delete: bool,
}

impl Drop for Crds<'_> {
    fn drop(&mut self) {
        if self.delete {
            let _ = self.e2e.kubectl(&["delete", "-f", &self.file.to_string_lossy()]);
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

/// (status, reason, observedGeneration) of condition `type_` and the object's generation.
fn condition(e2e: &E2e, ns: &str, resource: &str, type_: &str) -> Option<(String, String, i64, i64)> {
    let o = e2e.kubectl_json(&["get", "-n", ns, resource]).ok()?;
    let generation = o["metadata"]["generation"].as_i64()?;
    let c = o["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?
        .clone();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((
        s("status"),
        s("reason"),
        c["observedGeneration"].as_i64().unwrap_or(-1),
        generation,
    ))
}

fn apply(e2e: &E2e, ns: &str, yaml: &str) {
    let file = std::env::temp_dir().join(format!("istio-status-{}.yaml", random_suffix()));
    std::fs::write(&file, yaml).expect("write");
    let out = e2e.kubectl(&["apply", "-n", ns, "-f", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);
    out.expect("kubectl apply");
}

#[test]
fn istio_status_conditions_and_events_follow_the_objects() {
    let Some(e2e) = E2e::require() else { return };
    let preexisting = e2e
        .kubectl(&["get", "crd", "virtualservices.networking.istio.io"])
        .is_ok();
    let file = std::env::temp_dir().join(format!("istio-crds-{}.yaml", random_suffix()));
    std::fs::write(&file, super::istio_crds::crds_yaml()).expect("write CRDs");
    let _crds = Crds {
        e2e: &e2e,
        file: file.clone(),
        delete: !preexisting,
    };
    e2e.kubectl(&["apply", "-f", &file.to_string_lossy()])
        .expect("CRDs");
    for kind in ["virtualservices", "destinationrules"] {
        e2e.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &format!("crd/{kind}.networking.istio.io"),
        ])
        .expect("established");
    }
    let ns = e2e.namespace("istio-status").expect("namespace");
    let n = ns.name.as_str();
    apply(&e2e, n, DR);
    apply(&e2e, n, &vs("v9"));
    let vs_res = "virtualservices.networking.istio.io/reviews";
    let dr_res = "destinationrules.networking.istio.io/reviews";

    let (status, reason, observed, generation) = wait_until(
        "VirtualService ResolvedRefs=False",
        STATUS_TIMEOUT,
        Duration::from_millis(500),
        || Ok(condition(&e2e, n, vs_res, "ResolvedRefs").filter(|c| c.0 == "False")),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!((status.as_str(), reason.as_str()), ("False", "BackendNotFound"));
    assert_eq!(observed, generation);
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
        accepted.0, "True",
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
    assert_eq!(dr.0, "True", "{dr:?}");
    assert_eq!(dr.2, dr.3, "observedGeneration = metadata.generation: {dr:?}");

    // Fixed: the subset exists now.
    apply(&e2e, n, &vs("v2"));
    let fixed = wait_until(
        "VirtualService ResolvedRefs=True",
        STATUS_TIMEOUT,
        Duration::from_millis(500),
        || Ok(condition(&e2e, n, vs_res, "ResolvedRefs").filter(|c| c.0 == "True")),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(fixed.1, "ResolvedRefs");
    assert_eq!(fixed.2, fixed.3, "{fixed:?}");
    assert!(fixed.3 >= 2, "the fix is a new generation: {fixed:?}");
}
