//! Property: whatever Kubernetes-valid `traffic.*` labels users write, on any Service, pod or
//! workload, real Envoy takes every config we push (0 NACKs, for a sidecar and for the gateway),
//! translation never panics, and every label is either applied or reported (issue 9).
//!
//! Two parts, to keep CI time modest:
//! - offline: `OFFLINE_CASES` random meshes of one Service (random labels on it, its pods, their
//!   workloads and a client pod) are translated and checked (consistent snapshot, no label
//!   silently dropped);
//! - live: `LIVE_BATCHES` random meshes of `SERVICES` Services each (plus an Ingress over them
//!   with random paths and TLS Secrets good, expiring, expired, garbage and with a wrong key) are
//!   pushed over ADS, one after the other, to a real sidecar Envoy and a real gateway Envoy.
//!
//! `LABEL_PROPTEST_BATCHES` / `LABEL_PROPTEST_CASES` scale both; `LABEL_PROPTEST_SEED` (printed
//! on every run) replays one. Needs Envoy (`ENVOY_BIN`); skips without it unless `CI=true`.

#[path = "../translate/tests/common/certs.rs"]
mod certs;
mod common;
#[path = "common/label_sets.rs"]
mod label_sets;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ads::TestServer;
use common::envoy::{envoy_binary, free_port, Ads, Envoy};
use label_sets::{mesh_case, model, silently_dropped, CertCase};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use traffic_translate::snapshot::MeshSnapshot;
use traffic_translate::translate::{translate, Collector, Options, TlsDelivery, INGRESS_NODE_ID};

const SERVICES: usize = 6;
const OFFLINE_CASES: usize = 1500;
const LIVE_BATCHES: usize = 200;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runner() -> TestRunner {
    let seed: u64 = std::env::var("LABEL_PROPTEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| certs::unix_now() ^ u64::from(std::process::id()));
    eprintln!("LABEL_PROPTEST_SEED={seed}");
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
    )
}

/// Certificates for the random Secrets; only good ones are reused (generation is the slow part).
struct Certs {
    now: u64,
}

impl Certs {
    fn make(&self, case: CertCase, host: &str) -> (String, String) {
        const DAY: u64 = 24 * 3600;
        let now = self.now;
        match case {
            CertCase::Good => certs::test_cert(&[host], now - DAY, now + 90 * DAY),
            CertCase::ExpiringSoon => certs::test_cert(&[host], now - DAY, now + 3 * DAY),
            CertCase::Expired => certs::test_cert(&[host], now - 90 * DAY, now - DAY),
            CertCase::Garbage => ("garbage".into(), "garbage".into()),
            CertCase::WrongKey => {
                let (cert, _) = certs::test_cert(&[host], now - DAY, now + 90 * DAY);
                (cert, certs::test_cert(&[host], now - DAY, now + 90 * DAY).1)
            }
        }
    }
}

fn options(port: u16, http: u16, https: u16, generation: usize) -> Options {
    Options {
        outbound_port: port,
        stats_port: None,
        ingress_http_port: http,
        ingress_https_port: https,
        zipkin: Some(Collector {
            host: "127.0.0.1".into(),
            port: 9411,
        }),
        // Both ways of delivering certificates, alternately.
        ingress_tls: if generation.is_multiple_of(2) {
            TlsDelivery::Inline
        } else {
            TlsDelivery::Sds
        },
        ..Options::default()
    }
}

