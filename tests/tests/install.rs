//! The installed chart on a real Kubernetes node: the agent (DaemonSet), the control plane, the
//! ingress gateway (Envoy, node id `traffic-ingress`) and Prometheus run as pods, applied from
//! the rendered Helm chart by `cargo xtask e2e-install`. The original README's walk-through
//! through the gateway: an Ingress routes `/productpage` to the reviews Service, TLS with a
//! self-signed Secret, the sidecar's `envoy_cluster_outbound_upstream_rq_completed` in
//! Prometheus, endpoint weights 100/10/0 and cookie-hash stickiness; and Istio's ingress task: a
//! Gateway (HTTP and HTTPS with a self-signed `credentialName`) with a VirtualService bound to it.
//!
//! Gated off unless `TRAFFIC_E2E=1`; each scenario uses its own namespace with the test app
//! (`tests/e2e/manifests/app.yaml`) and its own Ingress host, so they run concurrently.
use std::time::{Duration, Instant};

use traffic_tests::e2e::wait_until;
use traffic_tests::e2e::TestNamespace;
use traffic_tests::install::{enable, self_signed_cert, serve_path, set_cookie, GatewayTally, Install};
use traffic_tests::install_pods::{TokenClaims, GATEWAY_COMPONENT};
use traffic_tests::istio_e2e::{apply_yaml, condition};
use traffic_tests::ScratchDir;

/// Label change -> control plane -> the gateway's Envoy.
const PUSH_TIMEOUT: Duration = Duration::from_secs(60);
const PATH: &str = "/productpage";

fn host_of(ns: &str) -> String {
    format!("{ns}.install.test")
}

