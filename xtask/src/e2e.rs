//! `cargo xtask e2e`: the end-to-end suite on the real single-node Kubernetes of
//! `/work/shared/e2e` (brought up and down by the caller, e.g. `.ci/run`; this only uses it).
//!
//! Builds the eBPF object, `traffic-control`, `traffic-agent` and the `e2e` test (debug), starts
//! `traffic-control serve` (Kubernetes mode, ADS on the node IP so pods' Envoys reach it) and
//! `traffic-agent run` as host processes logging into a temp dir, runs
//! `cargo test -p traffic-tests --test e2e` with `TRAFFIC_E2E=1` once per redirect mode (eBPF: every
//! test; iptables: `both_modes::`), and stops the processes by pid at the end, also on failure
//! (their logs are printed then). Before that, the crates' own cluster tests (kube-source `live`;
//! sidecar `docker_runtime` and `kube_pod` on a Docker cluster, `containerd_runtime` on a
//! containerd one) run with the cluster required. Needs root, `KUBECONFIG` and `DOCKER_HOST`
//! (taken from `/run/traffic-e2e/env.sh` when unset).
//!
//! The cluster's runtime (`--runtime`, default: the running cluster's, `TRAFFIC_E2E_RUNTIME` of
//! its env.sh) decides how the agent runs sidecars (`traffic-agent run --runtime docker|containerd`
//! with the kit's containerd socket and CRI root) and how the suite inspects and kills them
//! (`traffic_tests::node_runtime`: `docker` or `ctr`).
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use traffic_tests::node_runtime::{NodeRuntime, RuntimeKind};

use crate::{build_ebpf, cluster, cmd};

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Redirect modes to run the suite in, in order (the first runs every test, the others
    /// the `both_modes::` scenarios).
    #[arg(long, value_delimiter = ',', default_value = "ebpf,iptables")]
    pub modes: Vec<String>,
    /// Only tests whose name contains this (passed to the test harness).
    #[arg(long)]
    pub filter: Option<String>,
    /// ADS port of traffic-control on the node IP.
    #[arg(long, default_value_t = 15010)]
    pub xds_port: u16,
    /// /metrics + /healthz port of traffic-control on the node IP.
    #[arg(long, default_value_t = 19090)]
    pub http_port: u16,
    /// Extra arguments for `traffic-agent run` (repeatable).
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
    /// Skip building (use what is already built).
    #[arg(long)]
    pub no_build: bool,
    /// Keep the temp dir with the logs.
    #[arg(long)]
    pub keep_logs: bool,
    /// Show the tests' output (the fault scenarios print what callers saw) even when they pass.
    #[arg(long)]
    pub nocapture: bool,
    /// The cluster's container runtime: docker or containerd (default: the running cluster's;
    /// naming another one is an error, bring the cluster up in that mode first).
    #[arg(long, value_parser = RuntimeKind::parse)]
    pub runtime: Option<RuntimeKind>,
    /// Extra environment for the test binary (set by other tasks, e.g. `bench churn`).
    #[arg(skip)]
    pub test_env: Vec<(String, String)>,
    /// Run the control plane without xDS authentication and TLS (and the agent without tokens),
    /// as before issue 10. Default: both on, as installed by the chart.
    #[arg(long)]
    pub insecure_xds: bool,
    /// How often the agent renews every sidecar's token (seconds): short, so that the suite
    /// runs across renewals (the `xds_auth` test waits for one).
    #[arg(long, default_value_t = 30)]
    pub token_renew_seconds: u64,
}

/// Namespace and name of the ConfigMap/Secret where the suite's control plane keeps its xDS CA.
const CA_NAMESPACE: &str = "default";
const CA_NAME: &str = "traffic-e2e-control-ca";

