//! Real Envoy, real sockets: Istio ServiceEntries (STATIC, DNS, DNS_ROUND_ROBIN, TCP with an
//! address), a VirtualService timeout and DestinationRule subsets on ServiceEntry hosts, and the
//! outbound policy for HTTP hosts nobody declared. The sidecar config is folded into a static
//! bootstrap, so Envoy itself rejects anything invalid (it would not start: the "no NACK" check).
//!
//! Without a redirect the "original destination" of a connection is the outbound listener's own
//! address, so every ServiceEntry port here is the outbound port; `passthrough` to an unknown
//! destination is proven through the eBPF redirect in `tests/tests/outbound_policy_ebpf.rs`.
//!
//! Needs an Envoy binary; skips without one unless `CI=true`.
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::live::*;
use traffic_translate::model::MeshModel;
use traffic_translate::render::static_bootstrap;
use traffic_translate::snapshot::MeshSnapshot;
use traffic_translate::translate::{translate, Options, OutboundPolicy};

/// `GET path` to `addr` with `Host: host`; the whole response, or `None` when the connection
/// was closed without one.
fn get_host(addr: SocketAddr, host: &str, path: &str, headers: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {host}\r\n{headers}connection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    (!out.is_empty()).then_some(out)
}

fn slow_on_slow_path(_: usize, path: &str) -> (u16, Duration) {
    let delay = if path == "/slow" {
        Duration::from_secs(2)
    } else {
        Duration::ZERO
    };
    (200, delay)
}

/// The ServiceEntries, VirtualServices and DestinationRules of the test, every port `port`.
fn model(port: u16, app: u16, dns_app: u16, slow_app: u16) -> MeshModel {
    let yaml = format!(
        r#"
istio:
  serviceEntries:
  - metadata: {{name: static}}
    spec:
      hosts: [static.example]
      location: MESH_EXTERNAL
      resolution: STATIC
      ports: [{{number: {port}, name: http, protocol: HTTP}}]
      endpoints:
      - {{address: 127.0.0.21, ports: {{http: {app}}}, labels: {{version: v1}}}}
      - {{address: 127.0.0.22, ports: {{http: {app}}}, labels: {{version: v2}}, weight: 3}}
  - metadata: {{name: subsets}}
    spec:
      hosts: [subsets.example]
      resolution: STATIC
      ports: [{{number: {port}, name: http, protocol: HTTP, targetPort: {app}}}]
      endpoints:
      - {{address: 127.0.0.21, labels: {{version: v1}}}}
      - {{address: 127.0.0.22, labels: {{version: v2}}}}
  - metadata: {{name: dns}}
    spec:
      hosts: [localhost]
      resolution: DNS
      ports: [{{number: {port}, name: http, protocol: HTTP, targetPort: {dns_app}}}]
  - metadata: {{name: slow}}
    spec:
      hosts: [slow.example]
      resolution: DNS_ROUND_ROBIN
      ports: [{{number: {port}, name: http, protocol: HTTP}}]
      endpoints: [{{address: localhost, ports: {{http: {slow_app}}}}}]
  - metadata: {{name: db}}
    spec:
      hosts: [db.example]
      addresses: [127.0.0.40]
      resolution: STATIC
      ports: [{{number: {port}, name: tcp, protocol: TCP}}]
      endpoints: [{{address: 127.0.0.23, ports: {{tcp: {app}}}}}]
  virtualServices:
  - metadata: {{name: slow}}
    spec:
      hosts: [slow.example]
      http: [{{timeout: 0.5s, route: [{{destination: {{host: slow.example}}}}]}}]
  - metadata: {{name: subsets}}
    spec:
      hosts: [subsets.example]
      http:
      - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
        route: [{{destination: {{host: subsets.example, subset: v2}}}}]
      - route: [{{destination: {{host: subsets.example, subset: v1}}}}]
  destinationRules:
  - metadata: {{name: subsets}}
    spec:
      host: subsets.example
      subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
"#
    );
    MeshModel::from_yaml_str(&yaml).unwrap()
}

fn start(envoy_bin: &std::path::PathBuf, model: &MeshModel, policy: OutboundPolicy, outbound: u16) -> Envoy {
    let admin = free_port();
    let opts = Options {
        outbound_port: outbound,
        stats_port: None,
        admin_port: admin,
        outbound_policy: policy,
        ..Options::default()
    };
    let t = translate(model, &opts);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    t.snapshot.validate().unwrap();
    let bootstrap = static_bootstrap("client.default", &t.snapshot.for_node("client.default"), admin).unwrap();
    start_envoy(envoy_bin, &bootstrap, admin)
}

