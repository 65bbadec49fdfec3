//! Harness of the end-to-end suite on a real Kubernetes node (`tests/tests/e2e.rs`, run by
//! `cargo xtask e2e`): kubectl helpers and the node's runtime (Docker or containerd,
//! [`crate::node_runtime`]), a per-test namespace with the test app
//! (`tests/e2e/manifests/app.yaml`) deleted on drop, waits with timeouts, the node's redirect state
//! (BPF programs on a pod cgroup, the iptables chain in a pod netns, pinned/recorded state), the
//! sidecar's Envoy admin, and control of the agent process started by the xtask (kill -9, restart).
//!
//! Gated: nothing runs unless `TRAFFIC_E2E=1`. With it, a missing cluster skips the test, except
//! under `CI=true`, where it fails.
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::e2e_parse::{cluster_vars, dns_name, timing_line};
use crate::node_runtime::NodeRuntime;

/// Label on every container the agent starts as a sidecar: the pod uid.
pub const SIDECAR_POD_UID: &str = crate::node_runtime::LABEL_POD_UID;
/// Label on every namespace the suite creates (the xtask sweeps leftovers by it).
pub const NAMESPACE_LABEL: &str = "traffic-e2e";
/// Default eBPF pin root and iptables state dir of the agent.
pub const BPF_PIN_ROOT: &str = "/sys/fs/bpf/traffic-manager";
pub const IPTABLES_STATE_DIR: &str = "/run/traffic-manager/iptables";
/// The iptables chain the agent installs in a pod netns.
pub const IPTABLES_CHAIN: &str = "TRAFFIC_OUTPUT";
/// Envoy admin port of the sidecar (127.0.0.1 in the pod netns).
pub const ENVOY_ADMIN_PORT: u16 = 15000;

/// Env vars the xtask sets for the suite.
pub const ENV_GATE: &str = "TRAFFIC_E2E";
pub const ENV_MODE: &str = "TRAFFIC_E2E_REDIRECT_MODE";
pub const ENV_AGENT_PIDFILE: &str = "TRAFFIC_E2E_AGENT_PIDFILE";
pub const ENV_AGENT_ARGV: &str = "TRAFFIC_E2E_AGENT_ARGV";
pub const ENV_AGENT_LOG: &str = "TRAFFIC_E2E_AGENT_LOG";
/// The same for the control plane (`traffic-control serve`).
pub const ENV_CONTROL_PIDFILE: &str = "TRAFFIC_E2E_CONTROL_PIDFILE";
pub const ENV_CONTROL_ARGV: &str = "TRAFFIC_E2E_CONTROL_ARGV";
pub const ENV_CONTROL_LOG: &str = "TRAFFIC_E2E_CONTROL_LOG";
pub const ENV_TIMINGS: &str = "TRAFFIC_E2E_TIMINGS";
/// What the kit's `cluster-up.sh` writes for a running cluster (default `TRAFFIC_E2E_STATE`).
pub const CLUSTER_ENV_SH: &str = "/run/traffic-e2e/env.sh";

