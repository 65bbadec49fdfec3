//! `DockerRuntime` against the real Docker of the e2e cluster, with stand-in pod sandboxes (pause
//! containers carrying kubelet's sandbox labels) and the real Envoy image.
//!
//! Run: `. /run/traffic-e2e/env.sh && cargo test -p traffic-sidecar --test docker_runtime`
//! (as root). Gate and cleanup: see `common/mod.rs`.
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use traffic_sidecar::bootstrap::{render, BootstrapOptions};
use traffic_sidecar::cgroup::Cgroup2;
use traffic_sidecar::docker::{DockerConfig, DockerRuntime, MANAGED_BY};
use traffic_sidecar::netns::{http_get, NetnsError};
use traffic_sidecar::operator::OperatorError;
use traffic_sidecar::{
    ContainerRuntime, PodRef, RuntimeError, Sandbox, SidecarSpec, SidecarState, LABEL_MANAGED_BY,
    LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID,
};

use common::{docker_env, runtime, Env, FakePod};

const ADMIN: u16 = 15000;
/// Envoy turns ready this long after it starts (two initial fetches, CDS then LDS, time out).
const FETCH: Duration = Duration::from_millis(100);

fn pod_ref(p: &FakePod) -> PodRef {
    PodRef {
        uid: p.uid.clone(),
        namespace: "sidecar-test".into(),
        name: p.name(),
    }
}

/// A spec whose Envoy becomes ready soon after start: the control plane address refuses
/// connections and the initial fetches time out after `fetch_timeout` each.
fn spec(env: &Env, pod: &PodRef, fetch_timeout: Option<Duration>) -> SidecarSpec {
    let mut o = BootstrapOptions::new("127.0.0.1:1");
    o.initial_fetch_timeout = fetch_timeout;
    SidecarSpec {
        pod: pod.clone(),
        image: env.envoy_image.clone(),
        bootstrap: render(pod, &o).unwrap(),
        uid: 1337,
        admin_port: ADMIN,
        token_dir: None,
    }
}

fn proc_status_uid(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_string()
}

fn netns_link(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap()
}

