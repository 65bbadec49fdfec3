//! `cargo xtask test`: the one command that runs every test, privileged ones included.
//! It installs what it needs first (`setup`), builds the eBPF object, then runs the workspace tests
//! with the object required, so a missing toolchain fails loudly instead of skipping. Last, the
//! end-to-end suite (`cargo xtask e2e`) on the real single-node Kubernetes of this machine's e2e
//! kit, then the installed chart's suite (`cargo xtask e2e-install`) on the same cluster, once per
//! container runtime of the kit (`--runtimes`, default docker then containerd: the cluster is
//! brought up in that mode for each pass, and down after, or back to the mode it was running in;
//! see `cluster`); under `CI=true` a machine without the kit fails instead of skipping it. Each
//! phase's wall time is printed at the end.
use std::process::Command;

use anyhow::Context;
use clap::Parser;

use std::time::{Duration, Instant};

use traffic_tests::node_runtime::RuntimeKind;

use crate::{build_ebpf, cluster, cmd, e2e, setup};

#[derive(clap::Args, Debug, Default)]
pub struct Options {
    /// Skip apt-get in setup.
    #[arg(long)]
    pub no_apt: bool,
    /// Skip the end-to-end phase on the real single-node Kubernetes.
    #[arg(long)]
    pub no_e2e: bool,
    /// Container runtimes of the cluster to run the end-to-end phase on, in order.
    #[arg(long, value_delimiter = ',', default_value = "docker,containerd")]
    pub runtimes: Vec<String>,
    /// Extra arguments passed to `cargo test` (after `--` to the test binaries use `-- -- ...`).
    #[arg(last = true)]
    pub cargo_args: Vec<String>,
}

pub fn run(o: Options) -> anyhow::Result<()> {
    anyhow::ensure!(
        cmd::is_root(),
        "the test suite attaches eBPF programs and creates network namespaces: run it as root"
    );
    report_disk("start");
    setup::run(setup::Options { no_apt: o.no_apt })?;
    build_ebpf::run(build_ebpf::Options::default())?;
    let root = cmd::workspace_root();
    let envoy = setup::venv_dir().join("bin/envoy");
    let cargo = cmd::cargo();
    cmd::run(
        Command::new(&cargo)
            .current_dir(&root)
            .args(["fmt", "--all", "--check"]),
    )?;
    cmd::run(
        Command::new(&cargo)
            .current_dir(&root)
            .env("TRAFFIC_EBPF_REQUIRED", "1")
            .args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]),
    )?;
    cmd::run(
        Command::new(&cargo)
            .current_dir(&root)
            .env("TRAFFIC_EBPF_REQUIRED", "1")
            .env("ENVOY_BIN", &envoy)
            .env("TRAFFIC_PYTHON", setup::venv_dir().join("bin/python"))
            .args(["test", "--workspace", "--all-targets"])
            .args(&o.cargo_args),
    )?;
    crate::helm::run(crate::helm::Options {
        server_dry_run: crate::helm::ServerDryRun::Off,
    })?;
    if o.no_e2e {
        return Ok(());
    }
    report_disk("before the e2e phase");
    let runtimes = o
        .runtimes
        .iter()
        .map(|r| RuntimeKind::parse(r))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let result = end_to_end(&runtimes);
    if result.is_err() {
        report_disk("after a failed e2e phase");
    }
    result
}

/// Prints the free space where the builds, the images and the cluster write: this machine's disk is
/// shared, and a full one fails far from its cause (a pod never ready, an image not written).
fn report_disk(stage: &str) {
    eprintln!("disk space ({stage}):");
    let root = cmd::workspace_root();
    let mut df = Command::new("df");
    df.arg("-h").arg(&root).arg(std::env::temp_dir());
    if let Err(e) = df.status() {
        eprintln!("df: {e}");
    }
}

/// `cargo xtask e2e` with its defaults.
#[derive(Parser)]
struct E2eDefaults {
    #[command(flatten)]
    options: e2e::Options,
}

fn end_to_end(runtimes: &[RuntimeKind]) -> anyhow::Result<()> {
    let Some(kit) = cluster::kit() else {
        anyhow::ensure!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but the e2e kit (cluster-up.sh in ../shared/e2e or $TRAFFIC_E2E_KIT) is missing"
        );
        eprintln!("e2e: skipped: no e2e kit (cluster-up.sh) on this machine; set TRAFFIC_E2E_KIT");
        return Ok(());
    };
    let mut phases: Vec<(String, Duration, bool)> = Vec::new();
    let mut timed = |name: String, f: &mut dyn FnMut() -> anyhow::Result<()>| {
        let t0 = Instant::now();
        let r = f();
        phases.push((name, t0.elapsed(), r.is_ok()));
        r
    };
    let mut failed = Vec::new();
    {
        let mut session = cluster::Session::new(&kit);
        for (i, &rt) in runtimes.iter().enumerate() {
            if let Err(e) = timed(format!("{rt}: cluster-up"), &mut || session.up(rt)) {
                failed.push(format!("{rt}: cluster-up: {e:#}"));
                continue;
            }
            if i == 0 {
                if let Err(e) = timed(format!("{rt}: helm server dry run"), &mut || {
                    crate::helm::server_dry_run_on_cluster()
                }) {
                    failed.push(format!("helm server dry run: {e:#}"));
                }
            }
            let mut o = E2eDefaults::try_parse_from(["e2e"])?.options;
            o.runtime = Some(rt);
            // Built by the first pass.
            o.no_build = i > 0;
            let e2e_opts = std::cell::RefCell::new(Some(o));
            if let Err(e) = timed(format!("{rt}: e2e (both redirect modes)"), &mut || {
                let o = e2e_opts.borrow_mut().take().context("e2e options")?;
                e2e::run(o)
            }) {
                failed.push(format!("{rt}: e2e: {e:#}"));
            }
            // The chart installed in the same cluster (after the host-process agent of the e2e
            // suite is gone), also when the e2e suite failed. Debug binaries in the images: the
            // ones `cargo xtask e2e` just built. A cold release build of the agent and the control
            // plane takes longer than the whole CI budget leaves (`cargo xtask e2e-install` alone
            // defaults to release).
            if let Err(e) = timed(format!("{rt}: e2e-install (both redirect modes)"), &mut || {
                let mut o = crate::install::default_options()?;
                o.profile = crate::install::Profile::Debug;
                o.runtime = Some(rt);
                // The gateway's token renewal (~10 min) is the kubelet's and the gateway's, not the
                // runtime's: proved once, in the first runtime's eBPF pass.
                if i > 0 {
                    o.renewal_mode = "none".into();
                }
                crate::install::run(o)
            }) {
                failed.push(format!("{rt}: e2e-install: {e:#}"));
            }
        }
        let t0 = Instant::now();
        drop(session);
        phases.push(("cluster-down (or back to its mode)".into(), t0.elapsed(), true));
    }
    eprintln!("=== end-to-end phases:");
    for (name, d, ok) in &phases {
        eprintln!(
            "  {:>7.1} s  {name}{}",
            d.as_secs_f64(),
            if *ok { "" } else { "  FAILED" }
        );
    }
    let total: Duration = phases.iter().map(|(_, d, _)| *d).sum();
    eprintln!("  {:>7.1} s  total", total.as_secs_f64());
    if !failed.is_empty() {
        anyhow::bail!("end-to-end phase failed: {}", failed.join("; "));
    }
    Ok(())
}
