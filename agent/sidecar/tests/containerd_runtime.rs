//! `ContainerdRuntime` against a real, private containerd (see `private_containerd/mod.rs`) with
//! stand-in CRI sandboxes (real netns, real cgroups, runc) and the real Envoy.
//!
//! Run (as root): `cargo test -p traffic-sidecar --test containerd_runtime`. One test on purpose:
//! the image import and containerd start are the expensive part and happen once.
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;
mod private_containerd;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use traffic_sidecar::bootstrap::{render, BootstrapOptions};
use traffic_sidecar::containerd::ContainerdRuntime;
use traffic_sidecar::{ContainerRuntime, PodRef, RuntimeError, SidecarSpec, SidecarState};

use private_containerd::{random_hex, Harness, ENVOY_IMAGE, TEST_CGROUP_ROOT};

const ADMIN: u16 = 15000;

fn spec(pod: &PodRef, image: &str) -> SidecarSpec {
    let mut o = BootstrapOptions::new("127.0.0.1:1");
    o.initial_fetch_timeout = Some(Duration::from_millis(100));
    SidecarSpec {
        pod: pod.clone(),
        image: image.to_string(),
        bootstrap: render(pod, &o).unwrap(),
        uid: 1337,
        admin_port: ADMIN,
        token_dir: None,
    }
}

fn status_line(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap()
        .to_string()
}

fn netns_inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).unwrap().ino()
}

