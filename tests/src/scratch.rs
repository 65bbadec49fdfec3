//! A uniquely named directory removed (recursively) on drop: state dirs, bpffs pin roots.
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::pod::unique_name;

#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `<base>/<prefix><pid>x<n>` (e.g. base `/sys/fs/bpf` for a per-test pin root).
    pub fn new(base: &Path, prefix: &str) -> anyhow::Result<Self> {
        let path = base.join(unique_name(prefix));
        std::fs::create_dir_all(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(Self { path })
    }
    /// Under the system temp dir.
    pub fn temp(prefix: &str) -> anyhow::Result<Self> {
        Self::new(&std::env::temp_dir(), prefix)
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("cleanup: rm -r {}: {e}", self.path.display());
            }
        }
    }
}
