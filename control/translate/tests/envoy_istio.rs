//! Real Envoy, real sockets: Istio VirtualServices and DestinationRules, translated into one
//! sidecar's config (folded into a static bootstrap, so Envoy itself rejects anything invalid:
//! it would not start), do what the walk-throughs users copy say. Services get loopback
//! "cluster IPs" on the outbound port, as in `envoy_serves.rs`.
//!
//! Needs an Envoy binary; skips without one unless `CI=true`.
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::live::*;
use traffic_translate::model::MeshModel;
use traffic_translate::render::static_bootstrap;
use traffic_translate::snapshot::MeshSnapshot;
use traffic_translate::translate::{translate, Options};

#[test]
fn virtual_services_route_split_fault_time_out_and_retry_in_envoy() {
    let Some(envoy_bin) = envoy_or_skip() else { return };
    let (outbound, admin, app) = (free_port(), free_port(), free_port());
    scripted_backend("127.0.0.2", app, ok);
    scripted_backend("127.0.0.3", app, ok);
    scripted_backend("127.0.0.9", app, |_, path| {
        (
            200,
            if path == "/slow" {
                Duration::from_secs(2)
            } else {
                Duration::ZERO
            },
        )
    });
    // Two 503s, then 200s.
    let flaky = scripted_backend("127.0.0.11", app, |n, _| {
        (if n < 2 { 503 } else { 200 }, Duration::ZERO)
    });

    let svc = |name: &str, ip: &str, app_label: &str| {
        format!(
            "- {{name: {name}, clusterIPs: [{ip}], ports: [{{name: http, port: {outbound}, targetPort: {app}}}], \
             selector: {{app: {app_label}}}}}\n"
        )
    };
    let mut yaml = String::from("services:\n");
    yaml += &svc("reviews", "127.0.0.1", "reviews");
    yaml += &svc("weighted", "127.0.0.5", "reviews");
    yaml += &svc("faulty", "127.0.0.6", "reviews");
    yaml += &svc("delayed", "127.0.0.7", "reviews");
    yaml += &svc("slow", "127.0.0.8", "slow");
    yaml += &svc("flaky", "127.0.0.10", "flaky");
    yaml += "pods:\n";
    yaml += "- {name: reviews-v1, ip: 127.0.0.2, labels: {app: reviews, version: v1}}\n";
    yaml += "- {name: reviews-v2, ip: 127.0.0.3, labels: {app: reviews, version: v2}}\n";
    yaml += "- {name: slow-a, ip: 127.0.0.9, labels: {app: slow}}\n";
    yaml += "- {name: flaky-a, ip: 127.0.0.11, labels: {app: flaky}}\n";
    let subsets = "subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]";
    let vs = |name: &str, http: &str| {
        format!("  - metadata: {{name: {name}}}\n    spec: {{hosts: [{name}], http: {http}}}\n")
    };
    yaml += "istio:\n  destinationRules:\n";
    for host in ["reviews", "weighted"] {
        yaml += &format!("  - metadata: {{name: {host}}}\n    spec: {{host: {host}, {subsets}}}\n");
    }
    yaml += "  virtualServices:\n";
    yaml += &vs(
        "reviews",
        r#"[{match: [{headers: {end-user: {exact: jason}}}, {headers: {cookie: {regex: "^(.*?;)?(user=jason)(;.*)?$"}}}],
             route: [{destination: {host: reviews, subset: v2}}]},
            {route: [{destination: {host: reviews, subset: v1}}]}]"#,
    );
    yaml += &vs(
        "weighted",
        "[{route: [{destination: {host: weighted, subset: v1}, weight: 75}, {destination: {host: weighted, subset: v2}, weight: 25}]}]",
    );
    yaml += &vs(
        "faulty",
        "[{fault: {abort: {httpStatus: 503, percentage: {value: 100}}}, route: [{destination: {host: faulty}}]}]",
    );
    yaml += &vs(
        "delayed",
        "[{fault: {delay: {fixedDelay: 300ms, percentage: {value: 100}}}, route: [{destination: {host: delayed}}]}]",
    );
    yaml += &vs("slow", "[{timeout: 0.5s, route: [{destination: {host: slow}}]}]");
    yaml += &vs(
        "flaky",
        "[{retries: {attempts: 3, retryOn: 5xx}, route: [{destination: {host: flaky}}]}]",
    );
    let model = MeshModel::from_yaml_str(&yaml).unwrap();
    let opts = Options {
        outbound_port: outbound,
        stats_port: None,
        admin_port: admin,
        ..Options::default()
    };
    let t = translate(&model, &opts);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    t.snapshot.validate().unwrap();
    let bootstrap =
        static_bootstrap("client.default", &t.snapshot.for_node("client.default"), admin).unwrap();
    // Envoy refuses to start on a config it rejects: starting is the "no NACK" check.
    let _envoy = start_envoy(&envoy_bin, &bootstrap, admin);
    let at = |last: u8| -> SocketAddr { ([127, 0, 0, last], outbound).into() };
    let get = |last: u8, path: &str, headers: &str| http_get(at(last), path, headers).unwrap();
    let (v1, v2) = ("hello from 127.0.0.2", "hello from 127.0.0.3");

    // Header exact match and the cookie regex -> v2; everyone else -> v1.
    assert_eq!(body(&get(1, "/", "end-user: jason\r\n")), v2);
    // (Istio's regex wants `user=jason` first or right after a `;`, no space.)
    assert_eq!(body(&get(1, "/", "cookie: user=jason; b=2\r\n")), v2);
    assert_eq!(body(&get(1, "/", "cookie: a=1;user=jason\r\n")), v2);
    for headers in ["", "end-user: mallory\r\n", "cookie: user=jasonx\r\n"] {
        for _ in 0..5 {
            let r = get(1, "/", headers);
            assert_eq!(status(&r), 200, "{r}");
            assert_eq!(body(&r), v1, "{headers:?}");
        }
    }

    // 75/25 within ±3 % over 2,000 requests.
    let n = 2000;
    let mut to_v1 = 0;
    for _ in 0..n {
        let r = get(5, "/", "");
        assert_eq!(status(&r), 200, "{r}");
        if body(&r) == v1 {
            to_v1 += 1;
        } else {
            assert_eq!(body(&r), v2);
        }
    }
    let share = f64::from(to_v1) * 100.0 / f64::from(n);
    eprintln!("weighted 75/25: {share:.1} % to v1 over {n} requests");
    assert!((72.0..=78.0).contains(&share), "{share} % to v1");

    // Fault abort and delay.
    let r = get(6, "/", "");
    assert_eq!(status(&r), 503, "{r}");
    assert!(body(&r).contains("fault filter abort"), "{r}");
    let start = Instant::now();
    assert_eq!(status(&get(7, "/", "")), 200);
    assert!(
        start.elapsed() >= Duration::from_millis(290),
        "{:?}",
        start.elapsed()
    );

    // Timeout: a 2 s answer behind a 0.5 s route timeout is a 504 after about 0.5 s.
    let start = Instant::now();
    let r = get(8, "/slow", "");
    assert_eq!(status(&r), 504, "{r}");
    // Under 1.9 s: the timeout answered, not the 2 s backend (a loaded CI machine adds latency).
    assert!(
        start.elapsed() < Duration::from_millis(1900),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(status(&get(8, "/fast", "")), 200);

    // Retries turn two 503s into a 200.
    let r = get(10, "/", "");
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(
        flaky.load(Ordering::SeqCst),
        3,
        "two failed attempts and one good"
    );
}