async fn sidecars_of(rt: &DockerRuntime, uid: &str) -> Vec<traffic_sidecar::Sidecar> {
    rt.sidecars()
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.pod.uid == uid)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_joins_the_sandbox_netns_as_1337_answers_admin_on_loopback_only_and_is_idempotent() {
    let Some(env) = docker_env() else { return };
    let rt = runtime(&env).await;
    let cg = Cgroup2::detect().unwrap();
    let pod = FakePod::start(&env).await;
    let pref = pod_ref(&pod);

    // The sandbox: by kubelet labels, with its pid and the pod cgroup above its own.
    let sandbox = rt.sandbox(&pod.uid).await.unwrap().expect("sandbox found");
    assert_eq!(sandbox.container_id, pod.sandbox_id);
    assert!(sandbox.pid > 0);
    assert_eq!(
        sandbox.pod_cgroup,
        cg.mount.join(pod.cgroup_parent.trim_start_matches('/'))
    );
    assert!(sandbox.pod_cgroup.is_dir());
    assert_eq!(rt.sandbox(&common::random_uuid()).await.unwrap(), None);

    let t0 = Instant::now();
    let sidecar = rt.start(&spec(&env, &pref, Some(FETCH)), &sandbox).await.unwrap();
    let start_to_ready = t0.elapsed();
    eprintln!("start -> ready: {start_to_ready:?}");
    assert_eq!(sidecar.state, SidecarState::Running);
    assert_eq!(sidecar.pod, pref);
    assert!(sidecar.status.starts_with("Up"), "{}", sidecar.status);

    // What Docker says about it.
    let c = rt
        .client()
        .inspect_container(&sidecar.container_id, None)
        .await
        .unwrap();
    let hc = c.host_config.unwrap();
    assert_eq!(
        hc.network_mode.as_deref(),
        Some(format!("container:{}", pod.sandbox_id).as_str())
    );
    assert_eq!(hc.cgroup_parent.as_deref(), Some(pod.cgroup_parent.as_str()));
    let cfg = c.config.unwrap();
    assert_eq!(cfg.user.as_deref(), Some("1337:1337"));
    let labels = cfg.labels.unwrap();
    assert_eq!(labels[LABEL_POD_UID], pod.uid);
    assert_eq!(labels[LABEL_POD_NAME], pref.name);
    assert_eq!(labels[LABEL_POD_NAMESPACE], "sidecar-test");
    assert_eq!(labels[LABEL_MANAGED_BY], MANAGED_BY);
    let name = c.name.unwrap();
    assert_eq!(
        name,
        format!("/traffic-envoy_{}_sidecar-test_{}", pref.name, &pod.uid[..8])
    );

    // The kernel's view: uid 1337, the sandbox's netns, its own cgroup under the pod's.
    let pid = u32::try_from(c.state.unwrap().pid.unwrap()).unwrap();
    assert!(
        proc_status_uid(pid).starts_with("Uid:\t1337\t1337\t1337"),
        "{}",
        proc_status_uid(pid)
    );
    assert_eq!(netns_link(pid), netns_link(sandbox.pid));
    let own_cgroup = sidecar.cgroup.clone().expect("running sidecar has a cgroup");
    assert_eq!(own_cgroup, sandbox.pod_cgroup.join(&sidecar.container_id));
    assert_eq!(cg.of_pid(pid).unwrap(), own_cgroup);

    // Admin: 127.0.0.1 inside the pod netns only.
    let ready = http_get(
        &sandbox.netns(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, ADMIN)),
        "/ready",
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!((ready.status, ready.body.trim()), (200, "LIVE"));
    let sb = rt
        .client()
        .inspect_container(&pod.sandbox_id, None)
        .await
        .unwrap();
    let pod_ip: Ipv4Addr = sb.network_settings.unwrap().networks.unwrap()["bridge"]
        .ip_address
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    for addr in [SocketAddr::from((pod_ip, ADMIN))] {
        match http_get(&sandbox.netns(), addr, "/ready", Duration::from_secs(2)) {
            Err(NetnsError::Io { source, .. }) => {
                assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused, "{addr}")
            }
            other => panic!("admin reachable on {addr}: {other:?}"),
        }
    }
    // From the host, the pod IP's admin port is closed as well.
    assert!(
        std::net::TcpStream::connect_timeout(&SocketAddr::from((pod_ip, ADMIN)), Duration::from_secs(2))
            .is_err()
    );

    // Idempotent: the same container, never a second one.
    let again = rt.start(&spec(&env, &pref, Some(FETCH)), &sandbox).await.unwrap();
    assert_eq!(again.container_id, sidecar.container_id);
    let listed = sidecars_of(&rt, &pod.uid).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].cgroup.as_ref(), Some(&own_cgroup));

    // Operator helpers: prefix resolution, exec (exit code, stdout/stderr split), logs.
    let prefix = &sidecar.container_id[..12];
    assert_eq!(
        rt.resolve(prefix).await.unwrap().container_id,
        sidecar.container_id
    );
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let cmd: Vec<String> = ["sh", "-c", "id -u; echo oops >&2; exit 3"]
        .map(String::from)
        .to_vec();
    let code = rt.exec(prefix, &cmd, &mut out, &mut err).await.unwrap();
    assert_eq!(
        (
            code,
            String::from_utf8_lossy(&out).as_ref(),
            String::from_utf8_lossy(&err).as_ref()
        ),
        (3, "1337\n", "oops\n")
    );
    let (mut out, mut err) = (Vec::new(), Vec::new());
    rt.logs(prefix, false, Some(50), &mut out, &mut err)
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&err).contains("starting main dispatch loop"),
        "{}",
        String::from_utf8_lossy(&err)
    );
    assert!(matches!(
        rt.resolve("zzzz").await,
        Err(OperatorError::UnknownPrefix { .. })
    ));
    let row = rt
        .proxies()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.pod_uid == pod.uid)
        .unwrap();
    assert_eq!(
        (row.container_id.as_str(), row.state),
        (prefix, SidecarState::Running)
    );

    // A crashed sidecar is replaced by the next start; following its logs ends with it.
    let follower = {
        let (rt, prefix) = (rt.clone(), prefix.to_string());
        tokio::spawn(async move {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            rt.logs(&prefix, true, Some(1), &mut out, &mut err)
                .await
                .map(|()| err)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !follower.is_finished(),
        "--follow returned while the sidecar runs"
    );
    rt.client()
        .kill_container(&sidecar.container_id, None)
        .await
        .unwrap();
    wait_exited(&rt, &sidecar.container_id).await;
    let followed = tokio::time::timeout(Duration::from_secs(30), follower)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!followed.is_empty());
    let replaced = rt.start(&spec(&env, &pref, Some(FETCH)), &sandbox).await.unwrap();
    assert_ne!(replaced.container_id, sidecar.container_id);
    assert_eq!(sidecars_of(&rt, &pod.uid).await.len(), 1);

    // Remove: gone, and removing again is fine.
    rt.remove(&replaced.container_id).await.unwrap();
    rt.remove(&replaced.container_id).await.unwrap();
    assert!(sidecars_of(&rt, &pod.uid).await.is_empty());
    let gone = rt.client().inspect_container(&replaced.container_id, None).await;
    assert!(gone.is_err());
}

