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
//!    `prometheus` package binary (which lacks Kubernetes discovery: see [`emulate_kubernetes_sd`]),
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
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use traffic_tests::e2e::run_timeout;
use traffic_tests::install as fixtures;
use traffic_tests::node_runtime::{RuntimeKind, CRI_NAMESPACE, DEFAULT_CONTAINERD_SOCK};

use crate::{build_ebpf, cluster, cmd, setup};

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

// ---------------------------------------------------------------------------------------------
// Images

fn image_exists(image: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", image])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `docker build -t image` of a context with `files` and a Dockerfile.
fn docker_build(image: &str, dockerfile: &str, files: &[(&str, &Path)]) -> anyhow::Result<()> {
    let ctx = std::env::temp_dir().join(format!("traffic-install-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&ctx);
    std::fs::create_dir_all(&ctx)?;
    let res = (|| {
        for (name, src) in files {
            std::fs::copy(src, ctx.join(name)).with_context(|| format!("copy {}", src.display()))?;
        }
        std::fs::write(ctx.join("Dockerfile"), dockerfile)?;
        cmd::run(
            Command::new("docker")
                .args(["build", "-q", "-t", image])
                .arg(&ctx),
        )
    })();
    let _ = std::fs::remove_dir_all(&ctx);
    res
}

/// Prometheus from Debian's package: the binary (it needs only libc, which the busybox test
/// image carries) on the busybox image. Built once per package version.
fn prometheus_image(work: &Path, base: &str) -> anyhow::Result<String> {
    let policy = cmd::output(Command::new("apt-cache").args(["policy", PROMETHEUS_PACKAGE]))?;
    let version = policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .filter(|v| !v.is_empty() && *v != "(none)")
        .context("apt-cache policy prometheus: no candidate (apt-get update?)")?;
    // 2.42.0+ds-5+deb12u1 -> 2.42.0
    let upstream: String = version
        .split(['+', '-', '~'])
        .next()
        .unwrap_or(version)
        .to_string();
    let image = format!("traffic-manager/prometheus:{upstream}");
    if image_exists(&image) {
        return Ok(image);
    }
    let dl = work.join("prometheus-deb");
    let _ = std::fs::remove_dir_all(&dl);
    std::fs::create_dir_all(&dl)?;
    cmd::run(
        Command::new("apt-get")
            .current_dir(&dl)
            .args(["download", &format!("{PROMETHEUS_PACKAGE}={version}")]),
    )?;
    let deb = std::fs::read_dir(&dl)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    let root = dl.join("root");
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let bin = root.join("usr/bin/prometheus");
    let libs = cmd::output(Command::new("ldd").arg(&bin))?;
    for lib in libs.lines().filter_map(|l| l.split("=>").nth(1)) {
        let lib = lib.split_whitespace().next().unwrap_or("");
        anyhow::ensure!(
            lib.contains("libc.so") || lib.is_empty(),
            "prometheus links {lib}, which the base image may lack"
        );
    }
    docker_build(
        &image,
        &format!(
            "FROM {base}\nCOPY prometheus /bin/prometheus\nUSER 65534\nENTRYPOINT [\"/bin/prometheus\"]\n\
             CMD [\"--config.file=/etc/prometheus/prometheus.yml\"]\n"
        ),
        &[("prometheus", &bin)],
    )?;
    let _ = std::fs::remove_dir_all(&dl);
    Ok(image)
}

/// A Zipkin stand-in: answers `/health` on `$QUERY_PORT` (the chart's readiness probe) with
/// busybox httpd. It stores no traces; the install suite does not test tracing.
fn zipkin_image(tag: &str, base: &str) -> anyhow::Result<String> {
    let image = format!("traffic-manager/zipkin-stub:{tag}");
    docker_build(
        &image,
        &format!(
            "FROM {base}\nRUN mkdir -p /www/api/v2 && echo '{{\"status\":\"UP\"}}' > /www/health\n\
             ENTRYPOINT [\"sh\", \"-c\", \"exec httpd -f -p \\\"${{QUERY_PORT:-9411}}\\\" -h /www\"]\n"
        ),
        &[],
    )?;
    Ok(image)
}

/// iptables (nft and legacy) from the host, with the libraries and xtables extensions it loads.
/// The agent image of `local_images.sh` has none; the real one (agent/Dockerfile) has, and the
/// agent needs it to remove iptables state at start and at uninstall even in eBPF mode.
fn agent_image_with_iptables(base: &str, image: &str, work: &Path) -> anyhow::Result<()> {
    const NFT: &[&str] = &[
        "iptables",
        "iptables-save",
        "iptables-restore",
        "ip6tables",
        "ip6tables-save",
        "ip6tables-restore",
        "iptables-nft",
        "iptables-nft-save",
        "iptables-nft-restore",
        "ip6tables-nft",
        "ip6tables-nft-save",
        "ip6tables-nft-restore",
    ];
    const LEGACY: &[&str] = &[
        "iptables-legacy",
        "iptables-legacy-save",
        "iptables-legacy-restore",
        "ip6tables-legacy",
        "ip6tables-legacy-save",
        "ip6tables-legacy-restore",
    ];
    let bins = ["/usr/sbin/xtables-nft-multi", "/usr/sbin/xtables-legacy-multi"];
    let ext_dir = Path::new("/usr/lib/x86_64-linux-gnu/xtables");
    anyhow::ensure!(
        bins.iter().all(|b| Path::new(b).is_file()) && ext_dir.is_dir(),
        "the host has no iptables (xtables-nft-multi, {}): apt-get install iptables",
        ext_dir.display()
    );
    let mut files: Vec<PathBuf> = bins.iter().map(PathBuf::from).collect();
    let mut exts: Vec<PathBuf> = std::fs::read_dir(ext_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "so"))
        .collect();
    exts.sort();
    let mut libs = std::collections::BTreeSet::new();
    for f in files.iter().chain(&exts) {
        let out = cmd::output(Command::new("ldd").arg(f))?;
        for lib in out.lines().filter_map(|l| l.split("=>").nth(1)) {
            if let Some(path) = lib.split_whitespace().next().filter(|p| p.starts_with('/')) {
                libs.insert(PathBuf::from(path));
            }
        }
    }
    files.extend(exts);
    files.extend(libs);
    let tar_path = work.join("agent-iptables.tar");
    // -h: the libraries' soname links become files.
    let mut tar = Command::new("tar");
    tar.arg("-chf").arg(&tar_path).arg("-C").arg("/");
    for f in &files {
        tar.arg(f.strip_prefix("/").unwrap_or(f));
    }
    cmd::output(&mut tar).context("tar of the host's iptables")?;
    let links = |names: &[&str], to: &str| {
        names
            .iter()
            .map(|n| format!("ln -sf {to} /usr/sbin/{n}"))
            .collect::<Vec<_>>()
            .join(" && ")
    };
    let dockerfile = format!(
        "FROM {base}\nADD iptables.tar /\nRUN {} && {}\n",
        links(NFT, "xtables-nft-multi"),
        links(LEGACY, "xtables-legacy-multi")
    );
    let res = docker_build(image, &dockerfile, &[("iptables.tar", &tar_path)]);
    let _ = std::fs::remove_file(&tar_path);
    res
}

struct Images {
    agent: (String, String),
    control: (String, String),
    envoy: (String, String),
    prometheus: (String, String),
    zipkin: (String, String),
}

/// `repo:tag` -> (`repo`, `tag`) (the tag is after the last `:` that follows the last `/`).
fn split_image(image: &str) -> (String, String) {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), tag.to_string()),
        _ => (image.to_string(), "latest".to_string()),
    }
}

