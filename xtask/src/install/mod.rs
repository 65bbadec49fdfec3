//! `cargo xtask e2e-install`: the Helm chart installed on the real single-node Kubernetes of
//! `/work/shared/e2e`, with the agent, the control plane, the ingress gateway and Prometheus as
//! pods, then the install suite (`cargo test -p traffic-tests --test install`), then an uninstall
//! that must leave nothing on the node.
//!
//! 1. builds the eBPF object, release `traffic-agent` (object required) and `traffic-control`,
//!    and the `install` test;
//! 2. builds local images into the cluster's Docker (no registry; on a containerd cluster they
//!    are then imported into containerd's `k8s.io` namespace, where kubelet's CRI looks, with
//!    `docker save | ctr images import`): agent and control with
//!    `helm/tests/local_images.sh` (the agent's plus the host's iptables), Prometheus from Debian's
//!    `prometheus` package binary (which lacks Kubernetes discovery: see [`prometheus_sd::emulate_kubernetes_sd`]),
//!    and a Zipkin stand-in (busybox httpd answering `/health`; traces are not stored);
//! 3. renders the chart with the Helm v4 SDK (the repository's `.venv`) for this cluster (local
//!    images, Envoy `$TRAFFIC_E2E_ENVOY_IMAGE`, the cgroup2 mount and the runtime of the node:
//!    `agent.runtime` docker with the Docker socket, or containerd with the kit's containerd
//!    socket and CRI root (`--runtime`, default: the running cluster's),
//!    bpffs mount propagation from the host's mount, `monitor.enabled=true`), splitting out the
//!    `helm.sh/hook` objects (steps 3 to 6 run once per redirect mode of the agent, `--modes`,
//!    default `ebpf,iptables`, each in its own namespace `<--namespace>-<mode>`);
//! 4. waits until no other `traffic-agent run` process is on the node (the host-process e2e
//!    suite's agent would fight the in-cluster one), applies the chart and waits for every
//!    workload to be ready;
//! 5. runs the suite with `TRAFFIC_E2E=1`;
//! 6. uninstalls like `helm uninstall`: with an enabled "witness" pod in place, applies the
//!    pre-delete hook (`traffic-agent uninstall`) and waits for its Job, deletes the rest, and
//!    asserts the node holds no sidecar container, no pinned BPF object, no iptables rule of ours
//!    in any pod netns and no annotated pod.
//!
//! Everything applied is deleted at the end, also on failure (a failed run first tries the hook,
//! so the agent still cleans the node).
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use traffic_tests::e2e::run_timeout;
use traffic_tests::install as fixtures;
use traffic_tests::install_leftovers as leftovers;
use traffic_tests::node_runtime::RuntimeKind;

use crate::{build_ebpf, cluster, cmd, setup};

mod chart;
mod images;
mod installed;
mod other_agents;
mod prometheus_sd;

use chart::{bpffs_propagation, object_name, render, values, workloads, write_list};
use images::{build_images, Images};
use installed::{sweep_suite_namespaces, Installed};
use other_agents::{agent_processes, wait_no_other_agent};
use prometheus_sd::{patch_prometheus_config, serve_pod_sd};

