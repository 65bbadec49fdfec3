//! Real Envoy, real sockets: the translated config of one sidecar (folded into a static bootstrap,
//! no control plane) does what the labels say. Services get loopback "cluster IPs" on the
//! outbound port, so a plain connect to `127.0.0.x:<outbound port>` arrives at the outbound
//! listener with that original destination, no redirect needed.
//!
//! Needs an Envoy binary (see `envoy_accepts.rs`); skips without one unless `CI=true`.
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::live::*;
use traffic_translate::model::MeshModel;
use traffic_translate::render::static_bootstrap;
use traffic_translate::snapshot::MeshSnapshot;
use traffic_translate::translate::{translate, Options};

#[test]
fn a_sidecar_config_routes_hashes_faults_blocks_and_exposes_only_prometheus_stats() {
    let Some(envoy_bin) = envoy_or_skip() else { return };
    let (outbound, stats, admin, app) = (free_port(), free_port(), free_port(), free_port());
    backend("127.0.0.2", app);
    backend("127.0.0.3", app);
    // 127.0.0.4 (weight 0) has no backend: reaching it would fail the request.

    let svc = |name: &str, ip: &str, labels: &str| {
        format!(
            "- {{name: {name}, clusterIPs: [{ip}], ports: [{{port: {outbound}, targetPort: {app}}}], \
             selector: {{app: web}}, labels: {{{labels}}}}}\n"
        )
    };
    let p = format!("traffic.port.{outbound}");
    let mut yaml = String::from("services:\n");
    yaml += &svc(
        "web",
        "127.0.0.1",
        &format!("{p}: http, traffic.hash.cookie.name: mycookie, traffic.hash.cookie.ttl: '60'"),
    );
    yaml += &svc(
        "faulty",
        "127.0.0.5",
        &format!("{p}: http, traffic.fault.abort.status: '505', traffic.fault.abort.percentage: '100'"),
    );
    yaml += &svc(
        "slow",
        "127.0.0.6",
        &format!("{p}: http, traffic.fault.delay.time: 300ms, traffic.fault.delay.percentage: '100'"),
    );
    yaml += &svc("raw", "127.0.0.7", &format!("{p}: tcp"));
    yaml += &svc("unlabelled", "127.0.0.8", "");
    yaml += &svc(
        "limited",
        "127.0.0.9",
        &format!("{p}: http, traffic.rate.limit: '100'"),
    );
    yaml += "pods:\n";
    yaml += "- {name: web-a, ip: 127.0.0.2, node: n1, labels: {app: web}}\n";
    yaml += "- {name: web-b, ip: 127.0.0.3, node: n1, labels: {app: web}}\n";
    yaml += "- {name: web-c, ip: 127.0.0.4, node: n1, labels: {app: web, traffic.endpoint.weight: '0'}}\n";
    let model = MeshModel::from_yaml_str(&yaml).unwrap();
    let opts = Options {
        outbound_port: outbound,
        stats_port: Some(stats),
        admin_port: admin,
        ..Options::default()
    };
    let t = translate(&model, &opts);
    assert!(t.label_errors.is_empty(), "{:?}", t.label_errors);
    let bootstrap =
        static_bootstrap("client.default", &t.snapshot.for_node("client.default"), admin).unwrap();

    let _envoy = start_envoy(&envoy_bin, &bootstrap, admin);

    let at = |last: u8| -> SocketAddr { ([127, 0, 0, last], outbound).into() };

    // Cookie hash: Envoy generates the cookie with Max-Age; the same cookie sticks to one pod.
    let first = http_get(at(1), "/", "").unwrap();
    assert_eq!(status(&first), 200, "{first}");
    let cookie_line = first
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap();
    assert!(
        cookie_line.contains("mycookie=") && cookie_line.contains("Max-Age=60"),
        "{cookie_line}"
    );
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
    for _ in 0..10 {
        let r = http_get(at(1), "/", &format!("cookie: {cookie}\r\n")).unwrap();
        assert_eq!(body(&r), pinned);
    }
    // Weight 0 pod never gets traffic (it has no backend: it would answer 503).
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let r = http_get(at(1), "/", "").unwrap();
        assert_eq!(status(&r), 200, "{r}");
        seen.insert(body(&r).to_string());
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["hello from 127.0.0.2", "hello from 127.0.0.3"]
    );

    // Faults.
    assert_eq!(status(&http_get(at(5), "/", "").unwrap()), 505);
    let start = Instant::now();
    assert_eq!(status(&http_get(at(6), "/", "").unwrap()), 200);
    // Envoy's timers may fire a millisecond or two early.
    assert!(
        start.elapsed() >= Duration::from_millis(290),
        "{:?}",
        start.elapsed()
    );

    // tcp: proxied as bytes (the backend's own HTTP answer, no Envoy headers).
    let r = http_get(at(7), "/", "").unwrap();
    assert_eq!(status(&r), 200);
    assert!(
        !r.to_ascii_lowercase().contains("x-envoy-upstream-service-time"),
        "{r}"
    );
    // No protocol: blocked (connection closed without an answer).
    assert_eq!(http_get(at(8), "/", ""), None);

    // Rate limit 100 KiB/s: the token bucket starts full (one second's worth), so 200 KiB take
    // about 1 s; the unlimited service far less.
    let start = Instant::now();
    let r = http_get(at(9), "/big", "").unwrap();
    let limited = start.elapsed();
    assert_eq!(body(&r).len(), 200 * 1024);
    let start = Instant::now();
    assert_eq!(body(&http_get(at(1), "/big", "").unwrap()).len(), 200 * 1024);
    let unlimited = start.elapsed();
    assert!(limited >= Duration::from_millis(900), "limited {limited:?}");
    // Far less: under 800 ms (not 1 s of token bucket), with room for a loaded CI machine.
    assert!(unlimited < Duration::from_millis(800), "unlimited {unlimited:?}");

    // Stats listener: Prometheus text only, with the names the original project's users know.
    let stats_addr: SocketAddr = ([127, 0, 0, 1], stats).into();
    let prom = http_get(stats_addr, "/stats/prometheus", "").unwrap();
    assert_eq!(status(&prom), 200);
    let want = format!(
        "envoy_cluster_outbound_upstream_rq_completed{{envoy_cluster_name=\"{outbound}|default|web\"}}"
    );
    assert!(prom.contains(&want), "{want} missing");
    assert_eq!(status(&http_get(stats_addr, "/config_dump", "").unwrap()), 404);
    assert_eq!(status(&http_get(stats_addr, "/quitquitquit", "").unwrap()), 404);
}

