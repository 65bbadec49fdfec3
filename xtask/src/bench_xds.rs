//! `cargo xtask bench xds`: the xDS scale benchmark. Builds traffic-control's binaries in release
//! mode and runs `xds-bench`, which serves through a real `traffic-control serve` process (1,000 services, 10,000 endpoints, 1,000 concurrent ADS
//! streams by default) and prints: full rebuild time, time from one endpoint change to every
//! stream having it (p50/p99), and RSS. Targets: p99 < 100 ms, RSS < 150 MB.
use std::process::Command;

use crate::cmd;

#[derive(clap::Args, Debug)]
pub struct Options {
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    pods_per_service: usize,
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    #[arg(long, default_value_t = 10)]
    changes: usize,
    /// Delta ADS streams instead of state-of-the-world.
    #[arg(long)]
    delta: bool,
}

pub fn run(o: Options) -> anyhow::Result<()> {
    // The bench starts the real `traffic-control` binary next to itself.
    cmd::run(Command::new("cargo").current_dir(cmd::workspace_root()).args([
        "build",
        "--release",
        "-p",
        "traffic-control",
        "--bins",
    ]))?;
    let mut c = Command::new("cargo");
    c.current_dir(cmd::workspace_root())
        .args([
            "run",
            "--release",
            "-p",
            "traffic-control",
            "--bin",
            "xds-bench",
            "--",
        ])
        .args(["--services", &o.services.to_string()])
        .args(["--pods-per-service", &o.pods_per_service.to_string()])
        .args(["--streams", &o.streams.to_string()])
        .args(["--changes", &o.changes.to_string()]);
    if o.delta {
        c.arg("--delta");
    }
    cmd::run(&mut c)
}
