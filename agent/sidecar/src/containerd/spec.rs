//! The OCI runtime spec of a sidecar (pure, `oci-spec` types).
//!
//! Docker filled in most of a container's spec for us; the raw containerd API adds nothing, so
//! everything the sidecar gets is spelled out here: the pod's network namespace (by path) and
//! new pid/ipc/uts/mount namespaces, the pod cgroup, uid/gid `<uid>` with empty capability sets
//! and `noNewPrivileges`, the bootstrap bind-mounted read-only, the pod's DNS files when the CRI
//! has them, no `oomScoreAdj` (a negative one needs CAP_SYS_RESOURCE) and no rlimits (inherited
//! from the shim, as Docker's containers inherit dockerd's).

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxBuilder, LinuxCapabilities, LinuxNamespaceBuilder, LinuxNamespaceType, Mount, MountBuilder,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use super::image::ImageConfig;

/// Where the bootstrap appears inside the sidecar.
pub const BOOTSTRAP_IN_CONTAINER: &str = "/etc/traffic-envoy/bootstrap.yaml";
/// Used when the image config has no `PATH`.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything the spec is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecInput<'a> {
    pub image: &'a ImageConfig,
    pub uid: u32,
    /// Host path of the bootstrap file.
    pub bootstrap: &'a Path,
    /// Envoy arguments after `-c <bootstrap>`.
    pub envoy_args: &'a [String],
    pub netns: &'a Path,
    pub cgroups_path: &'a str,
    pub hostname: Option<&'a str>,
    /// Host files mounted read-only at the same name under `/etc` (`resolv.conf`, `hosts`).
    pub etc_files: &'a [PathBuf],
    /// Host directory of the pod's xDS token, mounted read-only at
    /// [`crate::TOKEN_DIR_IN_CONTAINER`] (a directory, so renewals, made by rename, show).
    pub token_dir: Option<&'a Path>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("runtime spec: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
    #[error("runtime spec: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0} has no file name")]
    NoFileName(PathBuf),
}

/// The process: the image's entrypoint (or `envoy` without one) with our arguments instead of
/// the image's `Cmd`.
pub fn args(image: &ImageConfig, envoy_args: &[String]) -> Vec<String> {
    let mut args = if image.entrypoint.is_empty() {
        vec!["envoy".to_string()]
    } else {
        image.entrypoint.clone()
    };
    args.extend(["-c".to_string(), BOOTSTRAP_IN_CONTAINER.to_string()]);
    args.extend(envoy_args.iter().cloned());
    args
}

fn env(image: &ImageConfig) -> Vec<String> {
    let mut env = image.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    env
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()?)
}

fn mounts(input: &SpecInput<'_>) -> Result<Vec<Mount>, SpecError> {
    let mut m = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"])?,
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"])?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        )?,
    ];
    let bootstrap = input.bootstrap.to_string_lossy();
    m.push(mount(
        BOOTSTRAP_IN_CONTAINER,
        "bind",
        &bootstrap,
        &["rbind", "ro", "nosuid", "nodev"],
    )?);
    if let Some(dir) = input.token_dir {
        m.push(mount(
            crate::TOKEN_DIR_IN_CONTAINER,
            "bind",
            &dir.to_string_lossy(),
            &["rbind", "ro", "nosuid", "nodev", "noexec"],
        )?);
    }
    for f in input.etc_files {
        let name = f
            .file_name()
            .ok_or_else(|| SpecError::NoFileName(f.clone()))?
            .to_string_lossy();
        m.push(mount(
            &format!("/etc/{name}"),
            "bind",
            &f.to_string_lossy(),
            &["rbind", "ro", "nosuid", "nodev", "noexec"],
        )?);
    }
    Ok(m)
}

/// Empty capability sets: what the sidecar (and anything exec'd in it) runs with.
pub fn no_capabilities() -> LinuxCapabilities {
    let mut c = LinuxCapabilities::default();
    c.set_bounding(Some(Default::default()));
    c.set_effective(Some(Default::default()));
    c.set_inheritable(Some(Default::default()));
    c.set_permitted(Some(Default::default()));
    c.set_ambient(Some(Default::default()));
    c
}

/// The sidecar's runtime spec.
pub fn sidecar_spec(input: &SpecInput<'_>) -> Result<Spec, SpecError> {
    let mut process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(input.uid).gid(input.uid).build()?)
        .args(args(input.image, input.envoy_args))
        .env(env(input.image))
        .cwd(input.image.working_dir.clone().unwrap_or_else(|| "/".to_string()))
        .capabilities(no_capabilities())
        .no_new_privileges(true)
        .build()?;
    // The builder's default is RLIMIT_NOFILE 1024, too few for Envoy: inherit the shim's instead.
    process.set_rlimits(None);
    let ns = |typ| LinuxNamespaceBuilder::default().typ(typ).build();
    let namespaces = vec![
        ns(LinuxNamespaceType::Pid)?,
        ns(LinuxNamespaceType::Ipc)?,
        ns(LinuxNamespaceType::Uts)?,
        ns(LinuxNamespaceType::Mount)?,
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Network)
            .path(input.netns)
            .build()?,
    ];
    let defaults = oci_spec::runtime::Linux::default();
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(input.cgroups_path))
        .masked_paths(defaults.masked_paths().clone().unwrap_or_default())
        .readonly_paths(defaults.readonly_paths().clone().unwrap_or_default())
        .build()?;
    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .root(RootBuilder::default().path("rootfs").readonly(false).build()?)
        .process(process)
        .mounts(mounts(input)?)
        .linux(linux)
        .build()?;
    spec.set_hostname(input.hostname.map(str::to_string));
    Ok(spec)
}

