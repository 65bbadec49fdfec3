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
use std::path::{Path, PathBuf};
use std::process::Command;

use common::proxyless::{backend, bootstrap, node, python, tally, Client, Proc, JS_DIR, PY_SCRIPT};
use traffic_control::grpc::WithApiListeners;
use traffic_control::grpc::PROXYLESS_PREFIX;
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
    // The client sent its ACKs before it exited; the server may still be reading them.
    server
        .wait_acked("sotw", &["listener", "cluster", "endpoint"])
        .await;
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

/// A JWT-shaped token (grpcio's `jwt_token_file` call credentials read its `exp` claim; the fake
/// reviewer does not check the signature): audience traffic-control, expiring in 2100.
const FAKE_JWT: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdWQiOlsidHJhZmZpYy1jb250cm9sIl0sImV4cCI6NDEwMjQ0NDgwMCwic3ViIjoic3lzdGVtOnNlcnZpY2VhY2NvdW50OmRlZmF1bHQ6Z3JwYy1jbGllbnQifQ.c2lnbmF0dXJl";

/// An authenticating control plane over TLS (certificate for `localhost`) serving one backend
/// `greeter-b` on `backend_ip`, which accepts [`FAKE_JWT`] as pod `default/grpc-client` (IP
/// 127.0.0.1); the CA and the token in files of `dir`.
struct AuthServer {
    server: TestServer,
    dir: TempDir,
    ca_file: PathBuf,
    token_file: PathBuf,
    target: String,
    _backend: Proc,
}

async fn authenticating_server(py: &Path, backend_ip: &str, port: u16) -> AuthServer {
    use std::collections::{BTreeMap, HashMap};
    use traffic_xds_auth::review::{POD_NAME_EXTRA, POD_UID_EXTRA};
    use traffic_xds_auth::{Authenticator, FakeReviewer, Identity, PodFacts, Policy, StaticPods};

    let backend_port = free_port();
    let backend = backend(py, backend_ip, backend_port, "greeter-b");
    let yaml = format!(
        "services:\n- name: greeter\n  clusterIPs: [127.0.10.2]\n  ports: [{{name: grpc, port: {port}, targetPort: {backend_port}}}]\n  selector: {{app: greeter}}\n  labels: {{traffic.port.{port}: http}}\npods:\n- {{name: greeter-b, ip: {backend_ip}, labels: {{app: greeter}}}}\n"
    );
    let model = MeshModel::from_yaml_str(&yaml).expect("model");
    let t = translate(
        &model,
        &Options {
            stats_port: None,
            ..Options::default()
        },
    );
    let reviewer = FakeReviewer::default();
    let extra = BTreeMap::from([
        (POD_NAME_EXTRA.to_string(), vec!["grpc-client".to_string()]),
        (POD_UID_EXTRA.to_string(), vec!["uid-grpc-client".to_string()]),
    ]);
    reviewer.accept(
        FAKE_JWT,
        Identity::from_user("system:serviceaccount:default:grpc-client", &extra, None).expect("identity"),
    );
    let pods = StaticPods(HashMap::from([(
        ("default".into(), "grpc-client".into()),
        PodFacts {
            uid: "uid-grpc-client".into(),
            ip: Some("127.0.0.1".parse().expect("ip")),
        },
    )]));
    let auth = Authenticator::new(
        Arc::new(reviewer),
        Arc::new(pods),
        Policy {
            gateway_service_accounts: vec![],
            check_peer: true,
        },
    );
    let ca = traffic_control::xds_tls::Ca::generate().expect("ca");
    let cert = ca.issue_server(&["localhost".to_string()]).expect("cert");
    let server = TestServer::start_full(
        "127.0.0.1:0",
        Arc::new(WithApiListeners::new(Arc::new(t.snapshot))),
        Some(Arc::new(auth)),
        Some((cert.cert_pem, cert.key_pem)),
    )
    .await;
    let dir = TempDir::new("grpc-auth");
    let ca_file = dir.0.join("ca.crt");
    std::fs::write(&ca_file, &ca.cert_pem).expect("ca file");
    let token_file = dir.0.join("token");
    std::fs::write(&token_file, FAKE_JWT).expect("token file");
    AuthServer {
        server,
        dir,
        ca_file,
        token_file,
        target: format!("xds:///greeter.default.svc.cluster.local:{port}"),
        _backend: backend,
    }
}