/// Helm release name: object names are `traffic-manager-<component>`.
const RELEASE: &str = "traffic-manager";
const PIN_ROOT: &str = "/sys/fs/bpf/traffic-manager";
/// Prometheus as Debian packages it (the image is built from the package's binary).
const PROMETHEUS_PACKAGE: &str = "prometheus";
/// Port (on the node IP) of the pod discovery the xtask serves to Debian's Prometheus.
const POD_SD_PORT: u16 = 19195;

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Namespace to install the chart into, suffixed with `-<mode>` (created and deleted).
    #[arg(long, default_value = fixtures::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Tag of the locally built agent/control/zipkin images.
    #[arg(long, default_value = "install")]
    pub tag: String,
    /// Redirect modes of the agent, one install -> suite -> uninstall pass each.
    #[arg(long, value_delimiter = ',', default_value = "ebpf,iptables")]
    pub modes: Vec<String>,
    /// Only tests whose name contains this (passed to the test harness).
    #[arg(long)]
    pub filter: Option<String>,
    /// The redirect mode whose pass also runs the gateway's token-renewal test, which waits
    /// ~10 minutes for the kubelet to renew a 600 s token (`none`: no pass runs it).
    #[arg(long, default_value = "ebpf")]
    pub renewal_mode: String,
    /// Cargo profile of the agent and control binaries in the images: release, or debug (what
    /// `cargo xtask e2e` already built: saves the release build when time is short).
    #[arg(long, value_enum, default_value = "release")]
    pub profile: Profile,
    /// Skip building binaries and images (use what is already built).
    #[arg(long)]
    pub no_build: bool,
    /// How long to wait for another `traffic-agent run` on the node to go away.
    #[arg(long, default_value_t = 900)]
    pub wait_agent_seconds: u64,
    /// The cluster's container runtime: docker or containerd (default: the running cluster's;
    /// naming another one is an error).
    #[arg(long, value_parser = RuntimeKind::parse)]
    pub runtime: Option<RuntimeKind>,
    /// Seconds to wait for the chart's pods to be ready.
    #[arg(long, default_value_t = 240)]
    pub ready_timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    Release,
    Debug,
}

impl Profile {
    fn dir(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Debug => "debug",
        }
    }
}

/// `cargo xtask e2e-install` with its defaults (for `cargo xtask test`).
#[derive(clap::Parser)]
struct Defaults {
    #[command(flatten)]
    options: Options,
}

pub fn default_options() -> anyhow::Result<Options> {
    use clap::Parser;
    Ok(Defaults::try_parse_from(["e2e-install"])?.options)
}

fn env(key: &str) -> anyhow::Result<String> {
    std::env::var(key).with_context(|| format!("{key} is unset (the cluster's env.sh sets it)"))
}

/// Runs `cmd` with a deadline; its output on success, an error with stderr otherwise.
fn output_within(cmd: &mut Command, timeout: Duration) -> anyhow::Result<String> {
    let line = format!("{cmd:?}");
    let out = run_timeout(cmd, timeout)?;
    if !out.ok {
        bail!("{line} failed: {}{}", out.stderr.trim(), out.stdout.trim());
    }
    Ok(out.stdout)
}

fn kubectl(args: &[&str], timeout: Duration) -> anyhow::Result<String> {
    eprintln!("+ kubectl {}", args.join(" "));
    output_within(Command::new("kubectl").args(args), timeout)
}

/// Deletes the objects of a rendered list file and waits until they are gone (up to 120 s).
fn delete_objects(file: &Path) -> anyhow::Result<()> {
    kubectl(
        &[
            "delete",
            "--ignore-not-found",
            "--wait=true",
            "--timeout=120s",
            "-f",
            &file.to_string_lossy(),
        ],
        Duration::from_secs(150),
    )?;
    Ok(())
}

