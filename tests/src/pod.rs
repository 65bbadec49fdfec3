//! `TestPod`: a pod-like sandbox on the real kernel, and the processes that run in it.
//!
//! Topology (one set per `TestPod`, so every test is isolated and addresses can be fixed):
//! ```text
//!  pod netns <name>                          backend netns <name>-b
//!   lo (127.0.0.1, ::1)                       lo + `local 10.96.0.0/16`, `local fd00:96::/64`
//!   veth0 10.250.0.1/24 fd00:250::1/64  <---> veth0 10.250.0.2/24 fd00:250::2/64
//!   routes: 10.96.0.0/16, fd00:96::/64 -> backend
//! ```
//! The backend answers on every service address, so any `10.96.x.y:<port>` or `[fd00:96::x]:<port>`
//! reaches it and it replies with the destination it was dialed on and the peer it saw.
//!
//! Cgroups (under the detected cgroup2 mount): `traffic-test/<name>` (the pod: apps run here),
//! `traffic-test/<name>-proxy` (the proxy, same netns, other cgroup), `traffic-test/<name>-backend`.
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::wire::{ClientResult, ProxyEvent, ProxyLine};
use crate::{bins, cgroup2_mount};

pub const POD_V4: &str = "10.250.0.1";
pub const BACKEND_V4: &str = "10.250.0.2";
pub const POD_V6: &str = "fd00:250::1";
pub const BACKEND_V6: &str = "fd00:250::2";
/// Service ranges routed from the pod to the backend, which treats every address in them as local.
pub const SERVICES_V4: &str = "10.96.0.0/16";
pub const SERVICES_V6: &str = "fd00:96::/64";
/// TCP ports the backend listens on (dual stack, every service address).
pub const BACKEND_TCP_PORTS: &[u16] = &[9080, 9443, 8080];
/// UDP sockets of the backend (bound to these exact service addresses).
pub const BACKEND_UDP: &[&str] = &["10.96.0.10:9053", "[fd00:96::10]:9053"];
/// The proxy's uid in tests (the Envoy sidecar's uid).
pub const PROXY_UID: u32 = 1337;
/// How long a helper process may take before the fixture kills it and fails.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique, short name (`tt<pid>x<n>`): netns and cgroup names of concurrent tests never clash.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id())
}

/// Where a process runs: which netns, which cgroup (none = stay in the caller's), which uid.
#[derive(Debug, Clone)]
pub struct Placement {
    pub netns: PathBuf,
    pub cgroup: Option<PathBuf>,
    pub uid: Option<u32>,
}

impl Placement {
    /// Spawns `cmd` placed here: between fork and exec the child enters the netns, moves itself into
    /// the cgroup (before exec, so the program never runs outside it) and drops to the uid.
    pub fn spawn(&self, cmd: &mut Command) -> anyhow::Result<Child> {
        let netns =
            File::open(&self.netns).with_context(|| format!("open netns {}", self.netns.display()))?;
        let procs = match &self.cgroup {
            Some(cg) => Some(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(cg.join("cgroup.procs"))
                    .with_context(|| format!("open {}/cgroup.procs", cg.display()))?,
            ),
            None => None,
        };
        let ns_fd = netns.as_raw_fd();
        let procs_fd = procs.as_ref().map(|f| f.as_raw_fd());
        let uid = self.uid;
        // SAFETY: the closure only makes async-signal-safe syscalls (setns, write, setgroups, setgid,
        // setuid) on file descriptors that stay open until `spawn` returns; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(fd) = procs_fd {
                    // "0" moves the writing process itself.
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(uid) = uid {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(uid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {cmd:?} in {self:?}"))?;
        drop((netns, procs));
        Ok(child)
    }

    /// Runs `program args` placed here to completion (killed after [`PROCESS_TIMEOUT`]); returns stdout.
    pub fn run(&self, program: &Path, args: &[String]) -> anyhow::Result<Output> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = self.spawn(&mut cmd)?;
        wait_with_timeout(child, PROCESS_TIMEOUT)
    }
}

/// What a finished helper process printed.
#[derive(Debug)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The `ok ...` lines a `test-client` printed, one per connection or datagram.
    pub fn client_results(&self) -> Vec<ClientResult> {
        self.stdout.lines().filter_map(ClientResult::parse).collect()
    }
}

