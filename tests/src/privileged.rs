//! Whether privileged tests can run here, and where cgroup v2 is mounted.
use std::path::PathBuf;

/// The cgroup v2 mount point, read from `/proc/mounts` (`/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_mount() -> Option<PathBuf> {
    traffic_redirect::mounts::cgroup2_mount().ok().flatten()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Call first in every test that needs root, network namespaces and cgroup v2. Returns `false`
/// (after printing why) when the test cannot run here, so the test can `return`; under `CI=true`
/// it panics instead, so CI never passes by skipping.
pub fn require_privileged() -> bool {
    let reason = if !is_root() {
        Some("not running as root".to_string())
    } else if cgroup2_mount().is_none() {
        Some("no cgroup2 mount in /proc/mounts".to_string())
    } else if which("ip").is_none() {
        Some("the `ip` command (iproute2) is missing".to_string())
    } else {
        None
    };
    match reason {
        None => true,
        Some(reason) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("privileged test cannot run under CI: {reason}")
        }
        Some(reason) => {
            eprintln!("skipping privileged test: {reason}");
            false
        }
    }
}

/// Finds an executable on PATH (plus the sbin directories, which a non-login root shell may lack).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file());
    found
}
