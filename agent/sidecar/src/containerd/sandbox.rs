//! What a sidecar needs from a pod's CRI sandbox, read from the OCI spec containerd stores with
//! the sandbox container (pure): the network namespace to join and where the pod's cgroup is.
//!
//! The CRI plugin writes `linux.cgroupsPath` in the form of the kubelet's cgroup driver:
//! cgroupfs `/kubepods/<qos>/pod<uid>/<sandbox id>` (a path; the pod cgroup is its parent) or
//! systemd `<pod slice>:cri-containerd:<sandbox id>` (runc creates `cri-containerd-<id>.scope` in
//! the slice). A sidecar's path must use the same driver, or runc fails (systemd) or puts the
//! sidecar outside the pod (cgroupfs) — so we derive ours from the sandbox's and mirror its runc
//! options (which carry `SystemdCgroup`).

use std::path::PathBuf;

/// CRI label marking a sandbox (`sandbox`) or an app container (`container`).
pub const CRI_LABEL_KIND: &str = "io.cri-containerd.kind";
/// CRI label with the pod uid.
pub const CRI_LABEL_POD_UID: &str = "io.kubernetes.pod.uid";

/// Prefix of our scope units under a systemd pod slice (`<slice>:traffic-manager:<id>`).
pub const SYSTEMD_SCOPE_PREFIX: &str = "traffic-manager";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SandboxSpecError {
    #[error("sandbox spec is not JSON: {0}")]
    Json(String),
    #[error("sandbox spec has no linux.cgroupsPath")]
    NoCgroupsPath,
    #[error("sandbox cgroupsPath {0:?} is neither a cgroupfs path nor a systemd slice:prefix:name")]
    BadCgroupsPath(String),
    #[error("sandbox has no network namespace of its own (hostNetwork pod)")]
    HostNetwork,
    #[error("sandbox network namespace path {0:?} is not an absolute path")]
    BadNetnsPath(String),
    #[error("sandbox runc options: {0}")]
    RuncOptions(String),
    #[error("sandbox runc options say SystemdCgroup={systemd_cgroup} but its cgroupsPath says otherwise")]
    DriverMismatch { systemd_cgroup: bool },
}

/// The pod cgroup as the sandbox's cgroup driver names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodCgroup {
    /// cgroupfs driver: the pod cgroup's path (`/kubepods/besteffort/pod<uid>`).
    Cgroupfs { pod: String },
    /// systemd driver: the pod slice (`kubepods-besteffort-pod<uid>.slice`).
    Systemd { slice: String },
}

impl PodCgroup {
    /// The `linux.cgroupsPath` of a sidecar with container id `id` in this pod.
    pub fn sidecar_cgroups_path(&self, id: &str) -> String {
        match self {
            PodCgroup::Cgroupfs { pod } => format!("{}/{id}", pod.trim_end_matches('/')),
            PodCgroup::Systemd { slice } => format!("{slice}:{SYSTEMD_SCOPE_PREFIX}:{id}"),
        }
    }

    pub fn is_systemd(&self) -> bool {
        matches!(self, PodCgroup::Systemd { .. })
    }
}

/// What we take from a sandbox's stored OCI spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSpec {
    /// The pinned netns (`/var/run/netns/cni-<uuid>`) or `/proc/<pid>/ns/net`.
    pub netns: PathBuf,
    pub cgroup: PodCgroup,
    /// The pod's hostname (the sandbox's), given to the sidecar too.
    pub hostname: Option<String>,
}

/// Parses a `linux.cgroupsPath` of a sandbox.
pub fn parse_cgroups_path(path: &str) -> Result<PodCgroup, SandboxSpecError> {
    let bad = || SandboxSpecError::BadCgroupsPath(path.to_string());
    if path.starts_with('/') {
        let trimmed = path.trim_end_matches('/');
        let (pod, own) = trimmed.rsplit_once('/').ok_or_else(bad)?;
        if pod.is_empty() || own.is_empty() {
            return Err(bad());
        }
        return Ok(PodCgroup::Cgroupfs { pod: pod.to_string() });
    }
    let mut parts = path.split(':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(slice), Some(_prefix), Some(name), None)
            if slice.ends_with(".slice") && !name.is_empty() && !slice.contains('/') =>
        {
            Ok(PodCgroup::Systemd {
                slice: slice.to_string(),
            })
        }
        _ => Err(bad()),
    }
}

