//! A per-test bpffs pin root for the eBPF redirector, purged (links detached, pins removed) on
//! drop, so tests run in parallel and leave nothing attached even when they fail.
use std::path::PathBuf;

use traffic_redirect::ebpf::{EbpfConfig, EbpfRedirector};

use crate::pod::unique_name;

/// A unique pin root, purged (links detached, pins removed) on drop.
pub struct PinRoot(pub PathBuf);

impl PinRoot {
    #[allow(clippy::new_without_default, reason = "each call makes a new pin root")]
    pub fn new() -> Self {
        Self(PathBuf::from("/sys/fs/bpf").join(unique_name("tm-test-")))
    }
    pub fn config(&self) -> EbpfConfig {
        EbpfConfig {
            pin_root: self.0.clone(),
            ..EbpfConfig::default()
        }
    }
    pub fn redirector(&self) -> EbpfRedirector {
        EbpfRedirector::new(self.config()).expect("load the eBPF redirector (run `cargo xtask build-ebpf`)")
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        if let Err(e) = EbpfRedirector::purge_pin_root(&self.0) {
            eprintln!("cleanup: purge {}: {e}", self.0.display());
        }
    }
}
