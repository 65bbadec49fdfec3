//! `cargo xtask bench redirect`: short-lived connections (connect, one request line, reply, close)
//! from an app in a test pod, through the same test proxy, three ways:
//!
//! - `limit`: no redirect, the client dials the proxy itself (the proxy relays to a fixed backend):
//!   the cost of the proxy hop alone, the best any redirect can do;
//! - `ebpf`: the client dials a service address, cgroup/connect4 rewrites it to the proxy;
//! - `iptables`: the same, through a nat REDIRECT chain (conntrack + NAT on every packet).
//!
//! Prints conn/s and p50/p99 latency per mode, the ratios eBPF/limit and eBPF/iptables, and each
//! eBPF program's run_cnt and run_time_ns (`kernel.bpf_stats_enabled` is switched on for the run and
//! restored after). Each mode gets a fresh pod, so conntrack state of one does not slow another.
//! A benchmark, not a test: it asserts nothing beyond "no errors". Needs root.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use traffic_redirect::ebpf::{EbpfConfig, EbpfRedirector};
use traffic_redirect::iptables::{Flavour, IptablesRedirector};
use traffic_redirect::{PodKey, PodRedirect, Redirector, Settings};
use traffic_tests::{bins, ScratchDir, TestPod};

use crate::cmd;

const SERVICE: &str = "10.96.0.10:9080";
const PROXY_PORT: u16 = 15001;
const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Seconds of load per mode.
    #[arg(long, default_value_t = 5)]
    pub duration_secs: u64,
    /// Concurrent client threads (each runs connect/request/reply/close in a loop).
    #[arg(long, default_value_t = 4)]
    pub concurrency: u32,
    /// iptables flavour for the iptables mode.
    #[arg(long, value_enum, default_value_t = FlavourArg::Nft)]
    pub flavour: FlavourArg,
    /// Use debug builds of the test binaries (faster to build, slower proxy).
    #[arg(long)]
    pub debug: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum FlavourArg {
    Nft,
    Legacy,
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

/// Per-program BPF run statistics (from `bpftool prog show`).
#[derive(Debug, Clone, Default)]
struct ProgStats {
    name: String,
    run_cnt: u64,
    run_time_ns: u64,
}

pub fn run(o: Options) -> anyhow::Result<()> {
    anyhow::ensure!(
        cmd::is_root(),
        "the benchmark creates network namespaces and attaches BPF: run it as root"
    );
    let bin_dir = build_test_binaries(o.debug)?;
    // Read by traffic_tests::bins; set before any thread starts.
    std::env::set_var(bins::BIN_DIR_ENV, &bin_dir);
    let flavour = match o.flavour {
        FlavourArg::Nft => Flavour::Nft,
        FlavourArg::Legacy => Flavour::Legacy,
    };
    let duration_ms = o.duration_secs * 1000;
    eprintln!(
        "bench: {}s per mode, {} client threads, service {SERVICE}",
        o.duration_secs, o.concurrency
    );

    let limit = measure(None, "127.0.0.1:15001", duration_ms, o.concurrency, |_| Ok(()))?;

    let scratch = ScratchDir::temp("bench-ipt")?;
    let ipt = IptablesRedirector::new(flavour, scratch.path())?;
    let iptables = measure(Some(&ipt), SERVICE, duration_ms, o.concurrency, |_| Ok(()))?;

    let pins = ScratchDir::new(Path::new("/sys/fs/bpf"), "bench-")?;
    let ebpf = EbpfRedirector::new(EbpfConfig {
        pin_root: pins.path().to_path_buf(),
        ..EbpfConfig::default()
    })
    .context("load the eBPF redirector (run `cargo xtask build-ebpf` first)")?;
    let stats_before = std::fs::read_to_string(BPF_STATS_SYSCTL).unwrap_or_else(|_| "0".into());
    std::fs::write(BPF_STATS_SYSCTL, "1").context("enable kernel.bpf_stats_enabled")?;
    let mut progs = BTreeMap::new();
    let result = measure(Some(&ebpf), SERVICE, duration_ms, o.concurrency, |phase| {
        for (id, s) in attached_program_stats(phase.cgroups)? {
            let entry = progs
                .entry(id)
                .or_insert_with(|| (s.clone(), ProgStats::default()));
            if phase.before {
                entry.0 = s;
            } else {
                entry.1 = s;
            }
        }
        Ok(())
    });
    let _ = std::fs::write(BPF_STATS_SYSCTL, stats_before.trim());
    let ebpf_load = result?;
    drop(ebpf);
    if let Err(e) = EbpfRedirector::purge_pin_root(pins.path()) {
        eprintln!("cleanup: purge {}: {e}", pins.path().display());
    }

    println!("\nredirect benchmark: short-lived connections through the test proxy");
    println!(
        "{:<14} {:>10} {:>9} {:>9} {:>8} {:>8}",
        "mode", "conn/s", "p50_us", "p99_us", "conns", "errors"
    );
    for (name, l) in [
        ("limit", limit),
        ("ebpf", ebpf_load),
        (&format!("{flavour}")[..], iptables),
    ] {
        println!(
            "{name:<14} {:>10.0} {:>9} {:>9} {:>8} {:>8}",
            l.rate(),
            l.p50_us,
            l.p99_us,
            l.conns,
            l.errors
        );
    }
    println!(
        "ratios: ebpf/limit = {:.3}  ebpf/iptables = {:.3}  (conn/s)",
        ebpf_load.rate() / limit.rate(),
        ebpf_load.rate() / iptables.rate()
    );
    println!("\neBPF programs during the ebpf run (kernel.bpf_stats_enabled=1):");
    println!(
        "{:>6} {:<20} {:>10} {:>14} {:>8}",
        "id", "name", "run_cnt", "run_time_ns", "ns/run"
    );
    for (id, (before, after)) in &progs {
        let cnt = after.run_cnt.saturating_sub(before.run_cnt);
        let ns = after.run_time_ns.saturating_sub(before.run_time_ns);
        let avg = ns.checked_div(cnt).unwrap_or(0);
        println!("{id:>6} {:<20} {cnt:>10} {ns:>14} {avg:>8}", after.name);
    }
    let errors = limit.errors + ebpf_load.errors + iptables.errors;
    anyhow::ensure!(errors == 0, "{errors} connections failed");
    Ok(())
}

/// What a stats hook sees: before or after the load, and which cgroups the redirect touches.
struct Phase<'a> {
    before: bool,
    cgroups: &'a [PathBuf],
}

/// One mode: a fresh pod with its proxy, the redirect enabled (if any), the load, the redirect removed.
fn measure(
    redirector: Option<&dyn Redirector>,
    dst: &str,
    duration_ms: u64,
    concurrency: u32,
    mut hook: impl FnMut(Phase<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<Load> {
    let pod = TestPod::new("tb")?;
    let _proxy = pod.start_proxy_with(PROXY_PORT, &["--fallback".into(), SERVICE.into()])?;
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
    let args: Vec<String> = ["bench", dst, &duration_ms.to_string(), &concurrency.to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
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
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(&root)
        .args(["build", "-p", "traffic-tests", "--bins"]);
    if !debug {
        build.arg("--release");
    }
    cmd::run(&mut build)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
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
