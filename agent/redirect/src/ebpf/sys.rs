//! The kernel facts the eBPF redirector needs besides aya: cgroup v2 and bpffs mounts, cgroup ids,
//! network namespace cookies, and forced link detachment.
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::RedirectError;

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// The conventional bpffs mount point (mounted by us when missing).
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";

pub use crate::mounts::cgroup2_mount;

fn fs_magic(path: &Path) -> io::Result<i64> {
    let s = nix::sys::statfs::statfs(path).map_err(io::Error::from)?;
    #[expect(
        clippy::useless_conversion,
        reason = "the statfs type differs between libc targets"
    )]
    Ok(i64::from(s.filesystem_type().0))
}

/// The cgroup v2 id (the directory's inode number) of a cgroup directory.
pub fn cgroup_id(path: &Path) -> Result<u64, RedirectError> {
    let missing = || RedirectError::CgroupMissing {
        path: path.to_path_buf(),
    };
    let meta = std::fs::metadata(path).map_err(|_| missing())?;
    if !meta.is_dir() || fs_magic(path).map_err(|_| missing())? != CGROUP2_SUPER_MAGIC {
        return Err(missing());
    }
    Ok(meta.ino())
}

/// The cgroup ids of `path`'s ancestors on its cgroup2 mount, nearest first; `None` for one whose
/// filesystem or id could not be read. The walk ends at the first ancestor on another filesystem
/// (above the mount).
pub fn cgroup_ancestor_ids(path: &Path) -> Vec<Option<u64>> {
    let mut out = Vec::new();
    for a in path.ancestors().skip(1) {
        match fs_magic(a) {
            Ok(CGROUP2_SUPER_MAGIC) => out.push(std::fs::metadata(a).ok().map(|m| m.ino())),
            Ok(_) => break,
            Err(_) => out.push(None),
        }
    }
    out
}

/// Makes sure `pin_root` lives on a bpffs, mounting bpffs on `/sys/fs/bpf` when that is where
/// it should be and nothing is mounted there yet.
pub fn ensure_bpffs(pin_root: &Path) -> Result<(), super::EbpfError> {
    let mount = Path::new(BPFFS_MOUNT);
    if pin_root.starts_with(mount) && fs_magic(mount).ok() != Some(BPF_FS_MAGIC) {
        std::fs::create_dir_all(mount).map_err(|source| super::EbpfError::Bpffs {
            path: mount.to_path_buf(),
            source,
        })?;
        nix::mount::mount(
            Some("bpf"),
            mount,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| super::EbpfError::Bpffs {
            path: mount.to_path_buf(),
            source: e.into(),
        })?;
        tracing::info!(path = %mount.display(), "mounted bpffs");
    }
    // The deepest existing ancestor must be on bpffs.
    let existing = pin_root.ancestors().find(|p| p.exists()).unwrap_or(mount);
    match fs_magic(existing) {
        Ok(BPF_FS_MAGIC) => Ok(()),
        Ok(_) => Err(super::EbpfError::NotBpffs {
            path: pin_root.to_path_buf(),
        }),
        Err(source) => Err(super::EbpfError::Bpffs {
            path: existing.to_path_buf(),
            source,
        }),
    }
}

/// The cookie of the network namespace at `netns` (`/proc/<pid>/ns/net`, `/run/netns/<name>`).
///
/// Read with `SO_NETNS_COOKIE` from a socket created inside the namespace, on a short-lived thread
/// that enters it (setns affects only the calling thread, which then exits).
pub fn netns_cookie(netns: &Path) -> Result<u64, RedirectError> {
    let gone = |source: io::Error| RedirectError::NetnsGone {
        path: netns.to_path_buf(),
        source,
    };
    let file = File::open(netns).map_err(gone)?;
    let result = std::thread::scope(|s| {
        s.spawn(|| -> io::Result<u64> {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            // SAFETY: plain socket(2); the fd is owned immediately.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: fd is a fresh, valid descriptor nobody else owns.
            let sock = unsafe { OwnedFd::from_raw_fd(fd) };
            let mut cookie: u64 = 0;
            let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
            // SAFETY: cookie/len point to valid memory of the advertised size.
            let rc = unsafe {
                libc::getsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_NETNS_COOKIE,
                    (&mut cookie as *mut u64).cast(),
                    &mut len,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(cookie)
        })
        .join()
    });
    match result {
        Ok(r) => r.map_err(gone),
        Err(_) => Err(gone(io::Error::other("netns cookie thread panicked"))),
    }
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

fn bpf(cmd: libc::c_long, attr: &mut [u64], size: usize) -> io::Result<libc::c_long> {
    // SAFETY: attr points to `size` readable bytes laid out as the kernel's union bpf_attr prefix.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens a pinned bpf object.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; }
    let mut attr = [c.as_ptr() as u64, 0];
    let fd = bpf(BPF_OBJ_GET, &mut attr, 16)?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;

/// Creates a bpf_link attaching `prog` to the cgroup `target` (flags 0: cgroup links are multi).
pub fn link_create(prog: BorrowedFd<'_>, target: BorrowedFd<'_>, attach_type: u32) -> io::Result<OwnedFd> {
    // struct { __u32 prog_fd; __u32 target_fd; __u32 attach_type; __u32 flags; ... }
    let mut attr = [
        u64::from(prog.as_raw_fd() as u32) | (u64::from(target.as_raw_fd() as u32) << 32),
        u64::from(attach_type),
        0,
        0,
    ];
    let fd = bpf(BPF_LINK_CREATE, &mut attr, 32)?;
    // SAFETY: BPF_LINK_CREATE returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

const BPF_LINK_UPDATE: libc::c_long = 29;

/// Replaces the program of a link atomically (the attachment itself stays).
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    // struct { __u32 link_fd; __u32 new_prog_fd; __u32 flags; __u32 old_prog_fd; }
    let mut attr = [
        u64::from(link.as_raw_fd() as u32) | (u64::from(prog.as_raw_fd() as u32) << 32),
        0,
    ];
    bpf(BPF_LINK_UPDATE, &mut attr, 16).map(|_| ())
}

/// Pins a bpf object at `path` (which must not exist).
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut attr = [c.as_ptr() as u64, u64::from(fd.as_raw_fd() as u32)];
    bpf(BPF_OBJ_PIN, &mut attr, 16).map(|_| ())
}

/// Detaches the pinned link at `path` from its cgroup right now (BPF_LINK_DETACH), then removes the
/// pin. Closing the last reference would also detach, but asynchronously; callers (and tests)
/// need "disable returned" to mean "nothing is attached".
pub fn detach_and_unpin(path: &Path) -> io::Result<()> {
    match obj_get(path) {
        Ok(fd) => {
            let mut attr = [u64::from(fd.as_raw_fd() as u32)];
            match bpf(BPF_LINK_DETACH, &mut attr, 4) {
                // ENOLINK: already detached (its cgroup went away).
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {}
                Err(e) => return Err(e),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
