//! Pure logic shared by the benchmarks: the spread of a figure over rounds or changes, and the
//! parsers of the kernel's CPU accounting files (a cgroup's `cpu.stat`, cgroup v1's
//! `cpuacct.usage`, `/proc/stat`). Reading the files is the caller's job (bench_cpu), so every
//! parser here is tested on captured text.
use anyhow::{bail, Context};
use serde_json::{json, Value};

/// Min / median / max of one figure over the rounds (or changes) of a run: a benchmark on a shared
/// machine reports how far its figures moved, not one number that may be a lucky or unlucky round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    /// `None` for no samples or a NaN among them (a figure that could not be computed).
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() || samples.iter().any(|s| s.is_nan()) {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Self {
            min: v[0],
            median,
            max: v[n - 1],
        })
    }

    /// `min/median/max` with `decimals` digits after the point, for the tables.
    pub fn show(&self, decimals: usize) -> String {
        format!(
            "{:.d$}/{:.d$}/{:.d$}",
            self.min,
            self.median,
            self.max,
            d = decimals
        )
    }

    pub fn to_json(self) -> Value {
        json!({"min": self.min, "median": self.median, "max": self.max})
    }
}

/// The JSON of an optional spread (`null` when the figure has no samples).
pub fn spread_json(s: Option<Spread>) -> Value {
    s.map(Spread::to_json).unwrap_or(Value::Null)
}

/// Per-sample ratios `a[i] / b[i]` (rounds paired: both modes ran in the same round, under the
/// same load), so the spread of a ratio is over rounds too.
pub fn paired_ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .map(|(x, y)| if *y == 0.0 { f64::NAN } else { x / y })
        .collect()
}

/// A cgroup's CPU time: `usage_usec` of cgroup v2's `cpu.stat` is the scheduler's exact run time
/// of its tasks (user + system; `user_usec`/`system_usec` are the tick-sampled split of it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuUsage {
    pub usage_usec: u64,
    pub user_usec: u64,
    pub system_usec: u64,
}

impl CpuUsage {
    /// From a cgroup v2 `cpu.stat`. The three fields exist in every v2 cgroup since Linux 4.20,
    /// whether or not the `cpu` controller is enabled for it (they come from the cgroup core's
    /// rstat, not from the controller), which is what makes a hybrid host's v2 tree usable.
    pub fn parse_cpu_stat(text: &str) -> anyhow::Result<Self> {
        let field = |name: &str| -> anyhow::Result<Option<u64>> {
            for line in text.lines() {
                let mut f = line.split_whitespace();
                if f.next() == Some(name) {
                    let v = f
                        .next()
                        .with_context(|| format!("cpu.stat: {name} has no value"))?;
                    return Ok(Some(
                        v.parse().with_context(|| format!("cpu.stat: {name} {v:?}"))?,
                    ));
                }
            }
            Ok(None)
        };
        let Some(usage_usec) = field("usage_usec")? else {
            bail!("cpu.stat has no usage_usec line (kernel older than 4.20?)");
        };
        Ok(Self {
            usage_usec,
            user_usec: field("user_usec")?.unwrap_or(0),
            system_usec: field("system_usec")?.unwrap_or(0),
        })
    }

    /// From cgroup v1's `cpuacct.usage` (nanoseconds, the same scheduler run time) and
    /// `cpuacct.stat` (`user`/`system` in USER_HZ ticks, `ticks_per_sec`).
    pub fn parse_cpuacct(usage: &str, stat: &str, ticks_per_sec: u64) -> anyhow::Result<Self> {
        let ns: u64 = usage
            .trim()
            .parse()
            .with_context(|| format!("cpuacct.usage {:?}", usage.trim()))?;
        let ticks = |name: &str| {
            stat.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let usec = |t: u64| t * 1_000_000 / ticks_per_sec.max(1);
        Ok(Self {
            usage_usec: ns / 1000,
            user_usec: usec(ticks("user ")),
            system_usec: usec(ticks("system ")),
        })
    }

    /// The sum of several cgroups' usage (the client, proxy and backend of one run).
    pub fn sum(all: &[Self]) -> Self {
        all.iter().fold(Self::default(), |a, b| Self {
            usage_usec: a.usage_usec + b.usage_usec,
            user_usec: a.user_usec + b.user_usec,
            system_usec: a.system_usec + b.system_usec,
        })
    }

    /// `self - earlier` (saturating: a counter never goes back, but a removed cgroup reads 0).
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            usage_usec: self.usage_usec.saturating_sub(earlier.usage_usec),
            user_usec: self.user_usec.saturating_sub(earlier.user_usec),
            system_usec: self.system_usec.saturating_sub(earlier.system_usec),
        }
    }
}

/// The whole machine's CPU time from the aggregate `cpu` line of `/proc/stat`, in USER_HZ ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineCpu {
    /// Time spent in softirq context (network receive processing among it), every CPU.
    pub softirq_ticks: u64,
    /// user + nice + system + idle + iowait + irq + softirq + steal: wall time x CPUs.
    pub total_ticks: u64,
    /// Time the other guests of the hypervisor took from this one.
    pub steal_ticks: u64,
}

