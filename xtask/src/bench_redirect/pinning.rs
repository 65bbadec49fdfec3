//! Where the redirect benchmark's processes run: by default every process of every mode (client,
//! proxy, backend) on one CPU, the machine's last.
//!
//! Why: with the three modes running at once on a 2-core machine, the scheduler puts each mode's
//! client, proxy and backend on the same CPU or on different ones, differently for each mode and
//! round; a wake-up across CPUs (IPI, cache lines moving) costs several microseconds more than one
//! on the same CPU, so within one round the modes' CPU per connection differed by far more than
//! the redirect's own cost (measured here, unpinned: per-round eBPF/limit ratios from 0.77 to
//! 1.11; pinned: 0.956 to 0.971). On one CPU every hand-off of every mode is a same-CPU wake-up,
//! and the modes share that CPU at nearly the same rate (conn/s ratios within a few percent), so
//! each connection pays the same kind of scheduling in every mode. The CPU figure itself is
//! unchanged: the run's cgroups' user + system microseconds per connection.
use anyhow::{bail, Context};

/// Which CPUs to run on, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuChoice {
    /// No pinning: wherever the scheduler puts them.
    All,
    /// The highest-numbered CPU this process may run on.
    Last,
    /// These CPUs (`1`, `0-1`, `0,2`).
    List(Vec<usize>),
}

impl CpuChoice {
    /// `all`, `last`, or a list of CPUs and ranges (`0,2-3`).
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s.trim() {
            "all" => return Ok(Self::All),
            "last" => return Ok(Self::Last),
            _ => {}
        }
        let mut cpus = Vec::new();
        for part in s.split(',').map(str::trim) {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a, b),
                None => (part, part),
            };
            let lo: usize = lo.parse().with_context(|| format!("bad CPU {lo:?} in {s:?}"))?;
            let hi: usize = hi.parse().with_context(|| format!("bad CPU {hi:?} in {s:?}"))?;
            if lo > hi || hi >= libc::CPU_SETSIZE as usize {
                bail!("bad CPU range {part:?} in {s:?}");
            }
            cpus.extend(lo..=hi);
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(Self::List(cpus))
    }

    /// The CPUs to pin to, given the ones this process may use; `None` for no pinning.
    pub fn resolve(&self, allowed: &[usize]) -> anyhow::Result<Option<Vec<usize>>> {
        match self {
            Self::All => Ok(None),
            Self::Last => Ok(Some(vec![*allowed.last().context("no CPU allowed")?])),
            Self::List(cpus) => {
                if let Some(c) = cpus.iter().find(|c| !allowed.contains(c)) {
                    bail!("CPU {c} is not among this process's CPUs {allowed:?}");
                }
                Ok(Some(cpus.clone()))
            }
        }
    }
}

/// The CPUs the calling thread may run on.
pub fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the size passed is its own.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; `set` is a valid, writable cpu_set_t.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
    }
    // SAFETY: CPU_ISSET reads a valid set, index below CPU_SETSIZE.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|c| unsafe { libc::CPU_ISSET(*c, &set) })
        .collect())
}

/// Pins the calling thread, and so every thread and process it starts afterwards, to `cpus`.
pub fn pin_to(cpus: &[usize]) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for c in cpus {
        // SAFETY: `parse` keeps every CPU below CPU_SETSIZE.
        unsafe { libc::CPU_SET(*c, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("pin to CPUs {cpus:?}"));
    }
    Ok(())
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn lists_and_ranges_parse_sorted_without_duplicates() {
        assert_eq!(CpuChoice::parse("1").unwrap(), CpuChoice::List(vec![1]));
        assert_eq!(
            CpuChoice::parse("2-3,0, 3").unwrap(),
            CpuChoice::List(vec![0, 2, 3])
        );
        assert_eq!(CpuChoice::parse("all").unwrap(), CpuChoice::All);
        assert_eq!(CpuChoice::parse("last").unwrap(), CpuChoice::Last);
        assert!(CpuChoice::parse("3-1").is_err());
        assert!(CpuChoice::parse("x").is_err());
        assert!(CpuChoice::parse("99999").is_err());
    }

    #[test]
    fn last_is_the_highest_allowed_cpu_and_a_list_must_be_allowed() {
        let allowed = [0, 1];
        assert_eq!(CpuChoice::Last.resolve(&allowed).unwrap(), Some(vec![1]));
        assert_eq!(CpuChoice::All.resolve(&allowed).unwrap(), None);
        assert_eq!(CpuChoice::List(vec![0]).resolve(&allowed).unwrap(), Some(vec![0]));
        assert!(CpuChoice::List(vec![2]).resolve(&allowed).is_err());
    }
}