#[test]
fn destination_rules_eject_outliers_and_overflow_the_connection_pool_in_envoy() {
    let Some(envoy_bin) = envoy_or_skip() else { return };
    let (outbound, admin, app) = (free_port(), free_port(), free_port());
    scripted_backend("127.0.0.12", app, |_, _| (500, Duration::ZERO));
    scripted_backend("127.0.0.13", app, ok);
    scripted_backend("127.0.0.15", app, |_, _| (200, Duration::from_millis(500)));

    let svc = |name: &str, ip: &str| {
        format!(
            "- {{name: {name}, clusterIPs: [{ip}], ports: [{{name: http, port: {outbound}, targetPort: {app}}}], \
             selector: {{app: {name}}}}}\n"
        )
    };
    let mut yaml = String::from("services:\n");
    yaml += &svc("ejecting", "127.0.0.1");
    yaml += &svc("pool", "127.0.0.14");
    yaml += "pods:\n";
    yaml += "- {name: bad, ip: 127.0.0.12, labels: {app: ejecting}}\n";
    yaml += "- {name: good, ip: 127.0.0.13, labels: {app: ejecting}}\n";
    yaml += "- {name: pool-a, ip: 127.0.0.15, labels: {app: pool}}\n";
    yaml += r#"istio:
  virtualServices:
  - metadata: {name: ejecting}
    spec: {hosts: [ejecting], http: [{route: [{destination: {host: ejecting}}]}]}
  - metadata: {name: pool}
    spec: {hosts: [pool], http: [{route: [{destination: {host: pool}}]}]}
  destinationRules:
  - metadata: {name: ejecting}
    spec:
      host: ejecting
      trafficPolicy:
        outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100}
  - metadata: {name: pool}
    spec:
      host: pool
      trafficPolicy:
        connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1, http2MaxRequests: 1}}
