//! Proxyless gRPC clients as real processes: grpcio (Python, `grpc_xds.py`) and
//! @grpc/grpc-js-xds (Node, `grpc_js/client.js`), a Python gRPC backend, and the xDS bootstrap
//! they read. A missing interpreter or package skips the test locally and fails it under CI=true.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use traffic_control::grpc::PROXYLESS_PREFIX;

pub const PY_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc_xds.py");
pub const JS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc_js");

fn skip(reason: String) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

/// `$PYTHON`, else `<repo>/.venv/bin/python`, if it imports grpc.
pub fn python() -> Option<PathBuf> {
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
    skip(format!(
        "no Python with grpcio at {} (set PYTHON or run `cargo xtask setup`)",
        path.display()
    ));
    None
}

/// `node` (or `$NODE`) when @grpc/grpc-js-xds is installed in `grpc_js/node_modules`.
pub fn node() -> Option<PathBuf> {
    let node = std::env::var_os("NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "node".into());
    let ok = Command::new(&node)
        .current_dir(JS_DIR)
        .args(["-e", "require('@grpc/grpc-js-xds')"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        return Some(node);
    }
    skip(format!(
        "no node with @grpc/grpc-js-xds in {JS_DIR}/node_modules (run `cargo xtask setup`)"
    ));
    None
}

/// A child process killed (and reaped) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

/// A Python gRPC backend on `ip:port` answering `/test.Echo/Say` with `name`; returns once it
/// listens.
pub fn backend(py: &Path, ip: &str, port: u16, name: &str) -> Proc {
    let mut p = Proc(
        Command::new(py)
            .args([PY_SCRIPT, "serve", ip, &port.to_string(), name])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start backend"),
    );
    let mut line = String::new();
    BufReader::new(p.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "ready", "backend {name}");
    p
}

/// Writes a gRPC xDS bootstrap for node `proxyless~<pod>.default` pointing at `server`.
pub fn bootstrap(dir: &Path, server: SocketAddr, pod: &str) -> PathBuf {
    let path = dir.join(format!("bootstrap-{pod}.json"));
    std::fs::write(
        &path,
        format!(
            r#"{{"xds_servers": [{{"server_uri": "{server}", "channel_creds": [{{"type": "insecure"}}], "server_features": ["xds_v3"]}}],
"node": {{"id": "{PROXYLESS_PREFIX}{pod}.default", "cluster": "test", "locality": {{}}}}}}"#
        ),
    )
    .expect("bootstrap");
    path
}

/// Which client makes the calls.
#[derive(Clone, Copy, Debug)]
pub enum Client {
    Grpcio,
    GrpcJsXds,
}

impl Client {
    /// The interpreter, or None (skipped) when it or its gRPC package is missing.
    pub fn interpreter(self) -> Option<PathBuf> {
        match self {
            Client::Grpcio => python(),
            Client::GrpcJsXds => node(),
        }
    }

    /// Makes `count` sequential RPCs to `target` through the bootstrap; the finished process.
    pub fn call(self, interpreter: &Path, bootstrap: &Path, target: &str, count: usize) -> Output {
        self.call_with_metadata(interpreter, bootstrap, target, count, None)
    }

    /// [`Client::call`], every RPC carrying the request header `metadata` (`name`, `value`).
    pub fn call_with_metadata(
        self,
        interpreter: &Path,
        bootstrap: &Path,
        target: &str,
        count: usize,
        metadata: Option<(&str, &str)>,
    ) -> Output {
        let mut cmd = Command::new(interpreter);
        if let Some((name, value)) = metadata {
            cmd.env("GRPC_CALL_METADATA", format!("{name}={value}"));
        }
        match self {
            Client::Grpcio => cmd.args([PY_SCRIPT, "call", target, &count.to_string()]),
            Client::GrpcJsXds => cmd
                .current_dir(JS_DIR)
                .args(["client.js", target, &count.to_string()]),
        };
        cmd.env("GRPC_XDS_BOOTSTRAP", bootstrap)
            .output()
            .expect("run client")
    }
}

/// Reply -> how many times it came back.
pub fn tally(stdout: &[u8]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in String::from_utf8_lossy(stdout).lines() {
        *counts.entry(line.trim().to_string()).or_default() += 1;
    }
    counts
}