/// An enabled pod that must come out of the uninstall unannotated and without its sidecar.
fn witness_namespace() -> anyhow::Result<String> {
    let ns =
        traffic_tests::e2e_parse::dns_name("e2e-install-uninstall", &traffic_tests::e2e::random_suffix());
    let t = Duration::from_secs(60);
    kubectl(&["create", "namespace", &ns], t)?;
    kubectl(
        &[
            "label",
            "namespace",
            &ns,
            &format!("{}=true", fixtures::NAMESPACE_LABEL),
            "traffic-e2e=true",
        ],
        t,
    )?;
    let app = cmd::workspace_root().join("tests/e2e/manifests/app.yaml");
    kubectl(&["apply", "-n", &ns, "-f", &app.to_string_lossy()], t)?;
    kubectl(
        &[
            "-n",
            &ns,
            "wait",
            "--for=condition=available",
            "deployment/client",
            "--timeout=120s",
        ],
        Duration::from_secs(150),
    )?;
    kubectl(
        &[
            "-n",
            &ns,
            "label",
            "deployment/client",
            "traffic.envoy.enabled=true",
        ],
        t,
    )?;
    let start = Instant::now();
    loop {
        let pods: Value = serde_json::from_str(&kubectl(
            &["-n", &ns, "get", "pods", "-l", "app=client", "-o", "json"],
            t,
        )?)?;
        if !leftovers::annotated_pods(&pods).is_empty() {
            return Ok(ns);
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("the agent did not enable the witness pod in {ns} within 120 s");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn timed<T>(
    phases: &mut Vec<(String, Duration)>,
    what: &str,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let t = Instant::now();
    let r = f();
    phases.push((what.to_string(), t.elapsed()));
    eprintln!("e2e-install: {what}: {:.1} s", t.elapsed().as_secs_f64());
    r
}

pub fn run(o: Options) -> anyhow::Result<()> {
    anyhow::ensure!(
        cmd::is_root(),
        "the install suite checks pinned BPF objects and pod network namespaces: run it as root"
    );
    cluster::import_env(&["KUBECONFIG", "DOCKER_HOST", "TRAFFIC_E2E_ENVOY_IMAGE"])?;
    let mut o = o;
    o.runtime = Some(cluster::require_runtime(o.runtime)?);
    let total = Instant::now();
    let mut phases = Vec::new();
    let root = cmd::workspace_root();
    let cargo = cmd::cargo();
    let target = cmd::target_dir();
    let work = target.join("e2e-install");
    std::fs::create_dir_all(&work)?;
    // The Helm SDK that renders the chart, once for every pass.
    setup::python_venv()?;

    if !o.no_build {
        let what = format!("build (eBPF, {} agent + control, test)", o.profile.dir());
        timed(&mut phases, &what, || {
            build_ebpf::run(build_ebpf::Options::default())?;
            let mut build = Command::new(&cargo);
            build
                .current_dir(&root)
                .env("TRAFFIC_EBPF_REQUIRED", "1")
                .arg("build")
                .args(["-p", "traffic-agent", "--bin", "traffic-agent"])
                .args(["-p", "traffic-control", "--bin", "traffic-control"]);
            if o.profile == Profile::Release {
                build.arg("--release");
            }
            cmd::run(&mut build)?;
            cmd::run(Command::new(&cargo).current_dir(&root).args([
                "test",
                "-p",
                "traffic-tests",
                "--test",
                "install",
                "--no-run",
            ]))
        })?;
    }
    let images = timed(&mut phases, "images", || {
        build_images(&o, &target.join(o.profile.dir()), &work)
    })?;
    let sd_addr = format!("{}:{POD_SD_PORT}", env("TRAFFIC_E2E_NODE_IP")?);
    serve_pod_sd(&sd_addr)?;
    let pass = Pass {
        o: &o,
        images: &images,
        work: &work,
        cargo: &cargo,
        root: &root,
        sd_url: format!("http://{sd_addr}/pods"),
    };
    let mut failed = Vec::new();
    for mode in &o.modes {
        if let Err(e) = pass.run(mode, &mut phases) {
            eprintln!("e2e-install: {mode} pass failed: {e:#}");
            failed.push(format!("{mode}: {e:#}"));
        }
    }
    eprintln!("=== e2e-install phases:");
    for (what, d) in &phases {
        eprintln!("  {what:<45} {:>7.1} s", d.as_secs_f64());
    }
    eprintln!("  {:<45} {:>7.1} s", "total", total.elapsed().as_secs_f64());
    if !failed.is_empty() {
        bail!("e2e-install failed: {}", failed.join("; "));
    }
    Ok(())
}

/// One install -> suite -> uninstall round with the agent in one redirect mode.
struct Pass<'a> {
    o: &'a Options,
    images: &'a Images,
    work: &'a Path,
    cargo: &'a str,
    root: &'a Path,
    sd_url: String,
}

impl Pass<'_> {
    fn run(&self, mode: &str, phases: &mut Vec<(String, Duration)>) -> anyhow::Result<()> {
        let o = self.o;
        // One namespace per pass: the previous pass' may still be terminating (up to a minute).
        let namespace = format!("{}-{mode}", o.namespace);
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let propagation = bpffs_propagation(&mountinfo, "/sys/fs/bpf");
        let values = values(
            self.images,
            propagation,
            mode,
            o.runtime.unwrap_or(RuntimeKind::Docker),
        )?;
        eprintln!("e2e-install: values {values}");
        let mut rendered = timed(phases, &format!("[{mode}] render (Helm SDK)"), || {
            render(&values, &namespace)
        })?;
        patch_prometheus_config(&mut rendered.main, &self.sd_url)?;
        let main_file = self.work.join("chart.json");
        let hooks_file = self.work.join("hooks.json");
        write_list(&main_file, &rendered.main)?;
        write_list(&hooks_file, &rendered.hooks)?;
        let prometheus = object_name(&rendered.main, "Service", "prometheus")
            .context("monitor.enabled rendered no Prometheus Service")?;

        // A previous run's leftovers of this install (same objects; its namespace may still be
        // terminating, up to a minute or so), then wait for other agents.
        let _ = delete_objects(&main_file);
        timed(phases, &format!("[{mode}] previous namespace gone"), || {
            kubectl(
                &[
                    "delete",
                    "namespace",
                    &namespace,
                    "--ignore-not-found",
                    "--wait=true",
                    "--timeout=240s",
                ],
                Duration::from_secs(260),
            )
        })?;
        timed(phases, &format!("[{mode}] wait for other agents to end"), || {
            wait_no_other_agent(Duration::from_secs(o.wait_agent_seconds))
        })?;

        let mut installed = Installed {
            namespace: namespace.clone(),
            main_file,
            hooks_file,
            hooks: rendered.hooks.clone(),
            uninstalled: false,
        };
        let ns_yaml = self.work.join("namespace.json");
        std::fs::write(
            &ns_yaml,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}).to_string(),
        )?;
        let t = Duration::from_secs(60);
        let result = (|| -> anyhow::Result<()> {
            timed(phases, &format!("[{mode}] apply + ready"), || {
                kubectl(&["apply", "-f", &ns_yaml.to_string_lossy()], t)?;
                kubectl(&["apply", "-f", &installed.main_file.to_string_lossy()], t)?;
                for w in workloads(&rendered.main) {
                    kubectl(
                        &[
                            "-n",
                            &namespace,
                            "rollout",
                            "status",
                            &w,
                            &format!("--timeout={}s", o.ready_timeout),
                        ],
                        Duration::from_secs(o.ready_timeout + 30),
                    )
                    .inspect_err(|_| installed.dump_diagnostics())?;
                }
                Ok(())
            })?;
            let tests = timed(phases, &format!("[{mode}] install suite"), || {
                let mut test = Command::new(self.cargo);
                test.current_dir(self.root)
                    .args(["test", "-p", "traffic-tests", "--test", "install", "--"])
                    .env("TRAFFIC_E2E", "1")
                    .env(traffic_tests::e2e::ENV_MODE, mode)
                    // The scenarios print what they measured (split, times, the Prometheus series).
                    .env("RUST_TEST_NOCAPTURE", "1")
                    .env(fixtures::ENV_NAMESPACE, &namespace)
                    .env(fixtures::ENV_PROMETHEUS, &prometheus);
                // One more thread than cores: the token-renewal test mostly waits beside the rest.
                test.arg("--test-threads=3");
                if let Some(f) = &o.filter {
                    test.arg(f);
                }
                if mode != o.renewal_mode {
                    test.args(["--skip", fixtures::TOKEN_RENEWAL_TEST]);
                }
                cmd::run(&mut test)
            });
            if tests.is_err() {
                installed.dump_diagnostics();
            }
            let foreign: Vec<_> = agent_processes()
                .into_iter()
                .filter(|(_, in_pod)| !in_pod)
                .collect();
            if !foreign.is_empty() {
                eprintln!("e2e-install: WARNING: host traffic-agent processes appeared during the suite: {foreign:?}");
            }
            sweep_suite_namespaces();
            let uninstall = timed(phases, &format!("[{mode}] uninstall + node check"), || {
                uninstall(&mut installed, mode)
            });
            tests.and(uninstall)
        })();
        drop(installed);
        result
    }
}