#[test]
fn service_entries_resolve_static_and_dns_and_take_virtual_service_rules_in_envoy() {
    let Some(envoy_bin) = envoy_or_skip() else { return };
    let (outbound, app, dns_app, slow_app) = (free_port(), free_port(), free_port(), free_port());
    scripted_backend("127.0.0.21", app, ok);
    scripted_backend("127.0.0.22", app, ok);
    let dns_hits = scripted_backend("127.0.0.1", dns_app, ok);
    scripted_backend("127.0.0.1", slow_app, slow_on_slow_path);
    backend("127.0.0.23", app);
    let model = model(outbound, app, dns_app, slow_app);
    let _envoy = start(&envoy_bin, &model, OutboundPolicy::Block, outbound);
    // Any address: an HTTP ServiceEntry port without `addresses` is matched by port + Host.
    let at: SocketAddr = ([127, 0, 0, 30], outbound).into();
    let get = |host: &str, path: &str, headers: &str| get_host(at, host, path, headers).unwrap();
    let (v1, v2) = ("hello from 127.0.0.21", "hello from 127.0.0.22");

    // STATIC: EDS from the entry's endpoints, `ports[name]`, weights 1:3.
    let n = 400;
    let mut to_v2 = 0;
    for _ in 0..n {
        let r = get("static.example", "/", "");
        assert_eq!(status(&r), 200, "{r}");
        if body(&r) == v2 {
            to_v2 += 1;
        } else {
            assert_eq!(body(&r), v1);
        }
    }
    let share = f64::from(to_v2) * 100.0 / f64::from(n);
    eprintln!("STATIC endpoints weighted 1:3: {share:.1} % to the weight-3 endpoint over {n} requests");
    assert!((65.0..=85.0).contains(&share), "{share} %");
    // With the port in the Host header too.
    assert_eq!(status(&get(&format!("static.example:{outbound}"), "/", "")), 200);

    // DestinationRule subsets and a VirtualService on a ServiceEntry host.
    for _ in 0..5 {
        assert_eq!(body(&get("subsets.example", "/", "end-user: jason\r\n")), v2);
        assert_eq!(body(&get("subsets.example", "/", "")), v1);
    }

    // DNS: `localhost` resolved by Envoy (STRICT_DNS) to the backend on 127.0.0.1.
    let r = get("localhost", "/", "");
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(body(&r), "hello from 127.0.0.1");
    assert_eq!(dns_hits.load(std::sync::atomic::Ordering::SeqCst), 1);

    // DNS_ROUND_ROBIN endpoint + the VirtualService's 0.5 s timeout: a 2 s answer is a 504
    // after about 0.5 s; a quick one passes.
    let started = Instant::now();
    let r = get("slow.example", "/slow", "");
    let took = started.elapsed();
    eprintln!("VirtualService timeout 0.5s on a ServiceEntry host: {} after {took:?}", status(&r));
    assert_eq!(status(&r), 504, "{r}");
    assert!(
        (Duration::from_millis(450)..Duration::from_millis(1500)).contains(&took),
        "{took:?}"
    );
    assert_eq!(status(&get("slow.example", "/fast", "")), 200);

    // TCP with an address: the chain matches 127.0.0.40 and tcp_proxies to the endpoint (a
    // backend that closes after answering).
    let r = http_get(([127, 0, 0, 40], outbound).into(), "/", "").unwrap();
    assert_eq!(body(&r), "hello from 127.0.0.23", "{r}");

    // REGISTRY_ONLY: an HTTP host no ServiceEntry declares gets 502.
    let r = get("unknown.example", "/", "");
    assert_eq!(status(&r), 502, "{r}");
}

#[test]
fn allow_any_serves_the_same_entries_and_block_refuses_unknown_tcp_in_envoy() {
    let Some(envoy_bin) = envoy_or_skip() else { return };
    let (outbound, app, dns_app, slow_app) = (free_port(), free_port(), free_port(), free_port());
    scripted_backend("127.0.0.21", app, ok);
    scripted_backend("127.0.0.22", app, ok);
    scripted_backend("127.0.0.1", dns_app, ok);
    backend("127.0.0.23", app);
    let model = model(outbound, app, dns_app, slow_app);
    {
        // ALLOW_ANY: Envoy takes the config (unknown hosts go to the ORIGINAL_DST cluster, which
        // here would be Envoy itself: not requested), the entries work as before.
        let _envoy = start(&envoy_bin, &model, OutboundPolicy::Passthrough, outbound);
        let at: SocketAddr = ([127, 0, 0, 30], outbound).into();
        assert_eq!(status(&get_host(at, "localhost", "/", "").unwrap()), 200);
        assert_eq!(status(&get_host(at, "static.example", "/", "").unwrap()), 200);
    }
    // Without any HTTP entry on the port, REGISTRY_ONLY closes an unknown connection at once
    // (the `blackhole` cluster), no bytes answered.
    let outbound2 = free_port();
    let tcp_only = MeshModel::from_yaml_str(&format!(
        "istio:\n  serviceEntries:\n  - metadata: {{name: db}}\n    spec: {{hosts: [db.example], addresses: [127.0.0.40], resolution: STATIC, \
         ports: [{{number: {outbound2}, name: tcp, protocol: TCP}}], endpoints: [{{address: 127.0.0.23, ports: {{tcp: {app}}}}}]}}\n"
    ))
    .unwrap();
    let _envoy = start(&envoy_bin, &tcp_only, OutboundPolicy::Block, outbound2);
    assert_eq!(
        body(&http_get(([127, 0, 0, 40], outbound2).into(), "/", "").unwrap()),
        "hello from 127.0.0.23"
    );
    assert_eq!(http_get(([127, 0, 0, 41], outbound2).into(), "/", ""), None);
}