fn wait_with_timeout(mut child: Child, timeout: Duration) -> anyhow::Result<Output> {
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("process {} timed out after {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    Ok(Output {
        success: status.success(),
        stdout,
        stderr,
    })
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("run ip")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(name: &str) -> anyhow::Result<Self> {
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_string(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    /// `/run/netns/<name>`: what `PodRedirect::netns` takes.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // A test may have deleted it already (to simulate a dead pod).
        if self.path().exists() {
            if let Err(e) = ip(&["netns", "delete", &self.name]) {
                eprintln!("cleanup: {e:#}");
            }
        }
    }
}

/// A cgroup v2 directory; on drop every process in it is killed and the directory removed.
#[derive(Debug)]
pub struct CgroupDir {
    path: PathBuf,
}

impl CgroupDir {
    pub fn create(path: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(Self { path })
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Pids currently in this cgroup.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
    fn kill_all(&self) {
        // cgroup.kill (5.14+) kills atomically; fall back to signalling every listed pid.
        if std::fs::write(self.path.join("cgroup.kill"), "1").is_err() {
            for pid in self.pids() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
            }
        }
    }
}

impl Drop for CgroupDir {
    fn drop(&mut self) {
        self.kill_all();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() > deadline => {
                    eprintln!("cleanup: rmdir {}: {e}", self.path.display());
                    return;
                }
                Err(_) => {
                    self.kill_all();
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

/// The proxy process (`test-proxy`) and what it learned so far.
pub struct Proxy {
    child: Child,
    lines: Arc<Mutex<Vec<ProxyLine>>>,
    pub port: u16,
}

impl Proxy {
    /// Every connection the proxy accepted so far, in order.
    pub fn events(&self) -> Vec<ProxyEvent> {
        self.lines().into_iter().map(|l| l.event).collect()
    }
    /// Every log line so far, with the destination each client named in its request.
    pub fn lines(&self) -> Vec<ProxyLine> {
        self.lines.lock().map(|e| e.clone()).unwrap_or_default()
    }
    /// Waits until at least `n` events arrived (the proxy logs asynchronously to the client's reply).
    pub fn wait_events(&self, n: usize, timeout: Duration) -> Vec<ProxyEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            let ev = self.events();
            if ev.len() >= n || Instant::now() > deadline {
                return ev;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    /// The event for a client connection from `peer`.
    pub fn event_for(&self, peer: SocketAddr) -> Option<ProxyEvent> {
        self.events().into_iter().find(|e| e.peer() == peer)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed (and reaped) when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A pod sandbox: netns + cgroups + a backend netns with a running backend. Dropping it kills every
/// process it started and removes the cgroups and namespaces.
pub struct TestPod {
    pub name: String,
    backend: Option<Child>,
    // Field order is drop order: processes die with their cgroups before the namespaces go.
    cgroup: CgroupDir,
    proxy_cgroup: CgroupDir,
    backend_cgroup: CgroupDir,
    pod_netns: Netns,
    backend_netns: Netns,
}

impl TestPod {
    /// Creates the sandbox and starts the backend. `prefix` should be short (names are `<prefix><pid>x<n>`).
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let name = unique_name(prefix);
        let mount = cgroup2_mount().context("no cgroup2 mount")?;
        let root = mount.join("traffic-test");
        match std::fs::create_dir(&root) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("mkdir {}", root.display())),
        }
        let backend_netns = Netns::create(&format!("{name}-b"))?;
        let pod_netns = Netns::create(&name)?;
        let cgroup = CgroupDir::create(root.join(&name))?;
        let proxy_cgroup = CgroupDir::create(root.join(format!("{name}-proxy")))?;
        let backend_cgroup = CgroupDir::create(root.join(format!("{name}-backend")))?;
        let (p, b) = (pod_netns.name(), backend_netns.name());
        ip(&[
            "-n", p, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns", b,
        ])?;
        ip(&["-n", p, "addr", "add", &format!("{POD_V4}/24"), "dev", "veth0"])?;
        ip(&[
            "-n",
            p,
            "-6",
            "addr",
            "add",
            &format!("{POD_V6}/64"),
            "dev",
            "veth0",
            "nodad",
        ])?;
        ip(&[
            "-n",
            b,
            "addr",
            "add",
            &format!("{BACKEND_V4}/24"),
            "dev",
            "veth0",
        ])?;
        ip(&[
            "-n",
            b,
            "-6",
            "addr",
            "add",
            &format!("{BACKEND_V6}/64"),
            "dev",
            "veth0",
            "nodad",
        ])?;
        ip(&["-n", p, "link", "set", "veth0", "up"])?;
        ip(&["-n", b, "link", "set", "veth0", "up"])?;
        ip(&["-n", p, "route", "add", SERVICES_V4, "via", BACKEND_V4])?;
        ip(&["-n", p, "-6", "route", "add", SERVICES_V6, "via", BACKEND_V6])?;
        ip(&["-n", b, "route", "add", "local", SERVICES_V4, "dev", "lo"])?;
        ip(&["-n", b, "-6", "route", "add", "local", SERVICES_V6, "dev", "lo"])?;
        let mut pod = Self {
            name,
            backend: None,
            cgroup,
            proxy_cgroup,
            backend_cgroup,
            pod_netns,
            backend_netns,
        };
        pod.start_backend()?;
        Ok(pod)
    }

    fn start_backend(&mut self) -> anyhow::Result<()> {
        let tcp: Vec<String> = BACKEND_TCP_PORTS.iter().map(|p| p.to_string()).collect();
        let mut cmd = Command::new(bins::path(bins::BACKEND)?);
        cmd.arg("--tcp")
            .arg(tcp.join(","))
            .arg("--udp")
            .arg(BACKEND_UDP.join(","));
        let child = self
            .backend_placement()
            .spawn(cmd.stdout(Stdio::piped()).stdin(Stdio::null()))?;
        self.backend = Some(child);
        let stdout = self
            .backend
            .as_mut()
            .and_then(|c| c.stdout.take())
            .context("backend stdout")?;
        wait_ready(stdout, "backend")
    }

    /// `/run/netns/<name>`: the pod's network namespace.
    pub fn netns(&self) -> PathBuf {
        self.pod_netns.path()
    }
    pub fn netns_name(&self) -> &str {
        self.pod_netns.name()
    }
    pub fn backend_netns_name(&self) -> &str {
        self.backend_netns.name()
    }
    /// The pod-level cgroup (apps run here; eBPF attaches here).
    pub fn cgroup(&self) -> &Path {
        self.cgroup.path()
    }
    /// The proxy's cgroup: same netns, not below the pod cgroup.
    pub fn proxy_cgroup(&self) -> &Path {
        self.proxy_cgroup.path()
    }
    /// An app container of the pod: pod netns, pod cgroup, root.
    pub fn app_placement(&self) -> Placement {
        Placement {
            netns: self.netns(),
            cgroup: Some(self.cgroup.path().to_path_buf()),
            uid: None,
        }
    }
    /// The proxy: pod netns, proxy cgroup, uid 1337.
    pub fn proxy_placement(&self) -> Placement {
        Placement {
            netns: self.netns(),
            cgroup: Some(self.proxy_cgroup.path().to_path_buf()),
            uid: Some(PROXY_UID),
        }
    }
    /// The backend netns, in the backend cgroup (outside every pod cgroup and outside the pod netns).
    pub fn backend_placement(&self) -> Placement {
        Placement {
            netns: self.backend_netns.path(),
            cgroup: Some(self.backend_cgroup.path().to_path_buf()),
            uid: None,
        }
    }
    /// A process in the pod netns but outside the pod cgroup (the backend cgroup), as root.
    pub fn pod_netns_outside_cgroup_placement(&self) -> Placement {
        Placement {
            netns: self.netns(),
            cgroup: Some(self.backend_cgroup.path().to_path_buf()),
            uid: None,
        }
    }

    /// Starts the test proxy on `port` (v4 and v6) in the proxy placement; returns once it listens.
    pub fn start_proxy(&self, port: u16) -> anyhow::Result<Proxy> {
        self.start_proxy_with(port, &[])
    }

    /// [`TestPod::start_proxy`] with extra arguments (e.g. `--fallback <addr>`).
    pub fn start_proxy_with(&self, port: u16, extra: &[String]) -> anyhow::Result<Proxy> {
        let mut cmd = Command::new(bins::path(bins::PROXY)?);
        cmd.arg(port.to_string())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut child = self.proxy_placement().spawn(&mut cmd)?;
        let stdout = child.stdout.take().context("proxy stdout")?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("listening") {
                    let _ = ready_tx.send(());
                } else if let Some(ev) = ProxyLine::parse(&line) {
                    if let Ok(mut e) = sink.lock() {
                        e.push(ev);
                    }
                }
            }
        });
        let proxy = Proxy {
            child,
            lines: events,
            port,
        };
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("proxy did not start listening")?;
        Ok(proxy)
    }