"#;
    let model = MeshModel::from_yaml_str(&yaml).unwrap();
    let opts = Options {
        outbound_port: outbound,
        stats_port: None,
        admin_port: admin,
        ..Options::default()
    };
    let t = translate(&model, &opts);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let bootstrap =
        static_bootstrap("client.default", &t.snapshot.for_node("client.default"), admin).unwrap();
    let _envoy = start_envoy(&envoy_bin, &bootstrap, admin);
    let at = move |last: u8| -> SocketAddr { ([127, 0, 0, last], outbound).into() };
    let admin_addr: SocketAddr = ([127, 0, 0, 1], admin).into();

    // Outlier detection: the backend answering 500 is ejected after its first 500; then only 200s.
    let mut fives = 0;
    for _ in 0..10 {
        if status(&http_get(at(1), "/", "").unwrap()) == 500 {
            fives += 1;
        }
    }
    assert!(fives <= 2, "{fives} answers of 500 before the ejection");
    for _ in 0..30 {
        let r = http_get(at(1), "/", "").unwrap();
        assert_eq!(status(&r), 200, "{r}");
    }
    let clusters = body(&http_get(admin_addr, "/clusters", "").unwrap()).to_string();
    let flags = format!("{outbound}|default|ejecting::127.0.0.12:{app}::health_flags::/failed_outlier_check");
    assert!(clusters.contains(&flags), "{flags} not in\n{clusters}");

    // Connection pool: 1 connection, 1 pending request; 6 concurrent half-second requests overflow.
    let handles: Vec<_> = (0..6)
        .map(|_| std::thread::spawn(move || http_get(at(14), "/", "").map(|r| status(&r))))
        .collect();
    let statuses: Vec<Option<u16>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let overflowed = statuses.iter().filter(|s| **s == Some(503)).count();
    let served = statuses.iter().filter(|s| **s == Some(200)).count();
    eprintln!("pool: {statuses:?}");
    assert!(overflowed >= 3 && served >= 1, "{statuses:?}");
    let stats =
        body(&http_get(admin_addr, "/stats?filter=upstream_rq_pending_overflow", "").unwrap()).to_string();
    let want = format!("cluster.{outbound}|default|pool.outbound.upstream_rq_pending_overflow: ");
    let n: u32 = stats
        .lines()
        .find_map(|l| l.strip_prefix(&want))
        .unwrap_or_else(|| panic!("{want} not in {stats}"))
        .trim()
        .parse()
        .unwrap();
    // Most overflow the pending queue; one may hit the request limit (http2MaxRequests) instead.
    assert!(
        n >= 1 && n as usize <= overflowed,
        "{n} pending overflows for {overflowed} 503s: {stats}"
    );
}

