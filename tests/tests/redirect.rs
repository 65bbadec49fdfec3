//! The redirect suite: real pods (netns + cgroup), a real proxy, real clients.
#![expect(clippy::unwrap_used, reason = "a test fails loudly")]
use traffic_tests::{require_privileged, TestPod};

#[test]
fn without_redirect_a_pod_reaches_every_service_address_directly() {
    if !require_privileged() {
        return;
    }
    let pod = TestPod::new("tt").unwrap();
    let args: Vec<String> = ["tcp", "10.96.0.10:9080", "10.96.3.7:8080", "[fd00:96::10]:9080"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = pod.run_client(&args).unwrap();
    assert!(out.success, "{out:?}");
    let res = out.client_results();
    assert_eq!(res.len(), 3);
    assert!(res.iter().all(|r| r.went_direct()), "{res:?}");
    let out = pod
        .run_client(&[
            "udp".into(),
            "10.96.0.10:9053".into(),
            "[fd00:96::10]:9053".into(),
        ])
        .unwrap();
    assert!(out.success, "{out:?}");
    let _proxy = pod.start_proxy(15001).unwrap();
}
