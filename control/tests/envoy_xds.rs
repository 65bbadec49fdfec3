//! Real Envoy (a plain process on loopback) against our ADS server: every type is ACKed in
//! state-of-the-world and delta mode, the config dump matches the model, model changes arrive
//! (an endpoint change pushes only the changed assignment),
//! and an invalid resource is NACKed once and never re-sent.
//!
//! How traffic reaches the per-service filter chains without iptables: each test gives its
//! Services a loopback cluster IP (127.0.10.x) and, as port, Envoy's outbound listener port. The
//! listener binds 0.0.0.0:<port>; a client dialing 127.0.10.x:<port> arrives with that local
//! address, which the `original_dst` listener filter keeps (no NAT entry to restore), so the
//! filter chain match on destination IP and port is exercised for real. Pods get 127.0.20.x IPs
//! where the test's backends listen.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::ads::TestServer;
use common::envoy::{envoy_binary, free_port, http_get, Ads, Backend, Envoy, TempDir};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use traffic_translate::model::MeshModel;
use traffic_translate::snapshot::{MeshSnapshot, NodeResources, CLUSTER};
use traffic_translate::translate::{translate, Options};

fn model_yaml(port: u16, target: u16, pods: &[(&str, &str)]) -> String {
    let mut y = format!(
        "services:\n- name: web\n  clusterIPs: [127.0.10.1]\n  ports: [{{name: http, port: {port}, targetPort: {target}}}]\n  selector: {{app: web}}\n  labels: {{traffic.port.{port}: http}}\n- name: db\n  clusterIPs: [127.0.10.2]\n  ports: [{{name: tcp, port: {port}, targetPort: {target}}}]\n  selector: {{app: db}}\n  labels: {{traffic.port.{port}: tcp}}\npods:\n"
    );
    for (name, ip) in pods {
        y.push_str(&format!("- {{name: {name}, ip: {ip}, labels: {{app: web}}}}\n"));
    }
    y.push_str("- {name: db-0, ip: 127.0.20.9, labels: {app: db}}\n");
    y
}

fn snapshot(yaml: &str, port: u16) -> Arc<dyn MeshSnapshot> {
    common::mesh::translated(yaml, port)
}

/// A snapshot with extra resources added for every node.
#[derive(Debug)]
struct Plus(Arc<dyn MeshSnapshot>, NodeResources);