    /// Runs `test-client <args>` as an app of the pod.
    pub fn run_client(&self, args: &[String]) -> anyhow::Result<Output> {
        self.app_placement().run(&bins::path(bins::CLIENT)?, args)
    }

    /// Starts a backend inside the pod netns itself (outside the pod cgroup), e.g. on loopback.
    pub fn start_local_backend(&self, tcp_ports: &[u16]) -> anyhow::Result<KillOnDrop> {
        let ports: Vec<String> = tcp_ports.iter().map(|p| p.to_string()).collect();
        let mut cmd = Command::new(bins::path(bins::BACKEND)?);
        cmd.arg("--tcp")
            .arg(ports.join(","))
            .stdout(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = self.pod_netns_outside_cgroup_placement().spawn(&mut cmd)?;
        let stdout = child.stdout.take().context("local backend stdout")?;
        wait_ready(stdout, "local backend")?;
        Ok(KillOnDrop(child))
    }

    /// `<tool>-save -t nat` output inside the pod netns (`tool`: e.g. `iptables-nft`), without the
    /// comment lines and packet counters, so two dumps compare equal when the rules are equal.
    pub fn iptables_save(&self, save_tool: &str) -> anyhow::Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", self.netns_name(), save_tool, "-t", "nat"])
            .output()
            .context("run iptables-save")?;
        if !out.status.success() {
            bail!(
                "{save_tool} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(normalize_save(&String::from_utf8_lossy(&out.stdout)))
    }
}

impl TestPod {
    /// Everything a redirector could leave in or on this pod, as text: the nat tables of every
    /// installed iptables flavour and family in the pod netns, and the BPF programs attached to the
    /// pod and proxy cgroups. Equal snapshots before `enable` and after `disable` = exactly restored.
    pub fn datapath_snapshot(&self) -> anyhow::Result<String> {
        let mut out = String::new();
        for tool in [
            "iptables-nft-save",
            "ip6tables-nft-save",
            "iptables-legacy-save",
            "ip6tables-legacy-save",
        ] {
            if crate::privileged::which(tool).is_some() {
                out.push_str(&format!("== {tool}\n{}\n", self.iptables_save(tool)?));
            }
        }
        if crate::privileged::which("bpftool").is_some() {
            for cg in [self.cgroup(), self.proxy_cgroup()] {
                out.push_str(&format!(
                    "== bpftool cgroup show {}\n{}\n",
                    cg.display(),
                    bpftool_cgroup_show(cg)?
                ));
            }
        }
        Ok(out)
    }
}

/// Drops `#` comment lines and `[packets:bytes]` counters from `iptables-save` output.
pub fn normalize_save(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match (l.starts_with(':'), l.rfind(" [")) {
            (true, Some(i)) => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads a helper's stdout until its `listening` line, then keeps draining it in the background.
fn wait_ready(stdout: std::process::ChildStdout, what: &str) -> anyhow::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("listening") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .with_context(|| format!("{what} did not start listening"))
}

impl Drop for TestPod {
    fn drop(&mut self) {
        if let Some(mut b) = self.backend.take() {
            let _ = b.kill();
            let _ = b.wait();
        }
        // The cgroup and netns guards clean up the rest, in field order.
    }
}

/// `bpftool cgroup show <path>` output (empty when nothing is attached).
pub fn bpftool_cgroup_show(cgroup: &Path) -> anyhow::Result<String> {
    let out = Command::new("bpftool")
        .arg("cgroup")
        .arg("show")
        .arg(cgroup)
        .output()
        .context("run bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool cgroup show failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Writes `line` to a child's stdin (used by interactive helpers).
pub fn send_line(child: &mut Child, line: &str) -> anyhow::Result<()> {
    let stdin = child.stdin.as_mut().context("child has no stdin")?;
    writeln!(stdin, "{line}")?;
    Ok(())
}