/// The control plane's CA certificate, as published in its ConfigMap (waits for it).
fn fetch_ca(dest: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cmd::output(Command::new("kubectl").args([
            "-n",
            CA_NAMESPACE,
            "get",
            "configmap",
            CA_NAME,
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ]));
        match out {
            Ok(pem) if pem.contains("BEGIN CERTIFICATE") => {
                std::fs::write(dest, pem)?;
                return Ok(());
            }
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(500)),
            other => {
                bail!("the control plane published no CA in configmap {CA_NAMESPACE}/{CA_NAME}: {other:?}")
            }
        }
    }
}

/// Arguments of `traffic-control serve` for authenticated xDS over TLS (CA in the cluster).
fn control_auth_args(node_ip: &str) -> Vec<String> {
    [
        "--xds-auth=true",
        "--xds-tls=true",
        "--xds-tls-names",
        node_ip,
        "--own-namespace",
        CA_NAMESPACE,
        "--xds-ca-name",
        CA_NAME,
    ]
    .map(String::from)
    .into()
}

/// Arguments of `traffic-agent run`: tokens in `dir`, renewed every `renew` seconds, TLS with `ca`.
fn agent_auth_args(dir: &Path, renew: u64, ca: &Path) -> Vec<String> {
    vec![
        "--xds-auth=true".into(),
        "--xds-token-dir".into(),
        dir.display().to_string(),
        "--xds-token-renew-seconds".into(),
        renew.to_string(),
        "--xds-ca-file".into(),
        ca.display().to_string(),
    ]
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

/// A host process of the suite, stopped (SIGTERM, then SIGKILL) by pid on drop. Its pid may be
/// replaced through `pidfile` (the agent-restart test starts a new agent and records it there).
struct Guard {
    name: String,
    child: Child,
    pidfile: Option<PathBuf>,
    log: PathBuf,
}

impl Guard {
    fn spawn(name: &str, cmd: &mut Command, log: &Path, pidfile: Option<&Path>) -> anyhow::Result<Self> {
        let out = File::create(log).with_context(|| format!("create {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        eprintln!("+ {cmd:?} > {}", log.display());
        let child = cmd.spawn().with_context(|| format!("start {name}"))?;
        if let Some(p) = pidfile {
            std::fs::write(p, format!("{}\n", child.id()))?;
        }
        Ok(Self {
            name: name.to_string(),
            child,
            pidfile: pidfile.map(Path::to_path_buf),
            log: log.to_path_buf(),
        })
    }

    fn current_pid(&self) -> i32 {
        self.pidfile
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(self.child.id() as i32)
    }

    fn alive(&mut self) -> bool {
        let pid = self.current_pid();
        if pid == self.child.id() as i32 {
            return matches!(self.child.try_wait(), Ok(None));
        }
        pid_alive(pid)
    }

    fn stop(&mut self) {
        let pid = self.current_pid();
        let own = self.child.id() as i32;
        for p in [pid, own] {
            stop_pid(&self.name, p, &mut self.child);
        }
        let _ = self.child.wait();
    }
}

fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| !r.trim_start().starts_with(['Z', 'X']))
        })
        .unwrap_or(false)
}

