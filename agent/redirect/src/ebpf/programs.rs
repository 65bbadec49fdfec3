//! Loading the programs, attaching them to cgroups with pinned bpf_links, and switching pinned
//! links to this process's program instances.
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use aya::programs::{CgroupSockAddr, CgroupSockopt, ProgramFd, SockOps};
use aya::Ebpf;

use super::plan::{LinkSpec, ProgramKind};
use super::{sys, EbpfError};

/// The links pinned in a pod directory (foreign names are ignored).
pub(super) fn pinned_links(dir: &Path) -> Result<BTreeMap<LinkSpec, PathBuf>, EbpfError> {
    let rd = std::fs::read_dir(dir).map_err(|source| EbpfError::Pin {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out = BTreeMap::new();
    for entry in rd.flatten() {
        if let Some(spec) = entry.file_name().to_str().and_then(LinkSpec::parse) {
            out.insert(spec, entry.path());
        }
    }
    Ok(out)
}

pub(super) fn load_and_pin(ebpf: &mut Ebpf, kind: ProgramKind, progs_dir: &Path) -> Result<(), EbpfError> {
    let name = kind.program_name();
    let err = |source| EbpfError::Program {
        program: name,
        source: Some(source),
    };
    let prog = ebpf.program_mut(name).ok_or(EbpfError::Program {
        program: name,
        source: None,
    })?;
    match kind {
        ProgramKind::SockOps => {
            let p: &mut SockOps = prog.try_into().map_err(err)?;
            p.load().map_err(err)?;
        }
        ProgramKind::GetSockopt => {
            let p: &mut CgroupSockopt = prog.try_into().map_err(err)?;
            p.load().map_err(err)?;
        }
        _ => {
            let p: &mut CgroupSockAddr = prog.try_into().map_err(err)?;
            p.load().map_err(err)?;
        }
    }
    // Pin the newest instance for inspection; older pinned instances stay alive through their links.
    let path = progs_dir.join(name);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(EbpfError::Pin { path, source: e });
        }
        _ => {}
    }
    prog.pin(&path).map_err(|e| EbpfError::Pin {
        path: path.clone(),
        source: std::io::Error::other(e),
    })
}

/// Attaches one program to a cgroup with a bpf_link and pins the link at `path`.
///
/// The link is created with our own `BPF_LINK_CREATE` rather than aya's `attach`: aya 0.14 cannot
/// turn a cgroup sockopt link into a pinnable `FdLink`, and one code path for all six is simpler.
pub(super) fn attach_and_pin(
    ebpf: &Ebpf,
    kind: ProgramKind,
    cgroup: &Path,
    path: &Path,
) -> Result<(), EbpfError> {
    let program = kind.program_name();
    let fail = |source: std::io::Error| EbpfError::Attach {
        program,
        cgroup: cgroup.to_path_buf(),
        source,
    };
    let cgroup_file = File::open(cgroup).map_err(fail)?;
    let prog_fd = program_fd(ebpf, program)?;
    let link = sys::link_create(prog_fd.as_fd(), cgroup_file.as_fd(), kind.attach_type()).map_err(fail)?;
    sys::obj_pin(link.as_fd(), path).map_err(|source| EbpfError::Pin {
        path: path.to_path_buf(),
        source,
    })
    // `link` closes here; the pin keeps the attachment.
}

/// The loaded program `program`'s fd (loaded by `load` before any attach or update).
fn program_fd<'a>(ebpf: &'a Ebpf, program: &'static str) -> Result<&'a ProgramFd, EbpfError> {
    let prog = ebpf.program(program).ok_or(EbpfError::Program {
        program,
        source: None,
    })?;
    prog.fd().map_err(|e| EbpfError::Program {
        program,
        source: Some(e),
    })
}

/// Points a pinned link at this process's instance of its program (no-op when it already does).
pub(super) fn update_link(ebpf: &Ebpf, kind: ProgramKind, path: &Path) -> Result<(), EbpfError> {
    let program = kind.program_name();
    let prog_fd = program_fd(ebpf, program)?;
    let pin = |source| EbpfError::Pin {
        path: path.to_path_buf(),
        source,
    };
    let link = sys::obj_get(path).map_err(pin)?;
    sys::link_update(link.as_fd(), prog_fd.as_fd()).map_err(pin)
}
