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
//! Rounds: every mode runs once per round (fresh pod each time, so conntrack state of one run does
//! not slow another; the order rotates between rounds so drift in the machine's load does not
//! favour one mode); the table shows the median and the best round per mode, ratios of medians
//! and of bests. Also prints each eBPF program's run_cnt and run_time_ns over one extra ebpf run
//! with `kernel.bpf_stats_enabled` switched on (restored after; kept out of the table, since the
//! instrumentation slows every program run and only the ebpf mode runs programs) and the load
//! average before and after. A benchmark, not a test: it asserts nothing beyond "no errors".
//! Needs root.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};
use traffic_redirect::ebpf::{EbpfConfig, EbpfRedirector};
use traffic_redirect::iptables::{Flavour, IptablesRedirector};
use traffic_redirect::{PodKey, PodRedirect, Redirector, Settings};
use traffic_tests::{bins, Placement, ScratchDir, TestPod};

use crate::cmd;

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
    /// Rounds (every mode once per round); the report shows the median and the best round.
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

/// One mode's client-side result.
#[derive(Debug, Clone, Copy)]
struct Load {
    conns: u64,
    errors: u64,
    secs: f64,
    p50_us: u64,
    p99_us: u64,
}

impl Load {
    fn rate(&self) -> f64 {
        self.conns as f64 / self.secs
    }
    fn parse(line: &str) -> Option<Self> {
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

/// The runs of one mode, one per round.
#[derive(Debug, Default)]
struct Runs(Vec<Load>);

impl Runs {
    /// The run with the median rate (the lower middle one for an even count).
    fn median(&self) -> Option<Load> {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
        v.get(v.len().saturating_sub(1) / 2).copied()
    }
    fn best(&self) -> Option<Load> {
        self.0
            .iter()
            .copied()
            .max_by(|a, b| a.rate().total_cmp(&b.rate()))
    }
    fn errors(&self) -> u64 {
        self.0.iter().map(|l| l.errors).sum()
    }
}

/// Per-program BPF run statistics (from `bpftool prog show`).
#[derive(Debug, Clone, Default)]
struct ProgStats {
    name: String,
    run_cnt: u64,
    run_time_ns: u64,
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
    let bin_dir = build_test_binaries(o.debug)?;
    // Read by traffic_tests::bins; set before any thread starts.
    std::env::set_var(bins::BIN_DIR_ENV, &bin_dir);
    let flavour = match o.flavour {
        FlavourArg::Nft => Flavour::Nft,
        FlavourArg::Legacy => Flavour::Legacy,
    };
    let load_before = loadavg();
    eprintln!(
        "bench: {} rounds x {}s per mode, {} client threads, {} workers, proxy {}, service {SERVICE}, load {load_before}",
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
    let result = (|| -> anyhow::Result<()> {
        for round in 0..o.rounds as usize {
            for i in 0..order.len() {
                let mode = order[(round + i) % order.len()];
                let (redirector, dst): (Option<&dyn Redirector>, &str) = match mode {
                    Mode::Limit => (None, "127.0.0.1:15001"),
                    Mode::Iptables => (Some(&ipt), SERVICE),
                    Mode::Ebpf => (Some(&ebpf), SERVICE),
                };
                let load = measure(redirector, dst, &o, |_| Ok(()))?;
                eprintln!(
                    "round {} {mode:?}: {:.0} conn/s p50 {}us p99 {}us errors {}",
                    round + 1,
                    load.rate(),
                    load.p50_us,
                    load.p99_us,
                    load.errors
                );
                runs.entry(mode).or_default().0.push(load);
            }
        }
        // The per-program costs come from one more ebpf run with kernel.bpf_stats_enabled on, kept
        // out of the table: the instrumentation adds two clock reads to every program run, a cost
        // only the ebpf mode would pay.
        let stats_before = std::fs::read_to_string(BPF_STATS_SYSCTL).unwrap_or_else(|_| "0".into());
        std::fs::write(BPF_STATS_SYSCTL, "1").context("enable kernel.bpf_stats_enabled")?;
        let mut before = BTreeMap::new();
        let stats_run = measure(Some(&ebpf), SERVICE, &o, |phase| {
            let now = attached_program_stats(phase.cgroups)?;
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
            "stats run Ebpf (bpf_stats_enabled=1): {:.0} conn/s p50 {}us p99 {}us errors {}",
            stats_run.rate(),
            stats_run.p50_us,
            stats_run.p99_us,
            stats_run.errors
        );
        Ok(())
    })();
    drop(ebpf);
    if let Err(e) = EbpfRedirector::purge_pin_root(pins.path()) {
        eprintln!("cleanup: purge {}: {e}", pins.path().display());
    }
    result?;

    let get = |m: Mode| runs.get(&m);
    let (Some(limit), Some(ebpf_runs), Some(ipt_runs)) =
        (get(Mode::Limit), get(Mode::Ebpf), get(Mode::Iptables))
    else {
        bail!("a mode has no runs");
    };
    println!(
        "\nredirect benchmark: short-lived connections through bench-server (proxy {}), {} rounds x {}s, {} client threads",
        o.proxy.arg(),
        o.rounds,
        o.duration_secs,
        o.concurrency
    );
    println!("load average before: {load_before}  after: {}", loadavg());
    println!(
        "{:<12} {:>10} {:>8} {:>8} {:>11} {:>8} {:>8} {:>8}",
        "mode", "med conn/s", "p50_us", "p99_us", "best conn/s", "p50_us", "p99_us", "errors"
    );
    for (name, r) in [
        ("limit", limit),
        ("ebpf", ebpf_runs),
        (&format!("{flavour}")[..], ipt_runs),
    ] {
        let (Some(m), Some(b)) = (r.median(), r.best()) else {
            continue;
        };
        println!(
            "{name:<12} {:>10.0} {:>8} {:>8} {:>11.0} {:>8} {:>8} {:>8}",
            m.rate(),
            m.p50_us,
            m.p99_us,
            b.rate(),
            b.p50_us,
            b.p99_us,
            r.errors()
        );
    }
    let ratio = |a: Option<Load>, b: Option<Load>| match (a, b) {
        (Some(a), Some(b)) => a.rate() / b.rate(),
        _ => f64::NAN,
    };
    println!(
        "ratios (conn/s): ebpf/limit = {:.3} median, {:.3} best (target >= 0.97); \
         ebpf/iptables = {:.3} median, {:.3} best (target >= 1.3)",
        ratio(ebpf_runs.median(), limit.median()),
        ratio(ebpf_runs.best(), limit.best()),
        ratio(ebpf_runs.median(), ipt_runs.median()),
        ratio(ebpf_runs.best(), ipt_runs.best()),
    );
    println!(
        "\neBPF programs over one more ebpf run with kernel.bpf_stats_enabled=1 (not in the table above):"
    );
    println!(
        "{:<20} {:>10} {:>14} {:>8}",
        "name", "run_cnt", "run_time_ns", "ns/run"
    );
    for (name, (cnt, ns)) in &progs {
        let avg = ns.checked_div(*cnt).unwrap_or(0);
        println!("{name:<20} {cnt:>10} {ns:>14} {avg:>8}");
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

/// One run: a fresh pod with its proxy and backend, the redirect enabled (if any), the load, the
/// redirect removed.
fn measure(
    redirector: Option<&dyn Redirector>,
    dst: &str,
    o: &Options,
    mut hook: impl FnMut(Phase<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<Load> {
    let pod = TestPod::new("tb")?;
    let workers = o.workers.to_string();
    let _backend = Server::start(&pod.backend_placement(), &["backend", BACKEND_PORT, &workers])?;
    let port = PROXY_PORT.to_string();
    let mut proxy_args = vec!["proxy", &port, &workers, o.proxy.arg()];
    // Only the no-redirect run may fall back: a redirected connection whose original destination
    // cannot be read must fail, not be hidden by the fallback.
    if redirector.is_none() {
        proxy_args.push(SERVICE);
    }
    let _proxy = Server::start(&pod.proxy_placement(), &proxy_args)?;
    let key = PodKey::new(pod.name.clone())?;
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
    let cgroups = [pod.cgroup().to_path_buf(), pod.proxy_cgroup().to_path_buf()];
    hook(Phase {
        before: true,
        cgroups: &cgroups,
    })?;
    let args: Vec<String> = [
        "bench".to_string(),
        dst.to_string(),
        (o.duration_secs * 1000).to_string(),
        o.concurrency.to_string(),
    ]
    .to_vec();
    let out = pod.run_client(&args);
    hook(Phase {
        before: false,
        cgroups: &cgroups,
    })?;
    if let Some(r) = redirector {
        r.disable(&key)?;
    }
    let out = out?;
    if !out.success {
        bail!("bench client failed: {}", out.stderr);
    }
    out.stdout
        .lines()
        .find_map(Load::parse)
        .with_context(|| format!("no bench line in {:?}", out.stdout))
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

/// Run statistics of every BPF program attached to `cgroups`, by program id.
fn attached_program_stats(cgroups: &[PathBuf]) -> anyhow::Result<BTreeMap<u64, ProgStats>> {
    let mut out = BTreeMap::new();
    for cg in cgroups {
        let shown = cmd::output(
            Command::new("bpftool")
                .arg("-j")
                .arg("cgroup")
                .arg("show")
                .arg(cg),
        )?;
        let attached: serde_json::Value = if shown.trim().is_empty() {
            serde_json::Value::Array(vec![])
        } else {
            serde_json::from_str(&shown).context("parse bpftool cgroup show")?
        };
        for prog in attached.as_array().into_iter().flatten() {
            let Some(id) = prog.get("id").and_then(|v| v.as_u64()) else {
                continue;
            };
            let info =
                cmd::output(Command::new("bpftool").args(["-j", "prog", "show", "id", &id.to_string()]))?;
            let info: serde_json::Value = serde_json::from_str(&info).context("parse bpftool prog show")?;
            let field = |k: &str| info.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
            out.insert(
                id,
                ProgStats {
                    name: info
                        .get("name")
                        .and_then(|v| v.as_str())
                        .unwrap_or("?")
                        .to_string(),
                    run_cnt: field("run_cnt"),
                    run_time_ns: field("run_time_ns"),
                },
            );
        }
    }
    Ok(out)
}
