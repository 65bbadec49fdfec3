//! `cargo xtask bench redirect`: short-lived connections (connect, one request line, reply, close)
//! from an app in a test pod, through the same proxy, three ways:
//!
//! - `limit`: no redirect, the client dials the proxy itself (the proxy relays to a fixed backend):
//!   the cost of the proxy hop alone, the best any redirect can do;
//! - `ebpf`: the client dials a service address, cgroup/connect4 rewrites it to the proxy;
//! - `iptables`: the same, through a nat REDIRECT chain (conntrack + NAT on every packet).
//!
//! The proxy and backend are `bench-server` (a fixed worker pool per listener, no per-connection
//! thread, allocation or log line), not the functional suites' `test-proxy`, whose two thread
//! spawns and log line per connection cost more than any redirect does and hid the differences.
//! The proxy still asks for `SO_ORIGINAL_DST` on every connection and, with `--proxy upstream`
//! (default), dials the original destination like Envoy; `--proxy local` answers itself after
//! reading the original destination, so the redirect is a larger share of each connection.
//!
//! Why `limit` is the fair bound: its proxy is the same binary with the same workers and mode, and
//! it makes the same `getsockopt(SO_ORIGINAL_DST)` call per connection, which takes the same kernel
//! path (ip_getsockopt, netfilter's conntrack lookup, a miss: ENOENT) before the proxy falls back to
//! the backend address the redirected modes' original destination names; its backend and client
//! are the same too. What only the ebpf mode does is the redirect: connect4 (1 run per connection),
//! sockops (5 runs: every TCP callback of the client socket), getsockopt's program (1 run) and the
//! cgroup hooks around them. The programs attach where the agent attaches them
//! (`plan::desired_links`): connect/sockops/bind on the pod cgroup (the client only), getsockopt on
//! the proxy's cgroup, nothing on the backend's.
//!
//! Two kinds of figures per mode. Wall-clock ones (conn/s, latency) move with whatever else the
//! machine runs: on a shared 2-core VM by several percent from one run to the next, more than the
//! few microseconds the eBPF programs add to a ~150 us connection. CPU cost does not: the client,
//! proxy and backend of every run live in cgroups of the run's own (a fresh pod per run), and the
//! CPU microseconds those cgroups used per connection (cgroup `cpu.stat` usage_usec, user + system,
//! which includes the kernel's network work done on those tasks' time; see bench_cpu for v1
//! fallback) is what each connection costs whoever else is busy. The machine's softirq time over
//! the same window (/proc/stat) is shown beside it: receive work the kernel deferred to ksoftirqd
//! is not charged to the run's cgroups.
//!
//! Rounds: every mode runs once per round in a fresh pod (so conntrack state of one run does not
//! slow another), and the three modes of a round run at the same time, each in its own pod and
//! cgroups: the CPU a connection costs still moves with the machine's load (other processes evict
//! the caches; on a 2-core VM shared with compilers by +-10 % from one 5 s window to the next),
//! but it moves for all three modes alike, so their ratios hold still, provided every mode's
//! processes are placed alike: by default they all run on the machine's last CPU (`--cpus`; see
//! bench_redirect/pinning for why and the figures). `--sequential` runs them
//! one after another instead (each mode's wall-clock figures alone; the v1 fallback always does,
//! one cpuacct group cannot tell the modes apart), rotating the order between rounds. Every
//! figure is shown as min/median/max over rounds, and the ratios are computed per round before
//! their spread is taken. The machine's softirq time is the whole machine's, so with the modes
//! together each mode's per-connection softirq figure counts all three modes' softirq work.
//! Also prints each eBPF program's run_cnt and run_time_ns over one extra ebpf run with
//! `kernel.bpf_stats_enabled` switched on (restored after; kept out of the table, since the
//! instrumentation slows every program run and only the ebpf mode runs programs) and the load
//! average before and after. `--json FILE` writes every figure for `cargo xtask bench compare`.
//! A benchmark, not a test: it asserts nothing beyond "no errors". Needs root.
mod bpf_stats;
mod pinning;
mod report;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};
use traffic_redirect::ebpf::{EbpfConfig, EbpfRedirector};
use traffic_redirect::iptables::{Flavour, IptablesRedirector};
use traffic_redirect::{PodKey, PodRedirect, Redirector, Settings};
use traffic_tests::{bins, Placement, ScratchDir, TestPod};

