//! `traffic-control analyze` and `config --model <manifests>` as a user runs them (the real
//! binary).

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_traffic-control");

fn fixture(rel: &str) -> String {
    format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn analyze_exits_1_on_errors_and_prints_one_line_per_problem() {
    let out = Command::new(BIN)
        .args(["analyze", &fixture("tests/fixtures/manifests/bookinfo")])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<_> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0]
        .starts_with("TM1015 warning VirtualService/default/reviews spec.http[0].fault.abort.percent: "));
    assert!(
        lines[1].starts_with("TM1001 error VirtualService/default/reviews spec.http[1].match[0].uri.regex: ")
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 Istio objects: 1 errors, 1 warnings"));
}

#[test]
fn analyze_exits_0_on_the_classic_examples_which_only_warn() {
    let out = Command::new(BIN)
        .args(["analyze", &fixture("istio/tests/fixtures/bookinfo")])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.lines().all(|l| l.starts_with("TM1015 warning ")),
        "{stdout}"
    );
    assert!(stdout
        .contains("DestinationRule/default/httpbin spec.trafficPolicy.outlierDetection.consecutiveErrors"));
}

#[test]
fn analyze_of_a_missing_file_fails_with_its_name() {
    let out = Command::new(BIN)
        .args(["analyze", "/nonexistent/x.yaml"])
        .output()
        .expect("runs");
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.yaml"));
}

#[test]
fn config_reads_a_directory_of_manifests() {
    let out = Command::new(BIN)
        .args([
            "config",
            "--model",
            &fixture("tests/fixtures/manifests/bookinfo"),
            "--node-id",
            "reviews-v1-7f9c-abcde.default",
            "--type",
            "cluster",
        ])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("9080|default|reviews"), "{stdout}");
}

#[test]
fn config_still_reads_a_model_file_and_several_manifest_files() {
    let out = Command::new(BIN)
        .args([
            "config",
            "--model",
            &fixture("translate/examples/bookinfo.yaml"),
            "--node-id",
            "traffic-ingress",
            "--type",
            "cluster",
        ])
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(BIN)
        .args([
            "config",
            "--node-id",
            "reviews-v1-7f9c-abcde.default",
            "--type",
            "endpoint",
            "--model",
            &fixture("tests/fixtures/manifests/bookinfo/app.yaml"),
            &fixture("tests/fixtures/manifests/bookinfo/pods.yaml"),
        ])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("172.17.0.5") && stdout.contains("172.17.0.6"),
        "{stdout}"
    );
}
