//! Local images of the install: agent (with the host's iptables) and control, Debian's
//! Prometheus, the Zipkin stand-in; imported into containerd on a containerd cluster.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use traffic_tests::node_runtime::{RuntimeKind, CRI_NAMESPACE, DEFAULT_CONTAINERD_SOCK};

use super::{env, Options, PROMETHEUS_PACKAGE};
use crate::cmd;

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

pub(super) struct Images {
    pub(super) agent: (String, String),
    pub(super) control: (String, String),
    pub(super) envoy: (String, String),
    pub(super) prometheus: (String, String),
    pub(super) zipkin: (String, String),
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

pub(super) fn build_images(o: &Options, release_dir: &Path, work: &Path) -> anyhow::Result<Images> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
