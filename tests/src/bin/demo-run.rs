//! Runs the local demo (`traffic_tests::demo`); `cargo xtask demo` builds everything and execs this.
//!
//! Usage: `demo-run --model <file> --envoy <bin> --traffic-control <bin> [--requests N]
//! [--concurrency N] [--tolerance PCT] [--once] [--envoy-as-root]`
//! Exits 1 when a step fails or, with `--once`, when a check is off (split outside the tolerance...).
use std::path::PathBuf;

use anyhow::Context;
use traffic_tests::demo::{self, Fault, Options};

fn main() {
    match run() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            // Every guard has run by now: namespaces, cgroups, processes and pins are gone.
            eprintln!("\ndemo failed: {e:#}\n(everything the demo created has been removed)");
            std::process::exit(1);
        }
    }
}

fn run() -> anyhow::Result<bool> {
    let mut o = Options {
        model: PathBuf::new(),
        envoy: PathBuf::new(),
        traffic_control: PathBuf::new(),
        requests: 200,
        concurrency: 4,
        tolerance_pct: 5.0,
        fault: Fault::default(),
        once: false,
        envoy_as_proxy_uid: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => o.model = value()?.into(),
            "--envoy" => o.envoy = value()?.into(),
            "--traffic-control" => o.traffic_control = value()?.into(),
            "--requests" => o.requests = value()?.parse().context("--requests")?,
            "--concurrency" => o.concurrency = value()?.parse().context("--concurrency")?,
            "--tolerance" => o.tolerance_pct = value()?.parse().context("--tolerance")?,
            "--once" => o.once = true,
            "--envoy-as-root" => o.envoy_as_proxy_uid = false,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    demo::install_signal_handlers()?;
    let report = demo::run(&o)?;
    if report.problems.is_empty() {
        println!("\ndemo OK");
        Ok(true)
    } else {
        println!("\ndemo found problems:");
        for p in &report.problems {
            println!("  - {p}");
        }
        // Interactive runs are for watching: only --once turns a check into an exit status.
        Ok(!o.once)
    }
}