fn pid_of_task(h: &Harness, id: &str) -> u32 {
    let out = h.ctr(&["-n", "traffic-manager", "tasks", "ls"]).unwrap();
    let line = out
        .lines()
        .find(|l| l.starts_with(id))
        .unwrap_or_else(|| panic!("no task {id}: {out}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Nothing of ours is left in containerd for `id`: no container, task, snapshot or lease, and no
/// files in its state dir.
fn assert_nothing_left(h: &Harness, rt: &ContainerdRuntime, id: Option<&str>) {
    let ns = ["-n", "traffic-manager"];
    let q = |args: &[&str]| h.ctr(&[&ns[..], args].concat()).unwrap();
    let containers = q(&["containers", "ls", "-q"]);
    let tasks = q(&["tasks", "ls", "-q"]);
    let snapshots = q(&["snapshots", "ls"]);
    let leases = q(&["leases", "ls", "-q"]);
    if let Some(id) = id {
        assert!(!containers.contains(id), "container left: {containers}");
        assert!(!tasks.contains(id), "task left: {tasks}");
        assert!(!snapshots.contains(id), "snapshot left: {snapshots}");
    }
    assert!(
        !snapshots.lines().any(|l| l.starts_with("extract-")),
        "unpack snapshot left: {snapshots}"
    );
    assert_eq!(leases.trim(), "", "lease left");
    let files: Vec<PathBuf> = std::fs::read_dir(&rt.config().state_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    match id {
        Some(id) => assert!(!files.iter().any(|f| f.ends_with(id)), "files left: {files:?}"),
        None => assert!(files.is_empty(), "files left: {files:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_join_cri_sandboxes_on_a_real_containerd_and_leave_nothing_behind() {
    let t0 = Instant::now();
    let Some(mut h) = Harness::start() else { return };
    eprintln!("harness up (containerd + image import) in {:?}", t0.elapsed());
    let rt = h.runtime().await;
    let uid = format!("{}-pod", &random_hex()[..12]);
    let pod = PodRef {
        uid: uid.clone(),
        namespace: "sidecar-test".into(),
        name: "fake-pod".into(),
    };

    // Unknown pods have no sandbox; an unknown container removes fine.
    assert_eq!(rt.sandbox("no-such-pod").await.unwrap(), None);
    rt.remove(&"0".repeat(64)).await.unwrap();

    let netns1 = h.netns();
    let sb1 = h.sandbox(&uid, &netns1);
    let sandbox = rt.sandbox(&uid).await.unwrap().expect("the running sandbox");
    assert_eq!(sandbox.container_id, sb1);
    let cg2 = traffic_sidecar::cgroup::Cgroup2::detect().unwrap();
    assert_eq!(
        sandbox.pod_cgroup,
        cg2.mount
            .join(format!("{}/pod{uid}", TEST_CGROUP_ROOT.trim_start_matches('/')))
    );

    // A missing image is an error with nothing left behind.
    let missing = rt
        .start(&spec(&pod, "docker.io/traffic-test/missing:1"), &sandbox)
        .await;
    match missing {
        Err(RuntimeError::Runtime(msg)) => assert!(msg.contains("not on the node"), "{msg}"),
        other => panic!("missing image started: {other:?}"),
    }
    assert_nothing_left(&h, &rt, None);

    // Start: adopts the image from k8s.io, joins the sandbox netns and the pod cgroup, uid 1337.
    let exits = rt.exits();
    let started = Instant::now();
    let s1 = rt.start(&spec(&pod, ENVOY_IMAGE), &sandbox).await.unwrap();
    eprintln!(
        "first start (image adoption + unpack + ready) in {:?}",
        started.elapsed()
    );
    assert_eq!(s1.state, SidecarState::Running);
    assert_eq!(s1.pod, pod);
    let pid = pid_of_task(&h, &s1.container_id);
    assert_eq!(
        netns_inode(&PathBuf::from(format!("/proc/{pid}/ns/net"))),
        netns_inode(&netns1)
    );
    assert_eq!(status_line(pid, "Uid:"), "Uid:\t1337\t1337\t1337\t1337");
    assert_eq!(status_line(pid, "CapEff:"), "CapEff:\t0000000000000000");
    assert_eq!(status_line(pid, "CapBnd:"), "CapBnd:\t0000000000000000");
    assert_eq!(status_line(pid, "NoNewPrivs:"), "NoNewPrivs:\t1");
    assert_eq!(
        s1.cgroup.as_deref(),
        Some(sandbox.pod_cgroup.join(&s1.container_id).as_path()),
        "sidecar cgroup under the pod cgroup"
    );
    // The runc options were mirrored from the sandbox (its own runc root).
    assert!(h.dir.join("runc/traffic-manager").join(&s1.container_id).exists());

    // Idempotent: a second start adopts the running sidecar.
    let s1b = rt.start(&spec(&pod, ENVOY_IMAGE), &sandbox).await.unwrap();
    assert_eq!(s1b.container_id, s1.container_id);
    let listed = rt.sidecars().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let inspected = rt.resolve(&s1.container_id[..8]).await.unwrap();
    assert_eq!(inspected.container_id, s1.container_id);
    let rows = rt.proxies().await.unwrap();
    assert_eq!(rows[0].pod, "fake-pod");

    // Logs (Envoy writes to stderr; the shim puts it in the log file) and exec as 1337.
    let mut log = Vec::new();
    rt.logs(&s1.container_id, false, None, &mut log).await.unwrap();
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("starting main dispatch loop"), "log: {log}");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = rt
        .exec(
            &s1.container_id,
            &["/bin/id".into(), "-u".into()],
            &mut out,
            &mut err,
        )
        .await
        .unwrap();
    assert_eq!(
        (code, String::from_utf8_lossy(&out).trim()),
        (0, "1337"),
        "{err:?}"
    );
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = rt
        .exec(
            &s1.container_id,
            &["/bin/cat".into(), "/nonexistent".into()],
            &mut out,
            &mut err,
        )
        .await
        .unwrap();
    assert_eq!(code, 1);
    assert!(String::from_utf8_lossy(&err).contains("No such file"), "{err:?}");

    // An exit is reported at once.
    let mut exits = exits;
    h.ctr(&[
        "-n",
        "traffic-manager",
        "tasks",
        "kill",
        "-s",
        "SIGKILL",
        &s1.container_id,
    ])
    .unwrap();
    let exited = tokio::time::timeout(Duration::from_secs(10), exits.next())
        .await
        .expect("exit event within 10 s");
    assert_eq!(exited.as_deref(), Some(s1.container_id.as_str()));
    let dead = rt.resolve(&s1.container_id).await.unwrap();
    assert_eq!(dead.state, SidecarState::Exited);

    // A dead sidecar is replaced by the next start (a restarted agent adopts or cleans up).
    let rt2 = h.runtime().await;
    let s2 = rt2.start(&spec(&pod, ENVOY_IMAGE), &sandbox).await.unwrap();
    assert_ne!(s2.container_id, s1.container_id);
    assert_nothing_left(&h, &rt2, Some(&s1.container_id));
    // A restarted agent (a fresh runtime) adopts the running sidecar instead of starting another.
    let adopted = h
        .runtime()
        .await
        .start(&spec(&pod, ENVOY_IMAGE), &sandbox)
        .await
        .unwrap();
    assert_eq!(adopted.container_id, s2.container_id);

    // The sandbox is recreated with a new netns: the next start replaces the sidecar there.
    h.kill_sandbox(&sb1);
    let netns2 = h.netns();
    let sb2 = h.sandbox(&uid, &netns2);
    let sandbox2 = rt2.sandbox(&uid).await.unwrap().expect("the new sandbox");
    assert_eq!(sandbox2.container_id, sb2, "the RUNNING sandbox wins");
    let s3 = rt2.start(&spec(&pod, ENVOY_IMAGE), &sandbox2).await.unwrap();
    assert_ne!(s3.container_id, s2.container_id);
    let pid3 = pid_of_task(&h, &s3.container_id);
    assert_eq!(
        netns_inode(&PathBuf::from(format!("/proc/{pid3}/ns/net"))),
        netns_inode(&netns2)
    );
    assert_nothing_left(&h, &rt2, Some(&s2.container_id));

    // After a node reboot containers survive, tasks do not: such a sidecar lists as exited
    // ("no task") and the next start replaces it, leaving nothing of it.
    h.ctr(&[
        "-n",
        "traffic-manager",
        "tasks",
        "kill",
        "-s",
        "SIGKILL",
        &s3.container_id,
    ])
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while h
        .ctr(&["-n", "traffic-manager", "tasks", "delete", &s3.container_id])
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "task of {} not deletable",
            s3.container_id
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let orphan = rt2.resolve(&s3.container_id).await.unwrap();
    assert_eq!(
        (orphan.state, orphan.status.as_str()),
        (SidecarState::Exited, "no task")
    );
    let s4 = rt2.start(&spec(&pod, ENVOY_IMAGE), &sandbox2).await.unwrap();
    assert_ne!(s4.container_id, s3.container_id);
    assert_nothing_left(&h, &rt2, Some(&s3.container_id));

    // Removal leaves no container, task, snapshot, lease or file.
    rt2.remove(&s4.container_id).await.unwrap();
    rt2.remove(&s4.container_id).await.unwrap();
    assert!(rt2.sidecars().await.unwrap().is_empty());
    assert_nothing_left(&h, &rt2, Some(&s4.container_id));

    // Fail-closed restarts: a prepared sidecar is a created, not started task; its cgroup exists
    // under the pod's (runc's init waits in it) before Envoy runs, so the redirect's proxy
    // exclusion can point at it; `start` starts that very container, in that cgroup.
    let prepared = rt2
        .prepare(&spec(&pod, ENVOY_IMAGE), &sandbox2)
        .await
        .unwrap()
        .expect("containerd can prepare");
    assert_eq!(prepared.state, SidecarState::Created);
    let dir = prepared.cgroup.clone().expect("a prepared sidecar's cgroup");
    assert_eq!(dir, sandbox2.pod_cgroup.join(&prepared.container_id));
    assert!(dir.is_dir(), "{} exists before the start", dir.display());
    let tasks = h.ctr(&["-n", "traffic-manager", "tasks", "ls"]).unwrap();
    assert!(
        tasks
            .lines()
            .any(|l| l.starts_with(&prepared.container_id) && l.contains("CREATED")),
        "{tasks}"
    );
    let again = rt2
        .prepare(&spec(&pod, ENVOY_IMAGE), &sandbox2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.container_id, prepared.container_id, "prepare is idempotent");
    let started = rt2.start(&spec(&pod, ENVOY_IMAGE), &sandbox2).await.unwrap();
    assert_eq!(started.container_id, prepared.container_id);
    assert_eq!(started.state, SidecarState::Running);
    assert_eq!(started.cgroup.as_ref(), Some(&dir));
    let pid5 = pid_of_task(&h, &started.container_id);
    assert_eq!(
        cg2.of_pid(pid5).unwrap(),
        dir,
        "Envoy runs in the prepared cgroup"
    );
    assert_eq!(status_line(pid5, "Uid:"), "Uid:\t1337\t1337\t1337\t1337");
    // Preparing next to a running sidecar returns it as it is.
    let running = rt2
        .prepare(&spec(&pod, ENVOY_IMAGE), &sandbox2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (running.container_id.as_str(), running.state),
        (started.container_id.as_str(), SidecarState::Running)
    );
    rt2.remove(&started.container_id).await.unwrap();
    assert!(!dir.exists(), "the cgroup went with the container");
    assert_nothing_left(&h, &rt2, Some(&started.container_id));
    // Prepared and removed without ever running: nothing is left either.
    let unused = rt2
        .prepare(&spec(&pod, ENVOY_IMAGE), &sandbox2)
        .await
        .unwrap()
        .unwrap();
    let unused_dir = unused.cgroup.clone().unwrap();
    assert!(unused_dir.is_dir());
    rt2.remove(&unused.container_id).await.unwrap();
    assert!(!unused_dir.exists(), "{} removed", unused_dir.display());
    assert!(rt2.sidecars().await.unwrap().is_empty());
    assert_nothing_left(&h, &rt2, Some(&unused.container_id));
    eprintln!("whole test in {:?}", t0.elapsed());
}

/// Not a timed test: prints sidecar start latency (start → Envoy ready, image already unpacked)
/// over 20 starts, p50/p99. Run: `cargo test -p traffic-sidecar --test containerd_runtime --
/// --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn sidecar_start_latency_is_measured_over_twenty_starts() {
    let Some(mut h) = Harness::start() else { return };
    let rt = h.runtime().await;
    let uid = format!("{}-lat", &random_hex()[..12]);
    let pod = PodRef {
        uid: uid.clone(),
        namespace: "sidecar-test".into(),
        name: "fake-pod".into(),
    };
    let netns = h.netns();
    h.sandbox(&uid, &netns);
    let sandbox = rt.sandbox(&uid).await.unwrap().unwrap();
    // The first start also adopts and unpacks the image: not counted.
    let first = rt.start(&spec(&pod, ENVOY_IMAGE), &sandbox).await.unwrap();
    rt.remove(&first.container_id).await.unwrap();
    let mut ms = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let s = rt.start(&spec(&pod, ENVOY_IMAGE), &sandbox).await.unwrap();
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        rt.remove(&s.container_id).await.unwrap();
    }
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    eprintln!(
        "containerd sidecar start (create → /ready LIVE), 20 starts: p50 {:.0} ms, p99 {:.0} ms, min {:.0} ms, max {:.0} ms",
        pct(0.5),
        pct(0.99),
        ms[0],
        ms[ms.len() - 1]
    );
}
