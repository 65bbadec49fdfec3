//! Fixtures for tests against the real Docker of the e2e cluster (`. /run/traffic-e2e/env.sh`).
//!
//! Gate ([`docker_env`]): under `CI=true` these tests run only with `TRAFFIC_E2E=1`; otherwise they
//! run when the `DOCKER_HOST` socket (default `/var/run/docker.sock`) exists and we are root, and
//! are skipped (with a reason) when not. With `TRAFFIC_E2E=1` a missing prerequisite fails.
#![allow(dead_code, reason = "each test binary uses a part")]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptions, ListContainersOptions, RemoveContainerOptions};
use bollard::Docker;
use traffic_sidecar::docker::{DockerConfig, DockerRuntime};
use traffic_sidecar::LABEL_POD_UID;

pub struct Env {
    pub host: String,
    pub envoy_image: String,
    pub pause_image: String,
}

fn skip_or_fail(reason: &str) -> Option<Env> {
    if std::env::var("TRAFFIC_E2E").as_deref() == Ok("1") {
        panic!("TRAFFIC_E2E=1 but {reason}");
    }
    eprintln!("skip: {reason}");
    None
}

pub fn docker_env() -> Option<Env> {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let e2e = std::env::var("TRAFFIC_E2E").as_deref() == Ok("1");
    if ci && !e2e {
        eprintln!("skip: CI=true without TRAFFIC_E2E=1");
        return None;
    }
    let host = DockerConfig::from_env().host;
    if let Some(sock) = host.strip_prefix("unix://") {
        if !Path::new(sock).exists() {
            return skip_or_fail(&format!(
                "no Docker socket {sock} (source /run/traffic-e2e/env.sh)"
            ));
        }
    }
    if !nix::unistd::geteuid().is_root() {
        return skip_or_fail("not root (setns into pod netns, /proc of containers)");
    }
    Some(Env {
        host,
        envoy_image: std::env::var("TRAFFIC_E2E_ENVOY_IMAGE")
            .unwrap_or_else(|_| "traffic-e2e/envoy:1.39.3".into()),
        pause_image: std::env::var("TRAFFIC_E2E_PAUSE_IMAGE")
            .unwrap_or_else(|_| "k8s.gcr.io/pause:3.2".into()),
    })
}

pub fn config(env: &Env) -> DockerConfig {
    DockerConfig {
        host: env.host.clone(),
        ..DockerConfig::from_env()
    }
}

pub async fn runtime(env: &Env) -> DockerRuntime {
    DockerRuntime::connect(config(env)).await.unwrap()
}

pub fn random_uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .unwrap()
        .trim()
        .to_string()
}

/// Parent of the stand-in pods' cgroups: outside `kubepods`, where kubelet would remove unknown pods.
pub const TEST_CGROUP_ROOT: &str = "/traffic-sidecar-test";

/// A stand-in pod sandbox: a pause container with kubelet's sandbox labels (but not
/// `io.kubernetes.docker.type`, so kubelet ignores it) in its own pod cgroup. Drop removes it,
/// every sidecar of its pod uid and the cgroup directories, even when the test failed.
pub struct FakePod {
    pub host: String,
    pub uid: String,
    pub sandbox_id: String,
    /// Pod cgroup relative to the cgroup roots, e.g. `/traffic-sidecar-test/pod<uid>`.
    pub cgroup_parent: String,
}

impl FakePod {
    pub async fn start(env: &Env) -> FakePod {
        let docker = Docker::connect_with_host(&env.host)
            .unwrap()
            .negotiate_version()
            .await
            .unwrap();
        let uid = random_uuid();
        let cgroup_parent = format!("{TEST_CGROUP_ROOT}/pod{uid}");
        let labels = HashMap::from([
            ("io.kubernetes.pod.uid".to_string(), uid.clone()),
            (
                "io.kubernetes.pod.name".to_string(),
                format!("fake-{}", &uid[..8]),
            ),
            (
                "io.kubernetes.pod.namespace".to_string(),
                "sidecar-test".to_string(),
            ),
            ("io.kubernetes.container.name".to_string(), "POD".to_string()),
            ("traffic.sidecar-test".to_string(), "1".to_string()),
        ]);
        let mut pod = FakePod {
            host: env.host.clone(),
            uid: uid.clone(),
            sandbox_id: String::new(),
            cgroup_parent: cgroup_parent.clone(),
        };
        let created = docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(format!("sidecar-test_POD_{}", &uid[..8])),
                    ..Default::default()
                }),
                ContainerCreateBody {
                    image: Some(env.pause_image.clone()),
                    labels: Some(labels),
                    host_config: Some(HostConfig {
                        cgroup_parent: Some(cgroup_parent),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        pod.sandbox_id = created.id;
        docker.start_container(&pod.sandbox_id, None).await.unwrap();
        pod
    }

    /// The stand-in's pod name and namespace (as in its labels).
    pub fn name(&self) -> String {
        format!("fake-{}", &self.uid[..8])
    }
}

/// Mount points of every cgroup hierarchy (v1 and v2).
pub fn cgroup_mounts() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .collect()
}

pub fn rmdir_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                rmdir_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Removes containers (by id, and every sidecar of `pod_uid`) from a fresh thread and runtime,
/// so it works from `Drop` inside or outside a Tokio runtime.
pub fn remove_containers(host: &str, ids: Vec<String>, pod_uid: Option<String>) {
    let host = host.to_string();
    let joined = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let docker = Docker::connect_with_host(&host)
                .unwrap()
                .negotiate_version()
                .await
                .unwrap();
            let mut ids = ids;
            if let Some(uid) = pod_uid {
                let found = docker
                    .list_containers(Some(ListContainersOptions {
                        all: true,
                        filters: Some(HashMap::from([(
                            "label".to_string(),
                            vec![format!("{LABEL_POD_UID}={uid}")],
                        )])),
                        ..Default::default()
                    }))
                    .await
                    .unwrap_or_default();
                ids.extend(found.into_iter().filter_map(|c| c.id));
            }
            for id in ids {
                let opts = RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                };
                let _ = docker.remove_container(&id, Some(opts)).await;
            }
        })
    })
    .join();
    if joined.is_err() {
        eprintln!("cleanup thread panicked");
    }
}

impl Drop for FakePod {
    fn drop(&mut self) {
        remove_containers(&self.host, vec![self.sandbox_id.clone()], Some(self.uid.clone()));
        // runc removes container cgroups; the pod level (and our root) are ours to remove.
        std::thread::sleep(Duration::from_millis(100));
        for m in cgroup_mounts() {
            rmdir_tree(&m.join(self.cgroup_parent.trim_start_matches('/')));
            let _ = std::fs::remove_dir(m.join(TEST_CGROUP_ROOT.trim_start_matches('/')));
        }
    }
}
