//! `traffic-agent`: the privileged node agent.
fn main() -> anyhow::Result<()> {
    Ok(())
}
