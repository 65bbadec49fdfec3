//! cgroup v2 paths of containers: where cgroup2 is mounted, which cgroup a pid is in, the pod
//! cgroup above a container's, and the `cgroup_parent` Docker wants for it.
//!
//! The parsing is pure; [`Cgroup2`] reads `/proc`.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 file system in /proc/mounts")]
    NoCgroup2,
    #[error("no cgroup v2 entry (`0::`) for pid {pid}")]
    NoV2Entry { pid: u32 },
    #[error("cgroup {path} of pid {pid} has no parent (the root cgroup)")]
    NoParent { pid: u32, path: String },
    #[error("{path} is not under the cgroup2 mount {mount}")]
    NotUnderMount { path: PathBuf, mount: PathBuf },
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The mount point of the (first) cgroup2 file system in a `/proc/mounts` text.
///
/// Octal escapes of the mount point (`\040` for a space) are decoded.
pub fn cgroup2_mount(proc_mounts: &str) -> Option<PathBuf> {
    proc_mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount(target)))
    })
}

fn unescape_mount(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let digit = |k: usize| u32::from(bytes[i + k] - b'0');
            let v = digit(1) * 64 + digit(2) * 8 + digit(3);
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 path (relative to the cgroup2 root, starting with `/`) in a `/proc/<pid>/cgroup`
/// text: the `0::<path>` line.
pub fn v2_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end())
        .filter(|p| p.starts_with('/'))
}

/// The parent of a cgroup path (`/kubepods/besteffort/pod<uid>/<id>` → `/kubepods/besteffort/pod<uid>`);
/// `None` for the root.
pub fn parent(path: &str) -> Option<&str> {
    let trimmed = path.trim_end_matches('/');
    let (parent, _) = trimmed.rsplit_once('/')?;
    if trimmed.is_empty() {
        return None;
    }
    Some(if parent.is_empty() { "/" } else { parent })
}

/// `mount` joined with a cgroup path relative to the cgroup2 root.
pub fn absolute(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

/// The cgroup path relative to the cgroup root, as Docker's `cgroup_parent` with the cgroupfs
/// driver wants it (`/kubepods/besteffort/pod<uid>`), of an absolute directory under `mount`.
pub fn relative(mount: &Path, dir: &Path) -> Result<String, CgroupError> {
    let rel = dir.strip_prefix(mount).map_err(|_| CgroupError::NotUnderMount {
        path: dir.to_path_buf(),
        mount: mount.to_path_buf(),
    })?;
    Ok(format!("/{}", rel.display()))
}

/// The cgroup2 hierarchy of this host, read from `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup2 {
    pub mount: PathBuf,
}

impl Cgroup2 {
    /// Detects the cgroup2 mount from `/proc/mounts`.
    pub fn detect() -> Result<Self, CgroupError> {
        let text = read("/proc/mounts")?;
        let mount = cgroup2_mount(&text).ok_or(CgroupError::NoCgroup2)?;
        Ok(Cgroup2 { mount })
    }

    /// The absolute cgroup v2 directory of `pid`.
    pub fn of_pid(&self, pid: u32) -> Result<PathBuf, CgroupError> {
        let text = read(format!("/proc/{pid}/cgroup"))?;
        let path = v2_path(&text).ok_or(CgroupError::NoV2Entry { pid })?;
        Ok(absolute(&self.mount, path))
    }

    /// The absolute cgroup v2 directory of the parent of `pid`'s cgroup: for a pod's sandbox
    /// (every container has its own cgroup under the pod's), the pod cgroup.
    pub fn parent_of_pid(&self, pid: u32) -> Result<PathBuf, CgroupError> {
        let text = read(format!("/proc/{pid}/cgroup"))?;
        let path = v2_path(&text).ok_or(CgroupError::NoV2Entry { pid })?;
        let parent = parent(path).ok_or_else(|| CgroupError::NoParent {
            pid,
            path: path.to_string(),
        })?;
        Ok(absolute(&self.mount, parent))
    }
}

fn read(path: impl AsRef<Path>) -> Result<String, CgroupError> {
    let path = path.as_ref();
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    const HYBRID_MOUNTS: &str = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    const SANDBOX_CGROUP: &str = "\
9:name=systemd:/kubepods/besteffort/pod3859d687/6aaa7415
1:cpu:/kubepods/besteffort/pod3859d687/6aaa7415
0::/kubepods/besteffort/pod3859d687/6aaa7415
";

    #[test]
    fn the_cgroup2_mount_is_found_among_v1_hierarchies() {
        assert_eq!(
            cgroup2_mount(HYBRID_MOUNTS),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount("cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup2_mount("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"), None);
    }

    #[test]
    fn octal_escapes_in_the_mount_point_are_decoded() {
        assert_eq!(
            cgroup2_mount("none /mnt/my\\040cg cgroup2 rw 0 0\n"),
            Some(PathBuf::from("/mnt/my cg"))
        );
    }

    #[test]
    fn the_v2_path_is_the_zero_line_and_only_it() {
        assert_eq!(
            v2_path(SANDBOX_CGROUP),
            Some("/kubepods/besteffort/pod3859d687/6aaa7415")
        );
        assert_eq!(v2_path("1:cpu:/a\n"), None);
        assert_eq!(v2_path("0::/\n"), Some("/"));
    }

    #[test]
    fn the_pod_cgroup_is_the_parent_of_the_sandbox_cgroup() {
        assert_eq!(
            parent("/kubepods/besteffort/pod3859d687/6aaa7415"),
            Some("/kubepods/besteffort/pod3859d687")
        );
        assert_eq!(parent("/kubepods/pod1/abc/"), Some("/kubepods/pod1"));
        assert_eq!(parent("/kubepods"), Some("/"));
        assert_eq!(parent("/"), None);
        assert_eq!(parent(""), None);
    }

    #[test]
    fn absolute_and_relative_paths_round_trip_through_the_mount() {
        let mount = Path::new("/sys/fs/cgroup/unified");
        let abs = absolute(mount, "/kubepods/besteffort/pod3859d687");
        assert_eq!(
            abs,
            PathBuf::from("/sys/fs/cgroup/unified/kubepods/besteffort/pod3859d687")
        );
        assert_eq!(relative(mount, &abs).unwrap(), "/kubepods/besteffort/pod3859d687");
        assert!(matches!(
            relative(mount, Path::new("/sys/fs/cgroup/cpu/kubepods")),
            Err(CgroupError::NotUnderMount { .. })
        ));
    }

    #[test]
    fn this_process_has_a_cgroup_under_the_detected_mount() {
        // Real /proc: every Linux process is in some cgroup2 cgroup when cgroup2 is mounted.
        let Ok(cg) = Cgroup2::detect() else {
            eprintln!("skip: no cgroup2 mounted");
            return;
        };
        let own = cg.of_pid(std::process::id()).unwrap();
        assert!(own.starts_with(&cg.mount), "{own:?}");
    }
}