/// `docker save <image> | ctr -n k8s.io images import -` into the kit's containerd (kubelet on
/// containerd sees only the images of that namespace; blobs already there are not copied again).
fn import_into_containerd(image: &str) -> anyhow::Result<()> {
    let sock =
        std::env::var("TRAFFIC_E2E_CONTAINERD_SOCK").unwrap_or_else(|_| DEFAULT_CONTAINERD_SOCK.into());
    cmd::run(Command::new("bash").args([
        "-c",
        "set -o pipefail; docker save \"$1\" | ctr --address \"$2\" -n \"$3\" images import -",
        "import",
        image,
        &sock,
        CRI_NAMESPACE,
    ]))
    .with_context(|| format!("import {image} into containerd's {CRI_NAMESPACE}"))
}

fn build_images(o: &Options, release_dir: &Path, work: &Path) -> anyhow::Result<Images> {
    let base = std::env::var("TRAFFIC_E2E_APP_IMAGE").unwrap_or_else(|_| "traffic-e2e/busybox:1.37.0".into());
    let agent = format!("traffic-manager/agent:{}", o.tag);
    let control = format!("traffic-manager/control:{}", o.tag);
    if !o.no_build || !image_exists(&agent) || !image_exists(&control) {
        cmd::run(
            Command::new(cmd::workspace_root().join("helm/tests/local_images.sh"))
                .arg(&o.tag)
                .arg("--agent")
                .arg(release_dir.join("traffic-agent"))
                .arg("--control")
                .arg(release_dir.join("traffic-control")),
        )?;
    }
    let agent_iptables = format!("traffic-manager/agent:{}-iptables", o.tag);
    if !o.no_build || !image_exists(&agent_iptables) {
        agent_image_with_iptables(&agent, &agent_iptables, work)?;
    }
    let agent = agent_iptables;
    let prometheus = prometheus_image(work, &base)?;
    let zipkin = zipkin_image(&o.tag, &base)?;
    if o.runtime == Some(RuntimeKind::Containerd) {
        // The Envoy image is the kit's, imported by cluster-up.
        for image in [&agent, &control, &prometheus, &zipkin] {
            import_into_containerd(image)?;
        }
    }
    Ok(Images {
        agent: split_image(&agent),
        control: split_image(&control),
        envoy: split_image(&env("TRAFFIC_E2E_ENVOY_IMAGE")?),
        prometheus: split_image(&prometheus),
        zipkin: split_image(&zipkin),
    })
}

