//! Whether privileged tests can run here, and where cgroup v2 is mounted.
use std::path::PathBuf;

/// The cgroup v2 mount point, read from `/proc/mounts` (`/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    cgroup2_mount_in(&mounts)
}

/// Pure part of [`cgroup2_mount`]: the first `cgroup2` entry of a `/proc/mounts` text.
pub fn cgroup2_mount_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_on_hybrid_and_unified_hosts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(cgroup2_mount_in(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_mount_in("proc /proc proc rw 0 0\n"), None);
    }
}
