//! `cargo xtask test`: the one command that runs every test, privileged ones included.
//! It installs what it needs first (`setup`), builds the eBPF object, then runs the workspace tests
//! with the object required, so a missing toolchain fails loudly instead of skipping.
use std::process::Command;

use crate::{build_ebpf, cmd, setup};

#[derive(clap::Args, Debug, Default)]
pub struct Options {
    /// Skip apt-get in setup.
    #[arg(long)]
    pub no_apt: bool,
    /// Extra arguments passed to `cargo test` (after `--` to the test binaries use `-- -- ...`).
    #[arg(last = true)]
    pub cargo_args: Vec<String>,
}

pub fn run(o: Options) -> anyhow::Result<()> {
    anyhow::ensure!(
        cmd::is_root(),
        "the test suite attaches eBPF programs and creates network namespaces: run it as root"
    );
    setup::run(setup::Options { no_apt: o.no_apt })?;
    build_ebpf::run(build_ebpf::Options::default())?;
    let root = cmd::workspace_root();
    let envoy = setup::venv_dir().join("bin/envoy");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
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
    )
}
