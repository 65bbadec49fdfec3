//! The redirect benchmark's figures: what one round of one mode measured, and the table, ratios
//! and JSON made of all rounds. Pure: the numbers come in, text and JSON go out.
use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::bench_stats::{paired_ratios, spread_json, CpuUsage, MachineCpu, Spread};

/// What the client printed (`bench conns=.. errors=.. secs=.. p50_us=.. p99_us=..`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    pub conns: u64,
    pub errors: u64,
    pub secs: f64,
    pub p50_us: u64,
    pub p99_us: u64,
}

impl Load {
    pub fn parse(line: &str) -> Option<Self> {
        let mut f: BTreeMap<&str, &str> = BTreeMap::new();
        for field in line.strip_prefix("bench ")?.split_whitespace() {
            let (k, v) = field.split_once('=')?;
            f.insert(k, v);
        }
        Some(Self {
            conns: f.get("conns")?.parse().ok()?,
            errors: f.get("errors")?.parse().ok()?,
            secs: f.get("secs")?.parse().ok()?,
            p50_us: f.get("p50_us")?.parse().ok()?,
            p99_us: f.get("p99_us")?.parse().ok()?,
        })
    }
}

/// One mode in one round: the client's figures, the CPU time of the run's cgroups (client, proxy,
/// backend) and the machine's counters over the same window.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    pub load: Load,
    pub cpu: CpuUsage,
    pub machine: MachineCpu,
    /// USER_HZ of the machine counters.
    pub ticks_per_sec: u64,
}

impl Round {
    fn per_conn(&self, usec: f64) -> f64 {
        if self.load.conns == 0 {
            f64::NAN
        } else {
            usec / self.load.conns as f64
        }
    }
    pub fn rate(&self) -> f64 {
        self.load.conns as f64 / self.load.secs
    }
    pub fn cpu_us_per_conn(&self) -> f64 {
        self.per_conn(self.cpu.usage_usec as f64)
    }
    /// Softirq time of the whole machine over the window, per connection of this run (other
    /// processes' softirq work is in it too; tick-sampled, so coarse for short windows).
    pub fn softirq_us_per_conn(&self) -> f64 {
        let us = self.machine.softirq_ticks as f64 * 1e6 / self.ticks_per_sec as f64;
        self.per_conn(us)
    }
}

