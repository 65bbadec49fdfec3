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