#[test]
fn random_label_sets_are_all_applied_or_reported_and_translate_consistently() {
    let cases = env_usize("LABEL_PROPTEST_CASES", OFFLINE_CASES);
    let mut runner = runner();
    let strategy = mesh_case(80, 1);
    let certs = Certs {
        now: certs::unix_now(),
    };
    let started = Instant::now();
    let mut label_errors = 0;
    for i in 0..cases {
        let case = strategy.new_tree(&mut runner).expect("case").current();
        // Certificates are the slow part; one in 16 cases gets them.
        let mut cert = |c: CertCase, host: &str| {
            if i % 16 == 0 {
                certs.make(c, host)
            } else {
                ("garbage".into(), "garbage".into())
            }
        };
        let m = model(&case, 80, i, &mut cert);
        let t = translate(&m, &options(15001, 8080, 8443, i));
        label_errors += t.label_errors.len();
        if let Err(e) = t.snapshot.validate() {
            panic!("case {i}: inconsistent snapshot {e:?}\n{case:#?}");
        }
        let dropped = silently_dropped(&m);
        assert!(
            dropped.is_empty(),
            "case {i}: labels neither applied nor reported: {dropped:?}"
        );
    }
    eprintln!(
        "{cases} random meshes translated offline in {:?}, {label_errors} invalid labels reported",
        started.elapsed()
    );
}

