//! Where the benchmarks read CPU time: the cgroups their processes run in, and the machine.
//!
//! A benchmark's processes run in cgroups of its own, so their CPU time is theirs alone however
//! busy the rest of the machine is: the scheduler's run time of exactly those tasks, including the
//! kernel work done on their behalf (syscalls, and on this kernel's tick-based accounting the
//! softirq network processing that runs on their time slice; softirq work deferred to ksoftirqd is
//! charged to ksoftirqd instead, which is why the machine's softirq time is reported beside it).
//!
//! Cgroup v2 first: its `cpu.stat` has `usage_usec` in every cgroup whether or not the `cpu`
//! controller is enabled there (on a hybrid host, like the one this was written on, the
//! controller is bound to the v1 `cpu` hierarchy and the v2 tree at `/sys/fs/cgroup/unified` still
//! accounts every task's time). Only when a v2 cgroup shows no usage (a kernel before 4.20) does
//! the benchmark fall back to v1's `cpuacct`: one group holding the benchmark process itself, so
//! every process it starts inherits it (v1 membership follows fork; the pods' placement only moves
//! processes in the v2 tree) — which also counts the benchmark's own small share (waiting on its
//! children), the same in every mode.
use std::path::{Path, PathBuf};

use anyhow::Context;
use traffic_redirect::mounts;

use crate::bench_stats::{CpuUsage, MachineCpu};

/// A source of CPU usage: the real cgroups, or a scripted fake in tests.
pub trait CpuClock {
    fn read(&self) -> anyhow::Result<CpuUsage>;
}

/// Runs `work` and returns its result with the CPU `clock` counted while it ran.
pub fn counted<R>(
    clock: &dyn CpuClock,
    work: impl FnOnce() -> anyhow::Result<R>,
) -> anyhow::Result<(R, CpuUsage)> {
    let before = clock.read()?;
    let r = work()?;
    Ok((r, clock.read()?.since(&before)))
}

/// The summed usage of a set of cgroup v2 directories (`cpu.stat`), or of one v1 cpuacct group.
#[derive(Debug, Clone)]
pub enum CgroupCpu {
    V2(Vec<PathBuf>),
    V1(PathBuf),
}

impl CpuClock for CgroupCpu {
    fn read(&self) -> anyhow::Result<CpuUsage> {
        match self {
            CgroupCpu::V2(dirs) => {
                let all = dirs
                    .iter()
                    .map(|d| read_v2(d))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                Ok(CpuUsage::sum(&all))
            }
            CgroupCpu::V1(dir) => {
                let read = |f: &str| {
                    std::fs::read_to_string(dir.join(f))
                        .with_context(|| format!("read {}/{f}", dir.display()))
                };
                CpuUsage::parse_cpuacct(&read("cpuacct.usage")?, &read("cpuacct.stat")?, clk_tck())
            }
        }
    }
}

fn read_v2(dir: &Path) -> anyhow::Result<CpuUsage> {
    let path = dir.join("cpu.stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    CpuUsage::parse_cpu_stat(&text).with_context(|| path.display().to_string())
}

/// Whether a fresh cgroup v2 directory accounts CPU time (`usage_usec` in its `cpu.stat`).
pub fn v2_accounts_cpu(cgroup2: &Path) -> bool {
    let probe = cgroup2.join(format!("traffic-bench-probe-{}", std::process::id()));
    if std::fs::create_dir(&probe).is_err() {
        return false;
    }
    let ok = read_v2(&probe).is_ok();
    let _ = std::fs::remove_dir(&probe);
    ok
}

/// The v1 fallback: a cpuacct group with this process in it, moved back out and removed on drop.
pub struct CpuacctGroup {
    dir: PathBuf,
    home: PathBuf,
}

impl CpuacctGroup {
    pub fn join() -> anyhow::Result<Self> {
        let mounts_text = std::fs::read_to_string("/proc/mounts").context("read /proc/mounts")?;
        let root = cpuacct_mount(&mounts_text).context("no cgroup v1 cpuacct hierarchy in /proc/mounts")?;
        let own = std::fs::read_to_string("/proc/self/cgroup").context("read /proc/self/cgroup")?;
        let home = root.join(
            v1_path_of(&own, "cpuacct")
                .unwrap_or_default()
                .trim_start_matches('/'),
        );
        let dir = root.join(format!("traffic-bench-{}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let group = Self { dir, home };
        std::fs::write(group.dir.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("join {}", group.dir.display()))?;
        Ok(group)
    }

    pub fn clock(&self) -> CgroupCpu {
        CgroupCpu::V1(self.dir.clone())
    }
}

impl Drop for CpuacctGroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.home.join("cgroup.procs"), std::process::id().to_string());
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            eprintln!("cleanup: rmdir {}: {e}", self.dir.display());
        }
    }
}

/// The mount point of the v1 hierarchy whose options include `cpuacct`.
fn cpuacct_mount(mounts_text: &str) -> Option<PathBuf> {
    mounts_text.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (dir, ty, opts) = (f.get(1)?, f.get(2)?, f.get(3)?);
        (*ty == "cgroup" && opts.split(',').any(|o| o == "cpuacct")).then(|| PathBuf::from(dir))
    })
}

/// This process's path in the v1 hierarchy `controller` (`/proc/self/cgroup`: `id:ctrl,ctrl:/path`).
fn v1_path_of(proc_cgroup: &str, controller: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_id, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        ctrls
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_string())
    })
}

/// The machine's CPU counters now (`/proc/stat`).
pub fn machine_cpu() -> anyhow::Result<MachineCpu> {
    MachineCpu::parse_proc_stat(&std::fs::read_to_string("/proc/stat").context("read /proc/stat")?)
}

/// USER_HZ: the unit of /proc/stat and cpuacct.stat.
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).unwrap_or(100).max(1)
}

/// The cgroup v2 mount of this host, from /proc/mounts.
pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    mounts::cgroup2_mount()
        .context("read /proc/mounts")?
        .context("no cgroup2 mount in /proc/mounts")
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// A clock that advances by a fixed step on every read.
    struct Stepping(Cell<u64>, u64);

    impl CpuClock for Stepping {
        fn read(&self) -> anyhow::Result<CpuUsage> {
            let now = self.0.get();
            self.0.set(now + self.1);
            Ok(CpuUsage {
                usage_usec: now,
                user_usec: now,
                system_usec: 0,
            })
        }
    }

    #[test]
    fn counted_work_gets_the_usage_between_the_reads_around_it() {
        let clock = Stepping(Cell::new(100), 40);
        let (r, used) = counted(&clock, || Ok(7)).unwrap();
        assert_eq!((r, used.usage_usec), (7, 40));
    }

    #[test]
    fn the_cpuacct_hierarchy_is_found_even_when_it_shares_a_mount_with_cpu() {
        let m = "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n\
                 cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0\n";
        assert_eq!(
            cpuacct_mount(m),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(cpuacct_mount("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"), None);
    }

    #[test]
    fn the_own_v1_path_is_read_per_controller() {
        let own = "12:pids:/user.slice\n3:cpu,cpuacct:/bench/x\n0::/init.scope\n";
        assert_eq!(v1_path_of(own, "cpuacct").as_deref(), Some("/bench/x"));
        assert_eq!(v1_path_of(own, "memory"), None);
    }
}
