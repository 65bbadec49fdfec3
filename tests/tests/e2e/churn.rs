//! Pod churn: enabled pods created and deleted in parallel batches; afterwards the node holds no
//! more of ours than before — BPF map entries, pinned objects, sidecar containers, iptables state
//! and pod cgroups (each count printed before and after).
//!
//! The e2e suite runs a few cycles (`TRAFFIC_E2E_CHURN_CYCLES`, default 4, in batches of
//! `TRAFFIC_E2E_CHURN_BATCH`, default 4); `cargo xtask bench churn --cycles 500` runs the long one.
use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use traffic_tests::e2e::{run_timeout, BPF_PIN_ROOT, IPTABLES_STATE_DIR};

const ENV_CYCLES: &str = "TRAFFIC_E2E_CHURN_CYCLES";
const ENV_BATCH: &str = "TRAFFIC_E2E_CHURN_BATCH";

fn env_num(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// Entries of one pinned BPF map (`bpftool -j map dump pinned <path>`).
fn map_entries(path: &Path) -> anyhow::Result<usize> {
    let out = run_timeout(
        std::process::Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(path),
        Duration::from_secs(30),
    )?;
    anyhow::ensure!(out.ok, "bpftool map dump {}: {}", path.display(), out.stderr);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim())?;
    Ok(v.as_array().map(Vec::len).unwrap_or(0))
}

fn files_under(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.filter_map(Result::ok)
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                1 + files_under(&p)
            } else {
                1
            }
        })
        .sum()
}

/// `pod*` cgroup v2 directories under kubepods (any QoS class).
fn pod_cgroups(kubepods: &Path) -> usize {
    ["", "besteffort", "burstable"]
        .iter()
        .filter_map(|q| std::fs::read_dir(kubepods.join(q)).ok())
        .flat_map(|rd| rd.filter_map(Result::ok))
        .filter(|e| e.file_name().to_string_lossy().starts_with("pod") && e.path().is_dir())
        .count()
}

/// What the node holds of ours (and of the pods'), by name.
fn counts(e2e: &E2e) -> BTreeMap<String, usize> {
    let mut c = BTreeMap::new();
    let maps = Path::new(BPF_PIN_ROOT).join("maps");
    // The LRU maps of original destinations are bounded and drained per pod by the agent too.
    for name in [
        "TM_SETTINGS",
        "TM_PORTS",
        "TM_PROXY_CG",
        "TM_PODS",
        "TM_ORIG_COOKIE",
        "TM_ORIG_TUPLE",
    ] {
        let p = maps.join(name);
        if p.exists() {
            c.insert(
                format!("bpf map {name} entries"),
                map_entries(&p).unwrap_or(usize::MAX),
            );
        }
    }
    c.insert("pinned objects".into(), files_under(Path::new(BPF_PIN_ROOT)));
    c.insert(
        "sidecar containers".into(),
        e2e.runtime
            .sidecars(None, None)
            .map(|v| v.len())
            .unwrap_or(usize::MAX),
    );
    c.insert(
        "iptables redirect records".into(),
        files_under(Path::new(IPTABLES_STATE_DIR)),
    );
    let host_rules = ["iptables-save", "iptables-legacy-save"]
        .iter()
        .filter_map(|t| run_timeout(&mut std::process::Command::new(t), Duration::from_secs(20)).ok())
        .filter(|o| o.ok)
        .map(|o| o.stdout.lines().filter(|l| l.contains("TRAFFIC")).count())
        .sum();
    c.insert("host iptables rules of ours".into(), host_rules);
    c.insert("pod cgroups (cgroup2)".into(), pod_cgroups(&e2e.kubepods));
    c
}

fn pod_manifest(name: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","labels":{{"app":"churn","traffic.envoy.enabled":"true"}}}},
"spec":{{"terminationGracePeriodSeconds":0,"containers":[{{"name":"app","image":"traffic-e2e/busybox:1.37.0","imagePullPolicy":"Never","command":["sleep","3600"]}}]}}}}"#
    )
}