// ---------------------------------------------------------------------------------------------
// Rendering

/// Mount propagation for bpffs the chart README asks for: Bidirectional on a shared host mount,
/// None on a private one. `mountinfo` is `/proc/self/mountinfo`.
fn bpffs_propagation(mountinfo: &str, bpffs: &str) -> &'static str {
    let shared = mountinfo.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // id parent major:minor root mountpoint options [optional fields...] - fstype ...
        f.len() > 6
            && f[4] == bpffs
            && f[6..]
                .iter()
                .take_while(|x| **x != "-")
                .any(|x| x.starts_with("shared:"))
    });
    if shared {
        "Bidirectional"
    } else {
        "None"
    }
}

fn image_value((repository, tag): &(String, String)) -> Value {
    json!({"repository": repository, "tag": tag})
}

/// `agent.runtime` and `agent.hostPaths` of the node's runtime.
fn runtime_values(runtime: RuntimeKind) -> anyhow::Result<(Value, Value)> {
    Ok(match runtime {
        RuntimeKind::Docker => (
            json!("docker"),
            json!({
                "cgroup2": env("TRAFFIC_E2E_CGROUP2_MOUNT")?,
                "dockerSocket": env("TRAFFIC_E2E_DOCKER_SOCK")?,
            }),
        ),
        RuntimeKind::Containerd => (
            json!("containerd"),
            json!({
                "cgroup2": env("TRAFFIC_E2E_CGROUP2_MOUNT")?,
                "containerdSocket": env("TRAFFIC_E2E_CONTAINERD_SOCK")?,
                "criRoot": format!("{}/containerd/io.containerd.grpc.v1.cri", env("TRAFFIC_E2E_CACHE")?),
            }),
        ),
    })
}

fn values(images: &Images, propagation: &str, mode: &str, runtime: RuntimeKind) -> anyhow::Result<Value> {
    let (runtime, host_paths) = runtime_values(runtime)?;
    Ok(json!({
        "imagePullPolicy": "Never",
        "agent": {
            "image": image_value(&images.agent),
            "redirectMode": mode,
            "bpffsMountPropagation": propagation,
            "runtime": runtime,
            "hostPaths": host_paths,
            "uninstall": {"timeoutSeconds": 120},
        },
        "control": {"image": image_value(&images.control)},
        "envoy": {"image": image_value(&images.envoy)},
        "monitor": {
            "enabled": true,
            "prometheus": {"image": image_value(&images.prometheus), "scrapeInterval": "5s"},
            "zipkin": {"image": image_value(&images.zipkin)},
        },
    }))
}

/// Renders the chart with the Helm SDK; prints `{"main": [...], "hooks": [...]}` in Helm's
/// install order (hooks by weight).
const RENDER_PY: &str = r#"
import json, sys
import helm_python as helm
import yaml
chart_dir, values, release, namespace = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
ORDER = ["Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
         "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass",
         "PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole",
         "ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList", "Role", "RoleList",
         "RoleBinding", "RoleBindingList", "Service", "DaemonSet", "Pod", "ReplicationController",
         "ReplicaSet", "Deployment", "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob",
         "IngressClass", "Ingress", "APIService"]
