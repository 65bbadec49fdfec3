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
    let bootstrap =
        static_bootstrap("client.default", &t.snapshot.for_node("client.default"), admin).unwrap();
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
    eprintln!(
        "VirtualService timeout 0.5s on a ServiceEntry host: {} after {took:?}",
        status(&r)
    );
    assert_eq!(status(&r), 504, "{r}");
    assert!(
        // Under 1.9 s: the answer came from the timeout, not from the 2 s backend (loaded CI).
        (Duration::from_millis(450)..Duration::from_millis(1900)).contains(&took),
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

/// A TLS 1.2 ClientHello naming `sni` (enough for Envoy's tls_inspector; no handshake follows).
fn client_hello(sni: &str) -> Vec<u8> {
    let name = sni.as_bytes();
    let len16 = |n: usize| u16::try_from(n).unwrap().to_be_bytes();
    // server_name extension: list of one host_name.
    let mut list = vec![0u8];
    list.extend(len16(name.len()));
    list.extend(name);
    let mut ext = vec![0u8, 0];
    ext.extend(len16(list.len() + 2));
    ext.extend(len16(list.len()));
    ext.extend(list);
    let mut body = vec![3u8, 3];
    body.extend([7u8; 32]); // random
    body.push(0); // session id
    body.extend([0, 2, 0, 0x2f]); // one cipher suite
    body.extend([1, 0]); // null compression
    body.extend(len16(ext.len()));
    body.extend(ext);
    let mut hs = vec![1u8, 0];
    hs.extend(len16(body.len()));
    hs.extend(body);
    let mut record = vec![0x16u8, 3, 1];
    record.extend(len16(hs.len()));
    record.extend(hs);
    record
}

/// A TCP backend on `ip:port` that reads what arrives first and answers `<tag> got <n> bytes`.
fn tagged_tcp_backend(ip: &str, port: u16, tag: &'static str) {
    let listener = std::net::TcpListener::bind((ip, port)).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).unwrap_or(0);
            let _ = write!(conn, "{tag} got {n} bytes");
        }
    });
}

/// Sends a ClientHello for `sni` to `addr`; what came back before the connection closed.
fn hello(addr: SocketAddr, sni: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&client_hello(sni)).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn tls_service_entries_are_chosen_by_sni_in_envoy() {
    let Some(envoy_bin) = envoy_or_skip() else { return };
    let (outbound, app) = (free_port(), free_port());
    tagged_tcp_backend("127.0.0.24", app, "tls-a");
    tagged_tcp_backend("127.0.0.25", app, "tls-b");
    let entry = |name: &str, host: &str, ip: &str, protocol: &str| {
        format!(
            "  - metadata: {{name: {name}}}\n    spec: {{hosts: [{host}], resolution: STATIC, \
             ports: [{{number: {outbound}, name: tls, protocol: {protocol}, targetPort: {app}}}], endpoints: [{{address: {ip}}}]}}\n"
        )
    };
    let yaml = format!(
        "istio:\n  serviceEntries:\n{}{}",
        entry("a", "a.example", "127.0.0.24", "TLS"),
        entry("b", "b.example", "127.0.0.25", "HTTPS"),
    );
    let model = MeshModel::from_yaml_str(&yaml).unwrap();
    let _envoy = start(&envoy_bin, &model, OutboundPolicy::Block, outbound);
    let at: SocketAddr = ([127, 0, 0, 30], outbound).into();
    let n = client_hello("a.example").len();
    assert_eq!(hello(at, "a.example"), format!("tls-a got {n} bytes"));
    assert_eq!(hello(at, "b.example"), format!("tls-b got {n} bytes"));
    // An SNI no entry names: the default chain (REGISTRY_ONLY: blackhole) closes it.
    assert_eq!(hello(at, "c.example"), "");
}

/// Every kind of entry at once (HTTP/GRPC without addresses, HTTP and TCP on a VIP and a CIDR,
/// TLS/HTTPS on two ports, MONGO, NONE, STATIC with localities, DNS, DNS_ROUND_ROBIN, subsets on
/// a DNS host) under both policies: Envoy starts on it, i.e. accepts every resource.
#[test]
fn every_kind_of_entry_is_accepted_by_envoy() {
    let Some(envoy_bin) = envoy_or_skip() else { return };
    let yaml = r#"
istio:
  serviceEntries:
  - metadata: {name: httpbin}
    spec: {hosts: [httpbin.org], resolution: DNS, ports: [{number: 80, name: http, protocol: HTTP}, {number: 443, name: https, protocol: HTTPS}]}
  - metadata: {name: grpc}
    spec: {hosts: [grpc.example], resolution: DNS_ROUND_ROBIN, ports: [{number: 80, name: grpc, protocol: GRPC}, {number: 8443, name: tls, protocol: TLS}]}
  - metadata: {name: vip}
    spec:
      hosts: [api.internal]
      addresses: [240.0.0.1, 10.20.0.0/16]
      location: MESH_INTERNAL
      resolution: STATIC
      ports: [{number: 8080, name: http, protocol: HTTP}, {number: 9000, name: tcp, protocol: TCP}]
      endpoints:
      - {address: 10.20.0.5, labels: {version: v1}, locality: r1/z1/s1, weight: 2}
      - {address: 10.20.0.6, labels: {version: v2}, locality: r1/z2}
  - metadata: {name: mongo}
    spec: {hosts: [mongo.example], ports: [{number: 27017, name: mongo, protocol: MONGO}]}
  - metadata: {name: wild}
    spec: {hosts: ["*.wild.example"], resolution: NONE, ports: [{number: 80, name: http, protocol: HTTP}, {number: 443, name: https, protocol: HTTPS}]}
  virtualServices:
  - metadata: {name: httpbin}
    spec: {hosts: [httpbin.org], http: [{timeout: 3s, route: [{destination: {host: httpbin.org, subset: a}}]}]}
  - metadata: {name: api}
    spec: {hosts: [api.internal], http: [{route: [{destination: {host: api.internal, port: {number: 8080}, subset: v2}, weight: 20}, {destination: {host: api.internal, port: {number: 8080}, subset: v1}, weight: 80}]}]}
  destinationRules:
  - metadata: {name: httpbin}
    spec: {host: httpbin.org, trafficPolicy: {connectionPool: {tcp: {maxConnections: 10}}, outlierDetection: {consecutive5xxErrors: 3}}, subsets: [{name: a, labels: {}}]}
  - metadata: {name: api}
    spec: {host: api.internal, subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]}
"#;
    let model = MeshModel::from_yaml_str(yaml).unwrap();
    for policy in [OutboundPolicy::Block, OutboundPolicy::Passthrough] {
        let _envoy = start(&envoy_bin, &model, policy, free_port());
    }
}
