//! What this node's kernel can do, and which datapath the agent should use.
//!
//! [`probe`] gathers facts (kernel release, cgroup v2 and bpffs mounts from `/proc/mounts`, whether
//! each BPF program type we need actually loads, which iptables flavours work); [`decide`] is the pure
//! function from those facts to a [`Mode`] with a human reason. eBPF needs: cgroup v2 (the programs
//! attach to pod cgroups), kernel >= 5.15 (network namespace cookies in sock_ops and sockopt programs,
//! which key the per-pod settings; BPF links for cgroups, so pinned attachments survive an agent
//! restart, are 5.7) and every program type loading. Otherwise iptables.
//!
//! `unsafe`: the `bpf(2)` syscall (loading a two-instruction program), and `unshare(2)` between fork
//! and exec so iptables is tried in a throwaway network namespace, never the host's.
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::iptables::{rules::Family, Flavour};
use crate::Mode;

/// Kernel `major.minor.patch` (from the uname release, e.g. `6.18.44-fc-v669`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl KernelVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self { major, minor, patch }
    }
    pub fn parse(release: &str) -> Option<Self> {
        let mut nums = release
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty());
        let major = nums.next()?.parse().ok()?;
        let minor = nums.next()?.parse().ok()?;
        let patch = nums.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Some(Self { major, minor, patch })
    }
}

impl std::fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The oldest kernel the eBPF datapath supports (see [`crate::ebpf::MIN_KERNEL`]).
pub const MIN_EBPF_KERNEL: KernelVersion =
    KernelVersion::new(crate::ebpf::MIN_KERNEL.0, crate::ebpf::MIN_KERNEL.1, 0);

/// One probed capability: `error` is `None` when it works.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Check {
    pub name: String,
    pub error: Option<String>,
}

impl Check {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Everything [`decide`] needs, as plain data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProbeReport {
    pub kernel_release: String,
    pub kernel: Option<KernelVersion>,
    pub cgroup2: Option<PathBuf>,
    pub bpffs: Option<PathBuf>,
    /// One per BPF program type the eBPF datapath loads.
    pub bpf_programs: Vec<Check>,
    /// One per iptables flavour (a REDIRECT chain applied in a throwaway netns, v4 and v6).
    pub iptables: Vec<FlavourCheck>,
    /// Whether this binary embeds the eBPF object (`cargo xtask build-ebpf` before building it).
    pub ebpf_object: bool,
}

/// Whether one iptables flavour works.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FlavourCheck {
    pub flavour: Flavour,
    #[serde(flatten)]
    pub check: Check,
}

/// The chosen datapath and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    /// `None`: neither datapath can work on this node.
    pub mode: Option<Mode>,
    /// The iptables flavour to use in iptables mode.
    pub iptables_flavour: Option<Flavour>,
    pub reason: String,
}

/// Why eBPF cannot be used, or `None` when it can.
fn ebpf_blocker(report: &ProbeReport) -> Option<String> {
    if !report.ebpf_object {
        return Some(
            "this binary was built without the eBPF object (run `cargo xtask build-ebpf`, then rebuild)"
                .into(),
        );
    }
    if report.cgroup2.is_none() {
        return Some("no cgroup v2 mount (the eBPF programs attach to pod cgroup v2 directories)".into());
    }
    match report.kernel {
        None => return Some(format!("cannot parse kernel release {:?}", report.kernel_release)),
        Some(k) if k < MIN_EBPF_KERNEL => {
            return Some(format!(
                "kernel {k} is older than {MIN_EBPF_KERNEL} (netns cookies in sock_ops and sockopt programs)"
            ))
        }
        Some(_) => {}
    }
    let failed: Vec<String> = report
        .bpf_programs
        .iter()
        .filter_map(|c| c.error.as_ref().map(|e| format!("{}: {e}", c.name)))
        .collect();
    if report.bpf_programs.is_empty() {
        return Some("no BPF program type was probed".into());
    }
    (!failed.is_empty()).then(|| format!("BPF programs do not load ({})", failed.join("; ")))
}

