//! End to end on a real Kubernetes node: `traffic-control serve` (Kubernetes mode) and
//! `traffic-agent run` as host processes, the test app of `tests/e2e/manifests/app.yaml` in a fresh
//! namespace per test, real Envoy sidecars, real redirect (eBPF or iptables).
//!
//! Run by `cargo xtask e2e` (which starts the control plane and the agent and sets the env); gated
//! off unless `TRAFFIC_E2E=1`. The redirect mode the agent runs in is a parameter
//! (`TRAFFIC_E2E_REDIRECT_MODE`, default `ebpf`): the xtask runs everything in eBPF mode, then
//! `both_modes::` again with the agent forced into iptables mode. Run serially
//! (`--test-threads=1`): `agent_lifecycle` kills and restarts the one agent.
use std::time::{Duration, Instant};

use traffic_tests::e2e::{wait_until, E2e, Pod, TestNamespace};

#[path = "e2e/churn.rs"]
mod churn;
#[path = "e2e/faults.rs"]
mod faults;
#[path = "e2e/istio_crds.rs"]
mod istio_crds;
#[path = "e2e/istio_status.rs"]
mod istio_status;
#[path = "e2e/istio_walkthrough.rs"]
mod istio_walkthrough;
#[path = "e2e/xds_auth.rs"]
mod xds_auth;
use traffic_tests::e2e_parse::{cluster_hosts, cluster_stat, outbound_connections, Tally};

const ENABLED: &str = "traffic.envoy.enabled";
const PROXY_ANNOTATION: &str = "traffic.envoy.proxy";
const MODE_ANNOTATION: &str = "traffic.redirect.mode";
/// Outbound listener of the sidecar (where redirected connections land).
const OUTBOUND_PORT: u16 = 15001;
/// Sidecar start + Envoy ready + redirect, on a 2-core VM running the whole cluster.
const ENABLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Label change -> control plane -> Envoy.
const PUSH_TIMEOUT: Duration = Duration::from_secs(45);

fn reviews_cluster(ns: &TestNamespace) -> String {
    format!("9080|{}|reviews", ns.name)
}

/// A pod with its sidecar and redirect in place.
struct Enabled {
    pod: Pod,
    sidecar: String,
}