use crate::bench_cpu::{self, CgroupCpu, CpuacctGroup};
use crate::cmd;
use report::{Load, Ratio, Report, Round, Runs};

/// The service the client dials in the redirected modes: `bench-server backend` listens on this
/// port in the backend netns, where the whole service range is local.
const SERVICE: &str = "10.96.0.10:9090";
const BACKEND_PORT: &str = "9090";
const PROXY_PORT: u16 = 15001;
const BENCH_SERVER: &str = "bench-server";
const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Seconds of load per mode and round.
    #[arg(long, default_value_t = 5)]
    pub duration_secs: u64,
    /// Concurrent client threads (each runs connect/request/reply/close in a loop).
    #[arg(long, default_value_t = 4)]
    pub concurrency: u32,
    /// Rounds (every mode once per round); every figure is shown as min/median/max over them.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Worker threads of the proxy and of the backend (each serves one connection at a time).
    #[arg(long, default_value_t = 8)]
    pub workers: u32,
    /// What the proxy does after reading the original destination: dial it (like Envoy) or answer itself.
    #[arg(long, value_enum, default_value_t = ProxyMode::Upstream)]
    pub proxy: ProxyMode,
    /// iptables flavour for the iptables mode.
    #[arg(long, value_enum, default_value_t = FlavourArg::Nft)]
    pub flavour: FlavourArg,
    /// Use debug builds of the test binaries (faster to build, slower servers).
    #[arg(long)]
    pub debug: bool,
    /// Run the modes of a round one after another instead of all at once (the wall-clock figures
    /// are then each mode's alone; the CPU ratios move with the machine's load between the runs).
    #[arg(long)]
    pub sequential: bool,
    /// Also write every figure (and each round's raw counters) to this file as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// CPUs every process of the run (client, proxy, backend of every mode) runs on: `last` (the
    /// machine's last CPU: every mode gets the same same-CPU hand-offs, see bench_redirect/pinning),
    /// `all` (no pinning), or a list such as `1` or `0-1`.
    #[arg(long, default_value = "last")]
    pub cpus: String,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum FlavourArg {
    Nft,
    Legacy,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    Upstream,
    Local,
}

