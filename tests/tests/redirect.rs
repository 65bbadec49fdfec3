//! The redirect suite, run against every datapath: real pods (netns + cgroup v2), a real transparent
//! proxy, real clients and a real backend. Each case is a function over a [`Datapath`]; the
//! `suite!` invocations at the bottom instantiate every case once per datapath.
//!
//! Needs root (skips locally otherwise, fails under `CI=true`). Run:
//! `cargo test -p traffic-tests --test redirect`
#![expect(clippy::unwrap_used, reason = "a test fails loudly")]

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use traffic_redirect::ebpf::{EbpfConfig, EbpfRedirector};
use traffic_redirect::iptables::{Flavour, IptablesError, IptablesRedirector};
use traffic_redirect::{PodKey, PodRedirect, RedirectError, Redirector, Settings};
use traffic_tests::wire::{unmap, ClientResult, ProxyEvent, ProxyLine};
use traffic_tests::{require_privileged, ScratchDir, TestPod};

/// One datapath under test: how to build it over a per-test scratch directory.
struct Datapath {
    /// Builds a redirector whose durable state lives under `scratch` (iptables state dir, eBPF pin root).
    make: fn(scratch: &Path) -> Box<dyn Redirector>,
    /// Where the scratch dir lives (`/sys/fs/bpf` for eBPF pin roots).
    scratch_base: fn() -> std::path::PathBuf,
    /// Whether `enable` must reject a missing cgroup (eBPF attaches there; iptables does not use it).
    needs_cgroup: bool,
    /// Removes what the datapath left under `scratch` before the directory itself goes.
    purge: fn(scratch: &Path),
}

const IPTABLES_NFT: Datapath = Datapath {
    make: |scratch| Box::new(IptablesRedirector::new(Flavour::Nft, scratch).unwrap()),
    scratch_base: std::env::temp_dir,
    needs_cgroup: false,
    purge: |_| {},
};
const IPTABLES_LEGACY: Datapath = Datapath {
    make: |scratch| Box::new(IptablesRedirector::new(Flavour::Legacy, scratch).unwrap()),
    scratch_base: std::env::temp_dir,
    needs_cgroup: false,
    purge: |_| {},
};
/// The scratch dir (in bpffs) is the pin root.
const EBPF: Datapath = Datapath {
    make: |scratch| {
        let config = EbpfConfig {
            pin_root: scratch.to_path_buf(),
            ..EbpfConfig::default()
        };
        Box::new(
            EbpfRedirector::new(config).expect("load the eBPF redirector (run `cargo xtask build-ebpf`)"),
        )
    },
    scratch_base: || "/sys/fs/bpf".into(),
    needs_cgroup: true,
    purge: |scratch| {
        if let Err(e) = EbpfRedirector::purge_pin_root(scratch) {
            eprintln!("cleanup: purge {}: {e}", scratch.display());
        }
    },
};

/// Per-test world: one scratch dir and a redirector over it (dropped first, then purged).
struct World {
    dp: &'static Datapath,
    redirector: Box<dyn Redirector>,
    scratch: ScratchDir,
}

impl Drop for World {
    fn drop(&mut self) {
        (self.dp.purge)(self.scratch.path());
    }
}

impl World {
    fn new(dp: &'static Datapath) -> Self {
        let scratch = ScratchDir::new(&(dp.scratch_base)(), "trs").unwrap();
        let redirector = (dp.make)(scratch.path());
        Self {
            dp,
            scratch,
            redirector,
        }
    }
    /// A second redirector over the same durable state (an agent restart).
    fn restarted(&self) -> Box<dyn Redirector> {
        (self.dp.make)(self.scratch.path())
    }
}

fn redirect_for(pod: &TestPod, settings: Settings) -> PodRedirect {
    PodRedirect {
        key: PodKey::new(pod.name.clone()).unwrap(),
        cgroup: pod.cgroup().to_path_buf(),
        netns: pod.netns(),
        proxy_cgroups: vec![pod.proxy_cgroup().to_path_buf()],
        settings,
    }
}

fn settings(proxy_port: u16, direct: &[u16]) -> Settings {
    Settings {
        proxy_port,
        direct_ports: direct.iter().copied().collect(),
        ..Settings::default()
    }
}

fn args(cmd: &str, dsts: &[&str]) -> Vec<String> {
    std::iter::once(cmd.to_string())
        .chain(dsts.iter().map(|d| d.to_string()))
        .collect()
}