/// What one command printed.
#[derive(Debug, Clone)]
pub struct Out {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` with a deadline (killed at the deadline; that is an error).
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Out> {
    let line = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {line}"))?;
    // Read both pipes on threads so a chatty command cannot block on a full pipe.
    let mut so = child.stdout.take().context("stdout")?;
    let mut se = child.stderr.take().context("stderr")?;
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{line} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Out {
        ok: status.success(),
        code: status.code(),
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

/// Polls `f` every `every` until it returns `Some`, or fails after `timeout` naming `what` and the
/// last error `f` returned.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!(" (last error: {e:#})"),
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}{last}");
        }
        std::thread::sleep(every);
    }
}

/// A short random-enough suffix for names (time and pid based; no RNG dependency).
pub fn random_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mixed = (nanos as u64) ^ ((std::process::id() as u64) << 40);
    let mixed = mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!("{:08x}", (mixed >> 32) as u32)
}

/// A host process started by `cargo xtask e2e` (the agent, the control plane), which the suite may
/// kill and restart: its pid file, command line and log come from the environment.
#[derive(Debug, Clone)]
pub struct ProcessControl {
    name: &'static str,
    pidfile: PathBuf,
    argv: Vec<String>,
    log: PathBuf,
}

impl ProcessControl {
    fn from_env(name: &'static str, pidfile: &str, argv: &str, log: &str) -> Option<Self> {
        let pidfile = PathBuf::from(std::env::var_os(pidfile)?);
        let argv: Vec<String> = serde_json::from_str(&std::env::var(argv).ok()?).ok()?;
        let log = PathBuf::from(std::env::var_os(log)?);
        (!argv.is_empty()).then_some(Self {
            name,
            pidfile,
            argv,
            log,
        })
    }

    pub fn pid(&self) -> anyhow::Result<i32> {
        let text = std::fs::read_to_string(&self.pidfile)
            .with_context(|| format!("read {}", self.pidfile.display()))?;
        text.trim()
            .parse()
            .with_context(|| format!("{} pid file", self.name))
    }

    /// The value after `flag` on its command line (`--http-addr 10.201.0.1:19090`), or of
    /// `flag=value`.
    pub fn arg(&self, flag: &str) -> Option<&str> {
        let prefix = format!("{flag}=");
        self.argv.iter().enumerate().find_map(|(i, a)| {
            if a == flag {
                self.argv.get(i + 1).map(String::as_str)
            } else {
                a.strip_prefix(&prefix)
            }
        })
    }

    /// Whether the process is alive (a zombie counts as dead).
    pub fn alive(&self) -> bool {
        let Ok(pid) = self.pid() else { return false };
        process_alive(pid)
    }

    /// `kill -9` the process and wait until it is gone.
    pub fn kill9(&self) -> anyhow::Result<()> {
        let pid = self.pid()?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL)
            .with_context(|| format!("kill -9 {pid}"))?;
        wait_until(
            &format!("the {} to die", self.name),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || Ok((!process_alive(pid)).then_some(())),
        )
    }

    /// Starts the process again with the same command line, appending to the same log, and
    /// records its pid for the xtask (which stops it at the end).
    pub fn restart(&self) -> anyhow::Result<i32> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let child = cmd.spawn().with_context(|| format!("restart {:?}", self.argv))?;
        let pid = child.id() as i32;
        std::fs::write(&self.pidfile, format!("{pid}\n"))?;
        Ok(pid)
    }
}

/// The host's uptime in seconds (`/proc/uptime`; pods read the same clock).
pub fn uptime() -> anyhow::Result<f64> {
    let text = std::fs::read_to_string("/proc/uptime")?;
    text.split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .context("/proc/uptime")
}

/// `GET <path>` on a local HTTP endpoint (the agent's and control plane's `/metrics`): the body.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut s = std::net::TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let (head, body) = buf.split_once("\r\n\r\n").context("no HTTP header end")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.") && head.contains(" 200"),
        "GET {addr}{path}: {head}"
    );
    Ok(body.to_string())
}

fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the `(comm)` field.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// The suite's view of the node: environment, expected redirect mode, agent control.
#[derive(Debug)]
pub struct E2e {
    env: Vec<(String, String)>,
    pub mode: String,
    /// The node's container runtime (sidecars, sandboxes, app containers).
    pub runtime: NodeRuntime,
    pub kubepods: PathBuf,
    pub agent: Option<ProcessControl>,
    pub control: Option<ProcessControl>,
    timings: Option<PathBuf>,
    pub manifests: PathBuf,
}

fn skip_or_fail(reason: String) -> Option<E2e> {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("e2e test cannot run under CI: {reason}");
    }
    eprintln!("skipping e2e test: {reason}");
    None
}

/// What each installed iptables flavour (`iptables-save`, `iptables-legacy-save`) dumps, with
/// `args`, in the network namespace of process `pid`: `(tool, rules)` per flavour that answered.
pub fn netns_iptables_saves(pid: &str, args: &[&str]) -> anyhow::Result<Vec<(&'static str, String)>> {
    let mut dumps = Vec::new();
    for save in ["iptables-save", "iptables-legacy-save"] {
        if crate::privileged::which(save).is_none() {
            continue;
        }
        let out = run_timeout(
            Command::new("nsenter").args(["-t", pid, "-n", save]).args(args),
            Duration::from_secs(10),
        )?;
        if out.ok {
            dumps.push((save, out.stdout));
        }
    }
    Ok(dumps)
}

/// The cluster's variables (see [`cluster_vars`]) that the env.sh at `path` exports, read through
/// bash so that its logic applies.
pub fn cluster_env(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let out = run_timeout(
        Command::new("bash").args(["-c", &format!(". '{}' >/dev/null && env -0", path.display())]),
        Duration::from_secs(10),
    )?;
    anyhow::ensure!(out.ok, "sourcing {} failed: {}", path.display(), out.stderr);
    Ok(cluster_vars(&out.stdout))
}

impl E2e {
    /// Call first in every e2e test: `let Some(e2e) = E2e::require() else { return };`.
    pub fn require() -> Option<Self> {
        if std::env::var(ENV_GATE).as_deref() != Ok("1") {
            eprintln!("skipping e2e test: set {ENV_GATE}=1 (cargo xtask e2e does)");
            return None;
        }
        if !nix::unistd::geteuid().is_root() {
            return skip_or_fail("not running as root".into());
        }
        let mut env = Vec::new();
        if std::env::var_os("KUBECONFIG").is_none() || std::env::var_os("DOCKER_HOST").is_none() {
            let sh = Path::new(CLUSTER_ENV_SH);
            if !sh.is_file() {
                return skip_or_fail(format!(
                    "KUBECONFIG/DOCKER_HOST unset and no {CLUSTER_ENV_SH} (no cluster)"
                ));
            }
            match cluster_env(sh) {
                Ok(vars) => env = vars,
                Err(e) => return skip_or_fail(format!("{e:#}")),
            }
        }
        let lookup = |k: &str| {
            env.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var(k).ok())
        };
        let kubepods = lookup("TRAFFIC_E2E_KUBEPODS_CGROUP2")
            .map(PathBuf::from)
            .or_else(|| crate::cgroup2_mount().map(|m| m.join("kubepods")))
            .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup/kubepods"));
        let runtime = match NodeRuntime::new(env.clone(), lookup) {
            Ok(r) => r,
            Err(e) => return skip_or_fail(format!("{e:#}")),
        };
        let e2e = E2e {
            env,
            runtime,
            mode: std::env::var(ENV_MODE).unwrap_or_else(|_| "ebpf".into()),
            kubepods,
            agent: ProcessControl::from_env("agent", ENV_AGENT_PIDFILE, ENV_AGENT_ARGV, ENV_AGENT_LOG),
            control: ProcessControl::from_env(
                "control plane",
                ENV_CONTROL_PIDFILE,
                ENV_CONTROL_ARGV,
                ENV_CONTROL_LOG,
            ),
            timings: std::env::var_os(ENV_TIMINGS).map(PathBuf::from),
            manifests: Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/manifests"),
        };
        match e2e.kubectl(&["get", "--raw", "/readyz"]) {
            Ok(_) => {}
            Err(e) => return skip_or_fail(format!("the cluster is not reachable: {e:#}")),
        }
        if let Err(e) = e2e.runtime.check() {
            return skip_or_fail(format!(
                "the node's runtime ({}) is not reachable: {e:#}",
                e2e.runtime.kind
            ));
        }
        Some(e2e)
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// `kubectl <args>`; fails (with stderr) on a non-zero exit.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_within(args, Duration::from_secs(60))
    }

    /// [`Self::kubectl`] killed after `timeout` (for `kubectl wait --timeout=…`, which must get
    /// the time it asks for).
    pub fn kubectl_within(&self, args: &[&str], timeout: Duration) -> anyhow::Result<String> {
        let out = run_timeout(self.command("kubectl").args(args), timeout)?;
        anyhow::ensure!(out.ok, "kubectl {} failed: {}", args.join(" "), out.stderr.trim());
        Ok(out.stdout)
    }

    pub fn kubectl_json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let text = self.kubectl(&a)?;
        serde_json::from_str(&text).with_context(|| format!("kubectl {} -o json", args.join(" ")))
    }

    /// A fresh namespace `e2e-<scenario>-<random>` with the test app, every Deployment available.
    pub fn namespace(&self, scenario: &str) -> anyhow::Result<TestNamespace<'_>> {
        let name = dns_name(&format!("e2e-{scenario}"), &random_suffix());
        self.kubectl(&["create", "namespace", &name])?;
        let ns = TestNamespace { e2e: self, name };
        self.kubectl(&["label", "namespace", &ns.name, &format!("{NAMESPACE_LABEL}=true")])?;
        let app = self.manifests.join("app.yaml");
        self.kubectl(&["apply", "-n", &ns.name, "-f", &app.to_string_lossy()])?;
        self.kubectl_within(
            &[
                "wait",
                "-n",
                &ns.name,
                "--for=condition=available",
                "deployment",
                "--all",
                "--timeout=120s",
            ],
            Duration::from_secs(130),
        )?;
        Ok(ns)
    }

    /// Like [`wait_until`] for work only the agent does: fails at once when the agent process the
    /// xtask started has died (instead of waiting out the timeout).
    pub fn wait_agent<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        wait_until(what, timeout, Duration::from_millis(50), || {
            if let Some(agent) = &self.agent {
                if !agent.alive() {
                    // Ends the wait now; the outer `?` turns it into the error.
                    return Ok(Some(Err(anyhow::anyhow!(
                        "the agent process is not running (see its log in the xtask output)"
                    ))));
                }
            }
            Ok(f()?.map(Ok))
        })?
        .with_context(|| format!("waiting for {what}"))
    }

    /// Sidecar containers (any state) of a pod: `(id, state)` (state as Docker says it:
    /// `running`, `created`, `exited`).
    pub fn sidecars(&self, pod_uid: &str) -> anyhow::Result<Vec<(String, String)>> {
        Ok(self
            .runtime
            .sidecars(Some(pod_uid), None)?
            .into_iter()
            .map(|s| (s.id, s.state))
            .collect())
    }

    /// The one running sidecar of a pod, if any.
    pub fn running_sidecar(&self, pod_uid: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .sidecars(pod_uid)?
            .into_iter()
            .find(|(_, st)| st == "running")
            .map(|(id, _)| id))
    }

    /// Host pid of a pod's sandbox (pause) container: `/proc/<pid>/ns/net` is the pod netns.
    pub fn sandbox_pid(&self, pod_uid: &str) -> anyhow::Result<Option<u32>> {
        self.runtime.sandbox_pid(pod_uid)
    }

    /// The pod-level cgroup v2 directory (`…/kubepods[/<qos>]/pod<uid>`), if it exists.
    pub fn pod_cgroup(&self, pod_uid: &str) -> Option<PathBuf> {
        let dir = format!("pod{pod_uid}");
        ["", "besteffort", "burstable"]
            .iter()
            .map(|q| self.kubepods.join(q).join(&dir))
            .find(|p| p.is_dir())
    }

    /// What the node holds for a pod's redirect, read from the kernel and the agent's state dirs.
    pub fn redirect_state(&self, pod_uid: &str) -> anyhow::Result<RedirectState> {
        let mut st = RedirectState::default();
        if let Some(cg) = self.pod_cgroup(pod_uid) {
            let out = run_timeout(
                Command::new("bpftool").args(["-j", "cgroup", "show"]).arg(&cg),
                Duration::from_secs(10),
            )?;
            if out.ok {
                let v: Value = serde_json::from_str(out.stdout.trim()).unwrap_or(Value::Null);
                st.bpf_programs = v.as_array().map(Vec::len).unwrap_or(0);
            }
        }
        if let Some(pid) = self.sandbox_pid(pod_uid)? {
            st.iptables_chain = netns_iptables_saves(&pid.to_string(), &["-t", "nat"])?
                .iter()
                .any(|(_, rules)| rules.contains(IPTABLES_CHAIN));
        }
        st.bpf_pins = Path::new(BPF_PIN_ROOT).join("pods").join(pod_uid).exists();
        st.iptables_record = Path::new(IPTABLES_STATE_DIR)
            .join(format!("{pod_uid}.json"))
            .exists();
        Ok(st)
    }

    /// GET `path` from a sidecar's Envoy admin (`wget` run in the sidecar, the Envoy image has
    /// busybox; the sidecar itself is never redirected).
    pub fn envoy_admin(&self, sidecar: &str, path: &str) -> anyhow::Result<String> {
        self.runtime.exec_sidecar(
            sidecar,
            &[
                "wget",
                "-qO-",
                "-T",
                "5",
                &format!("http://127.0.0.1:{ENVOY_ADMIN_PORT}{path}"),
            ],
        )
    }

    /// The runtime's id of a pod's running app container `container`.
    pub fn app_container(&self, pod_uid: &str, container: &str) -> anyhow::Result<String> {
        self.runtime.app_container(pod_uid, container)
    }

    /// Copies a host file into a pod's app container (the test image runs host-built binaries,
    /// it carries the host's glibc).
    pub fn copy_into(&self, pod_uid: &str, container: &str, src: &Path, dst: &str) -> anyhow::Result<()> {
        let id = self.app_container(pod_uid, container)?;
        self.runtime.copy_into_app(&id, src, dst)
    }

    /// Appends a timing sample to the suite's timings file (summarized by the xtask) and prints it.
    pub fn record_timing(&self, what: &str, d: Duration) {
        eprintln!("timing [{}] {what}: {} ms", self.mode, d.as_millis());
        if let Some(path) = &self.timings {
            let line = timing_line(&self.mode, what, d);
            let res = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(line.as_bytes()));
            if let Err(e) = res {
                eprintln!("cannot append to {}: {e}", path.display());
            }
        }
    }
}

/// A pod's redirect state on the node.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RedirectState {
    /// Programs attached to the pod cgroup (`bpftool cgroup show`).
    pub bpf_programs: usize,
    /// Our chain in the pod netns' nat table.
    pub iptables_chain: bool,
    /// `/sys/fs/bpf/traffic-manager/pods/<uid>` exists.
    pub bpf_pins: bool,
    /// `/run/traffic-manager/iptables/<uid>.json` exists.
    pub iptables_record: bool,
}

impl RedirectState {
    /// Whether the redirect of `mode` is in place.
    pub fn active(&self, mode: &str) -> bool {
        match mode {
            "iptables" => self.iptables_chain,
            _ => self.bpf_programs > 0,
        }
    }
    /// Nothing left in the kernel or in the agent's state.
    pub fn gone(&self) -> bool {
        *self == RedirectState::default()
    }
}

/// A running pod of the test app.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub uid: String,
    pub ip: String,
    pub annotations: BTreeMap<String, String>,
}

impl Pod {
    pub(crate) fn from_json(v: &Value) -> Option<Self> {
        let meta = v.get("metadata")?;
        let annotations = meta
            .get("annotations")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        Some(Pod {
            name: meta.get("name")?.as_str()?.to_string(),
            uid: meta.get("uid")?.as_str()?.to_string(),
            ip: v
                .pointer("/status/podIP")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            annotations,
        })
    }
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }
}

/// A namespace with the test app, deleted (without waiting) on drop.
pub struct TestNamespace<'a> {
    pub e2e: &'a E2e,
    pub name: String,
}

impl TestNamespace<'_> {
    fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        self.e2e.kubectl(&a)
    }

    /// Running, not terminating pods with label `app=<app>` (and `version=<v>` when given).
    pub fn pods(&self, selector: &str) -> anyhow::Result<Vec<Pod>> {
        let v = self
            .e2e
            .kubectl_json(&["-n", &self.name, "get", "pods", "-l", selector])?;
        Ok(v.get("items")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
                    .filter(|p| p.pointer("/status/phase").and_then(Value::as_str) == Some("Running"))
                    .filter_map(Pod::from_json)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The single running pod matching `selector`.
    pub fn pod(&self, selector: &str) -> anyhow::Result<Pod> {
        wait_until(
            &format!("one running pod {selector} in {}", self.name),
            Duration::from_secs(60),
            Duration::from_millis(200),
            || {
                let pods = self.pods(selector)?;
                Ok((pods.len() == 1).then(|| pods.into_iter().next()).flatten())
            },
        )
    }

    /// Re-reads a pod (annotations change).
    pub fn get_pod(&self, name: &str) -> anyhow::Result<Option<Pod>> {
        let out = run_timeout(
            self.e2e
                .command("kubectl")
                .args(["-n", &self.name, "get", "pod", name, "-o", "json"]),
            Duration::from_secs(30),
        )?;
        if !out.ok {
            if out.stderr.contains("NotFound") {
                return Ok(None);
            }
            bail!("kubectl get pod {name}: {}", out.stderr.trim());
        }
        let v: Value = serde_json::from_str(&out.stdout)?;
        Ok(Pod::from_json(&v))
    }

    pub fn cluster_ip(&self, service: &str) -> anyhow::Result<String> {
        let ip = self.kubectl(&["get", "service", service, "-o", "jsonpath={.spec.clusterIP}"])?;
        Ok(ip.trim().to_string())
    }

    /// `kubectl create secret tls <name>` from PEM files.
    pub fn tls_secret(&self, name: &str, cert: &Path, key: &Path) -> anyhow::Result<()> {
        self.kubectl(&[
            "create",
            "secret",
            "tls",
            name,
            &format!("--cert={}", cert.display()),
            &format!("--key={}", key.display()),
        ])
        .map(drop)
    }

    /// `kubectl label --overwrite <object> k=v ...` (`k-` removes).
    pub fn label(&self, object: &str, labels: &[&str]) -> anyhow::Result<()> {
        let mut a = vec!["label", "--overwrite", object];
        a.extend_from_slice(labels);
        self.kubectl(&a).map(drop)
    }

    /// `sh -c <script>` in the pod's first container; the output whatever the exit code.
    pub fn sh(&self, pod: &str, script: &str, timeout: Duration) -> anyhow::Result<Out> {
        run_timeout(
            self.e2e
                .command("kubectl")
                .args(["-n", &self.name, "exec", pod, "--", "sh", "-c", script]),
            timeout,
        )
    }

    /// `n` sequential GETs of `url` from `pod`; one line per reply, `ERR` for a failed request.
    pub fn get_many(&self, pod: &str, url: &str, n: usize) -> anyhow::Result<String> {
        let script = format!(
            "i=0; while [ $i -lt {n} ]; do wget -qO- -T 5 '{url}' 2>/dev/null || echo ERR; i=$((i+1)); done"
        );
        let out = self.sh(pod, &script, Duration::from_secs(30 + 6 * n as u64))?;
        Ok(out.stdout)
    }

    /// One GET: `(ok, stdout + stderr)`; busybox wget prints `server returned error: HTTP/1.1 505 …`.
    pub fn get(&self, pod: &str, url: &str) -> anyhow::Result<(bool, String)> {
        let out = self.sh(pod, &format!("wget -qO- -T 8 '{url}'"), Duration::from_secs(30))?;
        Ok((out.ok, format!("{}{}", out.stdout, out.stderr)))
    }

    /// Kubernetes Events about `object` (kind/name as `kubectl get events` reports them).
    pub fn events_for(&self, name: &str) -> anyhow::Result<Vec<(String, String)>> {
        let v = self.e2e.kubectl_json(&[
            "-n",
            &self.name,
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={name}"),
        ])?;
        Ok(v.get("items")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .map(|e| {
                        let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                        (s("reason"), s("message"))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

impl Drop for TestNamespace<'_> {
    fn drop(&mut self) {
        if let Err(e) = self
            .e2e
            .kubectl(&["delete", "namespace", &self.name, "--wait=false"])
        {
            eprintln!("cleanup: {e:#}");
        }
    }
}