/// A figure of a round: its name (a table column and a JSON key) and how it is computed.
type Figure = (&'static str, fn(&Round) -> f64);

/// The figures of a round, by name: the table columns and JSON keys, in order.
const FIGURES: &[Figure] = &[
    ("conn_per_s", Round::rate),
    ("cpu_us_per_conn", Round::cpu_us_per_conn),
    ("user_us_per_conn", |r| r.per_conn(r.cpu.user_usec as f64)),
    ("system_us_per_conn", |r| r.per_conn(r.cpu.system_usec as f64)),
    ("softirq_us_per_conn", Round::softirq_us_per_conn),
    ("p50_us", |r| r.load.p50_us as f64),
    ("p99_us", |r| r.load.p99_us as f64),
];

/// The rounds of one mode, in round order (round i of every mode ran in the same round).
#[derive(Debug, Default)]
pub struct Runs(pub Vec<Round>);

impl Runs {
    fn samples(&self, f: fn(&Round) -> f64) -> Vec<f64> {
        self.0.iter().map(f).collect()
    }
    pub fn spread(&self, f: fn(&Round) -> f64) -> Option<Spread> {
        Spread::of(&self.samples(f))
    }
    pub fn errors(&self) -> u64 {
        self.0.iter().map(|r| r.load.errors).sum()
    }
}

/// eBPF against another mode, per round: by throughput (conn/s, higher = better) and by CPU cost
/// (the other mode's CPU per connection over eBPF's: connections per CPU-second relative to it,
/// so 0.98 means eBPF spends 1/0.98 = 1.02x the CPU per connection).
#[derive(Debug, Clone, Copy)]
pub struct Ratio {
    pub by_rate: Option<Spread>,
    pub by_cpu: Option<Spread>,
}

impl Ratio {
    pub fn of(ebpf: &Runs, other: &Runs) -> Self {
        Self {
            by_rate: Spread::of(&paired_ratios(
                &ebpf.samples(Round::rate),
                &other.samples(Round::rate),
            )),
            by_cpu: Spread::of(&paired_ratios(
                &other.samples(Round::cpu_us_per_conn),
                &ebpf.samples(Round::cpu_us_per_conn),
            )),
        }
    }
    fn to_json(self) -> Value {
        json!({"by_cpu": spread_json(self.by_cpu), "by_rate": spread_json(self.by_rate)})
    }
}

/// Everything one benchmark run measured.
pub struct Report<'a> {
    /// (mode name, its rounds): limit, ebpf, iptables.
    pub modes: Vec<(String, &'a Runs)>,
    pub ebpf_over_limit: Ratio,
    pub ebpf_over_iptables: Ratio,
    /// Per program: (run_cnt, run_time_ns) over the bpf_stats run.
    pub programs: &'a BTreeMap<String, (u64, u64)>,
    pub config: Value,
}

fn show(s: Option<Spread>, decimals: usize) -> String {
    s.map(|s| s.show(decimals)).unwrap_or_else(|| "-".into())
}

impl Report<'_> {
    /// The table (min/median/max over rounds for every figure) and the ratios.
    pub fn text(&self) -> String {
        let mut s = format!(
            "{:<10} {:>20} {:>17} {:>17} {:>17} {:>17} {:>17} {:>6}\n",
            "mode",
            "conn/s",
            "CPU us/conn",
            "user us/conn",
            "sys us/conn",
            "softirq us/conn",
            "p99_us",
            "errors"
        );
        for (name, runs) in &self.modes {
            let col = |i: usize, d: usize| show(runs.spread(FIGURES[i].1), d);
            s.push_str(&format!(
                "{name:<10} {:>20} {:>17} {:>17} {:>17} {:>17} {:>17} {:>6}\n",
                col(0, 0),
                col(1, 2),
                col(2, 1),
                col(3, 1),
                col(4, 2),
                col(6, 0),
                runs.errors()
            ));
        }
        s.push_str(
            "(min/median/max over rounds; CPU = the run's cgroups' cpu.stat usage_usec = user + system)\n",
        );
        for (what, r, target) in [
            ("ebpf/limit", self.ebpf_over_limit, "0.98"),
            ("ebpf/iptables", self.ebpf_over_iptables, "1.3"),
        ] {
            s.push_str(&format!(
                "{what:<14} by CPU cost {} (target >= {target})   by conn/s {}\n",
                show(r.by_cpu, 4),
                show(r.by_rate, 3)
            ));
        }
        s.push_str(
            "(ratios per round, min/median/max; by CPU cost = other mode's CPU per connection / eBPF's)\n",
        );
        s
    }

    /// The `--json` report: `bench compare` reads it.
    pub fn json(&self) -> Value {
        let mut modes = Map::new();
        for (name, runs) in &self.modes {
            let mut m = Map::new();
            for (key, f) in FIGURES {
                m.insert(key.to_string(), spread_json(runs.spread(*f)));
            }
            m.insert("errors".into(), json!(runs.errors()));
            let rounds: Vec<Value> = runs
                .0
                .iter()
                .map(|r| {
                    json!({"conns": r.load.conns, "secs": r.load.secs, "cpu_usage_usec": r.cpu.usage_usec,
                           "softirq_ticks": r.machine.softirq_ticks, "steal_ticks": r.machine.steal_ticks})
                })
                .collect();
            m.insert("rounds".into(), Value::Array(rounds));
            modes.insert(name.clone(), Value::Object(m));
        }
        let programs: Map<String, Value> = self
            .programs
            .iter()
            .map(|(name, (cnt, ns))| {
                (
                    name.clone(),
                    json!({"run_cnt": cnt, "run_time_ns": ns, "ns_per_run": ns.checked_div(*cnt).unwrap_or(0)}),
                )
            })
            .collect();
        json!({
            "bench": "redirect",
            "config": self.config,
            "modes": modes,
            "ratios": {
                "ebpf_over_limit": self.ebpf_over_limit.to_json(),
                "ebpf_over_iptables": self.ebpf_over_iptables.to_json(),
            },
            "bpf_programs": programs,
        })
    }
}