/// Runs `test-client tcp <dsts>` in the pod and returns one result per destination (all succeeded).
fn tcp(pod: &TestPod, dsts: &[&str]) -> Vec<ClientResult> {
    let out = pod.run_client(&args("tcp", dsts)).unwrap();
    assert!(out.success, "client failed: {out:?}");
    let res = out.client_results();
    assert_eq!(res.len(), dsts.len(), "{out:?}");
    res
}

/// Asserts each result went through `proxy`, which learned exactly the destination the client dialed.
fn assert_proxied(proxy: &traffic_tests::pod::Proxy, results: &[ClientResult]) {
    proxy.wait_events(results.len(), Duration::from_secs(10));
    let events = proxy.lines();
    for e in &events {
        match &e.event {
            ProxyEvent::Learned { orig, .. } => {
                assert_eq!(
                    orig.to_string(),
                    e.req,
                    "the proxy learned another destination than dialed"
                )
            }
            ProxyEvent::Failed { .. } => panic!("proxy failed: {e:?}"),
        }
    }
    let by_req: HashMap<&str, &ProxyLine> = events.iter().map(|e| (e.req.as_str(), e)).collect();
    for r in results {
        assert!(!r.went_direct(), "{r:?} reached the backend directly");
        assert_eq!(
            r.reply.dst,
            unmap(r.dst),
            "the backend got another destination: {r:?}"
        );
        let dst = unmap(r.dst).to_string();
        assert!(
            by_req.contains_key(dst.as_str()),
            "the proxy never saw {dst} (events: {events:?})"
        );
    }
}

fn assert_direct(results: &[ClientResult]) {
    for r in results {
        assert!(r.went_direct(), "{r:?} did not reach the backend directly");
        assert_eq!(r.reply.dst, unmap(r.dst), "{r:?}");
    }
}

mod cases {
    use super::*;

    pub fn proxied_with_exact_destination(dp: &'static Datapath) {
        let w = World::new(dp);
        let pod = TestPod::new("tt").unwrap();
        let proxy = pod.start_proxy(15001).unwrap();
        w.redirector
            .enable(&redirect_for(&pod, settings(15001, &[])))
            .unwrap();
        // v4, v6, and v4 through a v6 socket (a v4-mapped address).
        let res = tcp(
            &pod,
            &[
                "10.96.0.10:9080",
                "[fd00:96::10]:9080",
                "[::ffff:10.96.0.12]:9080",
            ],
        );
        assert_proxied(&proxy, &res);
        w.redirector
            .disable(&PodKey::new(pod.name.clone()).unwrap())
            .unwrap();
    }

    pub fn proxy_upstreams_are_not_redirected(dp: &'static Datapath) {
        let w = World::new(dp);
        let pod = TestPod::new("tt").unwrap();
        let proxy = pod.start_proxy(15001).unwrap();
        w.redirector
            .enable(&redirect_for(&pod, settings(15001, &[])))
            .unwrap();
        let res = tcp(
            &pod,
            &["10.96.0.11:9080", "10.96.0.12:8080", "[fd00:96::11]:8080"],
        );
        assert_proxied(&proxy, &res);
        // A loop would show up as extra accepted connections whose peer is the proxy's own upstream.
        std::thread::sleep(Duration::from_millis(300));
        let events = proxy.events();
        assert_eq!(
            events.len(),
            res.len(),
            "proxy accepted more than the clients opened: {events:?}"
        );
        // In iptables mode conntrack shows the proxy the client's own address; an upstream looping
        // back would come from the proxy's upstream socket, which the backend reports as reply.src.
        let upstreams: BTreeSet<SocketAddr> = res.iter().map(|r| r.reply.src).collect();
        assert!(
            events.iter().all(|e| !upstreams.contains(&e.peer())),
            "{events:?}"
        );
    }

    pub fn direct_ports_loopback_and_udp_bypass(dp: &'static Datapath) {
        let w = World::new(dp);
        let pod = TestPod::new("tt").unwrap();
        let proxy = pod.start_proxy(15001).unwrap();
        let _local = pod.start_local_backend(&[7777]).unwrap();
        w.redirector
            .enable(&redirect_for(&pod, settings(15001, &[9443])))
            .unwrap();
        assert_direct(&tcp(
            &pod,
            &[
                "10.96.0.10:9443",
                "[fd00:96::10]:9443",
                "[::ffff:10.96.0.10]:9443",
            ],
        ));
        assert_direct(&tcp(&pod, &["127.0.0.1:7777", "[::1]:7777"]));
        let out = pod
            .run_client(&args("udp", &["10.96.0.10:9053", "[fd00:96::10]:9053"]))
            .unwrap();
        assert!(out.success, "{out:?}");
        assert_direct(&out.client_results());
        // Redirected and bypassing traffic side by side: only the redirected port reaches the proxy.
        assert_proxied(&proxy, &tcp(&pod, &["10.96.0.10:9080"]));
        assert_eq!(proxy.events().len(), 1, "{:?}", proxy.events());
    }