rank = lambda o: ORDER.index(o["kind"]) if o["kind"] in ORDER else len(ORDER)
with helm.Chart.load(chart_dir) as chart:
    chart.validate_schema(values)
    manifests = chart.render(values=values, name=release, namespace=namespace, is_install=True)
main, hooks = [], []
for template, text in sorted(manifests.items()):
    if template.endswith("NOTES.txt") or not text.strip():
        continue
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        ann = (doc.get("metadata") or {}).get("annotations") or {}
        if "helm.sh/hook" in ann:
            hooks.append((int(ann.get("helm.sh/hook-weight", "0")), rank(doc), doc))
        else:
            main.append((rank(doc), doc))
main.sort(key=lambda x: x[0])
hooks.sort(key=lambda x: (x[0], x[1]))
json.dump({"main": [d for _, d in main], "hooks": [d for _, _, d in hooks]}, sys.stdout)
"#;

struct Rendered {
    main: Vec<Value>,
    hooks: Vec<Value>,
}

/// Renders the chart with the venv's Helm SDK (`setup::python_venv` must have run).
fn render(values: &Value, namespace: &str) -> anyhow::Result<Rendered> {
    let out = cmd::output(
        Command::new(setup::venv_dir().join("bin/python"))
            .args(["-c", RENDER_PY])
            .arg(cmd::workspace_root().join("helm/traffic-manager"))
            .arg(values.to_string())
            .args([RELEASE, namespace]),
    )
    .context("rendering the chart with the Helm SDK")?;
    let v: Value = serde_json::from_str(&out).context("renderer output")?;
    let list = |k: &str| v.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
    let r = Rendered {
        main: list("main"),
        hooks: list("hooks"),
    };
    anyhow::ensure!(!r.main.is_empty(), "the chart rendered no objects");
    Ok(r)
}

/// `kind/name` of the rendered workloads, for `kubectl rollout status`.
fn workloads(objs: &[Value]) -> Vec<String> {
    objs.iter()
        .filter_map(|o| {
            let kind = o.get("kind")?.as_str()?;
            let name = o.pointer("/metadata/name")?.as_str()?;
            matches!(kind, "Deployment" | "DaemonSet")
                .then(|| format!("{}/{name}", kind.to_ascii_lowercase()))
        })
        .collect()
}

fn object_name(objs: &[Value], kind: &str, component: &str) -> Option<String> {
    objs.iter()
        .find(|o| {
            o.get("kind").and_then(Value::as_str) == Some(kind)
                && o.pointer("/metadata/labels/app.kubernetes.io~1component")
                    .and_then(Value::as_str)
                    == Some(component)
        })
        .and_then(|o| o.pointer("/metadata/name")?.as_str().map(str::to_string))
}