/// The per-program table of the bpf_stats run.
pub fn programs_text(programs: &BTreeMap<String, (u64, u64)>) -> String {
    let mut s = format!(
        "{:<20} {:>10} {:>14} {:>8}\n",
        "name", "run_cnt", "run_time_ns", "ns/run"
    );
    for (name, (cnt, ns)) in programs {
        let avg = ns.checked_div(*cnt).unwrap_or(0);
        s.push_str(&format!("{name:<20} {cnt:>10} {ns:>14} {avg:>8}\n"));
    }
    s
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn round(conns: u64, usage_usec: u64) -> Round {
        Round {
            load: Load {
                conns,
                errors: 0,
                secs: 2.0,
                p50_us: 100,
                p99_us: 300,
            },
            cpu: CpuUsage {
                usage_usec,
                user_usec: usage_usec / 4,
                system_usec: usage_usec * 3 / 4,
            },
            machine: MachineCpu {
                softirq_ticks: 5,
                total_ticks: 400,
                steal_ticks: 0,
            },
            ticks_per_sec: 100,
        }
    }

    #[test]
    fn the_client_line_is_parsed_and_other_lines_are_not() {
        let l = Load::parse("bench conns=10 errors=1 secs=2.500 p50_us=7 p99_us=9").unwrap();
        assert_eq!(
            l,
            Load {
                conns: 10,
                errors: 1,
                secs: 2.5,
                p50_us: 7,
                p99_us: 9
            }
        );
        assert_eq!(Load::parse("ok dst=1"), None);
        assert_eq!(
            Load::parse("bench conns=x errors=1 secs=1 p50_us=1 p99_us=1"),
            None
        );
    }

    #[test]
    fn per_connection_figures_divide_the_window_by_the_connections() {
        let r = round(1000, 150_000);
        assert_eq!(r.rate(), 500.0);
        assert_eq!(r.cpu_us_per_conn(), 150.0);
        // 5 ticks at 100 Hz = 50 ms = 50 us per connection.
        assert_eq!(r.softirq_us_per_conn(), 50.0);
        assert!(round(0, 1).cpu_us_per_conn().is_nan());
    }

    #[test]
    fn cpu_ratios_are_the_other_modes_cost_over_ebpfs_per_round() {
        let limit = Runs(vec![round(1000, 100_000), round(1000, 100_000)]);
        let ebpf = Runs(vec![round(900, 102_000), round(1100, 100_000)]);
        let r = Ratio::of(&ebpf, &limit);
        let cpu = r.by_cpu.unwrap();
        // Round 1: 100 / 113.3; round 2: 100 / 90.9.
        assert!((cpu.min - 100.0 / (102_000.0 / 900.0)).abs() < 1e-9);
        assert!((cpu.max - 1.1).abs() < 1e-9);
        let rate = r.by_rate.unwrap();
        assert_eq!((rate.min, rate.max), (0.9, 1.1));
    }

    #[test]
    fn the_json_report_has_a_spread_per_figure_and_mode_and_the_ratios() {
        let runs = Runs(vec![
            round(1000, 100_000),
            round(1000, 110_000),
            round(1000, 120_000),
        ]);
        let programs = BTreeMap::from([("connect4".to_string(), (10, 1000))]);
        let report = Report {
            modes: vec![("limit".into(), &runs), ("ebpf".into(), &runs)],
            ebpf_over_limit: Ratio::of(&runs, &runs),
            ebpf_over_iptables: Ratio::of(&runs, &runs),
            programs: &programs,
            config: json!({"rounds": 3}),
        };
        let j = report.json();
        assert_eq!(j["bench"], "redirect");
        assert_eq!(j["modes"]["ebpf"]["cpu_us_per_conn"]["median"], 110.0);
        assert_eq!(j["ratios"]["ebpf_over_limit"]["by_cpu"]["median"], 1.0);
        assert_eq!(j["bpf_programs"]["connect4"]["ns_per_run"], 100);
        let text = report.text();
        assert!(text.contains("100.00/110.00/120.00"), "{text}");
        assert!(programs_text(&programs).contains("connect4"));
    }
}