    pub fn a_thousand_concurrent_connections(dp: &'static Datapath) {
        let w = World::new(dp);
        let pod = TestPod::new("tt").unwrap();
        let proxy = pod.start_proxy(15001).unwrap();
        w.redirector
            .enable(&redirect_for(&pod, settings(15001, &[])))
            .unwrap();
        // 4 processes x 250 connections, every destination distinct (v4 and v6 mixed).
        let batches: Vec<Vec<String>> = (0..4)
            .map(|p| {
                (0..250)
                    .map(|i| {
                        if i % 5 == 0 {
                            format!("[fd00:96::{:x}:{:x}]:9080", p + 1, i + 1)
                        } else {
                            format!("10.96.{}.{}:{}", p + 1, i + 1, [9080, 8080][i % 2])
                        }
                    })
                    .collect()
            })
            .collect();
        let results: Vec<ClientResult> = std::thread::scope(|s| {
            let handles: Vec<_> = batches
                .iter()
                .map(|b| {
                    let pod = &pod;
                    s.spawn(move || {
                        let dsts: Vec<&str> = b.iter().map(String::as_str).collect();
                        tcp(pod, &dsts)
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.len(), 1000);
        let distinct: BTreeSet<SocketAddr> = results.iter().map(|r| r.dst).collect();
        assert_eq!(distinct.len(), 1000);
        assert_proxied(&proxy, &results);
        assert_eq!(proxy.events().len(), 1000);
    }

    pub fn pods_are_isolated_and_outsiders_untouched(dp: &'static Datapath) {
        let w = World::new(dp);
        let a = TestPod::new("tt").unwrap();
        let b = TestPod::new("tt").unwrap();
        let proxy_a = a.start_proxy(15001).unwrap();
        let proxy_b = b.start_proxy(15002).unwrap();
        w.redirector
            .enable(&redirect_for(&a, settings(15001, &[9443])))
            .unwrap();
        w.redirector
            .enable(&redirect_for(&b, settings(15002, &[8080])))
            .unwrap();
        assert_direct(&tcp(&a, &["10.96.0.10:9443"]));
        assert_proxied(&proxy_a, &tcp(&a, &["10.96.0.10:8080"]));
        assert_direct(&tcp(&b, &["10.96.0.10:8080"]));
        assert_proxied(&proxy_b, &tcp(&b, &["10.96.0.10:9443"]));
        assert_eq!(proxy_a.events().len(), 1);
        assert_eq!(proxy_b.events().len(), 1);
        // Outside every pod cgroup and outside the pod netns: the backend netns dialing a service.
        let client = traffic_tests::bins::path(traffic_tests::bins::CLIENT).unwrap();
        let out = a
            .backend_placement()
            .run(&client, &args("tcp", &["10.96.0.10:9080"]))
            .unwrap();
        assert!(out.success, "{out:?}");
        assert_direct(&out.client_results());
        assert_eq!(proxy_a.events().len(), 1);
        let keys: Vec<String> = w
            .redirector
            .list()
            .unwrap()
            .into_iter()
            .map(|r| r.key.to_string())
            .collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
        // Disabling one pod leaves the other redirected.
        w.redirector
            .disable(&PodKey::new(a.name.clone()).unwrap())
            .unwrap();
        assert_direct(&tcp(&a, &["10.96.0.10:8080"]));
        assert_proxied(&proxy_b, &tcp(&b, &["10.96.0.20:9443"]));
    }

    pub fn disable_restores_exactly(dp: &'static Datapath) {
        let w = World::new(dp);
        let pod = TestPod::new("tt").unwrap();
        let proxy = pod.start_proxy(15001).unwrap();
        let before = pod.datapath_snapshot().unwrap();
        let redirect = redirect_for(&pod, settings(15001, &[9443]));
        w.redirector.enable(&redirect).unwrap();
        let enabled = pod.datapath_snapshot().unwrap();
        assert_ne!(before, enabled, "enable changed nothing visible");
        // Idempotent: a second identical enable changes nothing.
        w.redirector.enable(&redirect).unwrap();
        assert_eq!(pod.datapath_snapshot().unwrap(), enabled);
        assert_proxied(&proxy, &tcp(&pod, &["10.96.0.10:9080"]));
        w.redirector.disable(&redirect.key).unwrap();
        assert_eq!(
            pod.datapath_snapshot().unwrap(),
            before,
            "disable left something behind"
        );
        assert!(w.redirector.list().unwrap().is_empty());
        assert_direct(&tcp(&pod, &["10.96.0.10:9080", "[fd00:96::10]:9080"]));
        w.redirector.disable(&redirect.key).unwrap();
        assert_eq!(proxy.events().len(), 1);
    }

    pub fn enable_again_updates_settings(dp: &'static Datapath) {
        let w = World::new(dp);
        let pod = TestPod::new("tt").unwrap();
        let proxy = pod.start_proxy(15001).unwrap();
        let mut redirect = redirect_for(&pod, settings(15001, &[9443]));
        w.redirector.enable(&redirect).unwrap();
        assert_direct(&tcp(&pod, &["10.96.0.10:9443"]));
        redirect.settings = settings(15001, &[9080]);
        w.redirector.enable(&redirect).unwrap();
        assert_direct(&tcp(&pod, &["10.96.0.10:9080"]));
        assert_proxied(&proxy, &tcp(&pod, &["10.96.0.10:9443"]));
        let listed = w.redirector.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].settings, redirect.settings);
    }

    pub fn state_survives_a_restart(dp: &'static Datapath) {
        let w = World::new(dp);
        let pod = TestPod::new("tt").unwrap();
        let proxy = pod.start_proxy(15001).unwrap();
        let before = pod.datapath_snapshot().unwrap();
        let redirect = redirect_for(&pod, settings(15001, &[9443]));
        w.redirector.enable(&redirect).unwrap();
        let again = w.restarted();
        let listed = again.list().unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].key, redirect.key);
        assert_eq!(listed[0].settings, redirect.settings);
        assert_proxied(&proxy, &tcp(&pod, &["10.96.0.10:9080"]));
        again.disable(&redirect.key).unwrap();
        assert_eq!(pod.datapath_snapshot().unwrap(), before);
    }

    pub fn bad_input_is_a_typed_error_and_leaves_nothing(dp: &'static Datapath) {
        let w = World::new(dp);
        let pod = TestPod::new("tt").unwrap();
        let before = pod.datapath_snapshot().unwrap();
        // The netns is gone.
        let mut gone = redirect_for(&pod, Settings::default());
        gone.netns = "/run/netns/traffic-test-does-not-exist".into();
        let err = w.redirector.enable(&gone).unwrap_err();
        assert!(matches!(err, RedirectError::NetnsGone { .. }), "{err:?}");
        // A path that is not a network namespace.
        let mut not_ns = redirect_for(&pod, Settings::default());
        not_ns.netns = "/etc/hostname".into();
        assert!(w.redirector.enable(&not_ns).is_err());
        if w.dp.needs_cgroup {
            let mut no_cg = redirect_for(&pod, Settings::default());
            no_cg.cgroup = pod.cgroup().join("does-not-exist");
            let err = w.redirector.enable(&no_cg).unwrap_err();
            assert!(matches!(err, RedirectError::CgroupMissing { .. }), "{err:?}");
        }
        assert_eq!(
            pod.datapath_snapshot().unwrap(),
            before,
            "a failed enable left something behind"
        );
        assert!(w.redirector.list().unwrap().is_empty());
        // Disabling something never enabled is fine.
        w.redirector
            .disable(&PodKey::new("never-enabled").unwrap())
            .unwrap();
    }

    pub fn a_dead_pod_can_still_be_disabled(dp: &'static Datapath) {
        let w = World::new(dp);
        let pod = TestPod::new("tt").unwrap();
        let redirect = redirect_for(&pod, settings(15001, &[]));
        w.redirector.enable(&redirect).unwrap();
        let out = std::process::Command::new("ip")
            .args(["netns", "delete", pod.netns_name()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        w.redirector.disable(&redirect.key).unwrap();
        assert!(w.redirector.list().unwrap().is_empty());
    }
}

/// Instantiates every case for one datapath.
macro_rules! suite {
    ($name:ident, $dp:expr) => {
        mod $name {
            use super::*;

            fn run(case: fn(&'static Datapath)) {
                if require_privileged() {
                    case($dp);
                }
            }

            #[test]
            fn a_client_in_the_pod_reaches_the_proxy_which_learns_the_exact_original_destination() {
                run(cases::proxied_with_exact_destination)
            }
            #[test]
            fn the_proxys_own_upstream_connections_are_never_redirected() {
                run(cases::proxy_upstreams_are_not_redirected)
            }
            #[test]
            fn direct_ports_loopback_destinations_and_udp_bypass_the_proxy() {
                run(cases::direct_ports_loopback_and_udp_bypass)
            }
            #[test]
            fn a_thousand_concurrent_connections_each_keep_their_own_original_destination() {
                run(cases::a_thousand_concurrent_connections)
            }
            #[test]
            fn two_pods_do_not_affect_each_other_and_outsiders_are_never_redirected() {
                run(cases::pods_are_isolated_and_outsiders_untouched)
            }
            #[test]
            fn disable_restores_the_pod_exactly_and_the_client_then_connects_directly() {
                run(cases::disable_restores_exactly)
            }
            #[test]
            fn enabling_again_with_other_settings_updates_them() {
                run(cases::enable_again_updates_settings)
            }
            #[test]
            fn a_restarted_redirector_lists_and_disables_what_the_previous_one_enabled() {
                run(cases::state_survives_a_restart)
            }
            #[test]
            fn bad_input_gives_a_typed_error_and_leaves_nothing_half_applied() {
                run(cases::bad_input_is_a_typed_error_and_leaves_nothing)
            }
            #[test]
            fn a_pod_whose_netns_is_gone_can_still_be_disabled() {
                run(cases::a_dead_pod_can_still_be_disabled)
            }
        }
    };
}

suite!(iptables_nft, &IPTABLES_NFT);
suite!(iptables_legacy, &IPTABLES_LEGACY);
suite!(ebpf, &EBPF);

#[test]
fn without_redirect_a_pod_reaches_every_service_address_directly() {
    if !require_privileged() {
        return;
    }
    let pod = TestPod::new("tt").unwrap();
    assert_direct(&tcp(
        &pod,
        &["10.96.0.10:9080", "10.96.3.7:8080", "[fd00:96::10]:9080"],
    ));
    let out = pod
        .run_client(&args("udp", &["10.96.0.10:9053", "[fd00:96::10]:9053"]))
        .unwrap();
    assert!(out.success, "{out:?}");
    assert_direct(&out.client_results());
}

#[test]
fn iptables_rejects_a_netns_already_redirected_for_another_pod() {
    if !require_privileged() {
        return;
    }
    let scratch = ScratchDir::temp("trs").unwrap();
    let r = IptablesRedirector::new(Flavour::Nft, scratch.path()).unwrap();
    let pod = TestPod::new("tt").unwrap();
    r.enable(&redirect_for(&pod, Settings::default())).unwrap();
    let mut other = redirect_for(&pod, Settings::default());
    other.key = PodKey::new("someone-else").unwrap();
    let err = r.enable(&other).unwrap_err();
    assert!(
        matches!(
            err,
            RedirectError::Iptables(IptablesError::OwnedByOtherPod { .. })
        ),
        "{err:?}"
    );
    assert_eq!(r.list().unwrap().len(), 1);
}

#[test]
fn iptables_rolls_back_both_families_when_recording_state_fails() {
    if !require_privileged() {
        return;
    }
    let scratch = ScratchDir::temp("trs").unwrap();
    let r = IptablesRedirector::new(Flavour::Legacy, scratch.path()).unwrap();
    let pod = TestPod::new("tt").unwrap();
    let before = pod.datapath_snapshot().unwrap();
    let redirect = redirect_for(&pod, Settings::default());
    // The state file is written through `<key>.json.tmp`; a directory there makes the write fail
    // after both families were applied, so enable must undo them.
    std::fs::create_dir(scratch.path().join(format!("{}.json.tmp", redirect.key))).unwrap();
    let err = r.enable(&redirect).unwrap_err();
    assert!(
        matches!(err, RedirectError::Iptables(IptablesError::State { .. })),
        "{err:?}"
    );
    assert_eq!(
        pod.datapath_snapshot().unwrap(),
        before,
        "enable left rules behind"
    );
    assert!(r.list().unwrap().is_empty());
    assert_direct(&tcp(&pod, &["10.96.0.10:9080", "[fd00:96::10]:9080"]));
}