/// The spec as containerd stores it (`Container.spec`, JSON).
pub fn to_json(spec: &Spec) -> Result<Vec<u8>, SpecError> {
    Ok(serde_json::to_vec(spec)?)
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn input<'a>(image: &'a ImageConfig, etc: &'a [PathBuf]) -> SpecInput<'a> {
        SpecInput {
            image,
            uid: 1337,
            bootstrap: Path::new("/var/lib/traffic-manager/sidecars/abc/bootstrap.yaml"),
            envoy_args: &[],
            netns: Path::new("/var/run/netns/cni-1234"),
            cgroups_path: "/kubepods/besteffort/pod1/abc",
            hostname: Some("reviews-v1"),
            etc_files: etc,
            token_dir: None,
        }
    }

    fn json_of(spec: &Spec) -> serde_json::Value {
        serde_json::from_slice(&to_json(spec).unwrap()).unwrap()
    }

    #[test]
    fn the_sidecar_joins_the_pod_netns_by_path_and_gets_fresh_other_namespaces() {
        let image = ImageConfig::default();
        let j = json_of(&sidecar_spec(&input(&image, &[])).unwrap());
        let ns = j["linux"]["namespaces"].as_array().unwrap();
        let net: Vec<_> = ns.iter().filter(|n| n["type"] == "network").collect();
        assert_eq!(net.len(), 1);
        assert_eq!(net[0]["path"], "/var/run/netns/cni-1234");
        for other in ["pid", "ipc", "uts", "mount"] {
            let n = ns.iter().find(|n| n["type"] == other).unwrap();
            assert!(n.get("path").is_none(), "{other} must be new");
        }
        assert!(!ns.iter().any(|n| n["type"] == "user" || n["type"] == "cgroup"));
        assert_eq!(j["linux"]["cgroupsPath"], "/kubepods/besteffort/pod1/abc");
        assert_eq!(j["hostname"], "reviews-v1");
    }

    #[test]
    fn the_process_runs_as_the_uid_with_no_capabilities_and_no_new_privileges() {
        let image = ImageConfig::default();
        let j = json_of(&sidecar_spec(&input(&image, &[])).unwrap());
        let p = &j["process"];
        assert_eq!(p["user"]["uid"], 1337);
        assert_eq!(p["user"]["gid"], 1337);
        assert_eq!(p["noNewPrivileges"], true);
        for set in ["bounding", "effective", "inheritable", "permitted", "ambient"] {
            assert_eq!(p["capabilities"][set], serde_json::json!([]), "{set}");
        }
        assert!(p.get("oomScoreAdj").is_none());
        assert!(p.get("rlimits").is_none());
    }

    #[test]
    fn the_entrypoint_is_kept_and_our_arguments_replace_the_cmd() {
        let image = ImageConfig {
            entrypoint: vec!["/docker-entrypoint.sh".into()],
            cmd: vec!["envoy".into(), "-c".into(), "/etc/envoy/envoy.yaml".into()],
            env: vec!["HOME=/root".into()],
            working_dir: Some("/srv".into()),
            diff_ids: vec![],
        };
        let extra = vec!["--disable-hot-restart".to_string()];
        let mut i = input(&image, &[]);
        i.envoy_args = &extra;
        let j = json_of(&sidecar_spec(&i).unwrap());
        assert_eq!(
            j["process"]["args"],
            serde_json::json!([
                "/docker-entrypoint.sh",
                "-c",
                BOOTSTRAP_IN_CONTAINER,
                "--disable-hot-restart"
            ])
        );
        assert_eq!(j["process"]["cwd"], "/srv");
        let env = j["process"]["env"].as_array().unwrap();
        assert!(env.iter().any(|e| e.as_str().unwrap().starts_with("PATH=")));
        assert!(env.iter().any(|e| e == "HOME=/root"));
        assert_eq!(args(&ImageConfig::default(), &[])[0], "envoy");
    }

    #[test]
    fn the_bootstrap_and_dns_files_are_bind_mounted_read_only() {
        let image = ImageConfig::default();
        let etc = vec![PathBuf::from(
            "/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/s/resolv.conf",
        )];
        let j = json_of(&sidecar_spec(&input(&image, &etc)).unwrap());
        let mounts = j["mounts"].as_array().unwrap();
        let by_dest = |d: &str| mounts.iter().find(|m| m["destination"] == d).unwrap().clone();
        let b = by_dest(BOOTSTRAP_IN_CONTAINER);
        assert_eq!(
            b["source"],
            "/var/lib/traffic-manager/sidecars/abc/bootstrap.yaml"
        );
        assert!(b["options"].as_array().unwrap().iter().any(|o| o == "ro"));
        let r = by_dest("/etc/resolv.conf");
        assert_eq!(r["type"], "bind");
        assert!(r["options"].as_array().unwrap().iter().any(|o| o == "ro"));
        assert!(mounts.iter().any(|m| m["destination"] == "/proc"));
        assert_eq!(j["root"]["path"], "rootfs");
        assert!(!mounts
            .iter()
            .any(|m| m["destination"] == crate::TOKEN_DIR_IN_CONTAINER));
    }

    #[test]
    fn the_token_directory_is_bind_mounted_read_only_as_a_directory() {
        let image = ImageConfig::default();
        let mut i = input(&image, &[]);
        let dir = Path::new("/var/run/traffic-agent/xds-tokens/uid-1");
        i.token_dir = Some(dir);
        let j = json_of(&sidecar_spec(&i).unwrap());
        let m = j["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == crate::TOKEN_DIR_IN_CONTAINER)
            .unwrap()
            .clone();
        assert_eq!(m["source"], "/var/run/traffic-agent/xds-tokens/uid-1");
        assert_eq!(m["type"], "bind");
        assert!(m["options"].as_array().unwrap().iter().any(|o| o == "ro"));
    }
}
