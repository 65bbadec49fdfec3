//! xDS scale benchmark (run through `cargo xtask bench xds`): a synthetic mesh of N services x M
//! pods, translated here to time a full rebuild, then served by the real `traffic-control serve
//! --model <file>` process (found next to this executable) to S concurrent in-process tonic ADS
//! clients that subscribe to everything and ACK every response like Envoy. Then one endpoint
//! changes at a time (the model file is rewritten): the time from the write to each stream
//! receiving the changed assignment is measured (p50/p99 over streams and changes); it includes
//! the file poll (10 ms), the server's re-read of the file (incremental: changed list items only)
//! and re-translation (endpoint assignments only when only pods moved; the whole model otherwise),
//! the pushes and the clients' receipt. RSS is the server process's (VmRSS, and VmHWM = peak).
//! The clients run in this process, on the same machine; the server is another process and, with
//! `--server-cgroup DIR` (what `cargo xtask bench xds` passes), in a cgroup of its own, so its CPU
//! time per change comes from that cgroup's `cpu.stat` (exact scheduler run time, however busy the
//! machine is); without it, from /proc/<pid>/stat (10 ms ticks). Per change the bench records
//! the server's CPU and the bytes every stream received between the write and 200 ms after the
//! last stream had the change, and the per-change p50/p99 over streams; `--json FILE` writes them
//! (raw, one entry per change: `cargo xtask bench xds` computes the spreads). SotW clients send
//! pre-encoded ACKs (the same bytes as building them each time). `--auth` runs the server with
//! TLS and token authentication as in production and the clients with tokens (see `auth.rs`).
mod auth;
mod clients;
mod synthetic;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use clients::{delta_client, encoded_names, sotw_client, RECEIVED_BYTES};
use serde_json::json;
use tokio::sync::mpsc;
use traffic_control::grpc::WithApiListeners;
use traffic_translate::model::MeshModel;
use traffic_translate::snapshot::{MeshSnapshot, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use traffic_translate::translate::{translate, translate_endpoint_change, Options};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    pods_per_service: usize,
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Endpoint changes to time.
    #[arg(long, default_value_t = 10)]
    changes: usize,
    /// Use delta ADS instead of state-of-the-world.
    #[arg(long)]
    delta: bool,
    /// Every service also gets a VirtualService (3 rules: header matches, weighted subsets) and
    /// a DestinationRule (3 subsets), as Istio users write them.
    #[arg(long)]
    istio: bool,
    /// Authenticated streams, as in production: TLS, a token per stream reviewed through the
    /// TokenReview API (a stand-in API server here) and cached, the node bound to the token's pod.
    #[arg(long)]
    auth: bool,
    /// A cgroup v2 directory (existing, empty) to run the server in: its cpu.stat gives the
    /// server's exact CPU time per change.
    #[arg(long)]
    server_cgroup: Option<std::path::PathBuf>,
    /// Write the figures, one entry per change, to this file as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// `field` (VmRSS, VmHWM) of process `pid` in MB.
fn mem_mb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field).and_then(|v| {
                    v.trim_start_matches(':')
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// CPU time (user + system) process `pid` has used, from /proc/<pid>/stat.
fn cpu_secs(pid: u32) -> f64 {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz.max(1.0)
}

/// The server's CPU time in microseconds: its cgroup's `usage_usec` when it has one of its own, else
/// user + system from /proc/<pid>/stat (tick resolution).
fn server_cpu_usec(pid: u32, cgroup: Option<&std::path::Path>) -> anyhow::Result<f64> {
    let Some(dir) = cgroup else {
        return Ok(cpu_secs(pid) * 1e6);
    };
    let path = dir.join("cpu.stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    usage_usec(&text).with_context(|| format!("{} has no usage_usec", path.display()))
}

/// `usage_usec` of a cgroup v2 `cpu.stat` (present with or without the cpu controller).
fn usage_usec(cpu_stat: &str) -> Option<f64> {
    cpu_stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())
}

/// Set when the run is over (clients then lose the server quietly).
static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Kills the server process on drop.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn scrape(port: u16) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// (count, p50 bucket bound, p99 bucket bound) of a Prometheus histogram in `text`.
fn histogram_quantiles(text: &str, name: &str) -> (u64, String, String) {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(String, u64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| {
            let (le, rest) = l.split_once('"')?;
            Some((le.to_string(), rest.trim_start_matches('}').trim().parse().ok()?))
        })
        .collect();
    let count = buckets.last().map(|b| b.1).unwrap_or(0);
    let q = |p: f64| {
        buckets
            .iter()
            .find(|(_, c)| *c as f64 >= p * count as f64)
            .map(|(le, _)| le.clone())
            .unwrap_or_default()
    };
    (count, q(0.5), q(0.99))
}

fn model_yaml(m: &MeshModel) -> anyhow::Result<String> {
    m.to_yaml().context("model to YAML")
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let shape = synthetic::Shape {
        services: args.services,
        pods_per_service: args.pods_per_service,
        istio: args.istio,
    };
    let m = shape.model(0)?;
    let opts = Options::default();
    let mut rebuilds = Vec::new();
    let mut t = translate(&m, &opts);
    for _ in 0..3 {
        let started = Instant::now();
        t = translate(&m, &opts);
        let _with_grpc = WithApiListeners::from_translation(t.snapshot.clone());
        rebuilds.push(started.elapsed());
    }
    rebuilds.sort();
    let moved = shape.model(1)?;
    let mut incremental = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let t2 = translate_endpoint_change(&m, &t, &moved, &opts).context("endpoint-only change")?;
        let _with_grpc = WithApiListeners::from_translation(t2.snapshot.clone());
        incremental.push(started.elapsed());
    }
    incremental.sort();
    let sample = t.snapshot.for_node("bench0.default");
    let count = |ty: &str| sample.get(ty).map(|r| r.len()).unwrap_or(0);
    let endpoints: usize = m.pods.len();
    println!(
        "model: {} services, {} endpoints -> {} clusters, {} assignments, {} listeners, {} routes",
        args.services,
        endpoints,
        count(CLUSTER),
        count(ENDPOINT),
        count(LISTENER),
        count(ROUTE)
    );
    println!(
        "full rebuild (translate whole model + gRPC API listeners): median {:?} (of 3)",
        rebuilds[1]
    );
    println!(
        "endpoint-only rebuild (translate_endpoint_change, one pod moved; API listeners rebuilt here too): median {:?} (of 3)",
        incremental[1]
    );
    let clusters: Vec<String> = sample
        .get(ENDPOINT)
        .map(|r| r.keys().cloned().collect())
        .unwrap_or_default();
    let routes: Vec<String> = sample
        .get(ROUTE)
        .map(|r| r.keys().cloned().collect())
        .unwrap_or_default();

    // The model file re-read the server does per change (one pod moved), timed here alone.
    let (text0, text1) = (model_yaml(&m)?, model_yaml(&moved)?);
    let mut parse = Vec::new();
    for _ in 0..3 {
        let mut parser = traffic_control::model_file::ModelParser::default();
        parser.parse(&text0)?;
        let started = Instant::now();
        parser.parse(&text1)?;
        parse.push(started.elapsed());
    }
    parse.sort();
    let started = Instant::now();
    MeshModel::from_yaml_str(&text1)?;
    println!(
        "model file ({} KB) re-read after one pod moved: incremental parse median {:?} (of 3), full parse {:?}",
        text1.len() / 1024,
        parse[1],
        started.elapsed()
    );

    let dir = std::env::temp_dir().join(format!("xds-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let model_path = dir.join("mesh.yaml");
    std::fs::write(&model_path, model_yaml(&m)?)?;
    let exe = std::env::current_exe()?.with_file_name("traffic-control");
    let (xds_port, http_port) = (free_port()?, free_port()?);
    // Profiling: `XDS_BENCH_SERVER_WRAPPER=heaptrack` runs the server under a wrapper (the RSS
    // figures are then the wrapper's, not the server's).
    let mut command = match std::env::var_os("XDS_BENCH_SERVER_WRAPPER") {
        Some(wrapper) => {
            let mut c = std::process::Command::new(wrapper);
            c.arg(&exe);
            c
        }
        None => std::process::Command::new(&exe),
    };
    let secure = if args.auth {
        Some(auth::setup(&dir).await?)
    } else {
        None
    };
    match &secure {
        Some(s) => {
            command
                .arg("serve")
                .args(&s.args)
                .env("KUBECONFIG", &s.kubeconfig);
        }
        None => {
            command.args(["serve", "--xds-auth=false", "--xds-tls=false"]);
        }
    }
    let dial = secure.as_ref().map(|s| s.dial.clone());
    let server = Server(
        command
            .arg("--model")
            .arg(&model_path)
            .args([
                "--xds-addr",
                &format!("127.0.0.1:{xds_port}"),
                "--http-addr",
                &format!("127.0.0.1:{http_port}"),
            ])
            .args(["--model-poll-ms", "10", "--debounce-ms", "0"])
            .env(
                "RUST_LOG",
                std::env::var("XDS_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".to_string()),
            )
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (build it: cargo build --release -p traffic-control --bins)",
                    exe.display()
                )
            })?,
    );
    let pid = server.0.id();
    if let Some(dir) = &args.server_cgroup {
        // Before the server has done more than start: every push is counted there.
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("move the server into {}", dir.display()))?;
    }
    let server_cgroup = args.server_cgroup.as_deref();
    let url = match &dial {
        Some(_) => format!("https://{}:{xds_port}", auth::SERVER_NAME),
        None => format!("http://127.0.0.1:{xds_port}"),
    };
    let mut up = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", xds_port))
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::ensure!(up, "traffic-control did not start");
    let rss_server = mem_mb(pid, "VmRSS");

    let (ready_tx, mut ready_rx) = mpsc::channel(args.streams);
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let connect_started = Instant::now();
    let (clusters_encoded, routes_encoded) = (encoded_names(&clusters), encoded_names(&routes));
    for id in 0..args.streams {
        let (u, c, r, rd, s) = (
            url.clone(),
            clusters.clone(),
            routes.clone(),
            ready_tx.clone(),
            seen_tx.clone(),
        );
        let delta = args.delta;
        let (ce, re) = (clusters_encoded.clone(), routes_encoded.clone());
        let d = dial.clone();
        tokio::spawn(async move {
            let res = if delta {
                delta_client(u, d, id, c, r, rd, s).await
            } else {
                sotw_client(u, d, id, ce, re, rd, s).await
            };
            if let Err(e) = res {
                if !DONE.load(std::sync::atomic::Ordering::SeqCst) {
                    eprintln!("client {id}: {e:#}");
                }
            }
        });
    }
    for _ in 0..args.streams {
        tokio::time::timeout(Duration::from_secs(120), ready_rx.recv())
            .await
            .context("clients did not sync in 120 s")?;
    }
    println!(
        "{} {} streams{} synced (all types ACKed) in {:?}",
        args.streams,
        if args.delta { "delta" } else { "SotW" },
        if args.auth {
            format!(
                " (TLS + token, {} TokenReviews)",
                auth::REVIEWS.load(std::sync::atomic::Ordering::Relaxed)
            )
        } else {
            String::new()
        },
        connect_started.elapsed()
    );
    let rss_clients = mem_mb(pid, "VmRSS");
    let sync_secs = connect_started.elapsed().as_secs_f64();
    let sync_bytes = RECEIVED_BYTES.load(std::sync::atomic::Ordering::Relaxed);
    let (server_cpu_synced, bench_cpu_synced) =
        (server_cpu_usec(pid, server_cgroup)?, cpu_secs(std::process::id()));

    let mut latencies = Vec::new();
    let mut per_change = Vec::new();
    for change in 1..=args.changes {
        let text = model_yaml(&shape.model(change)?)?;
        let tmp = dir.join("mesh.yaml.tmp");
        std::fs::write(&tmp, text)?;
        let (cpu0, bytes0) = (
            server_cpu_usec(pid, server_cgroup)?,
            RECEIVED_BYTES.load(std::sync::atomic::Ordering::Relaxed),
        );
        let published = Instant::now();
        std::fs::rename(&tmp, &model_path)?;
        let mut got = BTreeMap::new();
        while got.len() < args.streams {
            let (id, at) = tokio::time::timeout(Duration::from_secs(30), seen_rx.recv())
                .await
                .context("not every stream got the change in 30 s")?
                .context("clients gone")?;
            got.entry(id).or_insert(at.saturating_duration_since(published));
        }
        let mut this: Vec<Duration> = got.into_values().collect();
        this.sort();
        // Settle: the ACKs and anything else the change caused land in this change's counts.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let cpu_ms = (server_cpu_usec(pid, server_cgroup)? - cpu0) / 1000.0;
        let bytes = RECEIVED_BYTES.load(std::sync::atomic::Ordering::Relaxed) - bytes0;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "change {change}: every stream had it after {:?} (p50 {:?}, p99 {:?}); server CPU {cpu_ms:.1} ms, {bytes} bytes to the streams",
            this[this.len() - 1],
            pct(&this, 0.5),
            pct(&this, 0.99)
        );
        per_change.push(json!({
            "p50_ms": ms(pct(&this, 0.5)), "p99_ms": ms(pct(&this, 0.99)), "max_ms": ms(this[this.len() - 1]),
            "server_cpu_ms": cpu_ms, "bytes": bytes,
        }));
        latencies.extend(this);
    }
    latencies.sort();
    println!(
        "endpoint change (model file write) -> stream latency over {} deliveries: p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        pct(&latencies, 0.5),
        pct(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
    let server_cpu_end = server_cpu_usec(pid, server_cgroup)?;
    println!(
        "CPU during the changes: server {:.3} s ({}), bench clients {:.2} s (server from start to synced: {:.2} s)",
        (server_cpu_end - server_cpu_synced) / 1e6,
        if server_cgroup.is_some() { "its cgroup's cpu.stat" } else { "/proc ticks" },
        cpu_secs(std::process::id()) - bench_cpu_synced,
        server_cpu_synced / 1e6
    );
    let rss_after = mem_mb(pid, "VmRSS");
    let rss_peak = mem_mb(pid, "VmHWM");
    println!(
        "server RSS: started with the model {rss_server:.0} MB, with {} streams synced {rss_clients:.0} MB, after the changes {:.0} MB, peak (VmHWM) {:.0} MB",
        args.streams, rss_after, rss_peak
    );
    match scrape(http_port).await {
        Ok(text) => {
            for (name, what) in [
                (
                    "translate_duration_seconds",
                    "server translate (model -> snapshot; incremental for endpoint-only changes, full for the first)",
                ),
                (
                    "xds_push_latency_seconds",
                    "server snapshot published -> responses queued, per stream",
                ),
            ] {
                let (count, p50, p99) = histogram_quantiles(&text, name);
                println!("{what}: {count} samples, p50 <= {p50} s, p99 <= {p99} s (bucket bounds)");
            }
        }
        Err(e) => eprintln!("cannot scrape server metrics: {e:#}"),
    }
    if let Some(path) = &args.json {
        let report = json!({
            "bench": "xds",
            "config": {
                "services": args.services, "endpoints": endpoints, "pods_per_service": args.pods_per_service,
                "streams": args.streams, "changes": args.changes, "delta": args.delta, "istio": args.istio,
                "auth": args.auth,
                "server_cpu": if server_cgroup.is_some() { "cgroup cpu.stat" } else { "/proc/<pid>/stat" },
            },
            "full_rebuild_ms": rebuilds[1].as_secs_f64() * 1000.0,
            "endpoint_rebuild_ms": incremental[1].as_secs_f64() * 1000.0,
            "incremental_parse_ms": parse[1].as_secs_f64() * 1000.0,
            "sync": {"secs": sync_secs, "server_cpu_ms": server_cpu_synced / 1000.0, "bytes": sync_bytes},
            "latency_ms": {
                "p50": pct(&latencies, 0.5).as_secs_f64() * 1000.0,
                "p99": pct(&latencies, 0.99).as_secs_f64() * 1000.0,
            },
            "rss_mb": {"model": rss_server, "synced": rss_clients, "after": rss_after, "peak": rss_peak},
            "changes": per_change,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    DONE.store(true, std::sync::atomic::Ordering::SeqCst);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_from_a_cpu_stat_with_or_without_the_cpu_controller() {
        assert_eq!(
            usage_usec("usage_usec 42\nuser_usec 40\nsystem_usec 2\n"),
            Some(42.0)
        );
        assert_eq!(usage_usec("nr_periods 0\n"), None);
        assert_eq!(usage_usec("usage_usec x\n"), None);
    }
}
