//! `cargo xtask demo`: the local demo on this host, no cluster needed (run as root).
//!
//! Builds the eBPF object, `traffic-control` and the demo binaries (debug: the quickest to a first
//! output), then execs `demo-run` (tests/src/bin/demo-run.rs, the logic is `traffic_tests::demo`):
//! pods as network namespaces + cgroups, a real Envoy sidecar fed by `traffic-control serve
//! --model`, the eBPF redirect, an 80/20 split, fault labels, and the redirect switched off.
//! `demo-run` is a separate binary because it must embed the eBPF object built just before.
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

use crate::{build_ebpf, cmd, setup};

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Run every step without pausing; exit non-zero if the split is off or a step fails (CI).
    #[arg(long)]
    pub once: bool,
    /// Requests per measurement.
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Concurrent connections of the client.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Allowed deviation from the weights, in percentage points.
    #[arg(long, default_value_t = 5.0)]
    pub tolerance: f64,
    /// The mesh model (default: xtask/demo/model.yaml). The demo edits a copy.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Envoy binary (default: $ENVOY_BIN, else the venv of `cargo xtask setup`).
    #[arg(long, env = "ENVOY_BIN")]
    pub envoy: Option<PathBuf>,
    /// Run Envoy as root instead of uid 1337.
    #[arg(long)]
    pub envoy_as_root: bool,
    /// Skip building (use what is already built).
    #[arg(long)]
    pub no_build: bool,
}

pub fn run(o: Options) -> anyhow::Result<()> {
    anyhow::ensure!(
        cmd::is_root(),
        "the demo creates network namespaces and cgroups and attaches BPF: run it as root (sudo)"
    );
    let root = cmd::workspace_root();
    if !o.no_build && o.envoy.is_none() {
        // One command on a fresh machine: install what the demo needs (idempotent, quick when done).
        setup::run(setup::Options::default())?;
    }
    let envoy = o
        .envoy
        .clone()
        .unwrap_or_else(|| setup::venv_dir().join("bin/envoy"));
    anyhow::ensure!(
        envoy.is_file(),
        "Envoy not found at {}: run `cargo xtask setup` or set ENVOY_BIN",
        envoy.display()
    );
    let cargo = cmd::cargo();
    if !o.no_build {
        eprintln!("demo: building the eBPF object, traffic-control and the demo binaries...");
        build_ebpf::run(build_ebpf::Options::default())?;
        cmd::run(Command::new(&cargo).current_dir(&root).args([
            "build",
            "--quiet",
            "-p",
            "traffic-control",
            "--bin",
            "traffic-control",
            "-p",
            "traffic-tests",
            "--bin",
            "demo-run",
            "--bin",
            "demo-http",
        ]))?;
    }
    let bin_dir = cmd::target_dir().join("debug");
    let model = o
        .model
        .clone()
        .unwrap_or_else(|| root.join("xtask/demo/model.yaml"));
    let mut demo = Command::new(bin_dir.join("demo-run"));
    demo.env(traffic_tests::bins::BIN_DIR_ENV, &bin_dir)
        .arg("--model")
        .arg(&model)
        .arg("--envoy")
        .arg(&envoy)
        .arg("--traffic-control")
        .arg(bin_dir.join("traffic-control"))
        .args(["--requests", &o.requests.to_string()])
        .args(["--concurrency", &o.concurrency.to_string()])
        .args(["--tolerance", &o.tolerance.to_string()]);
    if o.once {
        demo.arg("--once");
    }
    if o.envoy_as_root {
        demo.arg("--envoy-as-root");
    }
    // exec: Ctrl-C then reaches the demo alone, which cleans up before exiting.
    let err = demo.exec();
    Err(err).with_context(|| format!("exec {}", bin_dir.join("demo-run").display()))
}