/// Serves /productpage from the test app of `ns` and routes it through the gateway with a
/// plain-HTTP Ingress to reviews:9080; returns the Ingress host once the gateway serves it, and
/// how long that took after the Ingress was applied.
fn route_productpage(inst: &Install, ns: &TestNamespace) -> (String, Duration) {
    serve_path(ns, PATH).expect("serve /productpage");
    let host = host_of(&ns.name);
    inst.ingress(ns, "productpage", &host, PATH, ("reviews", 9080), None)
        .expect("ingress");
    let t = Instant::now();
    inst.wait_gateway_serves(&host, PATH, PUSH_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    (host, t.elapsed())
}

#[test]
fn an_ingress_routes_productpage_of_its_host_through_the_gateway_to_every_enabled_reviews_version() {
    let Some(inst) = Install::require() else { return };
    let ns = inst.app("ingress").expect("namespace with the test app");
    ns.label("service/reviews", &["traffic.port.9080=http"])
        .expect("label svc");
    for v in ["v1", "v2", "v3"] {
        enable(
            &ns,
            &format!("reviews-{v}"),
            &format!("app=reviews,version={v}"),
            &inst.e2e.mode,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    }
    let (host, took) = route_productpage(&inst, &ns);
    eprintln!(
        "Ingress applied -> served by the gateway: {} ms",
        took.as_millis()
    );

    let out = inst.gateway_get_many(&host, PATH, 30, &[]).expect("curl");
    let tally = GatewayTally::of(&out);
    eprintln!("30 GETs through the gateway: {tally:?}");
    assert_eq!(tally.ok, 30, "every request answered 200: {out}");
    for v in ["v1", "v2", "v3"] {
        assert!(tally.replies.count(v) > 0, "{v} served (round robin): {tally:?}");
    }
    // Only the Ingress' path of its host is routed.
    let other = inst.gateway_get(&host, "/details", &[]).expect("curl");
    assert_eq!(
        other.status, 404,
        "a path outside the Ingress is not routed: {other:?}"
    );
    let wrong_host = inst.gateway_get("unknown.install.test", PATH, &[]).expect("curl");
    assert_eq!(
        wrong_host.status, 404,
        "another host is not routed: {wrong_host:?}"
    );
}

#[test]
fn tls_with_a_self_signed_secret_named_by_the_ingress_verifies_and_serves_productpage() {
    let Some(inst) = Install::require() else { return };
    let ns = inst.app("tls").expect("namespace with the test app");
    serve_path(&ns, PATH).expect("serve /productpage");
    let host = host_of(&ns.name);
    let dir = ScratchDir::temp("install-tls").expect("temp dir");
    let (cert, key) = self_signed_cert(dir.path(), &host).expect("openssl");
    ns.tls_secret("productpage-cert", &cert, &key)
        .expect("tls secret");
    inst.ingress(
        &ns,
        "productpage",
        &host,
        PATH,
        ("reviews", 9080),
        Some("productpage-cert"),
    )
    .expect("ingress");
    let body = inst
        .wait_gateway_https(&host, PATH, &cert, PUSH_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        body.starts_with("reviews-"),
        "a reply of the test app over TLS: {body}"
    );
    // Plain HTTP for the same host is still served.
    inst.wait_gateway_serves(&host, PATH, PUSH_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn prometheus_scrapes_the_client_sidecars_outbound_upstream_rq_completed_for_reviews() {
    let Some(inst) = Install::require() else { return };
    let ns = inst.app("prom").expect("namespace with the test app");
    enable(&ns, "client", "app=client", &inst.e2e.mode).unwrap_or_else(|e| panic!("{e:#}"));
    let client = ns.pod("app=client").expect("client pod");
    let ip = ns.cluster_ip("reviews").expect("cluster ip");
    let url = format!("http://{ip}:9080/");
    // The first calls may race the sidecar's first configuration; wait for one good reply.
    wait_until(
        "a call through the client's sidecar",
        PUSH_TIMEOUT,
        Duration::from_millis(500),
        || {
            let (ok, text) = ns.get(&client.name, &url)?;
            Ok((ok && text.starts_with("reviews-")).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let replies = ns.get_many(&client.name, &url, 20).expect("requests");
    assert!(!replies.contains("ERR"), "every call answered: {replies}");
    let cluster = format!("9080|{}|reviews", ns.name);
    let query = format!("envoy_cluster_outbound_upstream_rq_completed{{envoy_cluster_name=\"{cluster}\"}}");
    let t = Instant::now();
    // The series of the client pod's sidecar (the gateway's Envoy has the cluster too, at 0).
    let from_client = |v: &[(serde_json::Value, f64)]| {
        v.iter()
            .find(|(labels, _)| {
                labels["namespace"] == ns.name.as_str() && labels["pod"] == client.name.as_str()
            })
            .map(|(_, x)| *x)
    };
    let value = wait_until(
        &format!("{query} >= 20 for the client pod in Prometheus"),
        Duration::from_secs(150),
        Duration::from_secs(2),
        || {
            let v = inst.prometheus_query(&query)?;
            Ok(from_client(&v).filter(|x| *x >= 20.0).map(|x| (x, v)))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("Prometheus after {} ms: {:?}", t.elapsed().as_millis(), value.1);
    assert!(value.0 >= 20.0, "the 20 calls were counted: {}", value.0);
}

#[test]
fn weights_100_10_0_on_the_deployments_split_gateway_traffic_near_100_to_10_and_never_to_v3() {
    let Some(inst) = Install::require() else { return };
    let ns = inst.app("weights").expect("namespace with the test app");
    let (host, _) = route_productpage(&inst, &ns);
    for (d, w) in [("reviews-v1", 100), ("reviews-v2", 10), ("reviews-v3", 0)] {
        ns.label(
            &format!("deployment/{d}"),
            &[&format!("traffic.endpoint.weight={w}")],
        )
        .expect("label");
    }
    // Weight 0 leaves the rotation once the new assignment reached the gateway.
    wait_until(
        "v3 out of the gateway's rotation",
        PUSH_TIMEOUT,
        Duration::from_secs(1),
        || {
            let t = GatewayTally::of(&inst.gateway_get_many(&host, PATH, 30, &[])?);
            Ok((t.ok == 30 && t.replies.count("v3") == 0).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let n = 220;
    let t = GatewayTally::of(&inst.gateway_get_many(&host, PATH, n, &[]).expect("curl"));
    eprintln!("split over {n} through the gateway: {:?}", t.replies.by_version);
    assert_eq!(t.ok, n, "every request answered: {t:?}");
    assert_eq!(t.replies.count("v3"), 0, "weight 0 is never served");
    assert!((5..=50).contains(&t.replies.count("v2")), "v2 near 20/220: {t:?}");
    assert!(t.replies.count("v1") >= 160, "v1 near 200/220: {t:?}");
}

#[test]
fn a_cookie_hash_service_sets_the_cookie_with_max_age_and_the_cookie_pins_one_pod() {
    let Some(inst) = Install::require() else { return };
    let ns = inst.app("cookie").expect("namespace with the test app");
    let (host, _) = route_productpage(&inst, &ns);
    ns.label(
        "service/reviews",
        &["traffic.hash.cookie.name=mycookie", "traffic.hash.cookie.ttl=60"],
    )
    .expect("label");
    let (cookie, max_age, first) = wait_until(
        "a reply setting mycookie",
        PUSH_TIMEOUT,
        Duration::from_millis(500),
        || {
            let r = inst.gateway_get(&host, PATH, &[])?;
            let set = r
                .header_values("set-cookie")
                .find_map(|h| set_cookie(h, "mycookie"));
            Ok(set.map(|(c, age)| (c, age, r.clone())))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "set-cookie: {:?}",
        first.header_values("set-cookie").collect::<Vec<_>>()
    );
    assert!(
        max_age.is_some_and(|a| a > 0),
        "the cookie carries Max-Age: {first:?}"
    );
    let pod = first.pod().expect("a test-app reply").to_string();
    let with_cookie = format!("mycookie={cookie}");
    let out = inst
        .gateway_get_many(&host, PATH, 20, &["-b", &with_cookie])
        .expect("curl");
    let t = GatewayTally::of(&out);
    assert_eq!(t.ok, 20, "every request answered: {out}");
    let pods: std::collections::BTreeSet<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|p| p.starts_with("reviews-"))
        .collect();
    assert_eq!(pods.len(), 1, "one pod for one cookie: {pods:?}");
    assert!(
        pods.contains(pod.as_str()),
        "the pod of the first reply ({pod}): {pods:?}"
    );
}

/// Istio's ingress task, applied as a user writes it: a Gateway selecting the chart's gateway
/// (`istio: ingressgateway`) with an HTTP server and an HTTPS server terminating TLS with a
/// self-signed certificate (`credentialName`), and a VirtualService bound to it that routes
/// `/headers` of its host to the test app (the httpbin-like app: it serves that path).
fn istio_gateway_yaml(host: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata:
  name: httpbin-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - "{host}"
  - port:
      number: 443
      name: https
      protocol: HTTPS
    tls:
      mode: SIMPLE
      credentialName: httpbin-credential
    hosts:
    - "{host}"
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
  - "{host}"
  gateways:
  - httpbin-gateway
  http:
  - match:
    - uri:
        prefix: /headers
    route:
    - destination:
        host: reviews
        port:
          number: 9080
"#
    )
}

#[test]
fn an_istio_gateway_and_virtual_service_serve_their_host_over_http_and_https_with_a_self_signed_credential() {
    let Some(inst) = Install::require() else { return };
    let ns = inst.app("istio-gw").expect("namespace with the test app");
    let path = "/headers";
    serve_path(&ns, path).expect("serve /headers");
    let host = host_of(&ns.name);
    let dir = ScratchDir::temp("install-istio-gw").expect("temp dir");
    let (cert, key) = self_signed_cert(dir.path(), &host).expect("openssl");
    ns.tls_secret("httpbin-credential", &cert, &key)
        .expect("tls secret");
    let t = Instant::now();
    apply_yaml(&inst.e2e, &ns.name, &istio_gateway_yaml(&host)).expect("apply Gateway + VirtualService");

    // HTTP: the bound route serves its path; other paths and other hosts are not routed.
    inst.wait_gateway_serves(&host, path, PUSH_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "Gateway applied -> served over HTTP: {} ms",
        t.elapsed().as_millis()
    );
    let out = inst.gateway_get_many(&host, path, 20, &[]).expect("curl");
    let tally = GatewayTally::of(&out);
    assert_eq!(tally.ok, 20, "every request answered 200: {out}");
    let other = inst.gateway_get(&host, "/productpage", &[]).expect("curl");
    assert_eq!(
        other.status, 404,
        "a path the VirtualService does not match: {other:?}"
    );
    let unknown = inst.gateway_get("unknown.install.test", path, &[]).expect("curl");
    assert_eq!(unknown.status, 404, "a host no server lists: {unknown:?}");

    // HTTPS: the certificate of the Secret, verified with itself as the CA.
    let body = inst
        .wait_gateway_https(&host, path, &cert, PUSH_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("Gateway over HTTPS: {}", body.replace('\n', " | "));
    assert!(
        body.starts_with("reviews-"),
        "a reply of the test app over TLS: {body}"
    );

    // Both objects report that they are accepted and that their references resolve.
    for resource in ["gateway/httpbin-gateway", "virtualservice/httpbin"] {
        let c = wait_until(
            &format!("{resource} Accepted and ResolvedRefs"),
            PUSH_TIMEOUT,
            Duration::from_millis(500),
            || {
                let a = condition(&inst.e2e, &ns.name, resource, "Accepted");
                let r = condition(&inst.e2e, &ns.name, resource, "ResolvedRefs");
                Ok(a.zip(r).filter(|(a, r)| a.is_true_now() && r.is_true_now()))
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        eprintln!("{resource}: {c:?}");
    }
}

/// Seconds since the epoch.
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// GETs `host` through the gateway every `every` until `done` returns `Some`; every reply must be
/// a 200 of the test app (the gateway keeps its configuration meanwhile).
fn serving_until<T>(
    inst: &Install,
    host: &str,
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> anyhow::Result<Option<T>>,
) -> (T, u32) {
    let mut gets = 0;
    let v = wait_until(what, timeout, Duration::from_secs(5), || {
        let r = inst.gateway_get(host, PATH, &[])?;
        gets += 1;
        assert_eq!(
            r.status, 200,
            "the gateway stopped serving {host} ({what}): {r:?}"
        );
        done()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    (v, gets)
}

/// Issue 10 on the cluster: the gateway authenticates with its projected ServiceAccount token
/// (the pass installs it with `xds.gatewayTokenSeconds=600`, the API's minimum: the kubelet renews
/// it after ~480 s), Envoy re-reads the renewed token, the control plane ends the stream of the
/// old one when it expires, and the gateway reconnects with the new one; then the control plane
/// restarts (no cached review) and the gateway authenticates again. The gateway serves
/// throughout and takes configuration changes after each step. Named to start first: it waits
/// ~10 minutes while the rest of the suite runs beside it (`cargo xtask e2e-install` runs it in
/// one pass only, `--renewal-mode`).
#[test]
fn a_gateway_keeps_serving_and_updating_across_its_token_renewal_and_a_control_plane_restart() {
    let Some(inst) = Install::require_unguarded() else {
        return;
    };
    let ns = inst.app("gw-auth").expect("namespace with the test app");
    let (host, _) = route_productpage(&inst, &ns);
    let gateway = inst.component_pod(GATEWAY_COMPONENT).expect("gateway pod").name;
    let first = inst.gateway_token().expect("the gateway's token");
    eprintln!("gateway {gateway}: token {first:?}, now {}", now());
    assert_eq!(
        first.pod.as_deref(),
        Some(gateway.as_str()),
        "a token bound to the gateway pod"
    );
    assert!(
        first.exp - first.iat <= traffic_tests::install::GATEWAY_TOKEN_SECONDS + 60,
        "the pass installs the gateway with 600 s tokens: {first:?}"
    );
    let reads = |inst: &Install| {
        inst.gateway_stat("sds.xds-token.update_success")
            .ok()
            .flatten()
            .unwrap_or(0)
    };
    let reads_before = reads(&inst);
    assert!(reads_before >= 1, "the gateway's Envoy read its token file");

    // 1. The kubelet renews the token (at 80 % of its life); Envoy re-reads the file.
    let (renewed, gets): (TokenClaims, u32) = serving_until(
        &inst,
        &host,
        "the kubelet to renew the gateway's token",
        Duration::from_secs(first.exp.saturating_sub(now()) + 60),
        || Ok(inst.gateway_token().ok().filter(|t| t.iat > first.iat)),
    );
    eprintln!(
        "renewed {}s after issue, {}s before expiry: {renewed:?} ({gets} GETs, all 200)",
        renewed.iat - first.iat,
        first.exp.saturating_sub(renewed.iat)
    );
    serving_until(
        &inst,
        &host,
        "the gateway's Envoy to read the renewed token",
        Duration::from_secs(60),
        || Ok((reads(&inst) > reads_before).then_some(())),
    );

    // 2. The first token expires: the control plane ends the stream it admitted, the gateway
    // reconnects with the renewed token and takes a change made after that.
    let expired_before = inst
        .control_metric("xds_auth_expired_streams_total")
        .expect("control plane /metrics");
    let (_, gets) = serving_until(
        &inst,
        &host,
        "the first token to expire",
        Duration::from_secs(first.exp.saturating_sub(now()) + 30),
        || Ok((now() > first.exp + 5).then_some(())),
    );
    eprintln!("past the first token's expiry ({gets} GETs, all 200)");
    serving_until(
        &inst,
        &host,
        "the control plane to end the expired token's stream",
        Duration::from_secs(60),
        || {
            let n = inst.control_metric("xds_auth_expired_streams_total")?;
            Ok((n > expired_before).then_some(n))
        },
    );
    let connected =
        |inst: &Install| inst.gateway_stat("control_plane.connected_state").ok().flatten() == Some(1);
    serving_until(&inst, &host, "the gateway to reconnect", PUSH_TIMEOUT, || {
        Ok(connected(&inst).then_some(()))
    });
    let after_expiry = format!("renewed-{host}");
    inst.ingress(&ns, "after-expiry", &after_expiry, PATH, ("reviews", 9080), None)
        .expect("ingress");
    inst.wait_gateway_serves(&after_expiry, PATH, PUSH_TIMEOUT)
        .unwrap_or_else(|e| panic!("a change after the expiry: {e:#}"));

    // 3. The control plane restarts (after every other test of the pass ended): it has no
    // cached review, the gateway authenticates again with its renewed token.
    let admitted_before = inst
        .control_metric("xds_auth_admissions_total")
        .expect("control plane /metrics");
    let t = Instant::now();
    let control = inst
        .restart_control_plane(Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "control plane restarted as {control} in {} ms (admissions before: {admitted_before})",
        t.elapsed().as_millis()
    );
    serving_until(
        &inst,
        &host,
        "the gateway to reconnect after the restart",
        PUSH_TIMEOUT,
        || Ok(connected(&inst).then_some(())),
    );
    let after_restart = format!("restarted-{host}");
    inst.ingress(
        &ns,
        "after-restart",
        &after_restart,
        PATH,
        ("reviews", 9080),
        None,
    )
    .expect("ingress");
    inst.wait_gateway_serves(&after_restart, PATH, PUSH_TIMEOUT)
        .unwrap_or_else(|e| panic!("a change after the restart: {e:#}"));
    let admitted = inst
        .control_metric("xds_auth_admissions_total")
        .expect("control plane /metrics");
    assert!(
        admitted >= 1.0,
        "the new control plane admitted the gateway: {admitted}"
    );
    for h in [&host, &after_expiry] {
        let r = inst.gateway_get(h, PATH, &[]).expect("curl");
        assert_eq!(r.status, 200, "{h} still served after the restart: {r:?}");
    }
    // Envoy itself took every update of both control planes (its own counters, not ours).
    for stat in [
        "cluster_manager.cds.update_rejected",
        "listener_manager.lds.update_rejected",
    ] {
        let rejected = inst.gateway_stat(stat).expect("gateway stats");
        assert_eq!(rejected, Some(0), "the gateway's {stat}");
    }
}