#[test]
fn destination_rules_hash_by_cookie_balance_randomly_and_limit_requests_per_connection_in_envoy() {
    let Some(envoy_bin) = envoy_or_skip() else { return };
    let (outbound, admin, app) = (free_port(), free_port(), free_port());
    scripted_backend("127.0.0.32", app, ok);
    scripted_backend("127.0.0.33", app, ok);
    let (requests, conns) = scripted_backend_conns("127.0.0.35", app, ok);

    let svc = |name: &str, ip: &str, app_label: &str| {
        format!(
            "- {{name: {name}, clusterIPs: [{ip}], ports: [{{name: http, port: {outbound}, targetPort: {app}}}], \
             selector: {{app: {app_label}}}}}\n"
        )
    };
    let mut yaml = String::from("services:\n");
    yaml += &svc("sticky", "127.0.0.1", "pair");
    yaml += &svc("random", "127.0.0.31", "pair");
    yaml += &svc("onebyone", "127.0.0.34", "single");
    yaml += "pods:\n";
    yaml += "- {name: pair-a, ip: 127.0.0.32, labels: {app: pair}}\n";
    yaml += "- {name: pair-b, ip: 127.0.0.33, labels: {app: pair}}\n";
    yaml += "- {name: single-a, ip: 127.0.0.35, labels: {app: single}}\n";
    yaml += r#"istio:
  virtualServices:
  - metadata: {name: sticky}
    spec: {hosts: [sticky], http: [{route: [{destination: {host: sticky}}]}]}
  - metadata: {name: random}
    spec: {hosts: [random], http: [{route: [{destination: {host: random}}]}]}
  - metadata: {name: onebyone}
    spec: {hosts: [onebyone], http: [{route: [{destination: {host: onebyone}}]}]}
  destinationRules:
  - metadata: {name: sticky}
    spec: {host: sticky, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: user, ttl: 60s}}}}}
  - metadata: {name: random}
    spec: {host: random, trafficPolicy: {loadBalancer: {simple: RANDOM}}}
  - metadata: {name: onebyone}
    spec: {host: onebyone, trafficPolicy: {connectionPool: {http: {maxRequestsPerConnection: 1}}}}
"#;
    let model = MeshModel::from_yaml_str(&yaml).unwrap();
    let opts = Options {
        outbound_port: outbound,
        stats_port: None,
        admin_port: admin,
        ..Options::default()
    };
    let t = translate(&model, &opts);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let bootstrap =
        static_bootstrap("client.default", &t.snapshot.for_node("client.default"), admin).unwrap();
    let _envoy = start_envoy(&envoy_bin, &bootstrap, admin);
    let at = |last: u8| -> SocketAddr { ([127, 0, 0, last], outbound).into() };

    // Consistent hash by cookie: Envoy sets `user` (Max-Age 60) and the cookie sticks to one pod.
    let first = http_get(at(1), "/", "").unwrap();
    let cookie_line = first
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie: user="))
        .unwrap_or_else(|| panic!("no cookie in {first}"));
    assert!(cookie_line.contains("Max-Age=60"), "{cookie_line}");
    let cookie = cookie_line
        .split_once(':')
        .unwrap()
        .1
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let pinned = body(&first).to_string();
    for _ in 0..20 {
        let r = http_get(at(1), "/", &format!("cookie: {cookie}\r\n")).unwrap();
        assert_eq!(body(&r), pinned);
    }
    // Other cookies spread over both pods.
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..40 {
        seen.insert(body(&http_get(at(1), "/", &format!("cookie: user={i}\r\n")).unwrap()).to_string());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // RANDOM: both pods serve.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        seen.insert(body(&http_get(at(31), "/", "").unwrap()).to_string());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // maxRequestsPerConnection 1: every request on its own upstream connection.
    for _ in 0..10 {
        assert_eq!(status(&http_get(at(34), "/", "").unwrap()), 200);
    }
    assert_eq!(requests.load(Ordering::SeqCst), 10);
    assert_eq!(conns.load(Ordering::SeqCst), 10);
}

