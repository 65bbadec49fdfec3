//! Paths of the small test binaries built from `tests/src/bin/` (proxy, backend, client).
use std::path::PathBuf;

/// Env var naming the directory that holds the test binaries (overrides the lookup).
pub const BIN_DIR_ENV: &str = "TRAFFIC_TEST_BIN_DIR";

pub const PROXY: &str = "test-proxy";
pub const BACKEND: &str = "test-backend";
pub const CLIENT: &str = "test-client";

/// Finds a test binary: `$TRAFFIC_TEST_BIN_DIR/<name>`, else next to the running executable or one
/// level up (integration tests run from `target/<profile>/deps/`, binaries live in `target/<profile>/`).
pub fn path(name: &str) -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var(BIN_DIR_ENV) {
        return Ok(PathBuf::from(dir).join(name));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    anyhow::bail!(
        "test binary {name} not found near {}: build it (`cargo build -p traffic-tests --bins`) \
         or set {BIN_DIR_ENV}",
        exe.display()
    )
}
