//! `cargo xtask bench xds`: the xDS scale benchmark. Builds traffic-control's binaries in release
//! mode and runs `xds-bench`, which serves through a real `traffic-control serve` process (1,000
//! services, 10,000 endpoints, 1,000 concurrent ADS streams by default) to in-process clients, and
//! changes one endpoint at a time. The server runs in a cgroup of its own (created here, removed
//! after; root only — otherwise its CPU comes from /proc ticks), apart from the clients, so its CPU
//! time per change holds still whatever else the machine runs. Reported: full and endpoint-only
//! rebuild time, per change (min/median/max over changes) the p50/p99 time until the streams have
//! it, the server's CPU time and the bytes sent to all streams, and the server's RSS.
//! Targets: p99 < 100 ms, RSS < 150 MB; with `--istio` (a VirtualService of three rules and a
//! DestinationRule of three subsets per service: four clusters per service) RSS < 200 MB.
//!
//! `--sweep` runs it at 1k, 2k, 5k and 10k services (10 endpoints each, as many streams as
//! services unless `--sweep-max-streams` caps them) and prints how each figure grows against the
//! size.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use serde_json::{json, Value};
use traffic_tests::pod::CgroupDir;

use crate::bench_stats::{spread_json, Spread};
use crate::{bench_cpu, cmd};

