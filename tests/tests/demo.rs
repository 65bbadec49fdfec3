//! The local demo end to end (`cargo xtask demo --once` runs the same function): real Envoy,
//! real `traffic-control`, real eBPF redirect, real processes in network namespaces.
//!
//! Needs root, cgroup v2, the eBPF object (`cargo xtask build-ebpf` before building), Envoy
//! (`$ENVOY_BIN` or the venv of `cargo xtask setup`) and the `traffic-control` binary next to the
//! test binaries (`cargo build -p traffic-control`; `cargo xtask test` builds every binary). Skips
//! with a reason when one is missing, except under `CI=true`, where that is a failure.
use std::path::{Path, PathBuf};

use traffic_tests::demo::{self, Fault, Options};
use traffic_tests::{bins, require_privileged};

fn missing(reason: String) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("demo test cannot run under CI: {reason}");
    }
    eprintln!("skipping the demo test: {reason}");
}

#[test]
fn the_demo_splits_80_20_injects_faults_and_restores_direct_traffic() {
    if !require_privileged() {
        return;
    }
    if !traffic_redirect::ebpf::object_embedded() {
        return missing("built without the eBPF object (run `cargo xtask build-ebpf`, rebuild)".into());
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let envoy = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".venv/bin/envoy"));
    if !envoy.is_file() {
        return missing(format!("Envoy not found at {}", envoy.display()));
    }
    let traffic_control = match bins::path("traffic-control") {
        Ok(p) if p.is_file() => p,
        _ => {
            return missing("the traffic-control binary is not built (cargo build -p traffic-control)".into())
        }
    };
    let report = demo::run(&Options {
        model: repo.join("xtask/demo/model.yaml"),
        envoy,
        traffic_control,
        requests: 200,
        concurrency: 4,
        tolerance_pct: 5.0,
        fault: Fault::default(),
        once: true,
        envoy_as_proxy_uid: true,
    })
    .expect("the demo runs");
    assert!(report.problems.is_empty(), "{:#?}", report);
    // The split went through Envoy (200 responses only from the weighted backends) ...
    assert_eq!(report.split.ok(), 200);
    // ... the fault aborted some requests with 503 ...
    assert!(report.fault.status_count(503) > 0, "{:?}", report.fault);
    // ... and without the redirect the ClusterIP is unreachable while a pod IP answers directly.
    assert_eq!(report.cluster_ip_without_redirect.ok(), 0);
    assert!(report.cluster_ip_without_redirect.failed() > 0);
    assert_eq!(report.pod_ip_without_redirect.ok(), 200);
}
