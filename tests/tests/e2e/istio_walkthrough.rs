//! Istio's traffic-management walk-through on the real node, applied with `kubectl apply -f` as a
//! user would: the classic bookinfo files (`control/istio/tests/fixtures/bookinfo`, exactly as
//! Istio ships them) and the few this suite adds (`tests/e2e/manifests/istio`), against
//! `istio/bookinfo.yaml`: reviews v1/v2/v3 behind a one-port Service as in bookinfo, ratings and an
//! enabled client (busybox apps, like every e2e test).
//!
//! Steps, one test: route all to v1 -> 75/25 v1/v2 (counted) -> `end-user: jason` to v2 and the
//! cookie-regex variant -> everything to v2 -> a DestinationRule circuit breaker (maxConnections 1,
//! http1MaxPendingRequests 1) under concurrent load: 503s and Envoy's overflow counter -> a 2 s
//! fixedDelay on ratings (measured) -> mirroring to v2 (v2's cluster gets the copies). The
//! namespace (and the CRDs, when this test installed them) are deleted even on failure.
//!
//! Runs in both redirect modes (`both_modes::`): the VirtualService routes are applied by the
//! caller's Envoy, whichever datapath steered the connection into it.
//!
//! Then a ServiceEntry for a host outside the cluster (`httpbin.org`, stood in for by a test host in
//! its own network namespace, [`ExternalHost`]) with a 3 s VirtualService timeout: blocked before
//! the entry, answered through it, 504 after 3 s for a 5 s reply; and the status conditions of
//! the entry and its VirtualService. The Gateway step (HTTP and HTTPS) needs the chart's ingress
//! gateway and is in the install suite (`tests/tests/install.rs`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use traffic_tests::e2e::{random_suffix, wait_until, E2e, TestNamespace};
use traffic_tests::e2e_parse::{cluster_stat, Tally};

use traffic_tests::e2e::NAMESPACE_LABEL;
use traffic_tests::external_host::{ExternalHost, EXTERNAL_V4};
use traffic_tests::istio_e2e::{condition, IstioCrds};

use super::{enable, url, wait_membership};

/// An applied change -> control plane (watch, maybe after the CRD watch's backoff) -> Envoy.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(90);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Istio's own sample files, as written.
fn classic(file: &str) -> PathBuf {
    repo().join("control/istio/tests/fixtures/bookinfo").join(file)
}

/// The files this walk-through adds (same style).
fn ours(file: &str) -> PathBuf {
    repo().join("tests/e2e/manifests/istio").join(file)
}

/// A fresh namespace (deleted on drop, also on failure) with `bookinfo.yaml`, all available.
fn bookinfo_namespace(e2e: &E2e) -> TestNamespace<'_> {
    let name = format!("e2e-istio-walk-{}", random_suffix());
    e2e.kubectl(&["create", "namespace", &name]).expect("namespace");
    let ns = TestNamespace { e2e, name };
    e2e.kubectl(&["label", "namespace", &ns.name, &format!("{NAMESPACE_LABEL}=true")])
        .expect("label namespace");
    apply(&ns, &ours("bookinfo.yaml"));
    e2e.kubectl_within(
        &[
            "wait",
            "-n",
            &ns.name,
            "--for=condition=available",
            "deployment",
            "--all",
            "--timeout=120s",
        ],
        Duration::from_secs(130),
    )
    .expect("bookinfo available");
    ns
}

fn apply(ns: &TestNamespace, file: &Path) {
    ns.e2e
        .kubectl(&["apply", "-n", &ns.name, "-f", &file.to_string_lossy()])
        .unwrap_or_else(|e| panic!("kubectl apply -f {}: {e:#}", file.display()));
}

/// `n` sequential GETs from the client with extra wget `args` (e.g. a header); their tally.
fn tally(ns: &TestNamespace, client: &str, url: &str, args: &str, n: usize) -> Tally {
    let script = format!(
        "i=0; while [ $i -lt {n} ]; do wget -qO- -T 5 {args} '{url}' 2>/dev/null || echo ERR; i=$((i+1)); done"
    );
    let out = ns
        .sh(client, &script, Duration::from_secs(30 + 6 * n as u64))
        .expect("kubectl exec");
    Tally::of(&out.stdout)
}

