//! Real HTTP through a real Envoy configured by our control plane from `traffic.*` labels: weighted
//! split, weight 0, retries, request timeout, delay and abort faults, cookie stickiness, circuit
//! breaking, the rate limit and Zipkin tracing with sampling.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::envoy::http_get;
use common::mesh::{Mesh, Svc};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_traffic_80_20_and_weight_0_is_never_served() {
    let svc = Svc::new("split", &[], &["a", "b", "c"])
        .pod_label("a", "traffic.endpoint.weight", "80")
        .pod_label("b", "traffic.endpoint.weight", "20")
        .pod_label("c", "traffic.endpoint.weight", "0");
    let Some(mesh) = Mesh::start(vec![svc]).await else {
        return;
    };
    let addr = mesh.addr("split");
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let total = 2000;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for _ in 0..total / 8 {
                let r = http_get(addr, "/", &[]).await.expect("request");
                assert_eq!(r.status, 200, "{r:?}");
                mine.push(r.body_text());
            }
            mine
        }));
    }
    for t in tasks {
        for name in t.await.expect("join") {
            *counts.entry(name).or_default() += 1;
        }
    }
    let share = |n: &str| *counts.get(n).unwrap_or(&0) as f64 / total as f64;
    println!("split over {total} requests: {counts:?}");
    assert!((share("split-a") - 0.8).abs() <= 0.03, "{counts:?}");
    assert!((share("split-b") - 0.2).abs() <= 0.03, "{counts:?}");
    assert_eq!(counts.get("split-c"), None, "weight 0 served: {counts:?}");
    assert_eq!(mesh.backend("split-c").hits.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_timeouts_and_faults_behave_as_labelled() {
    let Some(mesh) = Mesh::start(vec![
        Svc::new("retry", &[("traffic.retries.5xx", "1")], &["a"]),
        Svc::new("slow", &[("traffic.request.timeout", "300")], &["a"]),
        Svc::new(
            "delay",
            &[
                ("traffic.fault.delay.time", "500"),
                ("traffic.fault.delay.percentage", "100"),
            ],
            &["a"],
        ),
        Svc::new(
            "abort",
            &[
                ("traffic.fault.abort.status", "505"),
                ("traffic.fault.abort.percentage", "100"),
            ],
            &["a"],
        ),
    ])
    .await
    else {
        return;
    };
    // A single 5xx is retried into a 200.
    let b = mesh.backend("retry-a");
    b.fail_next.store(1, Ordering::SeqCst);
    let r = http_get(mesh.addr("retry"), "/", &[]).await.expect("request");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(b.hits.load(Ordering::SeqCst), 2, "one failure + one retry");
    // The request timeout: 504 after ~300 ms although the backend takes 1.5 s.
    mesh.backend("slow-a").delay_ms.store(1500, Ordering::SeqCst);
    let started = Instant::now();
    let r = http_get(mesh.addr("slow"), "/", &[]).await.expect("request");
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{r:?}");
    // 504 (not the backend's 200 at 1.5 s) is the proof; the lower bound shows it is the
    // configured timeout, not an early failure. No upper bound: the machine may be loaded.
    // Envoy arms timers from its event loop's cached time, which may be a few ms stale, so a
    // timer can fire slightly before the full interval (297 ms for 300 ms was seen): 5% slack.
    assert!(took >= Duration::from_millis(285), "{took:?}");
    // The delay fault: at least the configured time.
    let started = Instant::now();
    let r = http_get(mesh.addr("delay"), "/", &[]).await.expect("request");
    assert_eq!(r.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(475), // 500 ms, with the timer slack above
        "{:?}",
        started.elapsed()
    );
    // The abort fault: the configured status, the backend never reached.
    let r = http_get(mesh.addr("abort"), "/", &[]).await.expect("request");
    assert_eq!(r.status, 505, "{r:?}");
    assert_eq!(mesh.backend("abort-a").hits.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_cookie_is_generated_with_max_age_and_sticks_to_one_pod() {
    let Some(mesh) = Mesh::start(vec![Svc::new(
        "sticky",
        &[
            ("traffic.hash.cookie.name", "mycookie"),
            ("traffic.hash.cookie.ttl", "60"),
            ("traffic.lb.policy", "ring_hash"),
        ],
        &["a", "b", "c"],
    )])
    .await
    else {
        return;
    };
    let addr = mesh.addr("sticky");
    let first = http_get(addr, "/", &[]).await.expect("request");
    let set_cookie = first.header("set-cookie").expect("set-cookie").to_string();
    assert!(
        set_cookie.starts_with("mycookie=") && set_cookie.contains("Max-Age=60"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().expect("cookie").to_string();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let r = http_get(addr, "/", &[("cookie", &cookie)])
            .await
            .expect("request");
        assert_eq!(r.status, 200);
        seen.insert(r.body_text());
    }
    assert_eq!(seen.len(), 1, "the cookie did not stick: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_breaker_overflows_into_503_and_envoy_counts_it() {
    let Some(mesh) = Mesh::start(vec![Svc::new(
        "cb",
        &[
            ("traffic.connection.max", "1"),
            ("traffic.request.max-pending", "1"),
            ("traffic.request.max", "1"),
        ],
        &["a"],
    )])
    .await
    else {
        return;
    };
    mesh.backend("cb-a").delay_ms.store(1000, Ordering::SeqCst);
    let addr = mesh.addr("cb");
    let tasks: Vec<_> = (0..6)
        .map(|_| tokio::spawn(async move { http_get(addr, "/", &[]).await.expect("request") }))
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("join").status);
    }
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    let overflow = mesh.cluster_stat("cb", "upstream_rq_pending_overflow").await;
    assert!(
        overflow > 0,
        "{}",
        mesh.envoy.stats("upstream_rq_pending_overflow").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_slows_a_download_to_the_configured_kbps() {
    let Some(mesh) = Mesh::start(vec![
        Svc::new("limited", &[("traffic.rate.limit", "1")], &["a"]),
        Svc::new("free", &[], &["a"]),
    ])
    .await
    else {
        return;
    };
    let started = Instant::now();
    let r = http_get(mesh.addr("free"), "/?size=4096", &[])
        .await
        .expect("request");
    assert_eq!((r.status, r.body.len()), (200, 4096));
    let free = started.elapsed();
    let started = Instant::now();
    let r = http_get(mesh.addr("limited"), "/?size=4096", &[])
        .await
        .expect("request");
    assert_eq!((r.status, r.body.len()), (200, 4096));
    let limited = started.elapsed();
    println!("4 KiB: unlimited {free:?}, at 1 KiB/s {limited:?}");
    assert!(limited >= Duration::from_secs(2), "{limited:?}");
    assert!(free < Duration::from_secs(1), "{free:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_zipkin_with_the_sampling_applied() {
    let Some(mesh) = Mesh::start(vec![
        Svc::new(
            "traced",
            &[
                ("traffic.tracing.enabled", "true"),
                ("traffic.tracing.sampling", "50"),
            ],
            &["a"],
        ),
        Svc::new("untraced", &[], &["a"]),
    ])
    .await
    else {
        return;
    };
    let n = 60;
    for _ in 0..n {
        assert_eq!(
            http_get(mesh.addr("traced"), "/", &[])
                .await
                .expect("request")
                .status,
            200
        );
        assert_eq!(
            http_get(mesh.addr("untraced"), "/", &[])
                .await
                .expect("request")
                .status,
            200
        );
    }
    // Envoy's Zipkin tracer flushes every 5 s (or every 5 spans).
    let deadline = Instant::now() + Duration::from_secs(12);
    let mut last = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = mesh.zipkin.spans.load(Ordering::SeqCst);
        if now == last && now > 0 && Instant::now() + Duration::from_secs(6) < deadline {
            continue;
        }
        last = now;
    }
    let spans = mesh.zipkin.spans.load(Ordering::SeqCst);
    let posts = mesh.zipkin.posts.load(Ordering::SeqCst);
    println!("{n} traced requests at 50% -> {spans} spans in {posts} POSTs");
    assert!(posts > 0);
    // Binomial(60, 0.5): mean 30, sd ~3.9; the untraced service adds none.
    assert!((15..=45).contains(&spans), "{spans} spans");
}
