//! `traffic-control config --model <manifests>` with Istio objects (the real binary): the
//! DestinationRule's subsets become clusters and the VirtualService's rules the route
//! configuration of the Service port.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_traffic-control");

fn config(kind: &str) -> String {
    let dir = format!("{}/tests/fixtures/manifests/bookinfo", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(BIN)
        .args([
            "config",
            "--model",
            &dir,
            "--node-id",
            "reviews-v1-7f9c-abcde.default",
            "--type",
            kind,
        ])
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn manifests_with_istio_objects_give_subset_clusters_and_rule_routes() {
    let clusters = config("cluster");
    for subset in ["9080|default|reviews|v1", "9080|default|reviews|v2"] {
        assert!(clusters.contains(subset), "{subset} missing:\n{clusters}");
    }
    let routes = config("route");
    // The jason rule (its 2018 `abort.percent` read as a percentage), the weighted catch-all;
    // the rule with an RE2-invalid regex is left out.
    for needle in [
        "end-user",
        "jason",
        "\"weight\": 75",
        "default/reviews/0",
        "default/reviews/2",
    ] {
        assert!(routes.contains(needle), "{needle} missing:\n{routes}");
    }
    assert!(!routes.contains("default/reviews/1"), "{routes}");
}