fn write_list(path: &Path, items: &[Value]) -> anyhow::Result<()> {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    std::fs::write(path, serde_json::to_vec_pretty(&list)?)
        .with_context(|| format!("write {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Kubernetes pod discovery for Debian's Prometheus

/// Debian builds Prometheus without Kubernetes service discovery ("removed, due to the insane
/// amount of dependencies", NEWS.Debian 1.5.0), and no other Prometheus build is reachable here.
/// The chart's scrape jobs are kept as rendered (their relabel rules, the keep rule on the
/// sidecar annotation, the stats port rewrite) and only their `kubernetes_sd_configs` (role pod)
/// become `http_sd_configs` served by the xtask ([`serve_pod_sd`]), which lists pods with kubectl and
/// labels each target with the `__meta_kubernetes_pod_*` labels Kubernetes SD would set.
fn emulate_kubernetes_sd(config: &str, sd_url: &str) -> anyhow::Result<String> {
    let lines: Vec<&str> = config.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut replaced = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim() != "kubernetes_sd_configs:" {
            out.push(line.to_string());
            i += 1;
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let mut block = Vec::new();
        i += 1;
        while i < lines.len() && (lines[i].len() - lines[i].trim_start().len()) > indent {
            block.push(lines[i].trim());
            i += 1;
        }
        anyhow::ensure!(
            block.first() == Some(&"- role: pod"),
            "only kubernetes_sd_configs with one role: pod entry are emulated, got {block:?}"
        );
        let mut url = sd_url.to_string();
        match block.get(1..).unwrap_or_default() {
            [] => {}
            ["namespaces:", names] => {
                let list = names
                    .strip_prefix("names:")
                    .map(str::trim)
                    .and_then(|l| l.strip_prefix('['))
                    .and_then(|l| l.strip_suffix(']'))
                    .with_context(|| format!("namespaces {names:?}"))?;
                let ns: Vec<&str> = list.split(',').map(|n| n.trim().trim_matches('"')).collect();
                url = format!("{url}?namespaces={}", ns.join(","));
            }
            other => bail!("unexpected kubernetes_sd_configs fields {other:?}"),
        }
        let pad = " ".repeat(indent);
        out.push(format!("{pad}http_sd_configs:"));
        out.push(format!("{pad}  - url: {url}"));
        out.push(format!("{pad}    refresh_interval: 5s"));
        replaced += 1;
    }
    anyhow::ensure!(
        replaced > 0,
        "no kubernetes_sd_configs in the Prometheus configuration"
    );
    Ok(out.join("\n") + "\n")
}

/// Prometheus' label name for a Kubernetes label or annotation key.
fn sanitize_label(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Kubernetes SD `role: pod` targets of a pod list, as an HTTP SD answer: one target per declared
/// container port (`<ip>:<port>`), one per container without ports (`<ip>`), with the
/// `__meta_kubernetes_*` labels of that role. Pods without an IP are left out.
fn pod_targets(pods: &Value, namespaces: Option<&[&str]>) -> Value {
    let mut groups = Vec::new();
    for pod in pods.get("items").and_then(Value::as_array).into_iter().flatten() {
        let s = |p: &str| pod.pointer(p).and_then(Value::as_str).unwrap_or("").to_string();
        let ns = s("/metadata/namespace");
        if namespaces.is_some_and(|list| !list.contains(&ns.as_str())) {
            continue;
        }
        let ip = s("/status/podIP");
        if ip.is_empty() {
            continue;
        }
        let mut base = serde_json::Map::new();
        base.insert("__meta_kubernetes_namespace".into(), json!(ns));
        base.insert("__meta_kubernetes_pod_name".into(), json!(s("/metadata/name")));
        base.insert("__meta_kubernetes_pod_ip".into(), json!(ip));
        base.insert("__meta_kubernetes_pod_uid".into(), json!(s("/metadata/uid")));
        base.insert(
            "__meta_kubernetes_pod_node_name".into(),
            json!(s("/spec/nodeName")),
        );
        base.insert("__meta_kubernetes_pod_phase".into(), json!(s("/status/phase")));
        for (what, key) in [
            ("label", "/metadata/labels"),
            ("annotation", "/metadata/annotations"),
        ] {
            for (k, v) in pod.pointer(key).and_then(Value::as_object).into_iter().flatten() {
                let name = sanitize_label(k);
                base.insert(
                    format!("__meta_kubernetes_pod_{what}_{name}"),
                    json!(v.as_str().unwrap_or("")),
                );
                base.insert(
                    format!("__meta_kubernetes_pod_{what}present_{name}"),
                    json!("true"),
                );
            }
        }
        for c in pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let cname = c.get("name").and_then(Value::as_str).unwrap_or("");
            let ports = c
                .get("ports")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut push = |target: String, port: Option<&Value>| {
                let mut labels = base.clone();
                labels.insert("__meta_kubernetes_pod_container_name".into(), json!(cname));
                if let Some(p) = port {
                    let f = |k: &str| {
                        p.get(k)
                            .map(|v| v.as_str().map(str::to_string).unwrap_or(v.to_string()))
                    };
                    labels.insert(
                        "__meta_kubernetes_pod_container_port_name".into(),
                        json!(f("name").unwrap_or_default()),
                    );
                    labels.insert(
                        "__meta_kubernetes_pod_container_port_number".into(),
                        json!(f("containerPort").unwrap_or_default()),
                    );
                    labels.insert(
                        "__meta_kubernetes_pod_container_port_protocol".into(),
                        json!(f("protocol").unwrap_or_else(|| "TCP".into())),
                    );
                }
                groups.push(json!({"targets": [target], "labels": labels}));
            };
            if ports.is_empty() {
                push(ip.clone(), None);
            }
            for p in &ports {
                let port = p.get("containerPort").and_then(Value::as_u64).unwrap_or(0);
                push(format!("{ip}:{port}"), Some(p));
            }
        }
    }
    Value::Array(groups)
}

/// Serves [`pod_targets`] over HTTP on `addr` for the life of the process (`GET
/// /pods[?namespaces=a,b]`), listing pods with kubectl at each request.
fn serve_pod_sd(addr: &str) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader, Write};
    // `cargo xtask test` runs the install once per runtime in one process: the server of the first
    // run is still there (it reads the cluster through kubectl, whichever cluster is up).
    static SERVING: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut serving = SERVING.lock().unwrap_or_else(|p| p.into_inner());
    if serving.iter().any(|a| a == addr) {
        return Ok(());
    }
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    serving.push(addr.to_string());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut request_line = String::new();
            let mut reader = BufReader::new(&conn);
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            // Drain the headers.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or("/");
            let namespaces: Option<Vec<String>> = path
                .split_once("?namespaces=")
                .map(|(_, l)| l.split(',').map(str::to_string).collect());
            let listed = output_within(
                Command::new("kubectl").args(["get", "pods", "-A", "-o", "json"]),
                Duration::from_secs(20),
            )
            .and_then(|text| Ok(serde_json::from_str::<Value>(&text)?));
            let (status, body) = match listed {
                Ok(pods) => {
                    let ns: Option<Vec<&str>> = namespaces
                        .as_ref()
                        .map(|v| v.iter().map(String::as_str).collect());
                    ("200 OK", pod_targets(&pods, ns.as_deref()).to_string())
                }
                Err(e) => ("500 Internal Server Error", format!("{e:#}")),
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(())
}

/// Rewrites the rendered Prometheus ConfigMap for [`emulate_kubernetes_sd`].
fn patch_prometheus_config(objs: &mut [Value], sd_url: &str) -> anyhow::Result<()> {
    let cm = objs
        .iter_mut()
        .find(|o| {
            o.get("kind").and_then(Value::as_str) == Some("ConfigMap")
                && o.pointer("/data/prometheus.yml").is_some()
        })
        .context("no Prometheus ConfigMap rendered")?;
    let text = cm
        .pointer("/data/prometheus.yml")
        .and_then(Value::as_str)
        .context("prometheus.yml is not a string")?;
    let patched = emulate_kubernetes_sd(text, sd_url)?;
    cm["data"]["prometheus.yml"] = json!(patched);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Other agents on the node

/// Pids of `traffic-agent run` processes on the node, with whether each runs in a pod.
fn agent_processes() -> Vec<(u32, bool)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| fixtures::is_agent_run(&c)))
        .map(|pid| {
            let in_pod =
                std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains("kubepods"));
            (pid, in_pod)
        })
        .collect()
}