#[derive(serde::Deserialize)]
struct RawSpec {
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    linux: Option<RawLinux>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLinux {
    #[serde(default)]
    cgroups_path: Option<String>,
    #[serde(default)]
    namespaces: Vec<RawNamespace>,
}

#[derive(serde::Deserialize)]
struct RawNamespace {
    #[serde(rename = "type")]
    typ: String,
    #[serde(default)]
    path: Option<String>,
}

/// Parses the JSON OCI spec of a sandbox container. Only the fields we use are read, so specs of
/// any runtime-spec version parse.
pub fn parse_sandbox_spec(json: &[u8]) -> Result<SandboxSpec, SandboxSpecError> {
    let raw: RawSpec = serde_json::from_slice(json).map_err(|e| SandboxSpecError::Json(e.to_string()))?;
    let linux = raw.linux.ok_or(SandboxSpecError::NoCgroupsPath)?;
    let cgroups_path = linux
        .cgroups_path
        .filter(|p| !p.is_empty())
        .ok_or(SandboxSpecError::NoCgroupsPath)?;
    let cgroup = parse_cgroups_path(&cgroups_path)?;
    let netns = linux
        .namespaces
        .iter()
        .find(|n| n.typ == "network")
        .and_then(|n| n.path.clone())
        .filter(|p| !p.is_empty())
        .ok_or(SandboxSpecError::HostNetwork)?;
    if !netns.starts_with('/') || netns.split('/').any(|c| c == "..") {
        return Err(SandboxSpecError::BadNetnsPath(netns));
    }
    Ok(SandboxSpec {
        netns: PathBuf::from(netns),
        cgroup,
        hostname: raw.hostname.filter(|h| !h.is_empty()),
    })
}

/// Type URL of runc's shim options in `Container.runtime.options`.
pub const RUNC_OPTIONS_TYPE_URL: &str = "containerd.runc.v1.Options";

/// The fields of `containerd.runc.v1.Options` we read or set (the containerd client does not
/// generate runc's own messages; unknown fields are skipped when decoding).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RuncOptions {
    #[prost(string, tag = "6")]
    pub binary_name: String,
    #[prost(string, tag = "7")]
    pub root: String,
    #[prost(bool, tag = "9")]
    pub systemd_cgroup: bool,
}

/// The runc options of a sidecar: the sandbox's own when it runs on runc (they carry the runc
/// binary, its root and `SystemdCgroup`), else defaults that only follow the cgroup driver.
/// Options that disagree with the sandbox's cgroup path are an error: runc would refuse the
/// path (systemd) or put the sidecar outside the pod (cgroupfs).
pub fn sidecar_runc_options(
    sandbox_options: Option<&prost_types::Any>,
    cgroup: &PodCgroup,
) -> Result<prost_types::Any, SandboxSpecError> {
    use prost::Message as _;
    if let Some(any) = sandbox_options.filter(|a| a.type_url.trim_start_matches('/') == RUNC_OPTIONS_TYPE_URL)
    {
        let o = RuncOptions::decode(any.value.as_slice())
            .map_err(|e| SandboxSpecError::RuncOptions(e.to_string()))?;
        if o.systemd_cgroup != cgroup.is_systemd() {
            return Err(SandboxSpecError::DriverMismatch {
                systemd_cgroup: o.systemd_cgroup,
            });
        }
        return Ok(any.clone());
    }
    let o = RuncOptions {
        systemd_cgroup: cgroup.is_systemd(),
        ..Default::default()
    };
    Ok(prost_types::Any {
        type_url: RUNC_OPTIONS_TYPE_URL.into(),
        value: o.encode_to_vec(),
    })
}

/// The containerd list filter for the sandboxes of one pod (comma = AND). The uid is quoted
/// with its `"` and `\` escaped, so no uid can widen the filter.
pub fn sandbox_filter(pod_uid: &str) -> String {
    format!(
        "labels.\"{CRI_LABEL_KIND}\"==sandbox,labels.\"{CRI_LABEL_POD_UID}\"==\"{}\"",
        quote_filter_value(pod_uid)
    )
}

