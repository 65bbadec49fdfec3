//! Proxyless gRPC clients as real processes against our ADS server: grpcio's xDS resolver
//! (Python) and @grpc/grpc-js-xds (Node) resolve `xds:///greeter.default.svc.cluster.local:<port>`
//! (LDS API listener -> CDS -> EDS) and reach Python gRPC backends on loopback. Python is
//! `$PYTHON`, else `<repo>/.venv/bin/python` with grpcio; Node is `node` with the packages
//! `cargo xtask setup` installs in `tests/grpc_js`; missing -> skip locally, fail under CI=true.
//!
//! Endpoint weights must hold for them as for Envoy: gRPC's round_robin ignores
//! `LbEndpoint.load_balancing_weight`, so the translator carries weights as locality weights too
//! (see `traffic_translate::translate::endpoints`); 80/20 pods must split 80/20 within ±5 %.

mod common;

use std::sync::Arc;

use common::ads::TestServer;
use common::envoy::{free_port, TempDir};
use common::proxyless::{backend, bootstrap, tally, Client};
use traffic_control::grpc::WithApiListeners;
use traffic_translate::model::MeshModel;
use traffic_translate::translate::{translate, Options};

async fn serve(yaml: &str) -> TestServer {
    let model = MeshModel::from_yaml_str(yaml).expect("model");
    let t = translate(
        &model,
        &Options {
            stats_port: None,
            ..Options::default()
        },
    );
    TestServer::start_with(Arc::new(WithApiListeners::new(Arc::new(t.snapshot)))).await
}

/// Runs `client` for `count` RPCs; asserts it succeeded and that gRPC ACKed and never NACKed.
async fn call(client: Client, server: &TestServer, dir: &TempDir, port: u16, count: usize) -> Vec<u8> {
    let interpreter = client.interpreter().expect("checked by the caller");
    let bootstrap = bootstrap(&dir.0, server.addr, "grpc-client");
    let target = format!("xds:///greeter.default.svc.cluster.local:{port}");
    let out = tokio::task::spawn_blocking(move || client.call(&interpreter, &bootstrap, &target, count))
        .await
        .expect("join");
    assert!(
        out.status.success(),
        "{client:?} failed: {}\nstderr:\n{}\nserver metrics:\n{}\nrejections: {:?}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.metrics(),
        server.rejections.0.lock().expect("lock")
    );
    for t in ["listener", "cluster", "endpoint"] {
        assert!(
            server.metric(&format!("xds_acks_total{{mode=\"sotw\",type=\"{t}\"}}")) >= 1.0,
            "{t} not ACKed by {client:?}"
        );
    }
    assert!(
        !server.metrics().contains("xds_nacks_total{"),
        "{client:?} NACKed:\n{:?}",
        server.rejections.0.lock().expect("lock")
    );
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_resolves_an_xds_target_through_our_server_and_reaches_the_backend() {
    let Some(py) = Client::Grpcio.interpreter() else {
        return;
    };
    let backend_port = free_port();
    let _backend = backend(&py, "127.0.30.1", backend_port, "greeter-a");
    let port = 50051;
    let server = serve(&format!(
        "services:\n- name: greeter\n  clusterIPs: [127.0.10.1]\n  ports: [{{name: grpc, port: {port}, targetPort: {backend_port}}}]\n  selector: {{app: greeter}}\n  labels: {{traffic.port.{port}: http}}\npods:\n- {{name: greeter-a, ip: 127.0.30.1, labels: {{app: greeter}}}}\n"
    ))
    .await;
    let dir = TempDir::new("grpc");
    let out = call(Client::Grpcio, &server, &dir, port, 3).await;
    let stdout = String::from_utf8_lossy(&out);
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["greeter-a"; 3]);
}

/// Two pods of one Service on one node (one locality), `traffic.endpoint.weight` 80 and 20, a
/// third with weight 0: `client` must split 1,000 RPCs 80/20 within ±5 % and never reach the 0.
async fn weights_split_80_20(client: Client, ip_base: u8) {
    let Some(py) = Client::Grpcio.interpreter() else {
        return;
    };
    if client.interpreter().is_none() {
        return;
    }
    let backend_port = free_port();
    let ips: Vec<String> = (1..=3).map(|i| format!("127.0.{ip_base}.{i}")).collect();
    let _backends: Vec<_> = ["a", "b", "c"]
        .iter()
        .zip(&ips)
        .map(|(n, ip)| backend(&py, ip, backend_port, &format!("greeter-{n}")))
        .collect();
    let port = 50052;
    let server = serve(&format!(
        "services:\n- name: greeter\n  clusterIPs: [127.0.10.2]\n  ports: [{{name: grpc, port: {port}, targetPort: {backend_port}}}]\n  selector: {{app: greeter}}\n  labels: {{traffic.port.{port}: http}}\npods:\n\
         - {{name: greeter-a, ip: {}, node: n1, labels: {{app: greeter, traffic.endpoint.weight: '80'}}}}\n\
         - {{name: greeter-b, ip: {}, node: n1, labels: {{app: greeter, traffic.endpoint.weight: '20'}}}}\n\
         - {{name: greeter-c, ip: {}, node: n1, labels: {{app: greeter, traffic.endpoint.weight: '0'}}}}\n",
        ips[0], ips[1], ips[2]
    ))
    .await;
    let dir = TempDir::new("grpc-weights");
    let total = 1000;
    let counts = tally(&call(client, &server, &dir, port, total).await);
    let share = |n: &str| *counts.get(n).unwrap_or(&0) as f64 / total as f64;
    println!("{client:?} split over {total} RPCs: {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), total, "{counts:?}");
    assert!((share("greeter-a") - 0.8).abs() <= 0.05, "{client:?}: {counts:?}");
    assert!((share("greeter-b") - 0.2).abs() <= 0.05, "{client:?}: {counts:?}");
    assert_eq!(counts.get("greeter-c"), None, "weight 0 served: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_splits_80_20_endpoint_weights_80_20() {
    weights_split_80_20(Client::Grpcio, 31).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_js_xds_splits_80_20_endpoint_weights_80_20() {
    weights_split_80_20(Client::GrpcJsXds, 32).await;
}
