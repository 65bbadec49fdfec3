//! `cargo xtask test`: the one command that runs every test, privileged ones included.
//! It installs what it needs first (`setup`), builds the eBPF object, then runs the workspace tests
//! with the object required, so a missing toolchain fails loudly instead of skipping. Last, the
//! end-to-end suite (`cargo xtask e2e`) on the real single-node Kubernetes of this machine's e2e
//! kit, then the installed chart's suite (`cargo xtask e2e-install`) on the same cluster, brought
//! up for them and down after (see `cluster`); under `CI=true` a machine without the kit fails
//! instead of skipping it.
use std::process::Command;

use clap::Parser;

use crate::{build_ebpf, cluster, cmd, e2e, setup};

#[derive(clap::Args, Debug, Default)]
pub struct Options {
    /// Skip apt-get in setup.
    #[arg(long)]
    pub no_apt: bool,
    /// Skip the end-to-end phase on the real single-node Kubernetes.
    #[arg(long)]
    pub no_e2e: bool,
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
    let result = end_to_end();
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

fn end_to_end() -> anyhow::Result<()> {
    let Some(kit) = cluster::kit() else {
        anyhow::ensure!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but the e2e kit (cluster-up.sh in ../shared/e2e or $TRAFFIC_E2E_KIT) is missing"
        );
        eprintln!("e2e: skipped: no e2e kit (cluster-up.sh) on this machine; set TRAFFIC_E2E_KIT");
        return Ok(());
    };
    let _cluster = cluster::Cluster::up(&kit)?;
    crate::helm::server_dry_run_on_cluster()?;
    let e2e = e2e::run(E2eDefaults::try_parse_from(["e2e"])?.options);
    // The chart installed in the same cluster (after the host-process agent of the e2e suite is
    // gone), also when the e2e suite failed.
    // Debug binaries in the images: the ones `cargo xtask e2e` just built. A cold release build
    // of the agent and the control plane takes longer than the whole CI budget leaves
    // (`cargo xtask e2e-install` alone defaults to release).
    let installed = crate::install::default_options()
        .map(|mut o| {
            o.profile = crate::install::Profile::Debug;
            o
        })
        .and_then(crate::install::run);
    e2e.and(installed)
}