/// Escapes a value for a containerd filter's double-quoted string.
pub fn quote_filter_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    const CRI_SPEC: &str = r#"{
      "ociVersion": "1.0.2-dev",
      "hostname": "reviews-v1-55cbf59466-mwxj5",
      "linux": {
        "cgroupsPath": "/kubepods/besteffort/pod3859d687/5f1c",
        "namespaces": [
          {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
          {"type": "network", "path": "/var/run/netns/cni-8a2f0f5e-0c1b-7a3e-55d2-1b1b2c3d4e5f"}
        ]
      }
    }"#;

    #[test]
    fn a_cgroupfs_sandbox_gives_its_pinned_netns_and_the_pod_cgroup_above_it() {
        let s = parse_sandbox_spec(CRI_SPEC.as_bytes()).unwrap();
        assert_eq!(
            s.netns,
            PathBuf::from("/var/run/netns/cni-8a2f0f5e-0c1b-7a3e-55d2-1b1b2c3d4e5f")
        );
        assert_eq!(
            s.cgroup,
            PodCgroup::Cgroupfs {
                pod: "/kubepods/besteffort/pod3859d687".into()
            }
        );
        assert_eq!(s.hostname.as_deref(), Some("reviews-v1-55cbf59466-mwxj5"));
        assert_eq!(
            s.cgroup.sidecar_cgroups_path("abc"),
            "/kubepods/besteffort/pod3859d687/abc"
        );
        assert!(!s.cgroup.is_systemd());
    }

    #[test]
    fn a_systemd_sandbox_puts_the_sidecar_in_the_same_slice_under_our_prefix() {
        let c = parse_cgroups_path("kubepods-burstable-pod3859d687.slice:cri-containerd:5f1c").unwrap();
        assert_eq!(
            c,
            PodCgroup::Systemd {
                slice: "kubepods-burstable-pod3859d687.slice".into()
            }
        );
        assert_eq!(
            c.sidecar_cgroups_path("abc"),
            "kubepods-burstable-pod3859d687.slice:traffic-manager:abc"
        );
        assert!(c.is_systemd());
    }

    #[test]
    fn cgroups_paths_of_no_known_shape_are_rejected() {
        for bad in [
            "",
            "/",
            "/kubepods",
            "relative/path",
            "a:b",
            "x.scope:cri:id",
            "a.slice:b:c:d",
            "a.slice:b:",
        ] {
            assert!(parse_cgroups_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_host_network_sandbox_has_no_netns_to_join() {
        let spec = r#"{"linux": {"cgroupsPath": "/kubepods/pod1/abc", "namespaces": [{"type": "pid"}, {"type": "network"}]}}"#;
        assert_eq!(
            parse_sandbox_spec(spec.as_bytes()),
            Err(SandboxSpecError::HostNetwork)
        );
        let none = r#"{"linux": {"cgroupsPath": "/kubepods/pod1/abc", "namespaces": [{"type": "pid"}]}}"#;
        assert_eq!(
            parse_sandbox_spec(none.as_bytes()),
            Err(SandboxSpecError::HostNetwork)
        );
    }

    #[test]
    fn relative_or_escaping_netns_paths_and_missing_cgroups_are_errors() {
        let rel = r#"{"linux": {"cgroupsPath": "/kubepods/pod1/abc", "namespaces": [{"type": "network", "path": "netns/x"}]}}"#;
        assert!(matches!(
            parse_sandbox_spec(rel.as_bytes()),
            Err(SandboxSpecError::BadNetnsPath(_))
        ));
        let up = r#"{"linux": {"cgroupsPath": "/kubepods/pod1/abc", "namespaces": [{"type": "network", "path": "/var/run/netns/../../etc"}]}}"#;
        assert!(matches!(
            parse_sandbox_spec(up.as_bytes()),
            Err(SandboxSpecError::BadNetnsPath(_))
        ));
        assert_eq!(
            parse_sandbox_spec(br#"{"linux": {}}"#),
            Err(SandboxSpecError::NoCgroupsPath)
        );
        assert!(matches!(
            parse_sandbox_spec(b"not json"),
            Err(SandboxSpecError::Json(_))
        ));
    }

    #[test]
    fn runc_options_are_mirrored_from_a_runc_sandbox_and_must_match_its_cgroup_driver() {
        use prost::Message as _;
        let cgroupfs = PodCgroup::Cgroupfs {
            pod: "/kubepods/pod1".into(),
        };
        let systemd = PodCgroup::Systemd {
            slice: "kubepods-pod1.slice".into(),
        };
        let theirs = prost_types::Any {
            type_url: RUNC_OPTIONS_TYPE_URL.into(),
            value: RuncOptions {
                binary_name: "/usr/local/bin/runc-nooom".into(),
                root: "/run/k/runc".into(),
                systemd_cgroup: false,
            }
            .encode_to_vec(),
        };
        assert_eq!(sidecar_runc_options(Some(&theirs), &cgroupfs).unwrap(), theirs);
        assert_eq!(
            sidecar_runc_options(Some(&theirs), &systemd),
            Err(SandboxSpecError::DriverMismatch {
                systemd_cgroup: false
            })
        );
        let other_runtime = prost_types::Any {
            type_url: "io.containerd.runsc.v1.options".into(),
            value: vec![1, 2, 3],
        };
        for given in [None, Some(&other_runtime)] {
            let ours = sidecar_runc_options(given, &systemd).unwrap();
            let decoded = RuncOptions::decode(ours.value.as_slice()).unwrap();
            assert!(decoded.systemd_cgroup);
            assert_eq!(decoded.binary_name, "");
        }
        let garbage = prost_types::Any {
            type_url: RUNC_OPTIONS_TYPE_URL.into(),
            value: vec![0xff],
        };
        assert!(matches!(
            sidecar_runc_options(Some(&garbage), &cgroupfs),
            Err(SandboxSpecError::RuncOptions(_))
        ));
    }

    #[test]
    fn the_sandbox_filter_quotes_the_uid() {
        assert_eq!(
            sandbox_filter("3859d687"),
            r#"labels."io.cri-containerd.kind"==sandbox,labels."io.kubernetes.pod.uid"=="3859d687""#
        );
        assert_eq!(
            sandbox_filter(r#"x",labels.a==b"#),
            r#"labels."io.cri-containerd.kind"==sandbox,labels."io.kubernetes.pod.uid"=="x\",labels.a==b""#
        );
    }
}