#[derive(clap::Args, Debug)]
pub struct Options {
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    pods_per_service: usize,
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    #[arg(long, default_value_t = 10)]
    changes: usize,
    /// Delta ADS streams instead of state-of-the-world.
    #[arg(long)]
    delta: bool,
    /// Every service also gets a VirtualService (3 rules: header matches, weighted subsets) and a
    /// DestinationRule (3 subsets). Targets: p99 < 100 ms, RSS < 200 MB at 1k/10k/1k.
    #[arg(long)]
    istio: bool,
    /// Authenticated streams as in production: TLS, a ServiceAccount token per stream reviewed
    /// through TokenReview (a stand-in API server in xds-bench) and cached, the node bound to the
    /// token's pod (the peer-address check off: every client is 127.0.0.1).
    #[arg(long)]
    auth: bool,
    /// Run at every size of --sweep-sizes (streams = services, --pods-per-service endpoints each)
    /// and print the growth of each figure.
    #[arg(long)]
    sweep: bool,
    #[arg(long, value_delimiter = ',', default_value = "1000,2000,5000,10000")]
    sweep_sizes: Vec<usize>,
    /// Caps the sweep's streams (default: as many as services). The initial sync sends every
    /// stream every cluster and assignment, so it grows with services x streams: 1.4 GB at 1k x 1k,
    /// 140 GB at 10k x 10k, more than a small machine moves in the time of a benchmark.
    #[arg(long)]
    sweep_max_streams: Option<usize>,
    /// Write the figures (with their spreads over changes) to this file as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The figures of each change, as xds-bench records them, and how they are shown.
const PER_CHANGE: &[(&str, &str, usize)] = &[
    ("p50_ms", "p50 ms", 1),
    ("p99_ms", "p99 ms", 1),
    ("server_cpu_ms", "server CPU ms", 1),
    ("bytes", "bytes sent", 0),
];

pub fn run(o: Options) -> anyhow::Result<()> {
    // The bench starts the real `traffic-control` binary next to itself.
    cmd::run(
        Command::new(cmd::cargo())
            .current_dir(cmd::workspace_root())
            .args(["build", "--release", "-p", "traffic-control", "--bins"]),
    )?;
    let exe = cmd::target_dir().join("release/xds-bench");
    let sizes: Vec<(usize, usize)> = if o.sweep {
        let cap = o.sweep_max_streams.unwrap_or(usize::MAX);
        o.sweep_sizes.iter().map(|&n| (n, n.min(cap))).collect()
    } else {
        vec![(o.services, o.streams)]
    };
    let mut reports = Vec::new();
    for (services, streams) in sizes {
        let raw = run_once(&exe, &o, services, streams)?;
        let report = summarize(raw)?;
        print!("{}", summary_text(&report));
        reports.push(report);
    }
    let out = if o.sweep {
        print!("{}", sweep_text(&reports));
        json!({"bench": "xds-sweep", "sizes": reports})
    } else {
        reports.pop().context("no report")?
    };
    if let Some(path) = &o.json {
        std::fs::write(path, serde_json::to_string_pretty(&out)?)
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("bench: JSON report in {}", path.display());
    }
    Ok(())
}

/// One xds-bench run; returns its raw JSON (one entry per change).
fn run_once(exe: &Path, o: &Options, services: usize, streams: usize) -> anyhow::Result<Value> {
    let scratch = std::env::temp_dir().join(format!("xtask-xds-{}-{services}.json", std::process::id()));
    // The server's own cgroup (needs root): removed, with anything left in it, on drop.
    let cgroup = if cmd::is_root() {
        let dir =
            bench_cpu::cgroup2_mount()?.join(format!("traffic-bench-xds-{}-{services}", std::process::id()));
        Some(CgroupDir::create(dir)?)
    } else {
        eprintln!("bench: not root, the server's CPU comes from /proc/<pid>/stat (10 ms ticks)");
        None
    };
    let mut c = Command::new(exe);
    c.args(["--services", &services.to_string()])
        .args(["--pods-per-service", &o.pods_per_service.to_string()])
        .args(["--streams", &streams.to_string()])
        .args(["--changes", &o.changes.to_string()])
        .arg("--json")
        .arg(&scratch);
    if let Some(cg) = &cgroup {
        c.arg("--server-cgroup").arg(cg.path());
    }
    if o.delta {
        c.arg("--delta");
    }
    if o.istio {
        c.arg("--istio");
    }
    if o.auth {
        c.arg("--auth");
    }
    let ran = cmd::run(&mut c);
    drop(cgroup);
    let text = std::fs::read_to_string(&scratch);
    let _ = std::fs::remove_file(&scratch);
    ran?;
    serde_json::from_str(&text.with_context(|| format!("read {}", scratch.display()))?)
        .context("xds-bench JSON")
}

/// The raw report plus `per_change`: the spread of each per-change figure over the changes, and
/// the server's CPU per stream delivery.
pub fn summarize(mut raw: Value) -> anyhow::Result<Value> {
    let changes = raw["changes"]
        .as_array()
        .context("no changes in the xds-bench report")?;
    let series = |key: &str| -> Vec<f64> { changes.iter().filter_map(|c| c[key].as_f64()).collect() };
    let streams = raw["config"]["streams"].as_f64().unwrap_or(0.0);
    let mut per_change = serde_json::Map::new();
    for (key, _, _) in PER_CHANGE {
        per_change.insert(key.to_string(), spread_json(Spread::of(&series(key))));
    }
    let per_stream: Vec<f64> = series("server_cpu_ms")
        .iter()
        .map(|ms| {
            if streams > 0.0 {
                ms * 1000.0 / streams
            } else {
                f64::NAN
            }
        })
        .collect();
    per_change.insert(
        "server_cpu_us_per_stream".into(),
        spread_json(Spread::of(&per_stream)),
    );
    raw["per_change"] = Value::Object(per_change);
    Ok(raw)
}

fn spread_of(v: &Value) -> Option<Spread> {
    Some(Spread {
        min: v["min"].as_f64()?,
        median: v["median"].as_f64()?,
        max: v["max"].as_f64()?,
    })
}

/// The human summary of one summarized report.
pub fn summary_text(r: &Value) -> String {
    let c = &r["config"];
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let mut s = format!(
        "\nxds benchmark: {} services, {} endpoints, {} {} streams{}, {} changes (server CPU from {})\n",
        c["services"],
        c["endpoints"],
        c["streams"],
        if c["delta"].as_bool() == Some(true) {
            "delta"
        } else {
            "SotW"
        },
        if c["auth"].as_bool() == Some(true) {
            " (TLS + token)"
        } else {
            ""
        },
        c["changes"],
        c["server_cpu"].as_str().unwrap_or("?"),
    );
    s.push_str(&format!(
        "full rebuild {:.1} ms, endpoint-only rebuild {:.2} ms; initial sync {:.1} s, server CPU {:.0} ms, {:.1} MB\n",
        num(&r["full_rebuild_ms"]),
        num(&r["endpoint_rebuild_ms"]),
        num(&r["sync"]["secs"]),
        num(&r["sync"]["server_cpu_ms"]),
        num(&r["sync"]["bytes"]) / 1e6,
    ));
    s.push_str("per change (min/median/max over changes):");
    for (key, label, d) in PER_CHANGE {
        let shown = spread_of(&r["per_change"][key])
            .map(|x| x.show(*d))
            .unwrap_or_else(|| "-".into());
        s.push_str(&format!(" {label} {shown};"));
    }
    if let Some(x) = spread_of(&r["per_change"]["server_cpu_us_per_stream"]) {
        s.push_str(&format!(" server CPU us per stream {}", x.show(1)));
    }
    // The RSS target: 150 MB for the labels' model, 200 MB with `--istio` (four clusters per service).
    let rss_target = if c["istio"].as_bool() == Some(true) {
        200
    } else {
        150
    };
    s.push_str(&format!(
        "\nall deliveries: p50 {:.1} ms, p99 {:.1} ms (target < 100 ms); server RSS synced {:.0} MB, peak {:.0} MB (target < {rss_target} MB)\n",
        num(&r["latency_ms"]["p50"]),
        num(&r["latency_ms"]["p99"]),
        num(&r["rss_mb"]["synced"]),
        num(&r["rss_mb"]["peak"]),
    ));
    s
}

/// A column of the sweep table: its heading and how a size's report gives it.
type SweepColumn = (&'static str, fn(&Value) -> Option<f64>);

/// The sweep table: each size's figures, then each figure's growth against the first size next to
/// the size's own growth (a figure growing faster than the size is worse than linear).
pub fn sweep_text(reports: &[Value]) -> String {
    let cols: &[SweepColumn] = &[
        ("translate ms", |r| r["full_rebuild_ms"].as_f64()),
        ("ep-only ms", |r| r["endpoint_rebuild_ms"].as_f64()),
        ("sync s", |r| r["sync"]["secs"].as_f64()),
        ("sync MB", |r| r["sync"]["bytes"].as_f64().map(|b| b / 1e6)),
        ("push CPU ms", |r| {
            r["per_change"]["server_cpu_ms"]["median"].as_f64()
        }),
        ("push KB", |r| {
            r["per_change"]["bytes"]["median"].as_f64().map(|b| b / 1e3)
        }),
        ("p99 ms", |r| r["per_change"]["p99_ms"]["median"].as_f64()),
        ("RSS MB", |r| r["rss_mb"]["synced"].as_f64()),
        ("peak MB", |r| r["rss_mb"]["peak"].as_f64()),
    ];
    let size = |r: &Value| r["config"]["services"].as_f64();
    let mut s = format!(
        "\nsweep (push figures: median over changes)\n{:>9} {:>8}",
        "services", "streams"
    );
    for (name, _) in cols {
        s.push_str(&format!(" {name:>12}"));
    }
    s.push('\n');
    for r in reports {
        s.push_str(&format!(
            "{:>9} {:>8}",
            size(r).unwrap_or(f64::NAN),
            r["config"]["streams"]
        ));
        for (_, f) in cols {
            s.push_str(&format!(" {:>12.1}", f(r).unwrap_or(f64::NAN)));
        }
        s.push('\n');
    }
    let Some(first) = reports.first() else {
        return s;
    };
    let streams = |r: &Value| r["config"]["streams"].as_f64();
    s.push_str(&format!(
        "growth against {} services (x):\n{:>9} {:>8}",
        size(first).unwrap_or(f64::NAN),
        "size x",
        "streams x"
    ));
    for (name, _) in cols {
        s.push_str(&format!(" {name:>12}"));
    }
    s.push('\n');
    for r in reports {
        let g = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b != 0.0 => a / b,
            _ => f64::NAN,
        };
        s.push_str(&format!(
            "{:>9.1} {:>8.1}",
            g(size(r), size(first)),
            g(streams(r), streams(first))
        ));
        for (_, f) in cols {
            s.push_str(&format!(" {:>12.2}", g(f(r), f(first))));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn raw(services: u64, cpu: [f64; 3]) -> Value {
        json!({
            "bench": "xds",
            "config": {"services": services, "endpoints": services * 10, "streams": services, "changes": 3,
                       "delta": false, "server_cpu": "cgroup cpu.stat"},
            "full_rebuild_ms": services as f64 / 10.0, "endpoint_rebuild_ms": 1.0,
            "sync": {"secs": 2.0, "server_cpu_ms": 900.0, "bytes": 1e6},
            "latency_ms": {"p50": 20.0, "p99": 40.0},
            "rss_mb": {"model": 20.0, "synced": 50.0, "after": 50.0, "peak": 60.0},
            "changes": cpu.iter().map(|c| json!({"p50_ms": 20.0, "p99_ms": 40.0, "max_ms": 45.0,
                                                 "server_cpu_ms": c, "bytes": 1000})).collect::<Vec<_>>(),
        })
    }

    #[test]
    fn per_change_figures_get_their_spread_over_the_changes() {
        let r = summarize(raw(1000, [30.0, 10.0, 20.0])).unwrap();
        assert_eq!(r["per_change"]["server_cpu_ms"]["median"], 20.0);
        assert_eq!(r["per_change"]["server_cpu_ms"]["max"], 30.0);
        assert_eq!(r["per_change"]["server_cpu_us_per_stream"]["min"], 10.0);
        assert_eq!(r["per_change"]["bytes"]["median"], 1000.0);
        let text = summary_text(&r);
        assert!(text.contains("server CPU ms 10.0/20.0/30.0"), "{text}");
    }

    #[test]
    fn a_report_without_changes_is_an_error() {
        assert!(summarize(json!({"config": {}})).is_err());
    }

    #[test]
    fn the_sweep_shows_each_figure_growth_against_the_first_size() {
        let a = summarize(raw(1000, [10.0, 10.0, 10.0])).unwrap();
        let b = summarize(raw(2000, [30.0, 30.0, 30.0])).unwrap();
        let text = sweep_text(&[a, b]);
        let last = text.lines().last().unwrap();
        // size x2, streams x2, translate x2, ep-only x1, sync x1, sync MB x1, push CPU x3.
        let f: Vec<&str> = last.split_whitespace().collect();
        assert_eq!(
            &f[..7],
            &["2.0", "2.0", "2.00", "1.00", "1.00", "1.00", "3.00"],
            "{text}"
        );
    }
}