/// Against an authenticating control plane over TLS: grpcio presents the token from a file as
/// call credentials (gRFC A97 `call_creds: jwt_token_file`, behind
/// `GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS=true`) on a TLS channel verified with the published
/// CA (gRFC A65 `channel_creds: tls`), and is served as `proxyless~grpc-client.default`; without
/// the token it is refused and gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_presents_a_token_file_over_tls_to_an_authenticating_server() {
    let Some(py) = python() else { return };
    let a = authenticating_server(&py, "127.0.30.2", 50052).await;
    let bootstrap = |with_token: bool| {
        let call_creds = if with_token {
            format!(
                r#", "call_creds": [{{"type": "jwt_token_file", "config": {{"jwt_token_file": "{}"}}}}]"#,
                a.token_file.display()
            )
        } else {
            String::new()
        };
        let path = a.dir.0.join(format!("bootstrap-{with_token}.json"));
        std::fs::write(
            &path,
            format!(
                r#"{{"xds_servers": [{{"server_uri": "localhost:{}", "channel_creds": [{{"type": "tls", "config": {{"ca_certificate_file": "{}"}}}}]{call_creds}, "server_features": ["xds_v3"]}}],
"node": {{"id": "{PROXYLESS_PREFIX}grpc-client.default", "cluster": "test", "locality": {{}}}}}}"#,
                a.server.addr.port(),
                a.ca_file.display()
            ),
        )
        .expect("bootstrap");
        path
    };
    // With the experiment on, grpcio requires `call_creds` in every server entry.
    let run = |with_token: bool, count: &str, py: PathBuf, target: String| {
        let count = count.to_string();
        let bootstrap = bootstrap(with_token);
        tokio::task::spawn_blocking(move || {
            let mut c = Command::new(&py);
            c.args([PY_SCRIPT, "call", &target, &count])
                .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
                .env("GRPC_CALL_TIMEOUT_S", "8");
            if with_token {
                c.env("GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS", "true");
            }
            c.output().expect("run client")
        })
    };
    let server = &a.server;
    let out = run(true, "3", py.clone(), a.target.clone()).await.expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "grpc client with a token failed: {}\nstderr:\n{}\nserver metrics:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.metrics(),
    );
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["greeter-b"; 3]);
    assert!(
        server.metric("xds_auth_admissions_total") >= 1.0,
        "{}",
        server.metrics()
    );

    let out = run(false, "1", py, a.target.clone()).await.expect("join");
    assert!(
        !out.status.success(),
        "a client without a token must get nothing; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server
        .wait_metric("xds_auth_refusals_total{reason=\"no_token\"}", |v| v >= 1.0)
        .await;
}

/// @grpc/grpc-js-xds (1.14.1) against the same server. Its bootstrap knows only `insecure` and
/// `google_default` channel creds (no `tls`, no `call_creds`), so the client uses
/// `google_default`: TLS verified with gRPC's default roots, pointed at the control plane's CA by
/// `GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`, and Google application-default credentials, whose bearer
/// token `client.js` serves from its token file on a loopback GCE-style metadata endpoint
/// (`GCE_METADATA_HOST`). With the pod's token it is served and its RPCs work; with a token the
/// reviewer rejects it is refused (`invalid_token`) and its RPC fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_js_xds_presents_a_token_over_tls_to_an_authenticating_server() {
    let Some(py) = python() else { return };
    let Some(node) = node() else { return };
    let a = authenticating_server(&py, "127.0.30.3", 50053).await;
    let bootstrap = a.dir.0.join("bootstrap-js.json");
    std::fs::write(
        &bootstrap,
        format!(
            r#"{{"xds_servers": [{{"server_uri": "localhost:{}", "channel_creds": [{{"type": "google_default"}}], "server_features": ["xds_v3"]}}],
"node": {{"id": "{PROXYLESS_PREFIX}grpc-client.default", "cluster": "test", "locality": {{}}}}}}"#,
            a.server.addr.port(),
        ),
    )
    .expect("bootstrap");
    let run = |token_file: PathBuf, count: &str| {
        let (node, bootstrap, ca, target, count) = (
            node.clone(),
            bootstrap.clone(),
            a.ca_file.clone(),
            a.target.clone(),
            count.to_string(),
        );
        tokio::task::spawn_blocking(move || {
            Command::new(&node)
                .current_dir(JS_DIR)
                .args(["client.js", &target, &count])
                .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
                .env("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", &ca)
                .env("TRAFFIC_XDS_TOKEN_FILE", &token_file)
                .env("TRAFFIC_CALL_TIMEOUT_MS", "8000")
                .output()
                .expect("run client")
        })
    };
    let server = &a.server;
    let out = run(a.token_file.clone(), "3").await.expect("join");
    assert!(
        out.status.success(),
        "grpc-js-xds with a token failed: {}\nstderr:\n{}\nserver metrics:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.metrics(),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().collect::<Vec<_>>(),
        ["greeter-b"; 3]
    );
    assert!(
        server.metric("xds_auth_admissions_total") >= 1.0,
        "{}",
        server.metrics()
    );
    assert_eq!(
        server.metric("xds_auth_refusals_total{reason=\"invalid_token\"}"),
        0.0
    );

    let wrong = a.dir.0.join("wrong-token");
    std::fs::write(&wrong, FAKE_JWT.replace("c2lnbmF0dXJl", "Zm9yZ2Vk")).expect("token file");
    let out = run(wrong, "1").await.expect("join");
    assert!(
        !out.status.success(),
        "a client with a rejected token must get nothing; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server
        .wait_metric("xds_auth_refusals_total{reason=\"invalid_token\"}", |v| v >= 1.0)
        .await;
}