#[test]
fn a_virtual_service_bound_to_a_gateway_serves_through_the_ingress_gateway_envoy() {
    let Some(envoy_bin) = envoy_or_skip() else { return };
    let (http_port, admin, app) = (free_port(), free_port(), free_port());
    scripted_backend("127.0.0.42", app, ok);
    scripted_backend("127.0.0.43", app, ok);
    let yaml = format!(
        r#"services:
- name: httpbin
  clusterIPs: [10.96.0.40]
  ports: [{{name: http, port: 8000, targetPort: {app}}}]
  selector: {{app: httpbin}}
pods:
- {{name: httpbin-v1, ip: 127.0.0.42, labels: {{app: httpbin, version: v1}}}}
- {{name: httpbin-v2, ip: 127.0.0.43, labels: {{app: httpbin, version: v2}}}}
istio:
  gateways:
  - metadata: {{name: httpbin-gateway}}
    spec:
      selector: {{istio: ingressgateway}}
      servers: [{{port: {{number: 80, name: http, protocol: HTTP}}, hosts: ["*"]}}]
  destinationRules:
  - metadata: {{name: httpbin}}
    spec: {{host: httpbin, subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]}}
  virtualServices:
  - metadata: {{name: httpbin}}
    spec:
      hosts: ["*"]
      gateways: [httpbin-gateway]
      http:
      - match: [{{uri: {{prefix: /status}}}}, {{uri: {{prefix: /delay}}}}]
        route: [{{destination: {{host: httpbin, port: {{number: 8000}}, subset: v2}}}}]
      - match: [{{uri: {{exact: /headers}}}}]
        route: [{{destination: {{host: httpbin, subset: v1}}}}]
"#
    );
    let model = MeshModel::from_yaml_str(&yaml).unwrap();
    let opts = Options {
        ingress_http_port: http_port,
        stats_port: None,
        admin_port: admin,
        ..Options::default()
    };
    let t = translate(&model, &opts);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    t.snapshot.validate().unwrap();
    let view = t.snapshot.for_node(traffic_translate::translate::INGRESS_NODE_ID);
    let bootstrap = static_bootstrap("traffic-ingress", &view, admin).unwrap();
    let _envoy = start_envoy(&envoy_bin, &bootstrap, admin);
    let at: SocketAddr = ([127, 0, 0, 1], http_port).into();
    let r = http_get(at, "/status/200", "").unwrap();
    assert_eq!((status(&r), body(&r)), (200, "hello from 127.0.0.43"), "{r}");
    let r = http_get(at, "/headers", "").unwrap();
    assert_eq!((status(&r), body(&r)), (200, "hello from 127.0.0.42"), "{r}");
    // No rule matches: 404 from the gateway, nothing reaches a backend.
    assert_eq!(status(&http_get(at, "/other", "").unwrap()), 404);
}

#[test]
fn a_tcp_route_splits_connections_by_weight_in_envoy() {
    let Some(envoy_bin) = envoy_or_skip() else { return };
    let (outbound, admin, app) = (free_port(), free_port(), free_port());
    // These close after each answer: over tcp_proxy nothing else ends the connection.
    backend("127.0.0.52", app);
    backend("127.0.0.53", app);
    let yaml = format!(
        r#"services:
- {{name: db, clusterIPs: [127.0.0.51], ports: [{{name: tcp, port: {outbound}, targetPort: {app}}}], selector: {{app: db}}}}
pods:
- {{name: db-v1, ip: 127.0.0.52, labels: {{app: db, version: v1}}}}
- {{name: db-v2, ip: 127.0.0.53, labels: {{app: db, version: v2}}}}
istio:
  destinationRules:
  - metadata: {{name: db}}
    spec: {{host: db, subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]}}
  virtualServices:
  - metadata: {{name: db}}
    spec:
      hosts: [db]
      tcp: [{{route: [{{destination: {{host: db, subset: v1}}, weight: 80}}, {{destination: {{host: db, subset: v2}}, weight: 20}}]}}]
"#
    );
    let model = MeshModel::from_yaml_str(&yaml).unwrap();
    let opts = Options {
        outbound_port: outbound,
        stats_port: None,
        admin_port: admin,
        ..Options::default()
    };
    let t = translate(&model, &opts);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let bootstrap =
        static_bootstrap("client.default", &t.snapshot.for_node("client.default"), admin).unwrap();
    let _envoy = start_envoy(&envoy_bin, &bootstrap, admin);
    let at: SocketAddr = ([127, 0, 0, 51], outbound).into();
    let n = 1000;
    let mut to_v1 = 0;
    for _ in 0..n {
        let r = http_get(at, "/", "").unwrap();
        // Proxied as bytes: the backend's own answer, no Envoy headers.
        assert!(!r.to_ascii_lowercase().contains("x-envoy"), "{r}");
        if body(&r) == "hello from 127.0.0.52" {
            to_v1 += 1;
        }
    }
    let share = f64::from(to_v1) * 100.0 / f64::from(n);
    eprintln!("tcp 80/20: {share:.1} % to v1 over {n} connections");
    assert!((75.0..=85.0).contains(&share), "{share}");
}