/// Waits until `n` calls all reach `version` (the new routes are in the client's Envoy).
fn wait_all(ns: &TestNamespace, client: &str, url: &str, args: &str, version: &str, n: usize) {
    wait_until(
        &format!("{n} calls ({args}) all answered by {version}"),
        ROUTE_TIMEOUT,
        Duration::from_millis(500),
        || {
            let t = tally(ns, client, url, args, n);
            Ok((t.count(version) == n).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
}

fn stats(ns: &TestNamespace, sidecar: &str) -> String {
    ns.e2e.envoy_admin(sidecar, "/stats").expect("envoy /stats")
}

/// The whole walk-through; see the module doc.
pub fn run(e2e: &E2e) {
    let _crds = IstioCrds::ensure(e2e).expect("the chart's Istio CRDs");
    let ns = bookinfo_namespace(e2e);
    let mut client = enable(&ns, "client", "app=client");
    assert_eq!(client.len(), 1);
    let client = client.remove(0);
    wait_membership(&ns, &client.sidecar, 3);
    let ip = ns.cluster_ip("reviews").expect("reviews cluster ip");
    let c = client.pod.name.as_str();
    let reviews = url(&ip, 9080);
    let ratings_ip = ns.cluster_ip("ratings").expect("ratings cluster ip");
    let ratings = url(&ratings_ip, 9080);
    let subset = |s: &str| format!("9080|{}|reviews|{s}", ns.name);

    // 1. Subsets, then every service to its v1.
    apply(&ns, &classic("destination-rule-all.yaml"));
    apply(&ns, &classic("virtual-service-all-v1.yaml"));
    wait_all(&ns, c, &reviews, "", "v1", 20);
    let t = tally(&ns, c, &reviews, "", 100);
    eprintln!("all-v1 over 100: {:?} (other {})", t.by_version, t.other);
    assert_eq!(t.count("v1"), 100, "all to v1: {t:?}");

    // 2. 75/25 v1/v2 (n = 400: one standard deviation is 2.2 points, the bound is 3.6 of them).
    apply(&ns, &classic("virtual-service-reviews-75-25.yaml"));
    wait_until(
        "v2 served again",
        ROUTE_TIMEOUT,
        Duration::from_millis(500),
        || Ok((tally(&ns, c, &reviews, "", 20).count("v2") > 0).then_some(())),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let n = 400;
    let t = tally(&ns, c, &reviews, "", n);
    let share = t.count("v1") as f64 / n as f64;
    eprintln!(
        "75/25 over {n}: {:?} (other {}): {:.1} % v1",
        t.by_version,
        t.other,
        share * 100.0
    );
    assert_eq!(t.other + t.count("v3"), 0, "only v1 and v2, all answered: {t:?}");
    assert!((share - 0.75).abs() <= 0.08, "75/25: {t:?}");

    // 3. "jason" to v2: by header, and by the 2018 cookie regex; everyone else to v1.
    apply(&ns, &classic("virtual-service-reviews-test-v2.yaml"));
    let jason = "--header 'end-user: jason'";
    wait_all(&ns, c, &reviews, jason, "v2", 10);
    let others = tally(&ns, c, &reviews, "--header 'end-user: mallory'", 20);
    assert_eq!(others.count("v1"), 20, "others to v1: {others:?}");
    // The regex wants `user=jason` first or right after a `;` (no space), as in Istio's sample.
    let cookie = tally(&ns, c, &reviews, "--header 'Cookie: user=jason; theme=dark'", 20);
    assert_eq!(cookie.count("v2"), 20, "cookie user=jason to v2: {cookie:?}");
    let not_jason = tally(&ns, c, &reviews, "--header 'Cookie: user=jasonx'", 20);
    assert_eq!(
        not_jason.count("v1"),
        20,
        "user=jasonx is not jason: {not_jason:?}"
    );
    let plain = tally(&ns, c, &reviews, "", 20);
    assert_eq!(plain.count("v1"), 20, "no header to v1: {plain:?}");

    // 4. Everything to v2.
    apply(&ns, &ours("virtual-service-reviews-v2.yaml"));
    wait_all(&ns, c, &reviews, "", "v2", 20);
    assert_eq!(tally(&ns, c, &reviews, jason, 20).count("v2"), 20);

    // 5. Circuit breaker: one connection, one pending request; 20 concurrent callers overflow.
    apply(&ns, &ours("destination-rule-reviews-circuit-breaker.yaml"));
    wait_until(
        "the circuit breaker in the client's Envoy",
        ROUTE_TIMEOUT,
        Duration::from_millis(500),
        || {
            let text = e2e.envoy_admin(&client.sidecar, "/clusters")?;
            let want = format!("{}::default_priority::max_connections::1", subset("v2"));
            Ok(text.lines().any(|l| l.trim() == want).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let overflow_before = cluster_stat(
        &stats(&ns, &client.sidecar),
        &subset("v2"),
        "upstream_rq_pending_overflow",
    )
    .unwrap_or(0);
    let load = format!(
        "j=0; while [ $j -lt 20 ]; do (i=0; while [ $i -lt 10 ]; do wget -qO- -T 5 '{reviews}' 2>&1 || true; i=$((i+1)); done) & j=$((j+1)); done; wait"
    );
    let out = ns.sh(c, &load, Duration::from_secs(180)).expect("load");
    let t = Tally::of(&out.stdout);
    let overflows = out.stdout.lines().filter(|l| l.contains(" 503")).count();
    let overflow_after = cluster_stat(
        &stats(&ns, &client.sidecar),
        &subset("v2"),
        "upstream_rq_pending_overflow",
    )
    .unwrap_or(0);
    eprintln!(
        "circuit breaker, 20 x 10 concurrent calls: {} ok ({:?}), {overflows} x 503, Envoy upstream_rq_pending_overflow {overflow_before} -> {overflow_after}",
        t.total() - t.other,
        t.by_version
    );
    assert!(overflows > 0, "no 503 under concurrent load:\n{}", out.stdout);
    assert!(t.count("v2") > 0, "some calls still pass: {t:?}");
    assert!(
        overflow_after > overflow_before,
        "Envoy counted no pending overflow ({overflow_before} -> {overflow_after})"
    );
    // The subsets without the limits again.
    apply(&ns, &classic("destination-rule-all.yaml"));

    // 6. A 2 s fixed delay on ratings: measured; reviews stays fast.
    let timed = |u: &str| {
        let t0 = Instant::now();
        let (ok, text) = ns.get(c, u).expect("kubectl exec");
        (t0.elapsed(), ok, text)
    };
    let (base, ok, text) = timed(&ratings);
    assert!(ok && text.contains("ratings-v1"), "ratings answers: {text}");
    apply(&ns, &ours("virtual-service-ratings-delay-2s.yaml"));
    wait_until(
        "the delay applies",
        ROUTE_TIMEOUT,
        Duration::from_millis(500),
        || {
            let (d, ok, _) = timed(&ratings);
            Ok((ok && d >= Duration::from_secs(2)).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let mut delays = Vec::new();
    for _ in 0..3 {
        let (d, ok, text) = timed(&ratings);
        assert!(ok && text.contains("ratings-v1"), "delayed but answered: {text}");
        delays.push(d);
    }
    let (fast, ok, _) = timed(&reviews);
    eprintln!("fixedDelay 2s: ratings calls took {delays:?} (before: {base:?}); reviews {fast:?}");
    assert!(ok);
    for d in &delays {
        assert!(
            *d >= Duration::from_secs(2) && *d < base + Duration::from_secs(3),
            "{delays:?}"
        );
    }
    assert!(fast < Duration::from_secs(2), "reviews not delayed: {fast:?}");

    // 7. Mirror: live traffic to v1, a copy of each request to v2 (its replies discarded).
    apply(&ns, &ours("virtual-service-reviews-mirror-v2.yaml"));
    wait_all(&ns, c, &reviews, "", "v1", 20);
    let v2_before = cluster_stat(
        &stats(&ns, &client.sidecar),
        &subset("v2"),
        "upstream_rq_completed",
    )
    .unwrap_or(0);
    let n = 50;
    let t = tally(&ns, c, &reviews, "", n);
    assert_eq!(t.count("v1"), n, "the caller sees only v1: {t:?}");
    // Copies are sent asynchronously: wait for them to complete.
    let v2_after = wait_until(
        "v2 got the copies",
        Duration::from_secs(20),
        Duration::from_millis(300),
        || {
            let now = cluster_stat(
                &stats(&ns, &client.sidecar),
                &subset("v2"),
                "upstream_rq_completed",
            )
            .unwrap_or(0);
            Ok((now >= v2_before + n as u64).then_some(now))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("mirror: {n} calls answered by v1; v2 completed {v2_before} -> {v2_after}");

    // 8. A ServiceEntry for a host outside the cluster with a 3 s timeout (Istio's egress
    // timeout task): before it, the unknown destination follows the outbound policy (`block`).
    let ext = ExternalHost::start().unwrap_or_else(|e| panic!("external host: {e:#}"));
    let httpbin = |path: &str, timeout_s: u32| {
        let t0 = Instant::now();
        let out = ns
            .sh(
                c,
                &format!(
                    "wget -qO- -T {timeout_s} --header 'Host: httpbin.org' 'http://{EXTERNAL_V4}{path}' 2>&1"
                ),
                Duration::from_secs(u64::from(timeout_s) + 30),
            )
            .expect("kubectl exec");
        (t0.elapsed(), out.ok, out.stdout)
    };
    let (_, ok, text) = httpbin("/get", 5);
    assert!(
        !ok && !text.contains("httpbin-stand-in"),
        "no ServiceEntry yet: the outbound policy blocks the host: {text}"
    );
    apply(&ns, &ours("service-entry-httpbin.yaml"));
    let reply = wait_until(
        "httpbin.org reached through the ServiceEntry",
        ROUTE_TIMEOUT,
        Duration::from_millis(500),
        || {
            let (_, ok, text) = httpbin("/get", 5);
            Ok((ok && text.starts_with("httpbin-stand-in /get host=httpbin.org")).then_some(text))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let (fast, ok, text) = httpbin("/delay/1", 10);
    assert!(ok, "1 s is within the 3 s timeout: {text}");
    let (slow, ok, text) = httpbin("/delay/5", 10);
    eprintln!(
        "ServiceEntry httpbin.org: {}; /delay/1 in {fast:?}; /delay/5 -> {} after {slow:?}",
        reply.trim(),
        text.trim()
    );
    assert!(!ok && text.contains("504"), "the 3 s timeout answers 504: {text}");
    assert!(
        slow >= Duration::from_millis(2900) && slow < Duration::from_millis(4900),
        "504 after about 3 s, not 5: {slow:?}"
    );
    for resource in ["serviceentry/httpbin-ext", "virtualservice/httpbin-ext"] {
        let c = wait_until(
            &format!("{resource} Accepted and ResolvedRefs"),
            ROUTE_TIMEOUT,
            Duration::from_millis(500),
            || {
                let a = condition(e2e, &ns.name, resource, "Accepted");
                let r = condition(e2e, &ns.name, resource, "ResolvedRefs");
                Ok(a.zip(r).filter(|(a, r)| a.is_true_now() && r.is_true_now()))
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        eprintln!("{resource}: {c:?}");
    }
    drop(ext);

    // The Gateway step (HTTP and HTTPS with a self-signed credentialName) needs the chart's
    // ingress gateway: it is in the install suite (tests/tests/install.rs).
}