/// The pure decision: eBPF when everything it needs is there, else the first working iptables flavour.
pub fn decide(report: &ProbeReport) -> Decision {
    let Some(blocker) = ebpf_blocker(report) else {
        let kernel = report.kernel.map(|k| k.to_string()).unwrap_or_default();
        let mut reason = format!(
            "kernel {kernel} with cgroup v2 at {}, every BPF program type loads",
            report
                .cgroup2
                .as_deref()
                .map(Path::display)
                .map(|d| d.to_string())
                .unwrap_or_default()
        );
        if report.bpffs.is_none() {
            reason.push_str("; bpffs is not mounted yet (the agent mounts it at /sys/fs/bpf)");
        }
        return Decision {
            mode: Some(Mode::Ebpf),
            iptables_flavour: None,
            reason,
        };
    };
    match report.iptables.iter().find(|f| f.check.ok()) {
        Some(f) => Decision {
            mode: Some(Mode::Iptables),
            iptables_flavour: Some(f.flavour),
            reason: format!("eBPF unavailable: {blocker}; falling back to {}", f.flavour),
        },
        None => {
            let why: Vec<String> = report
                .iptables
                .iter()
                .map(|f| format!("{}: {}", f.flavour, f.check.error.as_deref().unwrap_or("?")))
                .collect();
            Decision {
                mode: None,
                iptables_flavour: None,
                reason: format!(
                    "eBPF unavailable: {blocker}; no iptables flavour works ({})",
                    why.join("; ")
                ),
            }
        }
    }
}

/// Gathers the facts (needs root for the BPF and iptables checks; reports failures, never panics).
pub fn probe() -> ProbeReport {
    let kernel_release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    ProbeReport {
        kernel: KernelVersion::parse(&kernel_release),
        kernel_release,
        cgroup2: crate::mounts::mount_of_type(&mounts, "cgroup2"),
        bpffs: crate::mounts::mount_of_type(&mounts, "bpf"),
        bpf_programs: bpf::PROGRAMS
            .iter()
            .map(|p| Check {
                name: p.name.into(),
                error: bpf::try_load(p).err(),
            })
            .collect(),
        iptables: Flavour::ALL
            .iter()
            .map(|f| FlavourCheck {
                flavour: *f,
                check: Check {
                    name: f.to_string(),
                    error: iptables_works(*f).err(),
                },
            })
            .collect(),
        ebpf_object: crate::ebpf::object_embedded(),
    }
}