impl MeshSnapshot for Plus {
    fn for_node(&self, node_id: &str) -> NodeResources {
        let mut nr = self.0.for_node(node_id);
        for (t, items) in &self.1.by_type {
            nr.make_mut(t)
                .extend(items.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        nr
    }
}

async fn acks_every_type(ads: Ads) {
    let Some(bin) = envoy_binary() else { return };
    let port = free_port();
    let a = Backend::start("web-a", "127.0.20.1".parse().expect("ip"), 0).await;
    let target = a.addr.port();
    let b = Backend::start("web-b", "127.0.20.2".parse().expect("ip"), target).await;
    let server = TestServer::start_with(snapshot(
        &model_yaml(port, target, &[("web-a", "127.0.20.1"), ("web-b", "127.0.20.2")]),
        port,
    ))
    .await;
    let envoy = Envoy::start(&bin, "client.default", server.addr, ads).await;
    let cluster = format!("\"{port}|default|web\"");
    let db = format!("{port}|default|db");
    // The dump holds what the model says: the listener, both chains, the route, cluster, endpoints.
    // Clusters and endpoints are pushed before the listener that uses them, so wait for all of it.
    let needles = [
        "127.0.20.1",
        "127.0.20.2",
        cluster.as_str(),
        "\"outbound\"",
        "127.0.10.1",
        "127.0.10.2",
        db.as_str(),
    ];
    envoy
        .wait_config("the listener, chains, clusters and endpoints", |d| {
            needles.iter().all(|n| d.contains(n))
        })
        .await;
    let mode = if ads == Ads::Sotw { "sotw" } else { "delta" };
    server
        .wait_acked(mode, &["listener", "route", "cluster", "endpoint"])
        .await;
    assert!(
        !server.metrics().contains("xds_nacks_total{"),
        "unexpected NACK:\n{}",
        server.metrics()
    );
    // Real HTTP through the filter chain matched on 127.0.10.1:<port>.
    let web: SocketAddr = SocketAddr::new("127.0.10.1".parse::<IpAddr>().expect("ip"), port);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let r = http_get(web, "/", &[]).await.expect("request through envoy");
        assert_eq!(r.status, 200, "{r:?}");
        seen.insert(r.body_text());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["web-a", "web-b"]);
    // A model change (third pod) reaches Envoy and serves traffic.
    let pushed_endpoints = format!("xds_pushed_resources_total{{mode=\"{mode}\",type=\"endpoint\"}}");
    let endpoints_before = server.metric(&pushed_endpoints);
    let c = Backend::start("web-c", "127.0.20.3".parse().expect("ip"), target).await;
    server.publish_snapshot(snapshot(
        &model_yaml(
            port,
            target,
            &[
                ("web-a", "127.0.20.1"),
                ("web-b", "127.0.20.2"),
                ("web-c", "127.0.20.3"),
            ],
        ),
        port,
    ));
    envoy
        .wait_config("the new endpoint", |d| d.contains("127.0.20.3"))
        .await;
    // Only web's assignment changed, so only it was pushed (db's was not re-sent, also in SotW).
    assert_eq!(
        server.metric(&pushed_endpoints) - endpoints_before,
        1.0,
        "{}",
        server.metrics()
    );
    // The dump is the main thread's view; the workers take the new assignment just after.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while http_get(web, "/", &[]).await.expect("request").body_text() != "web-c" {
        assert!(std::time::Instant::now() < deadline, "web-c never answered");
    }
    assert_eq!(envoy.stat("cluster_manager.cds.update_rejected").await, 0);
    assert_eq!(envoy.stat("listener_manager.lds.update_rejected").await, 0);
    drop((a, b, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_acks_every_type_over_sotw_and_serves_the_model() {
    acks_every_type(Ads::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_acks_every_type_over_delta_and_serves_the_model() {
    acks_every_type(Ads::Delta).await;
}

fn invalid_cluster() -> NodeResources {
    // connect_timeout must be > 0: Envoy's validation rejects this cluster.
    let c = Cluster {
        name: "broken".into(),
        connect_timeout: Some(PbDuration {
            seconds: -1,
            nanos: 0,
        }),
        ..Default::default()
    };
    common::resources::node([common::resources::resource(
        "broken",
        &c,
        common::resources::service_ref("broken"),
    )])
}

async fn nacked_once(ads: Ads) {
    let Some(bin) = envoy_binary() else { return };
    let port = free_port();
    let a = Backend::start("web-a", "127.0.20.1".parse().expect("ip"), 0).await;
    let target = a.addr.port();
    let base = model_yaml(port, target, &[("web-a", "127.0.20.1")]);
    let server = TestServer::start_with(snapshot(&base, port)).await;
    let envoy = Envoy::start(&bin, "client.default", server.addr, ads).await;
    envoy
        .wait_config("the web endpoints", |d| d.contains("127.0.20.1"))
        .await;
    let success = envoy.stat("cluster_manager.cds.update_success").await;
    server.publish_snapshot(Arc::new(Plus(snapshot(&base, port), invalid_cluster())));
    envoy
        .wait_stat("cluster_manager.cds.update_rejected", |v| v == 1)
        .await;
    // Reported once: log, metric, sink with the origin.
    let mode = if ads == Ads::Sotw { "sotw" } else { "delta" };
    let nacks = format!("xds_nacks_total{{mode=\"{mode}\",type=\"cluster\"}}");
    assert_eq!(server.wait_metric(&nacks, |v| v >= 1.0).await, 1.0);
    // The server counts the NACK, then reports it to the sink.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while server.rejections.0.lock().expect("lock").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the NACK never reached the sink"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rejected = server.rejections.0.lock().expect("lock").clone();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].type_url, CLUSTER);
    assert_eq!(rejected[0].node, "client.default");
    assert_eq!(
        rejected[0].origins,
        vec![common::resources::service_ref("broken").expect("ref")]
    );
    assert!(
        rejected[0].message.contains("duration"),
        "{}",
        rejected[0].message
    );
    // Not re-sent: neither by itself nor when the same config is published again.
    server.publish_snapshot(Arc::new(Plus(snapshot(&base, port), invalid_cluster())));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(envoy.stat("cluster_manager.cds.update_rejected").await, 1);
    let dump = envoy.admin_get("/config_dump").await;
    assert!(!dump.contains("\"broken\""), "the rejected cluster is not active");
    // The next real change (a second pod, a new db port) is pushed and accepted.
    let b = Backend::start("web-b", "127.0.20.2".parse().expect("ip"), target).await;
    let next = model_yaml(port, target, &[("web-a", "127.0.20.1"), ("web-b", "127.0.20.2")]);
    server.publish_snapshot(Arc::new(Plus(snapshot(&next, port), invalid_cluster())));
    envoy
        .wait_config("the second pod", |d| d.contains("127.0.20.2"))
        .await;
    assert_eq!(envoy.stat("cluster_manager.cds.update_rejected").await, 1);
    assert!(envoy.stat("cluster_manager.cds.update_success").await >= success);
    let web = SocketAddr::new("127.0.10.1".parse::<IpAddr>().expect("ip"), port);
    assert_eq!(http_get(web, "/", &[]).await.expect("request").status, 200);
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_cluster_is_nacked_once_over_sotw_and_the_next_change_still_arrives() {
    nacked_once(Ads::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_cluster_is_nacked_once_over_delta_and_the_next_change_still_arrives() {
    nacked_once(Ads::Delta).await;
}

/// The binary end to end: `traffic-control serve --model <file>`, the file rewritten while Envoy
/// is connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_a_model_file_and_pushes_its_changes() {
    let Some(bin) = envoy_binary() else { return };
    let port = free_port();
    let a = Backend::start("web-a", "127.0.20.1".parse().expect("ip"), 0).await;
    let target = a.addr.port();
    let dir = TempDir::new("model");
    let model = dir.0.join("mesh.yaml");
    std::fs::write(&model, model_yaml(port, target, &[("web-a", "127.0.20.1")])).expect("write model");
    let (xds_port, http_port) = (free_port(), free_port());
    let mut control = std::process::Command::new(env!("CARGO_BIN_EXE_traffic-control"))
        .args(["serve", "--xds-auth=false", "--xds-tls=false", "--model"])
        .arg(&model)
        .args([
            "--xds-addr",
            &format!("127.0.0.1:{xds_port}"),
            "--http-addr",
            &format!("127.0.0.1:{http_port}"),
        ])
        .args(["--outbound-port", &port.to_string(), "--stats-port", "0"])
        .spawn()
        .expect("start traffic-control");
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SAFETY: kill(2) on the pid of the child this test started.
            unsafe {
                libc::kill(self.0 as libc::pid_t, libc::SIGKILL);
            }
        }
    }
    let _kill = Kill(control.id());
    let http_addr = SocketAddr::from(([127, 0, 0, 1], http_port));
    let mut healthy = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if http_get(http_addr, "/healthz", &[])
            .await
            .map(|r| r.status == 200)
            .unwrap_or(false)
        {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(healthy, "traffic-control /healthz never answered");
    let envoy = Envoy::start(
        &bin,
        "client.default",
        SocketAddr::from(([127, 0, 0, 1], xds_port)),
        Ads::Sotw,
    )
    .await;
    envoy
        .wait_config("the first pod", |d| d.contains("127.0.20.1"))
        .await;
    let b = Backend::start("web-b", "127.0.20.2".parse().expect("ip"), target).await;
    std::fs::write(
        &model,
        model_yaml(port, target, &[("web-a", "127.0.20.1"), ("web-b", "127.0.20.2")]),
    )
    .expect("rewrite");
    envoy
        .wait_config("the second pod", |d| d.contains("127.0.20.2"))
        .await;
    let metrics = http_get(http_addr, "/metrics", &[])
        .await
        .expect("metrics")
        .body_text();
    assert!(
        metrics.contains("xds_connected_proxies{mode=\"sotw\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("translate_rebuilds_total 2"), "{metrics}");
    let _ = control.kill();
    let _ = control.wait();
    drop((a, b));
}

/// The bookinfo walk-through model as Envoy sees it: a sidecar (with the stats listener) and the
/// ingress gateway (HTTP + HTTPS with the Ingress's TLS secret, inline and over SDS) accept
/// everything translation produces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_accepts_the_bookinfo_sidecar_and_ingress_configs() {
    let Some(bin) = envoy_binary() else { return };
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/translate/examples/bookinfo.yaml");
    let model = MeshModel::from_yaml_file(path).expect("model");
    for tls in [
        traffic_translate::translate::TlsDelivery::Inline,
        traffic_translate::translate::TlsDelivery::Sds,
    ] {
        let opts = Options {
            outbound_port: free_port(),
            stats_port: Some(free_port()),
            ingress_http_port: free_port(),
            ingress_https_port: free_port(),
            ingress_tls: tls,
            zipkin: Some("127.0.0.1:9411".parse().expect("collector")),
            ..Options::default()
        };
        let t = translate(&model, &opts);
        t.snapshot.validate().expect("consistent");
        let server = TestServer::start_with(Arc::new(t.snapshot)).await;
        let sidecar = Envoy::start(
            &bin,
            "productpage-v1-6b746f74dc-x7k2p.default",
            server.addr,
            Ads::Sotw,
        )
        .await;
        let ingress = Envoy::start(&bin, "traffic-ingress", server.addr, Ads::Delta).await;
        sidecar
            .wait_config("the reviews endpoints", |d| d.contains("172.17.0.14"))
            .await;
        ingress
            .wait_config("the ingress listeners", |d| {
                d.contains("ingress_https") && d.contains("172.17.0.10")
            })
            .await;
        // The endpoints come first: wait until the listeners and routes (after them) are taken
        // too, so that a rejection of any of them would already show.
        for mode in ["sotw", "delta"] {
            server.wait_acked(mode, &["listener", "route"]).await;
        }
        for e in [&sidecar, &ingress] {
            e.wait_listeners_active(1).await;
            assert_eq!(
                e.stat("cluster_manager.cds.update_rejected").await,
                0,
                "{}",
                e.log_text()
            );
            assert_eq!(
                e.stat("listener_manager.lds.update_rejected").await,
                0,
                "{}",
                e.log_text()
            );
            assert!(e.stat("listener_manager.total_listeners_active").await >= 1);
        }
        let rejected = server.rejections.0.lock().expect("lock").clone();
        assert!(rejected.is_empty(), "{tls:?}: {rejected:#?}");
    }
}