#[test]
fn tracing_samples_the_labelled_share_of_requests_into_zipkin() {
    let Some(envoy_bin) = envoy_or_skip() else { return };
    let (outbound, admin, app) = (free_port(), free_port(), free_port());
    backend("127.0.0.22", app);
    let (zipkin_port, bodies) = zipkin_collector();
    let svc = |name: &str, ip: &str, labels: &str| {
        format!(
            "- {{name: {name}, clusterIPs: [{ip}], ports: [{{port: {outbound}, targetPort: {app}}}], \
             selector: {{app: web}}, labels: {{traffic.port.{outbound}: http{labels}}}}}\n"
        )
    };
    let mut yaml = String::from("services:\n");
    yaml += &svc("all", "127.0.0.1", ", traffic.tracing.enabled: 'true'");
    yaml += &svc(
        "half",
        "127.0.0.23",
        ", traffic.tracing.enabled: 'true', traffic.tracing.sampling: '50'",
    );
    yaml += &svc("none", "127.0.0.24", "");
    yaml += "pods:\n- {name: web-a, ip: 127.0.0.22, labels: {app: web}}\n";
    let model = MeshModel::from_yaml_str(&yaml).unwrap();
    let opts = Options {
        outbound_port: outbound,
        stats_port: None,
        admin_port: admin,
        zipkin: Some(format!("127.0.0.1:{zipkin_port}").parse().unwrap()),
        ..Options::default()
    };
    let t = translate(&model, &opts);
    let bootstrap =
        static_bootstrap("client.default", &t.snapshot.for_node("client.default"), admin).unwrap();
    let _envoy = start_envoy(&envoy_bin, &bootstrap, admin);

    let at = |last: u8| -> SocketAddr { ([127, 0, 0, last], outbound).into() };
    for _ in 0..10 {
        assert_eq!(status(&http_get(at(1), "/", "").unwrap()), 200);
        assert_eq!(status(&http_get(at(24), "/", "").unwrap()), 200);
    }
    for _ in 0..40 {
        assert_eq!(status(&http_get(at(23), "/", "").unwrap()), 200);
    }
    // Envoy's Zipkin tracer flushes every 5 s (or per 5 spans).
    let count = |cluster: &str| -> usize {
        let bodies = bodies.lock().unwrap();
        bodies
            .iter()
            .flat_map(|b| serde_json::from_str::<Vec<serde_json::Value>>(b).unwrap())
            .filter(|span| span["tags"]["upstream_cluster"].as_str() == Some(cluster))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let all = format!("{outbound}|default|all");
    while count(&all) < 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(6));
    let (n_all, n_half, n_none) = (
        count(&all),
        count(&format!("{outbound}|default|half")),
        count(&format!("{outbound}|default|none")),
    );
    eprintln!("spans: all={n_all}/10 half={n_half}/40 none={n_none}/10");
    assert_eq!(n_all, 10, "{:?}", bodies.lock().unwrap().first());
    assert_eq!(n_none, 0);
    assert!(
        (8..=32).contains(&n_half),
        "50 % of 40 should be about 20, got {n_half}"
    );
}