/// Applies a chain shaped like ours (owner, comment, tcp, REDIRECT) in a throwaway netns, v4 and v6.
fn iptables_works(flavour: Flavour) -> Result<(), String> {
    for family in Family::ALL {
        let program = flavour.restore_command(family);
        let binary = crate::iptables::resolve(&program).map_err(|e| e.to_string())?;
        let payload = "*nat\n:TRAFFIC_PROBE - [0:0]\n\
            -A TRAFFIC_PROBE -m owner --uid-owner 1337 -m comment --comment \"traffic-manager:probe\" -j RETURN\n\
            -A TRAFFIC_PROBE -p tcp -m tcp --dport 1 -j RETURN\n\
            -A TRAFFIC_PROBE -p tcp -j REDIRECT --to-ports 15001\n\
            -A OUTPUT -p tcp -j TRAFFIC_PROBE\nCOMMIT\n";
        let mut cmd = Command::new(&binary);
        cmd.args(["-w", "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: unshare(2) is async-signal-safe; the child gets a fresh netns that dies with it.
        unsafe {
            cmd.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| format!("{program}: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin
                .write_all(payload.as_bytes())
                .map_err(|e| format!("{program}: {e}"))?;
        }
        let out = child.wait_with_output().map_err(|e| format!("{program}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{program}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

/// Loading trivial programs through `bpf(BPF_PROG_LOAD)`: the verifier and the program type's
/// attach-type checks run for real, so "loads" means the kernel supports it and we may use it.
mod bpf {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const PROG_TYPE_SOCK_OPS: u32 = 13;
    const PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
    const PROG_TYPE_CGROUP_SOCKOPT: u32 = 25;
    const ATTACH_CGROUP_SOCK_OPS: u32 = 3;
    const ATTACH_INET4_BIND: u32 = 8;
    const ATTACH_INET6_BIND: u32 = 9;
    const ATTACH_INET4_CONNECT: u32 = 10;
    const ATTACH_INET6_CONNECT: u32 = 11;
    const ATTACH_CGROUP_GETSOCKOPT: u32 = 21;

    pub struct Program {
        pub name: &'static str,
        prog_type: u32,
        expected_attach_type: u32,
    }

    pub const PROGRAMS: &[Program] = &[
        Program {
            name: "cgroup/connect4",
            prog_type: PROG_TYPE_CGROUP_SOCK_ADDR,
            expected_attach_type: ATTACH_INET4_CONNECT,
        },
        Program {
            name: "cgroup/connect6",
            prog_type: PROG_TYPE_CGROUP_SOCK_ADDR,
            expected_attach_type: ATTACH_INET6_CONNECT,
        },
        Program {
            name: "cgroup/bind4",
            prog_type: PROG_TYPE_CGROUP_SOCK_ADDR,
            expected_attach_type: ATTACH_INET4_BIND,
        },
        Program {
            name: "cgroup/bind6",
            prog_type: PROG_TYPE_CGROUP_SOCK_ADDR,
            expected_attach_type: ATTACH_INET6_BIND,
        },
        Program {
            name: "sockops",
            prog_type: PROG_TYPE_SOCK_OPS,
            expected_attach_type: ATTACH_CGROUP_SOCK_OPS,
        },
        Program {
            name: "cgroup/getsockopt",
            prog_type: PROG_TYPE_CGROUP_SOCKOPT,
            expected_attach_type: ATTACH_CGROUP_GETSOCKOPT,
        },
    ];

    impl Program {
        #[cfg(test)]
        pub fn mismatched_for_tests() -> Self {
            Program {
                name: "mismatched",
                prog_type: PROG_TYPE_CGROUP_SOCKOPT,
                expected_attach_type: ATTACH_INET4_CONNECT,
            }
        }
    }

    /// The leading fields of `union bpf_attr` for BPF_PROG_LOAD (kernel ABI, stable); the tail is
    /// zero padding, which the kernel requires to be zero.
    #[repr(C)]
    struct ProgLoadAttr {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
        _pad: [u8; 56],
    }

    /// `r0 = 1; exit` — "allow" for every program type we probe.
    const INSNS: [u64; 2] = [
        // BPF_ALU64 | BPF_MOV | BPF_K (0xb7), dst r0, imm 1.
        0xb7 | (1u64 << 32),
        // BPF_JMP | BPF_EXIT (0x95).
        0x95,
    ];

    pub fn try_load(p: &Program) -> Result<(), String> {
        let license = c"GPL";
        let attr = ProgLoadAttr {
            prog_type: p.prog_type,
            insn_cnt: INSNS.len() as u32,
            insns: INSNS.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 0,
            log_size: 0,
            log_buf: 0,
            kern_version: 0,
            prog_flags: 0,
            prog_name: [0; 16],
            prog_ifindex: 0,
            expected_attach_type: p.expected_attach_type,
            _pad: [0; 56],
        };
        // SAFETY: `attr` is a valid, fully initialized bpf_attr prefix; the pointers in it (insns,
        // license) outlive the call; the kernel copies what it needs before returning.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &attr as *const ProgLoadAttr,
                std::mem::size_of::<ProgLoadAttr>(),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        // SAFETY: `fd` is a program fd we own and close exactly once.
        unsafe { libc::close(fd as libc::c_int) };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capable() -> ProbeReport {
        ProbeReport {
            kernel_release: "6.18.44-fc-v669".into(),
            kernel: KernelVersion::parse("6.18.44-fc-v669"),
            cgroup2: Some("/sys/fs/cgroup/unified".into()),
            bpffs: Some("/sys/fs/bpf".into()),
            bpf_programs: bpf::PROGRAMS
                .iter()
                .map(|p| Check {
                    name: p.name.into(),
                    error: None,
                })
                .collect(),
            iptables: Flavour::ALL
                .iter()
                .map(|f| FlavourCheck {
                    flavour: *f,
                    check: Check {
                        name: f.to_string(),
                        error: None,
                    },
                })
                .collect(),
            ebpf_object: true,
        }
    }

    #[test]
    fn kernel_releases_parse_with_distribution_suffixes() {
        assert_eq!(
            KernelVersion::parse("6.18.44-fc-v669"),
            Some(KernelVersion::new(6, 18, 44))
        );
        assert_eq!(
            KernelVersion::parse("5.4.0-150-generic"),
            Some(KernelVersion::new(5, 4, 0))
        );
        assert_eq!(KernelVersion::parse("4.19"), Some(KernelVersion::new(4, 19, 0)));
        assert_eq!(KernelVersion::parse("garbage"), None);
        assert!(KernelVersion::new(5, 14, 99) < MIN_EBPF_KERNEL);
        assert!(KernelVersion::new(5, 15, 0) >= MIN_EBPF_KERNEL);
    }

    #[test]
    fn a_capable_node_uses_ebpf() {
        let d = decide(&capable());
        assert_eq!(d.mode, Some(Mode::Ebpf));
        assert!(d.reason.contains("6.18.44"), "{}", d.reason);
    }

    #[test]
    fn an_agent_built_without_the_ebpf_object_falls_back_to_iptables_and_says_why() {
        let mut report = capable();
        report.ebpf_object = false;
        let d = decide(&report);
        assert_eq!(d.mode, Some(Mode::Iptables));
        assert!(d.reason.contains("cargo xtask build-ebpf"), "{}", d.reason);
    }

    #[test]
    fn a_missing_bpffs_does_not_block_ebpf_but_is_mentioned() {
        let mut r = capable();
        r.bpffs = None;
        let d = decide(&r);
        assert_eq!(d.mode, Some(Mode::Ebpf));
        assert!(d.reason.contains("bpffs"), "{}", d.reason);
    }

    #[test]
    fn without_cgroup2_an_old_kernel_or_a_failing_program_the_node_falls_back_to_iptables() {
        let mut no_cgroup2 = capable();
        no_cgroup2.cgroup2 = None;
        let mut old = capable();
        old.kernel = Some(KernelVersion::new(5, 4, 0));
        let mut denied = capable();
        denied.bpf_programs[5].error = Some("Operation not permitted (os error 1)".into());
        for (report, why) in [
            (no_cgroup2, "cgroup v2"),
            (old, "5.4.0"),
            (denied, "cgroup/getsockopt"),
        ] {
            let d = decide(&report);
            assert_eq!(d.mode, Some(Mode::Iptables), "{d:?}");
            assert_eq!(d.iptables_flavour, Some(Flavour::Nft));
            assert!(d.reason.contains(why), "{}", d.reason);
        }
    }

    #[test]
    fn legacy_is_used_when_only_legacy_works() {
        let mut r = capable();
        r.cgroup2 = None;
        r.iptables[0].check.error = Some("iptables-nft-restore: no nf_tables".into());
        assert_eq!(decide(&r).iptables_flavour, Some(Flavour::Legacy));
    }

    #[test]
    fn a_node_with_neither_datapath_gets_no_mode_and_both_reasons() {
        let mut r = capable();
        r.kernel = Some(KernelVersion::new(4, 19, 0));
        for f in &mut r.iptables {
            f.check.error = Some("not installed".into());
        }
        let d = decide(&r);
        assert_eq!(d.mode, None);
        assert!(
            d.reason.contains("4.19.0") && d.reason.contains("not installed"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn the_real_kernel_loads_every_program_type_when_root() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: not root");
            return;
        }
        let report = probe();
        assert!(
            report.bpf_programs.iter().all(Check::ok),
            "{:?}",
            report.bpf_programs
        );
        // The probe is real: the kernel refuses a sockopt program with a sock_addr attach type.
        assert!(bpf::try_load(&bpf::Program::mismatched_for_tests()).is_err());
    }
}
