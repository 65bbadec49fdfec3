//! Fault scenarios: a sidecar killed (fail-closed), the agent and the control plane killed with
//! `kill -9` under sustained load. What callers saw is printed and recorded as timings; the
//! assertions are the contract (no request bypasses the proxy; no request fails when only the
//! agent or the control plane dies).
use std::path::Path;

use super::*;
use traffic_tests::e2e::{http_get, uptime};
use traffic_tests::e2e_faults::{pod_calls, prometheus_value, CallTally, LoadSummary};

/// Where `load-client` lands in the client container.
const LOAD_CLIENT: &str = "/load-client";
/// Sustained load of the kill -9 scenarios: requests per second, seconds.
const LOAD_RPS: u32 = 200;
const LOAD_SECONDS: u64 = 30;

/// An in-pod loop calling each of `ports` of `ip` in turn for `seconds`, one line per call:
/// `<uptime> <port> OK <reply>` or `<uptime> <port> FAIL <error>` (see [`pod_calls`]).
fn call_loop(ip: &str, ports: &[u16], seconds: u64) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(
        "end=$(( $(cut -d. -f1 /proc/uptime) + {seconds} )); \
         while [ \"$(cut -d. -f1 /proc/uptime)\" -lt \"$end\" ]; do \
           for p in {ports}; do \
             t=$(cut -d' ' -f1 /proc/uptime); \
             if r=$(wget -qO- -T 3 \"http://{ip}:$p/\" 2>&1); then echo \"$t $p OK\" $r; \
             else echo \"$t $p FAIL\" $r; fi; \
           done; sleep 0.05; \
         done",
        ports = ports.join(" ")
    )
}