impl ProxyMode {
    fn arg(self) -> &'static str {
        match self {
            ProxyMode::Upstream => "upstream",
            ProxyMode::Local => "local",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Limit,
    Ebpf,
    Iptables,
}

pub fn run(o: Options) -> anyhow::Result<()> {
    anyhow::ensure!(
        cmd::is_root(),
        "the benchmark creates network namespaces and attaches BPF: run it as root"
    );
    anyhow::ensure!(o.rounds > 0, "--rounds must be at least 1");
    let cpu_choice = pinning::CpuChoice::parse(&o.cpus)?;
    let bin_dir = build_test_binaries(o.debug)?;
    // After the build (which should use every CPU), before any thread or process starts: they all
    // inherit this thread's CPUs.
    let pinned = cpu_choice.resolve(&pinning::allowed_cpus()?)?;
    if let Some(cpus) = &pinned {
        pinning::pin_to(cpus)?;
    }
    let cpus_shown = pinned.map_or_else(|| "all".to_string(), |c| format!("{c:?}"));
    // Read by traffic_tests::bins; set before any thread starts.
    std::env::set_var(bins::BIN_DIR_ENV, &bin_dir);
    let flavour = match o.flavour {
        FlavourArg::Nft => Flavour::Nft,
        FlavourArg::Legacy => Flavour::Legacy,
    };
    let cgroup2 = bench_cpu::cgroup2_mount()?;
    // v2 cpu.stat accounts CPU without the cpu controller; only a kernel where it does not needs
    // the v1 cpuacct group (see bench_cpu).
    let v1_group = if bench_cpu::v2_accounts_cpu(&cgroup2) {
        None
    } else {
        eprintln!(
            "bench: cgroup v2 at {} shows no usage_usec: counting CPU in a v1 cpuacct group",
            cgroup2.display()
        );
        Some(CpuacctGroup::join()?)
    };
    let accounting = match &v1_group {
        None => format!("cgroup2 cpu.stat ({})", cgroup2.display()),
        Some(_) => "cgroup1 cpuacct.usage".to_string(),
    };
    let load_before = loadavg();
    eprintln!(
        "bench: {} rounds x {}s per mode, {} client threads, {} workers, proxy {}, service {SERVICE}, CPU from {accounting}, CPUs {cpus_shown}, load {load_before}",
        o.rounds,
        o.duration_secs,
        o.concurrency,
        o.workers,
        o.proxy.arg()
    );

    let scratch = ScratchDir::temp("bench-ipt")?;
    let ipt = IptablesRedirector::new(flavour, scratch.path())?;
    let pins = ScratchDir::new(Path::new("/sys/fs/bpf"), "bench-")?;
    let ebpf = EbpfRedirector::new(EbpfConfig {
        pin_root: pins.path().to_path_buf(),
        ..EbpfConfig::default()
    })
    .context("load the eBPF redirector (run `cargo xtask build-ebpf` first)")?;
    let mut runs: BTreeMap<Mode, Runs> = BTreeMap::new();
    // Per program name: (run_cnt, run_time_ns) over the stats run.
    let mut progs: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let order = [Mode::Limit, Mode::Iptables, Mode::Ebpf];
    let v1 = v1_group.as_ref();
    // One v1 group cannot tell the modes apart: there they take turns.
    let together = !o.sequential && v1.is_none();
    let result = (|| -> anyhow::Result<()> {
        for round in 0..o.rounds as usize {
            let modes: Vec<(Mode, Option<&dyn Redirector>, &str)> = (0..order.len())
                .map(|i| {
                    let mode = order[(round + i) % order.len()];
                    match mode {
                        Mode::Limit => (mode, None, "127.0.0.1:15001"),
                        Mode::Iptables => (mode, Some(&ipt as &dyn Redirector), SERVICE),
                        Mode::Ebpf => (mode, Some(&ebpf as &dyn Redirector), SERVICE),
                    }
                })
                .collect();
            let results = if together {
                measure_together(&modes, &o)?
            } else {
                modes
                    .iter()
                    .map(|(m, r, dst)| Ok((*m, measure(*r, dst, &o, v1, |_| Ok(()))?)))
                    .collect::<anyhow::Result<Vec<_>>>()?
            };
            for (mode, r) in results {
                eprintln!(
                    "round {} {mode:?}: {:.0} conn/s, CPU {:.2} us/conn, softirq {:.2} us/conn, p50 {}us p99 {}us errors {}",
                    round + 1,
                    r.rate(),
                    r.cpu_us_per_conn(),
                    r.softirq_us_per_conn(),
                    r.load.p50_us,
                    r.load.p99_us,
                    r.load.errors
                );
                runs.entry(mode).or_default().0.push(r);
            }
        }
        // The per-program costs come from one more ebpf run with kernel.bpf_stats_enabled on, kept
        // out of the table: the instrumentation adds two clock reads to every program run, a cost
        // only the ebpf mode would pay.
        let stats_before = std::fs::read_to_string(BPF_STATS_SYSCTL).unwrap_or_else(|_| "0".into());
        std::fs::write(BPF_STATS_SYSCTL, "1").context("enable kernel.bpf_stats_enabled")?;
        let mut before = BTreeMap::new();
        let stats_run = measure(Some(&ebpf), SERVICE, &o, v1, |phase| {
            let now = bpf_stats::attached_program_stats(phase.cgroups)?;
            if phase.before {
                before = now;
            } else {
                for (id, after) in now {
                    let b = before.get(&id).cloned().unwrap_or_default();
                    let e = progs.entry(after.name.clone()).or_default();
                    e.0 += after.run_cnt.saturating_sub(b.run_cnt);
                    e.1 += after.run_time_ns.saturating_sub(b.run_time_ns);
                }
            }
            Ok(())
        });
        let _ = std::fs::write(BPF_STATS_SYSCTL, stats_before.trim());
        let stats_run = stats_run?;
        eprintln!(
            "stats run Ebpf (bpf_stats_enabled=1): {:.0} conn/s, CPU {:.2} us/conn, p50 {}us p99 {}us errors {}",
            stats_run.rate(),
            stats_run.cpu_us_per_conn(),
            stats_run.load.p50_us,
            stats_run.load.p99_us,
            stats_run.load.errors
        );
        Ok(())
    })();
    drop(ebpf);
    if let Err(e) = EbpfRedirector::purge_pin_root(pins.path()) {
        eprintln!("cleanup: purge {}: {e}", pins.path().display());
    }
    drop(v1_group);
    result?;

    let get = |m: Mode| runs.get(&m);
    let (Some(limit), Some(ebpf_runs), Some(ipt_runs)) =
        (get(Mode::Limit), get(Mode::Ebpf), get(Mode::Iptables))
    else {
        bail!("a mode has no runs");
    };
    let load_after = loadavg();
    let report = Report {
        modes: vec![
            ("limit".into(), limit),
            ("ebpf".into(), ebpf_runs),
            (flavour.to_string(), ipt_runs),
        ],
        ebpf_over_limit: Ratio::of(ebpf_runs, limit),
        ebpf_over_iptables: Ratio::of(ebpf_runs, ipt_runs),
        programs: &progs,
        config: serde_json::json!({
            "duration_secs": o.duration_secs, "concurrency": o.concurrency, "rounds": o.rounds,
            "workers": o.workers, "proxy": o.proxy.arg(), "flavour": flavour.to_string(),
            "cpu_accounting": accounting, "load_before": load_before, "load_after": load_after,
            "modes_run": if together { "together" } else { "sequential" },
            "cpus": cpus_shown,
        }),
    };
    println!(
        "\nredirect benchmark: short-lived connections through bench-server (proxy {}), {} rounds x {}s, modes {}, {} client threads each, CPUs {cpus_shown}, CPU from {accounting}",
        o.proxy.arg(),
        o.rounds,
        o.duration_secs,
        if together { "together" } else { "one after another" },
        o.concurrency
    );
    println!("load average before: {load_before}  after: {load_after}");
    print!("{}", report.text());
    println!(
        "\neBPF programs over one more ebpf run with kernel.bpf_stats_enabled=1 (not in the table above):"
    );
    print!("{}", report::programs_text(&progs));
    if let Some(path) = &o.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json())?)
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("bench: JSON report in {}", path.display());
    }
    let errors = limit.errors() + ebpf_runs.errors() + ipt_runs.errors();
    anyhow::ensure!(errors == 0, "{errors} connections failed");
    Ok(())
}

