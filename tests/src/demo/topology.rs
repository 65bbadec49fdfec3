//! The demo's "node": one network namespace per pod, each linked by a veth to a router namespace
//! (the node's network, where the control plane runs), and one cgroup v2 directory per pod plus
//! the client's sidecar cgroup and the control plane's cgroup.
//!
//! ```text
//!  pod netns (eth0 <pod ip>/32) --veth-- node netns (v<i>: 169.254.1.1/32, route <pod ip>/32 dev v<i>)
//!  pod routes: 169.254.1.1 dev eth0; <pod ips> via 169.254.1.1      node: ip_forward=1
//! ```
//! Pods reach each other and the control plane (169.254.1.1); there is no kube-proxy and no route
//! to the Service range: a ClusterIP exists only in the sidecar's configuration, so a client
//! connection to it works only while the redirect steers it into Envoy.
//! Dropping a [`Topology`] kills every process in its cgroups, removes them and deletes the
//! namespaces.
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use super::plan::DemoPod;
use crate::pod::{unique_name, CgroupDir, Netns};
use crate::{cgroup2_mount, Placement};

/// The node side of every pod link (a link-local gateway, Calico-style).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// One pod: its cgroup (dropped first: its processes die) and its netns.
pub struct PodSandbox {
    pub pod: DemoPod,
    cgroup: CgroupDir,
    netns: Netns,
}

impl PodSandbox {
    pub fn netns(&self) -> PathBuf {
        self.netns.path()
    }
    pub fn netns_name(&self) -> &str {
        self.netns.name()
    }
    pub fn cgroup(&self) -> &Path {
        self.cgroup.path()
    }
    /// An application container of this pod (root, pod cgroup).
    pub fn app(&self) -> Placement {
        Placement {
            netns: self.netns(),
            cgroup: Some(self.cgroup.path().to_path_buf()),
            uid: None,
        }
    }
}

pub struct Topology {
    pub tag: String,
    // Drop order = field order: processes (cgroups) first, then namespaces.
    proxy_cgroup: CgroupDir,
    control_cgroup: CgroupDir,
    pub client: PodSandbox,
    pub backends: Vec<PodSandbox>,
    node: Netns,
    cgroup_root: SharedCgroupRoot,
}

/// `<cgroup2>/traffic-demo`, removed last when no other demo still uses it.
struct SharedCgroupRoot(PathBuf);

impl Drop for SharedCgroupRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

impl Topology {
    pub fn create(client: &DemoPod, backends: &[DemoPod]) -> anyhow::Result<Self> {
        let tag = unique_name("tmd");
        let root = cgroup2_mount().context("no cgroup2 mount")?.join("traffic-demo");
        match std::fs::create_dir(&root) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(e).with_context(|| format!("mkdir {}", root.display()))
            }
            _ => {}
        }
        // Declared first, dropped last on an early error too.
        let root_guard = SharedCgroupRoot(root.clone());
        let node = Netns::create(&format!("{tag}-node"))?;
        ip_netns_exec(
            node.name(),
            &["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
        )?;
        let all_ips: Vec<IpAddr> = std::iter::once(client.ip)
            .chain(backends.iter().map(|b| b.ip))
            .collect();
        let make = |i: usize, pod: &DemoPod| -> anyhow::Result<PodSandbox> {
            let IpAddr::V4(pod_ip) = pod.ip else {
                bail!("pod {}: the demo supports IPv4 pod IPs only", pod.name)
            };
            let netns = Netns::create(&format!("{tag}-p{i}"))?;
            let cgroup = CgroupDir::create(root.join(format!("{tag}-{}", pod.name)))?;
            let (p, n, peer) = (netns.name(), node.name(), format!("v{i}"));
            let gw = GATEWAY.to_string();
            ip(&[
                "-n", p, "link", "add", "eth0", "type", "veth", "peer", "name", &peer, "netns", n,
            ])?;
            ip(&["-n", p, "addr", "add", &format!("{pod_ip}/32"), "dev", "eth0"])?;
            ip(&["-n", p, "link", "set", "eth0", "up"])?;
            ip(&["-n", p, "route", "add", &gw, "dev", "eth0", "scope", "link"])?;
            for other in all_ips.iter().filter(|o| **o != pod.ip) {
                ip(&[
                    "-n",
                    p,
                    "route",
                    "add",
                    &other.to_string(),
                    "via",
                    &gw,
                    "dev",
                    "eth0",
                ])?;
            }
            ip(&["-n", n, "addr", "add", &format!("{gw}/32"), "dev", &peer])?;
            ip(&["-n", n, "link", "set", &peer, "up"])?;
            ip(&["-n", n, "route", "add", &format!("{pod_ip}/32"), "dev", &peer])?;
            Ok(PodSandbox {
                pod: pod.clone(),
                cgroup,
                netns,
            })
        };
        let client_box = make(0, client)?;
        let backend_boxes = backends
            .iter()
            .enumerate()
            .map(|(i, b)| make(i + 1, b))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let proxy_cgroup = CgroupDir::create(root.join(format!("{tag}-{}-proxy", client.name)))?;
        let control_cgroup = CgroupDir::create(root.join(format!("{tag}-control-plane")))?;
        Ok(Self {
            tag,
            proxy_cgroup,
            control_cgroup,
            client: client_box,
            backends: backend_boxes,
            node,
            cgroup_root: root_guard,
        })
    }

    /// The client's sidecar: pod netns, its own cgroup outside the pod cgroup, uid `uid`.
    pub fn sidecar(&self, uid: Option<u32>) -> Placement {
        Placement {
            netns: self.client.netns(),
            cgroup: Some(self.proxy_cgroup.path().to_path_buf()),
            uid,
        }
    }
    pub fn proxy_cgroup(&self) -> &Path {
        self.proxy_cgroup.path()
    }
    /// The control plane: node netns, own cgroup.
    pub fn control_plane(&self) -> Placement {
        Placement {
            netns: self.node.path(),
            cgroup: Some(self.control_cgroup.path().to_path_buf()),
            uid: None,
        }
    }
    pub fn node_netns(&self) -> PathBuf {
        self.node.path()
    }
    pub fn node_netns_name(&self) -> &str {
        self.node.name()
    }
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root.0
    }
}

