//! The chart's networking.istio.io CRDs on the real Kubernetes 1.20 node: they install (no CEL),
//! every served version (v1alpha3, v1beta1, v1) takes Istio's classic examples exactly as written,
//! and the API server keeps the deprecated fields (a 2018 `fault.abort.percent` is not pruned).
//! Needs no control plane or agent (`cargo xtask e2e --filter istio_crds`, or directly
//! `TRAFFIC_E2E=1 cargo test -p traffic-tests --test e2e istio_crds`).

use std::path::{Path, PathBuf};

use traffic_tests::e2e::{random_suffix, E2e, NAMESPACE_LABEL};
use traffic_tests::istio_e2e::{crds_yaml, IstioCrds, KINDS};

const VERSIONS: [&str; 3] = ["v1alpha3", "v1beta1", "v1"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Deletes the test namespace even on failure.
struct Cleanup<'a> {
    e2e: &'a E2e,
    namespace: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self
            .e2e
            .kubectl(&["delete", "namespace", &self.namespace, "--wait=false"]);
    }
}

#[test]
fn istio_crds_install_and_take_the_classic_examples_in_every_version() {
    let Some(e2e) = E2e::require() else { return };
    // Installed here when absent (and removed again at the end)...
    let crds = IstioCrds::ensure(&e2e).expect("the CRDs install on this Kubernetes");
    // ...and applied over the cluster's own otherwise: they must install either way.
    if !crds.installed_here() {
        let file = std::env::temp_dir().join(format!("istio-crds-{}.yaml", random_suffix()));
        std::fs::write(&file, crds_yaml().expect("chart template")).expect("write CRDs");
        let out = e2e.kubectl(&["apply", "-f", &file.to_string_lossy()]);
        let _ = std::fs::remove_file(&file);
        out.expect("the CRDs apply over the installed ones");
    }
    let namespace = format!("e2e-istio-crds-{}", random_suffix());
    let _cleanup = Cleanup {
        e2e: &e2e,
        namespace: namespace.clone(),
    };
    e2e.kubectl(&["create", "namespace", &namespace])
        .expect("namespace");
    e2e.kubectl(&[
        "label",
        "namespace",
        &namespace,
        &format!("{NAMESPACE_LABEL}=true"),
    ])
    .expect("label");
    let fixtures = repo().join("control/istio/tests/fixtures/bookinfo");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let apply = |version: &str, file: &Path| -> usize {
        let text = std::fs::read_to_string(file).expect("fixture").replace(
            "networking.istio.io/v1alpha3",
            &format!("networking.istio.io/{version}"),
        );
        let tmp = std::env::temp_dir().join(format!("istio-{version}-{}.yaml", random_suffix()));
        std::fs::write(&tmp, &text).expect("write");
        let out = e2e.kubectl(&["apply", "-n", &namespace, "-f", &tmp.to_string_lossy()]);
        let _ = std::fs::remove_file(&tmp);
        out.unwrap_or_else(|e| panic!("{version} {}: {e:#}", file.display()))
            .lines()
            .count()
    };
    let ratings_fault = |version: &str| {
        let vs = e2e
            .kubectl_json(&[
                "get",
                "-n",
                &namespace,
                &format!("virtualservices.{version}.networking.istio.io/ratings"),
            ])
            .expect("get ratings");
        vs["spec"]["http"][0]["fault"].clone()
    };
    for version in VERSIONS {
        let applied: usize = files.iter().map(|f| apply(version, f)).sum();
        assert!(applied >= 15, "{version}: {applied} objects applied");
        // Read back through this version: the deprecated and removed percents are kept.
        let fault = ratings_fault(version);
        assert_eq!(fault["delay"]["percent"], 100, "{version}: {fault}");
        apply(version, &fixtures.join("virtual-service-ratings-test-abort.yaml"));
        let fault = ratings_fault(version);
        assert_eq!(
            fault["abort"]["percent"], 100,
            "{version}: the removed abort percent was pruned: {fault}"
        );
        let dr = e2e
            .kubectl_json(&[
                "get",
                "-n",
                &namespace,
                &format!("destinationrules.{version}.networking.istio.io/httpbin"),
            ])
            .expect("get httpbin");
        assert_eq!(
            dr["spec"]["trafficPolicy"]["outlierDetection"]["consecutiveErrors"], 1,
            "{version}"
        );
        assert_eq!(
            dr["spec"]["trafficPolicy"]["loadBalancer"]["simple"], "LEAST_CONN",
            "{version}"
        );
        for kind in KINDS {
            e2e.kubectl(&[
                "delete",
                "-n",
                &namespace,
                &format!("{kind}.networking.istio.io"),
                "--all",
            ])
            .expect("delete");
        }
    }
}
