//! Real Envoy against our ADS server with an Istio model (VirtualService + DestinationRule with
//! subsets, as in the bookinfo walk-through, and ServiceEntries: TCP on an address, HTTP + HTTPS
//! resolved by DNS with a VirtualService timeout): every type is ACKed and nothing is NACKed in
//! state-of-the-world and delta mode, subsets route by header, and a mirror copies every request
//! to the shadow subset. Addressing as in `envoy_xds.rs` (loopback cluster IPs, no iptables).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::ads::TestServer;
use common::envoy::{envoy_binary, free_port, http_get, Ads, Backend, Envoy};

fn model_yaml(port: u16, target: u16) -> String {
    format!(
        r#"services:
- name: reviews
  clusterIPs: [127.0.10.1]
  ports: [{{name: http, port: {port}, targetPort: {target}}}]
  selector: {{app: reviews}}
pods:
- {{name: reviews-v1, ip: 127.0.20.1, labels: {{app: reviews, version: v1}}}}
- {{name: reviews-v2, ip: 127.0.20.2, labels: {{app: reviews, version: v2}}}}
- {{name: reviews-v3, ip: 127.0.20.3, labels: {{app: reviews, version: v3}}}}
istio:
  serviceEntries:
  - metadata: {{name: db}}
    spec:
      hosts: [db.example]
      addresses: [127.0.10.9]
      resolution: STATIC
      ports: [{{number: {port}, name: tcp, protocol: TCP}}]
      endpoints: [{{address: 127.0.20.2, ports: {{tcp: {target}}}}}]
  - metadata: {{name: httpbin}}
    spec:
      hosts: [httpbin.example]
      resolution: DNS
      ports: [{{number: {port}, name: http, protocol: HTTP}}, {{number: 443, name: https, protocol: HTTPS}}]
      endpoints: [{{address: localhost, ports: {{http: {target}}}}}]
  destinationRules:
  - metadata: {{name: reviews}}
    spec:
      host: reviews
      subsets:
      - {{name: v1, labels: {{version: v1}}}}
      - {{name: v2, labels: {{version: v2}}}}
      - {{name: v3, labels: {{version: v3}}}}
  virtualServices:
  - metadata: {{name: httpbin}}
    spec: {{hosts: [httpbin.example], http: [{{timeout: 3s, route: [{{destination: {{host: httpbin.example}}}}]}}]}}
  - metadata: {{name: reviews}}
    spec:
      hosts: [reviews]
      http:
      - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
        route: [{{destination: {{host: reviews, subset: v2}}}}]
      - route: [{{destination: {{host: reviews, subset: v1}}}}]
        mirror: {{host: reviews, subset: v3}}
        mirrorPercentage: {{value: 100}}
"#
    )
}