impl MachineCpu {
    pub fn parse_proc_stat(text: &str) -> anyhow::Result<Self> {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some("cpu"))
            .context("/proc/stat has no aggregate cpu line")?;
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().with_context(|| format!("/proc/stat cpu field {v:?}")))
            .collect::<anyhow::Result<_>>()?;
        // user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
        anyhow::ensure!(
            f.len() >= 8,
            "/proc/stat cpu line has {} fields, expected >= 8",
            f.len()
        );
        Ok(Self {
            softirq_ticks: f[6],
            total_ticks: f[..8].iter().sum(),
            steal_ticks: f[7],
        })
    }

    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            softirq_ticks: self.softirq_ticks.saturating_sub(earlier.softirq_ticks),
            total_ticks: self.total_ticks.saturating_sub(earlier.total_ticks),
            steal_ticks: self.steal_ticks.saturating_sub(earlier.steal_ticks),
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn the_spread_of_an_odd_count_has_the_middle_sample_as_median() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!(
            s,
            Spread {
                min: 1.0,
                median: 2.0,
                max: 3.0
            }
        );
        assert_eq!(s.show(1), "1.0/2.0/3.0");
    }

    #[test]
    fn the_spread_of_an_even_count_averages_the_two_middle_samples() {
        let s = Spread::of(&[4.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!(s.median, 3.0);
        assert_eq!((s.min, s.max), (1.0, 10.0));
    }

    #[test]
    fn no_samples_or_a_nan_sample_give_no_spread() {
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(Spread::of(&[1.0, f64::NAN]), None);
        assert_eq!(spread_json(None), Value::Null);
    }

    #[test]
    fn ratios_pair_the_samples_of_the_same_round_and_a_zero_divisor_is_nan() {
        let r = paired_ratios(&[2.0, 3.0, 1.0], &[4.0, 3.0, 0.0]);
        assert_eq!(&r[..2], &[0.5, 1.0]);
        assert!(r[2].is_nan());
    }

    #[test]
    fn a_v2_cpu_stat_without_the_cpu_controller_is_read() {
        // What a hybrid host's v2 cgroup shows when the cpu controller lives in v1.
        let text = "usage_usec 308482\nuser_usec 300000\nsystem_usec 8482\nnice_usec 0\n";
        let u = CpuUsage::parse_cpu_stat(text).unwrap();
        assert_eq!(
            u,
            CpuUsage {
                usage_usec: 308482,
                user_usec: 300000,
                system_usec: 8482
            }
        );
    }

    #[test]
    fn a_v2_cpu_stat_with_the_controller_ignores_the_extra_lines() {
        let text = "usage_usec 10\nuser_usec 6\nsystem_usec 4\nnr_periods 0\nnr_throttled 0\n\
                    throttled_usec 0\nnr_bursts 0\nburst_usec 0\n";
        assert_eq!(CpuUsage::parse_cpu_stat(text).unwrap().usage_usec, 10);
    }

    #[test]
    fn a_cpu_stat_without_usage_or_with_junk_is_an_error() {
        assert!(CpuUsage::parse_cpu_stat("nr_periods 0\n").is_err());
        assert!(CpuUsage::parse_cpu_stat("usage_usec many\n").is_err());
        assert!(CpuUsage::parse_cpu_stat("usage_usec\n").is_err());
    }

    #[test]
    fn v1_cpuacct_nanoseconds_and_ticks_become_microseconds() {
        let u = CpuUsage::parse_cpuacct("2500000\n", "user 20\nsystem 5\n", 100).unwrap();
        assert_eq!(
            u,
            CpuUsage {
                usage_usec: 2500,
                user_usec: 200_000,
                system_usec: 50_000
            }
        );
        assert!(CpuUsage::parse_cpuacct("x", "", 100).is_err());
    }

    #[test]
    fn usage_deltas_and_sums_add_up_per_field() {
        let a = CpuUsage {
            usage_usec: 10,
            user_usec: 6,
            system_usec: 4,
        };
        let b = CpuUsage {
            usage_usec: 25,
            user_usec: 16,
            system_usec: 9,
        };
        assert_eq!(
            b.since(&a),
            CpuUsage {
                usage_usec: 15,
                user_usec: 10,
                system_usec: 5
            }
        );
        assert_eq!(a.since(&b), CpuUsage::default());
        assert_eq!(CpuUsage::sum(&[a, b]).usage_usec, 35);
    }

    #[test]
    fn the_aggregate_cpu_line_of_proc_stat_gives_softirq_and_total_ticks() {
        let text = "cpu  27200 483 8247 12558 731 0 134 208 0 0\n\
                    cpu0 13204 261 4099 7016 70 0 10 107 0 0\nintr 1 2 3\n";
        let m = MachineCpu::parse_proc_stat(text).unwrap();
        assert_eq!(m.softirq_ticks, 134);
        assert_eq!(m.steal_ticks, 208);
        assert_eq!(m.total_ticks, 27200 + 483 + 8247 + 12558 + 731 + 134 + 208);
        let later = MachineCpu {
            softirq_ticks: 140,
            total_ticks: m.total_ticks + 200,
            steal_ticks: 210,
        };
        assert_eq!(
            later.since(&m),
            MachineCpu {
                softirq_ticks: 6,
                total_ticks: 200,
                steal_ticks: 2
            }
        );
    }

    #[test]
    fn a_proc_stat_without_a_full_cpu_line_is_an_error() {
        assert!(MachineCpu::parse_proc_stat("cpu0 1 2 3 4 5 6 7 8\n").is_err());
        assert!(MachineCpu::parse_proc_stat("cpu 1 2 3\n").is_err());
        assert!(MachineCpu::parse_proc_stat("cpu 1 2 x 4 5 6 7 8\n").is_err());
    }
}