/// The prefix of every name a demo creates (`tmd<pid>x<n>`: netns, cgroups, pin roots).
pub const NAME_PREFIX: &str = "tmd";

/// The pid of the demo that created `name`: `tmd<pid>x<n>` as one `-`-separated part, as in
/// `tmd12x1-p0` or `traffic-manager-demo-tmd12x1`.
pub fn creator_pid(name: &str) -> Option<i32> {
    name.split('-').find_map(|segment| {
        let (pid, n) = segment.strip_prefix(NAME_PREFIX)?.split_once('x')?;
        n.parse::<u32>().ok()?;
        pid.parse().ok()
    })
}

/// Whether `pid` runs (a zombie, killed but not yet reaped, does not).
fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// Removes what a demo killed with SIGKILL (no guard could run) left behind: its network
/// namespaces, cgroups (and their processes) and BPF pin roots. Returns what it removed.
pub fn sweep_stale(bpffs: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    let stale = |name: &str| creator_pid(name).is_some_and(|pid| !pid_alive(pid));
    if let Some(root) = cgroup2_mount().map(|m| m.join("traffic-demo")) {
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() && stale(&name) {
                // cgroup.kill (5.14+) kills every process in it; then the directory can go.
                let _ = std::fs::write(e.path().join("cgroup.kill"), "1");
                for _ in 0..50 {
                    if std::fs::remove_dir(e.path()).is_ok() {
                        removed.push(e.path().display().to_string());
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        }
    }
    for e in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(NAME_PREFIX) && stale(&name) && ip(&["netns", "delete", &name]).is_ok() {
            removed.push(format!("netns {name}"));
        }
    }
    for e in std::fs::read_dir(bpffs).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(super::PIN_ROOT_PREFIX)
            && stale(&name)
            && traffic_redirect::ebpf::EbpfRedirector::purge_pin_root(&e.path()).is_ok()
        {
            removed.push(e.path().display().to_string());
        }
    }
    removed
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args)
}

fn ip_netns_exec(netns: &str, cmd: &[&str]) -> anyhow::Result<()> {
    let mut args = vec!["netns", "exec", netns];
    args.extend_from_slice(cmd);
    run("ip", &args)
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_creating_pid_is_read_from_every_kind_of_demo_name() {
        assert_eq!(creator_pid("tmd123x1-p0"), Some(123));
        assert_eq!(creator_pid("tmd123x1-node"), Some(123));
        assert_eq!(creator_pid("tmd77x0-reviews-v1-5d8f7c6b9-a1b2c"), Some(77));
        assert_eq!(creator_pid("traffic-manager-demo-tmd9x1"), Some(9));
        assert_eq!(creator_pid("tt123x1"), None);
        assert_eq!(creator_pid("tmdfoo"), None);
    }
}
