//! The ADS server over real gRPC on loopback, driven by in-process tonic clients that check the
//! nonce/version invariants on every response.

mod common;

use std::time::Duration;

use common::ads::{names, updated, DeltaClient, SotwClient, TestServer};
use common::resources::{cluster, endpoints, listener, node, route, service_ref};
use traffic_translate::snapshot::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

const QUIET: Duration = Duration::from_millis(300);

fn mesh(gen: i64) -> traffic_translate::snapshot::NodeResources {
    node([
        cluster("a", 1),
        cluster("b", gen),
        endpoints("a", 1),
        endpoints("b", gen as u32),
        listener("l", 1),
        route("r", gen as u32),
    ])
}

#[tokio::test]
async fn every_type_is_answered_and_acks_cause_no_further_responses() {
    let server = TestServer::start(mesh(1)).await;
    let mut c = SotwClient::connect(&server.url(), "p.default").await;
    c.subscribe(CLUSTER, &[]).await;
    let cds = c.recv().await;
    assert_eq!(names(&cds), ["a", "b"]);
    c.ack(&cds, &[]).await;
    c.subscribe(ENDPOINT, &["a", "b"]).await;
    let eds = c.recv().await;
    assert_eq!(names(&eds), ["a", "b"]);
    c.ack(&eds, &["a", "b"]).await;
    c.subscribe(LISTENER, &[]).await;
    let lds = c.recv().await;
    assert_eq!(names(&lds), ["l"]);
    c.ack(&lds, &[]).await;
    c.subscribe(ROUTE, &["r"]).await;
    let rds = c.recv().await;
    assert_eq!(names(&rds), ["r"]);
    c.ack(&rds, &["r"]).await;
    c.expect_silence(QUIET).await;
    assert_eq!(server.metric("xds_connected_proxies{mode=\"sotw\"}"), 1.0);
    assert_eq!(
        server.metric("xds_pushes_total{mode=\"sotw\",type=\"cluster\"}"),
        1.0
    );
}

#[tokio::test]
async fn a_change_reaches_every_stream_with_a_new_version_and_only_changed_endpoints() {
    let server = TestServer::start(mesh(1)).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut c = SotwClient::connect(&server.url(), &format!("p{i}.default")).await;
        c.subscribe(CLUSTER, &[]).await;
        let cds = c.recv().await;
        c.ack(&cds, &[]).await;
        c.subscribe(ENDPOINT, &["a", "b"]).await;
        let eds = c.recv().await;
        c.ack(&eds, &["a", "b"]).await;
        clients.push((c, cds, eds));
    }
    server.publish(mesh(2));
    for (c, cds, eds) in &mut clients {
        let cds2 = c.recv().await;
        assert_eq!(cds2.type_url, CLUSTER, "clusters first (make before break)");
        assert_ne!(cds2.version_info, cds.version_info);
        assert_eq!(names(&cds2), ["a", "b"], "clusters are full state");
        c.ack(&cds2, &[]).await;
        let eds2 = c.recv().await;
        assert_ne!(eds2.version_info, eds.version_info);
        assert_eq!(names(&eds2), ["b"], "only the changed assignment");
        c.ack(&eds2, &["a", "b"]).await;
        c.expect_silence(QUIET).await;
    }
}

#[tokio::test]
async fn a_nacked_config_is_not_resent_and_the_next_real_change_is() {
    let server = TestServer::start(mesh(1)).await;
    let mut c = SotwClient::connect(&server.url(), "p.default").await;
    c.subscribe(CLUSTER, &[]).await;
    let good = c.recv().await;
    c.ack(&good, &[]).await;
    server.publish(mesh(2));
    let bad = c.recv().await;
    c.nack(&bad, &[], &good.version_info, "cluster b: invalid").await;
    c.expect_silence(QUIET).await;
    // Same content again (e.g. an unrelated re-translation): still nothing.
    server.publish(mesh(2));
    c.expect_silence(QUIET).await;
    let seen = server.rejections.0.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].node, "p.default");
    assert_eq!(seen[0].type_url, CLUSTER);
    assert_eq!(seen[0].origins, vec![service_ref("b").expect("ref")]);
    assert_eq!(seen[0].message, "cluster b: invalid");
    assert_eq!(
        server.metric("xds_nacks_total{mode=\"sotw\",type=\"cluster\"}"),
        1.0
    );
    // A real change: a new cluster c; b stays at its last accepted content.
    let mut next = mesh(2);
    next.make_mut(CLUSTER).insert("c".into(), cluster("c", 1));
    server.publish(next);
    let resp = c.recv().await;
    assert_eq!(names(&resp), ["a", "b", "c"]);
    let b = resp
        .resources
        .iter()
        .find(|a| common::resources::name_of(a) == "b")
        .expect("b");
    assert_eq!(b, &cluster("b", 1).body, "b is sent at its last accepted version");
}