async fn wait_exited(rt: &DockerRuntime, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let s = rt.sidecars().await.unwrap();
        if s.iter()
            .any(|s| s.container_id == id && s.state != SidecarState::Running)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{id} still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_that_never_turns_ready_is_removed_and_reported() {
    let Some(env) = docker_env() else { return };
    let rt = DockerRuntime::connect(DockerConfig {
        ready_timeout: Duration::from_secs(3),
        ..common::config(&env)
    })
    .await
    .unwrap();
    let pod = FakePod::start(&env).await;
    let pref = pod_ref(&pod);
    let sandbox = rt.sandbox(&pod.uid).await.unwrap().unwrap();

    // Envoy runs but waits 15 s for a control plane that is not there: /ready stays 503.
    let t0 = Instant::now();
    match rt.start(&spec(&env, &pref, None), &sandbox).await {
        Err(RuntimeError::NotReady {
            container_id,
            seconds,
            detail,
        }) => {
            assert_eq!(seconds, 3);
            // 503 while Envoy waits for its initial fetch; connection refused if a loaded host
            // has not even let it open the admin port.
            assert!(detail.contains("/ready"), "{detail}");
            assert!(
                rt.client().inspect_container(&container_id, None).await.is_err(),
                "not removed"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    assert!(sidecars_of(&rt, &pod.uid).await.is_empty());

    // Envoy exits at once on a bad bootstrap: reported early with its output, removed.
    let mut bad = spec(&env, &pref, None);
    bad.bootstrap = r#"{"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}}, "no_such_field": 1}"#.into();
    let t0 = Instant::now();
    match rt.start(&bad, &sandbox).await {
        Err(RuntimeError::NotReady { detail, .. }) => {
            assert!(detail.contains("stopped before it was ready"), "{detail}");
            assert!(detail.contains("no_such_field"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(sidecars_of(&rt, &pod.uid).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_of_a_dead_sandbox_is_replaced_in_the_new_one() {
    let Some(env) = docker_env() else { return };
    let rt = runtime(&env).await;
    let pod = FakePod::start(&env).await;
    let pref = pod_ref(&pod);
    let old = rt.sandbox(&pod.uid).await.unwrap().unwrap();
    let first = rt.start(&spec(&env, &pref, Some(FETCH)), &old).await.unwrap();

    // A second sandbox of the same pod (as kubelet creates after the first died).
    let second = FakePod::start(&env).await;
    let new = Sandbox {
        container_id: second.sandbox_id.clone(),
        ..rt.sandbox(&second.uid).await.unwrap().unwrap()
    };
    let moved = rt.start(&spec(&env, &pref, Some(FETCH)), &new).await.unwrap();
    assert_ne!(moved.container_id, first.container_id);
    let c = rt
        .client()
        .inspect_container(&moved.container_id, None)
        .await
        .unwrap();
    assert_eq!(
        c.host_config.unwrap().network_mode,
        Some(format!("container:{}", second.sandbox_id))
    );
    let all = sidecars_of(&rt, &pod.uid).await;
    assert_eq!(
        all.iter().map(|s| &s.container_id).collect::<Vec<_>>(),
        vec![&moved.container_id]
    );
    rt.remove(&moved.container_id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_for_one_pod_share_one_container() {
    let Some(env) = docker_env() else { return };
    let rt = runtime(&env).await;
    let pod = FakePod::start(&env).await;
    let pref = pod_ref(&pod);
    let sandbox = rt.sandbox(&pod.uid).await.unwrap().unwrap();
    let s = spec(&env, &pref, Some(FETCH));
    let (a, b, c) = tokio::join!(
        rt.start(&s, &sandbox),
        rt.start(&s, &sandbox),
        rt.start(&s, &sandbox)
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert_eq!(a.container_id, b.container_id);
    assert_eq!(a.container_id, c.container_id);
    assert_eq!(sidecars_of(&rt, &pod.uid).await.len(), 1);
    rt.remove(&a.container_id).await.unwrap();
}

#[tokio::test]
async fn an_unknown_container_removes_fine_and_unknown_sandboxes_are_none() {
    let Some(env) = docker_env() else { return };
    let rt = runtime(&env).await;
    rt.remove("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        .await
        .unwrap();
    assert_eq!(rt.sandbox("no-such-pod-uid").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_image_missing_on_the_node_is_pulled_and_a_failed_pull_is_reported_with_nothing_left() {
    let Some(env) = docker_env() else { return };
    let rt = DockerRuntime::connect(common::config(&env)).await.unwrap();
    let pod = FakePod::start(&env).await;
    let pref = pod_ref(&pod);
    let sandbox = rt.sandbox(&pod.uid).await.unwrap().unwrap();
    // No registry is reachable here, so the pull itself fails: the error names the pull.
    let mut missing = spec(&env, &pref, None);
    missing.image = "traffic-e2e/no-such-envoy:0.0.0".into();
    match rt.start(&missing, &sandbox).await {
        Err(RuntimeError::Runtime(detail)) => {
            assert!(
                detail.contains("pull traffic-e2e/no-such-envoy:0.0.0"),
                "{detail}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(sidecars_of(&rt, &pod.uid).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_sidecar_has_its_cgroup_before_it_runs_starts_in_it_and_leaves_none_behind() {
    let Some(env) = docker_env() else { return };
    let rt = runtime(&env).await;
    let cg = Cgroup2::detect().unwrap();
    let pod = FakePod::start(&env).await;
    let pref = pod_ref(&pod);
    let sandbox = rt.sandbox(&pod.uid).await.unwrap().expect("sandbox found");

    // Prepared: created, not running, its cgroup v2 directory already there (what the redirect's
    // proxy exclusion needs before Envoy runs).
    let prepared = rt
        .prepare(&spec(&env, &pref, Some(FETCH)), &sandbox)
        .await
        .unwrap()
        .expect("docker can prepare");
    assert_eq!(prepared.state, SidecarState::Created);
    let dir = prepared.cgroup.clone().unwrap();
    assert_eq!(dir, sandbox.pod_cgroup.join(&prepared.container_id));
    assert!(dir.is_dir(), "{} exists before the start", dir.display());
    let again = rt
        .prepare(&spec(&env, &pref, Some(FETCH)), &sandbox)
        .await
        .unwrap();
    assert_eq!(again.map(|s| s.container_id), Some(prepared.container_id.clone()));

    // Started: the same container, running in exactly that cgroup.
    let started = rt.start(&spec(&env, &pref, Some(FETCH)), &sandbox).await.unwrap();
    assert_eq!(started.container_id, prepared.container_id);
    assert_eq!(started.state, SidecarState::Running);
    assert_eq!(started.cgroup.as_ref(), Some(&dir));
    let pid = rt
        .client()
        .inspect_container(&started.container_id, None)
        .await
        .unwrap()
        .state
        .unwrap()
        .pid
        .unwrap();
    assert_eq!(cg.of_pid(u32::try_from(pid).unwrap()).unwrap(), dir);
    rt.remove(&started.container_id).await.unwrap();
    assert!(!dir.exists(), "runc removed the cgroup with the container");

    // Prepared and removed without ever running: the directory runc never made goes too.
    let unused = rt
        .prepare(&spec(&env, &pref, Some(FETCH)), &sandbox)
        .await
        .unwrap()
        .unwrap();
    let unused_dir = unused.cgroup.clone().unwrap();
    assert!(unused_dir.is_dir());
    rt.remove(&unused.container_id).await.unwrap();
    assert!(!unused_dir.exists(), "{} removed", unused_dir.display());
    assert!(sidecars_of(&rt, &pod.uid).await.is_empty());
}