/// `cycles` enabled pods, `batch` at a time: created, each waited for until it has its sidecar and
/// redirect, deleted, waited for until the agent removed both; then the counts must be back.
pub fn churn(e2e: &E2e) {
    let cycles = env_num(ENV_CYCLES, 4);
    let batch = env_num(ENV_BATCH, 4).min(cycles);
    // A bare namespace (no test app: only the churned pods), deleted on drop.
    let name = traffic_tests::e2e_parse::dns_name("e2e-churn", &traffic_tests::e2e::random_suffix());
    e2e.kubectl(&["create", "namespace", &name]).expect("namespace");
    let ns = TestNamespace { e2e, name };
    e2e.kubectl(&["label", "namespace", &ns.name, "traffic-e2e=true"])
        .expect("label namespace");
    // Earlier tests' namespaces may still be going away (their pods, sidecars, cgroups): the
    // baseline is taken once they are gone and the counts hold still.
    wait_until(
        "earlier test namespaces gone",
        Duration::from_secs(180),
        Duration::from_secs(1),
        || {
            let out = e2e.kubectl(&["get", "namespaces", "-l", "traffic-e2e=true", "-o", "name"])?;
            Ok((out.lines().count() == 1).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let before = wait_until(
        "the node's counts to hold still",
        Duration::from_secs(120),
        Duration::from_secs(2),
        || {
            let a = counts(e2e);
            std::thread::sleep(Duration::from_secs(2));
            Ok((counts(e2e) == a).then_some(a))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let t0 = Instant::now();
    let mut done = 0;
    let mut enable_times = Vec::new();
    while done < cycles {
        let n = batch.min(cycles - done);
        let names: Vec<String> = (done..done + n).map(|i| format!("churn-{i}")).collect();
        let manifests: String = names
            .iter()
            .map(|n| pod_manifest(n))
            .collect::<Vec<_>>()
            .join("\n");
        let file = std::env::temp_dir().join(format!("{}-batch.json", ns.name));
        std::fs::write(&file, manifests).expect("write manifests");
        let tb = Instant::now();
        e2e.kubectl(&["-n", &ns.name, "apply", "-f", &file.to_string_lossy()])
            .expect("create pods");
        let _ = std::fs::remove_file(&file);
        let pods = wait_until(
            "the batch's pods running",
            Duration::from_secs(180),
            Duration::from_millis(500),
            || {
                let p = ns.pods("app=churn")?;
                Ok((p.len() == n).then_some(p))
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        for pod in &pods {
            e2e.wait_agent(
                &format!("sidecar + redirect of {}", pod.name),
                ENABLE_TIMEOUT,
                || {
                    let sc = e2e.running_sidecar(&pod.uid)?;
                    Ok(sc.filter(|_| e2e.redirect_state(&pod.uid).is_ok_and(|s| s.active(&e2e.mode))))
                },
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
        }
        enable_times.push(tb.elapsed());
        e2e.kubectl(&[
            "-n",
            &ns.name,
            "delete",
            "pods",
            "-l",
            "app=churn",
            "--wait=false",
        ])
        .expect("delete pods");
        for pod in &pods {
            e2e.wait_agent(
                &format!("no sidecar and redirect of {}", pod.name),
                ENABLE_TIMEOUT,
                || {
                    let gone = e2e.sidecars(&pod.uid)?.is_empty() && e2e.redirect_state(&pod.uid)?.gone();
                    Ok(gone.then_some(()))
                },
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
        }
        wait_until(
            "the batch's pods deleted",
            Duration::from_secs(180),
            Duration::from_millis(500),
            || Ok(ns.pods("app=churn")?.is_empty().then_some(())),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        done += n;
        eprintln!(
            "[{}] churn: {done}/{cycles} pods created and deleted ({:.0} s)",
            e2e.mode,
            t0.elapsed().as_secs_f64()
        );
    }
    // kubelet removes pod cgroups a little after the pod object is gone (cgroup2: within ~2 s).
    // A count may also drop below the baseline (an earlier test's pod finishing going away):
    // what must not happen is any count above it.
    let leaked = |now: &BTreeMap<String, usize>| -> Vec<String> {
        now.iter()
            .filter(|(k, n)| **n > before.get(*k).copied().unwrap_or(0))
            .map(|(k, _)| k.clone())
            .collect()
    };
    let after = wait_until(
        "the node's counts back to the baseline",
        Duration::from_secs(90),
        Duration::from_secs(1),
        || {
            let now = counts(e2e);
            Ok(leaked(&now).is_empty().then_some(now))
        },
    )
    .unwrap_or_else(|_| counts(e2e));
    eprintln!(
        "[{}] churn of {cycles} enabled pods in batches of {batch}: {:.0} s",
        e2e.mode,
        t0.elapsed().as_secs_f64()
    );
    eprintln!("{:<36} {:>8} {:>8}", "count", "before", "after");
    for (k, b) in &before {
        eprintln!("{k:<36} {b:>8} {:>8}", after.get(k).copied().unwrap_or(0));
    }
    if let Some(p50) = traffic_tests::e2e_parse::percentile(&enable_times, 0.5) {
        e2e.record_timing("churn batch create->all redirected", p50);
    }
    assert!(
        leaked(&after).is_empty(),
        "above the baseline after {cycles} cycles: {:?}",
        leaked(&after)
    );
}