/// The 1, 5 and 15 minute load averages (the machine is shared: read them next to the numbers).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// What a stats hook sees: before or after the load, and which cgroups the redirect touches.
struct Phase<'a> {
    before: bool,
    cgroups: &'a [PathBuf],
}

/// A `bench-server` process: killed and reaped on drop.
struct Server(Child);

impl Server {
    fn start(placement: &Placement, args: &[&str]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(bins::path(BENCH_SERVER)?);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut server = Server(placement.spawn(&mut cmd)?);
        let stdout = server.0.stdout.take().context("bench-server stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("read bench-server stdout")?;
        anyhow::ensure!(
            line.starts_with("listening"),
            "bench-server {args:?} did not start: {line:?}"
        );
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One mode's pod with its proxy and backend and the redirect enabled (if any), ready for load;
/// the redirect is removed on drop, then the servers and the pod.
struct Stage<'a> {
    redirector: Option<&'a dyn Redirector>,
    key: PodKey,
    dst: &'a str,
    /// Client, proxy and backend: every process of the run.
    clock: CgroupCpu,
    /// The pod and proxy cgroups (where the redirect attaches).
    cgroups: [PathBuf; 2],
    _proxy: Server,
    _backend: Server,
    pod: TestPod,
}

impl Drop for Stage<'_> {
    fn drop(&mut self) {
        if let Some(r) = self.redirector {
            if let Err(e) = r.disable(&self.key) {
                eprintln!("cleanup: disable the redirect of {}: {e:#}", self.key);
            }
        }
    }
}

fn stage<'a>(
    redirector: Option<&'a dyn Redirector>,
    dst: &'a str,
    o: &Options,
    v1: Option<&CpuacctGroup>,
) -> anyhow::Result<Stage<'a>> {
    let pod = TestPod::new("tb")?;
    let workers = o.workers.to_string();
    let backend_placement = pod.backend_placement();
    let backend = Server::start(&backend_placement, &["backend", BACKEND_PORT, &workers])?;
    let port = PROXY_PORT.to_string();
    let mut proxy_args = vec!["proxy", &port, &workers, o.proxy.arg()];
    // Only the no-redirect run may fall back: a redirected connection whose original destination
    // cannot be read must fail, not be hidden by the fallback.
    if redirector.is_none() {
        proxy_args.push(SERVICE);
    }
    let proxy = Server::start(&pod.proxy_placement(), &proxy_args)?;
    let key = PodKey::new(pod.name.clone())?;
    let cgroups = [pod.cgroup().to_path_buf(), pod.proxy_cgroup().to_path_buf()];
    let clock = match v1 {
        Some(group) => group.clock(),
        None => CgroupCpu::V2(
            cgroups
                .iter()
                .cloned()
                .chain(backend_placement.cgroup.clone())
                .collect(),
        ),
    };
    if let Some(r) = redirector {
        r.enable(&PodRedirect {
            key: key.clone(),
            cgroup: pod.cgroup().to_path_buf(),
            netns: pod.netns(),
            proxy_cgroups: vec![pod.proxy_cgroup().to_path_buf()],
            settings: Settings {
                proxy_port: PROXY_PORT,
                ..Settings::default()
            },
        })?;
    }
    Ok(Stage {
        redirector,
        key,
        dst,
        clock,
        cgroups,
        _proxy: proxy,
        _backend: backend,
        pod,
    })
}

