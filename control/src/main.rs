//! `traffic-control` binary.
fn main() -> anyhow::Result<()> {
    Ok(())
}
