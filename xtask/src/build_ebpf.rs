//! `cargo xtask build-ebpf`: builds `ebpf/programs` with nightly for `bpfel-unknown-none`,
//! installing bpf-linker first when it is missing (see docs/ebpf-toolchain.md for why it is built
//! against the nightly toolchain's own libLLVM).
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::cmd;

/// The bpf-linker release that works with aya-ebpf 0.2.1 on this toolchain.
const BPF_LINKER_VERSION: &str = "0.13.0";

#[derive(clap::Args, Debug, Default)]
pub struct Options {
    /// Build the debug profile instead of release.
    #[arg(long)]
    pub debug: bool,
    /// Reinstall bpf-linker even if one is on PATH (e.g. after the nightly toolchain changed).
    #[arg(long)]
    pub reinstall_linker: bool,
}

pub fn run(o: Options) -> anyhow::Result<()> {
    if o.reinstall_linker || !bpf_linker_works() {
        install_bpf_linker()?;
    }
    let dir = cmd::workspace_root().join("ebpf/programs");
    let mut build = Command::new("cargo");
    // rust-toolchain.toml in ebpf/programs selects nightly; clear variables an outer
    // `cargo xtask` (stable) sets so they do not leak into the nightly build.
    build
        .current_dir(&dir)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("CARGO");
    build.env_remove("CARGO_TARGET_DIR").args(["+nightly", "build"]);
    if !o.debug {
        build.arg("--release");
    }
    cmd::run(&mut build)?;
    let object = object_path(&dir, !o.debug);
    if !object.is_file() {
        bail!("the build succeeded but {} is missing", object.display());
    }
    println!("{}", object.display());
    eprintln!(
        "eBPF object: {} (agent/redirect embeds it; override with TRAFFIC_EBPF_OBJECT)",
        object.display()
    );
    Ok(())
}

/// Where cargo puts the object (the default `TRAFFIC_EBPF_OBJECT` of agent/redirect/build.rs).
pub fn object_path(programs_dir: &Path, release: bool) -> PathBuf {
    let profile = if release { "release" } else { "debug" };
    programs_dir
        .join("target/bpfel-unknown-none")
        .join(profile)
        .join("traffic-ebpf")
}

fn bpf_linker_works() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Builds bpf-linker from crates.io against the nightly toolchain's libLLVM.
fn install_bpf_linker() -> anyhow::Result<()> {
    cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    let sysroot =
        PathBuf::from(cmd::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim());
    let version = cmd::output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let llvm_major = llvm_major(&version).context("rustc +nightly -vV reports no LLVM version")?;
    let libdir = sysroot.join("lib");
    let libllvm = std::fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", libdir.display()))?;
    // A stable prefix: the installed binary keeps an rpath to it.
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let prefix = PathBuf::from(home).join(".cache/bpf-llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib).with_context(|| format!("creating {}", prefix_lib.display()))?;
    symlink_force(&libdir.join(&libllvm), &prefix_lib.join(&libllvm))?;
    symlink_force(Path::new(&libllvm), &prefix_lib.join("libLLVM.so"))?;
    // Without LLVM_PREFIX, bpf-linker's build finds Debian's older llvm-config instead.
    cmd::run(
        Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO_TARGET_DIR")
            .args([
                "+nightly",
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm_major}"),
            ]),
    )
}

fn symlink_force(target: &Path, link: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(link) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", link.display())),
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))
}

/// The LLVM major version from `rustc -vV` output (`LLVM version: 22.1.0`).
fn llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_llvm_major_version_is_read_from_rustc_verbose_output() {
        let out = "rustc 1.97.0-nightly\nbinary: rustc\nLLVM version: 22.1.3\n";
        assert_eq!(llvm_major(out), Some(22));
        assert_eq!(llvm_major("rustc 1.0"), None);
    }
}