/// A sidecar that dies is replaced at once and the pod fails closed: its redirect stays, so calls
/// made meanwhile are refused (nothing listens on the proxy port) and never reach their
/// destination around the proxy — the port the policy blocks (9081) never answers. The window
/// (kill -> first reply through the new sidecar) is recorded.
pub fn sidecar_death(e2e: &E2e) {
    let (ns, client, ip) = enabled_client(e2e, "sidecar-dies");
    let seconds = 25;
    let (out, killed_at, replaced) = std::thread::scope(|s| {
        let calls = s.spawn(|| {
            ns.sh(
                &client.pod.name,
                &call_loop(&ip, &[9080, 9081], seconds),
                Duration::from_secs(seconds + 60),
            )
        });
        std::thread::sleep(Duration::from_secs(3));
        let killed_at = uptime().expect("uptime");
        let t0 = Instant::now();
        e2e.runtime
            .kill_sidecar(&client.sidecar)
            .expect("kill the sidecar");
        let replaced = e2e
            .wait_agent("a new sidecar with the redirect on", ENABLE_TIMEOUT, || {
                let sc = e2e.running_sidecar(&client.pod.uid)?;
                let active = e2e.redirect_state(&client.pod.uid)?.active(&e2e.mode);
                Ok(sc.filter(|id| active && *id != client.sidecar))
            })
            .unwrap_or_else(|e| panic!("{e:#}"));
        e2e.record_timing("sidecar killed->new sidecar running", t0.elapsed());
        (calls.join().expect("thread").expect("calls"), killed_at, replaced)
    });
    let calls = pod_calls(&out.stdout);
    let served = CallTally::of(&calls, 9080, killed_at);
    let blocked = CallTally::of(&calls, 9081, 0.0);
    eprintln!(
        "[{}] calls to 9080 around the sidecar's death: {} ok before, {} refused, {} other failures {:?}, {} ok after; blocked port 9081: {} answered, {} refused, {:?}",
        e2e.mode,
        served.ok_before,
        served.refused,
        served.other_failures(),
        served.other,
        served.ok_after,
        blocked.ok_before + blocked.ok_after,
        blocked.refused,
        blocked.other
    );
    assert!(
        served.ok_before > 0,
        "calls worked before the kill: {}",
        out.stdout
    );
    assert_eq!(
        blocked.ok_before + blocked.ok_after,
        0,
        "the blocked port never answered: the pod never bypassed its proxy\n{}",
        out.stdout
    );
    assert!(
        served.first_ok_after.is_some(),
        "no call succeeded after the kill:\n{}",
        out.stdout
    );
    // From the first call that failed (Envoy gone) to the first one the new sidecar served.
    let window = served.window().unwrap_or_else(|| {
        panic!(
            "no call failed after the kill (was it too fast to see?):\n{}",
            out.stdout
        )
    });
    e2e.record_timing(
        "sidecar died->new sidecar serving (fail-closed window)",
        Duration::from_secs_f64(window.max(0.0)),
    );
    assert!(
        served.refused > 0,
        "calls in the window are refused: {}",
        out.stdout
    );
    // Refused while nothing listens; at most the call in flight when Envoy died fails otherwise.
    assert!(
        served.other_failures() <= 1,
        "calls in the window are refused, not hung or reset: {:?}",
        served.other
    );
    let sidecars = e2e.sidecars(&client.pod.uid).expect("list sidecars");
    assert_eq!(sidecars.len(), 1, "only the new sidecar is left: {sidecars:?}");
    wait_until(
        "the annotation names the new sidecar",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let p = ns.get_pod(&client.pod.name)?;
            Ok(p.filter(|p| {
                p.annotation(PROXY_ANNOTATION)
                    .is_some_and(|a| replaced.starts_with(a) || a.starts_with(&replaced))
            }))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    wait_membership(&ns, &replaced, 3);
    let before = completed(&ns, &replaced);
    let replies = ns
        .get_many(&client.pod.name, &url(&ip, 9080), 6)
        .expect("requests");
    assert_eq!(Tally::of(&replies).other, 0, "{replies}");
    assert!(
        completed(&ns, &replaced) >= before + 6,
        "the calls go through the new sidecar"
    );
}

/// Runs `load-client` in the client pod against `ip:9080` while `fault` runs on the host.
fn under_load<T: Send>(
    ns: &TestNamespace,
    client: &Enabled,
    ip: &str,
    fault: impl FnOnce() -> T + Send,
) -> (LoadSummary, T) {
    let bin = Path::new(env!("CARGO_BIN_EXE_load-client"));
    ns.e2e
        .copy_into(&client.pod.uid, "client", bin, LOAD_CLIENT)
        .expect("copy load-client into the client pod");
    std::thread::scope(|s| {
        let load = s.spawn(|| {
            ns.sh(
                &client.pod.name,
                &format!("{LOAD_CLIENT} {ip}:9080 {LOAD_RPS} {LOAD_SECONDS}"),
                Duration::from_secs(LOAD_SECONDS + 60),
            )
        });
        let t = fault();
        let out = load.join().expect("thread").expect("load-client");
        let summary = LoadSummary::parse(&out.stdout)
            .unwrap_or_else(|| panic!("no load-client summary: {} {}", out.stdout, out.stderr));
        (summary, t)
    })
}

/// Prints the load's figures and checks it really was sustained (most requests completed).
fn print_load(e2e: &E2e, what: &str, s: &LoadSummary) {
    assert!(
        s.ok() >= s.sent / 2,
        "the load was not sustained (machine overloaded?): {s:?}"
    );
    eprintln!(
        "[{}] {what}: {} requests at {LOAD_RPS}/s for {LOAD_SECONDS} s: {} ok, {} failed, {} unfinished {:?}, p99 {} ms, max {} ms",
        e2e.mode,
        s.sent,
        s.ok(),
        s.failed(),
        s.unfinished(),
        s.outcomes,
        s.p99_us.unwrap_or(0) / 1000,
        s.max_us.unwrap_or(0) / 1000
    );
}

/// `kill -9` of the agent during 200 requests/s through the client's sidecar, a restart a second
/// later: no request fails (sidecars and pinned redirects do not depend on the agent); the time
/// until the restarted agent completed its first reconcile round is recorded.
pub fn agent_kill_under_load(e2e: &E2e) {
    let Some(agent) = e2e.agent.clone() else {
        eprintln!("skipping: the agent is not run by cargo xtask e2e (no pid file)");
        return;
    };
    let (ns, client, ip) = enabled_client(e2e, "agent-kill");
    let (load, reconnect) = under_load(&ns, &client, &ip, || {
        std::thread::sleep(Duration::from_secs(5));
        agent.kill9().expect("kill -9 the agent");
        std::thread::sleep(Duration::from_secs(1));
        let t0 = Instant::now();
        agent.restart().expect("restart the agent");
        wait_until(
            "the restarted agent's first reconcile round",
            Duration::from_secs(60),
            Duration::from_millis(50),
            || {
                let m = http_get("127.0.0.1:15090", "/metrics")?;
                Ok(prometheus_value(&m, "traffic_agent_reconcile_seconds_count")
                    .filter(|n| *n >= 1.0)
                    .map(drop))
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        t0.elapsed()
    });
    print_load(e2e, "agent kill -9 + restart", &load);
    e2e.record_timing("agent restart->first reconcile round", reconnect);
    assert_eq!(
        load.failed(),
        0,
        "no request fails while the agent is down: {load:?}"
    );
    assert!(agent.alive(), "the restarted agent keeps running");
    let sidecars = e2e.sidecars(&client.pod.uid).expect("list sidecars");
    assert_eq!(
        sidecars.len(),
        1,
        "the restarted agent adopted the sidecar: {sidecars:?}"
    );
}

/// `kill -9` of the control plane during 200 requests/s, a restart two seconds later: no request
/// fails (Envoy keeps its last configuration); the time until the client's Envoy is connected to
/// the new control plane is recorded, and a change made after the restart still reaches it.
pub fn control_plane_kill_under_load(e2e: &E2e) {
    let Some(control) = e2e.control.clone() else {
        eprintln!("skipping: the control plane is not run by cargo xtask e2e (no pid file)");
        return;
    };
    let (ns, client, ip) = enabled_client(e2e, "control-kill");
    let connected = |e2e: &E2e| -> anyhow::Result<Option<()>> {
        let stats = e2e.envoy_admin(&client.sidecar, "/stats?filter=control_plane.connected_state")?;
        Ok(
            (traffic_tests::e2e_parse::stat(&stats, "control_plane.connected_state") == Some(1))
                .then_some(()),
        )
    };
    let (load, reconnect) = under_load(&ns, &client, &ip, || {
        std::thread::sleep(Duration::from_secs(5));
        control.kill9().expect("kill -9 the control plane");
        wait_until(
            "the client's Envoy to notice the control plane is gone",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || Ok(connected(e2e)?.is_none().then_some(())),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        std::thread::sleep(Duration::from_secs(2));
        let t0 = Instant::now();
        control.restart().expect("restart the control plane");
        wait_until(
            "the client's Envoy connected to the restarted control plane",
            Duration::from_secs(60),
            Duration::from_millis(50),
            || connected(e2e),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        t0.elapsed()
    });
    print_load(e2e, "control plane kill -9 + restart", &load);
    e2e.record_timing("control plane restart->sidecar reconnected", reconnect);
    assert_eq!(
        load.failed(),
        0,
        "no request fails while the control plane is down: {load:?}"
    );
    assert!(control.alive(), "the restarted control plane keeps running");
    // The new control plane serves changes: weights 100/10/0 become two members.
    for (d, w) in [("reviews-v1", 100), ("reviews-v2", 10), ("reviews-v3", 0)] {
        ns.label(
            &format!("deployment/{d}"),
            &[&format!("traffic.endpoint.weight={w}")],
        )
        .expect("label");
    }
    wait_membership(&ns, &client.sidecar, 2);
}

/// The API server stopped for 30 s and started again, during sustained requests: the agent and
/// the control plane keep running (same processes, no restart) and serving (no request fails),
/// and once the API is back they catch up with a change made right then — a Deployment enabled
/// (agent: sidecar + redirect) and endpoint weights (control plane: two members). The times from
/// "API ready" to each are recorded. (While the API is down nothing can change, so "changes
/// made meanwhile" are the ones queued the moment it is back.)
pub fn api_server_outage(e2e: &E2e) {
    let (Some(agent), Some(control)) = (e2e.agent.clone(), e2e.control.clone()) else {
        eprintln!("skipping: the agent and control plane are not run by cargo xtask e2e");
        return;
    };
    let (ns, client, ip) = enabled_client(e2e, "api-outage");
    let v1 = ns.pod("app=reviews,version=v1").expect("reviews-v1 pod");
    let (agent_pid, control_pid) = (
        agent.pid().expect("agent pid"),
        control.pid().expect("control pid"),
    );
    let api = traffic_tests::e2e_apiserver::ApiServer::of_kit();
    let bin = Path::new(env!("CARGO_BIN_EXE_load-client"));
    e2e.copy_into(&client.pod.uid, "client", bin, LOAD_CLIENT)
        .expect("copy load-client into the client pod");
    // `kubectl exec` goes through the API server: the load runs detached through the node's
    // runtime instead and leaves its summary in a file of the container.
    let load_seconds = 60;
    let container = e2e
        .app_container(&client.pod.uid, "client")
        .expect("client container");
    e2e.runtime
        .exec_app(
            &container,
            &[
                "sh",
                "-c",
                &format!("{LOAD_CLIENT} {ip}:9080 50 {load_seconds} > /load.json 2>&1"),
            ],
            true,
        )
        .expect("start the load");
    std::thread::sleep(Duration::from_secs(5));
    let stopped = api.stop().expect("stop kube-apiserver");
    let t_stop = Instant::now();
    std::thread::sleep(Duration::from_secs(30));
    assert!(
        agent.alive() && control.alive(),
        "agent and control plane survive the outage"
    );
    stopped.start().expect("start kube-apiserver");
    let t_ready = wait_until(
        "the API server ready again",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || {
            Ok(e2e
                .kubectl(&["get", "--raw", "/readyz"])
                .is_ok()
                .then(Instant::now))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("API server down for {:.1} s", (t_ready - t_stop).as_secs_f64());
    // The changes, made the moment the API is back.
    ns.label("deployment/reviews-v1", &[&format!("{ENABLED}=true")])
        .expect("label");
    for (d, w) in [("reviews-v2", 10), ("reviews-v3", 0)] {
        ns.label(
            &format!("deployment/{d}"),
            &[&format!("traffic.endpoint.weight={w}")],
        )
        .expect("label");
    }
    let t_changed = Instant::now();
    e2e.wait_agent(
        "the agent enabled reviews-v1 after the outage",
        ENABLE_TIMEOUT,
        || {
            let sc = e2e.running_sidecar(&v1.uid)?;
            Ok(sc.filter(|_| e2e.redirect_state(&v1.uid).is_ok_and(|s| s.active(&e2e.mode))))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    e2e.record_timing("API back->agent applied a change", t_changed.elapsed());
    let hosts = wait_membership(&ns, &client.sidecar, 2);
    let control_caught_up = t_changed.elapsed();
    e2e.record_timing("API back->control plane pushed a change", control_caught_up);
    // kube's default watch backoff (up to 30 s) once left both 40-60 s behind; ours retries within 4 s.
    assert!(
        control_caught_up < Duration::from_secs(20),
        "the control plane caught up {control_caught_up:?} after the API server was back"
    );
    assert!(hosts.iter().any(|(_, w)| *w == 10), "weights applied: {hosts:?}");
    // The load ends on its own; its summary is in the pod.
    let summary = wait_until(
        "the load's summary",
        Duration::from_secs(load_seconds + 60),
        Duration::from_secs(1),
        || {
            let out = e2e.runtime.exec_app(&container, &["cat", "/load.json"], false)?;
            Ok(LoadSummary::parse(&out))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    // Whether Kubernetes' node controller marked the node (and with it every pod) not ready after the
    // outage: the pods keep serving through that mark (kube-source's readiness grace).
    let marks = e2e
        .kubectl(&[
            "get",
            "events",
            "-A",
            "--field-selector",
            "reason=NodeNotReady",
            "-o",
            "name",
        ])
        .map(|out| out.lines().count())
        .unwrap_or(0);
    eprintln!("[{}] NodeNotReady events after the outage: {marks}", e2e.mode);
    eprintln!(
        "[{}] 50 requests/s for {load_seconds} s across a 30 s API outage: {} ok, {} failed {:?}",
        e2e.mode,
        summary.ok(),
        summary.failed(),
        summary.outcomes
    );
    assert_eq!(
        summary.failed(),
        0,
        "sidecars keep serving while the API is down: {summary:?}"
    );
    assert_eq!(
        (agent.pid().ok(), control.pid().ok()),
        (Some(agent_pid), Some(control_pid)),
        "neither was restarted"
    );
    assert!(agent.alive() && control.alive());
}