/// Waits until `envoy` shows `marker` in its active clusters and `second` in the config dump of
/// `second_resource` (the whole update of this generation was taken), or panics with what was
/// rejected.
async fn wait_taken(
    envoy: &Envoy,
    server: &TestServer,
    what: &str,
    marker: &str,
    second: (&str, &str),
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let (second_resource, second) = second;
    loop {
        let clusters = envoy
            .admin_get("/config_dump?resource=dynamic_active_clusters")
            .await;
        let other = envoy
            .admin_get(&format!("/config_dump?resource={second_resource}"))
            .await;
        if clusters.contains(marker) && other.contains(second) {
            return Ok(());
        }
        let rejected = server.rejections.0.lock().expect("lock").clone();
        if !rejected.is_empty() || Instant::now() > deadline {
            return Err(format!(
                "{what}: generation {marker} not taken; rejections: {rejected:#?}\nclusters: {clusters}\n\
                 {second_resource}: {other}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_envoy_sidecars_and_gateway_take_every_random_label_set_without_a_nack() {
    let Some(bin) = envoy_binary() else { return };
    let batches = env_usize("LABEL_PROPTEST_BATCHES", LIVE_BATCHES);
    let (port, http, https) = (free_port(), free_port(), free_port());
    let mut runner = runner();
    let strategy = mesh_case(port, SERVICES);
    let certs = Certs {
        now: certs::unix_now(),
    };
    let mut good = std::collections::BTreeMap::new();
    let mut cert = |c: CertCase, host: &str| match c {
        // A fresh key per good Secret costs ~1 ms; keep them per host.
        CertCase::Good => good
            .entry(host.to_string())
            .or_insert_with(|| certs.make(c, host))
            .clone(),
        _ => certs.make(c, host),
    };

    let first = model(
        &strategy.new_tree(&mut runner).expect("case").current(),
        port,
        0,
        &mut cert,
    );
    let snapshot: Arc<dyn MeshSnapshot> =
        Arc::new(translate(&first, &options(port, http, https, 0)).snapshot);
    let server = TestServer::start_with(snapshot).await;
    let sidecar = Envoy::start(&bin, "client.default", server.addr, Ads::Sotw).await;
    let gateway = Envoy::start(&bin, INGRESS_NODE_ID, server.addr, Ads::Delta).await;

    let started = Instant::now();
    let (mut label_errors, mut problems, mut services) = (0, 0, 0);
    for generation in 1..=batches {
        let case = strategy.new_tree(&mut runner).expect("case").current();
        let m = model(&case, port, generation, &mut cert);
        let t = translate(&m, &options(port, http, https, generation));
        t.snapshot.validate().expect("consistent snapshot");
        let dropped = silently_dropped(&m);
        assert!(
            dropped.is_empty(),
            "labels neither applied nor reported: {dropped:?}"
        );
        label_errors += t.label_errors.len();
        problems += t.problems.len();
        services += m.services.len();
        server.publish_snapshot(Arc::new(t.snapshot));
        let marker = format!("{port}|default|gen-{generation}");
        let host = format!("gen-{generation}.example.com");
        // The sidecar's own random `traffic.port.<N>` may make the marker `tcp`: no route then,
        // but its filter chain (named like the cluster) is there either way.
        let (on_sidecar, on_gateway) = tokio::join!(
            wait_taken(
                &sidecar,
                &server,
                "sidecar",
                &marker,
                ("dynamic_listeners", &marker)
            ),
            wait_taken(
                &gateway,
                &server,
                "gateway",
                &marker,
                ("dynamic_route_configs", &host)
            ),
        );
        if let Err(e) = on_sidecar.and(on_gateway) {
            panic!("{e}\nthe random part of this mesh: {case:#?}");
        }
    }
    let took = started.elapsed();
    let metrics = server.metrics();
    assert!(!metrics.contains("xds_nacks_total{"), "NACKs:\n{metrics}");
    for envoy in [&sidecar, &gateway] {
        let rejected = envoy.stats("update_rejected").await;
        for line in rejected.lines() {
            assert!(line.ends_with(": 0"), "{line}");
        }
    }
    eprintln!(
        "{batches} random meshes ({services} Services, {label_errors} invalid labels and {problems} \
         Ingress problems reported) pushed to a sidecar (SotW) and a gateway (delta) in {took:?}: 0 NACKs"
    );
}

/// The harness does see a rejection: the same kind of push with the marker cluster's connect
/// timeout set to 0 s (what `traffic.connection.timeout=0` used to produce) is NACKed and reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_reports_the_nack_of_a_zero_connect_timeout_so_zero_nacks_means_something() {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::google::protobuf::Duration as PbDuration;
    use prost::Message;
    use traffic_translate::snapshot::{NodeResources, CLUSTER};

    /// Every node's view, with cluster `.1`'s connect timeout replaced by 0 s.
    #[derive(Debug)]
    struct ZeroTimeout(Arc<dyn MeshSnapshot>, String);
    impl MeshSnapshot for ZeroTimeout {
        fn for_node(&self, node_id: &str) -> NodeResources {
            let mut nr = self.0.for_node(node_id);
            if let Some(r) = nr.make_mut(CLUSTER).get_mut(&self.1) {
                let mut c = Cluster::decode(r.body.value.as_slice()).expect("cluster");
                c.connect_timeout = Some(PbDuration { seconds: 0, nanos: 0 });
                *r = common::resources::resource(&self.1, &c, r.origin.clone());
            }
            nr
        }
    }

    let Some(bin) = envoy_binary() else { return };
    let (port, http, https) = (free_port(), free_port(), free_port());
    let mut runner = runner();
    let strategy = mesh_case(port, 1);
    let certs = Certs {
        now: certs::unix_now(),
    };
    let mut cert = |c: CertCase, host: &str| certs.make(c, host);
    let first = model(
        &strategy.new_tree(&mut runner).expect("case").current(),
        port,
        0,
        &mut cert,
    );
    let snapshot: Arc<dyn MeshSnapshot> =
        Arc::new(translate(&first, &options(port, http, https, 0)).snapshot);
    let server = TestServer::start_with(snapshot).await;
    let sidecar = Envoy::start(&bin, "client.default", server.addr, Ads::Sotw).await;
    let m = model(
        &strategy.new_tree(&mut runner).expect("case").current(),
        port,
        1,
        &mut cert,
    );
    let marker = format!("{port}|default|gen-1");
    let t = translate(&m, &options(port, http, https, 1));
    server.publish_snapshot(Arc::new(ZeroTimeout(Arc::new(t.snapshot), marker.clone())));
    let err = wait_taken(
        &sidecar,
        &server,
        "sidecar",
        &marker,
        ("dynamic_listeners", &marker),
    )
    .await
    .expect_err("a zero connect timeout must be rejected");
    assert!(err.contains("connect_timeout"), "{err}");
}