/// Labels `deployment` enabled and waits until each of its pods has one running sidecar, the
/// redirect of the expected mode and both annotations. Records label->redirect times (with the
/// sidecar start) and sidecar-seen->redirect times (without it).
fn enable(ns: &TestNamespace, deployment: &str, selector: &str) -> Vec<Enabled> {
    let e2e = ns.e2e;
    let pods = ns.pods(selector).expect("pods");
    assert!(!pods.is_empty(), "no running pods for {selector}");
    let t0 = Instant::now();
    ns.label(&format!("deployment/{deployment}"), &[&format!("{ENABLED}=true")])
        .expect("label");
    let mut out = Vec::new();
    for pod in pods {
        let mut sidecar_seen: Option<Instant> = None;
        let sidecar = e2e
            .wait_agent(
                &format!("sidecar + {} redirect of {}", e2e.mode, pod.name),
                ENABLE_TIMEOUT,
                || {
                    let sc = e2e.running_sidecar(&pod.uid)?;
                    if sc.is_some() && sidecar_seen.is_none() {
                        sidecar_seen = Some(Instant::now());
                    }
                    let active = e2e.redirect_state(&pod.uid)?.active(&e2e.mode);
                    Ok(sc.filter(|_| active))
                },
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
        let done = Instant::now();
        e2e.record_timing("label->redirect (incl. sidecar start)", done - t0);
        if let Some(seen) = sidecar_seen {
            e2e.record_timing("sidecar running->redirect", done - seen);
        }
        let pod = wait_until(
            &format!("annotations on {}", pod.name),
            Duration::from_secs(30),
            Duration::from_millis(200),
            || {
                let p = ns.get_pod(&pod.name)?;
                Ok(p.filter(|p| {
                    p.annotation(MODE_ANNOTATION) == Some(e2e.mode.as_str())
                        && p.annotation(PROXY_ANNOTATION).is_some_and(|a| !a.is_empty())
                }))
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        out.push(Enabled { pod, sidecar });
    }
    out
}

/// Waits until the client's Envoy has the reviews cluster with `hosts` members; returns them.
fn wait_membership(ns: &TestNamespace, sidecar: &str, hosts: usize) -> Vec<(String, u32)> {
    let cluster = reviews_cluster(ns);
    let found = wait_until(
        &format!("{hosts} members of {cluster} in the client's Envoy"),
        PUSH_TIMEOUT,
        Duration::from_millis(300),
        || {
            let text = ns.e2e.envoy_admin(sidecar, "/clusters")?;
            let h = cluster_hosts(&text, &cluster);
            Ok((h.len() == hosts).then_some(h))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    found.into_iter().collect()
}

fn stats(ns: &TestNamespace, sidecar: &str) -> String {
    ns.e2e.envoy_admin(sidecar, "/stats").expect("envoy /stats")
}

fn completed(ns: &TestNamespace, sidecar: &str) -> u64 {
    cluster_stat(&stats(ns, sidecar), &reviews_cluster(ns), "upstream_rq_completed").unwrap_or(0)
}

fn url(ip: &str, port: u16) -> String {
    format!("http://{ip}:{port}/")
}

/// The steps every scenario starts with: a namespace with the app and an enabled client.
fn enabled_client<'a>(e2e: &'a E2e, scenario: &str) -> (TestNamespace<'a>, Enabled, String) {
    let ns = e2e.namespace(scenario).expect("namespace with the test app");
    let mut client = enable(&ns, "client", "app=client");
    assert_eq!(client.len(), 1);
    let client = client.remove(0);
    wait_membership(&ns, &client.sidecar, 3);
    let ip = ns.cluster_ip("reviews").expect("cluster ip");
    (ns, client, ip)
}

mod scenario {
    use super::*;

    /// 1: sidecar, annotations, redirect; the call to the Service goes through the client's Envoy.
    pub fn sidecar_and_redirect(e2e: &E2e) {
        let (ns, client, ip) = enabled_client(e2e, "sidecar");
        let sidecars = e2e.sidecars(&client.pod.uid).expect("list sidecars");
        assert_eq!(sidecars.len(), 1, "exactly one sidecar: {sidecars:?}");
        let proxy = client.pod.annotation(PROXY_ANNOTATION).unwrap_or("");
        assert!(
            proxy.starts_with(&client.sidecar) || client.sidecar.starts_with(proxy),
            "annotation {PROXY_ANNOTATION}={proxy} names the sidecar {}",
            client.sidecar
        );
        let before = completed(&ns, &client.sidecar);
        let replies = ns
            .get_many(&client.pod.name, &url(&ip, 9080), 10)
            .expect("requests");
        let tally = Tally::of(&replies);
        assert_eq!(tally.other, 0, "every request answered: {replies}");
        assert_eq!(tally.total(), 10);
        let after = completed(&ns, &client.sidecar);
        assert!(
            after >= before + 10,
            "the client's Envoy served the calls: {} upstream_rq_completed {before} -> {after}",
            reviews_cluster(&ns)
        );
    }

    /// 2: weights 100/10/0.
    pub fn weights(e2e: &E2e) {
        let (ns, client, ip) = enabled_client(e2e, "weights");
        for (d, w) in [("reviews-v1", 100), ("reviews-v2", 10), ("reviews-v3", 0)] {
            ns.label(
                &format!("deployment/{d}"),
                &[&format!("traffic.endpoint.weight={w}")],
            )
            .expect("label");
        }
        let hosts = wait_membership(&ns, &client.sidecar, 2);
        let mut weights: Vec<u32> = hosts.iter().map(|(_, w)| *w).collect();
        weights.sort();
        assert_eq!(weights, vec![10, 100], "member weights: {hosts:?}");
        let n = 220;
        let replies = ns
            .get_many(&client.pod.name, &url(&ip, 9080), n)
            .expect("requests");
        let t = Tally::of(&replies);
        eprintln!("split over {n}: {:?} (other {})", t.by_version, t.other);
        assert_eq!(t.other, 0, "every request answered");
        assert_eq!(t.count("v3"), 0, "weight 0 is never served");
        assert!((5..=50).contains(&t.count("v2")), "v2 near 20/220: {t:?}");
        assert!(t.count("v1") >= 160, "v1 near 200/220: {t:?}");
    }

    fn timed_get(ns: &TestNamespace, pod: &str, url: &str) -> (Duration, bool, String) {
        let t = Instant::now();
        let (ok, text) = ns.get(pod, url).expect("kubectl exec");
        (t.elapsed(), ok, text)
    }

    /// 3: delay and abort faults on the Service; removing them restores normal replies.
    pub fn faults(e2e: &E2e) {
        let (ns, client, ip) = enabled_client(e2e, "faults");
        let u = url(&ip, 9080);
        let c = &client.pod.name;
        ns.label(
            "service/reviews",
            &[
                "traffic.fault.delay.time=3000",
                "traffic.fault.delay.percentage=100",
            ],
        )
        .expect("label");
        wait_until(
            "the delay fault",
            PUSH_TIMEOUT,
            Duration::from_millis(200),
            || Ok((timed_get(&ns, c, &u).0 >= Duration::from_secs(3)).then_some(())),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        let (took, ok, text) = timed_get(&ns, c, &u);
        assert!(
            ok && took >= Duration::from_secs(3),
            "delayed reply: {took:?} {text}"
        );
        ns.label(
            "service/reviews",
            &[
                "traffic.fault.delay.time-",
                "traffic.fault.delay.percentage-",
                "traffic.fault.abort.status=505",
                "traffic.fault.abort.percentage=100",
            ],
        )
        .expect("label");
        wait_until(
            "the abort fault",
            PUSH_TIMEOUT,
            Duration::from_millis(200),
            || {
                let (_, ok, text) = timed_get(&ns, c, &u);
                Ok((!ok && text.contains("505")).then_some(()))
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        let (took, ok, text) = timed_get(&ns, c, &u);
        assert!(
            !ok && text.contains("505") && took < Duration::from_secs(3),
            "{took:?} {text}"
        );
        ns.label(
            "service/reviews",
            &["traffic.fault.abort.status-", "traffic.fault.abort.percentage-"],
        )
        .expect("unlabel");
        wait_until("normal replies", PUSH_TIMEOUT, Duration::from_millis(200), || {
            let (took, ok, text) = timed_get(&ns, c, &u);
            Ok((ok && text.starts_with("reviews-") && took < Duration::from_secs(2)).then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// 4: an unlabelled port is blocked (reaches Envoy, refused); a direct port bypasses Envoy.
    pub fn blocked_and_direct_ports(e2e: &E2e) {
        let (ns, client, ip) = enabled_client(e2e, "ports");
        let c = &client.pod.name;
        let cx = || outbound_connections(&stats(&ns, &client.sidecar), OUTBOUND_PORT);
        let n0 = cx();
        let (ok, text) = ns.get(c, &url(&ip, 9080)).expect("get");
        assert!(
            ok && text.starts_with("reviews-"),
            "labelled port answers: {text}"
        );
        let n1 = cx();
        assert!(
            n1 > n0,
            "labelled port goes through the outbound listener ({n0} -> {n1})"
        );
        let (ok, text) = ns.get(c, &url(&ip, 9081)).expect("get");
        assert!(!ok, "unlabelled port 9081 is blocked, got: {text}");
        let n2 = cx();
        assert!(n2 > n1, "the blocked connection reached Envoy ({n1} -> {n2})");
        let (ok, text) = ns.get(c, &url(&ip, 9082)).expect("get");
        assert!(ok && text.starts_with("reviews-"), "direct port answers: {text}");
        let n3 = cx();
        assert_eq!(n3, n2, "the direct port bypassed Envoy");
    }

    /// 5: turning the label off removes sidecar, redirect and annotation; traffic is direct again.
    pub fn disable(e2e: &E2e) {
        let (ns, client, ip) = enabled_client(e2e, "disable");
        let uid = client.pod.uid.clone();
        let (ok, _) = ns.get(&client.pod.name, &url(&ip, 9081)).expect("get");
        assert!(!ok, "9081 blocked while enabled");
        ns.label("deployment/client", &[&format!("{ENABLED}=false")])
            .expect("label");
        e2e.wait_agent("sidecar and redirect removed", ENABLE_TIMEOUT, || {
            let sidecars = e2e.sidecars(&uid)?;
            let st = e2e.redirect_state(&uid)?;
            Ok((sidecars.is_empty() && st.gone()).then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
        wait_until(
            "the proxy annotation cleared",
            Duration::from_secs(30),
            Duration::from_millis(200),
            || {
                let p = ns.get_pod(&client.pod.name)?;
                Ok(
                    p.filter(|p| p.annotation(PROXY_ANNOTATION).is_none_or(str::is_empty))
                        .map(drop),
                )
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        let (ok, text) = ns.get(&client.pod.name, &url(&ip, 9081)).expect("get");
        assert!(ok && text.starts_with("reviews-"), "direct again on 9081: {text}");
        let replies = ns
            .get_many(&client.pod.name, &url(&ip, 9080), 6)
            .expect("requests");
        assert_eq!(Tally::of(&replies).other, 0, "{replies}");
    }

    /// 6: kill -9 of the agent and a restart.
    pub fn agent_restart(e2e: &E2e) {
        let Some(agent) = e2e.agent.clone() else {
            eprintln!("skipping: the agent is not run by cargo xtask e2e (no pid file)");
            return;
        };
        let (ns, client, ip) = enabled_client(e2e, "restart");
        let v1 = ns.pod("app=reviews,version=v1").expect("reviews-v1 pod");
        let n = 40;
        let replies = std::thread::scope(|s| {
            let inflight = s.spawn(|| {
                // ~0.1 s apart so the kill and the restart fall inside the run.
                let script = format!(
                    "i=0; while [ $i -lt {n} ]; do wget -qO- -T 5 '{}' 2>/dev/null || echo ERR; sleep 0.1; i=$((i+1)); done",
                    url(&ip, 9080)
                );
                ns.sh(&client.pod.name, &script, Duration::from_secs(120))
            });
            std::thread::sleep(Duration::from_millis(500));
            agent.kill9().expect("kill -9 the agent");
            // A change while the agent is down: enable reviews-v1.
            ns.label("deployment/reviews-v1", &[&format!("{ENABLED}=true")])
                .expect("label");
            std::thread::sleep(Duration::from_secs(1));
            agent.restart().expect("restart the agent");
            inflight.join().expect("thread").expect("in-flight requests")
        });
        let t = Tally::of(&replies.stdout);
        assert_eq!(
            (t.other, t.total()),
            (0, n),
            "in-flight requests unaffected: {}",
            replies.stdout
        );
        e2e.wait_agent("reviews-v1 enabled after the restart", ENABLE_TIMEOUT, || {
            let sc = e2e.running_sidecar(&v1.uid)?;
            Ok(sc.filter(|_| e2e.redirect_state(&v1.uid).is_ok_and(|s| s.active(&e2e.mode))))
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
        // Give the restarted agent a few reconcile rounds, then: still exactly the one sidecar.
        std::thread::sleep(Duration::from_secs(3));
        let sidecars = e2e.sidecars(&client.pod.uid).expect("list sidecars");
        assert_eq!(sidecars.len(), 1, "no duplicate sidecar: {sidecars:?}");
        assert!(sidecars[0].0.starts_with(&client.sidecar) || client.sidecar.starts_with(&sidecars[0].0));
        assert_eq!(e2e.sidecars(&v1.uid).expect("list sidecars").len(), 1);
        assert!(agent.alive(), "the restarted agent keeps running");
        let replies = ns
            .get_many(&client.pod.name, &url(&ip, 9080), 6)
            .expect("requests");
        assert_eq!(Tally::of(&replies).other, 0, "{replies}");
    }

    /// 7: deleting a pod leaves no sidecar and no BPF/iptables state for it.
    pub fn pod_deletion(e2e: &E2e) {
        let (ns, client, _ip) = enabled_client(e2e, "delete");
        let uid = client.pod.uid.clone();
        ns.e2e
            .kubectl(&["-n", &ns.name, "delete", "pod", &client.pod.name, "--wait=false"])
            .expect("delete pod");
        e2e.wait_agent("no sidecar and no redirect state left", ENABLE_TIMEOUT, || {
            let sidecars = e2e.sidecars(&uid)?;
            let st = e2e.redirect_state(&uid)?;
            Ok((sidecars.is_empty() && st.gone()).then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
        // The replacement pod of the enabled Deployment gets its own sidecar.
        let new = wait_until(
            "the replacement client pod",
            Duration::from_secs(60),
            Duration::from_millis(300),
            || Ok(ns.pods("app=client")?.into_iter().find(|p| p.uid != uid)),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        e2e.wait_agent("a sidecar for the replacement", ENABLE_TIMEOUT, || {
            e2e.running_sidecar(&new.uid)
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// 8: an invalid label produces an Event on its object; everything else keeps working.
    pub fn invalid_label(e2e: &E2e) {
        let ns = e2e.namespace("invalid").expect("namespace");
        ns.label("deployment/reviews-v1", &["traffic.endpoint.weight=500"])
            .expect("label");
        let events = wait_until(
            "an Event about traffic.endpoint.weight on reviews-v1",
            PUSH_TIMEOUT,
            Duration::from_millis(500),
            || {
                let ev = ns.events_for("reviews-v1")?;
                let hits: Vec<_> = ev
                    .into_iter()
                    .filter(|(_, m)| m.contains("traffic.endpoint.weight"))
                    .collect();
                Ok((!hits.is_empty()).then_some(hits))
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        eprintln!("events: {events:?}");
        let mut client = enable(&ns, "client", "app=client");
        let client = client.remove(0);
        // The invalid weight is ignored: reviews-v1 keeps the default weight, all three serve.
        wait_membership(&ns, &client.sidecar, 3);
        let ip = ns.cluster_ip("reviews").expect("ip");
        let replies = ns
            .get_many(&client.pod.name, &url(&ip, 9080), 30)
            .expect("requests");
        let t = Tally::of(&replies);
        assert_eq!(t.other, 0, "{replies}");
        assert!(t.count("v1") > 0, "v1 still served: {t:?}");
    }
}

/// Scenarios 1-5 and the sidecar's death, run once per redirect mode (scenario 9 is the iptables
/// pass of these).
mod both_modes {
    use super::*;

    #[test]
    fn enabling_the_client_starts_one_sidecar_annotates_the_pod_and_steers_the_service_call_through_envoy() {
        let Some(e2e) = E2e::require() else { return };
        scenario::sidecar_and_redirect(&e2e);
    }

    #[test]
    fn weights_100_10_0_give_two_members_never_serve_weight_0_and_split_near_100_to_10() {
        let Some(e2e) = E2e::require() else { return };
        scenario::weights(&e2e);
    }

    #[test]
    fn delay_and_abort_fault_labels_apply_and_removing_them_restores_normal_replies() {
        let Some(e2e) = E2e::require() else { return };
        scenario::faults(&e2e);
    }

    #[test]
    fn an_unlabelled_port_is_blocked_and_a_direct_port_bypasses_envoy() {
        let Some(e2e) = E2e::require() else { return };
        scenario::blocked_and_direct_ports(&e2e);
    }

    #[test]
    fn turning_the_label_off_removes_sidecar_redirect_and_annotation_and_traffic_is_direct_again() {
        let Some(e2e) = E2e::require() else { return };
        scenario::disable(&e2e);
    }

    #[test]
    fn istio_walkthrough_all_v1_75_25_jason_all_v2_circuit_breaker_delay_mirror_and_service_entry_timeout_applied_with_kubectl(
    ) {
        let Some(e2e) = E2e::require() else { return };
        istio_walkthrough::run(&e2e);
    }

    #[test]
    fn a_sidecar_that_dies_is_replaced_and_meanwhile_the_pod_fails_closed_connections_refused_never_bypassing_the_proxy(
    ) {
        let Some(e2e) = E2e::require() else { return };
        faults::sidecar_death(&e2e);
    }
}

/// Scenarios 6-8 (the datapath is whatever the agent runs; the xtask runs these in eBPF mode).
mod agent_lifecycle {
    use super::*;

    #[test]
    fn after_kill_9_and_restart_there_is_no_duplicate_sidecar_in_flight_requests_pass_and_missed_changes_apply(
    ) {
        let Some(e2e) = E2e::require() else { return };
        scenario::agent_restart(&e2e);
    }

    #[test]
    fn kill_9_of_the_agent_under_200_requests_per_second_fails_no_request_and_the_new_agent_adopts_the_sidecar(
    ) {
        let Some(e2e) = E2e::require() else { return };
        faults::agent_kill_under_load(&e2e);
    }

    #[test]
    fn kill_9_of_the_control_plane_under_200_requests_per_second_fails_no_request_and_sidecars_reconnect() {
        let Some(e2e) = E2e::require() else { return };
        faults::control_plane_kill_under_load(&e2e);
    }

    #[test]
    fn after_enabled_pods_are_created_and_deleted_in_batches_the_nodes_bpf_pins_sidecars_iptables_and_cgroups_are_back_to_baseline(
    ) {
        let Some(e2e) = E2e::require() else { return };
        churn::churn(&e2e);
    }

    #[test]
    fn with_the_api_server_stopped_for_30_s_agent_and_control_plane_keep_serving_and_catch_up_with_changes_without_restart(
    ) {
        let Some(e2e) = E2e::require() else { return };
        faults::api_server_outage(&e2e);
    }

    #[test]
    fn xds_auth_a_sidecar_keeps_its_config_across_token_renewal_and_control_plane_restart_and_another_pods_token_gets_nothing(
    ) {
        let Some(e2e) = E2e::require() else { return };
        xds_auth::sidecar_authenticates_renews_and_survives_a_control_plane_restart(&e2e);
    }

    #[test]
    fn deleting_a_pod_leaves_no_sidecar_and_no_redirect_state() {
        let Some(e2e) = E2e::require() else { return };
        scenario::pod_deletion(&e2e);
    }

    #[test]
    fn an_invalid_label_produces_an_event_and_everything_else_keeps_working() {
        let Some(e2e) = E2e::require() else { return };
        scenario::invalid_label(&e2e);
    }
}
