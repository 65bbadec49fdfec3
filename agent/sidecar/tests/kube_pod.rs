//! `DockerRuntime` next to a real Kubernetes pod of the e2e cluster (kubelet/dockershim made the
//! sandbox and the pod cgroup): the sidecar lands in `kubepods/…/pod<uid>` and shares the app
//! container's netns, where the app reaches Envoy's admin on 127.0.0.1.
//!
//! Run: `. /run/traffic-e2e/env.sh && cargo test -p traffic-sidecar --test kube_pod` (root).
//! Needs `kubectl` and `KUBECONFIG` besides the Docker gate of `common/mod.rs`.
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use traffic_sidecar::bootstrap::{render, BootstrapOptions};
use traffic_sidecar::cgroup::Cgroup2;
use traffic_sidecar::{ContainerRuntime, PodRef, SidecarSpec};

use common::{docker_env, remove_containers, runtime};

fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "kubectl: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A pod that is deleted (and whose sidecars are removed first) on drop.
struct Pod {
    host: String,
    name: String,
    uid: String,
}

impl Drop for Pod {
    fn drop(&mut self) {
        remove_containers(&self.host, vec![], Some(self.uid.clone()));
        let _ = kubectl(
            &[
                "delete",
                "pod",
                &self.name,
                "-n",
                "default",
                "--grace-period=0",
                "--force",
                "--wait=false",
            ],
            None,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_next_to_a_real_pod_lives_in_its_pod_cgroup_and_shares_its_netns() {
    let Some(env) = docker_env() else { return };
    if std::env::var_os("KUBECONFIG").is_none()
        || Command::new("kubectl")
            .arg("version")
            .arg("--client")
            .output()
            .is_err()
    {
        assert!(
            std::env::var("TRAFFIC_E2E").as_deref() != Ok("1"),
            "TRAFFIC_E2E=1 but no kubectl/KUBECONFIG"
        );
        return eprintln!("skip: no kubectl or KUBECONFIG");
    }
    let app_image =
        std::env::var("TRAFFIC_E2E_APP_IMAGE").unwrap_or_else(|_| "traffic-e2e/busybox:1.37.0".into());
    let name = format!("sidecar-test-{}", &common::random_uuid()[..8]);
    let manifest = format!(
        r#"{{"apiVersion": "v1", "kind": "Pod",
  "metadata": {{"name": "{name}", "namespace": "default", "labels": {{"app": "sidecar-test"}}}},
  "spec": {{"terminationGracePeriodSeconds": 0, "containers": [{{"name": "app", "image": "{app_image}",
    "imagePullPolicy": "Never", "command": ["sleep", "3600"]}}]}}}}"#
    );
    ok(kubectl(&["apply", "-f", "-"], Some(&manifest)));
    let uid = ok(kubectl(
        &[
            "get",
            "pod",
            &name,
            "-n",
            "default",
            "-o",
            "jsonpath={.metadata.uid}",
        ],
        None,
    ));
    let pod = Pod {
        host: env.host.clone(),
        name: name.clone(),
        uid: uid.clone(),
    };
    ok(kubectl(
        &[
            "wait",
            "--for=condition=Ready",
            &format!("pod/{name}"),
            "-n",
            "default",
            "--timeout=90s",
        ],
        None,
    ));

    let rt = runtime(&env).await;
    let cg = Cgroup2::detect().unwrap();
    let sandbox = rt.sandbox(&pod.uid).await.unwrap().expect("kubelet's sandbox");
    assert_eq!(
        sandbox.pod_cgroup,
        cg.mount.join(format!("kubepods/besteffort/pod{uid}"))
    );

    let pref = PodRef {
        uid: uid.clone(),
        namespace: "default".into(),
        name: name.clone(),
    };
    let mut o = BootstrapOptions::new("127.0.0.1:1");
    o.initial_fetch_timeout = Some(Duration::from_secs(1));
    let spec = SidecarSpec {
        pod: pref.clone(),
        image: env.envoy_image.clone(),
        bootstrap: render(&pref, &o).unwrap(),
        uid: 1337,
        admin_port: 15000,
        token_dir: None,
    };
    let t0 = Instant::now();
    let sidecar = rt.start(&spec, &sandbox).await.unwrap();
    eprintln!("real pod: start -> ready {:?}", t0.elapsed());
    let c = rt
        .client()
        .inspect_container(&sidecar.container_id, None)
        .await
        .unwrap();
    assert_eq!(
        c.host_config.unwrap().cgroup_parent.as_deref(),
        Some(format!("/kubepods/besteffort/pod{uid}").as_str())
    );
    assert_eq!(
        sidecar.cgroup,
        Some(sandbox.pod_cgroup.join(&sidecar.container_id))
    );

    // The app container reaches Envoy's admin on 127.0.0.1, not on the pod IP.
    let ready = ok(kubectl(
        &[
            "exec",
            &name,
            "-n",
            "default",
            "-c",
            "app",
            "--",
            "wget",
            "-q",
            "-T",
            "3",
            "-O",
            "-",
            "http://127.0.0.1:15000/ready",
        ],
        None,
    ));
    assert_eq!(ready.trim(), "LIVE");
    let pod_ip = ok(kubectl(
        &[
            "get",
            "pod",
            &name,
            "-n",
            "default",
            "-o",
            "jsonpath={.status.podIP}",
        ],
        None,
    ));
    let via_ip = kubectl(
        &[
            "exec",
            &name,
            "-n",
            "default",
            "-c",
            "app",
            "--",
            "wget",
            "-q",
            "-T",
            "3",
            "-O",
            "-",
            &format!("http://{pod_ip}:15000/ready"),
        ],
        None,
    );
    assert!(!via_ip.status.success(), "admin answered on the pod IP");

    rt.remove(&sidecar.container_id).await.unwrap();
    assert!(rt.sidecars().await.unwrap().iter().all(|s| s.pod.uid != uid));
    drop(pod);
}
