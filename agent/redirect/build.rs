//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! The object is copied into `OUT_DIR` so `include_bytes_aligned!` can embed it. When it is missing,
//! an empty stub is written instead so that stable-only `cargo check`, clippy and unit tests work
//! without a BPF toolchain; loading the stub at runtime fails with a typed error that says to run
//! `cargo xtask build-ebpf`. Set `TRAFFIC_EBPF_REQUIRED=1` (CI, release builds) to fail instead.
use std::path::PathBuf;

/// Overrides where the object is read from.
const OBJECT_ENV: &str = "TRAFFIC_EBPF_OBJECT";
/// `1` makes a missing object a build error.
const REQUIRED_ENV: &str = "TRAFFIC_EBPF_REQUIRED";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={OBJECT_ENV}");
    println!("cargo:rerun-if-env-changed={REQUIRED_ENV}");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let object = match std::env::var_os(OBJECT_ENV) {
        Some(p) => PathBuf::from(p),
        None => manifest.join("../../ebpf/programs/target/bpfel-unknown-none/release/traffic-ebpf"),
    };
    // Watching a missing path also works: cargo reruns once it appears.
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("traffic-ebpf.o");
    if object.is_file() {
        std::fs::copy(&object, &out)
            .map_err(|e| anyhow::anyhow!("copying {} to {}: {e}", object.display(), out.display()))?;
    } else if std::env::var(REQUIRED_ENV).as_deref() == Ok("1") {
        anyhow::bail!(
            "{REQUIRED_ENV}=1 but the eBPF object {} is missing: run `cargo xtask build-ebpf`",
            object.display()
        );
    } else {
        println!(
            "cargo:warning=eBPF object {} missing; embedding an empty stub (run `cargo xtask build-ebpf`)",
            object.display()
        );
        std::fs::write(&out, [])?;
    }
    Ok(())
}