async fn istio_config_is_acked_and_routes(ads: Ads) {
    let Some(bin) = envoy_binary() else { return };
    let port = free_port();
    let v1 = Backend::start("reviews-v1", "127.0.20.1".parse().expect("ip"), 0).await;
    let target = v1.addr.port();
    let v2 = Backend::start("reviews-v2", "127.0.20.2".parse().expect("ip"), target).await;
    let v3 = Backend::start("reviews-v3", "127.0.20.3".parse().expect("ip"), target).await;
    let server = TestServer::start_with(common::mesh::translated(&model_yaml(port, target), port)).await;
    let envoy = Envoy::start(&bin, "client.default", server.addr, ads).await;
    let subset = format!("{port}|default|reviews|v3");
    envoy
        .wait_config("the subset endpoints", |d| {
            d.contains("127.0.20.3") && d.contains(&format!("\"{subset}\"")) && d.contains("\"outbound\"")
        })
        .await;
    // Each ACK follows the client's applying what the dump shows (the routes after the listener).
    let mode = if ads == Ads::Sotw { "sotw" } else { "delta" };
    server
        .wait_acked(mode, &["listener", "route", "cluster", "endpoint"])
        .await;
    envoy.wait_listeners_active(1).await;
    assert!(
        !server.metrics().contains("xds_nacks_total{"),
        "unexpected NACK:\n{}",
        server.metrics()
    );

    let addr = SocketAddr::new("127.0.10.1".parse::<IpAddr>().expect("ip"), port);
    for _ in 0..5 {
        let r = http_get(addr, "/", &[("end-user", "jason")])
            .await
            .expect("request");
        assert_eq!((r.status, r.body_text()), (200, "reviews-v2".to_string()));
    }
    let n = 10;
    for _ in 0..n {
        let r = http_get(addr, "/", &[]).await.expect("request");
        assert_eq!((r.status, r.body_text()), (200, "reviews-v1".to_string()));
    }
    // The mirror gets a copy of each v1 request (fire and forget: wait for the last ones).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while v3.hits.load(Ordering::SeqCst) < n && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(v3.hits.load(Ordering::SeqCst), n, "mirrored copies");
    assert_eq!(v2.hits.load(Ordering::SeqCst), 5);
    // The ServiceEntry with an address: its chain matches 127.0.10.9, tcp_proxy to its STATIC
    // endpoint (v2's pod).
    // (Raw TCP: the backend keeps the connection open, only Envoy's HTTP filter would close it.)
    let db = SocketAddr::new("127.0.10.9".parse::<IpAddr>().expect("ip"), port);
    let mut s = tokio::net::TcpStream::connect(db).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nhost: db.example\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("reviews-v2") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(v2.hits.load(Ordering::SeqCst), 6);
    assert_eq!(v1.hits.load(Ordering::SeqCst), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_subsets_and_mirror_over_sotw_without_nacks() {
    istio_config_is_acked_and_routes(Ads::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_subsets_and_mirror_over_delta_without_nacks() {
    istio_config_is_acked_and_routes(Ads::Delta).await;
}

#[path = "../translate/tests/common/certs.rs"]
mod certs;

/// An Istio Gateway (HTTP on 80, HTTPS on 443 with two hosts and certificates, a port of its
/// own with `httpsRedirect`) as the gateway Envoy gets it over ADS, certificates inline and over
/// SDS, both ADS modes: every listener is active and nothing is NACKed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_istio_gateway_with_https_servers_is_accepted_over_ads() {
    use traffic_translate::model::{MeshModel, TlsSecret};
    use traffic_translate::translate::{translate, Options, TlsDelivery};
    let Some(bin) = envoy_binary() else { return };
    let own = free_port();
    let yaml = format!(
        r#"services:
- {{name: web, clusterIPs: [127.0.10.5], ports: [{{name: http, port: 80, targetPort: 8080}}], selector: {{app: web}}}}
pods:
- {{name: web-1, ip: 127.0.20.5, labels: {{app: web}}}}
istio:
  gateways:
  - metadata: {{name: gw}}
    spec:
      selector: {{istio: ingressgateway}}
      servers:
      - {{port: {{number: 80, name: http, protocol: HTTP}}, hosts: ["*.example.com"]}}
      - {{port: {{number: 443, name: a, protocol: HTTPS}}, hosts: [a.example.com], tls: {{mode: SIMPLE, credentialName: a-cert}}}}
      - {{port: {{number: 443, name: b, protocol: HTTPS}}, hosts: [b.example.com], tls: {{mode: SIMPLE, credentialName: b-cert}}}}
      - {{port: {{number: {own}, name: r, protocol: HTTP}}, hosts: [r.example.com], tls: {{httpsRedirect: true}}}}
  virtualServices:
  - metadata: {{name: front}}
    spec:
      hosts: [a.example.com, b.example.com, r.example.com]
      gateways: [gw]
      http: [{{route: [{{destination: {{host: web}}}}]}}]
"#
    );
    let mut model = MeshModel::from_yaml_str(&yaml).expect("model");
    let now = certs::unix_now();
    for name in ["a", "b"] {
        let (cert_pem, key_pem) =
            certs::test_cert(&[&format!("{name}.example.com")], now - 3600, now + 86_400 * 90);
        model.secrets.push(TlsSecret {
            namespace: "default".into(),
            name: format!("{name}-cert"),
            cert_pem,
            key_pem,
        });
    }
    for (tls, ads) in [
        (TlsDelivery::Inline, Ads::Sotw),
        (TlsDelivery::Sds, Ads::Delta),
        (TlsDelivery::Sds, Ads::Sotw),
    ] {
        let opts = Options {
            stats_port: None,
            ingress_http_port: free_port(),
            ingress_https_port: free_port(),
            ingress_tls: tls,
            ..Options::default()
        };
        let t = translate(&model, &opts);
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        t.snapshot.validate().expect("consistent");
        let server = TestServer::start_with(std::sync::Arc::new(t.snapshot)).await;
        let gw = Envoy::start(&bin, "traffic-ingress", server.addr, ads).await;
        gw.wait_config("the gateway listeners", |d| {
            d.contains("ingress_https") && d.contains(&format!("gateway_{own}")) && d.contains("127.0.20.5")
        })
        .await;
        // The routes (and, over SDS, the secrets) follow the listeners: wait until they are
        // taken and every listener is out of warming, so that any rejection would already show.
        let mode = if ads == Ads::Sotw { "sotw" } else { "delta" };
        server.wait_acked(mode, &["listener", "route"]).await;
        gw.wait_listeners_active(3).await;
        assert_eq!(
            gw.stat("listener_manager.lds.update_rejected").await,
            0,
            "{}",
            gw.log_text()
        );
        assert_eq!(
            gw.stat("cluster_manager.cds.update_rejected").await,
            0,
            "{}",
            gw.log_text()
        );
        assert!(
            gw.stat("listener_manager.total_listeners_active").await >= 3,
            "{}",
            gw.log_text()
        );
        assert!(
            !server.metrics().contains("xds_nacks_total{"),
            "{tls:?} {ads:?}: unexpected NACK:\n{}",
            server.metrics()
        );
        let rejected = server.rejections.0.lock().expect("lock").clone();
        assert!(rejected.is_empty(), "{tls:?}: {rejected:#?}");
    }
}