fn wait_no_other_agent(timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let others = agent_processes();
        if others.is_empty() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("other traffic-agent run processes stayed on the node for {timeout:?}: {others:?}");
        }
        eprintln!(
            "e2e-install: waiting for other traffic-agent run processes (pid, in a pod) to end: {others:?} \
             (an in-cluster agent would fight them)"
        );
        std::thread::sleep(Duration::from_secs(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Install / uninstall

/// The applied chart; deleted on drop (after a best-effort hook run when the uninstall did not
/// happen), with the suite's namespaces.
struct Installed {
    namespace: String,
    main_file: PathBuf,
    hooks_file: PathBuf,
    hooks: Vec<Value>,
    uninstalled: bool,
}

impl Installed {
    fn job_name(&self) -> Option<String> {
        self.hooks.iter().find_map(|o| {
            (o.get("kind").and_then(Value::as_str) == Some("Job"))
                .then(|| o.pointer("/metadata/name")?.as_str().map(str::to_string))
                .flatten()
        })
    }

    /// The chart's pre-delete hook: apply its objects, wait for the Job (`traffic-agent
    /// uninstall`: every agent drains its node) to complete.
    fn run_uninstall_hook(&self, timeout: Duration) -> anyhow::Result<()> {
        let Some(job) = self.job_name() else {
            bail!("the chart renders no pre-delete hook Job (agent.uninstall.enabled?)");
        };
        kubectl(
            &["apply", "-f", &self.hooks_file.to_string_lossy()],
            Duration::from_secs(60),
        )?;
        let res = kubectl(
            &[
                "-n",
                &self.namespace,
                "wait",
                "--for=condition=complete",
                &format!("job/{job}"),
                &format!("--timeout={}s", timeout.as_secs()),
            ],
            timeout + Duration::from_secs(30),
        );
        if res.is_err() {
            let _ = kubectl(
                &["-n", &self.namespace, "logs", &format!("job/{job}"), "--tail=60"],
                Duration::from_secs(30),
            )
            .map(|l| eprintln!("=== uninstall Job log:\n{l}"));
        }
        res.map(drop)
    }

    fn delete_chart(&self) -> anyhow::Result<()> {
        delete_objects(&self.main_file)
    }

    fn dump_diagnostics(&self) {
        for args in [
            vec![
                "-n",
                &self.namespace,
                "get",
                "pods,svc,ds,deploy,jobs",
                "-o",
                "wide",
            ],
            vec![
                "-n",
                &self.namespace,
                "logs",
                "-l",
                "app.kubernetes.io/instance=traffic-manager",
                "--all-containers",
                "--prefix",
                "--tail=40",
                "--max-log-requests=10",
            ],
        ] {
            match kubectl(&args, Duration::from_secs(60)) {
                Ok(out) => eprintln!("{out}"),
                Err(e) => eprintln!("{e:#}"),
            }
        }
        let _ = kubectl(
            &["-n", &self.namespace, "get", "events", "--sort-by=.lastTimestamp"],
            Duration::from_secs(30),
        )
        .map(|e| eprintln!("{}", e.lines().rev().take(30).collect::<Vec<_>>().join("\n")));
    }
}

fn sweep_suite_namespaces() {
    let _ = kubectl(
        &[
            "delete",
            "namespace",
            "-l",
            &format!("{}=true", fixtures::NAMESPACE_LABEL),
            "--wait=false",
        ],
        Duration::from_secs(60),
    );
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.uninstalled {
            eprintln!("e2e-install: cleaning up: running the uninstall hook first (best effort)");
            if let Err(e) = self.run_uninstall_hook(Duration::from_secs(90)) {
                eprintln!("e2e-install: uninstall hook failed: {e:#}");
            }
        }
        let _ = kubectl(
            &[
                "delete",
                "--ignore-not-found",
                "--wait=false",
                "-f",
                &self.hooks_file.to_string_lossy(),
            ],
            Duration::from_secs(60),
        );
        if let Err(e) = self.delete_chart() {
            eprintln!("e2e-install: deleting the chart: {e:#}");
        }
        sweep_suite_namespaces();
        let _ = kubectl(
            &[
                "delete",
                "namespace",
                &self.namespace,
                "--ignore-not-found",
                "--wait=false",
            ],
            Duration::from_secs(60),
        );
    }
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
        if !fixtures::annotated_pods(&pods).is_empty() {
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
                if let Some(f) = &o.filter {
                    test.arg(f);
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
    let before = fixtures::node_leftovers(Path::new(PIN_ROOT))?;
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
    let annotated = fixtures::annotated_pods(&pods);
    installed.delete_chart()?;
    // The chart's pods end asynchronously after their objects are deleted (kubectl waits for the
    // DaemonSet, not for its pods): the node must be clean within a minute, and the wait is printed
    // so that a slow cleanup stays visible. (A CI run once saw the pin root's three entries right
    // after the deletion that a rerun did not see.)
    let clean_by = Instant::now() + Duration::from_secs(60);
    let mut left = fixtures::node_leftovers(Path::new(PIN_ROOT))?;
    let waited = Instant::now();
    while !left.is_empty() && Instant::now() < clean_by {
        std::thread::sleep(Duration::from_secs(2));
        left = fixtures::node_leftovers(Path::new(PIN_ROOT))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    const RENDERED: &str = "scrape_configs:
  - job_name: envoy
    metrics_path: /stats/prometheus
    kubernetes_sd_configs:
      - role: pod
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_phase]
        regex: Running
        action: keep
  - job_name: traffic-manager
    kubernetes_sd_configs:
      - role: pod
        namespaces:
          names: [\"traffic-install\"]
    relabel_configs: []
";

    #[test]
    fn kubernetes_pod_discovery_becomes_http_discovery_with_the_namespace_filter() {
        let out = emulate_kubernetes_sd(RENDERED, "http://10.0.0.1:1/pods").expect("emulated");
        assert!(!out.contains("kubernetes_sd_configs"), "{out}");
        assert!(out.contains("    http_sd_configs:\n      - url: http://10.0.0.1:1/pods\n        refresh_interval: 5s\n    relabel_configs:\n      - source_labels"), "{out}");
        assert!(
            out.contains("url: http://10.0.0.1:1/pods?namespaces=traffic-install\n"),
            "{out}"
        );
        assert!(out.contains("    relabel_configs: []\n"), "{out}");
    }

    #[test]
    fn other_kubernetes_discovery_roles_are_refused() {
        let cfg = "scrape_configs:\n  - job_name: x\n    kubernetes_sd_configs:\n      - role: endpoints\n";
        assert!(emulate_kubernetes_sd(cfg, "http://x/pods").is_err());
        assert!(emulate_kubernetes_sd("scrape_configs: []\n", "http://x/pods").is_err());
    }

    #[test]
    fn pod_targets_carry_the_kubernetes_pod_meta_labels_per_container_port() {
        let pods = json!({"items": [
            {"metadata": {"namespace": "a", "name": "p", "uid": "u",
                          "labels": {"app.kubernetes.io/component": "control"},
                          "annotations": {"traffic.envoy.proxy": "abc"}},
             "spec": {"nodeName": "n", "containers": [
                 {"name": "c", "ports": [{"name": "http", "containerPort": 9090, "protocol": "TCP"}]},
                 {"name": "d"}]},
             "status": {"podIP": "172.17.0.9", "phase": "Running"}},
            {"metadata": {"namespace": "b", "name": "pending"}, "spec": {"containers": [{"name": "c"}]}, "status": {}},
        ]});
        let t = pod_targets(&pods, None);
        let groups = t.as_array().expect("array");
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0]["targets"][0], "172.17.0.9:9090");
        let l = &groups[0]["labels"];
        assert_eq!(l["__meta_kubernetes_pod_annotation_traffic_envoy_proxy"], "abc");
        assert_eq!(
            l["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
            "control"
        );
        assert_eq!(l["__meta_kubernetes_pod_container_port_name"], "http");
        assert_eq!(l["__meta_kubernetes_pod_container_port_number"], "9090");
        assert_eq!(l["__meta_kubernetes_pod_phase"], "Running");
        assert_eq!(l["__meta_kubernetes_namespace"], "a");
        assert_eq!(groups[1]["targets"][0], "172.17.0.9");
        assert!(pod_targets(&pods, Some(&["b"]))
            .as_array()
            .expect("array")
            .is_empty());
    }

    #[test]
    fn bpffs_propagation_follows_the_host_mount() {
        let shared = "35 24 0:30 / /sys/fs/bpf rw,nosuid shared:12 - bpf bpf rw,mode=700\n";
        let private = "35 24 0:30 / /sys/fs/bpf rw,nosuid - bpf bpf rw,mode=700\n";
        assert_eq!(bpffs_propagation(shared, "/sys/fs/bpf"), "Bidirectional");
        assert_eq!(bpffs_propagation(private, "/sys/fs/bpf"), "None");
        assert_eq!(bpffs_propagation("", "/sys/fs/bpf"), "None");
    }

    #[test]
    fn images_split_at_the_tag_not_at_a_registry_port() {
        assert_eq!(
            split_image("traffic-e2e/envoy:1.39.3"),
            ("traffic-e2e/envoy".into(), "1.39.3".into())
        );
        assert_eq!(
            split_image("reg:5000/envoy"),
            ("reg:5000/envoy".into(), "latest".into())
        );
    }

    #[test]
    fn workloads_are_the_deployments_and_daemonsets() {
        let objs = vec![
            json!({"kind": "Service", "metadata": {"name": "s"}}),
            json!({"kind": "DaemonSet", "metadata": {"name": "a"}}),
            json!({"kind": "Deployment", "metadata": {"name": "c"}}),
        ];
        assert_eq!(workloads(&objs), vec!["daemonset/a", "deployment/c"]);
    }

    #[test]
    fn objects_are_found_by_kind_and_component() {
        let objs = vec![
            json!({"kind": "Service", "metadata": {"name": "p", "labels": {"app.kubernetes.io/component": "prometheus"}}}),
        ];
        assert_eq!(object_name(&objs, "Service", "prometheus").as_deref(), Some("p"));
        assert_eq!(object_name(&objs, "Service", "zipkin"), None);
    }
}
