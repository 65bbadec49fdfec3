//! Where file systems are mounted, read from `/proc/mounts`: the cgroup v2 mount differs between
//! hosts (`/sys/fs/cgroup` on unified ones, `/sys/fs/cgroup/unified` on hybrid ones), so it is
//! always detected, never assumed.
use std::io;
use std::path::PathBuf;

/// The first mount point of `fstype` in a `/proc/mounts` text (octal escapes such as `\040` decoded).
pub fn mount_of_type(mounts: &str, fstype: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (_dev, dir, ty) = (f.next()?, f.next()?, f.next()?);
        (ty == fstype).then(|| PathBuf::from(unescape(dir)))
    })
}

/// The cgroup v2 mount point of this host.
pub fn cgroup2_mount() -> io::Result<Option<PathBuf>> {
    Ok(mount_of_type(
        &std::fs::read_to_string("/proc/mounts")?,
        "cgroup2",
    ))
}

/// `/proc/mounts` escapes space, tab, newline and backslash as octal.
fn unescape(p: &str) -> String {
    p.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_on_hybrid_and_unified_hosts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\nbpf /sys/fs/bpf bpf rw 0 0\n";
        assert_eq!(
            mount_of_type(hybrid, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(mount_of_type(hybrid, "bpf"), Some(PathBuf::from("/sys/fs/bpf")));
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(
            mount_of_type(unified, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(mount_of_type("proc /proc proc rw 0 0\n", "cgroup2"), None);
        assert_eq!(mount_of_type("", "bpf"), None);
    }

    #[test]
    fn escaped_mount_paths_are_unescaped() {
        assert_eq!(
            mount_of_type("none /a\\040b cgroup2 rw 0 0", "cgroup2"),
            Some(PathBuf::from("/a b"))
        );
    }
}