/// Like `helm uninstall`: the pre-delete hook with an enabled witness pod in place, then the
/// chart's objects; the node must hold nothing of ours afterwards.
fn uninstall(installed: &mut Installed, mode: &str) -> anyhow::Result<()> {
    let witness = witness_namespace()?;
    let t = Duration::from_secs(60);
    // Before: the witness' sidecar and its redirect of `mode` are on the node (so the checks
    // after the uninstall look at something that was there).
    let before = leftovers::node_leftovers(Path::new(PIN_ROOT))?;
    let redirect_seen = match mode {
        "iptables" => !before.iptables.is_empty(),
        _ => !before.bpf_pins.is_empty(),
    };
    anyhow::ensure!(
        !before.sidecars.is_empty() && redirect_seen && !before.annotated_pods.is_empty(),
        "before the uninstall the node should hold the witness' sidecar, {mode} redirect and annotation: {before:#?}"
    );
    eprintln!(
        "e2e-install: before the uninstall: sidecar objects in the runtime {:?}, {} pin root entr(y/ies), {} iptables rule(s), annotated pods {:?}",
        before.sidecars,
        before.bpf_pins.len(),
        before.iptables.len(),
        before.annotated_pods
    );
    let hook = installed.run_uninstall_hook(Duration::from_secs(180));
    installed.uninstalled = hook.is_ok();
    hook.context("the chart's pre-delete hook (traffic-agent uninstall)")?;
    // The witness pod is still running, without annotations and sidecar.
    let pods: Value = serde_json::from_str(&kubectl(
        &["-n", &witness, "get", "pods", "-l", "app=client", "-o", "json"],
        t,
    )?)?;
    let annotated = leftovers::annotated_pods(&pods);
    installed.delete_chart()?;
    // The chart's pods end asynchronously after their objects are deleted (kubectl waits for the
    // DaemonSet, not for its pods): the node must be clean within a minute, and the wait is printed
    // so that a slow cleanup stays visible. (A CI run once saw the pin root's three entries right
    // after the deletion that a rerun did not see.)
    let clean_by = Instant::now() + Duration::from_secs(60);
    let mut left = leftovers::node_leftovers(Path::new(PIN_ROOT))?;
    let waited = Instant::now();
    while !left.is_empty() && Instant::now() < clean_by {
        std::thread::sleep(Duration::from_secs(2));
        left = leftovers::node_leftovers(Path::new(PIN_ROOT))?;
    }
    if waited.elapsed() > Duration::from_secs(1) {
        eprintln!(
            "e2e-install: WARNING: the node was clean only {:.1} s after the chart's deletion",
            waited.elapsed().as_secs_f64()
        );
    }
    let _ = kubectl(&["delete", "namespace", &witness, "--wait=false"], t);
    anyhow::ensure!(
        annotated.is_empty(),
        "after the uninstall hook the witness pod is still annotated: {annotated:?}"
    );
    if !left.is_empty() {
        bail!("the uninstall left state on the node: {left:#?}");
    }
    eprintln!(
        "e2e-install: uninstall left nothing: no sidecar container, {PIN_ROOT} empty or absent, no iptables \
         rule of ours in any pod netns, no annotated pod"
    );
    Ok(())
}