/// The client's load on a staged pod, with the CPU of the pod's cgroups (or the v1 group) and the
/// machine's counters taken around it.
fn load(pod: &TestPod, clock: &CgroupCpu, dst: &str, o: &Options) -> anyhow::Result<Round> {
    let args: Vec<String> = [
        "bench".to_string(),
        dst.to_string(),
        (o.duration_secs * 1000).to_string(),
        o.concurrency.to_string(),
    ]
    .to_vec();
    let ((out, machine), cpu) = bench_cpu::counted(clock, || {
        let before = bench_cpu::machine_cpu()?;
        let out = pod.run_client(&args)?;
        Ok((out, bench_cpu::machine_cpu()?.since(&before)))
    })?;
    if !out.success {
        bail!("bench client failed: {}", out.stderr);
    }
    let load = out
        .stdout
        .lines()
        .find_map(Load::parse)
        .with_context(|| format!("no bench line in {:?}", out.stdout))?;
    Ok(Round {
        load,
        cpu,
        machine,
        ticks_per_sec: bench_cpu::clk_tck(),
    })
}

/// One mode alone: staged, the hook before and after its load.
fn measure(
    redirector: Option<&dyn Redirector>,
    dst: &str,
    o: &Options,
    v1: Option<&CpuacctGroup>,
    mut hook: impl FnMut(Phase<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<Round> {
    let st = stage(redirector, dst, o, v1)?;
    hook(Phase {
        before: true,
        cgroups: &st.cgroups,
    })?;
    let round = load(&st.pod, &st.clock, st.dst, o);
    hook(Phase {
        before: false,
        cgroups: &st.cgroups,
    })?;
    round
}

/// Every mode at once, each in its pod and cgroups: the same moment's noise for all of them.
fn measure_together(
    modes: &[(Mode, Option<&dyn Redirector>, &str)],
    o: &Options,
) -> anyhow::Result<Vec<(Mode, Round)>> {
    let staged = modes
        .iter()
        .map(|(m, r, dst)| Ok((*m, stage(*r, dst, o, None)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::thread::scope(|s| {
        let loads: Vec<_> = staged
            .iter()
            .map(|(m, st)| {
                let (pod, clock, dst) = (&st.pod, &st.clock, st.dst);
                (*m, s.spawn(move || load(pod, clock, dst, o)))
            })
            .collect();
        loads
            .into_iter()
            .map(|(m, h)| {
                let r = h
                    .join()
                    .map_err(|_| anyhow::anyhow!("the {m:?} load thread panicked"))??;
                Ok((m, r))
            })
            .collect()
    })
}

/// `cargo build -p traffic-tests --bins`; returns the directory holding the binaries.
fn build_test_binaries(debug: bool) -> anyhow::Result<PathBuf> {
    let root = cmd::workspace_root();
    let cargo = cmd::cargo();
    let mut build = Command::new(cargo);
    build
        .current_dir(&root)
        .args(["build", "-p", "traffic-tests", "--bins"]);
    if !debug {
        build.arg("--release");
    }
    cmd::run(&mut build)?;
    let target = cmd::target_dir();
    Ok(target.join(if debug { "debug" } else { "release" }))
}
