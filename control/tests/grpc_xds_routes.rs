//! Istio routing for proxyless gRPC clients, from the same translation as Envoy's: a
//! VirtualService sends `end-user: jason` to subset v2 and splits everyone else 75/25 between v1
//! and v2. grpcio and @grpc/grpc-js-xds resolve `xds:///greeter.default.svc.cluster.local:<port>`
//! (LDS API listener -> RDS of the sidecar's route configuration -> CDS of the subset clusters ->
//! EDS) and call Python gRPC backends on loopback. Clients as in `grpc_xds.rs` (missing -> skip
//! locally, fail under CI=true).

mod common;

use std::sync::Arc;

use common::ads::TestServer;
use common::envoy::{free_port, TempDir};
use common::proxyless::{backend, bootstrap, tally, Client};
use traffic_control::grpc::WithApiListeners;
use traffic_translate::model::MeshModel;
use traffic_translate::translate::{translate, Options};

/// Every label a route configuration carries is on the Service too (the rate limit is a virtual
/// host filter config gRPC does not know: it must be optional for gRPC, or it NACKs the routes).
fn model(port: u16, backend_port: u16, ip_base: u8) -> String {
    format!(
        r#"services:
- name: greeter
  clusterIPs: [127.0.10.{ip_base}]
  ports: [{{name: grpc, port: {port}, targetPort: {backend_port}}}]
  selector: {{app: greeter}}
  labels:
    traffic.port.{port}: http
    traffic.rate.limit: "10000"
    traffic.request.timeout: "20s"
    traffic.retries.5xx: "2"
    traffic.tracing.enabled: "true"
    traffic.tracing.sampling: "10"
    traffic.fault.delay.percentage: "1"
    traffic.fault.delay.time: "1ms"
pods:
- {{name: greeter-v1, ip: 127.0.{ip_base}.1, labels: {{app: greeter, version: v1}}}}
- {{name: greeter-v2, ip: 127.0.{ip_base}.2, labels: {{app: greeter, version: v2}}}}
istio:
  destinationRules:
  - metadata: {{name: greeter}}
    spec:
      host: greeter
      subsets:
      - {{name: v1, labels: {{version: v1}}}}
      - {{name: v2, labels: {{version: v2}}}}
  virtualServices:
  - metadata: {{name: greeter}}
    spec:
      hosts: [greeter]
      http:
      - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
        route: [{{destination: {{host: greeter, subset: v2}}}}]
      - route:
        - {{destination: {{host: greeter, subset: v1}}, weight: 75}}
        - {{destination: {{host: greeter, subset: v2}}, weight: 25}}
"#
    )
}

async fn routes_apply(client: Client, ip_base: u8) {
    let Some(py) = Client::Grpcio.interpreter() else {
        return;
    };
    let Some(interpreter) = client.interpreter() else {
        return;
    };
    let backend_port = free_port();
    let _backends: Vec<_> = ["v1", "v2"]
        .iter()
        .enumerate()
        .map(|(i, v)| {
            backend(
                &py,
                &format!("127.0.{ip_base}.{}", i + 1),
                backend_port,
                &format!("greeter-{v}"),
            )
        })
        .collect();
    let port = 50060 + u16::from(ip_base % 10);
    let m = MeshModel::from_yaml_str(&model(port, backend_port, ip_base)).expect("model");
    let t = translate(
        &m,
        &Options {
            stats_port: None,
            ..Options::default()
        },
    );
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let server = TestServer::start_with(Arc::new(WithApiListeners::new(Arc::new(t.snapshot)))).await;
    let dir = TempDir::new("grpc-routes");
    let boot = bootstrap(&dir.0, server.addr, "grpc-client");
    let target = format!("xds:///greeter.default.svc.cluster.local:{port}");
    let run = |metadata: Option<(&'static str, &'static str)>, count: usize| {
        let (interpreter, boot, target) = (interpreter.clone(), boot.clone(), target.clone());
        tokio::task::spawn_blocking(move || {
            client.call_with_metadata(&interpreter, &boot, &target, count, metadata)
        })
    };
    let check = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{client:?} failed: {}\nstderr:\n{}\nserver metrics:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            server.metrics()
        );
        tally(&out.stdout)
    };
    let jason = check(&run(Some(("end-user", "jason")), 50).await.expect("join"));
    assert_eq!(
        jason.get("greeter-v2"),
        Some(&50),
        "{client:?} jason -> v2: {jason:?}"
    );
    let n = 1000;
    let others = check(&run(Some(("end-user", "mallory")), n).await.expect("join"));
    let v1 = *others.get("greeter-v1").unwrap_or(&0);
    let share = v1 as f64 / n as f64;
    println!(
        "{client:?}: jason {jason:?}; others over {n} RPCs {others:?} ({:.1} % v1)",
        share * 100.0
    );
    assert_eq!(others.values().sum::<usize>(), n, "{others:?}");
    assert!((share - 0.75).abs() <= 0.05, "{client:?} 75/25: {others:?}");
    // The client sent its ACKs before it exited; the server may still be reading them.
    server
        .wait_acked("sotw", &["listener", "route", "cluster", "endpoint"])
        .await;
    assert!(
        !server.metrics().contains("xds_nacks_total{"),
        "{client:?} NACKed:\n{:?}",
        server.rejections.0.lock().expect("lock")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_follows_a_virtual_service_header_match_and_75_25_subset_split() {
    routes_apply(Client::Grpcio, 41).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_js_xds_follows_a_virtual_service_header_match_and_75_25_subset_split() {
    routes_apply(Client::GrpcJsXds, 42).await;
}
