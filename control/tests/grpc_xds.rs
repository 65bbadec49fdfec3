//! The strict second client: grpcio's xDS resolver (Python, real process) resolves
//! `xds:///greeter.default.svc.cluster.local:<port>` through our ADS server (LDS API listener ->
//! CDS -> EDS) and reaches a Python gRPC backend on loopback. Python is `$PYTHON`, else
//! `<repo>/.venv/bin/python` with grpcio; missing -> skip locally, fail under CI=true.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use common::ads::TestServer;
use common::envoy::{free_port, TempDir};
use traffic_control::grpc::{WithApiListeners, PROXYLESS_PREFIX};
use traffic_translate::model::MeshModel;
use traffic_translate::translate::{translate, Options};

fn python() -> Option<PathBuf> {
    let path = match std::env::var_os("PYTHON") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"),
    };
    let ok = Command::new(&path)
        .args(["-c", "import grpc"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        return Some(path);
    }
    let reason = format!(
        "no Python with grpcio at {} (set PYTHON or run `cargo xtask setup`)",
        path.display()
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{reason}");
    }
    eprintln!("SKIPPED: {reason}");
    None
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc_xds.py");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_resolves_an_xds_target_through_our_server_and_reaches_the_backend() {
    let Some(py) = python() else { return };
    let backend_port = free_port();
    let mut backend = Proc(
        Command::new(&py)
            .args([
                SCRIPT,
                "serve",
                "127.0.30.1",
                &backend_port.to_string(),
                "greeter-a",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start backend"),
    );
    let mut line = String::new();
    BufReader::new(backend.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "ready");

    let port = 50051;
    let yaml = format!(
        "services:\n- name: greeter\n  clusterIPs: [127.0.10.1]\n  ports: [{{name: grpc, port: {port}, targetPort: {backend_port}}}]\n  selector: {{app: greeter}}\n  labels: {{traffic.port.{port}: http}}\npods:\n- {{name: greeter-a, ip: 127.0.30.1, labels: {{app: greeter}}}}\n"
    );
    let model = MeshModel::from_yaml_str(&yaml).expect("model");
    let t = translate(
        &model,
        &Options {
            stats_port: None,
            ..Options::default()
        },
    );
    let server = TestServer::start_with(Arc::new(WithApiListeners::new(Arc::new(t.snapshot)))).await;

    let dir = TempDir::new("grpc");
    let bootstrap = dir.0.join("bootstrap.json");
    std::fs::write(
        &bootstrap,
        format!(
            r#"{{"xds_servers": [{{"server_uri": "{}", "channel_creds": [{{"type": "insecure"}}], "server_features": ["xds_v3"]}}],
"node": {{"id": "{PROXYLESS_PREFIX}grpc-client.default", "cluster": "test", "locality": {{}}}}}}"#,
            server.addr
        ),
    )
    .expect("bootstrap");
    let target = format!("xds:///greeter.default.svc.cluster.local:{port}");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&py)
            .args([SCRIPT, "call", &target, "3"])
            .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
            .output()
            .expect("run client")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "grpc client failed: {}\nstderr:\n{}\nserver metrics:\n{}\nrejections: {:?}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.metrics(),
        server.rejections.0.lock().expect("lock")
    );
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["greeter-a"; 3]);
    for t in ["listener", "cluster", "endpoint"] {
        assert!(
            server.metric(&format!("xds_acks_total{{mode=\"sotw\",type=\"{t}\"}}")) >= 1.0,
            "{t} not ACKed by gRPC"
        );
    }
    assert!(
        !server.metrics().contains("xds_nacks_total{"),
        "gRPC NACKed:\n{:?}",
        server.rejections.0.lock().expect("lock")
    );
}

/// A JWT-shaped token (grpcio's `jwt_token_file` call credentials read its `exp` claim; the fake
/// reviewer does not check the signature): audience traffic-control, expiring in 2100.
const FAKE_JWT: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdWQiOlsidHJhZmZpYy1jb250cm9sIl0sImV4cCI6NDEwMjQ0NDgwMCwic3ViIjoic3lzdGVtOnNlcnZpY2VhY2NvdW50OmRlZmF1bHQ6Z3JwYy1jbGllbnQifQ.c2lnbmF0dXJl";

/// Against an authenticating control plane over TLS: grpcio presents the token from a file as
/// call credentials (gRFC A97 `call_creds: jwt_token_file`, behind
/// `GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS=true`) on a TLS channel verified with the published
/// CA (gRFC A65 `channel_creds: tls`), and is served as `proxyless~grpc-client.default`; without
/// the token it is refused and gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_presents_a_token_file_over_tls_to_an_authenticating_server() {
    use std::collections::{BTreeMap, HashMap};
    use traffic_xds_auth::review::{POD_NAME_EXTRA, POD_UID_EXTRA};
    use traffic_xds_auth::{Authenticator, FakeReviewer, Identity, PodFacts, Policy, StaticPods};

    let Some(py) = python() else { return };
    let backend_port = free_port();
    let mut backend = Proc(
        Command::new(&py)
            .args([
                SCRIPT,
                "serve",
                "127.0.30.2",
                &backend_port.to_string(),
                "greeter-b",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start backend"),
    );
    let mut line = String::new();
    BufReader::new(backend.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "ready");

    let port = 50052;
    let yaml = format!(
        "services:\n- name: greeter\n  clusterIPs: [127.0.10.2]\n  ports: [{{name: grpc, port: {port}, targetPort: {backend_port}}}]\n  selector: {{app: greeter}}\n  labels: {{traffic.port.{port}: http}}\npods:\n- {{name: greeter-b, ip: 127.0.30.2, labels: {{app: greeter}}}}\n"
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
    let bootstrap = |with_token: bool| {
        let call_creds = if with_token {
            format!(
                r#", "call_creds": [{{"type": "jwt_token_file", "config": {{"jwt_token_file": "{}"}}}}]"#,
                token_file.display()
            )
        } else {
            String::new()
        };
        let path = dir.0.join(format!("bootstrap-{with_token}.json"));
        std::fs::write(
            &path,
            format!(
                r#"{{"xds_servers": [{{"server_uri": "localhost:{}", "channel_creds": [{{"type": "tls", "config": {{"ca_certificate_file": "{}"}}}}]{call_creds}, "server_features": ["xds_v3"]}}],
"node": {{"id": "{PROXYLESS_PREFIX}grpc-client.default", "cluster": "test", "locality": {{}}}}}}"#,
                server.addr.port(),
                ca_file.display()
            ),
        )
        .expect("bootstrap");
        path
    };
    let target = format!("xds:///greeter.default.svc.cluster.local:{port}");
    // With the experiment on, grpcio requires `call_creds` in every server entry.
    let run = |with_token: bool, count: &str, py: PathBuf, target: String| {
        let count = count.to_string();
        let bootstrap = bootstrap(with_token);
        tokio::task::spawn_blocking(move || {
            let mut c = Command::new(&py);
            c.args([SCRIPT, "call", &target, &count])
                .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
                .env("GRPC_CALL_TIMEOUT_S", "8");
            if with_token {
                c.env("GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS", "true");
            }
            c.output().expect("run client")
        })
    };
    let out = run(true, "3", py.clone(), target.clone()).await.expect("join");
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

    let out = run(false, "1", py, target).await.expect("join");
    assert!(!out.status.success(), "a client without a token must get nothing");
    assert!(
        server.metric("xds_auth_refusals_total{reason=\"no_token\"}") >= 1.0,
        "the refusal is counted:\n{}\nclient stderr:\n{}",
        server.metrics(),
        String::from_utf8_lossy(&out.stderr)
    );
}