fn stop_pid(name: &str, pid: i32, own: &mut Child) {
    let alive = |own: &mut Child| {
        if pid == own.id() as i32 {
            matches!(own.try_wait(), Ok(None))
        } else {
            pid_alive(pid)
        }
    };
    if !alive(own) {
        return;
    }
    // SAFETY: kill(2) with a pid we started (or that the suite recorded for the restarted agent).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let start = Instant::now();
    while alive(own) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(own) {
        eprintln!("e2e: {name} (pid {pid}) ignored SIGTERM for 10 s: SIGKILL");
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// GET /healthz of traffic-control until it answers 200.
fn wait_healthy(addr: SocketAddr, guard: &mut Guard, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if !guard.alive() {
            bail!("{} exited:\n{}", guard.name, tail(&guard.log, 40));
        }
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let req = format!("GET /healthz HTTP/1.0\r\nHost: {addr}\r\n\r\n");
            if s.write_all(req.as_bytes()).is_ok() {
                let mut first = String::new();
                let _ = BufReader::new(&s).read_line(&mut first);
                if first.contains(" 200") {
                    return Ok(());
                }
            }
        }
        if start.elapsed() > timeout {
            bail!(
                "{} not healthy on {addr} after {timeout:?}:\n{}",
                guard.name,
                tail(&guard.log, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Removes what a failed run may leave: the suite's namespaces and, once the agent is stopped,
/// sidecars of pods in them.
fn sweep_namespaces() {
    let _ = Command::new("kubectl")
        .args(["delete", "namespace", "-l", "traffic-e2e=true", "--wait=false"])
        .stdout(Stdio::null())
        .status();
}

/// Sidecars of pods in the suite's namespaces (`e2e-*`), any state.
fn e2e_sidecars() -> Vec<String> {
    NodeRuntime::from_env()
        .and_then(|rt| rt.sidecars(None, Some("e2e-")))
        .map(|v| v.into_iter().map(|s| s.id).collect())
        .unwrap_or_default()
}

/// Waits (bounded) for the agent to remove the sidecars of deleted test pods.
fn wait_sidecars_gone(timeout: Duration) {
    let start = Instant::now();
    while !e2e_sidecars().is_empty() && start.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn remove_leftover_sidecars() {
    let left = e2e_sidecars();
    if !left.is_empty() {
        eprintln!(
            "e2e: removing {} leftover sidecar(s) the agent did not: {left:?}",
            left.len()
        );
        if let Err(e) = NodeRuntime::from_env().and_then(|rt| rt.remove_sidecars(&left)) {
            eprintln!("e2e: removing leftover sidecars failed: {e:#}");
        }
    }
}

/// `traffic-agent run` arguments for the cluster's runtime (the kit's containerd socket and CRI
/// root are not containerd's defaults).
fn runtime_args(runtime: RuntimeKind) -> Vec<String> {
    let mut args = vec!["--runtime".to_string(), runtime.to_string()];
    if runtime == RuntimeKind::Containerd {
        let cache = env_or("TRAFFIC_E2E_CACHE", "/var/cache/traffic-e2e");
        args.extend([
            "--containerd-socket".into(),
            env_or(
                "TRAFFIC_E2E_CONTAINERD_SOCK",
                traffic_tests::node_runtime::DEFAULT_CONTAINERD_SOCK,
            ),
            "--containerd-cri-root".into(),
            format!("{cache}/containerd/io.containerd.grpc.v1.cri"),
        ]);
    }
    args
}

fn agent_argv(bin: &Path, mode: &str, xds: &str, runtime: RuntimeKind, extra: &[String]) -> Vec<String> {
    let mut argv = vec![
        bin.display().to_string(),
        "run".into(),
        "--redirect-mode".into(),
        mode.into(),
        "--node-name".into(),
        env_or("TRAFFIC_E2E_NODE_NAME", "traffic-e2e-node"),
        "--control-plane".into(),
        xds.into(),
        "--metrics-addr".into(),
        "127.0.0.1:15090".into(),
        "--pod-name".into(),
        "traffic-e2e-agent".into(),
        "--envoy-image".into(),
        env_or("TRAFFIC_E2E_ENVOY_IMAGE", "traffic-e2e/envoy:1.39.3"),
    ];
    argv.extend(runtime_args(runtime));
    argv.extend(extra.iter().cloned());
    argv
}

pub fn run(o: Options) -> anyhow::Result<()> {
    anyhow::ensure!(
        cmd::is_root(),
        "the e2e suite attaches BPF programs and enters pod namespaces: run it as root"
    );
    cluster::import_env(&["KUBECONFIG", "DOCKER_HOST"])?;
    let runtime = cluster::require_runtime(o.runtime)?;
    let root = cmd::workspace_root();
    let cargo = cmd::cargo();
    if !o.no_build {
        build_ebpf::run(build_ebpf::Options::default())?;
        // The agent must embed the object just built (no silent stub).
        cmd::run(
            Command::new(&cargo)
                .current_dir(&root)
                .env("TRAFFIC_EBPF_REQUIRED", "1")
                .args([
                    "build",
                    "-p",
                    "traffic-control",
                    "--bin",
                    "traffic-control",
                    "-p",
                    "traffic-agent",
                    "--bin",
                    "traffic-agent",
                ]),
        )?;
        cmd::run(Command::new(&cargo).current_dir(&root).args([
            "test",
            "-p",
            "traffic-tests",
            "--test",
            "e2e",
            "--no-run",
        ]))?;
    }
    let bin_dir = cmd::target_dir().join("debug");
    cmd::output(Command::new("kubectl").args(["get", "--raw", "/readyz"]))
        .context("the cluster's API server is not ready")?;
    if o.filter.is_none() {
        // The crates' own tests against the cluster's API server and Docker (skipped by the
        // workspace run when the cluster is not there; required here).
        let sidecar_tests: &[&str] = match runtime {
            RuntimeKind::Docker => &["--test", "docker_runtime", "--test", "kube_pod"],
            RuntimeKind::Containerd => &["--test", "containerd_runtime"],
        };
        cmd::run(
            Command::new(&cargo)
                .current_dir(&root)
                .env("TRAFFIC_E2E", "1")
                .env("TRAFFIC_E2E_REQUIRED", "true")
                // The private-containerd test fails instead of skipping what it lacks.
                .env("CI", env_or("CI", "true"))
                .args(["test", "-p", "traffic-kube-source", "--test", "live"])
                .args(["-p", "traffic-sidecar"])
                .args(sidecar_tests),
        )?;
    }

    let tmp = std::env::temp_dir().join(format!("traffic-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let timings = tmp.join("timings.tsv");
    let node_ip = env_or("TRAFFIC_E2E_NODE_IP", "10.201.0.1");
    let xds = format!("{node_ip}:{}", o.xds_port);
    let http: SocketAddr = format!("{node_ip}:{}", o.http_port).parse()?;

    let result = (|| -> anyhow::Result<Vec<String>> {
        // The fault scenarios kill -9 and restart the control plane too: same command line,
        // pid recorded in the pid file so that the one running at the end is stopped.
        let mut control_argv: Vec<String> = [
            bin_dir.join("traffic-control").display().to_string(),
            "serve".into(),
            "--xds-addr".into(),
            xds.clone(),
            "--http-addr".into(),
            http.to_string(),
            "--pod-name".into(),
            "traffic-e2e-control".into(),
        ]
        .into();
        if o.insecure_xds {
            control_argv.extend(["--xds-auth=false".into(), "--xds-tls=false".into()]);
        } else {
            control_argv.extend(control_auth_args(&node_ip));
        }
        let control_log = tmp.join("traffic-control.log");
        let control_pidfile = tmp.join("traffic-control.pid");
        let mut control = Guard::spawn(
            "traffic-control",
            Command::new(&control_argv[0])
                .args(&control_argv[1..])
                .env("RUST_LOG", env_or("RUST_LOG", "info"))
                .env("NO_COLOR", "1"),
            &control_log,
            Some(&control_pidfile),
        )?;
        wait_healthy(http, &mut control, Duration::from_secs(60))?;
        let mut agent_args = o.agent_args.clone();
        if o.insecure_xds {
            agent_args.push("--xds-auth=false".into());
        } else {
            let ca = tmp.join("xds-ca.crt");
            fetch_ca(&ca)?;
            agent_args.extend(agent_auth_args(
                &tmp.join("xds-tokens"),
                o.token_renew_seconds,
                &ca,
            ));
        }
        let mut failed = Vec::new();
        for (i, mode) in o.modes.iter().enumerate() {
            let log = tmp.join(format!("traffic-agent-{mode}.log"));
            let pidfile = tmp.join(format!("traffic-agent-{mode}.pid"));
            let argv = agent_argv(&bin_dir.join("traffic-agent"), mode, &xds, runtime, &agent_args);
            let mut agent = Guard::spawn(
                "traffic-agent",
                Command::new(&argv[0])
                    .args(&argv[1..])
                    .env("RUST_LOG", env_or("RUST_LOG", "info"))
                    .env("NO_COLOR", "1"),
                &log,
                Some(&pidfile),
            )?;
            std::thread::sleep(Duration::from_secs(2));
            if !agent.alive() {
                failed.push(format!("{mode}: the agent exited at start"));
                eprintln!("=== traffic-agent ({mode}) exited:\n{}", tail(&log, 60));
                continue;
            }
            let mut test = Command::new(&cargo);
            test.current_dir(&root)
                .args(["test", "-p", "traffic-tests", "--test", "e2e", "--"])
                .arg("--test-threads=1")
                .args(o.nocapture.then_some("--nocapture"))
                .env("TRAFFIC_E2E", "1")
                .env("TRAFFIC_E2E_REDIRECT_MODE", mode)
                .env("TRAFFIC_E2E_AGENT_PIDFILE", &pidfile)
                .env("TRAFFIC_E2E_AGENT_ARGV", serde_json::to_string(&argv)?)
                .env("TRAFFIC_E2E_AGENT_LOG", &log)
                .env("TRAFFIC_E2E_CONTROL_PIDFILE", &control_pidfile)
                .env("TRAFFIC_E2E_CONTROL_ARGV", serde_json::to_string(&control_argv)?)
                .env("TRAFFIC_E2E_CONTROL_LOG", &control_log)
                .env("TRAFFIC_E2E_TIMINGS", &timings)
                .env(traffic_tests::node_runtime::ENV_RUNTIME, runtime.as_str())
                // The agent the test restarts inherits this environment.
                .env("RUST_LOG", env_or("RUST_LOG", "info"))
                .env("NO_COLOR", "1")
                .envs(o.test_env.iter().map(|(k, v)| (k, v)));
            match (&o.filter, i) {
                (Some(f), _) => {
                    test.arg(f);
                }
                (None, 0) => {}
                (None, _) => {
                    test.arg("both_modes::");
                }
            }
            let ok = cmd::run(&mut test).is_ok();
            sweep_namespaces();
            wait_sidecars_gone(Duration::from_secs(60));
            let agent_ok = agent.alive();
            agent.stop();
            remove_leftover_sidecars();
            if !ok || !agent_ok {
                failed.push(format!(
                    "{mode}: {}{}",
                    if ok { "" } else { "tests failed" },
                    if agent_ok { "" } else { " (agent died)" }
                ));
                eprintln!("=== traffic-agent ({mode}) log tail:\n{}", tail(&log, 80));
            }
        }
        if !failed.is_empty() {
            eprintln!("=== traffic-control log tail:\n{}", tail(&control.log, 60));
        }
        control.stop();
        Ok(failed)
    })();
    sweep_namespaces();
    remove_leftover_sidecars();
    let summary = std::fs::read_to_string(&timings).unwrap_or_default();
    if !summary.is_empty() {
        eprintln!(
            "=== [{runtime}] time from labelling to redirect active, per pod:\n{}",
            traffic_tests::e2e_parse::summarize_timings(&summary)
        );
    }
    let failed = result?;
    if o.keep_logs || !failed.is_empty() {
        eprintln!("e2e: logs kept in {}", tmp.display());
    } else {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    if !failed.is_empty() {
        bail!("e2e failed: {}", failed.join("; "));
    }
    eprintln!("e2e: all passes green on {runtime} ({})", o.modes.join(", "));
    Ok(())
}
