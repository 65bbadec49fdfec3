//! Developer tasks: `cargo xtask build-ebpf`, `cargo xtask bench <redirect|xds>`, ...
fn main() -> anyhow::Result<()> {
    Ok(())
}