#[tokio::test]
async fn a_request_with_a_stale_nonce_gets_no_response() {
    let server = TestServer::start(mesh(1)).await;
    let mut c = SotwClient::connect(&server.url(), "p.default").await;
    c.subscribe(ENDPOINT, &["a"]).await;
    let first = c.recv().await;
    server.publish(mesh(2));
    // b changed but is not subscribed: no response; now subscribe b with the stale nonce... it is
    // still the latest nonce, so make a newer one first by changing a.
    let mut m = mesh(2);
    m.make_mut(ENDPOINT).insert("a".into(), endpoints("a", 7));
    server.publish(m);
    let second = c.recv().await;
    assert_ne!(first.nonce, second.nonce);
    c.send(ENDPOINT, &["a", "b"], &first.version_info, &first.nonce, None)
        .await;
    c.expect_silence(QUIET).await;
    assert_eq!(
        server.metric("xds_stale_requests_total{mode=\"sotw\",type=\"endpoint\"}"),
        1.0
    );
    c.send(ENDPOINT, &["a", "b"], &second.version_info, &second.nonce, None)
        .await;
    let third = c.recv().await;
    assert_eq!(names(&third), ["b"]);
}

#[tokio::test]
async fn delta_sends_everything_once_then_only_changes_and_removals() {
    let server = TestServer::start(mesh(1)).await;
    let mut c = DeltaClient::connect(&server.url(), "p.default").await;
    c.subscribe(CLUSTER, &[]).await;
    let r = c.recv().await;
    assert_eq!(updated(&r), ["a", "b"]);
    c.ack(&r).await;
    c.subscribe(ENDPOINT, &["a", "b"]).await;
    let r = c.recv().await;
    assert_eq!(updated(&r), ["a", "b"]);
    c.ack(&r).await;
    c.expect_silence(QUIET).await;
    // b changes
    server.publish(mesh(2));
    let r = c.recv().await;
    assert_eq!(
        (r.type_url.as_str(), updated(&r)),
        (CLUSTER, vec!["b".to_string()])
    );
    c.ack(&r).await;
    let r = c.recv().await;
    assert_eq!(
        (r.type_url.as_str(), updated(&r)),
        (ENDPOINT, vec!["b".to_string()])
    );
    c.ack(&r).await;
    // b removed
    server.publish(node([cluster("a", 1), endpoints("a", 1)]));
    let r = c.recv().await;
    assert_eq!(r.type_url, CLUSTER);
    assert!(r.resources.is_empty());
    assert_eq!(r.removed_resources, ["b"]);
    c.ack(&r).await;
    let r = c.recv().await;
    assert_eq!(r.type_url, ENDPOINT);
    assert_eq!(r.removed_resources, ["b"]);
    c.ack(&r).await;
    c.expect_silence(QUIET).await;
    assert_eq!(server.metric("xds_connected_proxies{mode=\"delta\"}"), 1.0);
}

#[tokio::test]
async fn delta_honours_initial_versions_and_does_not_resend_a_nacked_resource() {
    let server = TestServer::start(mesh(1)).await;
    let mut c = DeltaClient::connect(&server.url(), "p.default").await;
    let mut first = envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest {
        type_url: CLUSTER.into(),
        ..Default::default()
    };
    first
        .initial_resource_versions
        .insert("a".into(), cluster("a", 1).version.clone());
    first.initial_resource_versions.insert("old".into(), "x".into());
    c.send(first).await;
    let r = c.recv().await;
    assert_eq!(updated(&r), ["b"]);
    assert_eq!(r.removed_resources, ["old"]);
    c.ack(&r).await;
    server.publish(mesh(2));
    let bad = c.recv().await;
    assert_eq!(updated(&bad), ["b"]);
    c.nack(&bad, "b is invalid").await;
    c.expect_silence(QUIET).await;
    server.publish(mesh(2));
    c.expect_silence(QUIET).await;
    assert_eq!(
        server.metric("xds_nacks_total{mode=\"delta\",type=\"cluster\"}"),
        1.0
    );
    server.publish(mesh(3));
    let r = c.recv().await;
    assert_eq!(updated(&r), ["b"]);
    assert_eq!(r.resources[0].version, cluster("b", 3).version);
}

#[tokio::test]
async fn the_connected_gauge_drops_when_a_proxy_goes_away() {
    let server = TestServer::start(mesh(1)).await;
    {
        let mut c = SotwClient::connect(&server.url(), "p.default").await;
        c.subscribe(CLUSTER, &[]).await;
        c.recv().await;
        assert_eq!(server.metric("xds_connected_proxies{mode=\"sotw\"}"), 1.0);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        if server.metric("xds_connected_proxies{mode=\"sotw\"}") == 0.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "gauge still {}",
        server.metric("xds_connected_proxies{mode=\"sotw\"}")
    );
}

#[tokio::test]
async fn a_rejected_resource_is_named_and_counted_as_quarantined_while_its_stream_lasts() {
    let server = TestServer::start(mesh(1)).await;
    let gauge = "xds_quarantined_resources{mode=\"sotw\",type=\"cluster\"}";
    let wait_for = |want: f64| {
        let server = &server;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            while std::time::Instant::now() < deadline {
                if server.metric(gauge) == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("{gauge} is not {want}:\n{}", server.metrics());
        }
    };
    {
        let mut c = SotwClient::connect(&server.url(), "p.default").await;
        c.subscribe(CLUSTER, &[]).await;
        let good = c.recv().await;
        c.ack(&good, &[]).await;
        server.publish(mesh(2));
        let bad = c.recv().await;
        c.nack(&bad, &[], &good.version_info, "cluster b: invalid").await;
        wait_for(1.0).await;
        assert_eq!(
            server.metric("xds_rejected_resources_total{mode=\"sotw\",type=\"cluster\"}"),
            1.0
        );
        let seen = server.rejections.0.lock().expect("lock").clone();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].resources, ["b"]);
    }
    wait_for(0.0).await;
}
